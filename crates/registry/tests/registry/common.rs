//! A real `redis-server` per test, on a free loopback port, killed on drop.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tug_registry::resp::{self, Value};
use tug_registry::{Entry, Membership};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
}

impl RedisServer {
    pub fn start(password: Option<&str>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { child: None, port, password: password.map(str::to_string) };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
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

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// One raw command on a fresh connection (for inspecting what the registry stored).
    pub async fn raw(&self, args: &[&str]) -> Value {
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
