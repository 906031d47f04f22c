//! The routing state: endpoints (one per backend, carrying its pools, its
//! ejection state and a handle on its counters) and what the policies pick
//! from, built once per membership change; and what every connection of a
//! listener shares.

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::balance::{self, Ring, RoundRobin};
use crate::budget::RetryBudget;
use crate::lifecycle::{Phase, Tracker};
use crate::stats::{Counters, EndpointStats, MAX_DEPARTED};
use crate::upstream::Outgoing;
use crate::{Backend, Config, MAX_CONNECT_ATTEMPTS, Policy};

/// An idle pooled HTTP/1 connection and the sweep tick at which it went idle.
pub(crate) struct Idle {
    pub conn: http1::SendRequest<Outgoing>,
    pub since: u64,
}

/// Pool sweeps per `pool_idle_timeout`: a connection is closed after between
/// one and 1.25 timeouts idle.
const SWEEPS_PER_IDLE_TIMEOUT: u64 = 4;

/// One backend as the router sees it. Survives membership changes that keep
/// its id, address and revision, so pools and ejection state carry over;
/// counters carry over across any change of the same (id, revision).
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    /// Left membership: pick no more, pool nothing more.
    retired: AtomicBool,
    /// Failures in a row; any other outcome resets it.
    consecutive_failures: AtomicU32,
    /// Milliseconds since the router's epoch until which it is ejected; 0 when
    /// not (cleared lazily once the time is up).
    ejected_until: AtomicU64,
    /// When its last ejection ended (or ends), in the same milliseconds.
    last_ejection_end: AtomicU64,
    /// Ejections since it last stayed in for `max_ejection`.
    ejection_streak: AtomicU32,
    /// Idle HTTP/1 connections, most recently used last.
    pub idle_h1: Mutex<Vec<Idle>>,
    /// The one multiplexed HTTP/2 connection, opened on first use.
    pub h2: Mutex<Option<http2::SendRequest<Outgoing>>>,
    /// Held while opening the HTTP/2 connection, so a burst of streams opens
    /// one connection rather than one each.
    pub h2_opening: tokio::sync::Mutex<()>,
    /// The sweep tick of its last use.
    pub h2_used: AtomicU64,
}

impl Endpoint {
    fn new(addr: SocketAddr, counters: Arc<Counters>) -> Endpoint {
        Endpoint {
            addr,
            counters,
            retired: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            last_ejection_end: AtomicU64::new(0),
            ejection_streak: AtomicU32::new(0),
            idle_h1: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_opening: tokio::sync::Mutex::new(()),
            h2_used: AtomicU64::new(0),
        }
    }

    pub fn id(&self) -> &str {
        &self.counters.id
    }

    pub fn revision(&self) -> &str {
        &self.counters.revision
    }

    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Relaxed)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    fn ejected_at(&self, now: u64) -> bool {
        self.ejected_until.load(Relaxed) > now
    }

    /// Stops new use: idle connections close now, the HTTP/2 connection once
    /// its streams in flight end.
    fn retire(&self) {
        self.retired.store(true, Relaxed);
        lock(&self.idle_h1).clear();
        lock(&self.h2).take();
    }

    /// Closes pooled connections idle since before `oldest` (a sweep tick).
    fn sweep(&self, oldest: u64) {
        lock(&self.idle_h1).retain(|idle| idle.since >= oldest);
        if self.h2_used.load(Relaxed) < oldest {
            lock(&self.h2).take();
        }
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
        endpoint.counters.in_flight.fetch_add(1, Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.counters.in_flight.fetch_sub(1, Relaxed);
    }
}

pub(crate) struct Table {
    endpoints: Vec<Arc<Endpoint>>,
    weights: Vec<u32>,
    /// Smooth weighted round-robin order of endpoint indices.
    order: Vec<u32>,
    ring: Ring,
}

impl Table {
    /// Endpoints for `backends` (weight 0 and repeated ids left out), reusing
    /// `old`'s endpoint for every backend whose id, address and revision are
    /// unchanged, and the ledger's counters for every (id, revision) it knows.
    pub fn build(backends: &[Backend], old: Option<&Table>, policy: &Policy, ledger: &mut Ledger) -> Table {
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::with_capacity(backends.len());
        let mut weights = Vec::with_capacity(backends.len());
        for b in backends {
            if b.weight == 0 || endpoints.iter().any(|e| e.id() == b.id) {
                continue;
            }
            let same = |e: &&Arc<Endpoint>| e.id() == b.id && e.addr == b.addr && e.revision() == b.revision;
            let endpoint = match old.and_then(|t| t.endpoints.iter().find(same)) {
                Some(kept) => kept.clone(),
                None => Arc::new(Endpoint::new(b.addr, ledger.counters(&b.id, &b.revision))),
            };
            endpoints.push(endpoint);
            weights.push(b.weight);
        }
        let ring = match policy {
            Policy::TenantHash { .. } => Ring::new(endpoints.iter().zip(&weights).map(|(e, &w)| (e.id(), w))),
            _ => Ring::default(),
        };
        let order = balance::weighted_order(&weights);
        Table { endpoints, weights, order, ring }
    }

    /// Retires every endpoint of `self` that `next` does not carry on.
    pub fn retire_missing(&self, next: &Table) {
        for e in &self.endpoints {
            if !next.endpoints.iter().any(|n| Arc::ptr_eq(n, e)) {
                e.retire();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    fn cost(&self, i: usize) -> (usize, u32) {
        (self.endpoints[i].in_flight(), self.weights[i])
    }
}

/// Every (id, revision) the router has counted: the current members, and the
/// most recent departed ones with their last address.
#[derive(Default)]
pub(crate) struct Ledger {
    members: Vec<Arc<Endpoint>>,
    departed: VecDeque<(Arc<Counters>, SocketAddr)>,
}

impl Ledger {
    /// The counters of (id, revision): a member's, a departed one's (it is
    /// back), or new ones.
    fn counters(&mut self, id: &str, revision: &str) -> Arc<Counters> {
        let same = |c: &Counters| c.id == id && c.revision == revision;
        if let Some(member) = self.members.iter().find(|e| same(&e.counters)) {
            return member.counters.clone();
        }
        if let Some(at) = self.departed.iter().position(|(c, _)| same(c)) {
            return self.departed.remove(at).map_or_else(|| Arc::new(Counters::new(id, revision)), |(c, _)| c);
        }
        Arc::new(Counters::new(id, revision))
    }

    /// Records `next` as the members; whoever is no longer among them departs.
    pub fn set_members(&mut self, next: &Table) {
        for e in &self.members {
            if !next.endpoints.iter().any(|n| Arc::ptr_eq(&n.counters, &e.counters)) {
                self.departed.push_back((e.counters.clone(), e.addr));
            }
        }
        while self.departed.len() > MAX_DEPARTED {
            self.departed.pop_front();
        }
        self.members.clone_from(&next.endpoints);
    }

    pub fn snapshot(&self, now: u64) -> Vec<EndpointStats> {
        let members = self.members.iter().map(|e| e.counters.snapshot(e.addr, true, e.ejected_at(now)));
        let departed = self.departed.iter().rev().map(|(c, addr)| c.snapshot(*addr, false, false));
        members.chain(departed).collect()
    }

    pub fn in_flight(&self, id: &str) -> usize {
        let members = self.members.iter().map(|e| &e.counters);
        let departed = self.departed.iter().map(|(c, _)| c);
        members.chain(departed).filter(|c| c.id == id).map(|c| c.in_flight.load(Relaxed)).sum()
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
    pub budget: RetryBudget,
    pub unrouted: AtomicU64,
    pub retries_denied: AtomicU64,
    /// Zero of the millisecond clock ejections are timed with.
    epoch: Instant,
    /// Serialises ejection decisions, so two cannot both take the last slot.
    eject_lock: Mutex<()>,
    pub ledger: Mutex<Ledger>,
    /// Pool sweeps so far: the coarse clock of pooled connections' idleness.
    pool_tick: AtomicU64,
    pub tracker: Arc<Tracker>,
    pub phase: watch::Receiver<Phase>,
}

impl Shared {
    pub fn new(
        table: watch::Receiver<Arc<Table>>,
        mut config: Config,
        ledger: Ledger,
        phase: watch::Receiver<Phase>,
    ) -> Shared {
        config.retry.max_attempts = config.retry.max_attempts.clamp(1, MAX_CONNECT_ATTEMPTS);
        Shared {
            table,
            budget: RetryBudget::new(&config.retry),
            config,
            rr: RoundRobin::default(),
            unrouted: AtomicU64::new(0),
            retries_denied: AtomicU64::new(0),
            epoch: Instant::now(),
            eject_lock: Mutex::new(()),
            ledger: Mutex::new(ledger),
            pool_tick: AtomicU64::new(0),
            tracker: Arc::default(),
            phase,
        }
    }

    /// Milliseconds since the epoch, from 1 (0 means "not ejected").
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Picks an endpoint by policy among those not yet tried, skipping ejected
    /// ones unless nothing else is left. `key` is a hashed tenant; `least`
    /// asks for least-connections rather than two random choices.
    pub fn select(&self, key: Option<u64>, tried: &Tried, least: bool) -> Option<Arc<Endpoint>> {
        self.select_among(key, tried, least).0
    }

    /// [`Shared::select`], and how many endpoints there were to choose from.
    pub fn select_among(&self, key: Option<u64>, tried: &Tried, least: bool) -> (Option<Arc<Endpoint>>, usize) {
        let table = self.table.borrow();
        (self.pick(&table, key, tried, least), table.len())
    }

    fn pick(&self, table: &Table, key: Option<u64>, tried: &Tried, least: bool) -> Option<Arc<Endpoint>> {
        let eps = &table.endpoints;
        let n = eps.len();
        // The clock is read only if some endpoint has an ejection on record.
        let now = Cell::new(0);
        let skipped_ejected = Cell::new(false);
        for allow_ejected in [false, true] {
            let usable = |i: usize| {
                let e = &eps[i];
                if tried.contains(e) {
                    return false;
                }
                let until = e.ejected_until.load(Relaxed);
                if allow_ejected || until == 0 {
                    return true;
                }
                if now.get() == 0 {
                    now.set(self.now_ms());
                }
                if until > now.get() {
                    skipped_ejected.set(true);
                    return false;
                }
                // Its time is up: back in, and the next check needs no clock.
                let _ = e.ejected_until.compare_exchange(until, 0, Relaxed, Relaxed);
                true
            };
            let found = match (&self.config.policy, key) {
                (Policy::TenantHash { .. }, Some(k)) => table.ring.walk(k).find(|&i| usable(i)),
                (Policy::LeastRequest, _) if least => {
                    balance::least(n, self.rr.pick(n)?, |i| usable(i).then(|| table.cost(i)))
                }
                (Policy::LeastRequest, _) => balance::p2c(&table.order, |i| table.cost(i))
                    .filter(|&i| usable(i))
                    .or_else(|| balance::least(n, self.rr.pick(n)?, |i| usable(i).then(|| table.cost(i)))),
                // A retry walks from a random turn: drawing turns would give
                // the endpoint that failed the next first try as well.
                _ if tried.len() > 0 => {
                    let len = table.order.len();
                    let start = (balance::random() % len.max(1) as u64) as usize;
                    (0..len).map(|k| table.order[(start + k) % len] as usize).find(|&i| usable(i))
                }
                _ => {
                    // An unusable turn draws the next turn rather than handing
                    // it to its neighbour in the order, so the neighbour does
                    // not get a double share while an endpoint is out.
                    let len = table.order.len();
                    let mut at = 0;
                    let mut found = None;
                    for _ in 0..len {
                        at = self.rr.pick(len)?;
                        let i = table.order[at] as usize;
                        if usable(i) {
                            found = Some(i);
                            break;
                        }
                    }
                    // Other requests' draws can interleave with ours: finish with a walk.
                    found.or_else(|| (1..=len).map(|k| table.order[(at + k) % len] as usize).find(|&i| usable(i)))
                }
            };
            if let Some(i) = found {
                return Some(eps[i].clone());
            }
            if !skipped_ejected.get() {
                break;
            }
        }
        None
    }

    /// An outcome that does not count against an endpoint: the run of
    /// failures is over.
    pub fn succeeded(&self, e: &Endpoint) {
        if e.consecutive_failures.load(Relaxed) != 0 {
            e.consecutive_failures.store(0, Relaxed);
        }
    }

    /// A 5xx answer, connect failure, reset or timeout: enough in a row eject
    /// the endpoint.
    pub fn failed(&self, e: &Endpoint) {
        let threshold = self.config.outlier.consecutive_failures;
        let run = e.consecutive_failures.fetch_add(1, Relaxed).saturating_add(1);
        if threshold > 0 && run >= threshold {
            self.try_eject(e);
        }
    }

    fn try_eject(&self, e: &Endpoint) {
        let _decision = lock(&self.eject_lock);
        let now = self.now_ms();
        if e.is_retired() || e.ejected_at(now) {
            return;
        }
        let table = self.table.borrow().clone();
        let ejected = table.endpoints.iter().filter(|x| x.ejected_at(now)).count();
        let percent = self.config.outlier.max_ejected_percent.min(100) as usize;
        if (ejected + 1) * 100 > percent * table.len() {
            return;
        }
        let outlier = &self.config.outlier;
        let max = duration_ms(outlier.max_ejection);
        let streak = if now.saturating_sub(e.last_ejection_end.load(Relaxed)) > max {
            1
        } else {
            e.ejection_streak.load(Relaxed).saturating_add(1)
        };
        let until = now + duration_ms(outlier.base_ejection).saturating_mul(u64::from(streak)).min(max);
        e.ejection_streak.store(streak, Relaxed);
        e.last_ejection_end.store(until, Relaxed);
        e.ejected_until.store(until, Relaxed);
        // It comes back with a clean run.
        e.consecutive_failures.store(0, Relaxed);
        Counters::bump(&e.counters.ejections);
    }

    /// The sweep tick a connection going idle now records.
    pub fn pool_tick(&self) -> u64 {
        self.pool_tick.load(Relaxed)
    }

    /// Marks the endpoint's HTTP/2 connection as used now (a write only when
    /// the tick moved, so busy endpoints do not bounce the cache line).
    pub fn touch_h2(&self, e: &Endpoint) {
        let tick = self.pool_tick();
        if e.h2_used.load(Relaxed) != tick {
            e.h2_used.store(tick, Relaxed);
        }
    }

    /// How often [`Shared::sweep`] should run.
    pub fn sweep_interval(&self) -> Duration {
        (self.config.pool_idle_timeout / SWEEPS_PER_IDLE_TIMEOUT as u32).max(Duration::from_millis(10))
    }

    /// Advances the pool clock and closes pooled connections idle for a full
    /// `pool_idle_timeout`.
    pub fn sweep(&self) {
        let tick = self.pool_tick.fetch_add(1, Relaxed) + 1;
        let Some(oldest) = tick.checked_sub(SWEEPS_PER_IDLE_TIMEOUT) else { return };
        let table = self.table.borrow().clone();
        for e in &table.endpoints {
            e.sweep(oldest);
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, port: u16, revision: &str) -> Backend {
        Backend { id: id.into(), addr: SocketAddr::from(([127, 0, 0, 1], port)), weight: 1, revision: revision.into() }
    }

    #[test]
    fn counters_follow_id_and_revision_across_rebuilds_and_departures() {
        let mut ledger = Ledger::default();
        let policy = Policy::RoundRobin;
        let first = Table::build(&[backend("a", 1, "r1"), backend("b", 2, "r1")], None, &policy, &mut ledger);
        ledger.set_members(&first);
        Counters::bump(&first.endpoints[0].counters.retries);
        // a moves to a new address: a new endpoint, the same counters.
        let second = Table::build(&[backend("a", 9, "r1"), backend("b", 2, "r1")], Some(&first), &policy, &mut ledger);
        ledger.set_members(&second);
        assert!(!Arc::ptr_eq(&first.endpoints[0], &second.endpoints[0]));
        assert!(Arc::ptr_eq(&first.endpoints[0].counters, &second.endpoints[0].counters));
        assert!(Arc::ptr_eq(&first.endpoints[1], &second.endpoints[1]), "b is unchanged");
        // a leaves, then comes back: counters continue.
        let third = Table::build(&[backend("b", 2, "r1")], Some(&second), &policy, &mut ledger);
        ledger.set_members(&third);
        let stats = ledger.snapshot(1);
        assert_eq!(stats.iter().map(|s| (s.id.as_str(), s.member)).collect::<Vec<_>>(), [("b", true), ("a", false)]);
        let fourth = Table::build(&[backend("a", 9, "r1"), backend("b", 2, "r2")], Some(&third), &policy, &mut ledger);
        ledger.set_members(&fourth);
        let stats = ledger.snapshot(1);
        let view: Vec<_> = stats.iter().map(|s| (s.id.as_str(), s.revision.as_str(), s.member, s.retries)).collect();
        assert_eq!(view, [("a", "r1", true, 1), ("b", "r2", true, 0), ("b", "r1", false, 0)]);
    }

    #[test]
    fn departed_counters_are_bounded() {
        let mut ledger = Ledger::default();
        let mut old: Option<Table> = None;
        for round in 0..(MAX_DEPARTED + 10) {
            let next =
                Table::build(&[backend("a", 1, &format!("r{round}"))], old.as_ref(), &Policy::RoundRobin, &mut ledger);
            ledger.set_members(&next);
            old = Some(next);
        }
        let stats = ledger.snapshot(1);
        assert_eq!(stats.len(), MAX_DEPARTED + 1);
        assert_eq!(stats[1].revision, format!("r{}", MAX_DEPARTED + 8), "most recent departure first");
    }

    #[test]
    fn in_flight_counts_members_and_departed_by_id() {
        let mut ledger = Ledger::default();
        let first = Table::build(&[backend("a", 1, "r1")], None, &Policy::RoundRobin, &mut ledger);
        ledger.set_members(&first);
        let held = InFlight::new(first.endpoints[0].clone());
        let second = Table::build(&[backend("a", 1, "r2")], Some(&first), &Policy::RoundRobin, &mut ledger);
        ledger.set_members(&second);
        let _also = InFlight::new(second.endpoints[0].clone());
        assert_eq!(ledger.in_flight("a"), 2);
        drop(held);
        assert_eq!(ledger.in_flight("a"), 1);
        assert_eq!(ledger.in_flight("b"), 0);
    }
}
