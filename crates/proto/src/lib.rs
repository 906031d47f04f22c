//! The control API between the `tug` CLI and a stack's daemon: HTTP/JSON over the
//! Unix socket `tug.sock` in the state folder, every request signed ([`auth`]).
//!
//! [`spec`] is what the CLI sends (the stack, resolved, with the values instances
//! need, secrets included); [`status`] is what the daemon answers, which never
//! carries an environment value. The OpenAPI document describes both.

pub mod auth;
pub mod plan;
pub mod rollout;
pub mod spec;
pub mod stats;
pub mod status;
pub mod stream;

pub const SOCKET_FILE: &str = "tug.sock";
pub const PID_FILE: &str = "daemon.pid";
pub const OPENAPI: &str = include_str!("openapi.json");

/// Seconds since the Unix epoch, for signing.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The body of every error answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The key a backup archive is sealed with (derived from the stack's secrets key), as hex.
/// Never shown: `Debug` masks it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ArchiveKey(pub String);

impl std::fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveKey(********)")
    }
}

/// `POST /v1/down`: stop everything and exit.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DownRequest {
    /// Then also remove the named volumes this stack created on the daemon's engine (a remote
    /// `down --volumes`: that engine is not the client's).
    #[serde(default)]
    pub volumes: bool,
}

/// `POST /v1/backup`: the daemon writes one archive of the state and the services' dumps.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackupRequest {
    /// Where, on the daemon's host (absolute); none: its stack's `backups/` folder, with the
    /// usual name (a remote client does not know that host's folders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<std::path::PathBuf>,
    /// The services to dump; empty: every service with a `backup`.
    #[serde(default)]
    pub services: Vec<String>,
    /// The archive's key; none: the one derived from the daemon's own secrets key (a remote
    /// client does not have it), as scheduled backups use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ArchiveKey>,
}

/// What an archive holds (or what a restore loaded): each entry's size.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackupEntry {
    /// `file:NAME` or `dump:SERVICE`.
    pub entry: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackupResponse {
    pub file: std::path::PathBuf,
    pub bytes: u64,
    pub entries: Vec<BackupEntry>,
}

/// `POST /v1/restore`: each dump of the archive, fed to its service's `backup.restore`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RestoreRequest {
    pub file: std::path::PathBuf,
    pub key: ArchiveKey,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RestoreResponse {
    pub loaded: Vec<BackupEntry>,
}

/// `POST /v1/dashboard`: a one-time login link for the dashboard.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DashboardRequest {
    /// The session it opens can look, not act.
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DashboardResponse {
    /// `https://HOST:PORT/ui/login?token=…`: valid once, for a few minutes.
    pub url: String,
}
