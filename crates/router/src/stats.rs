//! Per-endpoint counters: relaxed atomics bumped on the request path, read
//! into plain snapshots on demand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hyper::StatusCode;

/// Upper bounds of the latency buckets, in seconds: roughly log-spaced from
/// 0.5 ms to 30 s, finer where web latencies usually fall, with the objectives
/// people set (50, 100, 200, 250, 300, 500 ms, 1 s) among them.
pub static LATENCY_BOUNDS: [f64; 24] = [
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.01, 0.015, 0.025, 0.04, 0.05, 0.06, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The same bounds in nanoseconds, so the request path compares integers.
const BOUND_NANOS: [u64; 24] = [
    500_000,
    1_000_000,
    2_000_000,
    4_000_000,
    6_000_000,
    10_000_000,
    15_000_000,
    25_000_000,
    40_000_000,
    50_000_000,
    60_000_000,
    100_000_000,
    150_000_000,
    200_000_000,
    250_000_000,
    300_000_000,
    400_000_000,
    500_000_000,
    600_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// A snapshot of a router's counters. Totals only ever grow over a router's
/// life, so rates are differences between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Every (id, revision) in the routing table, then those that left it
    /// (at most [`MAX_DEPARTED`] of them, the most recent).
    pub endpoints: Vec<EndpointStats>,
    /// Requests (HTTP, answered 503) and connections (TCP, closed) the router
    /// answered itself because no instance was ready.
    pub unrouted: u64,
    /// Retries the budget refused.
    pub retries_denied: u64,
    /// Connections closed at once because the listener's connection limit was full (the
    /// limit is the listener's, shared by its routers on every thread: the same figure in
    /// each router's stats).
    pub refused_connections: u64,
}

/// Counters of one instance at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStats {
    pub id: String,
    /// Its last known address.
    pub addr: SocketAddr,
    pub revision: String,
    /// In the routing table now. False once it left membership (or got weight
    /// 0); its counters are kept so totals never go backwards.
    pub member: bool,
    pub ejected: bool,
    /// Requests (HTTP, until the response body ends or, for an upgrade, the
    /// tunnel closes) or connections (TCP) in flight.
    pub in_flight: u64,
    /// HTTP: responses sent to clients from this endpoint, including the 502
    /// and 504 the router made for it. TCP: connections. Always the
    /// histogram's count.
    pub requests: u64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx (HTTP only).
    pub status: [u64; 5],
    /// Connect failures, resets and timeouts (what counts toward ejection
    /// besides 5xx answers).
    pub failures: u64,
    /// Requests or connections that failed here and were retried elsewhere.
    pub retries: u64,
    pub ejections: u64,
    /// Time to response headers (HTTP) or to connect (TCP), per try here.
    pub latency: Histogram,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending ([`LATENCY_BOUNDS`]).
    pub bounds: &'static [f64],
    /// Not cumulative; one more than `bounds`, the last for +Inf.
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// An estimate of quantile `q` (0 to 1), interpolating linearly within
    /// its bucket as Prometheus does; `None` when empty. Beyond the last bound
    /// it answers the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else { return self.bounds.last().copied() };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                return Some(lower + (upper - lower) * ((rank - below as f64) / c as f64).clamp(0.0, 1.0));
            }
            below += c;
        }
        self.bounds.last().copied()
    }
}

/// Departed (id, revision) counters kept for [`Stats`], oldest dropped first.
pub const MAX_DEPARTED: usize = 1024;

/// The counters of one (id, revision), shared by every endpoint built for it
/// over the router's life.
pub(crate) struct Counters {
    pub id: String,
    pub revision: String,
    pub in_flight: AtomicUsize,
    status: [AtomicU64; 5],
    pub failures: AtomicU64,
    pub retries: AtomicU64,
    pub ejections: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

impl Counters {
    pub fn new(id: &str, revision: &str) -> Counters {
        Counters {
            id: id.to_string(),
            revision: revision.to_string(),
            in_flight: AtomicUsize::new(0),
            status: Default::default(),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            buckets: Default::default(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// One request or connection served: the histogram's count is the
    /// request count, so the two always agree.
    pub fn observe(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUND_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// A response sent to a client.
    pub fn response(&self, status: StatusCode, latency: Duration) {
        self.response_code(status.as_u16(), latency);
    }

    /// A response sent to a client, by its numeric status.
    pub fn response_code(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Relaxed);
        self.observe(latency);
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self, addr: SocketAddr, member: bool, ejected: bool) -> EndpointStats {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        EndpointStats {
            id: self.id.clone(),
            addr,
            revision: self.revision.clone(),
            member,
            ejected,
            in_flight: self.in_flight.load(Relaxed) as u64,
            requests: counts.iter().sum(),
            status: std::array::from_fn(|i| self.status[i].load(Relaxed)),
            failures: self.failures.load(Relaxed),
            retries: self.retries.load(Relaxed),
            ejections: self.ejections.load(Relaxed),
            latency: Histogram {
                bounds: &LATENCY_BOUNDS,
                counts,
                sum_seconds: Duration::from_nanos(self.sum_nanos.load(Relaxed)).as_secs_f64(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_bounds_match_the_published_ones() {
        for (seconds, nanos) in LATENCY_BOUNDS.iter().zip(BOUND_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
        assert!(LATENCY_BOUNDS.windows(2).all(|w| w[0] < w[1]));
        // Latency objectives people write are bounds, so their quantile is no interpolation.
        for objective in [0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0] {
            assert!(LATENCY_BOUNDS.contains(&objective), "{objective}");
        }
    }

    #[test]
    fn observations_land_in_their_bucket_and_classes_count() {
        let c = Counters::new("a", "r1");
        c.response(StatusCode::OK, Duration::from_micros(100));
        c.response(StatusCode::OK, Duration::from_micros(500)); // on a bound: that bucket (le)
        c.response(StatusCode::BAD_GATEWAY, Duration::from_millis(3));
        c.response(StatusCode::SWITCHING_PROTOCOLS, Duration::from_secs(60));
        let s = c.snapshot("127.0.0.1:1".parse().unwrap(), true, false);
        assert_eq!(s.requests, 4);
        assert_eq!(s.status, [1, 2, 0, 0, 1]);
        assert_eq!(s.latency.counts[0], 2);
        assert_eq!(s.latency.counts[3], 1);
        assert_eq!(s.latency.counts[BUCKETS - 1], 1, "past the last bound: +Inf");
        assert_eq!(s.latency.count(), 4);
        assert!((s.latency.sum_seconds - 60.0036).abs() < 1e-9, "{}", s.latency.sum_seconds);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut counts = vec![0; BUCKETS];
        counts[5] = 100; // (6 ms, 10 ms]
        let h = Histogram { bounds: &LATENCY_BOUNDS, counts, sum_seconds: 0.8 };
        assert!((h.quantile(0.5).unwrap() - 0.008).abs() < 1e-12);
        assert!((h.quantile(1.0).unwrap() - 0.010).abs() < 1e-12);
        let empty = Histogram { bounds: &LATENCY_BOUNDS, counts: vec![0; BUCKETS], sum_seconds: 0.0 };
        assert_eq!(empty.quantile(0.9), None);
        let mut counts = vec![0; BUCKETS];
        counts[BUCKETS - 1] = 1;
        let slow = Histogram { bounds: &LATENCY_BOUNDS, counts, sum_seconds: 99.0 };
        assert_eq!(slow.quantile(0.99), Some(30.0));
    }
}
