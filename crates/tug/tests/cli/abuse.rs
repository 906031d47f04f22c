//! The daemon's socket under abuse: unsigned (or wrongly signed) 16 MiB bodies, and a thousand
//! idle connections, neither take its memory nor lock the CLI out.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::harness::Stack;

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends `count` requests at once, each declaring and sending a 16 MiB body, with `header`
/// (if any) as Authorization; returns the daemon's highest VmRSS meanwhile, in KiB.
fn flood(socket: &std::path::Path, daemon: i32, count: usize, header: Option<String>) -> u64 {
    let size = 16 * 1024 * 1024;
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let socket = socket.to_path_buf();
            let header = header.clone();
            std::thread::spawn(move || {
                let Ok(mut stream) = UnixStream::connect(&socket) else { return };
                let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
                let auth = header.map(|h| format!("Authorization: {h}\r\n")).unwrap_or_default();
                let head = format!("PUT /v1/stack HTTP/1.1\r\nHost: tug\r\n{auth}Content-Length: {size}\r\n\r\n");
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..size / chunk.len() {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    let mut peak = 0;
    while threads.iter().any(|t| !t.is_finished()) {
        peak = peak.max(rss_kib(daemon));
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in threads {
        let _ = t.join();
    }
    peak.max(rss_kib(daemon))
}

/// A header that passes every check but the signature: a fresh timestamp, a new nonce.
fn forged_header() -> String {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("TUG-HMAC-SHA256 ts={ts},nonce={:032x},sig={}", N.fetch_add(1, Ordering::Relaxed), "00".repeat(32))
}

#[test]
fn unsigned_bodies_and_idle_connections_neither_take_the_memory_nor_lock_the_cli_out() {
    let stack = Stack::new("abuse", "name: abuse\nservices:\n  idle:\n    command: [sleep, '600']\n");
    stack.up();
    let daemon = stack.daemon_pid().expect("the daemon");
    let socket = stack.state_dir().join(tug_proto::SOCKET_FILE);
    let baseline = rss_kib(daemon);
    // Unsigned: refused before the body is read.
    let peak = flood(&socket, daemon, 100, None);
    assert!(peak < 100 * 1024, "100 unsigned 16 MiB bodies took the daemon to {peak} KiB (baseline {baseline})");
    // Signed with a wrong key: read within the bodies' budget, then refused.
    let forged: Vec<String> = (0..100).map(|_| forged_header()).collect();
    let peak_forged = {
        let threads: Vec<_> = forged
            .into_iter()
            .map(|h| {
                let socket = socket.clone();
                std::thread::spawn(move || flood(&socket, daemon, 1, Some(h)))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or(0)).max().unwrap_or(0)
    };
    assert!(
        peak_forged < 100 * 1024,
        "100 forged 16 MiB bodies took the daemon to {peak_forged} KiB (baseline {baseline})"
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(daemon);
    eprintln!(
        "daemon VmRSS: baseline {baseline} KiB, peak {peak} KiB unsigned, {peak_forged} KiB forged, {after} KiB after"
    );
    assert!(after < baseline + 40 * 1024, "the daemon kept {after} KiB after the flood (baseline {baseline})");
    // A thousand idle connections held open: the CLI still gets through.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        match UnixStream::connect(&socket) {
            Ok(stream) => idle.push(stream),
            Err(_) => break,
        }
    }
    assert!(idle.len() >= 900, "only {} connections could be opened", idle.len());
    let started = Instant::now();
    let ps = stack.tug(&["ps"]);
    let took = started.elapsed();
    assert_eq!(ps.code, 0, "tug ps with {} idle connections: {}", idle.len(), ps.all());
    assert!(ps.stdout.contains("idle-1"), "{}", ps.stdout);
    eprintln!("tug ps answered in {took:?} with {} idle connections held", idle.len());
    drop(idle);
}
