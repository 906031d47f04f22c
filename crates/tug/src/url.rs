//! The one parser of the `http://` and `https://` URLs tug is given: webhook URLs (`notify`)
//! and the daemon's address (`--host`). Each caller words its own errors from [`Problem`].

/// A URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpUrl<'a> {
    pub tls: bool,
    /// Without the brackets of an IPv6 address.
    pub host: String,
    pub port: Option<u16>,
    /// The path and query as written ("" when the URL has none).
    pub rest: &'a str,
}

/// What is wrong with a URL.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// A scheme other than http and https (the scheme given).
    Scheme(String),
    NoScheme,
    /// `user:password@` in the authority.
    Credentials,
    BadIpv6,
    BadPort,
    NoHost,
}

pub fn split(url: &str) -> Result<HttpUrl<'_>, Problem> {
    let (tls, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some((scheme, _)) => return Err(Problem::Scheme(scheme.to_string())),
        None => return Err(Problem::NoScheme),
    };
    let (authority, rest) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(Problem::Credentials);
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or(Problem::BadIpv6)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or(Problem::BadPort)?)),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = port.map(|p| p.parse::<u16>().map_err(|_| Problem::BadPort)).transpose()?;
    if host.is_empty() {
        return Err(Problem::NoHost);
    }
    Ok(HttpUrl { tls, host: host.to_string(), port, rest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_port_and_the_rest() {
        let u = split("https://hooks.example.com/tug?x=1").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.rest), (true, "hooks.example.com", None, "/tug?x=1"));
        let u = split("http://127.0.0.1:9000").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.rest), (false, "127.0.0.1", Some(9000), ""));
        let u = split("http://[::1]:81/h").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.rest), ("::1", Some(81), "/h"));
        assert_eq!(split("http://x?q").unwrap().rest, "?q");
        assert_eq!(split("http://[::1]").unwrap().port, None);
        assert_eq!(split("ftp://x/"), Err(Problem::Scheme("ftp".into())));
        assert_eq!(split("x:80"), Err(Problem::NoScheme));
        assert_eq!(split("http://user:pw@x/"), Err(Problem::Credentials));
        assert_eq!(split("http://x:notaport/"), Err(Problem::BadPort));
        assert_eq!(split("http://x:70000"), Err(Problem::BadPort));
        assert_eq!(split("http://[::1/"), Err(Problem::BadIpv6));
        assert_eq!(split("http://[::1]x"), Err(Problem::BadPort));
        assert_eq!(split("http://:80"), Err(Problem::NoHost));
    }
}
