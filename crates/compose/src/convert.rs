//! The mapping from a merged Compose model to a tug stack: one function per Compose
//! field family, each writing tug's fields and a finding for whatever it chose or could
//! not carry over. Nothing is dropped without a finding.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use tug_stackfile::yaml::{Kind, Node};
use tug_stackfile::{Diagnostic, Span};

use crate::load::{Vars, keepable};
use crate::ports::{self, PortSpec};
use tug_stackfile::emit::{Map, Value};

pub struct Context<'a> {
    pub vars: &'a Vars,
    pub project_dir: &'a Path,
    pub output_dir: &'a Path,
    pub project_name: Option<&'a str>,
}

pub struct Converted {
    pub root: Map,
    pub findings: Vec<Diagnostic>,
    /// Secrets Compose read from files, to store in tug's secret store: (setting, file).
    pub secret_files: Vec<(String, PathBuf)>,
}

/// Compose service fields that have no tug equivalent, and why.
pub const REFUSED: &[(&str, &str)] = &[
    (
        "container_name",
        "tug names each instance's container itself; one fixed name would stop replicas and rolling deploys",
    ),
    ("hostname", "tug gives containers no fixed host name"),
    ("domainname", "tug gives containers no fixed domain name"),
    (
        "networks",
        "tug services reach each other through tug's addresses (`<SERVICE>_ADDR`, and their names for dependencies); networks and aliases are not needed",
    ),
    ("links", "services reach their dependencies by name; list them under `depends_on`"),
    ("external_links", "tug reaches only services of its own stack by name"),
    ("extra_hosts", "tug has no field for extra /etc/hosts entries"),
    ("dns", "tug has no DNS settings for containers"),
    ("dns_search", "tug has no DNS settings for containers"),
    ("dns_opt", "tug has no DNS settings for containers"),
    ("labels", "tug labels its containers itself (tug.project, tug.service, …)"),
    ("annotations", "tug has no annotations"),
    ("privileged", "tug does not run privileged containers; grant what is needed with `cap_add`"),
    ("devices", "tug passes no devices into containers"),
    ("device_cgroup_rules", "tug passes no devices into containers"),
    ("gpus", "tug passes no GPUs into containers"),
    ("ulimits", "tug sets no ulimits"),
    ("sysctls", "tug sets no sysctls"),
    ("pid", "tug gives every container its own pid namespace"),
    ("ipc", "tug gives every container its own IPC namespace"),
    ("shm_size", "tug has no `shm_size`; mount a tmpfs on /dev/shm instead"),
    ("stdin_open", "tug instances have no standard input; use `tug exec` for a shell"),
    ("tty", "tug instances have no terminal; use `tug exec` for a shell"),
    ("platform", "tug runs the engine's native platform"),
    ("runtime", "tug uses the engine's default runtime"),
    ("isolation", "tug uses the engine's default isolation"),
    ("cgroup", "tug places containers in the engine's default cgroup"),
    ("cgroup_parent", "tug places containers in the engine's default cgroup"),
    ("userns_mode", "tug uses the engine's default user namespace"),
    ("uts", "tug uses the engine's default UTS namespace"),
    ("storage_opt", "tug sets no storage options"),
    ("group_add", "tug has no supplementary groups; set `user: UID:GID`"),
    ("mac_address", "tug gives containers no fixed MAC address"),
    ("oom_kill_disable", "tug sets memory limits with `resources.memory` only"),
    ("oom_score_adj", "tug sets memory limits with `resources.memory` only"),
    ("mem_reservation", "tug sets limits, not reservations"),
    ("mem_swappiness", "tug sets memory limits with `resources.memory` only"),
    ("memswap_limit", "tug sets memory limits with `resources.memory` only"),
    ("cpu_shares", "tug sets CPU limits with `resources.cpu`"),
    ("cpu_quota", "tug sets CPU limits with `resources.cpu`"),
    ("cpu_period", "tug sets CPU limits with `resources.cpu`"),
    ("cpuset", "tug sets CPU limits with `resources.cpu`"),
    ("cpu_count", "tug sets CPU limits with `resources.cpu`"),
    ("cpu_percent", "tug sets CPU limits with `resources.cpu`"),
    ("blkio_config", "tug sets no block-IO limits"),
    ("pids_limit", "tug sets no pids limit"),
    ("volumes_from", "tug mounts named volumes by name; list them under `volumes`"),
    (
        "extends",
        "tug does not follow `extends`; merge the base service in by hand, or use an overlay file (`tug.<env>.yaml`)",
    ),
    ("develop", "tug has no file watching"),
    ("attach", "tug always keeps every instance's logs"),
    ("post_start", "tug has no lifecycle hooks on containers"),
    ("pre_stop", "tug has no lifecycle hooks on containers"),
    ("credential_spec", "a Windows-only field"),
    ("external_links", "tug reaches only services of its own stack by name"),
    ("use_api_socket", "tug does not hand the engine's socket to containers"),
    ("models", "tug has no model runners"),
    ("provider", "tug has no service providers"),
];

/// Official images' usual ports and protocols, for services that publish and expose
/// nothing yet are reached by name (`redis:6379`).
const KNOWN_IMAGES: &[(&str, u16, &str)] = &[
    ("postgres", 5432, "tcp"),
    ("mysql", 3306, "tcp"),
    ("mariadb", 3306, "tcp"),
    ("redis", 6379, "tcp"),
    ("valkey", 6379, "tcp"),
    ("memcached", 11211, "tcp"),
    ("mongo", 27017, "tcp"),
    ("rabbitmq", 5672, "tcp"),
    ("nats", 4222, "tcp"),
    ("zookeeper", 2181, "tcp"),
    ("cassandra", 9042, "tcp"),
    ("nginx", 80, "http"),
    ("httpd", 80, "http"),
    ("caddy", 80, "http"),
    ("traefik", 80, "http"),
    ("grafana", 3000, "http"),
    ("prometheus", 9090, "http"),
    ("alertmanager", 9093, "http"),
    ("elasticsearch", 9200, "http"),
    ("kibana", 5601, "http"),
    ("minio", 9000, "http"),
    ("node-exporter", 9100, "http"),
    ("cadvisor", 8080, "http"),
    ("loki", 3100, "http"),
    ("jaeger", 16686, "http"),
];

/// Ports on which servers conventionally speak HTTP.
const HTTP_PORTS: &[u16] = &[80, 443, 3000, 4000, 5000, 8000, 8008, 8080, 8081, 8443, 8888, 9000, 9090];

pub fn convert(root: &Node, cx: &Context) -> Converted {
    let mut c = Converter {
        cx,
        findings: Vec::new(),
        names: HashMap::new(),
        ports: BTreeSet::new(),
        volumes: Map::default(),
        settings: Map::default(),
        secret_files: Vec::new(),
        top_secrets: HashMap::new(),
        top_configs: HashMap::new(),
    };
    let mut out = Map::default();
    out.insert("name", Value::str(c.project_name(root)));
    c.top_level(root);
    let services = c.services(root);
    if !c.settings.is_empty() {
        let settings = std::mem::take(&mut c.settings);
        out.insert("settings", Value::Map(settings));
    }
    if !c.volumes.is_empty() {
        let volumes = std::mem::take(&mut c.volumes);
        out.insert("volumes", Value::Map(volumes));
    }
    out.insert("services", Value::Map(services));
    Converted { root: out, findings: c.findings, secret_files: c.secret_files }
}

struct Converter<'a> {
    cx: &'a Context<'a>,
    findings: Vec<Diagnostic>,
    /// Compose service name to tug service name.
    names: HashMap<String, String>,
    ports: BTreeSet<u16>,
    volumes: Map,
    settings: Map,
    secret_files: Vec<(String, PathBuf)>,
    /// Top-level `secrets:`: name to the tug setting it became.
    top_secrets: HashMap<String, String>,
    /// Top-level `configs:`: name to its file, as the stack file writes it.
    top_configs: HashMap<String, String>,
}

/// What one service is, decided before any is written.
struct Facts {
    depended_on: bool,
    awaited_to_complete: bool,
}

impl Converter<'_> {
    fn refuse(&mut self, span: Span, path: &str, message: impl Into<String>) {
        self.findings.push(Diagnostic::warning("not-imported", Some(span), path, message));
    }

    fn chose(&mut self, span: Span, path: &str, message: impl Into<String>) {
        self.findings.push(Diagnostic::note("import-choice", Some(span), path, message));
    }

    fn invalid(&mut self, span: Span, path: &str, message: impl Into<String>) {
        self.findings.push(Diagnostic::error("compose-invalid", Some(span), path, message));
    }

    /// A scalar as Compose reads it, variables substituted.
    fn value(&mut self, node: &Node, path: &str) -> Option<String> {
        let raw = match &node.kind {
            Kind::Scalar { text, .. } => text,
            Kind::Null => return None,
            _ => {
                self.invalid(node.span, path, format!("expected a single value, found {}", node.type_name()));
                return None;
            }
        };
        match self.cx.vars.resolve(raw) {
            Ok(resolved) => {
                for name in resolved.unset {
                    self.chose(node.span, path, format!("`{name}` is not set: read as empty, as Compose does"));
                }
                Some(resolved.text)
            }
            Err(message) => {
                self.invalid(node.span, path, message);
                None
            }
        }
    }

    /// Free text (commands, environment values, images): its `${VAR}` references are kept
    /// when tug resolves them the same way at run time, so `.env` stays the place to change them.
    fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        let Kind::Scalar { text: raw, .. } = &node.kind else {
            return self.value(node, path);
        };
        let beside = self.cx.output_dir.join(".env");
        let env_beside = self.cx.vars.env_files.iter().find(|f| same_file(f, &beside)).map(PathBuf::as_path);
        if keepable(raw, self.cx.vars, env_beside) {
            return Some(raw.clone());
        }
        // A secret's value is never written into the stack file: its reference stays, and tug
        // needs the variable where it runs.
        let secrets: Vec<String> = tug_stackfile::interp::references(raw)
            .into_iter()
            .filter(|name| tug_stackfile::service::is_sensitive_name(name))
            .collect();
        if !secrets.is_empty() {
            self.refuse(
                node.span,
                path,
                format!(
                    "{} kept as a reference, never its value: set it in the environment or in a .env beside the \
                     stack file before `tug up` (or make it a `type: secret` setting)",
                    secrets.iter().map(|n| format!("`${{{n}}}`")).collect::<Vec<_>>().join(", ")
                ),
            );
            return Some(raw.clone());
        }
        self.value(node, path).map(|v| v.replace('$', "$$"))
    }

    fn number(&mut self, node: &Node, path: &str) -> Option<u64> {
        let text = self.value(node, path)?;
        match text.trim().parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.invalid(node.span, path, format!("`{text}` is not a whole number"));
                None
            }
        }
    }

    fn words(&mut self, node: &Node, path: &str) -> Option<Value> {
        match &node.kind {
            Kind::Seq(items) => {
                let words: Vec<String> =
                    items.iter().enumerate().filter_map(|(i, n)| self.text(n, &format!("{path}[{i}]"))).collect();
                Some(Value::strings(words))
            }
            Kind::Null => None,
            _ => self.text(node, path).map(Value::Str),
        }
    }

    fn project_name(&mut self, root: &Node) -> String {
        if let Some(name) = self.cx.project_name {
            return dns_label(name);
        }
        if let Some(n) = root.get("name")
            && let Some(name) = self.value(n, "name")
        {
            return dns_label(&name);
        }
        let dir = std::path::absolute(self.cx.project_dir).unwrap_or_else(|_| self.cx.project_dir.to_path_buf());
        dns_label(&dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
    }

    fn top_level(&mut self, root: &Node) {
        let Kind::Map(entries) = &root.kind else { return };
        for (key, value) in entries {
            let name = key.key_text().unwrap_or_default();
            match name {
                "name" | "services" => {}
                "version" => self.chose(key.span, "version", "`version` is obsolete (Compose ignores it too)"),
                "volumes" => self.top_volumes(value),
                "secrets" => self.top_secrets(value),
                "configs" => self.top_configs(value),
                "networks" => self.refuse(
                    key.span,
                    "networks",
                    "networks are not carried over: tug services reach each other through tug's addresses",
                ),
                "include" => self.refuse(
                    key.span,
                    "include",
                    "`include` is not followed: import the included files by listing them after this one",
                ),
                _ if name.starts_with("x-") => {}
                _ => self.refuse(key.span, name, format!("`{name}` is not a Compose top-level field")),
            }
        }
    }

    fn top_volumes(&mut self, node: &Node) {
        let Kind::Map(entries) = &node.kind else { return };
        for (key, value) in entries {
            let name = key.key_text().unwrap_or_default().to_string();
            let path = format!("volumes.{name}");
            let mut volume = Map::default();
            if let Kind::Map(fields) = &value.kind {
                for (k, v) in fields {
                    match k.key_text().unwrap_or_default() {
                        "external" => {
                            if self.value(v, &format!("{path}.external")).as_deref() == Some("true") {
                                volume.insert("external", Value::bool(true));
                            }
                        }
                        "driver" if self.value(v, &path).as_deref() == Some("local") => {}
                        "name" => self.refuse(
                            k.span,
                            &format!("{path}.name"),
                            "tug names the volume `<project>_<volume>` itself; a custom name is not carried over",
                        ),
                        other if other.starts_with("x-") => {}
                        other => self.refuse(
                            k.span,
                            &format!("{path}.{other}"),
                            format!(
                                "`{other}` is not carried over: tug creates local volumes with the engine's defaults"
                            ),
                        ),
                    }
                }
            }
            self.volumes.insert(name, Value::Map(volume));
        }
    }

    fn top_secrets(&mut self, node: &Node) {
        let Kind::Map(entries) = &node.kind else { return };
        for (key, value) in entries {
            let name = key.key_text().unwrap_or_default().to_string();
            let path = format!("secrets.{name}");
            let setting = env_name(&name);
            if setting != name {
                self.chose(
                    key.span,
                    &path,
                    format!("the secret is the setting `{setting}`; containers read it at /run/secrets/{setting}"),
                );
            }
            let mut spec = Map::default();
            spec.insert("type", Value::str("secret"));
            if let Some(file) = value.get("file") {
                if let Some(text) = self.value(file, &format!("{path}.file")) {
                    let file_path = self.cx.project_dir.join(&text);
                    self.secret_files.push((setting.clone(), file_path));
                    spec.insert("description", Value::str(format!("from {text}, stored by `tug import`")));
                }
            } else if let Some(var) = value.get("environment") {
                if let Some(var) = self.value(var, &format!("{path}.environment"))
                    && var != setting
                {
                    spec.insert("value", Value::str(format!("${{{var}}}")));
                }
            } else {
                self.refuse(
                    key.span,
                    &path,
                    "only secrets from a `file` or an `environment` variable are carried over; set it with `tug secrets set`",
                );
            }
            self.settings.insert(setting.clone(), Value::Map(spec));
            self.top_secrets.insert(name, setting);
        }
    }

    fn top_configs(&mut self, node: &Node) {
        let Kind::Map(entries) = &node.kind else { return };
        for (key, value) in entries {
            let name = key.key_text().unwrap_or_default().to_string();
            let path = format!("configs.{name}");
            match value.get("file").and_then(|f| self.value(f, &format!("{path}.file"))) {
                Some(file) => {
                    let file = self.relative(&file);
                    self.top_configs.insert(name, file);
                }
                None => self.refuse(
                    key.span,
                    &path,
                    "only configs from a `file` are carried over (as a read-only bind mount)",
                ),
            }
        }
    }

    fn services(&mut self, root: &Node) -> Map {
        let mut out = Map::default();
        let Some(Kind::Map(services)) = root.get("services").map(|s| &s.kind) else {
            return out;
        };
        // Names first: dependencies refer to services written later.
        let mut taken = BTreeSet::new();
        for (key, _) in services {
            let compose = key.key_text().unwrap_or_default().to_string();
            let mut name = dns_label(&compose);
            while taken.contains(&name) {
                name = format!("{name}-2");
            }
            if name != compose {
                self.chose(
                    key.span,
                    &format!("services.{compose}"),
                    format!("the service is named `{name}` in tug (a DNS name): dependents reach it by that name"),
                );
            }
            taken.insert(name.clone());
            self.names.insert(compose, name);
        }
        let mut facts: HashMap<String, Facts> = HashMap::new();
        for (key, _) in services {
            facts.insert(
                key.key_text().unwrap_or_default().to_string(),
                Facts { depended_on: false, awaited_to_complete: false },
            );
        }
        for (_, service) in services {
            if let Some(Kind::Map(deps)) = service.get("depends_on").map(|d| &d.kind) {
                for (dep, spec) in deps {
                    let condition = spec.get("condition").and_then(Node::key_text).unwrap_or("service_started");
                    if let Some(f) = facts.get_mut(dep.key_text().unwrap_or_default()) {
                        f.depended_on = true;
                        f.awaited_to_complete |= condition == "service_completed_successfully";
                    }
                }
            }
        }
        for (key, service) in services {
            let compose = key.key_text().unwrap_or_default().to_string();
            let name = self.names[&compose].clone();
            let path = format!("services.{compose}");
            if !matches!(service.kind, Kind::Map(_)) {
                self.invalid(service.span, &path, "a service must be a mapping");
                continue;
            }
            let converted = self.service(service, &path, &name, &facts[&compose]);
            out.insert(name, Value::Map(converted));
        }
        out
    }

    fn service(&mut self, node: &Node, path: &str, name: &str, facts: &Facts) -> Map {
        let mut s = Map::default();
        let Kind::Map(fields) = &node.kind else { return s };
        let field_path = |k: &str| format!("{path}.{k}");
        // What comes in one piece: the rest is read field by field below.
        let image = node.get("image").and_then(|n| self.text(n, &field_path("image")));
        let restart = node.get("restart").and_then(|n| self.value(n, &field_path("restart")));
        let network_mode = node.get("network_mode").and_then(|n| self.value(n, &field_path("network_mode")));
        let has_ports = node.get("ports").is_some() || node.get("expose").is_some();
        let job = facts.awaited_to_complete || (restart.as_deref() == Some("no") && !has_ports);
        if let Some(image) = &image {
            s.insert("image", Value::Str(image.clone()));
        }
        if job {
            let entry = s.insert("kind", Value::str("job"));
            entry.comment(if facts.awaited_to_complete {
                "a one-shot: another service waits for it to complete successfully"
            } else {
                "a one-shot: Compose never restarts it (`restart: \"no\"`) and it serves no port"
            });
        }
        for (key, value) in fields {
            let k = key.key_text().unwrap_or_default();
            let p = field_path(k);
            match k {
                "image" | "ports" | "expose" | "network_mode" => {}
                "build" => self.build(value, &p, &mut s),
                "command" => {
                    if let Some(words) = self.words(value, &p) {
                        s.insert("command", words);
                    }
                }
                "entrypoint" => {
                    if let Some(words) = self.words(value, &p) {
                        s.insert("entrypoint", words);
                    }
                }
                "environment" => self.environment(value, &p, &mut s),
                "env_file" => self.env_file(value, &p, &mut s),
                "volumes" => self.volumes(value, &p, name, &mut s),
                "tmpfs" => {
                    let list = self.list(value, &p);
                    if !list.is_empty() {
                        s.insert("tmpfs", Value::strings(list));
                    }
                }
                "depends_on" => self.depends_on(value, &p, &mut s),
                "healthcheck" => self.healthcheck(value, &p, &mut s),
                "restart" => self.restart(key.span, &p, restart.as_deref(), job, &mut s),
                "deploy" => self.deploy(value, &p, &mut s),
                "scale" => {
                    if let Some(n) = self.number(value, &p) {
                        s.insert("replicas", Value::int(n));
                    }
                }
                "mem_limit" => {
                    if let Some(v) = self.value(value, &p) {
                        resources(&mut s).insert("memory", Value::Str(memory(&v)));
                    }
                }
                "cpus" => {
                    if let Some(v) = self.value(value, &p) {
                        resources(&mut s).insert("cpu", Value::Plain(v));
                    }
                }
                "profiles" => {
                    let list = self.list(value, &p);
                    s.insert("profiles", Value::strings(list));
                }
                "user" | "working_dir" | "stop_signal" | "stop_grace_period" => {
                    if let Some(v) = self.text(value, &p) {
                        s.insert(k, Value::Str(v));
                    }
                }
                "read_only" | "init" => {
                    if let Some(v) = self.value(value, &p) {
                        s.insert(k, Value::Plain(v));
                    }
                }
                "cap_add" | "cap_drop" | "security_opt" => {
                    let list = self.list(value, &p);
                    s.insert(k, Value::strings(list));
                }
                "pull_policy" => self.pull_policy(value, &p, &mut s),
                "logging" => self.logging(value, &p, &mut s),
                "secrets" => self.service_secrets(value, &p, &mut s),
                "configs" => self.service_configs(value, &p, &mut s),
                _ if k.starts_with("x-") => {}
                _ => match REFUSED.iter().find(|(field, _)| *field == k) {
                    Some((_, why)) => self.refuse(key.span, &p, format!("`{k}` is not carried over: {why}")),
                    None => self.refuse(key.span, &p, format!("`{k}` is not a Compose service field tug knows")),
                },
            }
        }
        self.network(node, path, image.as_deref(), network_mode.as_deref(), facts, &mut s);
        s
    }

    /// A scalar or a list of scalars, as strings.
    fn list(&mut self, node: &Node, path: &str) -> Vec<String> {
        match &node.kind {
            Kind::Seq(items) => {
                items.iter().enumerate().filter_map(|(i, n)| self.text(n, &format!("{path}[{i}]"))).collect()
            }
            _ => self.text(node, path).into_iter().collect(),
        }
    }

    fn build(&mut self, node: &Node, path: &str, s: &mut Map) {
        let Kind::Map(fields) = &node.kind else { return };
        let mut build = Map::default();
        for (key, value) in fields {
            let k = key.key_text().unwrap_or_default();
            let p = format!("{path}.{k}");
            match k {
                "context" => {
                    if let Some(v) = self.value(value, &p) {
                        let v = if is_url(&v) { v } else { self.relative(&v) };
                        build.insert("context", Value::Str(v));
                    }
                }
                "dockerfile" | "target" => {
                    if let Some(v) = self.value(value, &p) {
                        build.insert(k, Value::Str(v));
                    }
                }
                "args" => {
                    let mut args = Map::default();
                    if let Kind::Map(entries) = &value.kind {
                        for (name, v) in entries {
                            let arg = name.key_text().unwrap_or_default();
                            let ap = format!("{p}.{arg}");
                            let v =
                                if v.is_null() { self.cx.vars.get(arg).map(str::to_string) } else { self.text(v, &ap) };
                            if let Some(v) = v {
                                args.insert(arg, Value::Str(v));
                            }
                        }
                    }
                    build.insert("args", Value::Map(args));
                }
                _ if k.starts_with("x-") => {}
                _ => self.refuse(
                    key.span,
                    &p,
                    format!("`build.{k}` is not carried over: tug builds with context, dockerfile, args and target"),
                ),
            }
        }
        // `build: ./dir` stays short.
        if build.entries.len() == 1
            && let Some(Value::Str(context)) = build.get("context")
        {
            s.insert("build", Value::Str(context.clone()));
        } else {
            s.insert("build", Value::Map(build));
        }
    }

    fn environment(&mut self, node: &Node, path: &str, s: &mut Map) {
        let Kind::Map(entries) = &node.kind else {
            self.invalid(node.span, path, "`environment` must be a mapping or a list of KEY=VALUE");
            return;
        };
        let mut env = Map::default();
        for (key, value) in entries {
            let name = key.key_text().unwrap_or_default();
            let p = format!("{path}.{name}");
            if value.is_null() {
                // `- NAME` alone: the value comes from where Compose runs.
                if self.cx.vars.get(name).is_some() {
                    env.insert(name, Value::Str(format!("${{{name}}}")));
                } else {
                    self.chose(
                        key.span,
                        &p,
                        format!("`{name}` is not set here, so Compose would leave it out; so does tug"),
                    );
                }
                continue;
            }
            if let Some(v) = self.text(value, &p) {
                env.insert(name, Value::Str(v));
            }
        }
        if !env.is_empty() {
            s.insert("environment", Value::Map(env));
        }
    }

    fn env_file(&mut self, node: &Node, path: &str, s: &mut Map) {
        let items: Vec<&Node> = match &node.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut files = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let p = format!("{path}[{i}]");
            let (file, required) = match &item.kind {
                Kind::Map(_) => {
                    let file = item.get("path").and_then(|n| self.value(n, &format!("{p}.path")));
                    let required = item.get("required").and_then(|n| self.value(n, &format!("{p}.required")));
                    if item.get("format").is_some() {
                        self.refuse(item.span, &format!("{p}.format"), "only the default env file format is read");
                    }
                    (file, required.as_deref() != Some("false"))
                }
                _ => (self.value(item, &p), true),
            };
            let Some(file) = file else { continue };
            let exists = self.cx.project_dir.join(&file).is_file();
            if !exists && !required {
                self.chose(item.span, &p, format!("`{file}` does not exist and is optional: left out"));
                continue;
            }
            if !exists {
                self.invalid(item.span, &p, format!("the env file `{file}` does not exist"));
            }
            files.push(self.relative(&file));
        }
        if !files.is_empty() {
            s.insert("env_file", Value::strings(files));
        }
    }

    fn volumes(&mut self, node: &Node, path: &str, service: &str, s: &mut Map) {
        let Kind::Seq(items) = &node.kind else {
            self.invalid(node.span, path, "`volumes` must be a list");
            return;
        };
        let mut mounts = Vec::new();
        let mut tmpfs = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let (kind, source, target, read_only, span) = match &item.kind {
                Kind::Map(_) => {
                    let get = |c: &mut Self, f: &str| item.get(f).and_then(|n| c.value(n, &format!("{p}.{f}")));
                    let kind = get(self, "type").unwrap_or_else(|| "volume".into());
                    let source = get(self, "source");
                    let Some(target) = get(self, "target") else {
                        self.invalid(item.span, &p, "a volume needs a `target`");
                        continue;
                    };
                    let read_only = get(self, "read_only").as_deref() == Some("true");
                    for extra in ["volume", "bind", "image", "consistency"] {
                        if let Some(n) = item.get(extra) {
                            self.refuse(
                                n.span,
                                &format!("{p}.{extra}"),
                                format!("`{extra}` options are not carried over"),
                            );
                        }
                    }
                    if kind == "tmpfs" {
                        let size = item.get("tmpfs").and_then(|t| t.get("size")).and_then(|n| self.value(n, &p));
                        tmpfs.push(match size {
                            Some(size) => format!("{target}:size={size}"),
                            None => target,
                        });
                        continue;
                    }
                    if kind != "volume" && kind != "bind" {
                        self.refuse(
                            item.span,
                            &p,
                            format!("a `{kind}` mount is not carried over: tug mounts volumes, folders and tmpfs"),
                        );
                        continue;
                    }
                    (kind, source, target, read_only, item.span)
                }
                _ => {
                    let Some(text) = self.value(item, &p) else { continue };
                    let parts: Vec<&str> = text.split(':').collect();
                    let (source, target, mode) = match parts.as_slice() {
                        [t] => (None, t.to_string(), ""),
                        [s, t] => (Some(s.to_string()), t.to_string(), ""),
                        [s, t, m] => (Some(s.to_string()), t.to_string(), *m),
                        _ => {
                            self.invalid(item.span, &p, format!("`{text}` is not SOURCE:TARGET[:MODE]"));
                            continue;
                        }
                    };
                    let mut read_only = false;
                    for option in mode.split(',').filter(|o| !o.is_empty()) {
                        match option {
                            "ro" => read_only = true,
                            "rw" | "cached" | "delegated" | "consistent" | "nocopy" => {}
                            other => {
                                self.refuse(item.span, &p, format!("the mount option `{other}` is not carried over"))
                            }
                        }
                    }
                    let kind = if source.as_deref().is_some_and(|s| s.starts_with(['.', '/', '~'])) {
                        "bind"
                    } else {
                        "volume"
                    };
                    (kind.to_string(), source, target, read_only, item.span)
                }
            };
            let source = match (kind.as_str(), source) {
                ("bind", Some(source)) => {
                    let source = if let Some(rest) = source.strip_prefix("~/") {
                        match self.cx.vars.get("HOME") {
                            Some(home) => format!("{home}/{rest}"),
                            None => source,
                        }
                    } else {
                        source
                    };
                    self.relative(&source)
                }
                ("bind", None) => {
                    self.invalid(span, &p, "a bind mount needs a `source`");
                    continue;
                }
                (_, Some(source)) => {
                    if self.volumes.get(&source).is_none() {
                        self.volumes.insert(source.clone(), Value::Map(Map::default()));
                    }
                    source
                }
                (_, None) => {
                    // Compose makes an anonymous volume per container; tug keeps data in named ones.
                    let name = dns_label(&format!("{service}-{}", target.trim_matches('/').replace('/', "-")));
                    self.chose(span, &p, format!("the anonymous volume on `{target}` is the named volume `{name}`"));
                    self.volumes.insert(name.clone(), Value::Map(Map::default()));
                    name
                }
            };
            mounts.push(if read_only { format!("{source}:{target}:ro") } else { format!("{source}:{target}") });
        }
        if !mounts.is_empty() {
            s.insert("volumes", Value::strings(mounts));
        }
        if !tmpfs.is_empty() {
            let mut all = match s.get("tmpfs") {
                Some(Value::Seq(items)) => items.clone(),
                _ => Vec::new(),
            };
            all.extend(tmpfs.into_iter().map(Value::Str));
            s.insert("tmpfs", Value::Seq(all));
        }
    }

    fn depends_on(&mut self, node: &Node, path: &str, s: &mut Map) {
        let Kind::Map(entries) = &node.kind else {
            self.invalid(node.span, path, "`depends_on` must be a list or a mapping");
            return;
        };
        let mut deps = Map::default();
        for (key, spec) in entries {
            let dep = key.key_text().unwrap_or_default();
            let p = format!("{path}.{dep}");
            let name = self.names.get(dep).cloned().unwrap_or_else(|| dep.to_string());
            let condition = spec.get("condition").and_then(|n| self.value(n, &format!("{p}.condition")));
            let condition = match condition.as_deref().unwrap_or("service_started") {
                "service_started" => "started",
                "service_healthy" => "healthy",
                "service_completed_successfully" => "completed_successfully",
                other => {
                    self.invalid(spec.span, &p, format!("`{other}` is not a depends_on condition"));
                    continue;
                }
            };
            let required = spec.get("required").and_then(|n| self.value(n, &format!("{p}.required")));
            if let Some(n) = spec.get("restart") {
                self.refuse(
                    n.span,
                    &format!("{p}.restart"),
                    "`restart` is not carried over: tug restarts a dependent only when it fails",
                );
            }
            if required.as_deref() == Some("false") {
                let mut long = Map::default();
                long.insert("condition", Value::str(condition));
                long.insert("required", Value::bool(false));
                deps.insert(name, Value::Map(long));
            } else {
                deps.insert(name, Value::str(condition));
            }
        }
        if !deps.is_empty() {
            s.insert("depends_on", Value::Map(deps));
        }
    }

    fn healthcheck(&mut self, node: &Node, path: &str, s: &mut Map) {
        let disabled =
            node.get("disable").and_then(|n| self.value(n, &format!("{path}.disable"))).as_deref() == Some("true");
        let test = node.get("test");
        let exec = match test.map(|t| &t.kind) {
            _ if disabled => None,
            Some(Kind::Seq(items)) => {
                let words: Vec<String> =
                    items.iter().enumerate().filter_map(|(i, n)| self.text(n, &format!("{path}.test[{i}]"))).collect();
                match words.split_first() {
                    Some((first, rest)) if first == "CMD" => Some(Value::strings(rest.iter().cloned())),
                    Some((first, rest)) if first == "CMD-SHELL" => {
                        Some(Value::strings(["sh".to_string(), "-c".to_string(), rest.join(" ")]))
                    }
                    Some((first, _)) if first == "NONE" => None,
                    _ => {
                        self.invalid(
                            node.span,
                            &format!("{path}.test"),
                            "a test list starts with CMD, CMD-SHELL or NONE",
                        );
                        None
                    }
                }
            }
            Some(_) => test
                .and_then(|t| self.text(t, &format!("{path}.test")))
                .map(|cmd| Value::strings(["sh".to_string(), "-c".to_string(), cmd])),
            None => None,
        };
        let Some(exec) = exec else {
            if disabled || test.is_some() {
                self.chose(
                    node.span,
                    path,
                    "the image's healthcheck is off, as asked; tug never runs the engine's own",
                );
            }
            return;
        };
        let mut probe = Map::default();
        probe.insert("exec", exec);
        for field in ["interval", "timeout", "start_period", "start_interval"] {
            if let Some(n) = node.get(field)
                && let Some(v) = self.value(n, &format!("{path}.{field}"))
            {
                match tug_stackfile::units::parse_duration(&v) {
                    Ok(_) => {
                        probe.insert(field, Value::Str(v));
                    }
                    Err(e) => self.invalid(n.span, &format!("{path}.{field}"), e),
                }
            }
        }
        if let Some(n) = node.get("retries")
            && let Some(v) = self.number(n, &format!("{path}.retries"))
        {
            probe.insert("retries", Value::int(v));
        }
        s.insert("healthcheck", Value::Map(probe));
    }

    fn restart(&mut self, span: Span, path: &str, restart: Option<&str>, job: bool, s: &mut Map) {
        let Some(restart) = restart else { return };
        let (value, note) = match restart {
            "no" if job => return,
            "no" => ("no", None),
            "always" => ("always", None),
            "unless-stopped" => ("always", Some("`unless-stopped` is `always`: tug stops a service only when told to")),
            "on-failure" => ("on-failure", None),
            other if other.starts_with("on-failure:") => (
                "on-failure",
                Some("tug restarts with a growing back-off and no retry limit; the count is not carried over"),
            ),
            other => {
                self.invalid(span, path, format!("`{other}` is not a restart policy"));
                return;
            }
        };
        if let Some(note) = note {
            self.chose(span, path, note);
        }
        s.insert("restart", Value::str(value));
    }

    fn deploy(&mut self, node: &Node, path: &str, s: &mut Map) {
        let Kind::Map(fields) = &node.kind else { return };
        for (key, value) in fields {
            let k = key.key_text().unwrap_or_default();
            let p = format!("{path}.{k}");
            match k {
                "replicas" => {
                    if let Some(n) = self.number(value, &p) {
                        s.insert("replicas", Value::int(n));
                    }
                }
                "resources" => {
                    let Kind::Map(kinds) = &value.kind else { continue };
                    for (kind, limits) in kinds {
                        let kp = format!("{p}.{}", kind.key_text().unwrap_or_default());
                        if kind.key_text() != Some("limits") {
                            self.refuse(kind.span, &kp, "tug sets limits only; reservations are not carried over");
                            continue;
                        }
                        let Kind::Map(limits) = &limits.kind else { continue };
                        for (limit, v) in limits {
                            let lp = format!("{kp}.{}", limit.key_text().unwrap_or_default());
                            match limit.key_text().unwrap_or_default() {
                                "cpus" => {
                                    if let Some(v) = self.value(v, &lp) {
                                        resources(s).insert("cpu", Value::Plain(v));
                                    }
                                }
                                "memory" => {
                                    if let Some(v) = self.value(v, &lp) {
                                        resources(s).insert("memory", Value::Str(memory(&v)));
                                    }
                                }
                                other => self.refuse(limit.span, &lp, format!("the `{other}` limit is not carried over")),
                            }
                        }
                    }
                }
                "restart_policy" => {
                    let condition = value.get("condition").and_then(|n| self.value(n, &format!("{p}.condition")));
                    let restart = match condition.as_deref() {
                        Some("none") => "no",
                        Some("on-failure") => "on-failure",
                        _ => "always",
                    };
                    if s.get("restart").is_none() {
                        s.insert("restart", Value::str(restart));
                    }
                    if value.get("max_attempts").is_some() || value.get("delay").is_some() || value.get("window").is_some() {
                        self.chose(key.span, &p, "tug restarts with its own growing back-off; delay, attempts and window are not carried over");
                    }
                }
                "update_config" | "rollback_config" => self.refuse(
                    key.span,
                    &p,
                    format!("`{k}` is not carried over: tug rolls out with `deploy.strategy` (rolling, blue_green, canary, recreate) and rolls back by itself"),
                ),
                _ if k.starts_with("x-") => {}
                _ => self.refuse(key.span, &p, format!("`deploy.{k}` is not carried over: tug runs on one host, or several sharing a registry")),
            }
        }
    }

    fn pull_policy(&mut self, node: &Node, path: &str, s: &mut Map) {
        let Some(policy) = self.value(node, path) else { return };
        let pull = match policy.as_str() {
            "always" => "always",
            "missing" | "if_not_present" => "missing",
            "never" => "never",
            "build" => {
                self.chose(node.span, path, "tug builds whenever `build` is set; `pull_policy: build` is implied");
                return;
            }
            other => {
                self.refuse(
                    node.span,
                    path,
                    format!("`pull_policy: {other}` is not carried over: tug pulls always, missing or never"),
                );
                return;
            }
        };
        s.insert("pull", Value::str(pull));
    }

    fn logging(&mut self, node: &Node, path: &str, s: &mut Map) {
        let driver = node.get("driver").and_then(|n| self.value(n, &format!("{path}.driver")));
        if let Some(driver) = driver.as_deref()
            && !matches!(driver, "json-file" | "local")
        {
            self.refuse(
                node.span,
                path,
                format!("the `{driver}` log driver is not carried over: tug keeps logs in its own files (`tug logs`)"),
            );
            return;
        }
        let mut logs = Map::default();
        if let Some(Kind::Map(options)) = node.get("options").map(|o| &o.kind) {
            for (key, value) in options {
                let k = key.key_text().unwrap_or_default();
                let p = format!("{path}.options.{k}");
                match k {
                    "max-size" => {
                        if let Some(v) = self.value(value, &p) {
                            logs.insert("max_size", Value::Str(v));
                        }
                    }
                    "max-file" => {
                        if let Some(n) = self.number(value, &p) {
                            logs.insert("max_files", Value::int(n));
                        }
                    }
                    other => self.refuse(key.span, &p, format!("the log option `{other}` is not carried over")),
                }
            }
        }
        if !logs.is_empty() {
            s.insert("logs", Value::Map(logs));
        }
    }

    fn service_secrets(&mut self, node: &Node, path: &str, s: &mut Map) {
        let Kind::Seq(items) = &node.kind else { return };
        let mut names = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let source = match &item.kind {
                Kind::Map(_) => {
                    for extra in ["target", "uid", "gid", "mode"] {
                        if let Some(n) = item.get(extra) {
                            self.refuse(n.span, &format!("{p}.{extra}"), format!("`{extra}` is not carried over: tug writes /run/secrets/<NAME>, mode 0400, owned by the service's user"));
                        }
                    }
                    item.get("source").and_then(|n| self.value(n, &format!("{p}.source")))
                }
                _ => self.value(item, &p),
            };
            let Some(source) = source else { continue };
            match self.top_secrets.get(&source) {
                Some(setting) => names.push(setting.clone()),
                None => self.invalid(
                    item.span,
                    &p,
                    format!("the secret `{source}` is not defined under the top-level `secrets:`"),
                ),
            }
        }
        if !names.is_empty() {
            s.insert("secrets", Value::strings(names));
        }
    }

    fn service_configs(&mut self, node: &Node, path: &str, s: &mut Map) {
        let Kind::Seq(items) = &node.kind else { return };
        let mut mounts = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let (source, target) = match &item.kind {
                Kind::Map(_) => (
                    item.get("source").and_then(|n| self.value(n, &format!("{p}.source"))),
                    item.get("target").and_then(|n| self.value(n, &format!("{p}.target"))),
                ),
                _ => (self.value(item, &p), None),
            };
            let Some(source) = source else { continue };
            let Some(file) = self.top_configs.get(&source).cloned() else {
                self.invalid(
                    item.span,
                    &p,
                    format!("the config `{source}` is not defined under the top-level `configs:` (with a `file`)"),
                );
                continue;
            };
            let target = target.unwrap_or_else(|| format!("/{source}"));
            mounts.push(Value::Str(format!("{file}:{target}:ro")));
            self.chose(item.span, &p, format!("the config `{source}` is a read-only bind mount of {file} on {target}"));
        }
        if !mounts.is_empty() {
            let mut all = match s.get("volumes") {
                Some(Value::Seq(items)) => items.clone(),
                _ => Vec::new(),
            };
            all.extend(mounts);
            s.insert("volumes", Value::Seq(all));
        }
    }

    /// `ports`, `expose` and `network_mode`: the service's one tug address, the container's
    /// port behind it, and the protocol its router speaks.
    fn network(
        &mut self,
        node: &Node,
        path: &str,
        image: Option<&str>,
        network_mode: Option<&str>,
        facts: &Facts,
        s: &mut Map,
    ) {
        let host_network = match network_mode {
            None | Some("bridge") | Some("default") => false,
            Some("host") => true,
            Some("none") => {
                self.chose(
                    node.span,
                    &format!("{path}.network_mode"),
                    "tug gives every container a network; `none` is not carried over",
                );
                false
            }
            Some(other) => {
                self.refuse(node.span, &format!("{path}.network_mode"), format!("`network_mode: {other}` is not carried over: each tug container has its own network, or the host's"));
                false
            }
        };
        let mut specs: Vec<(PortSpec, Span, String)> = Vec::new();
        if let Some(ports) = node.get("ports") {
            let items: Vec<&Node> = match &ports.kind {
                Kind::Seq(items) => items.iter().collect(),
                _ => vec![ports],
            };
            for (i, item) in items.into_iter().enumerate() {
                let p = format!("{path}.ports[{i}]");
                let parsed = match &item.kind {
                    Kind::Map(_) => {
                        let get = |c: &mut Self, f: &str| item.get(f).and_then(|n| c.value(n, &format!("{p}.{f}")));
                        let target = get(self, "target");
                        let published = get(self, "published");
                        let host_ip = get(self, "host_ip");
                        let protocol = get(self, "protocol");
                        ports::long(target.as_deref(), published.as_deref(), host_ip.as_deref(), protocol.as_deref())
                    }
                    _ => match self.value(item, &p) {
                        Some(text) => ports::short(&text),
                        None => continue,
                    },
                };
                match parsed {
                    Ok(spec) => specs.push((spec, item.span, p)),
                    Err(e) => self.invalid(item.span, &p, e),
                }
            }
        }
        let from_ports = !specs.is_empty();
        if !from_ports && let Some(expose) = node.get("expose") {
            let items: Vec<&Node> = match &expose.kind {
                Kind::Seq(items) => items.iter().collect(),
                _ => vec![expose],
            };
            for (i, item) in items.into_iter().enumerate() {
                let p = format!("{path}.expose[{i}]");
                if let Some(text) = self.value(item, &p) {
                    match ports::short(&text) {
                        Ok(spec) => specs.push((spec, item.span, p)),
                        Err(e) => self.invalid(item.span, &p, e),
                    }
                }
            }
        } else if let Some(expose) = node.get("expose") {
            self.chose(
                expose.span,
                &format!("{path}.expose"),
                "`expose` adds nothing beside `ports`: the service has one address",
            );
        }
        let known = image.and_then(known_image);
        let mut udp = Vec::new();
        specs.retain(|(spec, span, p)| {
            if spec.udp {
                udp.push((*span, p.clone()));
            }
            !spec.udp
        });
        for (span, p) in udp {
            self.refuse(span, &p, "UDP ports are not carried over: tug's routers carry TCP");
        }
        let mut specs = specs.into_iter();
        let (spec, span, p, guessed) = match specs.next() {
            Some((spec, span, p)) => (spec, span, p, false),
            None => match known {
                Some((_, port, _)) if facts.depended_on => {
                    let spec = PortSpec { target: port, published: None, host_ip: None, udp: false };
                    (spec, node.span, path.to_string(), true)
                }
                _ => {
                    if host_network {
                        self.chose(node.span, path, "`network_mode: host`: the container shares the host's network");
                    }
                    return;
                }
            },
        };
        for (extra, span, p) in specs {
            self.refuse(
                span,
                &p,
                format!("tug gives a service one address: the port {} is not carried over (run it as a second service if clients need it)", extra.target),
            );
        }
        // Dependents reach the service by name at the container's port (`db:5432`), as on
        // Compose's network; a service nothing depends on keeps the host port people use.
        let wanted = if facts.depended_on { spec.target } else { spec.published.unwrap_or(spec.target) };
        let mut port = wanted;
        while self.ports.contains(&port) {
            port = port.checked_add(1).unwrap_or(1024);
        }
        self.ports.insert(port);
        let entry = s.insert("port", Value::int(port));
        if guessed {
            entry.comment(format!(
                "the usual port of the image `{}`, which dependents reach by name",
                known.map(|k| k.0).unwrap_or_default()
            ));
        }
        if port != wanted {
            self.chose(span, &p, format!("the port {wanted} is taken by another service: this one gets {port}"));
        } else if let Some(published) = spec.published
            && published != port
        {
            self.chose(span, &p, format!("the service's address is port {port}, where its dependents reach it; Compose also published it on host port {published}"));
        }
        if spec.host_ip.as_deref().is_none_or(|ip| ip != "127.0.0.1" && ip != "::1") && spec.published.is_some() {
            self.chose(span, &p, "Compose published this port on every interface; tug's routers listen on 127.0.0.1 unless the stack sets `listen: 0.0.0.0`");
        }
        if host_network {
            self.chose(span, &p, format!("`network_mode: host`: the container shares the host's network and must listen on $PORT (the image listens on {})", spec.target));
        } else {
            s.insert("container_port", Value::int(spec.target));
        }
        let (protocol, why) = protocol_of(known, spec.target, s.get("healthcheck"));
        let entry = s.insert("protocol", Value::str(protocol));
        entry.comment(why);
    }

    /// A path from the Compose file's folder, written relative to the stack file's.
    fn relative(&self, path: &str) -> String {
        let p = Path::new(path);
        if p.is_absolute() {
            return path.to_string();
        }
        let full = normalize(&self.cx.project_dir.join(p));
        let rel = relative_to(&full, &normalize(self.cx.output_dir));
        let text = rel.to_string_lossy().into_owned();
        if text.is_empty() {
            ".".into()
        } else if text.starts_with("..") {
            text
        } else {
            format!("./{text}")
        }
    }
}

/// `path` as written from `base`: `compose.yaml`, `../x/compose.yaml`.
pub fn relative_path(path: &Path, base: &Path) -> String {
    relative_to(&normalize(path), &normalize(base)).display().to_string()
}

/// A Compose memory size in tug's spelling. Docker's units are binary whatever their case
/// (`256M` is 256 MiB), tug's upper-case ones decimal: `256M` becomes `256Mi`.
pub fn memory(compose: &str) -> String {
    let text = compose.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let binary = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => return number.to_string(),
        "k" | "kb" => "Ki",
        "m" | "mb" => "Mi",
        "g" | "gb" => "Gi",
        "t" | "tb" => "Ti",
        _ => return text.to_string(),
    };
    format!("{number}{binary}")
}

fn resources(s: &mut Map) -> &mut Map {
    if s.get("resources").is_none() {
        s.insert("resources", Value::Map(Map::default()));
    }
    match &mut s.get_mut("resources").expect("just inserted").value {
        Value::Map(m) => m,
        _ => unreachable!("resources is always a map"),
    }
}

/// The repository's last path part, without tag or digest: `docker.io/library/postgres:15` → `postgres`.
pub fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

fn known_image(image: &str) -> Option<(&'static str, u16, &'static str)> {
    let name = image_name(image);
    KNOWN_IMAGES.iter().find(|(known, _, _)| *known == name).copied()
}

fn protocol_of(
    known: Option<(&str, u16, &'static str)>,
    port: u16,
    healthcheck: Option<&Value>,
) -> (&'static str, String) {
    if let Some((name, _, protocol)) = known {
        return (protocol, format!("{protocol}: what `{name}` speaks"));
    }
    let probe = format!("{healthcheck:?}");
    if probe.contains("http://") || probe.contains("curl") || probe.contains("wget") {
        return (
            "http",
            "http: its healthcheck speaks HTTP; HTTP routing gives per-request metrics and canary analysis".into(),
        );
    }
    if HTTP_PORTS.contains(&port) {
        return ("http", format!("http: guessed from the port {port}; use `tcp` if it speaks another protocol"));
    }
    (
        "tcp",
        "tcp: tug cannot tell what this speaks; use `http` for an HTTP server (per-request metrics, canaries)".into(),
    )
}

/// A valid tug name (`[a-z0-9-]`, at most 63) from any Compose name.
pub fn dns_label(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "app".into() } else { out }
}

/// A valid setting name (`[A-Za-z_][A-Za-z0-9_]*`).
fn env_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

fn is_url(text: &str) -> bool {
    text.contains("://") || text.starts_with("git@")
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `a/./b/../c` → `a/c`, made absolute against the current folder.
fn normalize(path: &Path) -> PathBuf {
    tug_stackfile::service::normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let path: Vec<Component> = path.components().collect();
    let base: Vec<Component> = base.components().collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..base.len() {
        out.push("..");
    }
    for part in &path[common..] {
        out.push(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_dns_labels() {
        assert_eq!(dns_label("my_service"), "my-service");
        assert_eq!(dns_label("Web.App"), "web-app");
        assert_eq!(dns_label("__"), "app");
        assert_eq!(dns_label(&"a".repeat(80)).len(), 63);
        assert_eq!(env_name("db-password"), "db_password");
        assert_eq!(env_name("1key"), "_1key");
    }

    #[test]
    fn image_names_lose_registry_tag_and_digest() {
        assert_eq!(image_name("postgres:15"), "postgres");
        assert_eq!(image_name("docker.io/library/redis:7-alpine"), "redis");
        assert_eq!(image_name("localhost:5000/team/api@sha256:abc"), "api");
        assert_eq!(image_name("bitnami/redis"), "redis");
    }

    #[test]
    fn compose_memory_units_are_binary() {
        assert_eq!(memory("256M"), "256Mi");
        assert_eq!(memory("1g"), "1Gi");
        assert_eq!(memory("512kb"), "512Ki");
        assert_eq!(memory("1048576"), "1048576");
        assert_eq!(memory("1.5G"), "1.5Gi");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_to(Path::new("/a/b/c"), Path::new("/a")), PathBuf::from("b/c"));
        assert_eq!(relative_to(Path::new("/a/c"), Path::new("/a/b")), PathBuf::from("../c"));
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
