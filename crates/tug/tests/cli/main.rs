//! Integration tests: the real `tug` binary, run as a user runs it.
//! One test binary (faster to build than many); one module per feature.

mod abuse;
mod api;
mod backup;
mod check;
mod config;
mod containers;
mod control;
mod dashboard;
mod doctor;
mod edge;
mod endpoint;
mod example_containers;
mod harness;
mod images;
mod import;
mod lifecycle;
mod newcomer;
mod plan;
mod render;
mod review;
mod rollout;
mod routing;
mod schema;
mod secrets;
mod servers;
mod up;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Run {
    /// Everything the command printed.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// Runs `tug` in `dir` with a clean environment (PATH and `env` only) and `stdin`.
pub fn tug(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    tug_under(&[], dir, args, env, stdin)
}

/// [`tug`] run by a wrapper (`prlimit --nofile=…`): `wrapper` then tug's path then `args`.
pub fn tug_under(wrapper: &[&str], dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(env!("CARGO_BIN_EXE_tug"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_tug")),
    };
    command
        .current_dir(dir)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(engine_host())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start tug");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        // A command that exits without reading its input closes the pipe first: not a failure.
        if let Err(e) = pipe.write_all(input.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
    }
    drop(pipe);
    let out = child.wait_with_output().expect("wait for tug");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// `DOCKER_HOST`, when the tests run against another engine than the default socket (Podman's
/// service: `DOCKER_HOST=unix:///run/podman/podman.sock cargo test`): tug and the `docker` CLI
/// the tests build images with then both use it.
pub fn engine_host() -> Option<(&'static str, String)> {
    std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).map(|h| ("DOCKER_HOST", h))
}

/// Compares `actual` with the snapshot file; `UPDATE_EXPECT=1` rewrites it instead.
pub fn expect_file(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        panic!(
            "snapshot {} differs (run with UPDATE_EXPECT=1 to accept)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// Copies a folder's tree (files keep their mode: scripts stay executable), leaving out every
/// entry named in `skip` (`.tug`, `__pycache__`, …) at any depth.
pub fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder").flatten() {
        let (path, name) = (entry.path(), entry.file_name());
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(&name), skip);
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy file");
        }
    }
}

/// A temporary folder, removed when dropped (also when the test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tug-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
