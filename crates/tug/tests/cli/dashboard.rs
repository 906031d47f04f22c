//! The web dashboard at `/ui/`, driven in Debian's headless Chromium (Selenium and
//! chromedriver, `tests/data/ui/dashboard.py`): it shows every service and instance and a
//! canary's step, a click on promote promotes it, and without the session cookie, or from
//! another origin, nothing happens. The screenshot is kept under `target/tmp/artifacts/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Stack, demo_bin, free_port};
use crate::rollout::{wait_phase, wait_status};

const SECRET: &str = "dash-secret-6d1f0c2e9a";

const CANARY: &str = "{ strategy: canary, steps: [50, 100], step_duration: 10m }";

fn stack_yaml(port: u16, api_port: u16, version: &str) -> String {
    format!(
        r#"
name: dash
api: {{ listen: 127.0.0.1:{api_port} }}
settings:
  API_TOKEN: {{ type: secret }}
services:
  web:
    command: "{demo}"
    replicas: 2
    secrets: [API_TOKEN]
    port: {port}
    environment: {{ VERSION: "{version}" }}
    healthcheck: {{ http: /health, interval: 1s, start_interval: 100ms }}
    deploy: {CANARY}
  worker:
    command: "sleep 600"
"#,
        demo = demo_bin().display()
    )
}

/// One HTTP/1.1 exchange with the endpoint: (status, head, body).
fn exchange(port: u16, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn login_link(stack: &Stack, args: &[&str]) -> String {
    let mut all = vec!["dashboard"];
    all.extend_from_slice(args);
    let run = stack.tug(&all);
    assert_eq!(run.code, 0, "{}", run.all());
    let link = run.stdout.lines().find(|l| l.contains("/ui/login?token=")).unwrap_or_default().trim().to_string();
    assert!(link.starts_with("http://127.0.0.1:"), "a login link: {}", run.stdout);
    link
}

/// Logs in with a link as a browser would: the session cookie and the page's CSRF token.
fn session(api_port: u16, link: &str) -> (String, String) {
    let path = &link[link.find("/ui/").unwrap()..];
    let (status, head, _) =
        exchange(api_port, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\nConnection: close\r\n\r\n"));
    assert_eq!(status, 303, "{head}");
    let cookie_line = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("a cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie_line.contains(attribute), "{cookie_line}");
    }
    let cookie = cookie_line.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_string();
    // The link works once.
    let (again, _, _) =
        exchange(api_port, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\nConnection: close\r\n\r\n"));
    assert_eq!(again, 401);
    let (status, _, page) = exchange(
        api_port,
        &format!("GET /ui/ HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200);
    let csrf = page
        .split("name=\"tug-csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_string();
    (cookie, csrf)
}

fn promote_request(api_port: u16, cookie: Option<&str>, csrf: &str, origin: &str) -> String {
    let body = r#"{"service":"web","action":"promote"}"#;
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    format!(
        "POST /ui/api/rollout HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\n{cookie}Origin: {origin}\r\n\
         X-Tug-CSRF: {csrf}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn the_dashboard_in_chromium_shows_the_stack_and_promotes_a_canary() {
    let (port, api_port) = (free_port(), free_port());
    let stack = Stack::new("dashboard", &stack_yaml(port, api_port, "1"));
    let secret = [("API_TOKEN", SECRET)];
    let up = stack.tug_with(&["up", "-d", "--timeout", "60s"], &secret);
    assert_eq!(up.code, 0, "{}", up.all());
    stack.dir.write("tug.yaml", &stack_yaml(port, api_port, "2"));
    let deploy = stack.tug_with(&["deploy", "--detach"], &secret);
    assert_eq!(deploy.code, 0, "{}", deploy.all());
    wait_status(&stack, "the canary's first step", Duration::from_secs(60), |s| s["weight"] == 50);
    let base = format!("http://127.0.0.1:{api_port}");

    // Without the browser first: what the server refuses, and that it changes nothing.
    let (cookie, csrf) = session(api_port, &login_link(&stack, &[]));
    let (status, _, body) = exchange(api_port, &promote_request(api_port, None, &csrf, &base));
    assert_eq!(status, 401, "no cookie: {body}");
    let (status, _, body) = exchange(api_port, &promote_request(api_port, Some(&cookie), &csrf, "http://evil.example"));
    assert_eq!(status, 403, "a forged Origin: {body}");
    let (status, _, body) = exchange(api_port, &promote_request(api_port, Some(&cookie), "forged", &base));
    assert_eq!(status, 403, "a wrong CSRF token: {body}");
    let (read_only_cookie, read_only_csrf) = session(api_port, &login_link(&stack, &["--read-only"]));
    let (status, _, body) =
        exchange(api_port, &promote_request(api_port, Some(&read_only_cookie), &read_only_csrf, &base));
    assert_eq!(status, 403, "a read-only session: {body}");
    let s = wait_phase(&stack, "progressing");
    assert_eq!((s["weight"].as_u64(), s["step"].as_u64()), (Some(50), Some(0)), "nothing moved: {s:#}");
    // What the page is fed, and the metrics, never carry the secret.
    let mut events = TcpStream::connect(("127.0.0.1", api_port)).unwrap();
    events.set_read_timeout(Some(Duration::from_millis(2500))).unwrap();
    write!(events, "GET /ui/events HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\nCookie: {cookie}\r\n\r\n").unwrap();
    // The stream never ends: read what two seconds bring.
    let (mut fed, mut chunk, until) =
        (Vec::new(), [0u8; 16 * 1024], std::time::Instant::now() + Duration::from_secs(2));
    while std::time::Instant::now() < until {
        match events.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => fed.extend_from_slice(&chunk[..n]),
        }
    }
    drop(events);
    let fed = String::from_utf8_lossy(&fed);
    assert!(fed.contains("data:") && fed.contains("\"web\""), "the event stream: {fed}");
    let token = stack.tug(&["token", "metrics"]).stdout.trim().to_string();
    let (status, _, metrics) = exchange(
        api_port,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200);
    for (what, text) in [("the event stream", fed.as_ref()), ("/metrics", metrics.as_str())] {
        assert!(!text.contains(SECRET), "{what} carries the secret");
    }

    // In the browser, with requests flowing so the charts have something to draw.
    // Slow enough that the canary's analysis (which compares p99s once each side has 100
    // requests) never judges within the test: one slow request on a busy machine would roll the
    // canary back, and the page under test would rightly offer no Promote.
    let load = crate::rollout::Load::start(port, 1, 3);
    let instances: Vec<String> = stack.ps().iter().map(|r| r["instance"].as_str().unwrap().to_string()).collect();
    assert_eq!(instances.len(), 4, "two web, one canary, one worker: {instances:?}");
    let screenshot = artifact("dashboard.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ui/dashboard.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([&base, &login_link(&stack, &[])])
        .arg(&screenshot)
        .args(["web,worker", &instances.join(","), "web", "step 1/2"])
        .output()
        .expect("/usr/bin/python3");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser run failed:\n{said}");
    let seen: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect(&said);
    assert!(seen["without_cookie"].as_str().unwrap().contains("Log in"), "{seen:#}");
    assert_eq!(seen["cookie"]["httpOnly"], true, "{seen:#}");
    assert_eq!(seen["cookie"]["sameSite"], "Strict", "{seen:#}");
    assert_eq!(seen["services"], serde_json::json!(["web", "worker"]), "{seen:#}");
    assert_eq!(seen["forged"], "sent", "the forged request was made: {seen:#}");
    assert!(seen["message_class"].as_str().unwrap_or_default().contains("ok"), "{seen:#}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot: {} bytes", png.len());
    eprintln!("dashboard screenshot: {}", screenshot.display());
    assert!(load.stop().ok() > 0);

    // The click promoted it: the daemon says so.
    let s = wait_phase(&stack, "complete");
    assert_eq!(s["weight"], 100, "{s:#}");
    let status = stack.tug(&["rollout", "status", "web"]);
    assert!(status.stdout.contains("complete"), "{}", status.all());
    let log = std::fs::read_to_string(stack.state_dir().join("daemon.log")).unwrap();
    assert_eq!(log.matches("dashboard: promote web").count(), 1, "one promotion, by the click:\n{log}");
}

/// A file kept after the run, for a person to look at: `target/tmp/artifacts/NAME`.
fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
