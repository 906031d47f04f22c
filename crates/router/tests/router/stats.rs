//! What `Router::stats` reports.

use hyper::StatusCode;
use tug_router::{Config, LATENCY_BOUNDS, Protocol};

use crate::support::{Fixture, H1, backends, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_by_class_per_revision_and_keep_what_left() {
    let web = backends(2).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![web[0].at_revision("r1")]);
    let addr = fx.addr();
    let mut client = H1::connect(addr).await;
    for path in ["/", "/", "/", "/", "/", "/", "/status/404", "/status/404", "/status/500", "/status/302"] {
        client.get(path, &[]).await;
    }
    let slow = tokio::spawn(async move { H1::connect(addr).await.get("/slow?ms=700", &[]).await });
    eventually(async || fx.router.in_flight(&web[0].id) == 1).await;
    assert_eq!(fx.stats(&web[0].id, "r1").in_flight, 1);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(fx.router.in_flight(&web[0].id), 0);

    let r1 = fx.stats(&web[0].id, "r1");
    assert_eq!((r1.requests, r1.status), (11, [0, 7, 1, 2, 1]), "{r1:?}");
    assert!(r1.member && !r1.ejected && r1.in_flight == 0);
    assert_eq!((r1.failures, r1.retries, r1.ejections), (0, 0, 0));
    assert_eq!(r1.addr, web[0].addr);
    assert_eq!(r1.latency.bounds, &LATENCY_BOUNDS[..]);
    assert_eq!(r1.latency.counts.len(), LATENCY_BOUNDS.len() + 1);
    assert_eq!(r1.latency.count(), r1.requests);
    // The slow one took 700 ms: it sits in the (0.6 s, 1 s] bucket.
    assert_eq!(r1.latency.counts[LATENCY_BOUNDS.iter().position(|&b| b == 1.0).unwrap()], 1);
    assert!(r1.latency.sum_seconds >= 0.7 && r1.latency.sum_seconds < 5.0, "{}", r1.latency.sum_seconds);

    // A new revision of the same instance: new counters; the old revision's stay.
    fx.set(vec![web[0].at_revision("r2"), web[1].at_revision("r2")]);
    eventually(async || fx.router.stats().endpoints.iter().any(|e| e.revision == "r2")).await;
    for _ in 0..4 {
        assert_eq!(client.get("/", &[]).await.status, StatusCode::OK);
    }
    let stats = fx.router.stats();
    let view: Vec<_> =
        stats.endpoints.iter().map(|e| (e.id.as_str(), e.revision.as_str(), e.member, e.requests)).collect();
    assert_eq!(
        view,
        [
            (web[0].id.as_str(), "r2", true, 2),
            (web[1].id.as_str(), "r2", true, 2),
            (web[0].id.as_str(), "r1", false, 11)
        ]
    );
    // It leaves and comes back at r2: its counters continue.
    fx.set(vec![web[1].at_revision("r2")]);
    eventually(async || !fx.stats(&web[0].id, "r2").member).await;
    fx.set(vec![web[0].at_revision("r2"), web[1].at_revision("r2")]);
    eventually(async || fx.stats(&web[0].id, "r2").member).await;
    assert_eq!(fx.stats(&web[0].id, "r2").requests, 2);
    assert_eq!((stats.unrouted, stats.retries_denied), (0, 0));
}
