//! The backend side of HTTP: connections per endpoint (a pool of HTTP/1 ones,
//! one shared HTTP/2 one, a fresh one per upgrade), the request body sent on
//! them and the response body streamed back.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::header::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::oneshot;

use tokio::net::TcpStream;

use crate::h1::Framing;
use crate::http::Client;
use crate::stats::Counters;
use crate::table::{Endpoint, Idle, InFlight, Shared, lock};

/// A request body on its way to a backend.
pub(crate) enum Outgoing {
    Empty,
    /// Buffered whole (small, so it can be sent again on a retry).
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// Streamed from the client as it arrives; cannot be sent twice.
    Stream {
        body: ClientBody,
        ended: Option<oneshot::Sender<()>>,
    },
}

/// A request body as the client sends it: on an HTTP/1 connection (hyper's), or on one of the
/// router's own HTTP/2 streams.
pub(crate) enum ClientBody {
    Empty,
    Hyper(Incoming),
    H2(crate::h2::RecvBody),
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx).map(|f| f.map(|f| f.map_err(BoxError::from))),
            ClientBody::H2(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
        }
    }
}

/// How long a pooled HTTP/1 connection may take to become ready again (its
/// previous exchange finishing, such as an upload the backend answered
/// early) before another is used.
const READY_WAIT: Duration = Duration::from_millis(100);

impl Outgoing {
    pub fn stream(body: ClientBody) -> Outgoing {
        Outgoing::Stream { body, ended: None }
    }

    /// For a streamed body, a receiver that resolves once the body has been
    /// read to its end (or has failed, or was dropped): when the request is
    /// complete, for the request timeout to start from. `None` for a buffered
    /// body, complete from the start.
    pub fn watch_end(&mut self) -> Option<oneshot::Receiver<()>> {
        match self {
            Outgoing::Stream { ended, .. } => {
                let (tx, rx) = oneshot::channel();
                *ended = Some(tx);
                Some(rx)
            }
            _ => None,
        }
    }
}

/// A small request body kept for retries.
#[derive(Clone, Default)]
pub(crate) struct Replay {
    pub data: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl From<Replay> for Outgoing {
    fn from(replay: Replay) -> Outgoing {
        if replay.data.is_empty() && replay.trailers.is_none() {
            Outgoing::Empty
        } else {
            Outgoing::Full { data: Some(replay.data).filter(|d| !d.is_empty()), trailers: replay.trailers }
        }
    }
}

impl hyper::body::Body for Outgoing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Outgoing::Empty => Poll::Ready(None),
            Outgoing::Full { data, trailers } => Poll::Ready(match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            Outgoing::Stream { body, ended } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let done = match &polled {
                    Poll::Ready(None | Some(Err(_))) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Pending => false,
                };
                if done && let Some(ended) = ended.take() {
                    let _ = ended.send(());
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Empty => true,
            Outgoing::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Outgoing::Stream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Empty => SizeHint::with_exact(0),
            Outgoing::Full { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Outgoing::Stream { body, .. } => body.size_hint(),
        }
    }
}

/// Which connection a request needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Pooled HTTP/1.1.
    H1,
    /// The endpoint's shared HTTP/2 connection (for gRPC, so trailers and
    /// streams both ways work end to end).
    H2,
    /// A fresh HTTP/1.1 connection with upgrades enabled, never pooled.
    Upgrade,
}

pub(crate) enum Conn {
    H1 { send: http1::SendRequest<Outgoing>, pooled: bool },
    H2 { send: http2::SendRequest<Outgoing>, pooled: bool },
}

/// A connection to `e` of the kind wanted: the shared HTTP/2 one, an idle
/// HTTP/1 one from the pool, or a new one. `Err` means the endpoint could not
/// be reached.
pub(crate) async fn checkout(shared: &Shared, e: &Endpoint, kind: Kind) -> Result<Conn, ()> {
    match kind {
        Kind::H2 => {
            if let Some(send) = current_h2(e).await {
                shared.touch_h2(e);
                return Ok(Conn::H2 { send, pooled: true });
            }
            let _opening = match e.h2_opening.try_lock() {
                Ok(opening) => opening,
                Err(_) => {
                    // Another request is opening it: use what it opens. If it
                    // could not, neither could this one now.
                    drop(e.h2_opening.lock().await);
                    return current_h2(e).await.map(|send| Conn::H2 { send, pooled: false }).ok_or(());
                }
            };
            if let Some(send) = current_h2(e).await {
                return Ok(Conn::H2 { send, pooled: true });
            }
            let io = e.connect(shared.config.connect_timeout).await.map_err(drop)?;
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await
                .map_err(drop)?;
            tokio::spawn(conn);
            if !e.is_retired() {
                shared.touch_h2(e);
                *lock(&e.h2) = Some(send.clone());
            }
            Ok(Conn::H2 { send, pooled: false })
        }
        Kind::H1 => {
            loop {
                let idle = lock(&e.idle_h1).pop();
                let Some(Idle { conn: mut send, .. }) = idle else { break };
                // A pooled connection is ready unless its last exchange is
                // still winding down (microseconds, usually).
                if !send.is_closed()
                    && (send.is_ready() || matches!(tokio::time::timeout(READY_WAIT, send.ready()).await, Ok(Ok(()))))
                {
                    return Ok(Conn::H1 { send, pooled: true });
                }
            }
            let io = e.connect(shared.config.connect_timeout).await.map_err(drop)?;
            let (send, conn) = http1::handshake(TokioIo::new(io)).await.map_err(drop)?;
            tokio::spawn(conn);
            Ok(Conn::H1 { send, pooled: false })
        }
        Kind::Upgrade => {
            let io = e.connect(shared.config.connect_timeout).await.map_err(drop)?;
            let (send, conn) = http1::handshake(TokioIo::new(io)).await.map_err(drop)?;
            tokio::spawn(conn.with_upgrades());
            Ok(Conn::H1 { send, pooled: false })
        }
    }
}

/// The endpoint's shared HTTP/2 connection, if it has a usable one.
async fn current_h2(e: &Endpoint) -> Option<http2::SendRequest<Outgoing>> {
    let mut send = lock(&e.h2).clone()?;
    if send.is_closed() {
        return None;
    }
    send.ready().await.ok()?;
    Some(send)
}

/// The body the router answers with: a backend's, streamed frame by frame,
/// or a short one of its own.
pub(crate) struct Body {
    inner: Inner,
}

enum Inner {
    Static(Option<Bytes>),
    Upstream(Upstream),
    Plain(Plain),
}

/// A body coming on a plain instance connection (`h1.rs`), unframed as it arrives.
struct Plain {
    /// Until the body has ended (then pooled, if it may be) or failed.
    stream: Option<TcpStream>,
    /// Bytes read from the instance, passed on from `at`.
    buf: Vec<u8>,
    at: usize,
    framing: Framing,
    ended: bool,
    reusable: bool,
    guard: InFlight,
    client: Arc<Client>,
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Upstream {
    body: Incoming,
    /// The HTTP/1 connection, back to the pool once this body has ended.
    reuse: Option<http1::SendRequest<Outgoing>>,
    /// Counts the request in flight until the body is done or dropped.
    guard: InFlight,
    client: Arc<Client>,
}

impl Body {
    pub(crate) fn text(text: &'static str) -> Body {
        Body { inner: Inner::Static(Some(Bytes::from_static(text.as_bytes()))) }
    }

    pub(crate) fn empty() -> Body {
        Body { inner: Inner::Static(None) }
    }

    /// The body of a plain exchange's answer: `buf` holds what came with the head.
    pub(crate) fn plain(
        stream: TcpStream,
        buf: Vec<u8>,
        framing: Framing,
        reusable: bool,
        guard: InFlight,
        client: Arc<Client>,
    ) -> Body {
        let mut plain = Plain { stream: Some(stream), buf, at: 0, framing, ended: false, reusable, guard, client };
        if matches!(plain.framing, Framing::Empty) {
            plain.finish();
        }
        Body { inner: Inner::Plain(plain) }
    }

    pub(crate) fn upstream(
        body: Incoming,
        reuse: Option<http1::SendRequest<Outgoing>>,
        guard: InFlight,
        client: Arc<Client>,
    ) -> Body {
        Body { inner: Inner::Upstream(Upstream { body, reuse, guard, client }) }
    }
}

impl Upstream {
    fn release(&mut self) {
        let Some(conn) = self.reuse.take() else { return };
        let endpoint = &self.guard.0;
        let shared = &self.client.shared;
        if !endpoint.is_retired() {
            let mut idle = lock(&endpoint.idle_h1);
            if idle.len() < shared.config.max_idle_per_backend {
                idle.push(Idle { conn, since: shared.pool_tick() });
            }
        }
    }
}

impl Plain {
    /// The body ended cleanly: the connection goes back to the pool if it may.
    fn finish(&mut self) {
        self.ended = true;
        if let Some(stream) = self.stream.take()
            && self.reusable
            && !self.framing.until_close()
            && self.at == self.buf.len()
        {
            crate::h1::pool(&self.client.shared, &self.guard.0, stream);
        }
    }

    /// Broken off or malformed: never reused, and it counts against the endpoint.
    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.stream = None;
        self.ended = true;
        Counters::bump(&self.guard.0.counters.failures);
        self.client.shared.failed(&self.guard.0);
        Poll::Ready(Some(Err(why.into())))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if self.at < self.buf.len() {
                let bytes = &self.buf[self.at..];
                // Usually one range (a length, or one chunk's data): copied once, at its size.
                let (mut first, mut joined) = (0..0, Vec::new());
                let taken = self.framing.take_data(bytes, &mut |r| {
                    if first.is_empty() {
                        first = r;
                    } else {
                        if joined.is_empty() {
                            joined.extend_from_slice(&bytes[first.clone()]);
                        }
                        joined.extend_from_slice(&bytes[r]);
                    }
                });
                let Ok((used, ended)) = taken else {
                    return self.fail("the instance's body is not framed as it said");
                };
                let data = if joined.is_empty() { Bytes::copy_from_slice(&bytes[first]) } else { Bytes::from(joined) };
                self.at += used;
                if ended {
                    if self.at < self.buf.len() {
                        return self.fail("the instance sent more than its response");
                    }
                    self.finish();
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                continue;
            }
            let Some(stream) = self.stream.as_mut() else { return Poll::Ready(None) };
            if std::task::ready!(stream.poll_read_ready(cx)).is_err() {
                return self.fail("the instance's connection failed");
            }
            self.buf.clear();
            self.at = 0;
            self.buf.reserve(READ_CHUNK);
            match stream.try_read_buf(&mut self.buf) {
                Ok(0) if self.framing.until_close() => {
                    self.stream = None;
                    self.ended = true;
                }
                Ok(0) => return self.fail("the instance closed before the end of its body"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return self.fail("the instance's connection failed"),
            }
        }
    }
}

/// Bytes read from a plain instance connection at a time.
const READ_CHUNK: usize = 16 << 10;

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Static(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Plain(plain) => plain.poll_frame(cx),
            Inner::Upstream(up) => {
                let polled = Pin::new(&mut up.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => up.release(),
                    Poll::Ready(Some(Ok(_))) if up.body.is_end_stream() => up.release(),
                    // Reset mid-body: never reused, and it counts against the endpoint.
                    Poll::Ready(Some(Err(_))) => {
                        up.reuse = None;
                        Counters::bump(&up.guard.0.counters.failures);
                        up.client.shared.failed(&up.guard.0);
                    }
                    _ => {}
                }
                polled.map(|frame| frame.map(|result| result.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Static(bytes) => bytes.is_none(),
            Inner::Upstream(up) => up.body.is_end_stream(),
            Inner::Plain(plain) => plain.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Static(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Static(None) => SizeHint::with_exact(0),
            Inner::Upstream(up) => up.body.size_hint(),
            Inner::Plain(plain) => match plain.framing {
                _ if plain.ended => SizeHint::with_exact(0),
                // Bytes read but not yet passed on are still in `left`.
                Framing::Length(left) => SizeHint::with_exact(left),
                _ => SizeHint::default(),
            },
        }
    }
}
