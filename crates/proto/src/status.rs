//! What the daemon reports. Nothing here carries an environment value or a
//! command line: only names, states, numbers and the supervisor's own messages.

use serde::{Deserialize, Serialize};

use crate::spec::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for its dependencies, or not started yet.
    Pending,
    /// Running, readiness not passed yet.
    Starting,
    /// Readiness passes.
    Healthy,
    /// Readiness failed `retries` times in a row.
    Unhealthy,
    /// Running, no healthcheck.
    Running,
    /// A job that exited 0.
    Completed,
    /// Exited and will not be restarted, or cannot start.
    Failed,
    /// Failing repeatedly, waiting out its backoff before the next start.
    Crashloop,
    Stopping,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Starting => "starting",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Crashloop => "crashloop",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }

    /// Serving (or done, for a job): what `up -d` waits for.
    pub fn is_up(self) -> bool {
        matches!(self, State::Healthy | State::Running | State::Completed)
    }
}

/// The last probe's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub message: String,
    /// RFC 3339.
    pub at: String,
    /// Consecutive failures so far.
    pub failures: u32,
}

/// One row of `tug ps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub service: String,
    pub instance: String,
    pub kind: Kind,
    pub state: State,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    pub restarts: u32,
    /// RFC 3339, when the current (or last) process started.
    pub started_at: Option<String>,
    /// When it last became ready: healthy, running without a healthcheck, or completed.
    pub ready_at: Option<String>,
    /// When its last process exited.
    pub finished_at: Option<String>,
    pub health: Option<Health>,
    pub exit_code: Option<i32>,
    /// How its last process ended, and why when tug ended it ("liveness failed …"):
    /// kept after a restart, so the reason for the restart stays visible.
    pub last_exit: Option<String>,
    pub revision: String,
    /// Why it is in this state, in words (a failure, what it waits for).
    pub message: Option<String>,
    /// CPU seconds and resident bytes of the instance's whole process group.
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: Kind,
    pub replicas: u32,
    pub port: Option<u16>,
    /// Whether it was asked to run (by `up` or `start`).
    pub active: bool,
    /// The revision it runs (the target of a rollout under way).
    #[serde(default)]
    pub revision: String,
    /// Its latest rollout, if it had one since the daemon started (or one was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<crate::rollout::AutoscaleStatus>,
    /// Each instance's limits (`resources`), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<f64>,
}

/// `GET /v1/status`: the daemon and everything it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StackStatus {
    pub project: String,
    pub daemon_pid: u32,
    /// Grows at each change; `GET /v1/status?after=N` waits for a change past N.
    pub generation: u64,
    pub shutting_down: bool,
    pub services: Vec<ServiceStatus>,
    pub instances: Vec<InstanceStatus>,
    /// Things the user should know (limits not applied, leftovers stopped).
    pub notices: Vec<String>,
    /// The address this host's routers and instances bind and register (`--advertise`).
    #[serde(default)]
    pub advertise: String,
    /// The registry in use, once a stack was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryStatus>,
    /// The daemon's tug version (empty: older than the field, which a remote client needs to
    /// know: such a daemon ignores the images, sources and builds it is sent).
    #[serde(default)]
    pub version: String,
}

/// Which registry the daemon uses and how it is doing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RegistryStatus {
    /// `embedded`, or the Redis URL without its password.
    pub location: String,
    /// `pending` (no synchronization yet), `live`, or `stale` (the last one failed: routers keep
    /// the last known membership).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Live entries, all hosts.
    pub entries: usize,
    /// Distinct hosts among them.
    pub hosts: usize,
}

/// The answer to `PUT /v1/stack`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpResponse {
    /// The services and jobs that this request starts (targets and their dependencies).
    pub services: Vec<String>,
    pub notices: Vec<String>,
    /// The services this request rolls out to a new revision (`tug deploy` waits for them).
    #[serde(default)]
    pub rollouts: Vec<String>,
    /// What the daemon decided for each service, and why (executed as it says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::plan::Plan>,
    /// Service → the revision it runs, when the daemon computed it (a remote client's request:
    /// image ids and copies are this host's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub revisions: std::collections::BTreeMap<String, String>,
}
