//! `tug doctor`: this host and this stack, checked before a deploy. Each check is one function
//! that returns its findings; each finding says what is wrong and what to do. Nothing is changed.
//!
//! Exit codes: 0 when every check passed, 1 when one failed, 3 when some only warned.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tug_stackfile::diag::Severity;
use tug_stackfile::model::{Pull, Registry, ServiceKind, Stack};

use tug_stackfile::diag::Palette;

use crate::StackArgs;

/// Free space below which the state folder's file system fails the check, and below which it
/// warns (logs rotate within their limits, but every instance's files and dumps need room).
const DISK_FAIL: u64 = 256 << 20;
const DISK_WARN: u64 = 1 << 30;
/// The registry's clock may differ from this host's by this much before it is a finding.
const SKEW_WARN: Duration = Duration::from_millis(500);
const SKEW_FAIL: Duration = Duration::from_secs(2);
/// How long an engine or a registry gets to answer.
const ANSWER: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Skipped,
    Warning,
    Failed,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &str, message: impl Into<String>) -> Finding {
        Finding { check: check.into(), status: Status::Ok, message: message.into(), fix: None }
    }

    fn skipped(check: &str, message: impl Into<String>) -> Finding {
        Finding { check: check.into(), status: Status::Skipped, message: message.into(), fix: None }
    }

    fn warning(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check: check.into(), status: Status::Warning, message: message.into(), fix: Some(fix.into()) }
    }

    fn failed(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check: check.into(), status: Status::Failed, message: message.into(), fix: Some(fix.into()) }
    }
}

pub fn command(args: &StackArgs, json: bool) -> Result<ExitCode, String> {
    let loaded = crate::stack::load(args)?;
    let mut findings = vec![stack_file(&loaded.compiled)];
    findings.extend(secrets(&loaded.compiled, args.host.as_deref()));
    if let Some(url) = &args.host {
        // The stack file and its secrets are this machine's (a remote deploy sends what they
        // resolve to); the rest is that host's, which its daemon checks.
        findings.extend(remote(args, url, loaded.compiled.stack.as_ref()));
    } else {
        findings.extend(this_host(args, &loaded)?);
    }
    let worst = findings.iter().map(|f| f.status).max().unwrap_or(Status::Ok);
    if json {
        crate::output::print_json(&serde_json::to_value(&findings).map_err(|e| e.to_string())?)?;
    } else {
        crate::output::write_stdout(&render(&findings, crate::output::stdout_palette()))?;
    }
    Ok(match worst {
        Status::Failed => ExitCode::from(1),
        Status::Warning => ExitCode::from(3),
        Status::Ok | Status::Skipped => ExitCode::SUCCESS,
    })
}

/// `tug --host URL doctor`: whether that daemon answers, with the key and TLS given, for this
/// stack, then the checks of its host it runs there (`GET /v1/doctor`).
fn remote(args: &StackArgs, url: &str, stack: Option<&Stack>) -> Vec<Finding> {
    let project = stack.map(|s| s.name.as_str());
    let client = match crate::run::running_client(args) {
        Ok(client) => client,
        Err(why) => return vec![Finding::failed("host", format!("{url}: {why}"), "check --host and TUG_API_KEY")],
    };
    let answer = client.get::<tug_proto::status::StackStatus>("/v1/status", crate::run::QUICK);
    let host = daemon_answer(url, project, answer.map_err(String::from));
    if host.status == Status::Failed {
        return vec![host];
    }
    let mut findings = vec![host];
    // The engine is checked there only when this stack runs images.
    let images = stack.is_some_and(|s| s.services.values().any(|service| service.container.is_some()));
    let path = if images { "/v1/doctor?images=1" } else { "/v1/doctor" };
    match client.get::<Vec<Finding>>(path, ANSWER * 3 + crate::run::QUICK) {
        Ok(theirs) => {
            findings.extend(theirs.into_iter().map(|mut f| {
                f.message = format!("there: {}", f.message);
                f
            }));
            let rest = "fixed ports, cgroups and images there: the deploy checks them, or `tug doctor` on that host";
            findings.push(Finding::skipped("host checks", rest));
        }
        Err(crate::client::RequestError::Status(404, _)) => findings.push(Finding::warning(
            "host checks",
            "that daemon runs an older tug, which does not check its host",
            "run `tug doctor` there",
        )),
        Err(why) => findings.push(Finding::failed("host checks", why.to_string(), "run `tug doctor` there")),
    }
    findings
}

/// What that daemon's `/v1/status` answer (or why there was none) says of it, for this stack.
fn daemon_answer(url: &str, project: Option<&str>, answer: Result<tug_proto::status::StackStatus, String>) -> Finding {
    match answer {
        Err(why) => Finding::failed(
            "host",
            if why.contains(url) { why } else { format!("{url}: {why}") },
            "check the URL, TUG_API_KEY (that stack's .tug/api.key) and, over TLS, --tls-ca",
        ),
        Ok(status) if project.is_some_and(|p| p != status.project) => Finding::failed(
            "host",
            format!("{url} runs the stack `{}`, and this stack file is `{}`", status.project, project.unwrap_or("")),
            "point --host at this stack's daemon, or use that stack's file",
        ),
        // Routers there keep the last membership they knew, so a stale registry is a warning.
        Ok(tug_proto::status::StackStatus { registry: Some(registry), .. }) if registry.state == "stale" => {
            let why = registry.error.unwrap_or_default();
            Finding::warning(
                "host",
                format!("{url} answers, but its registry {} is stale: {why}", registry.location),
                "check that host's Redis (`registry:`)",
            )
        }
        Ok(status) => {
            let registry =
                status.registry.map(|r| format!("; registry {} ({})", r.location, r.state)).unwrap_or_default();
            let version =
                if status.version.is_empty() { "an older tug".to_string() } else { format!("tug {}", status.version) };
            Finding::ok("host", format!("{url} answers: {version}, {} instance(s){registry}", status.instances.len()))
        }
    }
}

/// The checks of this host, for a stack run here.
fn this_host(args: &StackArgs, loaded: &crate::stack::Loaded) -> Result<Vec<Finding>, String> {
    let mut findings = vec![state_folder(&loaded.state_dir), disk(&loaded.state_dir)];
    if let Some(stack) = loaded.compiled.stack.as_ref() {
        let ours = our_ports(args);
        findings.extend(ports(stack, &ours));
        findings.extend(cgroups(stack));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        findings.extend(runtime.block_on(engine(stack)));
        findings.extend(runtime.block_on(registry(stack)));
    }
    Ok(findings)
}

fn render(findings: &[Finding], palette: Palette) -> String {
    let mut out = String::new();
    for f in findings {
        let (mark, colour) = match f.status {
            Status::Ok => ("✔", palette.note),
            Status::Skipped => ("-", palette.dim),
            Status::Warning => ("!", palette.warning),
            Status::Failed => ("✘", palette.error),
        };
        out.push_str(&format!("{colour}{mark}{} {:<12} {}\n", palette.reset, f.check, f.message));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("  {:<12} fix: {fix}\n", ""));
        }
    }
    out
}

/// The stack file compiles (its secrets are the next check's).
fn stack_file(compiled: &tug_stackfile::Compiled) -> Finding {
    let errors: Vec<_> = compiled
        .diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error && !d.path.starts_with("settings."))
        .collect();
    match errors.first() {
        None => Finding::ok("stack file", "valid"),
        Some(first) => Finding::failed(
            "stack file",
            format!("{} error(s); the first: {}: {}", errors.len(), first.path, first.message),
            "run `tug check` and fix what it shows",
        ),
    }
}

/// Every secret set, and within its rules (length, charset, pattern): what the compiler checked.
/// With `host` (a deploy to that daemon), a secret that would be generated here is a failure: a
/// remote deploy sends the values, and a new one would replace what that host runs with.
fn secrets(compiled: &tug_stackfile::Compiled, host: Option<&str>) -> Vec<Finding> {
    let mut findings: Vec<Finding> = compiled
        .diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error && (d.path.starts_with("settings.") || d.code == "secret-store"))
        .map(|d| {
            // A diagnostic about a secret never quotes its value.
            Finding::failed(
                "secrets",
                format!("{}: {}", if d.path.is_empty() { "store" } else { &d.path }, d.message),
                "set a value that meets the rule: `tug secrets set NAME` (or `tug secrets rotate NAME`)",
            )
        })
        .collect();
    if let (Some(host), Some(stack)) = (host, compiled.stack.as_ref())
        && let Err(why) = crate::secrets::refuse_generating_for_remote(stack, host)
    {
        let fix = "give the values here (environment or an env file), or copy that host's store and key";
        findings.push(Finding::failed("secrets", why, fix));
    }
    if findings.is_empty() {
        let count = compiled.stack.as_ref().map_or(0, |s| s.settings.values().filter(|v| v.is_secret()).count());
        findings.push(Finding::ok("secrets", format!("{count} secret(s) set and within their rules")));
    }
    findings
}

/// The state folder holds logs, state and the secret store: the user's alone.
fn state_folder(state_dir: &Path) -> Finding {
    use std::os::unix::fs::MetadataExt;
    let shown = state_dir.display();
    let Ok(meta) = std::fs::metadata(state_dir) else {
        return Finding::ok("state folder", format!("{shown} does not exist yet: `tug up` makes it 0700"));
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o777;
    if meta.uid() != me {
        return Finding::failed(
            "state folder",
            format!("{shown} belongs to uid {}, not to you (uid {me})", meta.uid()),
            format!("run tug as its owner, or `chown -R {me} {shown}`"),
        );
    }
    if mode & 0o077 != 0 {
        return Finding::failed(
            "state folder",
            format!("{shown} is {mode:04o}: other users can read its logs and state"),
            format!("`chmod 700 {shown}` (`tug up` does it for a .tug folder)"),
        );
    }
    Finding::ok("state folder", format!("{shown} is {mode:04o}, yours"))
}

/// Room for logs, dumps and the state on the state folder's file system.
fn disk(state_dir: &Path) -> Finding {
    let mut at: PathBuf = state_dir.to_path_buf();
    while !at.exists() {
        match at.parent() {
            Some(parent) => at = parent.to_path_buf(),
            None => return Finding::skipped("disk", "no existing folder to measure"),
        }
    }
    disk_at("disk", &at)
}

fn disk_at(check: &str, at: &Path) -> Finding {
    let Some((free, total)) = free_space(at) else {
        return Finding::skipped(check, format!("cannot measure the file system of {}", at.display()));
    };
    let shown = format!("{} free of {} on {}", size(free), size(total), at.display());
    if free < DISK_FAIL {
        Finding::failed(check, shown, "free space there: logs, state, images, volumes and backups need it")
    } else if free < DISK_WARN || free.saturating_mul(20) < total {
        Finding::warning(check, shown, "free space there soon, or lower `logs.max_size`/`max_files`")
    } else {
        Finding::ok(check, shown)
    }
}

fn free_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct; c is a valid NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_bavail as u64 * block, stat.f_blocks as u64 * block))
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{} KiB", b >> 10),
    }
}

/// The ports this stack's own daemon holds now (its routers and fixed-port instances).
fn our_ports(args: &StackArgs) -> Vec<u16> {
    let Ok(client) = crate::run::running_client(args) else { return Vec::new() };
    let Ok(status) = client.get::<tug_proto::status::StackStatus>("/v1/status", Duration::from_secs(5)) else {
        return Vec::new();
    };
    status.services.iter().filter_map(|s| s.port).chain(status.instances.iter().filter_map(|i| i.port)).collect()
}

/// Each fixed port the stack binds is free, or already this stack's.
fn ports(stack: &Stack, ours: &[u16]) -> Vec<Finding> {
    let listen = stack.listen.map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string());
    let mut findings = Vec::new();
    let mut checked = 0;
    for (name, service) in &stack.services {
        if service.kind != ServiceKind::Service || service.replicas == 0 {
            continue;
        }
        for port in [service.port, service.deploy.preview_port].into_iter().flatten() {
            checked += 1;
            if ours.contains(&port) || tug_supervisor::ports::is_free(&listen, port) {
                continue;
            }
            findings.push(Finding::failed(
                "ports",
                tug_supervisor::ports::describe_taken(name, port),
                format!("stop what holds {port}, or give `{name}` another port"),
            ));
        }
    }
    if findings.is_empty() {
        findings.push(if checked == 0 {
            Finding::skipped("ports", "no fixed ports")
        } else {
            Finding::ok("ports", format!("{checked} port(s) free on {listen} (or already this stack's)"))
        });
    }
    findings
}

/// Resource limits need cgroups this user can write.
fn cgroups(stack: &Stack) -> Vec<Finding> {
    let limited: Vec<&String> = stack
        .services
        .iter()
        .filter(|(_, s)| s.container.is_none() && (s.resources.memory.is_some() || s.resources.cpu.is_some()))
        .map(|(n, _)| n)
        .collect();
    if limited.is_empty() {
        return vec![Finding::skipped("cgroups", "no process service sets `resources`")];
    }
    let support = tug_sys::cgroup::detect();
    let mut findings = Vec::new();
    for name in &limited {
        let service = &stack.services[*name];
        let limits = tug_sys::cgroup::Limits {
            memory_bytes: service.resources.memory.map(|m| m.0),
            cpu_cores: service.resources.cpu,
        };
        if let Err(why) = support.can_apply(&limits) {
            findings.push(Finding::failed(
                "cgroups",
                format!("`{name}`'s `resources` cannot be enforced here: {why}"),
                "run tug where cgroups v2 (or v1 memory and cpu) can be written (root, or a delegated subtree)",
            ));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::ok("cgroups", format!("limits can be enforced ({})", support.describe())));
    }
    findings
}

/// The container engine answers, and images that will not be built or pulled are there.
/// Whether the engine at `endpoint` answers, and the room where it keeps images and volumes;
/// with the engine, when it answers, for the checks that ask it more.
async fn engine_answers(endpoint: Result<tug_engine::Endpoint, String>) -> (Vec<Finding>, Option<tug_engine::Engine>) {
    let failed = |message: String, fix: &str| (vec![Finding::failed("engine", message, fix)], None);
    let endpoint = match endpoint {
        Ok(endpoint) => endpoint,
        Err(why) => {
            let fix = "install and start Docker (or Podman's service), or set `engine:` / DOCKER_HOST";
            return failed(format!("no container engine: {why}"), fix);
        }
    };
    let url = endpoint.url();
    let engine = tug_engine::Engine::new(endpoint);
    let version = match tokio::time::timeout(ANSWER, engine.version()).await {
        Ok(Ok(version)) => version,
        Ok(Err(why)) => {
            let fix = "start the engine (`systemctl start docker`), or point `engine:` / DOCKER_HOST at one that runs";
            return failed(format!("{url} does not answer: {why}"), fix);
        }
        Err(_) => return failed(format!("{url} did not answer within 3 s"), "check the engine"),
    };
    let mut findings = vec![Finding::ok("engine", format!("{url} answers ({} {})", version.product, version.version))];
    // Images, containers and volumes take room where the engine keeps them.
    if let Ok(Ok(Some(root))) = tokio::time::timeout(ANSWER, engine.data_root()).await
        && Path::new(&root).is_dir()
    {
        let mut found = disk_at("engine disk", Path::new(&root));
        found.message = format!("{} (the engine's images and volumes)", found.message);
        findings.push(found);
    }
    (findings, Some(engine))
}

/// `GET /v1/doctor[?images=1]`: the checks of the host this daemon runs on, for a `tug --host …
/// doctor` run elsewhere: its state folder, the disk under it, and, for a stack that runs
/// images, the engine they would run on (the one this daemon uses, else this host's default).
pub async fn this_daemons_host(supervisor: &tug_supervisor::Supervisor, images: bool) -> Vec<Finding> {
    let state_dir = supervisor.config().state_dir.clone();
    // statvfs and metadata can block (a hung network file system): not on the runtime's thread.
    let local = tokio::task::spawn_blocking(move || vec![state_folder(&state_dir), disk(&state_dir)]).await;
    let mut findings = local.unwrap_or_default();
    if images {
        let endpoint = crate::artifacts::endpoint_named(supervisor.engine().as_deref());
        findings.extend(engine_answers(endpoint).await.0);
    } else {
        findings.push(Finding::skipped("engine", "the stack runs no image"));
    }
    findings
}

async fn engine(stack: &Stack) -> Vec<Finding> {
    let images: Vec<(&String, &tug_stackfile::model::Container)> =
        stack.services.iter().filter_map(|(n, s)| Some((n, s.container.as_ref()?))).collect();
    if images.is_empty() {
        return vec![Finding::skipped("engine", "no service runs an image")];
    }
    let (mut findings, engine) = engine_answers(crate::artifacts::endpoint(stack)).await;
    let Some(engine) = engine else { return findings };
    for (name, container) in images {
        if container.build.is_some() {
            continue;
        }
        match engine.inspect_image(&container.image).await {
            Ok(Some(_)) => {}
            Ok(None) if container.pull == Pull::Never => findings.push(Finding::failed(
                "images",
                format!("`{name}`'s image {} is not on the engine, and `pull: never`", container.image),
                format!("build or load it (`docker load`, `docker build -t {}`)", container.image),
            )),
            Ok(None) => findings.push(Finding::warning(
                "images",
                format!("`{name}`'s image {} is not on the engine: `tug up` will pull it", container.image),
                format!("pull it now (`docker pull {}`) if this host may not reach its registry", container.image),
            )),
            Err(why) => findings.push(Finding::failed(
                "images",
                format!("cannot look up `{name}`'s image {}: {why}", container.image),
                "check the engine",
            )),
        }
    }
    findings
}

/// A Redis registry answers, over TLS where the environment is production, with a clock close
/// to this host's.
async fn registry(stack: &Stack) -> Vec<Finding> {
    let Registry::Redis(url) = &stack.registry else {
        return vec![Finding::skipped("registry", "embedded (one host)")];
    };
    let parsed: tug_registry::RedisUrl = match url.expose().parse() {
        Ok(parsed) => parsed,
        Err(why) => return vec![Finding::failed("registry", format!("{why}"), "fix `registry:`")],
    };
    let address = parsed.address();
    let mut findings = Vec::new();
    if stack.environment == "production" && !parsed.is_tls() {
        findings.push(Finding::failed(
            "registry",
            format!("production's registry {address} is plain redis://: membership and passwords cross the network unencrypted"),
            "use rediss:// (Redis with TLS) in production",
        ));
    }
    let config = tug_registry::Config { timeout: ANSWER, ..tug_registry::Config::default() };
    let client = tug_registry::RedisRegistry::new(parsed, &stack.name, config);
    if let Err(why) = client.ping().await {
        findings.push(Finding::failed(
            "registry",
            format!("{address} does not answer: {why}"),
            "start Redis, or fix `registry:` (host, port, password, TLS)",
        ));
        return findings;
    }
    let asked = SystemTime::now();
    match client.server_time().await {
        Ok(theirs) => {
            let ours = asked + asked.elapsed().unwrap_or_default() / 2;
            let skew = theirs.duration_since(ours).or_else(|e| Ok::<_, ()>(e.duration())).unwrap_or_default();
            let shown = format!("{address} answers; its clock is {} ms from this host's", skew.as_millis());
            findings.push(if skew >= SKEW_FAIL {
                Finding::failed("clock", shown, "sync both clocks (chrony, systemd-timesyncd)")
            } else if skew >= SKEW_WARN {
                Finding::warning("clock", shown, "sync both clocks (chrony, systemd-timesyncd)")
            } else {
                Finding::ok("clock", shown)
            });
        }
        Err(why) => findings.push(Finding::warning("clock", format!("{address}: TIME failed: {why}"), "check Redis")),
    }
    if !findings.iter().any(|f| f.check == "registry") {
        findings.insert(0, Finding::ok("registry", format!("{address} answers")));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(project: &str, registry: &str) -> tug_proto::status::StackStatus {
        serde_json::from_value(serde_json::json!({
            "project": project, "daemon_pid": 1, "generation": 1, "shutting_down": false,
            "services": [], "instances": [], "notices": [], "advertise": "127.0.0.1", "version": "0.1.0",
            "registry": { "location": "redis://r:6379/0", "state": registry, "error": "timed out", "entries": 0, "hosts": 0 },
        }))
        .unwrap()
    }

    #[test]
    fn a_daemon_answer_is_judged_for_this_stack() {
        let url = "https://h:7070";
        let ok = daemon_answer(url, Some("shop"), Ok(status("shop", "live")));
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert!(ok.message.contains("tug 0.1.0") && ok.message.contains("(live)"), "{ok:?}");
        let other = daemon_answer(url, Some("shop"), Ok(status("blog", "live")));
        assert!(other.status == Status::Failed && other.message.contains("`blog`"), "{other:?}");
        let stale = daemon_answer(url, Some("shop"), Ok(status("shop", "stale")));
        assert!(stale.status == Status::Warning && stale.message.contains("timed out"), "{stale:?}");
        let refused = daemon_answer(url, None, Err("the daemon refused the request".into()));
        assert!(refused.status == Status::Failed && refused.message.starts_with(url), "{refused:?}");
    }
}
