//! `examples/servers`: real servers from Debian's packages under the real daemon.
//! PostgreSQL (its cluster created by a job, run as `postgres`, probed with
//! `pg_isready`), Redis (probed with `redis-cli ping`, run as `redis`), a migration
//! job and an API that needs all three, gated on them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{self, Stack};
use crate::repo_dir;

/// The Debian packages the example needs (what `scripts/test` installs).
const PACKAGES: [&str; 4] = ["postgresql", "redis-server", "redis-tools", "python3"];
/// The `PATH` the harness gives `tug` (and so every instance).
const PATH: [&str; 3] = ["/usr/local/bin", "/usr/bin", "/bin"];

fn on_path(program: &str) -> bool {
    PATH.iter().any(|dir| Path::new(dir).join(program).is_file())
}

fn uid_of(user: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", user]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok().filter(|_| out.status.success())
}

/// The newest PostgreSQL's server programs (Debian: /usr/lib/postgresql/<major>/bin).
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| ["postgres", "initdb", "pg_isready", "psql"].iter().all(|p| bin.join(p).is_file()))
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// What this machine lacks to run the example.
fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    if pg_bin().is_none() {
        missing.push("PostgreSQL's server programs in /usr/lib/postgresql/*/bin".to_string());
    }
    for program in ["redis-server", "redis-cli", "python3"] {
        if !on_path(program) {
            missing.push(format!("`{program}` on {}", PATH.join(":")));
        }
    }
    for user in ["postgres", "redis"] {
        if uid_of(user).is_none() {
            missing.push(format!("the user `{user}`"));
        }
    }
    missing
}

fn apt_install() -> bool {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    install()
        || (Command::new("apt-get").args(["update", "-qq"]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
            && install())
}

/// `Err(reason)` when the example cannot run here: the servers are missing and cannot
/// be installed (they are installed when tug's tests run as root with apt), or tug
/// is not root (`user:` needs it).
fn prerequisites() -> Result<PathBuf, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the example runs PostgreSQL as `postgres` (`user:`), which needs tug to run as root".into());
    }
    let lacking = missing();
    if !lacking.is_empty() {
        eprintln!("servers: missing {}; installing {}", lacking.join(", "), PACKAGES.join(" "));
        let installed = apt_install();
        let still = missing();
        if !still.is_empty() {
            let how = if installed { "installed, yet" } else { "apt-get install failed" };
            return Err(format!("missing {} ({how}; scripts/test installs {})", still.join(", "), PACKAGES.join(" ")));
        }
    }
    pg_bin().ok_or_else(|| "no PostgreSQL server programs".into())
}

/// PostgreSQL's programs and the example's stack file, or `None` (said) when the example cannot
/// run here.
fn example_or_skip() -> Option<(PathBuf, String)> {
    let pg_bin = match prerequisites() {
        Ok(bin) => bin,
        Err(reason) => {
            eprintln!("skipping: {reason}");
            return None;
        }
    };
    let example = repo_dir().join("examples/servers");
    let yaml = std::fs::read_to_string(example.join("tug.yaml")).expect("read the example");
    Some((pg_bin, yaml))
}

/// Distinct free ports for PostgreSQL, Redis and the API.
fn free_ports() -> [u16; 3] {
    loop {
        let ports = [harness::free_port(), harness::free_port(), harness::free_port()];
        if ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2] {
            return ports;
        }
    }
}

/// `GET path` on 127.0.0.1:port: the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to :{port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// `sql` run with `psql` inside the API's instance (which has DATABASE_URL): its answer, trimmed.
fn query(stack: &Stack, pg_bin: &Path, sql: &str) -> String {
    let psql = pg_bin.join("psql");
    let script = format!("{} \"$DATABASE_URL\" -tAc \"{sql}\"", psql.display());
    let run = stack.tug(&["exec", "api", "--", "sh", "-c", &script]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.all().contains("@127.0.0.1"), "the connection string was shown: {}", run.all());
    run.stdout.trim().to_string()
}

/// `redis-cli` against 127.0.0.1:`port`: its answer, trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output();
    String::from_utf8_lossy(&out.expect("redis-cli").stdout).trim().to_string()
}

fn row<'a>(rows: &'a [Value], instance: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["instance"] == instance)
}

fn state<'a>(rows: &'a [Value], instance: &str) -> &'a str {
    row(rows, instance).and_then(|r| r["state"].as_str()).unwrap_or("absent")
}

fn started(rows: &[Value], instance: &str) -> bool {
    row(rows, instance).is_some_and(|r| r["started_at"].is_string())
}

/// `tug up -d`, with `tug ps --json` polled meanwhile: every snapshot seen.
fn up_watched(stack: &Stack) -> Vec<Vec<Value>> {
    std::thread::scope(|scope| {
        let up = scope.spawn(|| stack.tug(&["up", "-d", "--timeout", "60s"]));
        let mut snapshots = Vec::new();
        while !up.is_finished() {
            let ps = stack.tug(&["ps", "--json"]);
            if ps.code == 0
                && let Ok(Value::Array(rows)) = serde_json::from_str(&ps.stdout)
            {
                snapshots.push(rows);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let up = up.join().expect("tug up");
        assert_eq!(up.code, 0, "tug up -d failed:\n{}", up.all());
        snapshots
    })
}

/// Nothing starts before what it depends on is there, in any snapshot.
fn check_gating(snapshots: &[Vec<Value>]) {
    let rules: [(&str, &[(&str, &str)]); 5] = [
        ("pg-init-1", &[("pg-prepare-1", "completed")]),
        ("postgres-1", &[("pg-init-1", "completed")]),
        ("migrate-1", &[("postgres-1", "healthy")]),
        ("api-1", &[("postgres-1", "healthy"), ("redis-1", "healthy"), ("migrate-1", "completed")]),
        ("redis-1", &[]),
    ];
    for rows in snapshots {
        for (instance, needs) in rules {
            if started(rows, instance) {
                for (dependency, wanted) in needs {
                    assert_eq!(
                        state(rows, dependency),
                        *wanted,
                        "{instance} started while {dependency} was not {wanted}: {rows:#?}"
                    );
                }
            }
        }
    }
}

/// The first `health.at` of a passing probe seen for `instance`.
fn first_healthy(snapshots: &[Vec<Value>], instance: &str) -> String {
    snapshots
        .iter()
        .filter_map(|rows| row(rows, instance))
        .filter(|r| r["health"]["ok"] == true)
        .filter_map(|r| r["health"]["at"].as_str())
        .min()
        .unwrap_or_else(|| panic!("{instance} was never seen healthy"))
        .to_string()
}

/// `instance`'s pid, from the last `tug ps`.
fn pid(rows: &[Value], instance: &str) -> i32 {
    row(rows, instance).and_then(|r| r["pid"].as_i64()).unwrap_or_else(|| panic!("{instance} has no pid: {rows:#?}"))
        as i32
}

fn stat_fields(pid: i32) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// `roots` and every live process descending from them or in their process groups.
/// (PostgreSQL's children call setsid and overwrite their environment with their
/// titles, so neither the group nor `TUG_STATE_DIR` finds them.)
fn family(roots: &[i32]) -> Vec<i32> {
    let mut all: Vec<i32> = roots.to_vec();
    loop {
        let before = all.len();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if let Some((ppid, pgrp)) = stat_fields(pid)
                && !all.contains(&pid)
                && (all.contains(&ppid) || roots.contains(&pgrp))
            {
                all.push(pid);
            }
        }
        if all.len() == before {
            return all;
        }
    }
}

fn uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("a Uid line");
    line.split_whitespace().nth(2).and_then(|u| u.parse().ok()).expect("the effective uid")
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// `tug down`, then nothing of the stack is left: no process, no listener.
fn down_leaves_nothing(stack: &Stack, processes: &[i32], ports: &[u16]) {
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "tug down failed:\n{}", down.all());
    for pid in processes {
        assert!(harness::wait_gone(*pid, Duration::from_secs(10)), "process {pid} survived tug down");
    }
    assert!(harness::stack_processes(&stack.state_dir()).is_empty(), "processes of the stack are left");
    for port in ports {
        assert!(TcpStream::connect(("127.0.0.1", *port)).is_err(), "something still listens on {port}");
    }
}

/// The example's stack from `yaml`, with its app folder, PostgreSQL's programs and free
/// ports: (the stack, [PostgreSQL's, Redis's, the API's port]).
fn example_stack(label: &str, yaml: &str, pg_bin: &Path) -> (Stack, [u16; 3]) {
    let example = repo_dir().join("examples/servers");
    let mut stack = Stack::new(label, yaml);
    crate::copy_dir(&example.join("app"), &stack.path().join("app"), &["__pycache__", ".tug"]);
    let ports = free_ports();
    let [pg_port, redis_port, api_port] = ports;
    for (name, value) in [
        ("PG_BIN", pg_bin.display().to_string()),
        ("PG_PORT", pg_port.to_string()),
        ("REDIS_PORT", redis_port.to_string()),
        ("API_PORT", api_port.to_string()),
    ] {
        stack.env.push((name.into(), value));
    }
    (stack, ports)
}

#[test]
fn postgres_redis_and_an_api_start_gated_and_serve() {
    let started = Instant::now();
    let Some((pg_bin, yaml)) = example_or_skip() else { return };
    let (stack, [pg_port, redis_port, api_port]) = example_stack("servers", &yaml, &pg_bin);
    let check = stack.tug(&["check"]);
    assert_eq!(check.code, 0, "tug check:\n{}", check.all());
    assert!(!check.all().contains("warning["), "tug check:\n{}", check.all());

    // First start: the cluster is created, then everything comes up in order.
    let snapshots = up_watched(&stack);
    let rows = stack.ps();
    for (instance, wanted) in [
        ("pg-prepare-1", "completed"),
        ("pg-init-1", "completed"),
        ("migrate-1", "completed"),
        ("postgres-1", "healthy"),
        ("redis-1", "healthy"),
        ("api-1", "healthy"),
    ] {
        assert_eq!(state(&rows, instance), wanted, "{instance}: {rows:#?}");
    }
    check_gating(&snapshots);
    let at = |instance: &str| row(&rows, instance).and_then(|r| r["started_at"].as_str()).unwrap().to_string();
    let (pg_healthy, redis_healthy) = (first_healthy(&snapshots, "postgres-1"), first_healthy(&snapshots, "redis-1"));
    assert!(
        at("migrate-1") > pg_healthy,
        "migrate started {} before postgres was healthy at {pg_healthy}",
        at("migrate-1")
    );
    assert!(at("api-1") > pg_healthy, "api started {} before postgres was healthy at {pg_healthy}", at("api-1"));
    assert!(at("api-1") > redis_healthy, "api started {} before redis was healthy at {redis_healthy}", at("api-1"));
    let migrate_log = stack.log("migrate", "migrate-1");
    let migrated_at = migrate_log.lines().find(|l| l.contains("migrations done")).and_then(|l| l.split(' ').next());
    assert!(migrated_at.is_some_and(|t| at("api-1").as_str() > t), "api started before migrate ended:\n{migrate_log}");
    // The API saw both servers, and the table, when it started.
    let api_log = stack.log("api", "api-1");
    assert!(api_log.contains("(1 greetings), redis "), "{api_log}");

    // Each server runs as its own user.
    let (postgres, redis) = (pid(&rows, "postgres-1"), pid(&rows, "redis-1"));
    assert_eq!(uid(postgres), uid_of("postgres").unwrap(), "postgres runs as `postgres`");
    assert_eq!(uid(redis), uid_of("redis").unwrap(), "redis runs as `redis`");
    let cmdline = std::fs::read(format!("/proc/{postgres}/cmdline")).unwrap_or_default();
    assert!(cmdline.starts_with(pg_bin.join("postgres").as_os_str().as_encoded_bytes()), "{cmdline:?}");
    let data = stack.state_dir().join("pg");
    assert!(data.join("PG_VERSION").is_file(), "pg-init made no cluster in {}", data.display());

    // The API answers with data from both: the greeting from PostgreSQL, the counter from Redis.
    assert_eq!(get(api_port, "/health").0, 200);
    let answer = |n: u64| {
        let (status, body) = get(api_port, "/");
        assert_eq!(status, 200, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(json["hits"], n, "{json}");
        assert_eq!(json["greetings"][0]["text"], "hello from PostgreSQL", "{json}");
        assert!(json["postgres"].as_str().is_some_and(|v| !v.is_empty()), "{json}");
        json
    };
    answer(1);
    answer(2);

    // Deploys run the migrations first, once each (`deploy.before`), with the new configuration.
    let query = |sql: &str| query(&stack, &pg_bin, sql);
    assert_eq!(query("select count(*) from migration_runs"), "1", "the first `up` ran the migrations once");
    let revision =
        |stack: &Stack| row(&stack.ps(), "api-1").and_then(|r| r["revision"].as_str()).unwrap_or_default().to_string();
    let first = revision(&stack);
    let deployed = yaml.replace(
        r#"PYTHONDONTWRITEBYTECODE: "1" }
    depends_on:"#,
        r#"PYTHONDONTWRITEBYTECODE: "1", RELEASE: "2" }
    depends_on:"#,
    );
    assert_ne!(deployed, yaml, "the API's environment changes");
    stack.dir.write("tug.yaml", &deployed);
    let run = stack.tug(&["deploy", "--timeout", "60s"]);
    assert_eq!(run.code, 0, "tug deploy:\n{}", run.all());
    assert_eq!(query("select count(*) from migration_runs"), "2", "once per deploy");
    let second = revision(&stack);
    assert_ne!(second, first, "the new API runs");
    assert_eq!(get(api_port, "/health").0, 200);
    let migrate = stack.log("migrate", "migrate-before");
    assert!(migrate.contains("applied 002_runs.sql") && migrate.contains("migrations done"), "{migrate}");
    // A migration that fails stops the deploy: the running API keeps serving, and the deploy,
    // the history and the rollout status say why.
    stack.dir.write("app/migrations/003_broken.sql", "SELEC 'not sql';\n");
    stack.dir.write("tug.yaml", &deployed.replace(r#"RELEASE: "2""#, r#"RELEASE: "3""#));
    let run = stack.tug(&["deploy", "--timeout", "60s"]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("deploy.before: the job `migrate` failed (exit code 1)"), "{}", run.all());
    assert!(run.stderr.contains("syntax error"), "PostgreSQL's own words are quoted:\n{}", run.all());
    assert!(!run.all().contains("postgresql://app:"), "no connection string, no password:\n{}", run.all());
    assert_eq!(revision(&stack), second, "the API was not replaced");
    answer(3);
    let history = stack.tug(&["history", "api", "--json"]);
    let history: Value = serde_json::from_str(&history.stdout).expect("history JSON");
    assert_eq!(history[0]["outcome"], "failed", "{history:#}");
    assert!(history[0]["reason"].as_str().is_some_and(|r| r.contains("migrate")), "{history:#}");
    std::fs::remove_file(stack.path().join("app/migrations/003_broken.sql")).expect("remove the broken migration");
    stack.dir.write("tug.yaml", &yaml);

    let rows = stack.ps();
    let (postgres, redis, api) = (pid(&rows, "postgres-1"), pid(&rows, "redis-1"), pid(&rows, "api-1"));
    let processes = family(&[postgres, redis, api]);
    assert!(processes.len() > 3, "PostgreSQL's own processes are found too: {processes:?}");
    down_leaves_nothing(&stack, &processes, &[pg_port, redis_port, api_port]);

    // A second start keeps the cluster and the database, and starts again.
    up_watched(&stack);
    let rows = stack.ps();
    assert_eq!(state(&rows, "pg-init-1"), "completed", "{rows:#?}");
    assert_eq!(state(&rows, "api-1"), "healthy", "{rows:#?}");
    assert!(stack.log("pg-init", "pg-init-1").contains("cluster already initialised"));
    let migrate_log = stack.log("migrate", "migrate-1");
    assert_eq!(count(&migrate_log, "migrations done"), 2, "{migrate_log}");
    assert_eq!(count(&migrate_log, "created database app"), 1, "{migrate_log}");
    answer(1); // Redis keeps nothing (--save ''): a new count.
    let processes = family(&[pid(&rows, "postgres-1"), pid(&rows, "redis-1"), pid(&rows, "api-1")]);
    down_leaves_nothing(&stack, &processes, &[pg_port, redis_port, api_port]);
    eprintln!(
        "servers test: {:.1}s, {} snapshots of the first start",
        started.elapsed().as_secs_f64(),
        snapshots.len()
    );
}

/// The same servers behind tug's router with no `protocol` given: each connection is detected
/// (PostgreSQL's startup message, Redis's RESP) and served as TCP; real `psql` and `redis-cli`
/// talk through the routers' ports.
#[test]
fn postgres_and_redis_through_the_router_with_no_protocol_given() {
    let Some((pg_bin, yaml)) = example_or_skip() else { return };
    // PostgreSQL and Redis behind the router, protocol not given.
    let mut service = "";
    let routed: String = yaml
        .lines()
        .filter(|l| {
            if l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':') {
                service = l.trim().trim_end_matches(':');
            }
            let db = service == "postgres" || service == "redis";
            !(db && (l.trim() == "protocol: tcp" || l.trim().starts_with("proxy: false")))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(routed.matches("proxy: false").count(), 1, "{routed}");
    assert_eq!(routed.matches("protocol: tcp").count(), 0);
    let (stack, [_, redis_port, api_port]) = example_stack("servers-routed", &routed, &pg_bin);
    stack.up();
    // redis-cli through the router's port.
    let redis = |args: &[&str]| redis_cli(redis_port, args);
    assert_eq!(redis(&["set", "through", "the-router"]), "OK");
    assert_eq!(redis(&["get", "through"]), "the-router");
    // psql through the router's port, from inside the API (which has DATABASE_URL).
    assert_eq!(query(&stack, &pg_bin, "select 40 + 2"), "42");
    // The API, which reads PostgreSQL and counts in Redis through the routers, answers.
    let (status, body) = get(api_port, "/");
    assert_eq!(status, 200, "{body}");
    let stats = stack.tug(&["stats", "--json"]);
    let stats: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
    for service in ["postgres", "redis"] {
        let s = stats["services"].as_array().unwrap().iter().find(|s| s["service"] == service).expect(service);
        assert_eq!(s["protocol"], "auto", "{s:#}");
        assert!(s["total"]["requests"].as_u64().unwrap_or(0) > 0, "nothing went through {service}'s router: {s:#}");
    }
}

/// `tug backup` of the example's real PostgreSQL and Redis; the folder destroyed; `tug restore`
/// into a new folder finds every row and key. The archive shows no secret and no data without
/// the key; a changed archive and another project's archive are refused, changing nothing.
#[test]
fn a_backup_of_postgres_and_redis_restores_into_a_new_folder() {
    let Some((pg_bin, yaml)) = example_or_skip() else { return };
    let (stack, [_, redis_port, api_port]) = example_stack("servers-backup", &yaml, &pg_bin);
    stack.up();
    let query = |stack: &Stack, sql: &str| query(stack, &pg_bin, sql);
    let redis = redis_cli;
    // Data only the backup can bring back: a row, Redis keys of several types, with a TTL.
    query(&stack, "INSERT INTO greetings (id, text) VALUES (2, 'kept-by-the-backup-row')");
    assert_eq!(redis(redis_port, &["set", "kept-key", "kept-by-the-backup-key"]), "OK");
    assert_eq!(redis(redis_port, &["rpush", "kept-list", "a", "b", "c"]), "3");
    assert_eq!(redis(redis_port, &["set", "kept-ttl", "v", "EX", "3600"]), "OK");
    assert_eq!(get(api_port, "/").0, 200); // `hits` is 1 in Redis now.
    // The secret, as PostgreSQL's instance sees it (tug masks it in `exec`'s output).
    let secret_file = stack.state_dir().join("pg-run/pg-password");
    let run = stack.tug(&[
        "exec",
        "postgres",
        "--",
        "sh",
        "-c",
        &format!("printf %s \"$POSTGRES_PASSWORD\" > {}", secret_file.display()),
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    let password = std::fs::read_to_string(&secret_file).expect("the password");
    std::fs::remove_file(&secret_file).expect("remove the password's copy");
    assert_eq!(password.len(), 40, "the generated password");

    let archive = stack.path().join("saved.tug-backup");
    let backup = stack.tug(&["backup", "--out", archive.to_str().unwrap()]);
    assert_eq!(backup.code, 0, "tug backup:\n{}", backup.all());
    assert!(backup.stderr.contains("dump:postgres") && backup.stderr.contains("dump:redis"), "{}", backup.all());
    assert!(!backup.all().contains(&password), "{}", backup.all());
    let bytes = std::fs::read(&archive).expect("the archive");
    let mode = std::fs::metadata(&archive).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "the archive is the user's only");
    for plain in [password.as_str(), "kept-by-the-backup-row", "kept-by-the-backup-key", "kept-list", "CREATE TABLE"] {
        assert!(!bytes.windows(plain.len()).any(|w| w == plain.as_bytes()), "`{plain}` is readable in the archive");
    }
    // The key kept away from the host; then the host's folder is lost.
    let key = std::fs::read(stack.state_dir().join("secrets.key")).expect("the secrets key");
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    let saved = crate::TempDir::new("backup-saved");
    let kept_archive = saved.write("saved.tug-backup", "");
    std::fs::copy(&archive, &kept_archive).expect("copy the archive");
    let kept_key = saved.path().join("secrets.key");
    std::fs::write(&kept_key, &key).expect("keep the key");
    let old_state = stack.state_dir();
    drop(stack);
    assert!(!old_state.exists(), "the old folder is gone");

    // A new folder (new ports), the same project.
    let (restored, [_, redis_port, api_port]) = example_stack("servers-restored", &yaml, &pg_bin);
    let kept = kept_archive.to_str().unwrap();
    // Without the key, and with a changed archive: refused, nothing written.
    let run = restored.tug(&["restore", kept]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("--key-file"), "{}", run.all());
    let mut tampered = std::fs::read(&kept_archive).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let tampered_path = saved.write("tampered.tug-backup", "");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let run = restored.tug(&["restore", tampered_path.to_str().unwrap(), "--key-file", kept_key.to_str().unwrap()]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("fails its integrity check") && run.stderr.contains("nothing was restored"),
        "{}",
        run.all()
    );
    assert!(!restored.state_dir().join("secrets.enc").exists(), "a refused archive wrote nothing");
    // Another project's archive.
    let other = crate::TempDir::new("backup-other");
    other.write("tug.yaml", "name: other\nservices:\n  a: { command: [sleep, '100'] }\n");
    let run = crate::tug(other.path(), &["restore", kept, "--key-file", kept_key.to_str().unwrap()], &[], None);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("is a backup of the project `servers`, and this stack is `other`"), "{}", run.all());

    // The restore: state, then data, then the whole stack.
    let run = restored.tug(&["restore", kept, "--key-file", kept_key.to_str().unwrap()]);
    assert_eq!(run.code, 0, "tug restore:\n{}", run.all());
    assert!(run.stderr.contains("loaded dump:postgres") && run.stderr.contains("loaded dump:redis"), "{}", run.all());
    assert!(!run.all().contains(&password), "{}", run.all());
    assert_eq!(query(&restored, "SELECT text FROM greetings WHERE id = 2"), "kept-by-the-backup-row");
    assert_eq!(redis(redis_port, &["get", "kept-key"]), "kept-by-the-backup-key");
    assert_eq!(redis(redis_port, &["lrange", "kept-list", "0", "-1"]), "a\nb\nc");
    let ttl: i64 = redis(redis_port, &["ttl", "kept-ttl"]).parse().unwrap_or(-9);
    assert!((3000..=3600).contains(&ttl), "the TTL came back: {ttl}");
    // The API counts on from the restored `hits`, with the restored password.
    let (status, body) = get(api_port, "/");
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["hits"], 2, "{json}");
    // The secret store and the history came back too.
    assert_eq!(std::fs::read(restored.state_dir().join("secrets.key")).unwrap(), key);
    let history = restored.tug(&["history", "api", "--json"]);
    assert_eq!(history.code, 0, "{}", history.all());
    let down = restored.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
}
