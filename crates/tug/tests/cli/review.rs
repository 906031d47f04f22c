//! Regression tests for bugs found in review.

use std::time::Duration;

use crate::harness::{Stack, stack_processes};

/// A secret given in the environment of `tug up` was inherited by every instance
/// (the daemon's environment is that `up`'s), so a service that does not list it
/// got it, and wrote it to its log unmasked.
#[test]
fn a_secret_from_the_environment_reaches_only_the_services_that_list_it() {
    let stack = Stack::new(
        "review-withheld",
        r#"
name: review-withheld
settings:
  DB_PASSWORD: { type: secret }
  DB_URL: { type: url, value: "postgres://u:${DB_PASSWORD}@127.0.0.1/db" }
services:
  listed:
    command: sh -c 'echo "pw=$${DB_PASSWORD:-unset}"; sleep 100'
    secrets: [DB_PASSWORD]
  other:
    command: sh -c 'echo "pw=$${DB_PASSWORD:-unset} url=$${DB_URL:-unset}"; sleep 100'
"#,
    );
    let secret = "env-secret-value-1234";
    let run = stack.tug_with(
        &["up", "-d", "--timeout", "60s"],
        &[("DB_PASSWORD", secret), ("DB_URL", "postgres://u:env-secret-value-1234@h/db")],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    stack.wait_for("other-1", Duration::from_secs(10), |_| stack.log("other", "other-1").contains("pw="));
    stack.wait_for("listed-1", Duration::from_secs(10), |_| stack.log("listed", "listed-1").contains("pw="));
    let other = stack.log("other", "other-1");
    assert!(other.contains("pw=unset url=unset"), "{other}");
    let listed = stack.log("listed", "listed-1");
    assert!(listed.contains("pw=********") && !listed.contains(secret), "{listed}");
    // The daemon and its keeper live as long as the stack: their environment (readable in
    // /proc) holds nothing `up` was given.
    let daemon = stack.daemon_pid().expect("daemon.pid");
    let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).expect("daemon stat");
    let keeper: i32 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    for pid in [daemon, keeper] {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let text = String::from_utf8_lossy(&environ);
        assert!(!text.contains(secret) && !text.contains("DB_PASSWORD"), "pid {pid}: {text}");
        assert!(text.contains("PATH="), "pid {pid} keeps its PATH: {text}");
    }
}

/// An http probe whose path interpolates a secret quoted the path in its failure
/// ("HTTP 405 from GET /admin/ready?token=abc123"), which `tug ps`, `--json` and the
/// API show: masking by value skips secrets under 8 characters.
#[test]
fn a_failing_http_probe_does_not_quote_a_sensitive_path() {
    let stack = Stack::new(
        "review-probe-path",
        r#"
name: review-probe-path
settings:
  TOKEN: { type: secret }
services:
  web:
    command: ["{demo}"]
    secrets: [TOKEN]
    healthcheck: { http: "/admin/ready?token=${TOKEN}", interval: 100ms, start_interval: 50ms, retries: 1 }
"#,
    );
    let run = stack.tug_with(&["up", "-d", "--timeout", "30s"], &[("TOKEN", "abc123")]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(!run.all().contains("abc123"), "{}", run.all());
    let row = stack.wait_for("web-1", Duration::from_secs(10), |row| {
        row["health"]["message"].as_str().is_some_and(|m| m.starts_with("HTTP 405"))
    });
    assert_eq!(row["health"]["message"], "HTTP 405 from GET ********", "{row:#}");
    let ps = stack.tug(&["ps"]);
    assert!(!ps.all().contains("abc123"), "{}", ps.all());
}

/// Reconciliation named each process an earlier daemon left by its command line, in
/// daemon.log, the API's notices and `tug ps`; arguments can carry a secret. And an audit found
/// that when the keeper and the daemon were SIGKILLed together, a grandchild that had called
/// `setsid` survived until the next `up`: each instance's shim now takes it down at once.
#[test]
fn nothing_survives_the_keeper_and_daemon_killed_together_and_no_note_quotes_arguments() {
    let stack = Stack::new(
        "review-reconcile",
        r#"
name: review-reconcile
settings:
  TOKEN: { type: secret }
services:
  web:
    command: [sh, -c, 'setsid sh -c "sleep 1000; : $$0" "$$TOKEN" & sleep 1000']
    secrets: [TOKEN]
"#,
    );
    let secret = "reconcile-secret-42";
    let env = [("TOKEN", secret)];
    let run = stack.tug_with(&["up", "-d", "--timeout", "30s"], &env);
    assert_eq!(run.code, 0, "{}", run.all());
    // The setsid'd grandchild runs, with the secret in its arguments.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack_processes(&stack.state_dir()).len() < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", stack_processes(&stack.state_dir()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let daemon = stack.daemon_pid().expect("daemon.pid");
    let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).expect("daemon stat");
    let keeper: i32 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Both at once: neither is left to clean up.
    // SAFETY: kill of processes this test started.
    unsafe {
        libc::kill(keeper, libc::SIGKILL);
        libc::kill(daemon, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stack_processes(&stack.state_dir()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "survived the daemon and its keeper: {:?}",
            stack_processes(&stack.state_dir())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = stack.tug_with(&["up", "-d", "--timeout", "30s"], &env);
    assert_eq!(run.code, 0, "{}", run.all());
    let ps = stack.tug(&["ps"]);
    assert!(!ps.all().contains(secret), "{}", ps.all());
    let log = std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap_or_default();
    assert!(!log.contains(secret), "{log}");
}

/// `POST /v1/down` waited for the lock that serialises changes, so `tug down` during a
/// `tug stop` still in its stop_grace_period timed out after 15 s with "Resource
/// temporarily unavailable" and left the stack running.
#[test]
fn down_is_not_held_up_by_a_stop_in_progress() {
    let stack = Stack::new(
        "review-down-during-stop",
        r#"
name: review-down-during-stop
services:
  web:
    command: sh -c 'trap "" TERM; sleep 1000 & wait; sleep 1000'
    stop_grace_period: 20s
"#,
    );
    stack.up();
    let dir = stack.path().to_path_buf();
    let range = format!("{}-{}", stack.range.0, stack.range.1);
    let stop = std::thread::spawn(move || crate::tug(&dir, &["stop", "web"], &[("TUG_PORT_RANGE", &range)], None));
    stack.wait_state("web-1", "stopping", Duration::from_secs(10));
    let daemon = stack.daemon_pid().expect("daemon.pid");
    let started = std::time::Instant::now();
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(!crate::harness::alive(daemon), "the daemon is still there after `down`");
    // The stop's grace (20 s) bounds it, not a client timeout (15 s) plus a retry.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let _ = stop.join();
}
