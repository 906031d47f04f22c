//! `tug render kubernetes`: every manifest valid for two Kubernetes versions
//! (`kubernetes-validate --strict`), and what it says: probes, init waits for `depends_on`,
//! Jobs, HPA, PDB, secrets kept out of ConfigMaps and out of the output unless asked.

use std::path::Path;
use std::process::Command;

use crate::{TempDir, data_dir, tug};

/// Kubernetes minor versions the manifests are validated against.
const VERSIONS: [&str; 2] = ["1.33.0", "1.36.0"];

const PASSWORD: &str = "a-db-password-never-rendered-0123456789";

fn render(state: &TempDir, extra: &[&str]) -> crate::Run {
    let mut args = vec!["render", "kubernetes", "-f", "shop.yaml"];
    args.extend_from_slice(extra);
    tug(
        &data_dir().join("render"),
        &args,
        &[("TUG_STATE_DIR", state.path().to_str().unwrap()), ("DB_PASSWORD", PASSWORD)],
        None,
    )
}

/// `kubernetes-validate --strict` on `files` for each of [`VERSIONS`].
fn kubernetes_valid(dir: &Path, files: &[String]) {
    for version in VERSIONS {
        let paths: Vec<String> = files.iter().map(|f| dir.join(f).display().to_string()).collect();
        let check = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(&paths)
            .output()
            .expect("kubernetes-validate (scripts/test installs it from PyPI)");
        assert!(
            check.status.success(),
            "Kubernetes {version} refuses the manifests:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn kubernetes_manifests_are_valid_and_keep_the_stacks_meaning() {
    let state = TempDir::new("render-state");
    let out = TempDir::new("render-out");
    let out_dir = out.path().to_str().unwrap();
    let run = render(&state, &["--out", out_dir]);
    assert_eq!(run.code, 0, "{}", run.all());
    let mut files: Vec<String> =
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "admin.yaml",
            "api.yaml",
            "migrate.yaml",
            "postgres.yaml",
            "shop-job-waiter.yaml",
            "volume-pgdata.yaml",
            "worker.yaml"
        ]
    );
    kubernetes_valid(out.path(), &files);
    let api = read(out.path(), "api.yaml");
    // Readiness from the healthcheck; `start_period` a startup probe (20s at 500ms, then the
    // retries), not a delay; liveness only from `liveness`.
    assert!(api.contains("readinessProbe:\n            httpGet:\n              path: /health\n              port: 5000\n            periodSeconds: 2\n"), "{api}");
    assert!(api.contains("startupProbe:\n            httpGet:\n              path: /health\n              port: 5000\n            periodSeconds: 1\n"), "{api}");
    assert!(api.contains("failureThreshold: 23\n"), "{api}");
    assert!(api.contains("livenessProbe:\n            httpGet:\n              path: /live\n"), "{api}");
    assert!(!api.contains("initialDelaySeconds"), "{api}");
    let worker = read(out.path(), "worker.yaml");
    assert!(!worker.contains("livenessProbe") && !worker.contains("readinessProbe"), "{worker}");
    assert!(worker.contains("a log probe under tug"), "{worker}");
    // depends_on holds: a wait for the Job, and for postgres's Service.
    assert!(
        api.contains("kubectl, wait, --for=condition=complete, job/migrate") || api.contains("- job/migrate"),
        "{api}"
    );
    assert!(api.contains("until nc -z -w 2 postgres 5432; do sleep 1; done"), "{api}");
    assert!(api.contains("serviceAccountName: shop-job-waiter"), "{api}");
    let rbac = read(out.path(), "shop-job-waiter.yaml");
    assert!(rbac.contains("resources: [jobs]") && rbac.contains("verbs: [get, list, watch]"), "{rbac}");
    // The port: dependents get the Service's DNS name; the instance its container port.
    assert!(api.contains("name: POSTGRES_ADDR\n              value: postgres:5432\n"), "{api}");
    assert!(api.contains("- name: PORT\n              value: \"5000\""), "{api}");
    assert!(api.contains("args: [gunicorn, --bind, 0.0.0.0:$(PORT), app:app]"), "{api}");
    // A Job for the job; an HPA owning api's replicas; a PDB for several replicas.
    assert!(read(out.path(), "migrate.yaml").contains("kind: Job"), "the job");
    assert!(api.contains("kind: HorizontalPodAutoscaler") && api.contains("averageUtilization: 70"), "{api}");
    assert!(api.contains("name: http_requests_per_second") && api.contains("needs a metrics adapter"), "{api}");
    assert!(!api.contains("  replicas: 3"), "the HPA owns the replicas:\n{api}");
    assert!(api.contains("kind: PodDisruptionBudget"), "{api}");
    assert!(api.contains("canary under tug: here a rolling update"), "{api}");
    // Resources as requests and limits; the restricted profile.
    assert!(api.contains("requests:\n              memory: \"268435456\"\n              cpu: 500m\n"), "{api}");
    assert!(api.contains("runAsNonRoot: true") && api.contains("readOnlyRootFilesystem: true"), "{api}");
    // The secret: referenced from a Secret to fill, never a value, never in a ConfigMap.
    for file in &files {
        let text = read(out.path(), file);
        assert!(!text.contains(PASSWORD), "{file} holds the secret:\n{text}");
    }
    assert!(api.contains("DB_PASSWORD: \"\"") && api.contains("Fill these keys"), "{api}");
    let postgres = read(out.path(), "postgres.yaml");
    assert!(postgres.contains("claimName: shop-pgdata") && postgres.contains("type: Recreate"), "{postgres}");
    assert!(postgres.contains("mountPath: /run/secrets"), "{postgres}");
    // The same stack, the same bytes.
    let again = render(&state, &[]);
    let once = render(&state, &[]);
    assert_eq!(again.stdout, once.stdout);
    assert!(!again.stdout.contains(PASSWORD));
    // Asked for, the value is in the Secret.
    let with = render(&state, &["--include-secrets"]);
    assert!(with.stdout.contains(&format!("DB_PASSWORD: {PASSWORD}")), "{}", with.stdout);
}

#[test]
fn a_service_without_an_image_cannot_be_rendered_for_kubernetes() {
    let dir = TempDir::new("render-process");
    dir.write("tug.yaml", "name: p\nservices:\n  api: { command: [sleep, '1'] }\n  db: { image: postgres:16 }\n");
    let run = tug(dir.path(), &["render", "kubernetes"], &[], None);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("kubernetes runs images: api has no `image`"), "{}", run.all());
}

/// `systemd-analyze verify` on every unit of a folder: exit 0 and nothing said (a warning fails).
fn verify_units(dir: &Path) {
    let mut units: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".service") || p.ends_with(".target"))
        .collect();
    units.sort();
    let out = Command::new("systemd-analyze").arg("verify").args(&units).output().expect("systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn systemd_units_verify_and_keep_the_order_and_the_secrets() {
    let state = TempDir::new("render-sd-state");
    let out = TempDir::new("render-sd-out");
    let token = "an-api-token-never-rendered-0123456789";
    let run = tug(
        &data_dir().join("render"),
        &["render", "systemd", "-f", "procs.yaml", "--out", out.path().to_str().unwrap()],
        &[("TUG_STATE_DIR", state.path().to_str().unwrap()), ("API_TOKEN", token)],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    verify_units(out.path());
    let target = read(out.path(), "procs.target");
    assert!(
        target.contains("Wants=procs-migrate.service procs-db.service procs-api@18080.service procs-api@18081.service procs-worker.service"),
        "{target}"
    );
    let api = read(out.path(), "procs-api@.service");
    // Order: after the job completed (oneshot) and after db is healthy (its ExecStartPost).
    assert!(api.contains("After=procs-migrate.service\nRequires=procs-migrate.service"), "{api}");
    assert!(api.contains("After=procs-db.service\nRequires=procs-db.service"), "{api}");
    assert!(api.contains("Environment=PORT=%i TUG_INSTANCE=api-%i"), "{api}");
    assert!(api.contains("LoadCredential=API_TOKEN:/etc/tug/procs/credentials/API_TOKEN"), "{api}");
    assert!(
        api.contains("DynamicUser=yes") && api.contains("NoNewPrivileges=yes") && api.contains("ProtectSystem=strict"),
        "{api}"
    );
    let job = read(out.path(), "procs-migrate.service");
    assert!(job.contains("Type=oneshot\nRemainAfterExit=yes"), "{job}");
    let db = read(out.path(), "procs-db.service");
    assert!(db.contains("ExecStartPost=") && db.contains("/dev/tcp/127.0.0.1/$${PORT}"), "{db}");
    assert!(db.contains("MemoryMax=134217728") && db.contains("CPUQuota=50%"), "{db}");
    let worker = read(out.path(), "procs-worker.service");
    assert!(
        worker.contains("Wants=procs-api@18080.service procs-api@18081.service") && worker.contains("Restart=always"),
        "{worker}"
    );
    let env = read(out.path(), "procs-api.env");
    assert!(env.contains("GREETING=\"hello \\\"world\\\" 100%\""), "{env}");
    for file in std::fs::read_dir(out.path()).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!text.contains(token), "a secret in the units:\n{text}");
    }
    // The unit that runs the stack under tug at boot.
    assert!(
        read(out.path(), "tug-procs.service").contains("ExecStart=")
            && read(out.path(), "tug-procs.service").contains(" up\n")
    );
    // Images run through the engine's CLI; they verify too.
    let images = TempDir::new("render-sd-images");
    let run = render_to(&state, "systemd", images.path());
    assert_eq!(run.code, 0, "{}", run.all());
    verify_units(images.path());
    assert!(
        read(images.path(), "shop-postgres.service")
            .contains("ExecStart=/usr/bin/docker run --rm --name shop-postgres")
    );
}

fn render_to(state: &TempDir, target: &str, out: &Path) -> crate::Run {
    tug(
        &data_dir().join("render"),
        &["render", target, "-f", "shop.yaml", "--out", out.to_str().unwrap()],
        &[("TUG_STATE_DIR", state.path().to_str().unwrap()), ("DB_PASSWORD", PASSWORD)],
        None,
    )
}

fn compose_valid(file: &Path) {
    let check = Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(file)
        .output()
        .expect("check-jsonschema (scripts/test installs it from PyPI)");
    assert!(
        check.status.success(),
        "the Compose specification's schema refuses {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_compose_file_that_the_compose_specification_accepts() {
    let state = TempDir::new("render-co-state");
    let out = TempDir::new("render-co-out");
    let run = render_to(&state, "compose", out.path());
    assert_eq!(run.code, 0, "{}", run.all());
    let file = out.path().join("compose.yaml");
    compose_valid(&file);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(text.contains("DB_PASSWORD: ${DB_PASSWORD:?set DB_PASSWORD"), "{text}");
    assert!(
        text.contains("condition: service_completed_successfully") && text.contains("condition: service_healthy"),
        "{text}"
    );
    assert!(text.contains("ports: [127.0.0.1:8000-8002:5000]"), "{text}");
    assert!(text.contains("test: [CMD-SHELL, wget -q -O /dev/null http://127.0.0.1:5000/health || exit 1]"), "{text}");
    assert!(text.contains("x-tug-deploy:\n      strategy: canary"), "{text}");
    assert!(text.contains("x-tug-autoscale:"), "{text}");
    assert!(text.contains("x-tug:\n  environment: development\n"), "{text}");
    assert!(text.contains("command: [gunicorn, --bind, \"0.0.0.0:5000\", app:app]"), "{text}");
}

use tug_stackfile::yaml::{Kind, Node};

fn parse_yaml(text: &str) -> Node {
    tug_stackfile::yaml::parse(text, 0).expect("YAML").0
}

fn at<'n>(node: &'n Node, path: &[&str]) -> Option<&'n Node> {
    path.iter().try_fold(node, |n, key| n.get(key))
}

fn scalar(node: Option<&Node>) -> Option<String> {
    node.and_then(|n| n.key_text()).map(str::to_string)
}

fn scalars(node: Option<&Node>) -> Vec<String> {
    match node.map(|n| &n.kind) {
        Some(Kind::Seq(items)) => items.iter().filter_map(|i| i.key_text().map(str::to_string)).collect(),
        Some(Kind::Scalar { text, .. }) => vec![text.clone()],
        _ => Vec::new(),
    }
}

/// Compose durations (`10s`, `1m30s`, `5000ms`) in milliseconds.
fn millis(text: Option<String>) -> Option<u128> {
    text.map(|t| tug_stackfile::units::parse_duration(&t).expect("a duration").as_millis())
}

#[test]
fn an_imported_compose_file_renders_back_with_every_mapped_meaning() {
    let dir = TempDir::new("render-roundtrip");
    crate::copy_dir(&data_dir().join("../fixtures/compose/webapp"), dir.path(), &[]);
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    dir.write("secrets/db_password.txt", "roundtrip-password-0123456789");
    let run = tug(dir.path(), &["import", "compose", "compose.yaml"], &[], None);
    assert_eq!(run.code, 0, "{}", run.all());
    let run = tug(dir.path(), &["render", "compose", "--out", "out"], &[], None);
    assert_eq!(run.code, 0, "{}", run.all());
    compose_valid(&dir.path().join("out/compose.yaml"));
    let original = parse_yaml(&std::fs::read_to_string(dir.path().join("compose.yaml")).unwrap());
    let rendered = parse_yaml(&std::fs::read_to_string(dir.path().join("out/compose.yaml")).unwrap());
    for service in ["proxy", "api", "worker", "migrate", "db"] {
        let (a, b) = (at(&original, &["services", service]).unwrap(), at(&rendered, &["services", service]).unwrap());
        let image = |n: &Node| scalar(n.get("image")).map(|i| i.replace("${TAG:-dev}", "1.4.2"));
        assert_eq!(image(a), image(b), "{service}: image");
        // Commands: a string is split into words, as Compose does.
        let words = |n: &Node| match n.get("command").map(|c| &c.kind) {
            Some(Kind::Scalar { text, .. }) => text.split_whitespace().map(str::to_string).collect(),
            _ => scalars(n.get("command")),
        };
        assert_eq!(words(a), words(b), "{service}: command");
        // depends_on: every dependency, with its condition.
        if let Some(Kind::Map(deps)) = a.get("depends_on").map(|d| &d.kind) {
            for (dep, spec) in deps {
                let dep = dep.key_text().unwrap();
                let condition = scalar(spec.get("condition")).unwrap_or_else(|| "service_started".into());
                assert_eq!(
                    scalar(at(b, &["depends_on", dep, "condition"])),
                    Some(condition),
                    "{service}: depends_on {dep}"
                );
            }
        } else if let Some(Kind::Seq(deps)) = a.get("depends_on").map(|d| &d.kind) {
            for dep in deps {
                let dep = dep.key_text().unwrap();
                assert_eq!(scalar(at(b, &["depends_on", dep, "condition"])).as_deref(), Some("service_started"));
            }
        }
        // The healthcheck: the same test and timings.
        if let Some(check) = a.get("healthcheck") {
            let test = scalars(check.get("test"));
            assert_eq!(scalars(at(b, &["healthcheck", "test"])), test, "{service}: healthcheck test");
            for field in ["interval", "timeout", "start_period"] {
                if let Some(value) = scalar(check.get(field)) {
                    assert_eq!(
                        millis(scalar(at(b, &["healthcheck", field]))),
                        millis(Some(value)),
                        "{service}: {field}"
                    );
                }
            }
            if let Some(retries) = scalar(check.get("retries")) {
                assert_eq!(scalar(at(b, &["healthcheck", "retries"])), Some(retries), "{service}: retries");
            }
        }
        // Restart: unless-stopped is always; on-failure:N is on-failure; a one-shot never.
        let restart = scalar(a.get("restart")).map(|r| match r.as_str() {
            "unless-stopped" => "always".to_string(),
            r if r.starts_with("on-failure") => "on-failure".to_string(),
            r => r.to_string(),
        });
        if let Some(restart) = restart {
            assert_eq!(scalar(b.get("restart")), Some(restart), "{service}: restart");
        }
        // Volumes: the same targets, read-only where they were.
        let targets = |list: Vec<String>| -> Vec<String> {
            list.iter().map(|v| v.split_once(':').map_or(v.as_str(), |(_, t)| t).to_string()).collect()
        };
        let mut expected = targets(scalars(a.get("volumes")));
        if let Some(Kind::Seq(configs)) = a.get("configs").map(|c| &c.kind) {
            expected.extend(configs.iter().filter_map(|c| scalar(c.get("target"))).map(|t| format!("{t}:ro")));
        }
        assert_eq!(targets(scalars(b.get("volumes"))), expected, "{service}: volumes");
        // Limits and replicas.
        if let Some(replicas) = scalar(at(a, &["deploy", "replicas"])) {
            assert_eq!(scalar(at(b, &["deploy", "replicas"])), Some(replicas), "{service}: replicas");
        }
        if let Some(cpus) = scalar(at(a, &["deploy", "resources", "limits", "cpus"])) {
            let cpus: f64 = cpus.parse().unwrap();
            assert_eq!(
                scalar(at(b, &["deploy", "resources", "limits", "cpus"])).map(|c| c.parse::<f64>().unwrap()),
                Some(cpus)
            );
        }
        if let Some(memory) = scalar(at(a, &["deploy", "resources", "limits", "memory"])) {
            // Docker's units are binary: 256M is 256 MiB.
            assert_eq!(memory, "256M");
            assert_eq!(scalar(at(b, &["deploy", "resources", "limits", "memory"])).as_deref(), Some("268435456b"));
        }
        // Environment: every variable the Compose file sets, with its value.
        if let Some(Kind::Map(env)) = a.get("environment").map(|e| &e.kind) {
            for (key, value) in env {
                let key = key.key_text().unwrap();
                let value = scalar(Some(value)).map(|v| v.replace("${LOG_LEVEL:-info}", "info"));
                assert_eq!(scalar(at(b, &["environment", key])), value, "{service}: environment.{key}");
            }
        }
    }
    // Logging options come back.
    assert_eq!(scalar(at(&rendered, &["services", "proxy", "logging", "options", "max-file"])).as_deref(), Some("3"));
    assert!(!std::fs::read_to_string(dir.path().join("out/compose.yaml")).unwrap().contains("roundtrip-password"));
}

/// `docker compose` where the machine has it, else Compose v1 (`docker-compose`), which knows
/// no top-level `name:` (the project is given with `-p` instead).
fn compose_command() -> (Vec<&'static str>, bool) {
    let v2 = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if v2 { (vec!["docker", "compose"], true) } else { (vec!["docker-compose"], false) }
}

#[test]
fn the_rendered_compose_file_runs_and_answers_as_the_stack_does_under_tug() {
    let (web, cache) = (crate::harness::free_port(), crate::harness::free_port());
    let project = format!("tugrender{}", std::process::id());
    let yaml = format!(
        r#"
name: {project}
services:
  cache:
    image: {redis}
    command: [redis-server, --port, "${{PORT}}", --protected-mode, "no", --save, "", --appendonly, "no"]
    port: {cache}
    protocol: tcp
    healthcheck: {{ exec: [redis-cli, -p, "${{PORT}}", ping], interval: 1s }}
  web:
    image: {demo}
    port: {web}
    container_port: 8080
    environment: {{ DEMO_MESSAGE: from-the-stack }}
    healthcheck: {{ http: /health, interval: 1s }}
    depends_on: {{ cache: healthy }}
"#,
        redis = crate::images::redis_image(),
        demo = crate::images::demo_image(),
    );
    let stack = crate::harness::Stack::new("render-run", &yaml);
    stack.up();
    let under_tug = crate::routing::http_once("127.0.0.1", web, "GET", "/").expect("web answers under tug").1;
    assert!(stack.tug(&["down"]).code == 0);
    let out = stack.path().join("out");
    let run = stack.tug(&["render", "compose", "--out", out.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.all());
    let file = out.join("compose.yaml");
    compose_valid(&file);
    let (compose, v2) = compose_command();
    if !v2 {
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace(&format!("\nname: {project}\n"), "\n")).unwrap();
    }
    let file = file.to_str().unwrap().to_string();
    let compose_run = |args: &[&str]| {
        let mut all: Vec<&str> = compose[1..].to_vec();
        all.extend(["-p", project.as_str(), "-f", file.as_str()]);
        all.extend_from_slice(args);
        Command::new(compose[0]).args(&all).output().expect("run compose")
    };
    struct Down<'a>(&'a dyn Fn(&[&str]) -> std::process::Output);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            (self.0)(&["down", "-v", "--timeout", "2"]);
        }
    }
    let _down = Down(&compose_run);
    let up = compose_run(&["up", "-d"]);
    assert!(up.status.success(), "compose up: {}", String::from_utf8_lossy(&up.stderr));
    let container = format!("{project}_web_1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let health = crate::images::docker_quiet(&["inspect", "-f", "{{.State.Health.Status}}", &container]);
        let v2_health =
            crate::images::docker_quiet(&["inspect", "-f", "{{.State.Health.Status}}", &format!("{project}-web-1")]);
        if health == "healthy" || v2_health == "healthy" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "web never became healthy under Compose: {health}{v2_health}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let under_compose = crate::routing::http_once("127.0.0.1", web, "GET", "/").expect("web answers under Compose").1;
    let field = |body: &str, key: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(body).map(|v| v[key].clone()).unwrap_or_default()
    };
    for key in ["service", "message", "instance"] {
        assert_eq!(field(&under_tug, key), field(&under_compose, key), "{key}: {under_tug} vs {under_compose}");
    }
    assert_eq!(field(&under_compose, "message"), "from-the-stack");
}

/// A YAML tree as JSON, plain scalars typed as YAML 1.2's core schema reads them.
fn to_json(node: &Node) -> serde_json::Value {
    match &node.kind {
        Kind::Null => serde_json::Value::Null,
        Kind::Scalar { text, plain: true } if text == "true" || text == "false" => {
            serde_json::Value::Bool(text == "true")
        }
        Kind::Scalar { text, plain: true } if text.parse::<i64>().is_ok() => {
            serde_json::json!(text.parse::<i64>().unwrap())
        }
        Kind::Scalar { text, plain: true } if text.parse::<f64>().is_ok() => {
            serde_json::json!(text.parse::<f64>().unwrap())
        }
        Kind::Scalar { text, .. } => serde_json::Value::String(text.clone()),
        Kind::Seq(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Kind::Map(entries) => serde_json::Value::Object(
            entries.iter().map(|(k, v)| (k.key_text().unwrap_or_default().to_string(), to_json(v))).collect(),
        ),
    }
}

#[test]
fn argo_rollouts_and_network_policies_when_asked() {
    let state = TempDir::new("render-argo-state");
    let out = TempDir::new("render-argo-out");
    let run = tug(
        &data_dir().join("render"),
        &[
            "render",
            "kubernetes",
            "-f",
            "shop.yaml",
            "--rollouts",
            "argo",
            "--network-policies",
            "--out",
            out.path().to_str().unwrap(),
        ],
        &[("TUG_STATE_DIR", state.path().to_str().unwrap()), ("DB_PASSWORD", PASSWORD)],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let mut files: Vec<String> =
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    let (rollouts, kube): (Vec<String>, Vec<String>) = files.into_iter().partition(|f| f.ends_with("-rollout.yaml"));
    assert_eq!(rollouts, ["admin-rollout.yaml", "api-rollout.yaml"]);
    kubernetes_valid(out.path(), &kube);
    // Each Rollout against the Rollout CRD's own schema.
    let crd = parse_yaml(&std::fs::read_to_string(data_dir().join("render/argo-rollouts-crd.yaml")).unwrap());
    let schema = to_json(
        at(&crd, &["spec", "versions"])
            .and_then(|v| match &v.kind {
                Kind::Seq(items) => items.first(),
                _ => None,
            })
            .and_then(|v| at(v, &["schema", "openAPIV3Schema"]))
            .expect("the CRD's schema"),
    );
    let schema_file = out.path().join("rollout-schema.json");
    std::fs::write(&schema_file, serde_json::to_string(&schema).unwrap()).unwrap();
    for rollout in &rollouts {
        let check = Command::new("check-jsonschema")
            .arg("--schemafile")
            .arg(&schema_file)
            .arg(out.path().join(rollout))
            .output()
            .expect("check-jsonschema");
        assert!(
            check.status.success(),
            "the Rollout CRD refuses {rollout}:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let api = read(out.path(), "api-rollout.yaml");
    assert!(
        api.contains("- setWeight: 10\n        - pause:\n            duration: 30s\n        - setWeight: 50"),
        "{api}"
    );
    assert!(!api.contains("kind: Deployment"));
    assert!(read(out.path(), "api.yaml").contains("kind: Rollout\n    name: api"), "the HPA scales the Rollout");
    let admin = read(out.path(), "admin-rollout.yaml");
    assert!(
        admin.contains("activeService: admin\n      previewService: admin-preview\n      autoPromotionEnabled: false"),
        "{admin}"
    );
    assert!(
        api.contains("error rate at most 1%, over at least 50 requests") && api.contains("AnalysisTemplate"),
        "{api}"
    );
    assert!(
        read(out.path(), "admin.yaml").contains("name: admin-preview")
            && read(out.path(), "admin.yaml").contains("port: 8101")
    );
    let policies = read(out.path(), "shop-network-policies.yaml");
    assert!(policies.contains("name: shop-default-deny") && policies.contains("policyTypes: [Ingress]"), "{policies}");
    // postgres lets in only its dependents; api, which nothing depends on, anyone.
    let postgres = &policies[policies.find("name: postgres-ingress").unwrap()..];
    let postgres = &postgres[..postgres.find("---").unwrap_or(postgres.len())];
    for dependent in ["migrate", "api"] {
        assert!(postgres.contains(&format!("app.kubernetes.io/name: {dependent}")), "{postgres}");
    }
    assert!(!postgres.contains("app.kubernetes.io/name: worker"), "{postgres}");
    assert!(policies.contains("`admin` is an entry point"), "{policies}");
}

/// The project's examples: the one that runs images renders for every target, and every one
/// renders to systemd units that systemd accepts.
#[test]
fn the_examples_render_for_every_target_they_can_run_on() {
    let state = TempDir::new("render-examples-state");
    let env = [
        ("TUG_STATE_DIR", state.path().to_str().unwrap()),
        ("TUG_SECRETS_KEY", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"),
    ];
    for example in ["containers", "quickstart", "servers", "genesis"] {
        let dir = crate::repo_dir().join("examples").join(example);
        // Secrets the examples generate on `up`: generated here in a throwaway store.
        let generated = tug(&dir, &["secrets", "generate"], &env, None);
        assert_eq!(generated.code, 0, "{example}: {}", generated.all());
        let out = TempDir::new(&format!("render-example-{example}"));
        let run = tug(&dir, &["render", "systemd", "--out", out.path().to_str().unwrap()], &env, None);
        assert_eq!(run.code, 0, "{example}: {}", run.all());
        verify_units(out.path());
        let k8s = tug(&dir, &["render", "kubernetes", "--out", out.path().join("k8s").to_str().unwrap()], &env, None);
        let compose =
            tug(&dir, &["render", "compose", "--out", out.path().join("compose").to_str().unwrap()], &env, None);
        if example == "containers" {
            assert_eq!(k8s.code, 0, "{}", k8s.all());
            let mut files: Vec<String> = std::fs::read_dir(out.path().join("k8s"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            kubernetes_valid(&out.path().join("k8s"), &files);
            assert_eq!(compose.code, 0, "{}", compose.all());
            compose_valid(&out.path().join("compose/compose.yaml"));
        } else {
            // Local processes: not for engines that run images, and the error says which and why.
            assert_eq!(k8s.code, 1, "{example}: {}", k8s.all());
            assert!(
                k8s.stderr.contains("kubernetes runs images:") && k8s.stderr.contains("no `image`"),
                "{}",
                k8s.all()
            );
            assert_eq!(compose.code, 1, "{example}: {}", compose.all());
        }
    }
}

#[test]
fn alerting_rules_that_promtool_checks_and_whose_alerts_fire_where_they_should() {
    let state = TempDir::new("render-alerts-state");
    let out = TempDir::new("render-alerts-out");
    let run = render_to(&state, "alerts", out.path());
    assert_eq!(run.code, 0, "{}", run.all());
    let rules = out.path().join("shop-alerts.yaml");
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (scripts/test installs prometheus)");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The fixtures: every alert fires under its condition and stays silent without it.
    std::fs::copy(data_dir().join("render/alerts-tests.yaml"), out.path().join("alerts-tests.yaml")).unwrap();
    let test =
        Command::new("promtool").current_dir(out.path()).args(["test", "rules", "alerts-tests.yaml"]).output().unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // A service's own objectives set its thresholds: admin allows 1% errors and a 250 ms p99.
    let text = std::fs::read_to_string(&rules).unwrap();
    assert!(text.contains("ratio_rate1h{service=\\\"admin\\\"} > 0.144"), "{text}");
    assert!(text.contains("p99_rate5m{service=\\\"admin\\\"} > 0.25\""), "{text}");
    // Only HTTP services get request alerts; postgres (tcp) gets the others.
    assert!(!text.contains("ratio_rate1h{service=\\\"postgres\\\"}"), "{text}");
    assert!(text.contains("service=\\\"postgres\\\"}[15m]) > 3"), "{text}");
}
