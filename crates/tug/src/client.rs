//! The CLI's side of the control API: signed HTTP/1.1 requests over the stack's
//! Unix socket, or to a remote daemon's network endpoint (`--host`, over TLS or mTLS), one
//! request per connection, blocking.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tug_proto::auth::{self, ApiKey};

pub struct Client {
    transport: Transport,
    key: ApiKey,
}

enum Transport {
    Socket(PathBuf),
    Remote(Remote),
}

/// A daemon's network endpoint, as `--host` names it.
pub struct Remote {
    /// As given, for messages.
    pub url: String,
    host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
}

impl Remote {
    /// `https://HOST:PORT` (or `http://` for a loopback endpoint without TLS), with the CAs
    /// to trust (`--tls-ca`, else the system's) and a client certificate for mTLS.
    pub fn parse(
        url: &str,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Remote, String> {
        use crate::url::Problem;
        let bad = |why: &str| format!("--host {url}: {why} (expected https://HOST:PORT)");
        let u = crate::url::split(url).map_err(|problem| match problem {
            Problem::Scheme(scheme) => bad(&format!("`{scheme}://` is not http:// or https://")),
            Problem::NoScheme => bad("no scheme"),
            Problem::Credentials => bad("only a host and a port"),
            Problem::BadIpv6 => bad("a bad IPv6 address"),
            Problem::BadPort => bad("no port, or a bad one"),
            Problem::NoHost => bad("no host"),
        })?;
        if !matches!(u.rest, "" | "/") {
            return Err(bad("only a host and a port"));
        }
        let (tls, host) = (u.tls, u.host);
        let port = u.port.ok_or_else(|| bad("no port, or a bad one"))?;
        if !tls && (ca.is_some() || cert.is_some() || key.is_some()) {
            return Err(bad("--tls-ca, --tls-cert and --tls-key need https://"));
        }
        if cert.is_some() != key.is_some() {
            return Err("--tls-cert and --tls-key go together (a client certificate and its key)".into());
        }
        let tls = if tls {
            let config = tug_registry::tls::client_config(ca, cert, key).map_err(|e| {
                format!(
                    "--host {url}: {}",
                    e.replace("ca=", "--tls-ca ").replace("cert=", "--tls-cert ").replace("key=", "--tls-key ")
                )
            })?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| bad("the host is not a valid TLS server name"))?;
            Some((config, name))
        } else {
            None
        };
        Ok(Remote { url: url.to_string(), host, port, tls })
    }
}

/// A connection to the daemon, whatever carries it.
trait Connection: Read + Write + Send {}
impl<T: Read + Write + Send> Connection for T {}

/// Why a request did not get an answer or got an error answer.
#[derive(Debug)]
pub enum RequestError {
    /// No daemon listens on the socket.
    NoDaemon,
    /// The daemon answered with an error status.
    Status(u16, String),
    Other(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::NoDaemon => f.write_str("no daemon is running for this stack"),
            RequestError::Status(401, message) => write!(
                f,
                "the daemon refused the request: {message} (is TUG_API_KEY the key the daemon was started with?)"
            ),
            RequestError::Status(_, message) => f.write_str(message),
            RequestError::Other(message) => f.write_str(message),
        }
    }
}

/// How long an upload waits for the daemon to finish receiving another.
const UPLOAD_WAIT: Duration = Duration::from_secs(300);

impl From<RequestError> for String {
    fn from(e: RequestError) -> String {
        e.to_string()
    }
}

impl Client {
    pub fn new(state_dir: &Path, key: ApiKey) -> Client {
        Client { transport: Transport::Socket(state_dir.join(tug_proto::SOCKET_FILE)), key }
    }

    pub fn remote(remote: Remote, key: ApiKey) -> Client {
        Client { transport: Transport::Remote(remote), key }
    }

    /// Talks to a daemon on another host (`--host`): its processes are not this machine's.
    pub fn is_remote(&self) -> bool {
        matches!(self.transport, Transport::Remote(_))
    }

    fn open(&self, read_timeout: Option<Duration>) -> Result<Box<dyn Connection>, RequestError> {
        let io = |e: std::io::Error| RequestError::Other(format!("the daemon connection failed: {e}"));
        match &self.transport {
            Transport::Socket(socket) => {
                let stream = match UnixStream::connect(socket) {
                    Ok(s) => s,
                    Err(e)
                        if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
                    {
                        return Err(RequestError::NoDaemon);
                    }
                    Err(e) => {
                        return Err(RequestError::Other(format!(
                            "cannot reach the daemon at {}: {e}",
                            socket.display()
                        )));
                    }
                };
                stream.set_read_timeout(read_timeout).map_err(io)?;
                Ok(Box::new(stream))
            }
            Transport::Remote(remote) => {
                // A remote daemon that does not answer is an error, never a reason to start one here.
                let unreachable = |e: std::io::Error| RequestError::Other(format!("cannot reach {}: {e}", remote.url));
                let address = std::net::ToSocketAddrs::to_socket_addrs(&(remote.host.as_str(), remote.port))
                    .map_err(unreachable)?
                    .next()
                    .ok_or_else(|| RequestError::Other(format!("cannot resolve {}", remote.host)))?;
                let stream = TcpStream::connect_timeout(&address, Duration::from_secs(10)).map_err(unreachable)?;
                let _ = stream.set_nodelay(true);
                stream.set_read_timeout(read_timeout).map_err(io)?;
                stream.set_write_timeout(Some(Duration::from_secs(30))).map_err(io)?;
                match &remote.tls {
                    None => Ok(Box::new(stream)),
                    Some((config, name)) => {
                        let connection = rustls::ClientConnection::new(config.clone(), name.clone())
                            .map_err(|e| RequestError::Other(format!("TLS with {}: {e}", remote.url)))?;
                        let mut tls = rustls::StreamOwned::new(connection, stream);
                        // The handshake now, so that a refused certificate is reported as such.
                        while tls.conn.is_handshaking() {
                            tls.conn
                                .complete_io(&mut tls.sock)
                                .map_err(|e| RequestError::Other(format!("TLS with {} failed: {e}", remote.url)))?;
                        }
                        Ok(Box::new(tls))
                    }
                }
            }
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str, timeout: Duration) -> Result<T, RequestError> {
        self.request("GET", path, &[], timeout)
    }

    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, RequestError> {
        let body =
            serde_json::to_vec(body).map_err(|e| RequestError::Other(format!("cannot encode the request: {e}")))?;
        self.request(method, path, &body, timeout)
    }

    fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<T, RequestError> {
        let (status, bytes) = self.raw(method, path, body, timeout)?;
        decode_answer(method, path, status, &bytes)
    }

    /// As [`Client::send`], for a request the daemon answers as a stream (`?progress=1`):
    /// `progress` gets what it reports while it works (stderr frames), then the answer frame
    /// is read as `send` reads an unstreamed answer. No time limit, as for [`Client::stream`].
    pub fn send_with_progress<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
        progress: &mut dyn FnMut(&[u8]),
    ) -> Result<T, RequestError> {
        use tug_proto::stream::{Decoder, Frame};
        let body =
            serde_json::to_vec(body).map_err(|e| RequestError::Other(format!("cannot encode the request: {e}")))?;
        let streamed = self.open_stream(method, path, &body)?;
        if streamed.json {
            // A daemon from before `progress`: its whole answer, as `send` reads it.
            let mut bytes = Vec::new();
            streamed.pump(&mut |more| {
                bytes.extend_from_slice(more);
                Ok(())
            })?;
            return decode_answer(method, path, 200, &bytes);
        }
        let (mut decoder, mut answer) = (Decoder::default(), None);
        streamed.pump(&mut |bytes| {
            decoder.push(bytes);
            while let Some(frame) = decoder.next_frame()? {
                match frame {
                    Frame::Stderr(line) | Frame::Stdout(line) => progress(&line),
                    Frame::Answer(status, body) => answer = Some((status, body)),
                    Frame::Exit(_) | Frame::Error(_) => return Err("the daemon sent a command's frame".into()),
                }
            }
            Ok(())
        })?;
        match answer {
            Some((status, bytes)) => decode_answer(method, path, status, &bytes),
            None => Err(RequestError::Other(format!("the daemon ended {method} {path} without its answer"))),
        }
    }

    /// Connects, and sends a signed request whose answer is to be read within `read_timeout`.
    fn send_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        read_timeout: Option<Duration>,
    ) -> Result<Box<dyn Connection>, RequestError> {
        let digest = auth::body_digest(body);
        self.send_body(method, path, ("application/json", &digest, body.len() as u64), &mut &*body, read_timeout)
    }

    /// Connects and sends a signed request whose body (`kind`, `digest` as
    /// [`auth::body_digest`], length) is read from `body` as it is sent.
    fn send_body(
        &self,
        method: &str,
        path: &str,
        (kind, digest, length): (&str, &str, u64),
        body: &mut dyn Read,
        read_timeout: Option<Duration>,
    ) -> Result<Box<dyn Connection>, RequestError> {
        let mut stream = self.open(read_timeout)?;
        let io = |e: std::io::Error| RequestError::Other(format!("the daemon connection failed: {e}"));
        let signature = auth::sign_digest(&self.key, method, path, digest, tug_proto::unix_now())
            .map_err(|e| RequestError::Other(e.to_string()))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tug\r\nAuthorization: {signature}\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).map_err(io)?;
        match std::io::copy(&mut body.take(length), &mut stream) {
            Ok(sent) if sent != length => {
                return Err(RequestError::Other(format!("the body ended after {sent} of {length} bytes")));
            }
            Ok(_) => stream.flush().map_err(io)?,
            // The daemon answered before it took the whole body (a refusal): its answer says why.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {}
            Err(e) => return Err(io(e)),
        }
        Ok(stream)
    }

    /// Sends the file at `file` (its SHA-256 is `digest`) as `PUT /v1/uploads/<digest>`,
    /// streamed from disk; `timeout` is for the daemon's answer once it is sent.
    /// The daemon takes one upload at a time: while it is busy (503) the upload is asked again,
    /// for up to [`UPLOAD_WAIT`]. A busy daemon that refuses before reading a large body may
    /// reach this side as a broken connection: that is tried again too, a few times.
    pub fn upload(&self, file: &Path, digest: &str, timeout: Duration) -> Result<(), RequestError> {
        let failed = |e: std::io::Error| RequestError::Other(format!("cannot read {}: {e}", file.display()));
        let path = format!("/v1/uploads/{digest}");
        let started = std::time::Instant::now();
        let mut broken = 0;
        loop {
            let mut body = std::fs::File::open(file).map_err(failed)?;
            let length = body.metadata().map_err(failed)?.len();
            let kind = ("application/octet-stream", digest, length);
            let answer = self
                .send_body("PUT", &path, kind, &mut body, Some(timeout))
                .and_then(|mut stream| self.answer(&mut stream, "PUT", &path, timeout));
            match answer {
                Ok((200..300, _)) => return Ok(()),
                Ok((503, _)) if started.elapsed() < UPLOAD_WAIT => {}
                Ok((status, bytes)) => return Err(RequestError::Status(status, error_message(&bytes))),
                Err(RequestError::Other(_)) if broken < 3 && started.elapsed() < UPLOAD_WAIT => broken += 1,
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Sends a signed request; returns the status and body.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), RequestError> {
        let mut stream = self.send_request(method, path, body, Some(timeout + Duration::from_secs(5)))?;
        self.answer(&mut stream, method, path, timeout)
    }

    /// The status and body of the answer to a request sent on `stream`.
    fn answer(
        &self,
        stream: &mut Box<dyn Connection>,
        method: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), RequestError> {
        let io = |e: std::io::Error| RequestError::Other(format!("the daemon connection failed: {e}"));
        let mut response = Vec::new();
        read_all(stream, &mut response).map_err(|e| match e.kind() {
            // The read timeout: say so, rather than "Resource temporarily unavailable".
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => RequestError::Other(format!(
                "the daemon did not answer {method} {path} within {} s",
                (timeout + Duration::from_secs(5)).as_secs()
            )),
            _ => io(e),
        })?;
        parse_response(&response).ok_or_else(|| RequestError::Other("the daemon sent a malformed answer".into()))
    }
}

impl Client {
    /// Sends a signed request whose answer is a stream: `on_data` gets the body's bytes as they
    /// arrive. An error status is an error, with the daemon's message. No time limit: a
    /// command streams for as long as it runs.
    pub fn stream<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        on_data: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), RequestError> {
        let body =
            serde_json::to_vec(body).map_err(|e| RequestError::Other(format!("cannot encode the request: {e}")))?;
        self.stream_raw("POST", path, &body, on_data)
    }

    /// As [`Client::stream`], for any method and a raw body (`GET /v1/logs?follow=1`).
    pub fn stream_raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        on_data: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), RequestError> {
        self.open_stream(method, path, body)?.pump(on_data)
    }

    /// Sends a signed request and reads its answer's head: an error status is an error, with
    /// the daemon's message; a 200 is the body still to read.
    fn open_stream(&self, method: &str, path: &str, body: &[u8]) -> Result<Streamed, RequestError> {
        use std::io::BufRead;
        let io = |e: std::io::Error| RequestError::Other(format!("the daemon connection failed: {e}"));
        let stream = self.send_request(method, path, body, None)?;
        let mut reader = std::io::BufReader::new(stream);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let n = reader.read_until(b'\n', &mut head).map_err(io)?;
            if n == 0 || head.len() > 64 * 1024 {
                return Err(RequestError::Other("the daemon sent a malformed answer".into()));
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let chunked = text.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        let json = text.lines().any(|l| l.starts_with("content-type:") && l.contains("application/json"));
        let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status != 200 {
            let mut rest = Vec::new();
            read_all(&mut reader, &mut rest).map_err(io)?;
            let mut whole = head;
            whole.extend(rest);
            let (status, bytes) = parse_response(&whole)
                .ok_or_else(|| RequestError::Other("the daemon sent a malformed answer".into()))?;
            return Err(RequestError::Status(status, error_message(&bytes)));
        }
        Ok(Streamed { reader, chunked, json })
    }
}

/// A 200 answer whose body is still to be read.
struct Streamed {
    reader: std::io::BufReader<Box<dyn Connection>>,
    chunked: bool,
    /// A plain JSON body rather than frames (a daemon from before the request's `progress`).
    json: bool,
}

impl Streamed {
    /// Hands the body's bytes to `on_data` as they arrive, to its end.
    fn pump(mut self, on_data: &mut dyn FnMut(&[u8]) -> Result<(), String>) -> Result<(), RequestError> {
        use std::io::BufRead;
        let io = |e: std::io::Error| RequestError::Other(format!("the daemon connection failed: {e}"));
        let reader = &mut self.reader;
        let mut buf = vec![0u8; 64 * 1024];
        if !self.chunked {
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                    Err(e) => return Err(io(e)),
                };
                if n == 0 {
                    return Ok(());
                }
                on_data(&buf[..n]).map_err(RequestError::Other)?;
            }
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(io)? == 0 {
                return Err(RequestError::Other("the daemon's answer ended early".into()));
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| RequestError::Other("the daemon sent a malformed answer".into()))?;
            if size == 0 {
                return Ok(());
            }
            let mut left = size;
            while left > 0 {
                let n = reader.read(&mut buf[..left.min(64 * 1024)]).map_err(io)?;
                if n == 0 {
                    return Err(RequestError::Other("the daemon's answer ended early".into()));
                }
                on_data(&buf[..n]).map_err(RequestError::Other)?;
                left -= n;
            }
            line.clear();
            reader.read_line(&mut line).map_err(io)?;
        }
    }
}

/// An answer's body as `T`, or the daemon's error with its status.
fn decode_answer<T: DeserializeOwned>(method: &str, path: &str, status: u16, bytes: &[u8]) -> Result<T, RequestError> {
    if !(200..300).contains(&status) {
        return Err(RequestError::Status(status, error_message(bytes)));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| RequestError::Other(format!("the daemon's answer to {method} {path} is not understood: {e}")))
}

/// The daemon's message in an error answer.
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<tug_proto::ErrorBody>(bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

/// Reads to the end of the answer. A TLS peer that closes without close_notify (the daemon
/// drops the connection after `Connection: close`) has sent everything: not an error.
fn read_all(reader: &mut impl Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    match reader.read_to_end(out) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Err(e) => Err(e),
    }
}

fn parse_response(bytes: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = bytes[end + 4..].to_vec();
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some((status, body))
}

fn dechunk(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(bytes.get(..size)?);
        bytes = bytes.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use tug_proto::stream::Frame;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((200, b"{}".to_vec())));
        let chunked =
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((401, b"abcde".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    /// A daemon that answers one request with `answer` (a whole HTTP response), after reading it.
    fn one_answer(answer: Vec<u8>) -> Client {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            std::io::Read::read_exact(&mut reader, &mut vec![0; length]).unwrap();
            reader.get_mut().write_all(&answer).unwrap();
        });
        let remote = Remote::parse(&format!("http://127.0.0.1:{port}"), None, None, None).unwrap();
        Client::remote(remote, ApiKey::from_text("a-test-key-0123456789").unwrap())
    }

    fn streamed(frames: &[Frame]) -> Vec<u8> {
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-type: {}\r\n\r\n", tug_proto::stream::CONTENT_TYPE).into_bytes();
        answer.extend(frames.iter().flat_map(Frame::encode));
        answer
    }

    #[test]
    fn progress_lines_come_before_the_answer_and_an_error_answer_is_an_error() {
        let client = one_answer(streamed(&[
            Frame::Stderr(b"web: Step 1/2 : FROM scratch\n".to_vec()),
            Frame::Stderr(b"web: Step 2/2 : COPY . /\n".to_vec()),
            Frame::Answer(200, br#"{"ok":true}"#.to_vec()),
        ]));
        let mut shown: Vec<u8> = Vec::new();
        let answer: serde_json::Value =
            client.send_with_progress("PUT", "/v1/stack?progress=1", &(), &mut |l| shown.extend_from_slice(l)).unwrap();
        assert_eq!(answer["ok"], true);
        assert_eq!(shown, b"web: Step 1/2 : FROM scratch\nweb: Step 2/2 : COPY . /\n".to_vec());

        let client = one_answer(streamed(&[Frame::Answer(409, br#"{"error":"port 80 is taken"}"#.to_vec())]));
        let refused =
            client.send_with_progress::<_, serde_json::Value>("PUT", "/v1/stack?progress=1", &(), &mut |_| {});
        assert!(matches!(refused, Err(RequestError::Status(409, ref m)) if m == "port 80 is taken"), "{refused:?}");

        // A stream cut before its answer is an error, not an empty success.
        let client = one_answer(streamed(&[Frame::Stderr(b"web: Step 1/2\n".to_vec())]));
        let cut = client.send_with_progress::<_, serde_json::Value>("PUT", "/v1/stack?progress=1", &(), &mut |_| {});
        assert!(matches!(cut, Err(RequestError::Other(ref m)) if m.contains("without its answer")), "{cut:?}");
    }

    #[test]
    fn a_daemon_from_before_progress_answers_plain_json_and_is_understood() {
        let body = br#"{"ok":true}"#;
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes();
        answer.extend_from_slice(body);
        let client = one_answer(answer);
        let answer: serde_json::Value =
            client.send_with_progress("PUT", "/v1/stack?progress=1", &(), &mut |_| panic!("no progress")).unwrap();
        assert_eq!(answer["ok"], true);
    }
}
