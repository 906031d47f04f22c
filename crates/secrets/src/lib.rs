//! The tug secret store: per-stack secrets encrypted at rest with
//! XChaCha20-Poly1305, secrets generated from the OS CSPRNG, and a [`Secret`]
//! type that never shows its value in logs or error messages.

mod error;
mod sealed;
mod secret;
mod store;
mod time;

pub use error::Error;
pub use sealed::{derive_key, open, open_bytes, seal, seal_bytes};
pub use secret::{Charset, Secret, generate};
pub use store::{EntryInfo, Origin, Store};
pub use time::{format_rfc3339, now_unix};

fn fill_random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}
