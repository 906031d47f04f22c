//! The daemon's network endpoint (`api.listen`): the control API (signed as on the socket),
//! `/metrics` and the dashboard, over HTTP/1.1 and HTTP/2, with TLS (rustls) when `api.tls`
//! is set and mTLS with `client_ca`. Connections are admitted as on the socket: a cap, and
//! the oldest connection that never proved itself makes room for a new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tug_proto::spec::ApiSpec;

use crate::daemon::{App, ConnInfo, Origin, Unproven};

/// Time for a client to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the TLS files are looked at for a renewal (certbot, cert-manager): three `stat`s.
const TLS_CHECK: Duration = Duration::from_secs(2);

/// The endpoint as configured by the last stack applied over the socket.
#[derive(Default)]
pub struct Endpoint {
    running: tokio::sync::Mutex<Option<Running>>,
}

struct Running {
    spec: ApiSpec,
    address: SocketAddr,
    tls: bool,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, and returns once the listening socket is closed (so its address can be
    /// bound again at once).
    async fn stop(mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(accept) = &self.accept {
            accept.abort();
        }
    }
}

/// Whether `address` may serve without TLS: loopback only, unless `insecure`.
pub fn check_plain(address: &SocketAddr, has_tls: bool, insecure: bool) -> Result<(), String> {
    if has_tls || insecure || address.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "api.listen {address} is reachable from other hosts, and without `api.tls` the API key's \
         signatures, the metrics token and the dashboard's cookies would cross the network in clear: \
         set api.tls (cert, key), or pass --insecure to accept that"
    ))
}

impl Endpoint {
    /// `scheme://address` when the endpoint listens.
    pub async fn url(&self) -> Option<String> {
        let running = self.running.lock().await;
        running.as_ref().map(|r| format!("{}://{}", if r.tls { "https" } else { "http" }, r.address))
    }

    /// What the endpoint was last configured with (None: not listening).
    pub async fn spec(&self) -> Option<ApiSpec> {
        self.running.lock().await.as_ref().map(|r| r.spec.clone())
    }

    /// Makes the endpoint what `wanted` says: started, moved, or stopped. On failure (a TLS file
    /// that cannot be read, an address in use) the endpoint stays as it was.
    pub async fn configure(&self, app: &Arc<App>, wanted: Option<&ApiSpec>) -> Result<(), String> {
        let mut running = self.running.lock().await;
        if running.as_ref().map(|r| &r.spec) == wanted {
            return Ok(());
        }
        let Some(wanted) = wanted else {
            if let Some(old) = running.take() {
                tug_supervisor::log::info(&format!("api: stopped listening on {}", old.address), &[]);
                old.stop().await;
            }
            return Ok(());
        };
        let address: SocketAddr =
            wanted.listen.parse().map_err(|_| format!("api.listen: `{}` is not an address and port", wanted.listen))?;
        check_plain(&address, wanted.tls.is_some(), wanted.insecure)?;
        let acceptor = match &wanted.tls {
            Some(files) => Some(
                tug_registry::tls::server_config(&files.cert, &files.key, files.client_ca.as_deref())
                    .map_err(|e| format!("api.tls: {e}"))?,
            ),
            None => None,
        };
        // The same port (on the same address, or 0.0.0.0 and 127.0.0.1): the old listener
        // must let go of it first.
        let mut old = running.take();
        let kept = match old.take_if(|o| o.address.port() == address.port()) {
            Some(same) => {
                let back = (same.spec.clone(), same.address);
                same.stop().await;
                Some(back)
            }
            None => None,
        };
        let listener = match bind(address) {
            Ok(listener) => listener,
            Err(e) => {
                // Put back what was there.
                if let Some((spec, old_address)) = kept
                    && let Ok(listener) = bind(old_address)
                {
                    let acceptor = spec
                        .tls
                        .as_ref()
                        .and_then(|f| tug_registry::tls::server_config(&f.cert, &f.key, f.client_ca.as_deref()).ok());
                    *running = Some(start(app, listener, Tls::serving(acceptor, &spec), spec));
                } else {
                    *running = old;
                }
                return Err(format!("api.listen: cannot listen on {address}: {e}"));
            }
        };
        if let Some(old) = old {
            old.stop().await;
        }
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        tug_supervisor::log::info(&format!("api: listening on {scheme}://{address}"), &[]);
        *running = Some(start(app, listener, Tls::serving(acceptor, wanted), wanted.clone()));
        Ok(())
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// The endpoint's TLS: the configuration it serves, and what its files looked like when it was
/// loaded, so a renewal on disk is served from the next handshake on without a restart.
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    files: tug_proto::spec::TlsFiles,
    loaded: Vec<Option<FileStamp>>,
}

/// What tells a rewritten or replaced file from the one read: its inode, size and time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: std::time::SystemTime,
}

impl Tls {
    /// The TLS of an endpoint configured by `spec`, serving `config` (loaded from its files).
    fn serving(config: Option<Arc<rustls::ServerConfig>>, spec: &ApiSpec) -> Option<Tls> {
        let (config, files) = config.zip(spec.tls.clone())?;
        let loaded = stamps(&files);
        Some(Tls { acceptor: tokio_rustls::TlsAcceptor::from(config), files, loaded })
    }

    /// Loads the files again if they changed since they were last read. A renewal that does not
    /// load (a half-written pair, a key that is not the certificate's) keeps the configuration
    /// in use and says why; the next change is tried again.
    fn reload_if_renewed(&mut self) {
        let now = stamps(&self.files);
        if now == self.loaded {
            return;
        }
        self.loaded = now;
        let files = &self.files;
        match tug_registry::tls::server_config(&files.cert, &files.key, files.client_ca.as_deref()) {
            Ok(config) => {
                self.acceptor = tokio_rustls::TlsAcceptor::from(config);
                tug_supervisor::log::info("api: the TLS files changed; new connections get the new certificate", &[]);
            }
            Err(e) => tug_supervisor::log::warn(
                &format!("api: the TLS files changed but do not load ({e}); still serving the previous certificate"),
                &[],
            ),
        }
    }
}

/// The stamps of the certificate, the key and the client CA (following symbolic links, as a
/// Kubernetes secret's `..data` swap does).
fn stamps(files: &tug_proto::spec::TlsFiles) -> Vec<Option<FileStamp>> {
    use std::os::unix::fs::MetadataExt;
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some(FileStamp { inode: meta.ino(), len: meta.len(), modified: meta.modified().ok()? })
        })
        .collect()
}

fn start(app: &Arc<App>, listener: TcpListener, mut tls: Option<Tls>, spec: ApiSpec) -> Running {
    let address = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let is_tls = tls.is_some();
    let app = app.clone();
    let accept = tokio::spawn(async move {
        let connections = Arc::new(tokio::sync::Semaphore::new(crate::daemon::MAX_CONNECTIONS));
        let unproven = Arc::new(Unproven::default());
        let mut renewal_check = tokio::time::interval(TLS_CHECK);
        renewal_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = renewal_check.tick(), if tls.is_some() => {
                    if let Some(tls) = tls.as_mut() {
                        tls.reload_if_renewed();
                    }
                    continue;
                }
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Some(permit) = crate::daemon::admit(&connections, &unproven).await else { continue };
            let (id, close) = unproven.admit();
            let unproven = unproven.clone();
            let info = ConnInfo { id, unproven: unproven.clone(), origin: Origin::Network { tls: is_tls, address } };
            let app = app.clone();
            let acceptor = tls.as_ref().map(|tls| tls.acceptor.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let work = async {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                            {
                                crate::daemon::serve_http(app, stream, info, true).await;
                            }
                        }
                        None => crate::daemon::serve_http(app, stream, info, true).await,
                    }
                };
                tokio::select! {
                    _ = work => {}
                    _ = close.notified() => {}
                }
                unproven.forget(id);
            });
        }
    });
    Running { spec, address, tls: is_tls, accept: Some(accept) }
}
