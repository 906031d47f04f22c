//! The per-stack daemon, in two processes.
//!
//! `tug daemon` is the keeper: a small process that is a child subreaper and
//! the parent of the daemon proper (`tug daemon --serve`). Whatever happens to
//! the daemon, even SIGKILL, its instances and their descendants end up
//! children of the keeper, which kills them all and exits. The daemon serves
//! the control API on `tug.sock` and runs the supervisor.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::UnixListener;
use tug_proto::auth::{ApiKey, Verifier};
use tug_proto::spec::{ExecRequest, MAX_REPLICAS, RolloutRequest, RunRequest, ScaleRequest, TargetsRequest, UpRequest};
use tug_proto::stream::Frame;
use tug_supervisor::{Config, Error, Supervisor};

/// Largest request body accepted (a stack spec of thousands of services fits).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// A body sent slower than this is dropped (before authentication, so it is bounded).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Request bodies being read at once, all connections together: what unauthenticated bodies
/// can make the daemon hold (a body is read whole before its signature can be checked).
const BODY_BUDGET: usize = 32 * 1024 * 1024;
/// How long a request waits for room in [`BODY_BUDGET`] before it is told the daemon is busy.
const BUDGET_WAIT: Duration = Duration::from_secs(2);
/// Connections that have not yet made one authenticated request. Past this, the oldest of
/// them is closed for each new one: idle or slow connections cannot lock the CLI out.
const MAX_UNPROVEN: usize = 64;
pub const LOG_FILE: &str = "daemon.log";
const LOCK_FILE: &str = "daemon.lock";

static DAEMON_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(_: libc::c_int) {
    let pid = DAEMON_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// The keeper: starts the daemon, waits for it, then leaves nothing behind.
pub fn keep(state_dir: &Path) -> i32 {
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tug_supervisor::log::error(&format!("keeper: cannot find its own executable: {e}"), &[]);
            return 1;
        }
    };
    let mut command = std::process::Command::new(exe);
    command.arg("daemon").arg("--serve").arg("--state-dir").arg(state_dir);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Keeper gone: the daemon shuts the stack down gracefully.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            tug_supervisor::log::error(&format!("keeper: cannot start the daemon: {e}"), &[]);
            return 1;
        }
    };
    let daemon = child.id() as i32;
    DAEMON_PID.store(daemon, Ordering::Relaxed);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only calls kill.
        unsafe { libc::signal(signal, forward_signal as *const () as libc::sighandler_t) };
    }
    let mut code = 1;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child; status is a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == daemon {
            code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
            if code != 0 {
                tug_supervisor::log::error(
                    &format!(
                        "keeper: the daemon (pid {daemon}) ended abnormally (status {code}); stopping what it left"
                    ),
                    &[],
                );
            }
            break;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    tug_supervisor::process::kill_descendants();
    // What the daemon leaves outside its descendants (its stack's containers, the instances'
    // secret files), and a socket and pid file after an unclean end, are cleaned up only by the
    // holder of the lock (now free). A daemon that failed because another one holds the lock
    // never had them: they are the running daemon's, and removing them would cut that stack off
    // from its clients and remove its containers.
    if let Ok(_lock) = lock(state_dir) {
        // The daemon's record names the engine; every container labelled with this stack goes.
        if let Ok(record) = tug_supervisor::persist::Record::load(state_dir) {
            let engine = record.as_ref().and_then(|r| r.engine.as_deref());
            for line in tug_supervisor::persist::remove_containers(state_dir, engine) {
                tug_supervisor::log::info(&format!("keeper: {line}"), &[]);
            }
        }
        if code != 0 {
            let _ = std::fs::remove_file(state_dir.join(tug_proto::SOCKET_FILE));
            let _ = std::fs::remove_file(state_dir.join(tug_proto::PID_FILE));
        }
    }
    code
}

/// Holds an exclusive lock on `daemon.lock` for the daemon's lifetime.
fn lock(state_dir: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a valid descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!("another daemon already runs this stack ({} is locked)", path.display()));
    }
    Ok(file)
}

pub(crate) struct App {
    pub supervisor: Supervisor,
    verifier: Verifier,
    /// The API key's derived tokens: `/metrics`'s bearer token, the webhooks' signing key.
    pub metrics_token: String,
    /// Bytes of request bodies being read (see [`BODY_BUDGET`]): one budget for the local
    /// socket, another for the network endpoint, so no network client can make the CLI wait.
    bodies: Arc<tokio::sync::Semaphore>,
    network_bodies: Arc<tokio::sync::Semaphore>,
    /// The network endpoint (`api.listen`).
    pub endpoint: crate::endpoint::Endpoint,
    /// The dashboard's logins and sessions.
    pub web: crate::web::Web,
    /// Webhooks (`notify`).
    pub notifier: crate::notify::Notifier,
    pub shutdown: tokio::sync::Notify,
    /// Changes (up, start, stop, restart, scale) happen one at a time: two
    /// concurrent `up`s must not both add the replicas a service lacks.
    changes: tokio::sync::Mutex<()>,
    /// Uploads are received one at a time (`upload::receive`).
    pub uploads: tokio::sync::Mutex<()>,
    /// `down --volumes` from a remote client: the stack's volumes go once everything stopped.
    remove_volumes: std::sync::atomic::AtomicBool,
}

impl App {
    /// [`Verifier::verify_digest`], now.
    pub fn verify_digest(
        &self,
        header: Option<&str>,
        method: &str,
        target: &str,
        digest: &str,
    ) -> Result<(), tug_proto::auth::AuthError> {
        self.verifier.verify_digest(header, method, target, digest, tug_proto::unix_now())
    }
}

/// Where a request came from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Origin {
    /// The stack's Unix socket (`tug.sock`, mode 0600).
    Socket,
    /// The network endpoint, listening on `address`.
    Network { tls: bool, address: std::net::SocketAddr },
}

/// A connection, as its requests are handled.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    pub id: u64,
    /// The listener's connections that have not proven themselves.
    pub unproven: Arc<Unproven>,
    pub origin: Origin,
}

/// A place for a new connection among `connections`: at the cap, the oldest connection that
/// never proved itself makes room; None when none comes free within a second.
pub(crate) async fn admit(
    connections: &Arc<tokio::sync::Semaphore>,
    unproven: &Unproven,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(permit) = connections.clone().try_acquire_owned() {
        return Some(permit);
    }
    unproven.evict_oldest();
    match tokio::time::timeout(Duration::from_secs(1), connections.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

/// Serves one connection's requests: HTTP/1.1 on the socket; HTTP/1.1 or HTTP/2 (by ALPN or
/// preface) on the network endpoint.
pub(crate) async fn serve_http<IO>(app: Arc<App>, io: IO, info: ConnInfo, http2: bool)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| handle(app.clone(), request, info.clone()));
    let io = hyper_util::rt::TokioIo::new(io);
    if !http2 {
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            // What each connection buffers before its request is handled: small, so that many
            // connections hold little.
            .max_buf_size(64 * 1024)
            .serve_connection(io, service);
        let _ = connection.await;
        return;
    }
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(32)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    let _ = builder.serve_connection(io, service).await;
}

/// Connections that have not made an authenticated request yet, oldest first, each with the
/// signal that closes it.
#[derive(Default)]
pub(crate) struct Unproven {
    next: std::sync::atomic::AtomicU64,
    list: std::sync::Mutex<std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>>,
}

impl Unproven {
    /// Registers a new connection; closes the oldest unproven one when there are too many.
    pub fn admit(&self) -> (u64, Arc<tokio::sync::Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(tokio::sync::Notify::new());
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() >= MAX_UNPROVEN
            && let Some((_, oldest)) = list.pop_front()
        {
            oldest.notify_one();
        }
        list.push_back((id, close.clone()));
        (id, close)
    }

    /// Closes the oldest connection that has not proven itself, if any.
    fn evict_oldest(&self) {
        if let Some((_, oldest)) = self.list.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
            oldest.notify_one();
        }
    }

    /// The connection made an authenticated request, or ended: it is no longer a candidate.
    pub fn forget(&self, id: u64) {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _)| *i != id);
    }
}

/// The daemon proper.
pub fn serve(state_dir: &Path) -> i32 {
    // Large blocks (request bodies, log reads) straight from mmap, always: freed, they go back
    // to the system at once. Left to glibc, the threshold rises after the first large free and
    // such blocks land in per-thread arenas whose top malloc_trim never returns (a flood of
    // 16 MiB bodies left ~55 MB behind).
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    match serve_inner(state_dir) {
        Ok(()) => 0,
        Err(error) => {
            tug_supervisor::log::error(&error, &[]);
            1
        }
    }
}

/// The address this host's routers and instances bind and register: `TUG_ADVERTISE` (which
/// `tug up --advertise` sets for the daemon it starts), 127.0.0.1 by default.
pub fn advertised_address() -> Result<String, String> {
    match std::env::var(ADVERTISE_ENV) {
        Ok(text) if !text.is_empty() => parse_advertise(&text),
        _ => Ok("127.0.0.1".into()),
    }
}

pub const ADVERTISE_ENV: &str = "TUG_ADVERTISE";

/// An IP address this host has (it must be bindable): not a name, not a wildcard.
pub fn parse_advertise(text: &str) -> Result<String, String> {
    let ip: std::net::IpAddr = text.trim().parse().map_err(|_| {
        format!("{ADVERTISE_ENV}/--advertise: `{text}` is not an IP address (such as 10.0.0.5 or 127.0.0.2)")
    })?;
    if ip.is_unspecified() {
        return Err(format!(
            "{ADVERTISE_ENV}/--advertise: `{ip}` is not an address others can reach; give this host's own address"
        ));
    }
    std::net::TcpListener::bind((ip, 0))
        .map_err(|e| format!("{ADVERTISE_ENV}/--advertise: cannot bind {ip} on this host: {e}"))?;
    Ok(ip.to_string())
}

fn serve_inner(state_dir: &Path) -> Result<(), String> {
    let _lock = lock(state_dir)?;
    let key_env = std::env::var(tug_proto::auth::KEY_ENV).ok();
    let key = ApiKey::load(state_dir, key_env.as_deref(), false)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no API key: {} is missing", state_dir.join(tug_proto::auth::KEY_FILE).display()))?;
    let port_range = match std::env::var("TUG_PORT_RANGE") {
        Ok(text) if !text.is_empty() => {
            tug_supervisor::ports::parse_range(&text).map_err(|e| format!("TUG_PORT_RANGE: {e}"))?
        }
        _ => (20000, 29999),
    };
    let advertise = advertised_address()?;
    let previous = tug_supervisor::persist::Record::load(state_dir);
    let mut notices = Vec::new();
    let previous = match previous {
        Ok(record) => record,
        Err(problem) => {
            notices.push(problem);
            None
        }
    };
    let engine = previous.as_ref().and_then(|r| r.engine.as_deref());
    let mut reconciled = tug_supervisor::persist::reconcile(state_dir, previous.as_ref());
    reconciled.extend(tug_supervisor::persist::remove_containers(state_dir, engine));
    for line in reconciled {
        tug_supervisor::log::info(&line, &[]);
        notices.push(line);
    }
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    tug_supervisor::process::raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let socket = state_dir.join(tug_proto::SOCKET_FILE);
        let _ = std::fs::remove_file(&socket);
        let listener =
            UnixListener::bind(&socket).map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
        let pid_file = state_dir.join(tug_proto::PID_FILE);
        tug_supervisor::persist::write_atomic(&pid_file, format!("{}\n", std::process::id()).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", pid_file.display()))?;
        let seal_key = Some(tug_supervisor::history::SealKey::from_api_key(key.bytes()));
        let config = Config { state_dir: state_dir.to_path_buf(), host: advertise, port_range, seal_key };
        let supervisor = Supervisor::new(config);
        supervisor.start_background();
        for notice in notices {
            supervisor.notice(notice);
        }
        let metrics_token = tug_proto::auth::derived_token(&key, "metrics");
        let webhook_key = tug_proto::auth::derived_token(&key, "webhook");
        let notifier = crate::notify::Notifier::start(supervisor.clone(), webhook_key);
        tokio::spawn(crate::backup::run_schedules(supervisor.clone()));
        let app = Arc::new(App {
            supervisor,
            verifier: Verifier::new(key),
            metrics_token,
            bodies: Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET)),
            network_bodies: Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET)),
            endpoint: crate::endpoint::Endpoint::default(),
            web: crate::web::Web::default(),
            notifier,
            shutdown: tokio::sync::Notify::new(),
            changes: tokio::sync::Mutex::new(()),
            uploads: tokio::sync::Mutex::new(()),
            remove_volumes: std::sync::atomic::AtomicBool::new(false),
        });
        let signals = app.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            signals.shutdown.notify_one();
        });
        let accepting = app.clone();
        // Connections at once: enough for any number of CLIs, few enough that
        // a local program opening sockets in a loop cannot exhaust the daemon.
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let unproven = Arc::new(Unproven::default());
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: wait rather than spin on the error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(permit) = admit(&connections, &unproven).await else { continue };
                let (id, close) = unproven.admit();
                let info = ConnInfo { id, unproven: unproven.clone(), origin: Origin::Socket };
                let app = accepting.clone();
                let unproven = unproven.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    // Closed early when newer connections need its place before it proved itself.
                    tokio::select! {
                        _ = serve_http(app, stream, info, false) => {}
                        _ = close.notified() => {}
                    }
                    unproven.forget(id);
                });
            }
        });
        app.shutdown.notified().await;
        app.supervisor.shutdown().await;
        if app.remove_volumes.load(Ordering::SeqCst) {
            crate::artifacts::remove_volumes_here(&app.supervisor).await;
        }
        // Last: a remote `down` follows the shutdown on the endpoint, and is done when it closes.
        app.endpoint.configure(&app, None).await.ok();
        accept_loop.abort();
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&pid_file);
        Ok::<(), String>(())
    })
}

/// Every answer's body: whole (JSON), or streamed (a command's output).
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn whole(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A body that sends what arrives on `rx`, until it closes.
pub(crate) struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// A command's events as a streamed answer of frames. When the client goes away, hyper drops
/// the body, the channel closes, and the command learns it (see `ExecEvent`).
fn streamed(mut events: tokio::sync::mpsc::Receiver<tug_supervisor::ExecEvent>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = tx.closed() => return,
            };
            let Some(event) = event else { return };
            let frame = match event {
                tug_supervisor::ExecEvent::Output(tug_logs::Stream::Out, bytes) => Frame::Stdout(bytes),
                tug_supervisor::ExecEvent::Output(tug_logs::Stream::Err, bytes) => Frame::Stderr(bytes),
                tug_supervisor::ExecEvent::Exit(code) => Frame::Exit(code),
                tug_supervisor::ExecEvent::Failed(why) => Frame::Error(why),
            };
            if tx.send(Bytes::from(frame.encode())).await.is_err() {
                return;
            }
        }
    });
    frames_response(rx)
}

/// A 200 whose body is the stream frames `rx` carries (`tug_proto::stream`).
fn frames_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut response = Response::new(ChannelBody(rx).boxed_unsync());
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(tug_proto::stream::CONTENT_TYPE));
    response
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(whole(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &tug_proto::ErrorBody { error: message.into() })
}

pub(crate) fn supervisor_error(e: Error) -> Response<Body> {
    let status = match &e {
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
    };
    error(status, e.to_string())
}

/// A request body as `T`. A field `T` lacks is refused, not dropped: a newer client's setting
/// (after an upgrade, before the daemon is restarted) must fail the command, not be ignored.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response<Body>>> {
    let bad = |message: String| Box::new(error(StatusCode::BAD_REQUEST, message));
    let mut unknown = None;
    let mut input = serde_json::Deserializer::from_slice(body);
    let parsed = serde_ignored::deserialize(&mut input, |path| {
        unknown.get_or_insert_with(|| path.to_string());
    })
    .and_then(|parsed: T| input.end().map(|()| parsed))
    .map_err(|e| bad(format!("the request body is not valid: {e}")))?;
    match unknown {
        Some(field) => Err(bad(format!(
            "the request body has `{field}`, which this daemon (tug {}) does not know: if this `tug` is \
             newer, restart the stack's daemon with it (`tug down`, then `tug up -d`)",
            env!("CARGO_PKG_VERSION")
        ))),
        None => Ok(parsed),
    }
}

/// A whole-number query parameter no larger than `max`: absent is `None`; anything else
/// present is a 400 naming the parameter, rather than a silent default.
pub(crate) fn query_number(path_and_query: &str, name: &str, max: u64) -> Result<Option<u64>, Box<Response<Body>>> {
    let Some(text) = query_text(path_and_query, name) else { return Ok(None) };
    match text.parse::<u64>() {
        Ok(n) if n <= max => Ok(Some(n)),
        _ => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("query parameter {name}={text}: expected a whole number from 0 to {max}"),
        ))),
    }
}

/// A `0` or `1` query parameter: absent is `false`.
pub(crate) fn query_flag(path_and_query: &str, name: &str) -> Result<bool, Box<Response<Body>>> {
    match query_text(path_and_query, name) {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(text) => {
            Err(Box::new(error(StatusCode::BAD_REQUEST, format!("query parameter {name}={text}: expected 0 or 1"))))
        }
    }
}

/// A query parameter's raw value (the API's values are names and numbers: nothing to decode);
/// a bare `name` (no `=`) has the empty value, which no number or flag accepts.
pub(crate) fn query_text<'a>(path_and_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_and_query.split_once('?')?;
    query.split('&').find_map(|pair| match pair.strip_prefix(name)? {
        "" => Some(""),
        rest => rest.strip_prefix('='),
    })
}

/// Build lines held for a slow client before more are dropped.
const BUILD_LINES: usize = 1024;

/// `PUT /v1/stack?progress=1` (a remote deploy): the steps of the builds it runs on this host as
/// stderr frames while they run, then the answer `put_stack` gives, as an answer frame. The
/// deploy goes on to its end if the client goes away.
fn put_stack_streamed(app: Arc<App>, origin: Origin, request: UpRequest) -> Response<Body> {
    let (lines_tx, lines) = tokio::sync::mpsc::channel::<String>(BUILD_LINES);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(BUILD_LINES);
    tokio::spawn(async move {
        let deploying = put_stack(&app, origin, request, Some(lines_tx));
        let step = |line: String| Bytes::from(Frame::Stderr(line.into_bytes()).encode());
        let answer = with_lines(deploying, lines, &tx, step).await;
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.map(|whole| whole.to_bytes().to_vec()).unwrap_or_default();
        let _ = tx.send(Bytes::from(Frame::Answer(status, body).encode())).await;
    });
    frames_response(rx)
}

/// Drives `work` to its end, sending each line `lines` receives meanwhile (and those left
/// after it) to `out` as `wrap` makes it. The work never waits on the client: a line that finds
/// `out` full is dropped, and a client gone (`out` closed) does not stop the work.
async fn with_lines<T, M>(
    work: impl std::future::Future<Output = T>,
    mut lines: tokio::sync::mpsc::Receiver<String>,
    out: &tokio::sync::mpsc::Sender<M>,
    wrap: impl Fn(String) -> M,
) -> T {
    tokio::pin!(work);
    let done = loop {
        tokio::select! {
            done = &mut work => break done,
            Some(line) = lines.recv() => { let _ = out.try_send(wrap(line)); }
        }
    };
    while let Ok(line) = lines.try_recv() {
        let _ = out.try_send(wrap(line));
    }
    done
}

/// A remote `tug --host run`: the steps of the build it needs on this host as stderr frames
/// while they run, then the run's own frames (or why it could not run).
fn run_streamed(app: Arc<App>, request: RunRequest) -> Response<Body> {
    use tug_supervisor::ExecEvent;
    let (lines_tx, lines) = tokio::sync::mpsc::channel::<String>(BUILD_LINES);
    // Room for a burst of build steps; the command's output waits its turn.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel::<ExecEvent>(64);
    tokio::spawn(async move {
        let step = |line: String| ExecEvent::Output(tug_logs::Stream::Err, line.into_bytes());
        let resolved = with_lines(run_on_this_host(&app, request, Some(lines_tx)), lines, &events_tx, step).await;
        // A client gone while the host built: the command is not started for no one.
        if events_tx.is_closed() {
            return;
        }
        let mut events = match resolved.map(|request| app.supervisor.run_one_off(request)) {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => return drop(events_tx.send(ExecEvent::Failed(e.to_string())).await),
            Err(why) => return drop(events_tx.send(ExecEvent::Failed(why)).await),
        };
        // A client gone: dropping `events` ends the run at once, as for a local one, even one
        // that prints nothing.
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = events_tx.closed() => return,
            };
            let Some(event) = event else { return };
            if events_tx.send(event).await.is_err() {
                return;
            }
        }
    });
    streamed(events_rx)
}

/// `PUT /v1/stack`: the stack made whole on this host, then deployed.
async fn put_stack(
    app: &Arc<App>,
    origin: Origin,
    request: UpRequest,
    build_output: Option<tokio::sync::mpsc::Sender<String>>,
) -> Response<Body> {
    let supervisor = &app.supervisor;
    let remote = request.on_host.is_some();
    // Builds and pulls for a remote client run before the change lock is taken: `tug stop`
    // from someone else does not wait for them.
    let host = crate::artifacts::ThisHost { build_output, ..this_host(supervisor) };
    let request = match on_this_host(crate::artifacts::complete_up(request, host, false)).await {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let _one_change_at_a_time = app.changes.lock().await;
    // Made before the lock, a copy could have been pruned by another deploy meanwhile: each is
    // made fresh again here (pruning spares recent copies), or the deploy is refused.
    if remote {
        let state_dir = &supervisor.config().state_dir;
        let gone = request.spec.services.iter().find(|s| {
            s.source.as_ref().is_some_and(|c| crate::source::existing(&s.name, &c.digest, state_dir).is_none())
        });
        if let Some(service) = gone {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "service `{}`: its source's copy was removed by another deploy; run the command again",
                    service.name
                ),
            );
        }
    }
    // The endpoint follows the stack file given on this host only: a remote client cannot move
    // or drop the endpoint it came through. It is configured first (a TLS file that cannot be
    // read fails the command before anything changed) and put back as it was if the stack is
    // then refused.
    let before = app.endpoint.spec().await;
    if let Origin::Socket = origin
        && let Err(e) = app.endpoint.configure(app, request.spec.api.as_ref()).await
    {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let notify = request.spec.notify.clone();
    // A remote client computed revisions without this host's image ids and copies.
    let revisions: std::collections::BTreeMap<String, String> = if remote {
        request.spec.services.iter().map(|s| (s.name.clone(), s.revision.clone())).collect()
    } else {
        Default::default()
    };
    // Its own task: a client that goes away (Ctrl-C) must not cut a `deploy.before` migration
    // short, nor the apply after it.
    let deploying = tokio::spawn({
        let supervisor = supervisor.clone();
        async move { supervisor.deploy(request).await }
    });
    let deployed =
        deploying.await.unwrap_or_else(|e| Err(tug_supervisor::Error::Conflict(format!("the deploy stopped: {e}"))));
    match deployed {
        Ok(mut answer) => {
            app.notifier.configure(&supervisor.project(), notify);
            answer.revisions = revisions;
            json(StatusCode::OK, &answer)
        }
        Err(e) => {
            if let Origin::Socket = origin {
                let _ = app.endpoint.configure(app, before.as_ref()).await;
            }
            supervisor_error(e)
        }
    }
}

/// A remote client's `tug run` resolved on this host (as a deploy's, outside the change lock:
/// a long build holds up no one).
async fn run_on_this_host(
    app: &App,
    request: RunRequest,
    build_output: Option<tokio::sync::mpsc::Sender<String>>,
) -> Result<RunRequest, String> {
    let host = crate::artifacts::ThisHost { build_output, ..this_host(&app.supervisor) };
    on_this_host(crate::artifacts::complete_run(request, host)).await
}

/// This host for a remote client's request: the state folder, and the folder of the stack
/// the daemon runs (the one last applied from this host, else the one its state folder sits in).
fn this_host(supervisor: &Supervisor) -> crate::artifacts::ThisHost {
    let state_dir = supervisor.config().state_dir.clone();
    let root = supervisor.root().unwrap_or_else(|| state_dir.parent().unwrap_or(&state_dir).to_path_buf());
    crate::artifacts::ThisHost { state_dir, root, build_output: None }
}

/// A remote client's artifacts resolved on this host, in a task of its own: a client that
/// goes away must not cut a build or an unpack short and leave its files behind.
async fn on_this_host<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    tokio::spawn(work).await.unwrap_or_else(|e| Err(format!("resolving the stack on this host stopped: {e}")))
}

/// Once a large body is freed, the allocator gives its memory back to the system: a flood of
/// large requests must not leave the daemon holding what it read.
struct TrimAfterLargeBody(usize);

impl Drop for TrimAfterLargeBody {
    fn drop(&mut self) {
        if self.0 >= 1 << 20 {
            // SAFETY: malloc_trim only releases free memory; it has no preconditions.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// The whole body, into one buffer sized from the declared length: its memory is the body's
/// size once (collecting chunks and joining them held it twice).
async fn read_body(mut body: Incoming, declared: Option<u64>) -> Result<Bytes, Box<Response<Body>>> {
    let mut buffer: Vec<u8> = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(MAX_BODY));
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Box::new(error(StatusCode::BAD_REQUEST, "the body could not be read")));
        };
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > MAX_BODY {
                return Err(Box::new(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {MAX_BODY} bytes"),
                )));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buffer))
}

async fn handle(app: Arc<App>, request: Request<Incoming>, conn: ConnInfo) -> Result<Response<Body>, Infallible> {
    // On the network endpoint, `/metrics` (bearer token) and the dashboard (its cookie) have
    // their own authentication; everything else is the control API, signed.
    if let Origin::Network { tls, address } = conn.origin {
        let path = request.uri().path();
        let (metrics, web) = (path == "/metrics", path == "/ui" || path.starts_with("/ui/"));
        if metrics || web {
            let response = if metrics {
                crate::metrics::serve(&app, &request).await
            } else {
                crate::web::serve(&app, request, tls, address).await
            };
            // A scraper with the token, a browser with its session: clients, kept like signed ones.
            if response.status().is_success() || response.status().is_redirection() {
                conn.unproven.forget(conn.id);
            }
            return Ok(response);
        }
    }
    let method = request.method().clone();
    let target = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let header = request.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    // What can be refused before reading the body is: no header, a stale one, a replayed nonce,
    // a body declared too large. An unsigned client never makes the daemon hold its body.
    if let Err(e) = app.verifier.precheck(header.as_deref(), tug_proto::unix_now()) {
        return Ok(error(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    // An upload is authenticated by the digest its path names, and streamed to disk.
    if method == Method::PUT
        && let Some(digest) = request.uri().path().strip_prefix("/v1/uploads/")
    {
        let digest = digest.to_string();
        let (response, signed) = crate::upload::receive(&app, request, header.as_deref(), &target, &digest).await;
        if signed {
            conn.unproven.forget(conn.id);
        }
        return Ok(response);
    }
    // The CLI always says how long its body is; a body of unknown length (chunked) could only
    // be budgeted at the largest size, which a few unsigned clients would use up.
    let Some(declared) = hyper::body::Body::size_hint(request.body()).exact() else {
        return Ok(error(StatusCode::LENGTH_REQUIRED, "a request body needs a Content-Length"));
    };
    if declared > MAX_BODY as u64 {
        return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_BODY} bytes")));
    }
    // Room for the body among the bodies being read on this side (socket or network).
    let budget = match conn.origin {
        Origin::Socket => &app.bodies,
        Origin::Network { .. } => &app.network_bodies,
    };
    let reserve = (declared as u32).max(1);
    let Ok(Ok(room)) = tokio::time::timeout(BUDGET_WAIT, budget.clone().acquire_many_owned(reserve)).await else {
        return Ok(error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is reading too many request bodies: retry"));
    };
    // Declared before the body, so dropped after it, on every path (a body cut short too).
    let mut trim = TrimAfterLargeBody(declared as usize);
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(request.into_body(), Some(declared))).await {
        Ok(Ok(body)) => body,
        Ok(Err(response)) => return Ok(*response),
        Err(_) => return Ok(error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time")),
    };
    trim.0 = trim.0.max(body.len());
    // Authentication before routing: nothing about the API is reachable unsigned.
    if let Err(e) = app.verifier.verify(header.as_deref(), method.as_str(), &target, &body, tug_proto::unix_now()) {
        return Ok(error(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    drop(room);
    // A client that signs is the daemon's user: its connection is never closed to make room.
    conn.unproven.forget(conn.id);
    let path = target.split('?').next().unwrap_or("/");
    let supervisor = &app.supervisor;
    // `down` only signals the shutdown, which itself stops everything: it must not queue
    // behind a change in progress (a `tug stop` waiting out a long stop_grace_period made
    // `tug down` time out). The supervisor refuses to create instances once shutting down.
    let _one_change_at_a_time = match (&method, path) {
        // A command streams for as long as it runs; it changes nothing the lock guards.
        // A backup takes what its dumps take; a restore loads into a stack already started.
        (&Method::GET, _)
        | (&Method::POST, "/v1/down" | "/v1/exec" | "/v1/run" | "/v1/dashboard" | "/v1/backup" | "/v1/restore") => None,
        // `put_stack` takes it once a remote client's artifacts are resolved.
        (&Method::PUT, "/v1/stack") => None,
        _ => Some(app.changes.lock().await),
    };
    let response = match (&method, path) {
        (&Method::GET, "/v1/openapi.json") => {
            let mut response = Response::new(whole(Bytes::from_static(tug_proto::OPENAPI.as_bytes())));
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            response
        }
        (&Method::GET, "/v1/status") => {
            let asked = (query_number(&target, "after", u64::MAX), query_number(&target, "wait_ms", 60_000));
            match (asked, query_flag(&target, "usage")) {
                ((Ok(after), Ok(wait_ms)), Ok(usage)) => {
                    let wait = Duration::from_millis(wait_ms.unwrap_or(0));
                    json(StatusCode::OK, &supervisor.status(after, wait, usage).await)
                }
                ((Err(bad), _) | (_, Err(bad)), _) | (_, Err(bad)) => *bad,
            }
        }
        (&Method::PUT, "/v1/stack") => match (parse::<UpRequest>(&body), query_flag(&target, "progress")) {
            (Ok(request), Ok(true)) => put_stack_streamed(app.clone(), conn.origin, request),
            (Ok(request), Ok(false)) => put_stack(&app, conn.origin, request, None).await,
            (Err(response), _) | (_, Err(response)) => *response,
        },
        (&Method::POST, "/v1/dashboard") => match parse::<tug_proto::DashboardRequest>(&body) {
            Ok(request) => match app.endpoint.url().await {
                Some(base) => {
                    let token = app.web.login_token(request.read_only);
                    json(
                        StatusCode::OK,
                        &tug_proto::DashboardResponse { url: format!("{base}/ui/login?token={token}") },
                    )
                }
                None => error(
                    StatusCode::CONFLICT,
                    "the dashboard is served on the network endpoint, and this stack has none: set `api.listen` \
                     (such as 127.0.0.1:7070) in the stack file and run `tug up` again",
                ),
            },
            Err(response) => *response,
        },
        (&Method::GET, "/v1/logs") => crate::web::logs_stream(&app, &target).await,
        (&Method::GET, "/v1/doctor") => match query_flag(&target, "images") {
            Ok(images) => json(StatusCode::OK, &crate::doctor::this_daemons_host(supervisor, images).await),
            Err(response) => *response,
        },
        (&Method::GET, "/v1/sources") => crate::upload::has_source(&supervisor.config().state_dir, &target),
        (&Method::POST, "/v1/plan") => match parse::<UpRequest>(&body) {
            Ok(request) => match crate::artifacts::complete_up(request, this_host(supervisor), true)
                .await
                .map(|request| supervisor.plan(&request))
            {
                Ok(Ok(plan)) => json(StatusCode::OK, &plan),
                Ok(Err(e)) => supervisor_error(e),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            },
            Err(response) => *response,
        },
        (&Method::POST, "/v1/start" | "/v1/stop" | "/v1/restart") => match parse::<TargetsRequest>(&body) {
            Ok(request) => {
                let result = match path {
                    "/v1/start" => supervisor.start(&request.targets),
                    "/v1/stop" => supervisor.stop(&request.targets).await,
                    _ => supervisor.restart(&request.targets),
                };
                match result {
                    Ok(instances) => json(StatusCode::OK, &serde_json::json!({ "instances": instances })),
                    Err(e) => supervisor_error(e),
                }
            }
            Err(response) => *response,
        },
        (&Method::POST, "/v1/scale") => match parse::<ScaleRequest>(&body) {
            // The same cap as `PUT /v1/stack` (the supervisor's validate_spec): without it one
            // request (`tug scale web=4000000000`) makes the daemon spawn processes until the
            // machine gives out.
            Ok(request) if request.replicas > MAX_REPLICAS => error(
                StatusCode::BAD_REQUEST,
                format!("service `{}`: {} replicas is more than {MAX_REPLICAS}", request.service, request.replicas),
            ),
            Ok(request) => match supervisor.scale(&request.service, request.replicas).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({})),
                Err(e) => supervisor_error(e),
            },
            Err(response) => *response,
        },
        (&Method::GET, "/v1/stats") => {
            let service = query_text(&target, "service");
            match supervisor.stats(service) {
                Ok(stats) => json(StatusCode::OK, &stats),
                Err(e) => supervisor_error(e),
            }
        }
        (&Method::GET, "/v1/rollout") => match query_text(&target, "service") {
            Some(service) => match supervisor.rollout_status(service) {
                Ok(status) => json(StatusCode::OK, &status),
                Err(e) => supervisor_error(e),
            },
            None => error(StatusCode::BAD_REQUEST, "say which service: /v1/rollout?service=NAME"),
        },
        (&Method::GET, "/v1/history") => match query_text(&target, "service") {
            Some(service) => match supervisor.history(service) {
                Ok(entries) => json(StatusCode::OK, &entries),
                Err(e) => supervisor_error(e),
            },
            None => error(StatusCode::BAD_REQUEST, "say which service: /v1/history?service=NAME"),
        },
        (&Method::POST, "/v1/rollout") => match parse::<RolloutRequest>(&body) {
            Ok(request) => match supervisor.rollout_action(&request.service, request.action).await {
                Ok(message) => json(StatusCode::OK, &serde_json::json!({ "message": message })),
                Err(e) => supervisor_error(e),
            },
            Err(response) => *response,
        },
        (&Method::POST, "/v1/exec") => match parse::<ExecRequest>(&body) {
            Ok(request) => match supervisor.exec(&request.target, request.command) {
                Ok(events) => streamed(events),
                Err(e) => supervisor_error(e),
            },
            Err(response) => *response,
        },
        (&Method::POST, "/v1/backup") => match parse::<tug_proto::BackupRequest>(&body) {
            Ok(request) if let Err(why) = crate::backup::check_backup_request(supervisor, &request) => {
                error(StatusCode::BAD_REQUEST, why)
            }
            // Its own task: an archive half written because the client went away is not left.
            Ok(request) => {
                let supervisor = supervisor.clone();
                let written = tokio::spawn(async move {
                    let state_dir = supervisor.config().state_dir.clone();
                    crate::backup::write_archive(&supervisor, &state_dir, request).await
                });
                match written.await.unwrap_or_else(|e| Err(format!("the backup stopped: {e}"))) {
                    Ok(answer) => json(StatusCode::OK, &answer),
                    Err(why) => error(StatusCode::CONFLICT, why),
                }
            }
            Err(response) => *response,
        },
        (&Method::POST, "/v1/restore") => match parse::<tug_proto::RestoreRequest>(&body) {
            Ok(request) if let Err(why) = crate::backup::check_restore_request(&request) => {
                error(StatusCode::BAD_REQUEST, why)
            }
            Ok(request) => {
                let supervisor = supervisor.clone();
                let loaded = tokio::spawn(async move { crate::backup::load_archive(&supervisor, request).await });
                match loaded.await.unwrap_or_else(|e| Err(format!("the restore stopped: {e}"))) {
                    Ok(answer) => json(StatusCode::OK, &answer),
                    Err(why) => error(StatusCode::CONFLICT, why),
                }
            }
            Err(response) => *response,
        },
        (&Method::POST, "/v1/run") => match parse::<RunRequest>(&body) {
            Ok(request) if request.on_host.is_some() => run_streamed(app.clone(), request),
            Ok(request) => match run_on_this_host(&app, request, None).await.map(|r| supervisor.run_one_off(r)) {
                Ok(Ok(events)) => streamed(events),
                Ok(Err(e)) => supervisor_error(e),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            },
            Err(response) => *response,
        },
        (&Method::POST, "/v1/down") => match parse::<tug_proto::DownRequest>(&body) {
            Ok(request) => {
                let volumes = if request.volumes {
                    crate::artifacts::volumes_to_remove(supervisor).await
                } else {
                    Ok(Vec::new())
                };
                match volumes {
                    Ok(volumes) => {
                        app.remove_volumes.store(request.volumes, Ordering::SeqCst);
                        app.shutdown.notify_one();
                        json(
                            StatusCode::ACCEPTED,
                            &serde_json::json!({ "daemon_pid": std::process::id(), "volumes": volumes }),
                        )
                    }
                    Err(e) => error(StatusCode::CONFLICT, e),
                }
            }
            Err(response) => *response,
        },
        (
            _,
            "/v1/openapi.json" | "/v1/status" | "/v1/stats" | "/v1/stack" | "/v1/plan" | "/v1/start" | "/v1/stop"
            | "/v1/restart" | "/v1/scale" | "/v1/down" | "/v1/rollout" | "/v1/history" | "/v1/exec" | "/v1/run"
            | "/v1/dashboard" | "/v1/logs" | "/v1/doctor",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}")),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    Ok(response)
}

/// The project the daemon runs (for webhooks' payloads).
/// Starts the keeper (and so the daemon) for `state_dir`, detached from the terminal; with
/// `advertise`, the daemon binds and registers that address.
pub fn spawn(state_dir: &Path, advertise: Option<&str>) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find tug's own executable: {e}"))?;
    let log_path = state_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut command = std::process::Command::new(exe);
    // The keeper and the daemon live as long as the stack, and their environment is readable
    // in /proc for as long: a secret given as `DB_PASSWORD=… tug up` must not stay there. They
    // get what a program expects of its session and tug's own settings, nothing else;
    // instances get their values through the spec.
    command.env_clear().envs(std::env::vars_os().filter(|(name, _)| inherited(&name.to_string_lossy())));
    if let Some(address) = advertise {
        command.env(ADVERTISE_ENV, address);
    }
    command
        .arg("daemon")
        .arg("--state-dir")
        .arg(state_dir)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid and close_inherited_on_exec are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            // The keeper and the daemon outlive this command: they must not hold what it inherited.
            tug_supervisor::process::close_inherited_on_exec();
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| format!("cannot start the daemon: {e}"))?;
    Ok(child.id())
}

/// What the daemon (and so every instance) inherits of the environment of the `tug up` that
/// starts it: the session's basics, the locale, and tug's own settings for the daemon.
fn inherited(name: &str) -> bool {
    const SESSION: [&str; 12] = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "XDG_RUNTIME_DIR",
        "NO_COLOR",
    ];
    const TUG: [&str; 3] = ["TUG_PORT_RANGE", tug_proto::auth::KEY_ENV, ADVERTISE_ENV];
    SESSION.contains(&name) || TUG.contains(&name) || name.starts_with("LC_")
}

pub fn state_dir_arg(dir: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = dir.ok_or("tug daemon needs --state-dir")?;
    private_state_dir(&dir)
}

/// The stack's state folder, private to its owner, resolved: created 0700, and a `.tug` that
/// other users could read tightened to 0700 (logs, state and the API key live there; one made
/// beforehand as 0755 had kept them readable to every local user). A folder named by
/// `TUG_STATE_DIR` that exists already is the user's choice and is left as it is: it could be
/// anything (`/var/lib`), and changing it could break what else lives there.
pub fn private_state_dir(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let default_folder = dir.file_name().is_some_and(|name| name == crate::stack::STATE_FOLDER);
    if meta.mode() & 0o077 != 0 && meta.uid() == uid && default_folder {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private (chmod 700): {e}", dir.display()))?;
    }
    std::fs::canonicalize(dir).map_err(|e| format!("cannot resolve {}: {e}", dir.display()))
}
