//! `tug deploy --plan` / `tug up --plan`: what would change, service by service, and why,
//! without acting; `deploy` announces and executes exactly that plan.

use serde_json::Value;

use crate::harness::{Stack, free_port};

fn stack_yaml(port: u16, message: &str, migrate: &str) -> String {
    format!(
        r#"
name: plan
settings:
  TOKEN: {{ type: secret }}
services:
  web:
    command: "{{demo}}"
    port: {port}
    secrets: [TOKEN]
    environment: {{ DEMO_MESSAGE: {message} }}
    healthcheck: {{ http: /health, start_interval: 100ms }}
    deploy: {{ strategy: blue_green, auto_promote: true, scale_down_delay: 0s }}
  migrate:
    kind: job
    command: {migrate}
  worker:
    command: sleep 600
    depends_on: {{ migrate: completed_successfully }}
"#
    )
}

fn rewrite(stack: &Stack, yaml: &str) {
    let text = yaml.replace("{demo}", &crate::harness::demo_bin().display().to_string());
    stack.dir.write("tug.yaml", &text);
}

fn plan_json(stack: &Stack) -> Value {
    let run = stack.tug(&["deploy", "--plan", "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    serde_json::from_str(&run.stdout).expect("the plan is JSON")
}

fn action(plan: &Value, service: &str) -> String {
    let row = plan["services"].as_array().unwrap().iter().find(|s| s["name"] == service);
    row.unwrap_or_else(|| panic!("{service}: {plan:#}"))["action"].as_str().unwrap().to_string()
}

/// Every instance's (name, pid, revision), to show that a plan changed nothing.
fn fingerprint(stack: &Stack) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = stack
        .ps()
        .iter()
        .map(|r| (r["instance"].to_string(), r["pid"].to_string(), r["revision"].to_string()))
        .collect();
    rows.sort();
    rows
}

#[test]
fn deploy_plan_names_every_change_and_acts_on_nothing() {
    let port = free_port();
    let secret = "first-secret-value-0123456789";
    let stack = Stack::new("plan", &stack_yaml(port, "one", "\"true\""));
    let set = |value: &str| {
        let run = crate::tug(stack.path(), &["secrets", "set", "TOKEN"], &[], Some(value));
        assert_eq!(run.code, 0, "{}", run.all());
    };
    set(secret);
    // Nothing runs: everything would start, and asking starts no daemon.
    let run = stack.tug(&["up", "--plan"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("against nothing running"), "{}", run.stdout);
    assert!(run.stdout.contains("  web      start\n") && run.stdout.contains("  migrate  run\n"), "{}", run.stdout);
    assert!(stack.daemon_pid().is_none(), "up --plan started a daemon");
    stack.up();
    let before = fingerprint(&stack);
    let run = stack.tug(&["deploy", "--plan"]);
    assert!(run.stdout.contains("nothing changes (3 unchanged)"), "{}", run.stdout);
    assert!(
        run.stdout.contains("migrate  unchanged (its revision did not change: it does not run again)"),
        "{}",
        run.stdout
    );

    // A setting, a secret and a job's command change: the plan says which, and the strategy.
    rewrite(&stack, &stack_yaml(port, "two", "\"true --again\""));
    let second = "second-secret-value-0123456789";
    set(second);
    let run = stack.tug(&["deploy", "--plan"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let text = &run.stdout;
    assert!(text.contains("  web      roll out (blue_green)  "), "{text}");
    assert!(text.contains("environment.DEMO_MESSAGE: one → two"), "{text}");
    assert!(text.contains("environment.TOKEN: ******** → ********"), "{text}");
    assert!(text.contains("  migrate  run again  ") && text.contains("command: true → true --again"), "{text}");
    assert!(text.contains("  worker   unchanged"), "{text}");
    assert!(text.contains("2 to change: web (roll out (blue_green)), migrate (run again); 1 unchanged"), "{text}");
    for value in [secret, second] {
        assert!(!run.all().contains(value), "a secret in the plan:\n{}", run.all());
    }
    let plan = plan_json(&stack);
    assert_eq!((action(&plan, "web").as_str(), action(&plan, "migrate").as_str()), ("roll_out", "replace"));
    // Asking acted on nothing.
    assert_eq!(fingerprint(&stack), before);

    // `deploy` announces that plan and executes exactly it: worker keeps its pid.
    let run = stack.tug(&["deploy", "--timeout", "60s"]);
    assert_eq!(run.code, 0, "{}", run.all());
    // The announced plan names what changes; `worker` is not in it.
    assert!(run.stderr.contains("environment.DEMO_MESSAGE: one → two"), "{}", run.all());
    assert!(!run.stderr.contains("  worker   "), "{}", run.all());
    let worker = |rows: &[(String, String, String)]| rows.iter().find(|r| r.0.contains("worker-1")).cloned();
    assert_eq!(worker(&fingerprint(&stack)), worker(&before));
    let run = stack.tug(&["deploy", "--plan"]);
    assert!(run.stdout.contains("nothing changes (3 unchanged)"), "{}", run.stdout);
    // A deploy with nothing changed runs no job again: the job's run is the same one.
    let job_run = |stack: &Stack| {
        let row = stack.instance("migrate-1").or_else(|| stack.ps().into_iter().find(|r| r["service"] == "migrate"));
        row.map(|r| (r["instance"].to_string(), r["started_at"].to_string()))
    };
    let before = job_run(&stack);
    let run = stack.tug(&["deploy"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("no service changed"), "{}", run.all());
    assert_eq!(job_run(&stack), before);
}

#[test]
fn a_plan_for_a_removed_service_and_an_unknown_target() {
    let port = free_port();
    let stack = Stack::new("plan-remove", &stack_yaml(port, "one", "\"true\""));
    crate::tug(stack.path(), &["secrets", "set", "TOKEN"], &[], Some("a-secret-value-0123456789"));
    stack.up();
    let text = std::fs::read_to_string(stack.path().join("tug.yaml")).unwrap();
    let without_worker = text[..text.find("  worker:").unwrap()].to_string();
    stack.dir.write("tug.yaml", &without_worker);
    let plan = plan_json(&stack);
    assert_eq!(action(&plan, "worker"), "remove");
    let run = stack.tug(&["deploy", "--plan", "nope"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("no service or job named `nope`"), "{}", run.all());
}
