//! tug's data plane: one [`Router`] per service listener, balancing HTTP
//! requests (HTTP/1.1 and h2c on one port) or TCP connections across the
//! service's ready instances.
//!
//! Membership comes in on a `watch` channel of backend lists. A task follows it
//! and publishes an immutable [`Table`](table::Table) (endpoints with their
//! connection pools and in-flight counters, the hash ring) on a second `watch`;
//! the request path only borrows that snapshot for the instant it takes to pick
//! an endpoint, clones one `Arc`, and lets go. An endpoint that leaves is no
//! longer picked and its idle connections close; whatever it has in flight holds
//! its own `Arc` and finishes.
//!
//! Not yet here (see the router issue): retries on 502/503 with a budget,
//! outlier ejection, draining with GOAWAY on shutdown, upgrades, maximum
//! connection age, metrics, and limits on abusive peers beyond hyper's own.

pub mod balance;
mod http;
mod table;
mod tcp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::http::HeaderName;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::table::{Shared, Table};

/// One ready instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Stable instance identity across restarts and hosts, such as `host/web-2`.
    /// Tenant hashing is keyed on it, never on the address.
    pub id: String,
    pub addr: SocketAddr,
    /// Relative share; 0 takes no new requests (an instance being drained).
    /// The hash ring honours weights; round robin and least request do not yet.
    pub weight: u32,
}

/// What the listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port. A request
    /// that arrived over HTTP/2 goes to its backend over HTTP/2 (so gRPC works
    /// end to end), one over HTTP/1 over a pooled HTTP/1.1 connection.
    Http,
    /// Bytes copied both ways between the client and one backend.
    Tcp,
}

/// How a backend is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    RoundRobin,
    /// HTTP: power of two choices on requests in flight. TCP: least open
    /// connections (a scan: the sets are small).
    LeastRequest,
    /// A consistent-hash ring over backend ids keyed on this request header;
    /// a request without it is balanced round robin. TCP has no header, so it
    /// is round robin there.
    TenantHash { header: HeaderName },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Policy,
    /// Per connection attempt to a backend.
    pub connect_timeout: Duration,
    /// Backends tried for one request or connection when connecting fails
    /// before any byte is sent (1 to [`MAX_CONNECT_ATTEMPTS`]).
    pub connect_attempts: usize,
    /// Idle HTTP/1 connections kept per backend.
    pub max_idle_per_backend: usize,
    /// How long a client may take to send a request's headers (HTTP/1).
    pub header_read_timeout: Duration,
}

/// The most backends one request tries.
pub const MAX_CONNECT_ATTEMPTS: usize = 4;

impl Default for Config {
    fn default() -> Config {
        Config {
            policy: Policy::RoundRobin,
            connect_timeout: Duration::from_secs(2),
            connect_attempts: 3,
            max_idle_per_backend: 64,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// A listening router. Dropping it (or [`Router::close`]) stops accepting and
/// stops following membership; connections and requests already accepted go on.
#[derive(Debug)]
pub struct Router {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
    follow: JoinHandle<()>,
}

impl Router {
    /// Binds `addr` now (so a taken port is reported at once) and starts
    /// serving. Must be called within a Tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        protocol: Protocol,
        config: Config,
        mut members: watch::Receiver<Arc<Vec<Backend>>>,
    ) -> io::Result<Router> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let local_addr = listener.local_addr()?;

        let first = Table::build(&members.borrow_and_update(), None, &config.policy);
        let (tables, table) = watch::channel(Arc::new(first));
        let follow = tokio::spawn(follow(members, tables, config.policy.clone()));
        let shared = Arc::new(Shared::new(table, config));
        let accept = match protocol {
            Protocol::Http => tokio::spawn(http::serve(listener, shared)),
            Protocol::Tcp => tokio::spawn(tcp::serve(listener, shared)),
        };
        Ok(Router { local_addr, accept, follow })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; what was accepted goes on.
    pub fn close(self) {}
}

impl Drop for Router {
    fn drop(&mut self) {
        self.accept.abort();
        self.follow.abort();
    }
}

/// Rebuilds the table on every membership change. If the membership sender is
/// dropped, the last table stays (a failed registry keeps serving).
async fn follow(mut members: watch::Receiver<Arc<Vec<Backend>>>, tables: watch::Sender<Arc<Table>>, policy: Policy) {
    while members.changed().await.is_ok() {
        let old = tables.borrow().clone();
        let next = Table::build(&members.borrow_and_update(), Some(&old), &policy);
        old.retire_missing(&next);
        tables.send_replace(Arc::new(next));
    }
}
