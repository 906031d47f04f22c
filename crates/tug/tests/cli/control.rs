//! Controlling a running stack: start, stop, restart, scale, and `up` again after edits.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Stack, alive, wait_gone};
use crate::up::pid;

const LIMIT: Duration = Duration::from_secs(30);

/// instance -> pid of every row that has one.
fn pids(stack: &Stack) -> Vec<(String, i32)> {
    let mut rows: Vec<(String, i32)> = stack
        .ps()
        .iter()
        .filter(|r| !r["pid"].is_null())
        .map(|r| (r["instance"].as_str().unwrap().to_string(), pid(r)))
        .collect();
    rows.sort();
    rows
}

fn instances(stack: &Stack) -> Vec<String> {
    let mut names: Vec<String> = stack.ps().iter().map(|r| r["instance"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

fn healthy_with_new_pid(stack: &Stack, name: &str, old: i32) -> Value {
    stack.wait_for(name, LIMIT, |r| r["state"] == "healthy" && r["pid"].as_i64().is_some_and(|p| p as i32 != old))
}

const WEB: &str = r#"
services:
  web:
    command: "{demo}"
    replicas: 2
    healthcheck: { http: /health, start_interval: 50ms }
"#;

#[test]
fn restart_stop_and_start_a_service_or_one_instance() {
    let stack = Stack::new("control-lifecycle", WEB);
    stack.up();
    let web1 = pid(&stack.instance("web-1").unwrap());
    let web2 = pid(&stack.instance("web-2").unwrap());

    // One instance.
    let run = stack.tug(&["restart", "web-1"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout, "restarting web-1\n");
    let row = healthy_with_new_pid(&stack, "web-1", web1);
    assert_eq!(row["restarts"], 1, "{row:#?}");
    assert!(wait_gone(web1, LIMIT), "the old process is gone");
    let web1 = pid(&row);
    let other = stack.instance("web-2").unwrap();
    assert_eq!((pid(&other), &other["restarts"]), (web2, &Value::from(0)), "web-2 is untouched");

    let run = stack.tug(&["stop", "web-2"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout, "stopped web-2\n");
    let row = stack.instance("web-2").unwrap();
    assert_eq!(row["state"], "stopped", "stop waits until it is stopped: {row:#?}");
    assert!(row["pid"].is_null(), "{row:#?}");
    assert!(!crate::harness::alive(web2));
    assert_eq!(stack.instance("web-1").unwrap()["state"], "healthy");
    assert!(stack.log("web", "web-2").contains("tug-demo web-2 stopping"), "stopped with its stop signal");

    let run = stack.tug(&["start", "web-2"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let row = healthy_with_new_pid(&stack, "web-2", web2);
    let web2 = pid(&row);
    assert_eq!(pid(&stack.instance("web-1").unwrap()), web1, "web-1 is untouched");

    // The whole service.
    let run = stack.tug(&["restart", "web"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout, "restarting web-1, web-2\n");
    let row1 = healthy_with_new_pid(&stack, "web-1", web1);
    let row2 = healthy_with_new_pid(&stack, "web-2", web2);
    assert_eq!((&row1["restarts"], &row2["restarts"]), (&Value::from(2), &Value::from(1)));

    let run = stack.tug(&["stop", "web"]);
    assert_eq!(run.code, 0, "{}", run.all());
    for row in stack.ps() {
        assert_eq!(row["state"], "stopped", "{row:#?}");
        assert!(row["pid"].is_null(), "{row:#?}");
    }
    let run = stack.tug(&["start", "web"]);
    assert_eq!(run.code, 0, "{}", run.all());
    for name in ["web-1", "web-2"] {
        let row = stack.wait_state(name, "healthy", LIMIT);
        assert!(alive(pid(&row)));
    }

    // Unknown names.
    for action in ["start", "stop", "restart"] {
        let run = stack.tug(&[action, "nope"]);
        assert_eq!(run.code, 1, "{action}: {}", run.all());
        assert!(run.stderr.contains("no service, job or instance named `nope`"), "{action}: {}", run.all());
    }
}

#[test]
fn scale_adds_instances_and_removes_the_newest_first() {
    let stack = Stack::new(
        "control-scale",
        r#"
services:
  web:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
"#,
    );
    stack.up();
    let web1 = pid(&stack.instance("web-1").unwrap());
    let run = stack.tug(&["scale", "web=3"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout, "scaled web to 3\n");
    let web2 = pid(&stack.wait_state("web-2", "healthy", LIMIT));
    let web3 = pid(&stack.wait_state("web-3", "healthy", LIMIT));
    let ports: Vec<u64> = stack.ps().iter().map(|r| r["port"].as_u64().unwrap()).collect();
    assert_eq!(ports.len(), 3);
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2], "{ports:?}");

    let run = stack.tug(&["scale", "web=1"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(instances(&stack), ["web-1"], "scale waits until the removed instances are gone");
    assert!(!alive(web2) && !alive(web3));
    let row = stack.instance("web-1").unwrap();
    assert_eq!((pid(&row), &row["state"]), (web1, &Value::from("healthy")), "web-1 keeps running");

    // Numbers are reused from the lowest free one.
    let run = stack.tug(&["scale", "web=2"]);
    assert_eq!(run.code, 0, "{}", run.all());
    stack.wait_state("web-2", "healthy", LIMIT);
    assert_eq!(instances(&stack), ["web-1", "web-2"]);

    let run = stack.tug(&["scale", "nope=2"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("no service or job named `nope`"), "{}", run.all());
    let run = stack.tug(&["scale", "web"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("write SERVICE=N"), "{}", run.all());
    let run = stack.tug(&["scale", "web=-1"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("is not a number of replicas"), "{}", run.all());
    assert_eq!(instances(&stack), ["web-1", "web-2"]);

    // `up` goes back to the file's count (1), keeping web-1.
    stack.up();
    let deadline = std::time::Instant::now() + LIMIT;
    while instances(&stack) != ["web-1"] {
        assert!(std::time::Instant::now() < deadline, "{:#?}", stack.ps());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pid(&stack.instance("web-1").unwrap()), web1);
    // And up from below it.
    let two = Stack::new("control-scale-up", WEB);
    two.up();
    let run = two.tug(&["scale", "web=1"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(instances(&two), ["web-1"]);
    two.up();
    assert_eq!(instances(&two), ["web-1", "web-2"]);
}

#[test]
fn up_again_changes_only_what_changed_in_the_file() {
    let file = |greeting: &str, with_worker: bool| {
        let worker = if with_worker { "  worker:\n    command: \"{demo}\"\n" } else { "" };
        format!(
            r#"
services:
  db:
    command: "{{demo}}"
    healthcheck: {{ http: /health, start_interval: 50ms }}
  api:
    command: "{{demo}}"
    replicas: 2
    environment: {{ GREETING: {greeting} }}
    healthcheck: {{ http: /health, start_interval: 50ms }}
    depends_on: {{ db: healthy }}
{worker}"#
        )
    };
    let stack = Stack::new("control-reup", &file("hello", true));
    let demo = crate::harness::demo_bin().display().to_string();
    let write = |text: String| stack.dir.write("tug.yaml", &text.replace("{demo}", &demo));
    stack.up();
    let before = pids(&stack);
    assert_eq!(before.len(), 4, "{before:?}");
    let revisions = |stack: &Stack| -> Vec<String> {
        stack.ps().iter().map(|r| format!("{}={}", r["instance"], r["revision"].as_str().unwrap())).collect()
    };
    let revisions_before = revisions(&stack);

    stack.up();
    assert_eq!(pids(&stack), before, "nothing changed, so nothing restarted");
    assert_eq!(revisions(&stack), revisions_before);

    // One service's environment changes: only its instances are replaced (rolled out: the new
    // ones take the next free replica numbers, as documented).
    write(file("bonjour", true));
    stack.up();
    let after = pids(&stack);
    let pid_of = |rows: &[(String, i32)], name: &str| rows.iter().find(|(n, _)| n == name).map(|(_, p)| *p);
    assert_eq!(pid_of(&after, "db-1"), pid_of(&before, "db-1"), "{before:?} {after:?}");
    assert_eq!(pid_of(&after, "worker-1"), pid_of(&before, "worker-1"), "{before:?} {after:?}");
    let api: Vec<Value> = stack.ps().into_iter().filter(|r| r["service"] == "api").collect();
    assert_eq!(api.len(), 2, "{api:#?}");
    for (name, old) in before.iter().filter(|(n, _)| n.starts_with("api-")) {
        assert!(!alive(*old), "{name}'s old process is gone");
        assert!(api.iter().all(|r| pid(r) != *old), "{name} was replaced: {before:?} {after:?}");
    }
    for row in &api {
        assert_eq!(row["state"], "healthy", "{row:#?}");
        let environ = std::fs::read(format!("/proc/{}/environ", pid(row))).unwrap();
        assert!(environ.split(|b| *b == 0).any(|e| e == b"GREETING=bonjour"), "{row:#?} has the new environment");
    }
    assert_eq!(instances(&stack).len(), 4, "{:#?}", stack.ps());

    // A service removed from the file is stopped.
    let worker = pid_of(&after, "worker-1").unwrap();
    write(file("bonjour", false));
    stack.up();
    assert!(wait_gone(worker, LIMIT), "the removed service's process is gone");
    let deadline = std::time::Instant::now() + LIMIT;
    while instances(&stack).contains(&"worker-1".to_string()) {
        assert!(std::time::Instant::now() < deadline, "worker-1 is still listed: {:#?}", stack.ps());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pids(&stack), after.into_iter().filter(|(n, _)| n != "worker-1").collect::<Vec<_>>());
}

#[test]
fn up_with_a_service_starts_only_it_and_its_dependencies() {
    let stack = Stack::new(
        "control-up-one",
        r#"
services:
  db:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
  cache:
    command: "{demo}"
  api:
    command: "{demo}"
    depends_on: { db: healthy }
  worker:
    command: "{demo}"
    depends_on: [cache]
"#,
    );
    let run = stack.tug(&["up", "-d", "api", "--timeout", "60s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(instances(&stack), ["api-1", "db-1"]);
    assert_eq!(stack.instance("db-1").unwrap()["state"], "healthy");
    assert_eq!(stack.instance("api-1").unwrap()["state"], "running");
    let running = pids(&stack);

    // The rest comes with a plain `up`, leaving what runs alone.
    stack.up();
    assert_eq!(instances(&stack), ["api-1", "cache-1", "db-1", "worker-1"]);
    let now = pids(&stack);
    for (name, pid) in &running {
        assert!(now.contains(&(name.clone(), *pid)), "{name} kept running: {running:?} {now:?}");
    }

    let run = stack.tug(&["up", "-d", "nope"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("no service or job named `nope`"), "{}", run.all());
}

#[test]
fn up_replaces_a_fixed_port_service_in_place_and_leaves_services_it_does_not_start() {
    let port = crate::harness::free_port();
    let file = |greeting: &str| {
        format!(
            r#"
services:
  fixed:
    command: "{{demo}}"
    port: {port}
    proxy: false
    environment: {{ GREETING: {greeting} }}
    healthcheck: {{ http: /health, start_interval: 50ms }}
  worker:
    command: "{{demo}}"
    environment: {{ GREETING: {greeting} }}
"#
        )
    };
    let stack = Stack::new("control-fixed", &file("hello"));
    let demo = crate::harness::demo_bin().display().to_string();
    let write = |text: String| stack.dir.write("tug.yaml", &text.replace("{demo}", &demo));
    stack.up();
    let before = pids(&stack);
    assert_eq!(stack.instance("fixed-1").unwrap()["port"], port);

    // Both change; `up fixed` replaces only `fixed`, as `fixed-1` again, on its port, at the first try.
    write(file("bonjour"));
    let run = stack.tug(&["up", "-d", "fixed", "--timeout", "60s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let row = stack.instance("fixed-1").unwrap_or_else(|| panic!("{:#?}", stack.ps()));
    assert_eq!((&row["state"], &row["restarts"], &row["port"]), (&"healthy".into(), &0.into(), &port.into()));
    assert_ne!(Some(pid(&row)), before.iter().find(|(n, _)| n == "fixed-1").map(|(_, p)| *p));
    assert_eq!(instances(&stack), ["fixed-1", "worker-1"]);
    let worker = stack.instance("worker-1").unwrap();
    assert_eq!(worker["state"], "running", "a service `up` did not name keeps running: {worker:#?}");
    assert_eq!(Some(pid(&worker)), before.iter().find(|(n, _)| n == "worker-1").map(|(_, p)| *p));

    // The next plain `up` replaces it (rolled out: the new instance is `worker-2`).
    stack.up();
    let workers: Vec<Value> = stack.ps().into_iter().filter(|r| r["service"] == "worker").collect();
    assert_eq!(workers.len(), 1, "{workers:#?}");
    let worker = &workers[0];
    let environ = std::fs::read(format!("/proc/{}/environ", pid(worker))).unwrap();
    assert!(environ.split(|b| *b == 0).any(|e| e == b"GREETING=bonjour"));
}

#[test]
fn a_stopped_service_restarted_by_name_counts_as_running_for_its_dependents() {
    let stack = Stack::new(
        "control-stop-restart",
        r#"
services:
  db:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
  api:
    command: "{demo}"
    depends_on: { db: healthy }
"#,
    );
    stack.up();
    for (stop, again) in [("db", ["restart", "db"]), ("db", ["start", "db-1"]), ("db-1", ["restart", "db-1"])] {
        assert_eq!(stack.tug(&["stop", stop]).code, 0);
        assert_eq!(stack.instance("db-1").unwrap()["state"], "stopped");
        let run = stack.tug(&again);
        assert_eq!(run.code, 0, "{}", run.all());
        stack.wait_state("db-1", "healthy", LIMIT);
        let api = pid(&stack.instance("api-1").unwrap());
        assert_eq!(stack.tug(&["restart", "api"]).code, 0);
        let row = stack.wait_for("api-1", LIMIT, |r| r["pid"].as_i64().is_some_and(|p| p as i32 != api));
        assert_eq!(row["state"], "running", "after `stop {stop}` and `{}`: {row:#?}", again.join(" "));
    }
}
