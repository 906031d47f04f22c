//! Which backend a request goes to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hyper::StatusCode;
use hyper::http::HeaderName;
use tug_router::{Config, Policy, Protocol};

use crate::support::{Fixture, H1, backends, eventually, members};

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
async fn round_robin_honours_weights_interleaved() {
    let web = backends(2).await;
    let mut list = members(&web);
    list[1].weight = 3;
    let fx = Fixture::start(Protocol::Http, Config::default(), list);
    let mut client = H1::connect(fx.addr()).await;
    let mut seen = Vec::new();
    for _ in 0..400 {
        seen.push(client.get("/", &[]).await.body);
    }
    let heavy = seen.iter().filter(|b| **b == web[1].id).count();
    assert_eq!(heavy, 300);
    // Smooth: the light backend never gets two turns in a row.
    assert!(seen.windows(2).all(|w| !(w[0] == web[0].id && w[1] == web[0].id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_hash_is_sticky_spreads_and_moves_only_a_leaving_backends_tenants() {
    let web = backends(3).await;
    let config =
        Config { policy: Policy::TenantHash { header: HeaderName::from_static("x-tenant") }, ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut client = H1::connect(fx.addr()).await;
    let mut owner = BTreeMap::new();
    for round in 0..2 {
        for t in 0..200 {
            let tenant = format!("tenant-{t}");
            let got = client.get("/", &[("x-tenant", &tenant)]).await.body;
            if round == 0 {
                owner.insert(tenant, got);
            } else {
                assert_eq!(owner[&tenant], got, "{tenant} moved");
            }
        }
    }
    let mut share = BTreeMap::new();
    for backend in owner.values() {
        *share.entry(backend.clone()).or_insert(0) += 1;
    }
    // A fair share is 67 each; the ring's 160 points per backend keep it close.
    assert_eq!(share.len(), 3);
    assert!(share.values().all(|&n| (40..=95).contains(&n)), "{share:?}");
    // Without the header: round robin.
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        seen.insert(client.get("/", &[]).await.body);
    }
    assert_eq!(seen.len(), 3);
    // web-2 leaves: only its tenants move, and they spread over both others.
    fx.set(members(&web[..2]));
    eventually(async || {
        let mut again = Vec::new();
        for _ in 0..3 {
            again.push(client.get("/", &[]).await.body);
        }
        !again.contains(&web[2].id)
    })
    .await;
    let mut moved_to = BTreeSet::new();
    for (tenant, before) in &owner {
        let now = client.get("/", &[("x-tenant", tenant)]).await.body;
        if *before == web[2].id {
            moved_to.insert(now);
        } else {
            assert_eq!(&now, before, "{tenant} moved though its backend stayed");
        }
    }
    assert_eq!(moved_to.len(), 2, "{moved_to:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_new_requests_to_the_idle_backend() {
    let web = backends(2).await;
    let config = Config { policy: Policy::LeastRequest, ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, vec![web[0].backend()]);
    let addr = fx.addr();
    let slow: Vec<_> =
        (0..3).map(|_| tokio::spawn(async move { H1::connect(addr).await.get("/slow", &[]).await })).collect();
    eventually(async || fx.router.in_flight(&web[0].id) == 3).await;
    // web-0 stays (same id, address and revision: its in-flight count carries over), web-1 joins idle.
    fx.set(members(&web));
    let mut client = H1::connect(addr).await;
    eventually(async || client.get("/", &[]).await.body == web[1].id).await;
    for _ in 0..10 {
        assert_eq!(client.get("/", &[]).await.body, web[1].id);
    }
    for s in slow {
        assert_eq!(s.await.unwrap().body, web[0].id);
    }
    // Once both are idle, both are used.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(client.get("/", &[]).await.body);
    }
    assert_eq!(seen.len(), 2);
}
