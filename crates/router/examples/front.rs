//! A stand-alone router for benchmarks (bench/router.sh's `TUG_ROUTER_CMD`):
//! `LISTEN_PORT=8080 BACKENDS=127.0.0.1:9001,127.0.0.1:9002 [PROTOCOL=http|tcp]
//! [POLICY=round-robin|least-request|tenant-hash:HEADER] front`.
//! Backends get ids `b1..bN`, weight 1. Threads as the daemon's data plane: one
//! single-threaded runtime per core (`WORKERS` overrides the count).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::http::HeaderName;
use tokio::sync::watch;
use tug_router::{Backend, Config, Members, Policy, Protocol, Router};

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
    // As the daemon runs its routers: one single-threaded runtime per core, each with its own
    // router accepting on a clone of the one listening socket.
    let workers: usize = env("WORKERS").map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |w| w.parse().expect("WORKERS: a number"),
    );
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (backends, policy) = (backends.clone(), policy.clone());
            let listener = listener.try_clone().expect("a clone of the listening socket");
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let (_tx, rx) = watch::channel(Arc::new(Members::from(backends)));
                    let config = Config { policy, ..Config::default() };
                    let _router = Router::serve(listener, protocol, config, rx).expect("serve");
                    std::future::pending::<()>().await;
                });
            })
        })
        .collect();
    eprintln!("front: {protocol:?} on 127.0.0.1:{port}, {workers} threads");
    for t in threads {
        let _ = t.join();
    }
}
