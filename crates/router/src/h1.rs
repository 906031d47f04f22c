//! The plain HTTP/1 path: the common request, proxied by the router itself.
//!
//! A *plain* request is a GET or HEAD in HTTP/1.1, in origin form, with exactly one valid
//! `Host`, no body, and no framing or hop-by-hop header beyond `Connection: keep-alive` or
//! `close`. Its head is parsed once (httparse, as hyper does), written again for the instance
//! with `X-Forwarded-For`/`-Proto`, and sent on a pooled connection; the answer's head is
//! checked and written again for the client, hop-by-hop headers removed, and its body copied
//! as it comes, framed as the instance framed it (a length, or chunks checked one by one), or
//! until the instance closes (the client is then told the connection closes too).
//!
//! Anything else on the connection (a body, an upgrade, a framing header, HTTP/1.0, an
//! absolute-form target, a head that does not parse or is too large) hands the connection,
//! with the bytes already read, to hyper (`http.rs`) for the rest of its life: the strict edge
//! and every unusual case stay hyper's, and this path has only to be right about what it takes.
//!
//! Why: through hyper, a request crossed from the client connection's task to the instance
//! connection's task and back, had its head parsed into a header map, copied and encoded twice,
//! and armed timers of its own. Here a request is one task, two reads and two writes, and two
//! buffers the connection keeps; its timers are armed once a connection and moved only when
//! they fire early.

use std::cell::RefCell;
use std::io;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::Policy;
use crate::balance;
use crate::http::{Client, Servers};
use crate::lifecycle::{Phase, jittered, reached};
use crate::stats::Counters;
use crate::table::{Endpoint, IdleStream, InFlight, Shared, Tried, lock};

/// Headers a head may have, as hyper allows; more goes to hyper, which answers 431.
const MAX_HEADERS: usize = 100;
/// Bytes read from either side at a time.
const READ_CHUNK: usize = 16 << 10;
/// The largest response head taken from an instance; a larger one is a 502.
const MAX_RESPONSE_HEAD: usize = 64 << 10;
/// The longest chunk-size line (extensions included) or trailer line in a chunked response.
const MAX_CHUNK_LINE: usize = 4 << 10;

/// Serves an HTTP/1 client connection until it closes, handing it to hyper at the first
/// request this path does not take.
pub(crate) async fn serve(stream: TcpStream, client: Arc<Client>, servers: Arc<Servers>) {
    let shared = client.shared.clone();
    let born = Instant::now();
    let age_limit = shared.config.max_connection_age.map(|age| born + jittered(age));
    let mut conn = Plain {
        shared: &shared,
        client: &client,
        age_limit,
        stream,
        input: Vec::new(),
        up: Upstream::default(),
        reply: Vec::new(),
    };
    let mut draining = pin!(reached(shared.phase.clone(), Phase::Draining));
    let mut aged = pin!(async move {
        match age_limit {
            Some(limit) => tokio::time::sleep_until(limit.into()).await,
            None => std::future::pending().await,
        }
    });
    // Either: an idle connection closes at once, one with a request half read after it.
    let mut drain_seen = false;
    // Armed once and moved on only when it fires before the deadline it stands for.
    let mut idle = pin!(tokio::time::sleep(shared.config.header_read_timeout));
    let mut answer_timer = pin!(tokio::time::sleep(shared.config.request_timeout));
    loop {
        let deadline = Instant::now() + shared.config.header_read_timeout;
        let request = loop {
            match conn.parse() {
                Parsed::Plain(request) => break request,
                Parsed::Other => {
                    let age = age_limit.map(|limit| limit.saturating_duration_since(Instant::now()));
                    let io = Rewind { prefix: std::mem::take(&mut conn.input), at: 0, stream: conn.stream };
                    crate::http::serve_h1(io, client.clone(), &servers, age).await;
                    return;
                }
                Parsed::Partial => {}
            }
            tokio::select! {
                biased;
                ready = conn.stream.readable() => {
                    if ready.is_err() {
                        return;
                    }
                    conn.busy();
                    conn.input.reserve(READ_CHUNK);
                    match read_available(&conn.stream, &mut conn.input) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
                () = &mut draining, if !drain_seen => {
                    drain_seen = true;
                    if conn.input.is_empty() {
                        return;
                    }
                }
                () = &mut aged, if !drain_seen => {
                    drain_seen = true;
                    if conn.input.is_empty() {
                        return;
                    }
                }
                () = &mut idle => {
                    if Instant::now() >= deadline {
                        return;
                    }
                    idle.as_mut().reset(deadline.into());
                }
            }
        };
        if !conn.exchange(&request, answer_timer.as_mut()).await {
            return;
        }
        if conn.input.is_empty() {
            conn.rest();
        }
    }
}

thread_local! {
    /// Buffers of this router thread's connections that went idle, for the next busy one: an
    /// idle keep-alive connection holds none (it would otherwise keep ~40 KiB).
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Spare buffers kept a thread, at most.
const MAX_SPARE: usize = 256;

/// An empty buffer, from the thread's spares if it has one.
fn take_buffer() -> Vec<u8> {
    SPARE.with(|spare| spare.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(READ_CHUNK))
}

/// Keeps `buffer` for another connection unless it grew large (a big response head) or there
/// are enough spares already.
fn give_buffer(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > 4 * READ_CHUNK {
        return;
    }
    buffer.clear();
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < MAX_SPARE {
            spare.push(buffer);
        }
    });
}

/// A plain request, its head already written for the instance in `Plain::head`.
struct Request {
    head_only: bool,
    close: bool,
    key: Option<u64>,
}

enum Parsed {
    Plain(Request),
    /// Not complete yet.
    Partial,
    /// Hyper's to answer.
    Other,
}

/// A connection on the plain path and the buffers it reuses.
struct Plain<'a> {
    shared: &'a Arc<Shared>,
    client: &'a Arc<Client>,
    /// When the connection is to close, after the response in flight then.
    age_limit: Option<Instant>,
    stream: TcpStream,
    /// From the client: the request being read and whatever followed it.
    input: Vec<u8>,
    up: Upstream,
    /// To the client: the response head, and body bytes read with it.
    reply: Vec<u8>,
}

/// How one try on one endpoint went.
enum Outcome {
    Answered(TcpStream, Head),
    /// Could not connect, or the connection failed before any response byte.
    Unreachable,
    /// No response head within `request_timeout`.
    TimedOut,
    /// The instance answered something that is not HTTP/1.
    Garbled,
}

/// A response head as the instance sent it: its length in `Upstream::answer` and what the body
/// framing and the connection's reuse depend on.
pub(crate) struct Head {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The instance keeps the connection open after this response.
    pub reusable: bool,
}

pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunks),
    /// Until the instance closes.
    UntilClose,
}

impl Plain<'_> {
    /// Whether the connection closes after this response: it reached its age, or the router
    /// is draining.
    fn closing(&self) -> bool {
        self.age_limit.is_some_and(|limit| Instant::now() >= limit) || *self.shared.phase.borrow() != Phase::Serving
    }

    /// Gives the connection its buffers back (the client is sending).
    fn busy(&mut self) {
        for buffer in [&mut self.input, &mut self.up.head, &mut self.up.answer, &mut self.reply] {
            if buffer.capacity() == 0 {
                *buffer = take_buffer();
            }
        }
    }

    /// Lends the buffers to the thread while the connection waits for its next request.
    fn rest(&mut self) {
        for buffer in [&mut self.input, &mut self.up.head, &mut self.up.answer, &mut self.reply] {
            give_buffer(std::mem::take(buffer));
        }
    }

    /// Looks at the bytes read so far: a complete plain request (its head written for the
    /// instance, its bytes consumed), more to read, or hyper's.
    fn parse(&mut self) -> Parsed {
        if self.input.is_empty() {
            return Parsed::Partial;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&self.input) {
            Ok(httparse::Status::Complete(len)) if len <= self.shared.config.max_header_bytes => len,
            // A head longer than one read is rare: hyper reads it (and refuses it past
            // `max_header_bytes`, having read as much as it does).
            Ok(httparse::Status::Partial) if self.input.len() < READ_CHUNK.min(self.shared.config.max_header_bytes) => {
                return Parsed::Partial;
            }
            _ => return Parsed::Other,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Parsed::Other };
        let head_only = match method {
            "GET" => false,
            "HEAD" => true,
            _ => return Parsed::Other,
        };
        if !is_origin_form(target.as_bytes()) {
            return Parsed::Other;
        }
        let tenant = match &self.shared.config.policy {
            Policy::TenantHash { header } => Some(header.as_str()),
            _ => None,
        };
        let head = &mut self.up.head;
        head.clear();
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let (mut hosts, mut close, mut key) = (0, false, None);
        let mut forwarded_at = None;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
                if !crate::http::is_host_and_port(h.value) {
                    return Parsed::Other;
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for option in options(h.value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                        return Parsed::Other;
                    }
                }
                continue;
            } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                forwarded_at.get_or_insert(head.len());
                continue;
            } else if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                continue;
            } else if is_framing_or_hop_by_hop(name) {
                return Parsed::Other;
            } else if tenant.is_some_and(|t| name.eq_ignore_ascii_case(t.as_bytes())) && key.is_none() {
                key = Some(balance::hash(h.value));
            }
            push_header(head, name, h.value);
        }
        if hosts != 1 {
            return Parsed::Other;
        }
        // X-Forwarded-For: every earlier value, joined, then the client.
        head.extend_from_slice(b"x-forwarded-for: ");
        if forwarded_at.is_some() {
            for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")) {
                head.extend_from_slice(h.value);
                head.extend_from_slice(b", ");
            }
        }
        head.extend_from_slice(self.client.forwarded_for.as_bytes());
        head.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
        self.input.drain(..len);
        Parsed::Plain(Request { head_only, close, key })
    }

    /// Proxies one request. Whether the client connection can take another request.
    async fn exchange(&mut self, request: &Request, timer: Pin<&mut Sleep>) -> bool {
        self.shared.budget.deposit();
        match self.up.forward(self.shared, request.key, timer, &mut self.reply).await {
            Forwarded::Answered { stream, head, guard, started } => {
                self.relay(stream, head, request, guard, started).await
            }
            Forwarded::Said(status, message) => self.say(status, message, request.head_only, request.close).await,
        }
    }

    /// Sends the response to the client, its body copied as the instance sends it; the
    /// instance's connection goes back to the pool if the exchange ended cleanly. Whether the
    /// client connection can take another request.
    async fn relay(
        &mut self,
        mut upstream: TcpStream,
        head: Head,
        request: &Request,
        guard: InFlight,
        started: Instant,
    ) -> bool {
        let counters = &guard.0.counters;
        let mut framing = if request.head_only { Framing::Empty } else { head.framing };
        let close = request.close || framing.until_close() || self.closing();
        self.reply.extend_from_slice(if close { b"connection: close\r\n\r\n" } else { b"\r\n" });
        // Body bytes that came with the head go out with it; if they are not what the head
        // framed, nothing has gone out yet and the client gets a proper 502.
        self.up.answer.drain(..head.len);
        let Ok((used, mut ended)) = framing.relay(&self.up.answer, &mut self.reply) else {
            counters.response_code(502, started.elapsed());
            Counters::bump(&counters.failures);
            self.shared.failed(&guard.0);
            return self.say(502, "the instance's answer was not HTTP\n", request.head_only, true).await;
        };
        counters.response_code(head.status, started.elapsed());
        // Bytes past the response: delivered without them, and the connection not reused.
        let mut reusable = head.reusable && used == self.up.answer.len();
        if self.stream.write_all(&self.reply).await.is_err() {
            return false;
        }
        while !ended {
            self.up.answer.clear();
            self.up.answer.reserve(READ_CHUNK);
            match upstream.read_buf(&mut self.up.answer).await {
                Ok(0) if framing.until_close() => break,
                Ok(0) | Err(_) => return self.cut(&guard),
                Ok(_) => {}
            }
            self.reply.clear();
            let used;
            (used, ended) = match framing.relay(&self.up.answer, &mut self.reply) {
                Ok(taken) => taken,
                Err(()) => return self.cut(&guard),
            };
            reusable &= used == self.up.answer.len();
            if self.stream.write_all(&self.reply).await.is_err() {
                return false;
            }
        }
        if reusable && !framing.until_close() {
            pool(self.shared, &guard.0, upstream);
        }
        !close
    }

    /// The instance broke off mid-response: it counts against the endpoint, and the client's
    /// connection closes, the only way left to say the response is incomplete.
    fn cut(&mut self, guard: &InFlight) -> bool {
        Counters::bump(&guard.0.counters.failures);
        self.shared.failed(&guard.0);
        false
    }

    /// The router's own short answer.
    async fn say(&mut self, status: u16, message: &str, head_only: bool, close: bool) -> bool {
        let close = close || self.closing();
        let reply = &mut self.reply;
        reply.status(status, reason(status));
        reply.header(b"content-type", b"text/plain; charset=utf-8");
        reply.header(b"content-length", message.len().to_string().as_bytes());
        reply.extend_from_slice(if close { b"connection: close\r\n\r\n" } else { b"\r\n" });
        if !head_only {
            reply.extend_from_slice(message.as_bytes());
        }
        self.stream.write_all(&self.reply).await.is_ok() && !close
    }
}

/// The instance side of a plain exchange, usable by either front: the request head to send
/// and the answer read back.
#[derive(Default)]
pub(crate) struct Upstream {
    /// The request head as the instance gets it.
    pub head: Vec<u8>,
    /// From the instance: the response head, then whatever of its body came with it.
    pub answer: Vec<u8>,
}

/// What [`Upstream::forward`] ends with.
pub(crate) enum Forwarded {
    /// A response head from the instance (in `Upstream::answer`, `head.len` bytes), the
    /// connection its body comes on, and the request in flight until it has.
    /// The caller counts the response (`started`: when the try began).
    Answered { stream: TcpStream, head: Head, guard: InFlight, started: Instant },
    /// No answer to pass on: the router's own (already counted).
    Said(u16, &'static str),
}

/// Where the client's form of a response head goes: bytes for an HTTP/1 client, a header
/// map for hyper's.
pub(crate) trait HeadSink {
    /// A new head begins (an earlier one, from a try that was retried, is forgotten).
    fn status(&mut self, status: u16, reason: &str);
    fn header(&mut self, name: &[u8], value: &[u8]);
    /// The body comes in chunks, passed on as they are.
    fn chunked(&mut self);
}

/// An HTTP/1.1 response head for the client, without its last line (`Connection`, blank line).
impl HeadSink for Vec<u8> {
    fn status(&mut self, status: u16, reason: &str) {
        self.clear();
        self.extend_from_slice(b"HTTP/1.1 ");
        self.extend_from_slice(&status_digits(status));
        self.push(b' ');
        self.extend_from_slice(reason.as_bytes());
        self.extend_from_slice(b"\r\n");
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        push_header(self, name, value);
    }

    fn chunked(&mut self) {
        self.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
}

impl Outcome {
    /// The status the client gets for a try that brought no answer, and why.
    fn status(&self) -> u16 {
        match self {
            Outcome::TimedOut => 504,
            _ => 502,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Outcome::TimedOut => "the instance did not answer in time\n",
            Outcome::Garbled => "the instance's answer was not HTTP\n",
            _ => "the instance could not be reached\n",
        }
    }
}

impl Upstream {
    /// Sends `head` (a GET or HEAD without a body, so always replayable) to an endpoint picked
    /// for `key`, retrying as `http.rs` does, and reads the answer's head, written for the
    /// client into `sink`. A response of the router's own (`Said`) is counted here; an
    /// instance's, by the caller once it knows what the client gets of it.
    pub async fn forward(
        &mut self,
        shared: &Shared,
        key: Option<u64>,
        mut timer: Pin<&mut Sleep>,
        sink: &mut impl HeadSink,
    ) -> Forwarded {
        let mut tried = Tried::default();
        let (Some(mut endpoint), members) = shared.select_among(key, &mut tried, false) else {
            Counters::bump(&shared.unrouted);
            return Forwarded::Said(503, "no ready instance\n");
        };
        let max_attempts = shared.config.retry.max_attempts;
        let retry_answers = max_attempts > 1 && members > 1;
        loop {
            tried.push(&endpoint);
            let guard = InFlight::new(endpoint);
            let started = Instant::now();
            let outcome = self.attempt(shared, &guard.0, timer.as_mut(), sink).await;
            let counters = &guard.0.counters;
            let mut message = "";
            let (retry, status, fallback) = match outcome {
                Outcome::Answered(stream, head) => {
                    if head.status >= 500 {
                        shared.failed(&guard.0);
                    } else {
                        shared.succeeded(&guard.0);
                    }
                    let retry = retry_answers && matches!(head.status, 502 | 503);
                    (retry, head.status, Some((stream, head)))
                }
                failed => {
                    Counters::bump(&counters.failures);
                    shared.failed(&guard.0);
                    message = failed.message();
                    (matches!(failed, Outcome::Unreachable), failed.status(), None)
                }
            };
            if retry
                && tried.len() < max_attempts
                && let Some(next) = shared.select(key, &mut tried, false)
            {
                if shared.budget.withdraw() {
                    Counters::bump(&counters.retries);
                    endpoint = next;
                    continue;
                }
                Counters::bump(&shared.retries_denied);
            }
            return match fallback {
                // Counted by the caller, once it knows what the client gets.
                Some((stream, head)) => Forwarded::Answered { stream, head, guard, started },
                None => {
                    counters.response_code(status, started.elapsed());
                    Forwarded::Said(status, message)
                }
            };
        }
    }

    /// One try on one endpoint. A pooled connection that fails before any response byte is
    /// the pool's staleness, not the endpoint's failure: the request goes again on another
    /// connection to the same endpoint (bounded: each stale one is dropped).
    async fn attempt(
        &mut self,
        shared: &Shared,
        e: &Endpoint,
        mut timer: Pin<&mut Sleep>,
        sink: &mut impl HeadSink,
    ) -> Outcome {
        let mut stale_left = shared.config.max_idle_per_backend + 1;
        loop {
            let pooled = loop {
                let Some(idle) = lock(&e.idle_plain).pop() else { break None };
                if is_quiet(&idle.stream) {
                    break Some(idle.stream);
                }
            };
            let reused = pooled.is_some();
            let mut upstream = match pooled {
                Some(stream) => stream,
                None => match e.connect(shared.config.connect_timeout).await {
                    Ok(stream) => stream,
                    Err(_) => return Outcome::Unreachable,
                },
            };
            let sent = upstream.write_all(&self.head).await.is_ok();
            let answered = if sent {
                let deadline = Instant::now() + shared.config.request_timeout;
                self.read_head(&mut upstream, deadline, timer.as_mut(), sink).await
            } else {
                Err(Failure::Nothing)
            };
            match answered {
                Ok(head) => return Outcome::Answered(upstream, head),
                Err(Failure::Nothing) if reused && stale_left > 0 => stale_left -= 1,
                Err(Failure::Nothing) => return Outcome::Unreachable,
                Err(Failure::Late) => return Outcome::TimedOut,
                Err(Failure::Garbled) => return Outcome::Garbled,
            }
        }
    }

    /// Reads the instance's response head into `answer` (informational 1xx heads skipped) and
    /// writes the client's into `sink`.
    async fn read_head(
        &mut self,
        upstream: &mut TcpStream,
        deadline: Instant,
        mut timer: Pin<&mut Sleep>,
        sink: &mut impl HeadSink,
    ) -> Result<Head, Failure> {
        self.answer.clear();
        loop {
            if !self.answer.is_empty() {
                match self.parse_response(sink)? {
                    Some(Some(head)) => return Ok(head),
                    // A 1xx: skipped, parse what follows.
                    Some(None) => continue,
                    None if self.answer.len() >= MAX_RESPONSE_HEAD => return Err(Failure::Garbled),
                    None => {}
                }
            }
            self.answer.reserve(READ_CHUNK);
            let anything = !self.answer.is_empty();
            tokio::select! {
                biased;
                read = upstream.read_buf(&mut self.answer) => match read {
                    Ok(n) if n > 0 => {}
                    _ if anything => return Err(Failure::Garbled),
                    _ => return Err(Failure::Nothing),
                },
                () = timer.as_mut() => {
                    if Instant::now() >= deadline {
                        return Err(Failure::Late);
                    }
                    timer.as_mut().reset(deadline.into());
                }
            }
        }
    }

    /// `Some(Some(head))`: a final response head, written for the client into `sink`;
    /// `Some(None)`: a 1xx head, removed from `answer`; `None`: incomplete.
    fn parse_response(&mut self, sink: &mut impl HeadSink) -> Result<Option<Option<Head>>, Failure> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let len = match res.parse(&self.answer) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Failure::Garbled),
        };
        let (Some(version), Some(status)) = (res.version, res.code) else { return Err(Failure::Garbled) };
        if status == 101 || status < 100 {
            return Err(Failure::Garbled);
        }
        if status < 200 {
            self.answer.drain(..len);
            return Ok(Some(None));
        }
        let mut connection_named: Vec<&[u8]> = Vec::new();
        let mut reusable = version == 1;
        for h in res.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
            for option in options(h.value) {
                if option.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                    connection_named.push(option);
                }
            }
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        for h in res.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let value = parse_length(h.value).ok_or(Failure::Garbled)?;
                if length.is_some_and(|l| l != value) {
                    return Err(Failure::Garbled);
                }
                length = Some(value);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only chunked, once, alone, as an instance behind a proxy sends it.
                let mut codings = 0;
                for coding in options(h.value) {
                    codings += 1;
                    if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(Failure::Garbled);
                    }
                    chunked = true;
                }
                if codings == 0 {
                    return Err(Failure::Garbled);
                }
            }
        }
        let bodiless = status == 204 || status == 304;
        let framing = match (chunked, length) {
            _ if bodiless => Framing::Empty,
            (true, _) => {
                // Both: the length is ignored, and the connection not trusted again (RFC 9112 §6.3).
                if length.is_some() {
                    reusable = false;
                }
                Framing::Chunked(Chunks::default())
            }
            (false, Some(0)) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        };
        sink.status(status, res.reason.unwrap_or(""));
        for h in res.headers.iter() {
            let name = h.name.as_bytes();
            let named = connection_named.iter().any(|n| n.eq_ignore_ascii_case(name));
            let framing_header = name.eq_ignore_ascii_case(b"transfer-encoding")
                || (chunked && name.eq_ignore_ascii_case(b"content-length"));
            if named || framing_header || is_response_hop_by_hop(name) {
                continue;
            }
            sink.header(name, h.value);
        }
        if chunked && !bodiless {
            sink.chunked();
        }
        // The rest of the head (a `connection: close` if need be, the blank line) is the caller's.
        Ok(Some(Some(Head { len, status, framing, reusable })))
    }
}

/// Keeps an instance connection whose exchange ended cleanly for the next request.
pub(crate) fn pool(shared: &Shared, e: &Endpoint, stream: TcpStream) {
    if e.is_retired() || !is_quiet(&stream) {
        return;
    }
    let mut idle = lock(&e.idle_plain);
    if idle.len() < shared.config.max_idle_per_backend {
        idle.push(IdleStream { stream, since: shared.pool_tick() });
    }
}

/// Whether an instance connection has nothing to say: one that sent anything after its last
/// answer (a body a HEAD answer should not have, a 408 before closing) or closed must not carry
/// another request, whose answer those bytes would become. No system call unless the socket
/// was reported readable since its last read.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Reads what `stream` holds into `buf`'s spare capacity, without waiting. A read that returns
/// less than it had room for emptied the socket's receive queue (Linux's TCP read stops short
/// only then), so it also clears the socket's readiness: the next read waits for the next epoll
/// event instead of spending a system call to learn there is nothing yet (a third of a `recvfrom`
/// a request at `wrk -c64`). Safe against data arriving meanwhile: tokio clears readiness only
/// if no event came after the one read here, and new data is always a new event.
fn read_available(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut drained = None;
    let read = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        if n > 0 && n < room {
            drained = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (read, drained) {
        (Err(_), Some(n)) => Ok(n),
        (read, _) => read,
    }
}

/// Why no response head came.
enum Failure {
    /// The connection failed or closed before any response byte.
    Nothing,
    /// Not within `request_timeout`.
    Late,
    /// Not HTTP/1, or broken off mid-head.
    Garbled,
}

impl Framing {
    /// How many of `bytes` (the next ones from the instance) belong to the body, and whether
    /// the body has ended with them. `Err` if they break the framing.
    fn take(&mut self, bytes: &[u8]) -> Result<(usize, bool), ()> {
        self.take_data(bytes, &mut |_| {})
    }

    /// As [`Framing::take`], also telling `data` where the body's own bytes are among them
    /// (in order; for chunks, without their framing).
    pub(crate) fn take_data(&mut self, bytes: &[u8], data: &mut impl FnMut(Range<usize>)) -> Result<(usize, bool), ()> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(left) => {
                let used = (*left).min(bytes.len() as u64);
                *left -= used;
                data(0..used as usize);
                Ok((used as usize, *left == 0))
            }
            Framing::Chunked(chunks) => chunks.take(bytes, data),
            Framing::UntilClose => {
                data(0..bytes.len());
                Ok((bytes.len(), false))
            }
        }
    }

    /// As [`Framing::take`], appending to `out` what the client gets of those bytes: the body
    /// bytes as they are, or for chunks, each chunk's data framed again (`SIZE CRLF data CRLF`,
    /// then `0 CRLF CRLF`), so no extension, trailer or spacing of the instance's reaches the
    /// client.
    fn relay(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), ()> {
        if !matches!(self, Framing::Chunked(_)) {
            let (used, ended) = self.take(bytes)?;
            out.extend_from_slice(&bytes[..used]);
            return Ok((used, ended));
        }
        let already_ended = matches!(self, Framing::Chunked(chunks) if chunks.state == ChunkState::Done);
        let (used, ended) = self.take_data(bytes, &mut |range| {
            if !range.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", range.len()).as_bytes());
                out.extend_from_slice(&bytes[range]);
                out.extend_from_slice(b"\r\n");
            }
        })?;
        if ended && !already_ended {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Ok((used, ended))
    }

    /// Whether the body ends only when the instance closes.
    pub(crate) fn until_close(&self) -> bool {
        matches!(self, Framing::UntilClose)
    }
}

/// Where a chunked body is: checked byte by byte outside chunk data (sizes, their extensions,
/// line ends, trailers), so its end is found exactly and a malformed body ends the exchange.
#[derive(Default)]
pub(crate) struct Chunks {
    state: ChunkState,
    /// Bytes of the current size or trailer line.
    line: usize,
    size: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Whitespace after the size: only more of it, an extension or the line's end may follow.
    SizeBws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start or in the middle of a trailer line (`line` bytes into it).
    Trailer,
    TrailerLf,
    Done,
}

impl Chunks {
    fn take(&mut self, bytes: &[u8], data: &mut impl FnMut(Range<usize>)) -> Result<(usize, bool), ()> {
        use ChunkState::*;
        let mut at = 0;
        while at < bytes.len() && self.state != Done {
            if self.state == Data {
                let used = self.size.min((bytes.len() - at) as u64);
                self.size -= used;
                data(at..at + used as usize);
                at += used as usize;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[at];
            at += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err(());
            }
            self.state = match (self.state, b) {
                (Size, b'\r') if self.line > 1 => SizeLf,
                (Size, b';') if self.line > 1 => Extension,
                (Size, b' ' | b'\t') if self.line > 1 => SizeBws,
                (SizeBws, b' ' | b'\t') => SizeBws,
                (SizeBws, b';') => Extension,
                (SizeBws, b'\r') => SizeLf,
                (Size, _) => {
                    let digit = (b as char).to_digit(16).ok_or(())?;
                    // 15 hex digits: a size far past anything real, and no overflow.
                    if self.line > 15 {
                        return Err(());
                    }
                    self.size = self.size * 16 + u64::from(digit);
                    Size
                }
                (Extension, b'\r') => SizeLf,
                (Extension, b) if is_field_byte(b) => Extension,
                (SizeLf, b'\n') => {
                    self.line = 0;
                    if self.size == 0 { Trailer } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.line = 0;
                    Size
                }
                (Trailer, b'\r') => TrailerLf,
                (Trailer, b) if is_field_byte(b) => Trailer,
                (TrailerLf, b'\n') if self.line == 2 => Done,
                (TrailerLf, b'\n') => {
                    self.line = 0;
                    Trailer
                }
                _ => return Err(()),
            };
        }
        Ok((at, self.state == Done))
    }
}

/// A byte a header field value (or a chunk extension) may hold: no control byte but HTAB.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
}

/// An HTTP/1 client connection handed to hyper: the bytes already read come first.
pub(crate) struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The comma-separated options of a header value, trimmed, empty ones skipped.
fn options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|o| !o.is_empty())
}

/// A request target this path takes: origin form in the characters of RFC 3986 (anything
/// else, such as a raw space-like byte or a non-ASCII one, is hyper's to accept or refuse).
fn is_origin_form(target: &[u8]) -> bool {
    target.first() == Some(&b'/')
        && target.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(b))
}

/// Request headers that send a request to hyper: framing, expectations, upgrades and the
/// hop-by-hop headers it strips (RFC 9110 §7.6.1).
fn is_framing_or_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 10] = [
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"te",
        b"trailer",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Response headers that stay between the instance and the router.
fn is_response_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 7] =
        [b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"te", b"trailer", b"upgrade"];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A Content-Length value: digits only, no sign, no list, within u64.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A status code's three digits (100..=999, as the parsers allow).
fn status_digits(status: u16) -> [u8; 3] {
    let digit = |n: u16| b'0' + (n % 10) as u8;
    [digit(status / 100), digit(status / 10), digit(status)]
}

fn reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` split at `at`: the bytes taken and whether it ended.
    fn feed(body: &[u8], at: usize) -> Result<(usize, bool), ()> {
        let mut chunks = Chunks::default();
        let (first, ended) = chunks.take(&body[..at], &mut |_| {})?;
        if ended {
            return Ok((first, true));
        }
        assert_eq!(first, at, "everything before the end is taken");
        let (rest, ended) = chunks.take(&body[at..], &mut |_| {})?;
        Ok((first + rest, ended))
    }

    #[test]
    fn chunked_bodies_end_exactly_wherever_they_are_split() {
        let body: &[u8] = b"5 ;name=value\r\nhello\r\nA\t\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for at in 0..=body.len() {
            assert_eq!(feed(body, at), Ok((end, true)), "split at {at}");
        }
        let bare: &[u8] = b"0\r\n\r\n";
        assert_eq!(feed(bare, 2), Ok((5, true)));
        // Not ended yet.
        assert_eq!(Chunks::default().take(b"5\r\nhel", &mut |_| {}), Ok((6, false)));
    }

    #[test]
    fn chunk_data_is_told_without_its_framing() {
        let body: &[u8] = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for at in 0..=body.len() {
            let mut framing = Framing::Chunked(Chunks::default());
            let mut decoded = Vec::new();
            for part in [&body[..at], &body[at..]] {
                framing.take_data(part, &mut |r| decoded.extend_from_slice(&part[r])).unwrap();
            }
            assert_eq!(decoded, b"hello world", "split at {at}");
        }
    }

    #[test]
    fn chunks_reach_the_client_framed_again() {
        let body: &[u8] = b"5;ext=\"x\"\r\nhello\r\n6  \r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
        for at in 0..=body.len() {
            let mut framing = Framing::Chunked(Chunks::default());
            let mut out = Vec::new();
            for part in [&body[..at], &body[at..]] {
                framing.relay(part, &mut out).unwrap();
            }
            let (mut again, mut data) = (Framing::Chunked(Chunks::default()), Vec::new());
            assert_eq!(again.take_data(&out, &mut |r| data.extend_from_slice(&out[r])), Ok((out.len(), true)));
            assert_eq!(data, b"hello world", "split at {at}");
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("ext") && !text.contains("trailer") && text.ends_with("\r\n0\r\n\r\n"), "{text:?}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"1111111111111111\r\n",
            b"5;ext\nhello",
            b"0\r\nbad\ntrailer\r\n\r\n",
            b"5 6\r\nhello\r\n0\r\n\r\n",
            b"5;a=\x00\r\nhello\r\n0\r\n\r\n",
            b"0\r\nx: \x01\r\n\r\n",
        ] {
            assert_eq!(
                Chunks::default().take(bad, &mut |_| {}).map(|_| ()),
                Err(()),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
        assert_eq!(Chunks::default().take(&long, &mut |_| {}).map(|_| ()), Err(()));
    }

    #[test]
    fn lengths_and_targets() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"12345"), Some(12345));
        for bad in [&b""[..], b"-1", b"+1", b"1,1", b" 1", b"0x10", b"99999999999999999999"] {
            assert_eq!(parse_length(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert!(is_origin_form(b"/a/b?c=d&e=%20"));
        for other in [&b"http://a/"[..], b"*", b"", b"/a b", b"/\"", b"/\x7f", b"/\xc3\xa9"] {
            assert!(!is_origin_form(other), "{}", String::from_utf8_lossy(other));
        }
        assert_eq!(&status_digits(204), b"204");
        assert_eq!(&status_digits(999), b"999");
    }
}
