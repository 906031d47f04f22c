//! `tug doctor`: each check against a machine made to fail it (a folder others can read, a
//! secret that breaks its rule, a full disk, a taken port, no cgroups, no engine, a missing
//! image, a registry down, a plain registry in production, a registry whose clock is off), with
//! the exit code scripts read and `--json`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Stack, free_port};

fn doctor(stack: &Stack, extra: &[&str], env: &[(&str, &str)]) -> (i32, Vec<Value>) {
    let mut args = vec!["doctor", "--json"];
    args.extend_from_slice(extra);
    let run = stack.tug_with(&args, env);
    let findings: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    (run.code, findings.as_array().cloned().unwrap_or_default())
}

/// The findings of `check`, as (status, message, fix).
fn of<'a>(findings: &'a [Value], check: &str) -> Vec<(&'a str, &'a str, &'a str)> {
    findings
        .iter()
        .filter(|f| f["check"] == check)
        .map(|f| {
            (f["status"].as_str().unwrap_or(""), f["message"].as_str().unwrap_or(""), f["fix"].as_str().unwrap_or(""))
        })
        .collect()
}

fn failed_with(findings: &[Value], check: &str, says: &str) {
    let found = of(findings, check);
    assert!(
        found.iter().any(|(status, message, fix)| *status == "failed" && message.contains(says) && !fix.is_empty()),
        "{check}: no failure saying `{says}`: {findings:#?}"
    );
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_sound_host_passes_and_a_readable_state_folder_or_a_broken_secret_fails() {
    let yaml = "name: doc\nsettings:\n  TOKEN: { type: secret, min_length: 16 }\nservices:\n  app: { command: [sleep, '100'], secrets: [TOKEN] }\n";
    let stack = Stack::new("doctor-basic", yaml);
    let set = crate::tug(stack.path(), &["secrets", "set", "TOKEN"], &[], Some("a-secret-value-0123456789"));
    assert_eq!(set.code, 0, "{}", set.all());
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(code, 0, "{findings:#?}");
    assert_eq!(of(&findings, "secrets")[0].0, "ok");
    assert_eq!(of(&findings, "state folder")[0].0, "ok");
    // Human output: a line a check, exit code the same.
    let human = stack.tug(&["doctor"]);
    assert_eq!(human.code, 0, "{}", human.all());
    assert!(human.stdout.contains("✔ state folder") && human.stdout.contains("✔ disk"), "{}", human.all());

    // A state folder made beforehand as 0755.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(stack.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "state folder", "is 0755: other users can read");
    std::fs::set_permissions(stack.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();

    // The rule tightened after the value was stored: the secret no longer meets it.
    stack.dir.write("tug.yaml", &yaml.replace("min_length: 16", "min_length: 64"));
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "secrets", "settings.TOKEN");
    let shown = serde_json::to_string(&findings).unwrap();
    assert!(!shown.contains("a-secret-value"), "a finding quotes the secret: {shown}");
}

#[test]
fn a_taken_port_fails_unless_this_stack_holds_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = |port: u16| format!("name: ports\nservices:\n  web: {{ command: \"{{demo}}\", port: {port} }}\n");
    let stack = Stack::new("doctor-ports", &yaml(port));
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "ports", &port.to_string());
    drop(taken);
    // Once the stack itself holds its port, that is no finding.
    let free = free_port();
    stack.dir.write("tug.yaml", &yaml(free).replace("{demo}", &crate::harness::demo_bin().display().to_string()));
    stack.up();
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(of(&findings, "ports")[0].0, "ok", "{findings:#?}");
    assert_eq!(code, 0, "{findings:#?}");
    assert_eq!(stack.tug(&["down"]).code, 0);
}

#[test]
fn a_full_disk_fails() {
    if !root() {
        eprintln!("skipping: mounting a small tmpfs needs root");
        return;
    }
    let stack = Stack::new("doctor-disk", "name: disk\nservices:\n  app: { command: [sleep, '100'] }\n");
    let small = stack.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&small).status();
    assert!(mounted.is_ok_and(|s| s.success()), "mount a 1 MiB tmpfs");
    let state = small.join("state");
    let (code, findings) = doctor(&stack, &[], &[("TUG_STATE_DIR", state.to_str().unwrap())]);
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "disk", "free of");
}

#[test]
fn resources_without_cgroups_fail() {
    if !root() || Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipping: hiding the cgroup file system needs root and unshare");
        return;
    }
    let stack = Stack::new(
        "doctor-cgroups",
        "name: limits\nservices:\n  app: { command: [sleep, '100'], resources: { memory: 64Mi } }\n",
    );
    // The same machine with its cgroup file system hidden (a private mount namespace).
    let script = "mount -t tmpfs none /sys/fs/cgroup && exec \"$@\"";
    let wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"];
    let run = stack.tug_under(&wrapper, &["doctor", "--json"], &[]);
    let findings: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    let findings = findings.as_array().cloned().unwrap_or_default();
    assert_eq!(run.code, 1, "{findings:#?}");
    failed_with(&findings, "cgroups", "`app`'s `resources` cannot be enforced here");
}

#[test]
fn no_engine_and_a_missing_image_fail() {
    let stack = Stack::new(
        "doctor-engine",
        "name: images\nengine: unix:///nonexistent/docker.sock\nservices:\n  app: { image: busybox:doctor-missing, pull: never }\n",
    );
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "engine", "/nonexistent/docker.sock");
    // The machine's engine answers, but the image is not there.
    stack.dir.write("tug.yaml", "name: images\nservices:\n  app: { image: busybox:doctor-missing, pull: never }\n");
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(of(&findings, "engine")[0].0, "ok", "{findings:#?}");
    assert!(
        of(&findings, "engine disk").iter().all(|f| f.1.contains("the engine's images and volumes")),
        "{findings:#?}"
    );
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "images", "busybox:doctor-missing is not on the engine, and `pull: never`");
    // With the default pull policy it is a warning: exit 3.
    stack.dir.write("tug.yaml", "name: images\nservices:\n  app: { image: busybox:doctor-missing }\n");
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(code, 3, "{findings:#?}");
    assert_eq!(of(&findings, "images")[0].0, "warning", "{findings:#?}");
}

/// A redis-server of the test's own.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_registry_down_plain_in_production_or_with_its_clock_off_fails() {
    let yaml = |port: u16| {
        format!(
            "name: hosts\nenvironments: [development, production]\nregistry: redis://127.0.0.1:{port}/0\nservices:\n  app: {{ command: [sleep, '100'] }}\n"
        )
    };
    // Down.
    let closed = free_port();
    let stack = Stack::new("doctor-registry", &yaml(closed));
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "registry", &format!("127.0.0.1:{closed} does not answer"));
    // Up: fine in development, refused in production without TLS.
    let redis = Redis::start();
    stack.dir.write("tug.yaml", &yaml(redis.1));
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!((code, of(&findings, "registry")[0].0, of(&findings, "clock")[0].0), (0, "ok", "ok"), "{findings:#?}");
    let (code, findings) = doctor(&stack, &["--env", "production"], &[]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "registry", "plain redis://");
    drop(redis);
    // A registry whose clock runs 30 s ahead of this host's. libfaketime cannot run
    // redis-server (its allocator's clock calls recurse), and the host's own clock is every
    // test's: a peer speaking Redis's protocol answers PING and TIME instead.
    let skewed = SkewedRedis::start(Duration::from_secs(30));
    stack.dir.write("tug.yaml", &yaml(skewed.0));
    let (code, findings) = doctor(&stack, &[], &[]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "clock", "from this host's");
    let ms: u64 = of(&findings, "clock")[0]
        .1
        .split("its clock is ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((29_000..=31_000).contains(&ms), "the skew measured: {ms} ms");
}

/// Answers PING with PONG and TIME with this host's time plus `ahead`, in RESP, to every
/// connection; anything else gets an error.
struct SkewedRedis(u16);

impl SkewedRedis {
    fn start(ahead: Duration) -> SkewedRedis {
        use std::io::{BufRead, BufReader, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    loop {
                        // A request: *N then N bulk strings ($len, text).
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let n: usize = line.trim().trim_start_matches('*').parse().unwrap_or(0);
                        let mut words = Vec::new();
                        for _ in 0..n * 2 {
                            line.clear();
                            let _ = reader.read_line(&mut line);
                            if !line.starts_with('$') {
                                words.push(line.trim().to_ascii_uppercase());
                            }
                        }
                        let answer = match words.first().map(String::as_str) {
                            Some("PING") => "+PONG\r\n".to_string(),
                            Some("TIME") => {
                                let now = std::time::SystemTime::now() + ahead;
                                let t = now.duration_since(std::time::UNIX_EPOCH).unwrap();
                                let (secs, micros) = (t.as_secs().to_string(), t.subsec_micros().to_string());
                                format!("*2\r\n${}\r\n{secs}\r\n${}\r\n{micros}\r\n", secs.len(), micros.len())
                            }
                            _ => "-ERR unknown command\r\n".to_string(),
                        };
                        if out.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SkewedRedis(port)
    }
}

#[test]
fn a_remote_doctor_checks_that_daemon_answers_for_this_stack_and_that_no_secret_is_made_here() {
    let api_port = free_port();
    let yaml = |name: &str| {
        format!(
            "name: {name}\napi: {{ listen: 127.0.0.1:{api_port} }}\nsettings:\n  TOKEN: {{ type: secret, generate: {{ length: 24 }} }}\nservices:\n  app: {{ command: [sleep, '100'], secrets: [TOKEN] }}\n"
        )
    };
    let stack = Stack::new("doctor-remote", &yaml("doc"));
    stack.up();
    let key = std::fs::read_to_string(stack.state_dir().join("api.key")).unwrap().trim().to_string();
    let url = format!("http://127.0.0.1:{api_port}");
    // Another machine: its own folder with the stack file, nothing of that host's.
    let client = crate::TempDir::new("doctor-client");
    let doctor_there = |name: &str, env: &[(&str, &str)]| {
        client.write("tug.yaml", &yaml(name));
        let run = crate::tug(client.path(), &["--host", &url, "doctor", "--json"], env, None);
        let findings: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
        (run.code, findings.as_array().cloned().unwrap_or_default())
    };
    let value = ("TOKEN", "a-value-given-here-0123456789");
    let (code, findings) = doctor_there("doc", &[("TUG_API_KEY", &key), value]);
    assert_eq!(code, 0, "{findings:#?}");
    assert!(!serde_json::to_string(&findings).unwrap().contains(value.1), "the secret was shown: {findings:#?}");
    let host = of(&findings, "host");
    assert!(host[0].0 == "ok" && host[0].1.contains("answers: tug ") && host[0].1.contains("1 instance"), "{host:?}");
    // That host's state folder and disk, as the daemon there sees them; none of this machine's.
    let there = stack.state_dir().display().to_string();
    let folder = of(&findings, "state folder");
    assert!(
        folder.len() == 1 && folder[0].0 == "ok" && folder[0].1 == format!("there: {there} is 0700, yours"),
        "{folder:?}"
    );
    let disk = of(&findings, "disk");
    assert!(disk.len() == 1 && disk[0].1.starts_with("there: ") && disk[0].1.ends_with(&there), "{disk:?}");
    assert_eq!(of(&findings, "engine")[0].0, "skipped", "no image in this stack");
    // A wrong key, a daemon of another stack, a secret that would be made here: each fails.
    let (code, findings) = doctor_there("doc", &[("TUG_API_KEY", "not-the-key-0123456789"), value]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "host", "signed");
    let (code, findings) = doctor_there("other", &[("TUG_API_KEY", &key), value]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "host", "runs the stack `doc`");
    let (code, findings) = doctor_there("doc", &[("TUG_API_KEY", &key)]);
    assert_eq!(code, 1, "{findings:#?}");
    failed_with(&findings, "secrets", "TOKEN would be generated here");
}
