//! How an instance runs: one small interface, one driver per way of running.
//!
//! A driver starts one run of an instance from a [`Launch`] and hands back a [`Running`]:
//! the host pid of its main process (for `ps`, usage and the autoscaler, which measure its
//! process group), its output, its exit, a graceful stop, an [`Exec`] that runs a command
//! inside it (exec probes), and the clean-up once it has ended. Probes, restarts, gates,
//! routing, draining, rollouts, autoscaling and status sit above this seam and never ask
//! which driver an instance has: `process` runs a process group on this host.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tug_logs::Stream;

use crate::process::{self, Launch as Spawn, RunAs};
use crate::reaper::Exit;

/// One run of an instance, resolved for its driver.
pub(crate) enum Launch {
    Process(ProcessLaunch),
}

pub(crate) struct ProcessLaunch {
    pub program: String,
    /// The program as it may be shown in a message (`********` when sensitive).
    pub shown: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
    pub run_as: Option<RunAs>,
    pub cgroup: Option<Arc<tug_sys::cgroup::Group>>,
    /// `TUG_INSTANCE` and `TUG_STATE_DIR`: what finds a process that left the group.
    pub instance: String,
    pub state_dir: String,
}

/// Where a stream of an instance's output comes from.
pub(crate) enum Source {
    Pipe(pipe::Receiver),
}

/// A started run.
pub(crate) struct Running {
    /// The host pid of the main process, which leads the process group that `ps` and the
    /// autoscaler measure.
    pub pid: i32,
    /// Its start time (clock ticks after boot), so a reused pid is never taken for it.
    pub start_ticks: Option<u64>,
    output: Vec<(Stream, Source)>,
    exec: Exec,
    run: Run,
}

enum Run {
    Process {
        exit: oneshot::Receiver<Exit>,
        /// Set once `exit` has answered: a oneshot must not be polled again.
        ended: Option<Exit>,
        cgroup: Option<Arc<tug_sys::cgroup::Group>>,
        instance: String,
        state_dir: String,
    },
}

/// Where a command runs "inside" an instance: its environment, folder and user.
#[derive(Clone)]
pub(crate) enum Exec {
    Local { env: Vec<(String, String)>, working_dir: PathBuf, run_as: Option<RunAs> },
}

/// What an exec printed (both streams, the first 8 KiB each) and how it ended.
pub(crate) struct ExecOutput {
    pub exit: Exit,
    pub text: String,
}

/// Why an exec gave no exit status.
pub(crate) enum ExecError {
    /// It could not be started: why.
    Start(String),
    TimedOut(Duration),
    /// Its exit status was lost (the driver failed while it ran): why.
    Lost(String),
}

impl ExecError {
    /// The message, for a command shown as `shown`.
    pub fn describe(&self, shown: &str) -> String {
        match self {
            ExecError::Start(why) => format!("cannot run `{shown}`: {why}"),
            ExecError::TimedOut(after) => format!("timed out after {}", tug_stackfile::units::format_duration(*after)),
            ExecError::Lost(why) => format!("the exit status of `{shown}` was lost: {why}"),
        }
    }
}

/// Starts one run. The error says why, for the instance's message.
pub(crate) async fn start(launch: Launch) -> Result<Running, String> {
    match launch {
        Launch::Process(launch) => start_process(launch),
    }
}

fn start_process(launch: ProcessLaunch) -> Result<Running, String> {
    let spawn = Spawn {
        program: &launch.program,
        args: &launch.args,
        working_dir: &launch.working_dir,
        env: &launch.env,
        run_as: launch.run_as.as_ref(),
        cgroup: launch.cgroup.clone(),
        capture: true,
    };
    let mut spawned = process::spawn(&spawn).map_err(|e| format!("cannot start `{}`: {e}", launch.shown))?;
    let pid = spawned.pid;
    let start_ticks = tug_sys::procfs::stat(pid).ok().map(|s| s.start_time);
    let output = [(Stream::Out, spawned.stdout.take()), (Stream::Err, spawned.stderr.take())]
        .into_iter()
        .filter_map(|(stream, pipe)| pipe.map(|p| (stream, Source::Pipe(p))))
        .collect();
    Ok(Running {
        pid,
        start_ticks,
        output,
        exec: Exec::Local { env: launch.env, working_dir: launch.working_dir, run_as: launch.run_as },
        run: Run::Process {
            exit: spawned.exit,
            ended: None,
            cgroup: launch.cgroup,
            instance: launch.instance,
            state_dir: launch.state_dir,
        },
    })
}

impl Running {
    /// The output streams, once (their pumps own them).
    pub fn take_output(&mut self) -> Vec<(Stream, Source)> {
        std::mem::take(&mut self.output)
    }

    pub fn exec(&self) -> Exec {
        self.exec.clone()
    }

    /// Resolves when the run ends. Safe to cancel (in a `select!`) and to call again.
    pub async fn exited(&mut self) -> Exit {
        match &mut self.run {
            Run::Process { exit, ended, .. } => {
                if let Some(exit) = ended {
                    return *exit;
                }
                let exit = (&mut *exit).await.unwrap_or(Exit::Signal(libc::SIGKILL));
                *ended = Some(exit);
                exit
            }
        }
    }

    /// `signal`, then up to `grace` for the run to end, then SIGKILL. Returns how it ended.
    pub async fn stop(&mut self, signal: i32, grace: Duration) -> Option<Exit> {
        match &mut self.run {
            Run::Process { exit, ended, .. } => {
                if let Some(exit) = ended {
                    // The leader is gone; its group may not be.
                    let mut none = oneshot::channel().1;
                    process::stop_group(self.pid, signal, grace, &mut none).await;
                    return Some(*exit);
                }
                let status = process::stop_group(self.pid, signal, grace, exit).await;
                *ended = status;
                status
            }
        }
    }

    /// After the run ended: whatever it left behind goes with it.
    pub async fn finish(self, name: &str) {
        match self.run {
            Run::Process { cgroup, instance, state_dir, .. } => {
                // What the leader left in its group, and what left the group (adopted by
                // the daemon, a subreaper) while carrying the instance's variables.
                if process::group_alive(self.pid) {
                    let mut none = oneshot::channel().1;
                    process::stop_group(self.pid, libc::SIGKILL, Duration::ZERO, &mut none).await;
                }
                for _ in 0..50 {
                    // A stray's parent may still be dying: it is adopted a moment later.
                    if process::kill_strays(&instance, &state_dir) == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if let Some(group) = cgroup {
                    group.kill_all();
                    // The launch's copy is gone with the child; the folder can go too.
                    if let Ok(group) = Arc::try_unwrap(group)
                        && let Err(e) = group.remove()
                    {
                        eprintln!("tug: {name}: {e}");
                    }
                }
            }
        }
    }
}

impl Exec {
    /// Runs `program` with `args` inside the instance and waits, at most `timeout`; its whole
    /// process tree is killed when the time is up or the future is dropped.
    pub async fn run(&self, program: &str, args: &[String], timeout: Duration) -> Result<ExecOutput, ExecError> {
        match self {
            Exec::Local { env, working_dir, run_as } => {
                let spawn =
                    Spawn { program, args, working_dir, env, run_as: run_as.as_ref(), cgroup: None, capture: true };
                local_exec(&spawn, timeout).await
            }
        }
    }
}

async fn local_exec(spawn: &Spawn<'_>, timeout: Duration) -> Result<ExecOutput, ExecError> {
    let mut spawned = process::spawn(spawn).map_err(|e| ExecError::Start(e.to_string()))?;
    // The instance aborts its probe tasks when it stops: this future is then dropped
    // mid-wait, and the command's process group must not outlive it.
    let mut guard = KillGroupOnDrop(Some(spawned.pid));
    let output = collect_output(spawned.stdout.take(), spawned.stderr.take());
    let pid = spawned.pid;
    let exit = match tokio::time::timeout(timeout, &mut spawned.exit).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(_)) => return Err(ExecError::Lost("the reaper did not report it".into())),
        Err(_) => {
            // Its whole process group: a shell's children must not outlive it.
            process::signal_group(pid, libc::SIGKILL);
            guard.0 = None;
            let _ = spawned.exit.await;
            return Err(ExecError::TimedOut(timeout));
        }
    };
    // Children that kept the pipes open must not hold it up.
    process::signal_group(pid, libc::SIGKILL);
    guard.0 = None;
    let text = tokio::time::timeout(Duration::from_millis(200), output).await.unwrap_or_default();
    Ok(ExecOutput { exit, text })
}

/// Kills a process group when dropped while still armed.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            process::signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// The first 8 KiB of each stream, stdout then stderr.
async fn collect_output(stdout: Option<pipe::Receiver>, stderr: Option<pipe::Receiver>) -> String {
    use tokio::io::AsyncReadExt;
    async fn read(pipe: Option<pipe::Receiver>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(pipe) = pipe {
            let _ = pipe.take(8192).read_to_end(&mut out).await;
        }
        out
    }
    let (out, err) = tokio::join!(read(stdout), read(stderr));
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&err));
    text
}
