//! A canary split: a share of requests (TCP: of new connections) to the
//! backends of one revision.

use std::collections::{BTreeMap, BTreeSet};

use hyper::StatusCode;
use hyper::http::HeaderName;
use tokio::io::AsyncBufReadExt;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tug_router::balance::{hash, split_bucket};
use tug_router::{Backend, Config, Members, OutlierPolicy, Policy, Protocol, RetryPolicy, Split};

use crate::support::{EchoBackend, Fixture, H1, HttpBackend, backends, dead_addr, eventually};

/// `stable` at r1 and `canary` (already at its revision, r2), with `permille` to r2.
fn split(stable: &[HttpBackend], canary: Vec<Backend>, permille: u16) -> Members {
    let mut backends: Vec<Backend> = stable.iter().map(|b| b.at_revision("r1")).collect();
    backends.extend(canary);
    Members { backends, split: Some(Split { revision: "r2".into(), permille }) }
}

fn tenant_hash() -> Config {
    Config { policy: Policy::TenantHash { header: HeaderName::from_static("x-tenant") }, ..Config::default() }
}

fn is_canary(tenant: &str, permille: u16) -> bool {
    split_bucket(hash(tenant.as_bytes())) < permille
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenth_of_requests_go_to_the_canary_exactly_and_spread() {
    let web = backends(4).await;
    let members = split(&web[..3], vec![web[3].at_revision("r2")], 100);
    let fx = Fixture::start(Protocol::Http, Config::default(), members);
    let mut client = H1::connect(fx.addr()).await;
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let answer = client.get("/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        seen.push(answer.body);
    }
    let canary: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == web[3].id).collect();
    assert!((99..=101).contains(&canary.len()), "{} of 1000 to the canary", canary.len());
    assert_eq!(web[3].requests(), canary.len());
    // Spread: every tenth request, never a run.
    assert!(canary.windows(2).all(|w| w[1] - w[0] == 10), "{canary:?}");
    // The stable instances share the rest evenly.
    for b in &web[..3] {
        assert_eq!(seen.iter().filter(|s| **s == b.id).count(), 300, "{}", b.id);
    }
    assert_eq!(fx.stats(&web[3].id, "r2").requests, canary.len() as u64);
    assert_eq!(fx.stats(&web[0].id, "r1").requests, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_join_the_canary_as_the_share_rises_and_stay_put_within_a_stage() {
    let web = backends(4).await;
    let fx = Fixture::start(Protocol::Http, tenant_hash(), split(&web[..3], vec![web[3].at_revision("r2")], 0));
    let mut client = H1::connect(fx.addr()).await;
    let tenants: Vec<String> = (0..200).map(|t| format!("tenant-{t}")).collect();
    let mut stages: Vec<BTreeSet<String>> = Vec::new();
    let mut stable_owner: BTreeMap<String, String> = BTreeMap::new();
    let mut previous = 0;
    for permille in [100, 300, 600] {
        fx.set(split(&web[..3], vec![web[3].at_revision("r2")], permille));
        // The stage has begun once a tenant that joins at this share is answered by the canary.
        let probe = tenants.iter().find(|t| !is_canary(t, previous) && is_canary(t, permille)).unwrap();
        eventually(async || client.get("/", &[("x-tenant", probe)]).await.body == web[3].id).await;
        let mut canary = BTreeSet::new();
        for tenant in &tenants {
            let owner = client.get("/", &[("x-tenant", tenant)]).await.body;
            for _ in 0..2 {
                assert_eq!(client.get("/", &[("x-tenant", tenant)]).await.body, owner, "{tenant} moved at {permille}");
            }
            if owner == web[3].id {
                canary.insert(tenant.clone());
            } else {
                // A tenant still on stable keeps its stable instance from stage to stage.
                assert_eq!(stable_owner.entry(tenant.clone()).or_insert_with(|| owner.clone()), &owner, "{tenant}");
            }
            assert_eq!(owner == web[3].id, is_canary(tenant, permille), "{tenant} at {permille}");
        }
        // About permille of 200 tenants.
        let expected = usize::from(permille) / 5;
        assert!(canary.len().abs_diff(expected) <= expected / 2 + 5, "{} canary tenants at {permille}", canary.len());
        if let Some(before) = stages.last() {
            assert!(before.is_subset(&canary), "a canary tenant went back at {permille}");
            assert!(canary.len() > before.len());
        }
        stages.push(canary);
        previous = permille;
    }
    // The stable tenants are spread over all three stable instances.
    assert_eq!(stable_owner.values().collect::<BTreeSet<_>>().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_is_down_leaves_requests_to_stable() {
    let web = backends(3).await;
    let down = Backend { id: "host-a/web-canary".into(), addr: dead_addr().await, weight: 1, revision: "r2".into() };
    let fx = Fixture::start(Protocol::Http, Config::default(), split(&web, vec![down.clone()], 100));
    let mut client = H1::connect(fx.addr()).await;
    for i in 0..300 {
        let answer = client.get("/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}: {answer:?}");
        assert_ne!(answer.body, down.id);
    }
    let stats = fx.stats(&down.id, "r2");
    assert!(stats.failures >= 5 && stats.retries == stats.failures, "{stats:?}");
    assert!(stats.ejected, "five failures in a row eject it: {stats:?}");
    // All of the share to a canary that is down: stable still serves.
    fx.set(split(&web, vec![down.clone()], 1000));
    for _ in 0..50 {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(fx.router.stats().unrouted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_in_the_canary_group_before_falling_back() {
    let web = backends(3).await;
    let down =
        Backend { id: "host-a/web-canary-down".into(), addr: dead_addr().await, weight: 1, revision: "r2".into() };
    // Ejection off and a generous budget: every turn of the dead canary is retried.
    let config = Config {
        outlier: OutlierPolicy { consecutive_failures: 0, ..OutlierPolicy::default() },
        retry: RetryPolicy { budget_ratio: 1.0, ..RetryPolicy::default() },
        ..Config::default()
    };
    let fx =
        Fixture::start(Protocol::Http, config, split(&web[..2], vec![down.clone(), web[2].at_revision("r2")], 1000));
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..40 {
        let answer = client.get("/", &[]).await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, web[2].id.as_str()));
    }
    assert_eq!(web[0].requests() + web[1].requests(), 0, "stable was not needed");
    assert_eq!(fx.stats(&down.id, "r2").retries, 20, "every other turn was the dead canary's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_zero_sends_the_canary_nothing() {
    let web = backends(4).await;
    let fx = Fixture::start(Protocol::Http, tenant_hash(), split(&web[..3], vec![web[3].at_revision("r2")], 0));
    let mut client = H1::connect(fx.addr()).await;
    for t in 0..200 {
        assert_ne!(client.get("/", &[("x-tenant", &format!("tenant-{t}"))]).await.body, web[3].id);
    }
    for _ in 0..300 {
        assert_ne!(client.get("/", &[]).await.body, web[3].id);
    }
    assert_eq!(web[3].requests(), 0);
    assert_eq!(fx.stats(&web[3].id, "r2").requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_changed_at_run_time_applies_to_the_next_requests() {
    let web = backends(4).await;
    let canary = web[3].at_revision("r2");
    let fx = Fixture::start(Protocol::Http, Config::default(), split(&web[..3], vec![canary.clone()], 0));
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..40 {
        assert_ne!(client.get("/", &[]).await.body, web[3].id);
    }
    // Everything to the canary.
    fx.set(split(&web[..3], vec![canary.clone()], 1000));
    eventually(async || client.get("/", &[]).await.body == web[3].id).await;
    for _ in 0..40 {
        assert_eq!(client.get("/", &[]).await.body, web[3].id);
    }
    // Half: every other request, exactly.
    fx.set(split(&web[..3], vec![canary.clone()], 500));
    eventually(async || client.get("/", &[]).await.body != web[3].id).await;
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.push(client.get("/", &[]).await.body == web[3].id);
    }
    assert_eq!(seen.iter().filter(|&&c| c).count(), 50);
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    // No split: the canary is one of four.
    let all: Vec<Backend> = web[..3].iter().map(|b| b.at_revision("r1")).chain([canary]).collect();
    fx.set(Members::from(all));
    eventually(async || {
        let mut counts = BTreeMap::new();
        for _ in 0..8 {
            *counts.entry(client.get("/", &[]).await.body).or_insert(0) += 1;
        }
        counts.len() == 4 && counts.values().all(|&n| n == 2)
    })
    .await;
    let mut counts = BTreeMap::new();
    for _ in 0..400 {
        *counts.entry(client.get("/", &[]).await.body).or_insert(0) += 1;
    }
    assert_eq!(counts.into_values().collect::<Vec<_>>(), [100, 100, 100, 100]);
}

async fn greeting(addr: std::net::SocketAddr) -> String {
    let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut id = String::new();
    stream.read_line(&mut id).await.unwrap();
    id.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_splits_new_connections() {
    let ids = ["echo-a", "echo-b", "echo-c", "echo-canary"];
    let mut echoes = Vec::new();
    for id in ids {
        echoes.push(EchoBackend::start(id).await);
    }
    let mut backends: Vec<Backend> = echoes.iter().zip(ids).map(|(e, id)| e.backend(id)).collect();
    backends[3].revision = "r2".into();
    let members = Members { backends, split: Some(Split { revision: "r2".into(), permille: 250 }) };
    let fx = Fixture::start(Protocol::Tcp, Config::default(), members);
    let mut counts = BTreeMap::new();
    let mut canary = Vec::new();
    for i in 0..200 {
        let id = greeting(fx.addr()).await;
        if id == "echo-canary" {
            canary.push(i);
        }
        *counts.entry(id).or_insert(0) += 1;
    }
    assert!((49..=51).contains(&canary.len()), "{counts:?}");
    assert!(canary.windows(2).all(|w| w[1] - w[0] == 4), "every fourth connection: {canary:?}");
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.iter().filter(|(id, _)| *id != "echo-canary").all(|(_, &n)| n == 50), "{counts:?}");
    eventually(async || fx.router.in_flight("echo-canary") == 0).await;
    assert_eq!(fx.stats("echo-canary", "r2").requests, canary.len() as u64);
}
