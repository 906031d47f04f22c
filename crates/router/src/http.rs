//! HTTP mode: HTTP/1.1 and h2c on one listener, each request forwarded to a
//! backend chosen per request over a per-backend connection pool, bodies
//! streamed both ways.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::balance;
use crate::table::{Endpoint, InFlight, Shared, Tried, lock};
use crate::{Config, Policy};

/// How long a pooled HTTP/1 connection may take to become ready again (its
/// previous exchange finishing) before another is used.
const READY_WAIT: Duration = Duration::from_millis(100);

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the usual extras).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(shared.config.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors, for example: wait instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (builder, shared) = (builder.clone(), shared.clone());
        tokio::spawn(async move {
            let client = peer.ip();
            let service = hyper::service::service_fn(move |req| proxy(shared.clone(), client, req));
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

enum Conn {
    H1(http1::SendRequest<Incoming>),
    H2(http2::SendRequest<Incoming>),
}

async fn proxy(shared: Arc<Shared>, client: IpAddr, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, true);
    forwarded(headers, client);
    let h2 = req.version() == Version::HTTP_2;
    let key = match &shared.config.policy {
        Policy::TenantHash { header } => req.headers().get(header).map(|v| balance::hash(v.as_bytes())),
        _ => None,
    };
    let mut tried = Tried::default();
    while tried.len() < shared.config.connect_attempts {
        let Some(endpoint) = shared.select(key, &tried, false) else { break };
        let guard = InFlight::new(endpoint);
        let Ok(conn) = checkout(&guard.0, h2, &shared.config).await else {
            tried.push(&guard.0);
            continue;
        };
        let (sent, reuse) = match conn {
            Conn::H1(mut s) => (s.try_send_request(req).await, Some(s)),
            Conn::H2(mut s) => (s.try_send_request(req).await, None),
        };
        match sent {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                let body = Body::upstream(body, reuse, guard, shared.config.max_idle_per_backend);
                return Ok(Response::from_parts(parts, body));
            }
            Err(mut e) => match e.take_message() {
                // Never written (the pooled connection had closed): safe to try another.
                Some(unsent) => {
                    req = unsent;
                    tried.push(&guard.0);
                }
                None => return Ok(text(StatusCode::BAD_GATEWAY, "the instance failed to answer\n")),
            },
        }
    }
    Ok(if tried.len() == 0 {
        text(StatusCode::SERVICE_UNAVAILABLE, "no ready instance\n")
    } else {
        text(StatusCode::BAD_GATEWAY, "no instance could be reached\n")
    })
}

/// A connection to `e` of the kind the client spoke: the shared HTTP/2
/// connection, or an idle HTTP/1 one from the pool, or a new one.
async fn checkout(e: &Endpoint, h2: bool, config: &Config) -> Result<Conn, ()> {
    if h2 {
        let current = lock(&e.h2).clone();
        if let Some(mut s) = current
            && !s.is_closed()
            && s.ready().await.is_ok()
        {
            return Ok(Conn::H2(s));
        }
        let io = e.connect(config.connect_timeout).await.map_err(drop)?;
        let (s, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(drop)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        if !e.is_retired() {
            *lock(&e.h2) = Some(s.clone());
        }
        return Ok(Conn::H2(s));
    }
    loop {
        let idle = lock(&e.idle_h1).pop();
        let Some(mut s) = idle else { break };
        if s.is_closed() {
            continue;
        }
        if s.is_ready() || matches!(tokio::time::timeout(READY_WAIT, s.ready()).await, Ok(Ok(()))) {
            return Ok(Conn::H1(s));
        }
    }
    let io = e.connect(config.connect_timeout).await.map_err(drop)?;
    let (s, conn) = http1::handshake(TokioIo::new(io)).await.map_err(drop)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn::H1(s))
}

/// Removes hop-by-hop headers and those the `Connection` header names. A
/// request keeps `te: trailers`, which gRPC requires end to end.
fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    if headers.contains_key(header::CONNECTION) {
        // Only allocates when a Connection header is present.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let keep_te = request
        && headers
            .get_all(header::TE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto`.
fn forwarded(headers: &mut HeaderMap, client: IpAddr) {
    let mut value = String::with_capacity(48);
    for previous in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(previous) = previous.to_str() {
            value.push_str(previous);
            value.push_str(", ");
        }
    }
    let _ = write!(value, "{client}");
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body { inner: Inner::Static(Some(Bytes::from_static(body.as_bytes()))) });
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The body the router answers with: a backend's, streamed frame by frame,
/// or a short one of its own.
pub struct Body {
    inner: Inner,
}

enum Inner {
    Static(Option<Bytes>),
    Upstream(Upstream),
}

struct Upstream {
    body: Incoming,
    /// The HTTP/1 connection, back to the pool once this body has ended.
    reuse: Option<http1::SendRequest<Incoming>>,
    max_idle: usize,
    /// Counts the request in flight until the body is done or dropped.
    guard: InFlight,
}

impl Body {
    fn upstream(body: Incoming, reuse: Option<http1::SendRequest<Incoming>>, guard: InFlight, max_idle: usize) -> Body {
        Body { inner: Inner::Upstream(Upstream { body, reuse, max_idle, guard }) }
    }
}

impl Upstream {
    fn release(&mut self) {
        if let Some(s) = self.reuse.take() {
            let endpoint = &self.guard.0;
            if !endpoint.is_retired() {
                let mut idle = lock(&endpoint.idle_h1);
                if idle.len() < self.max_idle {
                    idle.push(s);
                }
            }
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Static(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(up) => {
                let polled = Pin::new(&mut up.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => up.release(),
                    Poll::Ready(Some(Ok(_))) if up.body.is_end_stream() => up.release(),
                    // A connection that failed mid-body is never reused.
                    Poll::Ready(Some(Err(_))) => up.reuse = None,
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Static(bytes) => bytes.is_none(),
            Inner::Upstream(up) => up.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Static(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Static(None) => SizeHint::with_exact(0),
            Inner::Upstream(up) => up.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("te", "gzip, trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h, true);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(h["te"], "trailers");
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn appends_to_x_forwarded_for() {
        let mut h = HeaderMap::new();
        forwarded(&mut h, "10.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        forwarded(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, ::1");
    }
}
