//! Control groups: memory and CPU limits per instance, and killing everything an instance started.
//!
//! [`detect`] finds where this process may create cgroups (v2, or the v1 `memory` and `cpu`
//! hierarchies); [`Support::create`] makes `<base>/tug-<scope>/<name>` with limits applied; the
//! child joins it between fork and exec with [`Group::join_in_child`]; [`Group::kill_all`] and
//! [`Group::remove`] clean up. Nothing here panics on odd system state: problems are reported.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The CPU period written with every quota, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// The controllers tug uses.
const CONTROLLERS: [&str; 2] = ["memory", "cpu"];

/// Resource limits for one group. `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores, e.g. 0.5 (v2 `cpu.max`, v1 `cpu.cfs_quota_us`).
    pub cpu_cores: Option<f64>,
}

/// Where and how this process can create cgroups, as found by [`detect`].
#[derive(Clone, Debug, PartialEq)]
pub enum Support {
    /// cgroup v2: groups go under `<base>/tug-<scope>/`, with the controllers listed in
    /// `<base>/cgroup.subtree_control` (at least one of memory and cpu).
    V2 {
        /// The directory in which `tug-<scope>` directories are created.
        base: PathBuf,
    },
    /// cgroup v1: this process's own directory in each writable hierarchy (at least one is set).
    V1 {
        /// Own directory in the `memory` hierarchy, if it is writable.
        memory: Option<PathBuf>,
        /// Own directory in the `cpu` hierarchy, if it is writable.
        cpu: Option<PathBuf>,
    },
    /// No usable cgroups; the reason says why, for the user.
    Unavailable {
        /// What is missing or not permitted, with the paths involved.
        reason: String,
    },
}

/// A failed cgroup operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// [`detect`] found no usable cgroups.
    #[error("cgroups are unavailable: {0}")]
    Unavailable(String),
    /// A requested limit cannot be applied with this [`Support`] (see [`Support::can_apply`]).
    #[error("{0}")]
    Unsupported(String),
    /// A scope or group name that cannot be a cgroup directory name.
    #[error("invalid cgroup name {name:?}: {why}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        why: &'static str,
    },
    /// A file-system operation on a cgroup file or directory failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create cgroup" or "write".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

// ---------------------------------------------------------------------------------------------
// Parsing /proc/self/mountinfo and /proc/self/cgroup
// ---------------------------------------------------------------------------------------------

/// One line of `/proc/self/mountinfo`, the fields cgroup detection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    /// The path inside the file system that is mounted (field 4).
    root: String,
    /// Where it is mounted (field 5).
    point: PathBuf,
    fstype: String,
    /// Super-block options: for cgroup v1, the hierarchy's controllers.
    super_opts: Vec<String>,
}

impl Mount {
    fn is_v1_with(&self, controller: &str) -> bool {
        self.fstype == "cgroup" && self.super_opts.iter().any(|o| o == controller)
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(content: &str) -> Vec<Mount> {
    content
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            Some(Mount {
                root: unescape(fields.get(3)?),
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
                super_opts: fields.get(sep + 3).map(|o| o.split(',').map(str::to_string).collect()).unwrap_or_default(),
            })
        })
        .collect()
}

/// One line of `/proc/self/cgroup`: `id:controllers:path` (v2: `0::path`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Membership {
    /// Empty for the v2 hierarchy.
    controllers: Vec<String>,
    path: String,
}

fn parse_proc_cgroup(content: &str) -> Vec<Membership> {
    content
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some(Membership { controllers, path: path.to_string() })
        })
        .collect()
}

/// This process's directory in a mounted hierarchy: the mount point joined with the own path
/// relative to the mount's root. None when the own cgroup is not visible under that mount.
fn own_dir(mount: &Mount, own: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" {
        own
    } else {
        own.strip_prefix(mount.root.as_str()).filter(|r| r.is_empty() || r.starts_with('/'))?
    };
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == ".." || c == ".") || !own.starts_with('/') {
        return None;
    }
    Some(if rel.is_empty() { mount.point.clone() } else { mount.point.join(rel) })
}

struct System {
    mounts: Vec<Mount>,
    memberships: Vec<Membership>,
}

impl System {
    fn read() -> Result<System, String> {
        let read = |p: &str| fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"));
        Ok(System {
            mounts: parse_mountinfo(&read("/proc/self/mountinfo")?),
            memberships: parse_proc_cgroup(&read("/proc/self/cgroup")?),
        })
    }

    /// Own directory in the v1 hierarchy that has `controller`.
    fn v1_dir(&self, controller: &str) -> Result<PathBuf, String> {
        let mount = self
            .mounts
            .iter()
            .find(|m| m.is_v1_with(controller))
            .ok_or_else(|| format!("no cgroup v1 {controller} hierarchy is mounted"))?;
        let own = self
            .memberships
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == controller))
            .ok_or_else(|| format!("/proc/self/cgroup lists no {controller} hierarchy"))?;
        self.mounts.iter().filter(|m| m.is_v1_with(controller)).find_map(|m| own_dir(m, &own.path)).ok_or_else(|| {
            format!("this process's {controller} cgroup {} is not visible under {}", own.path, mount.point.display())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------------

static PROBES: AtomicU32 = AtomicU32::new(0);

fn probe_name() -> String {
    format!("tug-probe-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed))
}

/// Reads a cgroup file listing controllers (`cgroup.controllers`, `cgroup.subtree_control`).
fn read_controllers(path: &Path) -> io::Result<BTreeSet<String>> {
    Ok(fs::read_to_string(path)?.split_ascii_whitespace().map(str::to_string).collect())
}

fn wanted(controllers: &BTreeSet<String>) -> Vec<&'static str> {
    CONTROLLERS.into_iter().filter(|c| controllers.contains(*c)).collect()
}

fn list(controllers: &BTreeSet<String>) -> String {
    if controllers.is_empty() { "nothing".into() } else { controllers.iter().cloned().collect::<Vec<_>>().join(" ") }
}

/// Writes `value` to a cgroup file in a single write.
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut file = OpenOptions::new().write(true).open(path).map_err(io_err("open", path))?;
    file.write_all(value.as_bytes()).map_err(io_err("write", path))
}

/// Creates a directory, or reuses an existing one.
/// Creates a cgroup directory, or reuses an existing one; true when it is new.
fn mkdir_reuse(path: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(CgroupError::Io { op: "create cgroup", path: path.to_path_buf(), source: e }),
    }
}

/// Proves that v2 groups with controllers work under `base`: creates `base/tug-probe-…` with the
/// controllers enabled for its children and a child in it, then removes both. Returns the
/// controllers that reached the child.
fn probe_v2(base: &Path) -> Result<Vec<&'static str>, String> {
    let probe = base.join(probe_name());
    fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup in {}: {e}", base.display()))?;
    let leaf = probe.join("leaf");
    let result = (|| {
        let available = wanted(&read_controllers(&probe.join("cgroup.controllers")).map_err(|e| e.to_string())?);
        for c in &available {
            write_file(&probe.join("cgroup.subtree_control"), &format!("+{c}")).map_err(|e| e.to_string())?;
        }
        fs::create_dir(&leaf).map_err(|e| format!("cannot create a cgroup in {}: {e}", probe.display()))?;
        let reached = wanted(&read_controllers(&leaf.join("cgroup.controllers")).map_err(|e| e.to_string())?);
        if reached.is_empty() {
            return Err(format!("cgroup v2 has no memory or cpu controller delegated to {}", base.display()));
        }
        Ok(reached)
    })();
    let _ = fs::remove_dir(&leaf);
    let _ = fs::remove_dir(&probe);
    result
}

/// Looks for a usable cgroup v2 base. `Ok(None)` when no cgroup2 file system is mounted.
fn detect_v2(sys: &System) -> Result<Option<PathBuf>, String> {
    let mounts: Vec<&Mount> = sys.mounts.iter().filter(|m| m.fstype == "cgroup2").collect();
    let Some(first) = mounts.first() else { return Ok(None) };
    let own = sys.memberships.iter().find(|m| m.controllers.is_empty()).ok_or_else(|| {
        format!("cgroup v2 is mounted at {} but /proc/self/cgroup has no v2 entry", first.point.display())
    })?;
    let (mount, dir) = mounts.iter().find_map(|m| own_dir(m, &own.path).map(|d| (m, d))).ok_or_else(|| {
        format!("this process's cgroup v2 path {} is not visible under {}", own.path, first.point.display())
    })?;
    let controllers =
        read_controllers(&dir.join("cgroup.controllers")).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if wanted(&controllers).is_empty() {
        return Err(format!(
            "cgroup v2 has no memory or cpu controller delegated to {} (its cgroup.controllers lists {})",
            dir.display(),
            list(&controllers)
        ));
    }
    let mut reasons = Vec::new();
    if dir == mount.point {
        // The (namespace) root: exempt from the "no internal processes" rule, so child groups can
        // get controllers even though this process lives here. Enable what is missing.
        let subtree = dir.join("cgroup.subtree_control");
        let enabled = read_controllers(&subtree).unwrap_or_default();
        for c in wanted(&controllers) {
            if !enabled.contains(c)
                && let Err(e) = write_file(&subtree, &format!("+{c}"))
            {
                reasons.push(e.to_string());
            }
        }
        match probe_v2(&dir) {
            Ok(_) => return Ok(Some(dir)),
            Err(e) => reasons.push(e),
        }
    } else if let Some(parent) = dir.parent() {
        // This process's own cgroup holds processes, so it cannot pass controllers on; its parent
        // does (that is where our cgroup.controllers come from): create siblings there.
        match probe_v2(parent) {
            Ok(_) => return Ok(Some(parent.to_path_buf())),
            Err(e) => reasons.push(e),
        }
    }
    Err(reasons.join("; "))
}

/// Own directories in the v1 memory and cpu hierarchies that accept new child groups.
fn detect_v1(sys: &System) -> Result<Support, String> {
    let mut found = [None, None];
    let mut reasons = Vec::new();
    for (slot, controller) in found.iter_mut().zip(CONTROLLERS) {
        let dir = match sys.v1_dir(controller) {
            Ok(d) => d,
            Err(e) => {
                reasons.push(e);
                continue;
            }
        };
        let probe = dir.join(probe_name());
        match fs::create_dir(&probe) {
            Ok(()) => {
                let _ = fs::remove_dir(&probe);
                *slot = Some(dir);
            }
            Err(e) => reasons.push(format!("{}: {e}", dir.display())),
        }
    }
    let [memory, cpu] = found;
    if memory.is_none() && cpu.is_none() {
        return Err(format!("no cgroup hierarchy is writable: {}", reasons.join("; ")));
    }
    Ok(Support::V1 { memory, cpu })
}

/// Finds where this process may create child cgroups, preferring v2 with memory or cpu
/// delegated, then the v1 memory and cpu hierarchies. Probes by creating and removing a
/// `tug-probe-*` directory. Never panics; [`Support::Unavailable`] says why in words a user can
/// act on.
pub fn detect() -> Support {
    let sys = match System::read() {
        Ok(s) => s,
        Err(reason) => return Support::Unavailable { reason },
    };
    let mut reasons = Vec::new();
    match detect_v2(&sys) {
        Ok(Some(base)) => return Support::V2 { base },
        Ok(None) => {}
        Err(e) => reasons.push(e),
    }
    let has_v1 = sys.mounts.iter().any(|m| m.fstype == "cgroup");
    if has_v1 {
        match detect_v1(&sys) {
            Ok(support) => return support,
            Err(e) => reasons.push(e),
        }
    }
    if reasons.is_empty() {
        reasons.push("no cgroup file system is mounted (none in /proc/self/mountinfo)".into());
    }
    Support::Unavailable { reason: reasons.join("; ") }
}

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

fn check_name(name: &str) -> Result<(), CgroupError> {
    let why = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "not a directory name"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else if name.len() > 200 {
        "longer than 200 bytes"
    } else {
        return Ok(());
    };
    Err(CgroupError::InvalidName { name: name.to_string(), why })
}

fn cpu_quota_us(cores: f64) -> u64 {
    // `as` saturates; the limits were validated as positive and finite.
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(MIN_CPU_QUOTA_US)
}

impl Support {
    /// One line for logs and `tug` diagnostics.
    pub fn describe(&self) -> String {
        match self {
            Support::V2 { base } => {
                let enabled = read_controllers(&base.join("cgroup.subtree_control")).unwrap_or_default();
                format!("cgroup v2: groups under {}/tug-<scope>, controllers: {}", base.display(), list(&enabled))
            }
            Support::V1 { memory, cpu } => {
                let show = |p: &Option<PathBuf>| p.as_ref().map_or("unavailable".into(), |p| p.display().to_string());
                format!("cgroup v1: memory at {}, cpu at {}", show(memory), show(cpu))
            }
            Support::Unavailable { reason } => format!("cgroups unavailable: {reason}"),
        }
    }

    /// The controllers groups get (subset of memory, cpu).
    fn controllers(&self) -> Vec<&'static str> {
        match self {
            Support::V2 { base } => wanted(&read_controllers(&base.join("cgroup.subtree_control")).unwrap_or_default()),
            Support::V1 { memory, cpu } => {
                CONTROLLERS.into_iter().zip([memory, cpu]).filter(|(_, p)| p.is_some()).map(|(c, _)| c).collect()
            }
            Support::Unavailable { .. } => Vec::new(),
        }
    }

    /// Whether `limits` can be applied here. The error names the limit and says why not.
    pub fn can_apply(&self, limits: &Limits) -> Result<(), String> {
        if limits.memory_bytes == Some(0) {
            return Err("a memory limit of 0 bytes cannot be applied".into());
        }
        if let Some(c) = limits.cpu_cores.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return Err(format!("a cpu limit of {c} cores cannot be applied: it must be a positive number"));
        }
        let available = self.controllers();
        for (controller, asked) in
            CONTROLLERS.into_iter().zip([limits.memory_bytes.is_some(), limits.cpu_cores.is_some()])
        {
            if !asked || available.contains(&controller) {
                continue;
            }
            return Err(match self {
                Support::V2 { base } => format!(
                    "a {controller} limit cannot be applied: cgroup v2 has no {controller} controller delegated to {}",
                    base.display()
                ),
                Support::V1 { .. } => {
                    format!("a {controller} limit cannot be applied: no writable cgroup v1 {controller} hierarchy")
                }
                Support::Unavailable { reason } => {
                    format!("a {controller} limit cannot be applied: cgroups are unavailable: {reason}")
                }
            });
        }
        Ok(())
    }

    /// Creates (or reuses) `<base>/tug-<scope>/<name>` in each usable hierarchy and applies
    /// `limits` (unlimited where `None`). A limit that [`Support::can_apply`] rejects is an error.
    pub fn create(&self, scope: &str, name: &str, limits: &Limits) -> Result<Group, CgroupError> {
        check_name(scope)?;
        check_name(name)?;
        self.can_apply(limits).map_err(CgroupError::Unsupported)?;
        let mut group = Group { members: Vec::new(), scopes: Vec::new() };
        let scope_dir = format!("tug-{scope}");
        // A group without limits only has to hold the instance's processes: one
        // directory in one hierarchy does that, at a third of the cost on v1.
        let limited = limits.memory_bytes.is_some() || limits.cpu_cores.is_some();
        let result = match self {
            Support::Unavailable { reason } => Err(CgroupError::Unavailable(reason.clone())),
            Support::V2 { base } => {
                let controllers = if limited { self.controllers() } else { Vec::new() };
                group.add(Kind::Unified, base, &scope_dir, name, limits, &controllers)
            }
            Support::V1 { memory, cpu } => (|| {
                if let Some(base) = memory {
                    group.add(Kind::Memory, base, &scope_dir, name, limits, &[])?;
                }
                if let Some(base) = cpu.as_ref().filter(|_| limits.cpu_cores.is_some() || group.members.is_empty()) {
                    group.add(Kind::Cpu, base, &scope_dir, name, limits, &[])?;
                }
                if limits.cpu_cores.is_none() {
                    return Ok(());
                }
                // CPU accounting lives in the cpuacct controller, often a separate hierarchy: join it
                // too when possible, for `cpu_usage_nanos`. Best effort: it sets no limit.
                if !group.members.iter().any(|m| m.dir.join("cpuacct.usage").exists())
                    && let Ok(base) = System::read().and_then(|s| s.v1_dir("cpuacct"))
                    && group.add(Kind::CpuAcct, &base, &scope_dir, name, limits, &[]).is_err()
                {
                    group.members.retain(|m| m.kind != Kind::CpuAcct);
                }
                Ok(())
            })(),
        };
        match result {
            Ok(()) => Ok(group),
            Err(e) => {
                group.cleanup();
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Group
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Unified,
    Memory,
    Cpu,
    CpuAcct,
}

#[derive(Debug)]
struct Member {
    kind: Kind,
    dir: PathBuf,
    /// `cgroup.procs`, opened write-only and close-on-exec.
    procs: File,
}

/// One instance's cgroup (a directory per hierarchy), created by [`Support::create`].
///
/// Dropping it closes the pre-opened files but leaves the directories; call [`Group::remove`].
/// To use it in `pre_exec`, share it with an `Arc`.
#[derive(Debug)]
pub struct Group {
    members: Vec<Member>,
    /// The `tug-<scope>` directories, removed with the last group in them.
    scopes: Vec<PathBuf>,
}

impl Group {
    /// Creates `base/scope_dir/name`, applies the limits of its kind and opens `cgroup.procs`.
    fn add(
        &mut self,
        kind: Kind,
        base: &Path,
        scope_dir: &str,
        name: &str,
        limits: &Limits,
        v2_controllers: &[&str],
    ) -> Result<(), CgroupError> {
        let scope = base.join(scope_dir);
        let dir = scope.join(name);
        // Another group's removal may take the scope directory away between the two mkdirs: retry.
        let mut attempt = 0;
        let fresh = loop {
            mkdir_reuse(&scope)?;
            for c in v2_controllers {
                write_file(&scope.join("cgroup.subtree_control"), &format!("+{c}"))?;
            }
            match mkdir_reuse(&dir) {
                Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound && attempt < 3 => {
                    attempt += 1
                }
                other => break other?,
            }
        };
        // A new group has no limits: only a reused one must have old ones lifted.
        let unlimited = limits.memory_bytes.is_none() && limits.cpu_cores.is_none();
        if fresh && unlimited {
            let procs = OpenOptions::new().write(true).open(dir.join("cgroup.procs"));
            let procs = procs.map_err(io_err("open", &dir.join("cgroup.procs")))?;
            self.scopes.push(scope);
            self.members.push(Member { kind, dir, procs });
            return Ok(());
        }
        self.scopes.push(scope);
        let procs = OpenOptions::new().write(true).open(dir.join("cgroup.procs"));
        let procs = procs.map_err(io_err("open", &dir.join("cgroup.procs")))?;
        self.members.push(Member { kind, dir: dir.clone(), procs });
        let memory = limits.memory_bytes.map_or_else(|| "max".to_string(), |b| b.to_string());
        let quota = limits.cpu_cores.map(cpu_quota_us);
        match kind {
            Kind::Unified => {
                if v2_controllers.contains(&"memory") {
                    write_file(&dir.join("memory.max"), &memory)?;
                }
                if v2_controllers.contains(&"cpu") {
                    let quota = quota.map_or_else(|| "max".to_string(), |q| q.to_string());
                    write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
            }
            Kind::Memory => {
                let memory = limits.memory_bytes.map_or_else(|| "-1".to_string(), |b| b.to_string());
                write_file(&dir.join("memory.limit_in_bytes"), &memory)?;
            }
            Kind::Cpu => {
                // Lift the old quota first: a new period is checked against it.
                write_file(&dir.join("cpu.cfs_quota_us"), "-1")?;
                write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                if let Some(q) = quota {
                    write_file(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
            }
            Kind::CpuAcct => {}
        }
        Ok(())
    }

    /// Removes what `create` made after a failure. Best effort.
    fn cleanup(self) {
        let _ = self.remove_with(Duration::ZERO);
    }

    /// The group's directories, one per hierarchy (for messages).
    pub fn paths(&self) -> Vec<&Path> {
        self.members.iter().map(|m| m.dir.as_path()).collect()
    }

    /// Moves the calling process into the group. Call it in the child between fork and exec
    /// (`CommandExt::pre_exec`): it only writes `0` ("the writer") to the pre-opened
    /// `cgroup.procs` files, which is async-signal-safe.
    pub fn join_in_child(&self) -> io::Result<()> {
        for member in &self.members {
            // SAFETY: writes one byte from a static buffer to a file descriptor this group owns
            // and keeps open for as long as `self` lives; write(2) is async-signal-safe.
            let written = unsafe { libc::write(member.procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if written != 1 && member.kind != Kind::CpuAcct {
                return Err(if written < 0 { io::Error::last_os_error() } else { io::ErrorKind::WriteZero.into() });
            }
        }
        Ok(())
    }

    fn member(&self, kind: Kind) -> Option<&Member> {
        self.members.iter().find(|m| m.kind == kind)
    }

    fn read_number(path: &Path) -> Option<u64> {
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Memory in use by the group, in bytes (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub fn memory_bytes(&self) -> Option<u64> {
        if let Some(m) = self.member(Kind::Unified) {
            return Self::read_number(&m.dir.join("memory.current"));
        }
        Self::read_number(&self.member(Kind::Memory)?.dir.join("memory.usage_in_bytes"))
    }

    /// CPU time used by the group so far, in nanoseconds (v2 `cpu.stat`, v1 `cpuacct.usage`).
    pub fn cpu_usage_nanos(&self) -> Option<u64> {
        if let Some(m) = self.member(Kind::Unified) {
            let stat = fs::read_to_string(m.dir.join("cpu.stat")).ok()?;
            let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse::<u64>().ok()?;
            return Some(usec.saturating_mul(1000));
        }
        self.members.iter().find_map(|m| Self::read_number(&m.dir.join("cpuacct.usage")))
    }

    /// The memory limit in force, in bytes; None when unlimited or unknown.
    pub fn memory_limit(&self) -> Option<u64> {
        let value = if let Some(m) = self.member(Kind::Unified) {
            Self::read_number(&m.dir.join("memory.max"))?
        } else {
            Self::read_number(&self.member(Kind::Memory)?.dir.join("memory.limit_in_bytes"))?
        };
        // v1 shows "unlimited" as a huge page-aligned number.
        (value < 1 << 62).then_some(value)
    }

    /// The CPU limit in force, in cores; None when unlimited or unknown.
    pub fn cpu_limit(&self) -> Option<f64> {
        let (quota, period) = if let Some(m) = self.member(Kind::Unified) {
            let max = fs::read_to_string(m.dir.join("cpu.max")).ok()?;
            let mut parts = max.split_ascii_whitespace();
            (parts.next()?.parse::<i64>().ok()?, parts.next()?.parse::<i64>().ok()?)
        } else {
            let dir = &self.member(Kind::Cpu)?.dir;
            let read = |f: &str| fs::read_to_string(dir.join(f)).ok()?.trim().parse::<i64>().ok();
            (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?)
        };
        (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
    }

    /// The processes in the group (and in any cgroups nested in it), from `cgroup.procs`, sorted.
    pub fn pids(&self) -> Vec<i32> {
        fn collect(dir: &Path, out: &mut Vec<i32>) {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|&p| p > 0));
            }
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    collect(&entry.path(), out);
                }
            }
        }
        let mut pids = Vec::new();
        for m in &self.members {
            collect(&m.dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills every process in the group with SIGKILL: through v2 `cgroup.kill` when present,
    /// otherwise pid by pid, repeating (for about two seconds at most) until only zombies are
    /// left, so that processes forked meanwhile die too. Never kills the calling process.
    pub fn kill_all(&self) {
        let me = std::process::id() as i32;
        let kill_files: Vec<PathBuf> = self
            .members
            .iter()
            .filter(|m| m.kind == Kind::Unified)
            .map(|m| m.dir.join("cgroup.kill"))
            .filter(|p| p.exists())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut pause = Duration::from_millis(1);
        loop {
            let pids = self.pids();
            let live: Vec<i32> =
                pids.iter().copied().filter(|&p| crate::procfs::stat(p).is_ok_and(|s| !s.is_zombie())).collect();
            if live.is_empty() || Instant::now() >= deadline {
                return;
            }
            let by_file =
                !pids.contains(&me) && !kill_files.is_empty() && kill_files.iter().all(|f| write_file(f, "1").is_ok());
            if !by_file {
                for pid in live.into_iter().filter(|&p| p != me) {
                    // SAFETY: kill(2) has no memory-safety preconditions. The pid was listed in
                    // the group just now; if it has exited meanwhile this fails with ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Removes the group's directories, retrying for up to two seconds while they are busy (a
    /// cgroup stays busy until its last process has exited; kill and reap first), then the
    /// `tug-<scope>` directories if no other group is left in them.
    pub fn remove(self) -> Result<(), CgroupError> {
        self.remove_with(Duration::from_secs(2))
    }

    fn remove_with(self, patience: Duration) -> Result<(), CgroupError> {
        let Group { members, scopes } = self;
        let deadline = Instant::now() + patience;
        let mut first_error = None;
        for Member { dir, procs, .. } in members {
            drop(procs);
            if let Err(e) = remove_tree(&dir, deadline) {
                first_error.get_or_insert(CgroupError::Io { op: "remove cgroup", path: dir, source: e });
            }
        }
        for scope in scopes {
            let _ = fs::remove_dir(scope);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Removes a cgroup directory and any cgroups nested in it (cgroup directories hold only
/// kernel files, which go with `rmdir`), retrying while busy until `deadline`.
fn remove_tree(dir: &Path, deadline: Instant) -> io::Result<()> {
    loop {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path(), deadline)?;
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if Instant::now() < deadline
                    && matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) =>
            {
                sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    #[test]
    fn parses_mountinfo() {
        let content = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
            41 31 0:38 /docker/abc /sys/fs/cgroup/my\\040dir rw master:1 shared:2 - cgroup2 cgroup2 rw,nsdelegate\n\
            garbage line\n\
            1 2 3 4 5 6 7 8\n";
        let mounts = parse_mountinfo(content);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].fstype, "tmpfs");
        assert!(mounts[1].is_v1_with("cpu") && !mounts[1].is_v1_with("cpuacct"));
        assert!(mounts[2].is_v1_with("cpu") && mounts[2].is_v1_with("cpuacct"));
        assert_eq!(
            mounts[3],
            Mount {
                root: "/docker/abc".into(),
                point: "/sys/fs/cgroup/my dir".into(),
                fstype: "cgroup2".into(),
                super_opts: vec!["rw".into(), "nsdelegate".into()],
            }
        );
        assert_eq!(unescape(r"a\040b\134c\0"), r"a b\c\0");
        assert_eq!(unescape(r"\777"), "?");
    }

    #[test]
    fn parses_proc_cgroup_and_joins_own_paths() {
        let lines =
            parse_proc_cgroup("4:memory:/process_api/e04\n2:cpu,cpuacct:/\n1:name=systemd:/a:b\n0::/user.slice/x\n");
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], Membership { controllers: vec!["memory".into()], path: "/process_api/e04".into() });
        assert_eq!(lines[1].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(lines[2].path, "/a:b");
        assert!(lines[3].controllers.is_empty());

        let mount = |root: &str| Mount {
            root: root.into(),
            point: "/sys/fs/cgroup/memory".into(),
            fstype: "cgroup".into(),
            super_opts: vec!["memory".into()],
        };
        let at = |p: &str| Some(PathBuf::from(p));
        assert_eq!(own_dir(&mount("/"), "/process_api/e04"), at("/sys/fs/cgroup/memory/process_api/e04"));
        assert_eq!(own_dir(&mount("/"), "/"), at("/sys/fs/cgroup/memory"));
        assert_eq!(own_dir(&mount("/docker/abc"), "/docker/abc"), at("/sys/fs/cgroup/memory"));
        assert_eq!(own_dir(&mount("/docker/abc"), "/docker/abc/x"), at("/sys/fs/cgroup/memory/x"));
        assert_eq!(own_dir(&mount("/docker/abc"), "/docker/abcd"), None);
        assert_eq!(own_dir(&mount("/docker/abc"), "/other"), None);
        assert_eq!(own_dir(&mount("/"), "/../.."), None);
    }

    #[test]
    fn can_apply_names_the_missing_limit() {
        let both = Limits { memory_bytes: Some(64 * MIB), cpu_cores: Some(0.5) };
        let memory_only = Support::V1 { memory: Some("/nonexistent/memory".into()), cpu: None };
        assert_eq!(memory_only.can_apply(&Limits { cpu_cores: None, ..both }), Ok(()));
        let err = memory_only.can_apply(&both).unwrap_err();
        assert!(err.contains("cpu limit"), "{err}");
        let err = memory_only.create("t", "x", &both).unwrap_err();
        assert!(matches!(&err, CgroupError::Unsupported(m) if m.contains("cpu limit")), "{err}");

        let none = Support::Unavailable { reason: "no cgroup hierarchy is writable".into() };
        assert_eq!(none.can_apply(&Limits::default()), Ok(()));
        assert!(none.can_apply(&both).unwrap_err().contains("memory limit cannot be applied: cgroups are unavailable"));
        assert!(matches!(none.create("t", "x", &Limits::default()), Err(CgroupError::Unavailable(_))));
        assert!(none.describe().contains("no cgroup hierarchy is writable"));

        for bad in [Some(0.0), Some(-1.0), Some(f64::NAN), Some(f64::INFINITY)] {
            assert!(memory_only.can_apply(&Limits { memory_bytes: None, cpu_cores: bad }).is_err());
        }
        assert!(memory_only.can_apply(&Limits { memory_bytes: Some(0), cpu_cores: None }).is_err());
    }

    #[test]
    fn rejects_bad_names() {
        let s = Support::Unavailable { reason: "x".into() };
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(201)] {
            assert!(matches!(s.create(bad, "x", &Limits::default()), Err(CgroupError::InvalidName { .. })));
            assert!(matches!(s.create("x", bad, &Limits::default()), Err(CgroupError::InvalidName { .. })));
        }
    }

    #[test]
    fn cpu_quota() {
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.001), MIN_CPU_QUOTA_US);
    }

    /// The directories that could hold this test process's groups and probes.
    /// `sleep 30`, moved into `group` between fork and exec.
    fn sleep_in(group: &Arc<Group>) -> std::process::Child {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null());
        let joiner = Arc::clone(group);
        // SAFETY: join_in_child only calls write(2) on pre-opened descriptors: async-signal-safe.
        unsafe { cmd.pre_exec(move || joiner.join_in_child()) };
        cmd.spawn().expect("spawn a child that joins the group")
    }

    fn bases(support: &Support) -> Vec<PathBuf> {
        match support {
            Support::V2 { base } => vec![base.clone()],
            Support::V1 { memory, cpu } => memory.iter().chain(cpu).cloned().collect(),
            Support::Unavailable { .. } => Vec::new(),
        }
    }

    fn leftover_probes(base: &Path) -> Vec<String> {
        let mine = format!("tug-probe-{}-", std::process::id());
        fs::read_dir(base)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&mine))
            .collect()
    }

    #[test]
    fn detect_on_this_machine() {
        let support = detect();
        eprintln!("detect(): {}", support.describe());
        match &support {
            Support::Unavailable { reason } => assert!(!reason.trim().is_empty()),
            Support::V2 { base } => {
                assert!(base.join("cgroup.procs").exists());
                assert!(!support.controllers().is_empty());
            }
            Support::V1 { memory, cpu } => {
                assert!(memory.is_some() || cpu.is_some());
                assert!(memory.iter().all(|m| m.join("memory.limit_in_bytes").exists()));
                assert!(cpu.iter().all(|c| c.join("cpu.cfs_quota_us").exists()));
            }
        }
        // Another test of this process may be probing right now: its probe goes within
        // milliseconds, though removing a v1 memory group can take seconds on a loaded host (a
        // fresh-clone CI run met 2 s); one that stays 10 s is a leak.
        for base in bases(&support) {
            let mut tries = 0;
            while !leftover_probes(&base).is_empty() && tries < 200 {
                std::thread::sleep(std::time::Duration::from_millis(50));
                tries += 1;
            }
            assert!(leftover_probes(&base).is_empty(), "probe directories left in {}", base.display());
        }
    }

    #[test]
    fn group_limits_join_and_kill() {
        let support = detect();
        if let Support::Unavailable { reason } = &support {
            assert!(!reason.trim().is_empty());
            eprintln!("skipping: cgroups are unavailable here: {reason}");
            return;
        }
        eprintln!("using {}", support.describe());
        let mut limits = Limits { memory_bytes: Some(64 * MIB), cpu_cores: Some(0.5) };
        if let Err(e) = support.can_apply(&limits) {
            eprintln!("{e}; testing without it");
            if support.can_apply(&Limits { cpu_cores: None, ..limits }).is_ok() {
                limits.cpu_cores = None;
            } else {
                limits.memory_bytes = None;
            }
        }
        let scope = format!("test-{}", std::process::id());
        let group = Arc::new(support.create(&scope, "sleeper", &limits).expect("create"));
        assert!(group.paths().iter().all(|p| p.is_dir()));
        assert_eq!(group.memory_limit(), limits.memory_bytes);
        assert_eq!(group.cpu_limit(), limits.cpu_cores);
        assert!(group.pids().is_empty());

        // Reusing the same name resets limits that are no longer asked for.
        let again = support.create(&scope, "sleeper", &Limits::default()).expect("reuse");
        assert_eq!((again.memory_limit(), again.cpu_limit()), (None, None));
        drop(again);
        let group = {
            drop(group);
            Arc::new(support.create(&scope, "sleeper", &limits).expect("create again"))
        };

        let mut child = sleep_in(&group);
        let pid = child.id() as i32;
        assert_eq!(group.pids(), vec![pid]);
        assert!(!group.pids().contains(&(std::process::id() as i32)));
        if limits.memory_bytes.is_some() {
            assert!(group.memory_bytes().is_some_and(|b| b > 0), "{:?}", group.memory_bytes());
        }
        eprintln!("memory in use {:?}, cpu used {:?} ns", group.memory_bytes(), group.cpu_usage_nanos());

        let started = Instant::now();
        group.kill_all();
        eprintln!("kill_all took {:?}", started.elapsed());
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert!(group.pids().is_empty());

        let paths: Vec<PathBuf> = group.paths().iter().map(|p| p.to_path_buf()).collect();
        let group = Arc::try_unwrap(group).expect("the child's copy of the Arc was in another process");
        group.remove().expect("remove");
        for p in &paths {
            assert!(!p.exists(), "{} still exists", p.display());
            assert!(!p.parent().unwrap().exists(), "the scope directory of {} still exists", p.display());
        }
    }

    /// A writable cgroup v2 directory of this process when [`detect`] does not use v2 (hybrid
    /// systems mount one without controllers): groups there have no limits, but joining,
    /// `cgroup.kill` and removal work as with controllers.
    fn spare_v2_base() -> Option<PathBuf> {
        let sys = System::read().ok()?;
        let own = sys.memberships.iter().find(|m| m.controllers.is_empty())?;
        let dir = sys.mounts.iter().filter(|m| m.fstype == "cgroup2").find_map(|m| own_dir(m, &own.path))?;
        let base = if dir.join("cgroup.subtree_control").exists()
            && dir == sys.mounts.iter().find(|m| m.fstype == "cgroup2")?.point
        {
            dir
        } else {
            dir.parent()?.to_path_buf()
        };
        let probe = base.join(probe_name());
        fs::create_dir(&probe).ok()?;
        fs::remove_dir(&probe).ok()?;
        Some(base)
    }

    #[test]
    fn v2_group_without_controllers() {
        if matches!(detect(), Support::V2 { .. }) {
            eprintln!("skipping: detect() uses cgroup v2, group_limits_join_and_kill covers it");
            return;
        }
        let Some(base) = spare_v2_base() else {
            eprintln!("skipping: no writable cgroup v2 directory");
            return;
        };
        let support = Support::V2 { base };
        eprintln!("using {}", support.describe());
        let limited = Limits { memory_bytes: Some(64 * MIB), cpu_cores: None };
        if support.controllers().is_empty() {
            let err = support.can_apply(&limited).unwrap_err();
            assert!(err.contains("no memory controller delegated to"), "{err}");
        }
        let scope = format!("test-{}-v2", std::process::id());
        let group = Arc::new(support.create(&scope, "plain", &Limits::default()).expect("create"));
        let mut child = sleep_in(&group);
        assert_eq!(group.pids(), vec![child.id() as i32]);
        assert!(group.cpu_usage_nanos().is_some());
        group.kill_all();
        assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(group.pids().is_empty());
        let dir = group.paths()[0].to_path_buf();
        Arc::try_unwrap(group).unwrap().remove().expect("remove");
        assert!(!dir.exists() && !dir.parent().unwrap().exists());
    }

    #[test]
    fn remove_retries_and_reports_a_busy_group() {
        let support = detect();
        if let Support::Unavailable { reason } = &support {
            assert!(!reason.trim().is_empty());
            eprintln!("skipping: cgroups are unavailable here: {reason}");
            return;
        }
        let scope = format!("test-{}-busy", std::process::id());
        let group = Arc::new(support.create(&scope, "busy", &Limits::default()).expect("create"));
        let mut child = sleep_in(&group);
        let pid = child.id() as i32;
        assert_eq!(group.pids(), vec![pid]);
        // Kill it from elsewhere and reap it after a while: remove waits for that.
        let reaper = std::thread::spawn(move || {
            sleep(Duration::from_millis(200));
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            child.wait().unwrap();
        });
        let group = Arc::try_unwrap(group).unwrap();
        group.remove().expect("remove after the process is reaped");
        reaper.join().unwrap();
    }
}
