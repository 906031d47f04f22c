//! The stable address of a service: a TCP listener on its `port` that forwards
//! each connection to one of its ready instances, in turn.
//!
//! This is the byte-level forwarding every proxied service gets; readiness
//! decides membership (an instance that is not `healthy`, or `running` without a
//! healthcheck, gets no new connection). Connections in flight are never cut by
//! a membership change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tug_proto::status::State;

use crate::Inner;

/// How long a connection waits for a ready instance before it is closed.
const WAIT_FOR_READY: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct Listeners {
    by_service: HashMap<String, (u16, JoinHandle<()>)>,
}

impl Listeners {
    pub fn holds(&self, service: &str, port: u16) -> bool {
        self.by_service.get(service).is_some_and(|(p, _)| *p == port)
    }

    /// Stops accepting for `service` (connections already forwarded go on).
    pub fn close(&mut self, service: &str) {
        if let Some((_, task)) = self.by_service.remove(service) {
            task.abort();
        }
    }

    pub fn close_all(&mut self) {
        for (_, (_, task)) in self.by_service.drain() {
            task.abort();
        }
    }
}

/// Listens on `port` for `service` unless already listening there. Binding
/// happens now, so a taken port is reported before any instance starts.
pub(crate) fn open(inner: &Arc<Inner>, service: &str, port: u16) -> Result<(), String> {
    let mut listeners = inner.listeners.lock().unwrap_or_else(|p| p.into_inner());
    if listeners.holds(service, port) {
        return Ok(());
    }
    listeners.close(service);
    let host = inner.config.host.clone();
    let std_listener = std::net::TcpListener::bind((host.as_str(), port))
        .map_err(|e| format!("cannot listen on {host}:{port} for `{service}`: {e}"))?;
    std_listener.set_nonblocking(true).map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let listener = TcpListener::from_std(std_listener).map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let task = tokio::spawn(accept_loop(inner.clone(), service.to_string(), listener));
    listeners.by_service.insert(service.to_string(), (port, task));
    Ok(())
}

async fn accept_loop(inner: Arc<Inner>, service: String, listener: TcpListener) {
    let turn = Arc::new(AtomicUsize::new(0));
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors, for example: wait instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(forward(inner.clone(), service.clone(), turn.clone(), client));
    }
}

/// The private ports of the service's ready instances, in instance order.
fn ready_ports(inner: &Inner, service: &str) -> Vec<u16> {
    let table = inner.lock();
    let has_healthcheck = table.services.get(service).is_some_and(|s| s.spec.healthcheck.is_some());
    table
        .instances
        .values()
        .filter(|i| i.status.service == service && i.status.pid.is_some())
        .filter(|i| i.status.state == State::Healthy || (!has_healthcheck && i.status.state == State::Running))
        .filter_map(|i| i.status.port)
        .collect()
}

async fn forward(inner: Arc<Inner>, service: String, turn: Arc<AtomicUsize>, mut client: TcpStream) {
    let mut changes = inner.changes.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT_FOR_READY;
    let mut tried: Vec<u16> = Vec::new();
    loop {
        let ports: Vec<u16> = ready_ports(&inner, &service).into_iter().filter(|p| !tried.contains(p)).collect();
        if ports.is_empty() {
            // Nothing ready (or every ready one refused): wait for a change, within limits.
            tried.clear();
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return;
            }
            continue;
        }
        let port = ports[turn.fetch_add(1, Ordering::Relaxed) % ports.len()];
        let host = inner.config.host.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            // Refused or timed out before any byte moved: another instance may take it.
            _ => {
                tried.push(port);
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
            }
        }
    }
}
