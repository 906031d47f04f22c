//! Containers: create, attach, start, wait, kill, remove, inspect, list.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;

use crate::engine::Engine;
use crate::image::flag;
use crate::stream::Output;
use crate::transport::{Call, segment};
use crate::{Endpoint, Error};

/// How a container is to be created. [`ContainerConfig::new`] gives the defaults tug wants.
///
/// tug supervises containers itself, so whatever the config says, the container gets no restart
/// policy (`RestartPolicy: no`), no image health check (`Healthcheck: NONE`), no TTY and no stdin,
/// and its stdout and stderr can be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// An image id (`sha256:…`) or reference.
    pub image: String,
    /// Replaces the image's `CMD`.
    pub cmd: Option<Vec<String>>,
    /// Replaces the image's `ENTRYPOINT`.
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables, added to the image's.
    pub env: Vec<(String, String)>,
    /// `user[:group]`; the image's when `None`.
    pub user: Option<String>,
    /// The image's when `None`.
    pub working_dir: Option<String>,
    /// Labels (tug's identify the stack, service and instance).
    pub labels: Vec<(String, String)>,
    /// The container's network, and the ports it publishes.
    pub network: Network,
    /// `name:ip` lines for `/etc/hosts`.
    pub extra_hosts: Vec<String>,
    /// Volumes and bind mounts (`HostConfig.Mounts`).
    pub mounts: Vec<Mount>,
    /// Path and mount options (`""` for none) of each tmpfs.
    pub tmpfs: Vec<(String, String)>,
    /// A read-only root filesystem.
    pub read_only: bool,
    /// Capabilities to add.
    pub cap_add: Vec<String>,
    /// Capabilities to drop (`ALL` for all).
    pub cap_drop: Vec<String>,
    /// `--security-opt` values (`no-new-privileges`, `seccomp=…`).
    pub security_opt: Vec<String>,
    /// Run the engine's init (tini) as PID 1, so signals reach the command and zombies are reaped.
    pub init: bool,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// The signal the engine's `stop` sends (tug sends its own through [`Engine::kill`]).
    pub stop_signal: Option<String>,
    /// Tell the engine to keep no logs (`LogConfig: none`): tug keeps the output itself from the
    /// attached streams, so the engine need not store a second copy. Attaching still works.
    pub engine_logs_off: bool,
}

impl ContainerConfig {
    /// A container of `image` with the image's command, on the default network, engine logs off.
    pub fn new(image: impl Into<String>) -> ContainerConfig {
        ContainerConfig {
            image: image.into(),
            cmd: None,
            entrypoint: None,
            env: Vec::new(),
            user: None,
            working_dir: None,
            labels: Vec::new(),
            network: Network::default(),
            extra_hosts: Vec::new(),
            mounts: Vec::new(),
            tmpfs: Vec::new(),
            read_only: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            security_opt: Vec::new(),
            init: false,
            memory_bytes: None,
            nano_cpus: None,
            stop_signal: None,
            engine_logs_off: true,
        }
    }
}

/// The container's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The host's network stack (`NetworkMode: host`): ports are the host's.
    Host,
    /// The engine's default network (Docker's `bridge`, Podman's `podman`), with these ports
    /// published on the host.
    Bridge {
        /// The ports to publish on the host.
        publish: Vec<Publish>,
    },
}

impl Default for Network {
    fn default() -> Network {
        Network::Bridge { publish: Vec::new() }
    }
}

/// A published TCP port: `host_ip:host_port` on the host forwards to `container_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// `127.0.0.1`, `0.0.0.0`, or `""` for the engine's default.
    pub host_ip: String,
    /// The host port.
    pub host_port: u16,
    /// The port in the container.
    pub container_port: u16,
}

/// A volume or a bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// A volume or a bind.
    pub kind: MountKind,
    /// The volume's name, or the host path for a bind (which must exist: the engine refuses a
    /// missing one).
    pub source: String,
    /// The path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What a [`Mount`] mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A named volume (created if absent).
    Volume,
    /// A host path.
    Bind,
}

/// What [`Engine::inspect_container`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The full container id.
    pub id: String,
    /// The name, without the engine's leading `/`.
    pub name: String,
    /// Whether it is running now.
    pub running: bool,
    /// `created`, `running`, `exited`, `paused`…
    pub status: String,
    /// The main process's pid on the host, while running.
    pub pid: Option<i32>,
    /// The exit code, once it has run and ended.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// Why the engine could not start or run it, if it says.
    pub error: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The id of its image (`sha256:…`).
    pub image: String,
}

/// One entry of [`Engine::list_containers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    /// The full container id.
    pub id: String,
    /// Its names, without the engine's leading `/`.
    pub names: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `created`, `running`, `exited`…
    pub state: String,
}

/// The body of `POST /containers/create`.
pub(crate) fn create_body(config: &ContainerConfig) -> Value {
    let pairs = |pairs: &[(String, String)]| -> Value {
        Value::Object(pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
    };
    let mut body = Map::new();
    let mut set = |key: &str, value: Value| {
        body.insert(key.to_string(), value);
    };
    set("Image", json!(config.image));
    if let Some(cmd) = &config.cmd {
        set("Cmd", json!(cmd));
    }
    if let Some(entrypoint) = &config.entrypoint {
        set("Entrypoint", json!(entrypoint));
    }
    set("Env", json!(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()));
    if let Some(user) = &config.user {
        set("User", json!(user));
    }
    if let Some(dir) = &config.working_dir {
        set("WorkingDir", json!(dir));
    }
    set("Labels", pairs(&config.labels));
    set("AttachStdin", json!(false));
    set("AttachStdout", json!(true));
    set("AttachStderr", json!(true));
    set("Tty", json!(false));
    set("OpenStdin", json!(false));
    set("StdinOnce", json!(false));
    set("Healthcheck", json!({"Test": ["NONE"]}));
    if let Some(signal) = &config.stop_signal {
        set("StopSignal", json!(signal));
    }

    let mut host = Map::new();
    let mut set_host = |key: &str, value: Value| {
        host.insert(key.to_string(), value);
    };
    set_host("RestartPolicy", json!({"Name": "no"}));
    match &config.network {
        Network::Host => set_host("NetworkMode", json!("host")),
        Network::Bridge { publish } if !publish.is_empty() => {
            let mut exposed = Map::new();
            let mut bindings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for p in publish {
                let port = format!("{}/tcp", p.container_port);
                exposed.insert(port.clone(), json!({}));
                bindings
                    .entry(port)
                    .or_default()
                    .push(json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}));
            }
            set("ExposedPorts", Value::Object(exposed));
            set_host("PortBindings", json!(bindings));
        }
        Network::Bridge { .. } => {}
    }
    set_host("ExtraHosts", json!(config.extra_hosts));
    let mounts: Vec<Value> = config
        .mounts
        .iter()
        .map(|m| {
            let kind = match m.kind {
                MountKind::Volume => "volume",
                MountKind::Bind => "bind",
            };
            json!({"Type": kind, "Source": m.source, "Target": m.target, "ReadOnly": m.read_only})
        })
        .collect();
    set_host("Mounts", json!(mounts));
    set_host("Tmpfs", pairs(&config.tmpfs));
    set_host("ReadonlyRootfs", json!(config.read_only));
    set_host("CapAdd", json!(config.cap_add));
    set_host("CapDrop", json!(config.cap_drop));
    set_host("SecurityOpt", json!(config.security_opt));
    set_host("Init", json!(config.init));
    if let Some(memory) = config.memory_bytes {
        set_host("Memory", json!(memory));
    }
    if let Some(nano_cpus) = config.nano_cpus {
        set_host("NanoCpus", json!(nano_cpus));
    }
    if config.engine_logs_off {
        set_host("LogConfig", json!({"Type": "none", "Config": {}}));
    }
    set("HostConfig", Value::Object(host));
    Value::Object(body)
}

/// `{"label": ["k=v", …]}`, the filter of list endpoints.
pub(crate) fn label_filter(labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    json!({ "label": labels }).to_string()
}

fn strip_slash(name: String) -> String {
    match name.strip_prefix('/') {
        Some(rest) => rest.to_string(),
        None => name,
    }
}

impl Engine {
    /// `POST /containers/create?name=…`: creates a container and returns its id. A name in use
    /// is [`Error::Conflict`]; a missing image is [`Error::NotFound`] naming it.
    pub async fn create_container(&self, name: &str, config: &ContainerConfig) -> Result<String, Error> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let call = Call::post("/containers/create").query("name", name).json(&create_body(config));
        let reply = self.fetch(call).await?;
        match reply.status {
            StatusCode::CONFLICT => {
                Err(Error::Conflict { what: format!("container name {name}"), message: reply.message() })
            }
            StatusCode::NOT_FOUND => {
                Err(Error::NotFound { what: format!("image {}", config.image), message: reply.message() })
            }
            status if status.is_success() => Ok(reply.json::<Created>()?.id),
            _ => Err(reply.into_error()),
        }
    }

    /// `POST /containers/{id}/attach?stream=1&stdout=1&stderr=1`, upgraded to a raw stream: the
    /// container's stdout and stderr from now on. Call it before [`Engine::start`] so nothing is
    /// lost. The stream ends when the container does.
    pub async fn attach(&self, id: &str) -> Result<Output, Error> {
        let call = Call::post(format!("/containers/{}/attach", segment(id)))
            .query("stream", "1")
            .query("stdout", "1")
            .query("stderr", "1")
            .upgrade();
        let (output, _) = self.open_stream(call, false, &format!("container {id}")).await?;
        Ok(output)
    }

    /// Sends a request that turns the connection into a raw stream (attach, exec start). With
    /// `writable`, also returns the write side (exec's stdin), which needs an upgraded connection.
    pub(crate) async fn open_stream(
        &self,
        call: Call,
        writable: bool,
        what: &str,
    ) -> Result<(Output, Option<OwnedWriteHalf>), Error> {
        // The answer's head comes at once (the stream after it has no time limit).
        let request = call.describe();
        let (request, mut response) = tokio::time::timeout(self.timeout(), self.send(call))
            .await
            .unwrap_or_else(|_| Err(self.timeout_error(request, self.timeout())))?;
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = hyper::upgrade::on(&mut response).await.map_err(|e| self.body_error(&request, e))?;
            // Back to the Unix socket itself, so the write side can be shut down on its own.
            let parts = upgraded.downcast::<TokioIo<UnixStream>>().map_err(|_| Error::Protocol {
                request: request.clone(),
                message: "the upgraded connection is not the Unix socket it was made on".to_string(),
            })?;
            let stream = parts.io.into_inner();
            return Ok(if writable {
                let (read, write) = stream.into_split();
                (Output::from_stream(request, Box::new(read), &parts.read_buf), Some(write))
            } else {
                (Output::from_stream(request, Box::new(stream), &parts.read_buf), None)
            });
        }
        if status.is_success() {
            // An engine that hijacks without upgrading: the body is the stream.
            if writable {
                return Err(Error::Protocol {
                    request,
                    message: format!(
                        "the engine answered {status} without upgrading the connection, so stdin cannot be sent"
                    ),
                });
            }
            return Ok((Output::from_body(request, self.clone(), response.into_body()), None));
        }
        let reply = self.error_reply(request, response).await;
        Err(match reply.status {
            StatusCode::NOT_FOUND => Error::NotFound { what: what.to_string(), message: reply.message() },
            StatusCode::CONFLICT => Error::Conflict { what: what.to_string(), message: reply.message() },
            _ => reply.into_error(),
        })
    }

    /// `POST /containers/{id}/start`. Already started is fine.
    pub async fn start(&self, id: &str) -> Result<(), Error> {
        let reply = self.fetch(Call::post(format!("/containers/{}/start", segment(id)))).await?;
        match reply.status {
            StatusCode::NOT_MODIFIED => Ok(()),
            StatusCode::NOT_FOUND => Err(Error::NotFound { what: format!("container {id}"), message: reply.message() }),
            _ => reply.ok(),
        }
    }

    /// `POST /containers/{id}/wait`: waits until the container is not running and returns its
    /// exit code (a container that never started counts as not running: call it after
    /// [`Engine::start`]). An error the engine reports with the code (`Error.Message`) is an
    /// [`Error::Api`] whose message has both. No timeout.
    pub async fn wait(&self, id: &str) -> Result<i64, Error> {
        #[derive(Deserialize)]
        struct Waited {
            #[serde(rename = "StatusCode")]
            status_code: i64,
            #[serde(rename = "Error", default)]
            error: Option<WaitError>,
        }
        #[derive(Deserialize)]
        struct WaitError {
            #[serde(rename = "Message", default)]
            message: Option<String>,
        }
        let reply = self.fetch_within(Call::post(format!("/containers/{}/wait", segment(id))), None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(Error::NotFound { what: format!("container {id}"), message: reply.message() });
        }
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        let waited: Waited = reply.json()?;
        match waited.error.and_then(|e| e.message).filter(|m| !m.is_empty()) {
            Some(message) => Err(Error::Api {
                request: reply.request,
                status: reply.status.as_u16(),
                message: format!("{message} (exit code {})", waited.status_code),
            }),
            None => Ok(waited.status_code),
        }
    }

    /// `POST /containers/{id}/kill?signal=…` (`SIGTERM`, `TERM`, `15`). A container that is not
    /// running, or gone, is fine: there is nothing to kill.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), Error> {
        let call = Call::post(format!("/containers/{}/kill", segment(id))).query("signal", signal);
        let reply = self.fetch(call).await?;
        match reply.status {
            // 409 is Docker's "is not running" (and Podman's "container state improper").
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => Ok(()),
            _ => reply.ok(),
        }
    }

    /// `DELETE /containers/{id}?force=…&v=1`: removes a container and its anonymous volumes
    /// (named ones stay). Gone already, or being removed, is fine. A running container without
    /// `force` is [`Error::Conflict`].
    pub async fn remove_container(&self, id: &str, force: bool) -> Result<(), Error> {
        let call = Call::delete(format!("/containers/{}", segment(id))).query("force", flag(force)).query("v", "1");
        let reply = self.fetch(call).await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(()),
            StatusCode::CONFLICT => {
                let message = reply.message();
                if message.contains("already in progress") {
                    Ok(())
                } else {
                    Err(Error::Conflict { what: format!("container {id}"), message })
                }
            }
            _ => reply.ok(),
        }
    }

    /// `GET /containers/{id}/json`: the container's state, `None` when it does not exist.
    pub async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInfo>, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Raw {
            id: String,
            #[serde(default)]
            name: String,
            #[serde(default)]
            image: String,
            #[serde(default)]
            state: Option<State>,
            #[serde(default)]
            config: Option<Config>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct State {
            #[serde(default)]
            status: String,
            #[serde(default)]
            running: bool,
            #[serde(default)]
            pid: i64,
            #[serde(default)]
            exit_code: i64,
            #[serde(default, rename = "OOMKilled")]
            oom_killed: bool,
            #[serde(default)]
            error: Option<String>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct Config {
            #[serde(default)]
            labels: Option<BTreeMap<String, String>>,
        }

        let reply = self.fetch(Call::get(format!("/containers/{}/json", segment(id)))).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        let raw: Raw = reply.json()?;
        let state = raw.state.unwrap_or_default();
        let has_ended = !state.running && state.status != "created";
        Ok(Some(ContainerInfo {
            id: raw.id,
            name: strip_slash(raw.name),
            running: state.running,
            pid: i32::try_from(state.pid).ok().filter(|&pid| pid > 0),
            exit_code: has_ended.then_some(state.exit_code),
            oom_killed: state.oom_killed,
            error: state.error.filter(|e| !e.is_empty()),
            labels: raw.config.unwrap_or_default().labels.unwrap_or_default(),
            image: raw.image,
            status: state.status,
        }))
    }

    /// `GET /containers/json?all=1`: every container (running or not) that has all `labels`.
    pub async fn list_containers(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerSummary>, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Raw {
            id: String,
            #[serde(default)]
            names: Option<Vec<String>>,
            #[serde(default)]
            labels: Option<BTreeMap<String, String>>,
            #[serde(default)]
            state: String,
        }
        let mut call = Call::get("/containers/json").query("all", "1");
        if !labels.is_empty() {
            call = call.query("filters", label_filter(labels));
        }
        let reply = self.fetch(call).await?;
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        let raw: Vec<Raw> = reply.json()?;
        Ok(raw
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id,
                names: c.names.unwrap_or_default().into_iter().map(strip_slash).collect(),
                labels: c.labels.unwrap_or_default(),
                state: c.state,
            })
            .collect())
    }
}

/// For a process without a runtime (tug's keeper, cleaning up after the daemon): force-removes
/// every container, in any state, that has `label`, and returns how many it removed. Runs its
/// own single-threaded runtime; `timeout` bounds the whole of it. Called from inside a tokio
/// runtime (where it would block that runtime's thread) it refuses with an error.
pub fn remove_labelled_containers_blocking(
    endpoint: &Endpoint,
    label: (&str, &str),
    timeout: Duration,
) -> Result<usize, Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Io {
            what: "removing containers without a runtime".to_string(),
            source: std::io::Error::other("called from inside a tokio runtime; use the async calls there"),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io { what: "starting a runtime to remove containers".to_string(), source })?;
    let engine = Engine::new(endpoint.clone()).with_timeout(timeout);
    runtime.block_on(async {
        let work = async {
            let containers = engine.list_containers(&[label]).await?;
            for container in &containers {
                engine.remove_container(&container.id, true).await?;
            }
            Ok(containers.len())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                Err(engine.timeout_error(format!("removing the containers labelled {}={}", label.0, label.1), timeout))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_body_has_tugs_fixed_settings() {
        let body = create_body(&ContainerConfig::new("sha256:abc"));
        assert_eq!(
            body,
            json!({
                "Image": "sha256:abc",
                "Env": [],
                "Labels": {},
                "AttachStdin": false,
                "AttachStdout": true,
                "AttachStderr": true,
                "Tty": false,
                "OpenStdin": false,
                "StdinOnce": false,
                "Healthcheck": {"Test": ["NONE"]},
                "HostConfig": {
                    "RestartPolicy": {"Name": "no"},
                    "ExtraHosts": [],
                    "Mounts": [],
                    "Tmpfs": {},
                    "ReadonlyRootfs": false,
                    "CapAdd": [],
                    "CapDrop": [],
                    "SecurityOpt": [],
                    "Init": false,
                    "LogConfig": {"Type": "none", "Config": {}},
                }
            })
        );
    }

    #[test]
    fn the_create_body_carries_every_field() {
        let config = ContainerConfig {
            cmd: Some(vec!["serve".into(), "--port=8000".into()]),
            entrypoint: Some(vec!["/app".into()]),
            env: vec![("A".into(), "1=2".into())],
            user: Some("1000:1000".into()),
            working_dir: Some("/srv".into()),
            labels: vec![("tug.stack".into(), "shop".into())],
            network: Network::Bridge {
                publish: vec![
                    Publish { host_ip: "127.0.0.1".into(), host_port: 18000, container_port: 8000 },
                    Publish { host_ip: "::1".into(), host_port: 18000, container_port: 8000 },
                ],
            },
            extra_hosts: vec!["host.docker.internal:172.17.0.1".into()],
            mounts: vec![
                Mount { kind: MountKind::Volume, source: "data".into(), target: "/data".into(), read_only: false },
                Mount { kind: MountKind::Bind, source: "/etc/app".into(), target: "/config".into(), read_only: true },
            ],
            tmpfs: vec![("/tmp".into(), "size=64m".into())],
            read_only: true,
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges".into()],
            init: true,
            memory_bytes: Some(256 << 20),
            nano_cpus: Some(500_000_000),
            stop_signal: Some("SIGINT".into()),
            engine_logs_off: false,
            ..ContainerConfig::new("app:1")
        };
        let body = create_body(&config);
        assert_eq!(body["Cmd"], json!(["serve", "--port=8000"]));
        assert_eq!(body["Entrypoint"], json!(["/app"]));
        assert_eq!(body["Env"], json!(["A=1=2"]));
        assert_eq!(body["User"], "1000:1000");
        assert_eq!(body["WorkingDir"], "/srv");
        assert_eq!(body["StopSignal"], "SIGINT");
        assert_eq!(body["Labels"], json!({"tug.stack": "shop"}));
        assert_eq!(body["ExposedPorts"], json!({"8000/tcp": {}}));
        let host = &body["HostConfig"];
        assert_eq!(
            host["PortBindings"],
            json!({"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18000"}, {"HostIp": "::1", "HostPort": "18000"}]})
        );
        assert_eq!(host.get("NetworkMode"), None);
        assert_eq!(host["ExtraHosts"], json!(["host.docker.internal:172.17.0.1"]));
        assert_eq!(
            host["Mounts"],
            json!([
                {"Type": "volume", "Source": "data", "Target": "/data", "ReadOnly": false},
                {"Type": "bind", "Source": "/etc/app", "Target": "/config", "ReadOnly": true},
            ])
        );
        assert_eq!(host["Tmpfs"], json!({"/tmp": "size=64m"}));
        assert_eq!(host["ReadonlyRootfs"], true);
        assert_eq!(host["CapAdd"], json!(["NET_ADMIN"]));
        assert_eq!(host["CapDrop"], json!(["ALL"]));
        assert_eq!(host["SecurityOpt"], json!(["no-new-privileges"]));
        assert_eq!(host["Init"], true);
        assert_eq!(host["Memory"], 256 << 20);
        assert_eq!(host["NanoCpus"], 500_000_000);
        assert_eq!(host.get("LogConfig"), None);

        let host_network = create_body(&ContainerConfig { network: Network::Host, ..ContainerConfig::new("x") });
        assert_eq!(host_network["HostConfig"]["NetworkMode"], "host");
        assert_eq!(host_network.get("ExposedPorts"), None);
    }

    #[test]
    fn label_filters_are_json() {
        assert_eq!(label_filter(&[("tug.stack", "shop"), ("a", "b=c")]), r#"{"label":["tug.stack=shop","a=b=c"]}"#);
    }
}
