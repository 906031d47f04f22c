//! The router at the edge, probed as an attacker would: classic request-smuggling probes each
//! get a 400 or arrive at the instance as one unambiguous request; a request that may have
//! reached an instance killed mid-flight is not sent again unless it is idempotent. The
//! instance is `tests/data/router/recorder.py`, a raw-socket backend that records exactly
//! what arrived.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Stack, free_port};

fn recorder_stack(label: &str, port: u16, record: &Path) -> Stack {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/router/recorder.py");
    Stack::new(
        label,
        &format!(
            r#"
name: {label}
services:
  rec:
    command: ["/usr/bin/python3", "{script}"]
    replicas: 2
    port: {port}
    protocol: http
    environment: {{ RECORD: "{record}" }}
    healthcheck: {{ tcp: true, interval: 1s, start_interval: 50ms }}
"#,
            script = script.display(),
            record = record.display()
        ),
    )
}

/// Every request the instances recorded so far.
fn recorded(record: &Path) -> Vec<Value> {
    std::fs::read_to_string(record).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `up -d` returned: the router routes to the instance from the first request on (the daemon's
/// status has the routers take new membership before it calls an instance ready).
fn assert_routed(port: u16) {
    let answer = send_raw(port, b"GET /routed-yet HTTP/1.1\r\nHost: t\r\n\r\n", Duration::from_secs(2));
    assert!(answer.starts_with("HTTP/1.1 200"), "the first request after up -d: {answer}");
}

/// Sends `raw` on a new connection; what came back within `wait`.
fn send_raw(port: u16, raw: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = stream.write_all(raw);
    let deadline = Instant::now() + wait;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                // An answer is complete once its head and declared body are in.
                if complete(&answer) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

/// The classic smuggling and strictness probes: (name, raw request). `{p}` is replaced with
/// the probe's own path, so what arrives can be told apart.
const PROBES: &[(&str, &str)] = &[
    ("plain", "GET {p} HTTP/1.1\r\nHost: svc\r\n\r\n"),
    (
        "CL.TE",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n\r\n",
    ),
    (
        "TE.CL",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n21\r\nGET /smuggled HTTP/1.1\r\nX: yy\r\n\r\n\r\n0\r\n\r\n",
    ),
    ("CL twice, differing", "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"),
    ("CL twice, equal", "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    ("CL list", "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: 3, 5\r\n\r\nabcde"),
    ("CL signed", "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: +3\r\n\r\nabc"),
    ("CL negative", "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: -1\r\n\r\nabc"),
    ("CL hex", "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: 0x3\r\n\r\nabc"),
    ("CL trailing junk", "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length: 3x\r\n\r\nabc"),
    ("CL space before colon", "POST {p} HTTP/1.1\r\nHost: svc\r\nContent-Length : 3\r\n\r\nabc"),
    ("TE xchunked", "POST {p} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    (
        "TE space before colon",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    ("TE tab", "POST {p} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("TE upper case", "POST {p} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    (
        "TE chunked, identity",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "TE twice",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    ("TE in HTTP/1.0", "POST {p} HTTP/1.0\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    (
        "TE by obs-fold",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nX-Fold: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    ),
    ("obs-fold", "GET {p} HTTP/1.1\r\nHost: svc\r\nX-Fold: a\r\n\tb\r\n\r\n"),
    ("bare CR", "GET {p} HTTP/1.1\rHost: svc\r\n\r\n"),
    ("bare LF", "GET {p} HTTP/1.1\nHost: svc\n\n"),
    ("NUL in a value", "GET {p} HTTP/1.1\r\nHost: svc\r\nX-Nul: a\0b\r\n\r\n"),
    (
        "chunk size overflow",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    ),
    ("chunk size junk", "POST {p} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n"),
    ("two Host headers", "GET {p} HTTP/1.1\r\nHost: svc\r\nHost: evil.example\r\n\r\n"),
    ("no Host in HTTP/1.1", "GET {p} HTTP/1.1\r\nX: y\r\n\r\n"),
    ("Host with userinfo", "GET {p} HTTP/1.1\r\nHost: user@evil.example\r\n\r\n"),
    ("absolute-form", "GET http://evil.example{p}?q=1 HTTP/1.1\r\nHost: svc\r\n\r\n"),
    (
        "Connection names Content-Length",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc",
    ),
    (
        "Connection names Transfer-Encoding",
        "POST {p} HTTP/1.1\r\nHost: svc\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    ("Connection names Host", "GET {p} HTTP/1.1\r\nHost: svc\r\nConnection: Host\r\n\r\n"),
];

/// What an instance got is one unambiguous request: one Host, origin form, one way of framing
/// its body, and no part of a smuggled second request.
fn unambiguous(name: &str, path: &str, request: &Value) -> Result<(), String> {
    let Some(head) = request["head"].as_str() else { return Err(format!("{name}: unframed bytes: {request}")) };
    if request.get("unframed").is_some() {
        return Err(format!("{name}: bytes after the request: {request}"));
    }
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    if !target.starts_with(path) {
        return Err(format!("{name}: the target is not in origin form: {request_line}"));
    }
    let names: Vec<String> =
        lines.filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_ascii_lowercase())).collect();
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    if count("host") != 1 {
        return Err(format!("{name}: {} Host headers: {head}", count("host")));
    }
    if count("content-length") + count("transfer-encoding") > 1 {
        return Err(format!("{name}: framed twice: {head}"));
    }
    if head.contains("evil.example") && name != "absolute-form" {
        return Err(format!("{name}: the other host went on: {head}"));
    }
    Ok(())
}

#[test]
fn smuggling_probes_get_a_400_or_one_unambiguous_request() {
    let port = free_port();
    let dir = crate::TempDir::new("edge-record");
    let record: PathBuf = dir.path().join("record.jsonl");
    let stack = recorder_stack("edge-probes", port, &record);
    stack.up();
    assert_routed(port);
    // Every probe at once, each on its own connection and path.
    let answers: Vec<(String, String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = PROBES
            .iter()
            .enumerate()
            .map(|(i, (name, raw))| {
                let path = format!("/probe-{i:02}");
                let raw = raw.replace("{p}", &path);
                scope.spawn(move || {
                    let answer = send_raw(port, raw.as_bytes(), Duration::from_secs(3));
                    (name.to_string(), path, answer)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::thread::sleep(Duration::from_millis(300));
    let all = recorded(&record);
    let mut problems = Vec::new();
    let mut refused = Vec::new();
    for (name, path, answer) in &answers {
        let arrived: Vec<&Value> = all
            .iter()
            .filter(|r| {
                let text = format!("{}{}", r["head"].as_str().unwrap_or(""), r["unframed"].as_str().unwrap_or(""));
                text.contains(&format!("{path} ")) || text.contains(&format!("{path}?"))
            })
            .collect();
        let status = answer.split(' ').nth(1).unwrap_or("none").to_string();
        eprintln!("{name:>36}: {status}, {} at the instance", arrived.len());
        match (status.as_str(), arrived.as_slice()) {
            ("400", []) => refused.push(name.as_str()),
            ("200", [one]) => {
                if let Err(problem) = unambiguous(name, path, one) {
                    problems.push(problem);
                }
            }
            _ => {
                problems.push(format!("{name}: answered {status:?} with {} request(s) at the instance", arrived.len()))
            }
        }
    }
    // Nothing smuggled arrived anywhere.
    for r in &all {
        if r.to_string().contains("/smuggled") && !r["body"].as_str().unwrap_or("").contains("/smuggled") {
            problems.push(format!("a smuggled request arrived: {r}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n{answers:#?}");
    // The strictness the issue names: refused, not passed on.
    for must in ["two Host headers", "no Host in HTTP/1.1", "CL twice, differing", "TE xchunked"] {
        assert!(refused.contains(&must), "{must} was not refused: {refused:?}");
    }
    // Absolute form went on in origin form, the target's host as the Host.
    let absolute = all.iter().find(|r| r["head"].as_str().is_some_and(|h| h.contains("?q=1"))).expect("absolute-form");
    let head = absolute["head"].as_str().unwrap();
    assert!(head.starts_with("GET /probe-") && head.to_ascii_lowercase().contains("host: evil.example"), "{head}");
}

#[test]
fn a_post_cut_off_by_a_killed_instance_is_not_sent_twice_but_a_get_is_retried() {
    let port = free_port();
    let dir = crate::TempDir::new("edge-retry");
    let record = dir.path().join("record.jsonl");
    let stack = recorder_stack("edge-retry", port, &record);
    stack.up();
    assert_routed(port);
    let arrivals = |path: &str| {
        recorded(&record).iter().filter(|r| r["head"].as_str().is_some_and(|h| h.contains(&format!("{path} ")))).count()
    };
    // The instance that gets it dies before answering: the POST may have been processed.
    let answer = send_raw(
        port,
        b"POST /die-post HTTP/1.1\r\nHost: svc\r\nContent-Length: 6\r\n\r\ncharge",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(arrivals("/die-post"), 1, "the POST was sent again: {:#?}", recorded(&record));
    // Both back, then an idempotent request: retried on the other instance (which dies too).
    for instance in ["rec-1", "rec-2"] {
        stack.wait_for(instance, Duration::from_secs(30), |i| i["state"] == "healthy");
    }
    let _ = send_raw(port, b"GET /die-get HTTP/1.1\r\nHost: svc\r\n\r\n", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(arrivals("/die-get"), 2, "the GET was not retried: {:#?}", recorded(&record));
}

/// A service that speaks first (an SMTP-like greeting) behind a port with no `protocol`: the
/// router waits briefly for the client, hears nothing, and serves the connection as TCP.
#[test]
fn a_server_that_speaks_first_works_through_the_default_protocol() {
    let port = free_port();
    let script = r#"
import os, socket, threading
def serve(c):
    c.sendall(b"220 greeter ready\r\n")
    f = c.makefile("rb")
    for line in f:
        if line.strip() == b"QUIT":
            c.sendall(b"221 bye\r\n"); break
        c.sendall(b"250 " + line)
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let dir = crate::TempDir::new("edge-greeter");
    let path = dir.path().join("greeter.py");
    std::fs::write(&path, script).unwrap();
    let stack = Stack::new(
        "edge-greeter",
        &format!(
            "name: edge-greeter\nservices:\n  mail:\n    command: [\"/usr/bin/python3\", \"{}\"]\n    port: {port}\n    healthcheck: {{ tcp: true, start_interval: 50ms }}\n",
            path.display()
        ),
    );
    stack.up();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 64];
    let n = stream.read(&mut greeting).expect("the greeting");
    assert!(greeting[..n].starts_with(b"220 greeter ready"), "{}", String::from_utf8_lossy(&greeting[..n]));
    stream.write_all(b"HELO test\r\nQUIT\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("250 HELO test") && rest.contains("221 bye"), "{rest}");
    let stats = stack.tug(&["stats", "--json"]);
    let stats: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
    assert_eq!(stats["services"][0]["protocol"], "auto", "{stats:#}");
}

/// Slow connections to one port, more than the daemon's open-files limit: the port keeps
/// serving the connections within its cap and closes the rest at once; the other port and
/// the control socket go on answering, and the daemon never runs out of descriptors.
#[test]
fn a_flood_of_slow_connections_to_one_port_leaves_the_others_and_the_cli_answering() {
    const FILES: usize = 2048;
    let (flooded, other) = (free_port(), free_port());
    let service = |name: &str, port: u16| {
        format!(
            "  {name}:\n    command: \"{{demo}}\"\n    port: {port}\n    healthcheck: {{ http: /health, start_interval: 50ms }}\n"
        )
    };
    let yaml = format!("name: edge-flood\nservices:\n{}{}", service("flooded", flooded), service("other", other));
    let stack = Stack::new("edge-flood", &yaml);
    let limit = format!("--nofile={FILES}:{FILES}");
    let up = stack.tug_under(&["prlimit", &limit], &["up", "-d", "--timeout", "60s"], &[]);
    assert_eq!(up.code, 0, "{}", up.all());
    let daemon = stack.daemon_pid().expect("the daemon");
    let descriptors = || std::fs::read_dir(format!("/proc/{daemon}/fd")).map(|d| d.count()).unwrap_or(0);

    // Each connection begins a request and never finishes it.
    let mut held = Vec::new();
    for _ in 0..FILES + 500 {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", flooded)) else { break };
        let _ = stream.write_all(b"GET /slow HTTP/1.1\r\nHost: svc\r\n");
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let peak = descriptors();
    assert!(peak < FILES - 256, "the daemon holds {peak} of its {FILES} descriptors");
    // The other port, and the CLI, answer.
    assert_eq!(crate::routing::http_once("127.0.0.1", other, "GET", "/").map(|a| a.0), Some(200));
    let ps = stack.tug(&["ps"]);
    assert_eq!(ps.code, 0, "{}", ps.all());
    // The flooded port kept its cap's worth and closed the rest at once.
    let mut kept = Vec::new();
    let mut closed = 0;
    for mut stream in held {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => kept.push(stream),
            _ => closed += 1,
        }
    }
    eprintln!("flood: {} kept, {closed} closed, the daemon at {peak} descriptors", kept.len());
    assert!(!kept.is_empty() && closed > FILES / 2, "{} kept, {closed} closed", kept.len());
    // Each refusal is counted (`tug stats`, and /metrics' tug_router_refused_connections_total).
    let stats: Value = serde_json::from_str(&stack.tug(&["stats", "--json"]).stdout).expect("stats JSON");
    let flooded_stats = stats["services"].as_array().unwrap().iter().find(|s| s["service"] == "flooded").unwrap();
    let refused = flooded_stats["refused_connections"].as_u64().unwrap_or(0);
    assert!(refused > (FILES / 2) as u64 && refused <= closed as u64, "{refused} refused, {closed} closed");
    // Those kept are served: each finishes its request and gets its answer.
    for stream in kept.iter_mut().take(5) {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"\r\n").unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&answer));
    }
    // Once the flood goes, the port takes new clients again.
    drop(kept);
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::routing::http_once("127.0.0.1", flooded, "GET", "/").map(|a| a.0) != Some(200) {
        assert!(Instant::now() < deadline, "the flooded port did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With no `protocol`, HTTP/1.1 and h2c clients are routed as HTTP: each request is counted
/// (TCP would count one per connection) and gets the router's forwarding headers.
#[test]
fn http_and_h2c_through_the_default_protocol_are_routed_per_request() {
    let port = free_port();
    let stack = Stack::new(
        "edge-auto-http",
        &format!(
            "name: edge-auto-http\nservices:\n  web:\n    command: \"{{demo}}\"\n    replicas: 2\n    port: {port}\n    healthcheck: {{ http: /health, start_interval: 50ms }}\n"
        ),
    );
    stack.up();
    let url = format!("http://127.0.0.1:{port}/echo");
    // HTTP/1.1: three requests on one keep-alive connection.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}\\n", &url, &url, &url])
        .output()
        .expect("curl");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.lines().filter(|l| *l == "1.1 200").count(), 3, "{said}{}", String::from_utf8_lossy(&out.stderr));
    // h2c: three streams one after another on one connection (h2load: Debian's curl 7.88 fails
    // to reuse a prior-knowledge connection, curl issue 10634).
    let out =
        std::process::Command::new("h2load").args(["-n", "3", "-c", "1", "-m", "1", &url]).output().expect("h2load");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("3 succeeded, 0 failed"), "{said}");
    let stats = stack.tug(&["stats", "--json"]);
    let stats: Value = serde_json::from_str(&stats.stdout).expect("stats JSON");
    let total = &stats["services"][0]["total"];
    assert_eq!(total["requests"], 6, "six requests counted, not two connections: {stats:#}");
    let (_, echo) = crate::routing::http_once("127.0.0.1", port, "GET", "/echo").unwrap();
    assert!(echo.contains("\"x-forwarded-for\":\"127.0.0.1\""), "{echo}");
    // A client that waits before speaking is not passed through as TCP on its word: it still
    // gets the router's HTTP handling (here, its own X-Forwarded-For is appended to).
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: svc\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.contains("\"x-forwarded-for\":\"6.6.6.6, 127.0.0.1\""), "{answer}");
}
