//! A real `redis-server` per test, on a free loopback port, killed on drop; for TLS, a throwaway
//! PKI that the `openssl` CLI makes at test time (no key lives in the repository).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tug_registry::resp::{self, Value};
use tug_registry::{Entry, Membership, RedisRegistry, Registry, Status};

pub struct RedisServer {
    child: Option<Child>,
    /// The plain port, or the TLS port of a TLS server (which has no plain port).
    pub port: u16,
    password: Option<String>,
    tls: Option<TlsServer>,
}

/// How a TLS server is set up: its certificate and key (file names in the [`Pki`]), whether it
/// requires client certificates signed by the test CA, and whether it speaks only TLS 1.2.
#[derive(Clone, Copy)]
pub struct TlsServer {
    pub cert: &'static str,
    pub key: &'static str,
    pub client_certs: bool,
    pub tls12_only: bool,
}

impl TlsServer {
    /// The test CA's server certificate, valid for `localhost` and `127.0.0.1`.
    pub const GOOD: TlsServer =
        TlsServer { cert: "server.pem", key: "server.key", client_certs: false, tls12_only: false };
}

impl RedisServer {
    pub fn start(password: Option<&str>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { child: None, port, password: password.map(str::to_string), tls: None };
        server.spawn();
        server
    }

    /// A server that speaks only TLS (`--port 0 --tls-port N`).
    pub fn start_tls(password: Option<&str>, tls: TlsServer) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { child: None, port, password: password.map(str::to_string), tls: Some(tls) };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        let port = self.port.to_string();
        match &self.tls {
            None => {
                cmd.args(["--port", &port]);
            }
            Some(tls) => {
                let pki = Pki::get();
                cmd.args(["--port", "0", "--tls-port", &port]);
                cmd.args(["--tls-cert-file", &pki.path(tls.cert), "--tls-key-file", &pki.path(tls.key)]);
                cmd.args(["--tls-ca-cert-file", &pki.path("ca.pem")]);
                cmd.args(["--tls-auth-clients", if tls.client_certs { "yes" } else { "no" }]);
                if tls.tls12_only {
                    cmd.args(["--tls-protocols", "TLSv1.2"]);
                }
            }
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("redis-server (Debian package redis-server) must be installed"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts a fresh server (empty: nothing is saved) on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `redis://…/0`, or for a TLS server `rediss://…/0?ca=<the test CA>`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let auth = match &self.password {
            Some(p) => format!(":{p}@"),
            None => String::new(),
        };
        let query = match &self.tls {
            Some(_) => format!("?ca={}", Pki::get().path("ca.pem")),
            None => String::new(),
        };
        format!("{scheme}://{auth}127.0.0.1:{}/0{query}", self.port)
    }

    /// One raw command on a fresh connection (for inspecting what the registry stored).
    pub async fn raw(&self, args: &[&str]) -> Value {
        assert!(self.tls.is_none(), "raw() speaks plain RESP only");
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut out = Vec::new();
        if let Some(p) = &self.password {
            resp::encode(&["AUTH", p], &mut out);
        }
        resp::encode(args, &mut out);
        stream.write_all(&out).await.unwrap();
        let mut buf = Vec::new();
        let mut replies = Vec::new();
        let wanted = if self.password.is_some() { 2 } else { 1 };
        while replies.len() < wanted {
            if let Some((v, used)) = resp::parse(&buf).unwrap() {
                buf.drain(..used);
                replies.push(v);
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
        replies.pop().unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn entry(service: &str, instance: &str, port: u16) -> Entry {
    Entry {
        service: service.into(),
        instance: instance.into(),
        host: instance.split('/').next().unwrap().into(),
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        revision: "r1".into(),
        ready: true,
        weight: 1,
    }
}

pub fn ids(m: &Membership) -> Vec<&str> {
    m.entries.iter().map(|e| e.instance.as_str()).collect()
}

/// Waits until the membership satisfies `pred`; panics with the last one after `within`.
pub async fn wait_for(
    rx: &mut watch::Receiver<Arc<Membership>>,
    within: Duration,
    pred: impl Fn(&Membership) -> bool,
) -> Arc<Membership> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let current = rx.borrow_and_update().clone();
        if pred(&current) {
            return current;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the registry dropped its watch; last: {current:?}"),
            Err(_) => panic!("membership did not reach the expected state within {within:?}; last: {current:?}"),
        }
    }
}

pub const WAIT: Duration = Duration::from_secs(10);

/// Short times, so expiry and resync happen within a test.
pub fn fast() -> tug_registry::Config {
    tug_registry::Config {
        ttl: Duration::from_millis(300),
        heartbeat: Duration::from_millis(100),
        resync: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
    }
}

/// A throwaway PKI, made once per test process with the `openssl` CLI (EC P-256 keys: fast):
///
/// - `ca.pem`: the test CA; `server.pem`/`server.key`: its server certificate for `localhost` and
///   `127.0.0.1`; `client.pem`/`client.key`: its client certificate; `elsewhere.pem`/`.key`: its
///   certificate for another name only.
/// - `other-ca.pem`: an unrelated CA; `other-server.pem`/`.key`: its certificate for `localhost`
///   and `127.0.0.1` (also usable as a client certificate the test CA did not sign).
///
/// In the target's scratch directory, one folder per process; folders of processes that are gone
/// are removed.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn get() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Pki::make)
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("a UTF-8 scratch path").to_string()
    }

    fn make() -> Pki {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(old) = std::fs::read_dir(root) {
            for dir in old.flatten() {
                let name = dir.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("registry-pki-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(dir.path());
                }
            }
        }
        let dir = root.join(format!("registry-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        let local = "subjectAltName=DNS:localhost,IP:127.0.0.1";
        pki.leaf("server", "ca", local);
        pki.leaf("client", "ca", "subjectAltName=DNS:tug-client");
        pki.leaf("elsewhere", "ca", "subjectAltName=DNS:elsewhere.test");
        pki.leaf("other-server", "other-ca", local);
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(&self.dir).output().expect("the openssl CLI");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    const EC: [&'static str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

    fn ca(&self, name: &str) {
        let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN=tug test {name}"));
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &pem];
        args.extend(Pki::EC);
        self.openssl(&args);
    }

    fn leaf(&self, name: &str, ca: &str, extensions: &str) {
        let (key, csr, pem, subj) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("/CN=tug test {name}"));
        let mut args = vec!["req", "-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr];
        args.extend(Pki::EC);
        self.openssl(&args);
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext), format!("{extensions}\nbasicConstraints=critical,CA:FALSE\n")).unwrap();
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        let serial =
            format!("0x{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }
}

/// Stops `server` (the watcher keeps `e`, marked stale; registering fails), restarts it empty
/// on the same port, and checks that a heartbeat of `e` and a second entry fills it again and
/// the watcher reconnects and sees both.
pub async fn survives_a_restart(
    server: &mut RedisServer,
    h1: &RedisRegistry,
    rx: &mut watch::Receiver<Arc<Membership>>,
    e: &Entry,
    heartbeat: Duration,
) {
    server.stop();
    let stale = wait_for(rx, WAIT, |m| matches!(m.status, Status::Stale(_))).await;
    assert_eq!(stale.entries, vec![e.clone()], "the last known membership is kept");
    assert!(h1.register(std::slice::from_ref(e)).await.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.borrow().entries, vec![e.clone()]);

    server.restart();
    let e2 = entry("web", "h1/web-2", 8002);
    let beating = async {
        loop {
            let _ = h1.register(&[e.clone(), e2.clone()]).await;
            tokio::time::sleep(heartbeat).await;
        }
    };
    tokio::select! {
        _ = beating => unreachable!(),
        m = wait_for(rx, WAIT, |m| m.entries.len() == 2 && m.status == Status::Live) => {
            assert_eq!(m.entries, vec![e.clone(), e2]);
        }
    }
}
