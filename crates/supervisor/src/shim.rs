//! The instance shim: a small keeper for one instance, so nothing an instance started outlives
//! the daemon, even when the daemon and its keeper are SIGKILLed together.
//!
//! The daemon runs `tug __instance PROGRAM ARGS…` (the same binary) in the instance's process
//! group, as its user and in its cgroup; the shim starts the program as its child and waits.
//! It is a child subreaper, so a process that calls `setsid` and loses its parent becomes the
//! shim's child instead of escaping to init; and its parent-death signal tells it when the
//! daemon is gone, however that happened, so it kills everything under it and exits. While
//! the daemon lives, the shim changes nothing: stop signals reach the program through the
//! group (the shim waits them out), a signal someone sends the shim's pid (the one `tug ps`
//! shows) is passed on to the program, and the shim exits as the program did (its code, or its
//! signal), leaving what the program left to the daemon, as before there was a shim. Its own
//! few pages are left out of the instance's CPU and memory figures.
//!
//! Deliberately not a PID namespace: an instance keeps the host's pids, so pid files and
//! `kill $(cat app.pid)` mean what they always meant.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// The argument that makes `tug` the shim.
pub const ARG: &str = "__instance";
/// Its name (`comm`), which usage figures leave out.
pub const NAME: &str = "tug-instance";
const NAME_C: &std::ffi::CStr = c"tug-instance";

/// The signal the shim gets when its parent (the daemon) dies: a real-time one, which no
/// stop signal is, so it is never taken for one.
pub fn parent_death_signal() -> i32 {
    libc::SIGRTMIN() + 5
}

/// The shim's `main`: runs `args` (program first) and returns the exit status to leave with.
pub fn run(args: Vec<OsString>) -> i32 {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("tug: {ARG} needs a program to run");
        return 2;
    };
    // SAFETY: prctl with constant arguments; the name is NUL-terminated.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, NAME_C.as_ptr() as libc::c_ulong, 0, 0, 0);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    // Every signal the shim handles is taken by sigwait, in order: blocked from here on.
    let waited = waited_signals();
    // SAFETY: the set is initialised by waited_signals; sigprocmask with valid pointers.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &waited, std::ptr::null_mut()) };
    // The daemon may have died before the mask was set (its signal then went unseen).
    // SAFETY: as above.
    if unsafe { libc::getppid() } != parent {
        return 128 + libc::SIGKILL;
    }
    let mut command = std::process::Command::new(program);
    command.args(rest);
    // SAFETY: the closure only makes async-signal-safe calls.
    unsafe {
        command.pre_exec(|| {
            // The program gets an empty mask and default dispositions, as if started directly.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Were the shim killed outright, the program goes too (as it did with the daemon
            // for a parent before there was a shim).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child.id() as i32,
        Err(e) => {
            eprintln!("tug: cannot start `{}`: {e}", program.to_string_lossy());
            return if e.kind() == std::io::ErrorKind::PermissionDenied { 126 } else { 127 };
        }
    };
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid set and siginfo.
        let signal = unsafe { libc::sigwaitinfo(&waited, &mut info) };
        if signal == parent_death_signal() {
            // The daemon is gone: everything under the shim goes.
            crate::process::kill_descendants();
            return 128 + libc::SIGKILL;
        }
        if signal != libc::SIGCHLD {
            // The daemon signals the whole group, which the program is in: it has it already.
            // Someone else signalled the pid `tug ps` shows (the shim's): it is the program's.
            // SAFETY: si_pid is valid for signals sent by kill(2) and sigqueue(3).
            let sender = unsafe { info.si_pid() };
            if matches!(info.si_code, libc::SI_USER | libc::SI_QUEUE) && sender != parent && sender != child {
                // SAFETY: kill of our own child.
                unsafe { libc::kill(child, signal) };
            }
            continue;
        }
        // Reap every child that ended: the program, or an orphan adopted by this subreaper.
        loop {
            let mut status = 0;
            // SAFETY: non-blocking reap of any child.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == child {
                // What the program left behind is the daemon's to end: in its group, it gets
                // the rest of a graceful stop's grace period (a `sh -c` that died on SIGTERM
                // while its child finishes cleanly), then SIGKILL; an adopted orphan becomes
                // the daemon's child (a subreaper too), found by its variables.
                return mirror(status);
            }
        }
    }
}

/// The signals the shim waits for: children, its parent's death, and every signal that would
/// otherwise end it (a stop signal sent to the group is the program's to act on).
fn waited_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset and sigaddset initialise and fill it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [
            libc::SIGCHLD,
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
            libc::SIGALRM,
            libc::SIGWINCH,
            libc::SIGCONT,
            libc::SIGURG,
            libc::SIGPWR,
            parent_death_signal(),
        ] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Leaves as the program did: with its exit code, or killed by its signal.
fn mirror(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        return libc::WEXITSTATUS(status);
    }
    let signal = libc::WTERMSIG(status);
    // SAFETY: resetting a disposition, unblocking and raising are plain calls; no core file.
    unsafe {
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
    }
    128 + signal
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_name_set_is_the_name_left_out() {
        assert_eq!(super::NAME_C.to_str(), Ok(super::NAME));
        assert!(super::NAME.len() <= 15, "comm keeps 15 bytes");
    }
}
