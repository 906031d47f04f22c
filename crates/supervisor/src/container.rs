//! The container driver's side of the daemon: the engine it talks to, the names and labels of
//! what it creates, and the relays that let a container with a network of its own reach its
//! dependencies.
//!
//! Every container carries `tug.project`, `tug.service`, `tug.instance`, `tug.revision` and
//! `tug.state_dir` labels. The last names the stack (two stacks may share a project name but
//! never a state folder): it is how the keeper, and a daemon started after a crash, find every
//! container of the stack to remove.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tug_engine::Engine;

/// The label naming the stack's state folder.
pub const STATE_DIR_LABEL: &str = "tug.state_dir";

/// The label naming the daemon that created a container (its pid and start time): a daemon
/// cleaning up after an earlier one never removes its own.
pub const DAEMON_LABEL: &str = "tug.daemon";

/// This daemon's identity for [`DAEMON_LABEL`].
pub(crate) fn daemon_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        let started = tug_sys::procfs::stat(pid as i32).map(|s| s.start_time).unwrap_or(0);
        format!("{pid}-{started}")
    })
    .clone()
}

/// An engine once connected (and cleaned of an earlier daemon's containers).
type Connected = Arc<tokio::sync::OnceCell<Engine>>;

/// Engines by socket, each connected once.
#[derive(Default)]
pub(crate) struct Engines {
    engines: Mutex<HashMap<std::path::PathBuf, Connected>>,
    relays: tokio::sync::Mutex<HashMap<(Ipv4Addr, u16), Relay>>,
}

struct Relay {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Engines {
    /// The engine at `url`, once reachable. Its first use removes every container an earlier
    /// daemon of this stack left (the state folder's label, and another daemon's), before this
    /// one starts any. A failure is not kept: the next start tries again.
    pub async fn get(&self, url: &str, state_dir: &str) -> Result<Engine, String> {
        let endpoint = tug_engine::resolve_endpoint(Some(url), None, None).map_err(|e| e.to_string())?;
        // Two spellings of one socket (`/run/docker.sock`, `/var/run/docker.sock`) are one engine.
        let key = std::fs::canonicalize(&endpoint.socket).unwrap_or_else(|_| endpoint.socket.clone());
        let cell = {
            let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
            engines.entry(key).or_default().clone()
        };
        let connected = cell
            .get_or_try_init(|| async {
                let engine = Engine::new(endpoint);
                engine.version().await.map_err(|e| e.to_string())?;
                match remove_stack_containers(&engine, state_dir, Some(&daemon_id())).await {
                    Ok(0) => {}
                    Ok(n) => crate::log::info(&format!("removed {n} container(s) left by an earlier daemon"), &[]),
                    Err(e) => crate::log::warn(&format!("cannot list the containers an earlier daemon left: {e}"), &[]),
                }
                Ok::<_, String>(engine)
            })
            .await?;
        Ok(connected.clone())
    }

    /// Makes `gateway:port` (an address containers on the engine's bridge reach the host at)
    /// forward to `host:port`, where the service answers on this host. Kept until the daemon ends.
    pub async fn relay(&self, gateway: Ipv4Addr, port: u16, host: &str) -> Result<(), String> {
        // Checked and bound under one lock: replicas starting together share one relay.
        let mut relays = self.relays.lock().await;
        if relays.contains_key(&(gateway, port)) {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind((gateway, port))
            .await
            .map_err(|e| format!("cannot listen on {gateway}:{port} for containers to reach port {port}: {e}"))?;
        let target = crate::driver::format_address(host, port);
        relays.insert((gateway, port), Relay { task: tokio::spawn(relay(listener, target)) });
        Ok(())
    }
}

/// At most this many connections through one relay at once.
const RELAY_CONNECTIONS: usize = 1024;

async fn relay(listener: tokio::net::TcpListener, target: String) {
    let permits = Arc::new(tokio::sync::Semaphore::new(RELAY_CONNECTIONS));
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let target = target.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connect = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&target));
            if let Ok(Ok(mut outbound)) = connect.await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Removes every container labelled with this state folder, but those `except` (a daemon id)
/// created. Returns how many.
pub(crate) async fn remove_stack_containers(
    engine: &Engine,
    state_dir: &str,
    except: Option<&str>,
) -> Result<usize, tug_engine::Error> {
    let found = engine.list_containers(&[(STATE_DIR_LABEL, state_dir)]).await?;
    let mut removed = 0;
    for container in &found {
        if except.is_some() && container.labels.get(DAEMON_LABEL).map(String::as_str) == except {
            continue;
        }
        engine.remove_container(&container.id, true).await?;
        removed += 1;
    }
    Ok(removed)
}

/// The container's name on the engine: the project, the instance, and a digest of the state
/// folder (two stacks may share a project name).
pub(crate) fn container_name(project: &str, instance: &str, state_dir: &str) -> String {
    format!("{project}-{instance}-{:08x}", fnv(state_dir.as_bytes()) as u32)
}

/// FNV-1a: a short, stable digest for names (not a security boundary).
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// `path` or `path:options`, as Docker's `HostConfig.Tmpfs` wants them.
pub(crate) fn tmpfs_entry(text: &str) -> (String, String) {
    match text.split_once(':') {
        Some((path, options)) => (path.to_string(), options.to_string()),
        None => (text.to_string(), String::new()),
    }
}

/// Docker's exit status of a container killed by a signal is 128 + the signal, as a shell's.
pub(crate) fn exit_from_status(status: i64) -> crate::reaper::Exit {
    crate::reaper::Exit::Code(i32::try_from(status).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tell_stacks_apart() {
        let a = container_name("shop", "web-1", "/srv/a/.tug");
        let b = container_name("shop", "web-1", "/srv/b/.tug");
        assert!(a.starts_with("shop-web-1-") && a.len() == "shop-web-1-".len() + 8, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, container_name("shop", "web-1", "/srv/a/.tug"));
    }

    #[test]
    fn tmpfs_options_are_split_off_the_path() {
        assert_eq!(tmpfs_entry("/run"), ("/run".into(), String::new()));
        assert_eq!(tmpfs_entry("/tmp:size=64m,mode=1777"), ("/tmp".into(), "size=64m,mode=1777".into()));
    }
}
