use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::Error;

const REDACTED: &str = "********";

/// A secret value. Debug and Display print `********`; the value is zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The real value: the only way to get at it, so every use is easy to find.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Wipes the whole allocation, spare capacity included.
        self.0.zeroize();
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The characters a generated secret is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    /// `A-Z a-z 0-9`: safe in URLs, shells and connection strings.
    Alnum,
    /// `0-9 a-f`.
    Hex,
    /// `A-Z a-z 0-9 - _` (RFC 4648 URL-safe alphabet): 6 bits per character.
    Base64Url,
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl Charset {
    pub const NAMES: [&'static str; 3] = ["alnum", "hex", "base64url"];

    pub fn as_str(self) -> &'static str {
        match self {
            Charset::Alnum => "alnum",
            Charset::Hex => "hex",
            Charset::Base64Url => "base64url",
        }
    }

    pub fn parse(s: &str) -> Option<Charset> {
        [Charset::Alnum, Charset::Hex, Charset::Base64Url].into_iter().find(|charset| charset.as_str() == s)
    }

    pub fn contains(self, c: char) -> bool {
        u8::try_from(c).is_ok_and(|b| self.alphabet().contains(&b))
    }

    fn alphabet(self) -> &'static [u8] {
        match self {
            Charset::Alnum => ALNUM,
            Charset::Hex => HEX,
            Charset::Base64Url => BASE64URL,
        }
    }
}

/// `length` characters drawn uniformly (rejection sampling, no modulo bias) from the charset, from the OS CSPRNG.
pub fn generate(length: usize, charset: Charset) -> Result<Secret, Error> {
    let alphabet = charset.alphabet();
    let n = alphabet.len();
    // Bytes at or above the largest multiple of `n` that fits in a byte are
    // thrown away, so that `byte % n` hits every character equally often.
    let limit = 256 - 256 % n;
    // Built in place inside a Secret, so it is wiped even if the RNG fails half
    // way, and with its full capacity up front, so growing leaves no stale copy.
    let mut secret = Secret::new(String::with_capacity(length));
    // The random bytes determine the value, so they are wiped too.
    let mut pool = Zeroizing::new([0u8; 64]);
    let mut produced = 0;
    while produced < length {
        crate::fill_random(&mut pool[..])?;
        for &byte in pool.iter() {
            if produced == length {
                break;
            }
            let byte = usize::from(byte);
            if byte < limit {
                secret.0.push(char::from(alphabet[byte % n]));
                produced += 1;
            }
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Charset; 3] = [Charset::Alnum, Charset::Hex, Charset::Base64Url];

    #[test]
    fn secret_debug_and_display_are_redacted() {
        let secret = Secret::from("hunter2-very-secret");
        assert_eq!(format!("{secret:?}"), "********");
        assert_eq!(format!("{secret}"), "********");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(********)");
        assert_eq!(secret.expose(), "hunter2-very-secret");
        assert_eq!(secret, Secret::new("hunter2-very-secret".to_owned()));
        assert_ne!(secret, Secret::from("other"));
    }

    #[test]
    fn charset_names_round_trip() {
        for (charset, name) in ALL.into_iter().zip(Charset::NAMES) {
            assert_eq!(charset.as_str(), name);
            assert_eq!(Charset::parse(name), Some(charset));
        }
        assert_eq!(Charset::parse("Alnum"), None);
        assert_eq!(Charset::parse(""), None);
    }

    #[test]
    fn charset_contains_exactly_its_alphabet() {
        assert!(Charset::Alnum.contains('Z') && Charset::Alnum.contains('7'));
        assert!(!Charset::Alnum.contains('-') && !Charset::Alnum.contains('_'));
        assert!(Charset::Hex.contains('f') && !Charset::Hex.contains('F'));
        assert!(!Charset::Hex.contains('g'));
        assert!(Charset::Base64Url.contains('-') && Charset::Base64Url.contains('_'));
        assert!(!Charset::Base64Url.contains('+') && !Charset::Base64Url.contains('/'));
        for charset in ALL {
            assert!(!charset.contains('é'));
            assert!(!charset.contains('\0'));
            assert!(!charset.contains('='));
        }
        let sizes: Vec<usize> =
            ALL.iter().map(|charset| (0..=127u8).filter(|&b| charset.contains(char::from(b))).count()).collect();
        assert_eq!(sizes, [62, 16, 64]);
    }

    #[test]
    fn generate_gives_exact_length_and_only_charset_characters() {
        for charset in ALL {
            for length in [0, 1, 16, 32, 63, 64, 65, 200] {
                let secret = generate(length, charset).unwrap();
                assert_eq!(secret.expose().len(), length, "{charset:?} {length}");
                assert!(
                    secret.expose().chars().all(|c| charset.contains(c)),
                    "{charset:?} produced a character outside the charset"
                );
            }
        }
    }

    #[test]
    fn generate_differs_each_time() {
        for charset in ALL {
            let a = generate(32, charset).unwrap();
            let b = generate(32, charset).unwrap();
            assert_ne!(a, b, "{charset:?}");
        }
    }

    #[test]
    fn generate_uses_the_whole_alphabet() {
        // With 20,000 draws, the chance that a given character never shows up is
        // below (63/64)^20000 ≈ 1e-137: a missing one means a broken mapping.
        for charset in ALL {
            let secret = generate(20_000, charset).unwrap();
            for &b in charset.alphabet() {
                assert!(secret.expose().contains(char::from(b)), "{charset:?} never produced {:?}", char::from(b));
            }
        }
    }
}
