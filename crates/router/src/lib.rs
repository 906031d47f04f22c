//! tug's data plane: one [`Router`] per service listener, balancing HTTP
//! requests (HTTP/1.1 and h2c on one port) or TCP connections across the
//! service's ready instances.
//!
//! Membership comes in on a `watch` channel of [`Members`]: the backends, and
//! the canary [`Split`] if a rollout is under way. A task follows it and
//! publishes an immutable `Table` (endpoints with their connection pools,
//! ejection state and counters, the weighted order, the hash ring, and for a
//! split the same per group) on a second `watch`; the request path only
//! borrows that snapshot for the instant it takes to pick an endpoint, clones
//! one `Arc`, and lets go. An endpoint that leaves is no longer picked and its
//! idle connections close; whatever it has in flight holds its own `Arc` and
//! finishes ([`Router::in_flight`] tells when).
//!
//! A canary split divides traffic between the backends of one revision (the
//! canary group) and the others (stable) by a share of requests (TCP: of new
//! connections) in thousandths, whatever the number of instances in each. Each
//! request first chooses its group, then the policy picks within that group:
//! - a tenant (tenant hash, header present) is canary when a hash of its key,
//!   independent of the ring, falls below the share, so raising the share only
//!   adds tenants and no tenant flips back and forth; within its group it
//!   stays on one instance;
//! - other requests take turns: exactly the share of every 1000, spread out;
//! - if the chosen group has nothing usable (no endpoint, all tried by this
//!   request, all ejected) the other serves: availability wins over the split.
//!   Retries stay in the request's group first.
//!
//! Without a split, or when either group is empty, nothing changes: the split
//! costs a request one branch, and its groups are built with the table, once
//! per membership change. Outlier ejection's cap and the counters are over all
//! endpoints, as without a split.
//!
//! Around every request (see [`Config`]):
//! - passive outlier ejection of endpoints that fail in a row ([`OutlierPolicy`]);
//! - retries on another endpoint within a budget ([`RetryPolicy`]): connect
//!   failures and resets for any method, 502 and 503 for idempotent ones, only
//!   for bodies small enough to replay and never after a response byte went out;
//! - a deadline for the response headers (504);
//! - HTTP/1.1 upgrades (WebSocket) tunnelled over a fresh backend connection;
//! - limits on what a client may hold: connections, header bytes and time,
//!   HTTP/2 streams and resets, connection age;
//! - counters per (instance, revision) read with [`Router::stats`];
//! - a graceful [`Router::shutdown`].
//!
//! The request path takes no lock across an await and counts with relaxed
//! atomics. The common request, a GET or HEAD without a body, takes the plain
//! path (`h1`): over HTTP/1 it is parsed once and its head re-written into
//! buffers the connection keeps, and sent on a pooled instance connection in
//! the same task, with no allocation of its own; hyper serves everything else
//! (HTTP/2, bodies, upgrades, whatever is unusual), its GET and HEAD requests
//! going to instances the same plain way. Beyond what hyper allocates, a request
//! with a body costs a copy of its head when a retry could need one (a
//! replayable body and another endpoint to go to), a one-shot channel when its
//! body streams (so the request timeout can start at its end), and a buffer
//! only for a small body that arrives in more than one frame. Bodies otherwise
//! stream: only those of at most `max_replay_body` bytes are ever held whole.
//!
//! A listener's routers (one a thread, on clones of one socket) take turns
//! accepting through their shared [`ConnectionLimit`]: the one holding fewest
//! connections takes the next, so the threads carry even shares.
//!
//! Not here: HTTP/2 extended CONNECT (WebSocket over HTTP/2) and `CONNECT`
//! tunnels (answered 405); TLS; active health checks (the supervisor's
//! readiness decides membership; ejection is passive).

pub mod balance;
mod budget;
mod config;
mod detect;
mod h1;
mod h2;
mod http;
mod lifecycle;
mod stats;
mod table;
mod tcp;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::config::{Config, ConnectionLimit, MAX_CONNECT_ATTEMPTS, OutlierPolicy, Policy, RetryPolicy};
pub use crate::detect::SERVER_FIRST_WAIT;
use crate::lifecycle::Phase;
pub use crate::stats::{EndpointStats, Histogram, LATENCY_BOUNDS, MAX_DEPARTED, Stats};
use crate::table::{Shared, lock};

/// One ready instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Stable instance identity across restarts and hosts, such as `host/web-2`.
    /// Tenant hashing is keyed on it, never on the address.
    pub id: String,
    pub addr: SocketAddr,
    /// Relative share, honoured by every policy; 0 takes no new requests (an
    /// instance being drained).
    pub weight: u32,
    /// The instance's spec revision: counters are kept per (id, revision).
    pub revision: String,
}

/// The members of a router, and how traffic is split between two revisions
/// during a canary.
///
/// Sent whole on the membership `watch`: a change of the split is a change of
/// membership like any other (endpoints whose id, address and revision are
/// unchanged keep their pools, ejection state and counters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Every ready instance, of whichever revision.
    pub backends: Vec<Backend>,
    /// `None`: every backend takes its share by policy, whatever its revision.
    pub split: Option<Split>,
}

impl From<Vec<Backend>> for Members {
    /// Members with no split.
    fn from(backends: Vec<Backend>) -> Members {
        Members { backends, split: None }
    }
}

/// A canary: backends whose `revision` equals `revision` are the canary group;
/// the others are stable.
///
/// Each request (HTTP) or new connection (TCP) first chooses a group, then the
/// policy picks within that group only. The share is a share of *requests*,
/// not of instances, so one canary instance beside nine stable ones can take
/// 1% or 50% as the rollout decides:
/// - with a tenant key ([`Policy::TenantHash`] and its header present), a
///   tenant goes to the canary when a hash of its key, independent of the
///   ring, falls in `0..permille` of 1000 buckets: raising `permille` only ever
///   adds tenants to the canary, none flips back and forth, and within its
///   group a tenant stays on the same instance;
/// - without a key, requests take turns deterministically: exactly
///   `permille` of every 1000, spread out rather than in runs (at 100‰ every
///   tenth request).
///
/// Availability wins over the split: if the chosen group has nothing usable
/// (no endpoint, all already tried by this request, or all ejected) the other
/// group serves. Retries stay in the request's group first. With no backend of
/// `revision`, or no other backend, the split changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub revision: String,
    /// Share of requests (TCP: of new connections) sent to the canary group, in
    /// thousandths (0..=1000; more counts as 1000). 0 sends the canary nothing
    /// unless stable has nothing usable; 1000 sends stable nothing unless the
    /// canary has nothing usable.
    pub permille: u16,
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
    /// Decided per connection: HTTP when it opens with an HTTP/1 request line or the HTTP/2
    /// preface, TCP otherwise, and when the client waits for the server to speak first.
    Auto,
}

/// A listening router. Dropping it (or [`Router::close`]) stops accepting and
/// stops following membership; connections and requests already accepted go
/// on. [`Router::shutdown`] drains them instead.
pub struct Router {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    accept: JoinHandle<()>,
    follow: JoinHandle<()>,
    /// The membership it follows, for [`Router::catch_up`].
    members: watch::Receiver<Arc<Members>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl Router {
    /// Binds `addr` now (so a taken port is reported at once) and starts
    /// serving. Must be called within a Tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        protocol: Protocol,
        config: Config,
        members: watch::Receiver<Arc<Members>>,
    ) -> io::Result<Router> {
        Router::serve(std::net::TcpListener::bind(addr)?, protocol, config, members)
    }

    /// Serves on a listener the caller bound. Handing a router's replacement a clone of the
    /// same socket (`try_clone`) and then shutting the old one down changes a listener's
    /// configuration without refusing a connection: the backlog stays where it is.
    pub fn serve(
        std_listener: std::net::TcpListener,
        protocol: Protocol,
        config: Config,
        mut members: watch::Receiver<Arc<Members>>,
    ) -> io::Result<Router> {
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let local_addr = listener.local_addr()?;

        let (phase, phases) = watch::channel(Phase::Serving);
        let first = members.borrow_and_update().clone();
        let shared = Arc::new(Shared::new(&first, config, phases));
        let follow = tokio::spawn(follow(members.clone(), shared.clone()));
        let accept = match protocol {
            Protocol::Http => tokio::spawn(http::serve(listener, shared.clone())),
            Protocol::Tcp => tokio::spawn(tcp::serve(listener, shared.clone())),
            Protocol::Auto => tokio::spawn(detect::serve(listener, shared.clone())),
        };
        Ok(Router { local_addr, shared, phase, accept, follow, members })
    }

    /// Routes by the latest membership from now on: builds the table here, in the caller's
    /// thread, if the router's own thread has not yet. Whoever publishes a membership and then
    /// tells a client an instance is ready calls this in between, so the client's next request
    /// cannot find the router without it.
    pub fn catch_up(&self) {
        let latest = self.members.borrow().clone();
        self.shared.follow_members(&latest);
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters: cheap enough to take every second (one
    /// short lock on membership changes' ledger, no effect on requests).
    pub fn stats(&self) -> Stats {
        let now = self.shared.now_ms();
        Stats {
            endpoints: lock(&self.shared.ledger).snapshot(now),
            unrouted: self.shared.unrouted.load(Relaxed),
            retries_denied: self.shared.retries_denied.load(Relaxed),
            refused_connections: self.shared.config.connections.refused(),
        }
    }

    /// Requests (HTTP; an upgraded connection counts until it closes) or
    /// connections (TCP) in flight on the instance `id`, a member or not, over
    /// all its revisions. Remove an instance from membership, wait for this to
    /// reach 0, then stop it.
    pub fn in_flight(&self, id: &str) -> usize {
        lock(&self.shared.ledger).in_flight(id)
    }

    /// Stops accepting; what was accepted goes on.
    pub fn close(self) {}

    /// Stops accepting now and drains: HTTP/1 connections close after their
    /// current response (idle ones at once), HTTP/2 clients get GOAWAY and
    /// their streams in flight finish, TCP connections and upgraded tunnels
    /// are left to finish. Returns once nothing is open, or after `grace`,
    /// having dropped whatever was still open.
    pub async fn shutdown(mut self, grace: Duration) {
        self.accept.abort();
        // Once the accept task is gone, every accepted connection is counted.
        let _ = (&mut self.accept).await;
        self.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(grace, self.shared.tracker.idle()).await.is_err() {
            self.phase.send_replace(Phase::Stopped);
            // Each connection's task drops it the next time it runs.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.tracker.idle()).await;
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.accept.abort();
        self.follow.abort();
    }
}

/// Rebuilds the table on every membership change, and sweeps idle pooled
/// connections. If the membership sender is dropped, the last table stays (a
/// failed registry keeps serving).
async fn follow(mut members: watch::Receiver<Arc<Members>>, shared: Arc<Shared>) {
    let mut sweep = tokio::time::interval(shared.sweep_interval());
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await;
    let mut following = true;
    loop {
        tokio::select! {
            changed = members.changed(), if following => {
                if changed.is_err() {
                    following = false;
                    continue;
                }
                let latest = members.borrow_and_update().clone();
                shared.follow_members(&latest);
            }
            _ = sweep.tick() => shared.sweep(),
        }
    }
}
