//! The typed stack: what compilation produces and every later stage consumes.
//!
//! Serializing any of these types masks sensitive values (see [`Text`]), so an
//! output built from the model cannot print a secret by accident.

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::diag::Span;
use crate::units::{Percent, Signal, Size, format_duration};
use tug_secrets::Charset;

pub const MASK: &str = "********";

/// A string value of the stack, after interpolation.
#[derive(Clone, PartialEq, Default)]
pub struct Text {
    value: String,
    /// Comes from a secret or from a value that interpolates one.
    pub sensitive: bool,
    /// Interpolates a secret that is not generated yet: the value is not final.
    pub pending: bool,
    /// Keeps instance-variable references (`${PORT}`) for the per-instance pass.
    pub template: bool,
}

impl Text {
    pub fn plain(value: impl Into<String>) -> Self {
        Text { value: value.into(), ..Text::default() }
    }

    pub fn new(value: String, sensitive: bool, pending: bool, template: bool) -> Self {
        Text { value, sensitive, pending, template }
    }

    /// The value itself. Callers that print must use [`Text::shown`] instead.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// What may be shown to a person: the value, or `********` when sensitive.
    pub fn shown(&self) -> &str {
        if self.sensitive { MASK } else { &self.value }
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

fn display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn opt_display<T: std::fmt::Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => display(v, s),
        None => s.serialize_none(),
    }
}

fn signal<S: Serializer>(v: &Signal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.name)
}

/// The whole stack for one environment, resolved and validated.
#[derive(Clone, Debug, Serialize)]
pub struct Stack {
    pub name: String,
    pub environment: String,
    pub environments: Vec<String>,
    pub profiles: Vec<String>,
    /// The folder of the first stack file: relative paths start here.
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
    pub registry: Registry,
    /// The container engine's socket (`engine:`), as written (interpolated): `unix:///path`
    /// or an absolute path. None: `$DOCKER_HOST`, then the usual Docker and Podman sockets.
    pub engine: Option<String>,
    /// `listen:`: the address the routers bind (`0.0.0.0`: every interface). None: the host's
    /// advertised address (127.0.0.1 by default).
    pub listen: Option<std::net::IpAddr>,
    /// `api:`: the daemon's network endpoint; None: the Unix socket only.
    pub api: Option<Api>,
    /// `notify:`: webhooks for deploys, rollbacks, promotions and crash loops.
    pub notify: Vec<Notify>,
    /// Named volumes (`volumes:`), kept by `down`, removed by `down --volumes`.
    pub volumes: IndexMap<String, Volume>,
    pub settings: IndexMap<String, Setting>,
    /// Services and jobs enabled by the active profiles, in file order.
    pub services: IndexMap<String, Service>,
    /// Services left out because none of their profiles is active.
    pub inactive: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "url")]
pub enum Registry {
    Embedded,
    Redis(Text),
}

/// A named volume of the stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// An existing engine volume, used as it is: tug never creates or removes it.
    pub external: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingType {
    String,
    Int,
    Float,
    Bool,
    Duration,
    Port,
    Url,
    Path,
    Enum,
    Secret,
}

impl SettingType {
    pub const NAMES: [&'static str; 10] =
        ["string", "int", "float", "bool", "duration", "port", "url", "path", "enum", "secret"];
    pub const ALL: [SettingType; 10] = [
        SettingType::String,
        SettingType::Int,
        SettingType::Float,
        SettingType::Bool,
        SettingType::Duration,
        SettingType::Port,
        SettingType::Url,
        SettingType::Path,
        SettingType::Enum,
        SettingType::Secret,
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|t| *t == self).unwrap_or(0)]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Generate {
    pub length: usize,
    #[serde(serialize_with = "charset")]
    pub charset: Charset,
}

fn charset<S: Serializer>(c: &Charset, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.as_str())
}

/// A setting's rule, for the active environment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SettingSpec {
    #[serde(rename = "type")]
    pub ty: Option<SettingType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemes: Vec<String>,
    #[serde(skip)]
    pub forbid: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generate>,
}

/// Where a setting's value came from, first to last in precedence.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Value,
    Environment,
    EnvFile(PathBuf),
    SecretStore,
    Default,
    /// A secret with `generate` that `up` (or `tug secrets generate`) will create.
    ToBeGenerated,
    /// No value, and `required: false`.
    Unset,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    #[serde(flatten)]
    pub spec: SettingSpec,
    /// The resolved value as delivered in the environment (None when unset).
    pub value: Option<Text>,
    pub source: Source,
    #[serde(skip)]
    pub span: Span,
}

impl Setting {
    pub fn is_secret(&self) -> bool {
        self.spec.ty == Some(SettingType::Secret)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Service,
    Job,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Command {
    /// Executed directly.
    Argv(Vec<Text>),
    /// Run by `sh -c`.
    Shell(Text),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Tcp,
    /// Not given: each connection is HTTP when it opens like HTTP, TCP otherwise.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    TenantHash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
            Condition::CompletedSuccessfully => "completed_successfully",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    No,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    Http(Text),
    Tcp,
    Exec(Command),
    Log(String),
}

/// As written in the stack file: `http: /path`, `tcp: true`, `exec: CMD`, `log: REGEX`.
impl Serialize for Check {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            Check::Http(path) => map.serialize_entry("http", path)?,
            Check::Tcp => map.serialize_entry("tcp", &true)?,
            Check::Exec(command) => map.serialize_entry("exec", command)?,
            Check::Log(regex) => map.serialize_entry("log", regex)?,
        }
        map.end()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Probe {
    #[serde(flatten)]
    pub check: Check,
    #[serde(serialize_with = "duration")]
    pub interval: Duration,
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(serialize_with = "duration")]
    pub start_period: Duration,
    #[serde(serialize_with = "duration")]
    pub start_interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Rolling,
    BlueGreen,
    Canary,
    Recreate,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue_green",
            Strategy::Canary => "canary",
            Strategy::Recreate => "recreate",
        }
    }
}

/// `max_surge` / `max_unavailable`: a count of instances or a share of the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Amount {
    Count(u32),
    #[serde(serialize_with = "display")]
    Percent(Percent),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analysis {
    #[serde(serialize_with = "opt_display")]
    pub max_error_rate: Option<Percent>,
    #[serde(serialize_with = "opt_duration")]
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deploy {
    pub strategy: Strategy,
    pub max_surge: Amount,
    pub max_unavailable: Amount,
    #[serde(serialize_with = "duration")]
    pub min_ready: Duration,
    pub steps: Vec<u8>,
    #[serde(serialize_with = "duration")]
    pub step_duration: Duration,
    pub analysis: Analysis,
    pub preview_port: Option<u16>,
    pub auto_promote: bool,
    #[serde(serialize_with = "duration")]
    pub scale_down_delay: Duration,
    #[serde(serialize_with = "duration")]
    pub progress_deadline: Duration,
    /// Jobs run to completion, with the new revision's configuration, before a rollout starts.
    pub before: Vec<String>,
    /// Checked against the new revision before it takes traffic.
    pub smoke: Option<Smoke>,
}

/// `deploy.smoke`: one check of a new revision (http, tcp or exec) and how long it may take.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Smoke {
    #[serde(flatten)]
    pub check: Check,
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    #[serde(serialize_with = "opt_display")]
    pub cpu: Option<Percent>,
    #[serde(serialize_with = "opt_display")]
    pub memory: Option<Percent>,
    pub requests_per_second: Option<f64>,
    #[serde(serialize_with = "duration")]
    pub scale_down_stabilization: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Resources {
    #[serde(serialize_with = "opt_display")]
    pub memory: Option<Size>,
    /// CPU cores (`0.5` is half a core).
    pub cpu: Option<f64>,
}

/// How the router talks to the instances (tug's extension, `router:` on a service).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouterOptions {
    /// Per attempt to open a connection to an instance.
    #[serde(serialize_with = "duration")]
    pub connect_timeout: Duration,
    /// From sending a request until the response headers arrive (then 504).
    #[serde(serialize_with = "duration")]
    pub request_timeout: Duration,
    /// Client connections older than this are closed gracefully, so long-lived clients rebalance.
    #[serde(serialize_with = "opt_duration")]
    pub max_connection_age: Option<Duration>,
}

impl Default for RouterOptions {
    fn default() -> RouterOptions {
        RouterOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(60),
            max_connection_age: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Logs {
    #[serde(serialize_with = "display")]
    pub max_size: Size,
    pub max_files: u32,
}

/// A service's objectives: the share of requests that succeed, and the p99 request duration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Slo {
    #[serde(serialize_with = "display")]
    pub availability: Percent,
    #[serde(serialize_with = "duration")]
    pub latency: Duration,
}

impl Default for Slo {
    /// 99.9% of requests succeed; 99% of them within 100 ms.
    fn default() -> Self {
        Slo { availability: Percent(99.9), latency: Duration::from_millis(100) }
    }
}

/// When to pull a service's image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pull {
    Always,
    /// Only when the engine does not have the image (the default).
    #[default]
    Missing,
    Never,
}

/// `build:`: how to build a service's image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Build {
    /// The build context: absolute, normalized.
    pub context: PathBuf,
    /// As written, relative to the context (None: the engine's default, `Dockerfile`).
    pub dockerfile: Option<String>,
    pub args: IndexMap<String, Text>,
    pub target: Option<String>,
}

/// One entry of a service's `volumes:`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VolumeMount {
    /// A named volume, declared under the stack's `volumes:`.
    #[serde(rename = "volume")]
    Named { name: String, target: String, read_only: bool },
    /// A folder or file of this machine.
    Bind { source: PathBuf, target: String, read_only: bool },
}

/// What a service that runs an image (`image` or `build`) adds to a process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Container {
    /// The image reference; with `build` and no `image`, `<project>-<service>`.
    pub image: String,
    pub pull: Pull,
    pub build: Option<Build>,
    /// Replaces the image's ENTRYPOINT; `Some(vec![])` clears it (`entrypoint: []` or `""`).
    pub entrypoint: Option<Vec<Text>>,
    /// `working_dir`: a folder inside the container, absolute, as written. None: the image's
    /// WORKDIR. (`Service::working_dir` is a folder of this machine, meaningless here.)
    pub working_dir: Option<String>,
    pub volumes: Vec<VolumeMount>,
    /// `PATH` or `PATH:OPTIONS`, as written.
    pub tmpfs: Vec<String>,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub init: bool,
    /// The port the image listens on, published on the instance's `$PORT`. None: the
    /// container shares the host's network and listens on `$PORT` itself.
    pub container_port: Option<u16>,
}

/// What a `source` folder's content leaves out: tug's state folder, version control and
/// Python's bytecode caches are not part of a revision.
pub const SOURCE_EXCLUDED: &[&str] = &[".tug", ".git", "__pycache__"];

#[derive(Clone, Debug, Serialize)]
pub struct Service {
    pub kind: ServiceKind,
    /// For a service with an image: None runs the image's CMD, and a string is split into
    /// words (never `Command::Shell`).
    pub command: Option<Command>,
    /// Some when the service runs an image (`image` or `build`).
    pub container: Option<Container>,
    /// For a process: the folder whose content is part of the revision (absolute, normalized).
    pub source: Option<PathBuf>,
    pub port: Option<u16>,
    pub protocol: Protocol,
    pub balance: Balance,
    pub tenant_header: Option<String>,
    /// Whether tug's router owns `port` (default: yes when a port is set).
    pub proxy: bool,
    pub router: RouterOptions,
    pub working_dir: PathBuf,
    pub replicas: u32,
    pub secrets: Vec<String>,
    /// The service's own settings (beyond the shared ones).
    pub settings: IndexMap<String, Setting>,
    /// The variables every instance receives besides the instance variables:
    /// settings, listed secrets, `env_file` and `environment`, later ones winning.
    pub environment: IndexMap<String, Text>,
    pub depends_on: IndexMap<String, Condition>,
    pub healthcheck: Option<Probe>,
    pub liveness: Option<Probe>,
    pub restart: Restart,
    #[serde(serialize_with = "signal")]
    pub stop_signal: Signal,
    #[serde(serialize_with = "duration")]
    pub stop_grace_period: Duration,
    pub profiles: Vec<String>,
    pub deploy: Deploy,
    pub autoscale: Option<Autoscale>,
    pub user: Option<String>,
    pub env_file: Vec<PathBuf>,
    pub resources: Resources,
    pub logs: Logs,
    /// `slo`: objectives for alerting (`tug render alerts`); none: the defaults.
    pub slo: Option<Slo>,
    /// `backup`: how `tug backup` dumps the service's data, and `tug restore` loads it back.
    pub backup: Option<Backup>,
    #[serde(skip)]
    pub span: Span,
}

/// `backup`: commands run inside a running instance (with its variables, such as `$PORT`):
/// `command` writes the dump on its standard output, `restore` reads it on its standard input.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backup {
    pub command: Command,
    pub restore: Option<Command>,
    #[serde(serialize_with = "opt_schedule")]
    pub schedule: Option<crate::cron::Schedule>,
    /// Scheduled archives kept for the service (the oldest go first).
    pub keep: u32,
}

fn opt_schedule<S: serde::Serializer>(s: &Option<crate::cron::Schedule>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_some(s.as_str()),
        None => ser.serialize_none(),
    }
}

/// `api:`: the daemon's network endpoint (control API, `/metrics`, the dashboard).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Api {
    #[serde(serialize_with = "display")]
    pub listen: std::net::SocketAddr,
    pub tls: Option<ApiTls>,
}

/// `api.tls`: the endpoint's certificate and key (PEM); with `client_ca`, clients must present
/// a certificate it signed (mTLS).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What `notify` entries can subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Deployed,
    RolledBack,
    /// A deploy stopped before anything changed (a `deploy.before` job failed).
    DeployFailed,
    Promoted,
    CrashLoop,
    /// A scheduled backup failed.
    BackupFailed,
}

impl NotifyEvent {
    pub const ALL: [(&'static str, NotifyEvent); 6] = [
        ("deployed", NotifyEvent::Deployed),
        ("rolled_back", NotifyEvent::RolledBack),
        ("deploy_failed", NotifyEvent::DeployFailed),
        ("promoted", NotifyEvent::Promoted),
        ("crash_loop", NotifyEvent::CrashLoop),
        ("backup_failed", NotifyEvent::BackupFailed),
    ];

    pub fn as_str(self) -> &'static str {
        NotifyEvent::ALL.iter().find(|(_, e)| *e == self).map(|(n, _)| *n).unwrap_or_default()
    }
}

/// One `notify` entry: a webhook.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notify {
    /// `http://` or `https://`. May carry a secret (a token in the path): shown masked.
    pub url: Text,
    pub events: Vec<NotifyEvent>,
}
