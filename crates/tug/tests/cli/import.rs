//! `tug import compose`: real-world-shaped Compose files (a web app with a database and a
//! worker, with an override file; a monitoring stack; a 76-service stack with anchors and
//! profiles) become stacks `tug check` accepts; an imported stack runs on the engine, its
//! services reaching each other by their Compose names; and the errors a user meets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Stack, free_port};
use crate::images::{demo_image, redis_image};
use crate::routing::http_once;
use crate::{Run, TempDir};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose")
}

/// A copy of a fixture folder, so that what the import writes (tug.yaml, .tug/) stays out of the repository.
fn copy_fixture(name: &str) -> TempDir {
    let dir = TempDir::new(&format!("import-{name}"));
    crate::copy_dir(&fixtures().join(name), dir.path(), &[]);
    dir
}

fn tug(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    crate::tug(dir, args, env, None)
}

#[track_caller]
fn imported(run: &Run) {
    assert_eq!(run.code, 0, "tug import failed:\n{}", run.all());
    assert!(run.stderr.contains("tug check: ") && run.stderr.contains(" is valid ("), "{}", run.all());
}

#[test]
fn a_web_app_with_an_override_file_imports_and_checks() {
    let dir = copy_fixture("webapp");
    let password = "fixture-password-never-shown-0123456789";
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    dir.write("secrets/db_password.txt", password);
    let run = tug(dir.path(), &["import", "compose", "compose.yaml", "compose.override.yaml"], &[]);
    imported(&run);
    let text = std::fs::read_to_string(dir.path().join("tug.yaml")).unwrap();
    // Every key not carried over is reported with its file and line.
    for (place, words) in [
        ("compose.yaml:22:3 (services.api.networks and 2 more)", "networks"),
        ("compose.yaml:65:7 (services.api.deploy.update_config)", "deploy.strategy"),
        ("compose.yaml:64:9 (services.api.deploy.resources.reservations)", "limits only"),
        ("compose.yaml:76:5 (services.worker.container_name)", "names each instance's container"),
        ("compose.yaml:117:1 (networks)", "not carried over"),
    ] {
        let at = run.stderr.find(place).unwrap_or_else(|| panic!("{place} not reported:\n{}", run.stderr));
        let before = &run.stderr[..at];
        assert!(before[before.rfind("warning[").unwrap()..].contains(words), "{place}: {}", run.stderr);
    }
    // The override's port for `db` is reported: dependents reach it at 3306.
    assert!(run.stderr.contains("compose.override.yaml:13:9"), "{}", run.stderr);
    assert!(text.contains("  db:\n    image: mariadb:11\n"), "{text}");
    assert!(text.contains("    port: 3306\n    container_port: 3306\n"), "{text}");
    // `.env` sits beside the stack file, so references to it stay references.
    assert!(text.contains("image: shop-api:${TAG:-dev}\n"), "{text}");
    assert!(text.contains("    kind: job\n"), "{text}");
    // The secret went into the encrypted store, and nowhere else.
    assert!(run.stderr.contains("secret db_password: stored from"), "{}", run.stderr);
    let check = tug(dir.path(), &["check"], &[]);
    assert_eq!(check.code, 0, "{}", check.all());
    let config = tug(dir.path(), &["config"], &[]);
    let listed = tug(dir.path(), &["secrets", "list"], &[]);
    assert!(listed.stdout.contains("db_password"), "{}", listed.all());
    for output in [&run.all(), &text, &check.all(), &config.all(), &listed.all()] {
        assert!(!output.contains(password), "the secret leaked:\n{output}");
    }
    // A second import does not replace the file unless asked.
    let again = tug(dir.path(), &["import", "compose", "compose.yaml"], &[]);
    assert_eq!(again.code, 1, "{}", again.all());
    assert!(again.stderr.contains("already exists: pass --force"), "{}", again.all());
    assert_eq!(std::fs::read_to_string(dir.path().join("tug.yaml")).unwrap(), text);
    let forced = tug(dir.path(), &["import", "compose", "compose.yaml", "--force"], &[]);
    imported(&forced);
    assert!(forced.stderr.contains("secret db_password: already in the store, kept"), "{}", forced.all());
}

#[test]
fn a_monitoring_stack_imports_and_checks() {
    let dir = copy_fixture("monitoring");
    let run = tug(dir.path(), &["import", "compose", "docker-compose.yml"], &[]);
    imported(&run);
    for refused in ["(services.nodeexporter.pid)", "(services.cadvisor.privileged)", "(services.cadvisor.devices)"] {
        assert!(run.stderr.contains(refused), "{refused}:\n{}", run.stderr);
    }
    assert!(run.stderr.contains("UDP ports are not carried over"), "{}", run.stderr);
    let text = std::fs::read_to_string(dir.path().join("tug.yaml")).unwrap();
    assert!(text.contains("    logs:\n      max_size: 20m\n      max_files: 5\n"), "{text}");
    assert_eq!(tug(dir.path(), &["check"], &[]).code, 0);
}

#[test]
fn a_large_stack_with_anchors_and_profiles_imports_and_checks() {
    let dir = copy_fixture("large");
    let env = [("PG_PASSWORD", "from-the-environment-0123456789")];
    let run = tug(dir.path(), &["import", "compose", "compose.yaml", "-o", "stack/tug.yaml"], &env);
    imported(&run);
    // 76 services, 11 of them in the `extras` profile.
    assert!(run.stderr.contains("bigshop is valid (65 services)"), "{}", run.all());
    let text = std::fs::read_to_string(dir.path().join("stack/tug.yaml")).unwrap();
    assert_eq!(text.matches("\n    image: ").count(), 76, "{text}");
    // Written elsewhere: paths follow, and `.env` (not beside it) is read at import.
    assert!(text.contains("env_file: [../common.env]"), "{text}");
    assert!(text.contains("image: registry.example.com/shop/svc:2024.06.1\n"), "{text}");
    assert!(text.contains("    profiles: [extras]\n"), "{text}");
    let check = tug(dir.path(), &["-f", "stack/tug.yaml", "check", "--profile", "extras"], &env);
    assert_eq!(check.code, 0, "{}", check.all());
    assert!(!check.all().contains("from-the-environment"), "{}", check.all());
}

#[test]
fn import_errors_name_the_file_and_line_and_write_nothing() {
    let dir = TempDir::new("import-errors");
    dir.write("bad.yaml", "services:\n  a:\n    image: [unclosed\n");
    let run = tug(dir.path(), &["import", "compose", "bad.yaml"], &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("bad.yaml:4:1: invalid YAML"), "{}", run.all());
    dir.write("required.yaml", "services:\n  a:\n    image: app:${TAG:?set TAG in .env}\n");
    let run = tug(dir.path(), &["import", "compose", "required.yaml"], &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("required.yaml:3:12") && run.stderr.contains("set TAG in .env"), "{}", run.all());
    assert!(run.stderr.contains("nothing was written"), "{}", run.all());
    let run = tug(dir.path(), &["import", "compose", "missing.yaml"], &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("cannot read") && run.stderr.contains("missing.yaml"), "{}", run.all());
    assert!(!dir.path().join("tug.yaml").exists());
    // To standard output: the stack file alone on stdout, findings on stderr.
    dir.write("ok.yaml", "services:\n  a:\n    image: x\n    container_name: a\n");
    let run = tug(dir.path(), &["import", "compose", "ok.yaml", "-o", "-"], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.starts_with("# Imported from ok.yaml") && !run.stdout.contains("container_name"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("ok.yaml:4:5 (services.a.container_name)"), "{}", run.stderr);
}

#[test]
fn an_imported_stack_runs_and_its_services_reach_each_other_by_name() {
    let (web, cache) = (free_port(), free_port());
    let compose = format!(
        r#"services:
  web:
    image: {demo}
    ports: ["{web}:8080"]
    environment:
      DEMO_MESSAGE: ${{GREETING:-hello-from-compose}}
    depends_on:
      cache: {{ condition: service_healthy }}
  cache:
    image: {redis}
    command: redis-server --port {cache} --protected-mode no --save "" --appendonly no
    expose: ["{cache}"]
    healthcheck:
      test: ["CMD", "redis-cli", "-p", "{cache}", "ping"]
      interval: 1s
      start_interval: 100ms
  seed:
    image: {redis}
    command: ["sh", "-c", "redis-cli -h cache -p {cache} set greeting names-resolve && redis-cli -h cache -p {cache} get greeting"]
    depends_on:
      cache: {{ condition: service_healthy }}
    restart: "no"
"#,
        demo = demo_image(),
        redis = redis_image(),
    );
    let stack = Stack::new("import-run", "");
    std::fs::remove_file(stack.path().join("tug.yaml")).unwrap();
    stack.dir.write("compose.yaml", &compose);
    let run = stack.tug(&["import", "compose", "compose.yaml"]);
    imported(&run);
    stack.up();
    // A process on the host network reaches `cache` by name...
    stack.wait_state("seed-1", "completed", Duration::from_secs(30));
    assert!(stack.log("seed", "seed-1").contains("names-resolve"), "{}", stack.log("seed", "seed-1"));
    // ...and so does a container on a network of its own.
    let ping = stack.tug(&["exec", "web", "--", "sh", "-c", &format!("printf 'PING\\r\\n' | nc -w 2 cache {cache}")]);
    assert!(ping.stdout.contains("+PONG"), "{}", ping.all());
    // The published port is the service's address, and `${GREETING:-…}` kept its default.
    let (status, body) = http_once("127.0.0.1", web, "GET", "/").expect("web answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello-from-compose"), "{body}");
}
