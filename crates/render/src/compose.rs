//! A Compose file for a stack: what `docker compose` runs, with what Compose cannot express
//! (canary and blue-green, autoscaling, the router's options) kept under `x-tug-*`.

use serde_json::{Map, Value, json};
use tug_stackfile::model::{Check, Command, Condition, Restart, Strategy, VolumeMount};
use tug_stackfile::{Probe, Service, ServiceKind, Stack, Text};

use crate::{Error, File, Manifest, Options};

pub fn render(stack: &Stack, options: &Options) -> Result<Vec<File>, Error> {
    let missing: Vec<String> =
        stack.services.iter().filter(|(_, s)| s.container.is_none()).map(|(n, _)| n.clone()).collect();
    if !missing.is_empty() {
        return Err(Error::NeedsImage { target: "compose", services: missing });
    }
    let mut root = Map::new();
    root.insert("name".into(), json!(stack.name));
    // Compose has no per-environment rules: this file is one environment's.
    root.insert(
        "x-tug".into(),
        json!({
            "environment": stack.environment,
            "note": "rendered for this environment only: `tug render compose --env NAME` for another",
        }),
    );
    let mut services = Map::new();
    let mut secrets = Map::new();
    let mut notes = Vec::new();
    for (name, service) in &stack.services {
        services.insert(name.clone(), self::service(stack, name, service, options, &mut secrets, &mut notes));
    }
    root.insert("services".into(), Value::Object(services));
    let volumes: Map<String, Value> = stack
        .volumes
        .iter()
        .map(|(name, v)| (name.clone(), if v.external { json!({ "external": true }) } else { json!({}) }))
        .collect();
    if !volumes.is_empty() {
        root.insert("volumes".into(), Value::Object(volumes));
    }
    if !secrets.is_empty() {
        root.insert("secrets".into(), Value::Object(secrets));
    }
    let mut manifest = Manifest::new(Value::Object(root));
    manifest.comments.push(format!("The stack `{}`, rendered by `tug render compose`.", stack.name));
    manifest.comments.extend(notes);
    Ok(vec![File::new("compose.yaml".into(), vec![manifest])])
}

/// The port the container listens on.
fn inside_port(service: &Service) -> Option<u16> {
    service.container.as_ref().and_then(|c| c.container_port).or(service.port)
}

/// A value as Compose reads it: tug's instance variables replaced by what they are in this
/// container, every other `$` escaped (Compose would interpolate it from the shell).
fn literal(text: &Text, vars: &[(String, String)]) -> String {
    if !text.template {
        return text.expose().replace('$', "$$");
    }
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match tug_stackfile::interp::substitute_instance(text.expose(), &pairs) {
        Ok(value) => value.replace('$', "$$"),
        Err(_) => text.expose().replace('$', "$$"),
    }
}

/// What tug gives an instance, as this Compose file has it: `PORT` the container's, dependencies
/// by their service name on Compose's network.
fn instance_vars(stack: &Stack, name: &str, service: &Service) -> Vec<(String, String)> {
    let mut vars = vec![
        ("HOST".to_string(), "0.0.0.0".to_string()),
        ("TUG_SERVICE".into(), name.to_string()),
        ("TUG_INSTANCE".into(), format!("{name}-1")),
        ("TUG_REPLICA".into(), "1".into()),
        ("TUG_STATE_DIR".into(), "/var/lib/tug".into()),
    ];
    if let Some(port) = inside_port(service) {
        vars.push(("PORT".into(), port.to_string()));
    }
    for dependency in service.depends_on.keys() {
        if let Some(port) = stack.services.get(dependency).and_then(inside_port) {
            vars.push((tug_stackfile::read::address_variable(dependency), format!("{dependency}:{port}")));
        }
    }
    vars
}

fn service(
    stack: &Stack,
    name: &str,
    service: &Service,
    options: &Options,
    secrets: &mut Map<String, Value>,
    notes: &mut Vec<String>,
) -> Value {
    let container = service.container.as_ref().expect("checked: every service has an image");
    let vars = instance_vars(stack, name, service);
    let mut s = Map::new();
    s.insert("image".into(), json!(container.image));
    if let Some(build) = &container.build {
        let mut b = Map::new();
        b.insert("context".into(), json!(build.context.display().to_string()));
        if let Some(dockerfile) = &build.dockerfile {
            b.insert("dockerfile".into(), json!(dockerfile));
        }
        if let Some(target) = &build.target {
            b.insert("target".into(), json!(target));
        }
        if !build.args.is_empty() {
            let args: Map<String, Value> = build
                .args
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!(if v.sensitive && !options.include_secrets {
                            String::new()
                        } else {
                            v.expose().replace('$', "$$")
                        }),
                    )
                })
                .collect();
            b.insert("args".into(), Value::Object(args));
        }
        s.insert("build".into(), Value::Object(b));
    }
    s.insert(
        "pull_policy".into(),
        json!(match container.pull {
            tug_stackfile::model::Pull::Always => "always",
            // `missing`'s older name, which every Compose knows.
            tug_stackfile::model::Pull::Missing => "if_not_present",
            tug_stackfile::model::Pull::Never => "never",
        }),
    );
    if let Some(entrypoint) = &container.entrypoint {
        s.insert("entrypoint".into(), json!(entrypoint.iter().map(|w| literal(w, &vars)).collect::<Vec<_>>()));
    }
    if let Some(command) = &service.command {
        let words: Vec<String> = match command {
            Command::Argv(words) => words.iter().map(|w| literal(w, &vars)).collect(),
            Command::Shell(text) => vec!["sh".into(), "-c".into(), literal(text, &vars)],
        };
        s.insert("command".into(), json!(words));
    }
    if let Some(dir) = &container.working_dir {
        s.insert("working_dir".into(), json!(dir));
    }
    let mut env = Map::new();
    for (key, value) in &vars {
        env.insert(key.clone(), json!(value));
    }
    for (key, value) in &service.environment {
        if value.sensitive {
            // The shell (or an .env file) provides it at `up`; never in this file unless asked.
            let shown = if options.include_secrets {
                value.expose().replace('$', "$$")
            } else {
                format!("${{{key}:?set {key} (a secret) in the environment or in .env}}")
            };
            env.insert(key.clone(), json!(shown));
        } else {
            env.insert(key.clone(), json!(literal(value, &vars)));
        }
    }
    s.insert("environment".into(), Value::Object(env));
    if !service.secrets.is_empty() {
        for secret in &service.secrets {
            secrets.insert(secret.clone(), json!({ "environment": secret }));
        }
        s.insert("secrets".into(), json!(service.secrets));
    }
    // Published on this host's loopback as tug's router is; on Compose's network dependents
    // reach the container's own port by its name.
    if let (Some(inside), Some(port)) = (inside_port(service), service.port) {
        let host = if service.replicas > 1 {
            notes.push(format!(
                "`{name}`: {} replicas, each on its own host port from {port} (no router here)",
                service.replicas
            ));
            format!("{port}-{}", u32::from(port) + service.replicas - 1)
        } else {
            port.to_string()
        };
        s.insert("ports".into(), json!([format!("127.0.0.1:{host}:{inside}")]));
    }
    if let Some(probe) = &service.healthcheck {
        match healthcheck(service, probe) {
            Some(check) => {
                s.insert("healthcheck".into(), check);
            }
            None => notes.push(format!("`{name}`: its log probe has no Compose equivalent: no healthcheck")),
        }
    }
    if service.liveness.is_some() {
        notes.push(format!("`{name}`: `liveness` has no Compose equivalent (Compose restarts only on exit)"));
    }
    if !service.depends_on.is_empty() {
        let deps: Map<String, Value> = service
            .depends_on
            .iter()
            .map(|(dep, condition)| {
                let condition = match condition {
                    Condition::Started => "service_started",
                    Condition::Healthy => "service_healthy",
                    Condition::CompletedSuccessfully => "service_completed_successfully",
                };
                (dep.clone(), json!({ "condition": condition }))
            })
            .collect();
        s.insert("depends_on".into(), Value::Object(deps));
    }
    s.insert(
        "logging".into(),
        json!({ "driver": "json-file", "options": {
            "max-size": service.logs.max_size.0.to_string(),
            "max-file": service.logs.max_files.to_string(),
        } }),
    );
    let restart = match (service.kind, service.restart) {
        (ServiceKind::Job, _) | (_, Restart::No) => "no",
        (_, Restart::OnFailure) => "on-failure",
        (_, Restart::Always) => "always",
    };
    s.insert("restart".into(), json!(restart));
    s.insert("stop_signal".into(), json!(service.stop_signal.name));
    s.insert("stop_grace_period".into(), json!(format!("{}s", service.stop_grace_period.as_secs())));
    let mut deploy = Map::new();
    if service.kind == ServiceKind::Service && service.replicas != 1 {
        deploy.insert("replicas".into(), json!(service.replicas));
    }
    let mut limits = Map::new();
    if let Some(cpu) = service.resources.cpu {
        limits.insert("cpus".into(), json!(format!("{cpu}")));
    }
    if let Some(memory) = service.resources.memory {
        limits.insert("memory".into(), json!(format!("{}b", memory.0)));
    }
    if !limits.is_empty() {
        deploy.insert("resources".into(), json!({ "limits": limits }));
    }
    if !deploy.is_empty() {
        s.insert("deploy".into(), Value::Object(deploy));
    }
    let mounts: Vec<String> = container
        .volumes
        .iter()
        .map(|m| match m {
            VolumeMount::Named { name, target, read_only } => mount(name, target, *read_only),
            VolumeMount::Bind { source, target, read_only } => mount(&source.display().to_string(), target, *read_only),
        })
        .collect();
    if !mounts.is_empty() {
        s.insert("volumes".into(), json!(mounts));
    }
    if !container.tmpfs.is_empty() {
        s.insert("tmpfs".into(), json!(container.tmpfs));
    }
    if let Some(user) = &service.user {
        s.insert("user".into(), json!(user));
    }
    if container.read_only {
        s.insert("read_only".into(), json!(true));
    }
    if container.init {
        s.insert("init".into(), json!(true));
    }
    for (key, list) in
        [("cap_add", &container.cap_add), ("cap_drop", &container.cap_drop), ("security_opt", &container.security_opt)]
    {
        if !list.is_empty() {
            s.insert(key.into(), json!(list));
        }
    }
    if !service.profiles.is_empty() {
        s.insert("profiles".into(), json!(service.profiles));
    }
    // What Compose cannot run, kept for the reader (and for a round trip back to tug).
    if matches!(service.deploy.strategy, Strategy::Canary | Strategy::BlueGreen) {
        s.insert(
            "x-tug-deploy".into(),
            json!({
                "strategy": service.deploy.strategy.as_str(),
                "steps": service.deploy.steps,
                "note": "Compose replaces containers in place: no traffic steps, no analysis, no rollback",
            }),
        );
    }
    if let Some(a) = &service.autoscale {
        s.insert(
            "x-tug-autoscale".into(),
            json!({ "min": a.min, "max": a.max, "note": "Compose does not scale by load: replicas are fixed" }),
        );
    }
    Value::Object(s)
}

fn mount(source: &str, target: &str, read_only: bool) -> String {
    if read_only { format!("{source}:{target}:ro") } else { format!("{source}:{target}") }
}

/// Probes run inside the container under Compose: an http or tcp check becomes a command the
/// image must have (`wget`, `nc`), which the comment says.
fn healthcheck(service: &Service, probe: &Probe) -> Option<Value> {
    let port = inside_port(service).unwrap_or(80);
    let test = match &probe.check {
        Check::Http(path) => json!([
            "CMD-SHELL",
            format!("wget -q -O /dev/null http://127.0.0.1:{port}{} || exit 1", path.expose().replace('$', "$$"))
        ]),
        Check::Tcp => json!(["CMD-SHELL", format!("nc -z 127.0.0.1 {port} || exit 1")]),
        // `sh -c TEXT` is what CMD-SHELL runs.
        Check::Exec(Command::Argv(words))
            if words.len() == 3 && words[0].expose() == "sh" && words[1].expose() == "-c" =>
        {
            json!(["CMD-SHELL", words[2].expose().replace('$', "$$")])
        }
        Check::Exec(Command::Argv(words)) => {
            let mut test = vec!["CMD".to_string()];
            test.extend(words.iter().map(|w| w.expose().replace("${PORT}", &port.to_string()).replace('$', "$$")));
            json!(test)
        }
        Check::Exec(Command::Shell(text)) => json!(["CMD-SHELL", text.expose().replace('$', "$$")]),
        Check::Log(_) => return None,
    };
    let secs = |d: std::time::Duration| format!("{}ms", d.as_millis().max(1));
    let mut check = json!({
        "test": test,
        "interval": secs(probe.interval),
        "timeout": secs(probe.timeout),
        "retries": probe.retries.max(1),
    });
    // `start_interval` matters only within a start period (and older engines and Compose v1
    // refuse it): written with one.
    if !probe.start_period.is_zero() {
        check["start_period"] = json!(secs(probe.start_period));
        if !probe.start_interval.is_zero() {
            check["start_interval"] = json!(secs(probe.start_interval));
        }
    }
    Some(check)
}
