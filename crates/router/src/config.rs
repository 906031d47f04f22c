//! What a [`Router`](crate::Router) is configured with. Defaults follow Envoy
//! and linkerd where they have one.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::http::HeaderName;
use tokio::sync::Notify;

/// The most tries one request or connection makes (the first and its retries);
/// [`RetryPolicy::max_attempts`] is clamped to it.
pub const MAX_CONNECT_ATTEMPTS: usize = 4;

/// How a backend is chosen. Every policy skips ejected endpoints unless all are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Smooth weighted round robin (as nginx's): with weights 1 and 2, the
    /// second gets two requests of every three, interleaved.
    #[default]
    RoundRobin,
    /// HTTP: power of two choices, each drawn by weight, the one with fewer
    /// requests in flight per unit of weight wins. TCP: least open connections
    /// per unit of weight (a scan: the sets are small).
    LeastRequest,
    /// A consistent-hash ring over backend ids keyed on this request header
    /// (gRPC metadata is a header); a request without it is balanced round
    /// robin. An ejected owner's tenants go to the next owner on the ring. TCP
    /// has no header, so it is round robin there. During a canary
    /// [`Split`](crate::Split) each group has its own ring, and the key also
    /// decides the tenant's group.
    TenantHash { header: HeaderName },
}

/// Retries within a budget, like linkerd's and Finagle's: every request
/// deposits `budget_ratio` of a token, every retry withdraws one, and
/// `min_per_second` tokens are added each second so that a quiet service can
/// still retry. What accumulates is capped at ten seconds of `min_per_second`
/// plus the deposits of a thousand requests, so a long quiet spell does not
/// bank an unbounded burst.
///
/// What is retried, always on another endpoint:
/// - a connect failure or timeout, or a connection reset or closed before any
///   response byte, for any method, provided the request body can be replayed;
/// - a 502 or 503 answer, for idempotent methods (GET, HEAD, OPTIONS, TRACE,
///   PUT, DELETE) with a replayable body.
///
/// A body is replayable when it is empty or declares a length of at most
/// `max_replay_body`; only such a body is buffered (up front, whole). A
/// request with a longer or unknown-length body is retried only when it never
/// left the router (connect failures). Nothing is retried once a response byte
/// went to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub budget_ratio: f64,
    pub min_per_second: u32,
    /// Tries in total, the first included (1 disables retries); at most
    /// [`MAX_CONNECT_ATTEMPTS`].
    pub max_attempts: usize,
    /// Bytes.
    pub max_replay_body: usize,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { budget_ratio: 0.2, min_per_second: 10, max_attempts: 3, max_replay_body: 64 << 10 }
    }
}

/// Passive outlier detection, like Envoy's `consecutive_5xx`: an endpoint that
/// fails `consecutive_failures` times in a row (5xx answers, connect failures,
/// resets, timeouts) is ejected for `base_ejection` × the number of times it
/// has been ejected, at most `max_ejection`; any other answer resets the run.
/// The count of ejections starts again once an endpoint has stayed in for
/// `max_ejection`. `consecutive_failures: 0` turns ejection off.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of the endpoints is ejected at once, rounded down:
    /// with 50 and 3 endpoints, one; with a single endpoint, none.
    pub max_ejected_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub policy: Policy,
    /// Per connection attempt to a backend.
    pub connect_timeout: Duration,
    /// From sending a request to a backend until its response headers arrive;
    /// on expiry the client gets 504 and the endpoint a failure (not retried:
    /// the backend may be acting on it). For a streamed request body the clock
    /// starts once the body has been sent whole, as Envoy's does, so a long
    /// upload or gRPC client stream is not cut short.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub outlier: OutlierPolicy,
    /// A client connection older than this (±10%, so a fleet does not close at
    /// once) is closed gracefully: HTTP/1 after its current response
    /// (`Connection: close`), HTTP/2 with GOAWAY once its streams end. `None`
    /// keeps connections as long as the client does.
    pub max_connection_age: Option<Duration>,
    /// Idle HTTP/1 connections kept per backend.
    pub max_idle_per_backend: usize,
    /// A pooled backend connection unused for this long is closed.
    pub pool_idle_timeout: Duration,
    /// How long a client may take to send a request's headers (an HTTP/2 header
    /// block, its first SETTINGS), to send its first bytes on a new connection,
    /// and how long a connection may sit with no request open (HTTP/1 keep-alive;
    /// HTTP/2 then gets GOAWAY).
    pub header_read_timeout: Duration,
    /// Largest HTTP/1 request head (request line and headers); a larger one
    /// is answered 431 and the connection closed.
    pub max_header_bytes: usize,
    /// HTTP/2 streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest HTTP/2 header block (decoded), advertised to clients.
    pub max_header_list_size: u32,
    /// HTTP/2 rapid-reset protection: streams a client may open and reset before
    /// their answer, each answered stream earning one back; past it the connection
    /// is closed (GOAWAY `ENHANCE_YOUR_CALM`).
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2: streams the router may reset because of a client's protocol
    /// errors (each answered stream earning one back) before it closes the connection.
    pub max_local_error_reset_streams: usize,
    /// Client connections open at once on this listener, all its routers (one a thread)
    /// together, within whatever budget the limit is part of; a connection beyond it is
    /// accepted and closed at once. Clones of a `Config` share the limit.
    pub connections: Arc<ConnectionLimit>,
}

/// A count of open connections with a ceiling, optionally inside a larger one shared with
/// other listeners (the process's budget of descriptors): a connection takes a place in both
/// or in neither.
///
/// A listener's routers (one a thread, sharing the limit and the listening socket) also take
/// turns accepting through it: a router accepts only while it holds no more connections than
/// any other, so connections spread evenly over the threads instead of piling onto whichever
/// woke first (eight connections all on one thread doubled the p99), as HAProxy hands each
/// connection to its least loaded thread.
#[derive(Debug)]
pub struct ConnectionLimit {
    max: usize,
    open: AtomicUsize,
    within: Option<Arc<ConnectionLimit>>,
    /// Connections closed at once because this limit (or its budget) was full.
    refused: AtomicU64,
    /// The accepting routers' shares of `open`.
    seats: Mutex<Vec<Weak<Seat>>>,
    /// A share changed: a router waiting for its turn looks again.
    changed: Notify,
}

/// One router's share of a limit: the connections it accepted that are still open.
#[derive(Debug, Default)]
pub(crate) struct Seat {
    open: AtomicUsize,
    /// Its router stopped accepting: no longer anyone's rival.
    closed: AtomicBool,
}

/// A router's seat for as long as it accepts.
pub(crate) struct Accepting {
    limit: Arc<ConnectionLimit>,
    pub seat: Arc<Seat>,
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.seat.closed.store(true, Ordering::SeqCst);
        self.limit.changed.notify_waiters();
    }
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        ConnectionLimit::with(max, None)
    }

    /// At most `max`, and only while `budget` has room.
    pub fn within(max: usize, budget: &Arc<ConnectionLimit>) -> Arc<ConnectionLimit> {
        ConnectionLimit::with(max, Some(budget.clone()))
    }

    fn with(max: usize, within: Option<Arc<ConnectionLimit>>) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            max,
            open: AtomicUsize::new(0),
            within,
            refused: AtomicU64::new(0),
            seats: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    /// A seat among the routers accepting through this limit, until dropped.
    pub(crate) fn seat(self: &Arc<Self>) -> Accepting {
        let seat = Arc::new(Seat::default());
        let mut seats = self.seats.lock().unwrap_or_else(|p| p.into_inner());
        seats.retain(|s| s.upgrade().is_some_and(|s| !s.closed.load(Ordering::SeqCst)));
        seats.push(Arc::downgrade(&seat));
        Accepting { limit: self.clone(), seat }
    }

    /// Whether `seat` holds no more connections than any other accepting router's.
    fn is_turn(&self, seat: &Seat) -> bool {
        let mine = seat.open.load(Ordering::SeqCst);
        let seats = self.seats.lock().unwrap_or_else(|p| p.into_inner());
        seats
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|other| !other.closed.load(Ordering::SeqCst))
            .all(|other| mine <= other.open.load(Ordering::SeqCst))
    }

    /// Returns once `seat`'s router may accept the next connection.
    pub(crate) async fn wait_turn(&self, seat: &Seat) {
        loop {
            let mut changed = std::pin::pin!(self.changed.notified());
            // Registered before the check, so a change in between still wakes us.
            changed.as_mut().enable();
            if self.is_turn(seat) {
                return;
            }
            changed.await;
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused so far because the limit was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        self.open.fetch_add(1, Ordering::AcqRel) < self.max || {
            self.open.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// A place for one more connection, accepted by `seat`'s router, held until the returned
    /// guard drops.
    pub(crate) fn acquire(self: &Arc<Self>, seat: &Arc<Seat>) -> Option<Place> {
        if !self.take() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(budget) = &self.within
            && !budget.take()
        {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        seat.open.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Some(Place(self.clone(), seat.clone()))
    }
}

impl PartialEq for ConnectionLimit {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// One connection's place in a [`ConnectionLimit`].
pub(crate) struct Place(Arc<ConnectionLimit>, Arc<Seat>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(budget) = &self.0.within {
            budget.open.fetch_sub(1, Ordering::AcqRel);
        }
        self.1.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            policy: Policy::RoundRobin,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            outlier: OutlierPolicy::default(),
            max_connection_age: None,
            max_idle_per_backend: 64,
            pool_idle_timeout: Duration::from_secs(90),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 << 10,
            max_concurrent_streams: 128,
            max_header_list_size: 64 << 10,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            connections: ConnectionLimit::new(16_384),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routers_take_turns_by_the_connections_they_hold() {
        let limit = ConnectionLimit::new(10);
        let (a, b) = (limit.seat(), limit.seat());
        assert!(limit.is_turn(&a.seat) && limit.is_turn(&b.seat));
        let first = limit.acquire(&a.seat).unwrap();
        assert!(!limit.is_turn(&a.seat) && limit.is_turn(&b.seat), "a is ahead: b's turn");
        let second = limit.acquire(&b.seat).unwrap();
        assert!(limit.is_turn(&a.seat) && limit.is_turn(&b.seat));
        drop(second);
        assert!(!limit.is_turn(&a.seat));
        // A router that stops accepting is nobody's rival, whatever it still holds.
        drop(b);
        assert!(limit.is_turn(&a.seat));
        drop(first);
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn a_place_is_taken_in_the_budget_too_or_not_at_all() {
        let budget = ConnectionLimit::new(1);
        let (one, two) = (ConnectionLimit::within(5, &budget), ConnectionLimit::within(5, &budget));
        let (s1, s2) = (one.seat(), two.seat());
        let held = one.acquire(&s1.seat).unwrap();
        assert!(two.acquire(&s2.seat).is_none());
        assert_eq!((two.open(), two.refused()), (0, 1));
        drop(held);
        assert!(two.acquire(&s2.seat).is_some());
    }
}
