//! Rollouts, run as a user runs them: `tug deploy` with every strategy under steady keep-alive
//! load, the automatic rollback of a bad canary, min_ready, max_unavailable, progress_deadline,
//! the rollout controls (promote, abort, undo), history with its secrets masked, config-only
//! changes, services added and removed, tenant-sticky canaries, the autoscaler, and a daemon
//! SIGKILLed mid-rollout (resumed, or rolled back).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Stack, alive, demo_bin, free_port, stack_processes, wait_gone};
use crate::routing::{KeepAlive, field_of, http_once};

// ---------------------------------------------------------------------------------------------
// The load generator.

/// One request of a load run.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent.
    pub at: Instant,
    /// (status, `version` of the answer), or the connection error.
    pub outcome: Result<(u16, String), String>,
}

/// `threads` clients, each on its own keep-alive HTTP/1.1 connection (a new one when a
/// connection fails, the failure counted), each sending `rate` requests a second, steadily.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(port: u16, threads: usize, rate: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let workers = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut client = KeepAlive::new("127.0.0.1", port);
                    let mut samples = Vec::new();
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let outcome = client.get("/").map(|(status, body)| (status, field_of(&body, "version")));
                        samples.push(Sample { at, outcome });
                        // A steady rate; a late request does not make the next ones burst.
                        next = (next + period).max(Instant::now());
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    samples
                })
            })
            .collect();
        Load { stop, workers }
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples: Vec<Sample> = self.workers.into_iter().flat_map(|w| w.join().expect("load thread")).collect();
        samples.sort_by_key(|s| s.at);
        Report { samples }
    }
}

/// What a load run saw.
pub struct Report {
    pub samples: Vec<Sample>,
}

impl Report {
    pub fn ok(&self) -> usize {
        self.samples.iter().filter(|s| matches!(s.outcome, Ok((200..=299, _)))).count()
    }

    /// Answers that were not 2xx, and connection errors.
    pub fn failed(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| !matches!(s.outcome, Ok((200..=299, _)))).collect()
    }

    /// Requests sent at or after `t`.
    pub fn since(&self, t: Instant) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.at >= t)
    }

    /// The versions that answered requests sent at or after `t`, with their counts.
    pub fn versions_since(&self, t: Instant) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for s in self.since(t) {
            if let Ok((_, version)) = &s.outcome {
                *seen.entry(version.clone()).or_default() += 1;
            }
        }
        seen
    }

    /// Counts by outcome: `200 v2: 123, 500 v2: 4, error: 1`, and the first errors.
    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for s in &self.samples {
            let key = match &s.outcome {
                Ok((status, version)) => format!("{status} v{version}"),
                Err(_) => "connection error".into(),
            };
            *counts.entry(key).or_default() += 1;
        }
        let errors: Vec<&str> =
            self.samples.iter().filter_map(|s| s.outcome.as_ref().err().map(String::as_str)).take(3).collect();
        format!("{} requests: {counts:?}; first errors: {errors:?}", self.samples.len())
    }

    /// Nothing failed, and the load really ran.
    pub fn assert_clean(&self, what: &str, at_least: usize) {
        let failed = self.failed();
        assert!(failed.is_empty(), "{what}: {} failed requests; {}", failed.len(), self.summary());
        assert!(self.ok() >= at_least, "{what}: only {} requests went through; {}", self.ok(), self.summary());
    }
}

// ---------------------------------------------------------------------------------------------
// Stacks and commands.

/// A stack of `web`: demo replicas behind `port`, answering with `version`, probed at once
/// (`start_interval: 100ms`), with `deploy` and extra `environment` entries (`, KEY: value`).
fn web_yaml(name: &str, port: u16, replicas: u32, version: &str, env: &str, deploy: &str) -> String {
    format!(
        r#"
name: {name}
services:
  web:
    command: "{{demo}}"
    replicas: {replicas}
    port: {port}
    stop_grace_period: 2s
    environment: {{ VERSION: "{version}"{env} }}
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
    deploy: {deploy}
"#
    )
}

/// Replaces the stack's file (`{demo}` as in [`Stack::new`]).
fn rewrite(stack: &Stack, yaml: &str) {
    stack.dir.write("tug.yaml", &yaml.replace("{demo}", &demo_bin().display().to_string()));
}

/// `tug deploy` with a generous limit.
pub(crate) fn deploy(stack: &Stack) -> crate::Run {
    stack.tug(&["deploy", "--timeout", "120s"])
}

pub(crate) fn deploy_ok(stack: &Stack) -> crate::Run {
    let run = deploy(stack);
    assert_eq!(run.code, 0, "tug deploy failed:\n{}", run.all());
    run
}

/// `tug rollout status web --json`.
pub(crate) fn status(stack: &Stack) -> Value {
    let run = stack.tug(&["rollout", "status", "web", "--json"]);
    assert_eq!(run.code, 0, "tug rollout status failed:\n{}", run.all());
    serde_json::from_str(&run.stdout).expect("rollout status --json is JSON")
}

/// The rollout status, if there is one (and a daemon to ask).
pub(crate) fn try_status(stack: &Stack) -> Option<Value> {
    let run = stack.tug(&["rollout", "status", "web", "--json"]);
    if run.code != 0 {
        return None;
    }
    Some(serde_json::from_str(&run.stdout).expect("rollout status --json is JSON"))
}

/// Polls the rollout status until `check` holds, or panics after `timeout`.
pub(crate) fn wait_status(stack: &Stack, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = try_status(stack);
        if let Some(s) = &s
            && check(s)
        {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; last status: {s:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn wait_phase(stack: &Stack, phase: &str) -> Value {
    wait_status(stack, &format!("phase {phase}"), Duration::from_secs(60), |s| s["phase"] == phase)
}

pub(crate) fn act(stack: &Stack, action: &str) {
    let run = stack.tug(&["rollout", action, "web"]);
    assert_eq!(run.code, 0, "tug rollout {action} web failed:\n{}", run.all());
}

/// `tug history web --json`, newest first.
pub(crate) fn history(stack: &Stack) -> Vec<Value> {
    let run = stack.tug(&["history", "web", "--json"]);
    assert_eq!(run.code, 0, "tug history failed:\n{}", run.all());
    serde_json::from_str::<Value>(&run.stdout).expect("history --json is JSON").as_array().cloned().unwrap()
}

/// The versions of `n` answers on new connections; every one must be a 200.
pub(crate) fn versions(port: u16, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let (status, body) = http_once("127.0.0.1", port, "GET", "/").expect("an answer");
            assert_eq!(status, 200, "{body}");
            field_of(&body, "version")
        })
        .collect()
}

/// Polls until `n` answers come from exactly the `wanted` versions: the routers take a new
/// membership a moment after the rollout status shows it.
pub(crate) fn wait_versions(port: u16, wanted: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = versions(port, 20);
        if seen == set(wanted) {
            return;
        }
        assert!(Instant::now() < deadline, "versions {seen:?}, wanted {wanted:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The instances of `service` that `tug ps --json` shows.
pub(crate) fn rows_of(stack: &Stack, service: &str) -> Vec<Value> {
    stack.ps().into_iter().filter(|i| i["service"] == service).collect()
}

pub(crate) fn web_rows(stack: &Stack) -> Vec<Value> {
    rows_of(stack, "web")
}

/// The revision `web`'s instances run, when they all run the same one.
pub(crate) fn web_revision(stack: &Stack) -> String {
    let revisions: BTreeSet<String> =
        web_rows(stack).iter().map(|i| i["revision"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(revisions.len(), 1, "{revisions:?}");
    revisions.into_iter().next().unwrap()
}

fn daemon_log(stack: &Stack) -> String {
    std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn rolling_blue_green_and_canary_deploys_under_load_fail_no_request() {
    let port = free_port();
    let yaml = |version: &str, deploy: &str| web_yaml("zero", port, 3, version, "", deploy);
    let stack = Stack::new("rollout-zero", &yaml("1", "{ strategy: rolling }"));
    stack.up();
    let deploys = [
        ("2", "rolling", "{ strategy: rolling }"),
        ("3", "blue_green", "{ strategy: blue_green, auto_promote: true, scale_down_delay: 1s }"),
        ("4", "canary", "{ strategy: canary, steps: [34, 67, 100], step_duration: 1s }"),
    ];
    for (version, strategy, deploy) in deploys {
        let from = web_revision(&stack);
        rewrite(&stack, &yaml(version, deploy));
        let load = Load::start(port, 4, 40);
        std::thread::sleep(Duration::from_millis(300));
        let run = deploy_ok(&stack);
        let done = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        let report = load.stop();
        // Zero failed requests: no non-2xx answer, no connection error.
        report.assert_clean(&format!("{strategy} deploy of v{version}"), 40);
        // The load spanned the switch: both versions answered it.
        let all = report.versions_since(report.samples[0].at);
        assert!(all.len() == 2 && all.contains_key(version), "{strategy}: {}", report.summary());
        let after = report.versions_since(done);
        assert_eq!(after.keys().collect::<Vec<_>>(), [version], "{strategy}: after deploy returned: {after:?}");
        let s = status(&stack);
        assert_eq!(s["strategy"], strategy, "{s:#}");
        assert_eq!(s["from_revision"], from.as_str(), "{s:#}");
        assert!(s["phase"] == "complete" || (strategy == "blue_green" && s["phase"] == "promoted"), "{s:#}");
        assert!(run.stderr.contains(strategy), "deploy shows the rollout:\n{}", run.all());
        // The blue-green old set goes after scale_down_delay; the next deploy needs it done.
        let s = wait_phase(&stack, "complete");
        assert_eq!((s["new_instances"].as_u64(), s["old_instances"].as_u64()), (Some(3), Some(0)), "{s:#}");
        assert_eq!(versions(port, 100), set(&[version]), "{strategy}: every answer from the new version");
        let rows = web_rows(&stack);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert!(rows.iter().all(|r| r["revision"] == s["to_revision"] && r["state"] == "healthy"), "{rows:#?}");
    }
}

#[test]
fn a_canary_failing_30_percent_of_requests_is_rolled_back_automatically() {
    let port = free_port();
    let canary = "{ strategy: canary, steps: [34, 67, 100], step_duration: 1s, \
                  analysis: { max_error_rate: 5%, min_requests: 20 } }";
    let stack = Stack::new("rollout-bad-canary", &web_yaml("bad", port, 3, "1", "", canary));
    stack.up();
    let stable = web_revision(&stack);
    rewrite(&stack, &web_yaml("bad", port, 3, "2", r#", DEMO_FAIL_RATE: "30%""#, canary));
    let load = Load::start(port, 4, 40);
    let run = deploy(&stack);
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert_eq!(run.code, 1, "a rolled back deploy fails:\n{}", run.all());
    assert!(run.stderr.contains("rolled back") && run.stderr.contains("error rate"), "{}", run.all());
    assert!(run.stderr.contains("measured"), "deploy prints the measured values:\n{}", run.all());
    // It ends by saying what changed and what did not.
    assert!(run.stderr.contains("changed: nothing\nnot changed: web (rolled back, runs "), "{}", run.all());
    // The status says why, with the figures.
    let s = status(&stack);
    assert_eq!(s["phase"], "rolled_back", "{s:#}");
    assert_eq!(s["weight"], 0, "{s:#}");
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("error rate"), "{s:#}");
    let canary = &s["measured"]["canary"];
    assert!(canary["requests"].as_u64().unwrap() >= 20, "{s:#}");
    assert!(canary["errors"].as_u64().unwrap() > 0, "{s:#}");
    assert!(canary["error_rate"].as_f64().unwrap() > 0.05, "{s:#}");
    assert!(s["measured"]["stable"]["requests"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["measured"]["window_ms"].as_u64().is_some(), "{s:#}");
    // The canary got traffic (and failed some of it); no connection ever failed.
    assert!(report.samples.iter().any(|s| matches!(&s.outcome, Ok((500, v)) if v == "2")), "{}", report.summary());
    assert!(report.samples.iter().all(|s| s.outcome.is_ok()), "{}", report.summary());
    // After the rollback stable serves everything: no 5xx, every answer v1.
    let after: Vec<&Sample> = report.since(done).collect();
    assert!(after.len() > 20, "{}", report.summary());
    assert!(after.iter().all(|s| matches!(&s.outcome, Ok((200, v)) if v == "1")), "{}", report.summary());
    assert_eq!(versions(port, 100), set(&["1"]));
    let rows = web_rows(&stack);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert!(rows.iter().all(|r| r["revision"] == stable.as_str()), "{rows:#?}");
    let h = history(&stack);
    assert_eq!(h[0]["outcome"], "rolled_back", "{h:#?}");
    assert!(h[0]["reason"].as_str().unwrap_or_default().contains("error rate"), "{h:#?}");
    assert_eq!((h[1]["revision"].as_str(), h[1]["current"].as_bool()), (Some(stable.as_str()), Some(true)), "{h:#?}");
}

#[test]
fn rolling_waits_min_ready_and_keeps_within_max_surge_and_max_unavailable() {
    let port = free_port();
    let min_ready = "{ strategy: rolling, min_ready: 1s }";
    let stack = Stack::new("rollout-rolling", &web_yaml("rolling", port, 3, "1", "", min_ready));
    stack.up();

    // min_ready: a new instance is ready a second before an old one drains.
    rewrite(&stack, &web_yaml("rolling", port, 3, "2", "", min_ready));
    let started = Instant::now();
    let (held, samples) = std::thread::scope(|scope| {
        let deploy = scope.spawn(|| deploy_ok(&stack));
        let (mut held, mut samples) = (0, 0);
        while !deploy.is_finished() {
            let rows = web_rows(&stack);
            let Some(s) = try_status(&stack).filter(|s| s["phase"] == "progressing") else { continue };
            samples += 1;
            let (new_ready, old) = (s["new_ready"].as_u64().unwrap(), s["old_instances"].as_u64().unwrap());
            // max_surge 1 (the default) over 3 replicas; max_unavailable 0: no old one goes before a
            // new one counts as ready, which it does only after min_ready.
            assert!(rows.len() <= 4, "at most replicas + max_surge instances: {rows:#?}");
            if new_ready == 0 {
                assert_eq!(old, 3, "an old instance went before a new one was ready for min_ready: {s:#}");
                let healthy_new = rows.iter().any(|r| r["revision"] == s["to_revision"] && r["state"] == "healthy");
                if healthy_new {
                    held += 1;
                }
            }
        }
        deploy.join().unwrap();
        (held, samples)
    });
    let elapsed = started.elapsed();
    assert!(samples > 0);
    assert!(held > 0, "never saw a healthy new instance held back by min_ready ({samples} samples)");
    // Three new instances, one at a time, each ready for a second before it counts.
    assert!(elapsed >= Duration::from_secs(3), "deploy took {elapsed:?}, less than 3 × min_ready");
    assert_eq!(status(&stack)["phase"], "complete");
    assert_eq!(versions(port, 30), set(&["2"]));

    // max_surge 0, max_unavailable 1: never more than 3 instances, never fewer than 2 ready.
    let unavailable = "{ strategy: rolling, max_surge: 0, max_unavailable: 1 }";
    rewrite(&stack, &web_yaml("rolling", port, 3, "3", "", unavailable));
    let load = Load::start(port, 2, 40);
    let (counts, least_ready) = std::thread::scope(|scope| {
        let deploy = scope.spawn(|| deploy_ok(&stack));
        let mut counts = BTreeSet::new();
        let mut least_ready = usize::MAX;
        while !deploy.is_finished() {
            let rows = web_rows(&stack);
            let ready = rows.iter().filter(|r| r["state"] == "healthy").count();
            assert!(rows.len() <= 3, "max_surge 0: more than 3 instances: {rows:#?}");
            assert!(ready >= 2, "max_unavailable 1: fewer than 2 ready: {rows:#?}");
            counts.insert(rows.len());
            least_ready = least_ready.min(ready);
        }
        deploy.join().unwrap();
        (counts, least_ready)
    });
    let report = load.stop();
    report.assert_clean("rolling with max_unavailable 1", 20);
    assert_eq!(least_ready, 2, "the rollout used its one unavailable instance; instance counts seen: {counts:?}");
    assert_eq!(status(&stack)["phase"], "complete");
    assert_eq!(versions(port, 30), set(&["3"]));
    assert_eq!(web_rows(&stack).len(), 3);
}

#[test]
fn a_version_that_never_gets_healthy_is_rolled_back_at_its_progress_deadline() {
    let port = free_port();
    let deploy_field = "{ strategy: rolling, progress_deadline: 3s }";
    let stack = Stack::new("rollout-deadline", &web_yaml("deadline", port, 2, "1", "", deploy_field));
    stack.up();
    let stable = web_revision(&stack);
    rewrite(&stack, &web_yaml("deadline", port, 2, "2", r#", DEMO_READY_AFTER: "1h""#, deploy_field));
    let load = Load::start(port, 2, 20);
    let run = deploy(&stack);
    let report = load.stop();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("progress_deadline"), "{}", run.all());
    let s = status(&stack);
    assert_eq!(s["phase"], "rolled_back", "{s:#}");
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("progress_deadline") && reason.contains("0 of 2 new instances ready"), "{s:#}");
    // The old version served throughout, and still does alone.
    report.assert_clean("a deploy that never got healthy", 20);
    assert_eq!(report.versions_since(report.samples[0].at).keys().collect::<Vec<_>>(), ["1"]);
    assert_eq!(versions(port, 30), set(&["1"]));
    let rows = web_rows(&stack);
    assert!(rows.len() == 2 && rows.iter().all(|r| r["revision"] == stable.as_str()), "{rows:#?}");
    let h = history(&stack);
    assert_eq!(h[0]["outcome"], "rolled_back", "{h:#?}");
    assert!(h[0]["reason"].as_str().unwrap_or_default().contains("progress_deadline"), "{h:#?}");
    assert_eq!(h[1]["current"], true, "{h:#?}");
}

#[test]
fn blue_green_without_auto_promote_waits_for_promote() {
    let (port, preview) = (free_port(), free_port());
    let deploy_field = format!("{{ strategy: blue_green, preview_port: {preview}, scale_down_delay: 1s }}");
    let stack = Stack::new("rollout-promote", &web_yaml("promote", port, 2, "1", "", &deploy_field));
    stack.up();
    rewrite(&stack, &web_yaml("promote", port, 2, "2", "", &deploy_field));
    // Paused waiting for a person counts as done for `deploy`.
    let run = deploy_ok(&stack);
    assert!(run.stderr.contains("paused"), "{}", run.all());
    let s = status(&stack);
    assert_eq!(s["phase"], "paused", "{s:#}");
    assert!(s["reason"].as_str().unwrap_or_default().contains("promote"), "{s:#}");
    assert_eq!((s["new_ready"].as_u64(), s["old_instances"].as_u64()), (Some(2), Some(2)), "{s:#}");
    // The whole new set runs, on the preview port only; the stable port serves the old one.
    assert_eq!(versions(port, 30), set(&["1"]));
    assert_eq!(versions(preview, 10), set(&["2"]));
    let load = Load::start(port, 2, 40);
    std::thread::sleep(Duration::from_millis(200));
    let promoted = Instant::now();
    act(&stack, "promote");
    let s = wait_status(&stack, "promoted", Duration::from_secs(30), |s| {
        s["phase"] == "promoted" || s["phase"] == "complete"
    });
    let switched = Instant::now();
    assert_eq!(s["weight"], 100, "{s:#}");
    assert_eq!(versions(port, 30), set(&["2"]));
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();
    report.assert_clean("the blue-green switch", 20);
    assert_eq!(report.versions_since(switched).keys().collect::<Vec<_>>(), ["2"], "{}", report.summary());
    assert!(report.samples.iter().any(|s| s.at < promoted && matches!(&s.outcome, Ok((_, v)) if v == "1")));
    let s = wait_phase(&stack, "complete");
    assert_eq!((s["new_instances"].as_u64(), s["old_instances"].as_u64()), (Some(2), Some(0)), "{s:#}");
    assert_eq!(web_rows(&stack).len(), 2);
    assert!(http_once("127.0.0.1", preview, "GET", "/").is_none(), "the preview port closed after the switch");
}

#[test]
fn undo_while_blue_green_keeps_the_old_set_switches_back_to_it() {
    let port = free_port();
    let deploy_field = "{ strategy: blue_green, auto_promote: true, scale_down_delay: 5m }";
    let stack = Stack::new("rollout-bg-undo", &web_yaml("bgundo", port, 2, "1", "", deploy_field));
    stack.up();
    let old_pids: BTreeSet<i64> = web_rows(&stack).iter().map(|r| r["pid"].as_i64().unwrap()).collect();
    rewrite(&stack, &web_yaml("bgundo", port, 2, "2", "", deploy_field));
    deploy_ok(&stack);
    let s = status(&stack);
    assert_eq!((s["phase"].as_str(), s["old_instances"].as_u64()), (Some("promoted"), Some(2)), "{s:#}");
    assert_eq!(versions(port, 20), set(&["2"]));
    let load = Load::start(port, 2, 40);
    std::thread::sleep(Duration::from_millis(200));
    act(&stack, "undo");
    let s = wait_phase(&stack, "rolled_back");
    let back = Instant::now();
    assert!(s["reason"].as_str().unwrap_or_default().contains("undo"), "{s:#}");
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();
    report.assert_clean("switching back", 20);
    assert_eq!(report.versions_since(back).keys().collect::<Vec<_>>(), ["1"], "{}", report.summary());
    // The old set took the traffic back as it was: nothing of it restarted.
    let pids: BTreeSet<i64> = web_rows(&stack).iter().map(|r| r["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids, old_pids);
    assert_eq!(versions(port, 20), set(&["1"]));
}

#[test]
fn aborting_a_canary_sends_everything_back_to_stable() {
    let port = free_port();
    let deploy_field = "{ strategy: canary, steps: [50, 100], step_duration: 10m }";
    let stack = Stack::new("rollout-abort", &web_yaml("abort", port, 2, "1", "", deploy_field));
    stack.up();
    let stable = web_revision(&stack);
    rewrite(&stack, &web_yaml("abort", port, 2, "2", "", deploy_field));
    let run = stack.tug(&["deploy", "--detach"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let s = wait_status(&stack, "the first step", Duration::from_secs(30), |s| s["weight"] == 50);
    assert_eq!((s["phase"].as_str(), s["step"].as_u64()), (Some("progressing"), Some(0)), "{s:#}");
    // The canary serves its share.
    wait_versions(port, &["1", "2"]);
    act(&stack, "abort");
    let s = wait_phase(&stack, "rolled_back");
    assert!(s["reason"].as_str().unwrap_or_default().contains("abort"), "{s:#}");
    assert_eq!(versions(port, 40), set(&["1"]));
    let rows = web_rows(&stack);
    assert!(rows.len() == 2 && rows.iter().all(|r| r["revision"] == stable.as_str()), "{rows:#?}");
    // Nothing left to abort.
    let again = stack.tug(&["rollout", "abort", "web"]);
    assert_eq!(again.code, 1, "{}", again.all());
    assert!(again.stderr.contains("no rollout under way"), "{}", again.all());
}

#[test]
fn undo_returns_to_the_previous_version_and_history_masks_secrets() {
    const SECRET: &str = "tok-8f2d9c1e-never-shown";
    let port = free_port();
    let yaml = |version: &str| {
        web_yaml("undo", port, 2, version, "", "{ strategy: rolling }")
            .replace("    deploy:", "    env_file: web.env\n    deploy:")
    };
    let stack = Stack::new("rollout-undo", &yaml("1"));
    stack.dir.write("web.env", &format!("API_TOKEN={SECRET}\n"));
    stack.up();
    let v1 = web_revision(&stack);
    rewrite(&stack, &yaml("2"));
    deploy_ok(&stack);
    let v2 = web_revision(&stack);
    assert_ne!(v1, v2);
    assert_eq!(versions(port, 20), set(&["2"]));
    act(&stack, "undo");
    let s = wait_status(&stack, "the undo", Duration::from_secs(60), |s| {
        s["to_revision"] == v1.as_str() && s["phase"] == "complete"
    });
    assert_eq!(s["from_revision"], v2.as_str(), "{s:#}");
    assert!(s["reason"].as_str().unwrap_or_default().contains("undo"), "{s:#}");
    assert_eq!(versions(port, 30), set(&["1"]));
    assert_eq!(web_revision(&stack), v1);

    // History: newest first, each rollout's outcome, the current revision marked.
    let h = history(&stack);
    let view: Vec<(&str, &str, bool)> = h
        .iter()
        .map(|e| (e["revision"].as_str().unwrap(), e["outcome"].as_str().unwrap(), e["current"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        view,
        [(v1.as_str(), "complete", true), (v2.as_str(), "complete", false), (v1.as_str(), "complete", false)],
        "{h:#?}"
    );
    assert!(h[0]["reason"].as_str().unwrap_or_default().contains("undo"), "{h:#?}");
    assert_eq!(h[0]["from_revision"], v2.as_str());
    assert!(h.iter().all(|e| e["started_at"].is_string() && e["finished_at"].is_string()), "{h:#?}");
    // The spec of each revision is there, its sensitive values masked.
    let spec = &h[1]["spec"];
    assert_eq!(spec["name"], "web", "{spec:#}");
    assert_eq!(spec["revision"], v2.as_str(), "{spec:#}");
    let token = spec["environment"].as_array().and_then(|env| env.iter().find(|e| e[0] == "API_TOKEN"));
    assert_eq!(token.map(|e| &e[1]["value"]), Some(&Value::from("********")), "{spec:#}");
    // The secret shows nowhere.
    let outputs = [
        stack.tug(&["history", "web", "--json"]).all(),
        stack.tug(&["history", "web"]).all(),
        stack.tug(&["rollout", "status", "web", "--json"]).all(),
        stack.tug(&["rollout", "status", "web"]).all(),
        stack.tug(&["ps", "--json"]).all(),
        daemon_log(&stack),
        std::fs::read_to_string(stack.state_dir().join("rollouts.json")).unwrap(),
    ];
    for text in outputs {
        assert!(!text.contains(SECRET), "a secret leaked: {text}");
    }
    // Undo again: back to the revision the first undo left.
    act(&stack, "undo");
    wait_status(&stack, "the second undo", Duration::from_secs(60), |s| {
        s["to_revision"] == v2.as_str() && s["phase"] == "complete"
    });
    assert_eq!(versions(port, 20), set(&["2"]));
}

#[test]
fn a_config_only_change_rolls_out_and_one_deploy_adds_and_removes_services() {
    let port = free_port();
    let yaml = |extra: &str| {
        format!(
            r#"
name: config
settings:
  GREETING: {{ type: string }}
services:
  web:
    command: "{{demo}}"
    replicas: 2
    port: {port}
    stop_grace_period: 2s
    environment: {{ DEMO_MESSAGE: "${{GREETING}}" }}
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
{extra}"#
        )
    };
    let old = "  old:\n    command: sleep 1000\n    stop_grace_period: 1s\n";
    let new = "  new:\n    command: \"{demo}\"\n    healthcheck: { http: /health, start_interval: 100ms }\n";
    let stack = Stack::new("rollout-config", &yaml(old));
    stack.dir.write(".env", "GREETING=hello\n");
    stack.up();
    let before = web_revision(&stack);
    let old_before = rows_of(&stack, "old")[0]["revision"].clone();
    let messages = |n: usize| -> BTreeSet<String> {
        (0..n).map(|_| field_of(&http_once("127.0.0.1", port, "GET", "/").unwrap().1, "message")).collect()
    };
    assert_eq!(messages(10), set(&["hello"]));
    // Only a setting's value changes (in .env; the stack file is the same): a new revision.
    stack.dir.write(".env", "GREETING=bonjour\n");
    let run = deploy_ok(&stack);
    let s = status(&stack);
    assert_eq!((s["phase"].as_str(), s["from_revision"].as_str()), (Some("complete"), Some(before.as_str())), "{s:#}");
    assert_ne!(s["to_revision"], before.as_str(), "{s:#}");
    assert!(run.stderr.contains("rolling"), "{}", run.all());
    assert_eq!(messages(20), set(&["bonjour"]));
    assert_eq!(web_revision(&stack), s["to_revision"].as_str().unwrap());

    // Settings reach every service: `old` was rolled out too.
    let olds = rows_of(&stack, "old");
    assert!(olds.len() == 1 && olds[0]["revision"] != old_before, "{olds:#?}");

    // One deploy: `new` starts, `old` stops, `web` (unchanged) keeps its instances.
    let pids: Vec<Value> = web_rows(&stack).iter().map(|r| r["pid"].clone()).collect();
    let old_pid = olds[0]["pid"].as_i64().unwrap() as i32;
    rewrite(&stack, &yaml(new));
    let run = deploy_ok(&stack);
    assert!(run.stderr.contains("new"), "{}", run.all());
    stack.wait_state("new-1", "healthy", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rows_of(&stack, "old").is_empty() {
        assert!(Instant::now() < deadline, "old is still there: {:#?}", stack.ps());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(wait_gone(old_pid, Duration::from_secs(10)), "old's process outlived its removal");
    assert_eq!(web_rows(&stack).iter().map(|r| r["pid"].clone()).collect::<Vec<_>>(), pids, "web restarted");
    assert_eq!(status(&stack)["to_revision"], s["to_revision"], "web was not rolled out again");
}

#[test]
fn a_tenant_hash_canary_keeps_each_tenant_on_one_version_and_only_adds_tenants() {
    let port = free_port();
    let deploy_field = "{ strategy: canary, steps: [20, 50], step_duration: 4s, analysis: { min_requests: 1 } }";
    let yaml = |version: &str| {
        web_yaml("tenants", port, 4, version, "", deploy_field)
            .replace("    deploy:", "    balance: tenant_hash\n    tenant_header: x-tenant\n    deploy:")
    };
    let stack = Stack::new("rollout-tenants", &yaml("1"));
    stack.up();
    rewrite(&stack, &yaml("2"));
    let run = stack.tug(&["deploy", "--detach"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let tenants: Vec<String> = (0..60).map(|t| format!("tenant-{t}")).collect();
    let mut clients: Vec<KeepAlive> =
        tenants.iter().map(|t| KeepAlive::new("127.0.0.1", port).with_header("x-tenant", t)).collect();
    // One round: each tenant three times; the tenants on the canary. A round is kept only when
    // the step did not change while it ran.
    let mut round = |weight: u64| -> Option<BTreeSet<String>> {
        let before = status(&stack);
        if before["weight"] != weight || before["phase"] != "progressing" {
            return None;
        }
        let mut canary = BTreeSet::new();
        let mut answers = Vec::new();
        for (tenant, client) in tenants.iter().zip(clients.iter_mut()) {
            let seen: Vec<String> = (0..3)
                .map(|_| {
                    let (status, body) = client.get("/").expect("an answer");
                    assert_eq!(status, 200, "{body}");
                    field_of(&body, "version")
                })
                .collect();
            if seen.contains(&"2".to_string()) {
                canary.insert(tenant.clone());
            }
            answers.push((tenant.clone(), seen));
        }
        let after = status(&stack);
        if after["weight"] != weight || after["step"] != before["step"] {
            return None;
        }
        for (tenant, seen) in &answers {
            assert!(seen.iter().all(|v| v == &seen[0]), "{tenant} moved within the step at {weight}%: {seen:?}");
        }
        Some(canary)
    };
    let mut at = |weight: u64| -> BTreeSet<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(canary) = round(weight) {
                return canary;
            }
            assert!(Instant::now() < deadline, "no whole round at {weight}%; status: {:#}", status(&stack));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let at_20 = at(20);
    let at_50 = at(50);
    assert!(!at_20.is_empty() && at_20.len() < tenants.len() / 2, "at 20%: {at_20:?}");
    assert!(at_50.len() > at_20.len() && at_50.len() < tenants.len(), "at 50%: {at_50:?}");
    let left: Vec<&String> = at_20.difference(&at_50).collect();
    assert!(left.is_empty(), "tenants on the canary at 20% went back to stable at 50%: {left:?}");
    wait_phase(&stack, "complete");
    assert_eq!(versions(port, 20), set(&["2"]));
}

#[test]
fn the_autoscaler_follows_requests_per_second_up_and_down() {
    let port = free_port();
    let stack = Stack::new(
        "rollout-autoscale",
        &format!(
            r#"
name: autoscale
services:
  web:
    command: "{{demo}}"
    replicas: 1
    port: {port}
    stop_grace_period: 1s
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
    autoscale: {{ min: 1, max: 3, requests_per_second: 20, scale_down_stabilization: 2s }}
"#
        ),
    );
    stack.up();
    assert_eq!(web_rows(&stack).len(), 1);
    let healthy = |stack: &Stack| web_rows(stack).iter().filter(|r| r["state"] == "healthy").count();
    let wait_count = |what: &str, wanted: usize| {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !(healthy(&stack) == wanted && web_rows(&stack).len() == wanted) {
            assert!(Instant::now() < deadline, "{what}: {:#?}\n{}", web_rows(&stack), daemon_log(&stack));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // 120 requests a second against a target of 20 per instance: up to max (3) at once (even
    // at half that rate, on a busy machine).
    let load = Load::start(port, 4, 30);
    wait_count("scaled up to 3 under load", 3);
    let report = load.stop();
    report.assert_clean("scaling up", 100);
    let ups = decisions(&daemon_log(&stack), |from, to| to > from);
    let (from, _, first) = ups.first().cloned().unwrap_or_else(|| panic!("no decision up:\n{}", daemon_log(&stack)));
    assert_eq!(from, 1, "{first}");
    assert_eq!(ups.last().unwrap().1, 3, "{ups:?}");
    // With the figure that drove it, above the target.
    assert!(first.contains("requests/s per instance (target 20)"), "{first}");
    let rate: f64 = first.rsplit(": ").next().unwrap().split(' ').next().unwrap().parse().expect(&first);
    assert!(rate > 20.0 * 1.1, "{first}");
    let autoscale = |stack: &Stack| {
        let s = crate::api::status(stack);
        s["services"].as_array().unwrap().iter().find(|s| s["name"] == "web").unwrap()["autoscale"].clone()
    };
    let a = autoscale(&stack);
    assert_eq!((a["min"].as_u64(), a["max"].as_u64()), (Some(1), Some(3)), "{a:#}");
    assert!(a["last_decision"].as_str().unwrap_or_default().contains("→ 3 replicas: "), "{a:#}");
    // No load: down to min once the stabilization window (2s) has passed.
    let stopped = Instant::now();
    wait_count("scaled down to 1 without load", 1);
    assert!(stopped.elapsed() >= Duration::from_secs(2), "down before the stabilization window");
    let downs = decisions(&daemon_log(&stack), |from, to| to < from);
    assert!(!downs.is_empty(), "no decision down:\n{}", daemon_log(&stack));
    assert_eq!(downs.last().unwrap().1, 1, "{downs:?}");
    assert!(downs.iter().all(|(_, _, d)| d.contains("requests/s per instance (target 20)")), "{downs:?}");
    assert!(autoscale(&stack)["last_decision"].as_str().unwrap_or_default().contains("→ 1 replicas: "));
    assert_eq!(versions(port, 10), set(&["1"]));
}

/// The autoscaler's decisions for `web` in the daemon's log (`autoscale 1 → 3
/// replicas: …`) that `keep` (from, to): (from, to, the decision).
fn decisions(log: &str, keep: impl Fn(u32, u32) -> bool) -> Vec<(u32, u32, String)> {
    // daemon.log is JSON lines: web's autoscale events.
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["service"] == "web")
        .filter_map(|e| e["msg"].as_str().and_then(|m| m.strip_prefix("autoscale ")).map(str::to_string))
        .filter_map(|d| {
            let (from, rest) = d.split_once(" → ")?;
            let to = rest.split(' ').next()?;
            Some((from.parse().ok()?, to.parse().ok()?, d.to_string()))
        })
        .filter(|(from, to, _)| keep(*from, *to))
        .collect()
}

/// SIGKILLs the stack's daemon mid-rollout; the keeper takes every instance with it.
fn kill_daemon(stack: &Stack) {
    let daemon = stack.daemon_pid().expect("daemon.pid");
    // SAFETY: kill(2) on this test's daemon.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(wait_gone(daemon, Duration::from_secs(10)), "the daemon survived SIGKILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack_processes(&stack.state_dir()).is_empty() {
        assert!(Instant::now() < deadline, "instances outlived the daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(daemon));
}

const LONG_CANARY: &str = "{ strategy: canary, steps: [50, 100], step_duration: 10m }";

/// A stack of two v1 replicas, then a canary of v2 at its first step (50%).
fn canary_under_way(label: &str, port: u16) -> (Stack, String) {
    let stack = Stack::new(label, &web_yaml(label, port, 2, "1", "", LONG_CANARY));
    stack.up();
    let v1 = web_revision(&stack);
    rewrite(&stack, &web_yaml(label, port, 2, "2", "", LONG_CANARY));
    let run = stack.tug(&["deploy", "--detach"]);
    assert_eq!(run.code, 0, "{}", run.all());
    wait_status(&stack, "the first step", Duration::from_secs(30), |s| s["weight"] == 50 && s["step"] == 0);
    wait_versions(port, &["1", "2"]);
    (stack, v1)
}

#[test]
fn a_rollout_under_way_when_the_daemon_is_killed_resumes() {
    let port = free_port();
    let (stack, v1) = canary_under_way("resume", port);
    let v2 = status(&stack)["to_revision"].as_str().unwrap().to_string();
    kill_daemon(&stack);
    // The same file again: the rollout resumes, the stable set first, then from its step.
    std::thread::scope(|scope| {
        let up = scope.spawn(|| stack.tug(&["up", "-d", "--timeout", "120s"]));
        // (Until the new daemon has the stack, the status is the last daemon's record: the
        // reason tells the resumed rollout apart.)
        let s = wait_status(&stack, "the resumed step", Duration::from_secs(60), |s| {
            let resumed = s["reason"].as_str().unwrap_or_default().contains("resumed after the daemon restarted");
            resumed && s["phase"] == "progressing" && s["weight"] == 50 && s["new_ready"] == 1
        });
        assert_eq!((s["from_revision"].as_str(), s["to_revision"].as_str()), (Some(v1.as_str()), Some(v2.as_str())));
        let rows = web_rows(&stack);
        assert_eq!(rows.iter().filter(|r| r["revision"] == v1.as_str()).count(), 2, "stable whole: {rows:#?}");
        wait_versions(port, &["1", "2"]);
        assert!(!up.is_finished(), "up -d waits for the rollout");
        act(&stack, "promote");
        let run = up.join().unwrap();
        assert_eq!(run.code, 0, "{}", run.all());
    });
    let s = status(&stack);
    assert_eq!(s["phase"], "complete", "{s:#}");
    assert!(s["reason"].as_str().unwrap_or_default().contains("resumed"), "{s:#}");
    assert_eq!(versions(port, 30), set(&["2"]));
    assert_eq!(web_revision(&stack), v2);
    let h = history(&stack);
    assert_eq!((h[0]["revision"].as_str(), h[0]["outcome"].as_str()), (Some(v2.as_str()), Some("complete")), "{h:#?}");
    assert_eq!(h[0]["current"], true);
    assert_eq!(h.len(), 2, "the resumed rollout is the same entry: {h:#?}");
}

#[test]
fn a_rollout_under_way_when_the_daemon_is_killed_is_rolled_back_by_the_previous_file() {
    let port = free_port();
    let (stack, v1) = canary_under_way("revert", port);
    let v2 = status(&stack)["to_revision"].as_str().unwrap().to_string();
    kill_daemon(&stack);
    // The user reverts the file: the recorded rollout ends rolled back; the old version runs.
    rewrite(&stack, &web_yaml("revert", port, 2, "1", "", LONG_CANARY));
    stack.up();
    let s = status(&stack);
    assert_eq!(s["phase"], "rolled_back", "{s:#}");
    assert_eq!(s["to_revision"], v2.as_str(), "{s:#}");
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("daemon ended") && reason.contains(&v1), "{s:#}");
    assert_eq!(versions(port, 30), set(&["1"]));
    assert_eq!(web_revision(&stack), v1);
    let h = history(&stack);
    let v2_entry = h.iter().find(|e| e["revision"] == v2.as_str()).unwrap_or_else(|| panic!("{h:#?}"));
    assert_eq!(v2_entry["outcome"], "rolled_back", "{h:#?}");
    assert!(v2_entry["reason"].as_str().unwrap_or_default().contains("daemon ended"), "{h:#?}");
    assert_eq!((h[0]["revision"].as_str(), h[0]["current"].as_bool()), (Some(v1.as_str()), Some(true)), "{h:#?}");
}

/// `deploy.smoke` fails on the new revision (it answers `?fail=1` with a 500, traffic without it
/// with a 200): each strategy rolls back before the new revision takes a single request, under
/// load, and no request fails. Then a passing smoke check lets a deploy through.
#[test]
fn a_failing_smoke_check_rolls_back_each_strategy_under_load_with_no_failed_request() {
    let port = free_port();
    let preview = free_port();
    let yaml = |version: &str, deploy: &str| web_yaml("smoke", port, 3, version, "", deploy);
    let stack = Stack::new("rollout-smoke", &yaml("1", "{ strategy: rolling }"));
    stack.up();
    let stable = web_revision(&stack);
    let failing = r#"smoke: { http: "/?fail=1", timeout: 2s }"#;
    let deploys = [
        ("2", "rolling", format!("{{ strategy: rolling, {failing} }}")),
        (
            "3",
            "blue_green",
            format!("{{ strategy: blue_green, auto_promote: true, preview_port: {preview}, {failing} }}"),
        ),
        ("4", "canary", format!("{{ strategy: canary, steps: [34, 100], step_duration: 1s, {failing} }}")),
    ];
    for (version, strategy, settings) in deploys {
        rewrite(&stack, &yaml(version, &settings));
        let load = Load::start(port, 4, 40);
        std::thread::sleep(Duration::from_millis(300));
        let run = deploy(&stack);
        std::thread::sleep(Duration::from_millis(300));
        let report = load.stop();
        assert_eq!(run.code, 1, "{strategy}: a failed smoke check fails the deploy:\n{}", run.all());
        assert!(run.stderr.contains("smoke check failed on"), "{strategy}:\n{}", run.all());
        assert!(run.stderr.contains("HTTP 500"), "{strategy}: the answer is quoted:\n{}", run.all());
        report.assert_clean(&format!("{strategy} deploy with a failing smoke check"), 40);
        // The new revision never took traffic: every answer came from v1.
        let seen = report.versions_since(report.samples[0].at);
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["1"], "{strategy}: {}", report.summary());
        let s = status(&stack);
        assert_eq!((s["phase"].as_str(), s["strategy"].as_str()), (Some("rolled_back"), Some(strategy)), "{s:#}");
        assert!(s["reason"].as_str().unwrap_or_default().contains("smoke check failed"), "{s:#}");
        let h = history(&stack);
        assert_eq!(h[0]["outcome"], "rolled_back", "{h:#?}");
        assert!(h[0]["reason"].as_str().unwrap_or_default().contains("smoke check failed"), "{h:#?}");
        assert_eq!(versions(port, 50), set(&["1"]));
        let rows = web_rows(&stack);
        assert_eq!(rows.len(), 3, "{strategy}: the old set at full strength: {rows:#?}");
        assert!(rows.iter().all(|r| r["revision"] == stable.as_str() && r["state"] == "healthy"), "{rows:#?}");
    }
    // A smoke check that passes: the rollout goes on, and says it checked.
    rewrite(&stack, &yaml("5", "{ strategy: rolling, smoke: { http: /health } }"));
    let load = Load::start(port, 4, 40);
    let run = deploy_ok(&stack);
    let report = load.stop();
    report.assert_clean("rolling deploy with a passing smoke check", 20);
    assert_eq!(wait_phase(&stack, "complete")["strategy"], "rolling");
    assert_eq!(versions(port, 50), set(&["5"]), "{}", run.all());
    assert!(daemon_log(&stack).contains("smoke check passed on web-"), "{}", daemon_log(&stack));
}

/// `deploy.before`: the job runs once per deploy that rolls the service out (not once per
/// replica, not when nothing rolls out), with the new revision's configuration; a failing one
/// stops the deploy before anything changed, says why with its last lines, and is in the
/// history and the rollout status.
#[test]
fn deploy_before_jobs_run_once_per_deploy_and_a_failing_one_changes_nothing() {
    let port = free_port();
    let yaml = |version: &str, job_exit: u8| {
        format!(
            r#"
name: hooks
services:
  record:
    kind: job
    command: ["sh", "-c", "echo \"run of v$$VERSION\" >> runs.txt; echo migrating v$$VERSION; echo step two failed >&2; exit $$JOB_EXIT"]
    environment: {{ VERSION: "{version}", JOB_EXIT: "{job_exit}" }}
  web:
    command: "{{demo}}"
    replicas: 3
    port: {port}
    stop_grace_period: 2s
    environment: {{ VERSION: "{version}" }}
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
    depends_on: {{ record: completed_successfully }}
    deploy: {{ strategy: rolling, before: [record] }}
"#
        )
    };
    let stack = Stack::new("rollout-hooks", &yaml("1", 0));
    let check = stack.tug(&["check"]);
    assert_eq!(check.code, 0, "{}", check.all());
    stack.up();
    let runs = || std::fs::read_to_string(stack.path().join("runs.txt")).unwrap_or_default();
    assert_eq!(runs(), "run of v1\n", "the job ran once at the first `up`");
    // A deploy: the job runs once, with the new configuration, before any new instance. The
    // plan says so, and runs nothing.
    rewrite(&stack, &yaml("2", 0));
    let plan = stack.tug(&["deploy", "--plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(plan.all().contains("runs `record` first (deploy.before)"), "{}", plan.all());
    assert_eq!(runs(), "run of v1\n", "--plan ran nothing");
    let load = Load::start(port, 4, 40);
    deploy_ok(&stack);
    let report = load.stop();
    report.assert_clean("a deploy after its before job", 20);
    assert_eq!(runs(), "run of v1\nrun of v2\n", "once per deploy, not per replica");
    assert_eq!(versions(port, 30), set(&["2"]));
    let started_web: Vec<String> =
        web_rows(&stack).iter().map(|r| r["started_at"].as_str().unwrap_or_default().to_string()).collect();
    let record = &rows_of(&stack, "record")[0];
    assert_eq!(record["state"], "completed", "{record:#}");
    let finished = record["finished_at"].as_str().unwrap_or_default();
    assert!(
        started_web.iter().all(|s| s.as_str() > finished),
        "web started {started_web:?} before the job ended at {finished}"
    );
    // Nothing to roll out: the job does not run.
    let again = deploy_ok(&stack);
    assert_eq!(runs(), "run of v1\nrun of v2\n", "{}", again.all());
    // A failing job: nothing changes, and everything says why.
    let before = web_revision(&stack);
    rewrite(&stack, &yaml("3", 3));
    let load = Load::start(port, 4, 40);
    let run = deploy(&stack);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("deploy.before: the job `record` failed (exit code 3)"), "{}", run.all());
    assert!(run.stderr.contains("nothing was deployed"), "{}", run.all());
    assert!(run.stderr.contains("step two failed"), "the job's last lines are quoted:\n{}", run.all());
    report.assert_clean("a deploy stopped by its before job", 20);
    assert_eq!(report.versions_since(report.samples[0].at).keys().collect::<Vec<_>>(), ["2"], "{}", report.summary());
    assert_eq!(web_revision(&stack), before, "the old revision still runs");
    assert_eq!(runs(), "run of v1\nrun of v2\nrun of v3\n");
    let s = status(&stack);
    assert_eq!(s["phase"], "failed", "{s:#}");
    assert!(s["reason"].as_str().unwrap_or_default().contains("deploy.before"), "{s:#}");
    let h = history(&stack);
    assert_eq!(h[0]["outcome"], "failed", "{h:#?}");
    assert!(h[0]["reason"].as_str().unwrap_or_default().contains("exit code 3"), "{h:#?}");
    assert!(h.iter().any(|e| e["revision"] == before.as_str() && e["current"] == true), "{h:#?}");
    // The job fixed, the same deploy goes through.
    rewrite(&stack, &yaml("3", 0));
    deploy_ok(&stack);
    assert_eq!(versions(port, 30), set(&["3"]));
    // A deploy the daemon would refuse anyway (a new service's port is another program's) is
    // refused before its job runs: no migration for a deploy that does not happen.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let admin = format!("  admin:\n    command: \"{{demo}}\"\n    port: {taken}\n");
    rewrite(&stack, &format!("{}{admin}", yaml("4", 0)));
    let run = deploy(&stack);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains(&format!("port {taken} of `admin` is already in use")), "{}", run.all());
    assert_eq!(runs(), "run of v1\nrun of v2\nrun of v3\nrun of v3\n", "the job did not run for it");
    assert_eq!(versions(port, 30), set(&["3"]));
}
