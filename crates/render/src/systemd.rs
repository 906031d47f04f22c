//! systemd units for a stack, for hosts without tug: a target for the stack, a unit per service
//! (a template `name@.service` for replicas, its instances named by their port), the settings
//! in an `EnvironmentFile=`, secrets as `LoadCredential=`, limits, hardening, and `depends_on`
//! as ordering: `completed_successfully` after a `Type=oneshot` job, `healthy` after the
//! dependency's own `ExecStartPost=` readiness wait. Also the unit that runs tug's own daemon
//! for the stack at boot.

use std::fmt::Write as _;

use tug_stackfile::model::{Check, Command, Condition, Restart, VolumeMount};
use tug_stackfile::{Service, ServiceKind, Stack};

use crate::{File, Options};

/// Where the rendered environment files and credentials are installed.
pub fn config_dir(stack: &Stack) -> String {
    format!("/etc/tug/{}", stack.name)
}

fn unit_name(stack: &Stack, service: &str) -> String {
    format!("{}-{service}", stack.name)
}

/// The units one service is started as: `shop-web.service`, or `shop-web@8080.service`, … for
/// replicas (each listens on its own port: there is no router here).
fn instances(stack: &Stack, name: &str, service: &Service) -> Vec<String> {
    let base = unit_name(stack, name);
    if service.replicas <= 1 || service.kind == ServiceKind::Job {
        return vec![format!("{base}.service")];
    }
    let first = service.port.unwrap_or(8000);
    (0..service.replicas).map(|i| format!("{base}@{}.service", u32::from(first) + i)).collect()
}

pub fn render(stack: &Stack, options: &Options) -> Result<Vec<File>, crate::Error> {
    let mut files = Vec::new();
    let wanted: Vec<String> =
        stack.services.iter().flat_map(|(name, service)| instances(stack, name, service)).collect();
    let mut target = String::new();
    let _ = writeln!(target, "# The stack `{}`: every service's unit. Rendered by `tug render systemd`.", stack.name);
    let _ = writeln!(target, "[Unit]\nDescription=the {} stack", stack.name);
    let _ = writeln!(target, "Wants={}", wanted.join(" "));
    let _ = writeln!(target, "\n[Install]\nWantedBy=multi-user.target");
    files.push(File::raw(format!("{}.target", stack.name), target));
    for (name, service) in &stack.services {
        files.push(File::raw(format!("{}.env", unit_name(stack, name)), environment_file(service)));
        let templated = service.replicas > 1 && service.kind == ServiceKind::Service;
        let file = if templated {
            format!("{}@.service", unit_name(stack, name))
        } else {
            format!("{}.service", unit_name(stack, name))
        };
        files.push(File::raw(file, unit(stack, name, service, templated)));
    }
    files.push(File::raw(format!("tug-{}.service", stack.name), boot_unit(stack, options)));
    Ok(files)
}

/// `KEY=VALUE` lines systemd reads (quoted, `\` and `"` escaped); sensitive values are never
/// here: they are credentials.
fn environment_file(service: &Service) -> String {
    let mut out = String::from("# Settings and environment (no secrets: those are credentials).\n");
    for (key, value) in &service.environment {
        if value.sensitive || value.template {
            continue;
        }
        let escaped = value.expose().replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = writeln!(out, "{key}=\"{escaped}\"");
    }
    out
}

/// A word of a command line as systemd reads it: quoted when it must be, `%` and `$` escaped
/// (`$PORT` in tug's sense becomes systemd's `${PORT}`, which it expands from the environment).
fn word(text: &str, template: bool) -> String {
    let mut escaped = text.replace('%', "%%");
    if !template {
        escaped = escaped.replace('$', "$$");
    }
    if escaped.is_empty() || escaped.contains([' ', '"', '\'', '\\', ';', '\n', '\t']) {
        // One quoted word; systemd reads C escapes in it (a heredoc's newlines stay newlines).
        let quoted = escaped.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('\t', "\\t");
        format!("\"{quoted}\"")
    } else {
        escaped
    }
}

fn command_line(service: &Service) -> Option<String> {
    let words: Vec<String> = match &service.command {
        Some(Command::Argv(words)) => words.iter().map(|w| word(w.expose(), w.template)).collect(),
        Some(Command::Shell(text)) => vec!["/bin/sh".into(), "-c".into(), word(text.expose(), text.template)],
        None => return None,
    };
    Some(words.join(" "))
}

/// The container's command line through the engine's CLI, for a service that runs an image.
fn container_line(stack: &Stack, name: &str, service: &Service, templated: bool) -> Option<String> {
    let container = service.container.as_ref()?;
    let mut words = vec![
        "/usr/bin/docker".to_string(),
        "run".into(),
        "--rm".into(),
        "--name".into(),
        if templated { format!("{}-%i", unit_name(stack, name)) } else { unit_name(stack, name) },
        "--env-file".into(),
        format!("{}/{}.env", config_dir(stack), unit_name(stack, name)),
    ];
    match (container.container_port, service.port) {
        (Some(inside), Some(_)) => words.extend(["-p".into(), format!("127.0.0.1:${{PORT}}:{inside}")]),
        _ => words.extend(["--network".into(), "host".into()]),
    }
    words.extend(["-e".into(), "PORT".into(), "-e".into(), "HOST".into()]);
    if !service.secrets.is_empty() {
        words.extend(["-v".into(), "${CREDENTIALS_DIRECTORY}:/run/secrets:ro".into()]);
    }
    for mount in &container.volumes {
        let (source, target, read_only) = match mount {
            VolumeMount::Named { name, target, read_only } => (format!("{}_{name}", stack.name), target, *read_only),
            VolumeMount::Bind { source, target, read_only } => (source.display().to_string(), target, *read_only),
        };
        let ro = if read_only { ":ro" } else { "" };
        words.extend(["-v".into(), word(&format!("{source}:{target}{ro}"), false)]);
    }
    for tmpfs in &container.tmpfs {
        words.extend(["--tmpfs".into(), word(tmpfs, false)]);
    }
    if let Some(user) = &service.user {
        words.extend(["--user".into(), word(user, false)]);
    }
    if let Some(dir) = &container.working_dir {
        words.extend(["--workdir".into(), word(dir, false)]);
    }
    if container.read_only {
        words.push("--read-only".into());
    }
    if container.init {
        words.push("--init".into());
    }
    for cap in &container.cap_add {
        words.extend(["--cap-add".into(), word(cap, false)]);
    }
    for cap in &container.cap_drop {
        words.extend(["--cap-drop".into(), word(cap, false)]);
    }
    for option in &container.security_opt {
        words.extend(["--security-opt".into(), word(option, false)]);
    }
    // `docker run --entrypoint` takes one program: its other words go before the command's.
    let mut args: Vec<String> = Vec::new();
    if let Some(entrypoint) = &container.entrypoint
        && let Some((first, rest)) = entrypoint.split_first()
    {
        words.extend(["--entrypoint".into(), word(first.expose(), first.template)]);
        args.extend(rest.iter().map(|w| word(w.expose(), w.template)));
    }
    words.push(container.image.clone());
    if let Some(Command::Argv(command)) = &service.command {
        args.extend(command.iter().map(|w| word(w.expose(), w.template)));
    }
    words.extend(args);
    Some(words.join(" "))
}

fn unit(stack: &Stack, name: &str, service: &Service, templated: bool) -> String {
    let mut u = String::new();
    let _ = writeln!(u, "# `{name}` of the stack `{}`. Rendered by `tug render systemd`.", stack.name);
    if templated {
        let _ = writeln!(
            u,
            "# {} replicas, each an instance named by its port (`{}@PORT`): there is no router, put a load \
             balancer in front.",
            service.replicas,
            unit_name(stack, name)
        );
    }
    let _ = writeln!(u, "[Unit]");
    let _ = writeln!(u, "Description={name} ({})", stack.name);
    let _ = writeln!(u, "PartOf={}.target", stack.name);
    if service.container.is_some() {
        // The container runs through the engine.
        let _ = writeln!(u, "After=docker.service\nRequires=docker.service");
    }
    for (dependency, condition) in &service.depends_on {
        let Some(dep) = stack.services.get(dependency) else { continue };
        let units = instances(stack, dependency, dep).join(" ");
        let _ = writeln!(u, "After={units}");
        match condition {
            // A oneshot is started once it exited 0; `Requires=` fails this one if it did not.
            Condition::CompletedSuccessfully => {
                let _ = writeln!(u, "Requires={units}");
            }
            // The dependency's unit is started once its readiness wait passed (ExecStartPost=).
            Condition::Healthy => {
                let _ = writeln!(u, "Requires={units}");
            }
            Condition::Started => {
                let _ = writeln!(u, "Wants={units}");
            }
        }
    }
    let _ = writeln!(u, "\n[Service]");
    match service.kind {
        ServiceKind::Job => {
            let _ = writeln!(u, "Type=oneshot\nRemainAfterExit=yes");
        }
        ServiceKind::Service => {
            let _ = writeln!(u, "Type=exec");
        }
    }
    if service.container.is_none() {
        let _ = writeln!(u, "WorkingDirectory={}", service.working_dir.display());
    }
    let _ = writeln!(u, "EnvironmentFile=-{}/{}.env", config_dir(stack), unit_name(stack, name));
    let _ = writeln!(u, "Environment=HOST=127.0.0.1 TUG_SERVICE={name}");
    if templated {
        let _ = writeln!(u, "Environment=PORT=%i TUG_INSTANCE={name}-%i");
    } else {
        if let Some(port) = service.port {
            let _ = writeln!(u, "Environment=PORT={port}");
        }
        let _ = writeln!(u, "Environment=TUG_INSTANCE={name}-1");
    }
    let _ = writeln!(u, "Environment=TUG_STATE_DIR=/var/lib/tug/{}", stack.name);
    let _ = writeln!(u, "StateDirectory=tug/{}", stack.name);
    for (key, value) in &service.environment {
        if value.template && !value.sensitive {
            let _ = writeln!(u, "Environment={}", word(&format!("{key}={}", value.expose()), true));
        }
    }
    for secret in &service.secrets {
        let _ = writeln!(u, "LoadCredential={secret}:{}/credentials/{secret}", config_dir(stack));
    }
    if !service.secrets.is_empty() {
        let _ = writeln!(u, "Environment=TUG_SECRETS_DIR=%d");
    }
    let start = container_line(stack, name, service, templated).or_else(|| command_line(service));
    let start = start.unwrap_or_else(|| "/bin/true".into());
    // Secrets reach the program's environment from the credentials, never from a file of
    // this unit.
    let start = if service.secrets.is_empty() || service.container.is_some() {
        start
    } else {
        let exports: Vec<String> = service
            .secrets
            .iter()
            .map(|s| format!("{s}=\\\"$$(cat \\\"$${{CREDENTIALS_DIRECTORY}}/{s}\\\")\\\""))
            .collect();
        format!("/bin/sh -c \"export {}; exec {}\"", exports.join(" "), start.replace('"', "\\\""))
    };
    let _ = writeln!(u, "ExecStart={start}");
    if let Some(wait) = service.healthcheck.as_ref().and_then(|p| readiness_wait(service, p)) {
        let _ = writeln!(u, "# Started (for `healthy` dependents) once its healthcheck passes.");
        let _ = writeln!(u, "ExecStartPost={wait}");
        let limit = service.healthcheck.as_ref().map(|p| p.start_period.as_secs() + 60).unwrap_or(90);
        let _ = writeln!(u, "TimeoutStartSec={limit}");
    }
    let restart = match (service.kind, service.restart) {
        (ServiceKind::Job, _) | (_, Restart::No) => "no",
        (_, Restart::OnFailure) => "on-failure",
        (_, Restart::Always) => "always",
    };
    let _ = writeln!(u, "Restart={restart}");
    if restart != "no" {
        let _ = writeln!(u, "RestartSec=1");
    }
    let _ = writeln!(u, "KillSignal={}", service.stop_signal.name);
    let _ = writeln!(u, "TimeoutStopSec={}", service.stop_grace_period.as_secs().max(1));
    if let Some(memory) = service.resources.memory {
        let _ = writeln!(u, "MemoryMax={}", memory.0);
    }
    if let Some(cpu) = service.resources.cpu {
        let _ = writeln!(u, "CPUQuota={}%", (cpu * 100.0).round() as u64);
    }
    if let Some(user) = &service.user
        && matches!(user.split(':').next(), Some("nobody" | "65534"))
    {
        // systemd refuses to run as `nobody` (files it owns are everyone's): an unprivileged user of
        // the unit's own is what that asks for.
        let _ = writeln!(u, "DynamicUser=yes");
    } else if let Some(user) = &service.user {
        let mut parts = user.splitn(2, ':');
        let _ = writeln!(u, "User={}", parts.next().unwrap_or(user));
        if let Some(group) = parts.next() {
            let _ = writeln!(u, "Group={group}");
        }
    }
    let _ = writeln!(u, "NoNewPrivileges=yes\nProtectSystem=strict\nPrivateTmp=yes\nProtectHome=read-only");
    let _ = writeln!(u, "\n[Install]\nWantedBy={}.target", stack.name);
    u
}

/// A loop that ends once the healthcheck passes: the unit counts as started only then.
fn readiness_wait(service: &Service, probe: &tug_stackfile::Probe) -> Option<String> {
    let port = "$${PORT}";
    let check = match &probe.check {
        Check::Http(path) => {
            format!("curl -fsS -o /dev/null http://127.0.0.1:{port}{}", path.expose().replace('$', "$$"))
        }
        Check::Tcp => format!("bash -c \\\"exec 3<>/dev/tcp/127.0.0.1/{port}\\\""),
        Check::Exec(command) => match command {
            Command::Argv(words) => words.iter().map(|w| w.expose().replace('$', "$$")).collect::<Vec<_>>().join(" "),
            Command::Shell(text) => text.expose().replace('$', "$$").replace('"', "\\\""),
        },
        Check::Log(_) => return None,
    };
    let _ = service;
    let interval = probe.start_interval.max(std::time::Duration::from_millis(100)).as_secs_f64();
    Some(format!("/bin/sh -c \"until {check} >/dev/null 2>&1; do sleep {interval}; done\""))
}

/// The unit that runs tug's own daemon for this stack at boot (the foreground `up`, restarted
/// when it ends: a new daemon brings the stack back).
fn boot_unit(stack: &Stack, options: &Options) -> String {
    let tug = options.tug_binary.clone().unwrap_or_else(|| "/usr/local/bin/tug".into());
    format!(
        "# Runs the stack `{name}` under tug itself at boot (instead of the units beside this one).\n\
         [Unit]\nDescription=tug stack {name}\nAfter=network-online.target docker.service\nWants=network-online.target\n\n\
         [Service]\nType=exec\nWorkingDirectory={root}\nExecStart={tug} up\nRestart=always\nRestartSec=2s\n\
         KillMode=mixed\nTimeoutStopSec=120s\n\n[Install]\nWantedBy=multi-user.target\n",
        name = stack.name,
        root = stack.root.display(),
    )
}
