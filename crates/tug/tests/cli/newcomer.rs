//! What a newcomer (from Docker Compose) meets on the first day, each fixed and tested against
//! the real binary: a program that ignores `$PORT`, commands run from a subfolder, `up -d`'s
//! progress and addresses, routers on every interface, `logs` names, commands that wait until
//! done, env files that are not secrets, a settings cycle reported once, and a daemon that
//! dies under a foreground `up` run at boot.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Stack, free_port, wait_until};

#[test]
fn a_program_that_binds_the_service_port_itself_is_warned_about_and_its_crash_names_the_router() {
    let port = free_port();
    let yaml = format!(
        r#"
name: ignores-port
services:
  web:
    command: [python3, -m, http.server, "{port}", --bind, 127.0.0.1]
    port: {port}
    restart: on-failure
"#
    );
    let stack = Stack::new("newcomer-port", &yaml);
    let check = stack.tug(&["check"]);
    assert!(
        check.stdout.contains("warning[port-unused]") && check.stdout.contains("mentions `$PORT`"),
        "{}",
        check.all()
    );
    let up = stack.tug(&["up", "-d", "--timeout", "30s"]);
    assert_eq!(up.code, 1, "{}", up.all());
    assert!(up.stderr.contains("Address already in use"), "{}", up.all());
    assert!(
        up.stderr.contains(&format!("port {port} is held by tug's router"))
            && up.stderr.contains("must listen on its own $PORT")
            && up.stderr.contains("proxy: false"),
        "{}",
        up.all()
    );
    // A failed `up -d` says the stack still runs, and how to stop it.
    assert!(up.stderr.contains("the stack is still running") && up.stderr.contains("`tug down`"), "{}", up.all());
}

#[test]
fn commands_find_the_stack_file_above_and_up_shows_progress_and_addresses() {
    let port = free_port();
    let yaml = format!(
        r#"
name: nested
services:
  web:
    command: "{{demo}} --port $PORT"
    port: {port}
    healthcheck: {{ http: /health, start_interval: 100ms }}
"#
    );
    let stack = Stack::new("newcomer-nested", &yaml);
    let up = stack.up();
    // Progress as each service gets there (a line per change without a terminal), then where
    // each service answers.
    assert!(up.stderr.contains("✔ web"), "{}", up.all());
    assert!(up.stdout.contains(&format!("web  http://127.0.0.1:{port}  (1 instance)")), "{}", up.all());
    // From a subfolder, as with Compose: the stack file is found above.
    let deeper = stack.path().join("src/app");
    std::fs::create_dir_all(&deeper).unwrap();
    let ps = crate::tug(&deeper, &["ps"], &[], None);
    assert_eq!(ps.code, 0, "{}", ps.all());
    assert!(ps.stdout.contains("web-1") && ps.stdout.contains("healthy"), "{}", ps.stdout);
    // The service's stable port beside the instance's own.
    let own = stack.instance("web-1").unwrap()["port"].as_u64().unwrap();
    assert!(ps.stdout.contains(&format!("{port}→{own}")), "{}", ps.stdout);
    // A folder with no stack file anywhere above: an error, not "nothing is running".
    let elsewhere = crate::TempDir::new("newcomer-nowhere");
    let ps = crate::tug(elsewhere.path(), &["ps"], &[], None);
    assert_eq!(ps.code, 1, "{}", ps.all());
    assert!(ps.stderr.contains("no tug.yaml in ") && ps.stderr.contains("or any folder above it"), "{}", ps.all());
}

/// Whether something accepts connections at `ip:port`.
fn answers(ip: &str, port: u16) -> bool {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[test]
fn routers_listen_on_every_interface_when_asked() {
    let (a, b) = (free_port(), free_port());
    let yaml = |listen: &str| {
        format!(
            r#"
name: listen
{listen}
services:
  web:
    command: "{{demo}} --port $PORT"
    port: {a}
    healthcheck: {{ http: /health, start_interval: 100ms }}
"#
        )
    };
    // By default the routers bind the advertised address only: 127.0.0.2 is another address.
    let local = Stack::new("newcomer-listen-default", &yaml(""));
    local.up();
    assert!(answers("127.0.0.1", a) && !answers("127.0.0.2", a));
    drop(local);
    let everywhere = Stack::new("newcomer-listen-all", &yaml("listen: 0.0.0.0"));
    let up = everywhere.up();
    assert!(up.stdout.contains("on every interface"), "{}", up.all());
    assert!(answers("127.0.0.1", a) && answers("127.0.0.2", a));
    // The instances still reach each other at the advertised address.
    assert_eq!(everywhere.instance("web-1").unwrap()["state"], "healthy");
    drop(everywhere);
    // `--listen` does the same from the command line; an address others cannot reach the
    // routers through is refused, naming why.
    let flag = Stack::new("newcomer-listen-flag", &yaml("").replace(&a.to_string(), &b.to_string()));
    let run = flag.tug(&["up", "-d", "--listen", "127.0.0.3", "--timeout", "30s"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("listen: 127.0.0.3") && run.stderr.contains("0.0.0.0"), "{}", run.all());
    let run = flag.tug(&["up", "-d", "--listen", "0.0.0.0", "--timeout", "30s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(answers("127.0.0.2", b));
    let bad = Stack::new("newcomer-listen-bad", &yaml("listen: everywhere"));
    let check = bad.tug(&["check"]);
    assert!(check.stdout.contains("`everywhere` is not an IP address"), "{}", check.all());
}

#[test]
fn logs_names_fail_at_once_and_removed_services_are_shown_only_when_asked() {
    let yaml = |with_old: bool| {
        let old = if with_old { "  old:\n    command: sh -c 'echo from-old; sleep 600'\n" } else { "" };
        format!("name: logs\nservices:\n  new:\n    command: sh -c 'echo from-new; sleep 600'\n{old}")
    };
    let stack = Stack::new("newcomer-logs", &yaml(true));
    stack.up();
    wait_until("both logged", Duration::from_secs(10), || {
        stack.log("old", "old-1").contains("from-old") && stack.log("new", "new-1").contains("from-new")
    });
    stack.dir.write("tug.yaml", &yaml(false));
    let deploy = stack.tug(&["deploy", "--timeout", "30s"]);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    let logs = stack.tug(&["logs"]);
    assert!(logs.stdout.contains("from-new") && !logs.stdout.contains("from-old"), "{}", logs.all());
    let all = stack.tug(&["logs", "--all"]);
    assert!(all.stdout.contains("from-new") && all.stdout.contains("from-old"), "{}", all.all());
    // `-f` with a name the stack does not have: at once, as without `-f`.
    let started = Instant::now();
    let follow = stack.tug(&["logs", "-f", "nope"]);
    assert_eq!(follow.code, 1, "{}", follow.all());
    assert!(
        follow.stderr.contains("no logs for nope") && follow.stderr.contains("the stack's services: new"),
        "{}",
        follow.all()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn scale_and_rollout_undo_wait_until_done() {
    let port = free_port();
    let yaml = |version: &str| {
        format!(
            r#"
name: waits
services:
  web:
    command: "{{demo}} --port $PORT"
    port: {port}
    environment: {{ DEMO_READY_AFTER: 600ms, VERSION: "{version}" }}
    healthcheck: {{ http: /health, interval: 100ms, start_interval: 100ms, start_period: 5s }}
    deploy: {{ strategy: rolling }}
"#
        )
    };
    let stack = Stack::new("newcomer-waits", &yaml("1"));
    stack.up();
    let run = stack.tug(&["scale", "web=3"]);
    assert_eq!(run.code, 0, "{}", run.all());
    // Returned only once every new instance is ready.
    let rows = stack.ps();
    let web: Vec<_> = rows.iter().filter(|r| r["service"] == "web").collect();
    assert_eq!(web.len(), 3, "{rows:#?}");
    assert!(web.iter().all(|r| r["state"] == "healthy"), "{rows:#?}");
    let run = stack.tug(&["scale", "web=1"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(stack.ps().iter().filter(|r| r["service"] == "web").count(), 1);
    // `rollout undo` returns when the undo's rollout is complete.
    stack.dir.write("tug.yaml", &yaml("2").replace("{demo}", &crate::harness::demo_bin().display().to_string()));
    assert_eq!(stack.tug(&["deploy", "--timeout", "60s"]).code, 0);
    let undo = stack.tug(&["rollout", "undo", "web"]);
    assert_eq!(undo.code, 0, "{}", undo.all());
    let status = stack.tug(&["rollout", "status", "web", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["phase"], "complete", "{status:#}");
    assert!(stack.ps().iter().filter(|r| r["service"] == "web").all(|r| r["state"] == "healthy"));
    // `--detach` returns once accepted.
    assert_eq!(stack.tug(&["scale", "--detach", "web=2"]).code, 0);
}

#[test]
fn a_deploy_that_times_out_says_what_it_was_waiting_for() {
    let port = free_port();
    let yaml = |message: &str| {
        format!(
            r#"
name: timeout
services:
  web:
    command: "{{demo}} --port $PORT"
    port: {port}
    environment: {{ DEMO_MESSAGE: {message} }}
    healthcheck: {{ http: /health, start_interval: 100ms }}
    deploy: {{ strategy: canary, steps: [50, 100], step_duration: 1s, analysis: {{ min_requests: 20 }} }}
"#
        )
    };
    let stack = Stack::new("newcomer-timeout", &yaml("one"));
    stack.up();
    stack.dir.write("tug.yaml", &yaml("two").replace("{demo}", &crate::harness::demo_bin().display().to_string()));
    // No traffic: the canary's analysis waits for requests, and the deploy's wait ends first.
    let run = stack.tug(&["deploy", "--timeout", "3s"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("not up after 3s: web: canary"), "{}", run.all());
    assert!(run.stderr.contains("canary requests analysis needs"), "{}", run.all());
    assert!(run.stderr.contains("not changed: web (still rolling out"), "{}", run.all());
}

#[test]
fn env_file_values_are_shown_unless_they_look_secret() {
    let stack = Stack::new(
        "newcomer-envfile",
        "name: envfile\nservices:\n  api:\n    command: [sleep, '60']\n    env_file: app.env\n",
    );
    stack.dir.write(
        "app.env",
        "LOG_LEVEL=debug\nDB_PASSWORD=hunter2-password\nDATABASE_URL=postgres://app:pw-in-url@db/app\nKEYBOARD=us\n",
    );
    let config = stack.tug(&["config"]);
    assert_eq!(config.code, 0, "{}", config.all());
    for shown in ["LOG_LEVEL: debug", "KEYBOARD: us", "DB_PASSWORD: \"********\"", "DATABASE_URL: \"********\""] {
        assert!(config.stdout.contains(shown), "{shown}:\n{}", config.stdout);
    }
    assert!(!config.stdout.contains("hunter2") && !config.stdout.contains("pw-in-url"), "{}", config.stdout);
}

#[test]
fn a_settings_cycle_is_reported_once() {
    let stack = Stack::new(
        "newcomer-cycle",
        "name: cycle\nsettings:\n  A: { type: string, value: \"x${B}\" }\n  B: { type: string, value: \"y${A}\" }\n\
         services:\n  api:\n    command: [sleep, '1']\n    environment: { X: \"${A}\" }\n",
    );
    let check = stack.tug(&["check"]);
    assert_eq!(check.code, 1, "{}", check.all());
    assert!(check.stdout.contains("in a cycle: A → B → A"), "{}", check.stdout);
    assert!(check.stdout.contains("✗ invalid: 1 error,"), "{}", check.stdout);
    assert!(!check.stdout.contains("is a secret"), "{}", check.stdout);
}

#[test]
fn a_foreground_up_ends_when_its_daemon_dies_so_systemd_can_bring_the_stack_back() {
    let port = free_port();
    let yaml = format!(
        r#"
name: boot
services:
  web:
    command: "{{demo}} --port $PORT"
    port: {port}
    healthcheck: {{ http: /health, start_interval: 100ms }}
    restart: always
"#
    );
    let stack = Stack::new("newcomer-boot", &yaml);
    let mut up = Command::new(env!("CARGO_BIN_EXE_tug"))
        .arg("up")
        .current_dir(stack.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TUG_PORT_RANGE", format!("{}-{}", stack.range.0, stack.range.1))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    stack.wait_state("web-1", "healthy", Duration::from_secs(30));
    let daemon = stack.daemon_pid().unwrap();
    // SAFETY: the daemon this test's stack started.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    let mut code = None;
    wait_until("the foreground up to exit", Duration::from_secs(15), || {
        code = up.try_wait().unwrap();
        code.is_some()
    });
    let mut said = String::new();
    std::io::Read::read_to_string(up.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert_eq!(code.unwrap().code(), Some(1), "{said}");
    assert!(said.contains("the stack's daemon is gone") && said.contains("Run `tug up` again"), "{said}");
    // What systemd's Restart=always then does: the stack is back.
    stack.up();
    assert_eq!(stack.instance("web-1").unwrap()["state"], "healthy");
    // The documented unit is one systemd accepts.
    let unit = std::fs::read_to_string(crate::repo_dir().join("examples/systemd/tug-stack.service")).unwrap();
    let unit = unit
        .replace("/usr/local/bin/tug", env!("CARGO_BIN_EXE_tug"))
        .replace("/srv/shop", &stack.path().display().to_string());
    let file = stack.dir.write("tug-boot.service", &unit);
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

#[test]
fn the_daemons_own_log_is_json_lines_that_tug_logs_daemon_reads() {
    let port = free_port();
    let yaml = |message: &str| {
        format!(
            "name: daemonlog\nservices:\n  web:\n    command: \"{{demo}} --port $PORT\"\n    port: {port}\n    \
             environment: {{ DEMO_MESSAGE: {message} }}\n    healthcheck: {{ http: /health, start_interval: 100ms }}\n"
        )
    };
    let stack = Stack::new("newcomer-daemonlog", &yaml("one"));
    stack.up();
    stack.dir.write("tug.yaml", &yaml("two").replace("{demo}", &crate::harness::demo_bin().display().to_string()));
    assert_eq!(stack.tug(&["deploy", "--timeout", "60s"]).code, 0);
    let raw = std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap();
    let events: Vec<serde_json::Value> =
        raw.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(!events.is_empty());
    for event in &events {
        assert!(event["ts"].is_string() && event["level"].is_string() && event["msg"].is_string(), "{event}");
    }
    assert!(events.iter().any(|e| e["service"] == "web"), "no event names the service:\n{raw}");
    let json = stack.tug(&["logs", "--daemon", "--json"]);
    assert_eq!(json.code, 0, "{}", json.all());
    // The daemon may log more meanwhile (the old revision's end): at least what was read.
    assert!(json.stdout.lines().count() >= events.len(), "{}", json.stdout);
    for line in json.stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let text = stack.tug(&["logs", "--daemon", "--tail", "1"]);
    assert_eq!(text.stdout.lines().count(), 1, "{}", text.stdout);
    let all = stack.tug(&["logs", "--daemon"]);
    assert!(all.stdout.lines().any(|l| l.contains(" info  web ")), "{}", all.stdout);
}
