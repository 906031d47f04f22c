//! The router in the daemon: a proxied service's `port` balances its ready instances, drains
//! the ones that stop, survives a replica's SIGKILL without a failed request, proxies TCP and
//! gRPC, tells applications where their dependencies are, and reports its counters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Stack, free_port};

/// One HTTP/1.0 request on a new connection: (status, body).
pub fn http_once(host: &str, port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect((host, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: test\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The `instance` field of the demo's JSON answer.
pub fn instance_of(body: &str) -> String {
    let start = body.find("\"instance\":\"").map(|i| i + 12).unwrap_or(0);
    body[start..].split('"').next().unwrap_or_default().to_string()
}

/// A string field of the demo's JSON answer (`version`, `message`, ...).
pub fn field_of(body: &str, field: &str) -> String {
    let key = format!("\"{field}\":\"");
    let start = body.find(&key).map(|i| i + key.len()).unwrap_or(0);
    body[start..].split('"').next().unwrap_or_default().to_string()
}

const CLOSED_EARLY: &str = "connection closed before the response";

/// An HTTP/1.1 client on one keep-alive connection (reconnecting when the server closes it).
pub struct KeepAlive {
    host: String,
    port: u16,
    stream: Option<BufReader<TcpStream>>,
    /// Extra request headers, each `Name: value` (a tenant header, say).
    headers: String,
}

impl KeepAlive {
    pub fn new(host: &str, port: u16) -> KeepAlive {
        KeepAlive { host: host.to_string(), port, stream: None, headers: String::new() }
    }

    /// Sends `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> KeepAlive {
        self.headers.push_str(&format!("{name}: {value}\r\n"));
        self
    }

    /// GET `path`: (status, body), or an error for a connection failure. A kept-alive connection
    /// that the server closed before answering (the write fails, or nothing comes back) is retried
    /// once on a new one, as HTTP clients do (RFC 9112 §9.3.1): a server may close an idle
    /// connection just as a request goes out.
    pub fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let reused = self.stream.is_some();
        match self.try_get(path) {
            Err(e) if reused && e.starts_with(CLOSED_EARLY) => self.try_get(path),
            other => other,
        }
    }

    fn try_get(&mut self, path: &str) -> Result<(u16, String), String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect((self.host.as_str(), self.port)).map_err(|e| format!("connect: {e}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            self.stream = Some(BufReader::new(stream));
        }
        let result = self.exchange(path);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, path: &str) -> Result<(u16, String), String> {
        let reader = self.stream.as_mut().expect("connected");
        // One write: a request in pieces meets Nagle's algorithm and the server's delayed ACK,
        // 40 ms per request on a kept-alive connection.
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{}\r\n", self.headers);
        reader.get_mut().write_all(request.as_bytes()).map_err(|e| format!("{CLOSED_EARLY} (write: {e})"))?;
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| format!("{CLOSED_EARLY} (read: {e})"))? == 0 {
            return Err(CLOSED_EARLY.into());
        }
        let status: u16 =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value.contains("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(|_| format!("bad chunk {line:?}"))?;
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).map_err(|e| format!("read: {e}"))?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length.unwrap_or(0), 0);
            reader.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
        }
        if close {
            self.stream = None;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `tug stats --json` as JSON.
fn stats(stack: &Stack, args: &[&str]) -> Value {
    let mut all = vec!["stats", "--json"];
    all.extend_from_slice(args);
    let run = stack.tug(&all);
    assert_eq!(run.code, 0, "tug stats failed:\n{}", run.all());
    serde_json::from_str(&run.stdout).expect("stats --json is JSON")
}

fn pid_of(stack: &Stack, instance: &str) -> i32 {
    stack.instance(instance).and_then(|i| i["pid"].as_i64()).expect("a pid") as i32
}

/// Three demo replicas of `web` behind `port`, probed every 200 ms, with `probe_extra` (such as
/// `retries: 1`) in the healthcheck; up. Failures while starting do not count (a loaded machine
/// may take a while to start them).
fn web_stack(label: &str, name: &str, port: u16, probe_extra: &str) -> Stack {
    let extra = if probe_extra.is_empty() { String::new() } else { format!(", {probe_extra}") };
    let stack = Stack::new(
        label,
        &format!(
            r#"
name: {name}
services:
  web:
    command: "{{demo}}"
    replicas: 3
    port: {port}
    healthcheck: {{ http: /health, interval: 200ms, start_interval: 50ms, start_period: 2s{extra} }}
"#
        ),
    );
    stack.up();
    stack
}

#[test]
fn the_stable_port_balances_ready_instances_only() {
    let port = free_port();
    let stack = web_stack("routing-balance", "balance", port, "retries: 1");
    let get = || http_once("127.0.0.1", port, "GET", "/").map(|(_, body)| instance_of(&body)).expect("an answer");
    // Round robin per router thread (one per core, as nginx's workers): even within a request
    // or two per thread.
    let seen: Vec<String> = (0..30).map(|_| get()).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for name in ["web-1", "web-2", "web-3"] {
        let count = seen.iter().filter(|s| *s == name).count();
        assert!(count.abs_diff(10) <= threads, "round robin over 3 instances: {count} for {name}: {seen:?}");
    }
    // HTTP/2 with prior knowledge on the same port, to instances that speak HTTP/1.1 only.
    let h2 = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&h2.stdout), "2 200", "{}", String::from_utf8_lossy(&h2.stderr));
    // The router adds X-Forwarded-For and -Proto.
    let (_, echo) = http_once("127.0.0.1", port, "GET", "/echo").unwrap();
    assert!(echo.contains("\"x-forwarded-for\":\"127.0.0.1\""), "{echo}");
    assert!(echo.contains("\"x-forwarded-proto\":\"http\""), "{echo}");
    // An instance that stops being ready gets no new request.
    let web2_port = stack.instance("web-2").unwrap()["port"].as_u64().unwrap() as u16;
    assert_eq!(http_once("127.0.0.1", web2_port, "POST", "/admin/unready").unwrap().0, 200);
    stack.wait_state("web-2", "unhealthy", Duration::from_secs(10));
    let seen: Vec<String> = (0..6).map(|_| get()).collect();
    assert!(!seen.contains(&"web-2".to_string()), "{seen:?}");
    // A stopped one neither.
    assert_eq!(stack.tug(&["stop", "web-1"]).code, 0);
    let seen: Vec<String> = (0..4).map(|_| get()).collect();
    assert!(seen.iter().all(|s| s == "web-3"), "{seen:?}");
    // With none ready, the router answers 503 itself.
    assert_eq!(stack.tug(&["stop", "web-3"]).code, 0);
    assert_eq!(http_once("127.0.0.1", port, "GET", "/").unwrap().0, 503);
    // The port is the stack's while it runs: another program cannot take it.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    assert_eq!(stack.tug(&["down"]).code, 0);
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "down frees the port");
}

#[test]
fn stats_count_requests_per_instance_and_revision_and_dependencies_learn_addresses() {
    let port = free_port();
    let stack = Stack::new(
        "routing-stats",
        &format!(
            r#"
name: stats
services:
  auth-api:
    command: "{{demo}}"
    replicas: 2
    port: {port}
    healthcheck: {{ http: /health, interval: 200ms, start_interval: 50ms }}
  client:
    kind: job
    command: sh -c 'echo "api at $AUTH_API_ADDR"'
    depends_on: {{ auth-api: healthy }}
"#
        ),
    );
    stack.up();
    assert!(
        stack.log("client", "client-1").contains(&format!("api at 127.0.0.1:{port}")),
        "{}",
        stack.log("client", "client-1")
    );
    for _ in 0..20 {
        assert_eq!(http_once("127.0.0.1", port, "GET", "/").unwrap().0, 200);
    }
    assert_eq!(http_once("127.0.0.1", port, "GET", "/?fail=1").unwrap().0, 500);
    let all = stats(&stack, &[]);
    let service = &all["services"][0];
    assert_eq!(service["service"], "auth-api");
    assert_eq!(service["protocol"], "auto");
    assert_eq!(service["address"], format!("127.0.0.1:{port}"));
    assert_eq!(service["total"]["requests"], 21, "{service:#}");
    assert_eq!(service["total"]["status"]["2xx"], 20);
    assert_eq!(service["total"]["status"]["5xx"], 1);
    let latency = &service["total"]["latency"];
    let observed: u64 = latency["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(observed, 21);
    let revision = stack.instance("auth-api-1").unwrap()["revision"].clone();
    assert_eq!(service["revisions"][0]["revision"], revision);
    let instances = service["instances"].as_array().unwrap();
    let mut ids: Vec<&str> = instances.iter().map(|i| i["instance"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["127.0.0.1/auth-api-1", "127.0.0.1/auth-api-2"]);
    assert!(instances.iter().all(|i| i["member"] == true && i["counters"]["requests"].as_u64().unwrap() >= 5));
    // One service by name, as a table too; a bad name is an error that says so.
    assert_eq!(stats(&stack, &["auth-api"])["services"].as_array().unwrap().len(), 1);
    let table = stack.tug(&["stats", "auth-api"]);
    assert_eq!(table.code, 0, "{}", table.all());
    assert!(table.stdout.contains("(all)") && table.stdout.contains("127.0.0.1/auth-api-2"), "{}", table.stdout);
    let missing = stack.tug(&["stats", "client"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("has no router"), "{}", missing.all());
}

#[test]
fn a_replica_killed_under_load_fails_no_request_and_rejoins() {
    let port = free_port();
    let stack = web_stack("routing-kill", "kill", port, "retries: 1");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || {
                let mut client = KeepAlive::new("127.0.0.1", port);
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.get("/") {
                        Ok((200, _)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => failures.push(format!("{status} {body}")),
                        Err(e) => failures.push(e),
                    }
                }
                failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let victim = pid_of(&stack, "web-2");
    let before = ok.load(Ordering::Relaxed);
    // SAFETY: kill(2) on a pid of this test's stack.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    stack.wait_for("web-2", Duration::from_secs(15), |row| {
        row["state"] == "healthy" && row["pid"].as_i64().is_some_and(|p| p as i32 != victim)
    });
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let total = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        total + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total > before + 100, "the load went on: {before} before the kill, {total} in all");
    // The restarted replica is back in the rotation.
    let seen: Vec<String> = (0..9).map(|_| instance_of(&http_once("127.0.0.1", port, "GET", "/").unwrap().1)).collect();
    assert!(seen.contains(&"web-2".to_string()), "{seen:?}");
}

/// `up` refuses a fixed port it cannot bind, and says who holds it: a program (its pid and
/// command line), or connections in TIME_WAIT that used it as their local end, which nothing
/// listens on and which the kernel frees within a minute.
#[test]
fn a_taken_port_names_the_program_or_the_time_wait_that_holds_it() {
    let one_port = |port: u16| {
        Stack::new(
            "routing-taken",
            &format!("name: taken\nservices:\n  web:\n    command: \"{{demo}}\"\n    port: {port}\n"),
        )
    };
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let up = one_port(port).tug(&["up", "-d"]);
    assert_ne!(up.code, 0, "{}", up.all());
    let expected = format!("port {port} of `web` is already in use by another program: pid {}", std::process::id());
    assert!(up.stderr.contains(&expected), "{}", up.all());
    // An outgoing connection's local port, closed from this side first: TIME_WAIT, no listener.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
    let local = client.local_addr().unwrap().port();
    let (accepted, _) = server.accept().unwrap();
    drop(client);
    std::thread::sleep(Duration::from_millis(50));
    drop(accepted);
    std::thread::sleep(Duration::from_millis(50));
    let up = one_port(local).tug(&["up", "-d"]);
    assert_ne!(up.code, 0, "{}", up.all());
    assert!(
        up.stderr.contains(&format!("port {local} of `web` is held by closed connections in TIME_WAIT")),
        "{}",
        up.all()
    );
    assert!(up.stderr.contains("frees it within a minute"), "{}", up.all());
}

/// The stack's YAML for `a_deploy_onto_a_port_left_in_time_wait_moves_the_new_program_off_it`.
fn time_wait_yaml(script: &std::path::Path, port: u16, reuse: u8) -> String {
    format!(
        r#"
name: timewait
services:
  web:
    command: exec /usr/bin/python3 {script}
    port: {port}
    environment: {{ PORT: "${{PORT}}", REUSE: "{reuse}" }}
    healthcheck: {{ http: /, interval: 200ms, start_interval: 50ms }}
    deploy: {{ strategy: recreate }}
"#,
        script = script.display()
    )
}

/// A stopped instance's port goes back to the pool, while the connections its program closed
/// still hold it in TIME_WAIT for up to a minute. A program that binds with SO_REUSEADDR can
/// bind it; one without cannot. The next program given the port must be able to bind it
/// whatever it does: here a deploy replaces a program that set the option with one that does
/// not, and the new instance goes to another port instead of failing the deploy.
#[test]
fn a_deploy_onto_a_port_left_in_time_wait_moves_the_new_program_off_it() {
    let port = free_port();
    let dir = crate::TempDir::new("routing-time-wait");
    let script = dir.path().join("server.py");
    std::fs::write(
        &script,
        r#"import os, socket
s = socket.socket()
if os.environ["REUSE"] == "1":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
"#,
    )
    .unwrap();
    let stack = Stack::new("routing-time-wait", &time_wait_yaml(&script, port, 1));
    stack.up();
    for _ in 0..5 {
        assert_eq!(http_once("127.0.0.1", port, "GET", "/").map(|(status, _)| status), Some(200));
    }
    let old_port = stack.instance("web-1").expect("web-1")["port"].as_u64().unwrap();
    stack.dir.write("tug.yaml", &time_wait_yaml(&script, port, 0));
    let deploy = stack.tug(&["deploy"]);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    let row = stack.wait_for("web-1", Duration::from_secs(10), |row| row["state"] == "healthy");
    assert_ne!(row["port"].as_u64().unwrap(), old_port, "{row}");
    assert_eq!(row["restarts"], 0, "{row}");
    assert_eq!(http_once("127.0.0.1", port, "GET", "/").map(|(status, _)| status), Some(200));
}

#[test]
fn scaling_down_drains_requests_in_flight() {
    let port = free_port();
    let stack = web_stack("routing-drain", "drain", port, "");
    // Slow requests on every instance (round robin), then two of them are removed.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let handle = std::thread::spawn(move || http_once("127.0.0.1", port, "GET", "/?delay=1500ms"));
            std::thread::sleep(Duration::from_millis(50));
            handle
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let scale = stack.tug(&["scale", "web=1"]);
    assert_eq!(scale.code, 0, "{}", scale.all());
    let mut served = Vec::new();
    for handle in slow {
        let (status, body) = handle.join().unwrap().expect("an answer");
        assert_eq!(status, 200, "{body}");
        served.push(instance_of(&body));
    }
    served.sort();
    served.dedup();
    assert_eq!(served, ["web-1", "web-2", "web-3"], "requests in flight on the removed instances finished");
    // `scale` waited for the requests in flight before stopping their instances.
    assert!(started.elapsed() >= Duration::from_millis(1000), "{:?}", started.elapsed());
    assert!(stack.instance("web-3").is_none());
    let seen: Vec<String> = (0..3).map(|_| instance_of(&http_once("127.0.0.1", port, "GET", "/").unwrap().1)).collect();
    assert!(seen.iter().all(|s| s == "web-1"), "{seen:?}");
}

#[test]
fn tcp_mode_proxies_redis() {
    let port = free_port();
    let stack = Stack::new(
        "routing-tcp",
        &format!(
            r#"
name: tcp
services:
  cache:
    command: [redis-server, --port, "${{PORT}}", --bind, "${{HOST}}", --save, "", --appendonly, "no"]
    port: {port}
    protocol: tcp
    healthcheck: {{ exec: "redis-cli -h $HOST -p $PORT ping", interval: 200ms, start_interval: 50ms }}
"#
        ),
    );
    stack.up();
    let cli = |args: &[&str]| {
        let out =
            Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["ping"]), "PONG");
    assert_eq!(cli(&["set", "greeting", "hello through tug"]), "OK");
    assert_eq!(cli(&["get", "greeting"]), "hello through tug");
    let service = &stats(&stack, &["cache"])["services"][0];
    assert_eq!(service["protocol"], "tcp");
    assert!(service["total"]["requests"].as_u64().unwrap() >= 3, "{service:#}");
    // An idle pooled client connection does not hold up a stop for the grace period.
    let idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = Instant::now();
    assert_eq!(stack.tug(&["stop", "cache"]).code, 0);
    assert!(started.elapsed() < Duration::from_secs(5), "stop took {:?}", started.elapsed());
    drop(idle);
}

/// A changed `listen` moves the stack's ports to the new address on `deploy`, and back, under
/// load: 0.0.0.0 and 127.0.0.1 overlap, so the old listener lets go of the port just before the
/// new one takes it.
#[test]
fn a_changed_listen_moves_the_ports_on_deploy() {
    let port = free_port();
    let yaml = |listen: &str| {
        format!(
            "name: moving\n{listen}services:\n  web:\n    command: \"{{demo}}\"\n    replicas: 2\n    port: {port}\n    \
             healthcheck: {{ http: /health, interval: 1s, start_interval: 50ms }}\n"
        )
    };
    let stack = Stack::new("routing-listen", &yaml(""));
    stack.up();
    // 127.0.0.2 is loopback too, reached only by a listener on every address.
    let on = |host: &str| http_once(host, port, "GET", "/").map(|(status, _)| status);
    assert_eq!((on("127.0.0.1"), on("127.0.0.2")), (Some(200), None));
    let load = crate::rollout::Load::start(port, 2, 40);
    std::thread::sleep(Duration::from_millis(300));
    stack.dir.write(
        "tug.yaml",
        &yaml("listen: 0.0.0.0\n").replace("{demo}", &crate::harness::demo_bin().display().to_string()),
    );
    let moved = stack.tug(&["deploy"]);
    assert_eq!(moved.code, 0, "{}", moved.all());
    assert!(moved.stderr.contains("move from 127.0.0.1 to 0.0.0.0"), "{}", moved.all());
    assert_eq!((on("127.0.0.1"), on("127.0.0.2")), (Some(200), Some(200)));
    std::thread::sleep(Duration::from_millis(300));
    stack.dir.write("tug.yaml", &yaml("").replace("{demo}", &crate::harness::demo_bin().display().to_string()));
    let back = stack.tug(&["deploy"]);
    assert_eq!(back.code, 0, "{}", back.all());
    assert_eq!((on("127.0.0.1"), on("127.0.0.2")), (Some(200), None));
    std::thread::sleep(Duration::from_millis(300));
    load.stop().assert_clean("the ports moving twice", 20);
}

#[test]
fn changing_how_a_port_is_balanced_refuses_nothing_and_mixes_no_services() {
    let (web_port, api_port) = (free_port(), free_port());
    let yaml = |balance: &str| {
        format!(
            r#"
name: rebalance
services:
  web:
    command: "{{demo}}"
    replicas: 2
    port: {web_port}
    balance: {balance}
    healthcheck: {{ http: /health, interval: 200ms, start_interval: 50ms }}
  api:
    command: "{{demo}}"
    port: {api_port}
    healthcheck: {{ http: /health, interval: 200ms, start_interval: 50ms }}
"#
        )
    };
    let stack = Stack::new("routing-rebalance", &yaml("round_robin"));
    stack.up();
    let stop = Arc::new(AtomicBool::new(false));
    // One client on a kept-alive connection, two on a new connection for every request.
    let keep = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut client = KeepAlive::new("127.0.0.1", web_port);
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(client.get("/").map(|(status, body)| (status, field_of(&body, "service"))));
            }
            answers
        })
    };
    let fresh: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(
                        http_once("127.0.0.1", web_port, "GET", "/")
                            .map(|(status, body)| (status, field_of(&body, "service")))
                            .ok_or_else(|| "no answer".to_string()),
                    );
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Only how the port is balanced changes: no instance restarts, the router is replaced on
    // the same socket.
    let pids: Vec<i32> = ["web-1", "web-2", "api-1"].iter().map(|i| pid_of(&stack, i)).collect();
    stack
        .dir
        .write("tug.yaml", &yaml("least_request").replace("{demo}", &crate::harness::demo_bin().display().to_string()));
    stack.up();
    std::thread::sleep(Duration::from_millis(300));
    // Ports freed and taken by others must not confuse a connection the old router accepted.
    assert_eq!(stack.tug(&["scale", "web=1"]).code, 0);
    assert_eq!(stack.tug(&["scale", "api=3"]).code, 0);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut answers = keep.join().unwrap();
    for f in fresh {
        answers.extend(f.join().unwrap());
    }
    let bad: Vec<_> = answers.iter().filter(|a| !matches!(a, Ok((200, s)) if s == "web")).collect();
    assert!(bad.is_empty(), "{} of {} went wrong: {:?}", bad.len(), answers.len(), &bad[..bad.len().min(5)]);
    assert!(answers.len() > 100, "{}", answers.len());
    let after: Vec<i32> = ["web-1", "api-1"].iter().map(|i| pid_of(&stack, i)).collect();
    assert_eq!(after, [pids[0], pids[2]], "no instance restarted");
}

const GRPC_SERVER: &str = r#"
import os
from concurrent import futures
import grpc

def hello(request, context):
    tenant = dict(context.invocation_metadata()).get("x-tenant-id", "-")
    return ("%s %s %s" % (os.environ["TUG_INSTANCE"], tenant, request.decode())).encode()

handler = grpc.method_handlers_generic_handler("demo.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("%s:%s" % (os.environ["HOST"], os.environ["PORT"]))
server.start()
print("serving gRPC", flush=True)
server.wait_for_termination()
"#;

const GRPC_CLIENT: &str = r#"
import sys
import grpc

channel = grpc.insecure_channel(sys.argv[1])
hello = channel.unary_unary("/demo.Greeter/Hello")
for tenant in sys.argv[2:]:
    print(hello(b"hi", metadata=[("x-tenant-id", tenant)], timeout=10).decode(), flush=True)
"#;

#[test]
fn grpc_calls_go_through_the_router_sticky_by_tenant() {
    let port = free_port();
    let stack = Stack::new(
        "routing-grpc",
        &format!(
            r#"
name: grpc
services:
  greeter:
    command: [/usr/bin/python3, server.py]
    replicas: 2
    port: {port}
    balance: tenant_hash
    tenant_header: x-tenant-id
    healthcheck: {{ log: serving gRPC }}
"#
        ),
    );
    stack.dir.write("server.py", GRPC_SERVER);
    stack.dir.write("client.py", GRPC_CLIENT);
    stack.up();
    let tenants: Vec<String> = (0..12).map(|t| format!("tenant-{t}")).collect();
    let mut args = vec!["client.py".to_string(), format!("127.0.0.1:{port}")];
    for tenant in &tenants {
        args.push(tenant.clone());
        args.push(tenant.clone());
    }
    let out = Command::new("/usr/bin/python3")
        .args(&args)
        .current_dir(stack.path())
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let mut parts = l.split(' ');
            (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
        })
        .collect();
    assert_eq!(answers.len(), 24, "{stdout}");
    // The same tenant twice in a row: the same instance; over twelve tenants, both instances.
    for pair in answers.chunks(2) {
        assert_eq!(pair[0], pair[1], "a tenant moved: {stdout}");
    }
    let mut instances: Vec<&str> = answers.iter().map(|(i, _)| i.as_str()).collect();
    instances.sort();
    instances.dedup();
    assert_eq!(instances, ["greeter-1", "greeter-2"], "{stdout}");
    assert_eq!(stats(&stack, &["greeter"])["services"][0]["total"]["status"]["2xx"], 24);
}

/// A Redis server for a fleet test, stopped when dropped.
struct Redis {
    child: std::process::Child,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which sides (`DEMO_MESSAGE`) answer on `host:port`, over `n` requests.
fn sides(host: &str, port: u16, n: usize) -> Vec<String> {
    let mut seen: Vec<String> = (0..n)
        .map(|_| {
            let (status, body) = http_once(host, port, "GET", "/").expect("an answer");
            assert_eq!(status, 200, "{body}");
            field_of(&body, "message")
        })
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

fn fleet_members(stack: &Stack) -> Vec<String> {
    let all = stats(stack, &["web"]);
    let mut members: Vec<String> = all["services"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["member"] == true)
        .map(|i| i["instance"].as_str().unwrap().to_string())
        .collect();
    members.sort();
    members
}

fn wait_members(stack: &Stack, wanted: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let members = fleet_members(stack);
        if members == wanted {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "members {members:?}, wanted {wanted:?} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_hosts_sharing_a_redis_registry_form_one_fleet() {
    let redis_port = free_port();
    let mut redis = Redis::start(redis_port);
    let port = free_port();
    let yaml = format!(
        r#"
name: fleet
registry: redis://127.0.0.1:{redis_port}/0
services:
  web:
    command: "{{demo}}"
    replicas: 2
    port: {port}
    environment: {{ DEMO_MESSAGE: "${{SIDE}}" }}
    healthcheck: {{ http: /health, interval: 200ms, start_interval: 50ms }}
"#
    );
    let a = Stack::new("fleet-a", &yaml);
    let b = Stack::new("fleet-b", &yaml);
    let up_a = a.tug_with(&["up", "-d", "--timeout", "60s"], &[("SIDE", "a")]);
    assert_eq!(up_a.code, 0, "{}", up_a.all());
    let up_b = b.tug_with(&["up", "-d", "--timeout", "60s", "--advertise", "127.0.0.2"], &[("SIDE", "b")]);
    assert_eq!(up_b.code, 0, "{}", up_b.all());
    // Registration: each host's router balances over both hosts' ready instances.
    let everyone = ["127.0.0.1/web-1", "127.0.0.1/web-2", "127.0.0.2/web-1", "127.0.0.2/web-2"];
    wait_members(&a, &everyone, Duration::from_secs(10));
    wait_members(&b, &everyone, Duration::from_secs(10));
    assert_eq!(sides("127.0.0.1", port, 8), ["a", "b"]);
    assert_eq!(sides("127.0.0.2", port, 8), ["a", "b"]);
    // Instances on host b bind and register its address.
    assert!(b.instance("web-1").is_some());
    let (_, echo) = http_once("127.0.0.2", port, "GET", "/echo").unwrap();
    assert!(echo.contains("\"x-forwarded-for\":\"127.0.0.1\""), "{echo}");

    // Redis restarts empty: routers keep serving what they knew, heartbeats fill it again.
    redis.stop();
    assert_eq!(sides("127.0.0.1", port, 8), ["a", "b"], "a registry outage stops nothing");
    let _redis = Redis::start(redis_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = Command::new("redis-cli")
            .args(["-p", &redis_port.to_string(), "zcard", "tug:fleet:live"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&keys.stdout).trim() == "4" {
            break;
        }
        assert!(Instant::now() < deadline, "the fleet did not register again: {:?}", keys);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sides("127.0.0.1", port, 8), ["a", "b"]);

    // Host b dies (SIGKILL of its daemon): it leaves the fleet within its TTL (3 s).
    let b_daemon = b.daemon_pid().unwrap();
    // SAFETY: kill(2) on this test's daemon.
    unsafe { libc::kill(b_daemon, libc::SIGKILL) };
    let left_after = wait_members(&a, &["127.0.0.1/web-1", "127.0.0.1/web-2"], Duration::from_secs(6));
    assert!(left_after <= Duration::from_millis(4500), "host b left after {left_after:?}");
    assert_eq!(sides("127.0.0.1", port, 8), ["a"]);
}
