//! A proxied service's `port`: connections go to its ready instances in turn.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{Stack, free_port};

/// One HTTP/1.0 GET on a new connection; the demo's answer names its instance.
fn instance_behind(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let start = answer.find("\"instance\":\"")? + 12;
    Some(answer[start..].split('"').next()?.to_string())
}

#[test]
fn the_stable_port_balances_ready_instances_only() {
    let port = free_port();
    let stack = Stack::new(
        "forward",
        &format!(
            r#"
name: forward
services:
  web:
    command: "{{demo}}"
    replicas: 3
    port: {port}
    healthcheck: {{ http: /health, interval: 200ms, start_interval: 50ms, retries: 1 }}
"#
        ),
    );
    stack.up();
    let seen: Vec<String> = (0..6).map(|_| instance_behind(port).expect("an answer through the port")).collect();
    for name in ["web-1", "web-2", "web-3"] {
        assert_eq!(seen.iter().filter(|s| *s == name).count(), 2, "round robin over 3 instances: {seen:?}");
    }
    // An instance that stops being ready gets no new connection.
    let web2_port = stack.instance("web-2").unwrap()["port"].as_u64().unwrap() as u16;
    let mut admin = TcpStream::connect(("127.0.0.1", web2_port)).unwrap();
    admin.write_all(b"POST /admin/unready HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut ignored = String::new();
    let _ = admin.read_to_string(&mut ignored);
    stack.wait_state("web-2", "unhealthy", Duration::from_secs(10));
    let seen: Vec<String> = (0..6).map(|_| instance_behind(port).unwrap()).collect();
    assert!(!seen.contains(&"web-2".to_string()), "{seen:?}");
    // A stopped one neither.
    assert_eq!(stack.tug(&["stop", "web-1"]).code, 0);
    let seen: Vec<String> = (0..4).map(|_| instance_behind(port).unwrap()).collect();
    assert!(seen.iter().all(|s| s == "web-3"), "{seen:?}");
    // The port is the stack's while it runs: another program cannot take it.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    assert_eq!(stack.tug(&["down"]).code, 0);
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "down frees the port");
}
