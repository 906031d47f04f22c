//! `GET /v1/stats`: the routers' counters, per service, per revision and per instance.
//!
//! Counters are cumulative from the router's start (they never go backwards, also when an
//! instance leaves), so a reader computes rates and windows from two snapshots, as Prometheus
//! does. Latency is the time to the response headers (HTTP) or to connect (TCP).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsResponse {
    pub services: Vec<ServiceStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceStats {
    pub service: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// Where the router listens (`host:port`).
    pub address: String,
    /// Requests or connections the router answered itself because no instance was ready.
    pub unrouted: u64,
    /// Retries the retry budget refused.
    pub retries_denied: u64,
    /// Connections closed at once because the port's connection limit was full.
    #[serde(default)]
    pub refused_connections: u64,
    /// Every instance together.
    pub total: Counters,
    /// Per revision, the newest first (by first appearance).
    pub revisions: Vec<RevisionStats>,
    pub instances: Vec<InstanceStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RevisionStats {
    pub revision: String,
    pub counters: Counters,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceStats {
    /// Unique across hosts: `<host>/<instance>`.
    pub instance: String,
    pub address: String,
    pub revision: String,
    /// Still in the router's membership (false: it left; its counters stay).
    pub member: bool,
    /// Ejected by outlier detection right now.
    pub ejected: bool,
    pub counters: Counters,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// HTTP: responses; TCP: connections.
    pub requests: u64,
    /// Responses by status class: `1xx` … `5xx`.
    pub status: StatusClasses,
    /// Connect failures, resets, timeouts.
    pub failures: u64,
    /// Requests that failed on an instance and were retried on another.
    pub retries: u64,
    pub ejections: u64,
    pub in_flight: u64,
    pub latency: Latency,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl StatusClasses {
    pub fn from_array(c: [u64; 5]) -> StatusClasses {
        StatusClasses { informational: c[0], success: c[1], redirection: c[2], client_error: c[3], server_error: c[4] }
    }

    pub fn add(&mut self, other: &StatusClasses) {
        self.informational += other.informational;
        self.success += other.success;
        self.redirection += other.redirection;
        self.client_error += other.client_error;
        self.server_error += other.server_error;
    }
}

/// A latency histogram: `counts[i]` observations at most `bounds[i]` seconds (and above the
/// previous bound); the last count is above every bound.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl Latency {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations (same bounds; a histogram with none takes the other's).
    pub fn add(&mut self, other: &Latency) {
        if self.bounds.is_empty() {
            self.bounds = other.bounds.clone();
            self.counts = vec![0; other.counts.len()];
        }
        if self.bounds == other.bounds {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
            self.sum_seconds += other.sum_seconds;
        }
    }

    /// The `q` quantile (0..=1) in seconds, interpolated linearly within its bucket, as
    /// Prometheus's `histogram_quantile` does; `None` without observations. Above the last
    /// bound it answers the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (seen + c) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else { return self.bounds.last().copied() };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = (rank - seen as f64) / c as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            seen += c;
        }
        self.bounds.last().copied()
    }
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.status.add(&other.status);
        self.failures += other.failures;
        self.retries += other.retries;
        self.ejections += other.ejections;
        self.in_flight += other.in_flight;
        self.latency.add(&other.latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let l = Latency { bounds: vec![0.001, 0.01, 0.1], counts: vec![50, 40, 10, 0], sum_seconds: 1.0 };
        assert_eq!(l.quantile(0.5), Some(0.001));
        let p90 = l.quantile(0.9).unwrap();
        assert!((p90 - 0.01).abs() < 1e-12, "{p90}");
        let p95 = l.quantile(0.95).unwrap();
        assert!((p95 - 0.055).abs() < 1e-9, "{p95}");
        assert_eq!(Latency::default().quantile(0.99), None);
        let over = Latency { bounds: vec![0.001], counts: vec![0, 3], sum_seconds: 9.0 };
        assert_eq!(over.quantile(0.5), Some(0.001));
    }

    #[test]
    fn counters_add_up() {
        let one = Counters {
            requests: 3,
            status: StatusClasses::from_array([0, 2, 0, 0, 1]),
            latency: Latency { bounds: vec![0.1], counts: vec![2, 1], sum_seconds: 0.5 },
            ..Counters::default()
        };
        let mut total = Counters::default();
        total.add(&one);
        total.add(&one);
        assert_eq!(total.requests, 6);
        assert_eq!(total.status.server_error, 2);
        assert_eq!(total.latency.counts, vec![4, 2]);
        let json = serde_json::to_value(&total.status).unwrap();
        assert_eq!(json["5xx"], 2);
    }
}
