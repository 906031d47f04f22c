//! The server: an accept loop, a thread per connection, the endpoints, and a graceful stop.

use crate::http::{self, Framing, ReadError, Request};
use crate::knobs::{self, Config, Rate};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const BYTES: &str = "application/octet-stream";

/// Readiness: decided by `DEMO_READY_AFTER`, or forced by `/admin/ready` and `/admin/unready`.
const AUTO: u8 = 0;
const READY: u8 = 1;
const UNREADY: u8 = 2;

/// The body of `/bytes`: `abc…z` repeated. Its length is a multiple of 26, so chunks follow one another.
const PATTERN_LEN: usize = 26 * 2520;
static PATTERN: [u8; PATTERN_LEN] = {
    let mut p = [0u8; PATTERN_LEN];
    let mut i = 0;
    while i < PATTERN_LEN {
        p[i] = b'a' + (i % 26) as u8;
        i += 1;
    }
    p
};

pub struct Server {
    listener: TcpListener,
    wake: UnixStream,
    shared: Arc<Shared>,
}

/// Stops a running [`Server`] from another thread (the signal handler's, or a test's).
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

struct Shared {
    config: Config,
    /// The instance name as a header value: control characters removed.
    instance_header: String,
    started: Instant,
    /// Requests that the failure pattern counts.
    requests: AtomicU64,
    readiness: AtomicU8,
    sick: AtomicBool,
    stopping: AtomicBool,
    wake: UnixStream,
    conns: Mutex<Conns>,
    gone: Condvar,
}

#[derive(Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, Conn>,
}

struct Conn {
    stream: TcpStream,
    /// Between the first byte of a request and the end of its response.
    busy: bool,
    /// Shut down by the stop: the connection thread ends.
    closed: bool,
}

impl Server {
    pub fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let (wake, wake_tx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        let shared = Shared {
            instance_header: config.instance.chars().filter(|c| !c.is_control()).collect(),
            config,
            started: Instant::now(),
            requests: AtomicU64::new(0),
            readiness: AtomicU8::new(AUTO),
            sick: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            wake: wake_tx,
            conns: Mutex::default(),
            gone: Condvar::new(),
        };
        Ok(Server { listener, wake, shared: Arc::new(shared) })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Serves until stopped; then stops accepting, lets requests in flight finish for up to `grace`, and
    /// returns how many connections were still open at the end.
    pub fn run(self, grace: Duration) -> usize {
        loop {
            let mut fds = [
                libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if fds[1].revents != 0 || self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            loop {
                match self.listener.accept() {
                    Ok((stream, peer)) => self.spawn(stream, peer),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                    Err(_) => {
                        // Out of descriptors or memory: do not spin.
                        thread::sleep(Duration::from_millis(10));
                        break;
                    }
                }
            }
        }
        drop(self.listener);
        self.shared.drain(grace)
    }

    fn spawn(&self, stream: TcpStream, peer: SocketAddr) {
        // Some systems pass the listener's non-blocking mode on to accepted sockets.
        if stream.set_nonblocking(false).is_err() {
            return;
        }
        let Ok(handle) = stream.try_clone() else {
            return;
        };
        let id = {
            let mut conns = self.shared.lock();
            let id = conns.next;
            conns.next += 1;
            conns.open.insert(id, Conn { stream: handle, busy: false, closed: false });
            id
        };
        let shared = self.shared.clone();
        let spawned = thread::Builder::new()
            .name("tug-demo-conn".into())
            .stack_size(256 << 10)
            .spawn(move || connection(&shared, id, stream, peer));
        if spawned.is_err() {
            self.shared.forget(id);
        }
    }
}

impl Stopper {
    pub fn stop(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        let _ = (&self.0.wake).write(&[1]);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(&self, id: u64) {
        self.lock().open.remove(&id);
        self.gone.notify_all();
    }

    /// A request has started arriving on connection `id`: false when the stop closed it meanwhile.
    fn begin(&self, id: u64) -> bool {
        match self.lock().open.get_mut(&id) {
            Some(conn) if !conn.closed => {
                conn.busy = true;
                true
            }
            _ => false,
        }
    }

    /// A response is sent: false when the connection must end because the server is stopping.
    fn end(&self, id: u64) -> bool {
        let mut conns = self.lock();
        if let Some(conn) = conns.open.get_mut(&id) {
            conn.busy = false;
        }
        !self.stopping.load(Ordering::SeqCst)
    }

    fn drain(&self, grace: Duration) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        let mut conns = self.lock();
        for conn in conns.open.values_mut() {
            if !conn.busy && !conn.closed {
                conn.closed = true;
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
        while !conns.open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            conns = self.gone.wait_timeout(conns, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        conns.open.len()
    }

    fn ready(&self) -> bool {
        match self.readiness.load(Ordering::Relaxed) {
            READY => true,
            UNREADY => false,
            _ => self.started.elapsed() >= self.config.ready_after,
        }
    }

    fn access_log(&self, peer: SocketAddr, request: Option<&Request>, status: u16, bytes: u64, started: Instant) {
        if self.config.access_log {
            let (method, target) = request.map_or(("-", "-"), |r| (r.method.as_str(), r.target.as_str()));
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            println!("{} {peer} \"{method} {target}\" {status} {bytes} {ms:.1}ms", self.config.instance);
        }
    }
}

/// Removes a connection from the open ones when its thread ends, however it ends.
struct Forget<'a>(&'a Shared, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

fn connection(shared: &Shared, id: u64, stream: TcpStream, peer: SocketAddr) {
    let _forget = Forget(shared, id);
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(16 << 10, read_half);
    let mut writer = BufWriter::with_capacity(16 << 10, stream);
    let mut head = Vec::with_capacity(1024);
    loop {
        match reader.fill_buf() {
            Ok([]) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        if !shared.begin(id) {
            break;
        }
        let keep_alive = serve(shared, &mut reader, &mut writer, &mut head, peer);
        if !shared.end(id) || !keep_alive {
            break;
        }
    }
}

/// What an endpoint answers.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Body,
    delay: Duration,
    allow: Option<&'static str>,
    close: bool,
    exit: bool,
}

enum Body {
    Bytes(Vec<u8>),
    /// This many bytes of [`PATTERN`], streamed.
    Pattern(u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::Pattern(n) => *n,
        }
    }
}

fn text(status: u16, text: &str) -> Response {
    Response {
        status,
        content_type: TEXT,
        body: Body::Bytes(format!("{text}\n").into_bytes()),
        delay: Duration::ZERO,
        allow: None,
        close: false,
        exit: false,
    }
}

fn json(status: u16, json: String) -> Response {
    Response { content_type: JSON, body: Body::Bytes(json.into_bytes()), ..text(status, "") }
}

/// Serves one request; returns whether the connection stays open.
fn serve(
    shared: &Shared,
    reader: &mut BufReader<TcpStream>,
    writer: &mut BufWriter<TcpStream>,
    head: &mut Vec<u8>,
    peer: SocketAddr,
) -> bool {
    let started = Instant::now();
    let request = http::read_head(reader, head).and_then(|more| match more {
        true => http::parse_head(head).map(Some),
        false => Ok(None),
    });
    let request = match request {
        Ok(Some(request)) => request,
        Ok(None) | Err(ReadError::Io) => return false,
        Err(e) => return refuse(shared, reader, writer, &e, peer, None, started),
    };
    let framing = match request.framing() {
        Ok(framing) => framing,
        Err(e) => return refuse(shared, reader, writer, &e, peer, Some(&request), started),
    };
    let continue_100 = request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if framing != Framing::None
        && request.minor == 1
        && continue_100
        && writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").and_then(|()| writer.flush()).is_err()
    {
        return false;
    }
    let body_bytes = match http::discard_body(reader, framing) {
        Ok(n) => n,
        Err(ReadError::Io) => return false,
        Err(e) => return refuse(shared, reader, writer, &e, peer, Some(&request), started),
    };
    let response = respond(shared, &request, peer, body_bytes);
    if !response.delay.is_zero() {
        thread::sleep(response.delay);
    }
    let close = response.close || !request.keep_alive() || shared.stopping.load(Ordering::SeqCst);
    let written = write_response(shared, writer, &request, &response, close).is_ok();
    shared.access_log(peer, Some(&request), response.status, response.body.len(), started);
    if response.exit {
        eprintln!("tug-demo {} crashing (POST /crash)", shared.config.instance);
        std::process::exit(1);
    }
    written && !close
}

fn write_response(
    shared: &Shared,
    w: &mut BufWriter<TcpStream>,
    request: &Request,
    response: &Response,
    close: bool,
) -> io::Result<()> {
    let mut headers = vec![("Content-Type", response.content_type), ("X-Demo-Instance", &shared.instance_header)];
    if let Some(allow) = response.allow {
        headers.push(("Allow", allow));
    }
    http::write_head(w, response.status, &headers, response.body.len(), close)?;
    if request.method != "HEAD" {
        match &response.body {
            Body::Bytes(bytes) => w.write_all(bytes)?,
            Body::Pattern(n) => {
                let mut left = *n;
                while left > 0 {
                    let chunk = left.min(PATTERN_LEN as u64) as usize;
                    w.write_all(&PATTERN[..chunk])?;
                    left -= chunk as u64;
                }
            }
        }
    }
    w.flush()
}

/// Answers a malformed request and closes the connection, reading what the client still sends for a
/// moment so that the answer is not lost to a reset.
fn refuse(
    shared: &Shared,
    reader: &mut BufReader<TcpStream>,
    writer: &mut BufWriter<TcpStream>,
    error: &ReadError,
    peer: SocketAddr,
    request: Option<&Request>,
    started: Instant,
) -> bool {
    let (status, why) = match error {
        ReadError::TooLarge => (431, "the request head is larger than 16 KiB"),
        ReadError::Version => (505, "only HTTP/1.0 and HTTP/1.1 are served"),
        ReadError::Bad(why) => (400, *why),
        ReadError::Io => return false,
    };
    let body = format!("{why}\n");
    let headers = [("Content-Type", TEXT), ("X-Demo-Instance", &shared.instance_header)];
    let _ = http::write_head(writer, status, &headers, body.len() as u64, true)
        .and_then(|()| writer.write_all(body.as_bytes()))
        .and_then(|()| writer.flush());
    shared.access_log(peer, request, status, body.len() as u64, started);
    let _ = writer.get_ref().shutdown(Shutdown::Write);
    let stream = reader.get_mut();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 8192];
    let mut total = 0;
    while total < 1 << 20 && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    false
}

fn respond(shared: &Shared, request: &Request, peer: SocketAddr, body_bytes: u64) -> Response {
    match request.path() {
        "/health" if shared.stopping.load(Ordering::SeqCst) => text(503, "stopping"),
        "/health" if shared.ready() => text(200, "ok"),
        "/health" => text(503, "not ready"),
        "/live" if shared.sick.load(Ordering::Relaxed) => text(500, "sick"),
        "/live" => text(200, "ok"),
        "/admin/ready" | "/admin/unready" | "/admin/sick" | "/crash" if request.method != "POST" => {
            Response { allow: Some("POST"), ..text(405, "use POST") }
        }
        "/admin/ready" => {
            shared.readiness.store(READY, Ordering::Relaxed);
            text(200, "ready")
        }
        "/admin/unready" => {
            shared.readiness.store(UNREADY, Ordering::Relaxed);
            text(200, "unready")
        }
        "/admin/sick" => {
            shared.sick.store(true, Ordering::Relaxed);
            text(200, "sick")
        }
        "/crash" => Response { close: true, exit: true, ..text(200, "crashing") },
        path => app(shared, request, path, peer, body_bytes).unwrap_or_else(|e| text(400, &e)),
    }
}

/// The application's endpoints: these have the delay and the failures.
fn app(shared: &Shared, request: &Request, path: &str, peer: SocketAddr, body_bytes: u64) -> Result<Response, String> {
    let config = &shared.config;
    let delay = match request.param("delay") {
        Some(v) => knobs::parse_duration(&v).map_err(|e| format!("delay: {e}"))?,
        None => config.delay,
    };
    let fail = match request.param("fail") {
        Some(v) => knobs::parse_rate(&v).map_err(|e| format!("fail: {e}"))?,
        None => config.fail,
    };
    let bytes = match path {
        "/bytes" => {
            let n = request.param("n").ok_or("/bytes needs ?n=BYTES")?;
            Some(knobs::parse_size(&n).map_err(|e| format!("n: {e}"))?)
        }
        _ => None,
    };
    let response = if failing(shared, fail) {
        json(500, identity(shared, Some("injected failure")))
    } else if let Some(n) = bytes {
        Response { content_type: BYTES, body: Body::Pattern(n), ..text(200, "") }
    } else if path == "/echo" {
        json(200, echo(shared, request, peer, body_bytes))
    } else {
        json(200, identity(shared, None))
    };
    Ok(Response { delay, ..response })
}

fn failing(shared: &Shared, rate: Rate) -> bool {
    rate.fails(shared.requests.fetch_add(1, Ordering::Relaxed))
}

fn identity(shared: &Shared, error: Option<&str>) -> String {
    let c = &shared.config;
    let mut out = String::with_capacity(256);
    out.push('{');
    if let Some(error) = error {
        out.push_str("\"error\":");
        http::json_string(&mut out, error);
        out.push(',');
    }
    for (i, (key, value)) in [
        ("service", &c.service),
        ("instance", &c.instance),
        ("version", &c.version),
        ("revision", &c.revision),
        ("message", &c.message),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{key}\":");
        http::json_string(&mut out, value);
    }
    let _ = writeln!(out, ",\"pid\":{},\"uptime_ms\":{}}}", std::process::id(), shared.started.elapsed().as_millis());
    out
}

fn echo(shared: &Shared, request: &Request, peer: SocketAddr, body_bytes: u64) -> String {
    // Header names in lower case; repeated ones joined with ", " as HTTP allows.
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in &request.headers {
        let name = name.to_ascii_lowercase();
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            None => headers.push((name, value.clone())),
        }
    }
    let mut out = String::with_capacity(512);
    let version = if request.minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
    let remote = peer.to_string();
    out.push('{');
    for (key, value) in [
        ("method", request.method.as_str()),
        ("path", request.path()),
        ("query", request.query()),
        ("version", version),
        ("remote_addr", &remote),
        ("instance", &shared.config.instance),
    ] {
        let _ = write!(out, "\"{key}\":");
        http::json_string(&mut out, value);
        out.push(',');
    }
    let _ = write!(out, "\"body_bytes\":{body_bytes},\"headers\":{{");
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        http::json_string(&mut out, name);
        out.push(':');
        http::json_string(&mut out, value);
    }
    out.push_str("}}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::JoinHandle;

    struct Running {
        addr: SocketAddr,
        stopper: Stopper,
        thread: JoinHandle<usize>,
    }

    fn start(config: Config) -> Running {
        let server = Server::bind("127.0.0.1:0", config).unwrap();
        let addr = server.local_addr().unwrap();
        let stopper = server.stopper();
        let thread = thread::spawn(move || server.run(Duration::from_secs(2)));
        Running { addr, stopper, thread }
    }

    impl Running {
        fn stop(self) -> usize {
            self.stopper.stop();
            self.thread.join().unwrap()
        }
    }

    struct Client {
        stream: TcpStream,
        reader: BufReader<TcpStream>,
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).unwrap()
        }
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Client { reader: BufReader::new(stream.try_clone().unwrap()), stream }
        }

        fn send(&mut self, raw: &[u8]) {
            self.stream.write_all(raw).unwrap();
        }

        fn get(&mut self, target: &str) -> Reply {
            self.send(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
            self.reply().unwrap()
        }

        fn post(&mut self, target: &str) -> Reply {
            self.send(format!("POST {target} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n").as_bytes());
            self.reply().unwrap()
        }

        /// The next response, or None when the server closed the connection.
        fn reply(&mut self) -> Option<Reply> {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return None;
            }
            let status = line.split(' ').nth(1).unwrap().parse().unwrap();
            let mut headers = Vec::new();
            loop {
                line.clear();
                self.reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.to_string(), value.trim().to_string()));
            }
            let mut reply = Reply { status, headers, body: Vec::new() };
            let length: usize = reply.header("content-length").unwrap().parse().unwrap();
            reply.body.resize(length, 0);
            self.reader.read_exact(&mut reply.body).unwrap();
            Some(reply)
        }

        fn closed(&mut self) -> bool {
            let mut byte = [0u8; 1];
            matches!(self.reader.read(&mut byte), Ok(0))
        }
    }

    #[test]
    fn keep_alive_pipelining_and_readiness() {
        let config = Config {
            instance: "web-2".into(),
            service: "web".into(),
            message: "hello \"world\"".into(),
            ready_after: Duration::from_millis(300),
            ..Config::default()
        };
        let server = start(config);
        let mut client = Client::connect(server.addr);

        // Two requests on one connection, sent at once (pipelined).
        client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /any/path HTTP/1.1\r\nHost: t\r\n\r\n");
        let health = client.reply().unwrap();
        assert_eq!((health.status, health.text()), (503, "not ready\n"));
        assert_eq!(health.header("connection"), Some("keep-alive"));
        let root = client.reply().unwrap();
        assert_eq!(root.status, 200);
        assert_eq!(root.header("content-type"), Some("application/json"));
        assert_eq!(root.header("x-demo-instance"), Some("web-2"));
        let body = root.text();
        assert!(
            body.starts_with(
                r#"{"service":"web","instance":"web-2","version":"1","revision":"","message":"hello \"world\"","pid":"#
            ),
            "{body}"
        );
        assert!(body.contains(r#","uptime_ms":"#) && body.ends_with("}\n"), "{body}");

        thread::sleep(Duration::from_millis(350));
        let health = client.get("/health");
        assert_eq!((health.status, health.text()), (200, "ok\n"));

        assert_eq!(client.post("/admin/unready").status, 200);
        assert_eq!(client.get("/health").status, 503);
        assert_eq!(client.get("/admin/ready").status, 405);
        assert_eq!(client.post("/admin/ready").status, 200);
        assert_eq!(client.get("/health").status, 200);

        assert_eq!(client.get("/live").status, 200);
        assert_eq!(client.post("/admin/sick").status, 200);
        assert_eq!(client.get("/live").status, 500);
        assert_eq!(client.get("/health").status, 200, "liveness and readiness are separate");

        // Connection: close is honoured.
        client.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(client.reply().unwrap().header("connection"), Some("close"));
        assert!(client.closed());

        // HTTP/1.0 closes unless asked to keep alive.
        let mut old = Client::connect(server.addr);
        old.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(old.reply().unwrap().header("connection"), Some("keep-alive"));
        old.send(b"HEAD / HTTP/1.0\r\n\r\n");
        let head = old.reply_head_only();
        assert_eq!(head.0, 200);
        assert!(old.closed());

        assert_eq!(server.stop(), 0);
    }

    impl Client {
        /// A response to HEAD: the head only, whatever its Content-Length says.
        fn reply_head_only(&mut self) -> (u16, String) {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).unwrap();
                head.push_str(&line);
                if line.trim_end().is_empty() {
                    break;
                }
            }
            (head.split(' ').nth(1).unwrap().parse().unwrap(), head)
        }
    }

    #[test]
    fn bodies_keep_the_connection_in_step() {
        let server = start(Config::default());
        let mut client = Client::connect(server.addr);
        client.send(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\nhello");
        let echo = client.reply().unwrap();
        let body = echo.text();
        assert!(
            body.starts_with(
                r#"{"method":"POST","path":"/echo","query":"","version":"HTTP/1.1","remote_addr":"127.0.0.1:"#
            ),
            "{body}"
        );
        assert!(
            body.contains(r#""body_bytes":5,"headers":{"content-length":"5","x-forwarded-for":"10.0.0.1, 10.0.0.2"}"#),
            "{body}"
        );

        client
            .send(b"POST /echo?a=b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
        let echo = client.reply().unwrap();
        assert!(echo.text().contains(r#""query":"a=b","#) && echo.text().contains(r#""body_bytes":5,"#));

        client.send(b"POST / HTTP/1.1\r\nContent-Length: 3000\r\nExpect: 100-continue\r\n\r\n");
        let mut line = String::new();
        client.reader.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
        client.reader.read_line(&mut line).unwrap();
        client.send(&[b'x'; 3000]);
        assert_eq!(client.reply().unwrap().status, 200);

        let bytes = client.get("/bytes?n=200000");
        assert_eq!((bytes.status, bytes.body.len()), (200, 200_000));
        assert!(bytes.body.iter().enumerate().all(|(i, &b)| b == b'a' + (i % 26) as u8));
        assert_eq!(client.get("/bytes?n=0").body.len(), 0);
        assert_eq!(client.get("/bytes?n=lots").status, 400);
        assert_eq!(client.get("/bytes").status, 400);
        assert_eq!(server.stop(), 0);
    }

    #[test]
    fn knobs_per_request() {
        let server = start(Config { fail: knobs::parse_rate("1").unwrap(), ..Config::default() });
        let mut client = Client::connect(server.addr);
        let failed = client.get("/");
        assert_eq!(failed.status, 500);
        assert!(failed.text().starts_with(r#"{"error":"injected failure","service":"demo""#));
        assert_eq!(client.get("/health").status, 200, "probes do not fail");

        let statuses: Vec<u16> = (0..10).map(|_| client.get("/?fail=30%25").status).collect();
        assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 3, "{statuses:?}");
        let statuses: Vec<u16> = (0..100).map(|_| client.get("/echo?fail=0.3").status).collect();
        assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 30);
        assert_eq!(client.get("/?fail=0").status, 200);

        let started = Instant::now();
        assert_eq!(client.get("/?fail=0&delay=150ms").status, 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
        let bad = client.get("/?delay=soon");
        assert_eq!(bad.status, 400);
        assert!(bad.text().starts_with("delay: "), "{}", bad.text());
        assert_eq!(client.get("/?fail=2").status, 400);
        assert_eq!(server.stop(), 0);
    }

    #[test]
    fn bad_requests_are_refused_not_fatal() {
        let server = start(Config::default());
        for (raw, status) in [
            (&b"NONSENSE\r\n\r\n"[..], 400),
            (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            (b"\x00\x01\x02\x03\r\n\r\n", 400),
        ] {
            let mut client = Client::connect(server.addr);
            client.send(raw);
            let reply = client.reply().unwrap();
            assert_eq!((reply.status, reply.header("connection")), (status, Some("close")), "{raw:?}");
            assert!(client.closed());
        }
        let mut client = Client::connect(server.addr);
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(20_000, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        client.send(&big);
        assert_eq!(client.reply().unwrap().status, 431);
        assert!(client.closed());

        // A client that goes away mid-request harms nothing.
        let mut client = Client::connect(server.addr);
        client.send(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc");
        drop(client);
        assert_eq!(Client::connect(server.addr).get("/").status, 200);
        assert_eq!(server.stop(), 0);
    }

    #[test]
    fn stopping_finishes_requests_in_flight_and_closes_idle_connections() {
        let server = start(Config::default());
        let mut idle = Client::connect(server.addr);
        assert_eq!(idle.get("/").status, 200);
        let mut busy = Client::connect(server.addr);
        busy.send(b"GET /?delay=400ms HTTP/1.1\r\n\r\n");
        thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let addr = server.addr;
        assert_eq!(server.stop(), 0);
        assert!(started.elapsed() >= Duration::from_millis(200), "the stop waited for the slow request");
        let reply = busy.reply().unwrap();
        assert_eq!((reply.status, reply.header("connection")), (200, Some("close")));
        assert!(busy.closed());
        assert!(idle.closed());
        assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
    }
}
