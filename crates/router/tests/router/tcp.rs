use std::collections::BTreeMap;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tug_router::{Backend, Config, Protocol};

use crate::support::{EchoBackend, Fixture, dead_addr};

async fn echo_through(addr: std::net::SocketAddr, message: &str) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut id = String::new();
    stream.read_line(&mut id).await.unwrap();
    stream.get_mut().write_all(message.as_bytes()).await.unwrap();
    let mut echoed = vec![0; message.len()];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, message.as_bytes());
    id.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_echoes_and_balances_connections() {
    let (a, b) = (EchoBackend::start("echo-a").await, EchoBackend::start("echo-b").await);
    let list = vec![
        Backend { id: "echo-a".into(), addr: a.addr, weight: 1 },
        Backend { id: "dead".into(), addr: dead_addr().await, weight: 1 },
        Backend { id: "echo-b".into(), addr: b.addr, weight: 1 },
    ];
    let fx = Fixture::start(Protocol::Tcp, Config::default(), list);
    let mut counts = BTreeMap::new();
    for i in 0..30 {
        *counts.entry(echo_through(fx.addr(), &format!("hello {i}\n")).await).or_insert(0) += 1;
    }
    // Every connection reached a live backend: the dead one's turn is retried on
    // the next pick, so the two live ones alternate.
    assert_eq!(counts, BTreeMap::from([("echo-a".to_string(), 15), ("echo-b".to_string(), 15)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_closes_when_no_backend_is_ready() {
    let fx = Fixture::start(Protocol::Tcp, Config::default(), vec![]);
    let mut stream = TcpStream::connect(fx.addr()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read_to_end(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}
