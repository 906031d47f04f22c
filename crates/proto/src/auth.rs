//! Request signing: every control API request carries an HMAC-SHA256 signature
//! over its method, path, body digest, a timestamp and a nonce.
//!
//! The header is `Authorization: TUG-HMAC-SHA256 ts=<unix seconds>, nonce=<32 hex>, sig=<64 hex>`
//! and the signed text is
//! `TUG-HMAC-SHA256\n<METHOD>\n<path and query>\n<hex sha256 of body>\n<ts>\n<nonce>`.
//! The daemon refuses a request whose signature does not verify, whose timestamp
//! is more than [`MAX_SKEW_SECS`] from its clock, or whose nonce it has seen.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const SCHEME: &str = "TUG-HMAC-SHA256";
pub const MAX_SKEW_SECS: u64 = 30;
/// The key file in the state folder, created by the first `tug up`.
pub const KEY_FILE: &str = "api.key";
pub const KEY_ENV: &str = "TUG_API_KEY";

type HmacSha256 = Hmac<Sha256>;

/// The project's API key. Its bytes never appear in output or errors.
#[derive(Clone)]
pub struct ApiKey(Vec<u8>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(********)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{KEY_ENV} is too short: use at least 16 characters")]
    EnvTooShort,
    #[error("cannot read the API key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the API key file {path} is empty or too short (at least 16 characters)")]
    FileTooShort { path: String },
    #[error("cannot create the API key {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

impl ApiKey {
    /// The key's bytes, to derive other keys from (never to show).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_text(text: &str) -> Option<ApiKey> {
        let text = text.trim();
        (text.len() >= 16).then(|| ApiKey(text.as_bytes().to_vec()))
    }

    /// `TUG_API_KEY` when set, else the key file in `state_dir`. With `create`, a missing
    /// file is made (0600, 32 random bytes as hex), written atomically.
    pub fn load(state_dir: &Path, env: Option<&str>, create: bool) -> Result<Option<ApiKey>, KeyError> {
        if let Some(text) = env.filter(|t| !t.is_empty()) {
            return ApiKey::from_text(text).map(Some).ok_or(KeyError::EnvTooShort);
        }
        let path = state_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => ApiKey::from_text(&text)
                .map(Some)
                .ok_or_else(|| KeyError::FileTooShort { path: path.display().to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
                let text = hex(&bytes);
                match write_private(&path, text.as_bytes()) {
                    Ok(()) => Ok(Some(ApiKey(text.into_bytes()))),
                    // Another `tug up` made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ApiKey::load(state_dir, None, false),
                    Err(source) => Err(KeyError::Create { path: path.display().to_string(), source }),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyError::Read { path: path.display().to_string(), source }),
        }
    }
}

/// Writes a 0600 file atomically (temporary file, fsync, rename). Refuses to
/// replace an existing file made meanwhile by someone else.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        // The state folder, when this creates it: private, as what goes in it is.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let written = file.write_all(bytes).and_then(|_| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // hard_link fails if the key appeared meanwhile: never overwrite a key in use.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

pub fn body_digest(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

fn canonical(method: &str, path: &str, body_digest: &str, ts: u64, nonce: &str) -> String {
    format!("{SCHEME}\n{method}\n{path}\n{body_digest}\n{ts}\n{nonce}")
}

fn mac(key: &ApiKey) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    <HmacSha256 as KeyInit>::new_from_slice(&key.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// A token derived from the API key for one purpose (`metrics`: the bearer token of
/// `/metrics`; `webhook`: the key webhooks are signed with). It follows the key: a new key
/// gives new tokens; and knowing a token tells nothing about the key.
pub fn derived_token(key: &ApiKey, purpose: &str) -> String {
    let mut mac = mac(key);
    mac.update(format!("tug/{purpose}").as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// HMAC-SHA256 of `body` under `key`'s bytes, hex: webhooks' `X-Tug-Signature: sha256=…`.
pub fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Authorization` header value for a request.
pub fn sign(key: &ApiKey, method: &str, path: &str, body: &[u8], ts: u64) -> Result<String, KeyError> {
    sign_digest(key, method, path, &body_digest(body), ts)
}

/// [`sign`] for a body known by its digest ([`body_digest`]): a file streamed as it is sent.
pub fn sign_digest(key: &ApiKey, method: &str, path: &str, digest: &str, ts: u64) -> Result<String, KeyError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(signed(key, method, path, digest, ts, &hex(&nonce)))
}

pub fn sign_with_nonce(key: &ApiKey, method: &str, path: &str, body: &[u8], ts: u64, nonce: &str) -> String {
    signed(key, method, path, &body_digest(body), ts, nonce)
}

fn signed(key: &ApiKey, method: &str, path: &str, digest: &str, ts: u64, nonce: &str) -> String {
    let mut mac = mac(key);
    mac.update(canonical(method, path, digest, ts, nonce).as_bytes());
    let sig = hex(&mac.finalize().into_bytes());
    format!("{SCHEME} ts={ts}, nonce={nonce}, sig={sig}")
}

/// Why a request was refused. The daemon answers 401 with this text: it names
/// what was wrong, never the expected signature.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header: requests must be signed with the project's API key")]
    Missing,
    #[error("malformed Authorization header: expected `{SCHEME} ts=…, nonce=…, sig=…`")]
    Malformed,
    #[error("the request's timestamp is {0} s away from the daemon's clock (at most {MAX_SKEW_SECS} s allowed)")]
    Stale(u64),
    #[error("bad signature: the request was not signed with this project's API key, or was changed in transit")]
    BadSignature,
    #[error("replayed request: this nonce was already used")]
    Replayed,
}

struct Parsed<'a> {
    ts: u64,
    nonce: &'a str,
    sig: Vec<u8>,
}

fn parse(header: &str) -> Option<Parsed<'_>> {
    let rest = header.strip_prefix(SCHEME)?.strip_prefix(' ')?;
    let (mut ts, mut nonce, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "ts" if ts.is_none() => ts = Some(value.parse::<u64>().ok()?),
            "nonce" if nonce.is_none() => nonce = Some(value),
            "sig" if sig.is_none() => sig = Some(unhex(value)?),
            _ => return None,
        }
    }
    let nonce = nonce?;
    let nonce_ok = (16..=64).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    nonce_ok.then_some(Parsed { ts: ts?, nonce, sig: sig? })
}

/// Checks signatures and remembers nonces for the window in which their
/// timestamps are accepted, so a captured request cannot be replayed.
pub struct Verifier {
    key: ApiKey,
    seen: Mutex<HashMap<String, u64>>,
}

impl Verifier {
    pub fn new(key: ApiKey) -> Self {
        Verifier { key, seen: Mutex::new(HashMap::new()) }
    }

    /// What can be checked before the body is read: a well-formed header, a fresh timestamp, a
    /// nonce not seen yet. A request that fails here is refused without reading its body.
    pub fn precheck(&self, header: Option<&str>, now: u64) -> Result<(), AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let parsed = parse(header).ok_or(AuthError::Malformed)?;
        let skew = now.abs_diff(parsed.ts);
        if skew > MAX_SKEW_SECS {
            return Err(AuthError::Stale(skew));
        }
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains_key(&parsed.nonce.to_ascii_lowercase()) {
            return Err(AuthError::Replayed);
        }
        Ok(())
    }

    pub fn verify(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), AuthError> {
        self.verify_digest(header, method, path, &body_digest(body), now)
    }

    /// [`Verifier::verify`] against the digest the body must have: an upload names its digest
    /// in its path, so it is authenticated before its body is read, and the body is checked
    /// against that digest as it arrives.
    pub fn verify_digest(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        digest: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let parsed = parse(header).ok_or(AuthError::Malformed)?;
        let skew = now.abs_diff(parsed.ts);
        if skew > MAX_SKEW_SECS {
            return Err(AuthError::Stale(skew));
        }
        let mut mac = mac(&self.key);
        mac.update(canonical(method, path, digest, parsed.ts, parsed.nonce).as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&parsed.sig).map_err(|_| AuthError::BadSignature)?;
        // Only signed requests reach the nonce table, so only key holders can grow it.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, ts| now.abs_diff(*ts) <= 2 * MAX_SKEW_SECS);
        if seen.insert(parsed.nonce.to_ascii_lowercase(), parsed.ts).is_some() {
            return Err(AuthError::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ApiKey {
        ApiKey::from_text("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn precheck_refuses_what_can_be_refused_before_the_body() {
        let v = Verifier::new(key());
        let h = sign(&key(), "POST", "/v1/stop", b"{}", 1000).unwrap();
        assert_eq!(v.precheck(Some(&h), 1010), Ok(()));
        assert_eq!(v.precheck(None, 1010), Err(AuthError::Missing));
        assert_eq!(v.precheck(Some("Bearer x"), 1010), Err(AuthError::Malformed));
        assert!(matches!(v.precheck(Some(&h), 2000), Err(AuthError::Stale(_))));
        assert_eq!(v.verify(Some(&h), "POST", "/v1/stop", b"{}", 1010), Ok(()));
        assert_eq!(v.precheck(Some(&h), 1010), Err(AuthError::Replayed));
    }

    #[test]
    fn signed_request_verifies_once() {
        let v = Verifier::new(key());
        let h = sign(&key(), "POST", "/v1/stop", b"{}", 1000).unwrap();
        assert_eq!(v.verify(Some(&h), "POST", "/v1/stop", b"{}", 1010), Ok(()));
        assert_eq!(v.verify(Some(&h), "POST", "/v1/stop", b"{}", 1010), Err(AuthError::Replayed));
    }

    #[test]
    fn tampering_is_refused() {
        let v = Verifier::new(key());
        let h = sign(&key(), "POST", "/v1/stop", b"{\"a\":1}", 1000).unwrap();
        assert_eq!(v.verify(Some(&h), "POST", "/v1/stop", b"{\"a\":2}", 1000), Err(AuthError::BadSignature));
        assert_eq!(v.verify(Some(&h), "POST", "/v1/down", b"{\"a\":1}", 1000), Err(AuthError::BadSignature));
        assert_eq!(v.verify(Some(&h), "GET", "/v1/stop", b"{\"a\":1}", 1000), Err(AuthError::BadSignature));
        let forged = h.replace("ts=1000", "ts=1001");
        assert_eq!(v.verify(Some(&forged), "POST", "/v1/stop", b"{\"a\":1}", 1000), Err(AuthError::BadSignature));
        let other = ApiKey::from_text("another key of enough length").unwrap();
        let h = sign(&other, "GET", "/v1/ps", b"", 1000).unwrap();
        assert_eq!(v.verify(Some(&h), "GET", "/v1/ps", b"", 1000), Err(AuthError::BadSignature));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let v = Verifier::new(key());
        let h = sign(&key(), "GET", "/v1/ps", b"", 1000).unwrap();
        assert_eq!(v.verify(Some(&h), "GET", "/v1/ps", b"", 1031), Err(AuthError::Stale(31)));
        assert_eq!(v.verify(Some(&h), "GET", "/v1/ps", b"", 969), Err(AuthError::Stale(31)));
        assert_eq!(v.verify(Some(&h), "GET", "/v1/ps", b"", 1030), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let v = Verifier::new(key());
        for h in [
            "",
            "Bearer x",
            "TUG-HMAC-SHA256",
            "TUG-HMAC-SHA256 ts=1, nonce=00112233445566778899aabbccddeeff",
            "TUG-HMAC-SHA256 ts=x, nonce=00112233445566778899aabbccddeeff, sig=00",
            "TUG-HMAC-SHA256 ts=1, nonce=short, sig=00",
            "TUG-HMAC-SHA256 ts=1, nonce=00112233445566778899aabbccddeeff, sig=0",
            "TUG-HMAC-SHA256 ts=1, ts=2, nonce=00112233445566778899aabbccddeeff, sig=00",
        ] {
            assert_eq!(v.verify(Some(h), "GET", "/", b"", 1), Err(AuthError::Malformed), "{h}");
        }
        assert_eq!(v.verify(None, "GET", "/", b"", 1), Err(AuthError::Missing));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tug-key-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ApiKey::load(&dir, None, false).unwrap().is_none());
        let made = ApiKey::load(&dir, None, true).unwrap().unwrap();
        let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = ApiKey::load(&dir, None, true).unwrap().unwrap();
        assert_eq!(made.0, again.0);
        assert!(matches!(ApiKey::load(&dir, Some("short"), true), Err(KeyError::EnvTooShort)));
        assert_eq!(format!("{made:?}"), "ApiKey(********)");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
