//! The HTTP side: request bodies, query and path encoding, bounded body reading, the engine's
//! error bodies, and the splitting of streamed JSON messages and output lines.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

/// The most read of a JSON answer (a container list, an inspect).
pub(crate) const JSON_LIMIT: usize = 8 << 20;
/// The most read of an error answer.
pub(crate) const ERROR_LIMIT: usize = 1 << 20;
/// The longest single message in a JSON message stream (pull, build).
pub(crate) const MESSAGE_LIMIT: usize = 4 << 20;
/// The longest line reported from build output; longer ones are cut into pieces.
pub(crate) const LINE_LIMIT: usize = 64 << 10;
/// How much of the engine's message an error keeps when it is not JSON.
const TEXT_MESSAGE_LIMIT: usize = 4096;

/// A request body: nothing, bytes, or chunks from a producer (the build context).
pub(crate) enum ReqBody {
    Empty,
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<io::Result<Bytes>>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match &mut *self {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Channel(rx) => rx.poll_recv(cx).map(|item| item.map(|chunk| chunk.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(bytes) => bytes.is_none(),
            ReqBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// One request to the engine, before it is sent.
pub(crate) struct Call {
    pub(crate) method: Method,
    /// The path without the version prefix, already encoded.
    pub(crate) path: String,
    pub(crate) query: Vec<(&'static str, String)>,
    pub(crate) body: ReqBody,
    pub(crate) content_type: Option<&'static str>,
    /// Ask for the connection to become a raw stream (attach, exec start).
    pub(crate) upgrade: bool,
    /// Send the path without the `/v1.41` prefix.
    pub(crate) unversioned: bool,
}

impl Call {
    pub(crate) fn new(method: Method, path: impl Into<String>) -> Call {
        Call {
            method,
            path: path.into(),
            query: Vec::new(),
            body: ReqBody::Empty,
            content_type: None,
            upgrade: false,
            unversioned: false,
        }
    }

    pub(crate) fn get(path: impl Into<String>) -> Call {
        Call::new(Method::GET, path)
    }

    pub(crate) fn post(path: impl Into<String>) -> Call {
        Call::new(Method::POST, path)
    }

    pub(crate) fn delete(path: impl Into<String>) -> Call {
        Call::new(Method::DELETE, path)
    }

    pub(crate) fn query(mut self, name: &'static str, value: impl Into<String>) -> Call {
        self.query.push((name, value.into()));
        self
    }

    pub(crate) fn json(mut self, value: &Value) -> Call {
        self.body = ReqBody::Full(Some(Bytes::from(value.to_string())));
        self.content_type = Some("application/json");
        self
    }

    pub(crate) fn upgrade(mut self) -> Call {
        self.upgrade = true;
        self
    }

    /// The path and query as sent.
    pub(crate) fn target(&self) -> String {
        let mut target = self.versioned_path();
        for (i, (name, value)) in self.query.iter().enumerate() {
            target.push(if i == 0 { '?' } else { '&' });
            target.push_str(name);
            target.push('=');
            target.push_str(&encode(value, b""));
        }
        target
    }

    /// How messages name the request: method and path, without the query (which can be long).
    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.method, self.versioned_path())
    }

    fn versioned_path(&self) -> String {
        if self.unversioned { self.path.clone() } else { format!("/v{}{}", crate::API_VERSION, self.path) }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `keep`.
pub(crate) fn encode(value: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A path segment naming a container, exec, volume or network: nothing in it can change the path.
pub(crate) fn segment(value: &str) -> String {
    encode(value, b"")
}

/// A path part naming an image, which may hold `/`, `:` and `@` as the engine's router expects.
pub(crate) fn image_segment(reference: &str) -> String {
    // `..` segments would let a reference address another endpoint.
    let safe = reference.split('/').all(|s| s != ".." && s != ".");
    if safe { encode(reference, b"/:@") } else { encode(reference, b":@") }
}

/// Reads a whole body, refusing one over `limit` bytes.
pub(crate) async fn read_bounded(body: &mut Incoming, limit: usize, request: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer to {request}: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(format!("the answer to {request} is over {} bytes", limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The engine's explanation in an error body: `{"message": "…"}`, else the text itself.
pub(crate) fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body)
        && let Some(Value::String(message)) = map.get("message")
    {
        return message.trim().to_string();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status.canonical_reason().unwrap_or("no explanation").to_string();
    }
    truncate(text, TEXT_MESSAGE_LIMIT)
}

fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Splits a stream of concatenated JSON values (pull and build progress) that arrive in arbitrary
/// chunks: complete values come out, an incomplete tail waits for the next chunk.
#[derive(Default)]
pub(crate) struct JsonStream {
    buf: Vec<u8>,
}

impl JsonStream {
    /// Adds a chunk; returns the values it completed.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Value>, String> {
        self.buf.extend_from_slice(chunk);
        let mut values = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        let consumed = loop {
            let before = stream.byte_offset();
            match stream.next() {
                Some(Ok(value)) => values.push(value),
                Some(Err(e)) if e.is_eof() => break before,
                Some(Err(e)) => return Err(format!("a message is not JSON: {e}")),
                None => break stream.byte_offset(),
            }
        };
        self.buf.drain(..consumed);
        if self.buf.len() > MESSAGE_LIMIT {
            return Err(format!("a message is over {MESSAGE_LIMIT} bytes"));
        }
        Ok(values)
    }

    /// At the end of the stream: what is left must be whitespace.
    pub(crate) fn finish(&self) -> Result<(), String> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err("the stream ended inside a message".to_string())
        }
    }
}

/// Cuts text that arrives in pieces into lines (without `\n` or a trailing `\r`), bounded.
#[derive(Default)]
pub(crate) struct Lines {
    partial: String,
}

impl Lines {
    pub(crate) fn push(&mut self, text: &str, out: &mut Vec<String>) {
        for piece in text.split_inclusive('\n') {
            match piece.strip_suffix('\n') {
                Some(end) => {
                    self.partial.push_str(end);
                    let mut line = std::mem::take(&mut self.partial);
                    if line.ends_with('\r') {
                        line.pop();
                    }
                    out.push(truncate_line(line));
                }
                None => {
                    self.partial.push_str(piece);
                    if self.partial.len() >= LINE_LIMIT {
                        out.push(truncate_line(std::mem::take(&mut self.partial)));
                    }
                }
            }
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() {
            out.push(truncate_line(std::mem::take(&mut self.partial)));
        }
    }
}

fn truncate_line(line: String) -> String {
    if line.len() <= LINE_LIMIT { line } else { truncate(&line, LINE_LIMIT) }
}

/// The last `n` lines seen.
pub(crate) struct Tail {
    lines: VecDeque<String>,
    n: usize,
}

impl Tail {
    pub(crate) fn new(n: usize) -> Tail {
        Tail { lines: VecDeque::with_capacity(n), n }
    }

    pub(crate) fn push(&mut self, line: &str) {
        if self.lines.len() == self.n {
            self.lines.pop_front();
        }
        self.lines.push_back(truncate(line, 1000));
    }

    pub(crate) fn into_vec(self) -> Vec<String> {
        self.lines.into()
    }
}

/// The text of an `error`/`errorDetail` message in a pull or build stream.
pub(crate) fn stream_error(message: &Value) -> Option<String> {
    let detail = message.get("errorDetail").and_then(|d| d.get("message")).and_then(Value::as_str);
    let error = message.get("error").and_then(Value::as_str);
    detail.or(error).map(|m| m.trim().to_string()).or_else(|| {
        // An `error` that is not a string is still an error.
        message.get("error").filter(|e| !e.is_null()).map(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_values_are_percent_encoded() {
        let call = Call::post("/images/create")
            .query("fromImage", "localhost:5000/team/app")
            .query("tag", "1.0")
            .query("filters", json!({"label": ["a=b c"]}).to_string());
        assert_eq!(
            call.target(),
            "/v1.41/images/create?fromImage=localhost%3A5000%2Fteam%2Fapp&tag=1.0&filters=%7B%22label%22%3A%5B%22a%3Db%20c%22%5D%7D"
        );
        assert_eq!(call.describe(), "POST /v1.41/images/create");
        assert_eq!(encode("é&#?", b""), "%C3%A9%26%23%3F");
    }

    #[test]
    fn path_segments_cannot_escape() {
        assert_eq!(segment("../../images/x"), "..%2F..%2Fimages%2Fx");
        assert_eq!(image_segment("localhost:5000/app@sha256:ab"), "localhost:5000/app@sha256:ab");
        assert_eq!(image_segment("../containers/x"), "..%2Fcontainers%2Fx");
        assert_eq!(image_segment("a b?c#d"), "a%20b%3Fc%23d");
    }

    #[test]
    fn error_messages_come_from_the_json_body_or_the_text() {
        let status = StatusCode::NOT_FOUND;
        assert_eq!(error_message(status, br#"{"message":"No such container: x\n"}"#), "No such container: x");
        assert_eq!(error_message(status, b"page not found\n"), "page not found");
        assert_eq!(error_message(status, b""), "Not Found");
        assert_eq!(error_message(status, &[b'x'; 10_000]).chars().count(), TEXT_MESSAGE_LIMIT + 1);
    }

    #[test]
    fn json_stream_keeps_incomplete_tails() {
        let text = br#"{"stream":"Step 1/2\n"}{"aux":{"ID":"sha256:abc"}}  {"status":"ok"}"#;
        // Every split point, including inside strings and escapes.
        for cut in 0..text.len() {
            let mut stream = JsonStream::default();
            let mut values = stream.push(&text[..cut]).unwrap();
            values.extend(stream.push(&text[cut..]).unwrap());
            stream.finish().unwrap();
            assert_eq!(values.len(), 3, "cut at {cut}");
            assert_eq!(values[1]["aux"]["ID"], "sha256:abc");
        }
        // One byte at a time, with newlines between messages.
        let mut stream = JsonStream::default();
        let mut values = Vec::new();
        for b in b"{\"a\":1}\r\n{\"b\":[1,2]}\n" {
            values.extend(stream.push(&[*b]).unwrap());
        }
        assert_eq!(values, vec![json!({"a": 1}), json!({"b": [1, 2]})]);
    }

    #[test]
    fn json_stream_refuses_garbage_and_truncation() {
        assert!(JsonStream::default().push(b"{\"a\":1} nonsense").is_err());
        let mut stream = JsonStream::default();
        assert!(stream.push(b"{\"a\":").unwrap().is_empty());
        assert!(stream.finish().is_err());
        let mut stream = JsonStream::default();
        let huge = vec![b'['; MESSAGE_LIMIT + 1];
        assert!(stream.push(&huge).is_err());
    }

    #[test]
    fn lines_are_split_across_pieces() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        lines.push("Step 1/3 : FROM scratch\n ---> ", &mut out);
        lines.push("abc\r\nhalf", &mut out);
        lines.push(" line", &mut out);
        lines.finish(&mut out);
        assert_eq!(out, ["Step 1/3 : FROM scratch", " ---> abc", "half line"]);
        let mut out = Vec::new();
        lines.push(&"x".repeat(LINE_LIMIT + 10), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn stream_errors_prefer_the_detail() {
        let message = json!({"errorDetail": {"code": 1, "message": "detail"}, "error": "short"});
        assert_eq!(stream_error(&message).as_deref(), Some("detail"));
        assert_eq!(stream_error(&json!({"error": "only"})).as_deref(), Some("only"));
        assert_eq!(stream_error(&json!({"stream": "fine"})), None);
    }
}
