//! The dashboard at `/ui/` on the network endpoint, and the log stream remote `tug logs` reads.
//!
//! Authentication: `tug dashboard` asks the daemon (signed, as every API call) for a one-time
//! login token, valid a few minutes; `/ui/login?token=` exchanges it for a session in an
//! HttpOnly, SameSite=Strict cookie. Actions are POSTs that carry the session's CSRF token in a
//! header and an Origin matching the Host; on a loopback listener the Host must be a loopback
//! name (no DNS rebinding). One server-sent-events stream feeds the page.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tug_proto::spec::RolloutAction;
use tug_proto::stats::{Counters, Latency, StatsResponse};

use crate::daemon::{App, Body, ChannelBody, error, json as json_response, whole};

const PAGE: &str = include_str!("ui/index.html");
const COOKIE: &str = "tug_session";
const LOGIN_VALID: Duration = Duration::from_secs(5 * 60);
const SESSION_VALID: Duration = Duration::from_secs(12 * 3600);
/// Logins and sessions kept at once; past that the oldest goes.
const MAX_LOGINS: usize = 32;
const MAX_SESSIONS: usize = 64;
/// Live streams at once (dashboards open, remote `logs -f`).
const MAX_STREAMS: usize = 16;
/// How often the dashboard's stream sends the state.
const TICK: Duration = Duration::from_secs(1);
/// The most log lines one tick carries (the newest); the first carries this many of history.
const LOG_LINES: usize = 200;

struct Login {
    read_only: bool,
    expires: Instant,
}

#[derive(Clone)]
struct Session {
    csrf: String,
    read_only: bool,
    expires: Instant,
}

pub struct Web {
    logins: Mutex<HashMap<String, Login>>,
    sessions: Mutex<HashMap<String, Session>>,
    streams: Arc<tokio::sync::Semaphore>,
}

impl Default for Web {
    fn default() -> Self {
        Web {
            logins: Mutex::default(),
            sessions: Mutex::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // Without randomness no token is safe: an empty one matches nothing (see `exchange`).
    if getrandom::fill(&mut bytes).is_err() {
        return String::new();
    }
    tug_proto::auth::hex(&bytes)
}

/// Drops expired entries, then the soonest to expire while there are more than `max`.
fn prune<T>(map: &mut HashMap<String, T>, max: usize, expires: impl Fn(&T) -> Instant) {
    let now = Instant::now();
    map.retain(|_, v| expires(v) > now);
    while map.len() >= max {
        let Some(oldest) = map.iter().min_by_key(|(_, v)| expires(v)).map(|(k, _)| k.clone()) else { break };
        map.remove(&oldest);
    }
}

impl Web {
    /// A one-time login token (`tug dashboard`).
    pub fn login_token(&self, read_only: bool) -> String {
        let token = random_token();
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut logins, MAX_LOGINS, |l| l.expires);
        logins.insert(token.clone(), Login { read_only, expires: Instant::now() + LOGIN_VALID });
        token
    }

    /// Uses up a login token; a new session's id.
    fn exchange(&self, token: &str) -> Option<String> {
        if token.is_empty() {
            return None;
        }
        let login = self.logins.lock().unwrap_or_else(|p| p.into_inner()).remove(token)?;
        if login.expires <= Instant::now() {
            return None;
        }
        let id = random_token();
        let csrf = random_token();
        if id.is_empty() || csrf.is_empty() {
            return None;
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut sessions, MAX_SESSIONS, |s| s.expires);
        sessions
            .insert(id.clone(), Session { csrf, read_only: login.read_only, expires: Instant::now() + SESSION_VALID });
        Some(id)
    }

    fn session(&self, request: &Request<Incoming>) -> Option<(String, Session)> {
        let id = cookie(request, COOKIE)?;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get(&id).filter(|s| s.expires > Instant::now())?.clone();
        Some((id, session))
    }
}

fn cookie(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.headers().get_all(hyper::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|header| {
        header.split(';').find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name && !value.is_empty()).then(|| value.to_string())
        })
    })
}

/// The Host the client used (HTTP/1's header, HTTP/2's `:authority`).
fn host(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_string()))
}

/// On a loopback listener only loopback names reach the dashboard: a page elsewhere that
/// resolves its own name to 127.0.0.1 (DNS rebinding) gets nothing.
fn host_allowed(host: &str, listen: SocketAddr) -> bool {
    if !listen.ip().is_loopback() {
        return true;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !host.ends_with(']') => {
            if port.parse::<u16>().ok() != Some(listen.port()) {
                return false;
            }
            name
        }
        _ => host,
    };
    matches!(name, "localhost" | "[::1]") || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let escaped = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title>\
         <body style=\"font-family:system-ui,sans-serif;margin:3em\"><h1>{title}</h1><p>{escaped}</p>"
    );
    let mut response = Response::new(whole(html));
    *response.status_mut() = status;
    secure_headers(&mut response, "text/html; charset=utf-8");
    response
}

fn secure_headers(response: &mut Response<Body>, content_type: &'static str) {
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(hyper::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(hyper::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(hyper::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

pub async fn serve(app: &Arc<App>, request: Request<Incoming>, tls: bool, listen: SocketAddr) -> Response<Body> {
    let Some(host) = host(&request).filter(|h| host_allowed(h, listen)) else {
        return page(
            StatusCode::MISDIRECTED_REQUEST,
            "Wrong address",
            &format!("The dashboard answers on {listen} by its loopback name (localhost or 127.0.0.1) only."),
        );
    };
    let path = request.uri().path().to_string();
    if path == "/ui/login" {
        let token = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")).map(str::to_string));
        return match token.and_then(|t| app.web.exchange(&t)) {
            Some(session) => {
                let secure = if tls { "; Secure" } else { "" };
                let cookie = format!(
                    "{COOKIE}={session}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                    SESSION_VALID.as_secs()
                );
                let mut response = Response::new(whole(Bytes::new()));
                *response.status_mut() = StatusCode::SEE_OTHER;
                let headers = response.headers_mut();
                headers.insert(hyper::header::LOCATION, HeaderValue::from_static("/ui/"));
                headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(hyper::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    headers.insert(SET_COOKIE, value);
                }
                response
            }
            None => page(
                StatusCode::UNAUTHORIZED,
                "Link used or expired",
                "A login link works once, for five minutes. Run `tug dashboard` for a new one.",
            ),
        };
    }
    let Some((id, session)) = app.web.session(&request) else {
        return if request.method() == Method::GET && (path == "/ui" || path == "/ui/") {
            page(StatusCode::UNAUTHORIZED, "Log in", "Open the link that `tug dashboard` prints.")
        } else {
            error(StatusCode::UNAUTHORIZED, "no dashboard session: open the link `tug dashboard` prints")
        };
    };
    match (request.method().clone(), path.as_str()) {
        (Method::GET, "/ui" | "/ui/") => {
            let html = PAGE
                .replace("{{CSRF}}", &session.csrf)
                .replace("{{READ_ONLY}}", if session.read_only { "true" } else { "false" });
            let mut response = Response::new(whole(html));
            secure_headers(&mut response, "text/html; charset=utf-8");
            response
        }
        (Method::GET, "/ui/events") => events(app).await,
        (Method::POST, "/ui/api/rollout") => match foreign_origin(&request, tls, &host) {
            None => action(app, request, &session).await,
            Some(refused) => refused,
        },
        (Method::POST, "/ui/logout") => match foreign_origin(&request, tls, &host) {
            None => {
                app.web.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                json_response(StatusCode::OK, &json!({ "message": "logged out" }))
            }
            Some(refused) => refused,
        },
        _ => error(StatusCode::NOT_FOUND, format!("no such page: {path}")),
    }
}

/// The refusal of a POST that does not come from the dashboard's own page, whose `Origin`
/// names this host: over TLS `https://HOST`; on a plain listener `http://HOST` or, behind a
/// proxy that terminates TLS, `https://HOST`.
fn foreign_origin(request: &Request<Incoming>, tls: bool, host: &str) -> Option<Response<Body>> {
    let origin = request.headers().get(hyper::header::ORIGIN).and_then(|v| v.to_str().ok());
    let same = match origin.and_then(|o| o.split_once("://")) {
        Some(("https", rest)) => rest == host,
        Some(("http", rest)) => !tls && rest == host,
        _ => false,
    };
    (!same).then(|| {
        error(
            StatusCode::FORBIDDEN,
            format!("refused: the request comes from {}, not this dashboard", origin.unwrap_or("an unknown origin")),
        )
    })
}

/// A dashboard button: promote, abort or undo. Only from the page itself (its Origin, checked
/// by the caller), with its CSRF token, by a session that may act.
async fn action(app: &App, request: Request<Incoming>, session: &Session) -> Response<Body> {
    let csrf = request.headers().get("x-tug-csrf").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !tug_proto::auth::same_secret(csrf.as_bytes(), session.csrf.as_bytes()) {
        return error(StatusCode::FORBIDDEN, "refused: the request lacks this session's CSRF token (reload the page)");
    }
    if session.read_only {
        return error(StatusCode::FORBIDDEN, "this dashboard session is read-only (`tug dashboard --read-only`)");
    }
    let Ok(body) = Limited::new(request.into_body(), 4096).collect().await.map(|b| b.to_bytes()) else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the request body is over 4 KiB");
    };
    #[derive(serde::Deserialize)]
    struct Action {
        service: String,
        action: String,
    }
    let parsed: Action = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the request body is not valid: {e}")),
    };
    let action = match parsed.action.as_str() {
        "promote" => RolloutAction::Promote,
        "abort" => RolloutAction::Abort,
        "undo" => RolloutAction::Undo,
        other => return error(StatusCode::BAD_REQUEST, format!("`{other}` is not an action: promote, abort or undo")),
    };
    match app.supervisor.rollout_action(&parsed.service, action).await {
        Ok(message) => {
            tug_supervisor::log::info(
                &format!("dashboard: {} {}", parsed.action, parsed.service),
                &[("service", &parsed.service)],
            );
            json_response(StatusCode::OK, &json!({ "message": message }))
        }
        Err(e) => crate::daemon::supervisor_error(e),
    }
}

/// A streamed answer fed by `producer` until the client goes away; None when too many streams
/// are open.
fn stream_body(
    app: &App,
    content_type: &'static str,
) -> Option<(Response<Body>, tokio::sync::mpsc::Sender<Bytes>, tokio::sync::OwnedSemaphorePermit)> {
    let permit = app.web.streams.clone().try_acquire_owned().ok()?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let mut response = Response::new(ChannelBody(rx).boxed_unsync());
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some((response, tx, permit))
}

fn too_many_streams() -> Response<Body> {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_STREAMS} live streams are open already: close one"))
}

async fn events(app: &Arc<App>) -> Response<Body> {
    let Some((response, tx, permit)) = stream_body(app, "text/event-stream") else { return too_many_streams() };
    let app = app.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut state = StreamState::new(&app);
        loop {
            let snapshot = state.next(&app).await;
            let frame = format!("event: state\ndata: {snapshot}\n\n");
            tokio::select! {
                sent = tx.send(Bytes::from(frame)) => if sent.is_err() { return },
                _ = tx.closed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = tx.closed() => return,
            }
        }
    });
    response
}

/// What one dashboard stream remembers between ticks: the last counters (for rates), the
/// log files' positions, its place in the event stream.
struct StreamState {
    last: Option<(Instant, StatsResponse, HashMap<String, f64>)>,
    logs: Option<tug_logs::Follower>,
    first_logs: Vec<tug_logs::Record>,
    events: tokio::sync::broadcast::Receiver<tug_supervisor::events::Event>,
    first_events: Vec<tug_supervisor::events::Event>,
}

impl StreamState {
    fn new(app: &App) -> StreamState {
        let dir = app.supervisor.config().state_dir.join("logs");
        let (first_logs, logs) =
            match tug_logs::Follower::read_then_follow(&dir, tug_logs::Selector::all(), Some(LOG_LINES), None) {
                Ok((records, follower)) => (records, Some(follower)),
                Err(_) => (Vec::new(), None),
            };
        let (first_events, events) = app.supervisor.events().recent_then_subscribe();
        StreamState { last: None, logs, first_logs, events, first_events }
    }

    async fn next(&mut self, app: &App) -> String {
        let status = app.supervisor.status(None, Duration::ZERO, true).await;
        let stats = app.supervisor.stats(None).unwrap_or_default();
        let now = Instant::now();
        let cpu: HashMap<String, f64> =
            status.instances.iter().filter_map(|i| i.cpu_seconds.map(|c| (i.instance.clone(), c))).collect();
        let previous = self.last.take();
        let elapsed = previous.as_ref().map(|(at, _, _)| now.duration_since(*at).as_secs_f64()).unwrap_or(0.0);
        let services: Vec<serde_json::Value> = status
            .services
            .iter()
            .map(|s| {
                let revisions: Vec<serde_json::Value> = stats
                    .services
                    .iter()
                    .filter(|x| x.service == s.name)
                    .flat_map(|x| &x.revisions)
                    .map(|r| {
                        let before = previous.as_ref().and_then(|(_, p, _)| {
                            p.services
                                .iter()
                                .filter(|x| x.service == s.name)
                                .flat_map(|x| &x.revisions)
                                .find(|p| p.revision == r.revision)
                                .map(|p| p.counters.clone())
                        });
                        revision_figures(&r.revision, &r.counters, before.as_ref(), elapsed)
                    })
                    .collect();
                let rollout = s.rollout.as_ref().map(|r| {
                    json!({
                        "service": r.service,
                        "revision": r.to_revision,
                        "from_revision": r.from_revision,
                        "strategy": r.strategy.as_str(),
                        "phase": r.phase.as_str(),
                        "step": r.step.map(|i| i + 1),
                        "steps": r.steps.len(),
                        "weight": r.weight,
                        "message": r.reason,
                        "analysis": r.measured.as_ref().map(|m| json!({ "canary": m.canary, "stable": m.stable })),
                    })
                });
                let autoscale = s
                    .autoscale
                    .as_ref()
                    .map(|a| json!({ "min": a.min, "max": a.max, "desired": a.desired, "reason": a.last_decision }));
                json!({
                    "name": s.name,
                    "kind": s.kind.as_str(),
                    "replicas": s.replicas,
                    "port": s.port,
                    "revision": s.revision,
                    "rollout": rollout,
                    "autoscale": autoscale,
                    "revisions": revisions,
                })
            })
            .collect();
        let instances: Vec<serde_json::Value> = status
            .instances
            .iter()
            .map(|i| {
                let cpu_percent = match (previous.as_ref().and_then(|(_, _, c)| c.get(&i.instance)), i.cpu_seconds) {
                    (Some(before), Some(now)) if elapsed > 0.0 => Some(((now - before) / elapsed * 100.0).max(0.0)),
                    _ => None,
                };
                json!({
                    "service": i.service,
                    "instance": i.instance,
                    "revision": i.revision,
                    "state": i.state.as_str(),
                    "health": i.health,
                    "restarts": i.restarts,
                    "cpu_percent": cpu_percent,
                    "memory_bytes": i.memory_bytes,
                    "port": i.port,
                    "message": i.message,
                })
            })
            .collect();
        let mut events: Vec<tug_supervisor::events::Event> = std::mem::take(&mut self.first_events);
        loop {
            match self.events.try_recv() {
                Ok(event) => events.push(event),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        let events: Vec<serde_json::Value> = events
            .iter()
            .map(|e| json!({ "at": e.at, "kind": e.kind.as_str(), "service": e.service, "message": e.message }))
            .collect();
        let mut records = std::mem::take(&mut self.first_logs);
        if let Some(follower) = self.logs.as_mut() {
            records.extend(follower.poll().unwrap_or_default());
        }
        let skip = records.len().saturating_sub(LOG_LINES);
        let logs: Vec<serde_json::Value> = records[skip..].iter().map(log_json).collect();
        self.last = Some((now, stats, cpu));
        json!({
            "project": status.project,
            "time": tug_logs::format_time(std::time::SystemTime::now()),
            "services": services,
            "instances": instances,
            "events": events,
            "logs": logs,
        })
        .to_string()
    }
}

fn log_json(record: &tug_logs::Record) -> serde_json::Value {
    json!({
        "time": tug_logs::format_time(record.time),
        "service": record.service,
        "instance": record.instance,
        "stream": record.stream.as_str(),
        "line": record.text,
    })
}

/// A revision's rate, error rate and latency quantiles over the time since `before`.
fn revision_figures(revision: &str, now: &Counters, before: Option<&Counters>, elapsed: f64) -> serde_json::Value {
    let Some(before) = before.filter(|_| elapsed > 0.0) else {
        return json!({ "revision": revision, "rate": null, "error_rate": null, "p50_ms": null, "p99_ms": null });
    };
    let requests = now.requests.saturating_sub(before.requests);
    let errors = (now.status.server_error + now.failures).saturating_sub(before.status.server_error + before.failures);
    let mut window =
        Latency { bounds: now.latency.bounds.clone(), counts: now.latency.counts.clone(), sum_seconds: 0.0 };
    if before.latency.bounds == now.latency.bounds {
        for (count, earlier) in window.counts.iter_mut().zip(&before.latency.counts) {
            *count = count.saturating_sub(*earlier);
        }
    }
    json!({
        "revision": revision,
        "rate": requests as f64 / elapsed,
        "error_rate": if requests > 0 { Some(errors as f64 / requests as f64) } else { None },
        "p50_ms": window.quantile(0.5).map(|s| s * 1000.0),
        "p99_ms": window.quantile(0.99).map(|s| s * 1000.0),
    })
}

/// `GET /v1/logs?names=a,b&tail=N&follow=1`: the instances' log lines as JSON lines (the
/// format of `tug logs --json`), for `tug --host … logs`. With `follow`, it streams new lines
/// until the client goes away.
pub async fn logs_stream(app: &Arc<App>, target: &str) -> Response<Body> {
    let names: Vec<String> = crate::daemon::query_text(target, "names")
        .map(|n| n.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let asked =
        (crate::daemon::query_number(target, "tail", usize::MAX as u64), crate::daemon::query_flag(target, "follow"));
    let (tail, follow) = match asked {
        (Ok(tail), Ok(follow)) => (tail.map(|n| n as usize), follow),
        (Err(bad), _) | (_, Err(bad)) => return *bad,
    };
    let dir = app.supervisor.config().state_dir.join("logs");
    let selector = tug_logs::Selector::new(names.clone());
    let unmatched = selector.unmatched(&dir).unwrap_or_default();
    if !unmatched.is_empty() && !follow {
        return error(StatusCode::NOT_FOUND, format!("no logs for {}", unmatched.join(", ")));
    }
    // A whole history can be large: read off the runtime's threads.
    let read = tokio::task::spawn_blocking(move || tug_logs::Follower::read_then_follow(&dir, selector, tail, None));
    let (records, follower) = match read.await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the logs: {e}")),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the logs"),
    };
    let Some((response, tx, permit)) = stream_body(app, "application/x-ndjson") else { return too_many_streams() };
    tokio::spawn(async move {
        let _permit = permit;
        let mut follower = follower;
        let mut batch = records;
        loop {
            // In chunks, so a long history is never one string in memory.
            for chunk in batch.chunks(1000) {
                let mut text = String::new();
                for record in chunk {
                    text.push_str(&log_json(record).to_string());
                    text.push('\n');
                }
                if tx.send(Bytes::from(text)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = tx.closed() => return,
            }
            batch = follower.poll().unwrap_or_default();
        }
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listeners_answer_loopback_names_only() {
        let listen: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert!(host_allowed("127.0.0.1:7070", listen));
        assert!(host_allowed("localhost:7070", listen));
        assert!(host_allowed("localhost", listen));
        assert!(!host_allowed("evil.example:7070", listen));
        assert!(!host_allowed("localhost:8080", listen));
        let v6: SocketAddr = "[::1]:7070".parse().unwrap();
        assert!(host_allowed("[::1]:7070", v6));
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert!(host_allowed("tug.example.com:7070", any));
    }

    #[test]
    fn rates_come_from_two_snapshots() {
        let before = Counters { requests: 10, ..Counters::default() };
        let mut now = Counters { requests: 30, ..Counters::default() };
        now.status.server_error = 2;
        now.latency = Latency { bounds: vec![0.01, 0.1], counts: vec![10, 10, 0], sum_seconds: 0.0 };
        let v = revision_figures("r", &now, Some(&before), 2.0);
        assert_eq!(v["rate"], 10.0);
        assert_eq!(v["error_rate"], 0.1);
        assert!(v["p99_ms"].as_f64().unwrap() > 10.0);
        assert!(revision_figures("r", &now, None, 0.0)["rate"].is_null());
    }
}
