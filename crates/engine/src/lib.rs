//! A small client for the Docker Engine HTTP API over a Unix socket, for Docker Engine and for
//! Podman's Docker-compatible service.
//!
//! Why our own client rather than bollard: tug needs about a dozen endpoints (version, images,
//! build, containers with attach and exec, volumes, one network lookup), and bollard brings a
//! large generated model and a long compile on our 2-core CI. This crate is those endpoints on the
//! hyper we already have, with errors that say what to do.
//!
//! It speaks API version 1.41 (Docker Engine 20.10): every request goes to `/v1.41/...`, which
//! newer Docker engines and Podman's compat service also accept. Only [`Engine::version`] uses the
//! unversioned path, so it answers even an engine too old for 1.41 and can say so.
//!
//! Shape of the crate:
//!
//! - [`resolve_endpoint`] finds the socket: the stack file's `engine:`, then `DOCKER_HOST`, then the
//!   usual Docker and Podman sockets.
//! - [`Engine`] makes one HTTP/1.1 connection per request (hyper over `tokio::net::UnixStream`);
//!   ordinary requests have a timeout ([`Engine::with_timeout`], 30 s by default), the long ones
//!   (wait, attach and exec streams, build, pull) none.
//! - Everything read from the engine is bounded (JSON bodies, error bodies, stream messages, frame
//!   sizes) and checked: a broken or hostile engine gives an [`Error`], never a panic.
//! - [`remove_labelled_containers_blocking`] is for a process without a runtime (tug's keeper).

mod container;
mod context;
mod endpoint;
mod engine;
mod exec;
mod ignore;
mod image;
mod stream;
mod tar;
mod transport;
mod volume;

use std::path::PathBuf;
use std::time::Duration;

pub use container::{
    ContainerConfig, ContainerInfo, ContainerSummary, Mount, MountKind, Network, Publish,
    remove_labelled_containers_blocking,
};
pub use endpoint::{Endpoint, Origin, resolve_endpoint};
pub use engine::{API_VERSION, Engine, Version};
pub use exec::{ExecConfig, ExecSession, ExecStdin};
pub use image::{BuildRequest, ImageInfo, write_context};
pub use stream::{Output, StreamKind};

/// What went wrong talking to the engine. Each variant carries what a user needs to act on it:
/// the socket and how it was chosen, the request, the image or container, and the engine's own
/// message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address names a transport other than a Unix socket (`tcp://`, `ssh://`, `npipe://`…).
    #[error("only a Unix socket is supported: {value} ({origin}); use unix:///path/to/docker.sock or an absolute path")]
    UnsupportedEndpoint { value: String, origin: Origin },

    /// The address is not a usable socket path (empty, relative).
    #[error("invalid container engine address {value:?} ({origin}): {reason}")]
    InvalidEndpoint { value: String, origin: Origin, reason: &'static str },

    /// Nothing was configured and none of the usual sockets exists.
    #[error(
        "no container engine found: none of {} exists; is Docker (or Podman's service) running? set `engine:` in the stack file or DOCKER_HOST",
        list_paths(tried)
    )]
    NoEndpoint { tried: Vec<PathBuf> },

    /// Connecting to the socket failed.
    #[error("{}", unreachable_message(socket, origin, source))]
    Unreachable {
        socket: PathBuf,
        origin: Origin,
        #[source]
        source: std::io::Error,
    },

    /// The engine did not answer in time.
    #[error("{request} on {}: no answer from the container engine within {after:?}", socket.display())]
    Timeout { request: String, socket: PathBuf, after: Duration },

    /// The HTTP exchange failed (the engine closed the connection, sent something that is not HTTP…).
    #[error("{request} on {}: {source}", socket.display())]
    Connection {
        request: String,
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },

    /// The engine refused a request; `message` is its own explanation.
    #[error("{request} failed ({status}): {message}")]
    Api { request: String, status: u16, message: String },

    /// The image, container, volume or exec does not exist (`what` says which).
    #[error("{what} not found: {message}")]
    NotFound { what: String, message: String },

    /// The engine refused because of the state of something: a container name in use, a volume in
    /// use, a container that is not running.
    #[error("{what}: {message}")]
    Conflict { what: String, message: String },

    /// Pulling an image failed (no registry, no such image, no access).
    #[error("pulling {image} failed: {message}")]
    Pull { image: String, message: String },

    /// The build failed; `output_tail` has the last lines of its output (also in the Display).
    #[error("building {image} failed: {message}{}", tail_block(output_tail))]
    Build { image: String, message: String, output_tail: Vec<String> },

    /// The build context cannot be sent (unreadable, too big, a path that is not UTF-8, a bad
    /// `.dockerignore` pattern).
    #[error("build context {}: {message}", path.display())]
    Context { path: PathBuf, message: String },

    /// The engine's answer made no sense (bad JSON, a bad stream frame, a missing field).
    #[error("{request}: unexpected answer from the container engine: {message}")]
    Protocol { request: String, message: String },

    /// An I/O error outside the HTTP exchange (a container's stream, the runtime).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The HTTP status the engine answered with, when the error is an engine refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

fn unreachable_message(socket: &std::path::Path, origin: &Origin, source: &std::io::Error) -> String {
    let hint = match source.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "is this user allowed to use it (for Docker, the `docker` group)? or set `engine:` or DOCKER_HOST"
        }
        _ => "is the Docker daemon (or Podman's service) running? set `engine:` in the stack file or DOCKER_HOST",
    };
    format!("cannot connect to the container engine at {} ({origin}): {source}; {hint}", socket.display())
}

fn tail_block(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nlast lines of the build output:");
    for line in lines {
        out.push_str("\n  ");
        out.push_str(line);
    }
    out
}
