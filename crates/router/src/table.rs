//! The routing state: endpoints (one per backend, carrying its pools and
//! counters) and the hash ring, built once per membership change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::balance::{self, Ring, RoundRobin};
use crate::{Backend, Config, MAX_CONNECT_ATTEMPTS, Policy};

/// One backend as the router sees it. Survives membership changes that keep
/// the same id and address, so pools and counters carry over.
pub(crate) struct Endpoint {
    pub id: String,
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    /// Left membership: pick no more, pool nothing more.
    retired: AtomicBool,
    /// Idle HTTP/1 connections, most recently used last.
    pub idle_h1: Mutex<Vec<http1::SendRequest<Incoming>>>,
    /// The one multiplexed HTTP/2 connection, opened on first use.
    pub h2: Mutex<Option<http2::SendRequest<Incoming>>>,
}

impl Endpoint {
    fn new(backend: &Backend) -> Endpoint {
        Endpoint {
            id: backend.id.clone(),
            addr: backend.addr,
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            idle_h1: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Stops new use: idle connections close now, the HTTP/2 connection once
    /// its streams in flight end.
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        lock(&self.idle_h1).clear();
        lock(&self.h2).take();
    }

    /// Opens a TCP connection within the timeout.
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a request (or TCP connection) in flight on an endpoint for as long
/// as it lives, and keeps the endpoint alive past a membership change.
pub(crate) struct InFlight(pub Arc<Endpoint>);

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>) -> InFlight {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Table {
    endpoints: Vec<Arc<Endpoint>>,
    ring: Ring,
}

impl Table {
    /// Endpoints for `backends` (weight 0 and repeated ids left out), reusing
    /// `old`'s endpoint for every id whose address is unchanged.
    pub fn build(backends: &[Backend], old: Option<&Table>, policy: &Policy) -> Table {
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::with_capacity(backends.len());
        let mut weights = Vec::with_capacity(backends.len());
        for b in backends {
            if b.weight == 0 || endpoints.iter().any(|e| e.id == b.id) {
                continue;
            }
            let reused = old.and_then(|t| t.endpoints.iter().find(|e| e.id == b.id && e.addr == b.addr));
            endpoints.push(reused.cloned().unwrap_or_else(|| Arc::new(Endpoint::new(b))));
            weights.push(b.weight);
        }
        let ring = match policy {
            Policy::TenantHash { .. } => Ring::new(endpoints.iter().zip(&weights).map(|(e, &w)| (e.id.as_str(), w))),
            _ => Ring::default(),
        };
        Table { endpoints, ring }
    }

    /// Retires every endpoint of `self` that `next` does not carry on.
    pub fn retire_missing(&self, next: &Table) {
        for e in &self.endpoints {
            if !next.endpoints.iter().any(|n| Arc::ptr_eq(n, e)) {
                e.retire();
            }
        }
    }
}

/// Endpoints already tried for one request; fixed size, no allocation.
#[derive(Default)]
pub(crate) struct Tried {
    ptrs: [usize; MAX_CONNECT_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub fn push(&mut self, e: &Arc<Endpoint>) {
        if self.len < MAX_CONNECT_ATTEMPTS {
            self.ptrs[self.len] = Arc::as_ptr(e) as usize;
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn contains(&self, e: &Arc<Endpoint>) -> bool {
        self.ptrs[..self.len].contains(&(Arc::as_ptr(e) as usize))
    }
}

/// What every connection of one listener shares.
pub(crate) struct Shared {
    table: watch::Receiver<Arc<Table>>,
    pub config: Config,
    rr: RoundRobin,
}

impl Shared {
    pub fn new(table: watch::Receiver<Arc<Table>>, mut config: Config) -> Shared {
        config.connect_attempts = config.connect_attempts.clamp(1, MAX_CONNECT_ATTEMPTS);
        Shared { table, config, rr: RoundRobin::default() }
    }

    /// Picks an endpoint by policy, skipping those already tried (the next one
    /// round the table instead). `key` is a hashed tenant; `least` asks for
    /// least-connections rather than two random choices.
    pub fn select(&self, key: Option<u64>, tried: &Tried, least: bool) -> Option<Arc<Endpoint>> {
        let table = self.table.borrow();
        let eps = &table.endpoints;
        let n = eps.len();
        let first = match (&self.config.policy, key) {
            (Policy::TenantHash { .. }, Some(k)) => table.ring.pick(k),
            (Policy::LeastRequest, _) if least => balance::least(n, self.rr.pick(n)?, |i| eps[i].in_flight()),
            (Policy::LeastRequest, _) => balance::p2c(n, |i| eps[i].in_flight()),
            _ => self.rr.pick(n),
        }?;
        (0..n).map(|k| &eps[(first + k) % n]).find(|e| !tried.contains(e)).cloned()
    }
}
