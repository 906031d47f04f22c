//! The daemon's network endpoint (`api.listen`): the control API over TLS and mTLS from a
//! remote `tug --host` (and the sources it sends), refusals (no certificate, an untrusted one, a bad signature, plain
//! HTTP on a TLS listener, a non-loopback address without TLS), `/metrics` scraped by a real
//! Prometheus, and webhooks delivered (and retried) to a receiver in the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::TempDir;
use crate::harness::{Stack, free_port};

/// A throwaway PKI made with the `openssl` CLI in `dir` (EC P-256: fast): `ca`, a `server`
/// certificate for 127.0.0.1 and localhost, a `client` certificate signed by `ca`, and `rogue`,
/// a client certificate from an unrelated CA.
pub fn make_pki(dir: &Path) {
    let script = r#"
set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
for ca in ca rogue-ca; do
  openssl req -x509 $ec -days 2 -subj "/CN=tug test $ca" -keyout $ca.key -out $ca.pem 2>/dev/null
done
leaf() { # name ca extensions
  openssl req $ec -subj "/CN=tug test $1" -keyout $1.key -out $1.csr 2>/dev/null
  printf '%s\nbasicConstraints=critical,CA:FALSE\n' "$3" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -days 2 -extfile $1.ext -out $1.pem 2>/dev/null
}
leaf server ca "subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf client ca "subjectAltName=DNS:tug-client"
leaf rogue rogue-ca "subjectAltName=DNS:tug-client"
"#;
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("sh and openssl");
    assert!(out.status.success(), "making the PKI: {}", String::from_utf8_lossy(&out.stderr));
}

/// An `api` on 127.0.0.1:`api_port` with the PKI's server certificate.
fn tls_api(api_port: u16, pki: &Path) -> String {
    format!(
        "{{ listen: 127.0.0.1:{api_port}, tls: {{ cert: {}, key: {} }} }}",
        pki.join("server.pem").display(),
        pki.join("server.key").display()
    )
}

fn web_stack(name: &str, port: u16, api: &str, version: &str, extra: &str) -> String {
    format!(
        r#"
name: {name}
api: {api}
{extra}
services:
  web:
    command: "{{demo}}"
    replicas: 2
    port: {port}
    environment: {{ VERSION: "{version}", DEMO_ACCESS_LOG: "1" }}
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
"#
    )
}

fn api_key(stack: &Stack) -> String {
    std::fs::read_to_string(stack.state_dir().join("api.key")).expect("the API key").trim().to_string()
}

/// `tug --host URL ARGS…` run from an empty folder elsewhere: nothing local is used but the key.
fn remote(url: &str, key: &str, tls: &[(&str, PathBuf)], args: &[&str]) -> crate::Run {
    let elsewhere = TempDir::new("remote-cli");
    let mut all: Vec<String> = vec!["--host".into(), url.into()];
    for (flag, path) in tls {
        all.push(flag.to_string());
        all.push(path.display().to_string());
    }
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    crate::tug(elsewhere.path(), &refs, &[("TUG_API_KEY", key)], None)
}

#[test]
fn remote_commands_over_tls_and_mtls_and_what_is_refused() {
    let pki = TempDir::new("endpoint-pki");
    make_pki(pki.path());
    let p = |name: &str| pki.path().join(name);
    let (port, api_port) = (free_port(), free_port());
    let tls = tls_api(api_port, pki.path());
    let stack = Stack::new("endpoint-tls", &web_stack("tlsdemo", port, &tls, "1", ""));
    stack.up();
    let key = api_key(&stack);
    let url = format!("https://127.0.0.1:{api_port}");
    let ca = [("--tls-ca", p("ca.pem"))];

    // ps over TLS, from a folder with nothing of the stack's.
    let ps = remote(&url, &key, &ca, &["ps"]);
    assert_eq!(ps.code, 0, "{}", ps.all());
    assert!(ps.stdout.contains("web-1") && ps.stdout.contains("web-2"), "{}", ps.stdout);
    // Without the CA, the server's certificate is not trusted.
    let untrusted = remote(&url, &key, &[], &["ps"]);
    assert_ne!(untrusted.code, 0, "{}", untrusted.all());
    assert!(untrusted.stderr.contains("certificate"), "{}", untrusted.stderr);
    // A wrong key: every request refused, and said so.
    let wrong = remote(&url, &"ab".repeat(32), &ca, &["ps"]);
    assert_ne!(wrong.code, 0, "{}", wrong.all());
    assert!(wrong.stderr.contains("bad signature"), "{}", wrong.stderr);
    // Plain HTTP on the TLS listener gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", api_port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP answered: {}", String::from_utf8_lossy(&answer));

    // logs -f and deploy over TLS.
    assert_follows_logs(&url, &key, &ca, port);
    remote_deploy(&stack, &url, &key, &ca, &web_stack("tlsdemo", port, &tls, "2", ""), port, "2");
    // A remote deploy cannot move the endpoint it came through: `api` from a remote is ignored.
    assert!(remote(&url, &key, &ca, &["ps"]).code == 0);

    // mTLS: the same endpoint, now requiring client certificates signed by `ca`.
    let mtls = format!(
        "{{ listen: 127.0.0.1:{api_port}, tls: {{ cert: {}, key: {}, client_ca: {} }} }}",
        p("server.pem").display(),
        p("server.key").display(),
        p("ca.pem").display()
    );
    stack.dir.write(
        "tug.yaml",
        &web_stack("tlsdemo", port, &mtls, "2", "")
            .replace("{demo}", &crate::harness::demo_bin().display().to_string()),
    );
    stack.up();
    let with_cert = [("--tls-ca", p("ca.pem")), ("--tls-cert", p("client.pem")), ("--tls-key", p("client.key"))];
    let ps = remote(&url, &key, &with_cert, &["ps"]);
    assert_eq!(ps.code, 0, "mTLS with a good certificate: {}", ps.all());
    let no_cert = remote(&url, &key, &ca, &["ps"]);
    assert_ne!(no_cert.code, 0, "mTLS without a certificate: {}", no_cert.all());
    let rogue = [("--tls-ca", p("ca.pem")), ("--tls-cert", p("rogue.pem")), ("--tls-key", p("rogue.key"))];
    let refused = remote(&url, &key, &rogue, &["ps"]);
    assert_ne!(refused.code, 0, "mTLS with an untrusted certificate: {}", refused.all());
    let bad_hmac = remote(&url, &"cd".repeat(32), &with_cert, &["ps"]);
    assert!(bad_hmac.code != 0 && bad_hmac.stderr.contains("bad signature"), "{}", bad_hmac.all());
    assert_follows_logs(&url, &key, &with_cert, port);
    remote_deploy(&stack, &url, &key, &with_cert, &web_stack("tlsdemo", port, &mtls, "3", ""), port, "3");
    let status = remote(&url, &key, &with_cert, &["rollout", "status", "web", "--json"]);
    assert_eq!(status.code, 0, "{}", status.all());
}

/// A renewed certificate (files rewritten in place, as certbot and cert-manager do) is served
/// from the next connection on, without a restart or a change of `api`; a renewal that does
/// not load keeps the certificate in use.
#[test]
fn renewed_certificate_files_are_served_without_a_restart() {
    let pki = TempDir::new("endpoint-renew");
    make_pki(pki.path());
    let p = |name: &str| pki.path().join(name);
    // The renewal: another server certificate for 127.0.0.1, from the other CA.
    let renew = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=tug test renewed' \
                 -keyout renewed.key -out renewed.csr 2>/dev/null && \
                 printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n' > renewed.ext && \
                 openssl x509 -req -in renewed.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial -days 2 \
                 -extfile renewed.ext -out renewed.pem 2>/dev/null";
    let made = Command::new("sh").arg("-c").arg(renew).current_dir(pki.path()).output().expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (port, api_port) = (free_port(), free_port());
    let tls = tls_api(api_port, pki.path());
    let stack = Stack::new("endpoint-renew", &web_stack("renew", port, &tls, "1", ""));
    stack.up();
    let (key, url) = (api_key(&stack), format!("https://127.0.0.1:{api_port}"));
    let trusting = |ca: &str| remote(&url, &key, &[("--tls-ca", p(ca))], &["ps"]).code == 0;
    assert!(trusting("ca.pem") && !trusting("rogue-ca.pem"));
    // Renewed in place: the key first, then the certificate (a moment where the pair does not
    // match, which must not take the endpoint down).
    std::fs::write(p("server.key"), std::fs::read(p("renewed.key")).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(trusting("ca.pem"), "a half-renewed pair keeps the certificate in use");
    std::fs::write(p("server.pem"), std::fs::read(p("renewed.pem")).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !trusting("rogue-ca.pem") {
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!trusting("ca.pem"), "the old certificate is gone");
    let log = stack.tug(&["logs", "--daemon"]);
    assert!(log.stdout.contains("do not load") && log.stdout.contains("new certificate"), "{}", log.all());
}

/// `tug --host URL logs -f web` shows a line the service logs after it started following.
fn assert_follows_logs(url: &str, key: &str, tls: &[(&str, PathBuf)], port: u16) {
    let logs_dir = TempDir::new("remote-logs");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tug"));
    command.current_dir(logs_dir.path()).args(["--host", url]);
    for (flag, path) in tls {
        command.arg(flag).arg(path);
    }
    let mut follower = command
        .args(["logs", "-f", "--tail", "0", "web"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TUG_API_KEY", key)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let marker = format!("/followed-{}-{port}-{}", std::process::id(), tls.len());
    let mut seen = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen && Instant::now() < deadline {
        let _ = crate::routing::http_once("127.0.0.1", port, "GET", &marker);
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            seen |= line.contains(&marker);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(seen, "remote `logs -f` did not show the request's log line");
}

/// `tug --host URL deploy` of `yaml` from the stack's folder: web then answers `version`.
fn remote_deploy(stack: &Stack, url: &str, key: &str, tls: &[(&str, PathBuf)], yaml: &str, port: u16, version: &str) {
    stack.dir.write("tug.yaml", &yaml.replace("{demo}", &crate::harness::demo_bin().display().to_string()));
    let mut args: Vec<String> = vec!["--host".into(), url.into()];
    for (flag, path) in tls {
        args.push(flag.to_string());
        args.push(path.display().to_string());
    }
    args.extend(["deploy", "--timeout", "60s"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let deploy = stack.tug_with(&refs, &[("TUG_API_KEY", key)]);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    let answer = crate::routing::http_once("127.0.0.1", port, "GET", "/").expect("web answers");
    assert!(answer.1.contains(&format!(r#""version":"{version}""#)), "{answer:?}");
}

#[test]
fn a_source_and_a_large_file_are_sent_over_mtls() {
    let pki = TempDir::new("sources-pki");
    make_pki(pki.path());
    let p = |name: &str| pki.path().join(name);
    let api_port = free_port();
    let api = format!(
        "{{ listen: 127.0.0.1:{api_port}, tls: {{ cert: {}, key: {}, client_ca: {} }} }}",
        p("server.pem").display(),
        p("server.key").display(),
        p("ca.pem").display()
    );
    let yaml =
        |extra: &str| format!("name: mtls\napi: {api}\nservices:\n  idle:\n    command: [sleep, \"1000\"]\n{extra}");
    let stack = Stack::new("endpoint-mtls-sources", &yaml(""));
    stack.up();
    let key = api_key(&stack);
    let client = TempDir::new("mtls-client");
    client.write("tug.yaml", &yaml("  worker:\n    command: [sh, -c, \"echo size=$(wc -c < big.bin); exec sleep 1000\"]\n    working_dir: ./app\n    source: ./app\n    healthcheck: { log: size=, start_interval: 100ms }\n"));
    std::fs::create_dir_all(client.path().join("app")).unwrap();
    // 24 MiB of bytes that do not compress: many TLS records, and more than a request body's cap.
    let big: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(client.path().join("app/big.bin"), &big).unwrap();
    let url = format!("https://127.0.0.1:{api_port}");
    let mut args = vec!["--host".to_string(), url];
    for (flag, file) in [("--tls-ca", "ca.pem"), ("--tls-cert", "client.pem"), ("--tls-key", "client.key")] {
        args.push(flag.into());
        args.push(p(file).display().to_string());
    }
    args.extend(["deploy", "--timeout", "60s"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let deploy = crate::tug(client.path(), &refs, &[("TUG_API_KEY", key.as_str())], None);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    assert!(deploy.stderr.contains("worker: sending its source (24."), "{}", deploy.all());
    let copy = std::fs::read_dir(stack.state_dir().join("revisions/worker")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::read(copy.join("big.bin")).unwrap(), big, "the copy holds every byte sent");
    assert!(
        stack.log("worker", "worker-1").contains(&format!("size={}", 24 << 20)),
        "{}",
        stack.log("worker", "worker-1")
    );
}

/// A secret the host generates on its first `up`.
const TOKEN: &str = "settings:\n  TOKEN: { type: secret, generate: { length: 32, charset: hex } }\n";

#[test]
fn a_remote_deploy_sends_a_source_once_and_the_daemon_runs_its_own_copy() {
    let api_port = free_port();
    let stack = Stack::new(
        "endpoint-sources",
        &format!(
            "name: sent\napi: {{ listen: 127.0.0.1:{api_port} }}\n{TOKEN}services:\n  idle:\n    command: [sleep, \"1000\"]\n    backup: {{ command: echo dumped }}\n"
        ),
    );
    stack.up();
    let key = api_key(&stack);
    let url = format!("http://127.0.0.1:{api_port}");
    // The client's folder: the stack file and the worker's code, which the daemon's host lacks.
    let client = TempDir::new("sources-client");
    client.write(
        "tug.yaml",
        &format!(
            r#"
name: sent
api: {{ listen: 127.0.0.1:{api_port} }}
{TOKEN}services:
  idle:
    command: [sleep, "1000"]
    backup: {{ command: echo dumped }}
  worker:
    command: [sh, run.sh]
    working_dir: ./app
    source: ./app
    healthcheck: {{ log: started, start_interval: 100ms }}
  twin:
    command: [sh, run.sh]
    working_dir: ./app
    source: ./app
    healthcheck: {{ log: started, start_interval: 100ms }}
"#
        ),
    );
    std::fs::create_dir_all(client.path().join("app/lib")).unwrap();
    client.write("app/run.sh", "echo \"started v1 in $(pwd)\"; exec sleep 1000\n");
    client.write("app/lib/data.txt", "some data\n");
    let remote = |args: &[&str]| {
        let mut all = vec!["--host", url.as_str()];
        all.extend(args);
        crate::tug(client.path(), &all, &[("TUG_API_KEY", key.as_str())], None)
    };
    let copies = stack.state_dir().join("revisions/worker");
    let leftovers = |folder: &Path| std::fs::read_dir(folder).map(|d| d.count()).unwrap_or(0);

    // The secret that host generated is not generated again here, with another value.
    let refused = remote(&["deploy", "--timeout", "60s"]);
    assert!(refused.code != 0 && refused.stderr.contains("TOKEN would be generated here"), "{}", refused.all());
    assert!(!client.path().join(".tug/secrets.enc").exists(), "nothing was generated");
    // With that host's store and key, the deploy sends the values it runs with.
    std::fs::create_dir_all(client.path().join(".tug")).unwrap();
    for file in ["secrets.enc", "secrets.key"] {
        std::fs::copy(stack.state_dir().join(file), client.path().join(".tug").join(file)).unwrap();
    }
    let deploy = remote(&["deploy", "--timeout", "60s"]);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    assert!(deploy.stderr.contains("worker: sending its source"), "{}", deploy.all());
    // `idle` runs in this host's stack folder, as before: the client's folder is not this host's.
    assert!(
        deploy.stdout.contains("not changed: idle") || !deploy.all().contains("idle    roll out"),
        "{}",
        deploy.all()
    );
    let log = stack.log("worker", "worker-1");
    assert!(log.contains(&format!("started v1 in {}", copies.display())), "runs from this host's copy: {log}");
    assert_eq!(leftovers(&copies), 1);
    // One folder for two services: the same bundle, sent for each, unpacked for each.
    assert!(deploy.stderr.contains("twin: sending its source"), "{}", deploy.all());
    assert!(stack.log("twin", "twin-1").contains("started v1"), "{}", stack.log("twin", "twin-1"));
    assert_eq!(leftovers(&stack.state_dir().join("uploads")), 0, "the upload is gone once unpacked");
    assert_eq!(leftovers(&client.path().join(".tug/uploads")), 0, "the client's bundle is gone");

    // The same code again: nothing is sent, and nothing changes.
    let plan = remote(&["deploy", "--plan"]);
    assert!(plan.code == 0 && plan.stdout.contains("nothing changes (3 unchanged)"), "{}", plan.all());
    let again = remote(&["deploy", "--timeout", "60s"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(!again.stderr.contains("sending"), "{}", again.all());

    // Edited code: sent, a new revision from a new copy; the old copy stays for a rollback.
    client.write("app/run.sh", "echo \"started v2 in $(pwd)\"; exec sleep 1000\n");
    let edited = remote(&["deploy", "--timeout", "60s"]);
    assert_eq!(edited.code, 0, "{}", edited.all());
    assert!(edited.stderr.contains("worker: sending its source"), "{}", edited.all());
    assert_eq!(leftovers(&copies), 2);
    // The new revision's instance (a rolling deploy starts it beside the old one).
    let logs = stack.state_dir().join("logs/worker");
    let all_logs = || -> String {
        let files =
            std::fs::read_dir(&logs).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
        files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect()
    };
    assert!(all_logs().contains(&format!("started v2 in {}", copies.display())), "{}", all_logs());

    // A remote one-off whose client goes away ends on that host, even one that prints nothing.
    let marker = "sleep 4646";
    let mut interrupted = std::process::Command::new(env!("CARGO_BIN_EXE_tug"))
        .current_dir(client.path())
        .args(["--host", url.as_str(), "run", "idle", "--", "sh", "-c", marker])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TUG_API_KEY", &key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tug");
    assert!(crate::containers::wait_for_process(marker, true), "the remote run's command never ran");
    let _ = interrupted.kill();
    let _ = interrupted.wait();
    assert!(crate::containers::wait_for_process(marker, false), "`{marker}` outlived the remote run");

    // A remote backup is written on that host, in its stack's folder, with its key: the same
    // key a backup made there uses, though this client no longer has any.
    for file in ["secrets.enc", "secrets.key"] {
        std::fs::remove_file(client.path().join(".tug").join(file)).unwrap();
    }
    let backup = remote(&["backup"]);
    assert_eq!(backup.code, 0, "{}", backup.all());
    let archive = PathBuf::from(backup.stdout.trim());
    assert!(archive.starts_with(stack.path().join("backups")) && archive.is_file(), "{}", backup.all());
    let told = backup.stderr.contains("dump:idle") && backup.stderr.contains("that host's secrets key");
    assert!(told, "{}", backup.all());
    assert!(!client.path().join("backups").exists(), "nothing is written here");
    assert!(!client.path().join(".tug/secrets.key").exists(), "no key is made here");
    let local = stack.tug(&["backup", "--out", "local.tug-backup"]);
    assert_eq!(local.code, 0, "{}", local.all());
    let key_id = |file: &Path| {
        let head = String::from_utf8_lossy(&std::fs::read(file).unwrap()[..512]).into_owned();
        let start = head.find("\"key_id\":\"").expect("a key_id in the header") + 10;
        head[start..start + head[start..].find('"').unwrap()].to_string()
    };
    assert_eq!(key_id(&archive), key_id(&stack.path().join("local.tug-backup")), "sealed with the host's key");
    let elsewhere = remote(&["backup", "--out", "here.tug-backup"]);
    assert!(elsewhere.code != 0 && elsewhere.stderr.contains("give an absolute path there"), "{}", elsewhere.all());

    // An upload is authenticated before its body is read, and kept only with its digest.
    let digest = tug_proto::auth::body_digest(b"hello");
    let path = format!("/v1/uploads/{digest}");
    let (code, body) = crate::api::raw(&stack, "PUT", &path, b"hello", None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = crate::api::raw(
        &stack,
        "PUT",
        "/v1/uploads/x",
        b"",
        Some(
            &tug_proto::auth::sign_digest(
                &tug_proto::auth::ApiKey::from_text(&"ab".repeat(32)).unwrap(),
                "PUT",
                "/v1/uploads/x",
                "x",
                tug_proto::unix_now(),
            )
            .unwrap(),
        ),
    );
    assert_eq!(code, 401, "a bad path is not answered before the signature: {body}");
    let api_key = tug_proto::auth::ApiKey::from_text(&key).unwrap();
    let sign = || tug_proto::auth::sign_digest(&api_key, "PUT", &path, &digest, tug_proto::unix_now()).unwrap();
    let (code, body) = crate::api::raw(&stack, "PUT", &path, b"hellx", Some(&sign()));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("does not have the SHA-256"), "{body}");
    assert_eq!(leftovers(&stack.state_dir().join("uploads")), 0, "a refused upload leaves nothing");
    let (code, body) = crate::api::raw(&stack, "PUT", &path, b"hello", Some(&sign()));
    assert_eq!(code, 200, "{body}");
    // Asking for a copy by a name that is not one is refused.
    let (code, body) = crate::api::signed(&stack, "GET", "/v1/sources?service=../x&digest=1", b"");
    assert_eq!(code, 400, "{body}");
}

#[test]
fn a_non_loopback_endpoint_without_tls_needs_insecure() {
    let (port, api_port) = (free_port(), free_port());
    let api = format!("{{ listen: 0.0.0.0:{api_port} }}");
    let stack = Stack::new("endpoint-plain", &web_stack("plain", port, &api, "1", ""));
    let refused = stack.tug(&["up", "-d", "--timeout", "60s"]);
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert!(refused.stderr.contains("api.tls") && refused.stderr.contains("--insecure"), "{}", refused.stderr);
    assert!(stack.daemon_pid().is_none(), "a refused up starts nothing");
    let up = stack.tug(&["up", "-d", "--insecure", "--timeout", "60s"]);
    assert_eq!(up.code, 0, "{}", up.all());
    let ps = remote(&format!("http://127.0.0.1:{api_port}"), &api_key(&stack), &[], &["ps"]);
    assert_eq!(ps.code, 0, "{}", ps.all());
}

/// `tug run` starts what its service depends on, which on a stack that is down starts the
/// endpoint too: a plain non-loopback one needs `--insecure` there as for `up`.
#[test]
fn run_takes_insecure_for_the_endpoint_its_dependencies_start() {
    let (port, api_port) = (free_port(), free_port());
    let api = format!("{{ listen: 0.0.0.0:{api_port} }}");
    let yaml = web_stack("plainrun", port, &api, "1", "")
        + "  tool:\n    kind: job\n    command: [\"sh\", \"-c\", \"echo tool ran\"]\n    depends_on: { web: healthy }\n";
    let stack = Stack::new("endpoint-plain-run", &yaml);
    let refused = stack.tug(&["run", "tool"]);
    assert_ne!(refused.code, 0, "{}", refused.all());
    assert!(refused.stderr.contains("--insecure"), "{}", refused.stderr);
    let run = stack.tug(&["run", "--insecure", "tool"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("tool ran"), "{}", run.all());
    let ps = remote(&format!("http://127.0.0.1:{api_port}"), &api_key(&stack), &[], &["ps"]);
    assert_eq!(ps.code, 0, "the endpoint serves: {}", ps.all());
    let again = stack.tug(&["run", "--insecure", "tool"]);
    assert_eq!(again.code, 0, "{}", again.all());
}

/// A GET with a bearer token on the endpoint; (status, body).
fn bearer_get(port: u16, path: &str, token: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Runs Debian's Prometheus scraping `target` every second with `token`; killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: u16, token: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        dir.write("token", token);
        let config = format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\nscrape_configs:\n  - job_name: tug\n    \
             authorization: {{ credentials_file: {} }}\n    static_configs: [{{ targets: ['127.0.0.1:{target}'] }}]\n",
            dir.path().join("token").display()
        );
        dir.write("prometheus.yml", &config);
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's prometheus (scripts/test installs it)");
        Prometheus { child, port, _dir: dir }
    }

    /// The result vector of an instant query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let Some((200, body)) =
            crate::routing::http_once("127.0.0.1", self.port, "GET", &format!("/api/v1/query?query={encoded}"))
        else {
            return Vec::new();
        };
        let body = body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(body);
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_every_family_with_the_bearer_token() {
    let (port, api_port) = (free_port(), free_port());
    let api = format!("{{ listen: 127.0.0.1:{api_port} }}");
    let yaml = web_stack("metrics", port, &api, "1", "")
        .replace("replicas: 2", "replicas: 3\n    resources: { memory: 64Mi, cpu: 0.5 }");
    let stack = Stack::new("endpoint-metrics", &yaml);
    stack.up();
    // A rolling deploy, so the rollout families have a rollout to describe.
    std::fs::write(
        stack.path().join("tug.yaml"),
        yaml.replace("VERSION: \"1\"", "VERSION: \"2\"")
            .replace("{demo}", &crate::harness::demo_bin().display().to_string()),
    )
    .unwrap();
    let deploy = stack.tug(&["deploy", "--timeout", "60s"]);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    let token = stack.tug(&["token", "metrics"]).stdout.trim().to_string();
    assert_eq!(token.len(), 64, "a token: {token}");
    // Without the token, or with another: refused.
    assert_eq!(bearer_get(api_port, "/metrics", "nope").0, 401);
    // A scrape taken under load passes `promtool check metrics`.
    let load = crate::rollout::Load::start(port, 2, 50);
    std::thread::sleep(Duration::from_secs(1));
    let (status, scrape) = bearer_get(api_port, "/metrics", &token);
    assert_eq!(status, 200, "{scrape}");
    // Asked for gzip, as Prometheus asks: compressed, and the same text once unpacked.
    let gzipped = Command::new("curl")
        .args(["-sS", "-D", "-", "--compressed", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://127.0.0.1:{api_port}/metrics"))
        .output()
        .expect("curl");
    let gzipped = String::from_utf8_lossy(&gzipped.stdout).to_string();
    let (head, body) = gzipped.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.to_ascii_lowercase().contains("content-encoding: gzip"), "{head}");
    assert!(body.contains("# TYPE tug_build_info gauge") && body.contains("tug_instance_up{"), "{body}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{scrape}");
    // Prometheus scrapes it and finds each family with its labels.
    let prometheus = Prometheus::start(api_port, &token);
    let deadline = Instant::now() + Duration::from_secs(30);
    let families = [
        ("tug_build_info", vec!["project", "version"]),
        ("tug_requests_total{class=\"2xx\"}", vec!["project", "service", "revision", "instance", "class"]),
        ("tug_request_duration_seconds_bucket{le=\"0.1\"}", vec!["project", "service", "revision", "instance", "le"]),
        ("tug_request_duration_seconds_count", vec!["service", "instance"]),
        ("tug_request_retries_total", vec!["service", "instance"]),
        ("tug_requests_in_flight", vec!["service", "instance"]),
        ("tug_instance_ejections_total", vec!["service", "instance"]),
        ("tug_instance_up", vec!["project", "service", "revision", "instance"]),
        ("tug_instance_ready", vec!["service", "instance"]),
        ("tug_instance_restarts_total", vec!["service", "instance"]),
        ("tug_instance_cpu_seconds_total", vec!["service", "instance"]),
        ("tug_instance_memory_bytes", vec!["service", "instance"]),
        ("tug_instance_memory_limit_bytes", vec!["service", "instance"]),
        ("tug_rollout_phase", vec!["service", "phase"]),
        ("tug_rollout_weight_ratio", vec!["service"]),
        ("tug_rollouts_rolled_back_total", vec!["service"]),
        ("tug_autoscale_decisions_total", vec!["service"]),
        ("tug_registry_up", vec!["location"]),
    ];
    for (query, labels) in &families {
        let result = loop {
            let result = prometheus.query(query);
            if !result.is_empty() || Instant::now() > deadline {
                break result;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(!result.is_empty(), "Prometheus has no {query}");
        for label in labels {
            assert!(result[0]["metric"][label].is_string(), "{query} lacks `{label}`: {}", result[0]);
        }
    }
    let requests = prometheus.query("sum(tug_requests_total{class=\"2xx\",service=\"web\"})");
    let served: f64 = requests[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(served > 10.0, "the 2xx counter counts the load: {served}");
    let limit = prometheus.query("tug_instance_memory_limit_bytes{service=\"web\"}");
    assert_eq!(limit[0]["value"][1], "67108864");
    let report = load.stop();
    assert!(report.ok() > 0);
    // A removed instance's series go with it.
    let instances_in = |scrape: &str| -> std::collections::BTreeSet<String> {
        scrape
            .lines()
            .filter(|l| l.starts_with("tug_instance_up{"))
            .filter_map(|l| l.split("instance=\"").nth(1)?.split('"').next().map(String::from))
            .collect()
    };
    let before = instances_in(&bearer_get(api_port, "/metrics", &token).1);
    assert_eq!(before.len(), 3, "{before:?}");
    let scale = stack.tug(&["scale", "web=2"]);
    assert_eq!(scale.code, 0, "{}", scale.all());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, scrape) = bearer_get(api_port, "/metrics", &token);
        let after = instances_in(&scrape);
        if after.len() == 2 && after.is_subset(&before) {
            let gone = before.difference(&after).next().unwrap().clone();
            assert!(!scrape.contains(&format!("instance=\"{gone}\"")), "{gone}'s series stayed: {scrape}");
            break;
        }
        assert!(Instant::now() < deadline, "the removed instance's series stayed: {after:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One request the receiver got: its headers (names lowercased), its body, and the status it
/// was answered with.
pub(crate) type Delivery = (Vec<(String, String)>, String, u16);

/// A webhook receiver: answers 500 to the first delivery and 200 to the rest; keeps every
/// request's headers and body.
pub(crate) struct Receiver {
    pub port: u16,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream);
                let mut headers = Vec::new();
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.trim().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let length: usize =
                    headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let mut all = keep.lock().unwrap();
                let status = if all.is_empty() { 500 } else { 200 };
                all.push((headers, String::from_utf8_lossy(&body).into_owned(), status));
                drop(all);
                let mut stream = reader.into_inner();
                let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Receiver { port, got }
    }
}

#[test]
fn a_rolled_back_canary_is_posted_signed_and_retried_after_a_500() {
    let receiver = Receiver::start();
    let (port, api_port) = (free_port(), free_port());
    let notify = format!("notify:\n  - url: http://127.0.0.1:{}/hooks/tug\n    events: [rolled_back]", receiver.port);
    let canary = "\n    deploy: { strategy: canary, steps: [50, 100], step_duration: 1s, analysis: { max_error_rate: 5%, min_requests: 20 } }";
    let api = format!("{{ listen: 127.0.0.1:{api_port} }}");
    let yaml = |version: &str, env: &str| {
        let text = web_stack("hooks", port, &api, version, &notify)
            .replace("healthcheck:", &format!("{canary}\n    healthcheck:"));
        text.replace("DEMO_ACCESS_LOG: \"1\"", &format!("DEMO_ACCESS_LOG: \"1\"{env}"))
    };
    let stack = Stack::new("endpoint-hooks", &yaml("1", ""));
    stack.up();
    stack.dir.write(
        "tug.yaml",
        &yaml("2", ", DEMO_FAIL_RATE: \"50%\"").replace("{demo}", &crate::harness::demo_bin().display().to_string()),
    );
    let load = crate::rollout::Load::start(port, 2, 40);
    let deploy = stack.tug(&["deploy", "--timeout", "60s"]);
    load.stop();
    assert_eq!(deploy.code, 1, "the canary is rolled back: {}", deploy.all());
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.got.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no retry arrived: {:?}", receiver.got.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = receiver.got.lock().unwrap().clone();
    let (headers, body, _) = &got[1];
    assert_eq!(got[0].1, got[1].1, "the retry carries the same event");
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(header("x-tug-event"), "rolled_back");
    // The signature: HMAC-SHA256 under `tug token webhook` of "TIMESTAMP.BODY".
    let key = stack.tug(&["token", "webhook"]).stdout.trim().to_string();
    let signed = format!("{}.{body}", header("x-tug-timestamp"));
    let expected = format!("sha256={}", tug_proto::auth::hmac_hex(key.as_bytes(), signed.as_bytes()));
    assert_eq!(header("x-tug-signature"), expected);
    let event: Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(event["event"], "rolled_back");
    assert_eq!(event["service"], "web");
    assert!(event["reason"].as_str().unwrap_or_default().contains("error rate"), "{event:#}");
    assert!(event["figures"]["canary"]["error_rate"].as_f64().unwrap() > 0.05, "{event:#}");
    assert!(event["figures"]["stable"]["requests"].as_u64().is_some(), "{event:#}");
    // No environment value travels: the failure knob's value is nowhere in it.
    assert!(!body.contains("50%"), "{body}");
    let log = std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("attempt 1 failed (HTTP 500)"), "{log}");
}
