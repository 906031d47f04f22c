//! Kubernetes manifests for a stack: per service a Deployment (a Job for a job), its Service,
//! ConfigMap and Secret, probes (readiness, a startup probe for `start_period`, liveness only
//! from `liveness`), init containers that hold `depends_on`, an HPA for `autoscale`, a PDB for
//! two replicas or more, PVCs for named volumes. Pure: a stack in, files out, same bytes for
//! the same stack.

use serde_json::{Map, Value, json};
use tug_stackfile::model::{Check, Command, Condition, Restart, Strategy, VolumeMount};
use tug_stackfile::{Amount, Probe, Service, ServiceKind, Stack};

use crate::{Error, File, Manifest, Options};

/// The image init containers wait with (`nc`, `nslookup`) and the one that waits for a Job.
pub const WAIT_IMAGE: &str = "busybox:1.36";
pub const KUBECTL_IMAGE: &str = "bitnami/kubectl:1.31";

const MANAGED_BY: &str = "tug";

pub fn render(stack: &Stack, options: &Options) -> Result<Vec<File>, Error> {
    let missing: Vec<&str> =
        stack.services.iter().filter(|(_, s)| s.container.is_none()).map(|(n, _)| n.as_str()).collect();
    if !missing.is_empty() {
        return Err(Error::NeedsImage {
            target: "kubernetes",
            services: missing.iter().map(|s| s.to_string()).collect(),
        });
    }
    let mut files = Vec::new();
    let waits_for_jobs =
        stack.services.values().any(|s| s.depends_on.values().any(|c| *c == Condition::CompletedSuccessfully));
    if waits_for_jobs {
        files.push(File::new(format!("{}-job-waiter.yaml", stack.name), job_waiter_rbac(stack)));
    }
    for (volume, spec) in &stack.volumes {
        if spec.external {
            continue;
        }
        files.push(File::new(format!("volume-{volume}.yaml"), vec![pvc(stack, volume)]));
    }
    for (name, service) in &stack.services {
        let mut manifests = service_manifests(stack, name, service, options);
        // An Argo Rollout goes in a file of its own: Kubernetes validators do not know its kind.
        if let Some(i) = manifests.iter().position(|m| m.value["kind"] == "Rollout") {
            files.push(File::new(format!("{name}-rollout.yaml"), vec![manifests.remove(i)]));
        }
        files.push(File::new(format!("{name}.yaml"), manifests));
    }
    if options.network_policies {
        files.push(File::new(format!("{}-network-policies.yaml", stack.name), network_policies(stack)));
    }
    Ok(files)
}

/// Whether a service is rolled out by Argo Rollouts (`--rollouts argo`, canary or blue-green).
fn argo(service: &Service, options: &Options) -> bool {
    options.argo_rollouts
        && service.kind == ServiceKind::Service
        && matches!(service.deploy.strategy, Strategy::Canary | Strategy::BlueGreen)
        && service.port.is_some()
}

fn labels(stack: &Stack, name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": stack.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    })
}

fn selector(stack: &Stack, name: &str) -> Value {
    json!({ "app.kubernetes.io/name": name, "app.kubernetes.io/part-of": stack.name })
}

/// A resource of service `service` named `name` (`web`, `web-env`, …).
fn metadata(stack: &Stack, service: &str, name: &str) -> Value {
    json!({ "name": name, "labels": labels(stack, service) })
}

/// The port the container listens on: `container_port`, else the service's `port`.
fn container_port(service: &Service) -> Option<u16> {
    service.container.as_ref().and_then(|c| c.container_port).or(service.port)
}

fn service_manifests(stack: &Stack, name: &str, service: &Service, options: &Options) -> Vec<Manifest> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let (config, secret) = split_environment(service);
    if !config.is_empty() {
        out.push(Manifest::new(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(stack, name, &format!("{name}-env")),
            "data": Value::Object(config.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        })));
    }
    if !secret.is_empty() {
        let filled = options.include_secrets;
        let data: Map<String, Value> =
            secret.iter().map(|(k, v)| (k.clone(), json!(if filled { v.as_str() } else { "" }))).collect();
        let mut manifest = Manifest::new(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(stack, name, &format!("{name}-secrets")),
            "type": "Opaque",
            "stringData": Value::Object(data),
        }));
        if !filled {
            manifest.comments.push(format!(
                "Fill these keys before applying (or render with --include-secrets): {}",
                secret.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        out.push(manifest);
    }
    let pod = pod_spec(stack, name, service, !config.is_empty(), !secret.is_empty(), &mut notes);
    match service.kind {
        ServiceKind::Job => {
            let backoff = match service.restart {
                Restart::No => 0,
                _ => 6,
            };
            let mut manifest = Manifest::new(json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": metadata(stack, name, name),
                "spec": {
                    "backoffLimit": backoff,
                    "template": { "metadata": { "labels": labels(stack, name) }, "spec": pod },
                },
            }));
            manifest.comments = notes;
            out.push(manifest);
        }
        ServiceKind::Service => {
            let mut spec = Map::new();
            if service.autoscale.is_none() {
                spec.insert("replicas".into(), json!(service.replicas));
            } else {
                notes.push("replicas are the HorizontalPodAutoscaler's (autoscale)".into());
            }
            spec.insert("selector".into(), json!({ "matchLabels": selector(stack, name) }));
            let rollout = argo(service, options);
            if rollout {
                spec.insert("strategy".into(), argo_strategy(name, service, &mut notes));
            } else {
                spec.insert("strategy".into(), strategy(service, &mut notes));
            }
            spec.insert("template".into(), json!({ "metadata": { "labels": labels(stack, name) }, "spec": pod }));
            let (api, kind) = if rollout { ("argoproj.io/v1alpha1", "Rollout") } else { ("apps/v1", "Deployment") };
            let mut manifest = Manifest::new(json!({
                "apiVersion": api,
                "kind": kind,
                "metadata": metadata(stack, name, name),
                "spec": Value::Object(spec),
            }));
            manifest.comments = notes;
            out.push(manifest);
            if rollout && service.deploy.strategy == Strategy::BlueGreen {
                // The new set alone, before the switch (tug's `preview_port`).
                let port = service.deploy.preview_port.or(service.port).unwrap_or(80);
                out.push(cluster_service(stack, name, &format!("{name}-preview"), service, port));
            }
            if let Some(port) = service.port {
                out.push(cluster_service(stack, name, name, service, port));
            } else if stack.services.values().any(|s| s.depends_on.contains_key(name)) {
                // Dependents wait for it by name: a headless Service gives it one.
                let mut manifest = Manifest::new(json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": metadata(stack, name, name),
                    "spec": { "clusterIP": "None", "selector": selector(stack, name) },
                }));
                manifest.comments.push("Headless: it has no port, and dependents find its ready pods by name".into());
                out.push(manifest);
            }
            if let Some(autoscale) = &service.autoscale {
                out.push(hpa(stack, name, service, autoscale, argo(service, options)));
            }
            if service.replicas >= 2 || service.autoscale.as_ref().is_some_and(|a| a.min >= 2) {
                out.push(Manifest::new(json!({
                    "apiVersion": "policy/v1",
                    "kind": "PodDisruptionBudget",
                    "metadata": metadata(stack, name, name),
                    "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector(stack, name) } },
                })));
            }
        }
    }
    out
}

/// A Service named `resource` that sends `port` to the pods of service `name`.
fn cluster_service(stack: &Stack, name: &str, resource: &str, service: &Service, port: u16) -> Manifest {
    Manifest::new(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(stack, name, resource),
        "spec": {
            "selector": selector(stack, name),
            "ports": [{
                "name": port_name(service),
                "port": port,
                "targetPort": container_port(service).unwrap_or(port),
                "protocol": "TCP",
            }],
        },
    }))
}

fn port_name(service: &Service) -> &'static str {
    match service.protocol {
        tug_stackfile::model::Protocol::Http => "http",
        tug_stackfile::model::Protocol::Tcp => "tcp",
        // Detected per connection under tug; an HTTP probe says the service speaks HTTP.
        tug_stackfile::model::Protocol::Auto => {
            let http_probe =
                service.healthcheck.as_ref().is_some_and(|p| matches!(p.check, tug_stackfile::model::Check::Http(_)));
            if http_probe { "http" } else { "tcp" }
        }
    }
}

fn strategy(service: &Service, notes: &mut Vec<String>) -> Value {
    let amount = |a: Amount| match a {
        Amount::Count(n) => json!(n),
        Amount::Percent(p) => json!(format!("{}%", p.0)),
    };
    let rolling = || {
        json!({ "type": "RollingUpdate", "rollingUpdate": {
            "maxSurge": amount(service.deploy.max_surge),
            "maxUnavailable": amount(service.deploy.max_unavailable),
        } })
    };
    match service.deploy.strategy {
        Strategy::Recreate => json!({ "type": "Recreate" }),
        Strategy::Rolling => rolling(),
        Strategy::Canary => {
            notes.push(
                "canary under tug: here a rolling update (no traffic steps, no analysis); render with \
                 --rollouts argo for an Argo Rollout"
                    .into(),
            );
            rolling()
        }
        Strategy::BlueGreen => {
            notes.push(
                "blue_green under tug: here a rolling update (no preview, no switch); render with --rollouts argo \
                 for an Argo Rollout"
                    .into(),
            );
            rolling()
        }
    }
}

/// tug's canary or blue-green as Argo Rollouts has it: canary steps as `setWeight` and a pause
/// of `step_duration`; blue-green with active and preview Services.
fn argo_strategy(name: &str, service: &Service, notes: &mut Vec<String>) -> Value {
    let deploy = &service.deploy;
    match deploy.strategy {
        Strategy::BlueGreen => json!({ "blueGreen": {
            "activeService": name,
            "previewService": format!("{name}-preview"),
            "autoPromotionEnabled": deploy.auto_promote,
            "scaleDownDelaySeconds": deploy.scale_down_delay.as_secs(),
        } }),
        _ => {
            let mut steps = Vec::new();
            for weight in &deploy.steps {
                steps.push(json!({ "setWeight": weight }));
                if *weight < 100 {
                    steps.push(
                        json!({ "pause": { "duration": format!("{}s", deploy.step_duration.as_secs().max(1)) } }),
                    );
                }
            }
            let a = &deploy.analysis;
            let mut limits = Vec::new();
            if let Some(rate) = a.max_error_rate {
                limits.push(format!("error rate at most {rate}"));
            }
            if let Some(p99) = a.max_p99 {
                limits.push(format!("p99 at most {}ms", p99.as_millis()));
            }
            if !limits.is_empty() {
                notes.push(format!(
                    "tug's canary analysis ({}, over at least {} requests) needs an AnalysisTemplate for your metrics \
                     provider, referenced from these steps",
                    limits.join(", "),
                    a.min_requests
                ));
            }
            json!({ "canary": { "steps": steps } })
        }
    }
}

/// `--network-policies`: every pod of the stack refuses connections but those its dependents
/// make (the services nothing depends on, the stack's entry points, take any).
fn network_policies(stack: &Stack) -> Vec<Manifest> {
    let mut out = Vec::new();
    let mut deny = Manifest::new(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(stack, &stack.name, &format!("{}-default-deny", stack.name)),
        "spec": {
            "podSelector": { "matchLabels": { "app.kubernetes.io/part-of": stack.name } },
            "policyTypes": ["Ingress"],
        },
    }));
    deny.comments.push(
        "Incoming connections are refused but those `depends_on` allows; outgoing ones are not restricted".into(),
    );
    out.push(deny);
    for (name, service) in &stack.services {
        let Some(port) = container_port(service) else { continue };
        let dependents: Vec<&String> =
            stack.services.iter().filter(|(_, s)| s.depends_on.contains_key(name)).map(|(n, _)| n).collect();
        let from: Vec<Value> =
            dependents.iter().map(|d| json!({ "podSelector": { "matchLabels": selector(stack, d) } })).collect();
        let rule = if dependents.is_empty() {
            json!({ "ports": [{ "port": port, "protocol": "TCP" }] })
        } else {
            json!({ "from": from, "ports": [{ "port": port, "protocol": "TCP" }] })
        };
        let mut allow = Manifest::new(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(stack, name, &format!("{name}-ingress")),
            "spec": {
                "podSelector": { "matchLabels": selector(stack, name) },
                "policyTypes": ["Ingress"],
                "ingress": [rule],
            },
        }));
        if dependents.is_empty() {
            allow.comments.push(format!("`{name}` is an entry point (nothing depends on it): any client may connect"));
        }
        out.push(allow);
    }
    out
}

/// The service's environment: literal values for the ConfigMap, sensitive ones for the
/// Secret. Values that use instance variables go straight into `env` (see [`env`]).
/// Variables and their values, in order.
type Variables = Vec<(String, String)>;

fn split_environment(service: &Service) -> (Variables, Variables) {
    let mut config = Vec::new();
    let mut secret = Vec::new();
    for (name, value) in &service.environment {
        if value.sensitive {
            secret.push((name.clone(), value.expose().to_string()));
        } else if !value.template {
            config.push((name.clone(), value.expose().to_string()));
        }
    }
    (config, secret)
}

/// `${PORT}` → `$(PORT)`: Kubernetes expands earlier variables in `env` values and in
/// `command`/`args`; `$$` stays a literal `$`.
fn kube_refs(text: &str) -> String {
    let mut out = String::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if bytes[i] == b'$'
            && bytes.get(i + 1) == Some(&b'{')
            && let Some(end) = text[i + 2..].find('}')
        {
            out.push_str("$(");
            out.push_str(&text[i + 2..i + 2 + end]);
            out.push(')');
            i += end + 3;
            continue;
        }
        if bytes[i] == b'$' {
            let rest = &text[i + 1..];
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if len > 0 {
                out.push_str(&format!("$({})", &rest[..len]));
                i += 1 + len;
                continue;
            }
        }
        // A literal `$(`, as a shell's `$(cat …)`, is escaped so Kubernetes leaves it alone.
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'(') {
            out.push_str("$$");
            i += 1;
            continue;
        }
        let c = text[i..].chars().next().unwrap_or('$');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The instance variables tug gives an instance, as Kubernetes has them; then the values that
/// use them (after, so that `$(PORT)` expands).
fn env(stack: &Stack, name: &str, service: &Service) -> Vec<Value> {
    let mut env = vec![
        json!({ "name": "HOST", "value": "0.0.0.0" }),
        json!({ "name": "TUG_SERVICE", "value": name }),
        json!({ "name": "TUG_INSTANCE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }),
    ];
    if let Some(port) = container_port(service) {
        env.insert(1, json!({ "name": "PORT", "value": port.to_string() }));
    }
    for dependency in service.depends_on.keys() {
        if let Some(port) = stack.services.get(dependency).and_then(|d| d.port) {
            env.push(json!({
                "name": tug_stackfile::read::address_variable(dependency),
                "value": format!("{dependency}:{port}"),
            }));
        }
    }
    for (key, value) in &service.environment {
        if value.template && !value.sensitive {
            env.push(json!({ "name": key, "value": kube_refs(value.expose()) }));
        }
    }
    env
}

fn words(command: &Command) -> Vec<String> {
    match command {
        Command::Argv(words) => words.iter().map(|w| kube_refs(w.expose())).collect(),
        Command::Shell(text) => vec!["sh".into(), "-c".into(), kube_refs(text.expose())],
    }
}

fn pod_spec(
    stack: &Stack,
    name: &str,
    service: &Service,
    config: bool,
    secret: bool,
    notes: &mut Vec<String>,
) -> Value {
    let container = service.container.as_ref().expect("checked: every service has an image");
    let mut main = Map::new();
    main.insert("name".into(), json!(name));
    main.insert("image".into(), json!(container.image));
    main.insert(
        "imagePullPolicy".into(),
        json!(match container.pull {
            tug_stackfile::model::Pull::Always => "Always",
            tug_stackfile::model::Pull::Missing => "IfNotPresent",
            tug_stackfile::model::Pull::Never => "Never",
        }),
    );
    if let Some(entrypoint) = &container.entrypoint {
        main.insert("command".into(), json!(entrypoint.iter().map(|w| kube_refs(w.expose())).collect::<Vec<_>>()));
    }
    if let Some(command) = &service.command {
        main.insert("args".into(), json!(words(command)));
    }
    if let Some(dir) = &container.working_dir {
        main.insert("workingDir".into(), json!(dir));
    }
    if let Some(port) = container_port(service) {
        main.insert("ports".into(), json!([{ "name": port_name(service), "containerPort": port, "protocol": "TCP" }]));
    }
    let mut from = Vec::new();
    if config {
        from.push(json!({ "configMapRef": { "name": format!("{name}-env") } }));
    }
    if secret {
        from.push(json!({ "secretRef": { "name": format!("{name}-secrets") } }));
    }
    if !from.is_empty() {
        main.insert("envFrom".into(), json!(from));
    }
    main.insert("env".into(), json!(env(stack, name, service)));
    if let Some(probe) = &service.healthcheck {
        match probe_action(service, probe) {
            Some(action) => {
                main.insert("readinessProbe".into(), with_timing(action.clone(), probe.interval, probe));
                if let Some(startup) = startup_probe(action, probe) {
                    main.insert("startupProbe".into(), startup);
                }
            }
            None => notes.push(log_note("healthcheck")),
        }
    }
    if let Some(probe) = &service.liveness {
        match probe_action(service, probe) {
            Some(action) => {
                main.insert("livenessProbe".into(), with_timing(action, probe.interval, probe));
            }
            None => notes.push(log_note("liveness")),
        }
    }
    let mut resources = Map::new();
    if let Some(memory) = service.resources.memory {
        resources.insert("memory".into(), json!(memory.0.to_string()));
    }
    if let Some(cpu) = service.resources.cpu {
        resources.insert("cpu".into(), json!(format!("{}m", (cpu * 1000.0).round() as u64)));
    }
    if !resources.is_empty() {
        // Requests equal to limits: the scheduler reserves what the service may use, and the
        // HPA's utilization has a base.
        main.insert("resources".into(), json!({ "requests": resources.clone(), "limits": resources }));
    }
    main.insert("securityContext".into(), security_context(service));
    let (volumes, mounts) = volumes(stack, name, service);
    if !mounts.is_empty() {
        main.insert("volumeMounts".into(), json!(mounts));
    }
    let mut pod = Map::new();
    let init = init_containers(stack, service);
    if !init.is_empty() {
        pod.insert("initContainers".into(), json!(init));
    }
    if service.depends_on.values().any(|c| *c == Condition::CompletedSuccessfully) {
        pod.insert("serviceAccountName".into(), json!(format!("{}-job-waiter", stack.name)));
    }
    pod.insert("containers".into(), json!([Value::Object(main)]));
    if service.kind == ServiceKind::Job {
        pod.insert("restartPolicy".into(), json!(if service.restart == Restart::No { "Never" } else { "OnFailure" }));
    }
    pod.insert("terminationGracePeriodSeconds".into(), json!(service.stop_grace_period.as_secs().max(1)));
    if !volumes.is_empty() {
        pod.insert("volumes".into(), json!(volumes));
    }
    pod.insert("securityContext".into(), json!({ "seccompProfile": { "type": "RuntimeDefault" } }));
    Value::Object(pod)
}

fn log_note(field: &str) -> String {
    format!("`{field}` is a log probe under tug: Kubernetes has no such probe, so the pod has none for it")
}

fn probe_action(service: &Service, probe: &Probe) -> Option<Value> {
    let port = container_port(service);
    Some(match &probe.check {
        Check::Http(path) => json!({ "httpGet": { "path": kube_refs(path.expose()), "port": port.unwrap_or(80) } }),
        Check::Tcp => json!({ "tcpSocket": { "port": port.unwrap_or(80) } }),
        Check::Exec(command) => json!({ "exec": { "command": exec_words(command) } }),
        Check::Log(_) => return None,
    })
}

/// An exec probe's words: Kubernetes does not expand `$(VAR)` there, so a probe that uses
/// instance variables runs through a shell, which expands them from the environment.
fn exec_words(command: &Command) -> Vec<String> {
    match command {
        Command::Argv(words) if words.iter().any(|w| w.template) => {
            let line: Vec<String> = words.iter().map(|w| w.expose().to_string()).collect();
            vec!["sh".into(), "-c".into(), line.join(" ")]
        }
        Command::Argv(words) => words.iter().map(|w| w.expose().to_string()).collect(),
        Command::Shell(text) => vec!["sh".into(), "-c".into(), text.expose().to_string()],
    }
}

fn seconds(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

fn with_timing(mut action: Value, period: std::time::Duration, probe: &Probe) -> Value {
    let object = action.as_object_mut().expect("a probe is an object");
    object.insert("periodSeconds".into(), json!(seconds(period)));
    object.insert("timeoutSeconds".into(), json!(seconds(probe.timeout)));
    object.insert("failureThreshold".into(), json!(probe.retries.max(1)));
    action
}

/// `start_period` is not a delay: failures in it do not count, and the first success ends it.
/// That is a startup probe tried every `start_interval` for `start_period`, then the retries.
fn startup_probe(action: Value, probe: &Probe) -> Option<Value> {
    if probe.start_period.is_zero() {
        return None;
    }
    let period = if probe.start_interval.is_zero() { probe.interval } else { probe.start_interval };
    let tries = (probe.start_period.as_secs_f64() / period.as_secs_f64().max(1.0)).ceil() as u32 + probe.retries.max(1);
    let mut startup = with_timing(action, period, probe);
    startup["failureThreshold"] = json!(tries);
    Some(startup)
}

/// The "restricted" Pod Security profile, as far as the service allows: no privilege
/// escalation, every capability dropped but those it adds, non-root when its user says so.
fn security_context(service: &Service) -> Value {
    let container = service.container.as_ref();
    let mut context = Map::new();
    context.insert("allowPrivilegeEscalation".into(), json!(false));
    let add: Vec<&String> = container.map(|c| c.cap_add.iter().filter(|c| *c != "ALL").collect()).unwrap_or_default();
    let mut capabilities = json!({ "drop": ["ALL"] });
    if !add.is_empty() {
        capabilities["add"] = json!(add);
    }
    context.insert("capabilities".into(), capabilities);
    if container.is_some_and(|c| c.read_only) {
        context.insert("readOnlyRootFilesystem".into(), json!(true));
    }
    if let Some(user) = &service.user {
        let mut parts = user.split(':');
        if let Some(uid) = parts.next().and_then(|u| u.parse::<u64>().ok()) {
            context.insert("runAsUser".into(), json!(uid));
            context.insert("runAsNonRoot".into(), json!(uid != 0));
            if let Some(gid) = parts.next().and_then(|g| g.parse::<u64>().ok()) {
                context.insert("runAsGroup".into(), json!(gid));
            }
        }
    }
    Value::Object(context)
}

fn volumes(stack: &Stack, name: &str, service: &Service) -> (Vec<Value>, Vec<Value>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let Some(container) = &service.container else { return (volumes, mounts) };
    for (i, mount) in container.volumes.iter().enumerate() {
        match mount {
            VolumeMount::Named { name: volume, target, read_only } => {
                let claim = if stack.volumes.get(volume).is_some_and(|v| v.external) {
                    volume.clone()
                } else {
                    format!("{}-{volume}", stack.name)
                };
                volumes.push(json!({ "name": format!("v-{volume}"), "persistentVolumeClaim": { "claimName": claim } }));
                mounts.push(json!({ "name": format!("v-{volume}"), "mountPath": target, "readOnly": read_only }));
            }
            VolumeMount::Bind { target, read_only, .. } => {
                // A folder of one machine means nothing in a cluster: an empty folder, said so.
                volumes.push(json!({ "name": format!("bind-{i}"), "emptyDir": {} }));
                mounts.push(json!({ "name": format!("bind-{i}"), "mountPath": target, "readOnly": read_only }));
            }
        }
    }
    for (i, tmpfs) in container.tmpfs.iter().enumerate() {
        let target = tmpfs.split(':').next().unwrap_or(tmpfs);
        volumes.push(json!({ "name": format!("tmpfs-{i}"), "emptyDir": { "medium": "Memory" } }));
        mounts.push(json!({ "name": format!("tmpfs-{i}"), "mountPath": target }));
    }
    if !service.secrets.is_empty() {
        let items: Vec<Value> = service.secrets.iter().map(|s| json!({ "key": s, "path": s, "mode": 0o400 })).collect();
        volumes
            .push(json!({ "name": "secrets", "secret": { "secretName": format!("{name}-secrets"), "items": items } }));
        mounts.push(json!({ "name": "secrets", "mountPath": "/run/secrets", "readOnly": true }));
    }
    (volumes, mounts)
}

/// `depends_on`, held as under tug: `started`/`healthy` wait until the dependency's Service
/// answers (a Service sends only to ready pods), `completed_successfully` until its Job is
/// complete.
fn init_containers(stack: &Stack, service: &Service) -> Vec<Value> {
    let mut out = Vec::new();
    for (dependency, condition) in &service.depends_on {
        let Some(dep) = stack.services.get(dependency) else { continue };
        let wait = format!("wait-for-{dependency}");
        let restricted = json!({
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "runAsNonRoot": true,
            "runAsUser": 65534,
        });
        match (condition, dep.kind, dep.port) {
            (Condition::CompletedSuccessfully, _, _) | (_, ServiceKind::Job, _) => out.push(json!({
                "name": wait,
                "image": KUBECTL_IMAGE,
                "command": ["kubectl", "wait", "--for=condition=complete", format!("job/{dependency}"), "--timeout=-1s"],
                "securityContext": restricted,
            })),
            (_, _, Some(port)) => out.push(json!({
                "name": wait,
                "image": WAIT_IMAGE,
                "command": ["sh", "-c", format!("until nc -z -w 2 {dependency} {port}; do sleep 1; done")],
                "securityContext": restricted,
            })),
            (_, _, None) => out.push(json!({
                "name": wait,
                "image": WAIT_IMAGE,
                "command": ["sh", "-c", format!("until nslookup {dependency} >/dev/null 2>&1; do sleep 1; done")],
                "securityContext": restricted,
            })),
        }
    }
    out
}

/// What an init container needs to wait for a Job: read Jobs, in this namespace only.
fn job_waiter_rbac(stack: &Stack) -> Vec<Manifest> {
    let name = format!("{}-job-waiter", stack.name);
    vec![
        Manifest::new(
            json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(stack, &name, &name) }),
        ),
        Manifest::new(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(stack, &name, &name),
            "rules": [{ "apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"] }],
        })),
        Manifest::new(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(stack, &name, &name),
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
            "subjects": [{ "kind": "ServiceAccount", "name": name }],
        })),
    ]
}

fn pvc(stack: &Stack, volume: &str) -> Manifest {
    let mut manifest = Manifest::new(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(stack, volume, &format!("{}-{volume}", stack.name)),
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
    }));
    manifest.comments.push("1Gi, the cluster's default storage class: size it for the data".into());
    manifest
}

fn hpa(stack: &Stack, name: &str, service: &Service, autoscale: &tug_stackfile::Autoscale, rollout: bool) -> Manifest {
    let mut metrics = Vec::new();
    let mut comments = Vec::new();
    if let Some(cpu) = autoscale.cpu {
        metrics.push(json!({ "type": "Resource", "resource": { "name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": cpu.0.round() as u64 } } }));
        if service.resources.cpu.is_none() {
            comments.push("CPU utilization is of the pods' CPU requests: set `resources.cpu`".to_string());
        }
    }
    if let Some(memory) = autoscale.memory {
        metrics.push(json!({ "type": "Resource", "resource": { "name": "memory", "target": {
            "type": "Utilization", "averageUtilization": memory.0.round() as u64 } } }));
        if service.resources.memory.is_none() {
            comments.push("memory utilization is of the pods' memory requests: set `resources.memory`".to_string());
        }
    }
    if let Some(rps) = autoscale.requests_per_second {
        metrics.push(json!({ "type": "Pods", "pods": {
            "metric": { "name": "http_requests_per_second" },
            "target": { "type": "AverageValue", "averageValue": format!("{}", rps) } } }));
        comments.push(
            "requests per second is a Pods metric: it needs a metrics adapter (such as prometheus-adapter) that \
             serves http_requests_per_second"
                .to_string(),
        );
    }
    let mut manifest = Manifest::new(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(stack, name, name),
        "spec": {
            "scaleTargetRef": if rollout {
                json!({ "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": name })
            } else {
                json!({ "apiVersion": "apps/v1", "kind": "Deployment", "name": name })
            },
            "minReplicas": autoscale.min.max(1),
            "maxReplicas": autoscale.max.max(autoscale.min).max(1),
            "metrics": metrics,
            "behavior": { "scaleDown": { "stabilizationWindowSeconds": autoscale.scale_down_stabilization.as_secs() } },
        },
    }));
    manifest.comments = comments;
    manifest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_variables_become_kubernetes_references() {
        assert_eq!(kube_refs("--port ${PORT}"), "--port $(PORT)");
        assert_eq!(kube_refs("$HOST:$PORT/x"), "$(HOST):$(PORT)/x");
        assert_eq!(kube_refs("cost $$5"), "cost $5");
        assert_eq!(kube_refs("a $ b"), "a $ b");
        assert_eq!(kube_refs("pw=$(cat /run/secrets/PW)"), "pw=$$(cat /run/secrets/PW)");
    }
}
