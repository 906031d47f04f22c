//! Starting and stopping one process tree: its own process group, the parent-death
//! signal, an optional user and cgroup, stdout and stderr on pipes.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::reaper::{Exit, Reaper};

/// Environment variables of the daemon that must never reach an instance.
pub const PRIVATE_VARIABLES: [&str; 2] = ["TUG_API_KEY", "TUG_SECRETS_KEY"];

/// Names of sensitive settings (`StackSpec::withheld`) of every stack applied: an instance
/// never inherits them from the daemon's environment, which is the first `tug up`'s
/// (`DB_PASSWORD=… tug up` put the secret in every instance, listed or not). A service
/// that is delivered one gets it through its own `environment`, set after the removal.
static WITHHELD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Adds `names` to the variables instances never inherit (kept for the daemon's life:
/// a name once sensitive stays withheld).
pub fn withhold(names: &[String]) {
    let mut withheld = WITHHELD.lock().unwrap_or_else(|p| p.into_inner());
    for name in names {
        if !withheld.contains(name) {
            withheld.push(name.clone());
        }
    }
}

/// The identity to run as, looked up before forking (lookups allocate).
#[derive(Clone, Debug)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
    pub name: String,
}

/// Looks up `user` (a name or a numeric uid) in the passwd database.
pub fn lookup_user(user: &str) -> Result<RunAs, String> {
    let name = CString::new(user).map_err(|_| format!("user `{user}` contains a NUL byte"))?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: passwd is plain data filled by getpwnam_r/getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = match user.parse::<u32>() {
        // SAFETY: all pointers are valid for the call; buf outlives the use of pwd.
        Ok(uid) => unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) },
        // SAFETY: as above.
        Err(_) => unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) },
    };
    if rc != 0 || result.is_null() {
        return Err(format!("user `{user}` does not exist on this machine"));
    }
    // SAFETY: pw_dir and pw_name point into buf, NUL-terminated, valid here.
    let home = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) }.to_string_lossy().into_owned();
    // SAFETY: as above.
    let pw_name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_owned();
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: groups has room for `count` entries; getgrouplist updates count.
    let rc = unsafe { libc::getgrouplist(pw_name.as_ptr(), pwd.pw_gid, groups.as_mut_ptr(), &mut count) };
    groups.truncate(if rc < 0 { 0 } else { count.max(0) as usize });
    Ok(RunAs { uid: pwd.pw_uid, gid: pwd.pw_gid, groups, home, name: pw_name.to_string_lossy().into_owned() })
}

/// The soft limit on open files the daemon started with, given back to instances.
static ORIGINAL_FILES_LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Every instance holds pipes and cgroup files open in the daemon: it takes the
/// hard limit on open files as its soft one, as servers do, so thousands of
/// instances fit. Instances get the original soft limit back (some programs
/// walk every possible descriptor up to it).
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            ORIGINAL_FILES_LIMIT.store(limit.rlim_cur, std::sync::atomic::Ordering::Relaxed);
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
}

pub struct Launch<'a> {
    pub program: &'a str,
    pub args: &'a [String],
    pub working_dir: &'a Path,
    /// Added to (and overriding) the daemon's own environment.
    pub env: &'a [(String, String)],
    pub run_as: Option<&'a RunAs>,
    pub cgroup: Option<std::sync::Arc<tug_sys::cgroup::Group>>,
    /// Capture stdout and stderr (else they go to /dev/null).
    pub capture: bool,
    /// Give it a pipe as stdin (else /dev/null).
    pub input: bool,
    /// Run under the instance shim ([`crate::shim`]): nothing it starts outlives the daemon,
    /// even a process that left the group after the daemon and its keeper were SIGKILLed.
    pub contain: bool,
}

pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<Exit>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    pub stdin: Option<pipe::Sender>,
}

fn nonblocking_receiver(fd: OwnedFd) -> io::Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd(fd)
}

/// Marks every descriptor from 3 up close-on-exec, for a `pre_exec` closure (only
/// async-signal-safe calls). Descriptors tug inherited without the flag (a CI runner's
/// or `make`'s pipes, a script's redirections) would otherwise reach the daemon and
/// every instance, and whoever waits for such a pipe to close would wait as long as
/// the stack runs. Those std opened are close-on-exec already (the one reporting an
/// exec failure must stay open until the exec, which this leaves it).
pub fn close_inherited_on_exec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets descriptor flags.
    let marked = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } == 0;
    if marked {
        return;
    }
    // Before Linux 5.11: each descriptor up to the limit (closed ones fail harmlessly).
    // SAFETY: rlimit is plain data that getrlimit fills.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rlimit.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(65536) as i32
    } else {
        1024
    };
    for fd in 3..max {
        // SAFETY: fcntl on any number is safe; FD_CLOEXEC is the only descriptor flag.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Starts a process as the leader of its own process group, killed if the
/// daemon dies. Must be called inside a tokio runtime (for the pipes).
pub fn spawn(launch: &Launch) -> io::Result<Spawned> {
    let mut command = if launch.contain {
        // The shim starts the program, so a program that cannot be started must be found out
        // here: the message names it, as a failed exec would.
        findable(launch)?;
        let mut command = Command::new("/proc/self/exe");
        command.arg(crate::shim::ARG).arg(launch.program);
        command
    } else {
        Command::new(launch.program)
    };
    let death_signal = if launch.contain { crate::shim::parent_death_signal() } else { libc::SIGKILL };
    command.args(launch.args).current_dir(launch.working_dir);
    command.stdin(if launch.input { Stdio::piped() } else { Stdio::null() });
    for name in PRIVATE_VARIABLES {
        command.env_remove(name);
    }
    for name in WITHHELD.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        command.env_remove(name);
    }
    if let Some(user) = launch.run_as {
        command.env("HOME", &user.home).env("USER", &user.name).env("LOGNAME", &user.name);
    }
    command.envs(launch.env.iter().map(|(k, v)| (k, v)));
    if launch.capture {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let run_as = launch.run_as.cloned();
    let cgroup_fds = launch.cgroup.clone();
    let files_limit = ORIGINAL_FILES_LIMIT.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            close_inherited_on_exec();
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if files_limit > 0 {
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur = files_limit;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
            }
            if let Some(group) = &cgroup_fds {
                group.join_in_child()?;
            }
            if let Some(user) = &run_as
                && (libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0
                    || libc::setgid(user.gid) != 0
                    || libc::setuid(user.uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            // After the user change, which would clear it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The daemon may have died before the prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (mut child, exit) = Reaper::global().spawn(&mut command).map_err(|e| {
        // The child's chdir fails with the same ENOENT as a missing program, and the
        // message then blamed the program (`cannot start `sh`: No such file or directory`).
        if e.kind() == io::ErrorKind::NotFound && !launch.working_dir.is_dir() {
            io::Error::new(e.kind(), format!("its working_dir {} is not a folder", launch.working_dir.display()))
        } else {
            e
        }
    })?;
    let pid = child.id() as i32;
    let stdout = child.stdout.take().map(|s| nonblocking_receiver(OwnedFd::from(s))).transpose()?;
    let stderr = child.stderr.take().map(|s| nonblocking_receiver(OwnedFd::from(s))).transpose()?;
    let stdin = child.stdin.take().map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s))).transpose()?;
    Ok(Spawned { pid, exit, stdout, stderr, stdin })
}

/// Whether `launch.program` can be executed, as `execvp` would look it up (relative to the
/// working folder when it has a `/`, else on the instance's `PATH`).
fn findable(launch: &Launch) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |path: &Path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !launch.working_dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("its working_dir {} is not a folder", launch.working_dir.display()),
        ));
    }
    if launch.program.contains('/') {
        let path = launch.working_dir.join(launch.program);
        return match std::fs::metadata(&path) {
            Err(e) => Err(e),
            Ok(_) if executable(&path) => Ok(()),
            Ok(_) => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
        };
    }
    let path = launch
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|dir| executable(&launch.working_dir.join(dir).join(launch.program)));
    if found { Ok(()) } else { Err(io::Error::from(io::ErrorKind::NotFound)) }
}

/// Sends `signal` to a whole process group. False when the group is gone.
pub fn signal_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill with a negative pid signals the group; no memory involved.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// Kills what an instance left behind outside its process group: a process that
/// called `setsid` and whose parent has died is the daemon's child now (the
/// daemon is a subreaper), and it still carries the instance's variables. Its
/// whole group goes too. Returns how many it found.
pub fn kill_strays(instance: &str, state_dir: &str) -> usize {
    let daemon = std::process::id() as i32;
    let mut found = 0;
    for pid in tug_sys::procfs::children(daemon) {
        let ours = tug_sys::procfs::environ_contains(pid, "TUG_INSTANCE", instance)
            && tug_sys::procfs::environ_contains(pid, "TUG_STATE_DIR", state_dir);
        if !ours {
            continue;
        }
        found += 1;
        if let Ok(stat) = tug_sys::procfs::stat(pid) {
            signal_group(stat.pgid, libc::SIGKILL);
        }
        for child in tug_sys::procfs::descendants(pid) {
            // SAFETY: kill of a descendant of our own child.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
        // SAFETY: kill of our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    found
}

/// Whether any process of the group is still there (zombies count until reaped).
pub fn group_alive(pgid: i32) -> bool {
    signal_group(pgid, 0)
}

/// Stops a process group: `signal`, then up to `grace` for the leader to exit and
/// the group to empty, then SIGKILL to the group. Returns the leader's exit.
pub async fn stop_group(pgid: i32, signal: i32, grace: Duration, exit: &mut oneshot::Receiver<Exit>) -> Option<Exit> {
    signal_group(pgid, signal);
    let deadline = tokio::time::Instant::now() + grace;
    let mut status = None;
    // A oneshot must not be polled again once it has answered (its sender may also be gone
    // already: the caller passes a closed one when there is no leader to wait for).
    let mut answered = false;
    if let Ok(result) = tokio::time::timeout_at(deadline, &mut *exit).await {
        status = result.ok();
        answered = true;
    }
    // The leader is gone; give the rest of the group what remains of the grace.
    while group_alive(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if group_alive(pgid) {
        signal_group(pgid, libc::SIGKILL);
    }
    if !answered {
        status = exit.await.ok();
    }
    // Members are reaped by the reaper; wait (briefly) until none is left.
    for _ in 0..100 {
        if !group_alive(pgid) {
            break;
        }
        signal_group(pgid, libc::SIGKILL);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    status
}

/// SIGKILLs every descendant of this process, and the process group of each that is not this
/// process's own, until none is left: orphans are adopted by a subreaper as their parents die,
/// so it repeats until three rounds in a row (5 ms apart) find nothing. Reaps as it goes.
/// For a subreaper that is ending (the keeper, an instance's shim).
pub fn kill_descendants() {
    let me = std::process::id() as i32;
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    let mut quiet_rounds = 0;
    for _ in 0..500 {
        let all = tug_sys::procfs::descendants(me);
        for pid in &all {
            if let Ok(stat) = tug_sys::procfs::stat(*pid)
                && stat.pgid != own_group
            {
                signal_group(stat.pgid, libc::SIGKILL);
            }
            // SAFETY: plain kill of a descendant.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        loop {
            let mut status = 0;
            // SAFETY: non-blocking reap of any child.
            if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
                break;
            }
        }
        if all.is_empty() {
            quiet_rounds += 1;
            if quiet_rounds >= 3 {
                return;
            }
        } else {
            quiet_rounds = 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
