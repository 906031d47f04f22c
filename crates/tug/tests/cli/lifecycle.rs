//! An instance's life under the daemon: restarts and backoff, liveness, graceful and
//! forced stops, what happens when the daemon itself dies, logs, floods of output.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api;
use crate::harness::{Stack, alive, stack_processes, wait_gone, wait_until};

fn pid_of(row: &Value) -> i32 {
    row["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {row:#}")) as i32
}

fn kill(pid: i32, signal: i32) {
    assert!(pid > 1);
    // SAFETY: kill of a pid this test identified as its stack's.
    unsafe { libc::kill(pid, signal) };
}

/// The stack's processes whose command line is exactly `cmdline` (arguments joined by spaces).
fn processes_running(stack: &Stack, cmdline: &str) -> Vec<i32> {
    stack_processes(&stack.state_dir())
        .into_iter()
        .filter(|pid| tug_sys::procfs::cmdline(*pid).is_some_and(|c| c == cmdline))
        .collect()
}

/// The keeper is the daemon's parent.
fn keeper_of(daemon: i32) -> i32 {
    tug_sys::procfs::stat(daemon).expect("the daemon runs").ppid
}

#[test]
fn crashing_service_backs_off_and_leaves_its_neighbour_alone() {
    let stack = Stack::new(
        "backoff",
        r#"
name: backoff
services:
  boom:
    command: echo boom; exit 1
    restart: always
  calm:
    command: sleep 1000
"#,
    );
    let started = Instant::now();
    let up = stack.tug(&["up", "-d", "--timeout", "30s"]);
    // `up -d` may see boom `running` for the moment before its first exit and succeed;
    // when it fails, it names the crashing instance.
    if up.code != 0 {
        assert_eq!(up.code, 1, "{}", up.all());
        assert!(up.stderr.contains("boom-1 crashloop"), "{}", up.all());
    }
    let calm = stack.wait_state("calm-1", "running", Duration::from_secs(10));
    let calm_pid = pid_of(&calm);
    // Watch for 10 s: the neighbour is never touched.
    while started.elapsed() < Duration::from_secs(10) {
        let row = stack.instance("calm-1").unwrap();
        assert_eq!(
            (row["state"].as_str(), row["pid"].as_i64(), row["restarts"].as_i64()),
            (Some("running"), Some(calm_pid as i64), Some(0))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let starts = stack.log("boom", "boom-1").lines().filter(|l| l.ends_with(" out boom")).count();
    // 100 ms doubling: starts at 0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 12.7 s...
    assert!((3..=9).contains(&starts), "{starts} starts in 10 s:\n{}", stack.log("boom", "boom-1"));
    let boom = stack.wait_state("boom-1", "crashloop", Duration::from_secs(10));
    let restarts = boom["restarts"].as_i64().unwrap();
    assert!((2..=8).contains(&restarts), "{boom:#}");
    assert_eq!(boom["exit_code"], 1, "{boom:#}");
    let message = boom["message"].as_str().unwrap_or_default();
    assert!(message.contains("exited with code 1") && message.contains("restarting in"), "{boom:#}");
    let ps = stack.tug(&["ps"]);
    assert!(ps.stdout.lines().any(|l| l.starts_with("boom-1") && l.contains("crashloop")), "{}", ps.stdout);
    assert!(alive(calm_pid));
    // `restart` starts it at once, and the backoff over.
    let restart = stack.tug(&["restart", "boom"]);
    assert_eq!(restart.code, 0, "{}", restart.all());
    wait_until("boom to start again", Duration::from_secs(10), || {
        stack.log("boom", "boom-1").lines().filter(|l| l.ends_with(" out boom")).count() > starts
    });
}

#[test]
fn failing_liveness_restarts_the_instance() {
    let stack = Stack::new(
        "liveness",
        r#"
name: liveness
services:
  web:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
    liveness: { http: /live, interval: 200ms, retries: 2 }
"#,
    );
    stack.up();
    let web = stack.wait_state("web-1", "healthy", Duration::from_secs(10));
    let (old_pid, port) = (pid_of(&web), web["port"].as_u64().unwrap() as u16);
    // Wait until a liveness probe has passed once, so failures count at the interval.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(stack.instance("web-1").unwrap()["pid"].as_i64(), Some(old_pid as i64));
    let mut generation = api::status(&stack)["generation"].as_u64().unwrap();
    let answer = http(port, "POST", "/admin/sick");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Follow every change of the table, to see the reason while it is shown.
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let restarted = loop {
        assert!(Instant::now() < deadline, "no restart; messages seen: {messages:#?}");
        let (code, body) = api::signed(&stack, "GET", &format!("/v1/status?after={generation}&wait_ms=2000"), b"");
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        generation = status["generation"].as_u64().unwrap();
        let row = status["instances"].as_array().unwrap().iter().find(|i| i["instance"] == "web-1").cloned().unwrap();
        if let Some(message) = row["message"].as_str() {
            messages.push(message.to_string());
        }
        if row["pid"].as_i64().is_some_and(|p| p != old_pid as i64) && row["state"] == "healthy" {
            break row;
        }
    };
    assert!(!alive(old_pid), "the old process is gone");
    assert!(restarted["restarts"].as_i64().unwrap() >= 1, "{restarted:#}");
    assert!(messages.iter().any(|m| m.contains("liveness")), "{messages:#?}");
    // The reason stays visible once it runs again.
    assert!(restarted["last_exit"].as_str().is_some_and(|l| l.contains("liveness")), "{restarted:#}");
    let ps = stack.tug(&["ps"]);
    assert!(ps.stdout.contains("last exit: liveness failed"), "{}", ps.stdout);
    // The new process is live again: no further restart.
    let new_pid = pid_of(&restarted);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(stack.instance("web-1").unwrap()["pid"].as_i64(), Some(new_pid as i64));
    // The demo logged its graceful stop: liveness stops with the stop signal, not SIGKILL.
    assert!(stack.log("web", "web-1").contains("stopping"), "{}", stack.log("web", "web-1"));
}

/// One HTTP/1.1 request to the demo on 127.0.0.1:`port`; the whole answer.
fn http(port: u16, method: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the demo");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: demo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn stop_is_graceful_then_forced_and_uses_the_stop_signal() {
    let stack = Stack::new(
        "stop",
        r#"
name: stopping
services:
  polite:
    command: "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    stop_grace_period: 30s
  stubborn:
    command: "trap '' TERM; echo ready; while :; do sleep 0.05; done"
    stop_grace_period: 1s
    replicas: 2
  inty:
    command: "trap 'echo got INT; exit 0' INT; trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    stop_signal: SIGINT
"#,
    );
    stack.up();
    for (service, instance) in [("polite", "polite-1"), ("stubborn", "stubborn-1"), ("inty", "inty-1")] {
        wait_until(&format!("{instance} to be ready"), Duration::from_secs(10), || {
            stack.log(service, instance).contains("ready")
        });
    }
    let pid = |name: &str| pid_of(&stack.instance(name).unwrap());
    let (polite, stubborn, stubborn2, inty) = (pid("polite-1"), pid("stubborn-1"), pid("stubborn-2"), pid("inty-1"));

    // Graceful: the trap runs, the exit is its own (0), long before the 30 s grace.
    let clock = Instant::now();
    let stop = stack.tug(&["stop", "polite"]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(clock.elapsed() < Duration::from_secs(20), "stop waited for the grace period");
    assert!(!alive(polite));
    let row = stack.instance("polite-1").unwrap();
    assert_eq!((row["state"].as_str(), row["exit_code"].as_i64()), (Some("stopped"), Some(0)), "{row:#}");
    assert!(stack.log("polite", "polite-1").contains(" out bye"), "{}", stack.log("polite", "polite-1"));

    // stop_signal: SIGINT is what the process gets.
    let stop = stack.tug(&["stop", "inty"]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(!alive(inty));
    let log = stack.log("inty", "inty-1");
    assert!(log.contains(" out got INT") && !log.contains("got TERM"), "{log}");
    assert_eq!(stack.instance("inty-1").unwrap()["exit_code"], 0);

    // Forced: SIGTERM is ignored, SIGKILL follows the grace period.
    let stop = stack.tug(&["stop", "stubborn-1"]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(!alive(stubborn), "stubborn-1 survived its stop");
    let row = stack.instance("stubborn-1").unwrap();
    assert_eq!((row["state"].as_str(), row["exit_code"].as_i64()), (Some("stopped"), Some(137)), "{row:#}");
    assert!(alive(stubborn2), "stopping one instance left the other alone");

    // `down` with a SIGTERM-proof instance still returns, after the daemon and keeper exited.
    let daemon = stack.daemon_pid().unwrap();
    let keeper = keeper_of(daemon);
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(!alive(stubborn2), "stubborn-2 outlived down");
    assert!(!alive(daemon), "tug down returned before the daemon exited");
    assert!(!alive(keeper), "tug down returned before the keeper exited");
    assert!(stack_processes(&stack.state_dir()).is_empty());
    assert!(!stack.state_dir().join("daemon.pid").exists());
}

/// The time of the first log record of `instance` whose text is `text`.
fn logged_at(stack: &Stack, service: &str, instance: &str, text: &str) -> String {
    let log = stack.log(service, instance);
    let line = log.lines().find(|l| l.ends_with(&format!(" out {text}")));
    line.map(|l| l[..27].to_string()).unwrap_or_else(|| panic!("{instance} never printed {text:?}:\n{log}"))
}

#[test]
fn down_stops_dependents_before_what_they_depend_on() {
    let service = |name: &str, after: &str| {
        format!(
            "  {name}:\n    command: \"trap 'echo bye; sleep 0.2; echo gone; exit 0' TERM; echo ready; \
             while :; do sleep 0.05; done\"\n{after}"
        )
    };
    let yaml = format!(
        "name: order\nservices:\n{}{}{}",
        service("db", ""),
        service("api", "    depends_on: [db]\n"),
        service("web", "    depends_on: [api]\n")
    );
    let stack = Stack::new("order", &yaml);
    stack.up();
    for name in ["db", "api", "web"] {
        let instance = format!("{name}-1");
        wait_until(&instance, Duration::from_secs(10), || stack.log(name, &instance).contains("ready"));
    }
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    // Each is asked to stop only once its dependents are gone.
    let web_gone = logged_at(&stack, "web", "web-1", "gone");
    let api_bye = logged_at(&stack, "api", "api-1", "bye");
    let api_gone = logged_at(&stack, "api", "api-1", "gone");
    let db_bye = logged_at(&stack, "db", "db-1", "bye");
    assert!(web_gone < api_bye && api_gone < db_bye, "web gone {web_gone}, api {api_bye}-{api_gone}, db {db_bye}");
}

#[test]
fn killed_daemon_leaves_no_process_behind() {
    let stack = Stack::new(
        "orphans",
        r#"
name: orphans
services:
  tree:
    command: "sleep 1000 & (setsid sleep 1001 &) ; sleep 1002"
  web:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
"#,
    );
    stack.up();
    let mut sleeps = Vec::new();
    wait_until("the three sleeps", Duration::from_secs(10), || {
        sleeps = ["sleep 1000", "sleep 1001", "sleep 1002"].iter().flat_map(|c| processes_running(&stack, c)).collect();
        sleeps.len() == 3
    });
    let web = pid_of(&stack.instance("web-1").unwrap());
    let daemon = stack.daemon_pid().unwrap();
    let keeper = keeper_of(daemon);
    assert!(alive(keeper));
    kill(daemon, libc::SIGKILL);
    wait_until("no process of the stack", Duration::from_secs(10), || stack_processes(&stack.state_dir()).is_empty());
    for pid in sleeps.iter().chain([&web]) {
        assert!(!alive(*pid), "{pid} outlived the daemon");
    }
    assert!(wait_gone(keeper, Duration::from_secs(10)), "the keeper outlived the daemon");
    let log = std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("ended abnormally"), "{log}");
    // A new daemon starts cleanly, with nothing to clean up.
    stack.up();
    let ps = stack.tug(&["ps"]);
    assert!(ps.stdout.contains("tree-1") && !ps.stdout.contains("note:"), "{}", ps.stdout);
    stack.wait_state("web-1", "healthy", Duration::from_secs(10));
}

#[test]
fn terminating_the_keeper_or_the_daemon_stops_the_stack_gracefully() {
    let yaml = r#"
name: terminate
services:
  polite:
    command: "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
"#;
    // SIGKILL of the keeper: the daemon gets SIGTERM (its parent-death signal).
    for (target, signal) in [("keeper", libc::SIGTERM), ("daemon", libc::SIGTERM), ("keeper", libc::SIGKILL)] {
        let stack = Stack::new("terminate", yaml);
        stack.up();
        wait_until("polite to be ready", Duration::from_secs(10), || stack.log("polite", "polite-1").contains("ready"));
        let polite = pid_of(&stack.instance("polite-1").unwrap());
        let daemon = stack.daemon_pid().unwrap();
        let keeper = keeper_of(daemon);
        // As `systemctl stop`, a shutdown or `kill` would.
        kill(if target == "keeper" { keeper } else { daemon }, signal);
        assert!(wait_gone(daemon, Duration::from_secs(20)), "signal {signal} to the {target}: the daemon still runs");
        assert!(wait_gone(keeper, Duration::from_secs(10)), "signal {signal} to the {target}: the keeper still runs");
        assert!(!alive(polite));
        let log = stack.log("polite", "polite-1");
        assert!(log.contains(" out bye"), "signal {signal} to the {target} did not stop polite gracefully:\n{log}");
        let daemon_log = std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap_or_default();
        assert!(!daemon_log.contains("abnormally"), "{daemon_log}");
        assert!(!stack.state_dir().join("tug.sock").exists() && !stack.state_dir().join("daemon.pid").exists());
        assert_eq!(stack.tug(&["ps"]).stdout, "nothing is running for this stack\n");
    }
}

#[test]
fn a_second_daemon_for_the_same_stack_leaves_the_first_alone() {
    let stack = Stack::new(
        "second",
        r#"
name: second
services:
  idle:
    command: sleep 1000
"#,
    );
    stack.up();
    let daemon = stack.daemon_pid().unwrap();
    let idle = pid_of(&stack.instance("idle-1").unwrap());
    // A second keeper for the same state folder (as a second `tug up` racing the first
    // starts): its daemon cannot take the lock and exits.
    let state_dir = stack.state_dir().canonicalize().unwrap();
    let second = stack.tug(&["daemon", "--state-dir", state_dir.to_str().unwrap()]);
    assert_ne!(second.code, 0, "{}", second.all());
    assert!(second.all().contains("another daemon already runs this stack"), "{}", second.all());
    // The running daemon is still reachable: socket and pid file are its own.
    assert!(stack.state_dir().join("tug.sock").exists(), "the second keeper removed the socket");
    assert_eq!(stack.daemon_pid(), Some(daemon), "the second keeper removed daemon.pid");
    assert_eq!(pid_of(&stack.instance("idle-1").unwrap()), idle);
    // And `up` still talks to it.
    stack.up();
    assert_eq!(stack.daemon_pid(), Some(daemon));
    assert_eq!(pid_of(&stack.instance("idle-1").unwrap()), idle);
    let down = stack.tug(&["down"]);
    assert!(down.stdout.contains("stopped 1 instance"), "{}", down.all());
    assert!(wait_gone(idle, Duration::from_secs(5)));
}

const RACE: &str = r#"
name: race
services:
  idle:
    command: sleep 1000
"#;

#[test]
fn concurrent_first_ups_share_one_api_key() {
    let stack = Stack::new("race-key", RACE);
    let runs: Vec<crate::Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| stack.tug(&["up", "-d", "--timeout", "30s"]))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        assert_eq!(run.code, 0, "{}", run.all());
    }
}

#[test]
fn concurrent_ups_start_one_daemon() {
    let stack = Stack::new("race", RACE);
    // The key exists, as after any first `tug up` (concurrent first ups: see above).
    std::fs::create_dir_all(stack.state_dir()).unwrap();
    std::fs::write(stack.state_dir().join("api.key"), "0123456789abcdef0123456789abcdef\n").unwrap();
    let runs: Vec<crate::Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(|| stack.tug(&["up", "-d", "--timeout", "30s"]))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        assert_eq!(run.code, 0, "{}", run.all());
    }
    let daemons: Vec<i32> = tug_sys::procfs::pids()
        .unwrap()
        .into_iter()
        .filter(|pid| {
            tug_sys::procfs::cmdline(*pid).is_some_and(|c| {
                c.contains("daemon --serve")
                    && c.contains(&stack.state_dir().canonicalize().unwrap().display().to_string())
            }) && alive(*pid)
        })
        .collect();
    assert_eq!(daemons, vec![stack.daemon_pid().unwrap()]);
}

/// A process that left the instance's process group (`setsid`) and was adopted by
/// the daemon is found by the instance's variables in its environment.
#[test]
fn stopping_an_instance_stops_descendants_that_left_its_group() {
    let stack = Stack::new(
        "escape",
        r#"
name: escape
services:
  tree:
    command: "sleep 1000 & (setsid sleep 1001 &) ; sleep 1002"
"#,
    );
    stack.up();
    let mut escaped = Vec::new();
    wait_until("the sleeps", Duration::from_secs(10), || {
        escaped = processes_running(&stack, "sleep 1001");
        escaped.len() == 1 && processes_running(&stack, "sleep 1002").len() == 1
    });
    let stop = stack.tug(&["stop", "tree"]);
    assert_eq!(stop.code, 0, "{}", stop.all());
    assert!(processes_running(&stack, "sleep 1002").is_empty());
    assert!(
        wait_gone(escaped[0], Duration::from_secs(5)),
        "`tug stop` left pid {} (setsid sleep 1001) running",
        escaped[0]
    );
}

#[test]
fn new_daemon_stops_what_a_crashed_one_left() {
    let stack = Stack::new(
        "reconcile",
        r#"
name: reconcile
services:
  tree:
    command: "sleep 1000 & (setsid sleep 1001 &) ; sleep 1002"
"#,
    );
    stack.up();
    let mut survivor = Vec::new();
    wait_until("the sleeps", Duration::from_secs(10), || {
        survivor = processes_running(&stack, "sleep 1001");
        survivor.len() == 1 && processes_running(&stack, "sleep 1000").len() == 1
    });
    let survivor = survivor[0];
    let daemon = stack.daemon_pid().unwrap();
    let keeper = keeper_of(daemon);
    // Every tug process at once (`pkill -9 tug`): the keeper, the daemon and the instance's
    // shim, so nothing is left to clean up after them.
    let shims: Vec<i32> = crate::harness::stack_processes(&stack.state_dir())
        .into_iter()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "tug-instance"))
        .collect();
    assert_eq!(shims.len(), 1, "the instance runs under its shim");
    // In this order, so none of them outlives the one it watches long enough to act: the shim
    // kills its subtree when its parent (the daemon) dies, the keeper every descendant when the
    // daemon ends. (Daemon first let a loaded machine run the shim's reaction before its own
    // SIGKILL landed, and the grandchild went with it.)
    kill(keeper, libc::SIGKILL);
    kill(shims[0], libc::SIGKILL);
    assert!(wait_gone(shims[0], Duration::from_secs(5)));
    kill(daemon, libc::SIGKILL);
    assert!(wait_gone(daemon, Duration::from_secs(5)) && wait_gone(keeper, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(survivor), "the grandchild in its own session should outlive all three");
    stack.up();
    assert!(!alive(survivor), "the new daemon left the old grandchild running");
    wait_until("the new instance's grandchild", Duration::from_secs(10), || {
        processes_running(&stack, "sleep 1001").len() == 1
    });
    let ps = stack.tug(&["ps"]);
    let notes: Vec<&str> = ps.stdout.lines().filter(|l| l.starts_with("note:")).collect();
    assert!(
        notes.iter().any(|n| n.contains(&format!("pid {survivor}")) && n.contains("earlier daemon")),
        "{}",
        ps.stdout
    );
    let status = api::status(&stack);
    let notices = status["notices"].as_array().unwrap();
    assert!(notices.iter().any(|n| n.as_str().unwrap().contains(&format!("pid {survivor}"))), "{status:#}");
}

#[test]
fn reconcile_spares_a_pid_whose_start_time_differs() {
    let stack = Stack::new(
        "spare",
        r#"
name: spare
services:
  idle:
    command: sleep 1000
"#,
    );
    // Two unrelated processes, each the leader of its own group (as instances are).
    let spawn = |seconds: &str| {
        use std::os::unix::process::CommandExt;
        Command::new("sleep").arg(seconds).process_group(0).spawn().expect("spawn sleep")
    };
    let mut stranger = spawn("60");
    let mut listed = spawn("61");
    let ticks = |pid: u32| tug_sys::procfs::stat(pid as i32).unwrap().start_time;
    let record = serde_json::json!({
        "daemon_pid": 1,
        "instances": [
            { "instance": "idle-1", "pid": stranger.id(), "start_ticks": ticks(stranger.id()) + 7 },
            { "instance": "idle-2", "pid": listed.id(), "start_ticks": ticks(listed.id()) },
        ],
    });
    std::fs::create_dir_all(stack.state_dir()).unwrap();
    std::fs::write(stack.state_dir().join("state.json"), record.to_string()).unwrap();
    stack.up();
    let stranger_alive = alive(stranger.id() as i32);
    let listed_alive = alive(listed.id() as i32);
    let _ = stranger.kill();
    let _ = listed.kill();
    let _ = stranger.wait();
    let _ = listed.wait();
    assert!(stranger_alive, "a pid whose start time does not match the record was stopped");
    // The control: the record is acted on when it matches.
    assert!(!listed_alive, "a recorded process with a matching start time was left running");
    let ps = stack.tug(&["ps"]);
    assert!(ps.stdout.contains(&format!("idle-2 (pid {})", listed.id())), "{}", ps.stdout);
    assert!(!ps.stdout.contains(&format!("pid {})", stranger.id())), "{}", ps.stdout);
}

/// `line N` numbers in the output of `tug logs` (plain format).
fn numbers(text: &str) -> Vec<usize> {
    text.lines().filter_map(|l| l.rsplit_once("| line ").and_then(|(_, n)| n.trim().parse().ok())).collect()
}

#[test]
fn logs_follow_across_rotation_and_read_back() {
    const LINES: usize = 3000;
    let stack = Stack::new(
        "logs",
        r#"
name: logs
services:
  printer:
    command: >-
      while [ ! -f go ]; do sleep 0.02; done;
      i=0; while [ $$i -lt 3000 ]; do echo line $$i; i=$$((i+1));
      if [ $$((i % 20)) = 0 ]; then sleep 0.02; fi; done; sleep 1000
    logs: { max_size: 8KiB, max_files: 5 }
"#,
    );
    stack.up();
    let mut follower = Command::new(env!("CARGO_BIN_EXE_tug"))
        .args(["logs", "-f", "printer"])
        .current_dir(stack.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tug logs -f");
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Let the follower settle on the (empty) log before anything is printed.
    std::thread::sleep(Duration::from_millis(300));
    stack.dir.write("go", "");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.last().is_some_and(|l: &String| l.ends_with(&format!("line {}", LINES - 1))) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    drop(rx);
    let _ = reader.join();
    let followed = numbers(&seen.join("\n"));
    let expected: Vec<usize> = (0..LINES).collect();
    if followed != expected {
        let missing: Vec<usize> = expected.iter().copied().filter(|n| !followed.contains(n)).collect();
        panic!(
            "tug logs -f saw {} lines, {} missing (first {:?}); first lines: {:?}",
            followed.len(),
            missing.len(),
            missing.first(),
            &seen[..seen.len().min(5)]
        );
    }
    assert!(seen.iter().all(|l| l.starts_with("printer-1 | line ")), "{:?}", &seen[..5]);
    let dir = stack.state_dir().join("logs/printer");
    assert!(dir.join("printer-1.log.1").exists(), "no rotation happened");
    assert!(!dir.join("printer-1.log.5").exists(), "max_files: 5 keeps .log to .log.4");

    // Reading back: what is on disk, oldest first, without gaps.
    let all = stack.tug(&["logs", "printer"]);
    assert_eq!(all.code, 0, "{}", all.all());
    let kept = numbers(&all.stdout);
    assert!(!kept.is_empty() && kept.len() < LINES, "{} lines kept", kept.len());
    assert_eq!(kept, (kept[0]..LINES).collect::<Vec<_>>(), "rotated files read oldest first");
    let tail = stack.tug(&["logs", "--tail", "3", "printer"]);
    assert_eq!(numbers(&tail.stdout), [LINES - 3, LINES - 2, LINES - 1], "{}", tail.all());
    let since = stack.tug(&["logs", "--since", "1h", "printer-1"]);
    assert_eq!(numbers(&since.stdout), kept, "--since 1h");
    let future = stack.tug(&["logs", "--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(future.code, 0, "{}", future.all());
    assert!(numbers(&future.stdout).is_empty(), "{}", future.stdout);
    let json = stack.tug(&["logs", "--json", "--tail", "50"]);
    assert_eq!(json.code, 0, "{}", json.all());
    let rows: Vec<Value> = json.stdout.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert_eq!(rows.len(), 50);
    for row in &rows {
        assert!(row["time"].as_str().is_some_and(|t| t.len() == 27 && t.ends_with('Z')), "{row}");
        assert_eq!((row["service"].as_str(), row["instance"].as_str()), (Some("printer"), Some("printer-1")));
        assert_eq!(row["stream"], "out");
        assert!(row["line"].as_str().is_some_and(|l| l.starts_with("line ")), "{row}");
    }
    assert_eq!(rows.last().unwrap()["line"], format!("line {}", LINES - 1));
    for unknown in [&["logs", "nosuch"][..], &["logs", "--tail", "1", "printer", "nosuch-2"]] {
        let run = stack.tug(unknown);
        assert_ne!(run.code, 0, "{}", run.all());
        assert!(run.stderr.contains("nosuch") && run.stderr.contains("printer-1"), "{}", run.all());
    }
    let bad_since = stack.tug(&["logs", "--since", "yesterday-ish"]);
    assert_ne!(bad_since.code, 0, "{}", bad_since.all());
    assert!(bad_since.stderr.contains("--since"), "{}", bad_since.all());
}

#[test]
fn floods_of_output_keep_the_daemon_responsive_and_small() {
    let stack = Stack::new(
        "flood",
        r#"
name: flood
services:
  bigline:
    kind: job
    command: "head -c 5000000 /dev/zero | tr '\\0' x; exit 0"
  firehose:
    kind: job
    command: "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz | head -c 20000000"
    logs: { max_size: 2MiB, max_files: 3 }
  calm:
    command: sleep 1000
"#,
    );
    stack.up();
    let daemon = stack.daemon_pid().unwrap();
    let rss_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        peak = peak.max(rss_kib());
        // `tug ps` keeps answering while the pumps are busy (its client gives up after 10 s).
        let rows = stack.ps();
        peak = peak.max(rss_kib());
        let state = |name: &str| rows.iter().find(|r| r["instance"] == name).map(|r| r["state"].clone());
        if state("bigline-1") == Some("completed".into()) && state("firehose-1") == Some("completed".into()) {
            break;
        }
        assert!(Instant::now() < deadline, "the jobs did not complete: {rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(peak < 100 * 1024, "the daemon's RSS reached {peak} KiB");
    let big = stack.log("bigline", "bigline-1");
    let pieces: Vec<&str> = big.lines().filter_map(|l| l.splitn(3, ' ').nth(2)).collect();
    assert!(pieces.len() > 1, "a 5 MB line is cut into pieces");
    assert!(pieces.iter().all(|p| p.len() <= 16 * 1024 && p.bytes().all(|b| b == b'x')));
    assert_eq!(pieces.iter().map(|p| p.len()).sum::<usize>(), 5_000_000, "every byte of the line is kept");
    let dir = stack.state_dir().join("logs/firehose");
    assert!(dir.join("firehose-1.log.1").exists() && dir.join("firehose-1.log.2").exists());
    assert!(!dir.join("firehose-1.log.3").exists());
    let last = stack.tug(&["logs", "--tail", "1", "firehose"]);
    assert!(last.stdout.contains("| 0123456789abcdefghijklmnopqrstuvwxyz0"), "{}", last.all());
    let calm = stack.instance("calm-1").unwrap();
    assert_eq!((calm["state"].as_str(), calm["restarts"].as_i64()), (Some("running"), Some(0)));
}

#[test]
fn a_missing_working_dir_is_blamed_not_the_program() {
    let stack = Stack::new(
        "workdir",
        r#"
name: workdir
services:
  lost:
    command: sleep 1000
    working_dir: ./missing
    restart: "no"
"#,
    );
    let up = stack.tug(&["up", "-d", "--timeout", "30s"]);
    assert_eq!(up.code, 1, "{}", up.all());
    let row = stack.wait_state("lost-1", "failed", Duration::from_secs(10));
    let message = row["message"].as_str().unwrap_or_default();
    assert!(message.contains("working_dir") && message.contains("missing"), "{row:#}");
    assert!(up.stderr.contains("working_dir"), "{}", up.all());
}

#[test]
fn descriptors_tug_inherits_do_not_reach_the_daemon_or_instances() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let stack = Stack::new(
        "fds",
        r#"
name: fds
services:
  idle:
    command: sleep 1000
"#,
    );
    // A pipe whose write end `tug up` inherits, as from a CI runner, `make` or `$(...)`
    // elsewhere in a script: close-on-exec here, so only that one child gets it.
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills two descriptors, owned right after.
    assert_eq!(unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned nowhere else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let inherited = write.as_raw_fd();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tug"));
    command
        .args(["up", "-d", "--timeout", "30s"])
        .current_dir(stack.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TUG_PORT_RANGE", format!("{}-{}", stack.range.0, stack.range.1))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: fcntl is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::fcntl(inherited, libc::F_SETFD, 0);
            Ok(())
        });
    }
    assert!(command.status().unwrap().success());
    drop(write);
    let idle = pid_of(&stack.instance("idle-1").unwrap());
    let daemon = stack.daemon_pid().unwrap();
    let pipe = std::fs::read_link(format!("/proc/self/fd/{}", read.as_raw_fd())).unwrap();
    for (what, pid) in [("instance", idle), ("daemon", daemon), ("keeper", keeper_of(daemon))] {
        let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.display().to_string())
            .collect();
        assert!(!held.contains(&pipe.display().to_string()), "the {what} holds tug's inherited {pipe:?}: {held:?}");
    }
    // So whoever waits for the end of that pipe is not kept waiting by the stack.
    let mut poll = libc::pollfd { fd: read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut poll, 1, 5000) }, 1, "the pipe never reached its end");
}
