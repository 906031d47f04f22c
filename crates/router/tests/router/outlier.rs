//! Passive outlier ejection.

use std::time::Duration;

use hyper::StatusCode;
use hyper::http::HeaderName;
use tug_router::{Config, OutlierPolicy, Policy, Protocol};

use crate::support::{Fixture, H1, backends, eventually, members};

fn quick_ejection() -> Config {
    Config {
        outlier: OutlierPolicy { base_ejection: Duration::from_millis(300), ..OutlierPolicy::default() },
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_then_returns() {
    let web = backends(3).await;
    web[1].answer_with(500);
    let fx = Fixture::start(Protocol::Http, quick_ejection(), members(&web));
    let mut client = H1::connect(fx.addr()).await;
    // Round robin: web-1 gets every third request; its fifth 500 in a row ejects it.
    let mut errors = 0;
    for _ in 0..15 {
        if client.get("/", &[]).await.status == StatusCode::INTERNAL_SERVER_ERROR {
            errors += 1;
        }
    }
    assert_eq!(errors, 5, "500s are not retried: the client sees each");
    let stats = fx.stats(&web[1].id, "r1");
    assert!(stats.ejected && stats.ejections == 1, "{stats:?}");
    // No traffic while ejected; the others share it evenly.
    let before = web[1].requests();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let answer = client.get("/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        seen.push(answer.body);
    }
    assert_eq!(web[1].requests(), before);
    assert_eq!(seen.iter().filter(|b| **b == web[0].id).count(), 10, "{seen:?}");
    // It comes back once its time is up (and, healthy now, stays).
    web[1].answer_with(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually(async || client.get("/", &[]).await.body == web[1].id).await;
    assert!(!fx.stats(&web[1].id, "r1").ejected);
    let mut all = 0;
    for _ in 0..30 {
        all += usize::from(client.get("/", &[]).await.status == StatusCode::OK);
    }
    assert_eq!(all, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_half_of_the_endpoints_are_ejected() {
    let web = backends(3).await;
    web[0].answer_with(502);
    web[1].answer_with(500);
    let fx = Fixture::start(Protocol::Http, quick_ejection(), members(&web));
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..60 {
        client.get("/", &[]).await;
    }
    let stats = fx.router.stats();
    let ejected: Vec<_> = stats.endpoints.iter().filter(|e| e.ejected).map(|e| e.id.as_str()).collect();
    assert_eq!(ejected.len(), 1, "3 endpoints at 50%: one at most ({ejected:?})");
    // The other failing one keeps its share meanwhile.
    let still_in = web.iter().take(2).find(|w| !ejected.contains(&w.id.as_str())).unwrap();
    let before = still_in.requests();
    for _ in 0..6 {
        client.get("/", &[]).await;
    }
    assert!(still_in.requests() > before);

    // A lone endpoint is never ejected, however it fails.
    let lone = backends(1).await;
    lone[0].answer_with(500);
    let fx = Fixture::start(Protocol::Http, quick_ejection(), members(&lone));
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..20 {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(fx.stats(&lone[0].id, "r1").ejections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_owners_tenants_go_to_the_next_owner_and_come_back() {
    let web = backends(3).await;
    let config =
        Config { policy: Policy::TenantHash { header: HeaderName::from_static("x-tenant") }, ..quick_ejection() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut client = H1::connect(fx.addr()).await;
    // Tenants owned by web-1.
    let mut tenants = Vec::new();
    for t in 0..60 {
        let tenant = format!("tenant-{t}");
        if client.get("/", &[("x-tenant", &tenant)]).await.body == web[1].id {
            tenants.push(tenant);
        }
    }
    assert!(tenants.len() >= 5, "{tenants:?}");
    web[1].answer_with(503);
    let tenant = tenants[0].as_str();
    for _ in 0..5 {
        client.get("/", &[("x-tenant", tenant)]).await;
    }
    assert!(fx.stats(&web[1].id, "r1").ejected);
    // Each of its tenants now sticks to one other backend, and they spread.
    let mut stand_ins = std::collections::BTreeSet::new();
    for tenant in &tenants {
        let first = client.get("/", &[("x-tenant", tenant)]).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_ne!(first.body, web[1].id);
        assert_eq!(client.get("/", &[("x-tenant", tenant)]).await.body, first.body);
        stand_ins.insert(first.body);
    }
    assert_eq!(stand_ins.len(), 2, "{stand_ins:?}");
    web[1].answer_with(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually(async || client.get("/", &[("x-tenant", tenant)]).await.body == web[1].id).await;
}
