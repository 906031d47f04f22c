//! The daemon's record of the processes it runs (`state.json`), and the
//! reconciliation that stops what an earlier daemon left running.
//!
//! A process is identified by its pid *and* its start time (clock ticks after
//! boot, from `/proc/<pid>/stat`), so a pid reused by an unrelated program is
//! never touched. Descendants that left their group are found by the
//! environment every instance carries (`TUG_STATE_DIR` and `TUG_INSTANCE`).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Table;

pub const FILE: &str = "state.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub daemon_pid: u32,
    pub instances: Vec<Entry>,
    /// The container engine the stack's containers run on: whoever cleans up after a daemon
    /// that died (its keeper, the next daemon) removes them there, by the state folder's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub instance: String,
    /// The leader of the instance's process group.
    pub pid: i32,
    pub start_ticks: u64,
}

/// The generation and record last written: updates race to save, and an older
/// one must never overwrite a newer one.
static LAST_SAVED: Mutex<Option<(u64, Record)>> = Mutex::new(None);

impl Record {
    pub(crate) fn from_table(table: &Table) -> Record {
        let instances = table
            .instances
            .values()
            .filter_map(|i| {
                Some(Entry { instance: i.status.instance.clone(), pid: i.group?, start_ticks: i.start_ticks? })
            })
            .collect();
        Record { daemon_pid: std::process::id(), instances, engine: table.engine.clone() }
    }

    /// Writes the record atomically, when it is newer than, and differs from, the last one written.
    pub fn save(&self, state_dir: &Path, generation: u64) {
        let mut last = LAST_SAVED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((saved, record)) = last.as_ref()
            && (*saved >= generation || record == self)
        {
            return;
        }
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        match write_atomic(&state_dir.join(FILE), &json) {
            Ok(()) => *last = Some((generation, self.clone())),
            Err(e) => crate::log::error(&format!("cannot save {}: {e}", state_dir.join(FILE).display()), &[]),
        }
    }

    pub fn load(state_dir: &Path) -> Result<Option<Record>, String> {
        let path = state_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{} is damaged ({e}); processes it listed cannot be checked", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Writes through a temporary file and a rename: readers see the old or the new
/// file, whole. No fsync: the record lists processes, which a power loss ends
/// too, and it is rewritten at every start and exit of an instance.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Stops every process an earlier daemon of this state folder left running.
/// Returns one line per process stopped.
pub fn reconcile(state_dir: &Path, previous: Option<&Record>) -> Vec<String> {
    let mut groups: Vec<(i32, String)> = Vec::new();
    for entry in previous.map(|r| r.instances.as_slice()).unwrap_or_default() {
        if let Ok(stat) = tug_sys::procfs::stat(entry.pid)
            && stat.start_time == entry.start_ticks
        {
            groups.push((entry.pid, entry.instance.clone()));
        }
    }
    let me = std::process::id() as i32;
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let dir = state_dir.display().to_string();
    let mut strays: Vec<i32> = Vec::new();
    // A daemon that ended cleanly recorded no instances: then there is nothing to
    // look for, and reading every process's environment (tens of ms on a busy
    // machine) is skipped. A damaged or missing record is not trusted.
    let clean = previous.is_some_and(|r| r.instances.is_empty());
    let candidates = if clean { Vec::new() } else { tug_sys::procfs::pids().unwrap_or_default() };
    for pid in candidates {
        if pid == me || pid == parent || groups.iter().any(|(g, _)| *g == pid) {
            continue;
        }
        if tug_sys::procfs::environ_contains(pid, "TUG_STATE_DIR", &dir) && has_variable(pid, "TUG_INSTANCE") {
            strays.push(pid);
        }
    }
    let mut report = Vec::new();
    for (pgid, instance) in &groups {
        report.push(format!("stopped {instance} (pid {pgid}), left running by an earlier daemon"));
        crate::process::signal_group(*pgid, libc::SIGTERM);
    }
    for pid in &strays {
        // Its program's name and the instance, never its arguments: those can carry a secret
        // (`--password …`), and this line goes to daemon.log, the API and `tug ps`.
        let program = tug_sys::procfs::stat(*pid).map(|s| s.comm).unwrap_or_default();
        let instance = variable(*pid, "TUG_INSTANCE").unwrap_or_default();
        report.push(format!("stopped pid {pid} ({program}), started by {instance} of an earlier daemon"));
        // SAFETY: plain kill on a pid we just identified.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    // Up to 5 s to go quietly, then SIGKILL whatever is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive = |pid: i32| -> bool { tug_sys::procfs::stat(pid).is_ok_and(|s| s.state != 'Z' && s.state != 'X') };
    while Instant::now() < deadline
        && (groups.iter().any(|(g, _)| !tug_sys::procfs::group_members(*g).is_empty())
            || strays.iter().any(|p| alive(*p)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (pgid, _) in &groups {
        crate::process::signal_group(*pgid, libc::SIGKILL);
    }
    for pid in &strays {
        if alive(*pid) {
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
    report
}

/// The value of `name` in the process's environment (lossily decoded).
fn variable(pid: i32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

fn has_variable(pid: i32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|entry| entry.starts_with(format!("{name}=").as_bytes())))
        .unwrap_or(false)
}

/// Removes every container of the stack whose state folder is `state_dir` from `engine` (what a
/// daemon that died left), and its secret files. For the keeper and a starting daemon, which
/// have no runtime. Returns one line per thing done.
pub fn remove_containers(state_dir: &Path, engine: Option<&str>) -> Vec<String> {
    let mut report = Vec::new();
    let secrets = crate::secret_files::remove_stale(state_dir);
    if secrets > 0 {
        report.push(format!("removed the secret files of {secrets} instance(s) an earlier daemon left"));
    }
    let Some(url) = engine else { return report };
    let label = state_dir.display().to_string();
    let removed = tug_engine::resolve_endpoint(Some(url), None, None).map_err(|e| e.to_string()).and_then(|endpoint| {
        tug_engine::remove_labelled_containers_blocking(
            &endpoint,
            (crate::container::STATE_DIR_LABEL, &label),
            Duration::from_secs(30),
        )
        .map_err(|e| e.to_string())
    });
    match removed {
        Ok(0) => {}
        Ok(n) => report.push(format!("removed {n} container(s) an earlier daemon left")),
        Err(e) => report.push(format!("cannot remove the containers an earlier daemon left: {e}")),
    }
    report
}
