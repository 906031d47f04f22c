//! A stand-alone router for benchmarks (bench/router.sh's `TUG_ROUTER_CMD`):
//! `LISTEN_PORT=8080 BACKENDS=127.0.0.1:9001,127.0.0.1:9002 [PROTOCOL=http|tcp]
//! [POLICY=round-robin|least-request|tenant-hash:HEADER] front`.
//! Backends get ids `b1..bN`, weight 1. The runtime is the daemon's: multi-thread,
//! 2 workers. For experiments only: WORKERS, EVENT_INTERVAL, GLOBAL_QUEUE_INTERVAL.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::http::HeaderName;
use tokio::sync::watch;
use tug_router::{Backend, Config, Policy, Protocol, Router};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() {
    let port: u16 = env("LISTEN_PORT").expect("LISTEN_PORT").parse().expect("LISTEN_PORT: a port");
    let backends: Vec<Backend> = env("BACKENDS")
        .expect("BACKENDS")
        .split(',')
        .enumerate()
        .map(|(i, a)| {
            let addr: SocketAddr = a.trim().parse().unwrap_or_else(|_| panic!("BACKENDS: {a:?} is not host:port"));
            Backend { id: format!("b{}", i + 1), addr, weight: 1, revision: "bench".into() }
        })
        .collect();
    let protocol = match env("PROTOCOL").as_deref() {
        None | Some("http") => Protocol::Http,
        Some("tcp") => Protocol::Tcp,
        Some(p) => panic!("PROTOCOL: http or tcp, not {p:?}"),
    };
    let policy = match env("POLICY").as_deref() {
        None | Some("round-robin") => Policy::RoundRobin,
        Some("least-request") => Policy::LeastRequest,
        Some(p) if let Some(header) = p.strip_prefix("tenant-hash:") => {
            Policy::TenantHash { header: HeaderName::from_bytes(header.as_bytes()).expect("POLICY: header") }
        }
        Some(p) => panic!("POLICY: round-robin, least-request or tenant-hash:HEADER, not {p:?}"),
    };
    let workers: usize = env("WORKERS").map_or(2, |w| w.parse().expect("WORKERS: a number"));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).enable_all();
    // Experiment knobs (unset: tokio's defaults, as the daemon runs).
    if let Some(n) = env("EVENT_INTERVAL") {
        builder.event_interval(n.parse().expect("EVENT_INTERVAL"));
    }
    if let Some(n) = env("GLOBAL_QUEUE_INTERVAL") {
        builder.global_queue_interval(n.parse().expect("GLOBAL_QUEUE_INTERVAL"));
    }
    let runtime = builder.build().unwrap();
    runtime.block_on(async move {
        let (_tx, rx) = watch::channel(Arc::new(backends));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let router = Router::bind(addr, protocol, Config { policy, ..Config::default() }, rx).expect("bind");
        eprintln!("front: {protocol:?} on {} ", router.local_addr());
        std::future::pending::<()>().await;
    });
}
