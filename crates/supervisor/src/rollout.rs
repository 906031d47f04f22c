//! Rollouts: replacing a service's running revision with a new one by its `deploy.strategy`,
//! watching the new one, and undoing it by itself when it fails.
//!
//! One task per rollout ([`begin`]). It acts only through the supervisor's own levers:
//! instances are created from a revision's spec ([`instance::create`]) and removed with
//! `Control::Remove` (which drains them out of the routers before the stop signal), and the
//! routers' membership is steered with [`Selection`]: one revision only (blue-green), or a
//! canary split. Every change of phase, step or weight is written to the history record before
//! the task goes on, so a daemon that dies mid-rollout leaves a record the next one acts on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tug_proto::rollout::{HistoryEntry, Measured, Phase, RolloutStatus};
use tug_proto::spec::{ServiceSpec, Strategy};
use tug_proto::status::State;

use crate::analysis::{self, Limits, Verdict, Window};
use crate::instance::{self, Control};
use crate::probe::{self, Check};
use crate::routing::Selection;
use crate::{Inner, Supervisor};

/// How often a rollout looks at its instances and, for a canary, the router's counters.
const TICK: Duration = Duration::from_millis(100);
/// A running instance without a healthcheck counts as ready after this long (as `up -d`).
const SETTLE: Duration = Duration::from_millis(500);
/// The analysis window: the step's length, within these bounds.
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(30);

/// What a user (or a newer deploy) asks of a rollout under way.
#[derive(Debug)]
pub(crate) enum Steer {
    Promote,
    Abort,
    /// `tug rollout undo` while the rollout runs: back to the previous revision at once.
    Undo,
    /// A newer deploy of the service takes over; it carries the new revision.
    Supersede(String),
}

/// A rollout to start.
pub(crate) struct Plan {
    pub service: String,
    /// The revision that serves now (stable).
    pub from: Arc<ServiceSpec>,
    pub to: Arc<ServiceSpec>,
    pub replicas: u32,
    pub strategy: Strategy,
    /// Canary: the step to start at (a resumed rollout).
    pub first_step: usize,
    /// Why this rollout exists beyond a deploy ("undo to …", "resumed after …").
    pub note: Option<String>,
    /// Resumed after a daemon restart: the stable set starts first, and the history entry
    /// already exists.
    pub resume: bool,
}

/// Why a strategy stopped before its end.
enum Stop {
    /// The new revision failed: roll back, saying why.
    Failed(String, Option<Measured>),
    /// A user aborted (or undid) it: roll back.
    Aborted(String),
    /// A newer deploy takes over.
    Superseded(String),
    /// The daemon is going down: leave the record as it is, a restart resumes.
    Shutdown,
    /// The service left the stack: its instances are being removed; only the record is closed.
    Removed,
}

type Step<T> = Result<T, Stop>;

/// Starts `plan`'s rollout: records it, then runs it in a task of its own.
pub(crate) fn begin(sup: &Supervisor, plan: Plan) {
    let inner = &sup.inner;
    let (tx, rx) = mpsc::unbounded_channel();
    let now = tug_logs::format_time(std::time::SystemTime::now());
    let canary = plan.strategy == Strategy::Canary;
    // The instances as they are now, so the status is right from its first moment: it said
    // "0 old" until the rollout's first tick, while every old instance still ran. (New ones
    // count as ready only once the task has watched them for `min_ready`.)
    let (new_now, old_now) = {
        let t = inner.lock();
        let rows = t.instances.values().filter(|i| i.status.service == plan.service);
        rows.fold((0, 0), |(n, o), i| if i.status.revision == plan.to.revision { (n + 1, o) } else { (n, o + 1) })
    };
    let status = RolloutStatus {
        service: plan.service.clone(),
        strategy: plan.strategy,
        phase: Phase::Progressing,
        from_revision: Some(plan.from.revision.clone()),
        to_revision: plan.to.revision.clone(),
        weight: 0,
        step: canary.then_some(plan.first_step),
        steps: if canary { plan.to.deploy.steps.clone() } else { Vec::new() },
        reason: plan.note.clone(),
        measured: None,
        new_instances: new_now,
        new_ready: 0,
        old_instances: old_now,
        replicas: plan.replicas,
        started_at: now.clone(),
        updated_at: now.clone(),
        finished_at: None,
    };
    inner.update(|t| {
        if let Some(service) = t.services.get_mut(&plan.service) {
            service.spec = plan.to.clone();
            service.stable = Some(plan.from.clone());
            service.active = true;
            service.rollout = Some(status.clone());
            service.steer = Some(tx);
        }
        t.specs.insert(plan.service.clone(), plan.to.clone());
    });
    inner.record(|records, key| {
        let record = records.service(&plan.service);
        record.current = Some(plan.to.revision.clone());
        record.rollout = Some(status.clone());
        record.rolling_back = false;
        let entry = HistoryEntry {
            revision: plan.to.revision.clone(),
            strategy: plan.strategy,
            outcome: Phase::Progressing,
            reason: plan.note.clone(),
            from_revision: Some(plan.from.revision.clone()),
            started_at: now.clone(),
            finished_at: None,
            current: false,
            spec: serde_json::Value::Null,
        };
        match record.latest_mut(&plan.to.revision) {
            Some(latest) if plan.resume => latest.entry.outcome = Phase::Progressing,
            _ => record.push(&plan.to, entry, key),
        }
    });
    log(&plan.service, &format!("rollout {} → {} ({})", plan.from.revision, plan.to.revision, plan.strategy.as_str()));
    let run = Run {
        inner: inner.clone(),
        changes: inner.changes.subscribe(),
        steer: rx,
        ready_since: HashMap::new(),
        removing: HashSet::new(),
        last_progress: Instant::now(),
        progress: (0, 0),
        window: None,
        plan,
    };
    tokio::spawn(run.run());
}

/// A progress reason with the rollout's note ("resumed after the daemon restarted", "undo to
/// …") after it: a canary step or a blue-green pause replaced the note, so a resumed or undone
/// rollout no longer said so while it ran.
fn noted(reason: String, note: Option<&str>) -> String {
    match note {
        Some(note) => format!("{reason} ({note})"),
        None => reason,
    }
}

fn log(service: &str, line: &str) {
    crate::log::info(line, &[("service", service)]);
}

/// An instance as a rollout sees it.
struct Row {
    name: String,
    replica: u32,
    ready: bool,
    /// Why it can never become ready (`failed`), if so.
    failed: Option<String>,
}

/// The service's instances: of the new revision, and of any other (old).
struct View {
    new: Vec<Row>,
    old: Vec<Row>,
}

impl View {
    fn new_ready(&self) -> u32 {
        self.new.iter().filter(|r| r.ready).count() as u32
    }

    fn old_ready(&self) -> u32 {
        self.old.iter().filter(|r| r.ready).count() as u32
    }
}

struct Run {
    inner: Arc<Inner>,
    plan: Plan,
    changes: watch::Receiver<u64>,
    steer: mpsc::UnboundedReceiver<Steer>,
    /// When each instance was first seen ready (and has stayed so).
    ready_since: HashMap<String, Instant>,
    /// Instances this rollout is removing: neither old nor new any more.
    removing: HashSet<String>,
    last_progress: Instant,
    /// (new instances ready, old instances left) when progress was last seen.
    progress: (u32, u32),
    /// Canary analysis, while it runs.
    window: Option<(Window, Limits)>,
}

impl Run {
    async fn run(mut self) {
        let outcome = self.drive().await;
        match outcome {
            Ok(()) => self.complete(),
            Err(Stop::Shutdown) => {}
            Err(Stop::Removed) => {
                self.finish(Phase::RolledBack, Some("the service was removed from the stack".into()), None, false)
            }
            Err(Stop::Superseded(next)) => {
                let why = format!("superseded by revision {next}");
                if matches!(self.plan.strategy, Strategy::Canary | Strategy::BlueGreen) {
                    self.roll_back(why, None).await;
                } else {
                    // The next rolling deploy replaces every instance not of its revision.
                    self.finish(Phase::RolledBack, Some(why), None, false);
                }
            }
            Err(Stop::Failed(why, measured)) => self.roll_back(why, measured).await,
            Err(Stop::Aborted(why)) => self.roll_back(why, None).await,
        }
    }

    async fn drive(&mut self) -> Step<()> {
        let message = format!(
            "rolling out {} ({}) over {}",
            self.plan.to.revision,
            self.plan.strategy.as_str(),
            self.plan.from.revision
        );
        self.emit(crate::events::Kind::Deploy, message);
        self.wait_for_dependencies().await?;
        if self.plan.resume {
            self.restore_stable().await?;
        }
        match self.plan.strategy {
            Strategy::Recreate => self.recreate().await,
            Strategy::Rolling => self.rolling().await,
            Strategy::BlueGreen => self.blue_green().await,
            Strategy::Canary => self.canary().await,
        }
    }

    fn name(&self) -> &str {
        &self.plan.service
    }

    fn min_ready(&self) -> Duration {
        Duration::from_millis(self.plan.to.deploy.min_ready_ms)
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.plan.to.deploy.progress_deadline_ms.max(1))
    }

    /// The service's instances now; readiness counts only once it has lasted `min_ready`.
    fn view(&mut self) -> View {
        let now = Instant::now();
        let table = self.inner.lock();
        let mut view = View { new: Vec::new(), old: Vec::new() };
        let mut seen = HashSet::new();
        let mut gone = Vec::new();
        for name in &self.removing {
            if !table.instances.contains_key(name) {
                gone.push(name.clone());
            }
        }
        for row in table.instances.values().filter(|i| i.status.service == self.plan.service) {
            let status = &row.status;
            if self.removing.contains(&status.instance) {
                continue;
            }
            let new = status.revision == self.plan.to.revision;
            let spec = if new { &self.plan.to } else { &self.plan.from };
            let up = match status.state {
                State::Healthy => true,
                State::Running => spec.healthcheck.is_none(),
                _ => false,
            };
            seen.insert(status.instance.clone());
            let since = if up { Some(*self.ready_since.entry(status.instance.clone()).or_insert(now)) } else { None };
            if !up {
                self.ready_since.remove(&status.instance);
            }
            let settle = if spec.healthcheck.is_none() { SETTLE } else { Duration::ZERO };
            let needed = if new { self.min_ready().max(settle) } else { Duration::ZERO };
            let ready = since.is_some_and(|s| now.duration_since(s) >= needed);
            let failed = (status.state == State::Failed).then(|| {
                format!("{} failed: {}", status.instance, status.message.clone().unwrap_or_else(|| "exited".into()))
            });
            let r = Row { name: status.instance.clone(), replica: row.replica, ready, failed };
            if new { view.new.push(r) } else { view.old.push(r) }
        }
        drop(table);
        for name in gone {
            self.removing.remove(&name);
        }
        self.ready_since.retain(|name, _| seen.contains(name));
        view.new.sort_by_key(|r| r.replica);
        view.old.sort_by_key(|r| r.replica);
        view
    }

    fn create(&self, spec: &Arc<ServiceSpec>, count: u32) {
        for _ in 0..count {
            instance::create(&self.inner, spec.clone());
        }
        if count > 0 {
            self.inner.update(|_| {});
        }
    }

    /// Drains `name` out of the routers and stops it, in the background.
    fn remove(&mut self, name: &str) {
        let table = self.inner.lock();
        if let Some(row) = table.instances.get(name) {
            let (tx, _rx) = oneshot::channel();
            let _ = row.control.send(Control::Remove(tx));
            self.removing.insert(name.to_string());
        }
    }

    fn removing_any(&self) -> bool {
        !self.removing.is_empty()
    }

    /// Sets the public status (and, unless only figures changed, the record).
    /// Figures and counts only (`persist` false) change the table quietly: waking watchers
    /// would wake this rollout's own `wait` too, which then never waited (a busy loop that
    /// took a core and grew the analysis window without bound). Watchers see them at their
    /// next poll.
    fn set(&self, persist: bool, change: impl FnOnce(&mut RolloutStatus)) {
        let now = tug_logs::format_time(std::time::SystemTime::now());
        let mut copy = None;
        let apply = |t: &mut crate::Table| {
            if let Some(status) = t.services.get_mut(&self.plan.service).and_then(|s| s.rollout.as_mut()) {
                change(status);
                status.updated_at = now;
                copy = Some(status.clone());
            }
        };
        if !persist {
            apply(&mut self.inner.lock());
            return;
        }
        self.inner.update(apply);
        if let Some(status) = copy {
            self.inner.record(|records, _| records.service(&self.plan.service).rollout = Some(status));
        }
    }

    fn counts(&self, view: &View) {
        let (n, r, o) = (view.new.len() as u32, view.new_ready(), view.old.len() as u32 + self.removing.len() as u32);
        let same = {
            let t = self.inner.lock();
            t.services
                .get(&self.plan.service)
                .and_then(|s| s.rollout.as_ref())
                .is_some_and(|s| (s.new_instances, s.new_ready, s.old_instances) == (n, r, o))
        };
        if !same {
            self.set(false, |s| {
                s.new_instances = n;
                s.new_ready = r;
                s.old_instances = o;
            });
        }
    }

    /// Fails when a new instance failed for good, or nothing moved for `progress_deadline`.
    fn check(&mut self, view: &View) -> Step<()> {
        if let Some(why) = view.new.iter().find_map(|r| r.failed.clone()) {
            return Err(Stop::Failed(why, None));
        }
        let marker = (view.new_ready(), view.old.len() as u32);
        if marker != self.progress {
            self.progress = marker;
            self.last_progress = Instant::now();
        }
        if self.last_progress.elapsed() >= self.deadline() {
            let waiting: Vec<String> = {
                let t = self.inner.lock();
                view.new
                    .iter()
                    .filter(|r| !r.ready)
                    .filter_map(|r| t.instances.get(&r.name))
                    .map(|i| {
                        // Why it is not ready: a failing probe, else what ended its last run.
                        let detail = i
                            .status
                            .health
                            .as_ref()
                            .filter(|h| !h.ok)
                            .map(|h| h.message.clone())
                            .or_else(|| i.status.message.clone())
                            .map(|m| format!(": {m}"));
                        format!("{} is {}{}", i.status.instance, i.status.state.as_str(), detail.unwrap_or_default())
                    })
                    .collect()
            };
            let why = format!(
                "no progress for {} (progress_deadline): {} of {} new instances ready{}",
                tug_stackfile::units::format_duration(self.deadline()),
                view.new_ready(),
                self.plan.replicas,
                if waiting.is_empty() { String::new() } else { format!("; {}", waiting.join("; ")) }
            );
            return Err(Stop::Failed(why, None));
        }
        Ok(())
    }

    /// Waits for a change, a steer, or a tick; runs the canary analysis when one is set.
    /// A steer the caller does not take is returned.
    async fn wait(&mut self) -> Step<Option<Steer>> {
        if self.inner.lock().shutting_down {
            return Err(Stop::Shutdown);
        }
        let steer = tokio::select! {
            // The sender lives in the service's row: gone means the service left the stack.
            steer = self.steer.recv() => match steer {
                Some(steer) => Some(steer),
                None => return Err(Stop::Removed),
            },
            _ = self.changes.changed() => None,
            _ = tokio::time::sleep(TICK) => None,
        };
        if self.inner.lock().shutting_down {
            return Err(Stop::Shutdown);
        }
        self.analyze()?;
        match steer {
            Some(Steer::Abort) => Err(Stop::Aborted("aborted by `tug rollout abort`".into())),
            Some(Steer::Undo) => Err(Stop::Aborted("undone by `tug rollout undo`".into())),
            Some(Steer::Supersede(next)) => Err(Stop::Superseded(next)),
            other => Ok(other),
        }
    }

    /// Waits until `done` holds of the view, checking failures and progress meanwhile.
    /// A promote received meanwhile is returned as true.
    async fn wait_until(&mut self, mut done: impl FnMut(&View) -> bool) -> Step<bool> {
        let mut promoted = false;
        loop {
            let view = self.view();
            self.counts(&view);
            self.check(&view)?;
            if done(&view) {
                return Ok(promoted);
            }
            if let Some(Steer::Promote) = self.wait().await? {
                promoted = true;
            }
        }
    }

    /// Dependency order: a rollout waits for its dependencies' rollouts under way, and does not
    /// start when one of them was rolled back meanwhile.
    async fn wait_for_dependencies(&mut self) -> Step<()> {
        let mut waited_for: HashSet<String> = HashSet::new();
        loop {
            let (waiting, rolled_back) = {
                let t = self.inner.lock();
                let mut waiting = None;
                let mut rolled_back = None;
                for (dep, _) in &self.plan.to.depends_on {
                    let Some(service) = t.services.get(dep) else { continue };
                    let Some(rollout) = service.rollout.as_ref() else { continue };
                    if service.steer.is_some() && matches!(rollout.phase, Phase::Progressing | Phase::Paused) {
                        waiting = Some(dep.clone());
                    } else if waited_for.contains(dep) && matches!(rollout.phase, Phase::RolledBack | Phase::Failed) {
                        rolled_back = Some(dep.clone());
                    }
                }
                (waiting, rolled_back)
            };
            if let Some(dep) = rolled_back {
                return Err(Stop::Aborted(format!("not rolled out: its dependency `{dep}` was rolled back")));
            }
            let Some(dep) = waiting else { return Ok(()) };
            if waited_for.insert(dep.clone()) {
                self.set(false, |s| s.reason = Some(format!("waiting for the rollout of `{dep}` (dependency order)")));
            }
            self.last_progress = Instant::now();
            self.wait().await?;
        }
    }

    /// A resumed rollout: the stable set comes back first, whole.
    async fn restore_stable(&mut self) -> Step<()> {
        let view = self.view();
        let missing = self.plan.replicas.saturating_sub(view.old.len() as u32);
        let from = self.plan.from.clone();
        self.create(&from, missing);
        let replicas = self.plan.replicas;
        self.wait_until(|v| v.old_ready() >= replicas).await?;
        Ok(())
    }

    /// `recreate`: every old instance goes, then the new ones start.
    async fn recreate(&mut self) -> Step<()> {
        let view = self.view();
        for row in &view.old {
            self.remove(&row.name);
        }
        while self.removing_any() {
            self.view();
            self.wait().await?;
        }
        self.set(true, |s| s.weight = 100);
        let to = self.plan.to.clone();
        let view = self.view();
        self.create(&to, self.plan.replicas.saturating_sub(view.new.len() as u32));
        let replicas = self.plan.replicas;
        self.wait_until(|v| v.new_ready() >= replicas).await?;
        // Nothing old is left to keep traffic from it: a failure brings the old set back.
        self.smoke(None).await
    }

    /// `rolling`: new instances start up to `max_surge` above the replicas; an old one is
    /// drained and stopped only while `max_unavailable` allows, counting new instances as
    /// available once they have been ready for `min_ready`.
    async fn rolling(&mut self) -> Step<()> {
        let r = self.plan.replicas;
        let deploy = &self.plan.to.deploy;
        let mut surge = deploy.max_surge.resolve(r, true);
        let unavailable = deploy.max_unavailable.resolve(r, false).min(r);
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        if self.plan.to.deploy.smoke.is_some() {
            self.smoke_first_instance(surge).await?;
        }
        let to = self.plan.to.clone();
        loop {
            let view = self.view();
            self.counts(&view);
            self.check(&view)?;
            let new_ready = view.new_ready();
            if view.old.is_empty() && !self.removing_any() && new_ready >= r && view.new.len() as u32 >= r {
                return Ok(());
            }
            // An instance being drained and stopped still runs (and holds its memory): it
            // counts against `max_surge` until it is gone. Without it, `max_surge: 1` ran five
            // instances of three replicas, and `max_surge: 0` four.
            let total = (view.new.len() + view.old.len() + self.removing.len()) as u32;
            let room = (r + surge).saturating_sub(total);
            let wanted = r.saturating_sub(view.new.len() as u32);
            self.create(&to, room.min(wanted));
            // Old instances that serve nothing go first; ready ones only while enough stay up.
            let mut available = view.old_ready() + new_ready;
            let floor = r - unavailable;
            for row in view.old.iter().rev() {
                if !row.ready {
                    self.remove(&row.name);
                } else if available > floor {
                    self.remove(&row.name);
                    available -= 1;
                }
            }
            let weight = (u64::from(new_ready) * 100 / u64::from(r.max(1))).min(100) as u8;
            if self.status_weight() != weight {
                self.set(true, |s| s.weight = weight);
            }
            self.wait().await?;
        }
    }

    /// Rolling with `deploy.smoke`: the old revision alone takes traffic until one new instance
    /// is ready and passes the check; then the rollout goes on as usual.
    async fn smoke_first_instance(&mut self, surge: u32) -> Step<()> {
        let routing = &self.inner.routing;
        routing.select(&self.inner, self.name(), Selection::Only(self.plan.from.revision.clone()));
        let view = self.view();
        if view.new.is_empty() {
            // No room above the replicas: an old instance makes room (`max_unavailable` is at
            // least one when `max_surge` is zero).
            if surge == 0
                && let Some(row) = view.old.iter().rev().find(|r| !r.ready).or(view.old.last())
            {
                self.remove(&row.name);
            }
            let to = self.plan.to.clone();
            self.create(&to, 1);
        }
        self.wait_until(|v| v.new_ready() >= 1).await?;
        self.smoke(None).await?;
        self.inner.routing.select(&self.inner, self.name(), Selection::All);
        Ok(())
    }

    /// `deploy.smoke` against the new revision before it takes traffic: through the preview
    /// port when one is given (blue-green), else on a ready new instance. A failure is the
    /// rollout's, so it rolls back.
    async fn smoke(&mut self, preview: Option<u16>) -> Step<()> {
        let Some(smoke) = self.plan.to.deploy.smoke.clone() else { return Ok(()) };
        let view = self.view();
        let found = {
            let t = self.inner.lock();
            view.new.iter().filter(|r| r.ready).find_map(|r| {
                let row = t.instances.get(&r.name)?;
                Some((
                    r.name.clone(),
                    row.status.port,
                    row.exec.as_ref()?.0.clone(),
                    row.resolved.as_ref()?.smoke.clone()?,
                ))
            })
        };
        let Some((instance, port, exec, check)) = found else {
            return Err(Stop::Failed("smoke check: no ready instance of the new revision to check".into(), None));
        };
        let (host, port, on) = match preview {
            Some(preview) if !matches!(check, Check::Exec { .. }) => {
                (self.inner.routing.listen_ip().to_string(), Some(preview), format!("the preview port {preview}"))
            }
            _ => (self.inner.config.host.clone(), port, instance),
        };
        let reason = noted(format!("smoke check on {on}"), self.plan.note.as_deref());
        self.set(false, |s| s.reason = Some(reason));
        let target = probe::Target { host: &host, port, exec: &exec };
        match probe::attempt(&check, &target, Duration::from_millis(smoke.timeout_ms)).await {
            Ok(passed) => {
                log(self.name(), &format!("smoke check passed on {on}: {passed}"));
                self.last_progress = Instant::now();
                Ok(())
            }
            Err(why) => Err(Stop::Failed(format!("smoke check failed on {on}: {why}"), None)),
        }
    }

    fn status_weight(&self) -> u8 {
        let t = self.inner.lock();
        t.services.get(&self.plan.service).and_then(|s| s.rollout.as_ref()).map_or(0, |s| s.weight)
    }

    /// `blue_green`: the whole new set starts beside the old one, which keeps all the traffic
    /// (the new set is served on `preview_port` meanwhile); the switch is one membership change;
    /// the old set stays for `scale_down_delay`, so an undo then is instant.
    async fn blue_green(&mut self) -> Step<()> {
        let routing = &self.inner.routing;
        routing.select(&self.inner, self.name(), Selection::Only(self.plan.from.revision.clone()));
        if let Some(port) = self.plan.to.deploy.preview_port {
            routing.open_preview(&self.plan.to, port).map_err(|e| Stop::Failed(format!("preview_port: {e}"), None))?;
        }
        let to = self.plan.to.clone();
        let view = self.view();
        self.create(&to, self.plan.replicas.saturating_sub(view.new.len() as u32));
        let replicas = self.plan.replicas;
        let mut promoted = self.wait_until(|v| v.new_ready() >= replicas).await?;
        self.smoke(self.plan.to.deploy.preview_port).await?;
        if !self.plan.to.deploy.auto_promote && !promoted {
            let reason =
                noted("the new set is ready; waiting for `tug rollout promote`".into(), self.plan.note.as_deref());
            self.set(true, |s| {
                s.phase = Phase::Paused;
                s.reason = Some(reason);
            });
            while !promoted {
                let view = self.view();
                self.counts(&view);
                if let Some(why) = view.new.iter().find_map(|r| r.failed.clone()) {
                    return Err(Stop::Failed(why, None));
                }
                // Waiting for a person is not a lack of progress.
                self.last_progress = Instant::now();
                promoted = matches!(self.wait().await?, Some(Steer::Promote));
            }
        }
        self.inner.routing.select(&self.inner, self.name(), Selection::Only(self.plan.to.revision.clone()));
        self.inner.routing.close_preview(self.name());
        let delay = Duration::from_millis(self.plan.to.deploy.scale_down_delay_ms);
        let reason = format!(
            "the new set serves everything; the old one stays {} for an instant undo",
            tug_stackfile::units::format_duration(delay)
        );
        let reason = noted(reason, self.plan.note.as_deref());
        self.set(true, |s| {
            s.phase = Phase::Promoted;
            s.weight = 100;
            s.reason = Some(reason.clone());
        });
        self.emit(crate::events::Kind::Promoted, reason);
        let until = Instant::now() + delay;
        while Instant::now() < until {
            // A new instance that fails now is a liveness matter; the old set is the way back.
            self.last_progress = Instant::now();
            self.wait().await?;
        }
        self.retire_old().await
    }

    /// Drains and stops every old instance, then serves every ready instance again.
    async fn retire_old(&mut self) -> Step<()> {
        let view = self.view();
        for row in &view.old {
            self.remove(&row.name);
        }
        while self.removing_any() {
            self.view();
            self.last_progress = Instant::now();
            self.wait().await?;
        }
        self.inner.routing.select(&self.inner, self.name(), Selection::All);
        Ok(())
    }

    /// `canary`: each step sends its percentage of requests to the new revision (instances
    /// in proportion), and advances once its `step_duration` has passed and its analysis passes
    /// (too few requests is a wait). The analysis runs at every tick over a sliding window: a
    /// failure at any moment is a rollback.
    async fn canary(&mut self) -> Step<()> {
        let to = self.plan.to.clone();
        let steps = to.deploy.steps.clone();
        let canary_revision = to.revision.clone();
        let split = |permille: u16| Selection::Split { canary: canary_revision.clone(), permille };
        self.inner.routing.select(&self.inner, self.name(), split(0));
        let step_duration = Duration::from_millis(to.deploy.step_duration_ms);
        let limits = Limits {
            max_error_rate: to.deploy.max_error_rate,
            max_p99: to.deploy.max_p99_ms.map(Duration::from_millis),
            min_requests: to.deploy.min_requests,
        };
        self.window = Some((Window::new(step_duration.clamp(MIN_WINDOW, MAX_WINDOW)), limits));
        let r = self.plan.replicas;
        let mut promoted_by_hand = false;
        for (index, &percent) in steps.iter().enumerate().skip(self.plan.first_step) {
            let wanted = (u32::from(percent) * r).div_ceil(100).clamp(1, r.max(1));
            let view = self.view();
            self.create(&to, wanted.saturating_sub(view.new.len() as u32));
            let promoted = self.wait_until(|v| v.new_ready() >= wanted).await?;
            if index == 0 {
                self.smoke(None).await?;
            }
            if promoted {
                break;
            }
            self.inner.routing.select(&self.inner, self.name(), split(u16::from(percent) * 10));
            let reason = format!("step {} of {}: {percent}% of requests", index + 1, steps.len());
            let reason = noted(reason, self.plan.note.as_deref());
            self.set(true, |s| {
                s.step = Some(index);
                s.weight = percent;
                s.reason = Some(reason);
            });
            log(self.name(), &format!("canary step {}: {percent}%", index + 1));
            let started = Instant::now();
            let mut promote_now = false;
            loop {
                let view = self.view();
                self.counts(&view);
                if let Some(why) = view.new.iter().find_map(|r| r.failed.clone()) {
                    return Err(Stop::Failed(why, None));
                }
                if started.elapsed() >= step_duration {
                    match self.window.as_ref().map(|(w, l)| w.judge(l)) {
                        Some(Verdict::Pass(_)) | None => break,
                        Some(Verdict::Wait(_, why)) => {
                            let reason = format!("step {} of {}: {percent}%, waiting: {why}", index + 1, steps.len());
                            let reason = noted(reason, self.plan.note.as_deref());
                            self.set(false, |s| s.reason = Some(reason));
                            if started.elapsed() >= step_duration + self.deadline() {
                                let why = format!(
                                    "no progress for {} (progress_deadline): {why}",
                                    tug_stackfile::units::format_duration(self.deadline())
                                );
                                return Err(Stop::Failed(why, None));
                            }
                        }
                        Some(Verdict::Fail(m, why)) => return Err(Stop::Failed(why, Some(m))),
                    }
                }
                if let Some(Steer::Promote) = self.wait().await? {
                    promote_now = true;
                    break;
                }
            }
            if promote_now {
                promoted_by_hand = true;
                break;
            }
        }
        // Full promotion: as many new instances as replicas, all the traffic, then the old go.
        let view = self.view();
        self.create(&to, r.saturating_sub(view.new.len() as u32));
        self.wait_until(|v| v.new_ready() >= r).await?;
        self.window = None;
        self.inner.routing.select(&self.inner, self.name(), split(1000));
        let reason = noted("promoted: the old revision drains".into(), self.plan.note.as_deref());
        self.set(true, |s| {
            s.weight = 100;
            s.reason = Some(reason.clone());
        });
        if promoted_by_hand {
            self.emit(crate::events::Kind::Promoted, reason);
        }
        self.retire_old().await
    }

    /// One tick of the canary analysis: a failure is a rollback.
    fn analyze(&mut self) -> Step<()> {
        let Some((window, limits)) = self.window.as_mut() else { return Ok(()) };
        let stats = self.inner.routing.stats(Some(&self.plan.service));
        let (canary, stable) = analysis::split(&stats, &self.plan.to.revision);
        window.record(std::time::Instant::now(), canary, stable);
        let verdict = window.judge(limits);
        let measured = match &verdict {
            Verdict::Pass(m) | Verdict::Wait(m, _) | Verdict::Fail(m, _) => m.clone(),
        };
        self.set(false, |s| s.measured = Some(measured));
        if let Verdict::Fail(m, why) = verdict {
            return Err(Stop::Failed(why, Some(m)));
        }
        Ok(())
    }

    /// Tells the event stream, with where the rollout stands.
    fn emit(&self, kind: crate::events::Kind, message: String) {
        let mut event = crate::events::Event::new(kind, self.name(), message);
        event.rollout = self.inner.lock().services.get(self.name()).and_then(|s| s.rollout.clone());
        self.inner.events.emit(event);
    }

    /// The new revision serves everything: record it.
    fn complete(&mut self) {
        self.inner.routing.select(&self.inner, self.name(), Selection::All);
        // The note stays the reason of a complete rollout: status and history then still say
        // that it was an undo, or resumed after a daemon restart (it was lost at the end).
        let note = self.plan.note.clone();
        self.finish(Phase::Complete, note, None, true);
    }

    /// Back to the old revision: traffic first (at once), then instances.
    async fn roll_back(&mut self, why: String, measured: Option<Measured>) {
        self.window = None;
        let routing = &self.inner.routing;
        // All traffic to the old revision now: no request waits for the cleanup.
        match self.plan.strategy {
            Strategy::Canary => routing.select(
                &self.inner,
                self.name(),
                Selection::Split { canary: self.plan.to.revision.clone(), permille: 0 },
            ),
            Strategy::BlueGreen => {
                routing.select(&self.inner, self.name(), Selection::Only(self.plan.from.revision.clone()))
            }
            _ => {}
        }
        routing.close_preview(self.name());
        log(self.name(), &format!("rolling back to {}: {why}", self.plan.from.revision));
        self.set(true, |s| {
            s.weight = 0;
            s.reason = Some(format!("rolling back: {why}"));
            s.measured = measured.clone().or(s.measured.take());
        });
        self.inner.record(|records, _| records.service(&self.plan.service).rolling_back = true);
        let restored = self.restore_old().await;
        match restored {
            Ok(()) => {
                self.inner.routing.select(&self.inner, self.name(), Selection::All);
                self.finish(Phase::RolledBack, Some(why), measured, false);
            }
            Err(Stop::Shutdown) => {}
            Err(Stop::Removed) => self.finish(Phase::RolledBack, Some(why), measured, false),
            Err(Stop::Failed(more, _) | Stop::Aborted(more) | Stop::Superseded(more)) => {
                self.inner.routing.select(&self.inner, self.name(), Selection::All);
                let why = format!("{why}; then the rollback failed: {more}");
                self.finish(Phase::Failed, Some(why), measured, false);
            }
        }
    }

    /// Old instances back to the replicas (surging: the new ones still serve meanwhile), then
    /// the new ones drained away.
    async fn restore_old(&mut self) -> Step<()> {
        let from = self.plan.from.clone();
        let r = self.plan.replicas;
        let view = self.view();
        self.create(&from, r.saturating_sub(view.old.len() as u32));
        self.last_progress = Instant::now();
        let deadline = self.deadline();
        loop {
            let view = self.view();
            self.counts(&view);
            if view.old_ready() >= r.min(view.old.len() as u32) && view.old.len() as u32 >= r {
                break;
            }
            if let Some(why) = view.old.iter().find_map(|r| r.failed.clone()) {
                return Err(Stop::Failed(why, None));
            }
            if self.last_progress.elapsed() >= deadline {
                return Err(Stop::Failed("the previous revision did not become ready in time".into(), None));
            }
            // Steers are moot now: the rollback finishes.
            match self.wait().await {
                Err(stop @ (Stop::Shutdown | Stop::Removed)) => return Err(stop),
                _ => continue,
            }
        }
        let view = self.view();
        for row in &view.new {
            self.remove(&row.name);
        }
        while self.removing_any() {
            self.view();
            if let Err(stop @ (Stop::Shutdown | Stop::Removed)) = self.wait().await {
                return Err(stop);
            }
        }
        Ok(())
    }

    /// Writes the end of the rollout: phase, reason, figures, which revision runs.
    fn finish(&mut self, phase: Phase, reason: Option<String>, measured: Option<Measured>, to_runs: bool) {
        let now = tug_logs::format_time(std::time::SystemTime::now());
        let runs = if to_runs { self.plan.to.clone() } else { self.plan.from.clone() };
        let view = self.view();
        let mut status = None;
        let service = self.plan.service.clone();
        self.inner.update(|t| {
            if let Some(s) = t.services.get_mut(&service) {
                s.spec = runs.clone();
                s.stable = None;
                s.steer = None;
                if let Some(r) = s.rollout.as_mut() {
                    r.phase = phase;
                    r.reason = reason.clone();
                    if measured.is_some() {
                        r.measured = measured.clone();
                    }
                    r.finished_at = Some(now.clone());
                    r.updated_at = now.clone();
                    r.new_instances = view.new.len() as u32;
                    r.new_ready = view.new_ready();
                    r.old_instances = view.old.len() as u32;
                    status = Some(r.clone());
                }
            }
            // A service removed meanwhile stays removed.
            if t.services.contains_key(&service) {
                t.specs.insert(service.clone(), runs.clone());
            }
        });
        let to = self.plan.to.revision.clone();
        let status_after = status.clone();
        self.inner.record(|records, _| {
            let record = records.service(&service);
            record.current = Some(runs.revision.clone());
            record.rolling_back = false;
            if let Some(status) = status {
                record.rollout = Some(status);
            }
            if let Some(entry) = record.latest_mut(&to) {
                entry.entry.outcome = phase;
                entry.entry.reason = reason.clone();
                entry.entry.finished_at = Some(now.clone());
            }
        });
        let line = match &reason {
            Some(why) => format!("rollout to {to}: {}: {why}", phase.as_str()),
            None => format!("rollout to {to}: {}", phase.as_str()),
        };
        log(&service, &line);
        let kind = match phase {
            Phase::Complete => Some(crate::events::Kind::Deployed),
            Phase::RolledBack | Phase::Failed => Some(crate::events::Kind::RolledBack),
            _ => None,
        };
        if let Some(kind) = kind {
            let mut event = crate::events::Event::new(kind, &service, line);
            event.rollout = status_after;
            self.inner.events.emit(event);
        }
    }
}
