//! Rollouts as the daemon reports them: `tug rollout status`, `tug history`, `tug deploy`.
//! Like the rest of the status, nothing here carries an environment value: a revision's spec
//! appears only with its sensitive values masked.

use serde::{Deserialize, Serialize};

use crate::spec::Strategy;

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Instances of the new revision are starting, or traffic is moving to them.
    Progressing,
    /// Waiting for `tug rollout promote` (blue-green without `auto_promote`).
    Paused,
    /// The new revision serves everything; the old set is kept a while (`scale_down_delay`)
    /// so `undo` is instant.
    Promoted,
    /// The new revision failed (analysis, deadline, a failed instance) or was aborted, and the
    /// previous one serves everything again.
    RolledBack,
    /// The rollout failed and the previous revision could not be brought back whole.
    Failed,
    /// The new revision serves everything, alone.
    Complete,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
            Phase::Complete => "complete",
        }
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::RolledBack | Phase::Failed | Phase::Complete)
    }
}

/// One revision's requests in the analysis window, as the router counted them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub requests: u64,
    /// 5xx answers and failed attempts (refused, reset, timed out).
    pub errors: u64,
    pub error_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// The figures a canary decision was made on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub window_ms: u64,
    pub canary: Sample,
    pub stable: Sample,
}

/// `GET /v1/rollout?service=`: the service's latest rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub service: String,
    pub strategy: Strategy,
    pub phase: Phase,
    /// The revision that served before; none for a service's first start.
    pub from_revision: Option<String>,
    pub to_revision: String,
    /// Percent of the traffic the new revision gets now.
    pub weight: u8,
    /// Canary: the index of the current step in `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<u8>,
    /// Why it ended as it did, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Canary: the last analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
    /// Instances of each revision now.
    pub new_instances: u32,
    pub new_ready: u32,
    pub old_instances: u32,
    pub replicas: u32,
    /// RFC 3339.
    pub started_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// One entry of `tug history SERVICE` (newest first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub revision: String,
    pub strategy: Strategy,
    /// How its rollout ended (`progressing` while it runs).
    pub outcome: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The revision it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<String>,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The revision the service runs now.
    pub current: bool,
    /// What was deployed, with sensitive values shown as `********`.
    pub spec: serde_json::Value,
}

/// The autoscaler's view of a service (`tug ps --json`, under `services`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleStatus {
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// The last decision, with the figures that drove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
}
