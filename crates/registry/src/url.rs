//! The registry's URL: `redis://` or, for Redis over TLS, `rediss://`.
//!
//! ```text
//! redis://[[user]:password@]host[:port][/db]
//! rediss://[[user]:password@]host[:port][/db][?ca=PATH][&cert=PATH&key=PATH][&insecure=true]
//! ```
//!
//! The port defaults to 6379 for both schemes and the database to 0. A user name or password that
//! holds `@`, `:`, `/`, `?`, `#`, `%` or `&` is written `%`-encoded (`%40` for `@`); so are those
//! characters in a path.
//!
//! `rediss://` verifies the server's certificate against the system's CAs (the file named by the
//! `SSL_CERT_FILE` environment variable when it is set, else the distribution's bundle, such as
//! Debian's `/etc/ssl/certs/ca-certificates.crt`) and checks that it is valid for `host` (a DNS name,
//! or an IP address matched against the certificate's IP addresses). Its parameters:
//!
//! - `ca=PATH`: trust the CA certificates in this PEM file instead of the system's (a private CA,
//!   such as the one redis-server's `--tls-ca-cert-file` names).
//! - `cert=PATH&key=PATH`: present this client certificate (PEM, leaf first, intermediates may
//!   follow) and its PEM private key (PKCS#8, PKCS#1 or SEC1), for a server that requires one
//!   (redis-server's `--tls-auth-clients yes`, its default). Always both.
//! - `insecure=true`: **do not verify the server's certificate at all.** The connection is
//!   encrypted but anyone on the path can impersonate the server, read the password and rewrite the
//!   membership, and so redirect traffic to any address. For throwaway test setups only; with a
//!   private CA, use `ca=` instead. It cannot be combined with `ca=`, and [`RedisUrl::is_insecure`]
//!   lets a caller warn about it.
//!
//! Relative paths are relative to the working directory of the process. The files are read when the
//! URL is parsed, so a missing, unreadable or non-PEM file is an error then ([`RegistryError::Url`],
//! naming the parameter and the path), never a failure at the first connection.
//!
//! The password never shows in `Debug` or `Display`, and no error quotes it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::RegistryError;
use crate::tls::{Tls, TlsParams};

/// A parsed `redis://` or `rediss://` URL, with the TLS files it names already read (see the
/// crate's docs for the syntax and parameters). `Display` and `Debug` mask the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) tls: Option<Tls>,
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

    /// `rediss://`: Redis over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `insecure=true`: TLS without any verification of the server's certificate. Worth a warning.
    pub fn is_insecure(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.params.insecure)
    }
}

/// `%`-encodes what would end or confuse a query value.
fn encode_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if c.is_ascii_alphanumeric() || "/-._~+,:@".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.tls.is_some() { "rediss://" } else { "redis://" })?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:********@")?,
            (None, Some(_)) => f.write_str(":********@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.address(), self.db)?;
        if let Some(tls) = &self.tls {
            let p = &tls.params;
            let mut sep = '?';
            let paths = [("ca", &p.ca), ("cert", &p.cert), ("key", &p.key)];
            for (name, path) in paths.iter().filter_map(|(n, p)| p.as_ref().map(|p| (n, p))) {
                write!(f, "{sep}{name}={}", encode_path(path))?;
                sep = '&';
            }
            if p.insecure {
                write!(f, "{sep}insecure=true")?;
            }
        }
        Ok(())
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

/// The query of a `rediss://` URL. `quote` says whether a piece of the URL may be quoted in an
/// error (not when the URL holds credentials a mis-encoding could have moved into the query).
fn parse_query(query: &str, quote: bool) -> Result<TlsParams, RegistryError> {
    let mut params = TlsParams::default();
    let mut insecure = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "ca" => &mut params.ca,
            "cert" => &mut params.cert,
            "key" => &mut params.key,
            "insecure" => {
                if insecure.is_some() {
                    return Err(bad("insecure= is given twice"));
                }
                insecure = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("insecure= takes true or false")),
                });
                continue;
            }
            _ => {
                let named = if quote { format!(" {name:?}") } else { String::new() };
                return Err(bad(format!(
                    "unknown query parameter{named} (rediss:// takes ca=, cert=, key= and insecure=true)"
                )));
            }
        };
        if slot.is_some() {
            return Err(bad(format!("{name}= is given twice")));
        }
        if value.is_empty() {
            return Err(bad(format!("{name}= needs a path")));
        }
        *slot = Some(PathBuf::from(percent_decode(value, &format!("{name}= path"))?));
    }
    params.insecure = insecure.unwrap_or(false);
    match (&params.cert, &params.key) {
        (Some(_), None) => return Err(bad("cert= needs key= (the client certificate's private key)")),
        (None, Some(_)) => return Err(bad("key= needs cert= (the client certificate it belongs to)")),
        _ => {}
    }
    if params.insecure && params.ca.is_some() {
        return Err(bad("insecure=true turns off the verification ca= is for: pass one or the other"));
    }
    Ok(params)
}

/// The URL's syntax, without reading any file: the URL (without its TLS configuration) and, for
/// `rediss://`, the TLS parameters.
fn parse(s: &str) -> Result<(RedisUrl, Option<TlsParams>), RegistryError> {
    let (tls, rest) = if let Some(rest) = s.strip_prefix("redis://") {
        (false, rest)
    } else if let Some(rest) = s.strip_prefix("rediss://") {
        (true, rest)
    } else {
        return Err(bad("expected `embedded` or a URL starting with redis:// or rediss://"));
    };
    // With credentials, no piece of the URL is quoted: a password holding a raw `/` would spill
    // into what follows.
    let quote = !s.contains('@');
    let q = |piece: &str| if quote { format!(" {piece:?}") } else { String::new() };
    // The user information ends at the last `@` before the first `/`, so a password may hold a raw
    // `?` or `#`.
    let head = rest.find('/').unwrap_or(rest.len());
    let (userinfo, rest) = match rest[..head].rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    if rest.contains('#') {
        return Err(bad("fragments (#…) are not supported"));
    }
    let (rest, query) = match rest.find('?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let params = match (tls, query) {
        (true, query) => Some(parse_query(query.unwrap_or(""), quote)?),
        (false, Some(query)) if !query.is_empty() => {
            return Err(bad("query parameters (ca=, cert=, key=, insecure=) apply only to rediss:// (Redis over TLS)"));
        }
        (false, _) => None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
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
    let hostport = authority;
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
        return Err(bad(format!("invalid host{}", q(host))));
    }
    let port = match port {
        None => 6379,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad(format!("invalid port{}", q(p)))),
        },
    };
    let db = match path.trim_end_matches('/') {
        "" => 0,
        d => d.parse::<u32>().map_err(|_| bad(format!("invalid database number{}", q(d))))?,
    };
    Ok((RedisUrl { host: host.to_string(), port, db, username, password, tls: None }, params))
}

impl FromStr for RedisUrl {
    type Err = RegistryError;

    /// Parses, then reads the files a `rediss://` URL names. Errors never quote the password.
    fn from_str(s: &str) -> Result<RedisUrl, RegistryError> {
        let (mut url, params) = parse(s)?;
        if let Some(params) = params {
            url.tls = Some(Tls::load(params, &url.host)?);
        }
        Ok(url)
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
        assert!(err("http://h").contains("redis:// or rediss://"));
        assert!(err("redis://").contains("missing host"));
        assert!(err("redis://h:0").contains("invalid port"));
        assert!(err("redis://h:70000").contains("invalid port"));
        assert!(err("redis://h/x").contains("database"));
        assert!(err("redis://h?x=1").contains("query"));
        assert!(err("redis://h/0#x").contains("fragment"));
    }

    /// The syntax alone, without reading the files.
    fn tls_params(s: &str) -> (RedisUrl, TlsParams) {
        let (url, params) = super::parse(s).unwrap();
        (url, params.expect("a rediss:// URL"))
    }

    fn syntax_err(s: &str) -> String {
        super::parse(s).unwrap_err().to_string()
    }

    /// A scratch directory for files a test writes; removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("tug-registry-url-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, content: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path.to_str().unwrap().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn rediss_syntax() {
        let (u, p) = tls_params("rediss://alice:pw@cache.internal:6380/2");
        assert_eq!((u.host.as_str(), u.port, u.db, u.username.as_deref()), ("cache.internal", 6380, 2, Some("alice")));
        assert_eq!(p, TlsParams::default());
        assert_eq!(tls_params("rediss://h").0.port, 6379);
        let (u, p) = tls_params("rediss://:p%3Fw@[::1]:7000/1?ca=/etc/tug/ca.pem&cert=/c%20d.pem&key=k.pem");
        assert_eq!((u.host.as_str(), u.port, u.db, u.password.as_deref()), ("::1", 7000, 1, Some("p?w")));
        assert_eq!(p.ca.as_deref(), Some(Path::new("/etc/tug/ca.pem")));
        assert_eq!(p.cert.as_deref(), Some(Path::new("/c d.pem")));
        assert_eq!(p.key.as_deref(), Some(Path::new("k.pem")));
        assert!(!p.insecure);
        // The query may follow the host directly; a raw `?` or `#` in a password stays in it.
        assert_eq!(tls_params("rediss://h?ca=/x").1.ca.as_deref(), Some(Path::new("/x")));
        let (u, p) = tls_params("rediss://:a?b#c@h:1?insecure=true");
        assert_eq!((u.password.as_deref(), u.host.as_str(), p.insecure), (Some("a?b#c"), "h", true));
        assert!(!tls_params("rediss://h?insecure=false").1.insecure);
        // Plain redis:// has no parameters to take, but an empty query is harmless.
        assert_eq!(super::parse("redis://h?").unwrap().1, None);
    }

    #[test]
    fn rediss_rejected() {
        assert!(syntax_err("redis://h?ca=/x").contains("only to rediss://"));
        assert!(syntax_err("rediss://h?cafile=/x").contains("unknown query parameter \"cafile\""));
        assert!(syntax_err("rediss://h?ca=/x&ca=/y").contains("ca= is given twice"));
        assert!(syntax_err("rediss://h?ca=").contains("ca= needs a path"));
        assert!(syntax_err("rediss://h?cert=/c").contains("cert= needs key="));
        assert!(syntax_err("rediss://h?key=/k").contains("key= needs cert="));
        assert!(syntax_err("rediss://h?insecure=1").contains("true or false"));
        assert!(syntax_err("rediss://h?insecure").contains("true or false"));
        assert!(syntax_err("rediss://h?insecure=true&ca=/x").contains("one or the other"));
        assert!(syntax_err("rediss://h?ca=%zz").contains("%-escape"));
        assert!(syntax_err("rediss://h/0#frag").contains("fragment"));
        // Nothing of a URL with credentials is quoted: a mis-encoded password could be in any piece.
        for url in [
            "rediss://:hunter2@h?hunter2=1",
            "rediss://:hunter/2@h?x=1",
            "rediss://:hunter/2@h",
            "redis://u:hunter2/x@h",
            "rediss://:hunter2@h:hunter2",
        ] {
            let e = err(url);
            assert!(!e.contains("hunter") && !e.contains("2@h"), "{url}: {e}");
        }
    }

    #[test]
    fn rediss_loads_the_files_it_names() {
        let dir = Scratch::new("files");
        // A system bundle stands in for a private CA: the file is only read and parsed here.
        let bundle = crate::tls::SYSTEM_BUNDLES.iter().find(|p| Path::new(p).is_file()).expect("a CA bundle");
        let u = parse(&format!("rediss://:hunter2@h:1/3?ca={bundle}"));
        assert!(u.is_tls() && !u.is_insecure());
        assert_eq!(u.to_string(), format!("rediss://:********@h:1/3?ca={bundle}"));
        assert!(!format!("{u:?}").contains("hunter2"));
        // Without ca=, the system's CAs; parsing twice gives equal URLs.
        assert_eq!(parse("rediss://h"), parse("rediss://h"));
        assert_ne!(parse("rediss://h"), parse("redis://h"));
        let u = parse("rediss://h?insecure=true");
        assert!(u.is_insecure());
        assert_eq!(u.to_string(), "rediss://h:6379/0?insecure=true");
        assert!(!parse("redis://h").is_tls());

        // Missing, unreadable and non-PEM files: the parameter and the path, never the password.
        let missing = dir.0.join("nope.pem");
        let e = err(&format!("rediss://:hunter2@h?ca={}", missing.display()));
        assert!(e.contains(&format!("cannot read ca={}", missing.display())) && !e.contains("hunter2"), "{e}");
        let e = err(&format!("rediss://:hunter2@h?ca={}", dir.0.display()));
        assert!(e.contains(&format!("cannot read ca={}", dir.0.display())), "{e}");
        let junk = dir.file("junk.pem", "not a certificate\n");
        let e = err(&format!("rediss://:hunter2@h?ca={junk}"));
        assert!(e.contains(&format!("ca={junk} holds no PEM certificate")) && !e.contains("hunter2"), "{e}");
        let e = err(&format!("rediss://h?cert={junk}&key={junk}"));
        assert!(e.contains(&format!("cert={junk} holds no PEM certificate")), "{e}");
        let e = err(&format!("rediss://h?cert={bundle}&key={}", missing.display()));
        assert!(e.contains(&format!("cannot read key={}", missing.display())), "{e}");
        let e = err(&format!("rediss://h?cert={bundle}&key={junk}"));
        assert!(e.contains(&format!("key={junk} holds no PEM private key")), "{e}");
        let broken = dir.file("broken.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        let e = err(&format!("rediss://h?ca={broken}"));
        assert!(e.contains(&format!("ca={broken} is not valid PEM")), "{e}");
        // A path with characters the query uses is %-encoded, and shown so.
        let odd = dir.file("a&b c.pem", &std::fs::read_to_string(bundle).unwrap());
        let u = parse(&format!("rediss://h?ca={}", odd.replace('&', "%26").replace(' ', "%20")));
        assert!(u.to_string().ends_with("a%26b%20c.pem"), "{u}");
        assert_eq!(u.to_string().parse::<RedisUrl>().unwrap(), u);
        assert!(err("rediss://bad_host!?insecure=true").contains("server name"));
    }
}
