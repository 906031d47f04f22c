//! One instance's life: wait for the service's dependencies, start the process,
//! probe it, restart it by its policy with exponential backoff, stop it
//! gracefully. Every change is written to the supervisor's table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tug_logs::{LineSplitter, LogWriter, Stream};
use tug_proto::spec::{Check as CheckSpec, Kind, Probe, Restart, ServiceSpec};
use tug_proto::status::{Health, InstanceStatus, State};

use crate::driver;
use crate::order::{self, Gate};
use crate::probe::{self, Check};
use crate::reaper::Exit;
use tug_logs::format_time;

use crate::{Inner, Instance, Resolved, ports};

/// Backoff starts here and doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An instance up this long before it exits starts its backoff over.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Failures in a row (each within [`STABLE_AFTER`] of its start) that make a crash loop.
const CRASH_LOOP_AFTER: u32 = 3;
/// Longest line kept whole in the logs; longer ones are cut into pieces.
pub(crate) const MAX_LINE: usize = 16 * 1024;

pub enum Control {
    Start,
    Stop(oneshot::Sender<()>),
    Restart,
    Remove(oneshot::Sender<()>),
}

pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    (FIRST_BACKOFF * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

/// Adds an instance row (the lowest free replica number) and starts its task.
pub(crate) fn create(inner: &Arc<Inner>, spec: Arc<ServiceSpec>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let host = inner.config.host.clone();
    let range = inner.config.port_range;
    let created = inner.update(|t| {
        // `down` runs beside other requests (and SIGTERM at any time): an instance added
        // after it took its list would be left out of the graceful stop.
        if t.shutting_down {
            return None;
        }
        let used: Vec<u32> =
            t.instances.values().filter(|i| i.status.service == spec.name).map(|i| i.replica).collect();
        let replica = (1..).find(|n| !used.contains(n)).unwrap_or(1);
        let name = format!("{}-{replica}", spec.name);
        let port = match (spec.kind, spec.port, spec.proxy) {
            (Kind::Job, _, _) => None,
            (Kind::Service, Some(port), false) => Some(port),
            _ => ports::allocate(&mut t.ports, &host, range),
        };
        let status = InstanceStatus {
            service: spec.name.clone(),
            instance: name.clone(),
            kind: spec.kind,
            state: State::Pending,
            pid: None,
            port,
            restarts: 0,
            started_at: None,
            ready_at: None,
            finished_at: None,
            health: None,
            exit_code: None,
            last_exit: None,
            revision: spec.revision.clone(),
            message: None,
            cpu_seconds: None,
            memory_bytes: None,
        };
        let message = if port.is_none() && spec.kind == Kind::Service && spec.proxy {
            Some(format!("no free port in {}-{}", range.0, range.1))
        } else {
            None
        };
        t.instances.insert(
            name.clone(),
            Instance { status, replica, control: tx, group: None, start_ticks: None, exec: None, resolved: None },
        );
        Some((name, replica, port, message))
    });
    let Some((name, replica, port, problem)) = created else { return };
    let task = Task {
        inner: inner.clone(),
        spec,
        name,
        replica,
        port,
        failures: 0,
        restarts: 0,
        logs: None,
        cgroup: None,
        log_matched: Arc::new(AtomicBool::new(false)),
        log_wake: Arc::new(tokio::sync::Notify::new()),
    };
    tokio::spawn(task.run(rx, problem));
}

struct Task {
    inner: Arc<Inner>,
    spec: Arc<ServiceSpec>,
    name: String,
    replica: u32,
    port: Option<u16>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    restarts: u32,
    logs: Option<Arc<Mutex<LogWriter>>>,
    /// Made while the instance waits for its dependencies, off the runtime's
    /// threads, so its cost is not on the start-up's critical path.
    cgroup: Option<Arc<tug_sys::cgroup::Group>>,
    log_matched: Arc<AtomicBool>,
    /// Wakes the readiness probe as soon as the `log` probe's line arrives.
    log_wake: Arc<tokio::sync::Notify>,
}

enum Outcome {
    Exited { exit: Exit, up_for: Option<Duration>, why: Option<String> },
    Stopped(oneshot::Sender<()>),
    Restart,
    Removed(Option<oneshot::Sender<()>>),
}

enum Wake {
    Go,
    Stop(Option<oneshot::Sender<()>>),
    Remove(Option<oneshot::Sender<()>>),
}

#[derive(Clone, Copy, PartialEq)]
enum ProbeKind {
    Readiness,
    Liveness,
}

struct ProbeResult {
    kind: ProbeKind,
    result: Result<String, String>,
    /// Whether a failure counts toward `retries`.
    counted: bool,
}

impl Task {
    /// Tells the event stream (the dashboard, the `crash_loop` webhook) once per streak.
    fn crash_loop(&self, what: &str, delay: Duration) {
        let message = format!(
            "{}: {what}; failed {CRASH_LOOP_AFTER} times in a row, restarting in {}",
            self.name,
            tug_stackfile::units::format_duration(delay)
        );
        let mut event = crate::events::Event::new(crate::events::Kind::CrashLoop, &self.spec.name, message);
        event.instance = Some(self.name.clone());
        self.inner.events.emit(event);
    }

    fn set(&self, change: impl FnOnce(&mut InstanceStatus)) {
        self.inner.update(|t| {
            if let Some(row) = t.instances.get_mut(&self.name) {
                change(&mut row.status);
            }
        });
    }

    fn state(&self) -> Option<State> {
        self.inner.lock().instances.get(&self.name).map(|i| i.status.state)
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Control>, problem: Option<String>) {
        if let Some(problem) = problem {
            self.set(|s| {
                s.state = State::Failed;
                s.message = Some(problem.clone());
            });
            return self.idle_until_removed(&mut rx, problem).await;
        }
        let mut running = true;
        loop {
            if !running {
                match rx.recv().await {
                    Some(Control::Start | Control::Restart) => {
                        running = true;
                        self.failures = 0;
                        // A `failed` left from the last run must go: the check after the gate
                        // took it for a failed dependency, so a failed instance never started again.
                        self.set(|s| {
                            s.state = State::Pending;
                            s.message = None;
                        });
                    }
                    Some(Control::Stop(reply)) => {
                        let _ = reply.send(());
                    }
                    Some(Control::Remove(reply)) => return self.remove(Some(reply)),
                    None => return self.remove(None),
                }
                continue;
            }
            if self.cgroup.is_none() {
                self.cgroup = self.make_cgroup().await;
            }
            match self.wait_gate(&mut rx).await {
                Wake::Go => {}
                Wake::Stop(reply) => {
                    self.set(|s| {
                        s.state = State::Stopped;
                        s.message = None;
                    });
                    if let Some(reply) = reply {
                        let _ = reply.send(());
                    }
                    running = false;
                    continue;
                }
                Wake::Remove(reply) => return self.remove(reply),
            }
            if self.state() == Some(State::Failed) {
                running = false;
                continue;
            }
            match self.run_once(&mut rx).await {
                Outcome::Exited { exit, up_for, why } => match self.after_exit(exit, up_for, why, &mut rx).await {
                    Wake::Go => {}
                    Wake::Stop(reply) => {
                        if let Some(reply) = reply {
                            self.set(|s| s.state = State::Stopped);
                            let _ = reply.send(());
                        }
                        running = false;
                    }
                    Wake::Remove(reply) => return self.remove(reply),
                },
                Outcome::Stopped(reply) => {
                    self.set(|s| {
                        s.state = State::Stopped;
                        s.message = None;
                    });
                    let _ = reply.send(());
                    running = false;
                }
                Outcome::Restart => {
                    self.failures = 0;
                    self.restarts += 1;
                    let restarts = self.restarts;
                    self.set(|s| s.restarts = restarts);
                    let mut event = crate::events::Event::new(
                        crate::events::Kind::Restart,
                        &self.spec.name,
                        format!("{} restarted", self.name),
                    );
                    event.instance = Some(self.name.clone());
                    self.inner.events.emit(event);
                }
                Outcome::Removed(reply) => return self.remove(reply),
            }
        }
    }

    async fn idle_until_removed(self, rx: &mut mpsc::UnboundedReceiver<Control>, problem: String) {
        loop {
            match rx.recv().await {
                Some(Control::Remove(reply)) => return self.remove(Some(reply)),
                None => return self.remove(None),
                Some(Control::Stop(reply)) => {
                    let _ = reply.send(());
                }
                // `activate` marks an instance it starts `pending` at once; this one cannot start.
                Some(_) => self.set(|s| {
                    s.state = State::Failed;
                    s.message = Some(problem.clone());
                }),
            }
        }
    }

    fn remove(mut self, reply: Option<oneshot::Sender<()>>) {
        // A cgroup made for a start that never came.
        if let Some(group) = self.cgroup.take().and_then(|g| Arc::try_unwrap(g).ok()) {
            let _ = group.remove();
        }
        self.inner.update(|t| {
            t.instances.shift_remove(&self.name);
            if let Some(port) = self.port.filter(|_| self.spec.proxy || self.spec.port.is_none()) {
                t.ports.remove(&port);
            }
        });
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Waits until the service's dependencies hold (or a control message).
    async fn wait_gate(&self, rx: &mut mpsc::UnboundedReceiver<Control>) -> Wake {
        let mut changes = self.inner.changes.subscribe();
        loop {
            let gate = {
                let t = self.inner.lock();
                let spec = t.services.get(&self.spec.name).map(|s| s.spec.clone()).unwrap_or(self.spec.clone());
                order::gate(
                    &spec,
                    &t.specs,
                    |name| t.services.get(name).is_some_and(|s| s.active),
                    |name| t.instances.values().filter(|i| i.status.service == name).map(|i| &i.status).collect(),
                )
            };
            match gate {
                Gate::Open => return Wake::Go,
                Gate::Wait(message) => {
                    let current = self.inner.lock().instances.get(&self.name).and_then(|i| i.status.message.clone());
                    if current.as_deref() != Some(message.as_str()) || self.state() != Some(State::Pending) {
                        self.set(|s| {
                            s.state = State::Pending;
                            s.message = Some(message);
                        });
                    }
                }
                Gate::Failed(message) => {
                    self.set(|s| {
                        s.state = State::Failed;
                        s.message = Some(format!("not started: {message}"));
                    });
                    return Wake::Go;
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Wake::Remove(None) },
                control = rx.recv() => match control {
                    Some(Control::Start | Control::Restart) => {}
                    Some(Control::Stop(reply)) => return Wake::Stop(Some(reply)),
                    Some(Control::Remove(reply)) => return Wake::Remove(Some(reply)),
                    None => return Wake::Remove(None),
                },
            }
        }
    }

    /// Each dependency that has a port, with it.
    fn dependencies(&self) -> Vec<(String, u16)> {
        let table = self.inner.lock();
        self.spec
            .depends_on
            .iter()
            .filter_map(|(dependency, _)| Some((dependency.clone(), table.specs.get(dependency)?.port?)))
            .collect()
    }

    fn check(&self, check: &CheckSpec, vars: &[(String, String)]) -> Result<Check, String> {
        Ok(match check {
            CheckSpec::Http { path } => Check::Http { path: driver::resolve(path, vars)?, sensitive: path.sensitive },
            CheckSpec::Tcp => Check::Tcp,
            CheckSpec::Exec { command } => {
                let (program, args) = driver::command(command, vars)?;
                let shown = driver::shown_program(command, &program);
                Check::Exec { program, args, shown }
            }
            CheckSpec::Log { regex } => Check::Log { matched: self.log_matched.clone(), regex: regex.clone() },
        })
    }

    fn log_writer(&mut self) -> Option<Arc<Mutex<LogWriter>>> {
        if self.logs.is_none() {
            let dir = self.inner.config.logs_dir();
            match LogWriter::open(&dir, &self.spec.name, &self.name, self.spec.log_max_size, self.spec.log_max_files) {
                Ok(writer) => self.logs = Some(Arc::new(Mutex::new(writer))),
                Err(e) => crate::log::error(
                    &format!("cannot open its log in {}: {e}", dir.display()),
                    &[("instance", &self.name)],
                ),
            }
        }
        self.logs.clone()
    }

    /// Starts the process once and supervises it until it ends or is told to.
    /// A private port can be taken by another program between two starts (or
    /// between allocation and the first), or held by the last process's connections in
    /// TIME_WAIT: then the instance moves to a free one, rather than crash-looping on a
    /// port it cannot bind.
    fn refresh_port(&mut self) {
        let private = self.spec.kind == Kind::Service && (self.spec.proxy || self.spec.port.is_none());
        let Some(port) = self.port.filter(|_| private) else { return };
        let host = self.inner.config.host.clone();
        if ports::is_free_for_any_program(&host, port) {
            return;
        }
        let range = self.inner.config.port_range;
        let name = self.name.clone();
        let moved = self.inner.update(|t| {
            let new = ports::allocate(&mut t.ports, &host, range)?;
            t.ports.remove(&port);
            if let Some(row) = t.instances.get_mut(&name) {
                row.status.port = Some(new);
            }
            Some(new)
        });
        if let Some(new) = moved {
            self.port = Some(new);
        }
    }

    async fn run_once(&mut self, rx: &mut mpsc::UnboundedReceiver<Control>) -> Outcome {
        self.refresh_port();
        let prepared = self.prepare().await;
        let (launch, env, readiness, liveness, resolved) = match prepared {
            Ok(p) => p,
            Err(why) => return Outcome::Exited { exit: Exit::Code(127), up_for: None, why: Some(why) },
        };
        let mut running = match driver::start(launch).await {
            Ok(running) => running,
            Err(why) => return Outcome::Exited { exit: Exit::Code(127), up_for: None, why: Some(why) },
        };
        let (group, pid) = (running.pid, running.program);
        let start_ticks = running.start_ticks;
        let has_healthcheck = readiness.is_some();
        let initial = match (self.spec.kind, has_healthcheck) {
            (Kind::Service, true) => State::Starting,
            _ => State::Running,
        };
        self.log_matched.store(false, Ordering::Release);
        let name = self.name.clone();
        self.inner.update(|t| {
            if let Some(row) = t.instances.get_mut(&name) {
                row.start_ticks = start_ticks;
                row.group = Some(group);
                let s = &mut row.status;
                s.pid = Some(pid);
                s.state = initial;
                let now = format_time(SystemTime::now());
                s.ready_at = (initial == State::Running).then(|| now.clone());
                s.finished_at = None;
                s.started_at = Some(now);
                s.exit_code = None;
                s.health = None;
                s.message = None;
            }
        });
        let writer = self.log_writer();
        let log_regex = match self.spec.healthcheck.as_ref().map(|p| &p.check) {
            Some(CheckSpec::Log { regex }) => regex::Regex::new(regex).ok(),
            _ => None,
        };
        let sensitive = |name: &String| self.spec.environment.iter().any(|(k, v)| k == name && v.sensitive);
        let secrets: Arc<Vec<Vec<u8>>> =
            Arc::new(masked_values(env.into_iter().filter(|(k, _)| sensitive(k)).map(|(_, v)| v)));
        let sink = Arc::new(Sink {
            writer,
            log_probe: log_regex.map(|r| (r, self.log_matched.clone(), self.log_wake.clone())),
            secrets: secrets.clone(),
        });
        let pumps: Vec<_> = running
            .take_output()
            .into_iter()
            .map(|(stream, source)| tokio::spawn(pump(source, stream, sink.clone())))
            .collect();
        let (probe_tx, mut probe_rx) = mpsc::channel(16);
        let target = ProbeTarget { host: self.inner.config.host.clone(), port: self.port, exec: running.exec() };
        {
            let mut table = self.inner.lock();
            if let Some(row) = table.instances.get_mut(&self.name) {
                row.exec = Some((running.exec(), secrets.clone()));
                row.resolved = Some(resolved);
            }
        }
        let mut probes = Vec::new();
        if let Some((probe, check)) = readiness {
            let wake = matches!(check, Check::Log { .. }).then(|| self.log_wake.clone());
            probes.push(tokio::spawn(probe_loop(
                ProbeKind::Readiness,
                probe,
                check,
                target.clone(),
                probe_tx.clone(),
                wake,
            )));
        }
        if let Some((probe, check)) = liveness {
            probes.push(tokio::spawn(probe_loop(ProbeKind::Liveness, probe, check, target, probe_tx.clone(), None)));
        }
        drop(probe_tx);
        let mut ready_failures = 0u32;
        let mut live_failures = 0u32;
        let mut up_since: Option<Instant> = (initial == State::Running).then(Instant::now);
        let (signal, grace) = (self.spec.stop_signal, Duration::from_millis(self.spec.stop_grace_ms));
        let outcome = loop {
            tokio::select! {
                exit = running.exited() => {
                    break Outcome::Exited { exit, up_for: up_since.map(|t| t.elapsed()), why: None };
                }
                Some(result) = probe_rx.recv() => {
                    let retries = match result.kind {
                        ProbeKind::Readiness => self.spec.healthcheck.as_ref().map_or(3, |p| p.retries.max(1)),
                        ProbeKind::Liveness => self.spec.liveness.as_ref().map_or(3, |p| p.retries.max(1)),
                    };
                    match result.kind {
                        ProbeKind::Readiness => {
                            let ok = result.result.is_ok();
                            if ok { ready_failures = 0 } else if result.counted { ready_failures += 1 }
                            let failures = ready_failures;
                            let message = match &result.result { Ok(m) | Err(m) => redact_text(m.clone(), &secrets) };
                            let mut became_up = false;
                            // A result that changes nothing but the time of the last probe is
                            // recorded without waking watchers (gates, `up`'s long poll).
                            let quiet = {
                                let mut t = self.inner.lock();
                                match t.instances.get_mut(&self.name) {
                                    Some(row)
                                        if row.status.health.as_ref().is_some_and(|h| {
                                            h.ok == ok && h.message == message && h.failures == failures
                                        }) && !(ok && matches!(row.status.state, State::Starting | State::Unhealthy))
                                            && !(!ok
                                                && failures >= retries
                                                && matches!(row.status.state, State::Starting | State::Healthy)) =>
                                    {
                                        if let Some(h) = row.status.health.as_mut() {
                                            h.at = format_time(SystemTime::now());
                                        }
                                        true
                                    }
                                    _ => false,
                                }
                            };
                            if !quiet { self.set(|s| {
                                s.health = Some(Health { ok, message, at: format_time(SystemTime::now()), failures });
                                if ok && matches!(s.state, State::Starting | State::Unhealthy) {
                                    s.state = State::Healthy;
                                    s.ready_at = Some(format_time(SystemTime::now()));
                                    became_up = true;
                                } else if !ok && failures >= retries && matches!(s.state, State::Starting | State::Healthy) {
                                    s.state = State::Unhealthy;
                                }
                            }); }
                            if became_up && up_since.is_none() { up_since = Some(Instant::now()) }
                            if !ok && failures >= retries { up_since = None }
                        }
                        ProbeKind::Liveness => {
                            match &result.result {
                                Ok(_) => live_failures = 0,
                                Err(_) if result.counted => live_failures += 1,
                                Err(_) => {}
                            }
                            if let Err(why) = result.result && live_failures >= retries {
                                self.set(|s| s.state = State::Stopping);
                                let drained = self.inner.routing.drain(&self.inner, &self.name, &self.spec.name, grace).await;
                                let exit = running.stop(signal, grace.saturating_sub(drained)).await;
                                let exit = exit.unwrap_or(Exit::Signal(libc::SIGKILL));
                                let why = redact_text(format!("liveness failed {live_failures} times: {why}; restarted"), &secrets);
                                break Outcome::Exited { exit, up_for: None, why: Some(why) };
                            }
                        }
                    }
                }
                control = rx.recv() => {
                    let outcome = match control {
                        Some(Control::Start) => continue,
                        Some(Control::Stop(reply)) => Outcome::Stopped(reply),
                        Some(Control::Restart) => Outcome::Restart,
                        Some(Control::Remove(reply)) => Outcome::Removed(Some(reply)),
                        None => Outcome::Removed(None),
                    };
                    self.set(|s| s.state = State::Stopping);
                    // Out of the routers first; what they have in flight on it finishes.
                    let drained = self.inner.routing.drain(&self.inner, &self.name, &self.spec.name, grace).await;
                    let exit = running.stop(signal, grace.saturating_sub(drained)).await;
                    let code = exit.map(Exit::code);
                    self.set(|s| s.exit_code = code);
                    break outcome;
                }
            }
        };
        for probe in probes {
            probe.abort();
        }
        // Let the pumps drain what the process wrote last (bounded: a grandchild
        // may hold the pipe open).
        for pump in pumps {
            let _ = tokio::time::timeout(Duration::from_millis(500), pump).await;
        }
        running.finish(&self.name).await;
        let name = self.name.clone();
        self.inner.update(|t| {
            if let Some(row) = t.instances.get_mut(&name) {
                row.start_ticks = None;
                row.group = None;
                row.exec = None;
                row.resolved = None;
                row.status.pid = None;
                row.status.finished_at = Some(format_time(SystemTime::now()));
            }
        });
        outcome
    }

    /// The run to start, for the instance's driver, its resolved environment, and its probes
    /// (an exec probe runs inside the instance: it is resolved with what the instance sees).
    #[allow(clippy::type_complexity)]
    async fn prepare(
        &mut self,
    ) -> Result<
        (driver::Launch, Vec<(String, String)>, Option<(Probe, Check)>, Option<(Probe, Check)>, Arc<Resolved>),
        String,
    > {
        let instance = driver::Instance {
            inner: &self.inner,
            spec: &self.spec,
            name: &self.name,
            replica: self.replica,
            port: self.port,
            dependencies: self.dependencies(),
            cgroup: self.cgroup.take(),
        };
        let prepared = driver::prepare(instance).await?;
        let vars = &prepared.vars;
        let readiness =
            self.spec.healthcheck.as_ref().map(|p| self.check(&p.check, vars).map(|c| (p.clone(), c))).transpose()?;
        let liveness =
            self.spec.liveness.as_ref().map(|p| self.check(&p.check, vars).map(|c| (p.clone(), c))).transpose()?;
        let argv = |command: &tug_proto::spec::CommandSpec| -> Result<Vec<String>, String> {
            let (program, args) = driver::command(command, vars)?;
            Ok(std::iter::once(program).chain(args).collect())
        };
        let backup = self.spec.backup.as_ref();
        let resolved = Resolved {
            smoke: self.spec.deploy.smoke.as_ref().map(|s| self.check(&s.check, vars)).transpose()?,
            dump: backup.map(|b| argv(&b.command)).transpose()?,
            restore: backup.and_then(|b| b.restore.as_ref()).map(argv).transpose()?,
        };
        Ok((prepared.launch, prepared.env, readiness, liveness, Arc::new(resolved)))
    }

    /// The instance's cgroup, when it has `resources` limits and the machine
    /// allows them. Only then: joining a cgroup v1 costs about 12 ms before the
    /// exec (an RCU grace period), on the critical path of every start. What
    /// leaves the process group is found by its environment instead ([`process::kill_strays`]).
    async fn make_cgroup(&self) -> Option<Arc<tug_sys::cgroup::Group>> {
        if self.spec.memory_bytes.is_none() && self.spec.cpu.is_none() {
            return None;
        }
        let limits = tug_sys::cgroup::Limits { memory_bytes: self.spec.memory_bytes, cpu_cores: self.spec.cpu };
        self.inner.cgroups.can_apply(&limits).ok()?;
        // Two stacks may share a project name: the state folder tells them apart.
        let folder = self.inner.config.state_dir.display().to_string();
        let digest = folder.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        let scope = format!("{}-{:08x}", self.inner.lock().project, digest as u32);
        let inner = self.inner.clone();
        let name = self.name.clone();
        // mkdir and writes in cgroupfs block: not on the runtime's threads.
        let created = tokio::task::spawn_blocking(move || inner.cgroups.create(&scope, &name, &limits)).await;
        match created {
            Ok(Ok(group)) => Some(Arc::new(group)),
            Ok(Err(e)) => {
                crate::log::warn(&format!("no cgroup: {e}"), &[("instance", &self.name)]);
                None
            }
            Err(_) => None,
        }
    }

    /// Decides what follows an exit: a restart after the backoff, or the end.
    async fn after_exit(
        &mut self,
        exit: Exit,
        up_for: Option<Duration>,
        why: Option<String>,
        rx: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Wake {
        let failed = !exit.success() || why.is_some();
        if self.spec.kind == Kind::Job && !failed {
            self.set(|s| {
                s.state = State::Completed;
                s.ready_at = s.finished_at.clone();
                s.exit_code = Some(0);
                s.last_exit = Some(exit.describe());
                s.message = None;
            });
            return Wake::Stop(None);
        }
        let restart = match self.spec.restart {
            Restart::No => false,
            Restart::OnFailure => failed,
            Restart::Always => true,
        };
        let what = why.unwrap_or_else(|| exit.describe());
        if !restart {
            let state = if failed { State::Failed } else { State::Stopped };
            self.set(|s| {
                s.state = state;
                s.exit_code = Some(exit.code());
                s.last_exit = Some(what.clone());
                s.message = Some(what);
            });
            return Wake::Stop(None);
        }
        if up_for.is_some_and(|d| d >= STABLE_AFTER) {
            self.failures = 0;
        }
        self.failures += 1;
        self.restarts += 1;
        let delay = backoff(self.failures);
        let restarts = self.restarts;
        if self.failures == CRASH_LOOP_AFTER {
            self.crash_loop(&what, delay);
        }
        self.set(|s| {
            s.state = State::Crashloop;
            s.exit_code = Some(exit.code());
            s.restarts = restarts;
            s.message = Some(format!("{what}; restarting in {}", tug_stackfile::units::format_duration(delay)));
            s.last_exit = Some(what);
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => Wake::Go,
            control = rx.recv() => match control {
                Some(Control::Start | Control::Restart) => { self.failures = 0; Wake::Go }
                Some(Control::Stop(reply)) => Wake::Stop(Some(reply)),
                Some(Control::Remove(reply)) => Wake::Remove(Some(reply)),
                None => Wake::Remove(None),
            },
        }
    }
}

#[derive(Clone)]
struct ProbeTarget {
    host: String,
    port: Option<u16>,
    exec: driver::Exec,
}

/// Probes on the probe's schedule. Before the first success it probes every
/// `start_interval` but counts at most one failure per `interval`, so probing
/// faster never fails an instance sooner; failures in `start_period` do not count.
async fn probe_loop(
    kind: ProbeKind,
    probe: Probe,
    check: Check,
    target: ProbeTarget,
    tx: mpsc::Sender<ProbeResult>,
    wake: Option<Arc<tokio::sync::Notify>>,
) {
    let started = Instant::now();
    let interval = Duration::from_millis(probe.interval_ms.max(1));
    let start_interval = Duration::from_millis(probe.start_interval_ms);
    let start_period = Duration::from_millis(probe.start_period_ms);
    let timeout = Duration::from_millis(probe.timeout_ms.max(1));
    let mut passed = false;
    let mut last_counted: Option<Instant> = None;
    // Deadlines on a fixed grid from the start, so the probe's own time does not add up.
    let first = if !start_interval.is_zero() { start_interval } else { interval };
    let mut next = tokio::time::Instant::now() + first;
    loop {
        let woken = async {
            match (&wake, passed) {
                (Some(wake), false) => wake.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = woken => {}
        }
        let probe_target = probe::Target { host: &target.host, port: target.port, exec: &target.exec };
        let result = probe::attempt(&check, &probe_target, timeout).await;
        let now = Instant::now();
        let counted = result.is_err()
            && now.duration_since(started) >= start_period
            && (passed || last_counted.is_none_or(|t| now.duration_since(t) >= interval));
        if counted {
            last_counted = Some(now);
        }
        passed |= result.is_ok();
        let wait = if !passed && !start_interval.is_zero() { start_interval } else { interval };
        next = (next + wait).max(tokio::time::Instant::now());
        if tx.send(ProbeResult { kind, result, counted }).await.is_err() {
            return;
        }
    }
}

/// Where an instance's output goes: its log file, and the `log` probe's regex.
struct Sink {
    writer: Option<Arc<Mutex<LogWriter>>>,
    log_probe: Option<(regex::Regex, Arc<AtomicBool>, Arc<tokio::sync::Notify>)>,
    /// The instance's secret values: masked wherever its output is kept.
    secrets: Arc<Vec<Vec<u8>>>,
}

/// Values shorter than this are not masked: they would mask ordinary words
/// (an env file's `MODE=info` is sensitive, and "information" is not).
const MIN_MASKED: usize = 8;

/// What to mask in an instance's output, from its sensitive values. Output is masked line by
/// line, so a value of several lines (a PEM key) would never match whole: each of its lines is
/// masked too.
pub(crate) fn masked_values(values: impl Iterator<Item = String>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for value in values {
        if value.contains('\n') {
            out.extend(value.lines().filter(|l| l.len() >= MIN_MASKED).map(|l| l.as_bytes().to_vec()));
        }
        if value.len() >= MIN_MASKED {
            out.push(value.into_bytes());
        }
    }
    out
}

/// `line` with every occurrence of a secret replaced by `********`.
pub fn redact(line: &[u8], secrets: &[Vec<u8>]) -> Option<Vec<u8>> {
    let found = secrets.iter().any(|s| line.windows(s.len()).any(|w| w == s.as_slice()));
    if !found {
        return None;
    }
    let mut out = line.to_vec();
    for secret in secrets {
        let mut masked = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(secret) {
                masked.extend_from_slice(tug_stackfile::model::MASK.as_bytes());
                i += secret.len();
            } else {
                masked.push(out[i]);
                i += 1;
            }
        }
        out = masked;
    }
    Some(out)
}

fn redact_text(text: String, secrets: &[Vec<u8>]) -> String {
    match redact(text.as_bytes(), secrets) {
        Some(masked) => String::from_utf8_lossy(&masked).into_owned(),
        None => text,
    }
}

impl Sink {
    /// One line of output: masked, offered to the `log` probe, written.
    fn line(&self, time: SystemTime, stream: Stream, line: &[u8]) {
        let masked = redact(line, &self.secrets);
        let line = masked.as_deref().unwrap_or(line);
        if let Some((regex, matched, wake)) = &self.log_probe
            && !matched.load(Ordering::Relaxed)
            && regex.is_match(&String::from_utf8_lossy(line))
        {
            matched.store(true, Ordering::Release);
            wake.notify_one();
        }
        if let Some(writer) = &self.writer {
            let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writer.write(time, stream, line);
        }
    }

    fn flush(&self) {
        if let Some(writer) = &self.writer {
            let _ = writer.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }
}

/// Reads one stream to its end. Never stops reading, whatever the disk does,
/// so a chatty instance never blocks on a full pipe.
async fn pump(source: driver::Source, stream: Stream, sink: Arc<Sink>) {
    let mut pipe = match source {
        driver::Source::Pipe(pipe) => pipe,
        driver::Source::Engine(output) => return pump_engine(output, sink).await,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut splitter = LineSplitter::new(MAX_LINE);
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = SystemTime::now();
        splitter.push(&buf[..n], &mut |line: &[u8]| sink.line(now, stream, line));
        sink.flush();
    }
    splitter.finish(&mut |line: &[u8]| sink.line(SystemTime::now(), stream, line));
    sink.flush();
}

/// A container's output: both streams arrive multiplexed on one connection, and are kept apart
/// as a process's pipes are.
async fn pump_engine(mut output: tug_engine::Output, sink: Arc<Sink>) {
    let mut out = LineSplitter::new(MAX_LINE);
    let mut err = LineSplitter::new(MAX_LINE);
    while let Ok(Some((kind, chunk))) = output.next().await {
        let now = SystemTime::now();
        let (splitter, stream) = match kind {
            tug_engine::StreamKind::Stdout => (&mut out, Stream::Out),
            tug_engine::StreamKind::Stderr => (&mut err, Stream::Err),
        };
        splitter.push(&chunk, &mut |line: &[u8]| sink.line(now, stream, line));
        sink.flush();
    }
    out.finish(&mut |line: &[u8]| sink.line(SystemTime::now(), Stream::Out, line));
    err.finish(&mut |line: &[u8]| sink.line(SystemTime::now(), Stream::Err, line));
    sink.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_output() {
        let secrets = vec![b"hunter22".to_vec(), b"s3cr3t".to_vec()];
        assert_eq!(redact(b"nothing here", &secrets), None);
        let masked = redact(b"url=postgres://u:hunter22@db/x s3cr3t hunter22", &secrets).unwrap();
        assert_eq!(String::from_utf8(masked).unwrap(), "url=postgres://u:********@db/x ******** ********");
        assert_eq!(redact_text("ok".into(), &secrets), "ok");
    }

    #[test]
    fn each_line_of_a_multiline_secret_is_masked() {
        let key = "-----BEGIN KEY-----\r\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nshort\n".to_string();
        let secrets = masked_values([key, "tiny".into()].into_iter());
        let masked = redact(b"key: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", &secrets).unwrap();
        assert_eq!(String::from_utf8(masked).unwrap(), "key: ********");
        assert!(redact(b"-----BEGIN KEY-----", &secrets).is_some());
        // Pieces under 8 characters are not masked, as values under 8 are not.
        assert_eq!(redact(b"short tiny", &secrets), None);
    }

    #[test]
    fn address_variables_are_named_after_the_service() {
        assert_eq!(tug_stackfile::read::address_variable("auth-db"), "AUTH_DB_ADDR");
        assert_eq!(driver::format_address("127.0.0.2", 80), "127.0.0.2:80");
        assert_eq!(driver::format_address("::1", 80), "[::1]:80");
    }

    #[test]
    fn backoff_doubles_from_100ms_to_30s() {
        let delays: Vec<u128> = (1..=11).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }
}
