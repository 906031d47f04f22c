//! The CLI's side of the control API: signed HTTP/1.1 requests over the stack's
//! Unix socket, one request per connection, blocking.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tug_proto::auth::{self, ApiKey};

pub struct Client {
    socket: PathBuf,
    key: ApiKey,
}

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

impl From<RequestError> for String {
    fn from(e: RequestError) -> String {
        e.to_string()
    }
}

impl Client {
    pub fn new(state_dir: &Path, key: ApiKey) -> Client {
        Client { socket: state_dir.join(tug_proto::SOCKET_FILE), key }
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
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<tug_proto::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(RequestError::Status(status, message));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| RequestError::Other(format!("the daemon's answer to {method} {path} is not understood: {e}")))
    }

    /// Connects, and sends a signed request whose answer is to be read within `read_timeout`.
    fn send_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        read_timeout: Option<Duration>,
    ) -> Result<UnixStream, RequestError> {
        let mut stream = match UnixStream::connect(&self.socket) {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                return Err(RequestError::NoDaemon);
            }
            Err(e) => {
                return Err(RequestError::Other(format!("cannot reach the daemon at {}: {e}", self.socket.display())));
            }
        };
        let io = |e: std::io::Error| RequestError::Other(format!("the daemon connection failed: {e}"));
        stream.set_read_timeout(read_timeout).map_err(io)?;
        let signature = auth::sign(&self.key, method, path, body, tug_proto::unix_now())
            .map_err(|e| RequestError::Other(e.to_string()))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tug\r\nAuthorization: {signature}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body)).map_err(io)?;
        Ok(stream)
    }

    /// Sends a signed request; returns the status and body.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), RequestError> {
        let io = |e: std::io::Error| RequestError::Other(format!("the daemon connection failed: {e}"));
        let mut stream = self.send_request(method, path, body, Some(timeout + Duration::from_secs(5)))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(|e| match e.kind() {
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
        use std::io::BufRead;
        let body =
            serde_json::to_vec(body).map_err(|e| RequestError::Other(format!("cannot encode the request: {e}")))?;
        let io = |e: std::io::Error| RequestError::Other(format!("the daemon connection failed: {e}"));
        let stream = self.send_request("POST", path, &body, None)?;
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
        let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status != 200 {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).map_err(io)?;
            let mut whole = head;
            whole.extend(rest);
            let (status, bytes) = parse_response(&whole)
                .ok_or_else(|| RequestError::Other("the daemon sent a malformed answer".into()))?;
            let message = serde_json::from_slice::<tug_proto::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(RequestError::Status(status, message));
        }
        let mut buf = vec![0u8; 64 * 1024];
        if !chunked {
            loop {
                let n = reader.read(&mut buf).map_err(io)?;
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

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((200, b"{}".to_vec())));
        let chunked =
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((401, b"abcde".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
