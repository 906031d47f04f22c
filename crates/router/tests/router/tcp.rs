//! TCP mode, including a real redis-server behind the router.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tug_router::{Backend, Config, Protocol};

use crate::support::{EchoBackend, Fixture, dead_addr, eventually};

async fn echo_through(addr: SocketAddr, message: &str) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut id = String::new();
    stream.read_line(&mut id).await.unwrap();
    stream.get_mut().write_all(message.as_bytes()).await.unwrap();
    let mut echoed = vec![0; message.len()];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, message.as_bytes());
    id.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_echoes_balances_and_retries_refused_connects() {
    let (a, b) = (EchoBackend::start("echo-a").await, EchoBackend::start("echo-b").await);
    let dead = Backend { id: "dead".into(), addr: dead_addr().await, weight: 1, revision: "r1".into() };
    let fx = Fixture::start(Protocol::Tcp, Config::default(), vec![a.backend("echo-a"), dead, b.backend("echo-b")]);
    let mut counts = BTreeMap::new();
    for i in 0..30 {
        *counts.entry(echo_through(fx.addr(), &format!("hello {i}\n")).await).or_insert(0) += 1;
    }
    // Every connection reached a live backend; the dead one's turns went to either.
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["echo-a", "echo-b"]);
    assert!(counts.values().all(|&n| n >= 10), "{counts:?}");
    let dead = fx.stats("dead", "r1");
    assert!(dead.failures >= 5 && dead.retries == dead.failures && dead.ejections == 1, "{dead:?}");
    let served: u64 = ["echo-a", "echo-b"].iter().map(|id| fx.stats(id, "r1").requests).sum();
    assert_eq!(served, 30, "stats count connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_in_flight_counts_open_connections() {
    let a = EchoBackend::start("echo-a").await;
    let fx = Fixture::start(Protocol::Tcp, Config::default(), vec![a.backend("echo-a")]);
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(fx.addr()).await.unwrap();
        let mut greeting = [0u8; 7];
        stream.read_exact(&mut greeting).await.unwrap();
        open.push(stream);
    }
    assert_eq!(fx.router.in_flight("echo-a"), 3);
    // Leaving membership does not cut them: the count is how a drain waits.
    fx.set(vec![]);
    eventually(async || !fx.stats("echo-a", "r1").member).await;
    assert_eq!(fx.router.in_flight("echo-a"), 3);
    open.clear();
    eventually(async || fx.router.in_flight("echo-a") == 0).await;
    assert_eq!(fx.stats("echo-a", "r1").requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_closes_when_no_backend_is_ready() {
    let fx = Fixture::start(Protocol::Tcp, Config::default(), vec![]);
    let mut stream = TcpStream::connect(fx.addr()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert_eq!(fx.router.stats().unrouted, 1);
}

/// A redis-server of our own on a free port, killed when dropped.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed for this test: apt-get install -y redis-server redis-tools");
        Redis { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `redis-cli -p port args…` and returns its output, trimmed.
async fn redis_cli(port: u16, args: &[&str]) -> String {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("redis-cli is needed for this test: apt-get install -y redis-tools");
    assert!(output.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_redis_server_answers_through_tcp_mode() {
    let redis = Redis::start();
    eventually(async || TcpStream::connect(redis.addr).await.is_ok()).await;
    let backend = Backend { id: "host-a/redis-0".into(), addr: redis.addr, weight: 1, revision: "r1".into() };
    let fx = Fixture::start(Protocol::Tcp, Config::default(), vec![backend]);
    let port = fx.addr().port();
    assert_eq!(redis_cli(port, &["ping"]).await, "PONG");
    assert_eq!(redis_cli(port, &["set", "tug-router", "through the router"]).await, "OK");
    assert_eq!(redis_cli(port, &["get", "tug-router"]).await, "through the router");
    assert_eq!(fx.stats("host-a/redis-0", "r1").requests, 3);
    eventually(async || fx.router.in_flight("host-a/redis-0") == 0).await;
}

/// A backend that speaks first, as SMTP and MySQL servers do: a greeting, then an echo.
async fn greeter() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.write_all(b"220 ready\r\n").await?;
                let mut buf = [0u8; 256];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    stream.write_all(&buf[..n]).await?;
                }
            });
        }
    });
    (addr, task)
}

/// How long a new connection through `addr` waits for the greeting; and that the session works.
async fn greeted(addr: SocketAddr) -> Duration {
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting)).await.unwrap().unwrap();
    let waited = started.elapsed();
    assert_eq!(&greeting, b"220 ready\r\n");
    stream.write_all(b"HELO\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"HELO\r\n");
    waited
}

/// Auto mode waits for a silent client before asking the instance; once a router has seen a
/// few connections in a row whose instance spoke first, it asks at once. A client that speaks
/// first (HTTP here, against the same port) still decides, and brings the wait back.
#[tokio::test]
async fn auto_mode_learns_that_a_port_s_servers_speak_first() {
    let (addr, _task) = greeter().await;
    let backend = Backend { id: "mail-1".into(), addr, weight: 1, revision: "r1".into() };
    // One router thread: this runtime's, so every connection meets the same router.
    let fx = Fixture::start(Protocol::Auto, Config::default(), vec![backend]);
    let wait = tug_router::SERVER_FIRST_WAIT;
    for _ in 0..3 {
        assert!(greeted(fx.addr()).await >= wait, "the first connections wait for the client");
    }
    for _ in 0..3 {
        let waited = greeted(fx.addr()).await;
        assert!(waited < wait, "learned: greeted after {waited:?}");
    }
    // A client speaking first (a request line) resets what was learned.
    let mut http = TcpStream::connect(fx.addr()).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), http.read_to_end(&mut answer)).await;
    // Served as HTTP on the learned port: the greeter's bytes are no HTTP answer, so a 502.
    assert!(answer.starts_with(b"HTTP/1.1 502"), "{}", String::from_utf8_lossy(&answer));
    assert!(greeted(fx.addr()).await >= wait, "back to waiting after a client spoke first");
}
