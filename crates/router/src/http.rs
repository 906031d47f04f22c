//! HTTP mode: HTTP/1.1 and h2c on one listener, each request forwarded to a
//! backend chosen per request, bodies streamed both ways, retries within the
//! budget, upgrades tunnelled.

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::Policy;
use crate::balance;
use crate::config::Place;
use crate::h1::{Forwarded, Framing, HeadSink, Upstream};
use crate::lifecycle::{Live, drive, until_stopped};
use crate::stats::Counters;
use crate::table::{Endpoint, InFlight, Shared, Tried, lock};
use crate::tcp::COPY_BUFFER;
pub(crate) use crate::upstream::ClientBody;
use crate::upstream::{Body, Conn, Kind, Outgoing, Replay, checkout};

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

/// What a client connection opens with when it speaks HTTP/2 with prior knowledge.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The server side, configured once per listener.
pub(crate) struct Servers {
    h1: http1::Builder,
    h2: crate::h2::Limits,
}

impl Servers {
    pub(crate) fn new(config: &crate::Config) -> Arc<Servers> {
        let mut h1 = http1::Builder::new();
        // writev(false): responses go out as one buffer rather than head and body as separate
        // iovecs: 5-15% less router CPU per small proxied request (bench/router.sh, c=64), for one
        // copy of each body chunk into hyper's write buffer.
        h1.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_header_bytes)
            .writev(false);
        let h2 = crate::h2::Limits {
            max_concurrent_streams: config.max_concurrent_streams,
            max_header_list_size: config.max_header_list_size,
            header_read_timeout: config.header_read_timeout,
            reset_allowance: config.max_pending_accept_reset_streams,
            error_allowance: config.max_local_error_reset_streams,
        };
        Arc::new(Servers { h1, h2 })
    }
}

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let servers = Servers::new(&shared.config);
    crate::lifecycle::accept(listener, &shared, |stream, peer, live, place| {
        connection(stream, peer.ip(), shared.clone(), servers.clone(), live, place)
    })
    .await;
}

/// What the router knows of one client connection; every request on it holds
/// a reference.
pub(crate) struct Client {
    pub shared: Arc<Shared>,
    /// The client's address as an `X-Forwarded-For` value, made once.
    pub forwarded_for: HeaderValue,
    /// The connection's place in its listener's limit: held by its requests, and by an
    /// upgraded connection's tunnel until it closes.
    _place: Place,
}

pub(crate) async fn connection(
    stream: TcpStream,
    ip: IpAddr,
    shared: Arc<Shared>,
    servers: Arc<Servers>,
    _live: Live,
    place: Place,
) {
    let _ = stream.set_nodelay(true);
    let Ok(http2) = speaks_http2(&stream, shared.config.header_read_timeout).await else { return };
    let (phase, max_age) = (shared.phase.clone(), shared.config.max_connection_age);
    let Ok(forwarded_for) = HeaderValue::try_from(ip.to_string()) else { return };
    let client = Arc::new(Client { shared, forwarded_for, _place: place });
    if !http2 {
        return crate::h1::serve(stream, client, servers).await;
    }
    let conn = crate::h2::Connection::new(stream, client, servers.h2.clone());
    drive(conn, |c| c.get_mut().graceful_shutdown(), phase, max_age).await;
}

/// The answer to a request on one of the router's own HTTP/2 streams. Boxed: the connection
/// keeps each stream's handler beside the others.
pub(crate) fn respond(
    client: &Arc<Client>,
    req: Request<ClientBody>,
) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
    let client = client.clone();
    Box::pin(async move {
        match proxy(client, req).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    })
}

/// Serves an HTTP/1 connection with hyper for the rest of its life (the plain path in `h1.rs`
/// handed it over), closing it gracefully after `max_age`.
pub(crate) async fn serve_h1<I>(io: I, client: Arc<Client>, servers: &Servers, max_age: Option<Duration>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let phase = client.shared.phase.clone();
    let service =
        hyper::service::service_fn(move |req: Request<Incoming>| proxy(client.clone(), req.map(ClientBody::Hyper)));
    let conn = servers.h1.serve_connection(TokioIo::new(io), service).with_upgrades();
    drive(conn, |c| c.graceful_shutdown(), phase, max_age).await;
}

/// Whether the client opens with the HTTP/2 preface. Peeks (nothing is
/// consumed), within `timeout` for the first bytes, so a client that connects
/// and sends nothing is dropped like one that sends its headers too slowly.
async fn speaks_http2(stream: &TcpStream, timeout: Duration) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let sniff = async {
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Ok(false);
            }
            if n == H2_PREFACE.len() {
                return Ok(true);
            }
            // A prefix of the preface (rare: clients send it in one write).
            // Peeking again at once would spin on the same bytes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, sniff).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// A request as it can be sent again: taken only for replayable requests
/// when another endpoint could take a retry.
struct Spare {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Replay,
}

impl Spare {
    fn request(&self) -> Request<Outgoing> {
        let mut req = Request::new(Outgoing::from(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// How one try on one endpoint went.
enum Outcome {
    Answered(Response<Incoming>, Option<hyper::client::conn::http1::SendRequest<Outgoing>>),
    /// Could not connect, or the connection failed before any response byte.
    /// `unsent` is the request if it never left the router.
    Unreachable {
        unsent: Option<Request<Outgoing>>,
    },
    /// The response headers did not come within `request_timeout`.
    TimedOut,
    /// The backend answered something that is not HTTP.
    Garbled,
    /// The client's own request body failed (it went away, or sent bad chunks).
    ClientFailed,
}

async fn proxy(client: Arc<Client>, mut req: Request<ClientBody>) -> Result<Response<Body>, Infallible> {
    let shared = &client.shared;
    // A tunnel to wherever the client names is not a service's business (and
    // hyper would take the connection over on a 2xx).
    if req.method() == Method::CONNECT {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n"));
    }
    let checked = if req.version() < Version::HTTP_2 { origin_form(&mut req) } else { one_host(&req) };
    if let Err(problem) = checked {
        return Ok(text(StatusCode::BAD_REQUEST, problem));
    }
    shared.budget.deposit();
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, true, upgrade);
    forwarded(&mut parts.headers, &client.forwarded_for);
    let key = match &shared.config.policy {
        Policy::TenantHash { header } => parts.headers.get(header).map(|v| balance::hash(v.as_bytes())),
        _ => None,
    };
    let kind = match parts.version {
        _ if upgrade => Kind::Upgrade,
        Version::HTTP_2 if is_grpc(&parts.headers) => Kind::H2,
        _ => Kind::H1,
    };
    if parts.version == Version::HTTP_2 && kind == Kind::H1 {
        downgrade_to_http11(&mut parts);
    }
    // A GET or HEAD without a body goes to its instance the plain way (`h1.rs`): one task,
    // no hyper client in between.
    if kind == Kind::H1
        && parts.version == Version::HTTP_11
        && matches!(parts.method, Method::GET | Method::HEAD)
        && body.is_end_stream()
    {
        return Ok(plain(&client, &parts, key).await);
    }

    let mut tried = Tried::default();
    let (Some(mut endpoint), members) = shared.select_among(key, &mut tried, false) else {
        Counters::bump(&shared.unrouted);
        return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "no ready instance\n"));
    };
    let max_attempts = shared.config.retry.max_attempts;
    // Only an idempotent request is ever sent twice: one that may have reached an instance
    // (its connection failed after it left) could have been processed there, and a POST
    // charged twice is worse than a 502. A request that provably never left (refused
    // connection) is retried whatever its method, without a copy, its body still unread.
    let replayable = max_attempts > 1 && members > 1 && idempotent(&parts.method);
    let (body, replay) = match prepare_body(body, shared, replayable).await {
        Ok(prepared) => prepared,
        Err(answer) => return Ok(answer),
    };
    let spare = match replay {
        Some(body) => Some(Spare {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        }),
        _ => None,
    };
    let retry_answers = spare.is_some();
    let mut req = Request::from_parts(parts, body);

    loop {
        tried.push(&endpoint);
        let guard = InFlight::new(endpoint);
        let started = Instant::now();
        let outcome = attempt(shared, &guard.0, kind, req).await;
        let counters = &guard.0.counters;
        // Whether a retry may resend the request (the request itself if it
        // never left the router, else a copy from the spare), and the answer
        // if there is no retry.
        let (unsent, resendable, fallback) = match outcome {
            Outcome::Answered(response, reuse) => {
                let status = response.status();
                if status.is_server_error() {
                    shared.failed(&guard.0);
                } else {
                    shared.succeeded(&guard.0);
                }
                if !(retry_answers && matches!(status.as_u16(), 502 | 503)) {
                    counters.response(status, started.elapsed());
                    return Ok(forward(response, reuse, guard, client_upgrade, &client));
                }
                (None, true, Fallback::Answer(response, reuse))
            }
            Outcome::Unreachable { unsent } => {
                Counters::bump(&counters.failures);
                shared.failed(&guard.0);
                (unsent, true, Fallback::Made(StatusCode::BAD_GATEWAY, "the instance could not be reached\n"))
            }
            Outcome::TimedOut => {
                Counters::bump(&counters.failures);
                shared.failed(&guard.0);
                (None, false, Fallback::Made(StatusCode::GATEWAY_TIMEOUT, "the instance did not answer in time\n"))
            }
            Outcome::Garbled => {
                Counters::bump(&counters.failures);
                shared.failed(&guard.0);
                (None, false, Fallback::Made(StatusCode::BAD_GATEWAY, "the instance's answer was not HTTP\n"))
            }
            Outcome::ClientFailed => {
                (None, false, Fallback::Made(StatusCode::BAD_REQUEST, "the request body failed\n"))
            }
        };
        if resendable
            && (unsent.is_some() || spare.is_some())
            && tried.len() < max_attempts
            && let Some(next) = shared.select(key, &mut tried, false)
        {
            if shared.budget.withdraw() {
                if let Some(again) = unsent.or_else(|| spare.as_ref().map(Spare::request)) {
                    Counters::bump(&counters.retries);
                    (endpoint, req) = (next, again);
                    continue;
                }
            } else {
                Counters::bump(&shared.retries_denied);
            }
        }
        return Ok(match fallback {
            Fallback::Answer(response, reuse) => {
                counters.response(response.status(), started.elapsed());
                forward(response, reuse, guard, None, &client)
            }
            Fallback::Made(status, message) => {
                counters.response(status, started.elapsed());
                text(status, message)
            }
        });
    }
}

/// A GET or HEAD without a body, already made ready for the instance (hop-by-hop headers off,
/// forwarded headers on, origin form), sent and answered on a plain connection.
async fn plain(client: &Arc<Client>, parts: &hyper::http::request::Parts, key: Option<u64>) -> Response<Body> {
    let shared = &client.shared;
    let mut up = Upstream { head: Vec::with_capacity(1024), answer: Vec::new() };
    let head = &mut up.head;
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        crate::h1::push_header(head, name.as_str().as_bytes(), value.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let mut timer = std::pin::pin!(tokio::time::sleep(shared.config.request_timeout));
    let mut answer = ResponseHead::default();
    match up.forward(shared, key, timer.as_mut(), &mut answer).await {
        Forwarded::Said(status, message) => {
            text(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), message)
        }
        Forwarded::Answered { stream, head, guard, started } => {
            guard.0.counters.response_code(head.status, started.elapsed());
            let framing = if parts.method == Method::HEAD { Framing::Empty } else { head.framing };
            up.answer.drain(..head.len);
            let body = Body::plain(stream, up.answer, framing, head.reusable, guard, client.clone());
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
            *response.headers_mut() = answer.0;
            response
        }
    }
}

/// A response head for hyper to send: its headers (the status travels in `Head`).
#[derive(Default)]
struct ResponseHead(HeaderMap);

impl HeadSink for ResponseHead {
    fn status(&mut self, _status: u16, _reason: &str) {
        self.0.clear();
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        // httparse has checked both; hyper's types are stricter only about what no instance sends.
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            self.0.append(name, value);
        }
    }

    /// Hyper frames the body for its client itself.
    fn chunked(&mut self) {}
}

/// The answer for a try that may be retried, in case it is not.
enum Fallback {
    Answer(Response<Incoming>, Option<hyper::client::conn::http1::SendRequest<Outgoing>>),
    Made(StatusCode, &'static str),
}

/// One try on one endpoint. A pooled connection that turns out closed before
/// the request went out is the pool's staleness, not the endpoint's failure:
/// the request goes on another connection to the same endpoint.
async fn attempt(shared: &Shared, e: &Endpoint, kind: Kind, mut req: Request<Outgoing>) -> Outcome {
    // Bounded: each stale connection is dropped, and a new one is never stale.
    let mut stale_left = shared.config.max_idle_per_backend + 1;
    loop {
        let Ok(conn) = checkout(shared, e, kind).await else { return Outcome::Unreachable { unsent: Some(req) } };
        // The request timeout runs once the request is complete: at once for
        // a buffered body, from its end for a streamed one (as Envoy's), so a
        // long upload or client stream is not cut short.
        let request_sent = req.body_mut().watch_end();
        let timeout = shared.config.request_timeout;
        let deadline = async move {
            if let Some(sent) = request_sent {
                let _ = sent.await;
            }
            tokio::time::sleep(timeout).await;
        };
        let (pooled, sent, reuse) = match conn {
            Conn::H1 { mut send, pooled } => {
                let sent = within(deadline, send.try_send_request(req)).await;
                (pooled, sent, (kind == Kind::H1).then_some(send))
            }
            Conn::H2 { mut send, pooled } => (pooled, within(deadline, send.try_send_request(req)).await, None),
        };
        let mut failed = match sent {
            None => return Outcome::TimedOut,
            Some(Ok(response)) => return Outcome::Answered(response, reuse),
            Some(Err(failed)) => failed,
        };
        match failed.take_message() {
            Some(unsent) if pooled && stale_left > 0 => {
                stale_left -= 1;
                if kind == Kind::H2 {
                    // The shared connection is going away (GOAWAY): open another.
                    lock(&e.h2).take();
                }
                req = unsent;
            }
            Some(unsent) => return Outcome::Unreachable { unsent: Some(unsent) },
            None => {
                let error = failed.into_error();
                return if error.is_user() {
                    Outcome::ClientFailed
                } else if error.is_parse() {
                    Outcome::Garbled
                } else {
                    Outcome::Unreachable { unsent: None }
                };
            }
        }
    }
}

/// `work`'s output, or `None` if `deadline` comes first.
async fn within<T>(deadline: impl Future<Output = ()>, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        () = deadline => None,
    }
}

/// The client's response from the backend's: hop-by-hop headers removed, the
/// body streamed. A 101 to an upgrade request keeps `Connection` and `Upgrade`
/// and starts the tunnel, which keeps the request in flight until it closes.
fn forward(
    mut response: Response<Incoming>,
    reuse: Option<hyper::client::conn::http1::SendRequest<Outgoing>>,
    guard: InFlight,
    client_upgrade: Option<OnUpgrade>,
    client: &Arc<Client>,
) -> Response<Body> {
    if let Some(client_upgrade) = client_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false, true);
        let shared = &client.shared;
        let live = shared.tracker.enter();
        let tunnel = tunnel(client_upgrade, backend_upgrade, guard, live, client.clone());
        tokio::spawn(until_stopped(shared.phase.clone(), tunnel));
        return Response::from_parts(parts, Body::empty());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false, false);
    Response::from_parts(parts, Body::upstream(body, reuse, guard, client.clone()))
}

/// Copies bytes both ways between an upgraded client and backend until either
/// side closes.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, _in_flight: InFlight, _live: Live, _held: Arc<Client>) {
    let (Ok(client), Ok(backend)) = tokio::join!(client, backend) else { return };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, COPY_BUFFER, COPY_BUFFER).await;
}

/// The request body as it will be sent, and a copy for retries when the request may be sent
/// again (`replayable`) and its body can be: empty, or of a declared length within
/// `max_replay_body` (read whole now, within `request_timeout`). Anything else streams.
async fn prepare_body(
    body: ClientBody,
    shared: &Shared,
    replayable: bool,
) -> Result<(Outgoing, Option<Replay>), Response<Body>> {
    if body.is_end_stream() {
        return Ok((Outgoing::Empty, replayable.then(Replay::default)));
    }
    if !replayable {
        return Ok((Outgoing::stream(body), None));
    }
    let limit = shared.config.retry.max_replay_body;
    match body.size_hint().exact() {
        Some(len) if len <= limit as u64 => {
            match tokio::time::timeout(shared.config.request_timeout, read_replay(body, limit)).await {
                Ok(Some(replay)) => Ok((Outgoing::from(replay.clone()), Some(replay))),
                Ok(None) => Err(text(StatusCode::BAD_REQUEST, "the request body could not be read\n")),
                Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time\n")),
            }
        }
        _ => Ok((Outgoing::stream(body), None)),
    }
}

/// Reads a small body whole: no copy when it arrives in one frame (the usual
/// case). `None` if it fails or grows past `limit`.
async fn read_replay(mut body: ClientBody, limit: usize) -> Option<Replay> {
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.ok()?.into_data() {
            Ok(data) => {
                let len = first.as_ref().map_or(0, Bytes::len) + joined.len() + data.len();
                if len > limit {
                    return None;
                }
                match first.take() {
                    None if joined.is_empty() => first = Some(data),
                    earlier => {
                        joined.extend_from_slice(&earlier.unwrap_or_default());
                        joined.extend_from_slice(&data);
                    }
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let data = first.unwrap_or_else(|| Bytes::from(joined));
    Some(Replay { data, trailers })
}

/// An HTTP/1 request as the instance gets it, or why it is refused (RFC 9112 §3.2, as nginx and
/// HAProxy do): exactly one valid `Host` (none only in HTTP/1.0); an absolute-form target
/// (`GET http://a.example/x`) goes on in origin form (`/x`) with its authority as the `Host`,
/// so the instance never sees a target naming another host.
fn origin_form<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header\n");
    }
    if let Some(host) = host
        && !is_host_and_port(host.as_bytes())
    {
        return Err("the Host header is not a host[:port]\n");
    }
    if let Some(authority) = req.uri().authority() {
        let Ok(host) = HeaderValue::from_str(authority.as_str()) else {
            return Err("the request target's host is not valid\n");
        };
        if authority.as_str().contains('@') {
            return Err("the request target's host is not valid\n");
        }
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = target.parse() else { return Err("the request target is not valid\n") };
        *req.uri_mut() = uri;
        req.headers_mut().insert(header::HOST, host);
    } else if host.is_none() && req.version() == Version::HTTP_11 {
        return Err("an HTTP/1.1 request needs a Host header\n");
    }
    Ok(())
}

/// An HTTP/2 request names one host (RFC 9113 §8.3.1): at most one valid `Host`, and the same as
/// `:authority` when both are there, so the instance (which gets `Host`) and the router agree.
fn one_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let Some(host) = hosts.next() else { return Ok(()) };
    if hosts.next().is_some() {
        return Err("more than one Host header\n");
    }
    if !is_host_and_port(host.as_bytes()) {
        return Err("the Host header is not a host[:port]\n");
    }
    match req.uri().authority() {
        Some(authority) if !authority.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()) => {
            Err("the Host header names another host than :authority\n")
        }
        _ => Ok(()),
    }
}

/// `host[:port]` as RFC 3986 spells it (a reg-name, an IPv4 address or a bracketed IPv6
/// literal, then an optional port), checked byte by byte: no allocation on the request path.
/// Userinfo (`user@host`), a path or a space has no place in a `Host` header.
pub(crate) fn is_host_and_port(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=[]:".contains(b))
}

/// Methods a retry cannot make take effect twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// gRPC (`application/grpc`, `application/grpc+proto`, …) needs HTTP/2 end to end (trailers,
/// streams both ways); every other HTTP/2 request goes to its instance over HTTP/1.1, which every
/// HTTP server speaks, as nginx and HAProxy do.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc")
    })
}

/// An HTTP/2 request as HTTP/1.1: origin-form target, `Host` from the authority.
fn downgrade_to_http11(parts: &mut hyper::http::request::Parts) {
    parts.version = Version::HTTP_11;
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    if parts.uri.authority().is_some() {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = target.parse() {
            parts.uri = uri;
        }
    }
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and the like):
/// an `Upgrade` header and `upgrade` among the `Connection` options.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_options(req.headers()).any(|o| o.eq_ignore_ascii_case(b"upgrade"))
}

fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::CONNECTION).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).map(<[u8]>::trim_ascii)
}

/// Removes hop-by-hop headers and those the `Connection` header names. A
/// request keeps `te: trailers`, which gRPC requires end to end; an upgrade
/// keeps `Upgrade` and `Connection: upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        // Only allocates when a Connection header is present.
        let named: Vec<HeaderName> =
            connection_options(headers).filter_map(|o| HeaderName::from_bytes(o).ok()).collect();
        for name in named {
            // A client cannot have the Host taken off by naming it a connection option.
            if !(upgrade && name == header::UPGRADE) && name != header::HOST {
                headers.remove(name);
            }
        }
    }
    let keep_te = request
        && headers
            .get_all(header::TE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
    let protocols = if upgrade { headers.remove(header::UPGRADE) } else { None };
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocols) = protocols {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocols);
    }
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto`.
fn forwarded(headers: &mut HeaderMap, client: &HeaderValue) {
    let value = if headers.contains_key(&X_FORWARDED_FOR) {
        // Only allocates when an earlier proxy set the header.
        let mut joined = Vec::with_capacity(64);
        for previous in headers.get_all(&X_FORWARDED_FOR) {
            joined.extend_from_slice(previous.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(client.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone())
    } else {
        client.clone()
    };
    headers.insert(&X_FORWARDED_FOR, value);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::text(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        names
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("te", "gzip, trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, true, false);
        assert_eq!(names(&h), ["te", "x-kept"]);
        assert_eq!(h["te"], "trailers");
        let mut h = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false, false);
        assert!(h.is_empty());
    }

    #[test]
    fn an_upgrade_keeps_its_two_headers() {
        let mut h = headers(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        strip_hop_by_hop(&mut h, true, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn recognises_upgrade_requests() {
        let req = |version, pairs: &[(&'static str, &'static str)]| {
            let mut r = Request::new(());
            *r.version_mut() = version;
            *r.headers_mut() = headers(pairs);
            r
        };
        assert!(is_upgrade(&req(Version::HTTP_11, &[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
        assert!(!is_upgrade(&req(Version::HTTP_11, &[("upgrade", "websocket")])));
        assert!(!is_upgrade(&req(Version::HTTP_11, &[("connection", "upgrade")])));
        assert!(!is_upgrade(&req(Version::HTTP_10, &[("connection", "upgrade"), ("upgrade", "websocket")])));
    }

    #[test]
    fn appends_to_x_forwarded_for() {
        let mut h = HeaderMap::new();
        forwarded(&mut h, &HeaderValue::from_static("10.0.0.1"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        forwarded(&mut h, &HeaderValue::from_static("::1"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, ::1");
    }

    #[test]
    fn host_headers() {
        for good in ["svc", "svc:8080", "127.0.0.1:80", "[::1]:8080", "a-b.example_x"] {
            assert!(is_host_and_port(good.as_bytes()), "{good}");
        }
        for bad in ["", "user@evil.example", "a b", "a/b", "a?b", "a#b", "\"x\""] {
            assert!(!is_host_and_port(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn idempotent_methods() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent(&m), "{m}");
        }
    }
}
