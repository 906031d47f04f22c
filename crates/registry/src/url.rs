//! `redis://[[user]:password@]host[:port][/db]`. The password never shows in `Debug` or `Display`.

use std::fmt;
use std::str::FromStr;

use crate::RegistryError;

/// A parsed `redis://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub(crate) password: Option<String>,
}

impl RedisUrl {
    /// `host:port` as connected to (IPv6 hosts in brackets); what errors name.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:********@")?,
            (None, Some(_)) => f.write_str(":********@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.address(), self.db)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

fn bad(message: impl Into<String>) -> RegistryError {
    RegistryError::Url(message.into())
}

/// Decodes `%XX` escapes (for passwords holding `@`, `:` or `/`).
fn percent_decode(s: &str, what: &str) -> Result<String, RegistryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                return Err(bad(format!("invalid %-escape in the {what}")));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("the {what} is not UTF-8 once %-decoded")))
}

impl FromStr for RedisUrl {
    type Err = RegistryError;

    /// Errors never quote the URL: it may hold a password.
    fn from_str(s: &str) -> Result<RedisUrl, RegistryError> {
        let rest = if let Some(rest) = s.strip_prefix("redis://") {
            rest
        } else if s.starts_with("rediss://") {
            return Err(bad("rediss:// (Redis over TLS) is not supported yet; use redis://"));
        } else {
            return Err(bad("expected `embedded` or a URL starting with redis://"));
        };
        if rest.contains(['?', '#']) {
            return Err(bad("query parameters and fragments are not supported"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = match info.find(':') {
                    Some(i) => (&info[..i], Some(&info[i + 1..])),
                    None => (info, None),
                };
                let user = if user.is_empty() { None } else { Some(percent_decode(user, "user name")?) };
                let pass = match pass {
                    Some(p) if !p.is_empty() => Some(percent_decode(p, "password")?),
                    _ => None,
                };
                (user, pass)
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some(end) = v6.find(']') else { return Err(bad("unclosed [ in the host")) };
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after the IPv6 address")),
            };
            (&v6[..end], port)
        } else {
            match hostport.rfind(':') {
                Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if host.contains(['[', ']', ' ', '@']) {
            return Err(bad(format!("invalid host {host:?}")));
        }
        let port = match port {
            None => 6379,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(bad(format!("invalid port {p:?}"))),
            },
        };
        let db = match path.trim_end_matches('/') {
            "" => 0,
            d => d.parse::<u32>().map_err(|_| bad(format!("invalid database number {d:?}")))?,
        };
        Ok(RedisUrl { host: host.to_string(), port, db, username, password })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> RedisUrl {
        s.parse().unwrap()
    }

    fn err(s: &str) -> String {
        s.parse::<RedisUrl>().unwrap_err().to_string()
    }

    #[test]
    fn plain() {
        let u = parse("redis://localhost");
        assert_eq!((u.host.as_str(), u.port, u.db, u.username, u.password), ("localhost", 6379, 0, None, None));
        let u = parse("redis://10.0.0.5:7000/3");
        assert_eq!((u.host.as_str(), u.port, u.db), ("10.0.0.5", 7000, 3));
        assert_eq!(parse("redis://h:1/").db, 0);
        assert_eq!(u.address(), "10.0.0.5:7000");
    }

    #[test]
    fn ipv6() {
        let u = parse("redis://[::1]:6380/2");
        assert_eq!((u.host.as_str(), u.port, u.db), ("::1", 6380, 2));
        assert_eq!(u.address(), "[::1]:6380");
        assert_eq!(parse("redis://[::1]").port, 6379);
        assert!(err("redis://[::1").contains("unclosed"));
    }

    #[test]
    fn credentials() {
        let u = parse("redis://:s3cr%40t@host:1/0");
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (None, Some("s3cr@t")));
        let u = parse("redis://alice:pw@host");
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (Some("alice"), Some("pw")));
        let u = parse("redis://a:b@c@host");
        assert_eq!((u.password.as_deref(), u.host.as_str()), (Some("b@c"), "host"));
        assert!(err("redis://:p%zz@h").contains("%-escape"));
    }

    #[test]
    fn password_is_masked() {
        let u = parse("redis://alice:hunter2@host:1/4");
        assert_eq!(u.to_string(), "redis://alice:********@host:1/4");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(parse("redis://:hunter2@h").to_string(), "redis://:********@h:6379/0");
        // An error about a URL holding a password does not quote it.
        assert!(!err("redis://:hunter2@h:notaport").contains("hunter2"));
    }

    #[test]
    fn rejected() {
        assert!(err("rediss://h").contains("not supported yet"));
        assert!(err("http://h").contains("redis://"));
        assert!(err("redis://").contains("missing host"));
        assert!(err("redis://h:0").contains("invalid port"));
        assert!(err("redis://h:70000").contains("invalid port"));
        assert!(err("redis://h/x").contains("database"));
        assert!(err("redis://h?x=1").contains("query"));
    }
}
