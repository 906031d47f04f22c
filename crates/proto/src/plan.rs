//! A deploy plan: what `up` or `deploy` will do to each service and why, computed before
//! anything acts (`tug deploy --plan` shows it; `deploy` executes exactly it).

use serde::{Deserialize, Serialize};

use crate::spec::{Kind, Strategy};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Every service of the stack and every one the stack no longer has, in the order they
    /// are acted on (dependencies first; removed ones last).
    pub services: Vec<ServicePlan>,
}

impl Plan {
    pub fn get(&self, name: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Whether the plan changes anything that runs.
    pub fn changes_anything(&self) -> bool {
        self.services.iter().any(|s| !matches!(s.action, Action::Unchanged | Action::NotStarted))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub name: String,
    pub kind: Kind,
    pub action: Action,
    /// What differs from what runs, field by field. Sensitive values are masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// How a rollout replaces the running revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Why the strategy differs from the stack file's, or anything else worth knowing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The revisions: what runs now, what will run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_revision: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// New to the daemon: started (a job: run).
    Start,
    /// The same revision, running or done: nothing happens (a job does not run again).
    Unchanged,
    /// Only how it is routed, rolled out or scaled changed: applied without a restart.
    Reconfigure,
    /// The same revision at another replica count (`up` goes back to the file's count).
    Rescale,
    /// A new revision, rolled out by `strategy` while the old one serves.
    RollOut,
    /// A new revision of something not serving (a job, a stopped service): the old instances
    /// stop, then the new ones start (a job runs again).
    Replace,
    /// A new revision that this request does not start (`up OTHER`): the running one is kept.
    Keep,
    /// In the stack but not started by this request, and not running.
    NotStarted,
    /// No longer in the stack: drained and stopped.
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Unchanged => "unchanged",
            Action::Reconfigure => "reconfigure",
            Action::Rescale => "rescale",
            Action::RollOut => "roll out",
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::NotStarted => "not started",
            Action::Remove => "remove",
        }
    }
}

/// One field that differs: `environment.LOG_LEVEL`, `image`, `source`, `replicas`…
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}
