//! `tug up | down | ps | start | stop | restart | scale`: the CLI side of the
//! daemon. The stack is compiled and checked here; the daemon gets the resolved
//! spec and does the rest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tug_proto::auth::ApiKey;
use tug_proto::rollout::Phase;
use tug_proto::spec::{self as proto, CommandSpec, ScaleRequest, StackSpec, TargetsRequest, UpRequest, Value};
use tug_proto::status::{InstanceStatus, StackStatus, State, UpResponse};
use tug_stackfile::model::{self, Check, Command, Text};
use tug_stackfile::{ServiceKind, Stack};

use crate::artifacts::Artifacts;
use crate::client::{Client, RequestError};
use crate::output;
use crate::stack::{self, Loaded};
use crate::{StackArgs, daemon, logs};

pub(crate) const QUICK: Duration = Duration::from_secs(10);
/// How long `up`/`deploy` waits for the daemon when `deploy.before` jobs may run first.
const DEPLOY_HOOKS: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn value(text: &Text) -> Value {
    Value { value: text.expose().to_string(), sensitive: text.sensitive, template: text.template }
}

fn command(command: &Command) -> CommandSpec {
    match command {
        Command::Argv(args) => CommandSpec::Argv(args.iter().map(value).collect()),
        Command::Shell(text) => CommandSpec::Shell(value(text)),
    }
}

fn check_spec(check: &Check) -> proto::Check {
    match check {
        Check::Http(path) => proto::Check::Http { path: value(path) },
        Check::Tcp => proto::Check::Tcp,
        Check::Exec(c) => proto::Check::Exec { command: command(c) },
        Check::Log(regex) => proto::Check::Log { regex: regex.clone() },
    }
}

fn probe(probe: &model::Probe) -> proto::Probe {
    let check = check_spec(&probe.check);
    let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
    proto::Probe {
        check,
        interval_ms: ms(probe.interval),
        timeout_ms: ms(probe.timeout),
        retries: probe.retries,
        start_period_ms: ms(probe.start_period),
        start_interval_ms: ms(probe.start_interval),
    }
}

fn deploy_spec(d: &model::Deploy) -> proto::DeploySpec {
    let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
    let amount = |a: model::Amount| match a {
        model::Amount::Count(n) => proto::Amount::Count(n),
        model::Amount::Percent(p) => proto::Amount::Percent(p.0),
    };
    proto::DeploySpec {
        strategy: d.strategy,
        max_surge: amount(d.max_surge),
        max_unavailable: amount(d.max_unavailable),
        min_ready_ms: ms(d.min_ready),
        steps: if d.steps.is_empty() { vec![10, 50, 100] } else { d.steps.clone() },
        step_duration_ms: ms(d.step_duration),
        max_error_rate: d.analysis.max_error_rate.map(|p| p.0 / 100.0),
        max_p99_ms: d.analysis.max_p99.map(ms),
        min_requests: d.analysis.min_requests,
        preview_port: d.preview_port,
        auto_promote: d.auto_promote,
        scale_down_delay_ms: ms(d.scale_down_delay),
        progress_deadline_ms: ms(d.progress_deadline),
        before: d.before.clone(),
        smoke: d.smoke.as_ref().map(|s| proto::Smoke { check: check_spec(&s.check), timeout_ms: ms(s.timeout) }),
    }
}

/// A service's container, as the daemon runs it (its image resolved to an id).
fn container_spec(
    stack: &Stack,
    container: &model::Container,
    image: Option<&crate::artifacts::Image>,
) -> proto::ContainerSpec {
    let mounts = container
        .volumes
        .iter()
        .map(|m| match m {
            model::VolumeMount::Named { name, target, read_only } => proto::MountSpec {
                kind: proto::MountKind::Volume,
                // An external volume is the engine's own name; the stack's are the project's.
                source: if stack.volumes.get(name).is_some_and(|v| v.external) {
                    name.clone()
                } else {
                    crate::artifacts::volume_name(&stack.name, name)
                },
                target: target.clone(),
                read_only: *read_only,
            },
            model::VolumeMount::Bind { source, target, read_only } => proto::MountSpec {
                kind: proto::MountKind::Bind,
                source: source.display().to_string(),
                target: target.clone(),
                read_only: *read_only,
            },
        })
        .collect();
    proto::ContainerSpec {
        image: container.image.clone(),
        image_id: image.map(|i| i.id.clone()).unwrap_or_default(),
        image_user: image.map(|i| i.user.clone()).unwrap_or_default(),
        entrypoint: container.entrypoint.as_ref().map(|words| words.iter().map(value).collect()),
        working_dir: container.working_dir.clone(),
        mounts,
        tmpfs: container.tmpfs.clone(),
        read_only: container.read_only,
        cap_add: container.cap_add.clone(),
        cap_drop: container.cap_drop.clone(),
        security_opt: container.security_opt.clone(),
        init: container.init,
        container_port: container.container_port,
    }
}

/// The resolved stack as the daemon needs it, with what its revisions are made of.
pub fn to_spec(stack: &Stack, artifacts: &Artifacts) -> StackSpec {
    let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
    let services = stack
        .services
        .iter()
        .map(|(name, s)| {
            let mut working_dir =
                if s.working_dir.is_absolute() { s.working_dir.clone() } else { stack.root.join(&s.working_dir) };
            let source = match (&s.source, artifacts.sources.get(name)) {
                (Some(path), Some(snapshot)) => {
                    // The revision runs from its own copy of the source.
                    working_dir = crate::source::working_dir_in_copy(&working_dir, path, &snapshot.copy);
                    Some(proto::SourceSpec {
                        path: path.clone(),
                        digest: snapshot.digest.clone(),
                        copy: snapshot.copy.clone(),
                    })
                }
                _ => None,
            };
            let mut spec = proto::ServiceSpec {
                name: name.clone(),
                kind: match s.kind {
                    ServiceKind::Service => proto::Kind::Service,
                    ServiceKind::Job => proto::Kind::Job,
                },
                command: s.command.as_ref().map(command),
                working_dir,
                replicas: s.replicas,
                port: s.port,
                proxy: s.proxy,
                route: proto::RouteSpec {
                    protocol: s.protocol,
                    balance: s.balance,
                    tenant_header: s.tenant_header.clone(),
                    connect_timeout_ms: ms(s.router.connect_timeout),
                    request_timeout_ms: ms(s.router.request_timeout),
                    max_connection_age_ms: s.router.max_connection_age.map(ms),
                },
                environment: s.environment.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
                depends_on: s.depends_on.iter().map(|(d, c)| (d.clone(), *c)).collect(),
                healthcheck: s.healthcheck.as_ref().map(probe),
                liveness: s.liveness.as_ref().map(probe),
                restart: s.restart,
                stop_signal: s.stop_signal.number,
                stop_signal_name: s.stop_signal.name.to_string(),
                stop_grace_ms: ms(s.stop_grace_period),
                user: s.user.clone(),
                memory_bytes: s.resources.memory.map(|m| m.0),
                cpu: s.resources.cpu,
                log_max_size: s.logs.max_size.0,
                log_max_files: s.logs.max_files,
                container: s.container.as_ref().map(|c| container_spec(stack, c, artifacts.images.get(name))),
                source,
                secret_files: s.secrets.clone(),
                deploy: deploy_spec(&s.deploy),
                autoscale: s.autoscale.as_ref().map(|a| proto::AutoscaleSpec {
                    min: a.min,
                    max: a.max,
                    cpu_percent: a.cpu.map(|p| p.0),
                    memory_percent: a.memory.map(|p| p.0),
                    requests_per_second: a.requests_per_second,
                    scale_down_stabilization_ms: ms(a.scale_down_stabilization),
                }),
                backup: s.backup.as_ref().map(|b| proto::BackupSpec {
                    command: command(&b.command),
                    restore: b.restore.as_ref().map(command),
                    schedule: b.schedule.as_ref().map(|s| s.as_str().to_string()),
                    keep: b.keep,
                }),
                revision: String::new(),
            };
            spec.revision = spec.compute_revision();
            spec
        })
        .collect();
    // Every sensitive setting's name, shared or a service's own: the daemon keeps them out of
    // what instances inherit from its environment (see `StackSpec::withheld`).
    let sensitive = |(name, setting): (&String, &model::Setting)| {
        (setting.is_secret() || setting.value.as_ref().is_some_and(|v| v.sensitive)).then(|| name.clone())
    };
    let mut withheld: Vec<String> = stack.settings.iter().filter_map(sensitive).collect();
    for service in stack.services.values() {
        withheld.extend(service.settings.iter().filter_map(sensitive));
    }
    withheld.sort();
    withheld.dedup();
    StackSpec {
        project: stack.name.clone(),
        environment: stack.environment.clone(),
        root: stack.root.clone(),
        services,
        withheld,
        engine: artifacts.engine.clone(),
        listen: stack.listen.map(|ip| ip.to_string()),
        api: stack.api.as_ref().map(|api| proto::ApiSpec {
            listen: api.listen.to_string(),
            tls: api.tls.as_ref().map(|tls| proto::TlsFiles {
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                client_ca: tls.client_ca.clone(),
            }),
            insecure: false,
        }),
        notify: stack
            .notify
            .iter()
            .map(|n| proto::NotifySpec {
                url: value(&n.url),
                events: n.events.iter().map(|e| e.as_str().to_string()).collect(),
            })
            .collect(),
        registry: match &stack.registry {
            model::Registry::Embedded => None,
            model::Registry::Redis(url) => {
                let mut url = value(url);
                url.value = absolute_tls_files(&url.value, &stack.root);
                Some(url)
            }
        },
    }
}

/// The registry URL with its `ca=`, `cert=` and `key=` files made absolute: written relative to
/// the stack file, they must still be found by the daemon, which runs in `/`.
fn absolute_tls_files(url: &str, root: &Path) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_string() };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name @ ("ca" | "cert" | "key"), path)) if !path.is_empty() && !path.starts_with('/') => {
                format!("{name}={}/{path}", percent_encode_path(&root.to_string_lossy()))
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// Percent-encodes what a URL query value cannot carry as is; `/` stays.
fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The state folder and a client for the stack's daemon (which may not run).
pub(crate) fn connect(args: &StackArgs, create_key: bool) -> Result<(PathBuf, Option<Client>), String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let state_dir = stack::state_dir(args, &cwd);
    let env_key = std::env::var(tug_proto::auth::KEY_ENV).ok();
    if let Some(url) = &args.host {
        let remote =
            crate::client::Remote::parse(url, args.tls_ca.clone(), args.tls_cert.clone(), args.tls_key.clone())?;
        // The remote daemon's key: TUG_API_KEY, or this folder's key when it is the same project's.
        let key = ApiKey::load(&state_dir, env_key.as_deref(), false)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("--host {url}: set {} to the remote stack's API key", tug_proto::auth::KEY_ENV))?;
        return Ok((state_dir, Some(Client::remote(remote, key))));
    }
    let key = ApiKey::load(&state_dir, env_key.as_deref(), create_key).map_err(|e| e.to_string())?;
    if key.is_none() && std::os::unix::net::UnixStream::connect(state_dir.join(tug_proto::SOCKET_FILE)).is_ok() {
        return Err(format!(
            "a daemon runs this stack, but there is no API key to talk to it: set {} to the key it was started \
             with, or restore {}",
            tug_proto::auth::KEY_ENV,
            state_dir.join(tug_proto::auth::KEY_FILE).display()
        ));
    }
    Ok((state_dir.clone(), key.map(|k| Client::new(&state_dir, k))))
}

fn status(client: &Client) -> Result<StackStatus, RequestError> {
    client.get("/v1/status", QUICK)
}

/// Makes sure the daemon runs, starting it when it does not (then true).
fn ensure_daemon(state_dir: &Path, client: &Client, advertise: Option<&str>) -> Result<bool, String> {
    match status(client) {
        Ok(running) => {
            if let Some(wanted) = advertise
                && !running.advertise.is_empty()
                && running.advertise != wanted
            {
                return Err(format!(
                    "this stack's daemon already runs advertising {}; run `tug down` first to advertise {wanted}",
                    running.advertise
                ));
            }
            return Ok(false);
        }
        Err(RequestError::NoDaemon) => {}
        Err(e) => return Err(e.to_string()),
    }
    let state_dir = daemon::private_state_dir(state_dir)?;
    let keeper = daemon::spawn(&state_dir, advertise)?;
    let deadline = Instant::now() + QUICK;
    loop {
        match status(client) {
            Ok(_) => return Ok(true),
            Err(RequestError::NoDaemon) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
                let gone = tug_sys::procfs::stat(keeper as i32).map(|s| s.is_zombie()).unwrap_or(true);
                if gone {
                    // A concurrent `up` may have won the lock: its daemon is about to listen.
                    let grace = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < grace {
                        match status(client) {
                            Ok(_) => return Ok(true),
                            Err(RequestError::NoDaemon) => std::thread::sleep(Duration::from_millis(20)),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    return Err(daemon_failed(&state_dir));
                }
            }
            Err(RequestError::NoDaemon) => return Err(daemon_failed(&state_dir)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn daemon_failed(state_dir: &Path) -> String {
    let log = std::fs::read_to_string(state_dir.join(daemon::LOG_FILE)).unwrap_or_default();
    let tail: Vec<String> =
        log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().map(logs::daemon_line).collect();
    format!("the daemon did not start; the end of {}:\n{}", state_dir.join(daemon::LOG_FILE).display(), tail.join("\n"))
}

static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic.
        unsafe { libc::signal(signal, on_interrupt as *const () as libc::sighandler_t) };
    }
}

fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::Relaxed) > 0
}

pub struct UpOptions {
    pub detach: bool,
    /// `--advertise`: the address the daemon binds and registers.
    pub advertise: Option<String>,
    pub services: Vec<String>,
    pub timeout: Option<Duration>,
    /// `--listen`: the routers' address, over the stack's `listen:`.
    pub listen: Option<String>,
    /// `--insecure`: the network endpoint may serve a non-loopback address without TLS.
    pub insecure: bool,
    /// Neither progress nor addresses (`tug run` starting what its service needs).
    pub quiet: bool,
    /// `tug deploy` (always detached from the logs): progress is shown.
    pub deploy: bool,
    /// `tug deploy --detach`: return once the daemon accepted the change.
    pub no_wait: bool,
}

pub fn up(args: &StackArgs, options: UpOptions) -> Result<ExitCode, String> {
    let palette = output::stderr_palette();
    let Loaded { compiled, state_dir, store } = stack::load(args)?;
    let stack_ok = crate::secrets::require_valid(&compiled)?;
    if let Some(host) = &args.host {
        crate::secrets::refuse_generating_for_remote(stack_ok, host)?;
    }
    let generated = crate::secrets::generate_missing(stack_ok, &state_dir, store)?;
    let compiled = if generated.is_empty() {
        compiled
    } else {
        eprint!("{generated}");
        stack::load(args)?.compiled
    };
    let stack = crate::secrets::require_valid(&compiled)?;
    stack::print_problems(&compiled, palette, true, tug_stackfile::Severity::Warning);
    check_targets(stack, &options.services)?;
    let advertise = options.advertise.as_deref().map(daemon::parse_advertise).transpose()?;
    let wanted = closure(stack, &options.services);
    if args.host.is_some() && !options.detach {
        return Err("with --host, the logs are on the remote host: run `tug up -d` or `tug deploy`, and \
                    `tug logs -f` to follow them"
            .into());
    }
    // A remote daemon gets the sources it lacks, and resolves images and volumes on its engine.
    let remote = if args.host.is_some() { connect(args, false)?.1 } else { None };
    let (artifacts, on_host) = crate::artifacts::resolve_here_or_there(stack, &wanted, &state_dir, remote.as_ref())?;
    let mut spec = to_spec(stack, &artifacts);
    if let Some(listen) = &options.listen {
        listen.parse::<std::net::IpAddr>().map_err(|_| format!("--listen: `{listen}` is not an IP address"))?;
        spec.listen = Some(listen.clone());
    }
    if let Some(api) = spec.api.as_mut() {
        api.insecure = options.insecure;
        let address: std::net::SocketAddr =
            api.listen.parse().map_err(|_| format!("api.listen: `{}` is not an address", api.listen))?;
        crate::endpoint::check_plain(&address, api.tls.is_some(), api.insecure)?;
    }
    let (state_dir, client) = connect(args, true)?;
    let client = client.ok_or("no API key")?;
    let started_daemon = ensure_daemon(&state_dir, &client, advertise.as_deref())?;
    catch_interrupts();
    let follower = if options.detach { None } else { Some(logs::follow_from_now(&state_dir)?) };
    // `deploy.before` jobs run before the daemon answers: a migration takes what it takes, and
    // so do a remote daemon's pulls, builds and unpacks.
    let remote = on_host.is_some();
    let timeout =
        if remote || spec.services.iter().any(|s| !s.deploy.before.is_empty()) { DEPLOY_HOOKS } else { QUICK };
    let request = UpRequest { spec, targets: options.services.clone(), on_host };
    // A remote daemon reports its builds' steps as they run, as a local build shows them.
    let sent = if remote {
        let mut show = |line: &[u8]| {
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(line).and_then(|_| err.flush());
        };
        client.send_with_progress("PUT", "/v1/stack?progress=1", &request, &mut show)
    } else {
        client.send("PUT", "/v1/stack", &request, timeout)
    };
    let answer: UpResponse = match sent {
        Ok(answer) => answer,
        Err(error) => {
            // A daemon this command started for nothing is not left behind.
            if started_daemon && status(&client).is_ok_and(|s| s.instances.is_empty()) {
                let _ = down_with(&client, true, false);
            }
            return Err(error.into());
        }
    };
    for notice in &answer.notices {
        eprintln!("{}", output::warning_line(notice));
    }
    // A remote daemon's revisions hold its image ids and copies: what to wait for.
    let mut request = request;
    for service in &mut request.spec.services {
        if let Some(revision) = answer.revisions.get(&service.name) {
            service.revision = revision.clone();
        }
    }
    if options.deploy
        && let Some(plan) = &answer.plan
    {
        eprint!("{}", crate::plan::announce(plan, palette));
    }
    if options.no_wait {
        for name in &answer.rollouts {
            eprintln!("{name}: rolling out (`tug rollout status {name}` follows it)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let progress = !options.quiet;
    let outcome = wait_up(&client, &answer.services, &answer.rollouts, &request.spec, options.timeout, progress)?;
    if matches!(outcome, Waited::Up) && !options.deploy && !options.quiet {
        print_addresses(&client, &answer.services, &request.spec);
    }
    // A deploy that did not fully land says what did change and what did not; a failed `up -d`
    // that the stack still runs.
    let after_failure = || {
        if let (true, Some(plan), Ok(now)) = (options.deploy, &answer.plan, status(&client)) {
            eprint!("{}", crate::plan::outcome(plan, &now));
        }
        if !options.deploy {
            eprintln!("{}", still_running_hint());
        }
    };
    if options.detach {
        return match outcome {
            Waited::Up => Ok(ExitCode::SUCCESS),
            Waited::Failed(report) => {
                eprintln!("{report}");
                print_failure_logs(&state_dir, &report_instances(&client, &answer.services), &request.spec);
                after_failure();
                Ok(ExitCode::from(1))
            }
            Waited::Interrupted => Ok(ExitCode::from(130)),
            Waited::TimedOut(report) => {
                eprintln!("{report}");
                after_failure();
                Ok(ExitCode::from(1))
            }
        };
    }
    if let Waited::Failed(report) | Waited::TimedOut(report) = &outcome {
        eprintln!("{report}");
    }
    // The foreground `up` lives as long as the stack: when the daemon dies (killed, crashed)
    // it exits non-zero, so what runs it at boot (systemd's `Restart=always`) starts it again,
    // and the new daemon brings the stack back.
    let daemon_gone = std::cell::Cell::new(false);
    let last_check = std::cell::Cell::new(Instant::now());
    let stop = || {
        if interrupted() {
            return true;
        }
        if last_check.get().elapsed() >= Duration::from_secs(1) {
            last_check.set(Instant::now());
            if matches!(status(&client), Err(RequestError::NoDaemon)) {
                daemon_gone.set(true);
                return true;
            }
        }
        false
    };
    if !interrupted()
        && let Some(follower) = follower
    {
        logs::follow_until(follower, stop)?;
    }
    if daemon_gone.get() {
        return Err(format!(
            "the stack's daemon is gone (its log: {}); its instances were stopped with it. Run `tug up` again \
             to bring the stack back",
            state_dir.join("daemon.log").display()
        ));
    }
    eprintln!("stopping the stack (Ctrl-C again to leave it stopping in the background)");
    INTERRUPTS.store(0, Ordering::Relaxed);
    down_with(&client, false, false)
}

/// Where each started service answers: `web  http://127.0.0.1:8080  (3 instances)`.
fn print_addresses(client: &Client, services: &[String], spec: &StackSpec) {
    let Ok(status) = status(client) else { return };
    let mut rows = Vec::new();
    for service in spec.services.iter().filter(|s| services.contains(&s.name)) {
        let Some(port) = service.port else { continue };
        // A router on every interface is reached at the advertised address.
        let host = match spec.listen.as_deref() {
            Some(listen) if !listen.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) => listen,
            _ => status.advertise.as_str(),
        };
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        // Detected per connection: an HTTP probe says the service speaks HTTP.
        let http_probe =
            service.healthcheck.as_ref().is_some_and(|p| matches!(p.check, tug_proto::spec::Check::Http { .. }));
        let address = match service.route.protocol {
            tug_proto::spec::Protocol::Http => format!("http://{host}:{port}"),
            tug_proto::spec::Protocol::Auto if http_probe => format!("http://{host}:{port}"),
            tug_proto::spec::Protocol::Tcp | tug_proto::spec::Protocol::Auto => format!("{host}:{port}"),
        };
        let everywhere = spec
            .listen
            .as_deref()
            .and_then(|l| l.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_unspecified());
        let up = status.instances.iter().filter(|i| i.service == service.name && counts_as_up(i)).count();
        let mut note = format!("{up} instance{}", if up == 1 { "" } else { "s" });
        if everywhere {
            note.push_str(", on every interface");
        }
        rows.push(vec![service.name.clone(), address, format!("({note})")]);
    }
    if !rows.is_empty() {
        print!("{}", render_table(&rows));
    }
}

/// After `up -d` failed: the daemon keeps the stack (what started runs, what failed is
/// retried by its restart policy), which the user may not expect.
fn still_running_hint() -> &'static str {
    "the stack is still running (what started keeps running; failed instances follow their `restart` policy): \
     see `tug ps` and `tug logs`, fix the stack file and run `tug deploy`, or stop everything with `tug down`"
}

/// Every target names a service or job of the stack.
pub(crate) fn check_targets(stack: &Stack, targets: &[String]) -> Result<(), String> {
    for name in targets {
        if !stack.services.contains_key(name) {
            let known: Vec<&str> = stack.services.keys().map(String::as_str).collect();
            return Err(format!("no service or job named `{name}` (the stack has: {})", known.join(", ")));
        }
    }
    Ok(())
}

/// The services `targets` name (all when none) and what they depend on, transitively.
fn closure(stack: &Stack, targets: &[String]) -> Vec<String> {
    if targets.is_empty() {
        return stack.services.keys().cloned().collect();
    }
    let mut wanted: Vec<String> = Vec::new();
    let mut pending: Vec<String> = targets.to_vec();
    while let Some(name) = pending.pop() {
        if wanted.contains(&name) {
            continue;
        }
        if let Some(service) = stack.services.get(&name) {
            pending.extend(service.depends_on.keys().cloned());
        }
        wanted.push(name);
    }
    wanted
}

enum Waited {
    Up,
    Failed(String),
    TimedOut(String),
    Interrupted,
}

/// How long an instance without a healthcheck must keep running before `up -d`
/// counts it: a program that dies at once (bad flag, missing library) fails `up`
/// instead of slipping through.
const SETTLE: Duration = Duration::from_millis(500);

/// Whether `up -d` may count this instance as started: a job once it completed,
/// a service once healthy, or running (no healthcheck) for [`SETTLE`].
fn counts_as_up(row: &InstanceStatus) -> bool {
    match (row.kind, row.state) {
        (proto::Kind::Job, state) => state == State::Completed,
        (_, State::Healthy | State::Completed) => true,
        (_, State::Running) => row
            .ready_at
            .as_deref()
            .and_then(tug_logs::parse_time)
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= SETTLE),
        _ => false,
    }
}

fn is_failure(row: &InstanceStatus) -> bool {
    matches!(row.state, State::Failed | State::Crashloop | State::Unhealthy)
}

fn failed_instances(status: &StackStatus, services: &[String]) -> Vec<InstanceStatus> {
    status.instances.iter().filter(|i| services.contains(&i.service) && is_failure(i)).cloned().collect()
}

fn report_instances(client: &Client, services: &[String]) -> Vec<InstanceStatus> {
    status(client).map(|s| failed_instances(&s, services)).unwrap_or_default()
}

/// Waits until every instance of `services` (of the current revision) is up, or
/// one fails, and every rollout of `rollouts` has ended (or waits for a person). With
/// `progress`, prints each service's state as it changes.
fn wait_up(
    client: &Client,
    services: &[String],
    rollouts: &[String],
    spec: &StackSpec,
    timeout: Option<Duration>,
    progress: bool,
) -> Result<Waited, String> {
    let started = Instant::now();
    let mut generation = 0;
    let mut display = Progress::new();
    loop {
        if interrupted() {
            return Ok(Waited::Interrupted);
        }
        let path = format!("/v1/status?after={generation}&wait_ms=500");
        let status: StackStatus = client.get(&path, Duration::from_secs(1))?;
        generation = status.generation;
        let mut all_up = true;
        let mut lines = Vec::new();
        let mut rollout_failures = Vec::new();
        for name in rollouts {
            let rollout = status.services.iter().find(|s| &s.name == name).and_then(|s| s.rollout.as_ref());
            let Some(rollout) = rollout else {
                all_up = false;
                continue;
            };
            let (mark, done) = match rollout.phase {
                Phase::Complete | Phase::Promoted | Phase::Paused => (Mark::Up, true),
                Phase::RolledBack | Phase::Failed => (Mark::Failed, true),
                Phase::Progressing => (Mark::Waiting, false),
            };
            all_up &= done && mark == Mark::Up;
            if mark == Mark::Failed {
                rollout_failures.push(format!("{name}: {}", crate::rollout::describe_end(rollout)));
            }
            lines.push((name.clone(), mark, crate::rollout::summary(rollout)));
        }
        if !rollout_failures.is_empty() {
            if progress {
                display.show(&lines);
            }
            return Ok(Waited::Failed(rollout_failures.join("\n")));
        }
        for name in services {
            if rollouts.contains(name) {
                continue;
            }
            let Some(service) = spec.services.iter().find(|s| &s.name == name) else { continue };
            let rows: Vec<&InstanceStatus> =
                status.instances.iter().filter(|i| &i.service == name && i.revision == service.revision).collect();
            let up = rows.iter().filter(|i| counts_as_up(i)).count();
            let complete = up >= service.replicas as usize && rows.len() >= service.replicas as usize;
            all_up &= complete;
            let summary = summarize(&rows, service.replicas);
            let mark = if complete {
                Mark::Up
            } else if rows.iter().any(|r| is_failure(r)) {
                Mark::Failed
            } else {
                Mark::Waiting
            };
            lines.push((name.clone(), mark, summary));
        }
        if progress {
            display.show(&lines);
        }
        let steady: Vec<String> = services.iter().filter(|s| !rollouts.contains(s)).cloned().collect();
        let failed = failed_instances(&status, &steady);
        if !failed.is_empty() {
            return Ok(Waited::Failed(describe_failures(&failed)));
        }
        if all_up {
            return Ok(Waited::Up);
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            // What it was waiting for: rollouts still under way (their step, what the analysis
            // still needs), then instances not up yet.
            let mut waiting: Vec<String> = lines
                .iter()
                .filter(|(name, mark, _)| *mark == Mark::Waiting && rollouts.contains(name))
                .map(|(name, _, summary)| format!("{name}: {summary}"))
                .collect();
            waiting.extend(
                status
                    .instances
                    .iter()
                    .filter(|i| services.contains(&i.service) && !i.state.is_up())
                    .map(|i| format!("{} is {}{}", i.instance, i.state.as_str(), detail(i))),
            );
            return Ok(Waited::TimedOut(format!(
                "not up after {}: {}",
                tug_stackfile::units::format_duration(limit),
                waiting.join("; ")
            )));
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    Waiting,
    Up,
    Failed,
}

/// The per-service progress of `up`: redrawn in place on a terminal, one line per
/// change otherwise (logs, CI).
struct Progress {
    terminal: bool,
    palette: tug_stackfile::diag::Palette,
    drawn: usize,
    shown: Vec<(String, String)>,
    started: Instant,
}

impl Progress {
    fn new() -> Progress {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Progress { terminal, palette: output::stderr_palette(), drawn: 0, shown: Vec::new(), started: Instant::now() }
    }

    fn show(&mut self, lines: &[(String, Mark, String)]) {
        let p = self.palette;
        let width = lines.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
        let render = |name: &str, mark: Mark, summary: &str| {
            let (colour, symbol) = match mark {
                Mark::Up => (p.note, "✔"),
                Mark::Failed => (p.error, "✘"),
                Mark::Waiting => (p.dim, "…"),
            };
            format!("{colour}{symbol}{} {}{name:<width$}{} {summary}", p.reset, p.bold, p.reset)
        };
        if self.terminal {
            let mut text = String::new();
            if self.drawn > 0 {
                text.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for (name, mark, summary) in lines {
                text.push_str(&format!("\x1b[2K{}\n", render(name, *mark, summary)));
            }
            let elapsed = self.started.elapsed().as_secs_f64();
            text.push_str(&format!("\x1b[2K{}{elapsed:.1}s{}\n", p.dim, p.reset));
            self.drawn = lines.len() + 1;
            eprint!("{text}");
            return;
        }
        for (name, mark, summary) in lines {
            if !self.shown.iter().any(|(n, s)| n == name && s == summary) {
                eprintln!("{}", render(name, *mark, summary));
                self.shown.retain(|(n, _)| n != name);
                self.shown.push((name.clone(), summary.clone()));
            }
        }
    }
}

fn summarize(rows: &[&InstanceStatus], replicas: u32) -> String {
    let mut counts: Vec<(State, usize)> = Vec::new();
    for row in rows {
        match counts.iter_mut().find(|(s, _)| *s == row.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((row.state, 1)),
        }
    }
    let states: Vec<String> = counts
        .iter()
        .map(|(s, n)| if replicas > 1 { format!("{n}/{replicas} {}", s.as_str()) } else { s.as_str().to_string() })
        .collect();
    let message = rows.iter().find_map(|r| r.message.clone()).map(|m| format!(" ({m})")).unwrap_or_default();
    if states.is_empty() { "pending".into() } else { format!("{}{message}", states.join(", ")) }
}

fn detail(row: &InstanceStatus) -> String {
    let mut parts = Vec::new();
    if let Some(message) = &row.message {
        parts.push(message.clone());
    }
    if let Some(health) = row.health.as_ref().filter(|h| !h.ok) {
        parts.push(format!("last probe: {}", health.message));
    }
    if parts.is_empty() { String::new() } else { format!(": {}", parts.join("; ")) }
}

fn describe_failures(failed: &[InstanceStatus]) -> String {
    failed.iter().map(|i| format!("{} {}{}", i.instance, i.state.as_str(), detail(i))).collect::<Vec<_>>().join("\n")
}

fn print_failure_logs(state_dir: &Path, failed: &[InstanceStatus], spec: &StackSpec) {
    for row in failed.iter().take(5) {
        let lines = logs::last_lines(state_dir, &row.instance, 10);
        if lines.is_empty() {
            eprintln!("-- {}: no output", row.instance);
        } else {
            eprintln!("-- last lines of {}:", row.instance);
            for line in &lines {
                eprintln!("   {line}");
            }
        }
        let service = spec.services.iter().find(|s| s.name == row.service);
        if let Some(why) = service.and_then(|s| port_taken_by_router(s, row, &lines)) {
            eprintln!("{}", output::warning_line(&why));
        }
    }
}

/// An instance that died binding its service's own port: tug's router holds that port (it
/// balances the replicas), and the instance must listen on its private `$PORT`.
fn port_taken_by_router(
    service: &tug_proto::spec::ServiceSpec,
    row: &InstanceStatus,
    lines: &[String],
) -> Option<String> {
    let port = service.port.filter(|_| service.proxy)?;
    let in_use = lines.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("address already in use") || l.contains("address in use") || l.contains("eaddrinuse")
    });
    if !in_use {
        return None;
    }
    let own = row.port.map(|p| format!(" ({p} for {})", row.instance)).unwrap_or_default();
    Some(format!(
        "{} could not bind its address: port {port} is held by tug's router, which balances `{}`'s replicas; \
         each instance must listen on its own $PORT{own}: pass it (`--port $PORT`), or, for one instance that \
         must bind {port} itself, set `proxy: false`",
        row.instance, service.name
    ))
}

pub fn down(args: &StackArgs, volumes: bool) -> Result<ExitCode, String> {
    let (state_dir, client) = connect(args, false)?;
    // A remote daemon removes its volumes itself, from its own engine, once it has stopped.
    let remote_volumes = volumes && args.host.is_some();
    let code = match client {
        Some(client) => {
            catch_interrupts();
            down_with(&client, false, remote_volumes)?
        }
        None => {
            output::write_stdout("nothing is running for this stack\n")?;
            ExitCode::SUCCESS
        }
    };
    if volumes && !remote_volumes {
        let loaded = stack::load(args)?;
        let Some(stack) = loaded.compiled.stack.as_ref() else {
            stack::print_diagnostics(&loaded.compiled, output::stderr_palette(), true);
            return Err("the stack file cannot be read, so its volumes are not known; fix it and run `tug down --volumes` again".into());
        };
        for name in crate::artifacts::remove_volumes(stack, &state_dir)? {
            output::write_stdout(&format!("removed volume {name}\n"))?;
        }
    }
    Ok(code)
}

fn down_with(client: &Client, quiet: bool, volumes: bool) -> Result<ExitCode, String> {
    let before = match status(client) {
        Ok(status) => status,
        Err(RequestError::NoDaemon) => return output::write_stdout("nothing is running for this stack\n"),
        Err(e) => return Err(e.to_string()),
    };
    let answer: serde_json::Value =
        client.send("POST", "/v1/down", &serde_json::json!({ "volumes": volumes }), QUICK)?;
    let count = before.instances.iter().filter(|i| i.pid.is_some()).count();
    if client.is_remote() {
        return down_remote(client, &answer, count, quiet);
    }
    let pid = answer.get("daemon_pid").and_then(|p| p.as_u64()).unwrap_or(before.daemon_pid as u64) as i32;
    // The daemon exits once everything is stopped; its keeper right after.
    let keeper = tug_sys::procfs::stat(pid).ok().map(|s| s.ppid);
    while tug_sys::procfs::stat(pid).is_ok_and(|s| !s.is_zombie()) {
        if INTERRUPTS.load(Ordering::Relaxed) > 1 {
            eprintln!("left the stack stopping in the background");
            return Ok(ExitCode::from(130));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(keeper) = keeper.filter(|k| *k > 1) {
        let deadline = Instant::now() + QUICK;
        while tug_sys::procfs::stat(keeper).is_ok_and(|s| !s.is_zombie() && s.comm.starts_with("tug"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if quiet {
        return Ok(ExitCode::SUCCESS);
    }
    output::write_stdout(&format!("stopped {count} instance{}\n", if count == 1 { "" } else { "s" }))
}

/// A remote daemon's `down`: its pid is not this machine's, so the end is when it no longer
/// answers. The volumes it was asked to remove (`down --volumes`) go once everything stopped.
fn down_remote(client: &Client, answer: &serde_json::Value, count: usize, quiet: bool) -> Result<ExitCode, String> {
    while status(client).is_ok() {
        if INTERRUPTS.load(Ordering::Relaxed) > 1 {
            eprintln!("left the stack stopping in the background");
            return Ok(ExitCode::from(130));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = format!("stopped {count} instance{}\n", if count == 1 { "" } else { "s" });
    for name in answer.get("volumes").and_then(|v| v.as_array()).into_iter().flatten().filter_map(|v| v.as_str()) {
        text.push_str(&format!("removed volume {name} (on that host; its log says if one could not be)\n"));
    }
    output::write_stdout(&text)
}

pub fn ps(args: &StackArgs, json: bool) -> Result<ExitCode, String> {
    let (_, client) = connect(args, false)?;
    let status = match client.map(|c| c.get::<StackStatus>("/v1/status?usage=1", QUICK)) {
        Some(Ok(status)) => Some(status),
        None | Some(Err(RequestError::NoDaemon)) => None,
        Some(Err(e)) => return Err(e.to_string()),
    };
    if json {
        let rows = status.map(|s| s.instances).unwrap_or_default();
        return output::print_json(&serde_json::to_value(&rows).map_err(|e| e.to_string())?);
    }
    let Some(status) = status else {
        return output::write_stdout("nothing is running for this stack\n");
    };
    let mut table = vec![
        ["INSTANCE", "KIND", "STATE", "PID", "PORT", "RESTARTS", "STARTED", "CPU", "MEMORY", "HEALTH"]
            .map(String::from)
            .to_vec(),
    ];
    for i in &status.instances {
        let mut health = match (&i.health, &i.message) {
            (_, Some(message)) if !i.state.is_up() => message.clone(),
            (Some(h), _) => h.message.clone(),
            (None, _) => String::new(),
        };
        // Why it restarted, once it runs again.
        if let Some(last) = i.last_exit.as_ref().filter(|_| i.restarts > 0 && i.state.is_up()) {
            health = format!("{health} (last exit: {last})").trim_start().to_string();
        }
        table.push(vec![
            i.instance.clone(),
            i.kind.as_str().to_string(),
            i.state.as_str().to_string(),
            i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            ports_shown(&status, i),
            i.restarts.to_string(),
            i.started_at.as_deref().map(|t| t.get(11..19).unwrap_or(t).to_string()).unwrap_or_else(|| "-".into()),
            i.cpu_seconds.map(|c| format!("{c:.1}s")).unwrap_or_else(|| "-".into()),
            i.memory_bytes.map(format_bytes).unwrap_or_else(|| "-".into()),
            health,
        ]);
    }
    let mut out = render_table(&table);
    if let Some(r) = &status.registry {
        let problem = r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        out.push_str(&format!(
            "registry: {} ({}{problem}; {} entries from {} hosts); this host advertises {}\n",
            r.location, r.state, r.entries, r.hosts, status.advertise
        ));
    }
    // What is changing the stack by itself: rollouts under way, the autoscaler's last word.
    for service in &status.services {
        if let Some(r) = service.rollout.as_ref().filter(|r| !r.phase.is_final()) {
            out.push_str(&format!("rollout: {}: {}\n", service.name, crate::rollout::summary(r)));
        }
        if let Some(a) = &service.autoscale {
            let last = match (&a.last_decision, &a.decided_at) {
                (Some(decision), Some(at)) => format!("; last: {decision} ({at})"),
                _ => String::new(),
            };
            out.push_str(&format!(
                "autoscale: {}: {} replicas ({}..{}){last}\n",
                service.name, a.desired, a.min, a.max
            ));
        }
    }
    for notice in &status.notices {
        out.push_str(&format!("note: {notice}\n"));
    }
    output::write_stdout(&out)
}

/// The service's stable port beside the instance's own: `8080→31004` behind the router,
/// `8080` for an instance that binds it itself (`proxy: false`), `31004` without a service port.
fn ports_shown(status: &StackStatus, row: &InstanceStatus) -> String {
    let stable = status.services.iter().find(|s| s.name == row.service).and_then(|s| s.port);
    match (stable, row.port) {
        (Some(stable), Some(own)) if stable != own => format!("{stable}→{own}"),
        (_, Some(own)) => own.to_string(),
        (Some(stable), None) => stable.to_string(),
        (None, None) => "-".into(),
    }
}

pub(crate) fn format_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1}M", bytes as f64 / (1u64 << 20) as f64)
    }
}

pub(crate) fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `tug dashboard`: a one-time login link from the daemon.
pub fn dashboard(args: &StackArgs, read_only: bool) -> Result<ExitCode, String> {
    let client = running_client(args)?;
    let answer: tug_proto::DashboardResponse =
        client.send("POST", "/v1/dashboard", &tug_proto::DashboardRequest { read_only }, QUICK)?;
    println!("{}", reachable_link(&answer.url, args.host.as_deref()));
    eprintln!("(one use, valid 5 minutes{})", if read_only { "; read-only" } else { "" });
    Ok(ExitCode::SUCCESS)
}

/// The login link as this client can open it: through `--host` when given (the daemon knows
/// only the address it binds), and a loopback address for one bound on every interface.
fn reachable_link(link: &str, host: Option<&str>) -> String {
    let Some((base, rest)) = link.find("/ui/").map(|i| link.split_at(i)) else { return link.to_string() };
    if let Some(host) = host {
        return format!("{}{rest}", host.trim_end_matches('/'));
    }
    let base = base.replacen("://0.0.0.0:", "://127.0.0.1:", 1).replacen("://[::]:", "://[::1]:", 1);
    format!("{base}{rest}")
}

/// `tug token metrics|webhook`: derived from the API key, so it needs no daemon.
pub fn token(args: &StackArgs, purpose: &str) -> Result<ExitCode, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let state_dir = stack::state_dir(args, &cwd);
    let env_key = std::env::var(tug_proto::auth::KEY_ENV).ok();
    let key = ApiKey::load(&state_dir, env_key.as_deref(), false).map_err(|e| e.to_string())?.ok_or_else(|| {
        format!(
            "no API key: run `tug up` once (it creates {}), or set {}",
            state_dir.join(tug_proto::auth::KEY_FILE).display(),
            tug_proto::auth::KEY_ENV
        )
    })?;
    println!("{}", tug_proto::auth::derived_token(&key, purpose));
    Ok(ExitCode::SUCCESS)
}

/// A client for the stack's daemon, started when none runs (then true).
pub(crate) fn daemon_client(args: &StackArgs) -> Result<(Client, bool), String> {
    let (state_dir, client) = connect(args, true)?;
    let client = client.ok_or("no API key")?;
    let started = ensure_daemon(&state_dir, &client, None)?;
    Ok((client, started))
}

/// Stops a daemon that runs nothing (one `tug run` started for itself).
pub(crate) fn down_if_idle(client: &Client) {
    if status(client).is_ok_and(|s| s.instances.is_empty()) {
        let _ = down_with(client, true, false);
    }
}

pub(crate) fn running_client(args: &StackArgs) -> Result<Client, String> {
    let (_, client) = connect(args, false)?;
    client.ok_or_else(|| "nothing is running for this stack: start it with `tug up`".to_string())
}

pub fn control(args: &StackArgs, action: &str, targets: Vec<String>) -> Result<ExitCode, String> {
    let client = running_client(args)?;
    let request = TargetsRequest { targets };
    let timeout = Duration::from_secs(600);
    let answer: serde_json::Value =
        client.send("POST", &format!("/v1/{action}"), &request, timeout).map_err(|e| match e {
            RequestError::NoDaemon => "nothing is running for this stack: start it with `tug up`".to_string(),
            e => e.to_string(),
        })?;
    let names: Vec<&str> = answer
        .get("instances")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let verb = match action {
        "start" => "starting",
        "stop" => "stopped",
        _ => "restarting",
    };
    if names.is_empty() {
        return output::write_stdout(&format!("{verb} {}\n", request.targets.join(", ")));
    }
    output::write_stdout(&format!("{verb} {}\n", names.join(", ")))
}

pub fn scale(
    args: &StackArgs,
    assignments: Vec<String>,
    detach: bool,
    timeout: Option<Duration>,
) -> Result<ExitCode, String> {
    let mut requests = Vec::new();
    for assignment in &assignments {
        let (service, count) =
            assignment.split_once('=').ok_or_else(|| format!("`{assignment}`: write SERVICE=N, for example web=3"))?;
        let replicas: u32 =
            count.parse().map_err(|_| format!("`{assignment}`: `{count}` is not a number of replicas (0 or more)"))?;
        requests.push(ScaleRequest { service: service.to_string(), replicas });
    }
    let client = running_client(args)?;
    for request in &requests {
        let _: serde_json::Value =
            client.send("POST", "/v1/scale", request, Duration::from_secs(600)).map_err(|e| match e {
                RequestError::NoDaemon => "nothing is running for this stack: start it with `tug up`".to_string(),
                e => e.to_string(),
            })?;
        println!("scaled {} to {}", request.service, request.replicas);
    }
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    // Done when each service has exactly its replicas, all up (removed ones already are gone).
    let started = Instant::now();
    loop {
        if interrupted() {
            return Ok(ExitCode::from(130));
        }
        let status = status(&client)?;
        let mut waiting = Vec::new();
        for request in &requests {
            let revision = status.services.iter().find(|s| s.name == request.service).map(|s| s.revision.clone());
            let rows: Vec<&InstanceStatus> = status.instances.iter().filter(|i| i.service == request.service).collect();
            let failed: Vec<InstanceStatus> = rows.iter().filter(|r| is_failure(r)).map(|r| (*r).clone()).collect();
            if !failed.is_empty() {
                eprintln!("{}", describe_failures(&failed));
                return Ok(ExitCode::from(1));
            }
            let up = rows.iter().filter(|r| counts_as_up(r) && Some(&r.revision) == revision.as_ref()).count();
            if up != request.replicas as usize || rows.len() != request.replicas as usize {
                waiting.push(format!("{}: {up} of {} up, {} instances", request.service, request.replicas, rows.len()));
            }
        }
        if waiting.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            return Err(format!(
                "not done after {}: {}",
                tug_stackfile::units::format_duration(limit),
                waiting.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_tls_files_become_absolute() {
        let root = Path::new("/srv/my stack");
        assert_eq!(
            absolute_tls_files("rediss://h:6380/0?ca=certs/ca.pem&cert=/etc/c.pem&key=k.pem", root),
            "rediss://h:6380/0?ca=/srv/my%20stack/certs/ca.pem&cert=/etc/c.pem&key=/srv/my%20stack/k.pem"
        );
        assert_eq!(absolute_tls_files("redis://h:6379/0", root), "redis://h:6379/0");
    }
}
