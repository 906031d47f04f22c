//! Clients that misbehave: slow, oversized, garbled, or abusing HTTP/2. Each
//! test then checks that the router still serves a normal request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tug_router::{Config, Protocol};

use crate::support::{Fixture, H1, H2, backends, closes, eventually, members, raw};

fn strict() -> Config {
    Config { header_read_timeout: Duration::from_millis(300), ..Config::default() }
}

async fn still_serves(addr: SocketAddr) {
    assert_eq!(H1::connect(addr).await.get("/", &[]).await.status, StatusCode::OK);
    assert_eq!(H2::connect(addr).await.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_dropped() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, strict(), members(&web));
    let started = Instant::now();
    let mut silent = TcpStream::connect(fx.addr()).await.unwrap();
    let mut slow = TcpStream::connect(fx.addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: service.test\r\nX-Slow: ").await.unwrap();
    let mut slow_h2 = TcpStream::connect(fx.addr()).await.unwrap();
    slow_h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for stream in [&mut silent, &mut slow, &mut slow_h2] {
        assert!(closes(stream, Duration::from_secs(3)).await);
    }
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    still_serves(fx.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let big = "a".repeat(100 << 10);
    let response = raw(fx.addr(), format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{}", &response[..response.len().min(100)]);
    // Within the limit is fine.
    let fits = "a".repeat(60 << 10);
    let response =
        raw(fx.addr(), format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {fits}\r\n\r\n").as_bytes())
            .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{}", &response[..response.len().min(100)]);
    still_serves(fx.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_400_or_a_close() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, strict(), members(&web));
    let junk: [&[u8]; 3] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\r\n\r\n",
    ];
    for bytes in junk {
        let response = raw(fx.addr(), bytes).await;
        assert!(response.is_empty() || response.starts_with("HTTP/1.1 400 "), "{response:?}");
    }
    // A valid preface followed by frames that are not: closed (after GOAWAY).
    let response =
        raw(fx.addr(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").await;
    assert!(!response.contains("HTTP/1.1"), "{response:?}");
    still_serves(fx.addr()).await;
}

/// An HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET for `path` as an HPACK block: indexed `:method GET` and `:scheme
/// http`, literal `:authority` and `:path` without indexing.
fn get_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x01, 4];
    block.extend_from_slice(b"test");
    block.extend_from_slice(&[0x04, path.len() as u8]);
    block.extend_from_slice(path.as_bytes());
    block
}

/// Opens an h2c connection by hand: the preface and empty SETTINGS. What the
/// router sends back is read and discarded in the background (so it never
/// blocks on a full socket), and the task ends when the router closes.
async fn raw_h2(addr: SocketAddr) -> (tokio::net::tcp::OwnedWriteHalf, tokio::task::JoinHandle<usize>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    write.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    let drain = tokio::spawn(async move {
        let mut total = 0;
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            total += n;
        }
        total
    });
    (write, drain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_http2_limit_are_refused() {
    let web = backends(1).await;
    let config = Config { max_concurrent_streams: 64, ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let (mut write, drain) = raw_h2(fx.addr()).await;
    // 500 slow requests at once on one connection.
    let block = get_headers("/slow?ms=400");
    let mut burst = Vec::new();
    for i in 0..500u32 {
        burst.extend_from_slice(&frame(0x1, 0x5, 2 * i + 1, &block));
    }
    write.write_all(&burst).await.unwrap();
    let mut most = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        most = most.max(fx.router.in_flight(&web[0].id));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((1..=64).contains(&most), "{most} in flight on one connection");
    drop(write);
    let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
    still_serves(fx.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_resets_close_the_connection() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let (mut write, drain) = raw_h2(fx.addr()).await;
    // Open and cancel streams as fast as possible (CVE-2023-44487).
    let block = get_headers("/slow?ms=1000");
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        burst.extend_from_slice(&frame(0x1, 0x5, 2 * i + 1, &block));
        burst.extend_from_slice(&frame(0x3, 0, 2 * i + 1, &8u32.to_be_bytes()));
    }
    // The router may close before taking it all.
    let _ = write.write_all(&burst).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), drain).await;
    assert!(closed.is_ok(), "the connection was not closed");
    eventually(async || fx.router.in_flight(&web[0].id) == 0).await;
    assert!(web[0].requests() < 5000, "{} requests reached the backend", web[0].requests());
    still_serves(fx.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let web = backends(1).await;
    let config = Config { connections: tug_router::ConnectionLimit::new(4), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(H1::connect(fx.addr()).await);
    }
    for client in &mut held {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    }
    let mut over = TcpStream::connect(fx.addr()).await.unwrap();
    let _ = over.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), over.read_to_end(&mut answer)).await;
    assert!(read.is_ok() && answer.is_empty(), "closed without an answer beyond the cap: {answer:?}");
    held.pop();
    eventually(async || {
        let Ok(stream) = TcpStream::connect(fx.addr()).await else { return false };
        let io = hyper_util::rt::TokioIo::new(stream);
        let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(io).await else { return false };
        tokio::spawn(conn);
        let req =
            hyper::Request::get("/").header("host", "x").body(http_body_util::Full::<hyper::body::Bytes>::default());
        matches!(send.send_request(req.unwrap()).await, Ok(r) if r.status() == StatusCode::OK)
    })
    .await;
}
