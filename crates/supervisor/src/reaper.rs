//! Collects the exit of every child of the daemon.
//!
//! The daemon is a child subreaper, so orphaned grandchildren become its children
//! too and must be reaped, or they stay zombies. One thread waits for any child
//! (`waitid` with `WNOWAIT`, which does not reap), then reaps that pid and hands
//! its status to whoever spawned it. A pid nobody has registered is either an
//! adopted orphan or a child whose spawn has not returned yet: while any spawn is
//! in flight, the reaper waits for it before deciding, so a pid is never reaped,
//! reused by a new child and then matched to the wrong waiter. Spawns themselves
//! run in parallel (a fork and exec can take milliseconds).

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tokio::sync::oneshot;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The shell's convention: 128 + signal for a killed process.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by {}", signal_name(s)),
        }
    }
}

pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

#[derive(Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    /// Spawns that have forked (or may have) but not registered their child yet.
    spawning: usize,
}

struct Shared {
    table: Mutex<Table>,
    /// Wakes the reaper thread when a spawn ends: there may be children again,
    /// or the pid it waits about has been registered.
    spawned: Condvar,
}

#[derive(Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
}

static GLOBAL: OnceLock<Reaper> = OnceLock::new();

impl Reaper {
    /// The process-wide reaper (there can be only one `waitid(P_ALL)` loop).
    pub fn global() -> &'static Reaper {
        GLOBAL.get_or_init(|| {
            let reaper =
                Reaper { shared: Arc::new(Shared { table: Mutex::new(Table::default()), spawned: Condvar::new() }) };
            let shared = reaper.shared.clone();
            std::thread::Builder::new()
                .name("tug-reaper".into())
                .spawn(move || reap_forever(&shared))
                .unwrap_or_else(|e| panic!("cannot start the reaper thread: {e}"));
            reaper
        })
    }

    /// Spawns `command` and returns the child with a receiver for its exit.
    /// The caller must not `wait` on the child: the reaper does.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
        self.shared.table.lock().unwrap_or_else(|p| p.into_inner()).spawning += 1;
        let spawned = command.spawn();
        let mut table = self.shared.table.lock().unwrap_or_else(|p| p.into_inner());
        table.spawning -= 1;
        let result = spawned.map(|child| {
            let (tx, rx) = oneshot::channel();
            table.waiting.insert(child.id() as i32, tx);
            (child, rx)
        });
        drop(table);
        self.shared.spawned.notify_all();
        result
    }
}

fn reap_forever(shared: &Shared) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a siginfo_t; WNOWAIT leaves the child reapable.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // No children: sleep until a spawn (adopted orphans also wake us via
            // the timeout, since nobody announces them).
            let table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
            let _ = shared.spawned.wait_timeout(table, std::time::Duration::from_millis(500));
            continue;
        }
        // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
        let pid = unsafe { info.si_pid() };
        let mut table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
        // Not registered yet, with a spawn in flight: it may be that spawn's child.
        while !table.waiting.contains_key(&pid) && table.spawning > 0 {
            table = shared.spawned.wait(table).unwrap_or_else(|p| p.into_inner());
        }
        let mut status = 0;
        // SAFETY: plain waitpid on a pid we were told is our exited child.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped != pid {
            // Someone else reaped it (std does, when exec fails during spawn).
            table.waiting.remove(&pid);
            continue;
        }
        let exit = if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        };
        if let Some(tx) = table.waiting.remove(&pid) {
            let _ = tx.send(exit);
        }
    }
}
