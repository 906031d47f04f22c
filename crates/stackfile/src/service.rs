//! Services and jobs: decoding one entry of `services:` into a [`Service`].

use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;

use crate::SecretSource;
use crate::container::{self, CONTAINER_FIELDS};
use crate::diag::{Diagnostic, Span};
use crate::dotenv;
use crate::model::*;
use crate::read::{Ctx, Fields, Scope, address_variable};
use crate::settings::{self, Definition, is_env_name};
use crate::units::{Signal, Size};
use crate::yaml::{Kind, Node};

pub const SERVICE_FIELDS: &[&str] = &[
    "kind",
    "description",
    "command",
    "port",
    "protocol",
    "balance",
    "tenant_header",
    "proxy",
    "router",
    "working_dir",
    "replicas",
    "secrets",
    "settings",
    "environment",
    "env_file",
    "depends_on",
    "healthcheck",
    "liveness",
    "restart",
    "stop_signal",
    "stop_grace_period",
    "profiles",
    "deploy",
    "autoscale",
    "user",
    "resources",
    "logs",
    "image",
    "build",
    "pull",
    "entrypoint",
    "volumes",
    "tmpfs",
    "read_only",
    "cap_add",
    "cap_drop",
    "security_opt",
    "init",
    "container_port",
    "source",
    "slo",
    "backup",
];
pub const PROBE_FIELDS: &[&str] =
    &["http", "tcp", "exec", "log", "interval", "timeout", "retries", "start_period", "start_interval"];
pub const PROBE_CHECKS: &[&str] = &["http", "tcp", "exec", "log"];
pub const DEPLOY_FIELDS: &[&str] = &[
    "strategy",
    "max_surge",
    "max_unavailable",
    "min_ready",
    "steps",
    "step_duration",
    "analysis",
    "preview_port",
    "auto_promote",
    "scale_down_delay",
    "progress_deadline",
    "before",
    "smoke",
];
/// `deploy.smoke`: one check, as a probe's (a log line says nothing of a request), and its timeout.
pub const SMOKE_FIELDS: &[&str] = &["http", "tcp", "exec", "timeout"];
pub const SMOKE_CHECKS: &[&str] = &["http", "tcp", "exec"];
/// How long a smoke check may take when `timeout` is not given.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const BACKUP_FIELDS: &[&str] = &["command", "restore", "schedule", "keep"];
/// Scheduled archives kept per service when `keep` is not given.
pub const BACKUP_KEEP: u32 = 7;
pub const ANALYSIS_FIELDS: &[&str] = &["max_error_rate", "max_p99", "min_requests"];
pub const AUTOSCALE_FIELDS: &[&str] =
    &["min", "max", "cpu", "memory", "requests_per_second", "scale_down_stabilization"];
pub const RESOURCES_FIELDS: &[&str] = &["memory", "cpu"];
pub const SLO_FIELDS: &[&str] = &["availability", "latency"];
pub const LOGS_FIELDS: &[&str] = &["max_size", "max_files"];
pub const ROUTER_FIELDS: &[&str] = &["connect_timeout", "request_timeout", "max_connection_age"];
pub const DEPENDS_ON_FIELDS: &[&str] = &["condition", "required"];

pub const CONDITIONS: &[(&str, Condition)] = &[
    ("started", Condition::Started),
    ("healthy", Condition::Healthy),
    ("completed_successfully", Condition::CompletedSuccessfully),
    // Docker Compose's spellings.
    ("service_started", Condition::Started),
    ("service_healthy", Condition::Healthy),
    ("service_completed_successfully", Condition::CompletedSuccessfully),
];
pub const KINDS: &[(&str, ServiceKind)] = &[("service", ServiceKind::Service), ("job", ServiceKind::Job)];
pub const PROTOCOLS: &[(&str, Protocol)] =
    &[("http", Protocol::Http), ("tcp", Protocol::Tcp), ("auto", Protocol::Auto)];
pub const BALANCES: &[(&str, Balance)] = &[
    ("round_robin", Balance::RoundRobin),
    ("least_request", Balance::LeastRequest),
    ("tenant_hash", Balance::TenantHash),
];
pub const RESTARTS: &[(&str, Restart)] = &[
    ("no", Restart::No),
    ("on-failure", Restart::OnFailure),
    ("always", Restart::Always),
    // Docker Compose's spellings: a supervisor has no "stopped by hand" state that survives it.
    ("unless-stopped", Restart::Always),
    ("false", Restart::No),
];
pub const STRATEGIES: &[(&str, Strategy)] = &[
    ("rolling", Strategy::Rolling),
    ("blue_green", Strategy::BlueGreen),
    ("canary", Strategy::Canary),
    ("recreate", Strategy::Recreate),
];

/// A service's dependency as written, with where it is written (for later checks).
pub struct Dependency {
    pub name: String,
    pub condition: Condition,
    pub required: bool,
    pub span: Span,
}

/// What validation needs about a service beyond the model: positions.
pub struct Spans {
    pub port: Option<Span>,
    pub preview_port: Option<Span>,
    /// Each job `deploy.before` names, with where.
    pub before: Vec<(String, Span)>,
    pub dependencies: Vec<Dependency>,
    pub secrets: Vec<(String, Span)>,
    pub command: Option<Span>,
    pub working_dir: Option<Span>,
    pub tenant_header: Option<Span>,
    pub profiles: Option<Span>,
    pub entrypoint: Option<Span>,
    pub source: Option<Span>,
    /// The named volumes the service mounts (declared or not).
    pub volumes_used: Vec<String>,
    /// The service has `image` or `build` (even when they have errors).
    pub runs_image: bool,
    /// The file does not set `deploy.strategy`: why the default chosen is `recreate` (a
    /// stateful single instance), or `None` for `rolling`. Unset when the file sets it.
    pub default_strategy: Option<Option<String>>,
}

pub struct Input<'a> {
    pub name: &'a str,
    pub key_span: Span,
    pub node: &'a Node,
    pub root: &'a Path,
    pub environment: &'a str,
    pub environments: &'a [String],
    pub shared: &'a IndexMap<String, Setting>,
    pub secrets: &'a dyn SecretSource,
    /// The project's name: an image built without a name is `<project>-<service>`.
    pub project: &'a str,
    /// The stack's named volumes.
    pub volumes: &'a IndexMap<String, Volume>,
}

pub fn decode(ctx: &mut Ctx, input: Input) -> Option<(Service, Spans)> {
    let path = format!("services.{}", input.name);
    let f = ctx.fields(input.node, &path, SERVICE_FIELDS)?;
    if matches!(input.node.kind, Kind::Null) {
        ctx.error(
            "missing-field",
            input.key_span,
            &path,
            format!("service `{}` is empty: it needs at least a `command` or an `image`", input.name),
        );
        return None;
    }
    let env_scope = Scope::ENV_ONLY;
    let mut spans = Spans {
        port: None,
        preview_port: None,
        before: Vec::new(),
        dependencies: Vec::new(),
        secrets: Vec::new(),
        command: None,
        working_dir: None,
        tenant_header: None,
        profiles: None,
        entrypoint: None,
        source: None,
        volumes_used: Vec::new(),
        runs_image: false,
        default_strategy: None,
    };
    // Which secrets the service may use: everything after this is limited to them.
    if let Some(n) = f.get("secrets") {
        spans.secrets = ctx.string_list(n, &f.path("secrets"), &env_scope);
    }
    let secrets: Vec<String> = spans.secrets.iter().map(|(s, _)| s.clone()).collect();
    let shared_scope = Scope { shared: Some(input.shared), listed: Some(&secrets), ..Scope::ENV_ONLY };

    // The service's own settings next: the rest of it may refer to them.
    let own_defs: IndexMap<String, Definition> = match f.get("settings") {
        Some(n) => settings::definitions(ctx, n, &f.path("settings"), input.environment, input.environments),
        None => IndexMap::new(),
    };
    // Redefining a shared secret would hand it to the service without listing it.
    for (name, def) in &own_defs {
        if input.shared.get(name).is_some_and(|shared| shared.is_secret()) {
            ctx.diags.push(
                Diagnostic::error(
                    "redefined-secret",
                    Some(def.span),
                    &def.path,
                    format!("`{name}` is a shared secret: a service's own settings cannot redefine it"),
                )
                .with_hint("list it under `secrets:` to use it, or give this setting another name"),
            );
        }
    }
    let own = settings::resolve(ctx, &own_defs, &shared_scope, input.secrets);
    let scope = Scope { own: Some(&own), ..shared_scope };
    // Dependencies' addresses are instance variables too (the daemon knows the host).
    let addresses: Vec<String> = match f.get("depends_on").map(|n| &n.kind) {
        Some(Kind::Map(entries)) => entries.iter().filter_map(|(k, _)| scalar_text(k)).map(address_variable).collect(),
        Some(Kind::Seq(items)) => items.iter().filter_map(scalar_text).map(address_variable).collect(),
        _ => Vec::new(),
    };
    let instance_scope = Scope { defer_instance: true, addresses: &addresses, ..scope };

    let kind =
        f.get("kind").and_then(|n| ctx.choice(n, &f.path("kind"), &env_scope, KINDS)).unwrap_or(ServiceKind::Service);
    let job = kind == ServiceKind::Job;
    // A service runs an image or a process; an image's command is optional (its CMD runs).
    let runs_image = f.get("image").is_some() || f.get("build").is_some();
    spans.runs_image = runs_image;

    let command = match f.get("command") {
        Some(n) => {
            spans.command = Some(n.span);
            let command_path = f.path("command");
            if runs_image {
                container::argv(ctx, n, &command_path, &instance_scope, "command", false).map(Command::Argv)
            } else {
                command(ctx, n, &command_path, &instance_scope)
            }
        }
        None if runs_image || f.misspelled.iter().any(|m| m == "command" || m == "image") => None,
        None => {
            ctx.diags.push(
                Diagnostic::error(
                    "missing-field",
                    Some(input.key_span),
                    &path,
                    format!("`{}` has no `command`", input.name),
                )
                .with_hint(
                    "add `command: [program, arg]` (run directly) or `command: \"a shell line\"` (run by sh -c), or run an image: `image: name:tag`",
                ),
            );
            None
        }
    };
    let port = f.get("port").and_then(|n| {
        spans.port = Some(n.span);
        ctx.port(n, &f.path("port"), &scope)
    });
    let protocol =
        f.get("protocol").and_then(|n| ctx.choice(n, &f.path("protocol"), &scope, PROTOCOLS)).unwrap_or(Protocol::Auto);
    let balance = f
        .get("balance")
        .and_then(|n| ctx.choice(n, &f.path("balance"), &scope, BALANCES))
        .unwrap_or(Balance::RoundRobin);
    let tenant_header = f.get("tenant_header").and_then(|n| {
        spans.tenant_header = Some(n.span);
        let header = ctx.string(n, &f.path("tenant_header"), &scope)?;
        if header.is_empty() || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
            ctx.error(
                "invalid-value",
                n.span,
                &f.path("tenant_header"),
                format!("`{header}` is not a valid HTTP header name"),
            );
            return None;
        }
        Some(header.to_ascii_lowercase())
    });
    let proxy = f.get("proxy").and_then(|n| ctx.bool(n, &f.path("proxy"), &scope)).unwrap_or(port.is_some());
    let mut working_dir_written = None;
    let working_dir = match f.get("working_dir") {
        Some(n) => {
            spans.working_dir = Some(n.span);
            let dir = ctx.string(n, &f.path("working_dir"), &scope);
            if runs_image && let Some(dir) = dir.as_ref().filter(|d| !d.starts_with('/')) {
                ctx.diags.push(
                    Diagnostic::error(
                        "invalid-value",
                        Some(n.span),
                        f.path("working_dir"),
                        format!(
                            "an image's `working_dir` is a folder inside the container: `{dir}` is not an absolute path"
                        ),
                    )
                    .with_hint("write it absolute, such as `/app`"),
                );
            }
            working_dir_written.clone_from(&dir);
            dir.map(|d| normalize(&input.root.join(d))).unwrap_or_else(|| input.root.to_path_buf())
        }
        None => input.root.to_path_buf(),
    };
    let replicas =
        f.get("replicas").and_then(|n| ctx.uint(n, &f.path("replicas"), &scope, 0, 10_000)).unwrap_or(1) as u32;

    let mut env_file = Vec::new();
    let mut environment: IndexMap<String, Text> = IndexMap::new();
    // Delivery, later winning: shared settings (sensitive ones only where listed), own
    // settings, env_file, environment.
    let delivered = |setting: &Setting| match (&setting.value, &setting.source) {
        (Some(v), _) => Some(v.clone()),
        // Generated before the first start; known to be there, not what it will be.
        (None, Source::ToBeGenerated) => Some(Text::new(String::new(), true, true, false)),
        (None, _) => None,
    };
    for (name, setting) in input.shared {
        if (!crate::read::is_sensitive(setting) || secrets.contains(name))
            && let Some(v) = delivered(setting)
        {
            environment.insert(name.clone(), v);
        }
    }
    for (name, setting) in &own {
        if let Some(v) = delivered(setting) {
            environment.insert(name.clone(), v);
        }
    }
    if let Some(n) = f.get("env_file") {
        for (file, span) in ctx.string_list(n, &f.path("env_file"), &scope) {
            let file_path = normalize(&input.root.join(&file));
            match std::fs::read_to_string(&file_path) {
                Ok(text) => {
                    let (entries, errors) = dotenv::parse(&text);
                    for e in errors {
                        ctx.diags.push(
                            Diagnostic::error(
                                "env-file",
                                None,
                                f.path("env_file"),
                                format!("line {}, column {}: {}", e.line, e.col, e.message),
                            )
                            .with_file(&file_path),
                        );
                    }
                    // Shown like any other value, unless it looks like a secret: a sensitive name,
                    // a URL with a password, or the name of a secret setting.
                    for e in entries {
                        let secret_setting =
                            input.shared.get(&e.key).or_else(|| own.get(&e.key)).is_some_and(|s| s.is_secret());
                        let sensitive = secret_setting || is_sensitive_name(&e.key) || has_password(&e.value);
                        environment.insert(e.key, Text::new(e.value, sensitive, false, false));
                    }
                }
                Err(e) => ctx.error(
                    "env-file",
                    span,
                    &f.path("env_file"),
                    format!("cannot read env file `{}`: {e}", file_path.display()),
                ),
            }
            env_file.push(file_path);
        }
    }
    if let Some(n) = f.get("environment") {
        for (name, value) in environment_entries(ctx, n, &f.path("environment"), &instance_scope) {
            environment.insert(name, value);
        }
    }

    if let Some(n) = f.get("depends_on") {
        dependencies(ctx, n, &f.path("depends_on"), &scope, &mut spans);
    }
    let healthcheck = f
        .get("healthcheck")
        .and_then(|n| probe(ctx, n, &f.path("healthcheck"), &instance_scope, ProbeDefaults::READINESS));
    let liveness =
        f.get("liveness").and_then(|n| probe(ctx, n, &f.path("liveness"), &instance_scope, ProbeDefaults::LIVENESS));
    let restart = match f.get("restart") {
        Some(n) => {
            let restart = ctx.choice(n, &f.path("restart"), &scope, RESTARTS);
            if job && restart == Some(Restart::Always) {
                ctx.diags.push(
                    Diagnostic::error(
                        "invalid-value",
                        Some(n.span),
                        f.path("restart"),
                        "a job with `restart: always` would never complete",
                    )
                    .with_hint("use `on-failure` to retry a failed job, or `no`"),
                );
            }
            restart.unwrap_or(Restart::No)
        }
        None if job => Restart::No,
        None => Restart::OnFailure,
    };
    let stop_signal =
        f.get("stop_signal").and_then(|n| ctx.signal(n, &f.path("stop_signal"), &scope)).unwrap_or(Signal::TERM);
    let stop_grace_period = f
        .get("stop_grace_period")
        .and_then(|n| ctx.duration(n, &f.path("stop_grace_period"), &scope))
        .unwrap_or(Duration::from_secs(10));
    let profiles = match f.get("profiles") {
        Some(n) => {
            spans.profiles = Some(n.span);
            let list = ctx.string_list(n, &f.path("profiles"), &scope);
            for (profile, span) in &list {
                if !is_profile_name(profile) {
                    ctx.error(
                        "invalid-name",
                        *span,
                        &f.path("profiles"),
                        format!("`{profile}` is not a valid profile name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
                    );
                }
            }
            list.into_iter().map(|(s, _)| s).collect()
        }
        None => Vec::new(),
    };
    let deploy = deploy(ctx, f.get("deploy"), &f, &scope, &instance_scope, &mut spans);
    let autoscale = f.get("autoscale").and_then(|n| {
        if job {
            ctx.error("invalid-value", n.span, &f.path("autoscale"), "a job cannot be autoscaled");
            return None;
        }
        autoscale(ctx, n, &f.path("autoscale"), &scope)
    });
    let user = f.get("user").and_then(|n| ctx.string(n, &f.path("user"), &scope));
    let resources = f.get("resources").map(|n| resources(ctx, n, &f.path("resources"), &scope)).unwrap_or_default();
    let logs = logs(ctx, f.get("logs"), &f, &scope);
    let slo = f.get("slo").and_then(|n| slo(ctx, n, &f.path("slo"), &scope));
    let backup = f.get("backup").and_then(|n| backup(ctx, n, &f.path("backup"), &instance_scope, job));
    let router = router(ctx, f.get("router"), &f, &scope);
    if let Some(n) = f.get("description") {
        ctx.string(n, &f.path("description"), &scope);
    }
    let env = ctx.env;
    let container = if runs_image {
        let container_input = container::Input {
            service: input.name,
            project: input.project,
            root: input.root,
            volumes: input.volumes,
            port,
            home: env.process.get("HOME").map(String::as_str),
            working_dir: working_dir_written.as_deref().filter(|d| d.starts_with('/')),
        };
        container::decode(ctx, &f, &container_input, &scope, &instance_scope, &mut spans)
    } else {
        for (key, span, value) in &f.entries {
            if CONTAINER_FIELDS.contains(key) && !value.is_null() {
                ctx.diags.push(
                    Diagnostic::error(
                        "container-only",
                        Some(*span),
                        f.path(key),
                        format!("`{key}` applies only to a service that runs an image"),
                    )
                    .with_hint(format!("add `image:` (or `build:`) to run one, or remove `{key}`")),
                );
            }
        }
        None
    };
    let source = f.get("source").and_then(|n| {
        spans.source = Some(n.span);
        source_folder(
            ctx,
            n,
            &f,
            &scope,
            input.root,
            runs_image,
            &working_dir,
            working_dir_written.as_deref(),
            spans.working_dir,
        )
    });
    // A secret on a command line: every local user reads a process's arguments (`ps`),
    // and the engine shows a container's to whoever may inspect it.
    let argument_fields = [
        ("command", f.get("command"), command.as_ref().is_some_and(command_is_sensitive)),
        (
            "entrypoint",
            f.get("entrypoint"),
            container.as_ref().and_then(|c| c.entrypoint.as_ref()).is_some_and(|e| e.iter().any(|w| w.sensitive)),
        ),
        ("healthcheck.exec", f.get("healthcheck").and_then(|n| n.get("exec")), probe_is_sensitive(&healthcheck)),
        ("liveness.exec", f.get("liveness").and_then(|n| n.get("exec")), probe_is_sensitive(&liveness)),
    ];
    for (field, node, sensitive) in argument_fields {
        if let (Some(node), true) = (node, sensitive) {
            secret_in_arguments(ctx, node, &f.path(field), field, &instance_scope);
        }
    }

    // Behind the router, each instance must listen on its own $PORT: a program that binds the
    // service's port itself crashes on "address already in use" (the router holds it).
    if let Some(port) = port
        && proxy
        && kind == ServiceKind::Service
        && container.as_ref().is_none_or(|c| c.container_port.is_none())
        && !["command", "entrypoint", "environment"].iter().filter_map(|k| f.get(k)).any(mentions_port)
        && (command.is_some() || container.is_some())
    {
        ctx.diags.push(
            Diagnostic::warning(
                "port-unused",
                Some(spans.port.unwrap_or(input.key_span)),
                f.path("port"),
                format!(
                    "`{}` is served on port {port} by tug's router, which gives each instance a private `$PORT`, \
                     but neither its command nor its environment mentions `$PORT`",
                    input.name
                ),
            )
            .with_hint(format!(
                "make it listen on `$PORT` (`--port $PORT`; a program that reads PORT by itself: \
                 `environment: {{ PORT: \"${{PORT}}\" }}`), give an image `container_port`, or set `proxy: false` \
                 for one instance that binds {port} itself"
            )),
        );
    }

    let service = Service {
        kind,
        command,
        container,
        source,
        port,
        protocol,
        balance,
        tenant_header,
        proxy,
        router,
        working_dir,
        replicas,
        secrets,
        settings: own,
        environment,
        depends_on: spans.dependencies.iter().map(|d| (d.name.clone(), d.condition)).collect(),
        healthcheck,
        liveness,
        restart,
        stop_signal,
        stop_grace_period,
        profiles,
        deploy,
        autoscale,
        user,
        env_file,
        resources,
        logs,
        slo,
        backup,
        span: input.key_span,
    };
    let mut service = service;
    let silent = f.get("deploy").and_then(|d| d.get("strategy")).is_none();
    if silent && service.kind == ServiceKind::Service {
        let stateful = stateful_single_instance(&service);
        if stateful.is_some() {
            service.deploy.strategy = Strategy::Recreate;
        }
        spans.default_strategy = Some(stateful);
    }
    Some((service, spans))
}

/// Whether a command, entrypoint or environment refers to `PORT` (or sets it).
fn mentions_port(node: &Node) -> bool {
    match &node.kind {
        Kind::Scalar { text, .. } => crate::interp::references(text).iter().any(|r| r == "PORT"),
        Kind::Seq(items) => items.iter().any(mentions_port),
        Kind::Map(entries) => entries.iter().any(|(k, v)| k.key_text() == Some("PORT") || mentions_port(v)),
        Kind::Null => false,
    }
}

/// Whether a variable's name says it holds a secret: one of its `_`-separated words is
/// PASSWORD, SECRET, TOKEN, KEY, … (`DB_PASSWORD`, `API_KEY`, `GITHUB_TOKEN`; not `KEYBOARD`).
pub fn is_sensitive_name(name: &str) -> bool {
    const WORDS: &[&str] = &[
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "SECRET",
        "SECRETS",
        "TOKEN",
        "KEY",
        "APIKEY",
        "PRIVATE",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
        "SALT",
        "SIGNATURE",
        "COOKIE",
        "SESSION",
    ];
    name.to_ascii_uppercase().split(['_', '-', '.']).any(|word| WORDS.contains(&word))
}

/// `scheme://user:password@host`: a URL that carries a password.
pub fn has_password(value: &str) -> bool {
    let Some((_, rest)) = value.split_once("://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
}

/// Why a service must never run twice at once, when it runs one instance: it binds its fixed
/// port itself, speaks raw TCP (a database, a cache), or keeps data in a named volume or
/// under the state folder. Such a service's default strategy is `recreate`.
pub fn stateful_single_instance(service: &Service) -> Option<String> {
    if service.replicas != 1 || service.autoscale.is_some() {
        return None;
    }
    if service.port.is_some() && !service.proxy {
        return Some("it binds its fixed port itself (`proxy: false`)".into());
    }
    if let Some(container) = &service.container
        && let Some(volume) = container.volumes.iter().find_map(|v| match v {
            VolumeMount::Named { name, .. } => Some(name),
            VolumeMount::Bind { .. } => None,
        })
    {
        return Some(format!("it keeps data in the volume `{volume}`"));
    }
    let texts: Vec<&str> = match &service.command {
        Some(Command::Argv(words)) => words.iter().map(|w| w.expose()).collect(),
        Some(Command::Shell(text)) => vec![text.expose()],
        None => Vec::new(),
    };
    let env = service.environment.values().map(|v| v.expose());
    if texts.into_iter().chain(env).any(|t| t.contains("TUG_STATE_DIR")) {
        return Some("it keeps data under `$TUG_STATE_DIR`".into());
    }
    if service.port.is_some() && service.protocol == Protocol::Tcp {
        return Some("it is a `tcp` service (a database or a cache, most likely)".into());
    }
    None
}

/// Removes `.` and resolves `..` lexically, so paths read as the user expects.
pub fn normalize(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

pub fn is_profile_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && bytes.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// `command: [argv...]` runs directly; `command: "a line"` runs by `sh -c`.
pub fn command(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Option<Command> {
    match &node.kind {
        Kind::Seq(items) => {
            if items.is_empty() {
                ctx.error("invalid-value", node.span, path, "an empty command");
                return None;
            }
            let argv: Vec<Option<Text>> =
                items.iter().enumerate().map(|(i, item)| ctx.text(item, &format!("{path}[{i}]"), scope)).collect();
            argv.into_iter().collect::<Option<Vec<_>>>().map(Command::Argv)
        }
        Kind::Scalar { text, .. } if text.trim().is_empty() => {
            ctx.error("invalid-value", node.span, path, "an empty command");
            None
        }
        Kind::Scalar { .. } => ctx.text(node, path, scope).map(Command::Shell),
        _ => {
            ctx.type_error(node, path, "a command: a list of arguments or a string");
            None
        }
    }
}

fn command_is_sensitive(command: &Command) -> bool {
    match command {
        Command::Argv(args) => args.iter().any(|a| a.sensitive),
        Command::Shell(line) => line.sensitive,
    }
}

fn probe_is_sensitive(probe: &Option<Probe>) -> bool {
    matches!(probe.as_ref().map(|p| &p.check), Some(Check::Exec(command)) if command_is_sensitive(command))
}

/// Reports a secret interpolated into a program's arguments, naming the secrets it refers to.
fn secret_in_arguments(ctx: &mut Ctx, node: &Node, path: &str, field: &str, scope: &Scope) {
    let raw: Vec<&str> = match &node.kind {
        Kind::Scalar { text, .. } => vec![text],
        Kind::Seq(items) => items.iter().filter_map(scalar_text).collect(),
        _ => Vec::new(),
    };
    let mut names: Vec<String> = Vec::new();
    for text in raw {
        for name in ctx.secret_references(text, scope) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let (subject, example) = match names.as_slice() {
        [] => ("a secret".to_string(), "NAME".to_string()),
        [one] => (format!("the secret `{one}`"), one.clone()),
        many => {
            let quoted: Vec<String> = many.iter().map(|n| format!("`{n}`")).collect();
            (format!("the secrets {}", quoted.join(", ")), many[0].clone())
        }
    };
    ctx.diags.push(
        Diagnostic::error(
            "secret-in-command",
            Some(node.span),
            path,
            format!("`{field}` interpolates {subject}: any local user can read a process's arguments (in `ps`)"),
        )
        .with_hint(format!(
            "pass it in the environment instead: in a shell command write `$${example}` so the shell expands it at run time, or read the file `$TUG_SECRETS_DIR/{example}` (`/run/secrets/{example}` in a container)"
        )),
    );
}

/// `source:` of a process: a folder whose content is part of the revision.
#[allow(clippy::too_many_arguments)]
fn source_folder(
    ctx: &mut Ctx,
    node: &Node,
    f: &Fields,
    scope: &Scope,
    root: &Path,
    runs_image: bool,
    working_dir: &Path,
    working_dir_written: Option<&str>,
    working_dir_span: Option<Span>,
) -> Option<std::path::PathBuf> {
    let path = f.path("source");
    let written = ctx.string(node, &path, scope)?;
    if runs_image {
        ctx.diags.push(
            Diagnostic::error(
                "conflicting-fields",
                Some(node.span),
                &path,
                "`source` is for a process: an image's revision is its digest",
            )
            .with_hint("remove `source`; a rebuilt or re-tagged image is already a new revision"),
        );
        return None;
    }
    let folder = normalize(&root.join(&written));
    if !folder.is_dir() {
        let problem = if folder.exists() { "is not a folder" } else { "does not exist" };
        ctx.diags.push(
            Diagnostic::error("missing-path", Some(node.span), &path, format!("the source `{written}` {problem}"))
                .with_hint("`source` is a folder, relative to the stack file's folder"),
        );
        return None;
    }
    if !working_dir.starts_with(&folder) {
        let dir = match working_dir_written {
            Some(dir) => format!("`{dir}`"),
            None => "the stack file's folder".to_string(),
        };
        ctx.diags.push(
            Diagnostic::warning(
                "source-workdir",
                working_dir_span.or(Some(node.span)),
                f.path(if working_dir_span.is_some() { "working_dir" } else { "source" }),
                format!(
                    "the process runs in {dir}, outside `source` (`{written}`): it would run the files on disk, not the revision's copy"
                ),
            )
            .with_hint(format!("set `working_dir` inside `source` (`working_dir: {written}`)")),
        );
    }
    Some(folder)
}

/// `environment:` as a mapping or as a list of `KEY=VALUE` (Docker Compose's two forms).
/// A key with no value passes the variable through from tug's own environment.
pub(crate) fn environment_entries(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Vec<(String, Text)> {
    let mut out = Vec::new();
    let mut add = |ctx: &mut Ctx, name: &str, value: Option<&Node>, raw: Option<&str>, span: Span| {
        let entry_path = format!("{path}.{name}");
        if !is_env_name(name) {
            ctx.error("invalid-name", span, &entry_path, format!("`{name}` is not a valid environment variable name"));
            return;
        }
        let text = match (value, raw) {
            (Some(n), _) if !n.is_null() => match &n.kind {
                Kind::Scalar { .. } => ctx.text(n, &entry_path, scope),
                _ => {
                    ctx.type_error(n, &entry_path, "a string, number or boolean");
                    None
                }
            },
            (None, Some(raw)) => ctx.interpolate(raw, span, &entry_path, scope),
            // A setting's name passes the setting through, under the same rules as `${NAME}`.
            _ if scope.own.is_some_and(|m| m.contains_key(name))
                || scope.shared.is_some_and(|m| m.contains_key(name)) =>
            {
                ctx.interpolate(&format!("${{{name}}}"), span, &entry_path, scope)
            }
            _ => match ctx.env.get(name) {
                Some((v, _, _)) => Some(Text::new(v.to_string(), ctx.env.secret_names.contains(name), false, false)),
                None => {
                    ctx.diags.push(Diagnostic::warning(
                        "unset-variable",
                        Some(span),
                        &entry_path,
                        format!("`{name}` has no value here and is not set in tug's environment or env files: it is not passed"),
                    ));
                    None
                }
            },
        };
        if let Some(text) = text {
            out.push((name.to_string(), text));
        }
    };
    match &node.kind {
        Kind::Map(entries) => {
            for (k, v) in entries {
                add(ctx, k.key_text().unwrap_or_default(), Some(v), None, k.span);
            }
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let Some(entry) = ctx.scalar(item, &format!("{path}[{i}]"), "`KEY=VALUE`") else {
                    continue;
                };
                match entry.split_once('=') {
                    Some((k, v)) => add(ctx, k, None, Some(v), item.span),
                    None => add(ctx, entry, None, None, item.span),
                }
            }
        }
        _ => ctx.type_error(node, path, "a mapping of variables, or a list of `KEY=VALUE`"),
    }
    out
}

fn dependencies(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope, spans: &mut Spans) {
    match &node.kind {
        // A list means `started` for each, as in Docker Compose.
        Kind::Seq(_) | Kind::Scalar { .. } => {
            for (name, span) in ctx.string_list(node, path, scope) {
                spans.dependencies.push(Dependency { name, condition: Condition::Started, required: true, span });
            }
        }
        Kind::Map(entries) => {
            for (key, value) in entries {
                let name = key.key_text().unwrap_or_default().to_string();
                let entry_path = format!("{path}.{name}");
                let (condition, required) = match &value.kind {
                    Kind::Null => (Some(Condition::Started), true),
                    Kind::Scalar { .. } => (ctx.choice(value, &entry_path, scope, CONDITIONS), true),
                    _ => match ctx.fields(value, &entry_path, DEPENDS_ON_FIELDS) {
                        Some(f) => (
                            f.get("condition")
                                .map(|n| ctx.choice(n, &f.path("condition"), scope, CONDITIONS))
                                .unwrap_or(Some(Condition::Started)),
                            f.get("required").and_then(|n| ctx.bool(n, &f.path("required"), scope)).unwrap_or(true),
                        ),
                        None => (None, true),
                    },
                };
                if let Some(condition) = condition {
                    spans.dependencies.push(Dependency { name, condition, required, span: key.span });
                }
            }
        }
        Kind::Null => {}
    }
}

pub struct ProbeDefaults {
    interval: Duration,
    timeout: Duration,
    retries: u64,
    start_interval: Duration,
}

impl ProbeDefaults {
    /// Readiness: probe often, and very often until the first success (fast start-up).
    pub const READINESS: ProbeDefaults = ProbeDefaults {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        retries: 3,
        start_interval: Duration::from_millis(100),
    };
    /// Liveness: a restart is costly, so probe calmly.
    pub const LIVENESS: ProbeDefaults = ProbeDefaults {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        retries: 3,
        start_interval: Duration::from_secs(1),
    };
}

fn probe(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope, defaults: ProbeDefaults) -> Option<Probe> {
    let f = ctx.fields(node, path, PROBE_FIELDS)?;
    let check = one_check(ctx, node, &f, path, scope, PROBE_CHECKS);
    let interval =
        f.get("interval").and_then(|n| ctx.duration(n, &f.path("interval"), scope)).unwrap_or(defaults.interval);
    let timeout = f.get("timeout").and_then(|n| ctx.duration(n, &f.path("timeout"), scope)).unwrap_or(defaults.timeout);
    let retries =
        f.get("retries").and_then(|n| ctx.uint(n, &f.path("retries"), scope, 1, 1000)).unwrap_or(defaults.retries)
            as u32;
    let start_period =
        f.get("start_period").and_then(|n| ctx.duration(n, &f.path("start_period"), scope)).unwrap_or_default();
    let start_interval = f
        .get("start_interval")
        .and_then(|n| ctx.duration(n, &f.path("start_interval"), scope))
        .unwrap_or(defaults.start_interval);
    for (name, value) in [("interval", interval), ("timeout", timeout), ("start_interval", start_interval)] {
        if value.is_zero()
            && let Some(n) = f.get(name)
        {
            ctx.error("invalid-value", n.span, &f.path(name), format!("`{name}` must be more than zero"));
        }
    }
    Some(Probe { check: check?, interval, timeout, retries, start_period, start_interval })
}

/// `backup`: the dump command (stdout), the restore command (stdin), a schedule and how many
/// scheduled archives to keep.
fn backup(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope, job: bool) -> Option<Backup> {
    let f = ctx.fields(node, path, BACKUP_FIELDS)?;
    if job {
        ctx.error("invalid-value", f.span, path, "a job has no running instance to back up");
        return None;
    }
    let restore = f.get("restore").and_then(|n| command(ctx, n, &f.path("restore"), scope));
    let dump = match f.get("command") {
        Some(n) => command(ctx, n, &f.path("command"), scope),
        None => {
            ctx.diags.push(
                Diagnostic::error(
                    "missing-field",
                    Some(f.span),
                    path,
                    "a backup needs the `command` that dumps the data",
                )
                .with_hint(
                    "for example `command: pg_dump -h $HOST -p $PORT -U app app` (its standard output is the dump)",
                ),
            );
            None
        }
    };
    let schedule = f.get("schedule").and_then(|n| {
        let text = ctx.string(n, &f.path("schedule"), scope)?;
        match crate::cron::Schedule::parse(&text) {
            Ok(schedule) => Some(schedule),
            Err(why) => {
                ctx.diags.push(
                    Diagnostic::error("invalid-value", Some(n.span), f.path("schedule"), format!("`{text}`: {why}"))
                        .with_hint("five fields, minute hour day-of-month month day-of-week, UTC: \"0 3 * * *\" is 03:00 every day"),
                );
                None
            }
        }
    });
    let keep = match f.get("keep") {
        Some(n) => ctx.uint(n, &f.path("keep"), scope, 1, 10_000)? as u32,
        None => BACKUP_KEEP,
    };
    if f.get("keep").is_some() && schedule.is_none() && f.get("schedule").is_none() {
        ctx.diags.push(Diagnostic::warning(
            "unused-field",
            f.get("keep").map(|n| n.span),
            f.path("keep"),
            "`keep` counts scheduled archives, and there is no `schedule`",
        ));
    }
    Some(Backup { command: dump?, restore, schedule, keep })
}

/// `deploy.smoke`: one http, tcp or exec check of a new revision's instance, and its timeout.
fn smoke(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Option<Smoke> {
    let f = ctx.fields(node, path, SMOKE_FIELDS)?;
    // `log` was reported as an unknown field: a log line says nothing of a request.
    if node.get("log").is_some() {
        return None;
    }
    let check = one_check(ctx, node, &f, path, scope, SMOKE_CHECKS);
    let timeout = match f.get("timeout") {
        Some(n) => {
            let timeout = ctx.duration(n, &f.path("timeout"), scope)?;
            if timeout.is_zero() {
                ctx.error("invalid-value", n.span, &f.path("timeout"), "`timeout` must be more than zero");
            }
            timeout
        }
        None => SMOKE_TIMEOUT,
    };
    Some(Smoke { check: check?, timeout })
}

/// The one check among `allowed` that a probe (or smoke check) names.
fn one_check(ctx: &mut Ctx, node: &Node, f: &Fields, path: &str, scope: &Scope, allowed: &[&str]) -> Option<Check> {
    let present: Vec<&str> = allowed.iter().copied().filter(|c| f.get(c).is_some()).collect();
    match present.as_slice() {
        // Compose's `test:` was reported as such, with tug's spelling.
        [] if node.get("test").is_some() => None,
        [] => {
            let hint = if allowed.contains(&"log") {
                "add one of `http: /health`, `tcp: true`, `exec: CMD` or `log: REGEX`"
            } else {
                "add one of `http: /smoke`, `tcp: true` or `exec: CMD`"
            };
            ctx.diags.push(
                Diagnostic::error("missing-field", Some(f.span), path, "a probe needs one check").with_hint(hint),
            );
            None
        }
        [one] => {
            let n = f.get(one)?;
            let check_path = f.path(one);
            match *one {
                "http" => ctx.text(n, &check_path, scope).and_then(|p| {
                    if p.expose().starts_with('/') {
                        Some(Check::Http(p))
                    } else {
                        ctx.diags.push(
                            Diagnostic::error(
                                "invalid-value",
                                Some(n.span),
                                check_path,
                                format!("`{}` is not a path", p.shown()),
                            )
                            .with_hint(
                                "write the path only, starting with `/`: tug probes the instance's own HOST:PORT",
                            ),
                        );
                        None
                    }
                }),
                "tcp" => match ctx.bool(n, &check_path, scope) {
                    Some(true) => Some(Check::Tcp),
                    Some(false) => {
                        ctx.error(
                            "invalid-value",
                            n.span,
                            &check_path,
                            "`tcp: false` checks nothing; remove the probe or use another check",
                        );
                        None
                    }
                    None => None,
                },
                "exec" => command(ctx, n, &check_path, scope).map(Check::Exec),
                _ => ctx.string(n, &check_path, scope).and_then(|re| match regex::Regex::new(&re) {
                    Ok(_) => Some(Check::Log(re)),
                    Err(e) => {
                        let reason = settings::regex_reason(&e.to_string());
                        ctx.error(
                            "invalid-regex",
                            n.span,
                            &check_path,
                            format!("invalid regular expression: {reason}"),
                        );
                        None
                    }
                }),
            }
        }
        many => {
            ctx.diags.push(
                Diagnostic::error(
                    "conflicting-fields",
                    Some(f.span),
                    path,
                    format!("a probe has one check, found {}", many.join(" and ")),
                )
                .with_hint("keep one of them; to check more, use `exec` with a script"),
            );
            None
        }
    }
}

fn amount(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Option<Amount> {
    let raw = ctx.scalar(node, path, "a count or a percentage")?;
    if raw.trim_end().ends_with('%') {
        ctx.percent(node, path, scope).map(Amount::Percent)
    } else {
        ctx.uint(node, path, scope, 0, 10_000).map(|v| Amount::Count(v as u32))
    }
}

fn deploy(
    ctx: &mut Ctx,
    node: Option<&Node>,
    service: &Fields,
    scope: &Scope,
    instance_scope: &Scope,
    spans: &mut Spans,
) -> Deploy {
    let mut deploy = Deploy {
        strategy: Strategy::Rolling,
        max_surge: Amount::Count(1),
        max_unavailable: Amount::Count(0),
        min_ready: Duration::ZERO,
        steps: Vec::new(),
        step_duration: Duration::from_secs(30),
        analysis: Analysis { max_error_rate: None, max_p99: None, min_requests: 20 },
        preview_port: None,
        auto_promote: false,
        scale_down_delay: Duration::from_secs(30),
        progress_deadline: Duration::from_secs(600),
        before: Vec::new(),
        smoke: None,
    };
    let path = service.path("deploy");
    let Some(f) = node.and_then(|n| ctx.fields(n, &path, DEPLOY_FIELDS)) else {
        return deploy;
    };
    if let Some(n) = f.get("strategy")
        && let Some(s) = ctx.choice(n, &f.path("strategy"), scope, STRATEGIES)
    {
        deploy.strategy = s;
    }
    if let Some(n) = f.get("max_surge")
        && let Some(a) = amount(ctx, n, &f.path("max_surge"), scope)
    {
        deploy.max_surge = a;
    }
    if let Some(n) = f.get("max_unavailable")
        && let Some(a) = amount(ctx, n, &f.path("max_unavailable"), scope)
    {
        deploy.max_unavailable = a;
    }
    let is_zero = |a: Amount| matches!(a, Amount::Count(0)) || matches!(a, Amount::Percent(p) if p.0 == 0.0);
    if deploy.strategy == Strategy::Rolling && is_zero(deploy.max_surge) && is_zero(deploy.max_unavailable) {
        ctx.diags.push(
            Diagnostic::error(
                "invalid-value",
                Some(f.span),
                &path,
                "`max_surge` and `max_unavailable` are both zero: a rolling deploy could never progress",
            )
            .with_hint(
                "allow at least one extra instance (`max_surge: 1`) or one missing instance (`max_unavailable: 1`)",
            ),
        );
    }
    for (field, slot) in [
        ("min_ready", &mut deploy.min_ready),
        ("step_duration", &mut deploy.step_duration),
        ("scale_down_delay", &mut deploy.scale_down_delay),
        ("progress_deadline", &mut deploy.progress_deadline),
    ] {
        if let Some(n) = f.get(field)
            && let Some(d) = ctx.duration(n, &f.path(field), scope)
        {
            *slot = d;
        }
    }
    if let Some(n) = f.get("steps") {
        let path = f.path("steps");
        match &n.kind {
            Kind::Seq(items) if !items.is_empty() => {
                let mut previous = 0u64;
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let raw = ctx.scalar(item, &item_path, "a percentage").unwrap_or_default().trim_end().to_string();
                    let step = if raw.ends_with('%') {
                        ctx.percent(item, &item_path, scope).map(|p| p.0.round() as u64)
                    } else {
                        ctx.uint(item, &item_path, scope, 1, 100)
                    };
                    let Some(step) = step else { continue };
                    if step == 0 || step <= previous {
                        ctx.error(
                            "invalid-value",
                            item.span,
                            &item_path,
                            format!("canary steps must rise: {step} comes after {previous}"),
                        );
                    }
                    previous = step;
                    deploy.steps.push(step as u8);
                }
            }
            _ => ctx.type_error(n, &path, "a non-empty list of traffic percentages, such as [10, 50, 100]"),
        }
    }
    if deploy.strategy == Strategy::Canary && deploy.steps.is_empty() {
        deploy.steps = vec![10, 50, 100];
    }
    if let Some(n) = f.get("analysis")
        && let Some(a) = ctx.fields(n, &f.path("analysis"), ANALYSIS_FIELDS)
    {
        if let Some(n) = a.get("max_error_rate") {
            deploy.analysis.max_error_rate = ctx.percent(n, &a.path("max_error_rate"), scope);
        }
        if let Some(n) = a.get("max_p99") {
            deploy.analysis.max_p99 = ctx.duration(n, &a.path("max_p99"), scope);
        }
        if let Some(n) = a.get("min_requests")
            && let Some(v) = ctx.uint(n, &a.path("min_requests"), scope, 0, u64::MAX)
        {
            deploy.analysis.min_requests = v;
        }
    }
    if let Some(n) = f.get("preview_port") {
        spans.preview_port = Some(n.span);
        deploy.preview_port = ctx.port(n, &f.path("preview_port"), scope);
    }
    if let Some(n) = f.get("auto_promote")
        && let Some(v) = ctx.bool(n, &f.path("auto_promote"), scope)
    {
        deploy.auto_promote = v;
    }
    if let Some(n) = f.get("before") {
        let path = f.path("before");
        for (job, span) in ctx.string_list(n, &path, scope) {
            if deploy.before.contains(&job) {
                ctx.error("duplicate-value", span, &path, format!("`{job}` is listed twice"));
                continue;
            }
            deploy.before.push(job.clone());
            spans.before.push((job, span));
        }
    }
    if let Some(n) = f.get("smoke") {
        deploy.smoke = smoke(ctx, n, &f.path("smoke"), instance_scope);
    }
    // Fields another strategy reads are a likely mistake: say so without failing.
    let only = |strategy: Strategy, fields: &[&str], name: &str, ctx: &mut Ctx| {
        if deploy.strategy != strategy {
            for field in fields {
                if let Some((_, span, _)) = f.entries.iter().find(|(k, _, _)| k == field) {
                    ctx.diags.push(Diagnostic::warning(
                        "unused-field",
                        Some(*span),
                        f.path(field),
                        format!("`{field}` is only used by the {name} strategy"),
                    ));
                }
            }
        }
    };
    only(Strategy::Canary, &["steps", "step_duration", "analysis"], "canary", ctx);
    only(Strategy::BlueGreen, &["preview_port", "auto_promote", "scale_down_delay"], "blue_green", ctx);
    deploy
}

fn autoscale(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Option<Autoscale> {
    let f = ctx.fields(node, path, AUTOSCALE_FIELDS)?;
    let min = f.get("min").and_then(|n| ctx.uint(n, &f.path("min"), scope, 1, 10_000)).unwrap_or(1) as u32;
    let max = match f.get("max") {
        Some(n) => ctx.uint(n, &f.path("max"), scope, 1, 10_000)? as u32,
        None => {
            ctx.error("missing-field", f.span, path, "autoscale needs `max`");
            return None;
        }
    };
    if max < min {
        ctx.error("invalid-value", f.span, path, format!("autoscale `max` ({max}) is less than `min` ({min})"));
    }
    let cpu = f.get("cpu").and_then(|n| ctx.percent(n, &f.path("cpu"), scope));
    let memory = f.get("memory").and_then(|n| ctx.percent(n, &f.path("memory"), scope));
    let requests_per_second = f.get("requests_per_second").and_then(|n| {
        let v = ctx.float(n, &f.path("requests_per_second"), scope)?;
        if v <= 0.0 {
            ctx.error(
                "invalid-value",
                n.span,
                &f.path("requests_per_second"),
                "`requests_per_second` must be more than zero",
            );
            return None;
        }
        Some(v)
    });
    let targets_given = ["cpu", "memory", "requests_per_second"].iter().any(|t| f.get(t).is_some());
    if !targets_given {
        ctx.diags.push(
            Diagnostic::error("missing-field", Some(f.span), path, "autoscale needs a target")
                .with_hint("add `cpu: 70%`, `memory: 80%` or `requests_per_second: 100`"),
        );
    }
    let scale_down_stabilization = f
        .get("scale_down_stabilization")
        .and_then(|n| ctx.duration(n, &f.path("scale_down_stabilization"), scope))
        .unwrap_or(Duration::from_secs(300));
    Some(Autoscale { min, max, cpu, memory, requests_per_second, scale_down_stabilization })
}

/// `slo`: the service's objectives, for `tug render alerts`.
fn slo(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Option<Slo> {
    let f = ctx.fields(node, path, SLO_FIELDS)?;
    let mut slo = Slo::default();
    if let Some(n) = f.get("availability")
        && let Some(p) = ctx.percent(n, &f.path("availability"), scope)
    {
        if !(p.0 > 0.0 && p.0 < 100.0) {
            ctx.error(
                "invalid-value",
                n.span,
                &f.path("availability"),
                format!("{p} leaves no error budget or no success: give a share between 0% and 100%, such as 99.9%"),
            );
            return None;
        }
        slo.availability = p;
    }
    if let Some(n) = f.get("latency")
        && let Some(d) = ctx.duration(n, &f.path("latency"), scope)
    {
        slo.latency = d;
    }
    Some(slo)
}

fn resources(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Resources {
    let Some(f) = ctx.fields(node, path, RESOURCES_FIELDS) else {
        return Resources::default();
    };
    let memory = f.get("memory").and_then(|n| ctx.size(n, &f.path("memory"), scope));
    let cpu = f.get("cpu").and_then(|n| {
        // Cores as a number (`0.5`), or Kubernetes' millicores (`500m`).
        ctx.parsed(n, &f.path("cpu"), scope, "a CPU limit", |t| {
            let cores = match t.strip_suffix('m') {
                Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
                None => t.parse::<f64>(),
            };
            match cores {
                Ok(c) if c > 0.0 && c.is_finite() => Ok(c),
                _ => Err(format!("`{t}` is not a CPU limit (cores such as 0.5, or millicores such as 500m)")),
            }
        })
    });
    Resources { memory, cpu }
}

fn scalar_text(node: &Node) -> Option<&str> {
    match &node.kind {
        Kind::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

fn router(ctx: &mut Ctx, node: Option<&Node>, service: &Fields, scope: &Scope) -> RouterOptions {
    let mut options = RouterOptions::default();
    let path = service.path("router");
    let Some(f) = node.and_then(|n| ctx.fields(n, &path, ROUTER_FIELDS)) else { return options };
    let positive = |ctx: &mut Ctx, name: &str| -> Option<Duration> {
        let n = f.get(name)?;
        let d = ctx.duration(n, &f.path(name), scope)?;
        if d.is_zero() {
            ctx.error("invalid-value", n.span, &f.path(name), format!("`{name}` must be longer than 0"));
            return None;
        }
        Some(d)
    };
    if let Some(d) = positive(ctx, "connect_timeout") {
        options.connect_timeout = d;
    }
    if let Some(d) = positive(ctx, "request_timeout") {
        options.request_timeout = d;
    }
    options.max_connection_age = positive(ctx, "max_connection_age");
    options
}

fn logs(ctx: &mut Ctx, node: Option<&Node>, service: &Fields, scope: &Scope) -> Logs {
    let mut logs = Logs { max_size: Size(10 << 20), max_files: 5 };
    let path = service.path("logs");
    if let Some(f) = node.and_then(|n| ctx.fields(n, &path, LOGS_FIELDS)) {
        if let Some(n) = f.get("max_size")
            && let Some(s) = ctx.size(n, &f.path("max_size"), scope)
        {
            if s.0 < 4096 {
                ctx.error(
                    "invalid-value",
                    n.span,
                    &f.path("max_size"),
                    format!("`{s}` is too small for a log file (at least 4Ki)"),
                );
            }
            logs.max_size = s;
        }
        if let Some(n) = f.get("max_files")
            && let Some(v) = ctx.uint(n, &f.path("max_files"), scope, 1, 1000)
        {
            logs.max_files = v as u32;
        }
    }
    logs
}
