//! The resolved stack as the CLI hands it to the daemon.
//!
//! Unlike the stack model, these types carry secret values in clear (the daemon
//! must pass them to instances), so their `Debug` masks sensitive values and the
//! daemon never echoes a spec back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The most instances a service may have: the stack file's own limit.
pub const MAX_REPLICAS: u32 = 10_000;

/// A string that reaches an instance: an argument, a probe path, a variable.
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Value {
    pub value: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub sensitive: bool,
    /// Holds instance variables (`${PORT}`) to substitute per instance.
    #[serde(default, skip_serializing_if = "is_false")]
    pub template: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Value {
    pub fn plain(value: impl Into<String>) -> Value {
        Value { value: value.into(), sensitive: false, template: false }
    }

    /// What may be shown to a person.
    pub fn shown(&self) -> &str {
        if self.sensitive { "********" } else { &self.value }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandSpec {
    /// Executed directly.
    Argv(Vec<Value>),
    /// Run by `sh -c`.
    Shell(Value),
}

impl CommandSpec {
    /// The command as it may be shown (sensitive parts masked).
    pub fn shown(&self) -> String {
        match self {
            CommandSpec::Argv(args) => args.iter().map(Value::shown).collect::<Vec<_>>().join(" "),
            CommandSpec::Shell(text) => text.shown().to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Service,
    Job,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Job => "job",
        }
    }
}

/// The stack file's own: these travel as they are.
pub use tug_stackfile::model::{Balance, Condition, Protocol, Restart, Strategy};

/// How the router fronts a service. None of it reaches an instance, so it is not part of the
/// revision: changing it re-configures the router without restarting anything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub protocol: Protocol,
    pub balance: Balance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_header: Option<String>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age_ms: Option<u64>,
}

impl Default for RouteSpec {
    fn default() -> RouteSpec {
        RouteSpec {
            protocol: Protocol::Http,
            balance: Balance::RoundRobin,
            tenant_header: None,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 60_000,
            max_connection_age_ms: None,
        }
    }
}

/// The stack file's `deploy:` with durations in milliseconds and amounts resolved against
/// nothing yet (a percentage stays one, so scaling keeps its meaning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub strategy: Strategy,
    pub max_surge: Amount,
    pub max_unavailable: Amount,
    pub min_ready_ms: u64,
    /// Canary traffic percentages, rising.
    pub steps: Vec<u8>,
    pub step_duration_ms: u64,
    /// Canary: the most errors (5xx and failed attempts) per request, as a fraction (0.001 = 0.1%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<u64>,
    pub min_requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_port: Option<u16>,
    pub auto_promote: bool,
    pub scale_down_delay_ms: u64,
    pub progress_deadline_ms: u64,
    /// Jobs run to completion with the new revision's configuration before the rollout starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<String>,
    /// Checked against the new revision before it takes traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke: Option<Smoke>,
}

/// `backup`: commands run inside a running instance: `command` writes the dump on its stdout,
/// `restore` reads one on its stdin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupSpec {
    pub command: CommandSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<CommandSpec>,
    /// Five cron fields (UTC) or a shorthand, checked by the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    pub keep: u32,
}

/// `deploy.smoke`: one check of a new revision's instance (never `log`), within `timeout_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Smoke {
    pub check: Check,
    pub timeout_ms: u64,
}

impl Default for DeploySpec {
    fn default() -> DeploySpec {
        DeploySpec {
            strategy: Strategy::Rolling,
            max_surge: Amount::Count(1),
            max_unavailable: Amount::Count(0),
            min_ready_ms: 0,
            steps: vec![10, 50, 100],
            step_duration_ms: 30_000,
            max_error_rate: None,
            max_p99_ms: None,
            min_requests: 20,
            preview_port: None,
            auto_promote: false,
            scale_down_delay_ms: 30_000,
            progress_deadline_ms: 600_000,
            before: Vec::new(),
            smoke: None,
        }
    }
}

/// `max_surge` / `max_unavailable`: instances, or a percentage of the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    Count(u32),
    Percent(f64),
}

impl Amount {
    /// Instances for `replicas`: a surge rounds up, an allowance to be missing rounds down,
    /// as Kubernetes does.
    pub fn resolve(self, replicas: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let exact = f64::from(replicas) * p / 100.0;
                let n = if round_up { exact.ceil() } else { exact.floor() };
                n.clamp(0.0, f64::from(u32::MAX)) as u32
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleSpec {
    pub min: u32,
    pub max: u32,
    /// Target CPU per instance (its whole process group), percent of its `resources.cpu`, or
    /// of one core without a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Target memory per instance, percent of its `resources.memory`, or of the machine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f64>,
    /// Target requests a second per ready instance, from the router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    pub scale_down_stabilization_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Http { path: Value },
    Tcp,
    Exec { command: CommandSpec },
    Log { regex: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub check: Check,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
    pub start_interval_ms: u64,
}

/// A service that runs an image: what the container driver needs beyond what every
/// instance has (command, environment, user, ports, probes, limits).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The image as the stack file names it, for messages.
    pub image: String,
    /// The image's id on the engine (`sha256:…`), resolved at `up`/`deploy`. It is part of the
    /// revision: a rebuilt or re-tagged image is a new revision, and `undo` runs the old id.
    pub image_id: String,
    /// The image's own `USER` (empty: root): whose its secret files are when `user` is not set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_user: String,
    /// Replaces the image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<Value>>,
    /// Inside the container, where the command starts (else the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// `path` or `path:options`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(default)]
    pub init: bool,
    /// The port the image listens on: the instance's `$PORT` is published to it, and the
    /// container gets a network of its own. Without it the container shares the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MountSpec {
    pub kind: MountKind,
    /// The engine's volume name (`<project>_<name>`), or an absolute folder of this host.
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    Volume,
    Bind,
}

/// A process service's `source`: the revision's own immutable copy of it, which its
/// instances run from, so a rollback, `undo` or `scale` runs that revision's code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// The folder as the stack file names it (absolute), for messages.
    pub path: PathBuf,
    /// The digest of its content: part of the revision.
    pub digest: String,
    /// The copy (`.tug/revisions/<service>/<digest>`); `working_dir` points into it.
    pub copy: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub kind: Kind,
    pub command: Option<CommandSpec>,
    pub working_dir: PathBuf,
    pub replicas: u32,
    pub port: Option<u16>,
    /// tug's router owns `port` and instances get private ports.
    pub proxy: bool,
    /// How the router fronts `port` (with `proxy`); outside the revision.
    #[serde(default)]
    pub route: RouteSpec,
    /// Settings, listed secrets, env files and `environment`, in delivery order.
    pub environment: Vec<(String, Value)>,
    pub depends_on: Vec<(String, Condition)>,
    pub healthcheck: Option<Probe>,
    pub liveness: Option<Probe>,
    pub restart: Restart,
    pub stop_signal: i32,
    pub stop_signal_name: String,
    pub stop_grace_ms: u64,
    pub user: Option<String>,
    pub memory_bytes: Option<u64>,
    pub cpu: Option<f64>,
    pub log_max_size: u64,
    pub log_max_files: u32,
    /// Runs an image through the container engine instead of a local process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// A process service's code, copied per revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// The secrets the service lists: also delivered as files (`/run/secrets/<NAME>` in a
    /// container, `$TUG_SECRETS_DIR/<NAME>` for a process), their values from `environment`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<String>,
    /// How a new revision replaces the running one; outside the revision.
    #[serde(default)]
    pub deploy: DeploySpec,
    /// Replicas follow load within bounds; outside the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// How the service's data is dumped and loaded back; outside the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// Digest of everything above but `replicas`, `route`, `deploy` and `autoscale`: instances
    /// started from another revision are replaced.
    pub revision: String,
}

impl ServiceSpec {
    /// The digest of what reaches an instance: every field but the revision itself,
    /// the number of replicas (scaling does not make a new revision) and the route.
    pub fn compute_revision(&self) -> String {
        let mut copy = self.clone();
        copy.revision.clear();
        copy.replicas = 0;
        copy.route = RouteSpec::default();
        copy.deploy = DeploySpec::default();
        copy.autoscale = None;
        copy.backup = None;
        let json = serde_json::to_vec(&copy).unwrap_or_default();
        crate::auth::hex(&Sha256::digest(&json)[..6])
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackSpec {
    pub project: String,
    pub environment: String,
    /// The folder of the first stack file.
    pub root: PathBuf,
    /// Services and jobs, in file order.
    pub services: Vec<ServiceSpec>,
    /// The names of the stack's sensitive settings (secrets and what derives from them).
    /// Instances inherit the daemon's environment, which is the first `tug up`'s: a secret
    /// given there (`DB_PASSWORD=… tug up`) must not reach every instance by inheritance,
    /// only those it is delivered to through their `environment`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
    /// `registry:`: `None` for the embedded one, else a `redis://` or `rediss://` URL (which
    /// may carry a password: sensitive when it comes from a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Value>,
    /// The container engine (`unix:///…`), when a service runs an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The address the routers bind (`0.0.0.0`: every interface); none: the advertised one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `api:`: the daemon's network endpoint; none: the Unix socket only. Taken from requests
    /// on the socket only: a remote client cannot move or drop the endpoint it came through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSpec>,
    /// `notify:`: webhooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifySpec>,
}

/// The daemon's network endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiSpec {
    /// `host:port`.
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// `up --insecure`: a non-loopback address without TLS is allowed.
    #[serde(default)]
    pub insecure: bool,
}

/// PEM files, absolute paths on the daemon's host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// A webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotifySpec {
    /// May carry a token: sensitive when it comes from a secret.
    pub url: Value,
    /// `deployed`, `rolled_back`, `deploy_failed`, `promoted`, `crash_loop`, `backup_failed`.
    pub events: Vec<String>,
}

/// `PUT /v1/stack`: make the daemon run this stack, starting `targets` (all when
/// empty) and what they depend on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpRequest {
    pub spec: StackSpec,
    #[serde(default)]
    pub targets: Vec<String>,
    /// What the daemon resolves on its own host before it acts. A remote `tug --host` sends
    /// this instead of image ids: the client's container engine is not the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_host: Option<HostArtifacts>,
}

/// The images and volumes a remote client leaves to the daemon's engine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostArtifacts {
    /// Service → how to get its image (`ContainerSpec::image` names it).
    #[serde(default)]
    pub images: std::collections::BTreeMap<String, HostImage>,
    /// The named volumes the services that start now mount.
    #[serde(default)]
    pub volumes: Vec<HostVolume>,
    /// Service → its source: the copy this host makes from an upload, or already has.
    #[serde(default)]
    pub sources: std::collections::BTreeMap<String, HostSource>,
    /// The client's stack folder: a path inside it (a `working_dir`, a bind mount) names the
    /// same path inside the folder of the stack the daemon runs.
    #[serde(default)]
    pub root: PathBuf,
}

impl HostArtifacts {
    /// (service, upload) for every upload the request names: sources' bundles, build contexts.
    pub fn uploads(&self) -> impl Iterator<Item = (&String, &String)> {
        let sources = self.sources.iter().filter_map(|(name, s)| Some((name, s.upload.as_ref()?)));
        let builds = self.images.iter().filter_map(|(name, i)| Some((name, &i.build.as_ref()?.upload)));
        sources.chain(builds)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSource {
    /// The digest of the source's content (`SourceSpec::digest`).
    pub digest: String,
    /// The SHA-256 of the bundle sent as `PUT /v1/uploads/<sha256>`; none when the daemon
    /// already has the copy (or for a plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostImage {
    /// The stack's `pull` for it.
    #[serde(default)]
    pub pull: tug_stackfile::model::Pull,
    /// The stack builds it (`build:`): from the context in `build` when the service starts,
    /// otherwise the tag as the daemon's engine has it.
    #[serde(default)]
    pub built: bool,
    /// The service starts now: its image is pulled as `pull` says (or built, with `build`).
    /// Otherwise it is only looked up.
    #[serde(default)]
    pub start: bool,
    /// The build the client sent the context of: the daemon builds the image from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<HostBuild>,
}

/// A build on the daemon's engine, from a context the client uploaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostBuild {
    /// The SHA-256 of the context's archive, sent as `PUT /v1/uploads/<sha256>`.
    pub upload: String,
    /// The Dockerfile's path inside the archive.
    pub dockerfile: String,
    /// `build.args` (a secret's value is sensitive: masked in every message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<(String, Value)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostVolume {
    /// The first service that mounts it, for messages.
    pub service: String,
    /// The stack's name for it.
    pub name: String,
    /// The engine's name for it (`<project>_<name>`, or the name itself when external).
    pub engine_name: String,
    /// It must already exist (`external: true`); otherwise it is created with the stack's labels.
    #[serde(default)]
    pub external: bool,
}

/// `POST /v1/start|stop|restart`: services or instances by name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetsRequest {
    pub targets: Vec<String>,
}

/// `POST /v1/rollout`: `tug rollout promote|abort|undo SERVICE`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutRequest {
    pub service: String,
    pub action: RolloutAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    /// Blue-green: switch to the new set now. Canary: skip the remaining steps.
    Promote,
    /// Stop the rollout and send all traffic back to the stable revision.
    Abort,
    /// Go back to the last revision that completed before the current one.
    Undo,
}

/// `POST /v1/exec`: runs `command` inside `target` (an instance, or a service's first running
/// instance). The answer streams [`crate::stream`] frames.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    pub target: String,
    pub command: Vec<String>,
}

/// `POST /v1/run`: a one-off instance of `service` (its command, or `command` when not empty),
/// removed when it ends. The answer streams [`crate::stream`] frames.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    pub service: ServiceSpec,
    #[serde(default)]
    pub command: Vec<String>,
    /// As [`UpRequest::on_host`]: what a remote client leaves to the daemon's engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_host: Option<HostArtifacts>,
}

/// `POST /v1/scale`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub service: String,
    pub replicas: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_sensitive_values() {
        let v = Value { value: "hunter2".into(), sensitive: true, template: false };
        assert_eq!(format!("{v:?}"), "\"********\"");
        let c = CommandSpec::Argv(vec![Value::plain("run"), v]);
        assert_eq!(c.shown(), "run ********");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
