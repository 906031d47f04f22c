use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hyper::StatusCode;
use hyper::http::HeaderName;
use tug_router::{Config, Policy, Protocol};

use crate::support::{Fixture, H1, H2, HttpBackend, dead_addr, eventually, raw};

async fn backends(n: usize) -> Vec<HttpBackend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(HttpBackend::start(&format!("host-a/web-{i}")).await);
    }
    out
}

fn members(backends: &[HttpBackend]) -> Vec<tug_router::Backend> {
    backends.iter().map(HttpBackend::backend).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even_per_request_over_one_http1_connection() {
    let web = backends(3).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let mut client = H1::connect(fx.addr()).await;
    let mut counts = BTreeMap::new();
    for _ in 0..300 {
        let answer = client.get("/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, answer.backend());
        *counts.entry(answer.body).or_insert(0) += 1;
    }
    assert_eq!(counts.into_values().collect::<Vec<_>>(), [100, 100, 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_goes_to_backends_over_http2_with_trailers() {
    let web = backends(2).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let client = H2::connect(fx.addr()).await;
    // Concurrent streams on the one client connection.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.get("/trailers", &[("te", "trailers")]).await })
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
    let answer = client.clone().get("/headers", &[("te", "trailers")]).await;
    assert!(answer.body.contains("\nte: trailers\n"), "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_does_not_fail_a_request_in_flight() {
    let web = backends(2).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![web[0].backend()]);
    let addr = fx.addr();
    let slow = tokio::spawn(async move { H1::connect(addr).await.get("/slow", &[]).await });
    let slow_h2 = tokio::spawn(async move { H2::connect(addr).await.get("/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // web-0 leaves while its slow requests are in flight; web-1 takes over.
    fx.set(vec![web[1].backend()]);
    let mut client = H1::connect(addr).await;
    eventually(async || client.get("/", &[]).await.body == web[1].id).await;
    for _ in 0..5 {
        assert_eq!(client.get("/", &[]).await.body, web[1].id);
    }
    for answer in [slow.await.unwrap(), slow_h2.await.unwrap()] {
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, web[0].id.as_str()));
    }
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
async fn large_bodies_stream_both_ways_over_http1_and_h2() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let payload: Vec<u8> = (0..8 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
    let payload = hyper::body::Bytes::from(payload);
    let answer = H1::connect(fx.addr()).await.post("/echo", payload.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.len() == payload.len() && answer.body.as_bytes() == payload, "http/1 echo differs");
    let answer = H2::connect(fx.addr()).await.post("/echo", payload.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.len() == payload.len() && answer.body.as_bytes() == payload, "h2 echo differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_backend_answers_503_and_recovers() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![]);
    let mut client = H1::connect(fx.addr()).await;
    let answer = client.get("/", &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body, "no ready instance\n");
    fx.set(members(&web));
    eventually(async || client.get("/", &[]).await.status == StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_connections_is_skipped() {
    let web = backends(2).await;
    let mut list = members(&web);
    list.insert(1, tug_router::Backend { id: "host-a/web-dead".into(), addr: dead_addr().await, weight: 1 });
    let fx = Fixture::start(Protocol::Http, Config::default(), list);
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..30 {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    }
    // Only unreachable backends: 502, not 503.
    fx.set(vec![tug_router::Backend { id: "x".into(), addr: dead_addr().await, weight: 1 }]);
    eventually(async || client.get("/", &[]).await.status == StatusCode::BAD_GATEWAY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_hash_is_sticky_and_spreads_and_falls_back_to_round_robin() {
    let web = backends(3).await;
    let config =
        Config { policy: Policy::TenantHash { header: HeaderName::from_static("x-tenant") }, ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut client = H1::connect(fx.addr()).await;
    let mut owner = BTreeMap::new();
    for round in 0..3 {
        for t in 0..30 {
            let tenant = format!("tenant-{t}");
            let got = client.get("/", &[("x-tenant", &tenant)]).await.body;
            if round == 0 {
                owner.insert(tenant, got);
            } else {
                assert_eq!(owner[&tenant], got, "{tenant} moved");
            }
        }
    }
    let used: BTreeSet<_> = owner.values().collect();
    assert_eq!(used.len(), 3, "30 tenants over 3 backends use them all");
    // Without the header: round robin.
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        seen.insert(client.get("/", &[]).await.body);
    }
    assert_eq!(seen.len(), 3);
    // web-2 leaves: only its tenants move.
    fx.set(members(&web[..2]));
    eventually(async || client.get("/", &[]).await.body != web[2].id && client.get("/", &[]).await.body != web[2].id)
        .await;
    for (tenant, before) in &owner {
        let now = client.get("/", &[("x-tenant", tenant)]).await.body;
        if *before != web[2].id {
            assert_eq!(&now, before, "{tenant} moved though its backend stayed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_new_requests_to_the_idle_backend() {
    let web = backends(2).await;
    let config = Config { policy: Policy::LeastRequest, ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, vec![web[0].backend()]);
    let addr = fx.addr();
    let slow: Vec<_> =
        (0..3).map(|_| tokio::spawn(async move { H1::connect(addr).await.get("/slow", &[]).await })).collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // web-0 stays (same id and address: its in-flight count carries over), web-1 joins idle.
    fx.set(members(&web));
    let mut client = H1::connect(addr).await;
    eventually(async || client.get("/", &[]).await.body == web[1].id).await;
    for _ in 0..10 {
        assert_eq!(client.get("/", &[]).await.body, web[1].id);
    }
    for s in slow {
        assert_eq!(s.await.unwrap().body, web[0].id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let response = raw(
        fx.addr(),
        "GET /headers HTTP/1.1\r\nHost: service.test\r\nConnection: close, x-private\r\nKeep-Alive: timeout=5\r\n\
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
