//! Small sealed blobs: a value that must be kept at rest but never readable there (the daemon's
//! record of each deployed revision's spec, whose environment carries secrets), encrypted
//! with XChaCha20-Poly1305 under a key the caller derives and never stores beside it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Error, fill_random};

const NONCE_LEN: usize = 24;

/// A 32-byte key for [`seal`] and [`open`], derived from `material` (such as the API key) and a
/// purpose, so one secret yields unrelated keys for unrelated uses.
pub fn derive_key(purpose: &str, material: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut hasher = Sha256::new();
    hasher.update(b"tug sealed key\0");
    hasher.update(purpose.as_bytes());
    hasher.update([0]);
    hasher.update(material);
    Zeroizing::new(hasher.finalize().into())
}

/// `plaintext` encrypted under a fresh nonce, as base64 text (nonce, then ciphertext and tag).
pub fn seal(key: &[u8; 32], plaintext: &[u8]) -> Result<String, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let mut buf = Zeroizing::new(plaintext.to_vec());
    XChaCha20Poly1305::new(key.into())
        .encrypt_in_place(&XNonce::from(nonce), b"tug sealed v1", &mut *buf)
        .map_err(|_| Error::Sealed("cannot encrypt".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(STANDARD.encode(out))
}

/// The plaintext of [`seal`]'s output, or why it cannot be had (another key, damage).
pub fn open(key: &[u8; 32], sealed: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let bytes = STANDARD.decode(sealed.trim()).map_err(|_| Error::Sealed("it is not base64".into()))?;
    if bytes.len() < NONCE_LEN {
        return Err(Error::Sealed("it is too short".into()));
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| Error::Sealed("its nonce is damaged".into()))?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    XChaCha20Poly1305::new(key.into())
        .decrypt_in_place(&XNonce::from(nonce), b"tug sealed v1", &mut *buf)
        .map_err(|_| Error::Sealed("it was sealed with another key, or modified".into()))?;
    Ok(buf)
}

/// `plaintext` encrypted under a fresh nonce and bound to `associated` (which is not stored:
/// the opener must give the same bytes), as binary: nonce, then ciphertext and tag. For
/// streams cut into frames, where `associated` names the frame's place.
pub fn seal_bytes(key: &[u8; 32], associated: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .encrypt_in_place(&XNonce::from(nonce), associated, &mut body)
        .map_err(|_| Error::Sealed("cannot encrypt".into()))?;
    out.append(&mut body);
    Ok(out)
}

/// The plaintext of [`seal_bytes`]'s output sealed with `associated`, or why not.
pub fn open_bytes(key: &[u8; 32], associated: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(Error::Sealed("it is too short".into()));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| Error::Sealed("its nonce is damaged".into()))?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    XChaCha20Poly1305::new(key.into())
        .decrypt_in_place(&XNonce::from(nonce), associated, &mut *buf)
        .map_err(|_| Error::Sealed("it was sealed with another key, or modified".into()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_their_key_and_place() {
        let key = derive_key("archive", b"key one");
        let sealed = seal_bytes(&key, b"frame 1", b"a dump").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"a dump"));
        assert_eq!(&**open_bytes(&key, b"frame 1", &sealed).unwrap(), b"a dump");
        assert!(open_bytes(&key, b"frame 2", &sealed).is_err(), "another place");
        assert!(open_bytes(&derive_key("archive", b"key two"), b"frame 1", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open_bytes(&key, b"frame 1", &flipped).is_err());
        assert!(open_bytes(&key, b"frame 1", &sealed[..20]).is_err());
    }

    #[test]
    fn sealed_text_opens_only_with_its_key() {
        let key = derive_key("history", b"api key one");
        let other = derive_key("history", b"api key two");
        assert_ne!(*key, *derive_key("other purpose", b"api key one"));
        let sealed = seal(&key, b"DB_PASSWORD=hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(&**open(&key, &sealed).unwrap(), b"DB_PASSWORD=hunter2");
        assert!(open(&other, &sealed).unwrap_err().to_string().contains("another key"));
        assert!(open(&key, "not base64!").is_err());
        assert!(open(&key, "AAAA").is_err());
        assert_ne!(seal(&key, b"x").unwrap(), seal(&key, b"x").unwrap(), "a fresh nonce each time");
    }
}
