//! HTTP/1.1 and h2c, gRPC, upgrades, bodies, headers.

use std::collections::BTreeSet;

use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tug_router::{Config, Protocol};

use crate::support::{Fixture, H1, H2, backends, eventually, members, raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_goes_to_backends_over_http11_and_grpc_over_http2_with_trailers() {
    let web = backends(2).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let client = H2::connect(fx.addr()).await;
    // A plain HTTP/2 request reaches its backend over HTTP/1.1, which every server speaks,
    // with the authority as its Host.
    let plain = client.clone().get("/headers", &[]).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.headers["x-version"], "HTTP/1.1");
    assert!(plain.body.contains("\nhost: "), "{}", plain.body);
    // gRPC: concurrent streams on the one client connection, over HTTP/2 to the backends.
    let grpc = [("te", "trailers"), ("content-type", "application/grpc+proto")];
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.get("/trailers", &grpc).await })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["x-version"], "HTTP/2.0", "the backend is spoken to over HTTP/2");
        assert_eq!(answer.trailers.as_ref().unwrap()["grpc-status"], "0", "trailers pass through");
        seen.insert(answer.body);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // gRPC's `te: trailers` reaches the backend.
    let answer = client.clone().get("/headers", &grpc).await;
    assert!(answer.body.contains("\nte: trailers\n"), "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_grpc_streams_opens_one_backend_connection() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let client = H2::connect(fx.addr()).await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.get("/", &[("content-type", "application/grpc")]).await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(web[0].connections.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let response =
        raw(fx.addr(), b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert_eq!(web[0].requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_gets_its_message_and_status_trailer() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let mut client = H2::connect(fx.addr()).await;
    // One length-prefixed message: not compressed, 5 bytes.
    let mut message = vec![0u8, 0, 0, 0, 5];
    message.extend_from_slice(b"hello");
    let req = client
        .request("/grpc")
        .method("POST")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(message.clone())))
        .unwrap();
    let answer = client.send(req).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "application/grpc");
    assert_eq!(answer.body.as_bytes(), &message[..]);
    let trailers = answer.trailers.expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_tunnelled_both_ways() {
    let web = backends(1).await;
    // One connection allowed: the tunnel keeps its place while it is open.
    let config = Config { connections: tug_router::ConnectionLimit::new(1), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut stream = TcpStream::connect(fx.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: service.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    // The response head, byte by byte so nothing after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n") && head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert_eq!(fx.router.in_flight(&web[0].id), 1, "the tunnel counts as in flight");
    for i in 0..3 {
        let message = format!("message {i}");
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0; message.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    // A second connection while the tunnel is open is over the limit: closed at once.
    let mut over = TcpStream::connect(fx.addr()).await.unwrap();
    let _ = over.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), over.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{:?}", String::from_utf8_lossy(&answer));
    drop(stream);
    eventually(async || fx.router.in_flight(&web[0].id) == 0).await;
    assert_eq!(fx.stats(&web[0].id, "r1").status[0], 1, "one 1xx answer");
    // Closed, the tunnel gives its place back.
    eventually(async || H1::connect(fx.addr()).await.get("/", &[]).await.status == StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_over_http1_and_h2() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let payload: Vec<u8> = (0..8 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
    let payload = Bytes::from(payload);
    let answer = H1::connect(fx.addr()).await.post("/echo", payload.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.len() == payload.len() && answer.body.as_bytes() == payload, "http/1 echo differs");
    let answer = H2::connect(fx.addr()).await.post("/echo", payload.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.len() == payload.len() && answer.body.as_bytes() == payload, "h2 echo differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_to_backends_are_pooled() {
    let web = backends(2).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..200 {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    }
    for backend in &web {
        let opened = backend.connections.load(std::sync::atomic::Ordering::Relaxed);
        assert!((1..=2).contains(&opened), "{} connections to {} for 100 requests", opened, backend.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_backend_answers_503_and_recovers() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![]);
    let mut client = H1::connect(fx.addr()).await;
    let answer = client.get("/", &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body, "no ready instance\n");
    assert_eq!(fx.router.stats().unrouted, 1);
    fx.set(members(&web));
    eventually(async || client.get("/", &[]).await.status == StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_unreachable_backends_answer_502() {
    let web = backends(1).await;
    let dead = tug_router::Backend {
        id: "x".into(),
        addr: crate::support::dead_addr().await,
        weight: 1,
        revision: "r1".into(),
    };
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![dead]);
    let mut client = H1::connect(fx.addr()).await;
    let answer = client.get("/", &[]).await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::BAD_GATEWAY, "the instance could not be reached\n"));
    let stats = fx.stats("x", "r1");
    assert_eq!((stats.requests, stats.failures, stats.status[4]), (1, 1, 1));
    fx.set(members(&web));
    eventually(async || client.get("/", &[]).await.status == StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let response = raw(
        fx.addr(),
        b"GET /headers HTTP/1.1\r\nHost: service.test\r\nConnection: close, x-private\r\nKeep-Alive: timeout=5\r\n\
         X-Private: secret\r\nProxy-Authorization: Basic eA==\r\nTE: gzip\r\nUpgrade: websocket\r\n\
         X-Forwarded-For: 192.0.2.7\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let seen: BTreeSet<&str> = body.lines().skip(1).collect();
    for gone in ["connection", "keep-alive", "x-private", "proxy-authorization", "te", "upgrade"] {
        assert!(!seen.iter().any(|l| l.starts_with(&format!("{gone}:"))), "{gone} reached the backend: {body}");
    }
    assert!(seen.contains("x-kept: yes"), "{body}");
    assert!(seen.contains("host: service.test"), "{body}");
    assert!(seen.contains("x-forwarded-for: 192.0.2.7, 127.0.0.1"), "{body}");
    assert!(seen.contains("x-forwarded-proto: http"), "{body}");
}
