//! A request's header block as an `http` request head, checked as RFC 9113 §8.1-8.3 requires:
//! what is malformed is refused with the reason, never guessed at.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Uri};

/// A request head, before its body.
pub(crate) struct Head {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// `content-length`, which the DATA frames must add up to.
    pub content_length: Option<u64>,
}

/// Collects the fields of a request's or trailers' header block as the decoder yields them.
/// Every field is looked at, even after the first problem: the block is decoded whole anyway,
/// to keep the connection's HPACK table in step.
#[derive(Default)]
pub(crate) struct Fields {
    trailers: bool,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: past it fields are counted, no longer kept, so a block
    /// of repeated indexed fields cannot decode into more memory than the limit.
    limit: usize,
    method: Option<Method>,
    scheme: Option<Vec<u8>>,
    authority: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    headers: HeaderMap,
    cookies: Vec<u8>,
    content_length: Option<u64>,
    /// The list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (§6.5.2).
    pub size: usize,
    regular_seen: bool,
    problem: Option<&'static str>,
}

/// Connection-specific fields, which HTTP/2 forbids (§8.2.2).
pub(crate) const CONNECTION_SPECIFIC: [&str; 5] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];

impl Fields {
    pub(crate) fn request(limit: usize) -> Fields {
        Fields { limit, ..Fields::default() }
    }

    pub(crate) fn trailers(limit: usize) -> Fields {
        Fields { trailers: true, limit, ..Fields::default() }
    }

    /// Whether the list is over the limit (the request gets 431, trailers a reset).
    pub(crate) fn over_limit(&self) -> bool {
        self.size > self.limit
    }

    fn refuse(&mut self, why: &'static str) {
        self.problem.get_or_insert(why);
    }

    pub(crate) fn field(&mut self, name: &[u8], value: &[u8]) {
        self.size += name.len() + value.len() + 32;
        if self.problem.is_some() || self.over_limit() {
            return;
        }
        if name.first() == Some(&b':') {
            return self.pseudo(name, value);
        }
        self.regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return self.refuse("a header name has upper-case letters");
        }
        if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
            || value.first().is_some_and(|&b| b == b' ' || b == b'\t')
            || value.last().is_some_and(|&b| b == b' ' || b == b'\t')
        {
            return self.refuse("a header value holds NUL, CR, LF or surrounding whitespace");
        }
        let Ok(name) = HeaderName::from_bytes(name) else { return self.refuse("a header name is not a token") };
        if CONNECTION_SPECIFIC.contains(&name.as_str()) {
            return self.refuse("a connection-specific header (connection, keep-alive, transfer-encoding, upgrade)");
        }
        if name == header::TE && value != b"trailers" {
            return self.refuse("te is other than `trailers`");
        }
        if name == header::COOKIE && !self.trailers {
            // Crumbs are joined for the HTTP/1.1 side (§8.2.3).
            if !self.cookies.is_empty() {
                self.cookies.extend_from_slice(b"; ");
            }
            self.cookies.extend_from_slice(value);
            return;
        }
        if name == header::CONTENT_LENGTH && !self.trailers {
            let parsed = std::str::from_utf8(value).ok().filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
            match parsed.and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if self.content_length.is_none_or(|m| m == n) => self.content_length = Some(n),
                _ => return self.refuse("content-length is not one number"),
            }
        }
        let Ok(value) = HeaderValue::from_bytes(value) else { return self.refuse("a header value is not valid") };
        if self.headers.try_append(name, value).is_err() {
            self.refuse("too many header fields");
        }
    }

    fn pseudo(&mut self, name: &[u8], value: &[u8]) {
        if self.trailers {
            return self.refuse("trailers hold a pseudo-header");
        }
        if self.regular_seen {
            return self.refuse("a pseudo-header comes after a regular header");
        }
        let slot = match name {
            b":method" => {
                if self.method.is_some() {
                    return self.refuse("a pseudo-header is repeated");
                }
                match Method::from_bytes(value) {
                    Ok(method) => self.method = Some(method),
                    Err(_) => self.refuse(":method is not a token"),
                }
                return;
            }
            b":scheme" => &mut self.scheme,
            b":authority" => &mut self.authority,
            b":path" => &mut self.path,
            _ => return self.refuse("an unknown pseudo-header"),
        };
        if slot.is_some() {
            return self.refuse("a pseudo-header is repeated");
        }
        *slot = Some(value.to_vec());
    }

    /// The request head, or why the request is malformed.
    pub(crate) fn into_request(mut self) -> Result<Head, &'static str> {
        if let Some(problem) = self.problem {
            return Err(problem);
        }
        let method = self.method.take().ok_or(":method is missing")?;
        if !self.cookies.is_empty() {
            let cookies = HeaderValue::from_bytes(&self.cookies).map_err(|_| "a cookie is not valid")?;
            self.headers.insert(header::COOKIE, cookies);
        }
        let authority = match &self.authority {
            // No userinfo (§8.3.1): `user@host` is not a host.
            Some(a) if a.contains(&b'@') => return Err(":authority holds userinfo"),
            Some(a) => Some(Authority::try_from(a.as_slice()).map_err(|_| ":authority is not a host[:port]")?),
            None => None,
        };
        let uri = if method == Method::CONNECT {
            // §8.5: only :authority (extended CONNECT is not offered).
            if self.scheme.is_some() || self.path.is_some() {
                return Err("CONNECT with :scheme or :path");
            }
            let authority = authority.ok_or("CONNECT without :authority")?;
            Uri::from_parts({
                let mut parts = hyper::http::uri::Parts::default();
                parts.authority = Some(authority);
                parts
            })
            .map_err(|_| ":authority is not a host[:port]")?
        } else {
            let scheme = self.scheme.as_deref().ok_or(":scheme is missing")?;
            let path = self.path.as_deref().filter(|p| !p.is_empty()).ok_or(":path is missing or empty")?;
            if path != b"*" && path[0] != b'/' {
                return Err(":path is not an absolute path");
            }
            if path == b"*" && method != Method::OPTIONS {
                return Err(":path `*` is only for OPTIONS");
            }
            let path = PathAndQuery::try_from(path).map_err(|_| ":path is not a valid path")?;
            let mut parts = hyper::http::uri::Parts::default();
            if let Some(authority) = authority {
                parts.scheme = Some(Scheme::try_from(scheme).map_err(|_| ":scheme is not valid")?);
                parts.authority = Some(authority);
            }
            parts.path_and_query = Some(path);
            Uri::from_parts(parts).map_err(|_| ":path is not a valid path")?
        };
        Ok(Head { method, uri, headers: self.headers, content_length: self.content_length })
    }

    /// The trailers, or why they are malformed.
    pub(crate) fn into_trailers(self) -> Result<HeaderMap, &'static str> {
        match self.problem {
            Some(problem) => Err(problem),
            None => Ok(self.headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(fields: &[(&str, &str)]) -> Result<Head, &'static str> {
        let mut f = Fields::request(64 << 10);
        for (n, v) in fields {
            f.field(n.as_bytes(), v.as_bytes());
        }
        f.into_request()
    }

    const GET: [(&str, &str); 4] =
        [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", "/x?y")];

    #[test]
    fn a_request_with_its_authority_is_in_absolute_form() {
        let head = request(&GET).unwrap();
        assert_eq!((head.method, head.uri.to_string()), (Method::GET, "http://a.test/x?y".to_string()));
        let head =
            request(&[(":method", "POST"), (":scheme", "http"), (":path", "/"), ("content-length", "3")]).unwrap();
        assert_eq!((head.uri.to_string(), head.content_length), ("/".to_string(), Some(3)));
    }

    #[test]
    fn cookies_are_joined() {
        let mut fields = GET.to_vec();
        fields.extend([("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")]);
        let head = request(&fields).unwrap();
        assert_eq!(head.headers.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let with = |extra: (&'static str, &'static str)| {
            let mut fields = GET.to_vec();
            fields.push(extra);
            request(&fields).err()
        };
        assert!(with(("Upper", "x")).is_some());
        assert!(with(("connection", "close")).is_some());
        assert!(with(("transfer-encoding", "chunked")).is_some());
        assert!(with(("te", "gzip")).is_some());
        assert_eq!(with(("te", "trailers")), None);
        assert!(with(("x", "a\nb")).is_some());
        assert!(with(("x", " padded")).is_some());
        assert!(with((":path", "/again")).is_some());
        assert!(with((":protocol", "websocket")).is_some());
        assert!(with(("content-length", "1, 2")).is_some());
        assert!(with(("content-length", "-1")).is_some());
        // A pseudo-header after a regular one.
        assert!(request(&[(":method", "GET"), ("x", "y"), (":scheme", "http"), (":path", "/")]).is_err());
        assert!(request(&[(":scheme", "http"), (":path", "/")]).is_err(), "no :method");
        assert!(request(&[(":method", "GET"), (":path", "/")]).is_err(), "no :scheme");
        assert!(request(&[(":method", "GET"), (":scheme", "http"), (":path", "")]).is_err());
        assert!(request(&[(":method", "GET"), (":scheme", "http"), (":path", "x")]).is_err());
        assert!(request(&[(":method", "GET"), (":scheme", "http"), (":path", "*")]).is_err());
        assert!(request(&[(":method", "OPTIONS"), (":scheme", "http"), (":path", "*")]).is_ok());
        assert!(request(&[(":method", "CONNECT"), (":authority", "a.test:443")]).is_ok());
        assert!(request(&[(":method", "CONNECT"), (":authority", "a.test:443"), (":path", "/")]).is_err());
        assert!(
            request(&[(":method", "GET"), (":scheme", "http"), (":authority", "u@a.test"), (":path", "/")]).is_err()
        );
    }

    #[test]
    fn past_the_limit_fields_are_counted_not_kept() {
        let mut f = Fields::request(1000);
        for (n, v) in GET {
            f.field(n.as_bytes(), v.as_bytes());
        }
        let value = "v".repeat(100);
        for _ in 0..100_000 {
            f.field(b"x-repeated", value.as_bytes());
        }
        assert!(f.over_limit());
        assert!(f.headers.len() < 10, "{} fields kept", f.headers.len());
        assert_eq!(f.size, GET.iter().map(|(n, v)| n.len() + v.len() + 32).sum::<usize>() + 100_000 * 142);
    }

    #[test]
    fn trailers_take_no_pseudo_headers() {
        let mut t = Fields::trailers(1024);
        t.field(b"grpc-status", b"0");
        assert_eq!(t.into_trailers().unwrap()["grpc-status"], "0");
        let mut t = Fields::trailers(1024);
        t.field(b":status", b"200");
        assert!(t.into_trailers().is_err());
    }
}
