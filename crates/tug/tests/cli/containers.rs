//! Services from images, on the machine's real Docker Engine: a stack mixing containers and
//! processes in dependency order (each reaching the other through `<DEP>_ADDR`, on the host's
//! network and through a network of the container's own), a canary of a rebuilt image under
//! load and the automatic rollback of a bad one, no container left after the daemon's SIGKILL,
//! volumes kept by `down` and removed by `down --volumes`, secrets as variables and as files
//! that no output shows, a process's `source` copied per revision, and the errors a user meets
//! (a missing image, an unreachable engine, a failed build) before anything starts; and a
//! remote `tug --host` from a machine with no engine, whose images and volumes the daemon
//! resolves on its own.

use std::time::{Duration, Instant};

use crate::harness::{Stack, free_port, wait_until};
use crate::images::{self, Tags, demo_image, docker, redis_image, stack_containers, stack_volumes, web_image};
use crate::rollout::{Load, deploy, history, set, versions, wait_versions, web_revision, web_rows};
use crate::routing::{field_of, http_once};

/// A tag no other test of this run uses.
fn unique_tag(label: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("tug-test-{label}-{}-{}:dev", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn up_failing(stack: &Stack) -> crate::Run {
    let run = stack.tug(&["up", "-d", "--timeout", "60s"]);
    assert_ne!(run.code, 0, "tug up -d should have failed:\n{}", run.all());
    run
}

#[test]
fn containers_and_processes_start_in_dependency_order_and_find_each_other() {
    let (cache, api, bridged) = (free_port(), free_port(), free_port());
    let yaml = format!(
        r#"
name: mixed
services:
  cache:
    image: {redis}
    command: [redis-server, --port, "${{PORT}}", --bind, "${{HOST}}", --save, "", --appendonly, "no"]
    port: {cache}
    protocol: tcp
    init: true
    healthcheck: {{ exec: "redis-cli -h $$HOST -p $$PORT ping", start_interval: 100ms }}
  seed:
    kind: job
    command: sh -c 'a=$$CACHE_ADDR; redis-cli -h $${{a%:*}} -p $${{a##*:}} set greeting hello-from-a-process'
    depends_on: {{ cache: healthy }}
  api:
    command: "{{demo}}"
    port: {api}
    environment: {{ DEMO_MESSAGE: from-a-process }}
    healthcheck: {{ http: /health, start_interval: 100ms }}
    depends_on: {{ seed: completed_successfully }}
  fetch:
    kind: job
    image: {redis}
    command: [sh, -c, "wget -qO- http://$$API_ADDR/; a=$$CACHE_ADDR; redis-cli -h $${{a%:*}} -p $${{a##*:}} get greeting"]
    depends_on: {{ api: healthy, cache: healthy }}
  bridged:
    image: {demo}
    port: {bridged}
    container_port: 8080
    stop_grace_period: 2s
    environment: {{ DEMO_MESSAGE: own-network }}
    healthcheck: {{ exec: "wget -qO- http://$$API_ADDR/health", start_interval: 100ms }}
    depends_on: {{ api: healthy }}
"#,
        redis = redis_image(),
        demo = demo_image(),
    );
    let stack = Stack::new("containers-mixed", &yaml);
    stack.up();
    let rows = stack.ps();
    let at = |name: &str, field: &str| -> String {
        let row = rows.iter().find(|r| r["instance"] == name).unwrap_or_else(|| panic!("{name}: {rows:#?}"));
        row[field].as_str().unwrap_or_default().to_string()
    };
    // Dependency order: each started after what it waits for was ready (or done).
    assert!(at("cache-1", "ready_at") <= at("seed-1", "started_at"), "{rows:#?}");
    assert!(at("seed-1", "finished_at") <= at("api-1", "started_at"), "{rows:#?}");
    assert!(at("api-1", "ready_at") <= at("fetch-1", "started_at"), "{rows:#?}");
    assert!(at("api-1", "ready_at") <= at("bridged-1", "started_at"), "{rows:#?}");
    assert_eq!(at("fetch-1", "state"), "completed", "{rows:#?}");
    // The container read what the process wrote into the containerized Redis, and the process's
    // answer, each through `<DEP>_ADDR`.
    let fetched = stack.log("fetch", "fetch-1");
    assert!(fetched.contains("hello-from-a-process"), "{fetched}");
    assert!(fetched.contains("from-a-process"), "{fetched}");
    // The container with a network of its own answers on its published port, behind the router,
    // and its healthcheck reached the process from inside it.
    let (status, body) = http_once("127.0.0.1", bridged, "GET", "/").expect("an answer");
    assert_eq!((status, field_of(&body, "message").as_str()), (200, "own-network"), "{body}");
    let (status, body) = http_once("127.0.0.1", api, "GET", "/").expect("an answer");
    assert_eq!((status, field_of(&body, "message").as_str()), (200, "from-a-process"), "{body}");
    // Containers carry their labels; `down` leaves none.
    let containers = stack_containers(&stack.state_dir());
    assert_eq!(containers.len(), 2, "cache and bridged run: {containers:?}");
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &containers[0]]);
    for label in ["tug.project", "tug.service", "tug.instance", "tug.revision", "tug.state_dir"] {
        assert!(labels.contains(label), "{labels}");
    }
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(stack_containers(&stack.state_dir()).is_empty(), "down leaves no container");
}

fn web_stack(name: &str, tag: &str, port: u16) -> String {
    format!(
        r#"
name: {name}
services:
  web:
    image: {tag}
    pull: never
    replicas: 3
    port: {port}
    stop_grace_period: 2s
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
    deploy: {{ strategy: canary, steps: [34, 67, 100], step_duration: 1s, analysis: {{ max_error_rate: 5%, min_requests: 20 }} }}
"#
    )
}

#[test]
fn a_rebuilt_image_is_a_canary_under_load_and_a_bad_one_is_rolled_back() {
    let tag = unique_tag("web");
    let mut tags = Tags(vec![tag.clone()]);
    let port = free_port();
    tags.0.push(web_image(&tag, "1", ""));
    let stack = Stack::new("containers-canary", &web_stack("canary", &tag, port));
    stack.up();
    let v1 = web_revision(&stack);
    // The same tag, rebuilt: a new image id, so a new revision; the stack file did not change.
    let v2_image = web_image(&tag, "2", "");
    tags.0.push(v2_image.clone());
    let load = Load::start(port, 4, 40);
    let run = deploy(&stack);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(run.code, 0, "{}", run.all());
    report.assert_clean("a canary of a rebuilt image", 100);
    wait_versions(port, &["2"]);
    let v2 = web_revision(&stack);
    assert_ne!(v1, v2);
    // A bad build of the same tag: the canary fails its analysis and goes back, by itself.
    tags.0.push(web_image(&tag, "3", "ENV DEMO_FAIL_RATE=30%\n"));
    let load = Load::start(port, 4, 40);
    let run = deploy(&stack);
    let done = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert_eq!(run.code, 1, "a rolled back deploy fails:\n{}", run.all());
    assert!(run.stderr.contains("rolled back") && run.stderr.contains("error rate"), "{}", run.all());
    assert!(report.samples.iter().all(|s| s.outcome.is_ok()), "no connection failed: {}", report.summary());
    let after: Vec<_> = report.since(done).collect();
    assert!(after.len() > 20, "{}", report.summary());
    assert!(after.iter().all(|s| matches!(&s.outcome, Ok((200, v)) if v == "2")), "{}", report.summary());
    assert_eq!(versions(port, 50), set(&["2"]));
    assert!(web_rows(&stack).iter().all(|r| r["revision"] == v2.as_str()), "{:#?}", web_rows(&stack));
    // `undo` goes back to the image id v1 ran, though the tag now names the bad build.
    let undo = stack.tug(&["rollout", "undo", "web"]);
    assert_eq!(undo.code, 0, "{}", undo.all());
    wait_versions(port, &["1"]);
    let h = history(&stack);
    assert!(h.iter().any(|e| e["outcome"] == "rolled_back"), "{h:#?}");
    // An `undo` to a revision whose image was removed meanwhile is refused before anything
    // stops, and says which image is missing.
    wait_until("the undo's old set gone", Duration::from_secs(30), || {
        let rows = web_rows(&stack);
        rows.len() == 3 && rows.iter().all(|r| r["revision"] == v1.as_str())
    });
    images::docker(&["rmi", "-f", &v2_image]);
    let undo = stack.tug(&["rollout", "undo", "web"]);
    assert_ne!(undo.code, 0, "{}", undo.all());
    assert!(undo.stderr.contains(&v2) && undo.stderr.contains("no longer on the container engine"), "{}", undo.all());
    assert_eq!(versions(port, 30), set(&["1"]));
    assert_eq!(web_rows(&stack).len(), 3, "{:#?}", web_rows(&stack));
}

#[test]
fn no_container_outlives_a_killed_daemon_and_the_next_up_starts_cleanly() {
    let yaml = format!(
        r#"
name: killed
services:
  sleeper:
    image: {demo}
    command: [sleep, "1000"]
    replicas: 2
    init: true
  web:
    image: {demo}
    port: {port}
    healthcheck: {{ http: /health, start_interval: 100ms }}
"#,
        demo = demo_image(),
        port = free_port(),
    );
    let stack = Stack::new("containers-killed", &yaml);
    stack.up();
    assert_eq!(stack_containers(&stack.state_dir()).len(), 3);
    let daemon = stack.daemon_pid().expect("daemon.pid");
    // SAFETY: kill of the daemon this test started.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack_containers(&stack.state_dir()).is_empty() {
        assert!(Instant::now() < deadline, "containers left: {:?}", stack_containers(&stack.state_dir()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let removed = Instant::now().duration_since(deadline - Duration::from_secs(10));
    eprintln!("no container left {removed:?} after the SIGKILL");
    stack.up();
    let rows = stack.ps();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert!(rows.iter().all(|r| r["state"] == "running" || r["state"] == "healthy"), "{rows:#?}");
    assert_eq!(stack_containers(&stack.state_dir()).len(), 3);
}

#[test]
fn named_volumes_keep_their_data_across_down_and_go_with_down_volumes() {
    let yaml = format!(
        r#"
name: volumes
volumes:
  data: {{}}
services:
  keeper:
    image: {demo}
    command: [sh, -c, "cat /data/runs 2>/dev/null; echo run-$$TUG_REVISION >> /data/runs; echo ready; exec sleep 1000"]
    volumes: [data:/data, "./conf:/conf:ro"]
    init: true
    healthcheck: {{ log: ready, start_interval: 100ms }}
"#,
        demo = demo_image(),
    );
    let stack = Stack::new("containers-volumes", &yaml);
    stack.up();
    assert!(stack.path().join("conf").is_dir(), "a bind-mounted folder inside the stack is created");
    let volumes = stack_volumes(&stack.state_dir());
    assert_eq!(volumes, ["volumes_data"], "the stack's volume, with its labels");
    assert_eq!(stack.tug(&["down"]).code, 0);
    assert!(stack_containers(&stack.state_dir()).is_empty());
    assert_eq!(stack_volumes(&stack.state_dir()), ["volumes_data"], "down keeps volumes");
    stack.up();
    // The second run found what the first wrote.
    let log = stack.log("keeper", "keeper-1");
    assert!(log.matches("run-").count() >= 1, "{log}");
    // A backup holds the volume's files; after `down --volumes` a restore brings them back
    // before the keeper starts again (its third run finds the first two).
    let runs = |stack: &Stack| {
        let run = stack.tug(&["exec", "keeper", "--", "cat", "/data/runs"]);
        assert_eq!(run.code, 0, "{}", run.all());
        run.stdout.lines().count()
    };
    assert_eq!(runs(&stack), 2);
    let archive = stack.path().join("volumes.tug-backup");
    let backup = stack.tug(&["backup", "--out", archive.to_str().unwrap()]);
    assert_eq!(backup.code, 0, "{}", backup.all());
    assert!(backup.stderr.contains("volume:volumes_data"), "{}", backup.all());
    assert_eq!(stack.tug(&["down", "--volumes"]).code, 0);
    assert!(stack_volumes(&stack.state_dir()).is_empty());
    let restore = stack.tug(&["restore", archive.to_str().unwrap()]);
    assert_eq!(restore.code, 0, "{}", restore.all());
    assert!(restore.stderr.contains("restored volume:volumes_data"), "{}", restore.all());
    assert_eq!(runs(&stack), 3, "the restored volume held both earlier runs");
    assert_eq!(stack_containers(&stack.state_dir()).len(), 1, "only the keeper: no helper container was left");
    let down = stack.tug(&["down", "--volumes"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(down.stdout.contains("removed volume volumes_data"), "{}", down.all());
    assert!(stack_volumes(&stack.state_dir()).is_empty());
    assert!(stack_containers(&stack.state_dir()).is_empty());
}

#[test]
fn secrets_reach_a_container_as_variables_and_files_and_no_output_shows_them() {
    let secret = "s3cret-value-for-containers-0123";
    let yaml = format!(
        r#"
name: secretive
settings:
  TOKEN: {{ type: secret }}
services:
  vault:
    image: {demo}
    command: [sh, -c, 'test "$$(cat /run/secrets/TOKEN)" = "$$TOKEN" && echo file-matches-variable; stat -c %a /run/secrets/TOKEN; echo $$TUG_SECRETS_DIR; echo token=$$TOKEN; exec sleep 1000']
    secrets: [TOKEN]
    init: true
    healthcheck: {{ log: file-matches-variable, start_interval: 100ms }}
"#,
        demo = demo_image(),
    );
    let stack = Stack::new("containers-secrets", &yaml);
    let up = stack.tug_with(&["up", "-d", "--timeout", "60s"], &[("TOKEN", secret)]);
    assert_eq!(up.code, 0, "{}", up.all());
    // Ready at its first line; the rest of what it prints follows a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.log("vault", "vault-1").contains("token=") {
        assert!(Instant::now() < deadline, "{}", stack.log("vault", "vault-1"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = stack.log("vault", "vault-1");
    assert!(log.contains("file-matches-variable"), "{log}");
    assert!(log.contains("\n400") || log.contains(" 400"), "the file is 0400: {log}");
    assert!(log.contains("/run/secrets"), "{log}");
    assert!(log.contains("token=********"), "the instance's own output is masked: {log}");
    let containers = stack_containers(&stack.state_dir());
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &containers[0]]);
    let ps = stack.tug(&["ps", "--json"]);
    let logs = stack.tug(&["logs"]);
    let down = stack.tug(&["down"]);
    let mut state = String::new();
    for file in ["daemon.log", "state.json", "rollouts.json"] {
        state.push_str(&std::fs::read_to_string(stack.state_dir().join(file)).unwrap_or_default());
    }
    for (what, text) in [
        ("up", up.all()),
        ("labels", labels),
        ("ps", ps.all()),
        ("logs", logs.all()),
        ("down", down.all()),
        ("state files", state),
        ("instance log", log),
    ] {
        assert!(!text.contains(secret), "{what} shows the secret:\n{text}");
    }
    assert!(stack_containers(&stack.state_dir()).is_empty());
}

#[test]
fn a_process_source_is_copied_per_revision_so_rollback_scale_and_undo_run_old_code() {
    let port = free_port();
    let yaml = format!(
        r#"
name: sourced
services:
  web:
    command: [sh, ./serve.sh]
    working_dir: ./app
    source: ./app
    replicas: 2
    port: {port}
    stop_grace_period: 2s
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
    deploy: {{ strategy: canary, steps: [50, 100], step_duration: 1s, analysis: {{ max_error_rate: 5%, min_requests: 20 }} }}
"#
    );
    let stack = Stack::new("containers-source", &yaml);
    let app = stack.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    let demo = crate::harness::demo_bin().display().to_string();
    let serve = |version: &str, fail: &str| {
        let script = format!("VERSION={version} DEMO_FAIL_RATE={fail} exec {demo}\n");
        std::fs::write(app.join("serve.sh"), script).unwrap();
    };
    serve("1", "0");
    stack.up();
    wait_versions(port, &["1"]);
    // An edited file is a new revision, rolled out by `deploy` (a canary analyses traffic: some
    // is sent).
    serve("2", "0");
    let load = crate::rollout::Load::start(port, 2, 40);
    let run = deploy(&stack);
    load.stop().assert_clean("a canary of edited code", 50);
    assert_eq!(run.code, 0, "{}", run.all());
    wait_versions(port, &["2"]);
    // A bad edit is rolled back; the files on disk still hold it.
    serve("3", "30%");
    let load = crate::rollout::Load::start(port, 2, 40);
    let run = deploy(&stack);
    load.stop();
    assert_eq!(run.code, 1, "{}", run.all());
    wait_versions(port, &["2"]);
    // Scaling runs the revision that serves, from its copy: not the bad files on disk.
    let scale = stack.tug(&["scale", "web=4"]);
    assert_eq!(scale.code, 0, "{}", scale.all());
    let deadline = Instant::now() + Duration::from_secs(30);
    while web_rows(&stack).iter().filter(|r| r["state"] == "healthy").count() < 4 {
        assert!(Instant::now() < deadline, "{:#?}", web_rows(&stack));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(versions(port, 60), set(&["2"]));
    // `undo` goes back to the first revision's code.
    let undo = stack.tug(&["rollout", "undo", "web"]);
    assert_eq!(undo.code, 0, "{}", undo.all());
    wait_versions(port, &["1"]);
    let copies = std::fs::read_dir(stack.state_dir().join("revisions/web")).unwrap().count();
    assert!(copies >= 3, "a copy per revision: {copies}");
}

#[test]
fn a_missing_image_an_unreachable_engine_and_a_failed_build_fail_before_anything_starts() {
    let port = free_port();
    // A process that would start first, were anything started.
    let yaml = format!(
        r#"
name: refused
services:
  first:
    command: [sleep, "1000"]
  web:
    image: tug-test-absent-{pid}:none
    port: {port}
    depends_on: [first]
"#,
        pid = std::process::id()
    );
    let stack = Stack::new("containers-missing", &yaml);
    let run = up_failing(&stack);
    let text = run.all();
    assert!(text.contains("service `web`") && text.contains("tug-test-absent"), "{text}");
    assert!(text.contains("is not on the container engine") && text.contains("build it"), "{text}");
    assert!(stack.daemon_pid().is_none() || stack.ps().is_empty(), "nothing started: {:#?}", stack.ps());

    // `pull: never` says so.
    stack.dir.write("tug.yaml", &yaml.replace("    port:", "    pull: never\n    port:"));
    let text = up_failing(&stack).all();
    assert!(text.contains("pull: never") && text.contains("tug-test-absent"), "{text}");

    // An engine that is not there.
    let gone = format!("engine: unix://{}/no-engine.sock\n{yaml}", stack.path().display());
    stack.dir.write("tug.yaml", &gone);
    let text = up_failing(&stack).all();
    assert!(text.contains("no-engine.sock") && text.contains("service `web`"), "{text}");

    // A build that fails shows why, with the end of its output.
    std::fs::create_dir_all(stack.path().join("ctx")).unwrap();
    stack.dir.write("ctx/Dockerfile", &format!("FROM {}\nRUN echo about-to-fail && false\n", demo_image()));
    let tag = unique_tag("broken");
    let _tags = Tags(vec![tag.clone()]);
    let built = yaml.replace(
        &format!("    image: tug-test-absent-{}:none\n", std::process::id()),
        &format!("    image: {tag}\n    build: ./ctx\n"),
    );
    stack.dir.write("tug.yaml", &built);
    let text = up_failing(&stack).all();
    assert!(text.contains("service `web`") && text.contains("about-to-fail"), "{text}");
    assert!(stack_containers(&stack.state_dir()).is_empty());
    assert!(stack.daemon_pid().is_none() || stack.ps().is_empty(), "nothing started: {:#?}", stack.ps());
}

#[test]
fn build_makes_the_image_and_an_edited_dockerfile_is_rolled_out() {
    let port = free_port();
    let yaml = format!(
        r#"
name: built
services:
  web:
    build: ./web
    port: {port}
    stop_grace_period: 2s
    healthcheck: {{ http: /health, start_interval: 100ms }}
"#
    );
    let stack = Stack::new("containers-build", &yaml);
    let mut tags = Tags(vec!["built-web".into()]);
    std::fs::create_dir_all(stack.path().join("web")).unwrap();
    stack.dir.write("web/Dockerfile", &format!("FROM {}\nENV VERSION=7\n", demo_image()));
    stack.dir.write("web/.dockerignore", "secret.txt\n");
    stack.dir.write("web/secret.txt", "not for the image");
    let up = stack.up();
    assert!(up.stderr.contains("building built-web"), "{}", up.all());
    wait_versions(port, &["7"]);
    let first = images::image_id("built-web");
    tags.0.push(first.clone());
    stack.dir.write("web/Dockerfile", &format!("FROM {}\nENV VERSION=8\n", demo_image()));
    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    wait_versions(port, &["8"]);
    assert_ne!(images::image_id("built-web"), first);
}

#[test]
fn exec_and_run_work_alike_for_containers_and_processes() {
    let secret = "exec-secret-value-0123456789";
    let yaml = format!(
        r#"
name: execs
settings:
  TOKEN: {{ type: secret }}
services:
  box:
    image: {demo}
    command: [sleep, "1000"]
    init: true
    secrets: [TOKEN]
    working_dir: /tmp
  proc:
    command: [sleep, "1000"]
    secrets: [TOKEN]
    environment: {{ GREETING: hello-process }}
"#,
        demo = demo_image(),
    );
    let stack = Stack::new("containers-exec", &yaml);
    let env = [("TOKEN", secret)];
    let up = stack.tug_with(&["up", "-d", "--timeout", "60s"], &env);
    assert_eq!(up.code, 0, "{}", up.all());
    // Inside the container: its folder, its variables, its files; the exit code comes back.
    let run = stack.tug(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "pwd; echo $TUG_INSTANCE; cat /run/secrets/TOKEN; echo; echo oops >&2; exit 7",
    ]);
    assert_eq!(run.code, 7, "{}", run.all());
    assert_eq!(run.stdout, "/tmp\nbox-1\n********\n", "{}", run.all());
    assert_eq!(run.stderr, "oops\n", "{}", run.all());
    // A process's environment and folder, by instance name.
    let run =
        stack.tug(&["exec", "proc-1", "--", "sh", "-c", "echo $GREETING; echo $TOKEN; cat $TUG_SECRETS_DIR/TOKEN"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout, "hello-process\n********\n********", "{}", run.all());
    let run = stack.tug(&["exec", "nobody", "--", "true"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("no service or instance named `nobody`"), "{}", run.all());
    // One-off instances: the service's configuration, their own exit code, nothing left after.
    let before = stack_containers(&stack.state_dir()).len();
    let run = stack.tug_with(&["run", "box", "--", "sh", "-c", "echo $TUG_INSTANCE in $PWD; exit 3"], &env);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.stdout.starts_with("box-run-") && run.stdout.contains("in /tmp"), "{}", run.all());
    assert_eq!(stack_containers(&stack.state_dir()).len(), before, "the one-off container is removed");
    let run = stack.tug_with(&["run", "proc", "--", "sh", "-c", "echo $GREETING"], &env);
    assert_eq!((run.code, run.stdout.as_str()), (0, "hello-process\n"), "{}", run.all());
    assert_eq!(stack.ps().len(), 2, "one-off instances are not the service's: {:#?}", stack.ps());
    assert!(!stack.tug(&["logs"]).all().contains(secret));
}

/// `tug exec` and `tug run` interrupted, and `down` during a `tug run`: nothing they started is
/// left; and a process running as another user reads its secret files.
#[test]
fn interrupted_exec_and_run_leave_nothing_and_another_user_reads_its_secret_files() {
    let yaml = format!(
        r#"
name: interrupted
settings:
  TOKEN: {{ type: secret, generate: {{ length: 24 }} }}
services:
  box:
    image: {demo}
    command: [sleep, "1000"]
    init: true
  proc:
    command: [sleep, "1000"]
    user: nobody
    secrets: [TOKEN]
"#,
        demo = demo_image(),
    );
    let stack = Stack::new("containers-interrupted", &yaml);
    stack.up();
    // The user `nobody` reads its own copy of the secret.
    let run = stack.tug(&["exec", "proc", "--", "sh", "-c", "id -un; wc -c < $TUG_SECRETS_DIR/TOKEN"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "nobody\n24\n"), "{}", run.all());
    // A client that goes away stops the command it ran in a process.
    let marker = "sleep 4242";
    let mut exec = spawn_tug(&stack, &["exec", "proc", "--", "sh", "-c", marker]);
    let started = wait_for_process(marker, true);
    assert!(started, "the exec'd command never ran");
    let _ = exec.kill();
    let _ = exec.wait();
    assert!(wait_for_process(marker, false), "`{marker}` outlived the tug exec that started it");
    // `down` stops a one-off container too, and the `run` that waits for it ends.
    let before = stack_containers(&stack.state_dir()).len();
    let mut run = spawn_tug(&stack, &["run", "box", "--", "sleep", "1000"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack_containers(&stack.state_dir()).len() == before {
        assert!(Instant::now() < deadline, "the one-off container never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(stack_containers(&stack.state_dir()).is_empty(), "{:?}", stack_containers(&stack.state_dir()));
    let status = run.wait().expect("tug run ends");
    assert!(!status.success(), "the stopped one-off's run fails: {status:?}");
}

fn spawn_tug(stack: &Stack, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_tug"))
        .current_dir(stack.path())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TUG_PORT_RANGE", format!("{}-{}", stack.range.0, stack.range.1))
        .envs(crate::engine_host())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tug")
}

/// Waits (up to 10 s) until a process whose command line is `command` exists, or not.
pub(crate) fn wait_for_process(command: &str, present: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim_end().ends_with(command))
                && crate::harness::alive(entry.file_name().to_string_lossy().parse().unwrap_or(0))
        });
        if found == present {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Files in the daemon's uploads folder.
fn stack_uploads(stack: &Stack) -> usize {
    std::fs::read_dir(stack.state_dir().join("uploads")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_remote_deploy_builds_and_resolves_images_and_volumes_on_the_daemons_engine() {
    let tag = unique_tag("remote");
    let mut tags = Tags(vec![tag.clone()]);
    tags.0.push(web_image(&tag, "1", ""));
    let (port, api_port) = (free_port(), free_port());
    let yaml = |image: &str, extra: &str| {
        format!(
            r#"
name: remote
api: {{ listen: 127.0.0.1:{api_port} }}
volumes:
  data: {{}}
services:
  web:
    image: {image}
    pull: never
    port: {port}
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
{extra}"#
        )
    };
    let stack = Stack::new("containers-remote", &yaml(&tag, ""));
    stack.up();
    let key = std::fs::read_to_string(stack.state_dir().join("api.key")).unwrap().trim().to_string();
    let url = format!("http://127.0.0.1:{api_port}");
    // The client: its own folder and a copy of the stack file, and no container engine at all.
    let client = crate::TempDir::new("remote-client");
    let no_engine = format!("unix://{}/no-engine.sock", client.path().display());
    // A build argument from a secret: its value is never in the client's output.
    let build_token = "build-token-4f2d9a7c1e";
    let env = [("TUG_API_KEY", key.as_str()), ("DOCKER_HOST", no_engine.as_str()), ("BUILD_TOKEN", build_token)];
    let remote = |yaml: &str, args: &[&str]| {
        client.write("tug.yaml", yaml);
        let mut all = vec!["--host", url.as_str()];
        all.extend(args);
        crate::tug(client.path(), &all, &env, None)
    };

    // A rebuilt tag and a new volume: the daemon finds the new id and makes the volume on its
    // engine; the client's own engine is never asked.
    tags.0.push(web_image(&tag, "2", ""));
    let mounted = "    volumes: [data:/data]\n";
    let plan = remote(&yaml(&tag, mounted), &["deploy", "--plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(plan.stdout.contains("image"), "the daemon looked the new id up: {}", plan.stdout);
    let deploy = remote(&yaml(&tag, mounted), &["deploy", "--timeout", "60s"]);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    wait_versions(port, &["2"]);
    assert_eq!(stack_volumes(&stack.state_dir()), ["remote_data"], "made with the daemon's labels");
    let unchanged = remote(&yaml(&tag, mounted), &["deploy", "--plan"]);
    assert!(unchanged.code == 0 && unchanged.stdout.contains("unchanged"), "{}", unchanged.all());
    // `doctor` from here checks that host's engine, which this client does not have.
    let doctor = remote(&yaml(&tag, mounted), &["doctor"]);
    assert!(doctor.stdout.contains("✔ engine       there: unix://"), "{}", doctor.all());

    // An image the stack builds: the client sends the context, and that host's engine builds it.
    let built_tag = unique_tag("remote-built");
    tags.0.push(built_tag.clone());
    std::fs::create_dir_all(client.path().join("ctx")).unwrap();
    let dockerfile = format!(
        "FROM {}\nARG VERSION\nARG TOKEN\nENV VERSION=$VERSION\nRUN test \"$TOKEN\" = {build_token}\nCOPY note.txt /note.txt\n",
        demo_image()
    );
    client.write("ctx/Dockerfile", &dockerfile);
    client.write("ctx/note.txt", "from the client\n");
    let built = yaml(&built_tag, mounted)
        .replace("services:\n", "settings:\n  BUILD_TOKEN: { type: secret }\nservices:\n")
        .replace(
            "    pull: never\n",
            "    build: { context: ./ctx, args: { VERSION: \"3\", TOKEN: \"${BUILD_TOKEN}\" } }\n    secrets: [BUILD_TOKEN]\n",
        );
    let deploy = remote(&built, &["deploy", "--timeout", "60s"]);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    assert!(deploy.stderr.contains("web: sending its build context"), "{}", deploy.all());
    assert!(deploy.stderr.contains(&format!("web: the host builds {built_tag}")), "{}", deploy.all());
    // The host's build steps, as they ran there; the step that holds the secret is not shown.
    assert!(deploy.stderr.contains("web: Step 1/"), "{}", deploy.all());
    assert!(deploy.stderr.contains(" : COPY note.txt /note.txt\n"), "{}", deploy.all());
    assert!(!deploy.all().contains(build_token), "the secret build argument was shown: {}", deploy.all());
    wait_versions(port, &["3"]);
    let label = docker(&["image", "inspect", "-f", "{{index .Config.Labels \"tug.project\"}}", &built_tag]);
    assert_eq!(label.trim(), "remote", "built with the stack's label");
    assert_eq!(stack_uploads(&stack), 0, "the context is removed once built");
    // A build that fails there: its output's end, and nothing changed.
    client.write("ctx/Dockerfile", &format!("FROM {}\nRUN echo remote-build-fails && false\n", demo_image()));
    let failed = remote(&built, &["deploy", "--timeout", "60s"]);
    assert_ne!(failed.code, 0, "{}", failed.all());
    assert!(failed.all().contains("service `web`") && failed.all().contains("remote-build-fails"), "{}", failed.all());
    wait_versions(port, &["3"]);
    client.write("ctx/Dockerfile", &dockerfile);
    // A one-off run from the client runs that host's image too.
    let run = remote(&built, &["run", "web", "--", "sh", "-c", "echo one-off-$VERSION"]);
    assert!(run.code == 0 && run.stdout.contains("one-off-3"), "{}", run.all());
    assert!(run.stderr.contains(" : COPY note.txt /note.txt\n"), "its build's steps: {}", run.all());
    assert!(!run.all().contains(build_token), "the secret build argument was shown: {}", run.all());

    // A restore puts that host's state folder back: refused from here, nothing changed.
    let restore = remote(&built, &["restore", "some.tug-backup"]);
    assert!(restore.code != 0 && restore.stderr.contains("run `tug restore` there"), "{}", restore.all());
    wait_versions(port, &["3"]);
    // `down --volumes` from here: the daemon stops everything, then removes its own volumes
    // from its engine; the client waits until it no longer answers.
    let down = remote(&built, &["down", "--volumes"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(down.stdout.contains("removed volume remote_data"), "{}", down.all());
    assert!(stack_volumes(&stack.state_dir()).is_empty(), "{:?}", stack_volumes(&stack.state_dir()));
    assert!(stack_containers(&stack.state_dir()).is_empty());
}
