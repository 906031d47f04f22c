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
use crate::{Config, MAX_CONNECT_ATTEMPTS, Members, Policy};

/// An idle pooled HTTP/1 connection and the sweep tick at which it went idle.
pub(crate) struct Idle {
    pub conn: http1::SendRequest<Outgoing>,
    pub since: u64,
}

/// An idle pooled connection of the plain HTTP/1 path (`h1.rs`), which speaks to the
/// instance itself, and the sweep tick at which it went idle.
pub(crate) struct IdleStream {
    pub stream: TcpStream,
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
    /// Idle connections of the plain HTTP/1 path, most recently used last.
    pub idle_plain: Mutex<Vec<IdleStream>>,
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
            idle_plain: Mutex::new(Vec::new()),
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
        lock(&self.idle_plain).clear();
        lock(&self.h2).take();
    }

    /// Closes pooled connections idle since before `oldest` (a sweep tick).
    fn sweep(&self, oldest: u64) {
        lock(&self.idle_h1).retain(|idle| idle.since >= oldest);
        lock(&self.idle_plain).retain(|idle| idle.since >= oldest);
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
    /// Every endpoint: what the policies pick from when there is no split.
    all: Group,
    /// The two groups of a canary split in force: `None` without a split, and
    /// when either group would be empty (then the split changes nothing).
    split: Option<Groups>,
    /// The membership it was built from: a router whose table holds the latest one has
    /// nothing to catch up on.
    from: Arc<Members>,
}

/// Some of a table's endpoints, and what the policies need to pick among them
/// only. Built once per membership change; every index is into the table's
/// endpoints.
struct Group {
    /// The endpoints of the group, in table order.
    members: Vec<u32>,
    /// Smooth weighted round-robin order of the members.
    order: Vec<u32>,
    /// The members' own ring (tenant hash only): a tenant is sticky within its group.
    ring: Ring,
    /// Which of [`Shared`]'s round-robin counters the group turns.
    turns: usize,
}

/// A canary split as the table applies it.
struct Groups {
    /// Clamped to 0..=1000.
    permille: u16,
    stable: Group,
    canary: Group,
}

/// Round-robin counters: one for the whole table, one per group of a split, so
/// that each group's turns go round its own members evenly.
const ALL: usize = 0;
const STABLE: usize = 1;
const CANARY: usize = 2;

impl Group {
    /// The endpoints for which `member(i)` holds, with `weights`.
    fn new(weights: &[u32], ids: &[&str], policy: &Policy, turns: usize, member: impl Fn(usize) -> bool) -> Group {
        // Weight 0 leaves an endpoint out of the order and the ring, and keeps
        // the indices those return the table's.
        let weights: Vec<u32> = weights.iter().enumerate().map(|(i, &w)| if member(i) { w } else { 0 }).collect();
        let ring = match policy {
            Policy::TenantHash { .. } => Ring::new(ids.iter().copied().zip(weights.iter().copied())),
            _ => Ring::default(),
        };
        Group {
            members: (0..weights.len() as u32).filter(|&i| member(i as usize)).collect(),
            order: balance::weighted_order(&weights),
            ring,
            turns,
        }
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl Table {
    /// Endpoints for `members`' backends (weight 0 and repeated ids left out),
    /// reusing `old`'s endpoint for every backend whose id, address and
    /// revision are unchanged, and the ledger's counters for every (id,
    /// revision) it knows; and, for a split, each group's order and ring.
    pub fn build(members: &Arc<Members>, old: Option<&Table>, policy: &Policy, ledger: &mut Ledger) -> Table {
        let backends = &members.backends;
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
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id()).collect();
        let all = Group::new(&weights, &ids, policy, ALL, |_| true);
        let split = members.split.as_ref().and_then(|split| {
            let canary = |i: usize| endpoints[i].revision() == split.revision;
            let groups = Groups {
                permille: split.permille.min(balance::SPLIT_BUCKETS),
                stable: Group::new(&weights, &ids, policy, STABLE, |i| !canary(i)),
                canary: Group::new(&weights, &ids, policy, CANARY, canary),
            };
            (!groups.stable.is_empty() && !groups.canary.is_empty()).then_some(groups)
        });
        Table { endpoints, weights, all, split, from: members.clone() }
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

/// Endpoints already tried for one request; fixed size, no allocation. Also
/// the request's group in a split (`Some(true)`: canary), chosen at its first
/// pick, which its retries stay in first.
#[derive(Default)]
pub(crate) struct Tried {
    ptrs: [usize; MAX_CONNECT_ATTEMPTS],
    len: usize,
    canary: Option<bool>,
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
    /// Where new tables go, by [`Shared::follow_members`] only.
    tables: watch::Sender<Arc<Table>>,
    pub config: Config,
    /// Turns of round robin: over the whole table, and over each group of a split.
    rr: [RoundRobin; 3],
    /// Turns of a split among requests without a tenant key ([`balance::canary_turn`]).
    split_turns: AtomicU64,
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
    /// Auto mode: connections in a row whose instance spoke first (`detect`).
    pub server_first_streak: AtomicU32,
}

impl Shared {
    /// A router's state, its first table built from `members`.
    pub fn new(members: &Arc<Members>, mut config: Config, phase: watch::Receiver<Phase>) -> Shared {
        config.retry.max_attempts = config.retry.max_attempts.clamp(1, MAX_CONNECT_ATTEMPTS);
        let mut ledger = Ledger::default();
        let first = Table::build(members, None, &config.policy, &mut ledger);
        ledger.set_members(&first);
        let (tables, table) = watch::channel(Arc::new(first));
        Shared {
            table,
            tables,
            budget: RetryBudget::new(&config.retry),
            config,
            rr: Default::default(),
            split_turns: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            retries_denied: AtomicU64::new(0),
            epoch: Instant::now(),
            eject_lock: Mutex::new(()),
            ledger: Mutex::new(ledger),
            pool_tick: AtomicU64::new(0),
            tracker: Arc::default(),
            phase,
            server_first_streak: AtomicU32::new(0),
        }
    }

    /// Rebuilds the table from `members` unless it already holds them. Under the ledger's lock
    /// from the check to the new table, so the follow task and [`crate::Router::catch_up`] can
    /// both call it and the last table standing is always the newest membership's.
    pub fn follow_members(&self, members: &Arc<Members>) {
        let mut ledger = lock(&self.ledger);
        let old = self.table.borrow().clone();
        if Arc::ptr_eq(&old.from, members) {
            return;
        }
        let next = Table::build(members, Some(&old), &self.config.policy, &mut ledger);
        ledger.set_members(&next);
        old.retire_missing(&next);
        self.tables.send_replace(Arc::new(next));
    }

    /// Milliseconds since the epoch, from 1 (0 means "not ejected").
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Picks an endpoint by policy among those not yet tried, skipping ejected
    /// ones unless nothing else is left. `key` is a hashed tenant; `least`
    /// asks for least-connections rather than two random choices. With a
    /// split, the first pick of a request chooses its group (recorded in
    /// `tried`), and the policy picks in that group, or in the other if that
    /// one has nothing usable.
    pub fn select(&self, key: Option<u64>, tried: &mut Tried, least: bool) -> Option<Arc<Endpoint>> {
        self.select_among(key, tried, least).0
    }

    /// [`Shared::select`], and how many endpoints there were to choose from.
    pub fn select_among(&self, key: Option<u64>, tried: &mut Tried, least: bool) -> (Option<Arc<Endpoint>>, usize) {
        let table = self.table.borrow();
        (self.pick(&table, key, tried, least), table.len())
    }

    /// Whether a request goes to the canary of a split at `permille`: by its
    /// tenant's bucket if it has a key, else by taking the next turn.
    fn canary(&self, permille: u16, key: Option<u64>) -> bool {
        match key {
            Some(k) => balance::split_bucket(k) < permille,
            None => balance::canary_turn(self.split_turns.fetch_add(1, Relaxed), permille),
        }
    }

    fn pick(&self, table: &Table, key: Option<u64>, tried: &mut Tried, least: bool) -> Option<Arc<Endpoint>> {
        let (first, second) = match &table.split {
            None => (&table.all, None),
            Some(split) => {
                let canary = match tried.canary {
                    Some(canary) => canary,
                    None => *tried.canary.insert(self.canary(split.permille, key)),
                };
                if canary { (&split.canary, Some(&split.stable)) } else { (&split.stable, Some(&split.canary)) }
            }
        };
        let tried = &*tried;
        let eps = &table.endpoints;
        // The clock is read only if some endpoint has an ejection on record.
        let now = Cell::new(0);
        let skipped_ejected = Cell::new(false);
        // Ejected endpoints are the last resort: the other group's are not.
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
            let found = self
                .pick_in(table, first, key, tried, least, &usable)
                .or_else(|| self.pick_in(table, second?, key, tried, least, &usable));
            if let Some(i) = found {
                return Some(eps[i].clone());
            }
            if !skipped_ejected.get() {
                break;
            }
        }
        None
    }

    /// Picks by policy among `group`'s `usable` endpoints.
    fn pick_in(
        &self,
        table: &Table,
        group: &Group,
        key: Option<u64>,
        tried: &Tried,
        least: bool,
        usable: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let rr = &self.rr[group.turns];
        let members = &group.members;
        let n = members.len();
        let cost = |k: usize| {
            let i = members[k] as usize;
            usable(i).then(|| table.cost(i))
        };
        match (&self.config.policy, key) {
            (Policy::TenantHash { .. }, Some(k)) => group.ring.walk(k).find(|&i| usable(i)),
            (Policy::LeastRequest, _) if least => balance::least(n, rr.pick(n)?, cost).map(|k| members[k] as usize),
            (Policy::LeastRequest, _) => balance::p2c(&group.order, |i| table.cost(i))
                .filter(|&i| usable(i))
                .or_else(|| balance::least(n, rr.pick(n)?, cost).map(|k| members[k] as usize)),
            // A retry walks from a random turn: drawing turns would give
            // the endpoint that failed the next first try as well.
            _ if tried.len() > 0 => {
                let len = group.order.len();
                let start = (balance::random() % len.max(1) as u64) as usize;
                (0..len).map(|k| group.order[(start + k) % len] as usize).find(|&i| usable(i))
            }
            _ => {
                // An unusable turn draws the next turn rather than handing
                // it to its neighbour in the order, so the neighbour does
                // not get a double share while an endpoint is out.
                let len = group.order.len();
                let mut at = 0;
                for _ in 0..len {
                    at = rr.pick(len)?;
                    let i = group.order[at] as usize;
                    if usable(i) {
                        return Some(i);
                    }
                }
                // Other requests' draws can interleave with ours: finish with a walk.
                (1..=len).map(|k| group.order[(at + k) % len] as usize).find(|&i| usable(i))
            }
        }
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
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::{Backend, Split};

    fn backend(id: &str, port: u16, revision: &str) -> Backend {
        Backend { id: id.into(), addr: SocketAddr::from(([127, 0, 0, 1], port)), weight: 1, revision: revision.into() }
    }

    fn of(backends: &[Backend]) -> Arc<Members> {
        Arc::new(Members::from(backends.to_vec()))
    }

    #[test]
    fn counters_follow_id_and_revision_across_rebuilds_and_departures() {
        let mut ledger = Ledger::default();
        let policy = Policy::RoundRobin;
        let first = Table::build(&of(&[backend("a", 1, "r1"), backend("b", 2, "r1")]), None, &policy, &mut ledger);
        ledger.set_members(&first);
        Counters::bump(&first.endpoints[0].counters.retries);
        // a moves to a new address: a new endpoint, the same counters.
        let second =
            Table::build(&of(&[backend("a", 9, "r1"), backend("b", 2, "r1")]), Some(&first), &policy, &mut ledger);
        ledger.set_members(&second);
        assert!(!Arc::ptr_eq(&first.endpoints[0], &second.endpoints[0]));
        assert!(Arc::ptr_eq(&first.endpoints[0].counters, &second.endpoints[0].counters));
        assert!(Arc::ptr_eq(&first.endpoints[1], &second.endpoints[1]), "b is unchanged");
        // a leaves, then comes back: counters continue.
        let third = Table::build(&of(&[backend("b", 2, "r1")]), Some(&second), &policy, &mut ledger);
        ledger.set_members(&third);
        let stats = ledger.snapshot(1);
        assert_eq!(stats.iter().map(|s| (s.id.as_str(), s.member)).collect::<Vec<_>>(), [("b", true), ("a", false)]);
        let fourth =
            Table::build(&of(&[backend("a", 9, "r1"), backend("b", 2, "r2")]), Some(&third), &policy, &mut ledger);
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
            let next = Table::build(
                &of(&[backend("a", 1, &format!("r{round}"))]),
                old.as_ref(),
                &Policy::RoundRobin,
                &mut ledger,
            );
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
        let first = Table::build(&of(&[backend("a", 1, "r1")]), None, &Policy::RoundRobin, &mut ledger);
        ledger.set_members(&first);
        let held = InFlight::new(first.endpoints[0].clone());
        let second = Table::build(&of(&[backend("a", 1, "r2")]), Some(&first), &Policy::RoundRobin, &mut ledger);
        ledger.set_members(&second);
        let _also = InFlight::new(second.endpoints[0].clone());
        assert_eq!(ledger.in_flight("a"), 2);
        drop(held);
        assert_eq!(ledger.in_flight("a"), 1);
        assert_eq!(ledger.in_flight("b"), 0);
    }

    /// Split tests: a router's shared state over one table, with no listener.
    struct Router {
        shared: Shared,
    }

    impl Router {
        fn new(policy: Policy, members: &Members) -> Router {
            let (_phase, phases) = watch::channel(Phase::Serving);
            let config = Config { policy, ..Config::default() };
            Router { shared: Shared::new(&Arc::new(members.clone()), config, phases) }
        }

        fn set(&mut self, members: &Members) {
            self.shared.follow_members(&Arc::new(members.clone()));
        }

        fn tables(&self) -> Arc<Table> {
            self.shared.table.borrow().clone()
        }

        /// The id of a first pick.
        fn pick(&self, key: Option<u64>) -> String {
            self.shared.select(key, &mut Tried::default(), false).unwrap().id().to_string()
        }

        fn endpoint(&self, id: &str) -> Arc<Endpoint> {
            self.tables().endpoints.iter().find(|e| e.id() == id).unwrap().clone()
        }
    }

    /// Stable s0..s{stable-1} at r1, canary c0..c{canary-1} at r2, a split of `permille` to r2.
    fn canary(stable: usize, canary: usize, permille: u16) -> Members {
        let mut backends: Vec<Backend> = (0..stable).map(|i| backend(&format!("s{i}"), 100 + i as u16, "r1")).collect();
        backends.extend((0..canary).map(|i| backend(&format!("c{i}"), 200 + i as u16, "r2")));
        Members { backends, split: Some(Split { revision: "r2".into(), permille }) }
    }

    fn tenant(k: usize) -> u64 {
        balance::hash(format!("tenant-{k}").as_bytes())
    }

    fn tenant_hash() -> Policy {
        Policy::TenantHash { header: hyper::http::HeaderName::from_static("x-tenant") }
    }

    #[test]
    fn a_split_interleaves_requests_exactly_and_each_group_takes_turns() {
        let router = Router::new(Policy::RoundRobin, &canary(3, 1, 100));
        let picks: Vec<String> = (0..1000).map(|_| router.pick(None)).collect();
        let at: Vec<usize> = (0..1000).filter(|&n| picks[n] == "c0").collect();
        assert_eq!(at, (0..100).map(|k| 10 * k + 9).collect::<Vec<_>>(), "every tenth request, not in runs");
        for s in ["s0", "s1", "s2"] {
            assert_eq!(picks.iter().filter(|p| *p == s).count(), 300, "{s}");
        }
        // Least request picks within the group as well.
        let router = Router::new(Policy::LeastRequest, &canary(3, 2, 250));
        let canary_picks = (0..1000).filter(|_| router.pick(None).starts_with('c')).count();
        assert_eq!(canary_picks, 250);
        let least = |_: &i32| router.shared.select(None, &mut Tried::default(), true).unwrap().id().starts_with('c');
        assert_eq!((0..1000).filter(least).count(), 250, "least connections (TCP)");
    }

    #[test]
    fn a_split_with_an_empty_group_changes_nothing() {
        for members in [
            Members { split: Some(Split { revision: "r9".into(), permille: 500 }), ..canary(3, 0, 0) },
            canary(3, 0, 500),
            canary(0, 3, 0),
        ] {
            let router = Router::new(Policy::RoundRobin, &members);
            assert!(router.tables().split.is_none());
            let picks: Vec<String> = (0..6).map(|_| router.pick(None)).collect();
            assert_eq!(picks[..3], picks[3..]);
            assert_eq!(picks[..3].iter().collect::<BTreeSet<_>>().len(), 3, "{picks:?}");
        }
        // A canary of weight 0 (draining) is no canary.
        let mut members = canary(2, 1, 1000);
        members.backends[2].weight = 0;
        assert!(Router::new(Policy::RoundRobin, &members).tables().split.is_none());
        // More than 1000‰ is 1000‰.
        let router = Router::new(Policy::RoundRobin, &canary(2, 1, 5000));
        assert!((0..50).all(|_| router.pick(None) == "c0"));
    }

    #[test]
    fn tenants_are_canary_by_bucket_nested_as_the_share_rises_and_sticky_in_their_group() {
        let mut router = Router::new(tenant_hash(), &canary(3, 2, 100));
        let mut sets: Vec<BTreeSet<usize>> = Vec::new();
        let mut stable_owner: BTreeMap<usize, String> = BTreeMap::new();
        for permille in [100, 300, 600] {
            router.set(&canary(3, 2, permille));
            let mut set = BTreeSet::new();
            for k in 0..1000 {
                let owner = router.pick(Some(tenant(k)));
                assert!((0..3).all(|_| router.pick(Some(tenant(k))) == owner), "tenant-{k} moved");
                if owner.starts_with('c') {
                    set.insert(k);
                } else {
                    // A tenant that stays stable stays on the same instance.
                    assert_eq!(stable_owner.entry(k).or_insert_with(|| owner.clone()), &owner, "tenant-{k}");
                }
                assert_eq!(owner.starts_with('c'), balance::split_bucket(tenant(k)) < permille);
            }
            assert!(set.len().abs_diff(usize::from(permille)) < 60, "{} at {permille}", set.len());
            if let Some(before) = sets.last() {
                assert!(before.is_subset(&set), "a canary tenant went back to stable at {permille}");
            }
            sets.push(set);
        }
        // Both canary instances serve tenants: each group has its own ring.
        let owners: BTreeSet<String> = sets[2].iter().map(|&k| router.pick(Some(tenant(k)))).collect();
        assert_eq!(owners.len(), 2, "{owners:?}");
        // Which tenants are canary does not depend on the stable instances.
        router.set(&canary(2, 2, 600));
        let again: BTreeSet<usize> = (0..1000).filter(|&k| router.pick(Some(tenant(k))).starts_with('c')).collect();
        assert_eq!(again, sets[2]);
    }

    #[test]
    fn retries_stay_in_their_group_then_fall_back_to_the_other() {
        let router = Router::new(Policy::RoundRobin, &canary(2, 2, 1000));
        let mut tried = Tried::default();
        let mut order = Vec::new();
        while let Some(e) = router.shared.select(None, &mut tried, false) {
            tried.push(&e);
            order.push(e.id().to_string());
        }
        assert_eq!(order.len(), 4);
        assert!(order[..2].iter().all(|id| id.starts_with('c')) && order[2..].iter().all(|id| id.starts_with('s')));
        // A stable request's retry stays stable.
        let router = Router::new(Policy::RoundRobin, &canary(2, 2, 0));
        let mut tried = Tried::default();
        let first = router.shared.select(None, &mut tried, false).unwrap();
        tried.push(&first);
        assert!(router.shared.select(None, &mut tried, false).unwrap().id().starts_with('s'));
        // The group is the request's: a split changed under it does not move it.
        let mut router = Router::new(Policy::RoundRobin, &canary(2, 2, 0));
        let mut tried = Tried::default();
        let first = router.shared.select(None, &mut tried, false).unwrap();
        tried.push(&first);
        router.set(&canary(2, 2, 1000));
        assert!(router.shared.select(None, &mut tried, false).unwrap().id().starts_with('s'));
    }

    #[test]
    fn an_ejected_group_falls_back_to_the_other_before_ejected_endpoints_serve() {
        let router = Router::new(Policy::RoundRobin, &canary(2, 1, 1000));
        let far = router.shared.now_ms() + 60_000;
        router.endpoint("c0").ejected_until.store(far, Relaxed);
        assert!((0..10).all(|_| router.pick(None).starts_with('s')));
        // Everything ejected: the request's own group first.
        for s in ["s0", "s1"] {
            router.endpoint(s).ejected_until.store(far, Relaxed);
        }
        assert!((0..10).all(|_| router.pick(None) == "c0"));
        // 0‰: the canary serves only when stable has nothing usable.
        let router = Router::new(tenant_hash(), &canary(1, 1, 0));
        assert!((0..100).all(|k| router.pick(Some(tenant(k))) == "s0"));
        router.endpoint("s0").ejected_until.store(router.shared.now_ms() + 60_000, Relaxed);
        assert!((0..100).all(|k| router.pick(Some(tenant(k))) == "c0"));
    }

    #[test]
    fn the_ejection_cap_counts_every_endpoint_not_the_group() {
        // 50% of four is two: both canaries can be out at once, though each is
        // half of its group.
        let router = Router::new(Policy::RoundRobin, &canary(2, 2, 100));
        let now = router.shared.now_ms();
        for id in ["c0", "c1", "s0"] {
            let e = router.endpoint(id);
            for _ in 0..router.shared.config.outlier.consecutive_failures {
                router.shared.failed(&e);
            }
        }
        let out: Vec<bool> = ["c0", "c1", "s0"].iter().map(|id| router.endpoint(id).ejected_at(now)).collect();
        assert_eq!(out, [true, true, false]);
    }
}
