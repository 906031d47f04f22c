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
        ["api.yaml", "migrate.yaml", "postgres.yaml", "shop-job-waiter.yaml", "volume-pgdata.yaml", "worker.yaml"]
    );
    for version in VERSIONS {
        let paths: Vec<String> = files.iter().map(|f| out.path().join(f).display().to_string()).collect();
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
