//! The control API seen from outside: raw HTTP over the stack's socket, signed
//! or not, and what the daemon lets out (never a secret).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;
use tug_proto::auth::{ApiKey, sign_with_nonce};

use crate::harness::{Stack, alive};

/// The stack's API key, as the CLI reads it.
pub fn key(stack: &Stack) -> ApiKey {
    let text = std::fs::read_to_string(stack.state_dir().join("api.key")).expect("read api.key");
    ApiKey::from_text(&text).expect("a usable api.key")
}

pub fn now() -> u64 {
    tug_proto::unix_now()
}

/// A nonce no other request of this test run uses (32 hex digits).
pub fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    format!("{:016x}{:08x}{:08x}", t, std::process::id(), n)
}

/// The Authorization header for a request, signed with `key` at `ts`.
pub fn header(key: &ApiKey, method: &str, path: &str, body: &[u8], ts: u64) -> String {
    sign_with_nonce(key, method, path, body, ts, &nonce())
}

/// One HTTP/1.1 request on its own connection; `authorization` goes as is.
/// Returns the status and the body (empty when the daemon closed without answering).
pub fn raw(stack: &Stack, method: &str, path: &str, body: &[u8], authorization: Option<&str>) -> (u16, String) {
    let mut stream = UnixStream::connect(stack.state_dir().join("tug.sock")).expect("connect to tug.sock");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: tug\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).expect("write request head");
    // The daemon may answer (and close) before reading a body it refuses.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    parse(&response).unwrap_or_else(|| panic!("malformed answer to {method} {path}: {:?}", lossy(&response)))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned()
}

fn parse(bytes: &[u8]) -> Option<(u16, String)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?.to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = bytes[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).ok()?.trim(), 16).ok()?;
            rest = &rest[line + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A request signed with the stack's key.
pub fn signed(stack: &Stack, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let auth = header(&key(stack), method, path, body, now());
    raw(stack, method, path, body, Some(&auth))
}

/// GET /v1/status, signed, as JSON.
pub fn status(stack: &Stack) -> Value {
    let (code, body) = signed(stack, "GET", "/v1/status", b"");
    assert_eq!(code, 200, "GET /v1/status: {body}");
    serde_json::from_str(&body).expect("status is JSON")
}

/// What must not change when the daemon refuses a request: (instance, state, pid, restarts).
fn snapshot(stack: &Stack) -> Vec<(String, String, i64, i64)> {
    let mut rows: Vec<_> = stack
        .ps()
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap_or_default().to_string(),
                i["state"].as_str().unwrap_or_default().to_string(),
                i["pid"].as_i64().unwrap_or(-1),
                i["restarts"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    rows.sort();
    rows
}

const TWO_SERVICES: &str = r#"
name: api
services:
  web:
    command: "{demo}"
    healthcheck: { http: /health, start_interval: 50ms }
  worker:
    command: sleep 1000
"#;

#[test]
fn unsigned_tampered_replayed_stale_and_foreign_requests_are_refused() {
    let stack = Stack::new("api-auth", TWO_SERVICES);
    stack.up();
    let before = snapshot(&stack);
    assert!(before.iter().all(|(_, _, pid, _)| *pid > 0), "{before:?}");
    let stop = br#"{"targets":["web"]}"#;
    let unchanged = |what: &str| {
        // Give a wrongly accepted stop or restart time to show.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(snapshot(&stack), before, "the stack changed after {what}");
    };
    let refused = |what: &str, (code, body): (u16, String)| {
        assert_eq!(code, 401, "{what} got {code}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: 401 body is JSON: {body}"));
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {body}");
    };

    // (a) No Authorization at all, on every kind of path.
    refused("unsigned GET /v1/status", raw(&stack, "GET", "/v1/status", b"", None));
    refused("unsigned POST /v1/stop", raw(&stack, "POST", "/v1/stop", stop, None));
    refused("unsigned GET /v1/openapi.json", raw(&stack, "GET", "/v1/openapi.json", b"", None));
    refused("unsigned GET /nope", raw(&stack, "GET", "/nope", b"", None));
    refused("unsigned POST /v1/down", raw(&stack, "POST", "/v1/down", b"{}", None));
    refused("empty Authorization", raw(&stack, "POST", "/v1/stop", stop, Some("")));
    refused("Bearer", raw(&stack, "POST", "/v1/stop", stop, Some("Bearer abc")));
    unchanged("unsigned requests");

    // (b) A valid signature for something else.
    let key = key(&stack);
    let other_body = header(&key, "POST", "/v1/stop", br#"{"targets":["worker"]}"#, now());
    refused("signature of another body", raw(&stack, "POST", "/v1/stop", stop, Some(&other_body)));
    let other_path = header(&key, "POST", "/v1/start", stop, now());
    refused("signature of another path", raw(&stack, "POST", "/v1/stop", stop, Some(&other_path)));
    let other_method = header(&key, "GET", "/v1/stop", stop, now());
    refused("signature of another method", raw(&stack, "POST", "/v1/stop", stop, Some(&other_method)));
    let query = header(&key, "GET", "/v1/status", b"", now());
    refused("signature without the query", raw(&stack, "GET", "/v1/status?after=0", b"", Some(&query)));
    let good = header(&key, "POST", "/v1/stop", stop, now());
    let bumped_ts = good.replacen("ts=", "ts=1", 1);
    refused("changed ts", raw(&stack, "POST", "/v1/stop", stop, Some(&bumped_ts)));
    let flipped = {
        let (head, sig) = good.rsplit_once("sig=").unwrap();
        let first = if sig.starts_with('0') { '1' } else { '0' };
        format!("{head}sig={first}{}", &sig[1..])
    };
    refused("changed signature", raw(&stack, "POST", "/v1/stop", stop, Some(&flipped)));
    unchanged("tampered requests");

    // (d) Stale and future timestamps, correctly signed.
    let past = header(&key, "POST", "/v1/stop", stop, now() - 31);
    refused("31 s old", raw(&stack, "POST", "/v1/stop", stop, Some(&past)));
    let future = header(&key, "POST", "/v1/stop", stop, now() + 31);
    refused("31 s ahead", raw(&stack, "POST", "/v1/stop", stop, Some(&future)));
    // (e) Another key.
    let foreign = ApiKey::from_text("0123456789abcdef-not-this-stacks-key").unwrap();
    let wrong_key = header(&foreign, "POST", "/v1/stop", stop, now());
    refused("another key", raw(&stack, "POST", "/v1/stop", stop, Some(&wrong_key)));
    let wrong_key_get = header(&foreign, "GET", "/v1/status", b"", now());
    refused("another key, GET", raw(&stack, "GET", "/v1/status", b"", Some(&wrong_key_get)));
    unchanged("stale and foreign requests");

    // A slightly skewed clock within the window is fine.
    let skewed = header(&key, "GET", "/v1/status", b"", now() - 20);
    assert_eq!(raw(&stack, "GET", "/v1/status", b"", Some(&skewed)).0, 200);

    // (c) Replay: the same signed restart twice restarts once.
    let restart = br#"{"targets":["web"]}"#;
    let once = header(&key, "POST", "/v1/restart", restart, now());
    let first = raw(&stack, "POST", "/v1/restart", restart, Some(&once));
    assert_eq!(first.0, 200, "{}", first.1);
    refused("replayed restart", raw(&stack, "POST", "/v1/restart", restart, Some(&once)));
    let old_pid = before.iter().find(|r| r.0 == "web-1").unwrap().2;
    let web = stack.wait_for("web-1", Duration::from_secs(20), |r| {
        r["state"] == "healthy" && r["pid"].as_i64().is_some_and(|p| p != old_pid)
    });
    assert_eq!(web["restarts"], 1, "{web:#}");
    // A replay must not have queued a second restart: still the same process a moment later.
    std::thread::sleep(Duration::from_millis(500));
    let again = stack.instance("web-1").unwrap();
    assert_eq!((again["pid"].clone(), again["restarts"].clone()), (web["pid"].clone(), 1.into()), "{again:#}");
    let worker = stack.instance("worker-1").unwrap();
    let worker_before = before.iter().find(|r| r.0 == "worker-1").unwrap();
    assert_eq!(worker["pid"].as_i64(), Some(worker_before.2));
    assert_eq!(worker["restarts"], 0);
}

#[test]
fn openapi_lists_every_route_and_bad_bodies_get_400() {
    let stack = Stack::new("api-doc", TWO_SERVICES);
    stack.up();
    let before = snapshot(&stack);
    let (code, body) = signed(&stack, "GET", "/v1/openapi.json", b"");
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    // Every route the daemon serves (daemon.rs `handle`), with its method.
    for (method, path) in [
        ("get", "/v1/openapi.json"),
        ("get", "/v1/status"),
        ("put", "/v1/stack"),
        ("post", "/v1/plan"),
        ("post", "/v1/start"),
        ("post", "/v1/stop"),
        ("post", "/v1/restart"),
        ("post", "/v1/scale"),
        ("post", "/v1/down"),
        ("get", "/v1/rollout"),
        ("post", "/v1/rollout"),
        ("get", "/v1/history"),
        ("post", "/v1/exec"),
        ("post", "/v1/run"),
        ("post", "/v1/dashboard"),
        ("get", "/v1/logs"),
        ("post", "/v1/backup"),
        ("post", "/v1/restore"),
        ("get", "/v1/sources"),
        ("get", "/v1/doctor"),
        ("put", "/v1/uploads/{sha256}"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "openapi.json lacks {method} {path}");
    }

    // Signed but wrong: the daemon explains, naming what is wrong, and stays up. Each answer's
    // status is one openapi.json documents for that route.
    let key = "0".repeat(64);
    let backup_for_web = format!(r#"{{"out":"/tmp/x","services":["web"],"key":"{key}"}}"#);
    let restore_empty = format!(r#"{{"file":"","key":"{key}"}}"#);
    let restore_relative = format!(r#"{{"file":"backups/x.tug-backup","key":"{key}"}}"#);
    let restore_missing = format!(r#"{{"file":"/nonexistent","key":"{key}"}}"#);
    let bad: &[(&str, &str, &[u8], u16, &str)] = &[
        ("POST", "/v1/exec", b"{}", 400, "target"),
        ("POST", "/v1/exec", b"{\"target\":\"web\",\"command\":[]}", 400, "command"),
        ("POST", "/v1/exec", b"{\"target\":\"nope\",\"command\":[\"true\"]}", 404, "nope"),
        ("POST", "/v1/run", b"{\"project\":\"x\"}", 400, "not valid"),
        ("POST", "/v1/stop", b"not json", 400, "not valid"),
        ("POST", "/v1/stop", b"", 400, "not valid"),
        ("POST", "/v1/stop", b"{\"targets\":\"web\"}", 400, "not valid"),
        ("POST", "/v1/restart", b"{\"targets\":[1,2]}", 400, "not valid"),
        ("POST", "/v1/start", b"[]", 400, "not valid"),
        ("POST", "/v1/scale", b"{\"service\":\"web\"}", 400, "replicas"),
        ("POST", "/v1/scale", b"{\"service\":\"web\",\"replicas\":-1}", 400, "not valid"),
        ("POST", "/v1/scale", b"{\"service\":\"web\",\"replicas\":\"two\"}", 400, "not valid"),
        ("POST", "/v1/scale", b"{\"service\":\"web\",\"replicas\":99999999999}", 400, "not valid"),
        ("PUT", "/v1/stack", b"{}", 400, "not valid"),
        ("PUT", "/v1/stack", b"\xff\xfe\x00garbage", 400, "not valid"),
        ("POST", "/v1/stop", b"{\"targets\":[\"nope\"]}", 404, "nope"),
        // A field the daemon does not know (a newer client's) is refused, never dropped.
        ("POST", "/v1/stop", b"{\"targets\":[\"web\"],\"force\":true}", 400, "`force`"),
        ("POST", "/v1/scale", b"{\"service\":\"web\",\"replicas\":1,\"min\":1}", 400, "`min`"),
        ("GET", "/v1/status?after=abc", b"", 400, "after=abc"),
        ("GET", "/v1/status?wait_ms=60001", b"", 400, "wait_ms"),
        ("GET", "/v1/status?usage=2", b"", 400, "usage"),
        ("GET", "/v1/logs?tail=-1", b"", 400, "tail"),
        ("GET", "/v1/logs?follow=yes", b"", 400, "follow"),
        ("GET", "/v1/logs?follow", b"", 400, "follow"),
        ("GET", "/v1/sources?service=web&digest=", b"", 400, "digest"),
        ("POST", "/v1/backup", b"{\"out\":5}", 400, "not valid"),
        ("POST", "/v1/backup", b"{\"out\":\"\"}", 400, "out is empty"),
        ("POST", "/v1/backup", b"{\"out\":\"x.tug-backup\"}", 400, "absolute"),
        ("POST", "/v1/backup", b"{\"out\":\"/tmp/x\",\"key\":\"zz\"}", 400, "key"),
        ("POST", "/v1/backup", backup_for_web.as_bytes(), 400, "`web` has no `backup`"),
        ("POST", "/v1/restore", b"{\"file\":\"/nonexistent\",\"key\":\"00\"}", 400, "key"),
        ("POST", "/v1/restore", restore_empty.as_bytes(), 400, "file is empty"),
        ("POST", "/v1/restore", restore_relative.as_bytes(), 400, "absolute"),
        ("POST", "/v1/restore", restore_missing.as_bytes(), 409, "/nonexistent"),
    ];
    for &(method, target, body, expected, names) in bad {
        let (code, answer) = signed(&stack, method, target, body);
        assert_eq!(code, expected, "{method} {target} {:?}: {answer}", String::from_utf8_lossy(body));
        let error: Value = serde_json::from_str(&answer).unwrap_or_else(|_| panic!("error body is JSON: {answer}"));
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{method} {target}: {answer} does not name {names:?}");
        let path = target.split('?').next().unwrap_or(target);
        let documented = &doc["paths"][path][method.to_lowercase()]["responses"][expected.to_string()];
        assert!(documented.is_object(), "openapi.json does not document {expected} for {method} {path}");
    }
    let (code, answer) = signed(&stack, "DELETE", "/v1/status", b"");
    assert_eq!(code, 405, "{answer}");
    let (code, answer) = signed(&stack, "GET", "/v1/nope", b"");
    assert_eq!(code, 404, "{answer}");
    assert_eq!(snapshot(&stack), before, "refused requests changed the stack");
    assert_eq!(status(&stack)["instances"].as_array().map(Vec::len), Some(2));
}

#[test]
fn scale_refuses_an_absurd_replica_count() {
    let stack = Stack::new("api-scale", TWO_SERVICES);
    stack.up();
    let before = snapshot(&stack);
    // The stack file caps replicas at 10,000; the scale endpoint must too, or one
    // request starts a million processes.
    let (code, answer) = signed(&stack, "POST", "/v1/scale", br#"{"service":"worker","replicas":1000000}"#);
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("10000"), "{answer}");
    assert_eq!(snapshot(&stack), before);
    let scale = stack.tug(&["scale", "worker=10001"]);
    assert_ne!(scale.code, 0, "{}", scale.all());
    assert_eq!(snapshot(&stack), before);
}

#[test]
fn secrets_never_leak_into_status_logs_or_state() {
    let stack = Stack::new(
        "api-secret",
        r#"
name: secretive
settings:
  TOKEN: { type: secret, generate: { length: 32 } }
services:
  holder:
    command: "printf %s \"$$TOKEN\" > token.txt; printf %s \"$$AUTH\" > auth.txt; echo started; exec sleep 1000"
    secrets: [TOKEN]
    environment: { AUTH: "Bearer ${TOKEN}" }
    healthcheck: { exec: 'test -n "$$TOKEN"', start_interval: 50ms }
  broken:
    command: ["/nonexistent/tug-broken/bin"]
    secrets: [TOKEN]
    restart: "no"
"#,
    );
    let up = stack.tug(&["up", "-d", "--timeout", "30s"]);
    // `broken` cannot start, so up reports it; what matters is what it says.
    let holder = stack.wait_state("holder-1", "healthy", Duration::from_secs(20));
    let token_file = stack.path().join("token.txt");
    let token = std::fs::read_to_string(&token_file).expect("the service wrote its token");
    assert_eq!(token.len(), 32, "{token:?}");
    let auth = std::fs::read_to_string(stack.path().join("auth.txt")).unwrap();
    assert_eq!(auth, format!("Bearer {token}"));
    let broken = stack.wait_state("broken-1", "failed", Duration::from_secs(20));
    assert!(broken["message"].as_str().is_some_and(|m| m.contains("cannot start")), "{broken:#}");

    let ps_text = stack.tug(&["ps"]);
    let ps_json = stack.tug(&["ps", "--json"]);
    let (_, status_body) = signed(&stack, "GET", "/v1/status", b"");
    let logs = stack.tug(&["logs"]);
    let logs_json = stack.tug(&["logs", "--json"]);
    let restart = stack.tug(&["restart", "holder"]);
    assert_eq!(restart.code, 0, "{}", restart.all());
    stack.wait_for("holder-1", Duration::from_secs(20), |r| r["state"] == "healthy" && r["pid"] != holder["pid"]);
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    let daemon_log = std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap_or_default();
    let state = std::fs::read_to_string(stack.state_dir().join("state.json")).unwrap_or_default();
    let mut instance_logs = String::new();
    for entry in walk(&stack.state_dir().join("logs")) {
        instance_logs.push_str(&std::fs::read_to_string(entry).unwrap_or_default());
    }
    for (what, text) in [
        ("tug up -d", up.all()),
        ("tug ps", ps_text.all()),
        ("tug ps --json", ps_json.all()),
        ("GET /v1/status", status_body),
        ("tug logs", logs.all()),
        ("tug logs --json", logs_json.all()),
        ("tug restart", restart.all()),
        ("tug down", down.all()),
        (".tug/daemon.log", daemon_log),
        (".tug/state.json", state),
        (".tug/logs", instance_logs),
    ] {
        assert!(!text.contains(&token), "{what} shows the secret:\n{text}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn daemon_survives_garbage_on_the_socket() {
    let stack = Stack::new("api-garbage", TWO_SERVICES);
    stack.up();
    let before = snapshot(&stack);
    let socket = stack.state_dir().join("tug.sock");
    for junk in
        [&b"\x00\x01\x02garbage\r\n\r\n"[..], b"GET\r\n\r\n", b"POST /v1/down HTTP/1.1\r\nContent-Length: x\r\n\r\n"]
    {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(junk);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(!String::from_utf8_lossy(&answer).contains(" 200 "), "{:?}", lossy(&answer));
    }
    // A connection that sends nothing and one that stops half-way do not block others.
    let _idle = UnixStream::connect(&socket).unwrap();
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(b"POST /v1/stop HTTP/1.1\r\nContent-Length: 100\r\n\r\n{").unwrap();
    assert_eq!(status(&stack)["instances"].as_array().map(Vec::len), Some(2));
    assert_eq!(snapshot(&stack), before);
    let daemon = stack.daemon_pid().unwrap();
    assert!(alive(daemon));
}

/// `PUT /v1/stack` body: the stack's one service `name`, running `sleep 1000`.
fn up_request(stack: &Stack, name: &str) -> Vec<u8> {
    let service = serde_json::json!({
        "name": name, "kind": "service",
        "command": { "shell": { "value": "sleep 1000" } },
        "working_dir": stack.path(), "replicas": 1, "port": null, "proxy": false,
        "environment": [], "depends_on": [], "healthcheck": null, "liveness": null,
        "restart": "on-failure", "stop_signal": libc::SIGTERM, "stop_signal_name": "SIGTERM",
        "stop_grace_ms": 1000, "user": null, "memory_bytes": null, "cpu": null,
        "log_max_size": 1_048_576, "log_max_files": 2, "revision": "",
    });
    let mut service: tug_proto::spec::ServiceSpec = serde_json::from_value(service).expect("a service spec");
    service.revision = service.compute_revision();
    let request = tug_proto::spec::UpRequest {
        spec: tug_proto::spec::StackSpec {
            project: "api".into(),
            environment: "development".into(),
            root: stack.path().to_path_buf(),
            services: vec![service],
            withheld: Vec::new(),
            registry: None,
            engine: None,
            listen: None,
            api: None,
            notify: Vec::new(),
        },
        targets: vec![name.to_string()],
        on_host: None,
    };
    serde_json::to_vec(&request).unwrap()
}

#[test]
fn concurrent_stack_puts_start_each_replica_once() {
    let stack = Stack::new("api-race", TWO_SERVICES);
    stack.up();
    for round in 0..10 {
        let name = format!("extra{round}");
        let body = up_request(&stack, &name);
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    barrier.wait();
                    let (code, answer) = signed(&stack, "PUT", "/v1/stack", &body);
                    assert_eq!(code, 200, "{answer}");
                });
            }
        });
        let rows: Vec<String> = status(&stack)["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["service"] == name.as_str())
            .map(|i| i["instance"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(rows, [format!("{name}-1")], "round {round}: eight identical PUTs of one replica");
    }
}

#[test]
fn the_api_key_from_the_environment_signs_and_never_reaches_instances() {
    let stack = Stack::new("api-envkey", TWO_SERVICES);
    let env_key = "an-api-key-from-the-environment-0123456789";
    let secrets_key = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
    let up = stack
        .tug_with(&["up", "-d", "--timeout", "30s"], &[("TUG_API_KEY", env_key), ("TUG_SECRETS_KEY", secrets_key)]);
    assert_eq!(up.code, 0, "{}", up.all());
    assert!(!stack.state_dir().join("api.key").exists(), "no key file is made when TUG_API_KEY is set");
    let with_key = stack.tug_with(&["ps", "--json"], &[("TUG_API_KEY", env_key)]);
    assert_eq!(with_key.code, 0, "{}", with_key.all());
    let rows: Vec<Value> = serde_json::from_str(&with_key.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    // The daemon checks against the environment's key.
    let key = ApiKey::from_text(env_key).unwrap();
    let auth = header(&key, "GET", "/v1/status", b"", now());
    assert_eq!(raw(&stack, "GET", "/v1/status", b"", Some(&auth)).0, 200);
    let wrong = stack.tug_with(&["ps"], &[("TUG_API_KEY", "another-key-of-sufficient-length")]);
    assert_ne!(wrong.code, 0, "{}", wrong.all());
    assert!(wrong.stderr.contains("TUG_API_KEY"), "{}", wrong.all());
    // Neither key is in an instance's environment.
    for row in &rows {
        let pid = row["pid"].as_i64().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(environ.contains("TUG_INSTANCE="), "{environ}");
        assert!(!environ.contains(env_key) && !environ.contains("TUG_API_KEY"), "{}: {environ}", row["instance"]);
        assert!(!environ.contains(secrets_key) && !environ.contains("TUG_SECRETS_KEY"), "{}", row["instance"]);
    }
    let down = stack.tug_with(&["down"], &[("TUG_API_KEY", env_key)]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(down.stdout.contains("stopped 2 instances"), "{}", down.all());
}

/// Validates each captured body (a JSON list of {method, path, body, answer}) against the
/// schema openapi.json gives its route: the request's, or with `answer` the 200 answer's, with
/// an independent validator.
const REQUEST_VALIDATOR: &str = r##"
import json, sys
try:
    import jsonschema
except ImportError as e:
    sys.exit(f"missing Python module ({e}): install python3-jsonschema (scripts/test does)")
doc = json.load(open(sys.argv[1]))
defs = json.loads(json.dumps(doc["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/"))
bad = 0
for sent in json.load(open(sys.argv[2])):
    path = sent["path"].split("?")[0]
    operation = doc["paths"][path][sent["method"].lower()]
    described = operation["responses"]["200"] if sent.get("answer") else operation["requestBody"]
    schema = json.loads(json.dumps(described["content"]["application/json"]["schema"]).replace("#/components/schemas/", "#/$defs/"))
    schema["$defs"] = defs
    for e in jsonschema.Draft202012Validator(schema).iter_errors(sent["body"]):
        bad += 1
        print(f"{sent['method']} {path}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    print(f"{sent['method']} {path}: checked")
sys.exit(1 if bad else 0)
"##;

/// A stand-in daemon on a TCP port: it answers `GET /v1/status` as a current daemon would
/// and refuses every other request after keeping its method, path and body.
fn stand_in_daemon() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = captured.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream);
            let (mut head, mut length) = (String::new(), 0);
            if reader.read_line(&mut head).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
            let (code, answer) = if method == "GET" {
                let status = r#"{"project":"shape","daemon_pid":1,"generation":1,"shutting_down":false,"services":[],"instances":[],"notices":[],"advertise":"127.0.0.1","version":"0.1.0"}"#;
                ("200 OK", status.to_string())
            } else {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                keep.lock().unwrap().push(serde_json::json!({ "method": method, "path": path, "body": body }));
                ("400 Bad Request", r#"{"error":"kept by the stand-in"}"#.to_string())
            };
            let reply = format!(
                "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = reader.get_mut().write_all(reply.as_bytes());
        }
    });
    (port, captured)
}

#[test]
fn what_the_cli_sends_is_what_openapi_json_describes() {
    let (port, captured) = stand_in_daemon();
    let client = crate::TempDir::new("api-shapes");
    client.write(
        "tug.yaml",
        r#"
name: shape
settings:
  TOKEN: { type: secret }
  LEVEL: { type: enum, values: [low, high], default: low }
services:
  migrate: { kind: job, command: ["true"] }
  web:
    command: [sleep, "100"]
    port: 18999
    replicas: 2
    secrets: [TOKEN]
    environment: { LEVEL: "${LEVEL}" }
    healthcheck: { http: /health, interval: 1s, start_interval: 100ms }
    depends_on: { migrate: completed_successfully }
    deploy:
      strategy: canary
      steps: [50, 100]
      step_duration: 5s
      analysis: { max_error_rate: 1%, min_requests: 5 }
      before: [migrate]
      smoke: { http: /smoke, timeout: 10s }
  worker:
    command: [sleep, "100"]
    restart: on-failure
    backup: { command: echo dump, restore: cat, schedule: "0 3 * * *", keep: 3 }
  cache:
    image: shape-cache:dev
    pull: never
    port: 18998
    container_port: 6379
notify:
  - url: https://hooks.example.com/tug
    events: [deployed, rolled_back, deploy_failed, promoted, crash_loop, backup_failed]
"#,
    );
    let url = format!("http://127.0.0.1:{port}");
    let env = [("TUG_API_KEY", "a-stand-in-key-0123456789"), ("TOKEN", "a-token-value-0123456789")];
    let commands: [&[&str]; 11] = [
        &["deploy"],
        &["deploy", "--plan"],
        &["run", "worker", "--", "true"],
        &["exec", "worker", "--", "true"],
        &["scale", "web=3"],
        &["stop", "worker"],
        &["restart", "web"],
        &["backup"],
        &["rollout", "promote", "web"],
        &["dashboard"],
        &["down", "--volumes"],
    ];
    for args in commands {
        let mut all = vec!["--host", url.as_str()];
        all.extend(args);
        let run = crate::tug(client.path(), &all, &env, None);
        assert!(run.all().contains("kept by the stand-in"), "{args:?}: {}", run.all());
    }
    let sent = captured.lock().unwrap().clone();
    assert_eq!(sent.len(), commands.len(), "{sent:#?}");
    // Each command's own request, and the stack's every kind of field among them.
    let routes: Vec<String> = sent.iter().map(|s| format!("{} {}", s["method"], s["path"])).collect();
    let each = ["PUT", "/v1/plan", "/v1/run", "/v1/exec", "/v1/scale", "/v1/stop", "/v1/restart", "/v1/backup"];
    for route in each.into_iter().chain(["/v1/rollout", "/v1/dashboard", "/v1/down"]) {
        assert!(routes.iter().any(|r| r.contains(route)), "no {route} among {routes:?}");
    }
    let all = serde_json::to_string(&sent).unwrap();
    for field in ["\"backup\"", "\"smoke\"", "\"before\"", "\"container\"", "\"deploy_failed\"", "\"on_host\""] {
        assert!(all.contains(field), "no {field} was sent: {all}");
    }
    let report = validate_against_openapi(&client, &sent);
    assert_eq!(report.matches(": checked").count(), commands.len(), "{report}");
}

/// Runs [`REQUEST_VALIDATOR`] over `bodies`; panics with its report when one does not validate.
fn validate_against_openapi(dir: &crate::TempDir, bodies: &[Value]) -> String {
    let bodies = dir.write("bodies.json", &serde_json::to_string(bodies).unwrap());
    let script = dir.write("validate.py", REQUEST_VALIDATOR);
    let openapi = crate::repo_dir().join("crates/proto/src/openapi.json");
    let out = std::process::Command::new("/usr/bin/python3")
        .args([&script, &openapi, &bodies])
        .output()
        .expect("run /usr/bin/python3 (scripts/test installs it)");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    report
}

#[test]
fn what_the_daemon_answers_is_what_openapi_json_describes() {
    let port = crate::harness::free_port();
    let yaml = format!(
        r#"
name: answers
services:
  web:
    command: "{{demo}}"
    port: {port}
    replicas: 2
    environment: {{ VERSION: "${{VERSION:-1}}" }}
    healthcheck: {{ http: /health, start_interval: 50ms }}
    deploy: {{ strategy: canary, steps: [50, 100], step_duration: 1h }}
  worker:
    command: sleep 1000
"#
    );
    let stack = Stack::new("api-answers", &yaml);
    stack.up();
    for _ in 0..20 {
        let _ = std::process::Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/")]).output();
    }
    // A canary under way, so the rollout answer has its steps.
    let deploy = stack.tug_with(&["deploy", "--detach"], &[("VERSION", "2")]);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    let mut answers = Vec::new();
    for path in [
        "/v1/status",
        "/v1/status?usage=1",
        "/v1/stats",
        "/v1/history?service=web",
        "/v1/doctor",
        "/v1/rollout?service=web",
    ] {
        let (code, body) = signed(&stack, "GET", path, b"");
        assert_eq!(code, 200, "GET {path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        answers.push(serde_json::json!({ "method": "GET", "path": path, "body": body, "answer": true }));
    }
    let report = validate_against_openapi(&crate::TempDir::new("api-answers"), &answers);
    assert_eq!(report.matches(": checked").count(), answers.len(), "{report}");
}
