//! How an instance runs: one small interface, one driver per way of running.
//!
//! [`prepare`] turns an instance (its spec, port, dependencies) into a [`Launch`] for its
//! driver and the variables the instance sees; [`start`] starts one run and hands back a
//! [`Running`]: the host pid of its main process (for `ps`, usage and the autoscaler, which
//! measure its process group), its output, its exit, a graceful stop, an [`Exec`] that runs a
//! command inside it (exec probes), and the clean-up once it has ended. Probes, restarts,
//! gates, routing, draining, rollouts, autoscaling and status sit above this seam and never
//! ask which driver an instance has. Two drivers: a process group on this host, and a
//! container on the engine (Docker, or Podman's compatible service).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tug_logs::Stream;
use tug_proto::spec::{CommandSpec, ContainerSpec, MountKind, ServiceSpec, Value};

use crate::Inner;
use crate::container;
use crate::process::{self, Launch as Spawn, RunAs};
use crate::reaper::Exit;
use crate::secret_files::{Owner, SecretDir};

/// An instance as its driver needs to know it.
pub(crate) struct Instance<'a> {
    pub inner: &'a Arc<Inner>,
    pub spec: &'a ServiceSpec,
    pub name: &'a str,
    pub replica: u32,
    /// Its port on this host: private behind the router, or the service's own.
    pub port: Option<u16>,
    /// Each dependency that has a port, with it.
    pub dependencies: Vec<(String, u16)>,
    /// Made while the instance waited for its dependencies (processes with `resources`).
    pub cgroup: Option<Arc<tug_sys::cgroup::Group>>,
}

/// What [`prepare`] gives: the run to start, and the instance variables as the instance sees
/// them (its exec probes are resolved with these).
pub(crate) struct Prepared {
    pub launch: Launch,
    pub vars: Vec<(String, String)>,
    /// Every value of its environment, resolved: the sensitive ones are masked in its output.
    pub env: Vec<(String, String)>,
}

/// One run of an instance, resolved for its driver.
// One lives for the moment between deciding and starting: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Launch {
    Process(ProcessLaunch),
    Container(ContainerLaunch),
}

pub(crate) struct ProcessLaunch {
    program: String,
    /// The program as it may be shown in a message (`********` when sensitive).
    shown: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    working_dir: PathBuf,
    run_as: Option<RunAs>,
    cgroup: Option<Arc<tug_sys::cgroup::Group>>,
    /// `TUG_INSTANCE` and `TUG_STATE_DIR`: what finds a process that left the group.
    instance: String,
    state_dir: String,
    secrets: Option<SecretDir>,
}

pub(crate) struct ContainerLaunch {
    engine: tug_engine::Engine,
    name: String,
    /// The image as the stack file names it, for messages.
    image: String,
    config: tug_engine::ContainerConfig,
    /// In the container: the user exec probes run as.
    user: Option<String>,
    secrets: Option<SecretDir>,
}

/// Where a stream of an instance's output comes from.
pub(crate) enum Source {
    Pipe(pipe::Receiver),
    /// Both streams of a container, multiplexed by the engine.
    Engine(tug_engine::Output),
}

/// How long a SIGKILLed container may take to be reported gone.
const KILLED_WITHIN: Duration = Duration::from_secs(10);

/// Where a container's secret files are mounted.
const CONTAINER_SECRETS: &str = "/run/secrets";

/// A started run.
pub(crate) struct Running {
    /// The host pid of the process group's leader (a process's shim, a container's main
    /// process): what is signalled and measured.
    pub pid: i32,
    /// The program's own pid, which `tug ps` shows (the container's main process).
    pub program: i32,
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
        _secrets: Option<SecretDir>,
    },
    Container {
        engine: tug_engine::Engine,
        id: String,
        exit: oneshot::Receiver<Exit>,
        ended: Option<Exit>,
        _secrets: Option<SecretDir>,
    },
}

/// Where a command runs "inside" an instance: its environment, folder and user.
#[derive(Clone)]
pub(crate) enum Exec {
    Local { env: Vec<(String, String)>, working_dir: PathBuf, run_as: Option<RunAs> },
    Container { engine: tug_engine::Engine, id: String, user: Option<String> },
}

/// What an exec printed (both streams, the first 8 KiB each) and how it ended.
pub(crate) struct ExecOutput {
    pub exit: Exit,
    pub text: String,
}

/// What a streamed command (`tug exec`, `tug run`) reports, in order: its output, then how it
/// ended.
#[derive(Debug, PartialEq)]
pub enum ExecEvent {
    Output(Stream, Vec<u8>),
    Exit(i32),
    Failed(String),
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

/// A value with the instance's variables substituted.
pub(crate) fn resolve(value: &Value, vars: &[(String, String)]) -> Result<String, String> {
    if !value.template {
        return Ok(value.value.clone());
    }
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    tug_stackfile::interp::substitute_instance(&value.value, &pairs).map_err(|errors| {
        let what = errors.first().map(|e| e.to_string()).unwrap_or_default();
        if value.sensitive {
            "a sensitive value cannot be interpolated".to_string()
        } else {
            format!("cannot interpolate `{}`: {what}", value.value)
        }
    })
}

/// A command's program and arguments; a string is run by `sh -c`.
pub(crate) fn command(command: &CommandSpec, vars: &[(String, String)]) -> Result<(String, Vec<String>), String> {
    match command {
        CommandSpec::Argv(args) => {
            let mut args = args.iter().map(|a| resolve(a, vars)).collect::<Result<Vec<_>, _>>()?;
            if args.is_empty() {
                return Err("the command is empty".into());
            }
            let program = args.remove(0);
            Ok((program, args))
        }
        CommandSpec::Shell(text) => Ok(("sh".into(), vec!["-c".into(), resolve(text, vars)?])),
    }
}

/// The program as it may be shown in a message.
pub(crate) fn shown_program(command: &CommandSpec, program: &str) -> String {
    match command {
        CommandSpec::Argv(args) if args.first().is_some_and(|a| a.sensitive) => "********".into(),
        _ => program.to_string(),
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub(crate) fn format_address(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// The instance variables of the contract, as seen from `host` (where the instance binds and
/// where its dependencies answer).
fn instance_vars(instance: &Instance, host: &str, port: Option<u16>, dependency_host: &str) -> Vec<(String, String)> {
    let inner = instance.inner;
    let mut vars = vec![
        ("HOST".into(), host.to_string()),
        ("PORT".into(), port.map(|p| p.to_string()).unwrap_or_default()),
        ("TUG_SERVICE".into(), instance.spec.name.clone()),
        ("TUG_INSTANCE".into(), instance.name.to_string()),
        ("TUG_REPLICA".into(), instance.replica.to_string()),
        ("TUG_REVISION".into(), instance.spec.revision.clone()),
        ("TUG_STATE_DIR".into(), inner.config.state_dir.display().to_string()),
    ];
    // Discovery: where each dependency with a port answers (its router, or the instance
    // itself with `proxy: false`).
    for (dependency, port) in &instance.dependencies {
        vars.push((tug_stackfile::read::address_variable(dependency), format_address(dependency_host, *port)));
    }
    vars
}

/// The instance's environment: its settings, secrets and `environment`, then the instance
/// variables, which are tug's contract with it and win.
fn environment(spec: &ServiceSpec, vars: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::with_capacity(spec.environment.len() + vars.len());
    for (name, value) in &spec.environment {
        env.push((name.clone(), resolve(value, vars)?));
    }
    env.extend(vars.iter().cloned());
    Ok(env)
}

/// The files of the secrets the service lists, from its environment.
fn secret_files(spec: &ServiceSpec, env: &[(String, String)]) -> Vec<(String, String)> {
    spec.secret_files
        .iter()
        .filter_map(|name| env.iter().rev().find(|(k, _)| k == name).map(|(k, v)| (k.clone(), v.clone())))
        .collect()
}

/// Decides how the instance runs this time, for its driver.
pub(crate) async fn prepare(instance: Instance<'_>) -> Result<Prepared, String> {
    match &instance.spec.container {
        None => prepare_process(instance),
        Some(container) => prepare_container(instance, container).await,
    }
}

fn prepare_process(instance: Instance<'_>) -> Result<Prepared, String> {
    let spec = instance.spec;
    let host = instance.inner.config.host.clone();
    let mut vars = instance_vars(&instance, &host, instance.port, &host);
    let secrets_dir = instance.inner.config.state_dir.display().to_string();
    let run_as = match &spec.user {
        Some(user) => {
            let run_as = process::lookup_user(user)?;
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            if euid != 0 && euid != run_as.uid {
                return Err(format!("`user: {user}` needs tug to run as root (it runs as uid {euid})"));
            }
            Some(run_as)
        }
        None => None,
    };
    // The secrets folder is the run's own: its path is known before the environment is.
    let mut secrets = None;
    if !spec.secret_files.is_empty() {
        let env = environment(spec, &vars)?;
        let owner = run_as.as_ref().map(|u| (u.uid, u.gid));
        let dir = SecretDir::create(
            &instance.inner.config.state_dir,
            instance.name,
            &secret_files(spec, &env),
            Owner::Process(owner),
        )?;
        vars.push(("TUG_SECRETS_DIR".into(), dir.path().display().to_string()));
        secrets = Some(dir);
    }
    let command = spec.command.as_ref().ok_or("the service has no `command`")?;
    let (program, args) = self::command(command, &vars)?;
    let env = environment(spec, &vars)?;
    let launch = Launch::Process(ProcessLaunch {
        shown: shown_program(command, &program),
        program,
        args,
        env: env.clone(),
        working_dir: spec.working_dir.clone(),
        run_as,
        cgroup: instance.cgroup,
        instance: instance.name.to_string(),
        state_dir: secrets_dir,
        secrets,
    });
    Ok(Prepared { launch, vars, env })
}

/// `/etc/hosts` lines that make each dependency's name resolve to where its port answers,
/// so `redis:6379` works as on a Compose network (the port being the service's `port`).
fn dependency_hosts(dependencies: &[(String, u16)], address: &str) -> Vec<String> {
    if address.parse::<std::net::IpAddr>().is_err() {
        return Vec::new();
    }
    dependencies.iter().map(|(name, _)| format!("{name}:{address}")).collect()
}

async fn prepare_container(instance: Instance<'_>, container: &ContainerSpec) -> Result<Prepared, String> {
    let spec = instance.spec;
    let inner = instance.inner;
    let state_dir = inner.config.state_dir.display().to_string();
    let url = inner.lock().engine.clone().ok_or("no container engine is configured for this stack")?;
    let engine = inner.engines.get(&url, &state_dir).await.map_err(|e| format!("the container engine: {e}"))?;
    let host = inner.config.host.clone();
    // Without `container_port` the container shares the host's network: it sees what a
    // process sees. With it, the container has a network of its own: it binds every one of
    // its interfaces on `container_port`, which the engine publishes on the instance's port,
    // and reaches its dependencies through relays on the bridge's gateway.
    let (mut vars, network, dependency_host) = match container.container_port {
        None => (instance_vars(&instance, &host, instance.port, &host), tug_engine::Network::Host, host.clone()),
        Some(inside) => {
            let gateway = bridge_gateway(&engine).await?;
            for (_, port) in &instance.dependencies {
                inner.engines.relay(gateway, *port, &host).await?;
            }
            let publish = instance
                .port
                .map(|port| tug_engine::Publish { host_ip: host.clone(), host_port: port, container_port: inside })
                .into_iter()
                .collect();
            let vars = instance_vars(&instance, "0.0.0.0", Some(inside), &gateway.to_string());
            (vars, tug_engine::Network::Bridge { publish }, gateway.to_string())
        }
    };
    let mut mounts: Vec<tug_engine::Mount> = container
        .mounts
        .iter()
        .map(|m| tug_engine::Mount {
            kind: match m.kind {
                MountKind::Volume => tug_engine::MountKind::Volume,
                MountKind::Bind => tug_engine::MountKind::Bind,
            },
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
        })
        .collect();
    let mut secrets = None;
    if !spec.secret_files.is_empty() {
        vars.push(("TUG_SECRETS_DIR".into(), CONTAINER_SECRETS.into()));
        let env = environment(spec, &vars)?;
        let dir = SecretDir::create(
            &inner.config.state_dir,
            instance.name,
            &secret_files(spec, &env),
            Owner::Container(numeric_owner(spec.user.as_deref().unwrap_or(&container.image_user))),
        )?;
        mounts.push(tug_engine::Mount {
            kind: tug_engine::MountKind::Bind,
            source: dir.path().display().to_string(),
            target: CONTAINER_SECRETS.into(),
            read_only: true,
        });
        secrets = Some(dir);
    }
    let cmd = match &spec.command {
        Some(CommandSpec::Argv(args)) => Some(args.iter().map(|a| resolve(a, &vars)).collect::<Result<Vec<_>, _>>()?),
        Some(CommandSpec::Shell(text)) => Some(vec!["sh".into(), "-c".into(), resolve(text, &vars)?]),
        None => None,
    };
    let entrypoint = match &container.entrypoint {
        Some(words) => Some(words.iter().map(|w| resolve(w, &vars)).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    let env = environment(spec, &vars)?;
    let project = inner.lock().project.clone();
    let labels = vec![
        ("tug.project".to_string(), project.clone()),
        ("tug.service".to_string(), spec.name.clone()),
        ("tug.instance".to_string(), instance.name.to_string()),
        ("tug.revision".to_string(), spec.revision.clone()),
        (container::STATE_DIR_LABEL.to_string(), state_dir.clone()),
        (container::DAEMON_LABEL.to_string(), container::daemon_id()),
    ];
    let config = tug_engine::ContainerConfig {
        image: container.image_id.clone(),
        cmd,
        entrypoint,
        env: env.clone(),
        user: spec.user.clone(),
        working_dir: container.working_dir.clone(),
        labels,
        network,
        extra_hosts: dependency_hosts(&instance.dependencies, &dependency_host),
        mounts,
        tmpfs: container.tmpfs.iter().map(|t| container::tmpfs_entry(t)).collect(),
        read_only: container.read_only,
        cap_add: container.cap_add.clone(),
        cap_drop: container.cap_drop.clone(),
        security_opt: container.security_opt.clone(),
        init: container.init,
        memory_bytes: spec.memory_bytes,
        nano_cpus: spec.cpu.map(|c| (c * 1e9) as i64),
        stop_signal: Some(spec.stop_signal_name.clone()),
        engine_logs_off: true,
    };
    let launch = Launch::Container(ContainerLaunch {
        engine,
        name: container::container_name(&project, instance.name, &state_dir),
        image: container.image.clone(),
        config,
        user: spec.user.clone(),
        secrets,
    });
    Ok(Prepared { launch, vars, env })
}

/// `user: "999"` or `"999:999"` (or the image's `USER`; empty is root): who the secret files
/// belong to. A user name is the image's to resolve, which tug cannot see.
fn numeric_owner(user: &str) -> Option<(u32, u32)> {
    if user.is_empty() {
        return Some((0, 0));
    }
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid.parse().ok()?, gid.parse().ok()?),
        None => {
            let uid = user.parse().ok()?;
            (uid, uid)
        }
    };
    Some((uid, gid))
}

/// Where containers on the engine's default bridge reach this host.
async fn bridge_gateway(engine: &tug_engine::Engine) -> Result<std::net::Ipv4Addr, String> {
    for network in ["bridge", "podman"] {
        if let Some(gateway) = engine.network_gateway(network).await.map_err(|e| e.to_string())? {
            return Ok(gateway);
        }
    }
    Err("the container engine has no `bridge` (or `podman`) network with an IPv4 gateway, which a container with \
         `container_port` needs to reach its dependencies"
        .into())
}

/// Starts one run. The error says why, for the instance's message.
pub(crate) async fn start(launch: Launch) -> Result<Running, String> {
    match launch {
        Launch::Process(launch) => start_process(launch).await,
        Launch::Container(launch) => start_container(launch).await,
    }
}

/// The program a shim started: its first child, which appears within a moment of its start.
async fn program_of(shim: i32) -> Option<i32> {
    let children = format!("/proc/{shim}/task/{shim}/children");
    for _ in 0..100 {
        let text = std::fs::read_to_string(&children).ok()?;
        if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok()) {
            return Some(pid);
        }
        // A program that has ended already (a quick job) took the shim with it.
        if tug_sys::procfs::stat(shim).map_or(true, |s| s.is_zombie()) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

async fn start_process(launch: ProcessLaunch) -> Result<Running, String> {
    let spawn = Spawn {
        program: &launch.program,
        args: &launch.args,
        working_dir: &launch.working_dir,
        env: &launch.env,
        run_as: launch.run_as.as_ref(),
        cgroup: launch.cgroup.clone(),
        capture: true,
        input: false,
        contain: true,
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
        program: program_of(pid).await.unwrap_or(pid),
        start_ticks,
        output,
        exec: Exec::Local { env: launch.env, working_dir: launch.working_dir, run_as: launch.run_as },
        run: Run::Process {
            exit: spawned.exit,
            ended: None,
            cgroup: launch.cgroup,
            instance: launch.instance,
            state_dir: launch.state_dir,
            _secrets: launch.secrets,
        },
    })
}

async fn start_container(launch: ContainerLaunch) -> Result<Running, String> {
    let ContainerLaunch { engine, name, image, config, user, secrets } = launch;
    let id = match engine.create_container(&name, &config).await {
        Ok(id) => id,
        // One of this instance's, left by a run whose removal failed: it goes, and once more.
        Err(tug_engine::Error::Conflict { .. }) => {
            engine.remove_container(&name, true).await.map_err(|e| e.to_string())?;
            engine.create_container(&name, &config).await.map_err(|e| create_error(&image, &config.image, e))?
        }
        Err(e) => return Err(create_error(&image, &config.image, e)),
    };
    // From here on the container exists: whatever fails removes it.
    let started = async {
        // Attached before it starts, so no line of its output is lost.
        let output = engine.attach(&id).await.map_err(|e| e.to_string())?;
        engine.start(&id).await.map_err(|e| format!("the engine cannot start a container of `{image}`: {e}"))?;
        let info = engine.inspect_container(&id).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((output, info))
    };
    let (output, info) = match started.await {
        Ok(started) => started,
        Err(e) => {
            let _ = engine.remove_container(&id, true).await;
            return Err(e);
        }
    };
    let pid = info.as_ref().and_then(|i| i.pid).unwrap_or(0);
    let start_ticks = (pid > 0).then(|| tug_sys::procfs::stat(pid).ok().map(|s| s.start_time)).flatten();
    // The engine says when it exits; a task waits so `exited` stays cancel-safe.
    let (tx, exit) = oneshot::channel();
    let waiter = engine.clone();
    let waited = id.clone();
    tokio::spawn(async move {
        let exit = match waiter.wait(&waited).await {
            Ok(status) => container::exit_from_status(status),
            Err(e) => {
                crate::log::warn(&format!("waiting for container {waited}: {e}"), &[]);
                Exit::Signal(libc::SIGKILL)
            }
        };
        let _ = tx.send(exit);
    });
    Ok(Running {
        pid,
        program: pid,
        start_ticks,
        output: vec![(Stream::Out, Source::Engine(output))],
        exec: Exec::Container { engine: engine.clone(), id: id.clone(), user },
        run: Run::Container { engine, id, exit, ended: None, _secrets: secrets },
    })
}

/// A revision's image id that the engine no longer has, with what to do.
pub(crate) fn image_gone(image: &str, id: &str) -> String {
    format!(
        "the image `{image}` this revision runs ({id}) is no longer on the container engine (removed by \
         `docker image prune`?): load or rebuild that image, or deploy another revision"
    )
}

/// Why a container could not be created, with what to do.
fn create_error(image: &str, id: &str, error: tug_engine::Error) -> String {
    match error {
        tug_engine::Error::NotFound { .. } => image_gone(image, id),
        other => format!("the engine refused a container of `{image}`: {other}"),
    }
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
        let (Run::Process { exit, ended, .. } | Run::Container { exit, ended, .. }) = &mut self.run;
        if let Some(exit) = ended {
            return *exit;
        }
        let exit = (&mut *exit).await.unwrap_or(Exit::Signal(libc::SIGKILL));
        *ended = Some(exit);
        exit
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
            Run::Container { engine, id, exit, ended, .. } => {
                if let Some(exit) = ended {
                    return Some(*exit);
                }
                let _ = engine.kill(id, &crate::reaper::signal_name(signal)).await;
                let status = match tokio::time::timeout(grace, &mut *exit).await {
                    Ok(status) => status.ok(),
                    Err(_) => {
                        let _ = engine.kill(id, "SIGKILL").await;
                        // A stuck engine must not hold `down` forever: the container is then
                        // removed by force, which ends it too.
                        match tokio::time::timeout(KILLED_WITHIN, &mut *exit).await {
                            Ok(status) => status.ok(),
                            Err(_) => {
                                let _ = engine.remove_container(id, true).await;
                                Some(Exit::Signal(libc::SIGKILL))
                            }
                        }
                    }
                };
                *ended = status;
                status
            }
        }
    }

    /// After the run ended: whatever it left behind goes with it.
    pub async fn finish(self, name: &str) {
        match self.run {
            Run::Container { engine, id, .. } => {
                if let Err(e) = engine.remove_container(&id, true).await {
                    crate::log::warn(&format!("cannot remove its container {id}: {e}"), &[("instance", name)]);
                }
            }
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
                        crate::log::warn(&e.to_string(), &[("instance", name)]);
                    }
                }
            }
        }
    }
}

impl Exec {
    /// Runs `program` with `args` inside the instance and waits, at most `timeout`; a local
    /// command's whole process tree is killed when the time is up or the future is dropped (the
    /// engine cannot kill an exec: a container's runs on to its end).
    pub async fn run(&self, program: &str, args: &[String], timeout: Duration) -> Result<ExecOutput, ExecError> {
        let argv: Vec<String> = std::iter::once(program.to_string()).chain(args.iter().cloned()).collect();
        let (events, mut received) = tokio::sync::mpsc::channel(16);
        let collect = async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some(event) = received.recv().await {
                if let ExecEvent::Output(stream, chunk) = event {
                    let buffer = if stream == Stream::Out { &mut out } else { &mut err };
                    let room = 8192usize.saturating_sub(buffer.len());
                    buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
            let mut text = String::from_utf8_lossy(&out).into_owned();
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&err));
            text
        };
        let ran = async { tokio::join!(self.execute(&argv, None, events), collect) };
        match tokio::time::timeout(timeout, ran).await {
            Ok((Ok(exit), text)) => Ok(ExecOutput { exit, text }),
            Ok((Err(e), _)) => Err(e),
            Err(_) => Err(ExecError::TimedOut(timeout)),
        }
    }

    /// Runs `argv` inside the instance, its output and then its exit status sent to `events`.
    /// When `events` closes (whoever asked went away), a local command's process group is
    /// killed; the engine cannot kill an exec, so a container's runs on to its end.
    pub async fn stream(&self, argv: Vec<String>, events: tokio::sync::mpsc::Sender<ExecEvent>) {
        self.stream_fed(argv, None, events).await
    }

    /// [`stream`](Self::stream), with `input`'s chunks as the command's standard input (closed
    /// when `input` ends).
    pub async fn stream_fed(
        &self,
        argv: Vec<String>,
        input: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
        events: tokio::sync::mpsc::Sender<ExecEvent>,
    ) {
        let ended = self.execute(&argv, input, events.clone()).await;
        let _ = events
            .send(match ended {
                Ok(exit) => ExecEvent::Exit(exit.code()),
                Err(e) => ExecEvent::Failed(e.describe(argv.first().map_or("", String::as_str))),
            })
            .await;
    }

    /// Runs `argv`, sending its output to `events` (and nothing else); how it ended.
    async fn execute(
        &self,
        argv: &[String],
        input: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
        events: tokio::sync::mpsc::Sender<ExecEvent>,
    ) -> Result<Exit, ExecError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(ExecError::Start("no command to run".into()));
        };
        match self {
            Exec::Local { env, working_dir, run_as } => {
                let spawn = Spawn {
                    program,
                    args,
                    working_dir,
                    env,
                    run_as: run_as.as_ref(),
                    cgroup: None,
                    capture: true,
                    input: input.is_some(),
                    contain: false,
                };
                execute_local(&spawn, input, &events).await
            }
            Exec::Container { engine, id, user } => {
                let config = tug_engine::ExecConfig {
                    cmd: argv.to_vec(),
                    env: Vec::new(),
                    user: user.clone(),
                    working_dir: None,
                    stdin: input.is_some(),
                };
                execute_in_container(engine, id, &config, input, &events).await
            }
        }
    }
}

/// Forwards one stream of output, chunk by chunk, as `stream`, until it ends or nobody listens.
pub(crate) async fn forward_pipe(pipe: pipe::Receiver, stream: Stream, events: tokio::sync::mpsc::Sender<ExecEvent>) {
    use tokio::io::AsyncReadExt;
    let mut pipe = pipe;
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 || events.send(ExecEvent::Output(stream, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
}

/// Writes `input`'s chunks to `to`, then closes it (the command reads its end). A command
/// that stops reading ends the feeding (a broken pipe), not the command.
async fn feed<W: tokio::io::AsyncWrite + Unpin>(mut input: tokio::sync::mpsc::Receiver<Vec<u8>>, mut to: W) {
    use tokio::io::AsyncWriteExt;
    while let Some(chunk) = input.recv().await {
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

async fn execute_local(
    spawn: &Spawn<'_>,
    input: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    events: &tokio::sync::mpsc::Sender<ExecEvent>,
) -> Result<Exit, ExecError> {
    let mut spawned = process::spawn(spawn).map_err(|e| ExecError::Start(e.to_string()))?;
    // Dropped mid-wait (a probe aborted when its instance stops, a timeout), the command's
    // process group must not outlive it.
    let mut guard = KillGroupOnDrop(Some(spawned.pid));
    let feeding = match (input, spawned.stdin.take()) {
        (Some(input), Some(stdin)) => Some(tokio::spawn(feed(input, stdin))),
        _ => None,
    };
    let _stop_feeding = feeding.map(|f| AbortOnDrop(f.abort_handle()));
    let pumps: Vec<_> = [(Stream::Out, spawned.stdout.take()), (Stream::Err, spawned.stderr.take())]
        .into_iter()
        .filter_map(|(stream, pipe)| pipe.map(|p| tokio::spawn(forward_pipe(p, stream, events.clone()))))
        .collect();
    let exit = tokio::select! {
        exit = &mut spawned.exit => exit.map_err(|_| ExecError::Lost("the reaper did not report it".into()))?,
        _ = events.closed() => return Err(ExecError::Lost("nobody is listening any more".into())),
    };
    // Its whole group: children that kept the pipes open must not hold the answer up.
    process::signal_group(spawned.pid, libc::SIGKILL);
    guard.0 = None;
    for pump in pumps {
        // Bounded: a process that left the group may hold the pipe; its pump must not hold the
        // output up (`run` waits for every pump to let go).
        let abort = pump.abort_handle();
        if tokio::time::timeout(Duration::from_millis(200), pump).await.is_err() {
            abort.abort();
        }
    }
    Ok(exit)
}

async fn execute_in_container(
    engine: &tug_engine::Engine,
    id: &str,
    config: &tug_engine::ExecConfig,
    input: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    events: &tokio::sync::mpsc::Sender<ExecEvent>,
) -> Result<Exit, ExecError> {
    let mut session = engine.exec(id, config).await.map_err(|e| ExecError::Start(e.to_string()))?;
    let feeding = match (input, session.stdin.take()) {
        (Some(input), Some(stdin)) => Some(tokio::spawn(feed(input, stdin))),
        _ => None,
    };
    let _stop_feeding = feeding.map(|f| AbortOnDrop(f.abort_handle()));
    // Given up on (a probe's timeout, a reader gone), the command is killed by its host pid:
    // the engine cannot stop an exec, and Docker's own healthcheck kills a probe that timed out.
    let mut guard = KillExecOnDrop(Some((engine.clone(), session.id().to_string())));
    let ended = forward_exec(&mut session, events).await;
    if ended.is_ok() {
        guard.0 = None;
    }
    ended
}

async fn forward_exec(
    session: &mut tug_engine::ExecSession,
    events: &tokio::sync::mpsc::Sender<ExecEvent>,
) -> Result<Exit, ExecError> {
    while let Some((kind, chunk)) = session.output.next().await.map_err(|e| ExecError::Lost(e.to_string()))? {
        let stream = match kind {
            tug_engine::StreamKind::Stdout => Stream::Out,
            tug_engine::StreamKind::Stderr => Stream::Err,
        };
        if events.send(ExecEvent::Output(stream, chunk)).await.is_err() {
            return Err(ExecError::Lost("nobody is listening any more".into()));
        }
    }
    let code = session.exit_code().await.map_err(|e| ExecError::Lost(e.to_string()))?;
    Ok(container::exit_from_status(code))
}

/// Kills an exec's process (and what it started) when dropped while still armed.
struct KillExecOnDrop(Option<(tug_engine::Engine, String)>);

impl Drop for KillExecOnDrop {
    fn drop(&mut self) {
        let Some((engine, exec)) = self.0.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if let Ok(Some(pid)) = engine.exec_pid(&exec).await {
                for child in tug_sys::procfs::descendants(pid) {
                    // SAFETY: kill of a process the engine says is this exec's, or under it.
                    unsafe { libc::kill(child, libc::SIGKILL) };
                }
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
    }
}

/// Aborts a task when dropped: what feeds a command's stdin ends with the command.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
