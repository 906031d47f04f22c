//! In-process backends and clients for the router tests.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use tug_router::{Backend, Config, Protocol, Router};

/// A backend that answers every request with its id. Paths:
/// - `/slow`: waits 600 ms first;
/// - `/headers`: the body lists the request headers it received, one `name: value` a line;
/// - `/trailers`: the body is followed by a `grpc-status: 0` trailer;
/// - `/echo`: streams the request body back.
///
/// Every response carries `x-backend` (its id) and `x-version` (the request's HTTP version).
pub struct HttpBackend {
    pub id: String,
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpBackend {
    pub async fn start(id: &str) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name: Arc<str> = id.into();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                accepted.fetch_add(1, Ordering::Relaxed);
                let name = name.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(name.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpBackend { id: id.to_string(), addr, connections, task }
    }

    pub fn backend(&self) -> Backend {
        Backend { id: self.id.clone(), addr: self.addr, weight: 1 }
    }
}

async fn answer(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Either<Frames, Incoming>>, Infallible> {
    if req.uri().path() == "/echo" {
        return Ok(Response::new(Either::Right(req.into_body())));
    }
    let mut frames = VecDeque::new();
    match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(600)).await;
            frames.push_back(Frame::data(Bytes::from(name.to_string())));
        }
        "/headers" => {
            let mut text = format!("{name}\n");
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            frames.push_back(Frame::data(Bytes::from(text)));
        }
        "/trailers" => {
            frames.push_back(Frame::data(Bytes::from(name.to_string())));
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            frames.push_back(Frame::trailers(trailers));
        }
        _ => frames.push_back(Frame::data(Bytes::from(name.to_string()))),
    }
    // Read the request body through, as a real server would.
    let version = format!("{:?}", req.version());
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Either::Left(Frames(frames)));
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
}

/// A router on a free loopback port, with the sender of its membership.
pub struct Fixture {
    pub router: Router,
    pub members: watch::Sender<Arc<Vec<Backend>>>,
}

impl Fixture {
    pub fn start(protocol: Protocol, config: Config, backends: Vec<Backend>) -> Fixture {
        let (members, rx) = watch::channel(Arc::new(backends));
        let router = Router::bind("127.0.0.1:0".parse().unwrap(), protocol, config, rx).unwrap();
        Fixture { router, members }
    }

    pub fn addr(&self) -> SocketAddr {
        self.router.local_addr()
    }

    pub fn set(&self, backends: Vec<Backend>) {
        self.members.send_replace(Arc::new(backends));
    }
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

async fn collect(response: Response<Incoming>) -> Answer {
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
pub struct H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

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
pub struct H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>, SocketAddr);

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        H2(sender, addr)
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.0.ready().await.unwrap();
        let mut req = Request::get(format!("http://{}{path}", self.1));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        collect(self.0.send_request(req.body(Full::default()).unwrap()).await.unwrap()).await
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> Answer {
        self.0.ready().await.unwrap();
        let req = Request::post(format!("http://{}{path}", self.1)).body(Full::new(body)).unwrap();
        collect(self.0.send_request(req).await.unwrap()).await
    }
}

/// Sends `request` as raw bytes and reads until the server closes.
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

/// Retries `check` every 10 ms for up to 2 s (membership updates are applied by a task).
pub async fn eventually<F: AsyncFnMut() -> bool>(mut check: F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 2 s");
}
