//! Canary analysis: the canary's and stable's requests over a sliding window, from the
//! router's cumulative per-revision counters, judged against the stack file's limits and
//! against each other. Pure: the rollout feeds it samples and acts on its verdicts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tug_proto::rollout::{Measured, Sample};
use tug_proto::stats::{Counters, Latency};

/// The fixed limits (`deploy.analysis`).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_error_rate: Option<f64>,
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
}

/// A canary worse than stable fails even under loose limits: its errors are too many to come
/// from an error rate [`ERROR_MARGIN`] above stable's (a one-sided binomial test, p below
/// [`SIGNIFICANCE`]), or its p99 is more than [`P99_FACTOR`] times stable's and at least
/// [`P99_MARGIN`] more.
pub const ERROR_MARGIN: f64 = 0.01;
pub const SIGNIFICANCE: f64 = 0.001;
pub const P99_FACTOR: f64 = 2.0;
pub const P99_MARGIN: Duration = Duration::from_millis(20);
/// Fewer requests than this on a side make its p99 too noisy to compare.
const P99_MIN_REQUESTS: u64 = 100;

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass(Measured),
    /// Too few canary requests to judge: not a pass.
    Wait(Measured, String),
    Fail(Measured, String),
}

/// Cumulative counters of both sides at one moment.
#[derive(Clone, Debug)]
struct Point {
    at: Instant,
    canary: Counters,
    stable: Counters,
}

/// The samples of the last `window`.
#[derive(Debug)]
pub struct Window {
    window: Duration,
    points: VecDeque<Point>,
}

impl Window {
    pub fn new(window: Duration) -> Window {
        Window { window: window.max(Duration::from_millis(500)), points: VecDeque::new() }
    }

    /// Records the cumulative counters now, forgetting what is older than the window (one
    /// point before it stays, as the base of the difference).
    pub fn record(&mut self, at: Instant, canary: Counters, stable: Counters) {
        self.points.push_back(Point { at, canary, stable });
        while self.points.len() > 2 && at.duration_since(self.points[1].at) >= self.window {
            self.points.pop_front();
        }
    }

    /// What happened within the window.
    pub fn measured(&self) -> Measured {
        let (Some(first), Some(last)) = (self.points.front(), self.points.back()) else {
            return Measured::default();
        };
        Measured {
            window_ms: last.at.duration_since(first.at).as_millis() as u64,
            canary: sample(&first.canary, &last.canary),
            stable: sample(&first.stable, &last.stable),
        }
    }

    pub fn judge(&self, limits: &Limits) -> Verdict {
        judge(self.measured(), limits)
    }
}

/// The difference of two cumulative counters as a sample.
fn sample(before: &Counters, after: &Counters) -> Sample {
    let requests = after.requests.saturating_sub(before.requests);
    let errors = (after.status.server_error + after.failures)
        .saturating_sub(before.status.server_error + before.failures)
        .min(requests.max(1));
    let mut latency =
        Latency { bounds: after.latency.bounds.clone(), counts: after.latency.counts.clone(), sum_seconds: 0.0 };
    if before.latency.bounds == after.latency.bounds {
        for (c, b) in latency.counts.iter_mut().zip(&before.latency.counts) {
            *c = c.saturating_sub(*b);
        }
    }
    Sample {
        requests,
        errors,
        error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
        p99_ms: latency.quantile(0.99).map(|s| s * 1000.0),
    }
}

pub fn judge(m: Measured, limits: &Limits) -> Verdict {
    let (c, s) = (&m.canary, &m.stable);
    if let Some(max) = limits.max_error_rate
        && c.requests >= limits.min_requests.max(1)
        && c.error_rate > max
    {
        let why = format!(
            "error rate {} over {} requests ({} errors) is above the limit {}",
            percent(c.error_rate),
            c.requests,
            c.errors,
            percent(max)
        );
        return Verdict::Fail(m, why);
    }
    if let (Some(max), Some(p99)) = (limits.max_p99, c.p99_ms)
        && c.requests >= limits.min_requests.max(1)
        && p99 > max.as_secs_f64() * 1000.0
    {
        let why = format!(
            "p99 {} over {} requests is above the limit {}",
            ms(p99),
            c.requests,
            ms(max.as_secs_f64() * 1000.0)
        );
        return Verdict::Fail(m, why);
    }
    // Against stable, when both sides have enough requests.
    if c.requests >= limits.min_requests.max(1) && s.requests >= limits.min_requests.max(1) {
        let tolerated = (s.error_rate + ERROR_MARGIN).min(1.0);
        if c.error_rate > tolerated && binomial_tail(c.requests, c.errors, tolerated) < SIGNIFICANCE {
            let why = format!(
                "error rate {} ({} of {}) is worse than stable's {} ({} of {})",
                percent(c.error_rate),
                c.errors,
                c.requests,
                percent(s.error_rate),
                s.errors,
                s.requests
            );
            return Verdict::Fail(m, why);
        }
        if let (Some(cp), Some(sp)) = (c.p99_ms, s.p99_ms)
            && c.requests >= P99_MIN_REQUESTS
            && s.requests >= P99_MIN_REQUESTS
            && cp > sp * P99_FACTOR
            && cp - sp >= P99_MARGIN.as_secs_f64() * 1000.0
        {
            let why = format!("p99 {} is more than {P99_FACTOR} times stable's {}", ms(cp), ms(sp));
            return Verdict::Fail(m, why);
        }
    }
    if c.requests < limits.min_requests {
        let why = format!("{} of the {} canary requests analysis needs so far", c.requests, limits.min_requests);
        return Verdict::Wait(m, why);
    }
    Verdict::Pass(m)
}

/// P(X >= k) for X ~ Binomial(n, p): how likely `k` or more errors in `n` requests are at the
/// error rate `p`. Summed in log space from `k` up until the terms stop mattering.
fn binomial_tail(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (nf, kf) = (n as f64, k as f64);
    // ln C(n, k) = sum over j of ln((n - k + j) / j).
    let ln_choose: f64 = (1..=k).map(|j| ((nf - kf + j as f64) / j as f64).ln()).sum();
    let mut ln_term = ln_choose + kf * p.ln() + (nf - kf) * (1.0 - p).ln();
    let mut total = 0.0;
    let ratio = (p / (1.0 - p)).ln();
    for i in k..=n {
        let term = ln_term.exp();
        total += term;
        if term < total * 1e-12 && (i as f64) > nf * p {
            break;
        }
        let i = i as f64;
        ln_term += ((nf - i) / (i + 1.0)).ln() + ratio;
    }
    total.min(1.0)
}

pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p != 0.0 && p < 1.0 { format!("{p:.2}%") } else { format!("{p:.1}%") }
}

fn ms(v: f64) -> String {
    format!("{v:.1}ms")
}

/// The counters of the requests that went to `revision` (canary) and to every other revision
/// (stable), summed over instances.
pub fn split(stats: &tug_proto::stats::StatsResponse, canary: &str) -> (Counters, Counters) {
    let mut c = Counters::default();
    let mut s = Counters::default();
    for service in &stats.services {
        for r in &service.revisions {
            let side = if r.revision == canary { &mut c } else { &mut s };
            side.add(&r.counters);
        }
    }
    (c, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(requests: u64, errors: u64, latency_counts: Vec<u64>) -> Counters {
        let mut c = Counters { requests, ..Counters::default() };
        c.status.server_error = errors;
        c.status.success = requests - errors;
        c.latency = Latency { bounds: vec![0.001, 0.01, 0.1, 1.0], counts: latency_counts, sum_seconds: 0.0 };
        c
    }

    fn limits(max_error_rate: Option<f64>, min_requests: u64) -> Limits {
        Limits { max_error_rate, max_p99: None, min_requests }
    }

    fn window(canary: (u64, u64), stable: (u64, u64)) -> Window {
        let t = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        w.record(t, counters(0, 0, vec![0; 4]), counters(0, 0, vec![0; 4]));
        w.record(
            t + Duration::from_secs(1),
            counters(canary.0, canary.1, vec![canary.0, 0, 0, 0]),
            counters(stable.0, stable.1, vec![stable.0, 0, 0, 0]),
        );
        w
    }

    #[test]
    fn too_few_requests_means_wait_not_pass() {
        let v = window((5, 0), (100, 0)).judge(&limits(Some(0.01), 20));
        assert!(matches!(v, Verdict::Wait(_, ref why) if why.contains("5 of the 20")), "{v:?}");
    }

    #[test]
    fn a_fixed_limit_fails_with_the_figures() {
        let v = window((100, 30), (900, 0)).judge(&limits(Some(0.001), 20));
        let Verdict::Fail(m, why) = v else { panic!("{v:?}") };
        assert_eq!((m.canary.requests, m.canary.errors), (100, 30));
        assert!(why.contains("30.0%") && why.contains("0.10%"), "{why}");
    }

    #[test]
    fn a_canary_worse_than_stable_fails_under_loose_limits() {
        let v = window((200, 20), (1800, 2)).judge(&limits(Some(0.5), 20));
        assert!(matches!(v, Verdict::Fail(_, ref why) if why.contains("stable")), "{v:?}");
        // As good as stable: passes.
        let v = window((200, 2), (1800, 18)).judge(&limits(Some(0.5), 20));
        assert!(matches!(v, Verdict::Pass(_)), "{v:?}");
        // Worse, but not significantly on so few requests.
        let v = window((20, 1), (1800, 0)).judge(&limits(None, 20));
        assert!(matches!(v, Verdict::Pass(_)), "{v:?}");
    }

    #[test]
    fn the_binomial_tail_matches_known_values() {
        assert!((binomial_tail(20, 1, 0.01) - (1.0 - 0.99f64.powi(20))).abs() < 1e-9);
        assert!((binomial_tail(10, 10, 0.5) - 0.5f64.powi(10)).abs() < 1e-12);
        assert_eq!(binomial_tail(10, 0, 0.3), 1.0);
        assert!(binomial_tail(100_000, 3000, 0.01) < 1e-100, "far in the tail, and fast");
        assert!((binomial_tail(100_000, 1000, 0.01) - 0.5).abs() < 0.02, "about the median");
    }

    #[test]
    fn p99_is_compared_with_the_limit_and_with_stable() {
        let t = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        w.record(t, counters(0, 0, vec![0; 4]), counters(0, 0, vec![0; 4]));
        w.record(
            t + Duration::from_secs(1),
            counters(200, 0, vec![0, 0, 200, 0]),
            counters(200, 0, vec![200, 0, 0, 0]),
        );
        let v = w.judge(&Limits { max_error_rate: None, max_p99: None, min_requests: 20 });
        assert!(matches!(v, Verdict::Fail(_, ref why) if why.contains("times stable")), "{v:?}");
        let v = w.judge(&Limits { max_error_rate: None, max_p99: Some(Duration::from_millis(50)), min_requests: 20 });
        assert!(matches!(v, Verdict::Fail(_, ref why) if why.contains("above the limit")), "{v:?}");
    }

    #[test]
    fn the_window_slides() {
        let t = Instant::now();
        let mut w = Window::new(Duration::from_secs(2));
        for s in 0..10u64 {
            w.record(
                t + Duration::from_secs(s),
                counters(s * 10, 0, vec![s * 10, 0, 0, 0]),
                counters(0, 0, vec![0; 4]),
            );
        }
        let m = w.measured();
        assert_eq!(m.canary.requests, 20, "two seconds of 10 a second");
        assert_eq!(m.window_ms, 2000);
    }
}
