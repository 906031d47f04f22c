//! Just enough HTTP/1.1: reading and parsing a request head, discarding its body, writing a response head.

use std::io::{self, BufRead, Write};

/// The largest request head (request line and header fields) accepted; larger ones get 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug)]
pub enum ReadError {
    /// The connection failed or closed in the middle of a request: nothing can be answered.
    Io,
    /// The head is larger than [`MAX_HEAD`]: answer 431.
    TooLarge,
    /// The request is malformed: answer 400.
    Bad(&'static str),
    /// Not HTTP/1.0 or HTTP/1.1: answer 505.
    Version,
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

/// Reads one request head into `head` (terminator included). `Ok(false)` is a clean end of the connection
/// before a request started. Empty lines before a request line are skipped (RFC 9112, 2.2).
pub fn read_head(r: &mut impl BufRead, head: &mut Vec<u8>) -> Result<bool, ReadError> {
    head.clear();
    loop {
        let avail = match r.fill_buf() {
            Ok(avail) => avail,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if avail.is_empty() {
            return if head.is_empty() { Ok(false) } else { Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()) };
        }
        if head.is_empty() {
            let blank = avail.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            if blank > 0 {
                r.consume(blank);
                continue;
            }
        }
        let old = head.len();
        head.extend_from_slice(avail);
        match head_end(head, old.saturating_sub(3)) {
            Some(end) => {
                head.truncate(end);
                r.consume(end - old);
                return if end > MAX_HEAD { Err(ReadError::TooLarge) } else { Ok(true) };
            }
            None => {
                let used = avail.len();
                r.consume(used);
                if head.len() > MAX_HEAD {
                    return Err(ReadError::TooLarge);
                }
            }
        }
    }
}

/// The index just past the empty line that ends a head (`\n\n` or `\n\r\n`), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + nl;
        match buf.get(at + 1..) {
            Some([b'\n', ..]) => return Some(at + 2),
            Some([b'\r', b'\n', ..]) => return Some(at + 3),
            _ => i = at + 1,
        }
    }
    None
}

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head as read by [`read_head`].
pub fn parse_head(head: &[u8]) -> Result<Request, ReadError> {
    let mut lines = head.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad("the request line is not `METHOD TARGET HTTP/1.1`"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(ReadError::Bad("the method is not a token"));
    }
    if target.is_empty() || !target.iter().all(|&b| b > b' ' && b < 0x7f) {
        return Err(ReadError::Bad("the request target has no path or holds a control character"));
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        [b'H', b'T', b'T', b'P', b'/', d, b'.', _] if d.is_ascii_digit() => return Err(ReadError::Version),
        _ => return Err(ReadError::Bad("the protocol version is not HTTP/1.x")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(ReadError::Bad("a header line is folded (obs-fold)"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ReadError::Bad("a header line has no colon"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ReadError::Bad("a header name is not a token"));
        }
        let value = value.trim_ascii();
        if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(ReadError::Bad("a header value holds a control character"));
        }
        // Header names are tokens, so ASCII: from_utf8 cannot fail on them.
        headers.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
    Ok(Request {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        minor,
        headers,
    })
}

impl Request {
    /// The values of a header (case-insensitive name), in order.
    pub fn headers<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).next()
    }

    /// Whether a comma-separated header (such as `Connection`) holds `token`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers(name).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(path, _)| path)
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, query)| query)
    }

    /// A query parameter, percent-decoded (the last one when repeated).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query().split('&').rev().find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// Whether the client wants the connection kept open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        self.minor >= 1 || self.has_token("connection", "keep-alive")
    }

    /// How the body is delimited; a request that is ambiguous about it is refused, so that the
    /// connection never gets out of step (request smuggling).
    pub fn framing(&self) -> Result<Framing, ReadError> {
        let mut codings = self.headers("transfer-encoding").flat_map(|v| v.split(',')).map(str::trim).peekable();
        if codings.peek().is_some() {
            if self.minor == 0 {
                return Err(ReadError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if self.header("content-length").is_some() {
                return Err(ReadError::Bad("both Transfer-Encoding and Content-Length"));
            }
            return match codings.last() {
                Some(last) if last.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
                _ => Err(ReadError::Bad("the last transfer coding is not chunked")),
            };
        }
        let mut length = None;
        for value in self.headers("content-length").flat_map(|v| v.split(',')).map(str::trim) {
            let n = match value.parse::<u64>() {
                Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(ReadError::Bad("Content-Length is not a number")),
            };
            if length.is_some_and(|l| l != n) {
                return Err(ReadError::Bad("different Content-Length values"));
            }
            length = Some(n);
        }
        Ok(match length {
            None | Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        })
    }
}

/// Decodes `%XX` escapes and `+`; anything else, including a `%` that starts no escape, is kept.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some() => {
                out.push((hex(bytes[i + 1]).unwrap_or(0) * 16 + hex(bytes[i + 2]).unwrap_or(0)) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads and discards a request body; returns its length.
pub fn discard_body(r: &mut impl BufRead, framing: Framing) -> Result<u64, ReadError> {
    match framing {
        Framing::None => Ok(0),
        Framing::Length(n) => {
            skip(r, n)?;
            Ok(n)
        }
        Framing::Chunked => {
            let mut total = 0u64;
            let mut line = Vec::new();
            loop {
                read_line(r, &mut line, MAX_CHUNK_LINE)?;
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let rest = &line[digits..];
                if digits == 0 || !(rest.is_empty() || rest[0] == b';' || rest[0] == b' ' || rest[0] == b'\t') {
                    return Err(ReadError::Bad("a chunk size is not a hexadecimal number"));
                }
                let size = std::str::from_utf8(&line[..digits])
                    .ok()
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    .ok_or(ReadError::Bad("a chunk size is too large"))?;
                if size == 0 {
                    break;
                }
                skip(r, size)?;
                total = total.saturating_add(size);
                read_line(r, &mut line, 2)?;
                if !line.is_empty() {
                    return Err(ReadError::Bad("a chunk does not end with CRLF"));
                }
            }
            // Trailer fields, up to an empty line.
            let mut trailers = 0;
            loop {
                read_line(r, &mut line, MAX_HEAD)?;
                trailers += line.len() + 2;
                if trailers > MAX_HEAD {
                    return Err(ReadError::TooLarge);
                }
                if line.is_empty() {
                    return Ok(total);
                }
            }
        }
    }
}

fn skip(r: &mut impl BufRead, mut n: u64) -> Result<(), ReadError> {
    while n > 0 {
        let avail = match r.fill_buf() {
            Ok([]) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(avail) => avail.len(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let used = avail.min(usize::try_from(n).unwrap_or(usize::MAX));
        r.consume(used);
        n -= used as u64;
    }
    Ok(())
}

/// Reads a line into `line` without its `\n` or `\r\n`; a longer line than `limit` is malformed.
fn read_line(r: &mut impl BufRead, line: &mut Vec<u8>, limit: usize) -> Result<(), ReadError> {
    line.clear();
    loop {
        let avail = match r.fill_buf() {
            Ok([]) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(avail) => avail,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let (used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        line.extend_from_slice(&avail[..used]);
        r.consume(used);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(());
        }
        if line.len() > limit + 1 {
            return Err(ReadError::Bad("a line of the body framing is too long"));
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes a response head with `Content-Length`, and `Connection: close` when the connection ends after it.
pub fn write_head(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    content_length: u64,
    close: bool,
) -> io::Result<()> {
    write!(w, "HTTP/1.1 {status} {}\r\n", reason(status))?;
    for (name, value) in headers {
        write!(w, "{name}: {value}\r\n")?;
    }
    let connection = if close { "close" } else { "keep-alive" };
    write!(w, "Content-Length: {content_length}\r\nConnection: {connection}\r\n\r\n")
}

/// Appends `text` to `out` as a JSON string.
pub fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Read};

    fn read_all_heads(input: &[u8], capacity: usize) -> Vec<Result<Vec<u8>, String>> {
        let mut r = BufReader::with_capacity(capacity, input);
        let mut out = Vec::new();
        let mut head = Vec::new();
        loop {
            match read_head(&mut r, &mut head) {
                Ok(true) => out.push(Ok(head.clone())),
                Ok(false) => return out,
                Err(e) => {
                    out.push(Err(format!("{e:?}")));
                    return out;
                }
            }
        }
    }

    #[test]
    fn heads_are_split_at_the_empty_line_whatever_the_buffer_size() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /b HTTP/1.1\n\nPOST /c HTTP/1.1\r\n\r\n";
        for capacity in [1, 2, 3, 5, 7, 64, 4096] {
            let heads = read_all_heads(input, capacity);
            let heads: Vec<Vec<u8>> = heads.into_iter().map(Result::unwrap).collect();
            assert_eq!(
                heads,
                [&b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"GET /b HTTP/1.1\n\n", b"POST /c HTTP/1.1\r\n\r\n"],
                "capacity {capacity}"
            );
        }
        let incomplete = read_all_heads(b"GET / HTTP/1.1\r\nHost: x\r\n", 8);
        assert!(incomplete[0].as_ref().unwrap_err().starts_with("Io"));
    }

    #[test]
    fn heads_over_16_kib_are_too_large() {
        let head = |size: usize| {
            let start = b"GET / HTTP/1.1\r\nX: ".to_vec();
            let mut h = start.clone();
            h.resize(size - 4, b'a');
            h.extend_from_slice(b"\r\n\r\n");
            h
        };
        let fits = head(MAX_HEAD);
        assert_eq!(read_all_heads(&fits, 8192)[0].as_ref().unwrap(), &fits);
        for capacity in [100, 8192, 65536] {
            assert_eq!(read_all_heads(&head(MAX_HEAD + 1), capacity)[0], Err("TooLarge".into()));
            assert_eq!(read_all_heads(&vec![b'a'; 100_000], capacity)[0], Err("TooLarge".into()));
        }
    }

    #[test]
    fn request_lines_and_headers() {
        let req = parse_head(b"GET /echo?a=1&b=x%20y+z HTTP/1.1\r\nHost: example\r\nX-Forwarded-For:  1.2.3.4 \r\nx-forwarded-for: 5.6.7.8\r\n\r\n").unwrap();
        assert_eq!((req.method.as_str(), req.target.as_str(), req.minor), ("GET", "/echo?a=1&b=x%20y+z", 1));
        assert_eq!((req.path(), req.query()), ("/echo", "a=1&b=x%20y+z"));
        assert_eq!(req.param("b").as_deref(), Some("x y z"));
        assert_eq!(req.param("c"), None);
        assert_eq!(req.header("HOST"), Some("example"));
        assert_eq!(req.headers("X-Forwarded-For").collect::<Vec<_>>(), ["1.2.3.4", "5.6.7.8"]);
        assert!(req.keep_alive());
        assert_eq!(req.framing().unwrap(), Framing::None);

        let old = parse_head(b"GET / HTTP/1.0\n\n").unwrap();
        assert!(!old.keep_alive());
        let old = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(old.keep_alive());
        let close = parse_head(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").unwrap();
        assert!(!close.keep_alive());

        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 x\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /a\x01 HTTP/1.1\r\n\r\n",
            b"GET / FTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nName : x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: \x00\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(ReadError::Bad(_))),
                "{:?} should be refused",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(parse_head(b"GET / HTTP/2.0\r\n\r\n"), Err(ReadError::Version)));
        // Values that are not UTF-8 (obs-text) are kept, lossily.
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nA: caf\xe9\r\n\r\n").unwrap().header("a"), Some("caf\u{fffd}"));
    }

    #[test]
    fn body_framing() {
        let framing = |head: &str| parse_head(head.as_bytes()).and_then(|r| r.framing());
        assert_eq!(framing("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap(), Framing::Length(12));
        assert_eq!(framing("POST / HTTP/1.1\r\nContent-Length: 12, 12\r\n\r\n").unwrap(), Framing::Length(12));
        assert_eq!(framing("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap(), Framing::None);
        assert_eq!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").unwrap(), Framing::Chunked);
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(framing(bad), Err(ReadError::Bad(_))), "{bad:?} should be refused");
        }
    }

    #[test]
    fn bodies_are_discarded_exactly() {
        let mut r = BufReader::with_capacity(3, &b"helloNEXT"[..]);
        assert_eq!(discard_body(&mut r, Framing::Length(5)).unwrap(), 5);
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");

        let chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for capacity in [1, 4, 1024] {
            let mut r = BufReader::with_capacity(capacity, &chunked[..]);
            assert_eq!(discard_body(&mut r, Framing::Chunked).unwrap(), 11);
            let mut rest = String::new();
            r.read_to_string(&mut rest).unwrap();
            assert_eq!(rest, "NEXT");
        }
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX0\r\n\r\n", b"fffffffffffffffffff\r\n", b";\r\n"] {
            let mut r = BufReader::new(bad);
            assert!(matches!(discard_body(&mut r, Framing::Chunked), Err(ReadError::Bad(_))), "{bad:?}");
        }
        let mut r = BufReader::new(&b"5\r\nhel"[..]);
        assert!(matches!(discard_body(&mut r, Framing::Chunked), Err(ReadError::Io)));
        let mut r = BufReader::new(&b"abc"[..]);
        assert!(matches!(discard_body(&mut r, Framing::Length(5)), Err(ReadError::Io)));
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("30%"), "30%");
        assert_eq!(percent_decode("30%25"), "30%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz+%41"), "%zz A");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
