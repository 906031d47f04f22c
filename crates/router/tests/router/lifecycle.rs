//! Draining: members leaving, idle pools, connection age, shutdown.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tug_router::{Config, Protocol};

use crate::support::{EchoBackend, Fixture, H1, H2, backends, closes, eventually, members};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_backend_drains_what_it_has_in_flight() {
    let web = backends(2).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![web[0].backend()]);
    let addr = fx.addr();
    // Warm web-0's pool with a few idle connections.
    let warm: Vec<_> =
        (0..3).map(|_| tokio::spawn(async move { H1::connect(addr).await.get("/", &[]).await })).collect();
    for w in warm {
        assert_eq!(w.await.unwrap().status, StatusCode::OK);
    }
    let pooled = web[0].open.load(Relaxed);
    assert!(pooled >= 1);
    let slow = tokio::spawn(async move { H1::connect(addr).await.get("/slow", &[]).await });
    let slow_h2 = tokio::spawn(async move { H2::connect(addr).await.get("/slow", &[]).await });
    eventually(async || fx.router.in_flight(&web[0].id) == 2).await;
    // web-0 leaves while its slow requests are in flight; web-1 takes over.
    fx.set(vec![web[1].backend()]);
    let mut client = H1::connect(addr).await;
    eventually(async || client.get("/", &[]).await.body == web[1].id).await;
    for _ in 0..5 {
        assert_eq!(client.get("/", &[]).await.body, web[1].id);
    }
    // Its idle pooled connections closed at once; the two in use stay.
    eventually(async || web[0].open.load(Relaxed) == 2).await;
    assert_eq!(fx.router.in_flight(&web[0].id), 2);
    for answer in [slow.await.unwrap(), slow_h2.await.unwrap()] {
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, web[0].id.as_str()));
    }
    eventually(async || fx.router.in_flight(&web[0].id) == 0).await;
    eventually(async || web[0].open.load(Relaxed) == 0).await;
    let stats = fx.stats(&web[0].id, "r1");
    assert!(!stats.member && stats.requests >= 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_close_after_the_idle_timeout() {
    let web = backends(1).await;
    let config = Config { pool_idle_timeout: Duration::from_millis(200), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    assert_eq!(H1::connect(fx.addr()).await.get("/", &[]).await.status, StatusCode::OK);
    let grpc = [("content-type", "application/grpc")];
    assert_eq!(H2::connect(fx.addr()).await.get("/", &grpc).await.status, StatusCode::OK);
    assert_eq!(web[0].open.load(Relaxed), 2, "one pooled HTTP/1 connection, one HTTP/2");
    let started = Instant::now();
    eventually(async || web[0].open.load(Relaxed) == 0).await;
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    // And new ones open as needed.
    assert_eq!(H1::connect(fx.addr()).await.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_connection_past_its_age_closes_after_its_response() {
    let web = backends(1).await;
    let config = Config { max_connection_age: Some(Duration::from_millis(300)), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    // In flight when the age comes: the response says so, then the connection ends.
    let mut busy = H1::connect(fx.addr()).await;
    let answer = busy.get("/slow?ms=600", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    eventually(async || busy.0.is_closed()).await;
    // Idle when the age comes: closed at once.
    let mut idle = H1::connect(fx.addr()).await;
    assert_eq!(idle.get("/", &[]).await.status, StatusCode::OK);
    let started = Instant::now();
    eventually(async || idle.0.is_closed()).await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_past_its_age_gets_goaway() {
    let web = backends(1).await;
    let config = Config { max_connection_age: Some(Duration::from_millis(300)), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let client = H2::connect(fx.addr()).await;
    // A stream in flight at the age finishes.
    let slow = tokio::spawn({
        let mut c = client.clone();
        async move { c.get("/slow?ms=500", &[]).await }
    });
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    eventually(async || client.0.is_closed()).await;
    assert_eq!(H2::connect(fx.addr()).await.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_streams_in_flight_finish_and_takes_nothing_new() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let addr = fx.addr();
    let h2 = H2::connect(addr).await;
    let slow = tokio::spawn({
        let mut c = h2.clone();
        async move { c.get("/slow?ms=500", &[]).await }
    });
    let slow_h1 = tokio::spawn(async move { H1::connect(addr).await.get("/slow?ms=500", &[]).await });
    let mut idle = H1::connect(addr).await;
    assert_eq!(idle.get("/", &[]).await.status, StatusCode::OK);
    eventually(async || fx.router.in_flight(&web[0].id) == 2).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(fx.router.shutdown(Duration::from_secs(5)));
    // Idle connections close at once; no new connection is taken.
    eventually(async || idle.0.is_closed()).await;
    eventually(async || TcpStream::connect(addr).await.is_err()).await;
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "the stream in flight finished");
    let answer = slow_h1.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    shutdown.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // GOAWAY ended the client's connection.
    eventually(async || h2.0.is_closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drops_what_outlives_the_grace_period() {
    let echo = EchoBackend::start("echo-a").await;
    let fx = Fixture::start(Protocol::Tcp, Config::default(), vec![echo.backend("echo-a")]);
    let addr = fx.addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 7];
    stream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"echo-a\n");
    let started = Instant::now();
    fx.router.shutdown(Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert!((Duration::from_millis(200)..Duration::from_secs(2)).contains(&took), "{took:?}");
    let _ = stream.write_all(b"still there?").await;
    assert!(closes(&mut stream, Duration::from_secs(2)).await);
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_router_stops_accepting_and_lets_requests_finish() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let addr = fx.addr();
    let slow = tokio::spawn(async move { H1::connect(addr).await.get("/slow?ms=400", &[]).await });
    eventually(async || fx.router.in_flight(&web[0].id) == 1).await;
    drop(fx);
    eventually(async || TcpStream::connect(addr).await.is_err()).await;
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
}

/// A router follows membership in a task of its own; `catch_up` applies it at once, so whoever
/// reports an instance ready (the daemon's status, which `up -d` waits on) can first make sure
/// the router already routes to it.
#[tokio::test]
async fn catch_up_applies_new_membership_before_the_router_task_runs() {
    let web = backends(2).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![web[0].backend()]);
    let member = |id: &str| fx.router.stats().endpoints.iter().any(|e| e.id == id && e.member);
    fx.set(vec![web[1].backend()]);
    // No await since: on this one-thread runtime the router's own task has not run.
    assert!(member(&web[0].id) && !member(&web[1].id));
    fx.router.catch_up();
    assert!(member(&web[1].id) && !member(&web[0].id));
    fx.router.catch_up();
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..3 {
        assert_eq!(client.get("/", &[]).await.body, web[1].id);
    }
    // The router's task, running now, finds nothing left to do and keeps following.
    fx.set(vec![web[0].backend()]);
    eventually(async || client.get("/", &[]).await.body == web[0].id).await;
}
