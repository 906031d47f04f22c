use std::path::PathBuf;

/// Everything that can go wrong with the secret store.
///
/// Each message names the file involved and what to do about it. None of them
/// ever contains a secret value or key material: key ids are truncated hashes,
/// and values given by the user (such as `TUG_SECRETS_KEY`) are described, not
/// repeated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the secret store {} exists but its key {} is missing; restore the key file or set TUG_SECRETS_KEY",
        store.display(),
        key.display()
    )]
    KeyMissing { store: PathBuf, key: PathBuf },

    #[error(
        "the key from {key_description} (key id {actual_id}) does not open the secret store {}, which was encrypted with key id {expected_id}; restore the matching key file or set TUG_SECRETS_KEY to the key it was saved with",
        store.display()
    )]
    WrongKey {
        store: PathBuf,
        key_description: String,
        /// The key id recorded in the store file.
        expected_id: String,
        /// The key id of the key that was given.
        actual_id: String,
    },

    #[error(
        "the secret store {} is damaged: {reason}; restore it from a backup",
        store.display()
    )]
    Damaged { store: PathBuf, reason: String },

    #[error(
        "TUG_SECRETS_KEY is not a usable key: {reason}; expected 64 hex characters or the base64 (standard or URL-safe, padded or not) of exactly 32 bytes, such as the contents of a secrets.key file"
    )]
    BadEnvKey { reason: String },

    #[error("key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },

    #[error("could not {action} {}: {source}", path.display())]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },

    #[error("a sealed value cannot be opened: {0}")]
    Sealed(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}
