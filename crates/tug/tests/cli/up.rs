//! `tug up` and the daemon: start order, conditions, probes, jobs, ps.

use std::time::Duration;

use crate::harness::Stack;

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
