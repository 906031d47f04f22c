//! `deploy.before`: the jobs a service names run to completion, with the new revision's
//! configuration, before its rollout starts: once per deploy (a job several services name runs
//! once), not per replica. A failure stops the deploy before anything changed: the old revisions
//! keep serving, and the history, the event stream and the command say why, with the job's last
//! lines.
//!
//! The job's output goes to its log (`tug logs JOB`, as `JOB-before`), and once it completed
//! the job's row holds the new revision and this run, so the `apply` that follows finds it done
//! and does not run it again. Until then its last run is what its dependents' gates see: a
//! failed hook never keeps the running revision from restarting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indexmap::IndexMap;
use tokio::sync::{mpsc, oneshot};
use tug_logs::{LineSplitter, LogWriter, Stream};
use tug_proto::plan::Action;
use tug_proto::rollout::{HistoryEntry, Phase, RolloutStatus};
use tug_proto::spec::{Kind, RunRequest, ServiceSpec, UpRequest};
use tug_proto::status::{State, UpResponse};

use crate::driver::ExecEvent;
use crate::instance::{Control, MAX_LINE};
use crate::plan;
use crate::{Error, Service, Supervisor, current, validate_spec};

/// Lines of a failed job's log quoted in the error.
const TAIL_LINES: usize = 10;

/// A job's run that did not complete: what to tell the user.
struct Failure {
    why: String,
    tail: Vec<String>,
}

impl Failure {
    fn refused(why: &str) -> Failure {
        Failure { why: why.to_string(), tail: Vec::new() }
    }
}

impl Supervisor {
    /// `up`/`deploy`: the `deploy.before` jobs of every service this request rolls out, then
    /// [`apply`](Self::apply). One deploy at a time, so a plan is not changed under the jobs.
    pub async fn deploy(&self, request: UpRequest) -> Result<UpResponse, Error> {
        let _one_at_a_time = self.inner.deploying.lock().await;
        let jobs = self.before_jobs(&request)?;
        if !jobs.is_empty() {
            // What would refuse the deploy itself refuses it before a job changes anything.
            self.refusal(&request.spec, &request.targets)?;
        }
        for (job, services) in jobs {
            let spec = request.spec.services.iter().find(|s| s.name == job).cloned().map(Arc::new);
            let Some(spec) = spec.filter(|s| s.kind == Kind::Job) else {
                return Err(Error::BadRequest(format!(
                    "`{}` runs `{job}` before each deploy, but the stack has no job named `{job}`",
                    services[0]
                )));
            };
            if let Err(failure) = self.run_before(&job, spec, &request).await {
                let message = format!(
                    "deploy.before: the job `{job}` {}; nothing was deployed{}",
                    failure.why,
                    if failure.tail.is_empty() {
                        String::new()
                    } else {
                        format!("\nits last lines (`tug logs {job}`):\n  {}", failure.tail.join("\n  "))
                    }
                );
                for service in &services {
                    self.record_refused(service, &request, &format!("deploy.before: the job `{job}` {}", failure.why));
                }
                return Err(Error::Conflict(message));
            }
            crate::log::info("deploy.before: completed", &[("service", &job)]);
        }
        self.apply(request)
    }

    /// The jobs to run before this request's rollouts, each with the services that name it, in
    /// the order the services and their lists give.
    fn before_jobs(&self, request: &UpRequest) -> Result<IndexMap<String, Vec<String>>, Error> {
        validate_spec(&request.spec)?;
        let new_specs: IndexMap<String, Arc<ServiceSpec>> =
            request.spec.services.iter().map(|s| (s.name.clone(), Arc::new(s.clone()))).collect();
        let decided = plan::plan(&current(&self.inner.lock()), &new_specs, &request.targets);
        let mut jobs: IndexMap<String, Vec<String>> = IndexMap::new();
        for step in decided.services.iter().filter(|s| s.action == Action::RollOut) {
            for job in &new_specs[&step.name].deploy.before {
                jobs.entry(job.clone()).or_default().push(step.name.clone());
            }
        }
        Ok(jobs)
    }

    /// Runs `job` once with `spec` and waits for it to end. A job the daemon already runs goes
    /// as a one-off beside its row (its last run stays what dependents' gates see until this one
    /// completes, so a failure never blocks a restart of what runs now), then its row takes the
    /// new revision and this run. A job new to the stack runs in its own new row.
    async fn run_before(&self, job: &str, spec: Arc<ServiceSpec>, request: &UpRequest) -> Result<(), Failure> {
        self.refuse_if_shutting_down().map_err(|e| Failure::refused(&e.to_string()))?;
        crate::log::info("deploy.before: running", &[("service", job)]);
        let known = self.inner.lock().services.contains_key(job);
        if !known {
            return self.run_in_new_row(job, spec).await;
        }
        let started = tug_logs::format_time(SystemTime::now());
        let run = RunRequest {
            project: request.spec.project.clone(),
            engine: request.spec.engine.clone(),
            service: (*spec).clone(),
            command: Vec::new(),
            on_host: None,
        };
        let mut events = self.run_one_off(run).map_err(|e| Failure::refused(&e.to_string()))?;
        // Its output goes to the job's log, as `<job>-before`, and its last lines to the user.
        let logs = LogWriter::open(
            &self.inner.config.logs_dir(),
            job,
            &format!("{job}-before"),
            spec.log_max_size,
            spec.log_max_files,
        )
        .ok();
        let (ended, tail) = logged(&mut events, logs).await;
        match ended {
            Ok(0) => {
                self.adopt(job, &spec, started);
                Ok(())
            }
            Ok(code) => Err(Failure { why: format!("failed (exit code {code})"), tail }),
            Err(why) => Err(Failure { why, tail }),
        }
    }

    /// A job's row after its `deploy.before` run completed: the new revision, whose run that
    /// was, so the `apply` that follows finds it done and does not run it again.
    fn adopt(&self, job: &str, spec: &Arc<ServiceSpec>, started: String) {
        let finished = tug_logs::format_time(SystemTime::now());
        self.inner.update(|t| {
            if let Some(service) = t.services.get_mut(job) {
                service.spec = spec.clone();
            }
            t.specs.insert(job.to_string(), spec.clone());
            for row in t.instances.values_mut().filter(|i| i.status.service == job) {
                let status = &mut row.status;
                if matches!(status.state, State::Completed | State::Failed | State::Stopped) {
                    status.revision = spec.revision.clone();
                    status.state = State::Completed;
                    status.exit_code = Some(0);
                    status.message = Some("ran as deploy.before".into());
                    status.started_at = Some(started.clone());
                    status.finished_at = Some(finished.clone());
                }
            }
        });
    }

    /// A job new to the stack: its row is made with `spec` and its instance runs there.
    async fn run_in_new_row(&self, job: &str, spec: Arc<ServiceSpec>) -> Result<(), Failure> {
        let started = SystemTime::now();
        self.inner.update(|t| {
            t.services.entry(job.to_string()).or_insert_with(|| Service::new(spec.clone()));
            t.specs.insert(job.to_string(), spec.clone());
        });
        self.activate(job, true);
        let waited = tokio::time::Instant::now();
        let mut changes = self.inner.changes.subscribe();
        loop {
            let (row, shutting_down) = {
                let t = self.inner.lock();
                let row = t.instances.values().find(|i| i.status.service == job);
                let row = row
                    .map(|i| (i.status.instance.clone(), i.status.state, i.status.exit_code, i.status.message.clone()));
                (row, t.shutting_down)
            };
            if shutting_down {
                return Err(Failure::refused("did not finish: the stack is shutting down"));
            }
            match row {
                Some((_, State::Completed, ..)) => return Ok(()),
                Some((instance, State::Failed | State::Crashloop, code, message)) => {
                    if let Some(control) = self.instance_controls(job).first() {
                        let (tx, _rx) = oneshot::channel();
                        let _ = control.send(Control::Stop(tx));
                    }
                    let why = match (code, message) {
                        (Some(code), _) => format!("failed (exit code {code})"),
                        (None, Some(message)) => format!("failed: {message}"),
                        (None, None) => "failed".to_string(),
                    };
                    return Err(Failure { why, tail: tail(&self.inner.config.logs_dir(), &instance, started) });
                }
                // Waiting for its dependencies, which may never come: bounded as a rollout's
                // progress is.
                Some((_, State::Pending, _, message)) if waited.elapsed() >= progress_deadline(&spec) => {
                    let why = format!(
                        "did not start within {}{}",
                        tug_stackfile::units::format_duration(progress_deadline(&spec)),
                        message.map(|m| format!(": {m}")).unwrap_or_default()
                    );
                    return Err(Failure::refused(&why));
                }
                _ => {}
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    return Err(Failure::refused("did not finish: the daemon is stopping"));
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// A deploy of `service` that `deploy.before` stopped: in its history (the revision that was
    /// not deployed, and why), its status and the event stream. Nothing else changes.
    fn record_refused(&self, service: &str, request: &UpRequest, why: &str) {
        let Some(new) = request.spec.services.iter().find(|s| s.name == service) else { return };
        let from = self.inner.lock().services.get(service).map(|s| s.spec.revision.clone());
        let now = tug_logs::format_time(SystemTime::now());
        let status = RolloutStatus {
            service: service.to_string(),
            strategy: new.deploy.strategy,
            phase: Phase::Failed,
            from_revision: from.clone(),
            to_revision: new.revision.clone(),
            weight: 0,
            step: None,
            steps: Vec::new(),
            reason: Some(why.to_string()),
            measured: None,
            new_instances: 0,
            new_ready: 0,
            old_instances: 0,
            replicas: new.replicas,
            started_at: now.clone(),
            updated_at: now.clone(),
            finished_at: Some(now.clone()),
        };
        self.inner.update(|t| {
            if let Some(s) = t.services.get_mut(service) {
                s.rollout = Some(status.clone());
            }
        });
        self.inner.record(|records, key| {
            let record = records.service(service);
            let entry = HistoryEntry {
                revision: new.revision.clone(),
                strategy: new.deploy.strategy,
                outcome: Phase::Failed,
                reason: Some(why.to_string()),
                from_revision: from.clone(),
                started_at: now.clone(),
                finished_at: Some(now.clone()),
                current: false,
                spec: serde_json::Value::Null,
            };
            record.push(new, entry, key);
        });
        crate::log::warn(&format!("not deployed: {why}"), &[("service", service)]);
        let mut event = crate::events::Event::new(crate::events::Kind::DeployFailed, service, why.to_string());
        event.rollout = Some(status);
        self.inner.events.emit(event);
    }
}

/// Follows a one-off to its end, its lines into `logs` (when it could be opened): how it
/// ended, and its last lines.
async fn logged(
    events: &mut mpsc::Receiver<ExecEvent>,
    mut logs: Option<LogWriter>,
) -> (Result<i32, String>, Vec<String>) {
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut splitters = [LineSplitter::new(MAX_LINE), LineSplitter::new(MAX_LINE)];
    let mut line = |stream: Stream, line: &[u8]| {
        if let Some(writer) = logs.as_mut() {
            let _ = writer.write(SystemTime::now(), stream, line);
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(String::from_utf8_lossy(line).into_owned());
    };
    let ended = loop {
        match events.recv().await {
            Some(ExecEvent::Output(stream, bytes)) => {
                let index = usize::from(stream == Stream::Err);
                splitters[index].push(&bytes, &mut |l| line(stream, l));
            }
            Some(ExecEvent::Exit(code)) => break Ok(code),
            Some(ExecEvent::Failed(why)) => break Err(format!("could not run: {why}")),
            None => break Err("ended without an exit status".to_string()),
        }
    };
    for (index, stream) in [Stream::Out, Stream::Err].into_iter().enumerate() {
        splitters[index].finish(&mut |l| line(stream, l));
    }
    if let Some(writer) = logs.as_mut() {
        let _ = writer.flush();
    }
    (ended, tail.into())
}

fn progress_deadline(spec: &ServiceSpec) -> Duration {
    Duration::from_millis(spec.deploy.progress_deadline_ms)
}

/// The last lines `instance` logged since `since` (already masked, as its log is).
fn tail(logs_dir: &std::path::Path, instance: &str, since: SystemTime) -> Vec<String> {
    let selector = tug_logs::Selector::new([instance]);
    match tug_logs::read(logs_dir, &selector, Some(TAIL_LINES), Some(since)) {
        Ok(records) => records.into_iter().map(|r| r.text).collect(),
        Err(_) => Vec::new(),
    }
}
