//! Retries within the budget, and the request timeout.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use hyper::body::Bytes;
use tug_router::{Backend, Config, OutlierPolicy, Protocol, RetryPolicy};

use crate::support::{Fixture, H1, H2, ResetBackend, backends, dead_addr, members};

/// Ejection off, so every request meets the failing backend in its turn.
fn no_ejection() -> Config {
    Config { outlier: OutlierPolicy { consecutive_failures: 0, ..OutlierPolicy::default() }, ..Config::default() }
}

/// A refused connection never reached the instance: retried whatever the method. A reset
/// after the request was sent may have been processed: retried for idempotent methods only,
/// as Envoy's defaults do (a POST charged twice is worse than a 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_retried_for_any_method_resets_for_idempotent_ones() {
    let web = backends(1).await;
    let reset = ResetBackend::start().await;
    let dead = Backend { id: "host-a/web-dead".into(), addr: dead_addr().await, weight: 1, revision: "r1".into() };
    // Round robin over the three, no ejection: each kind of failure is met in its turn; a
    // budget that never runs out, as this is about which requests are sent again.
    let list = vec![web[0].backend(), reset.backend("host-a/web-reset"), dead];
    let retry = RetryPolicy { budget_ratio: 1.0, min_per_second: 1000, ..RetryPolicy::default() };
    let fx = Fixture::start(Protocol::Http, Config { retry, ..no_ejection() }, list);
    // GETs: every one answered, those the reset backend cut retried elsewhere.
    for i in 0..6 {
        let answer = H1::connect(fx.addr()).await.get("/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {i}: {answer:?}");
    }
    let h2 = H2::connect(fx.addr()).await;
    for _ in 0..3 {
        assert_eq!(h2.clone().get("/", &[]).await.status, StatusCode::OK);
    }
    let gets = fx.stats("host-a/web-reset", "r1");
    assert!(gets.failures >= 1 && gets.retries == gets.failures, "GETs it cut were retried: {gets:?}");
    // POSTs: cut by the reset backend, a 502 and never sent elsewhere; refused by the dead one
    // (never sent), retried.
    let mut cut = 0;
    for i in 0..6 {
        let body = Bytes::from(format!("order {i}"));
        let answer = H1::connect(fx.addr()).await.post("/echo", body.clone()).await;
        match answer.status {
            StatusCode::OK => assert_eq!(answer.body.as_bytes(), &body[..], "POST {i}"),
            StatusCode::BAD_GATEWAY => cut += 1,
            other => panic!("POST {i}: {other}"),
        }
    }
    let posts = fx.stats("host-a/web-reset", "r1");
    assert!(cut >= 1, "no POST met the reset backend");
    assert_eq!(posts.failures - gets.failures, cut, "each cut POST failed once: {posts:?}");
    assert_eq!(posts.retries, gets.retries, "no POST was sent again: {posts:?}");
    let dead_stats = fx.stats("host-a/web-dead", "r1");
    assert!(dead_stats.failures >= 2 && dead_stats.retries == dead_stats.failures, "refused, retried: {dead_stats:?}");
    assert_eq!(dead_stats.requests, 0, "{dead_stats:?}");
    assert!(reset.connections.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(fx.router.stats().retries_denied, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_not_retried_once_sent() {
    let web = backends(1).await;
    let reset = ResetBackend::start().await;
    let fx = Fixture::start(Protocol::Http, no_ejection(), vec![reset.backend("host-a/web-reset"), web[0].backend()]);
    // Over max_replay_body: streamed, never buffered, so not replayable.
    let large = Bytes::from(vec![b'x'; 100 << 10]);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(H1::connect(fx.addr()).await.post("/echo", large.clone()).await.status);
    }
    assert_eq!(statuses, [StatusCode::BAD_GATEWAY, StatusCode::OK, StatusCode::BAD_GATEWAY, StatusCode::OK]);
    let stats = fx.stats("host-a/web-reset", "r1");
    assert_eq!((stats.retries, stats.failures, stats.status[4]), (0, 2, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_for_get_but_not_for_post() {
    let web = backends(2).await;
    web[0].answer_with(503);
    let fx = Fixture::start(Protocol::Http, no_ejection(), members(&web));
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..10 {
        let answer = client.get("/", &[]).await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, web[1].id.as_str()));
    }
    let mut unavailable = 0;
    for _ in 0..10 {
        let answer = client.post("/echo", Bytes::from_static(b"x")).await;
        unavailable += usize::from(answer.status == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(unavailable, 5, "POST is not idempotent: its 503s pass through");
    let stats = fx.stats(&web[0].id, "r1");
    assert_eq!((stats.retries, stats.status[4], stats.failures), (5, 5, 0), "{stats:?}");
    assert_eq!(web[0].requests(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_stops_retries() {
    let web = backends(2).await;
    web[0].answer_with(503);
    let config = Config {
        retry: RetryPolicy { budget_ratio: 0.0, min_per_second: 1, ..RetryPolicy::default() },
        ..no_ejection()
    };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut client = H1::connect(fx.addr()).await;
    let mut unavailable = 0;
    for _ in 0..20 {
        unavailable += usize::from(client.get("/", &[]).await.status == StatusCode::SERVICE_UNAVAILABLE);
    }
    // One token a second: one or two of web-0's ten turns were retried.
    let stats = fx.stats(&web[0].id, "r1");
    assert!((1..=2).contains(&stats.retries), "{stats:?}");
    assert_eq!(unavailable as u64, 10 - stats.retries);
    assert_eq!(fx.router.stats().retries_denied, 10 - stats.retries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_request_timeout_gets_504() {
    let web = backends(2).await;
    let config = Config { request_timeout: Duration::from_millis(200), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut client = H1::connect(fx.addr()).await;
    let started = Instant::now();
    let answer = client.get("/slow?ms=3000", &[]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // Not retried: the backend may be working on it.
    assert_eq!(web.iter().map(|w| w.requests()).sum::<usize>(), 1);
    let stats = fx.stats(&web[0].id, "r1");
    assert_eq!((stats.failures, stats.status[4], stats.retries), (1, 1, 0), "{stats:?}");
    assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
}

/// A request body fed through a channel, chunk by chunk, of unknown length.
struct Trickle(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Trickle {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.get_mut().0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_starts_once_an_upload_is_complete() {
    let web = backends(1).await;
    let config = Config { request_timeout: Duration::from_millis(300), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(fx.addr()).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let (chunks, body) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = chunks.send(Bytes::from(format!("chunk {i}\n"))).await;
        }
    });
    // The backend answers once it has read the whole body, 800 ms in: well
    // past the timeout from the first byte, well within it from the last.
    let req = hyper::Request::post("/").header("host", "service.test").body(Trickle(body)).unwrap();
    let answer = crate::support::collect(send.send_request(req).await.unwrap()).await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, web[0].id.as_str()));
}
