//! The plain HTTP/1 path (GET and HEAD without a body, proxied by the router itself): every
//! way an instance may frame its answer reaches a strict client whole, broken framing is a
//! 502 and never reused, and whatever the path does not take goes on with hyper, in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tug_router::{Backend, Config, Protocol};

use crate::support::{Answer, Fixture, H1, H2, backends, eventually, members, raw};

/// An instance that answers each request head with the bytes scripted for its path (and
/// closes after a path marked so), recording every head it got.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// `script`: path -> (answer bytes, close after it).
    async fn start(script: &[(&'static str, &'static [u8], bool)]) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Arc<HashMap<&str, (&[u8], bool)>> =
            Arc::new(script.iter().map(|&(path, answer, close)| (path, (answer, close))).collect());
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (accepted, now_open, seen) = (connections.clone(), open.clone(), heads.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                accepted.fetch_add(1, Relaxed);
                now_open.fetch_add(1, Relaxed);
                let (script, seen, now_open) = (script.clone(), seen.clone(), now_open.clone());
                tokio::spawn(async move {
                    serve(stream, script, seen).await;
                    now_open.fetch_sub(1, Relaxed);
                });
            }
        });
        Scripted { addr, connections, open, heads, task }
    }

    fn backend(&self) -> Backend {
        Backend { id: "host-a/scripted".into(), addr: self.addr, weight: 1, revision: "r1".into() }
    }

    fn last_head(&self) -> String {
        self.heads.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

const LATER: &[u8] = b"\0LATER\0";

async fn serve(
    mut stream: TcpStream,
    script: Arc<HashMap<&'static str, (&'static [u8], bool)>>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        seen.lock().unwrap().push(head);
        let Some(&(answer, close)) = script.get(path.as_str()) else { return };
        // `\0LATER\0` splits an answer: what follows goes 100 ms after the rest.
        let (now, later) = match answer.windows(LATER.len()).position(|w| w == LATER) {
            Some(at) => (&answer[..at], &answer[at + LATER.len()..]),
            None => (answer, &b""[..]),
        };
        if stream.write_all(now).await.is_err() {
            return;
        }
        if !later.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(later).await.is_err() {
                return;
            }
        }
        if close {
            return;
        }
    }
}

/// Answers framed each way an instance may frame them: (path, answer, close after it).
const FRAMED: [(&str, &[u8], bool); 3] = [
    ("/length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\nhello", false),
    (
        "/chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x-hop\r\nX-Hop: no\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
        false,
    ),
    ("/empty", b"HTTP/1.1 204 No Content\r\nX-Kept: yes\r\n\r\n", false),
];

/// What a client gets for each of [`FRAMED`], over either protocol.
fn assert_framed(path: &str, answer: &Answer) {
    let expected = match path {
        "/length" => (StatusCode::OK, "hello"),
        "/chunked" => (StatusCode::OK, "hello world"),
        _ => (StatusCode::NO_CONTENT, ""),
    };
    assert_eq!((answer.status, answer.body.as_str()), expected, "{path}");
    assert!(!answer.headers.contains_key("x-hop"), "{path}: a header the instance's Connection names stays behind");
    assert!(!answer.headers.contains_key("connection"), "{path}");
    if path != "/chunked" {
        assert_eq!(answer.headers["x-kept"], "yes", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_reaches_a_strict_client_whole_on_one_pooled_connection() {
    let mut script = FRAMED.to_vec();
    script.extend([
        (
            "/early",
            &b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
            false,
        ),
        ("/head", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
    ]);
    let instance = Scripted::start(&script).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![instance.backend()]);
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..2 {
        for (path, _, _) in FRAMED {
            assert_framed(path, &client.get(path, &[]).await);
        }
        let answer = client.get("/early", &[]).await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "ok"), "a 1xx before the answer is skipped");
    }
    // HEAD: the length of what a GET would get, no body, and the connection goes on.
    client.0.ready().await.unwrap();
    let head = Request::head("/head").header("host", "service.test").body(Full::<Bytes>::default()).unwrap();
    let answer = crate::support::collect(client.0.send_request(head).await.unwrap()).await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(answer.headers["content-length"], "5");
    assert_eq!(client.get("/length", &[]).await.body, "hello");
    assert_eq!(instance.connections.load(Relaxed), 1, "one pooled connection served every request");
    let head = instance.last_head();
    assert!(head.starts_with("GET /length HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n") && head.contains("x-forwarded-proto: http\r\n"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_until_close_closes_the_client_connection_after_it() {
    let instance = Scripted::start(&[("/", b"HTTP/1.1 200 OK\r\nX-Kept: yes\r\n\r\nall of it", true)]).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![instance.backend()]);
    let answer = raw(fx.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n") && answer.ends_with("\r\n\r\nall of it"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_framing_is_a_502_and_the_connection_is_never_reused() {
    let instance = Scripted::start(&[
        ("/bad-chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", false),
        ("/spaced-chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 6\r\nhello\r\n0\r\n\r\n", false),
        ("/two-lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk", false),
        ("/not-http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", false),
        ("/gzip-framed", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", false),
        ("/no-coding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\n\r\nxx", false),
        ("/past-its-end", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", false),
        (
            "/head-leak",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\0LATER\0HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
            false,
        ),
        ("/fine", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    ])
    .await;
    let config = Config {
        outlier: tug_router::OutlierPolicy { consecutive_failures: 0, ..Default::default() },
        ..Default::default()
    };
    let fx = Fixture::start(Protocol::Http, config, vec![instance.backend()]);
    let get = |path: &str, method: &str| format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    for path in ["/bad-chunk", "/spaced-chunk", "/two-lengths", "/not-http", "/gzip-framed", "/no-coding"] {
        let answer = raw(fx.addr(), get(path, "GET").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 502 "), "{path}: {answer}");
        assert!(!answer.contains("hello") && !answer.contains("xx"), "{path}: {answer}");
        // The router let go of the broken connection: only a good one stays pooled.
        eventually(async || instance.open.load(Relaxed) == 0).await;
        let answer = raw(fx.addr(), get("/fine", "GET").as_bytes()).await;
        assert!(answer.ends_with("\r\n\r\nok"), "{path}: {answer}");
        assert_eq!(instance.open.load(Relaxed), 1, "{path}: the good one is pooled");
    }
    assert_eq!(fx.stats("host-a/scripted", "r1").failures, 6);
    // An answer followed by more than it framed: delivered whole, and its connection let go.
    let answer = raw(fx.addr(), get("/past-its-end", "GET").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n\r\nok"), "{answer}");
    eventually(async || instance.open.load(Relaxed) == 0).await;
    // A HEAD answer whose instance sends a body after all (here, a whole forged response)
    // must not become the next request's answer.
    let answer = raw(fx.addr(), get("/head-leak", "HEAD").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n\r\n"), "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let answer = raw(fx.addr(), get("/fine", "GET").as_bytes()).await;
        assert!(answer.ends_with("\r\n\r\nok") && !answer.contains("EVIL"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_instance_closed_is_not_a_failure() {
    // The instance closes each connection after its answer, without saying so.
    let instance = Scripted::start(&[("/", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true)]).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![instance.backend()]);
    let mut client = H1::connect(fx.addr()).await;
    for _ in 0..5 {
        assert_eq!(client.get("/", &[]).await.body, "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = fx.stats("host-a/scripted", "r1");
    assert_eq!((stats.failures, stats.retries), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_plain_path_does_not_take_go_on_with_hyper_in_order() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    // Pipelined in one write: a plain GET, a POST with a body (hyper's from there on), a GET.
    let answer = raw(
        fx.addr(),
        b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
    let first = answer.find("x-forwarded-for: 10.0.0.9, 127.0.0.1").expect("the earlier proxy kept, the client added");
    let echoed = answer.find("\r\n\r\nhello").expect("the POST's body came back");
    assert!(first < echoed, "{answer}");
    assert_eq!(web[0].requests(), 3);
    // A request the plain path cannot take at all still gets hyper's strict answer.
    let answer = raw(fx.addr(), b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_gets_go_the_plain_way_and_get_each_framing_whole() {
    let mut script = FRAMED.to_vec();
    script.extend([
        ("/bad-chunk", &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX"[..], false),
        ("/until-close", b"HTTP/1.1 200 OK\r\n\r\nall of it", true),
    ]);
    let instance = Scripted::start(&script).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), vec![instance.backend()]);
    let mut client = H2::connect(fx.addr()).await;
    for _ in 0..2 {
        for (path, _, _) in FRAMED {
            assert_framed(path, &client.get(path, &[]).await);
        }
    }
    assert_eq!(instance.connections.load(Relaxed), 1, "one pooled connection served every request");
    let head = instance.last_head();
    assert!(head.starts_with("GET /empty HTTP/1.1\r\n") && head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    let answer = client.get("/until-close", &[]).await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "all of it"));
    // A body broken mid-way resets the stream; the client connection and the router go on.
    client.0.ready().await.unwrap();
    let broken = client.0.send_request(client.request("/bad-chunk").body(Full::default()).unwrap()).await;
    // The reset may overtake the response head.
    if let Ok(response) = broken {
        assert!(http_body_util::BodyExt::collect(response.into_body()).await.is_err());
    }
    assert_eq!(client.get("/length", &[]).await.body, "hello");
    assert_eq!(fx.stats("host-a/scripted", "r1").failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_names_one_host() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let mut client = H2::connect(fx.addr()).await;
    let authority = fx.addr().to_string();
    let ask = |hosts: &[&str]| {
        let mut req = client.request("/headers");
        for host in hosts {
            req = req.header("host", *host);
        }
        req.body(Full::default()).unwrap()
    };
    let (other, two, bad, same) =
        (ask(&["evil.example"]), ask(&[&authority, &authority]), ask(&["a b"]), ask(&[&authority]));
    for (req, what) in [(other, "another host"), (two, "two Hosts"), (bad, "not a host")] {
        assert_eq!(client.send(req).await.status, StatusCode::BAD_REQUEST, "{what}");
    }
    let answer = client.send(same).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains(&format!("host: {authority}")), "{}", answer.body);
    assert_eq!(web[0].requests(), 1, "only the request naming one host reached the instance");
}

/// A read that emptied the socket clears its readiness (`h1::read_available`): what arrives
/// after is a new event, so a request in pieces, a pause between requests and a request that
/// lands together with the previous answer's departure are all read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_pieces_and_after_pauses_are_all_read() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let mut stream = TcpStream::connect(fx.addr()).await.unwrap();
    let mut answers = 0;
    let mut got = Vec::new();
    let read_answers = async |stream: &mut TcpStream, got: &mut Vec<u8>, want: usize| {
        let mut chunk = [0u8; 4096];
        while String::from_utf8_lossy(got).matches("HTTP/1.1 200 OK\r\n").count() < want {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "closed after {}", String::from_utf8_lossy(got));
            got.extend_from_slice(&chunk[..n]);
        }
    };
    for round in 0..3 {
        // One request in three pieces, each after a pause.
        for piece in [&b"GET /headers HT"[..], b"TP/1.1\r\nHost: x\r\nX-Round: ", b"r\r\n\r\n"] {
            stream.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        answers += 1;
        read_answers(&mut stream, &mut got, answers).await;
        // Then one at once, while nothing is in flight.
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        answers += 1;
        read_answers(&mut stream, &mut got, answers).await;
        // And two back to back, the second sent as soon as the first's answer begins.
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.unwrap();
        got.push(first[0]);
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        answers += 2;
        read_answers(&mut stream, &mut got, answers).await;
        assert_eq!(web[0].requests(), answers, "round {round}");
    }
}
