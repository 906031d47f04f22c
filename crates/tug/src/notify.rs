//! Webhooks (`notify`): a JSON POST for each `deployed`, `rolled_back`, `promoted` and
//! `crash_loop` event, signed with HMAC-SHA256 under the key `tug token webhook` prints
//! (`X-Tug-Signature: sha256=HEX` over `TIMESTAMP.BODY`, the timestamp in `X-Tug-Timestamp`),
//! retried with backoff on a connection failure, a 5xx or a 429. A payload carries names,
//! revisions, phases and figures: never an environment value.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tug_proto::spec::NotifySpec;
use tug_supervisor::Supervisor;
use tug_supervisor::events::{Event, Kind};

/// Attempts per delivery, and the wait before the first retry (doubling after each).
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries under way at once; past that, new events wait for a place.
const IN_FLIGHT: usize = 16;

#[derive(Default)]
struct Hooks {
    project: String,
    hooks: Vec<NotifySpec>,
}

pub struct Notifier {
    hooks: Arc<Mutex<Hooks>>,
}

impl Notifier {
    /// Follows the supervisor's events and delivers those a webhook subscribed to. Must run
    /// inside the runtime.
    pub fn start(supervisor: Supervisor, key: String) -> Notifier {
        let hooks = Arc::new(Mutex::new(Hooks::default()));
        let reading = hooks.clone();
        let mut events = supervisor.events().subscribe();
        let places = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let key = Arc::new(key);
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tug_supervisor::log::warn(&format!("webhooks: {missed} events went by unsent"), &[]);
                        continue;
                    }
                    Err(_) => return,
                };
                let Some(name) = subscribed_name(event.kind) else { continue };
                let (project, targets) = {
                    let hooks = reading.lock().unwrap_or_else(|p| p.into_inner());
                    let targets: Vec<NotifySpec> =
                        hooks.hooks.iter().filter(|h| h.events.iter().any(|e| e == name)).cloned().collect();
                    (hooks.project.clone(), targets)
                };
                if targets.is_empty() {
                    continue;
                }
                let body = Bytes::from(payload(&project, name, &event).to_string());
                for hook in targets {
                    let Ok(place) = places.clone().acquire_owned().await else { return };
                    let (body, key, service) = (body.clone(), key.clone(), event.service.clone());
                    tokio::spawn(async move {
                        let _place = place;
                        deliver(&hook, name, &body, &key, &service).await;
                    });
                }
            }
        });
        Notifier { hooks }
    }

    pub fn configure(&self, project: &str, hooks: Vec<NotifySpec>) {
        let mut current = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        current.project = project.to_string();
        current.hooks = hooks;
    }
}

/// The `notify` event name of a supervisor event, for those that can be subscribed to.
fn subscribed_name(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Deployed
        | Kind::RolledBack
        | Kind::DeployFailed
        | Kind::Promoted
        | Kind::CrashLoop
        | Kind::BackupFailed => Some(kind.as_str()),
        Kind::Deploy | Kind::Restart | Kind::Autoscale | Kind::Backup => None,
    }
}

/// The JSON a webhook receives.
pub fn payload(project: &str, name: &str, event: &Event) -> serde_json::Value {
    let rollout = event.rollout.as_ref();
    serde_json::json!({
        "event": name,
        "project": project,
        "service": event.service,
        "instance": event.instance,
        "at": event.at,
        "message": event.message,
        "revision": rollout.map(|r| r.to_revision.clone()),
        "from_revision": rollout.and_then(|r| r.from_revision.clone()),
        "strategy": rollout.map(|r| r.strategy.as_str()),
        "reason": rollout.and_then(|r| r.reason.clone()),
        // The analysis the decision was made on (canary): requests, errors, error rate, p99,
        // for the new revision and the stable one.
        "figures": rollout.and_then(|r| r.measured.clone()),
    })
}

/// Posts `body` until the receiver takes it, or the attempts run out (logged).
async fn deliver(hook: &NotifySpec, name: &str, body: &Bytes, key: &str, service: &str) {
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, post(&hook.url.value, name, body, key)).await;
        let problem = match outcome {
            Ok(Ok(status)) if (200..300).contains(&status) => return,
            Ok(Ok(status)) if status != 429 && status < 500 => {
                tug_supervisor::log::warn(
                    &format!("webhook {}: {name} refused with HTTP {status}; not retried", where_to(&hook.url)),
                    &[("service", service)],
                );
                return;
            }
            Ok(Ok(status)) => format!("HTTP {status}"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()),
        };
        if attempt == ATTEMPTS {
            tug_supervisor::log::warn(
                &format!("webhook {}: {name} not delivered after {ATTEMPTS} attempts: {problem}", where_to(&hook.url)),
                &[("service", service)],
            );
            return;
        }
        tug_supervisor::log::info(
            &format!(
                "webhook {}: {name} attempt {attempt} failed ({problem}); retrying in {} s",
                where_to(&hook.url),
                wait.as_secs()
            ),
            &[("service", service)],
        );
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

/// What the daemon's log says of a webhook: its scheme and host only. A hook's path or query
/// often is its credential (Slack's and Discord's are), secret setting or not.
fn where_to(url: &tug_proto::spec::Value) -> String {
    match parse_url(&url.value) {
        Ok(t) => format!("{}://{}", if t.tls { "https" } else { "http" }, t.host),
        Err(_) => url.shown().to_string(),
    }
}

/// Where a webhook URL points.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    use crate::url::Problem;
    let u = crate::url::split(url).map_err(|problem| match problem {
        Problem::Scheme(_) | Problem::NoScheme => "not an http:// or https:// URL".to_string(),
        Problem::Credentials => "credentials in a webhook URL are not supported: put a token in the path".into(),
        Problem::BadIpv6 => "a bad IPv6 address".into(),
        Problem::BadPort => "a bad port".into(),
        Problem::NoHost => "no host".into(),
    })?;
    let path = match u.rest {
        "" => "/".to_string(),
        query if query.starts_with('?') => format!("/{query}"),
        path => path.to_string(),
    };
    Ok(Target { tls: u.tls, port: u.port.unwrap_or(if u.tls { 443 } else { 80 }), host: u.host, path })
}

/// One POST; the answer's status.
async fn post(url: &str, name: &str, body: &Bytes, key: &str) -> Result<u16, String> {
    let target = parse_url(url)?;
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", target.host, target.port))?;
    let _ = stream.set_nodelay(true);
    let timestamp = tug_proto::unix_now().to_string();
    let mut signed = timestamp.clone().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    let signature = format!("sha256={}", tug_proto::auth::hmac_hex(key.as_bytes(), &signed));
    // The port only when it is not the scheme's default, as browsers and curl send it.
    let host = if target.host.contains(':') { format!("[{}]", target.host) } else { target.host.clone() };
    let default_port = if target.tls { 443 } else { 80 };
    let host_header = if target.port == default_port { host } else { format!("{host}:{}", target.port) };
    let request = hyper::Request::post(&target.path)
        .header(hyper::header::HOST, host_header)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("tug/", env!("CARGO_PKG_VERSION")))
        .header("x-tug-event", name)
        .header("x-tug-timestamp", &timestamp)
        .header("x-tug-signature", signature)
        .body(Full::new(body.clone()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    if target.tls {
        // The system's roots, read once for every delivery.
        static CONFIG: std::sync::OnceLock<Result<std::sync::Arc<rustls::ClientConfig>, String>> =
            std::sync::OnceLock::new();
        let config = CONFIG
            .get_or_init(|| tug_registry::tls::client_config(None, None, None).map_err(|e| e.to_string()))
            .clone()?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|_| format!("{} is not a valid TLS server name", target.host))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.host))?;
        send(stream, request).await
    } else {
        send(stream, request).await
    }
}

async fn send<IO>(io: IO, request: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status().as_u16();
    // The answer's body is read (bounded) so the connection ends cleanly; its content is unused.
    let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024).collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheme_and_host_are_logged() {
        let url = tug_proto::spec::Value {
            value: "https://hooks.example.com/services/T0/B0/s3cr3t".into(),
            ..Default::default()
        };
        assert_eq!(where_to(&url), "https://hooks.example.com");
    }

    #[test]
    fn webhook_urls_parse() {
        let t = parse_url("https://hooks.example.com/tug?x=1").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port, t.path.as_str()), (true, "hooks.example.com", 443, "/tug?x=1"));
        let t = parse_url("http://127.0.0.1:9000").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port, t.path.as_str()), (false, "127.0.0.1", 9000, "/"));
        let t = parse_url("http://[::1]:81/h").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://user:pw@x/").is_err());
        assert!(parse_url("http://x:notaport/").is_err());
    }

    #[test]
    fn payloads_carry_the_figures_and_nothing_else() {
        let mut event = Event::new(Kind::RolledBack, "web", "rollout to r2: rolled_back: error rate 0.5");
        event.at = "2026-12-06T00:00:00Z".into();
        let body = payload("shop", "rolled_back", &event);
        assert_eq!(body["event"], "rolled_back");
        assert_eq!(body["service"], "web");
        assert!(body["figures"].is_null());
    }
}
