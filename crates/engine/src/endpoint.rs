//! Where the engine listens: the stack file's `engine:`, `DOCKER_HOST`, or a usual socket.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The Unix socket.
    pub socket: PathBuf,
    /// How it was chosen, so messages can say where to change it.
    pub origin: Origin,
}

/// How an [`Endpoint`] was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The stack file's `engine:`.
    Field,
    /// `$DOCKER_HOST`.
    DockerHost,
    /// The first usual socket that exists.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Field => "set by the stack file's `engine:`",
            Origin::DockerHost => "set by DOCKER_HOST",
            Origin::Default => "found at a default location",
        })
    }
}

impl Endpoint {
    /// The address as `unix:///path`, the form `DOCKER_HOST` takes.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// Chooses the engine's socket: `field` (the stack file's `engine:`) when set, then `docker_host`
/// (`$DOCKER_HOST`, an empty value counting as unset, as the Docker CLI does), then the first of
/// these that exists: `/var/run/docker.sock`, `/run/docker.sock`,
/// `$XDG_RUNTIME_DIR/podman/podman.sock` (rootless Podman), `/run/podman/podman.sock`.
///
/// A configured value is `unix:///path` or an absolute path; it is not required to exist yet (the
/// first request says so if it does not). `tcp://`, `ssh://`, `npipe://` and the like are refused
/// with [`Error::UnsupportedEndpoint`]; when nothing is configured and no usual socket exists, the
/// error lists what was tried.
pub fn resolve_endpoint(
    field: Option<&str>,
    docker_host: Option<&str>,
    xdg_runtime_dir: Option<&str>,
) -> Result<Endpoint, Error> {
    resolve_with(field, docker_host, xdg_runtime_dir, |path| path.exists())
}

/// [`resolve_endpoint`] with the existence check passed in, for tests.
pub(crate) fn resolve_with(
    field: Option<&str>,
    docker_host: Option<&str>,
    xdg_runtime_dir: Option<&str>,
    exists: impl Fn(&Path) -> bool,
) -> Result<Endpoint, Error> {
    if let Some(value) = field {
        return parse(value, Origin::Field);
    }
    if let Some(value) = docker_host.filter(|v| !v.is_empty()) {
        return parse(value, Origin::DockerHost);
    }
    let mut tried = vec![PathBuf::from("/var/run/docker.sock"), PathBuf::from("/run/docker.sock")];
    if let Some(dir) = xdg_runtime_dir.filter(|d| !d.is_empty()) {
        tried.push(Path::new(dir).join("podman/podman.sock"));
    }
    tried.push(PathBuf::from("/run/podman/podman.sock"));
    match tried.iter().find(|p| exists(p)) {
        Some(socket) => Ok(Endpoint { socket: socket.clone(), origin: Origin::Default }),
        None => Err(Error::NoEndpoint { tried }),
    }
}

fn parse(value: &str, origin: Origin) -> Result<Endpoint, Error> {
    let invalid = |reason| Error::InvalidEndpoint { value: value.to_string(), origin, reason };
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let path = match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("unix") => rest,
        Some(_) => return Err(Error::UnsupportedEndpoint { value: value.to_string(), origin }),
        None if trimmed.starts_with('/') => trimmed,
        // `host:port` without a scheme is how some tools write a TCP address.
        None if trimmed.contains(':') => {
            return Err(Error::UnsupportedEndpoint { value: value.to_string(), origin });
        }
        None => return Err(invalid("a socket path must be absolute (unix:///path or /path)")),
    };
    if !path.starts_with('/') {
        return Err(invalid("a socket path must be absolute (unix:///path or /path)"));
    }
    Ok(Endpoint { socket: PathBuf::from(path), origin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        field: Option<&str>,
        host: Option<&str>,
        xdg: Option<&str>,
        present: &[&str],
    ) -> Result<Endpoint, String> {
        resolve_with(field, host, xdg, |p| present.iter().any(|q| Path::new(q) == p)).map_err(|e| e.to_string())
    }

    fn socket(path: &str, origin: Origin) -> Result<Endpoint, String> {
        Ok(Endpoint { socket: PathBuf::from(path), origin })
    }

    #[test]
    fn field_wins_then_docker_host_then_defaults() {
        let all = ["/var/run/docker.sock", "/run/docker.sock", "/run/user/1000/podman/podman.sock"];
        assert_eq!(resolve(Some("unix:///a.sock"), Some("/b.sock"), None, &all), socket("/a.sock", Origin::Field));
        assert_eq!(resolve(None, Some("unix:///b.sock"), None, &all), socket("/b.sock", Origin::DockerHost));
        assert_eq!(resolve(None, Some(""), None, &all), socket("/var/run/docker.sock", Origin::Default));
        assert_eq!(resolve(None, None, None, &all[1..]), socket("/run/docker.sock", Origin::Default));
        assert_eq!(
            resolve(None, None, Some("/run/user/1000"), &all[2..]),
            socket("/run/user/1000/podman/podman.sock", Origin::Default)
        );
        assert_eq!(
            resolve(None, None, Some("/run/user/1000"), &["/run/podman/podman.sock"]),
            socket("/run/podman/podman.sock", Origin::Default)
        );
    }

    #[test]
    fn accepts_unix_urls_and_absolute_paths() {
        assert_eq!(resolve(Some("/x/docker.sock"), None, None, &[]), socket("/x/docker.sock", Origin::Field));
        assert_eq!(resolve(Some("UNIX:///x.sock"), None, None, &[]), socket("/x.sock", Origin::Field));
        let endpoint = resolve(None, Some("unix:///run/podman/podman.sock"), None, &[]).unwrap();
        assert_eq!(endpoint.url(), "unix:///run/podman/podman.sock");
    }

    #[test]
    fn refuses_other_transports_and_relative_paths() {
        for value in
            ["tcp://127.0.0.1:2375", "ssh://me@host", "npipe:////./pipe/docker_engine", "fd://", "localhost:2375"]
        {
            let message = resolve(None, Some(value), None, &[]).unwrap_err();
            assert!(message.starts_with("only a Unix socket is supported: "), "{message}");
            assert!(message.contains(value) && message.contains("DOCKER_HOST"), "{message}");
        }
        let message = resolve(Some("unix://relative.sock"), None, None, &[]).unwrap_err();
        assert!(message.contains("must be absolute") && message.contains("`engine:`"), "{message}");
        assert!(resolve(Some("docker.sock"), None, None, &[]).unwrap_err().contains("must be absolute"));
        assert!(resolve(Some(""), None, None, &[]).unwrap_err().contains("empty"));
    }

    #[test]
    fn lists_what_was_tried_when_nothing_exists() {
        let message = resolve(None, None, Some("/run/user/7"), &[]).unwrap_err();
        assert!(
            message.contains(
                "/var/run/docker.sock, /run/docker.sock, /run/user/7/podman/podman.sock, /run/podman/podman.sock"
            ),
            "{message}"
        );
        assert!(message.contains("DOCKER_HOST"), "{message}");
    }
}
