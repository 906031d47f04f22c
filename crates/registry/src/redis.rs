//! The registry in Redis.
//!
//! Layout, for project `p` (every key under `tug:<p>:`):
//!
//! - `tug:<p>:live`: sorted set, member = instance id, score = expiry in milliseconds on the Redis
//!   server's clock (computed inside Lua from `TIME`; the client only sends the TTL).
//! - `tug:<p>:entries`: hash, field = instance id, value = the entry as JSON.
//! - `tug:<p>:changes`: pub/sub channel; a message (`changed`) after any write that changed membership.
//!
//! Every script first drops the entries whose expiry has passed (by the server's `TIME`) and announces
//! the drop, so a dead host's entries leave within its TTL plus one resync of any watcher.
//!
//! A connection is a TCP stream or, for `rediss://`, a rustls session over one ([`Stream`]); all
//! the rest (AUTH, SELECT, scripts, the subscriber, reconnects) does not know which.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::resp::{self, Value};
use crate::tls::{Explained, TlsParams};
use crate::{Config, Entry, Membership, RedisUrl, Registry, RegistryError, Status, check_entries, mark_stale, publish};

/// Shared prologue: `now` in ms by the server's clock; drop and announce expired entries.
/// KEYS: live, entries, changes.
const PROLOGUE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local changed = false
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
  changed = true
end
"#;

/// ARGV: ttl in ms, then instance id and JSON pairs. Upserts and refreshes expiry = now + ttl.
const REGISTER: &str = r#"
local expiry = now + tonumber(ARGV[1])
for i = 2, #ARGV - 1, 2 do
  local id, json = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[2], id) ~= json or not redis.call('ZSCORE', KEYS[1], id) then changed = true end
  redis.call('ZADD', KEYS[1], expiry, id)
  redis.call('HSET', KEYS[2], id, json)
end
if changed then redis.call('PUBLISH', KEYS[3], 'changed') end
return changed and 1 or 0
"#;

/// ARGV: instance ids.
const DEREGISTER: &str = r#"
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], id) == 1 then changed = true end
  redis.call('HDEL', KEYS[2], id)
end
if changed then redis.call('PUBLISH', KEYS[3], 'changed') end
return changed and 1 or 0
"#;

/// Returns the milliseconds until the earliest expiry (-1 when none), then the JSON of every live
/// entry. The delay lets a watcher resync right when an entry expires, so a dead host's entries leave
/// within their TTL; it is a duration, so no two clocks are ever compared.
const SNAPSHOT: &str = r#"
if changed then redis.call('PUBLISH', KEYS[3], 'changed') end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local out = {-1}
if #first == 2 then out[1] = math.floor(tonumber(first[2]) - now) end
for _, id in ipairs(ids) do
  local json = redis.call('HGET', KEYS[2], id)
  if json then out[#out + 1] = json end
end
return out
"#;

struct Keys {
    live: String,
    entries: String,
    changes: String,
}

impl Keys {
    fn new(project: &str) -> Keys {
        Keys {
            live: format!("tug:{project}:live"),
            entries: format!("tug:{project}:entries"),
            changes: format!("tug:{project}:changes"),
        }
    }
}

/// Everything the client side needs, shared by the registry handle and its watcher task.
struct Ctx {
    url: RedisUrl,
    keys: Keys,
    config: Config,
    tx: watch::Sender<Arc<Membership>>,
    /// Wakes the watcher for an immediate resync (after a local change).
    poke: Notify,
}

/// The Redis registry. Dropping it stops its watcher task (entries live on until their TTL; call
/// [`Registry::deregister`] first on a clean shutdown).
pub struct RedisRegistry {
    ctx: Arc<Ctx>,
    project: String,
    conn: Mutex<Option<Conn>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl RedisRegistry {
    /// Must be called inside a tokio runtime: starts the watcher task. Does not wait for Redis.
    pub fn new(url: RedisUrl, project: &str, config: Config) -> RedisRegistry {
        let (tx, _) = watch::channel(Arc::new(Membership::default()));
        let ctx = Arc::new(Ctx { url, keys: Keys::new(project), config, tx, poke: Notify::new() });
        let watcher = tokio::spawn(watcher(ctx.clone()));
        RedisRegistry { ctx, project: project.to_string(), conn: Mutex::new(None), watcher }
    }

    pub fn url(&self) -> &RedisUrl {
        &self.ctx.url
    }

    /// Connects (if not connected) and checks the server answers: a wrong password or an unreachable
    /// server shows here.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.call(&[b"PING".as_slice()]).await.map(drop)
    }

    /// The server's clock (`TIME`), which entries' expiry is judged by.
    pub async fn server_time(&self) -> Result<std::time::SystemTime, RegistryError> {
        let reply = self.call(&[b"TIME".as_slice()]).await?;
        let number = |v: &Value| match v {
            Value::Bulk(b) => std::str::from_utf8(b).ok().and_then(|t| t.parse::<u64>().ok()),
            _ => None,
        };
        match &reply {
            Value::Array(parts) if parts.len() == 2 => match (number(&parts[0]), number(&parts[1])) {
                (Some(secs), Some(micros)) => Ok(std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(secs)
                    + std::time::Duration::from_micros(micros)),
                _ => Err(RegistryError::Protocol {
                    address: self.ctx.url.address(),
                    message: format!("TIME answered {reply:?}"),
                }),
            },
            _ => Err(RegistryError::Protocol {
                address: self.ctx.url.address(),
                message: format!("TIME answered {reply:?}"),
            }),
        }
    }

    /// One request on the shared command connection; a failed connection is dropped so the next
    /// request reconnects.
    async fn call(&self, args: &[&[u8]]) -> Result<Value, RegistryError> {
        let mut guard = self.conn.lock().await;
        call_on(&self.ctx, &mut guard, args).await
    }
}

impl Drop for RedisRegistry {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

async fn call_on(ctx: &Ctx, slot: &mut Option<Conn>, args: &[&[u8]]) -> Result<Value, RegistryError> {
    if slot.is_none() {
        *slot = Some(Conn::open(&ctx.url, ctx.config.timeout).await?);
    }
    let conn = slot.as_mut().expect("connected above");
    match conn.call(args).await {
        Err(
            e @ (RegistryError::Io { .. }
            | RegistryError::Tls { .. }
            | RegistryError::Timeout { .. }
            | RegistryError::Protocol { .. }),
        ) => {
            *slot = None;
            Err(e)
        }
        other => other,
    }
}

fn script(body: &str) -> String {
    format!("{PROLOGUE}{body}")
}

fn eval_args<'a>(script: &'a str, keys: &'a Keys, argv: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let mut args: Vec<&[u8]> =
        vec![b"EVAL", script.as_bytes(), b"3", keys.live.as_bytes(), keys.entries.as_bytes(), keys.changes.as_bytes()];
    args.extend_from_slice(argv);
    args
}

/// The live entries, and how long until the earliest of them expires.
async fn snapshot_on(ctx: &Ctx, slot: &mut Option<Conn>) -> Result<(Vec<Entry>, Option<Duration>), RegistryError> {
    let script = script(SNAPSHOT);
    let reply = call_on(ctx, slot, &eval_args(&script, &ctx.keys, &[])).await?;
    let Value::Array(mut items) = reply else {
        return Err(RegistryError::Protocol {
            address: ctx.url.address(),
            message: format!("expected an array of entries, got {reply:?}"),
        });
    };
    let next = match items.first() {
        Some(Value::Int(ms)) => u64::try_from(*ms).ok().map(Duration::from_millis),
        _ => {
            return Err(RegistryError::Protocol {
                address: ctx.url.address(),
                message: "snapshot reply does not start with the next expiry".into(),
            });
        }
    };
    items.remove(0);
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        // An entry another version wrote in a shape this one cannot read is left out, not fatal.
        if let Value::Bulk(json) = item
            && let Ok(entry) = serde_json::from_slice::<Entry>(&json)
        {
            entries.push(entry);
        }
    }
    Ok((Membership::new(entries, Status::Live).entries, next))
}

impl Registry for RedisRegistry {
    async fn register(&self, entries: &[Entry]) -> Result<(), RegistryError> {
        check_entries(entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.ctx.config.ttl.as_millis().max(1).to_string();
        let mut owned: Vec<(String, Vec<u8>)> = Vec::with_capacity(entries.len());
        for e in entries {
            let json = serde_json::to_vec(e)
                .map_err(|err| RegistryError::Entry { instance: e.instance.clone(), message: err.to_string() })?;
            owned.push((e.instance.clone(), json));
        }
        let mut argv: Vec<&[u8]> = vec![ttl.as_bytes()];
        for (id, json) in &owned {
            argv.push(id.as_bytes());
            argv.push(json);
        }
        let script = script(REGISTER);
        let reply = self.call(&eval_args(&script, &self.ctx.keys, &argv)).await?;
        if reply == Value::Int(1) {
            self.ctx.poke.notify_one();
        }
        Ok(())
    }

    async fn deregister(&self, instances: &[String]) -> Result<(), RegistryError> {
        if instances.is_empty() {
            return Ok(());
        }
        let argv: Vec<&[u8]> = instances.iter().map(|i| i.as_bytes()).collect();
        let script = script(DEREGISTER);
        let reply = self.call(&eval_args(&script, &self.ctx.keys, &argv)).await?;
        if reply == Value::Int(1) {
            self.ctx.poke.notify_one();
        }
        Ok(())
    }

    async fn snapshot(&self) -> Result<Vec<Entry>, RegistryError> {
        let mut guard = self.conn.lock().await;
        snapshot_on(&self.ctx, &mut guard).await.map(|(entries, _)| entries)
    }

    fn watch(&self) -> watch::Receiver<Arc<Membership>> {
        self.ctx.tx.subscribe()
    }

    fn project(&self) -> &str {
        &self.project
    }
}

/// Jittered exponential backoff, 100 ms doubling to 5 s; each wait is uniform in [d/2, d].
struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        Backoff { next: Backoff::MIN, rng: seed | 1 }
    }

    fn reset(&mut self) {
        self.next = Backoff::MIN;
    }

    fn wait(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let d = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        let half = d / 2;
        half + half.mul_f64((self.rng >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Keeps the watch current: subscribes to the change channel, resyncs on every message, on a local
/// change and every `resync`; reconnects with backoff. On failure the membership stays, marked stale.
async fn watcher(ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new();
    let mut cmd: Option<Conn> = None;
    loop {
        match watch_once(&ctx, &mut cmd, &mut backoff).await {
            Ok(()) => {}
            Err(e) => mark_stale(&ctx.tx, e.to_string()),
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

/// Resyncs; returns when to resync next at the latest (the next expiry, or the resync period).
async fn refresh(ctx: &Ctx, cmd: &mut Option<Conn>) -> Result<Instant, RegistryError> {
    match snapshot_on(ctx, cmd).await {
        Ok((entries, next)) => {
            publish(&ctx.tx, Membership { entries, status: Status::Live });
            // 1 ms past the expiry, so the entry is expired by then on the server's clock too.
            let wait = next.map_or(ctx.config.resync, |n| (n + Duration::from_millis(1)).min(ctx.config.resync));
            Ok(Instant::now() + wait)
        }
        Err(e) => {
            mark_stale(&ctx.tx, e.to_string());
            Err(e)
        }
    }
}

/// One subscription's life. Returns when the subscriber connection fails.
async fn watch_once(ctx: &Ctx, cmd: &mut Option<Conn>, backoff: &mut Backoff) -> Result<(), RegistryError> {
    let mut sub = Conn::open(&ctx.url, ctx.config.timeout).await?;
    sub.send(&[b"SUBSCRIBE".as_slice(), ctx.keys.changes.as_bytes()]).await?;
    match timeout(ctx.config.timeout, sub.read()).await {
        Ok(Ok(Value::Array(_))) => {}
        Ok(Ok(Value::Error(message))) => return Err(RegistryError::Server { address: ctx.url.address(), message }),
        Ok(Ok(other)) => {
            return Err(RegistryError::Protocol {
                address: ctx.url.address(),
                message: format!("unexpected reply to SUBSCRIBE: {other:?}"),
            });
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(RegistryError::Timeout { address: ctx.url.address(), after: ctx.config.timeout }),
    }
    // Subscribed before reading, so no change between the read and the subscription is missed.
    let mut next_sync = refresh(ctx, cmd).await?;
    backoff.reset();
    let mut ping = tokio::time::interval_at(Instant::now() + ctx.config.resync, ctx.config.resync);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut pending = false;
    loop {
        let mut sync = false;
        tokio::select! {
            reply = sub.read() => {
                let reply = reply?;
                last_heard = Instant::now();
                // A change message asks for a resync; the answer to our PING only shows the
                // connection lives. A burst of messages already buffered costs one resync.
                if let Value::Array(parts) = &reply
                    && parts.first() == Some(&Value::Bulk(b"message".to_vec()))
                {
                    pending = true;
                }
                if pending && sub.buffered_is_empty() {
                    pending = false;
                    sync = true;
                }
            }
            _ = ping.tick() => {
                // A dead subscriber connection (no reply to PINGs) is replaced.
                if last_heard.elapsed() > ctx.config.resync * 2 + ctx.config.timeout {
                    return Err(RegistryError::Timeout { address: ctx.url.address(), after: ctx.config.timeout });
                }
                sub.send(&[b"PING".as_slice()]).await?;
            }
            // The periodic full resync, or sooner when an entry is due to expire.
            _ = tokio::time::sleep_until(next_sync) => sync = true,
            _ = ctx.poke.notified() => sync = true,
        }
        if sync {
            next_sync = refresh(ctx, cmd).await.unwrap_or_else(|_| Instant::now() + ctx.config.resync);
        }
    }
}

/// The bytes under RESP: plain TCP, or TLS over TCP (boxed: a rustls session is large).
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            // rustls may keep records it could not write yet: the flush sends them.
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// Cancel-safe, as both streams' `read` are.
    async fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(into).await,
            Stream::Tls(s) => s.read(into).await,
        }
    }
}

/// One connection, authenticated and on the right database.
struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    address: String,
    timeout: Duration,
    /// For `rediss://`: what the URL asked for, so TLS errors can say what to change.
    tls: Option<TlsParams>,
    /// A reply has been read: the server speaks RESP here.
    answered: bool,
}

impl Conn {
    async fn open(url: &RedisUrl, limit: Duration) -> Result<Conn, RegistryError> {
        let address = url.address();
        // One bound for connecting and, over TLS, the handshake.
        let deadline = Instant::now() + limit;
        let tcp = match timeout_at(deadline, TcpStream::connect((url.host.as_str(), url.port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(RegistryError::Connect { address, source }),
            Err(_) => return Err(RegistryError::Timeout { address, after: limit }),
        };
        let _ = tcp.set_nodelay(true);
        let (stream, tls) = match &url.tls {
            None => (Stream::Plain(tcp), None),
            Some(tls) => {
                let connector = TlsConnector::from(tls.config.clone());
                match timeout_at(deadline, connector.connect(tls.server_name.clone(), tcp)).await {
                    Ok(Ok(s)) => (Stream::Tls(Box::new(s)), Some(tls.params.clone())),
                    Ok(Err(source)) => {
                        let message = match tls_error(&source) {
                            Some(error) => Explained { error, params: &tls.params }.to_string(),
                            None => format!("handshake failed: {source} (is this redis-server's --tls-port?)"),
                        };
                        return Err(RegistryError::Tls { address, message });
                    }
                    // A plain server takes the ClientHello for the start of a command and waits.
                    Err(_) => {
                        let message =
                            format!("no answer to the handshake within {limit:?} (is this redis-server's --tls-port?)");
                        return Err(RegistryError::Tls { address, message });
                    }
                }
            }
        };
        let mut conn = Conn { stream, buf: Vec::with_capacity(4096), address, timeout: limit, tls, answered: false };
        if let Some(password) = &url.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &url.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            match conn.call(&args).await {
                Ok(_) => {}
                Err(RegistryError::Server { address, message }) => {
                    return Err(RegistryError::Auth { address, message });
                }
                Err(e) => return Err(e),
            }
        }
        if url.db != 0 {
            conn.call(&[b"SELECT".as_slice(), url.db.to_string().as_bytes()]).await?;
        }
        Ok(conn)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), RegistryError> {
        let mut out = Vec::new();
        resp::encode(args, &mut out);
        match timeout(self.timeout, self.stream.write_all(&out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(self.io_error(source)),
            Err(_) => Err(RegistryError::Timeout { address: self.address.clone(), after: self.timeout }),
        }
    }

    /// A failed read or write: [`RegistryError::Tls`] when TLS failed (a certificate the server
    /// refused after the handshake, as TLS 1.3 servers do), else [`RegistryError::Io`].
    fn io_error(&self, source: std::io::Error) -> RegistryError {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        if let (Some(params), Some(error)) = (&self.tls, tls_error(&source)) {
            return RegistryError::Tls {
                address: self.address.clone(),
                message: Explained { error, params }.to_string(),
            };
        }
        // A TLS port drops a plain client without a word.
        let source = match source.kind() {
            kind @ (ConnectionReset | UnexpectedEof | BrokenPipe) if self.tls.is_none() && !self.answered => {
                std::io::Error::new(
                    kind,
                    format!("{source}, before any reply (if this port serves TLS, use rediss://)"),
                )
            }
            _ => source,
        };
        RegistryError::Io { address: self.address.clone(), source }
    }

    fn buffered_is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads one reply, without a time limit. Cancel-safe: bytes are only consumed with a whole reply.
    async fn read(&mut self) -> Result<Value, RegistryError> {
        loop {
            match resp::parse(&self.buf) {
                Ok(Some((value, used))) => {
                    self.buf.drain(..used);
                    self.answered = true;
                    return Ok(value);
                }
                Ok(None) => {}
                Err(e) => return Err(RegistryError::Protocol { address: self.address.clone(), message: e.0 }),
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err(self.io_error(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(source) => return Err(self.io_error(source)),
            }
        }
    }

    /// Sends a command and reads its reply; an error reply becomes [`RegistryError::Server`]
    /// (or [`RegistryError::Auth`] when the server wants credentials).
    async fn call(&mut self, args: &[&[u8]]) -> Result<Value, RegistryError> {
        self.send(args).await?;
        let reply = match timeout(self.timeout, self.read()).await {
            Ok(r) => r?,
            Err(_) => return Err(RegistryError::Timeout { address: self.address.clone(), after: self.timeout }),
        };
        match reply {
            Value::Error(message) if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") => {
                Err(RegistryError::Auth { address: self.address.clone(), message })
            }
            Value::Error(message) => Err(RegistryError::Server { address: self.address.clone(), message }),
            other => Ok(other),
        }
    }
}

/// The rustls error inside an I/O error from a TLS stream.
fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_bounded() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..12).map(|_| b.wait()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w <= Backoff::MAX));
        assert!(waits[11] >= Backoff::MAX / 2);
        b.reset();
        assert!(b.wait() <= Backoff::MIN);
    }

    #[test]
    fn scripts_send_no_client_time() {
        // The only number a client sends is the TTL; the expiry is computed from the server's TIME.
        for body in [REGISTER, DEREGISTER, SNAPSHOT] {
            let s = script(body);
            assert!(s.contains("redis.call('TIME')"));
        }
        assert!(REGISTER.contains("now + tonumber(ARGV[1])"));
    }
}
