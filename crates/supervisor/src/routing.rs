//! The services' stable addresses: a router on each proxied `port`, the registry that tells it
//! which instances are ready on every host, and this host's entries in that registry.
//!
//! Local instances reach this host's routers directly from the table (so a readiness change
//! or a drain is seen at once, and a registry outage never hides this host's own instances);
//! other hosts' instances come from the registry. A heartbeat task registers this host's
//! entries every [`tug_registry::Config::heartbeat`], and at once when one changes; a host that
//! dies leaves the fleet when its entries' TTL passes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tug_proto::spec::{Balance, Kind, Protocol, RouteSpec, ServiceSpec};
use tug_proto::stats::{Counters, InstanceStats, Latency, RevisionStats, ServiceStats, StatsResponse, StatusClasses};
use tug_proto::status::{RegistryStatus, State};
use tug_registry::{AnyRegistry, Entry, Membership, Registry, Status};
use tug_router::{Backend, Members, Router, Split};

use crate::Inner;

/// With a shared registry, how long a drained instance keeps running after it left this
/// host's membership, so the other hosts' routers see it leave before it stops.
const REMOTE_PROPAGATION: Duration = Duration::from_millis(300);

/// The longest a router being replaced (or `down`) waits for its requests in flight.
const MAX_ROUTER_GRACE_MS: u64 = 30_000;

pub(crate) struct Routing {
    /// The advertised address: routers and instances bind it, entries carry it.
    host: String,
    ip: IpAddr,
    state: Mutex<RoutingState>,
    /// Wakes the heartbeat task: an entry changed.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct RoutingState {
    /// The stack's `listen:` address, when it sets one: the routers bind it instead of the
    /// advertised address.
    listen: Option<IpAddr>,
    attached: Option<Attached>,
    fronts: HashMap<String, Front>,
    /// This host's entries, as last computed from the table.
    local: Vec<Entry>,
    /// The registry's membership, as last seen.
    membership: Arc<Membership>,
    /// The last registration's error, if it failed.
    register_error: Option<String>,
    /// Which of a service's instances its routers send to (by front key); `All` when absent.
    selections: HashMap<String, Selection>,
    /// The task that keeps this host's entries (and its routers) in step with the table runs.
    following_table: bool,
    data_plane: Option<Arc<DataPlane>>,
    /// Client connections every router of the daemon may hold together (made with the data
    /// plane, from the open-files limit).
    connection_budget: Option<Arc<tug_router::ConnectionLimit>>,
}

/// Once thousands of connections have closed (a flood, a load test), gives the memory their
/// buffers took back to the system: freed, it stays in the allocator's arenas otherwise, and
/// a daemon that held 20,000 connections kept ~450 MB for minutes.
async fn return_memory_after_floods(budget: std::sync::Weak<tug_router::ConnectionLimit>) {
    const CLOSED: usize = 1000;
    let mut high = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(budget) = budget.upgrade() else { return };
        let open = budget.open();
        high = high.max(open);
        if high - open >= CLOSED {
            high = open;
            // SAFETY: malloc_trim only releases free memory; it has no preconditions.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}

/// Descriptors kept out of the routers' reach: the control socket and endpoint (256
/// connections each), instances' pipes, log files and cgroup files, probes and spawns.
fn reserved_descriptors(limit: usize) -> usize {
    1024 + limit / 8
}

/// How many client connections all routers together may hold: each costs two descriptors
/// (the client's and, while a request is in flight, the instance's), within what the
/// open-files limit leaves once the daemon's own needs are reserved.
fn connection_budget() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid pointer.
    let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX).min(1 << 24)
    } else {
        1024
    };
    (files.saturating_sub(reserved_descriptors(files)) / 2).max(16)
}

struct Attached {
    /// `None` for the embedded registry, else its URL.
    setting: Option<String>,
    /// What may be shown of it.
    location: String,
    registry: Arc<AnyRegistry>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Which ready instances of a service a router sends requests to: a rollout's lever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every ready instance, whatever its revision.
    All,
    /// Only those of one revision (blue-green: the active set; a preview port: the new one).
    Only(String),
    /// A canary: `permille` thousandths of requests to instances of `canary`, the rest to the
    /// others.
    Split { canary: String, permille: u16 },
}

/// The key of a service's preview front (`deploy.preview_port`): `@` is never in a service name.
fn preview_key(service: &str) -> String {
    format!("{service}@preview")
}

struct Front {
    /// The service it fronts (the map's key is this, or its preview key).
    service: String,
    ip: IpAddr,
    port: u16,
    route: RouteSpec,
    /// The socket bound at `up`: each router serves a clone of it, so replacing the router
    /// (a changed `balance` or `router:`) never refuses a connection.
    listener: std::net::TcpListener,
    /// One router per data-plane thread, all accepting on clones of `listener`.
    routers: Vec<Router>,
    members: watch::Sender<Arc<Members>>,
    /// Grace for a retired router's requests in flight (the service's stop grace period).
    grace: Duration,
}

impl Front {
    /// Stops this front's router gracefully, in the background: no new connections, HTTP/1
    /// connections close after their response, HTTP/2 clients get GOAWAY, what is in flight
    /// finishes within the grace period. Its membership stays as it was meanwhile.
    fn retire(self) {
        let Front { routers, members, grace, listener, .. } = self;
        drop(listener);
        tokio::spawn(async move {
            shut_down_all(routers, grace).await;
            drop(members);
        });
    }

    fn in_flight(&self, id: &str) -> usize {
        self.routers.iter().map(|r| r.in_flight(id)).sum()
    }
}

async fn shut_down_all(routers: Vec<Router>, grace: Duration) {
    let tasks: Vec<_> = routers.into_iter().map(|r| tokio::spawn(r.shutdown(grace))).collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// The threads that carry the routers' traffic: one single-threaded runtime per core, each
/// with its own connections and pools, as nginx's workers. Measured against the daemon's own
/// multi-threaded runtime (bench/router.sh, wrk -c64): 0.88x nginx's requests a second instead
/// of 0.57x, because a request never hops between threads. Started with the first router; they live as
/// long as the daemon.
struct DataPlane {
    handles: Vec<tokio::runtime::Handle>,
}

impl DataPlane {
    fn start() -> Result<DataPlane, String> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
        let mut handles = Vec::with_capacity(threads);
        for n in 0..threads {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("tug-router-{n}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                })
                .map_err(|e| format!("cannot start a router thread: {e}"))?;
            let handle = rx.recv().map_err(|_| "a router thread ended at once".to_string())??;
            handles.push(handle);
        }
        Ok(DataPlane { handles })
    }
}

impl Routing {
    pub fn new(host: &str) -> Routing {
        // The daemon checked the advertised address (`parse_advertise`) before it got here.
        let ip = host.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Routing {
            host: host.to_string(),
            ip,
            state: Mutex::new(RoutingState::default()),
            wake: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoutingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry id of a local instance: unique across hosts.
    pub fn entry_id(&self, instance: &str) -> String {
        format!("{}/{instance}", self.host)
    }

    /// Opens the stack's registry (`None`: embedded) unless it is the one in use, and starts
    /// following it; answers a warning the user should see, if any. Must run inside the runtime.
    pub fn attach(&self, inner: &Arc<Inner>, setting: Option<&str>, project: &str) -> Result<Option<String>, String> {
        {
            let state = self.lock();
            if state.attached.as_ref().is_some_and(|a| a.setting.as_deref() == setting) {
                return Ok(None);
            }
        }
        let registry = AnyRegistry::open(setting, project, tug_registry::Config::default())
            .map_err(|e| format!("registry: {e}"))?;
        let location = match &registry {
            AnyRegistry::Embedded(_) => "embedded".to_string(),
            AnyRegistry::Redis(r) => r.url().to_string(),
        };
        // Other hosts would send this host's traffic to their own loopback.
        let warning = match &registry {
            AnyRegistry::Redis(r) if self.ip.is_loopback() && !is_loopback_host(&r.url().host) => Some(format!(
                "this host advertises {}, a loopback address, in a registry other hosts may share ({location}): \
                 start it with `tug up --advertise ADDR` (an address the others reach) for a fleet",
                self.host
            )),
            _ => None,
        };
        let registry = Arc::new(registry);
        let previous = {
            let mut state = self.lock();
            state.membership = Arc::new(Membership::default());
            state.register_error = None;
            if !state.following_table {
                state.following_table = true;
                tokio::spawn(follow_table(Arc::downgrade(inner)));
            }
            state.attached.take()
        };
        // Spawned once the old membership is gone, so the new registry's first one stays.
        let tasks = vec![
            tokio::spawn(heartbeat(Arc::downgrade(inner), registry.clone())),
            tokio::spawn(follow(Arc::downgrade(inner), registry.clone())),
        ];
        self.lock().attached = Some(Attached { setting: setting.map(str::to_string), location, registry, tasks });
        // The old registry forgets this host's entries (best effort: it may be unreachable).
        if let Some(old) = previous {
            let ids: Vec<String> = self.lock().local.iter().map(|e| e.instance.clone()).collect();
            let registry = old.registry.clone();
            drop(old);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), registry.deregister(&ids)).await;
            });
        }
        Ok(warning)
    }

    pub fn holds(&self, service: &str, port: u16) -> bool {
        self.lock().fronts.get(service).is_some_and(|f| f.port == port)
    }

    /// Serves `spec`'s port through a router (binding it now, so a taken port is reported before
    /// any instance starts), or keeps the one that already does with the same settings. New
    /// settings on the same port get a new router on the same socket; the old one drains.
    /// Where the routers listen from now on (`None`: the advertised address). It must let the
    /// advertised address reach them: every interface, or that address itself.
    pub fn set_listen(&self, listen: Option<&str>) -> Result<(), String> {
        let ip = self.parse_listen(listen)?;
        self.lock().listen = ip;
        Ok(())
    }

    /// The stack's `listen`, checked as [`Routing::set_listen`] takes it.
    fn parse_listen(&self, listen: Option<&str>) -> Result<Option<IpAddr>, String> {
        let Some(text) = listen else { return Ok(None) };
        let ip: IpAddr = text.parse().map_err(|_| format!("listen: `{text}` is not an IP address"))?;
        if !ip.is_unspecified() && ip != self.ip {
            return Err(format!(
                "listen: {ip}: instances and other hosts reach the routers at the advertised address {}; \
                 listen on every interface (0.0.0.0) or on {} itself",
                self.ip, self.ip
            ));
        }
        Ok(Some(ip))
    }

    /// How many ports the routers serve.
    pub fn fronts(&self) -> usize {
        self.lock().fronts.len()
    }

    /// The address the routers bind.
    pub fn listen_ip(&self) -> IpAddr {
        self.lock().listen.unwrap_or(self.ip)
    }

    /// The address the routers would bind with the stack's `listen` set to `listen`.
    pub fn listen_ip_for(&self, listen: Option<&str>) -> Result<IpAddr, String> {
        Ok(self.parse_listen(listen)?.unwrap_or(self.ip))
    }

    pub fn open(&self, spec: &ServiceSpec) -> Result<(), String> {
        let Some(port) = spec.port else { return Ok(()) };
        self.open_front(&spec.name, spec, port)
    }

    /// Serves the instances of `spec`'s revision alone on `port` (blue-green's `preview_port`).
    pub fn open_preview(&self, spec: &ServiceSpec, port: u16) -> Result<(), String> {
        let key = preview_key(&spec.name);
        self.lock().selections.insert(key.clone(), Selection::Only(spec.revision.clone()));
        let opened = self.open_front(&key, spec, port);
        if opened.is_err() {
            self.lock().selections.remove(&key);
        }
        opened
    }

    pub fn close_preview(&self, service: &str) {
        let key = preview_key(service);
        let front = {
            let mut state = self.lock();
            state.selections.remove(&key);
            state.fronts.remove(&key)
        };
        if let Some(front) = front {
            front.retire();
        }
    }

    /// Sets which instances of `service` its routers send to, at once (one membership change
    /// per router: the switch of a blue-green deploy is atomic).
    ///
    /// This host's entries are first brought up to date with the table: a rollout decides on
    /// the table (the new instances are ready), and the task that follows the table may not
    /// have run yet. Without this, the selection was published over entries where the instances
    /// it selects were not ready yet: a canary step got no traffic for a moment, and a
    /// blue-green switch whose new set had just become ready could leave no member (503).
    pub fn select(&self, inner: &Inner, service: &str, selection: Selection) {
        if self.refresh_local(inner) {
            self.wake.notify_one();
        }
        let mut state = self.lock();
        if selection == Selection::All {
            state.selections.remove(service);
        } else {
            state.selections.insert(service.to_string(), selection);
        }
        publish(&state, &self.host);
    }

    fn open_front(&self, name: &String, spec: &ServiceSpec, port: u16) -> Result<(), String> {
        let mut config = router_config(&spec.route)?;
        let protocol = match spec.route.protocol {
            Protocol::Http => tug_router::Protocol::Http,
            Protocol::Tcp => tug_router::Protocol::Tcp,
            Protocol::Auto => tug_router::Protocol::Auto,
        };
        let grace = Duration::from_millis(spec.stop_grace_ms.min(MAX_ROUTER_GRACE_MS));
        let mut state = self.lock();
        let ip = state.listen.unwrap_or(self.ip);
        let addr = SocketAddr::new(ip, port);
        let (listener, old) = match state.fronts.remove(name) {
            Some(front) if front.ip == ip && front.port == port && front.route == spec.route => {
                state.fronts.insert(name.clone(), front);
                return Ok(());
            }
            Some(front) if front.ip == ip && front.port == port => {
                let listener = front.listener.try_clone().map_err(|e| format!("cannot reuse {addr}: {e}"))?;
                (listener, Some(front))
            }
            Some(front) if front.port == port => match rebind(&front.listener, addr) {
                Ok(listener) => (listener, Some(front)),
                Err(e) => {
                    state.fronts.insert(name.clone(), front);
                    return Err(format!("cannot listen on {addr} for `{name}`: {e}"));
                }
            },
            other => {
                let listener =
                    std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr} for `{name}`: {e}"));
                match listener {
                    Ok(listener) => (listener, other),
                    Err(e) => {
                        if let Some(front) = other {
                            state.fronts.insert(name.clone(), front);
                        }
                        return Err(e);
                    }
                }
            }
        };
        let data_plane = match &state.data_plane {
            Some(plane) => plane.clone(),
            None => {
                let plane = Arc::new(DataPlane::start()?);
                state.data_plane = Some(plane.clone());
                plane
            }
        };
        // One port may take half of the daemon's budget, so a flood on one leaves the others
        // room; its routers (one a thread) share its limit.
        let budget = state
            .connection_budget
            .get_or_insert_with(|| {
                let budget = tug_router::ConnectionLimit::new(connection_budget());
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(return_memory_after_floods(Arc::downgrade(&budget)));
                }
                budget
            })
            .clone();
        config.connections = tug_router::ConnectionLimit::within((budget.max() / 2).max(1), &budget);
        // Members are computed and the front inserted under one lock, so no publish is missed.
        let (members, rx) = watch::channel(Arc::new(members_of(&state, &self.host, name, &spec.name)));
        let mut routers = Vec::with_capacity(data_plane.handles.len());
        for handle in &data_plane.handles {
            // The router's tasks are spawned on that thread's runtime.
            let _on_that_thread = handle.enter();
            match listener.try_clone().and_then(|l| Router::serve(l, protocol, config.clone(), rx.clone())) {
                Ok(router) => routers.push(router),
                Err(e) => {
                    if let Some(front) = old {
                        state.fronts.insert(name.clone(), front);
                    }
                    return Err(format!("cannot listen on {addr} for `{name}`: {e}"));
                }
            }
        }
        let front = Front {
            service: spec.name.clone(),
            ip,
            port,
            route: spec.route.clone(),
            listener,
            routers,
            members,
            grace,
        };
        state.fronts.insert(name.clone(), front);
        drop(state);
        if let Some(old) = old {
            old.retire();
        }
        Ok(())
    }

    /// Stops serving `service`'s port: no new connections; requests in flight finish.
    pub fn close(&self, service: &str) {
        let front = {
            let mut state = self.lock();
            state.selections.remove(service);
            state.fronts.remove(service)
        };
        if let Some(front) = front {
            front.retire();
        }
        self.close_preview(service);
    }

    /// `down`: every router stops accepting, HTTP/2 clients get GOAWAY, and what is in flight
    /// has `grace` to finish.
    /// TCP connections are cut when their instances stop, so their routers do not wait.
    pub async fn shutdown(&self) {
        let fronts: Vec<Front> = self.lock().fronts.drain().map(|(_, f)| f).collect();
        let mut tasks = Vec::new();
        for front in fronts {
            let grace = if front.route.protocol == Protocol::Tcp { Duration::ZERO } else { front.grace };
            let Front { routers, members, .. } = front;
            tasks.push(tokio::spawn(async move {
                shut_down_all(routers, grace).await;
                drop(members);
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Leaves the registry: this host's entries are removed (a clean exit; a crash leaves them to
    /// their TTL) and the heartbeat stops.
    pub async fn leave(&self) {
        let (attached, ids) = {
            let mut state = self.lock();
            let ids: Vec<String> = state.local.drain(..).map(|e| e.instance).collect();
            (state.attached.take(), ids)
        };
        if let Some(attached) = attached {
            let registry = attached.registry.clone();
            drop(attached);
            if !ids.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(2), registry.deregister(&ids)).await;
            }
        }
    }

    /// Takes `instance` out of every router (it is `stopping`, so not ready) and waits until
    /// the requests this host's router has in flight on it are done, at most half of `grace`
    /// (the stop signal gets the rest). Returns how long it waited. A TCP service is not waited
    /// for: a pooled client connection never ends by itself, and it cannot move.
    pub async fn drain(&self, inner: &Inner, instance: &str, service: &str, grace: Duration) -> Duration {
        let started = Instant::now();
        let id = self.entry_id(instance);
        self.refresh_local(inner);
        let (shared, http) = {
            let state = self.lock();
            let shared = state.attached.as_ref().is_some_and(|a| a.setting.is_some());
            // Auto: requests (and connections served as TCP) in flight are waited for alike.
            let http = state.fronts.get(service).is_some_and(|f| f.route.protocol != Protocol::Tcp);
            (shared, http)
        };
        self.wake.notify_one();
        if !http {
            return started.elapsed();
        }
        let deadline = started + grace / 2;
        loop {
            let busy: usize =
                self.lock().fronts.values().filter(|f| f.service == service).map(|f| f.in_flight(&id)).sum();
            if busy == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if shared {
            tokio::time::sleep_until((started + REMOTE_PROPAGATION).min(deadline)).await;
        }
        started.elapsed()
    }

    /// Recomputes this host's entries from the table and hands the routers their new members.
    /// True when the entries changed.
    pub fn refresh_local(&self, inner: &Inner) -> bool {
        let entries = local_entries(inner, self);
        let mut state = self.lock();
        if state.local == entries {
            return false;
        }
        state.local = entries;
        publish(&state, &self.host);
        true
    }

    pub fn registry_status(&self) -> Option<RegistryStatus> {
        let state = self.lock();
        let attached = state.attached.as_ref()?;
        let m = &state.membership;
        let (status, error) = match (&m.status, &state.register_error) {
            (Status::Stale(e), _) => ("stale", Some(e.clone())),
            (_, Some(e)) => ("stale", Some(e.clone())),
            (Status::Pending, None) => ("pending", None),
            (Status::Live, None) => ("live", None),
        };
        let mut hosts: Vec<&str> = m.entries.iter().map(|e| e.host.as_str()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        Some(RegistryStatus {
            location: attached.location.clone(),
            state: status.to_string(),
            error,
            entries: m.entries.len(),
            hosts: hosts.len(),
        })
    }

    /// Every router's counters, per service, revision and instance.
    pub fn stats(&self, only: Option<&str>) -> StatsResponse {
        let state = self.lock();
        let mut names: Vec<&String> = state
            .fronts
            .iter()
            .filter(|(key, f)| **key == f.service && only.is_none_or(|o| o == key.as_str()))
            .map(|(key, _)| key)
            .collect();
        names.sort();
        let services = names
            .into_iter()
            .map(|name| {
                let front = &state.fronts[name];
                service_stats(name, front)
            })
            .collect();
        StatsResponse { services }
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn router_config(route: &RouteSpec) -> Result<tug_router::Config, String> {
    let policy = match route.balance {
        Balance::RoundRobin => tug_router::Policy::RoundRobin,
        Balance::LeastRequest => tug_router::Policy::LeastRequest,
        Balance::TenantHash => {
            let header = route.tenant_header.as_deref().unwrap_or("x-tenant-id");
            let header = hyper::http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("`{header}` is not a valid header name for tenant_header"))?;
            tug_router::Policy::TenantHash { header }
        }
    };
    Ok(tug_router::Config {
        policy,
        connect_timeout: Duration::from_millis(route.connect_timeout_ms.max(1)),
        request_timeout: Duration::from_millis(route.request_timeout_ms.max(1)),
        max_connection_age: route.max_connection_age_ms.map(Duration::from_millis),
        ..tug_router::Config::default()
    })
}

/// The same port on another address (`listen` changed): 0.0.0.0 and 127.0.0.1 overlap, so the
/// old listener lets go first. `shutdown` stops it listening in every router's copy at once (the
/// connections it accepted go on, and drain with its retired front), then the new address is
/// bound; if that fails, the old one listens again. A connection attempt in between is refused.
fn rebind(old: &std::net::TcpListener, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let old = socket2::SockRef::from(old);
    old.shutdown(std::net::Shutdown::Both)?;
    std::net::TcpListener::bind(addr).inspect_err(|_| {
        let _ = old.listen(1024);
    })
}

/// This host's entries: every service instance with a port and a process. Ready means
/// `healthy`, or `running` for a service without a healthcheck.
fn local_entries(inner: &Inner, routing: &Routing) -> Vec<Entry> {
    let table = inner.lock();
    let mut entries: Vec<Entry> = table
        .instances
        .values()
        .filter_map(|row| {
            let status = &row.status;
            let spec = table.services.get(&status.service)?.spec.clone();
            if spec.kind != Kind::Service || status.pid.is_none() {
                return None;
            }
            let port = status.port?;
            let ready = match status.state {
                State::Healthy => true,
                State::Running => spec.healthcheck.is_none(),
                _ => false,
            };
            Some(Entry {
                service: status.service.clone(),
                instance: routing.entry_id(&status.instance),
                host: routing.host.clone(),
                address: SocketAddr::new(routing.ip, port),
                revision: status.revision.clone(),
                ready,
                weight: 1,
            })
        })
        .collect();
    entries.sort_by(|a, b| a.instance.cmp(&b.instance));
    entries
}

/// The members of the front `key` (of `service`): its ready instances, this host's and the
/// registry's, as the front's selection picks them.
fn members_of(state: &RoutingState, host: &str, key: &str, service: &str) -> Members {
    let selection = state.selections.get(key).unwrap_or(&Selection::All);
    let local = state.local.iter();
    let remote = state.membership.entries.iter().filter(|e| e.host != host);
    let backends = local
        .chain(remote)
        .filter(|e| e.service == service && e.ready && e.weight > 0)
        .filter(|e| match selection {
            Selection::Only(revision) => &e.revision == revision,
            _ => true,
        })
        .map(|e| Backend { id: e.instance.clone(), addr: e.address, weight: e.weight, revision: e.revision.clone() })
        .collect();
    let split = match selection {
        Selection::Split { canary, permille } => Some(Split { revision: canary.clone(), permille: *permille }),
        _ => None,
    };
    Members { backends, split }
}

/// Hands every router its members, waking it only when they changed, and has each route by
/// them before returning: what the status calls ready right after, the routers already hold.
fn publish(state: &RoutingState, host: &str) {
    for (key, front) in &state.fronts {
        let next = members_of(state, host, key, &front.service);
        let changed = front.members.send_if_modified(|current| {
            if **current == next {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
        if changed {
            front.routers.iter().for_each(Router::catch_up);
        }
    }
}

/// Registers this host's entries at every heartbeat, and at once when they change (removing
/// those that are gone).
async fn heartbeat(inner: std::sync::Weak<Inner>, registry: Arc<AnyRegistry>) {
    let period = tug_registry::Config::default().heartbeat;
    let Some(wake) = inner.upgrade().map(|inner| inner.routing.wake.clone()) else { return };
    let mut registered: Vec<Entry> = Vec::new();
    let mut next_beat = Instant::now();
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let entries = strong.routing.lock().local.clone();
        drop(strong);
        if entries != registered || Instant::now() >= next_beat {
            let gone: Vec<String> = registered
                .iter()
                .filter(|old| !entries.iter().any(|e| e.instance == old.instance))
                .map(|e| e.instance.clone())
                .collect();
            let mut result = Ok(());
            if !gone.is_empty() {
                result = registry.deregister(&gone).await;
            }
            if result.is_ok() {
                result = registry.register(&entries).await;
            }
            let error = result.err().map(|e| e.to_string());
            if error.is_none() {
                registered = entries;
            }
            if let Some(inner) = inner.upgrade() {
                inner.routing.lock().register_error = error;
            }
            next_beat = Instant::now() + period;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(next_beat) => {}
        }
    }
}

/// Keeps this host's entries, and so its routers, in step with the table, whatever the registry
/// does (a slow Redis must not delay a local instance joining or leaving), and wakes the
/// heartbeat when they change.
async fn follow_table(inner: std::sync::Weak<Inner>) {
    let Some(mut changes) = inner.upgrade().map(|inner| inner.changes.subscribe()) else { return };
    loop {
        let Some(strong) = inner.upgrade() else { return };
        if strong.routing.refresh_local(&strong) {
            strong.routing.wake.notify_one();
        }
        drop(strong);
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Follows the registry's membership into the routers. A failed registry keeps the last one.
async fn follow(inner: std::sync::Weak<Inner>, registry: Arc<AnyRegistry>) {
    let mut rx = registry.watch();
    loop {
        let membership = rx.borrow_and_update().clone();
        let Some(strong) = inner.upgrade() else { return };
        {
            let mut state = strong.routing.lock();
            state.membership = membership;
            publish(&state, &strong.routing.host);
        }
        drop(strong);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The counters of a front's routers, one per data-plane thread, added up per instance.
fn service_stats(name: &str, front: &Front) -> ServiceStats {
    let mut total = Counters::default();
    let mut revisions: Vec<RevisionStats> = Vec::new();
    let mut instances: Vec<InstanceStats> = Vec::new();
    let (mut unrouted, mut retries_denied, mut refused_connections) = (0, 0, 0);
    for router in &front.routers {
        let snapshot = router.stats();
        unrouted += snapshot.unrouted;
        retries_denied += snapshot.retries_denied;
        // The port's limit is shared by its routers: the same count in each.
        refused_connections = snapshot.refused_connections;
        for e in &snapshot.endpoints {
            let counters = endpoint_counters(e);
            total.add(&counters);
            match revisions.iter_mut().find(|r| r.revision == e.revision) {
                Some(r) => r.counters.add(&counters),
                None => revisions.push(RevisionStats { revision: e.revision.clone(), counters: counters.clone() }),
            }
            match instances.iter_mut().find(|i| i.instance == e.id && i.revision == e.revision) {
                Some(i) => {
                    i.counters.add(&counters);
                    i.member |= e.member;
                    i.ejected |= e.ejected;
                }
                None => instances.push(InstanceStats {
                    instance: e.id.clone(),
                    address: e.addr.to_string(),
                    revision: e.revision.clone(),
                    member: e.member,
                    ejected: e.ejected,
                    counters,
                }),
            }
        }
    }
    ServiceStats {
        service: name.to_string(),
        protocol: match front.route.protocol {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::Auto => "auto",
        }
        .to_string(),
        address: front.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        unrouted,
        retries_denied,
        refused_connections,
        total,
        revisions,
        instances,
    }
}

fn endpoint_counters(e: &tug_router::EndpointStats) -> Counters {
    Counters {
        requests: e.requests,
        status: StatusClasses::from_array(e.status),
        failures: e.failures,
        retries: e.retries,
        ejections: e.ejections,
        in_flight: e.in_flight,
        latency: Latency {
            bounds: e.latency.bounds.to_vec(),
            counts: e.latency.counts.clone(),
            sum_seconds: e.latency.sum_seconds,
        },
    }
}
