//! A running stack for tests: a temporary folder with a `tug.yaml`, the real
//! `tug` binary driving the real daemon, and `tug down` (then SIGKILL of
//! whatever is left) when the test ends, failed or not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Run, TempDir, repo_dir};

/// The demo HTTP service, built once per test run.
pub fn demo_bin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "tug-demo"])
            .current_dir(repo_dir())
            .status()
            .expect("run cargo build -p tug-demo");
        assert!(status.success(), "cargo build -p tug-demo failed");
        let bin = Path::new(env!("CARGO_BIN_EXE_tug")).with_file_name("tug-demo");
        assert!(bin.exists(), "{} is missing", bin.display());
        bin
    })
}

/// A port range of 100 ports no other test of this run uses (tests run in parallel).
fn port_block() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Below the kernel's ephemeral range (32768 and up), where outgoing connections
    // (probes) take their local ports; spread runs of different processes too.
    let base = 20000 + ((std::process::id() as u16 % 127 + n) % 127) * 100;
    (base, base + 99)
}

/// A free TCP port on 127.0.0.1 right now, for a stack's fixed `port:`.
/// Polls `check` until it holds; fails the test after `timeout`, naming `what` it waited for.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub struct Stack {
    pub dir: TempDir,
    pub range: (u16, u16),
    pub env: Vec<(String, String)>,
}

impl Stack {
    /// A stack folder with `yaml` as its `tug.yaml`. `{demo}` in the text is
    /// replaced with the demo binary's path.
    pub fn new(label: &str, yaml: &str) -> Stack {
        let dir = TempDir::new(label);
        dir.write("tug.yaml", &yaml.replace("{demo}", &demo_bin().display().to_string()));
        Stack { dir, range: port_block(), env: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join(".tug")
    }

    /// Runs `tug` in the stack's folder, with a clean environment.
    pub fn tug(&self, args: &[&str]) -> Run {
        self.tug_with(args, &[])
    }

    pub fn tug_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.tug_under(&[], args, env)
    }

    /// `tug ARGS` run by `wrapper` (such as `prlimit --nofile=2048:2048`).
    pub fn tug_under(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Run {
        let range = format!("{}-{}", self.range.0, self.range.1);
        let mut all: Vec<(&str, &str)> = vec![("TUG_PORT_RANGE", range.as_str())];
        all.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        all.extend(env.iter().copied());
        crate::tug_under(wrapper, self.path(), args, &all, None)
    }

    /// `tug up -d` with a time limit; panics with the output when it fails.
    pub fn up(&self) -> Run {
        let run = self.tug(&["up", "-d", "--timeout", "60s"]);
        assert_eq!(run.code, 0, "tug up -d failed:\n{}", run.all());
        run
    }

    /// `tug ps --json`.
    pub fn ps(&self) -> Vec<Value> {
        let run = self.tug(&["ps", "--json"]);
        assert_eq!(run.code, 0, "tug ps --json failed:\n{}", run.all());
        serde_json::from_str::<Value>(&run.stdout).expect("ps --json is JSON").as_array().cloned().unwrap_or_default()
    }

    pub fn instance(&self, name: &str) -> Option<Value> {
        self.ps().into_iter().find(|i| i["instance"] == name)
    }

    /// Polls `tug ps --json` until `check` holds for the instance, or panics after `timeout`.
    pub fn wait_for(&self, name: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.instance(name);
            if let Some(row) = &row
                && check(row)
            {
                return row.clone();
            }
            if Instant::now() > deadline {
                panic!("{name} did not reach the expected state in {timeout:?}; last: {row:#?}\nps: {:#?}", self.ps());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        self.wait_for(name, timeout, |row| row["state"] == state)
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state_dir().join("daemon.pid")).ok()?.trim().parse().ok()
    }

    /// The text of an instance's current log file.
    pub fn log(&self, service: &str, instance: &str) -> String {
        std::fs::read_to_string(self.state_dir().join("logs").join(service).join(format!("{instance}.log")))
            .unwrap_or_default()
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

/// Waits until `pid` is gone; false if it is still there after `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Pids of live processes whose environment has `TUG_STATE_DIR=<dir>`: what a stack runs.
pub fn stack_processes(state_dir: &Path) -> Vec<i32> {
    let wanted = format!("TUG_STATE_DIR={}", state_dir.canonicalize().unwrap_or(state_dir.to_path_buf()).display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if env.split(|b| *b == 0).any(|e| e == wanted.as_bytes()) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Stack {
    fn drop(&mut self) {
        let daemon = self.daemon_pid();
        let _ = Command::new(env!("CARGO_BIN_EXE_tug"))
            .arg("down")
            .current_dir(self.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(crate::engine_host())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Whatever a failed test left behind must not outlive it.
        if let Some(pid) = daemon.filter(|p| alive(*p)) {
            // SAFETY: kill of a pid this test's stack started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for pid in stack_processes(&self.state_dir()) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // And whatever it left on the container engine.
        let file = std::fs::read_to_string(self.path().join("tug.yaml")).unwrap_or_default();
        if file.contains("image:") || file.contains("build:") {
            let state_dir = self.state_dir();
            for id in crate::images::stack_containers(&state_dir) {
                crate::images::docker_quiet(&["rm", "-f", &id]);
            }
            for volume in crate::images::stack_volumes(&state_dir) {
                crate::images::docker_quiet(&["volume", "rm", "-f", &volume]);
            }
        }
    }
}
