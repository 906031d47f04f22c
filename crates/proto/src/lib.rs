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
