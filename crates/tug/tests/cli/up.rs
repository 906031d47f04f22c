//! `tug up` and the daemon: start order, conditions, probes, jobs, ps.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Stack, alive, stack_processes};

#[test]
fn up_starts_in_order_and_down_leaves_nothing() {
    let stack = Stack::new(
        "up-basic",
        r#"
name: basic
services:
  setup:
    kind: job
    command: echo preparing; sleep 0.2; echo prepared
  db:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
    depends_on: { setup: completed_successfully }
  web:
    command: ["{demo}"]
    replicas: 2
    healthcheck: { http: /health, start_interval: 50ms }
    depends_on: { db: healthy }
"#,
    );
    stack.up();
    let ps = stack.ps();
    let states: Vec<(String, String)> =
        ps.iter().map(|i| (i["instance"].as_str().unwrap().into(), i["state"].as_str().unwrap().into())).collect();
    assert!(states.contains(&("setup-1".into(), "completed".into())), "{states:?}");
    assert!(states.contains(&("db-1".into(), "healthy".into())), "{states:?}");
    assert!(states.contains(&("web-1".into(), "healthy".into())), "{states:?}");
    assert!(states.contains(&("web-2".into(), "healthy".into())), "{states:?}");
    for key in ["service", "instance", "kind", "state", "pid", "port", "restarts", "started_at", "health"] {
        assert!(ps[0].get(key).is_some(), "ps --json rows have `{key}`: {:#?}", ps[0]);
    }
    let web = stack.instance("web-1").unwrap();
    let pid = web["pid"].as_i64().unwrap() as i32;
    assert!(crate::harness::alive(pid));
    assert!(stack.log("setup", "setup-1").contains("prepared"));
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(crate::harness::wait_gone(pid, Duration::from_secs(5)));
    assert!(crate::harness::stack_processes(&stack.state_dir()).is_empty());
    assert!(!stack.state_dir().join("tug.sock").exists());
}

#[test]
fn the_state_folder_is_private_even_if_it_was_made_beforehand() {
    use std::os::unix::fs::PermissionsExt;
    let yaml = "name: private\nservices:\n  web:\n    command: \"{demo}\"\n    healthcheck: { http: /health, start_interval: 50ms }\n";
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    // Made fresh by tug, and made beforehand by someone else as 0755 (logs, state and the API key
    // inside would be readable by every local user).
    for beforehand in [false, true] {
        let stack = Stack::new("up-private", yaml);
        if beforehand {
            std::fs::create_dir(stack.state_dir()).unwrap();
            std::fs::set_permissions(stack.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        stack.up();
        assert_eq!(mode(&stack.state_dir()), 0o700, "made beforehand: {beforehand}");
        assert_eq!(stack.tug(&["down"]).code, 0);
    }
    // A folder that exists already and is named by TUG_STATE_DIR is the user's: left as it is.
    let stack = Stack::new("up-shared", yaml);
    let shared = stack.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = shared.display().to_string();
    let up = stack.tug_with(&["up", "-d", "--timeout", "60s"], &[("TUG_STATE_DIR", &state)]);
    assert_eq!(up.code, 0, "{}", up.all());
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(stack.tug_with(&["down"], &[("TUG_STATE_DIR", &state)]).code, 0);
}

/// A row's text field (timestamps are RFC 3339 with a fixed width, so they compare as strings).
fn text(row: &Value, key: &str) -> String {
    row[key].as_str().unwrap_or_else(|| panic!("`{key}` is not a string: {row:#?}")).to_string()
}

/// When the row's last probe ran (with a long `interval`, when it first passed).
fn health_at(row: &Value) -> String {
    row["health"]["at"].as_str().unwrap_or_else(|| panic!("no health.at: {row:#?}")).to_string()
}

pub fn pid(row: &Value) -> i32 {
    row["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {row:#?}")) as i32
}

/// Live processes of the stack whose command line is exactly `argv`.
fn processes_running(stack: &Stack, argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    stack_processes(&stack.state_dir())
        .into_iter()
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

#[test]
fn independent_services_start_in_parallel_and_the_dependent_after_both() {
    // `interval: 1m`: after the first success no probe runs again, so health.at is when each became healthy.
    let stack = Stack::new(
        "up-parallel",
        r#"
services:
  a:
    command: "{demo}"
    environment: { DEMO_READY_AFTER: 500ms }
    healthcheck: { http: /health, interval: 1m, start_interval: 50ms }
  b:
    command: "{demo}"
    environment: { DEMO_READY_AFTER: 500ms }
    healthcheck: { http: /health, interval: 1m, start_interval: 50ms }
  c:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
    depends_on: { a: healthy, b: healthy }
"#,
    );
    stack.up();
    let (a, b, c) = (stack.instance("a-1").unwrap(), stack.instance("b-1").unwrap(), stack.instance("c-1").unwrap());
    for row in [&a, &b, &c] {
        assert_eq!(row["state"], "healthy", "{row:#?}");
    }
    // Parallel: each started before the other became healthy.
    assert!(text(&b, "started_at") < health_at(&a), "b waited for a:\n{a:#?}\n{b:#?}");
    assert!(text(&a, "started_at") < health_at(&b), "a waited for b:\n{a:#?}\n{b:#?}");
    // c only once both were healthy.
    assert!(text(&c, "started_at") >= health_at(&a), "c started before a was healthy:\n{a:#?}\n{c:#?}");
    assert!(text(&c, "started_at") >= health_at(&b), "c started before b was healthy:\n{b:#?}\n{c:#?}");
}

#[test]
fn each_depends_on_condition_gates_as_documented() {
    let stack = Stack::new(
        "up-conditions",
        r#"
services:
  slow:
    command: "{demo}"
    environment: { DEMO_READY_AFTER: 3s }
    healthcheck: { http: /health, interval: 1m, start_interval: 50ms, start_period: 10s }
  early:
    command: "{demo}"
    depends_on: { slow: started }
  late:
    command: "{demo}"
    depends_on: { slow: healthy }
  prepare:
    kind: job
    command: ["{demo}", job, --sleep, 300ms, --write, prepared.txt]
  after-job:
    # Exits (and fails `up`) if the job has not finished writing its file.
    command: "test -f prepared.txt && exec {demo}"
    depends_on: { prepare: completed_successfully }
"#,
    );
    stack.up();
    let ps = stack.ps();
    let row = |name: &str| ps.iter().find(|r| r["instance"] == name).cloned().unwrap_or_else(|| panic!("{ps:#?}"));
    let (slow, early, late) = (row("slow-1"), row("early-1"), row("late-1"));
    assert_eq!(slow["state"], "healthy", "{slow:#?}");
    // `started`: while `slow` was still starting.
    assert!(text(&early, "started_at") >= text(&slow, "started_at"), "{slow:#?}\n{early:#?}");
    assert!(text(&early, "started_at") < health_at(&slow), "early waited for health:\n{slow:#?}\n{early:#?}");
    // `healthy`: only after.
    assert!(text(&late, "started_at") >= health_at(&slow), "{slow:#?}\n{late:#?}");
    // `completed_successfully`: the job finished (its file was there) before the dependent started.
    assert_eq!(row("prepare-1")["state"], "completed");
    assert_eq!(row("prepare-1")["exit_code"], 0);
    assert_eq!(row("after-job-1")["state"], "running", "{ps:#?}");
    assert_eq!(row("after-job-1")["restarts"], 0, "{ps:#?}");
    assert!(stack.log("prepare", "prepare-1").contains("finished with exit code 0"));
}

#[test]
fn http_probes_pass_and_fail_with_the_status() {
    let stack = Stack::new(
        "up-http",
        r#"
services:
  good:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
  bad:
    command: "{demo}"
    environment: { DEMO_READY_AFTER: 1h }
    healthcheck: { http: /health, interval: 100ms, start_interval: 50ms, retries: 2 }
"#,
    );
    let up = stack.tug(&["up", "-d", "--timeout", "60s"]);
    assert_ne!(up.code, 0, "an unhealthy service fails `up`:\n{}", up.all());
    assert!(up.stderr.contains("bad-1 unhealthy"), "{}", up.all());
    assert!(up.stderr.contains("HTTP 503"), "{}", up.all());
    let bad = stack.wait_state("bad-1", "unhealthy", Duration::from_secs(30));
    let health = &bad["health"];
    assert_eq!(health["ok"], false, "{bad:#?}");
    assert!(health["failures"].as_u64().unwrap() >= 2, "{bad:#?}");
    assert!(health["message"].as_str().unwrap().contains("HTTP 503"), "{bad:#?}");
    assert!(alive(pid(&bad)), "an unhealthy instance keeps running (only liveness restarts)");
    let good = stack.wait_state("good-1", "healthy", Duration::from_secs(30));
    assert_eq!(good["health"]["ok"], true, "{good:#?}");
    assert_eq!(good["health"]["message"], "HTTP 200", "{good:#?}");
}

#[test]
fn tcp_and_exec_probes() {
    let stack = Stack::new(
        "up-exec",
        r#"
services:
  tcp:
    command: "{demo}"
    healthcheck: { tcp: true, start_interval: 50ms }
  exec-ok:
    command: "{demo}"
    healthcheck: { exec: "echo probing $$TUG_INSTANCE on ${PORT}", start_interval: 50ms }
"#,
    );
    stack.up();
    let tcp = stack.instance("tcp-1").unwrap();
    assert_eq!(tcp["state"], "healthy", "{tcp:#?}");
    let port = tcp["port"].as_u64().unwrap();
    assert_eq!(tcp["health"]["message"], format!("connected to 127.0.0.1:{port}"), "{tcp:#?}");
    let exec = stack.instance("exec-ok-1").unwrap();
    assert_eq!(exec["state"], "healthy", "{exec:#?}");
    let port = exec["port"].as_u64().unwrap();
    assert_eq!(exec["health"]["message"], format!("probing exec-ok-1 on {port}"), "{exec:#?}");
}

#[test]
fn a_failing_exec_probe_reports_its_output() {
    let stack = Stack::new(
        "up-exec-fail",
        r#"
services:
  svc:
    command: "{demo}"
    healthcheck: { exec: "echo checking; echo database not reachable >&2; exit 4", interval: 100ms, retries: 2 }
"#,
    );
    let up = stack.tug(&["up", "-d", "--timeout", "60s"]);
    assert_ne!(up.code, 0, "{}", up.all());
    let row = stack.wait_state("svc-1", "unhealthy", Duration::from_secs(30));
    let message = row["health"]["message"].as_str().unwrap();
    assert!(message.contains("exited with code 4"), "{row:#?}");
    assert!(message.contains("database not reachable"), "{row:#?}");
    assert!(up.stderr.contains("database not reachable"), "{}", up.all());
}

#[test]
fn an_exec_probe_that_times_out_takes_its_whole_process_group_with_it() {
    let stack = Stack::new(
        "up-exec-timeout",
        r#"
services:
  svc:
    command: "{demo}"
    healthcheck: { exec: "sh -c 'sleep 100 & sleep 100'", timeout: 300ms, interval: 400ms, retries: 2 }
"#,
    );
    let up = stack.tug(&["up", "-d", "--timeout", "60s"]);
    assert_ne!(up.code, 0, "{}", up.all());
    let row = stack.wait_for("svc-1", Duration::from_secs(30), |r| {
        r["state"] == "unhealthy" && r["health"]["failures"].as_u64().unwrap_or(0) >= 3
    });
    assert!(row["health"]["message"].as_str().unwrap().contains("timed out after 300ms"), "{row:#?}");
    // Three probes have timed out; at most the one in flight may still have its two sleeps.
    let sleeps = processes_running(&stack, &["sleep", "100"]);
    assert!(sleeps.len() <= 2, "timed-out probes left {} `sleep 100` behind: {sleeps:?}", sleeps.len());
}

#[test]
fn stopping_an_instance_ends_its_probe_in_flight() {
    let stack = Stack::new(
        "up-exec-inflight",
        r#"
services:
  svc:
    command: "{demo}"
    healthcheck: { exec: "sh -c 'sleep 100 & sleep 100'", timeout: 1m, start_interval: 50ms }
"#,
    );
    stack.tug(&["up", "-d", "--timeout", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_running(&stack, &["sleep", "100"]).len() < 2 {
        assert!(Instant::now() < deadline, "the probe never ran: {:#?}", stack.ps());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = stack.tug(&["stop", "svc"]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert_eq!(stack.instance("svc-1").unwrap()["state"], "stopped");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_running(&stack, &["sleep", "100"]).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = processes_running(&stack, &["sleep", "100"]);
    assert!(left.is_empty(), "the probe in flight outlived `tug stop`: {left:?}");
}

#[test]
fn a_log_probe_gates_readiness_on_a_matching_line() {
    let stack = Stack::new(
        "up-log",
        r#"
services:
  logged:
    command: "echo warming up; sleep 0.5; echo ready; exec {demo}"
    healthcheck: { log: "^ready$", interval: 1m, start_interval: 50ms }
  silent:
    command: "echo warming up; echo not ready yet; exec {demo}"
    healthcheck: { log: "^ready$", interval: 1m, start_interval: 50ms, start_period: 1m }
  after:
    command: "{demo}"
    depends_on: { logged: healthy }
"#,
    );
    let up = stack.tug(&["up", "-d", "logged", "after", "--timeout", "60s"]);
    assert_eq!(up.code, 0, "{}", up.all());
    let logged = stack.instance("logged-1").unwrap();
    assert_eq!(logged["state"], "healthy", "{logged:#?}");
    assert_eq!(logged["health"]["message"], "a log line matched /^ready$/", "{logged:#?}");
    // `after` waited for the line.
    let after = stack.instance("after-1").unwrap();
    assert!(text(&after, "started_at") >= health_at(&logged), "{logged:#?}\n{after:#?}");
    // A service whose output never matches stays starting.
    stack.tug(&["up", "-d", "silent", "--timeout", "1s"]);
    let silent = stack.wait_for("silent-1", Duration::from_secs(30), |r| r["health"].is_object());
    assert_eq!(silent["state"], "starting", "{silent:#?}");
    assert!(silent["health"]["message"].as_str().unwrap().contains("no log line has matched"), "{silent:#?}");
    assert!(stack.log("silent", "silent-1").contains("not ready yet"));
}

#[test]
fn a_failed_job_fails_up_with_its_exit_code_and_log_and_its_dependents_never_start() {
    let stack = Stack::new(
        "up-job-fail",
        r#"
services:
  migrate:
    kind: job
    command: "echo migrating users; echo 'boom: table users is missing' >&2; exit 3"
  api:
    command: "{demo}"
    depends_on: { migrate: completed_successfully }
"#,
    );
    let up = stack.tug(&["up", "-d", "--timeout", "60s"]);
    assert_eq!(up.code, 1, "{}", up.all());
    let out = up.all();
    assert!(out.contains("migrate-1"), "{out}");
    assert!(out.contains("exited with code 3"), "{out}");
    assert!(out.contains("boom: table users is missing"), "the job's last lines are shown:\n{out}");
    assert!(out.contains("migrating users"), "the job's last lines are shown:\n{out}");
    assert!(!out.contains("not up after"), "it failed, it did not time out:\n{out}");
    let migrate = stack.instance("migrate-1").unwrap();
    assert_eq!(migrate["state"], "failed", "{migrate:#?}");
    assert_eq!(migrate["exit_code"], 3, "{migrate:#?}");
    let api = stack.wait_state("api-1", "failed", Duration::from_secs(10));
    assert!(api["message"].as_str().unwrap().starts_with("not started: "), "{api:#?}");
    assert!(api["message"].as_str().unwrap().contains("migrate"), "{api:#?}");
    assert!(api["pid"].is_null(), "{api:#?}");
    assert!(api["started_at"].is_null(), "{api:#?}");
    assert_eq!(stack.log("api", "api-1"), "", "api never ran");
}

#[test]
fn up_fails_fast_on_a_crashing_service_and_shows_its_log() {
    let stack = Stack::new(
        "up-crash",
        r#"
services:
  fine:
    command: "{demo}"
  crasher:
    # With a healthcheck, `up` cannot count it as up before the crash. Without one, `running`
    # counts at once (docs/stackfile-extensions.md), so `up -d` returns 0 before the exit.
    command: "echo crasher booting; echo 'fatal: config is broken' >&2; exit 1"
    healthcheck: { tcp: true }
"#,
    );
    let up = stack.tug(&["up", "-d", "--timeout", "60s"]);
    assert_eq!(up.code, 1, "{}", up.all());
    let out = up.all();
    assert!(out.contains("crasher-1"), "{out}");
    assert!(out.contains("exited with code 1"), "{out}");
    assert!(out.contains("fatal: config is broken"), "{out}");
    assert!(!out.contains("not up after"), "it failed, it did not wait for the timeout:\n{out}");
    assert!(!out.contains("fine-1"), "only the failing service is reported:\n{out}");
    let crasher = stack.instance("crasher-1").unwrap();
    assert!(["crashloop", "starting"].contains(&crasher["state"].as_str().unwrap()), "{crasher:#?}");
    assert!(out.contains("crasher-1 crashloop"), "{out}");
}

#[test]
fn ps_shows_every_field_and_a_table_and_nothing_without_a_daemon() {
    let stack = Stack::new(
        "up-ps",
        r#"
services:
  once:
    kind: job
    command: echo done
  web:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
    depends_on: [once]
"#,
    );
    let ps = stack.tug(&["ps"]);
    assert_eq!(ps.code, 0, "{}", ps.all());
    assert_eq!(ps.stdout, "nothing is running for this stack\n");
    let ps = stack.tug(&["ps", "--json"]);
    assert_eq!(ps.code, 0, "{}", ps.all());
    assert_eq!(ps.stdout.trim(), "[]");
    assert!(stack.daemon_pid().is_none(), "ps starts no daemon");

    stack.up();
    let rows = stack.ps();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let web = rows.iter().find(|r| r["instance"] == "web-1").unwrap();
    let keys = [
        "service",
        "instance",
        "kind",
        "state",
        "pid",
        "port",
        "restarts",
        "started_at",
        "health",
        "exit_code",
        "revision",
        "message",
        "cpu_seconds",
        "memory_bytes",
    ];
    for key in keys {
        assert!(web.get(key).is_some(), "ps --json rows have `{key}`: {web:#?}");
    }
    assert_eq!(web["service"], "web");
    assert_eq!(web["kind"], "service");
    assert_eq!(web["state"], "healthy");
    assert!(alive(pid(web)));
    let port = web["port"].as_u64().unwrap() as u16;
    assert!((stack.range.0..=stack.range.1).contains(&port), "{port} not in {:?}", stack.range);
    assert_eq!(web["restarts"], 0);
    assert_eq!(text(web, "started_at").len(), "2025-01-01T00:00:00.000000Z".len(), "{web:#?}");
    assert!(text(web, "started_at").ends_with('Z'));
    assert_eq!(web["health"]["ok"], true);
    assert_eq!(web["health"]["failures"], 0);
    assert!(web["exit_code"].is_null() && web["message"].is_null(), "{web:#?}");
    assert!(!text(web, "revision").is_empty());
    assert!(web["cpu_seconds"].as_f64().is_some(), "{web:#?}");
    assert!(web["memory_bytes"].as_u64().unwrap() > 0, "{web:#?}");
    // The instance sees the same revision as ps.
    let environ = std::fs::read(format!("/proc/{}/environ", pid(web))).unwrap();
    let revision = format!("TUG_REVISION={}", text(web, "revision"));
    assert!(environ.split(|b| *b == 0).any(|e| e == revision.as_bytes()), "{revision}");
    let once = rows.iter().find(|r| r["instance"] == "once-1").unwrap();
    assert_eq!(once["kind"], "job");
    assert_eq!(once["state"], "completed");
    assert_eq!(once["exit_code"], 0);
    assert!(once["pid"].is_null() && once["port"].is_null(), "{once:#?}");

    let table = stack.tug(&["ps"]);
    assert_eq!(table.code, 0, "{}", table.all());
    let lines: Vec<&str> = table.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["INSTANCE", "KIND", "STATE", "PID", "PORT", "RESTARTS", "STARTED", "CPU", "MEMORY", "HEALTH"],
        "{}",
        table.stdout
    );
    let web_line: Vec<&str> =
        lines.iter().find(|l| l.starts_with("web-1 ")).expect("a web-1 line").split_whitespace().collect();
    assert_eq!(&web_line[..6], ["web-1", "service", "healthy", &pid(web).to_string(), &port.to_string(), "0"]);
    assert_eq!(web_line.last(), Some(&"200"), "{}", table.stdout);
    let once_line: Vec<&str> = lines.iter().find(|l| l.starts_with("once-1 ")).unwrap().split_whitespace().collect();
    assert_eq!(&once_line[..6], ["once-1", "job", "completed", "-", "-", "0"], "{}", table.stdout);

    stack.tug(&["down"]);
    assert_eq!(stack.tug(&["ps"]).stdout, "nothing is running for this stack\n");
    assert_eq!(stack.tug(&["ps", "--json"]).stdout.trim(), "[]");
}

#[test]
fn a_fixed_port_taken_by_another_program_fails_up_before_anything_starts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stack = Stack::new(
        "up-port",
        &format!(
            r#"
services:
  first:
    command: "{{demo}}"
  web:
    command: "{{demo}}"
    port: {port}
    depends_on: [first]
"#
        ),
    );
    let up = stack.tug(&["up", "-d", "--timeout", "60s"]);
    assert_eq!(up.code, 1, "{}", up.all());
    let out = up.all();
    assert!(out.contains(&format!("port {port}")), "{out}");
    assert!(out.contains("`web`"), "{out}");
    assert!(out.contains(&format!("pid {}", std::process::id())), "names the holder:\n{out}");
    let started: Vec<_> = stack.ps().into_iter().filter(|r| !r["pid"].is_null()).collect();
    assert!(started.is_empty(), "nothing started: {started:#?}");
    assert!(stack_processes(&stack.state_dir()).is_empty(), "no process of the stack runs");
    drop(listener);
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} in {status}"))
        .trim()
        .to_string()
}

#[test]
fn user_and_env_file_reach_the_instance() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let stack = Stack::new(
        "up-user-env",
        r#"
services:
  as-nobody:
    command: "{demo}"
    user: nobody
  with-env:
    command: "echo GREETING=$$GREETING; echo TOKEN=$$TOKEN; echo FROM_ENVIRONMENT=$$FROM_ENVIRONMENT; exec {demo}"
    env_file: [service.env]
    environment: { FROM_ENVIRONMENT: set-in-yaml }
  without-env:
    command: "echo GREETING=$${GREETING:-unset}; exec {demo}"
"#,
    );
    stack.dir.write("service.env", "GREETING=hello from the env file\nTOKEN='quoted value'\n");
    if !root {
        let up = stack.tug(&["up", "-d", "--timeout", "60s"]);
        assert_ne!(up.code, 0, "`user:` needs root:\n{}", up.all());
        assert!(up.all().contains("needs tug to run as root"), "{}", up.all());
        return;
    }
    stack.up();
    let nobody = stack.instance("as-nobody-1").unwrap();
    assert_eq!(nobody["state"], "running");
    let uids: Vec<String> = status_field(pid(&nobody), "Uid:").split_whitespace().map(String::from).collect();
    assert_eq!(uids, ["65534"; 4], "real, effective, saved and fs uid");
    let gids: Vec<String> = status_field(pid(&nobody), "Gid:").split_whitespace().map(String::from).collect();
    assert_eq!(gids, ["65534"; 4]);
    assert!(!status_field(pid(&nobody), "Groups:").split_whitespace().any(|g| g == "0"), "root's groups are dropped");
    let environ = std::fs::read(format!("/proc/{}/environ", pid(&nobody))).unwrap();
    assert!(environ.split(|b| *b == 0).any(|e| e == b"USER=nobody"), "USER is the user's");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.log("with-env", "with-env-1").contains("FROM_ENVIRONMENT=") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // An env file's ordinary values are delivered as they are; one whose name says it is a
    // secret (docs/stackfile-extensions.md) is masked in the log.
    let log = stack.log("with-env", "with-env-1");
    assert!(log.contains("GREETING=hello from the env file\n"), "{log}");
    assert!(log.contains("TOKEN=********\n"), "{log}");
    assert!(!log.contains("quoted value"), "{log}");
    assert!(log.contains("FROM_ENVIRONMENT=set-in-yaml"), "{log}");
    let with_env = stack.instance("with-env-1").unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", pid(&with_env))).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(vars.contains(&&b"GREETING=hello from the env file"[..]), "the env file's value is delivered");
    assert!(vars.contains(&&b"TOKEN=quoted value"[..]), "quotes are removed as in Compose");
    let log = stack.log("without-env", "without-env-1");
    assert!(log.contains("GREETING=unset"), "an env_file is per service:\n{log}");
}

/// The memory limit (bytes) of the v1 or v2 cgroup `pid` is in, if it has one.
fn cgroup_memory_limit(pid: i32) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "memory") {
            continue;
        }
        // Where that hierarchy is mounted (mountinfo: ... root mountpoint ... - fstype source options).
        for mount in mountinfo.lines() {
            let fields: Vec<&str> = mount.split_whitespace().collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
            let (root, point, fstype, options) = (fields[3], fields[4], fields[dash + 1], fields[dash + 3]);
            let matches =
                if v2 { fstype == "cgroup2" } else { fstype == "cgroup" && options.split(',').any(|o| o == "memory") };
            let Some(relative) = path.strip_prefix(root) else { continue };
            if !matches {
                continue;
            }
            let dir = std::path::Path::new(point).join(relative.trim_start_matches('/'));
            let file = dir.join(if v2 { "memory.max" } else { "memory.limit_in_bytes" });
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(limit) = text.trim().parse::<u64>()
            {
                return Some(limit);
            }
        }
    }
    None
}

#[test]
fn a_memory_limit_is_applied_or_up_says_it_is_not() {
    let stack = Stack::new(
        "up-memory",
        r#"
services:
  limited:
    command: "{demo}"
    resources: { memory: 64MiB }
  free:
    command: "{demo}"
"#,
    );
    let up = stack.up();
    let limited = stack.instance("limited-1").unwrap();
    let notice = up.all().contains("resources limits of limited are not applied");
    match cgroup_memory_limit(pid(&limited)) {
        Some(limit) if limit == 64 << 20 => {
            assert!(!notice, "the limit is applied, yet up says it is not:\n{}", up.all());
            let free = stack.instance("free-1").unwrap();
            assert_ne!(cgroup_memory_limit(pid(&free)), Some(64 << 20), "only `limited` is limited");
        }
        other => {
            assert!(notice, "no 64 MiB limit ({other:?}) and no notice:\n{}", up.all());
            let table = stack.tug(&["ps"]);
            assert!(table.stdout.contains("note: resources limits of limited are not applied"), "{}", table.stdout);
        }
    }
    // The instance's group goes with it.
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pid(&limited))).unwrap();
    stack.tug(&["down"]);
    for line in cgroup.lines().filter(|l| l.contains("tug-")) {
        let path = line.splitn(3, ':').nth(2).unwrap();
        for base in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup"] {
            let dir = format!("{base}{path}");
            assert!(!std::path::Path::new(&dir).exists(), "{dir} is left after down");
        }
    }
}

#[test]
fn up_again_reruns_a_failed_job_and_starts_what_waited_for_it() {
    // The dependent comes first in the file, so its gate may be looked at before the job's.
    let stack = Stack::new(
        "up-job-again",
        r#"
services:
  api:
    command: "{demo}"
    depends_on: { migrate: completed_successfully }
  migrate:
    kind: job
    command: "test -f ok || { echo the database is not there yet; exit 3; }"
  once:
    kind: job
    command: "test -f ok || exit 5"
"#,
    );
    for run in 1..=2 {
        let up = stack.tug(&["up", "-d", "--timeout", "60s"]);
        assert_eq!(up.code, 1, "{}", up.all());
        // `up` stops at the first failure (either job): the job's log tells that it ran again.
        let deadline = Instant::now() + Duration::from_secs(30);
        while stack.log("migrate", "migrate-1").matches("not there yet").count() < run {
            assert!(Instant::now() < deadline, "run {run}: {}", stack.log("migrate", "migrate-1"));
            std::thread::sleep(Duration::from_millis(20));
        }
        stack.wait_state("migrate-1", "failed", Duration::from_secs(30));
        stack.wait_state("once-1", "failed", Duration::from_secs(30));
    }
    stack.dir.write("ok", "");
    let up = stack.up();
    assert!(!up.stderr.contains("failed"), "{}", up.all());
    assert_eq!(stack.instance("migrate-1").unwrap()["state"], "completed");
    assert_eq!(stack.instance("api-1").unwrap()["state"], "running");
    assert!(stack.log("migrate", "migrate-1").contains("not there yet"), "the log keeps the failed run");

    // `tug start` of a failed instance runs it too.
    std::fs::remove_file(stack.path().join("ok")).unwrap();
    assert_eq!(stack.tug(&["start", "once-1"]).code, 0);
    stack.wait_for("once-1", Duration::from_secs(30), |r| r["state"] == "failed" && r["exit_code"] == 5);
    stack.dir.write("ok", "");
    assert_eq!(stack.tug(&["start", "once"]).code, 0);
    stack.wait_state("once-1", "completed", Duration::from_secs(30));
}
