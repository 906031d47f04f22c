//! The supervisor: runs a stack's instances and keeps them running.
//!
//! [`Supervisor`] holds the table of services and instances. Each instance is a
//! tokio task ([`instance`]) that waits for its service's dependencies, starts
//! the process, probes it, restarts it by its policy, and reports every change
//! to the table, which bumps a generation counter that watchers (`up -d`, the
//! gates of dependent services) wait on. Stopping goes in reverse dependency order.

mod analysis;
mod autoscale;
pub mod backup;
mod container;
mod driver;
pub mod events;
mod exec;
pub mod history;
mod hooks;
pub mod instance;
pub mod log;
pub mod order;
pub mod persist;
pub mod plan;
pub mod ports;
mod probe;
pub mod process;
pub mod reaper;
mod rollout;
mod routing;
mod secret_files;
pub mod shim;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use indexmap::IndexMap;
use tokio::sync::{mpsc, oneshot, watch};
use tug_proto::plan::Action;
use tug_proto::rollout::{AutoscaleStatus, HistoryEntry, Phase, RolloutStatus};
use tug_proto::spec::{Kind, RolloutAction, ServiceSpec, StackSpec, Strategy, UpRequest};
use tug_proto::status::{InstanceStatus, ServiceStatus, StackStatus, State, UpResponse};

pub use driver::ExecEvent;
pub use instance::Control;

#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    /// The advertised address: instances and routers bind it (`HOST`), registry entries carry it.
    pub host: String,
    /// Private ports for instances come from this range (inclusive).
    pub port_range: (u16, u16),
    /// Seals each revision's spec in the rollout history (`undo`, crash recovery).
    pub seal_key: Option<history::SealKey>,
}

impl Config {
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

/// A request the supervisor refuses, with what the user should know.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

pub(crate) struct Instance {
    pub status: InstanceStatus,
    pub replica: u32,
    pub control: mpsc::UnboundedSender<Control>,
    /// The process group of the current run (its shim's, or its container's main process):
    /// what is signalled, measured, and recorded for reconciliation.
    pub group: Option<i32>,
    /// Start time (clock ticks after boot) of the group's leader, for reconciliation.
    pub start_ticks: Option<u64>,
    /// While it runs: where `tug exec` runs a command in it, and what to mask in the output.
    pub exec: Option<(driver::Exec, Arc<Vec<Vec<u8>>>)>,
    /// While it runs: the commands and checks others run against it, resolved with what the
    /// instance sees.
    pub resolved: Option<Arc<Resolved>>,
}

/// What a rollout and a backup run against a running instance, its variables substituted.
#[derive(Default)]
pub(crate) struct Resolved {
    /// `deploy.smoke`.
    pub smoke: Option<probe::Check>,
    /// `backup.command` and `backup.restore`, as argv.
    pub dump: Option<Vec<String>>,
    pub restore: Option<Vec<String>>,
}

pub(crate) struct Service {
    /// The revision it runs: a rollout's target while one is under way.
    pub spec: Arc<ServiceSpec>,
    pub active: bool,
    /// During a rollout, the revision it replaces.
    pub stable: Option<Arc<ServiceSpec>>,
    /// The latest rollout (under way, or how the last one ended).
    pub rollout: Option<RolloutStatus>,
    /// Steers the rollout under way; `None` when none is.
    pub steer: Option<mpsc::UnboundedSender<rollout::Steer>>,
    pub autoscale: Option<AutoscaleStatus>,
}

impl Service {
    fn new(spec: Arc<ServiceSpec>) -> Service {
        Service { spec, active: false, stable: None, rollout: None, steer: None, autoscale: None }
    }

    fn rolling_out(&self) -> bool {
        self.steer.is_some()
    }
}

pub(crate) struct Table {
    pub project: String,
    pub generation: u64,
    pub shutting_down: bool,
    pub specs: IndexMap<String, Arc<ServiceSpec>>,
    pub services: IndexMap<String, Service>,
    pub instances: IndexMap<String, Instance>,
    pub ports: HashSet<u16>,
    pub notices: Vec<String>,
    /// The container engine's address (`unix:///…`), once a stack with images was applied.
    pub engine: Option<String>,
    /// The folder of the stack file, once a stack was applied: scheduled backups go below it.
    pub root: Option<std::path::PathBuf>,
}

pub(crate) struct Inner {
    pub config: Config,
    pub table: Mutex<Table>,
    pub changes: watch::Sender<u64>,
    pub cgroups: tug_sys::cgroup::Support,
    /// The services' stable addresses (their `port`): routers, and the registry feeding them.
    pub routing: routing::Routing,
    /// Revisions and rollouts, as `rollouts.json` holds them.
    pub records: Mutex<history::Records>,
    /// The container engines the stack's images run on (one, in practice).
    pub engines: container::Engines,
    /// One-off instances (`tug run`) under way.
    pub one_offs: std::sync::atomic::AtomicUsize,
    /// Held by a deploy from its `deploy.before` jobs to its `apply`.
    pub deploying: tokio::sync::Mutex<()>,
    /// What happened: the dashboard's timeline, the webhooks.
    pub events: events::Events,
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to the table and wakes every watcher.
    pub fn update<R>(&self, change: impl FnOnce(&mut Table) -> R) -> R {
        let mut table = self.lock();
        let result = change(&mut table);
        table.generation += 1;
        let generation = table.generation;
        let persist = persist::Record::from_table(&table);
        drop(table);
        persist.save(&self.config.state_dir, generation);
        self.changes.send_replace(generation);
        result
    }

    /// Changes the rollout records and writes them (atomically, before returning).
    pub fn record(&self, change: impl FnOnce(&mut history::Records, Option<&history::SealKey>)) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut records, self.config.seal_key.as_ref());
        if let Err(e) = records.save(&self.config.state_dir) {
            crate::log::warn(&e.to_string(), &[]);
        }
    }
}

#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    pub fn new(config: Config) -> Supervisor {
        let (changes, _) = watch::channel(0);
        let cgroups = tug_sys::cgroup::detect();
        let table = Table {
            project: String::new(),
            generation: 0,
            shutting_down: false,
            specs: IndexMap::new(),
            services: IndexMap::new(),
            instances: IndexMap::new(),
            ports: HashSet::new(),
            notices: Vec::new(),
            engine: None,
            root: None,
        };
        let routing = routing::Routing::new(&config.host);
        let (records, problem) = match history::Records::load(&config.state_dir) {
            Ok(records) => (records, None),
            Err(e) => (history::Records::default(), Some(e)),
        };
        let inner = Arc::new(Inner {
            config,
            table: Mutex::new(table),
            changes,
            cgroups,
            routing,
            records: Mutex::new(records),
            engines: container::Engines::default(),
            one_offs: std::sync::atomic::AtomicUsize::new(0),
            deploying: tokio::sync::Mutex::new(()),
            events: events::Events::default(),
        });
        let supervisor = Supervisor { inner };
        if let Some(problem) = problem {
            supervisor.notice(problem);
        }
        supervisor
    }

    /// Starts the daemon's background work (the autoscaler). Must run inside the runtime.
    pub fn start_background(&self) {
        tokio::spawn(autoscale::run(self.clone()));
    }

    /// Deploys, rollbacks, promotions, restarts, crash loops, autoscaling: as they happen.
    pub fn events(&self) -> &events::Events {
        &self.inner.events
    }

    /// The container engine the stack's services run on, once one was named.
    pub fn engine(&self) -> Option<String> {
        self.inner.lock().engine.clone()
    }

    /// The folder of the stack file the daemon last applied.
    pub fn root(&self) -> Option<std::path::PathBuf> {
        self.inner.lock().root.clone()
    }

    /// The project's name, once a stack was applied.
    pub fn project(&self) -> String {
        self.inner.lock().project.clone()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn notice(&self, text: String) {
        self.inner.update(|t| t.notices.push(text));
    }

    /// Waits until the generation passes `after` (or `timeout`), then reports.
    /// With `usage`, each running instance's CPU time and memory (one scan of `/proc`).
    pub async fn status(&self, after: Option<u64>, timeout: std::time::Duration, usage: bool) -> StackStatus {
        if let Some(after) = after {
            let mut rx = self.inner.changes.subscribe();
            let _ = tokio::time::timeout(timeout, rx.wait_for(|g| *g > after)).await;
        }
        let table = self.inner.lock();
        let services = table
            .services
            .iter()
            .map(|(name, s)| ServiceStatus {
                name: name.clone(),
                kind: s.spec.kind,
                replicas: s.spec.replicas,
                port: s.spec.port,
                active: s.active,
                revision: s.spec.revision.clone(),
                rollout: s.rollout.clone(),
                autoscale: s.autoscale.clone(),
                memory_limit_bytes: s.spec.memory_bytes,
                cpu_limit: s.spec.cpu,
            })
            .collect();
        let mut instances: Vec<InstanceStatus> = table.instances.values().map(|i| i.status.clone()).collect();
        let groups: Vec<Option<i32>> = table.instances.values().map(|i| i.group).collect();
        let (project, generation, shutting_down, notices) =
            (table.project.clone(), table.generation, table.shutting_down, table.notices.clone());
        drop(table);
        // What this status calls ready, this host's routers already send requests to: `up -d`
        // returns on this answer, and a `curl` right after must not find the router empty (the
        // task that follows the table may not have run yet). After the snapshot, so the routers
        // hold at least what it says.
        self.inner.routing.refresh_local(&self.inner);
        // Reading every process in /proc takes milliseconds with many instances: never under
        // the table's lock, which every instance task and API request needs.
        if usage {
            let measured = tug_sys::procfs::groups_usage_except(
                &groups.iter().flatten().copied().collect::<Vec<_>>(),
                Some(crate::shim::NAME),
            );
            let ticks = tug_sys::procfs::clock_ticks_per_second().max(1) as f64;
            for (row, group) in instances.iter_mut().zip(groups) {
                if let Some(u) = group.and_then(|group| measured.get(&group)) {
                    row.cpu_seconds = Some(u.cpu_ticks as f64 / ticks);
                    row.memory_bytes = Some(u.rss_bytes);
                }
            }
        }
        StackStatus {
            project,
            daemon_pid: std::process::id(),
            generation,
            shutting_down,
            services,
            instances,
            notices,
            advertise: self.inner.config.host.clone(),
            registry: self.inner.routing.registry_status(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The routers' counters (`tug stats`), for every proxied service or one.
    pub fn stats(&self, service: Option<&str>) -> Result<tug_proto::stats::StatsResponse, Error> {
        let stats = self.inner.routing.stats(service);
        if let Some(name) = service
            && stats.services.is_empty()
        {
            let table = self.inner.lock();
            return Err(match table.services.get(name) {
                Some(_) => Error::NotFound(format!("`{name}` has no router: it has no port, or `proxy: false`")),
                None => Error::NotFound(format!("no service named `{name}`")),
            });
        }
        Ok(stats)
    }

    /// What `apply` would do with this request, without doing it (`deploy --plan`).
    pub fn plan(&self, request: &UpRequest) -> Result<tug_proto::plan::Plan, Error> {
        validate_spec(&request.spec)?;
        let new_specs: IndexMap<String, Arc<ServiceSpec>> =
            request.spec.services.iter().map(|s| (s.name.clone(), Arc::new(s.clone()))).collect();
        for target in &request.targets {
            if !new_specs.contains_key(target) {
                return Err(Error::NotFound(format!("no service or job named `{target}` in the stack")));
            }
        }
        Ok(plan::plan(&current(&self.inner.lock()), &new_specs, &request.targets))
    }

    /// Refuses, before anything changes, a request `apply` could not carry out: a spec that
    /// does not validate, an unknown target, a bad `listen`, a stack shutting down, or a fixed
    /// port another program holds. `deploy` asks this before it runs `deploy.before` jobs, so a
    /// migration never runs for a deploy refused right after. The request's services by name.
    pub(crate) fn refusal(
        &self,
        spec: &StackSpec,
        targets: &[String],
    ) -> Result<IndexMap<String, Arc<ServiceSpec>>, Error> {
        validate_spec(spec)?;
        let inner = &self.inner;
        let new_specs: IndexMap<String, Arc<ServiceSpec>> =
            spec.services.iter().map(|s| (s.name.clone(), Arc::new(s.clone()))).collect();
        for target in targets {
            if !new_specs.contains_key(target) {
                return Err(Error::NotFound(format!("no service or job named `{target}` in the stack")));
            }
        }
        let listen_ip = inner.routing.listen_ip_for(spec.listen.as_deref()).map_err(Error::BadRequest)?.to_string();
        let table = inner.lock();
        if table.shutting_down {
            return Err(Error::Conflict("the stack is shutting down; run `tug up` again once it is down".into()));
        }
        // A fixed port taken by another program fails `up` before anything starts.
        let mut taken = Vec::new();
        for name in &order::closure(&new_specs, targets) {
            let spec = &new_specs[name];
            let Some(port) = spec.port else { continue };
            let ours = table.services.get(name).is_some_and(|s| s.spec.port == Some(port) && s.active)
                || table.instances.values().any(|i| i.status.port == Some(port))
                || inner.routing.holds(name, port);
            if !ours && spec.kind == Kind::Service && spec.replicas > 0 && !ports::is_free(&listen_ip, port) {
                taken.push(ports::describe_taken(name, port));
            }
        }
        if !taken.is_empty() {
            return Err(Error::Conflict(taken.join("\n")));
        }
        Ok(new_specs)
    }

    /// `up`: adopts `spec` and starts the targets and their dependencies, as [`plan::plan`]
    /// decides: the plan is computed and executed under one lock, and returned.
    pub fn apply(&self, request: UpRequest) -> Result<UpResponse, Error> {
        let UpRequest { spec, targets, .. } = request;
        let new_specs = self.refusal(&spec, &targets)?;
        process::withhold(&spec.withheld);
        let inner = &self.inner;
        let wanted = order::closure(&new_specs, &targets);
        let mut notices = Vec::new();
        let listened = inner.routing.listen_ip();
        inner.routing.set_listen(spec.listen.as_deref()).map_err(Error::BadRequest)?;
        let listen = inner.routing.listen_ip();
        if listen != listened && inner.routing.fronts() > 0 {
            notices.push(format!(
                "the stack's ports move from {listened} to {listen}: connections open stay, \
                 new ones go to {listen}"
            ));
        }
        if let Some(problem) = cgroup_problem(&inner.cgroups, &wanted, &new_specs) {
            notices.push(problem);
        }
        let registry = spec.registry.as_ref().map(|v| v.value.as_str());
        if let Some(warning) = inner.routing.attach(inner, registry, &spec.project).map_err(Error::BadRequest)? {
            notices.push(warning);
        }
        // The stable addresses are bound now, before any instance starts, so the
        // port is this stack's from here on.
        for name in &wanted {
            let spec = &new_specs[name];
            if spec.port.is_some() && spec.proxy && spec.kind == Kind::Service && spec.replicas > 0 {
                inner.routing.open(spec).map_err(Error::Conflict)?;
            } else {
                inner.routing.close(name);
            }
        }
        let mut replaced = Vec::new();
        let mut removed = Vec::new();
        let mut kept = Vec::new();
        let mut rescaled = Vec::new();
        // Changed services that run: each is rolled out by its strategy (with the rollout it
        // supersedes, if one is under way).
        let mut deploys: Vec<(rollout::Plan, Option<mpsc::UnboundedSender<rollout::Steer>>)> = Vec::new();
        let mut first_starts = Vec::new();
        let mut recorded = Vec::new();
        let decided = inner.update(|t| {
            t.project = spec.project.clone();
            t.root = Some(spec.root.clone());
            if spec.engine.is_some() {
                t.engine = spec.engine.clone();
            }
            // Decided and executed under one lock: the plan is of the table it changes.
            let decided = plan::plan(&current(t), &new_specs, &targets);
            for step in &decided.services {
                let name = &step.name;
                match step.action {
                    Action::Start | Action::NotStarted => {
                        let new = &new_specs[name];
                        let mut service = Service::new(new.clone());
                        if new.autoscale.is_some() {
                            let mut scaled = (**new).clone();
                            scaled.replicas = plan::replicas_for(new, None);
                            service.spec = Arc::new(scaled);
                        }
                        t.services.insert(name.clone(), service);
                        recorded.push(name.clone());
                    }
                    Action::Unchanged | Action::Reconfigure | Action::Rescale => {
                        let (new, service) =
                            (&new_specs[name], t.services.get_mut(name).expect("planned from the table"));
                        // How the router fronts it, rolls it out or scales it is outside the
                        // revision: no restart for that.
                        if service.spec.route != new.route
                            || service.spec.deploy != new.deploy
                            || service.spec.autoscale != new.autoscale
                        {
                            let mut updated = (*service.spec).clone();
                            updated.route = new.route.clone();
                            updated.deploy = new.deploy.clone();
                            updated.autoscale = new.autoscale.clone();
                            service.spec = Arc::new(updated);
                        }
                        if step.action == Action::Rescale {
                            rescaled.push((name.clone(), plan::replicas_for(new, Some(service.spec.replicas))));
                        }
                    }
                    // `up SERVICE` replaces only what it starts: a changed service it does not
                    // start keeps running its revision.
                    Action::Keep => kept.push((name.clone(), t.services[name].spec.clone())),
                    Action::RollOut => {
                        let (new, service) = (&new_specs[name], &t.services[name]);
                        let stable = service.stable.clone().unwrap_or(service.spec.clone());
                        let replicas = plan::replicas_for(new, Some(stable.replicas));
                        let (strategy, note) = plan::effective_strategy(new);
                        let mut to = (**new).clone();
                        to.replicas = replicas;
                        let rollout = rollout::Plan {
                            service: name.clone(),
                            from: stable,
                            to: Arc::new(to),
                            replicas,
                            strategy,
                            first_step: 0,
                            note,
                            resume: false,
                        };
                        deploys.push((rollout, service.steer.clone()));
                    }
                    Action::Replace => {
                        if let Some(service) = t.services.get_mut(name) {
                            service.spec = new_specs[name].clone();
                        }
                        replaced.push(name.clone());
                    }
                    Action::Remove => {
                        // Closes its rollout's channel: the rollout stops and records why.
                        if let Some(service) = t.services.get_mut(name) {
                            service.steer = None;
                        }
                        removed.push(name.clone());
                    }
                }
            }
            t.specs = new_specs.clone();
            for (name, service) in &t.services {
                if new_specs.contains_key(name) {
                    t.specs.insert(name.clone(), service.spec.clone());
                }
            }
            for (name, old) in &kept {
                t.specs.insert(name.clone(), old.clone());
            }
            for name in &removed {
                t.specs.insert(name.clone(), t.services[name].spec.clone());
            }
            decided
        });
        // Services new to this daemon: a rollout recorded as under way when the last daemon
        // ended is resumed or rolled back; otherwise this is a first start, recorded.
        let mut held_back = Vec::new();
        for name in recorded.iter().filter(|n| wanted.contains(n)) {
            match self.reconcile_rollout(name) {
                Reconciled::Resume(plan) => {
                    held_back.push(name.clone());
                    deploys.push((plan, None));
                }
                Reconciled::RolledBack => held_back.push(name.clone()),
                Reconciled::Nothing => first_starts.push(name.clone()),
            }
        }
        // Replaced services: their old instances go, new ones start gated as usual.
        for name in replaced.iter().chain(&removed) {
            for control in self.instance_controls(name) {
                let (tx, _rx) = oneshot::channel();
                let _ = control.send(Control::Remove(tx));
            }
        }
        let this = self.clone();
        let removed_names = removed.clone();
        for name in &removed {
            inner.routing.close(name);
        }
        if !removed.is_empty() {
            tokio::spawn(async move {
                this.wait_removed(&removed_names).await;
                this.inner.update(|t| {
                    for name in &removed_names {
                        t.services.shift_remove(name);
                        t.specs.shift_remove(name);
                    }
                });
            });
        }
        for (name, replicas) in rescaled {
            let this = self.clone();
            tokio::spawn(async move {
                if this.scale(&name, replicas).await.is_ok() {
                    this.activate(&name, false);
                }
            });
        }
        let rollouts: Vec<String> = deploys.iter().map(|(plan, _)| plan.service.clone()).collect();
        let mut rollouts_shown = rollouts.clone();
        rollouts_shown.extend(held_back.iter().filter(|n| !rollouts.contains(n)).cloned());
        for name in &order::dependencies_first(&new_specs, &wanted) {
            if rollouts.contains(name) {
                continue;
            }
            if !replaced.contains(name) {
                self.activate(name, false);
                continue;
            }
            // Stop, then start (as documented): the new instances must not start beside the old
            // ones, or they got new replica numbers (`api-3` for `api-1`) and, with `proxy: false`,
            // found the fixed port still bound by the old instance.
            let this = self.clone();
            let name = name.clone();
            tokio::spawn(async move {
                this.wait_removed(std::slice::from_ref(&name)).await;
                if !this.inner.lock().shutting_down {
                    this.activate(&name, true);
                }
            });
        }
        for name in first_starts.iter().chain(&replaced) {
            self.record_start(name);
        }
        for (plan, under_way) in deploys {
            match under_way {
                None => rollout::begin(self, plan),
                Some(steer) => {
                    // The rollout under way winds down first (a canary or blue-green one goes
                    // back to stable), then this one starts from the stable revision.
                    let _ = steer.send(rollout::Steer::Supersede(plan.to.revision.clone()));
                    let this = self.clone();
                    tokio::spawn(async move {
                        let mut rx = this.inner.changes.subscribe();
                        loop {
                            let (done, stable) = {
                                let t = this.inner.lock();
                                match t.services.get(&plan.service) {
                                    Some(s) => (s.steer.is_none(), s.spec.clone()),
                                    None => return,
                                }
                            };
                            if done {
                                if this.inner.lock().shutting_down {
                                    return;
                                }
                                rollout::begin(&this, rollout::Plan { from: stable, ..plan });
                                return;
                            }
                            if rx.changed().await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        }
        if !notices.is_empty() {
            inner.update(|t| t.notices.extend(notices.iter().cloned()));
        }
        self.prune_source_copies();
        Ok(UpResponse {
            services: wanted,
            notices,
            rollouts: rollouts_shown,
            plan: Some(decided),
            revisions: Default::default(),
        })
    }

    /// Removes the source copies of revisions the history no longer keeps (off the runtime's
    /// threads: it walks folders).
    fn prune_source_copies(&self) {
        let mut keep = self.inner.records.lock().unwrap_or_else(|p| p.into_inner()).source_copies();
        {
            let table = self.inner.lock();
            for service in table.services.values() {
                for spec in std::iter::once(&service.spec).chain(&service.stable) {
                    keep.extend(spec.source.as_ref().map(|s| s.copy.clone()));
                }
            }
        }
        let state_dir = self.inner.config.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            let removed = history::prune_source_copies(&state_dir, &keep);
            if removed > 0 {
                crate::log::info(&format!("removed {removed} source copies of revisions no longer kept"), &[]);
            }
        });
    }

    /// A rollout the last daemon recorded as under way, for a service this daemon has not run
    /// yet. With the file still asking for the rollout's target, it resumes (the stable set
    /// first, then the strategy from the recorded step); when that daemon was already rolling
    /// back, the rollback is finished (the last good revision runs); when the file asks for
    /// another revision, the rollout is recorded as rolled back and the file's revision starts.
    fn reconcile_rollout(&self, name: &str) -> Reconciled {
        let inner = &self.inner;
        let key = inner.config.seal_key.as_ref();
        let (record, new) = {
            let records = inner.records.lock().unwrap_or_else(|p| p.into_inner());
            let Some(record) = records.services.get(name).cloned() else { return Reconciled::Nothing };
            let Some(new) = inner.lock().services.get(name).map(|s| s.spec.clone()) else { return Reconciled::Nothing };
            (record, new)
        };
        let Some(rollout) = record.rollout.clone().filter(|r| !r.phase.is_final()) else {
            return Reconciled::Nothing;
        };
        let from = rollout.from_revision.as_deref().map(|r| record.spec(r, key));
        let close = |phase: Phase, why: String, runs: Option<Arc<ServiceSpec>>| {
            let now = tug_logs::format_time(std::time::SystemTime::now());
            let mut status = rollout.clone();
            status.phase = phase;
            status.reason = Some(why.clone());
            status.weight = 0;
            status.finished_at = Some(now.clone());
            status.updated_at = now.clone();
            inner.update(|t| {
                if let Some(s) = t.services.get_mut(name) {
                    s.rollout = Some(status.clone());
                    if let Some(runs) = &runs {
                        s.spec = runs.clone();
                        t.specs.insert(name.to_string(), runs.clone());
                    }
                }
            });
            inner.record(|records, _| {
                let r = records.service(name);
                r.rollout = Some(status.clone());
                r.rolling_back = false;
                if let Some(runs) = &runs {
                    r.current = Some(runs.revision.clone());
                }
                if let Some(entry) = r.latest_mut(&rollout.to_revision) {
                    entry.entry.outcome = phase;
                    entry.entry.reason = Some(why.clone());
                    entry.entry.finished_at = Some(now.clone());
                }
            });
            crate::log::info(&why, &[("service", name)]);
        };
        match from {
            Some(Ok(from)) if new.revision == rollout.to_revision => {
                let mut from = from;
                from.replicas = new.replicas;
                let from = Arc::new(from);
                if record.rolling_back {
                    let why = format!(
                        "the daemon ended while rolling back from {}; the rollback to {} was finished",
                        rollout.to_revision, from.revision
                    );
                    close(Phase::RolledBack, why, Some(from));
                    return Reconciled::RolledBack;
                }
                Reconciled::Resume(rollout::Plan {
                    service: name.to_string(),
                    from,
                    to: new.clone(),
                    replicas: new.replicas,
                    strategy: rollout.strategy,
                    first_step: rollout.step.unwrap_or(0),
                    note: Some("resumed after the daemon restarted".into()),
                    resume: true,
                })
            }
            Some(Err(e)) if new.revision == rollout.to_revision => {
                // Nothing to go back to: the file's revision starts, and the record says why.
                close(Phase::Failed, format!("the daemon ended during the rollout, and it cannot resume: {e}"), None);
                Reconciled::Nothing
            }
            _ => {
                let why = format!(
                    "the daemon ended during the rollout to {}; `up` then asked for revision {}",
                    rollout.to_revision, new.revision
                );
                close(Phase::RolledBack, why, None);
                Reconciled::Nothing
            }
        }
    }

    /// A service's first start on this daemon: recorded in its history (unless it runs the
    /// revision the history already calls current), complete once every instance is up.
    fn record_start(&self, name: &str) {
        let Some(spec) = self.inner.lock().services.get(name).map(|s| s.spec.clone()) else { return };
        if spec.kind != Kind::Service {
            return;
        }
        let known = {
            let records = self.inner.records.lock().unwrap_or_else(|p| p.into_inner());
            records.services.get(name).and_then(|r| r.current.clone())
        };
        if known.as_deref() == Some(&spec.revision) {
            return;
        }
        let now = tug_logs::format_time(std::time::SystemTime::now());
        self.inner.record(|records, key| {
            let record = records.service(name);
            let entry = HistoryEntry {
                revision: spec.revision.clone(),
                strategy: spec.deploy.strategy,
                outcome: Phase::Progressing,
                reason: Some("started".into()),
                from_revision: known.clone(),
                started_at: now,
                finished_at: None,
                current: false,
                spec: serde_json::Value::Null,
            };
            record.push(&spec, entry, key);
            record.current = Some(spec.revision.clone());
        });
        let this = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut rx = this.inner.changes.subscribe();
            let outcome = loop {
                let (up, failed, gone) = {
                    let t = this.inner.lock();
                    let rows: Vec<&InstanceStatus> = t
                        .instances
                        .values()
                        .map(|i| &i.status)
                        .filter(|i| i.service == name && i.revision == spec.revision)
                        .collect();
                    let up = rows.iter().filter(|i| i.state.is_up()).count();
                    let failed = rows.iter().any(|i| i.state == State::Failed);
                    let gone = t.services.get(&name).is_none_or(|s| s.spec.revision != spec.revision);
                    (up >= spec.replicas as usize && !rows.is_empty(), failed, gone)
                };
                if up {
                    break Some((Phase::Complete, None));
                }
                if failed {
                    break Some((Phase::Failed, Some("an instance failed to start".to_string())));
                }
                if gone || rx.changed().await.is_err() {
                    break None;
                }
            };
            let Some((phase, reason)) = outcome else { return };
            let now = tug_logs::format_time(std::time::SystemTime::now());
            this.inner.record(|records, _| {
                if let Some(entry) = records.service(&name).latest_mut(&spec.revision) {
                    entry.entry.outcome = phase;
                    entry.entry.reason = reason.or(Some("started".into()));
                    entry.entry.finished_at = Some(now);
                }
            });
        });
    }

    /// `tug rollout status SERVICE`.
    pub fn rollout_status(&self, service: &str) -> Result<RolloutStatus, Error> {
        let table = self.inner.lock();
        let Some(s) = table.services.get(service) else {
            return Err(Error::NotFound(format!("no service named `{service}`")));
        };
        if let Some(status) = &s.rollout {
            return Ok(status.clone());
        }
        drop(table);
        let records = self.inner.records.lock().unwrap_or_else(|p| p.into_inner());
        records.services.get(service).and_then(|r| r.rollout.clone()).ok_or_else(|| {
            Error::NotFound(format!("`{service}` has had no rollout: it runs the revision it started with"))
        })
    }

    /// `tug history SERVICE`: newest first.
    pub fn history(&self, service: &str) -> Result<Vec<HistoryEntry>, Error> {
        let known = self.inner.lock().services.contains_key(service);
        let records = self.inner.records.lock().unwrap_or_else(|p| p.into_inner());
        if !known && !records.services.contains_key(service) {
            return Err(Error::NotFound(format!("no service named `{service}`")));
        }
        Ok(records.history(service))
    }

    /// `tug rollout promote|abort|undo SERVICE`.
    pub async fn rollout_action(&self, service: &str, action: RolloutAction) -> Result<String, Error> {
        self.refuse_if_shutting_down()?;
        let (steer, phase, current) = {
            let table = self.inner.lock();
            let Some(s) = table.services.get(service) else {
                return Err(Error::NotFound(format!("no service named `{service}`")));
            };
            (s.steer.clone(), s.rollout.as_ref().map(|r| r.phase), s.spec.clone())
        };
        match (action, steer) {
            (RolloutAction::Promote, Some(steer)) => {
                let _ = steer.send(rollout::Steer::Promote);
                Ok(format!("promoting `{service}`"))
            }
            (RolloutAction::Abort, Some(steer)) => {
                let _ = steer.send(rollout::Steer::Abort);
                Ok(format!("aborting the rollout of `{service}`: all traffic goes back to the stable revision"))
            }
            (RolloutAction::Undo, Some(steer)) => {
                let _ = steer.send(rollout::Steer::Undo);
                let how = if phase == Some(Phase::Promoted) { "switching back to the old set" } else { "rolling back" };
                Ok(format!("undoing the rollout of `{service}`: {how}"))
            }
            (RolloutAction::Promote | RolloutAction::Abort, None) => {
                Err(Error::Conflict(format!("`{service}` has no rollout under way")))
            }
            (RolloutAction::Undo, None) => self.undo(service, current).await,
        }
    }

    /// Back to the last revision that completed before the current one, by the service's
    /// strategy but without canary steps (a canary undo rolls), and a blue-green one promoted
    /// at once.
    async fn undo(&self, service: &str, current: Arc<ServiceSpec>) -> Result<String, Error> {
        let key = self.inner.config.seal_key.as_ref();
        let target = {
            let records = self.inner.records.lock().unwrap_or_else(|p| p.into_inner());
            let record = records.services.get(service).cloned().unwrap_or_default();
            let revision = record.undo_target().ok_or_else(|| {
                Error::Conflict(format!("`{service}` has no earlier revision that completed to go back to"))
            })?;
            record.spec(&revision, key).map_err(Error::Conflict)?
        };
        self.check_image_still_there(service, &target).await?;
        let mut to = target;
        to.replicas = current.replicas;
        let (mut strategy, note) = plan::effective_strategy(&to);
        if strategy == Strategy::Canary {
            strategy = Strategy::Rolling;
        }
        to.deploy.auto_promote = true;
        let revision = to.revision.clone();
        let plan = rollout::Plan {
            service: service.to_string(),
            from: current.clone(),
            replicas: current.replicas,
            to: Arc::new(to),
            strategy,
            first_step: 0,
            note: Some(format!("undo to {revision}{}", note.map(|n| format!("; {n}")).unwrap_or_default())),
            resume: false,
        };
        rollout::begin(self, plan);
        Ok(format!("rolling `{service}` back to revision {revision}"))
    }

    /// Refuses to go back to a revision whose image id is gone from the engine (`docker image
    /// prune` removes the untagged image a rebuilt tag leaves behind): its instances could only
    /// fail to start until the progress deadline, with the stack's old set shrinking meanwhile.
    async fn check_image_still_there(&self, service: &str, target: &ServiceSpec) -> Result<(), Error> {
        let Some(container) = &target.container else { return Ok(()) };
        let Some(url) = self.inner.lock().engine.clone() else { return Ok(()) };
        let state_dir = self.inner.config.state_dir.display().to_string();
        let engine = self.inner.engines.get(&url, &state_dir).await.map_err(|e| {
            Error::Conflict(format!("cannot undo `{service}`: the container engine does not answer: {e}"))
        })?;
        match engine.inspect_image(&container.image_id).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Error::Conflict(format!(
                "cannot undo `{service}` to revision {}: {}",
                target.revision,
                driver::image_gone(&container.image, &container.image_id)
            ))),
            Err(e) => Err(Error::Conflict(format!("cannot undo `{service}`: the container engine: {e}"))),
        }
    }

    fn instance_controls(&self, service: &str) -> Vec<mpsc::UnboundedSender<Control>> {
        let table = self.inner.lock();
        table.instances.values().filter(|i| i.status.service == service).map(|i| i.control.clone()).collect()
    }

    async fn wait_removed(&self, services: &[String]) {
        let mut rx = self.inner.changes.subscribe();
        loop {
            let left = {
                let table = self.inner.lock();
                table.instances.values().any(|i| services.contains(&i.status.service))
            };
            if !left || rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Marks a service active and makes sure it has its replicas: missing
    /// instances are created, stopped or failed ones started again.
    fn activate(&self, name: &str, fresh: bool) {
        let inner = &self.inner;
        let (spec, existing) = {
            let mut table = inner.lock();
            if table.shutting_down {
                return;
            }
            let Some(service) = table.services.get_mut(name) else { return };
            service.active = true;
            let spec = service.spec.clone();
            let existing: Vec<(u32, State, String, mpsc::UnboundedSender<Control>, String)> = table
                .instances
                .values()
                .filter(|i| i.status.service == name)
                .map(|i| {
                    let status = &i.status;
                    (i.replica, status.state, status.revision.clone(), i.control.clone(), status.instance.clone())
                })
                .collect();
            (spec, existing)
        };
        let current: Vec<_> =
            existing.iter().filter(|(_, _, revision, _, _)| !fresh || *revision == spec.revision).collect();
        let mut again = Vec::new();
        for (_, state, _, control, instance) in &current {
            let start = match spec.kind {
                Kind::Job => matches!(state, State::Failed | State::Stopped),
                Kind::Service => matches!(state, State::Failed | State::Stopped | State::Completed),
            };
            if start {
                again.push((instance.clone(), control.clone()));
            }
        }
        // `pending` before the instance's task gets to it: `up` must not take the last run's
        // `failed` for a new failure.
        inner.update(|t| {
            for (instance, _) in &again {
                if let Some(row) = t.instances.get_mut(instance) {
                    row.status.state = State::Pending;
                    row.status.message = None;
                }
            }
        });
        for (_, control) in again {
            let _ = control.send(Control::Start);
        }
        let have: Vec<u32> = current.iter().map(|(r, ..)| *r).collect();
        let missing = (spec.replicas as usize).saturating_sub(have.len());
        self.add_instances(&spec, missing);
        inner.update(|_| {});
    }

    fn add_instances(&self, spec: &Arc<ServiceSpec>, count: usize) {
        for _ in 0..count {
            instance::create(&self.inner, spec.clone());
        }
    }

    /// Services or instances named in `targets`: (service names, instance names).
    fn resolve(&self, targets: &[String]) -> Result<Vec<String>, Error> {
        let table = self.inner.lock();
        let mut instances = Vec::new();
        for target in targets {
            let matched: Vec<String> = table
                .instances
                .values()
                .filter(|i| i.status.service == *target || i.status.instance == *target)
                .map(|i| i.status.instance.clone())
                .collect();
            if matched.is_empty() && !table.services.contains_key(target) {
                return Err(Error::NotFound(format!("no service, job or instance named `{target}`")));
            }
            instances.extend(matched);
        }
        Ok(instances)
    }

    /// Refuses a change once `down` has begun: it would start what the shutdown is stopping.
    fn refuse_if_shutting_down(&self) -> Result<(), Error> {
        if self.inner.lock().shutting_down {
            return Err(Error::Conflict("the stack is shutting down; run `tug up` again once it is down".into()));
        }
        Ok(())
    }

    /// `start`: the targets, activating services and their dependencies.
    pub fn start(&self, targets: &[String]) -> Result<Vec<String>, Error> {
        self.refuse_if_shutting_down()?;
        let instances = self.resolve(targets)?;
        let services: Vec<String> = {
            let table = self.inner.lock();
            let named: Vec<String> = targets.iter().filter(|t| table.services.contains_key(*t)).cloned().collect();
            let mut needed = order::closure(&table.specs, &named);
            for instance in &instances {
                if let Some(row) = table.instances.get(instance) {
                    for dep in order::closure(&table.specs, std::slice::from_ref(&row.status.service)) {
                        if dep != row.status.service && !needed.contains(&dep) {
                            needed.push(dep);
                        }
                    }
                }
            }
            order::dependencies_first(&table.specs, &needed)
        };
        for service in &services {
            self.activate(service, false);
        }
        self.mark_active(&instances);
        for instance in &instances {
            self.send(instance, Control::Start);
        }
        Ok(instances)
    }

    /// Marks the services of `instances` active. An instance started or restarted by name runs
    /// again; without this, after `stop SERVICE` its dependents kept waiting for it as "not
    /// running" while it was healthy.
    fn mark_active(&self, instances: &[String]) {
        self.inner.update(|t| {
            let services: Vec<String> =
                instances.iter().filter_map(|i| t.instances.get(i)).map(|i| i.status.service.clone()).collect();
            for name in services {
                if let Some(service) = t.services.get_mut(&name) {
                    service.active = true;
                }
            }
        });
    }

    /// `stop`: the targets' instances, gracefully, waiting until they are stopped.
    pub async fn stop(&self, targets: &[String]) -> Result<Vec<String>, Error> {
        let instances = self.resolve(targets)?;
        self.inner.update(|t| {
            for target in targets {
                if let Some(service) = t.services.get_mut(target) {
                    service.active = false;
                }
            }
        });
        let waits: Vec<_> = instances
            .iter()
            .filter_map(|name| {
                let (tx, rx) = oneshot::channel();
                self.send(name, Control::Stop(tx)).then_some(rx)
            })
            .collect();
        for rx in waits {
            let _ = rx.await;
        }
        Ok(instances)
    }

    pub fn restart(&self, targets: &[String]) -> Result<Vec<String>, Error> {
        self.refuse_if_shutting_down()?;
        let instances = self.resolve(targets)?;
        self.mark_active(&instances);
        for instance in &instances {
            self.send(instance, Control::Restart);
        }
        Ok(instances)
    }

    fn send(&self, instance: &str, control: Control) -> bool {
        let table = self.inner.lock();
        table.instances.get(instance).is_some_and(|i| i.control.send(control).is_ok())
    }

    /// `scale`: adds instances, or removes the newest first, gracefully.
    pub async fn scale(&self, service: &str, replicas: u32) -> Result<(), Error> {
        self.refuse_if_shutting_down()?;
        let (spec, mut rows) = {
            let table = self.inner.lock();
            let Some(s) = table.services.get(service) else {
                return Err(Error::NotFound(format!("no service or job named `{service}`")));
            };
            if s.rolling_out() {
                return Err(Error::Conflict(format!(
                    "`{service}` is being rolled out; scale it once `tug rollout status {service}` says it is done"
                )));
            }
            let rows: Vec<(u32, String)> = table
                .instances
                .values()
                .filter(|i| i.status.service == service)
                .map(|i| (i.replica, i.status.instance.clone()))
                .collect();
            (s.spec.clone(), rows)
        };
        if let Some(port) = spec.port.filter(|_| !spec.proxy && replicas > 1) {
            return Err(Error::BadRequest(format!(
                "`{service}` binds its port {port} itself (proxy: false), so it can run only one instance"
            )));
        }
        let mut scaled = (*spec).clone();
        scaled.replicas = replicas;
        let scaled = Arc::new(scaled);
        self.inner.update(|t| {
            if let Some(s) = t.services.get_mut(service) {
                s.spec = scaled.clone();
                s.active = true;
            }
            t.specs.insert(service.to_string(), scaled.clone());
        });
        rows.sort();
        if rows.len() < replicas as usize {
            self.add_instances(&scaled, replicas as usize - rows.len());
            self.inner.update(|_| {});
        } else {
            let waits: Vec<_> = rows[replicas as usize..]
                .iter()
                .rev()
                .filter_map(|(_, name)| {
                    let (tx, rx) = oneshot::channel();
                    self.send(name, Control::Remove(tx)).then_some(rx)
                })
                .collect();
            for rx in waits {
                let _ = rx.await;
            }
        }
        Ok(())
    }

    /// `down`: stops everything in reverse dependency order and waits.
    pub async fn shutdown(&self) {
        // Refused from now on: an `up` during the routers' drain would bind ports again and
        // start what this shutdown is about to stop.
        self.inner.update(|t| t.shutting_down = true);
        // The routers first: no new connections, HTTP/2 clients get GOAWAY, and requests in
        // flight finish while every instance still runs.
        self.inner.routing.shutdown().await;
        let levels = {
            let table = self.inner.lock();
            let depths = order::depths(&table.specs);
            let mut levels: Vec<(usize, Vec<String>)> = Vec::new();
            for row in table.instances.values() {
                let depth = depths.get(&row.status.service).copied().unwrap_or(0);
                match levels.iter_mut().find(|(d, _)| *d == depth) {
                    Some((_, names)) => names.push(row.status.instance.clone()),
                    None => levels.push((depth, vec![row.status.instance.clone()])),
                }
            }
            levels.sort_by_key(|level| std::cmp::Reverse(level.0));
            levels
        };
        self.inner.update(|_| {});
        for (_, names) in levels {
            let waits: Vec<_> = names
                .iter()
                .filter_map(|name| {
                    let (tx, rx) = oneshot::channel();
                    self.send(name, Control::Remove(tx)).then_some(rx)
                })
                .collect();
            for rx in waits {
                let _ = rx.await;
            }
        }
        // One-off instances (`tug run`) see the shutdown and stop; wait for them.
        let mut changes = self.inner.changes.subscribe();
        while self.inner.one_offs.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if changes.changed().await.is_err() {
                break;
            }
        }
        self.inner.routing.leave().await;
        // Nothing runs any more; the engine stays named, for whoever cleans up after.
        let engine = self.inner.lock().engine.clone();
        persist::Record { engine, ..Default::default() }.save(&self.inner.config.state_dir, u64::MAX);
    }
}

enum Reconciled {
    Resume(rollout::Plan),
    /// The last good revision starts; the record says the rollout was rolled back.
    RolledBack,
    Nothing,
}

/// The replicas a service runs: the file's, or, when autoscaled, `current` (or the file's)
/// kept within its bounds.
/// What the table runs, as the planner sees it.
fn current(t: &Table) -> plan::Current {
    t.services
        .iter()
        .map(|(name, s)| {
            let runs = t.instances.values().any(|i| i.status.service == *name && i.status.pid.is_some());
            let running = plan::Running {
                spec: s.spec.clone(),
                stable: s.stable.clone(),
                active: s.active,
                runs,
                rolling_out: s.rolling_out(),
            };
            (name.clone(), running)
        })
        .collect()
}

/// The stack file checks all of this; the API is reachable without it, so the
/// daemon checks again what could hurt it (a request is signed, not necessarily sane).
fn validate_spec(spec: &StackSpec) -> Result<(), Error> {
    let mut seen = HashSet::new();
    let total: u64 = spec.services.iter().map(|s| u64::from(s.replicas)).sum();
    if total > u64::from(tug_proto::spec::MAX_REPLICAS) {
        return Err(Error::BadRequest(format!(
            "the stack asks for {total} instances in all, more than {}",
            tug_proto::spec::MAX_REPLICAS
        )));
    }
    for s in &spec.services {
        validate_service(s)?;
        if !seen.insert(&s.name) {
            return Err(Error::BadRequest(format!("service `{}` appears twice", s.name)));
        }
    }
    Ok(())
}

/// A name the daemon takes for a service: it names folders and files (logs, copies).
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// One service's spec, as [`validate_spec`] checks it.
fn validate_service(s: &ServiceSpec) -> Result<(), Error> {
    {
        // As the stack file allows: a rotation renames every kept file.
        if !(1..=1000).contains(&s.log_max_files) {
            return Err(Error::BadRequest(format!(
                "service `{}`: logs.max_files must be from 1 to 1000, not {}",
                s.name, s.log_max_files
            )));
        }
        if !is_service_name(&s.name) {
            return Err(Error::BadRequest(format!("`{}` is not a valid service name", s.name)));
        }
        if s.route.tenant_header.as_deref().is_some_and(|h| hyper::http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(Error::BadRequest(format!("service `{}`: tenant_header is not a valid header name", s.name)));
        }
        if s.revision != s.compute_revision() {
            return Err(Error::BadRequest(format!("service `{}`: the revision does not match its spec", s.name)));
        }
        if s.replicas > tug_proto::spec::MAX_REPLICAS {
            return Err(Error::BadRequest(format!(
                "service `{}`: {} replicas is more than {}",
                s.name,
                s.replicas,
                tug_proto::spec::MAX_REPLICAS
            )));
        }
    }
    Ok(())
}

fn cgroup_problem(
    support: &tug_sys::cgroup::Support,
    wanted: &[String],
    specs: &IndexMap<String, Arc<ServiceSpec>>,
) -> Option<String> {
    let limited: Vec<&str> = wanted
        .iter()
        .filter(|n| specs[*n].memory_bytes.is_some() || specs[*n].cpu.is_some())
        .map(String::as_str)
        .collect();
    let first = limited.first()?;
    let limits = tug_sys::cgroup::Limits { memory_bytes: specs[*first].memory_bytes, cpu_cores: specs[*first].cpu };
    support.can_apply(&limits).err().map(|why| {
        format!("resources limits of {} are not applied: {why}; the services run without them", limited.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_proto::spec::{Restart, Value};

    /// A minimal valid spec, for the crate's unit tests.
    pub(crate) fn service(name: &str, replicas: u32, log_max_files: u32) -> ServiceSpec {
        let mut spec = ServiceSpec {
            name: name.into(),
            kind: Kind::Service,
            command: Some(tug_proto::spec::CommandSpec::Shell(Value::plain("true"))),
            working_dir: "/".into(),
            replicas,
            port: None,
            proxy: false,
            route: Default::default(),
            environment: Vec::new(),
            depends_on: Vec::new(),
            healthcheck: None,
            liveness: None,
            restart: Restart::No,
            stop_signal: libc::SIGTERM,
            stop_signal_name: "SIGTERM".into(),
            stop_grace_ms: 1000,
            user: None,
            memory_bytes: None,
            cpu: None,
            log_max_size: 1 << 20,
            log_max_files,
            container: None,
            source: None,
            secret_files: Vec::new(),
            deploy: Default::default(),
            autoscale: None,
            backup: None,
            revision: String::new(),
        };
        spec.revision = spec.compute_revision();
        spec
    }

    fn stack(services: Vec<ServiceSpec>) -> StackSpec {
        StackSpec {
            project: "p".into(),
            environment: "development".into(),
            root: "/".into(),
            services,
            withheld: Vec::new(),
            registry: None,
            engine: None,
            listen: None,
            api: None,
            notify: Vec::new(),
        }
    }

    #[test]
    fn specs_the_stack_file_would_refuse_are_refused() {
        assert!(validate_spec(&stack(vec![service("a", 2, 5)])).is_ok());
        let too_many = stack(vec![service("a", 6000, 5), service("b", 6000, 5)]);
        assert!(validate_spec(&too_many).unwrap_err().to_string().contains("12000 instances"));
        let files = validate_spec(&stack(vec![service("a", 1, u32::MAX)])).unwrap_err().to_string();
        assert!(files.contains("logs.max_files"), "{files}");
        let mut tampered = service("a", 1, 5);
        tampered.stop_grace_ms = 1;
        assert!(validate_spec(&stack(vec![tampered])).unwrap_err().to_string().contains("revision"));
        let twice = stack(vec![service("a", 1, 5), service("a", 1, 5)]);
        assert!(validate_spec(&twice).unwrap_err().to_string().contains("twice"));
        assert!(validate_spec(&stack(vec![service("../x", 1, 5)])).is_err());
    }
}
