//! The service registry: which instances of which services are live, on every host of a project.
//!
//! Each instance is an [`Entry`], kept alive by a heartbeat ([`Registry::register`] called every
//! [`Config::heartbeat`]) and dropped once its [`Config::ttl`] passes without one. Two implementations
//! with the same semantics:
//!
//! - [`EmbeddedRegistry`]: in the daemon's memory, for a project on one host (the default).
//! - [`RedisRegistry`]: in Redis (`redis://…`, or `rediss://…` over TLS), for a project that spans
//!   hosts. Expiry is judged by the Redis server's clock (Lua with `TIME`), never a client's; changes
//!   are announced with pub/sub and a periodic full resync catches what pub/sub lost across a
//!   disconnect.
//!
//! # Registry URLs
//!
//! ```text
//! redis://[[user]:password@]host[:port][/db]
//! rediss://[[user]:password@]host[:port][/db][?ca=PATH][&cert=PATH&key=PATH][&insecure=true]
//! ```
//!
//! `rediss://` is Redis over TLS (rustls): the server's certificate must be valid for `host` and
//! signed by a CA of the system's bundle (`SSL_CERT_FILE` when set, else e.g. Debian's
//! `/etc/ssl/certs/ca-certificates.crt`). Parameters, all PEM files:
//!
//! - `ca=/path/ca.pem`: trust these CAs instead (a private CA).
//! - `cert=/path/client.pem&key=/path/client-key.pem`: a client certificate, for servers that
//!   require one (mutual TLS; redis-server's `--tls-auth-clients yes`).
//! - `insecure=true`: **no verification of the server's certificate**: anyone on the network path
//!   can pose as the server, read the password and rewrite the membership, and so redirect traffic.
//!   Test setups only; prefer `ca=`. [`RedisUrl::is_insecure`] tells a caller to warn.
//!
//! The files are read when the URL is parsed (so by [`AnyRegistry::open`]): a missing or non-PEM
//! file is a [`RegistryError::Url`] naming the parameter and path. Everything else (AUTH, SELECT,
//! the scripts, the subscriber connection, reconnects, timeouts) is the same over TLS; a TLS
//! failure once connected is a [`RegistryError::Tls`], which says `certificate problem` when the
//! server's certificate is not trusted or the server wants a client certificate. The parser's
//! docs (`src/url.rs`) have the details: `%`-encoding, relative paths, where the system's bundle is
//! looked for.
//!
//! A registry is bound to one project: every key it touches is namespaced by the project name.
//! [`Registry::watch`] gives the live membership; when the registry fails, the watch keeps the last
//! known membership (marked [`Status::Stale`]), so routers keep serving.

mod embedded;
mod redis;
pub mod resp;
pub mod tls;
mod url;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use embedded::EmbeddedRegistry;
pub use redis::RedisRegistry;
pub use url::RedisUrl;

/// One live instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub service: String,
    /// Unique across hosts, for example `<host-id>/<instance>`. The registry's key for the entry.
    pub instance: String,
    /// The host that registered the entry (its heartbeat keeps it alive).
    pub host: String,
    /// Where the instance serves.
    pub address: SocketAddr,
    /// The revision of the service's spec the instance runs.
    pub revision: String,
    /// Whether the instance passes its readiness probe; routers only send to ready instances.
    pub ready: bool,
    /// Relative share of traffic.
    pub weight: u32,
}

/// What a watcher knows of the registry's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Status {
    /// No synchronization has completed yet: the membership is empty because nothing is known.
    #[default]
    Pending,
    /// The membership is what the registry held at the last synchronization.
    Live,
    /// The last synchronization failed: the membership is the last one known. Carries the error.
    Stale(String),
}

/// The live entries of a project, sorted by service then instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub entries: Vec<Entry>,
    pub status: Status,
}

impl Membership {
    pub(crate) fn new(mut entries: Vec<Entry>, status: Status) -> Membership {
        entries.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
        Membership { entries, status }
    }

    /// The entries of one service.
    pub fn service<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.service == service)
    }

    /// The ready entries of one service.
    pub fn ready<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.service(service).filter(|e| e.ready)
    }

    /// Same entries, whatever the status.
    pub fn same_entries(&self, other: &Membership) -> bool {
        self.entries == other.entries
    }
}

/// Timing of a registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long an entry lives without a heartbeat.
    pub ttl: Duration,
    /// How often the owner of entries should call [`Registry::register`] (used by the caller).
    pub heartbeat: Duration,
    /// How often a watcher re-reads the whole membership (Redis: catches lost pub/sub messages and
    /// expiries nobody announced).
    pub resync: Duration,
    /// Bound on connecting to Redis and on each request.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            ttl: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            resync: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Why a registry operation failed. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registry URL: {0}")]
    Url(String),
    #[error("cannot connect to Redis at {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("Redis at {address} refused the credentials: {message}")]
    Auth { address: String, message: String },
    #[error("Redis at {address} answered an error: {message}")]
    Server { address: String, message: String },
    #[error("Redis at {address}: connection lost: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("Redis at {address}: no answer within {after:?}")]
    Timeout { address: String, after: Duration },
    /// The TLS session failed: a certificate problem (`message` says so), a refused handshake, or
    /// a server that does not speak TLS on that port.
    #[error("Redis at {address}: TLS: {message}")]
    Tls { address: String, message: String },
    #[error("Redis at {address}: malformed reply: {message}")]
    Protocol { address: String, message: String },
    #[error("invalid entry {instance:?}: {message}")]
    Entry { instance: String, message: String },
}

/// A registry of one project's entries.
///
/// Methods return `Send` futures so a daemon can call them from spawned tasks; the trait is not
/// object-safe, so hold an [`AnyRegistry`] (or a concrete type) rather than a `dyn Registry`.
pub trait Registry: Send + Sync {
    /// Inserts or replaces `entries` and refreshes their TTL. The heartbeat calls it with every entry
    /// the host owns.
    fn register(&self, entries: &[Entry]) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Removes entries by instance id (an instance that stops, a host that shuts down cleanly).
    fn deregister(&self, instances: &[String]) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Reads the live entries now (expired ones are left out), sorted by service then instance.
    fn snapshot(&self) -> impl Future<Output = Result<Vec<Entry>, RegistryError>> + Send;

    /// The membership as it changes. On failure it keeps the last known entries, marked stale.
    fn watch(&self) -> watch::Receiver<Arc<Membership>>;

    /// The project this registry is bound to.
    fn project(&self) -> &str;
}

/// Either implementation, chosen by the stack's `registry:` setting.
pub enum AnyRegistry {
    Embedded(EmbeddedRegistry),
    Redis(RedisRegistry),
}

impl AnyRegistry {
    /// `None` or `"embedded"`: the embedded registry; `redis://…` or `rediss://…`: Redis. Must be
    /// called inside a tokio runtime (both start a background task). Does not contact Redis: an
    /// unreachable registry shows as a stale membership and failing registrations, never as a
    /// failure to start. It does read the TLS files a `rediss://` URL names: a bad one is an error.
    pub fn open(setting: Option<&str>, project: &str, config: Config) -> Result<AnyRegistry, RegistryError> {
        match setting {
            None | Some("embedded") => Ok(AnyRegistry::Embedded(EmbeddedRegistry::new(project, config))),
            Some(url) => Ok(AnyRegistry::Redis(RedisRegistry::new(url.parse()?, project, config))),
        }
    }
}

impl Registry for AnyRegistry {
    async fn register(&self, entries: &[Entry]) -> Result<(), RegistryError> {
        match self {
            AnyRegistry::Embedded(r) => r.register(entries).await,
            AnyRegistry::Redis(r) => r.register(entries).await,
        }
    }

    async fn deregister(&self, instances: &[String]) -> Result<(), RegistryError> {
        match self {
            AnyRegistry::Embedded(r) => r.deregister(instances).await,
            AnyRegistry::Redis(r) => r.deregister(instances).await,
        }
    }

    async fn snapshot(&self) -> Result<Vec<Entry>, RegistryError> {
        match self {
            AnyRegistry::Embedded(r) => r.snapshot().await,
            AnyRegistry::Redis(r) => r.snapshot().await,
        }
    }

    fn watch(&self) -> watch::Receiver<Arc<Membership>> {
        match self {
            AnyRegistry::Embedded(r) => r.watch(),
            AnyRegistry::Redis(r) => r.watch(),
        }
    }

    fn project(&self) -> &str {
        match self {
            AnyRegistry::Embedded(r) => r.project(),
            AnyRegistry::Redis(r) => r.project(),
        }
    }
}

pub(crate) fn check_entries(entries: &[Entry]) -> Result<(), RegistryError> {
    for e in entries {
        if e.instance.is_empty() || e.service.is_empty() {
            return Err(RegistryError::Entry {
                instance: e.instance.clone(),
                message: "service and instance must not be empty".into(),
            });
        }
    }
    Ok(())
}

/// Updates a watch only when the membership changed (entries or status), so watchers wake for real
/// changes only.
pub(crate) fn publish(tx: &watch::Sender<Arc<Membership>>, next: Membership) {
    tx.send_if_modified(|current| {
        if **current == next {
            false
        } else {
            *current = Arc::new(next);
            true
        }
    });
}

/// Marks the membership stale, keeping its entries.
pub(crate) fn mark_stale(tx: &watch::Sender<Arc<Membership>>, error: String) {
    tx.send_if_modified(|current| {
        if current.status == Status::Stale(error.clone()) {
            false
        } else {
            *current = Arc::new(Membership { entries: current.entries.clone(), status: Status::Stale(error) });
            true
        }
    });
}
