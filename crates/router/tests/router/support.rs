//! In-process backends and clients for the router tests.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tug_router::{Backend, Config, EndpointStats, Members, Protocol, Router};

/// A backend that answers every request with its id. Paths:
/// - `/slow?ms=N`: waits N ms (600 by default) first;
/// - `/headers`: the body lists the request headers it received, one `name: value` a line;
/// - `/trailers`: the body is followed by a `grpc-status: 0` trailer;
/// - `/echo`: streams the request body back;
/// - `/grpc`: answers a gRPC call: the request's message back, then `grpc-status: 0`;
/// - `/status/N`: answers status N;
/// - `/ws`: a WebSocket-style upgrade (101), then echoes bytes.
///
/// Every response carries `x-backend` (its id) and `x-version` (the request's
/// HTTP version). [`HttpBackend::answer_with`] makes it answer every request
/// with one status instead.
pub struct HttpBackend {
    pub id: String,
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    /// Requests received so far.
    pub requests: Arc<AtomicUsize>,
    forced: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Behaviour {
    name: Arc<str>,
    requests: Arc<AtomicUsize>,
    forced: Arc<AtomicU16>,
}

/// Decrements a gauge when dropped.
struct Gauge(Arc<AtomicUsize>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl HttpBackend {
    pub async fn start(id: &str) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, open, requests): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) = Default::default();
        let forced = Arc::new(AtomicU16::new(0));
        let behaviour =
            Arc::new(Behaviour { name: id.into(), requests: Arc::clone(&requests), forced: Arc::clone(&forced) });
        let (accepted, gauge) = (Arc::clone(&connections), Arc::clone(&open));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                accepted.fetch_add(1, Relaxed);
                gauge.fetch_add(1, Relaxed);
                let open = Gauge(gauge.clone());
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let _open = open;
                    let service = hyper::service::service_fn(move |req| answer(behaviour.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpBackend { id: id.to_string(), addr, connections, open, requests, forced, task }
    }

    pub fn backend(&self) -> Backend {
        self.at_revision("r1")
    }

    pub fn at_revision(&self, revision: &str) -> Backend {
        Backend { id: self.id.clone(), addr: self.addr, weight: 1, revision: revision.into() }
    }

    /// Answers every request with `status` from now on (0: behave normally).
    pub fn answer_with(&self, status: u16) {
        self.forced.store(status, Relaxed);
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Relaxed)
    }
}

type Reply = Response<Either<Frames, Incoming>>;

async fn answer(b: Arc<Behaviour>, mut req: Request<Incoming>) -> Result<Reply, Infallible> {
    b.requests.fetch_add(1, Relaxed);
    let name = &b.name;
    let path = req.uri().path().to_string();
    let mut status = StatusCode::OK;
    let mut frames = VecDeque::new();
    let mut headers = HeaderMap::new();
    let forced = b.forced.load(Relaxed);
    if forced != 0 {
        status = StatusCode::from_u16(forced).unwrap();
        frames.push_back(Frame::data(Bytes::from(name.to_string())));
    } else if path == "/echo" {
        return Ok(Response::new(Either::Right(req.into_body())));
    } else if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    if io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(Either::Left(Frames(VecDeque::new())));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert("connection", "upgrade".parse().unwrap());
        response.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        response.headers_mut().insert("x-backend", name.parse().unwrap());
        return Ok(response);
    } else if path == "/grpc" {
        let message = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        frames.push_back(Frame::data(message));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "served".parse().unwrap());
        frames.push_back(Frame::trailers(trailers));
        headers.insert("content-type", "application/grpc".parse().unwrap());
        let mut response = Response::new(Either::Left(Frames(frames)));
        *response.headers_mut() = headers;
        response.headers_mut().insert("x-backend", name.parse().unwrap());
        return Ok(response);
    } else if path == "/slow" {
        let ms = req.uri().query().and_then(|q| q.strip_prefix("ms=")).and_then(|v| v.parse().ok()).unwrap_or(600);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        frames.push_back(Frame::data(Bytes::from(name.to_string())));
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        frames.push_back(Frame::data(Bytes::from(name.to_string())));
    } else if path == "/headers" {
        let mut text = format!("{name}\n");
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        frames.push_back(Frame::data(Bytes::from(text)));
    } else if path == "/trailers" {
        frames.push_back(Frame::data(Bytes::from(name.to_string())));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        frames.push_back(Frame::trailers(trailers));
    } else {
        frames.push_back(Frame::data(Bytes::from(name.to_string())));
    }
    // Read the request body through, as a real server would.
    let version = format!("{:?}", req.version());
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Either::Left(Frames(frames)));
    *response.status_mut() = status;
    response.headers_mut().insert("x-backend", name.parse().unwrap());
    response.headers_mut().insert("x-version", version.parse().unwrap());
    Ok(response)
}

/// A body made of fixed frames (data and trailers).
pub struct Frames(VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }
}

/// A backend that accepts connections, reads what comes, and closes without
/// a byte of answer (a crashed or restarting server).
pub struct ResetBackend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for ResetBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResetBackend {
    pub async fn start() -> ResetBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                accepted.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    // Linger 0: the close is a reset, as from a crashed process.
                    let _ = stream.set_zero_linger();
                });
            }
        });
        ResetBackend { addr, connections, task }
    }

    pub fn backend(&self, id: &str) -> Backend {
        Backend { id: id.into(), addr: self.addr, weight: 1, revision: "r1".into() }
    }
}

/// A TCP backend that writes `<id>\n` and then echoes what it reads.
pub struct EchoBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoBackend {
    pub async fn start(id: &'static str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let _ = stream.write_all(format!("{id}\n").as_bytes()).await;
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        EchoBackend { addr, task }
    }

    pub fn backend(&self, id: &str) -> Backend {
        Backend { id: id.into(), addr: self.addr, weight: 1, revision: "r1".into() }
    }
}

/// A router on a free loopback port, with the sender of its membership.
pub struct Fixture {
    pub router: Router,
    pub members: watch::Sender<Arc<Members>>,
}

impl Fixture {
    /// `members`: a `Vec<Backend>` (no split) or [`Members`].
    pub fn start(protocol: Protocol, config: Config, members: impl Into<Members>) -> Fixture {
        let (members, rx) = watch::channel(Arc::new(members.into()));
        let router = Router::bind("127.0.0.1:0".parse().unwrap(), protocol, config, rx).unwrap();
        Fixture { router, members }
    }

    pub fn addr(&self) -> SocketAddr {
        self.router.local_addr()
    }

    /// Sends new membership: a `Vec<Backend>` (no split) or [`Members`].
    pub fn set(&self, members: impl Into<Members>) {
        self.members.send_replace(Arc::new(members.into()));
    }

    /// The stats of (id, revision).
    pub fn stats(&self, id: &str, revision: &str) -> EndpointStats {
        let stats = self.router.stats();
        let found = stats.endpoints.into_iter().find(|e| e.id == id && e.revision == revision);
        found.unwrap_or_else(|| panic!("no stats for {id} at {revision}"))
    }
}

pub async fn backends(n: usize) -> Vec<HttpBackend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(HttpBackend::start(&format!("host-a/web-{i}")).await);
    }
    out
}

pub fn members(backends: &[HttpBackend]) -> Vec<Backend> {
    backends.iter().map(HttpBackend::backend).collect()
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn backend(&self) -> &str {
        self.headers.get("x-backend").map_or("", |v| v.to_str().unwrap())
    }
}

pub async fn collect(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(collected.to_bytes().to_vec()).unwrap(),
        trailers,
    }
}

/// One keep-alive HTTP/1.1 client connection.
pub struct H1(pub hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        H1(sender)
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.0.ready().await.unwrap();
        let mut req = Request::get(path).header("host", "service.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        collect(self.0.send_request(req.body(Full::default()).unwrap()).await.unwrap()).await
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> Answer {
        self.0.ready().await.unwrap();
        let req = Request::post(path).header("host", "service.test").body(Full::new(body)).unwrap();
        collect(self.0.send_request(req).await.unwrap()).await
    }
}

/// One HTTP/2 prior-knowledge client connection; clones share it.
#[derive(Clone)]
pub struct H2(pub hyper::client::conn::http2::SendRequest<Full<Bytes>>, SocketAddr);

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        H2(sender, addr)
    }

    pub fn request(&self, path: &str) -> hyper::http::request::Builder {
        Request::get(format!("http://{}{path}", self.1))
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.request(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::default()).unwrap()).await
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> Answer {
        self.send(self.request(path).method("POST").body(Full::new(body)).unwrap()).await
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Answer {
        self.0.ready().await.unwrap();
        collect(self.0.send_request(req).await.unwrap()).await
    }
}

/// Sends `request` as raw bytes and reads until the server closes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await.unwrap().unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Retries `check` every 10 ms for up to 3 s (membership updates are applied by a task).
pub async fn eventually<F: AsyncFnMut() -> bool>(mut check: F) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 3 s");
}

/// Whether the peer closes `stream` within `within` (EOF or reset), reading
/// and discarding whatever comes first.
pub async fn closes(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut sink)).await.is_ok()
}
