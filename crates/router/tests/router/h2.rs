//! The router's own HTTP/2 server, frame by frame: what RFC 9113 makes a connection error
//! gets GOAWAY with its code, a malformed request gets RST_STREAM and the connection goes on,
//! and flow control, CONTINUATION, padding, cookies and the header-list limit work as the RFC
//! says. Raw frames where a client library would not send them; hyper's client where one would.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tug_router::{Config, Protocol};

use crate::support::{Fixture, H1, H2, backends, collect, eventually, members};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const FRAME_SIZE_ERROR: u32 = 0x6;
const COMPRESSION_ERROR: u32 = 0x9;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> =
        pairs.iter().flat_map(|(id, v)| [id.to_be_bytes().to_vec(), v.to_be_bytes().to_vec()].concat()).collect();
    frame(SETTINGS, 0, 0, &payload)
}

/// A header block of literals without indexing (new names, no Huffman): every decoder's
/// simplest case, so the test says exactly which fields it sends.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        assert!(name.len() < 127 && value.len() < 127);
        out.extend_from_slice(&[0, name.len() as u8]);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":authority", "service.test".into()),
        (":path", path.into()),
    ]
}

fn fields_of(list: &[(&str, String)]) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = list.iter().map(|(n, v)| (*n, v.as_str())).collect();
    block(&pairs)
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A client that speaks HTTP/2 one frame at a time.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Preface and SETTINGS sent; nothing read yet.
    async fn connect(addr: SocketAddr) -> Raw {
        let mut raw = Raw::preface(addr).await;
        raw.send(&settings(&[])).await;
        raw
    }

    async fn preface(addr: SocketAddr) -> Raw {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        Raw { stream, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The router may have closed already (that is what some tests wait for).
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame, or `None` once the router closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16 | (self.buf[1] as usize) << 8 | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]),
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 << 10];
            let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await;
            match read.expect("the router said nothing for 5 s") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until a frame `wanted` accepts, answering nothing on the way.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Frame {
        while let Some(frame) = self.next().await {
            if wanted(&frame) {
                return frame;
            }
        }
        panic!("the connection closed before {what}");
    }

    /// The GOAWAY's error code, and that the connection then closes.
    async fn goaway(&mut self) -> u32 {
        let frame = self.until("a GOAWAY", |f| f.kind == GOAWAY).await;
        let code = u32::from_be_bytes(frame.payload[4..8].try_into().unwrap());
        while self.next().await.is_some() {}
        code
    }

    async fn reset_of(&mut self, stream: u32) -> u32 {
        let frame = self.until("a RST_STREAM", |f| f.kind == RST_STREAM && f.stream == stream).await;
        u32::from_be_bytes(frame.payload[..4].try_into().unwrap())
    }

    /// Asks `GET /` on `stream` and checks the answer is 200: the connection still serves.
    async fn serves(&mut self, stream: u32) {
        self.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &fields_of(&get("/")))).await;
        assert_eq!(self.answer_of(stream).await[0], STATUS_200, "GET / on stream {stream}");
    }

    /// The header block of the answer on `stream`.
    async fn answer_of(&mut self, stream: u32) -> Vec<u8> {
        self.until("an answer", |f| f.kind == HEADERS && f.stream == stream).await.payload
    }
}

/// The router's encoding of `:status: 200` (static table entry 8).
const STATUS_200: u8 = 0x88;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_pings_are_answered_and_the_limits_announced() {
    let web = backends(1).await;
    let config = Config { max_concurrent_streams: 33, max_header_list_size: 5000, ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut raw = Raw::connect(fx.addr()).await;
    let theirs = raw.until("the router's SETTINGS", |f| f.kind == SETTINGS && f.flags == 0).await;
    let announced: Vec<(u16, u32)> = theirs
        .payload
        .chunks(6)
        .map(|s| (u16::from_be_bytes([s[0], s[1]]), u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
        .collect();
    assert!(announced.contains(&(0x3, 33)), "{announced:?}");
    assert!(announced.contains(&(0x6, 5000)), "{announced:?}");
    raw.until("the ACK of the client's SETTINGS", |f| f.kind == SETTINGS && f.flags == 1).await;
    raw.send(&frame(PING, 0, 0, b"12345678")).await;
    let pong = raw.until("a PING ACK", |f| f.kind == PING).await;
    assert_eq!((pong.flags, pong.payload.as_slice()), (1, &b"12345678"[..]));
    raw.serves(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_get_goaway_with_their_code() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("DATA on stream 0", frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
        ("DATA on a stream never opened", frame(DATA, 0, 5, b"x"), PROTOCOL_ERROR),
        (
            "HEADERS on an even stream",
            frame(HEADERS, END_HEADERS | END_STREAM, 2, &fields_of(&get("/"))),
            PROTOCOL_ERROR,
        ),
        ("PUSH_PROMISE from a client", frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]), PROTOCOL_ERROR),
        ("CONTINUATION with nothing to continue", frame(CONTINUATION, END_HEADERS, 1, &[0x82]), PROTOCOL_ERROR),
        (
            "a header block interrupted by a PING",
            [frame(HEADERS, 0, 1, &[0x82]), frame(PING, 0, 0, &[0; 8])].concat(),
            PROTOCOL_ERROR,
        ),
        ("a frame over 16 KiB", frame(0x20, 0, 0, &[0u8; 16385]), FRAME_SIZE_ERROR),
        ("WINDOW_UPDATE of 0 on the connection", frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()), PROTOCOL_ERROR),
        (
            "a connection window past 2^31-1",
            frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            FLOW_CONTROL_ERROR,
        ),
        ("RST_STREAM on a stream never opened", frame(RST_STREAM, 0, 7, &[0, 0, 0, 8]), PROTOCOL_ERROR),
        ("SETTINGS_ENABLE_PUSH of 2", settings(&[(0x2, 2)]), PROTOCOL_ERROR),
        ("SETTINGS_INITIAL_WINDOW_SIZE of 2^31", settings(&[(0x4, 1 << 31)]), FLOW_CONTROL_ERROR),
        ("SETTINGS_MAX_FRAME_SIZE of 100", settings(&[(0x5, 100)]), PROTOCOL_ERROR),
        ("SETTINGS of 5 bytes", frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0]), FRAME_SIZE_ERROR),
        ("PING of 7 bytes", frame(PING, 0, 0, &[0; 7]), FRAME_SIZE_ERROR),
        ("a header block HPACK cannot decode", frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x80]), COMPRESSION_ERROR),
        (
            "HEADERS going back to a lower stream id",
            [
                frame(HEADERS, END_HEADERS | END_STREAM, 3, &fields_of(&get("/"))),
                frame(HEADERS, END_HEADERS | END_STREAM, 1, &fields_of(&get("/"))),
            ]
            .concat(),
            PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut raw = Raw::connect(fx.addr()).await;
        raw.send(&bytes).await;
        assert_eq!(raw.goaway().await, code, "{what}");
    }
    // A first frame that is not SETTINGS.
    let mut raw = Raw::preface(fx.addr()).await;
    raw.send(&frame(PING, 0, 0, &[0; 8])).await;
    assert_eq!(raw.goaway().await, PROTOCOL_ERROR, "a PING before SETTINGS");
    let mut h2 = H2::connect(fx.addr()).await;
    assert_eq!(h2.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_reset_and_never_reach_the_instance() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let with = |extra: &[(&'static str, &str)]| {
        let mut list = get("/");
        list.extend(extra.iter().map(|(n, v)| (*n, v.to_string())));
        fields_of(&list)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an upper-case name", with(&[("X-Upper", "1")])),
        ("a connection header", with(&[("connection", "close")])),
        ("transfer-encoding", with(&[("transfer-encoding", "chunked")])),
        ("te other than trailers", with(&[("te", "gzip")])),
        ("an unknown pseudo-header", with(&[(":protocol", "websocket")])),
        ("a repeated pseudo-header", with(&[(":path", "/again")])),
        ("a value with a line feed", with(&[("x-a", "1\nx-b: 2")])),
        ("content-length on a request without a body", with(&[("content-length", "5")])),
        ("no :path", block(&[(":method", "GET"), (":scheme", "http"), (":authority", "service.test")])),
        ("a relative :path", block(&[(":method", "GET"), (":scheme", "http"), (":path", "x")])),
        (
            "a pseudo-header after a field",
            block(&[(":method", "GET"), ("x-a", "1"), (":scheme", "http"), (":path", "/")]),
        ),
    ];
    let mut raw = Raw::connect(fx.addr()).await;
    let mut id = 1;
    for (what, fields) in &cases {
        raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, id, fields)).await;
        assert_eq!(raw.reset_of(id).await, PROTOCOL_ERROR, "{what}");
        id += 2;
    }
    // A body shorter than its content-length.
    let post = block(&[(":method", "POST"), (":scheme", "http"), (":path", "/echo"), ("content-length", "5")]);
    raw.send(&[frame(HEADERS, END_HEADERS, id, &post), frame(DATA, END_STREAM, id, b"abc")].concat()).await;
    assert_eq!(raw.reset_of(id).await, PROTOCOL_ERROR, "a body shorter than content-length");
    // A stream window pushed past 2^31-1.
    let slow = fields_of(&get("/slow?ms=300"));
    let overflow = frame(WINDOW_UPDATE, 0, id + 2, &0x7fff_ffffu32.to_be_bytes());
    raw.send(&[frame(HEADERS, END_HEADERS | END_STREAM, id + 2, &slow), overflow].concat()).await;
    assert_eq!(raw.reset_of(id + 2).await, FLOW_CONTROL_ERROR, "a stream window past 2^31-1");
    let id = id + 2;
    // The connection still serves, and the instance saw only that one request.
    raw.serves(id + 2).await;
    assert!(web[0].requests() <= 3, "{} requests reached the instance", web[0].requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_bomb_is_refused_and_a_table_size_change_acknowledged() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let mut raw = Raw::connect(fx.addr()).await;
    // One 100-byte entry in the client's HPACK table (literal with incremental indexing), then
    // the one-byte reference to it 16,000 times: 2 MB of fields from a 16 KB frame.
    let mut bomb = fields_of(&get("/"));
    bomb.extend_from_slice(&[0x40, 5]);
    bomb.extend_from_slice(b"x-big");
    bomb.push(100);
    bomb.extend_from_slice(&[b'b'; 100]);
    bomb.extend(std::iter::repeat_n(0xbe, 16_000));
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &bomb)).await;
    let answer = raw.answer_of(1).await;
    assert!(answer.windows(3).any(|w| w == b"431"), "{answer:?}");
    // The client sets its decoder's table size: the router's next header block starts with a
    // size update (RFC 7541 §4.2), then the status.
    raw.send(&settings(&[(0x1, 0)])).await;
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &fields_of(&get("/")))).await;
    assert_eq!(&raw.answer_of(3).await[..2], &[0x20, STATUS_200]);
    raw.serves(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_frames_padding_and_priority_are_read() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let mut raw = Raw::connect(fx.addr()).await;
    let fields = fields_of(&get("/headers"));
    let (a, rest) = fields.split_at(10);
    let (b, c) = rest.split_at(10);
    // HEADERS, padded and with a priority, then two CONTINUATIONs; a PRIORITY frame on an idle
    // stream and an unknown frame type are ignored.
    let mut padded = vec![4];
    padded.extend_from_slice(&[0, 0, 0, 0, 16]);
    padded.extend_from_slice(a);
    padded.extend_from_slice(&[0; 4]);
    raw.send(&frame(PRIORITY, 0, 9, &[0, 0, 0, 0, 16])).await;
    raw.send(&frame(0x42, 0, 0, b"unknown")).await;
    raw.send(&frame(HEADERS, PADDED | 0x20 | END_STREAM, 1, &padded)).await;
    raw.send(&frame(CONTINUATION, 0, 1, b)).await;
    raw.send(&frame(CONTINUATION, END_HEADERS, 1, c)).await;
    assert_eq!(raw.answer_of(1).await[0], STATUS_200);
    // DATA with padding, on a POST.
    let post = block(&[(":method", "POST"), (":scheme", "http"), (":path", "/echo"), ("content-length", "5")]);
    let mut data = vec![3];
    data.extend_from_slice(b"hello");
    data.extend_from_slice(&[0; 3]);
    raw.send(&[frame(HEADERS, END_HEADERS, 3, &post), frame(DATA, PADDED | END_STREAM, 3, &data)].concat()).await;
    assert_eq!(raw.answer_of(3).await[0], STATUS_200);
    let body = raw.until("the echo", |f| f.kind == DATA && f.stream == 3 && !f.payload.is_empty()).await;
    assert_eq!(body.payload, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_list_over_the_limit_gets_431_and_a_slow_block_a_goaway() {
    let web = backends(1).await;
    let config =
        Config { max_header_list_size: 1024, header_read_timeout: Duration::from_millis(300), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut raw = Raw::connect(fx.addr()).await;
    let mut fields = get("/");
    for i in 0..20 {
        fields.push(("x-filler", format!("{i:0>100}")));
    }
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &fields_of(&fields))).await;
    let answer = raw.answer_of(1).await;
    assert!(answer.windows(3).any(|w| w == b"431"), "{answer:?}");
    raw.serves(3).await;
    // A header block that never ends: the connection goes after header_read_timeout.
    raw.send(&frame(HEADERS, END_STREAM, 5, &fields_of(&get("/"))[..4])).await;
    let started = std::time::Instant::now();
    assert_eq!(raw.goaway().await, PROTOCOL_ERROR);
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    // And one that never sends its SETTINGS.
    let mut silent = Raw::preface(fx.addr()).await;
    assert_eq!(silent.goaway().await, PROTOCOL_ERROR);
    assert_eq!(H1::connect(fx.addr()).await.get("/", &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_every_window_go_both_ways() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    // A client with small windows: the router may send 16 KiB on the stream before the client
    // gives more; the 1.5 MiB it uploads is over the router's own windows too.
    let io = TokioIo::new(TcpStream::connect(fx.addr()).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 << 10)
        .initial_connection_window_size(65_535)
        .adaptive_window(false)
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let upload: Vec<u8> = (0..3 << 19).map(|i: u32| b'a' + (i % 26) as u8).collect();
    let request = hyper::Request::post(format!("http://{}/echo", fx.addr()))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::from(upload.clone())))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), async {
        send.ready().await.unwrap();
        collect(send.send_request(request).await.unwrap()).await
    })
    .await
    .expect("the echo within 20 s");
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.as_bytes() == upload.as_slice(), "{} bytes back of {}", answer.body.len(), upload.len());
    // Two cookie fields reach the HTTP/1.1 instance as one header (RFC 9113 §8.2.3).
    let mut h2 = H2::connect(fx.addr()).await;
    let request = h2.request("/headers").header("cookie", "a=1").header("cookie", "b=2").body(Full::default()).unwrap();
    let seen = h2.send(request).await.body;
    let cookies: Vec<&str> = seen.lines().filter(|l| l.starts_with("cookie:")).collect();
    assert_eq!(cookies, ["cookie: a=1; b=2"], "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_upload_ends_the_request_at_the_instance() {
    let web = backends(1).await;
    let fx = Fixture::start(Protocol::Http, Config::default(), members(&web));
    let mut raw = Raw::connect(fx.addr()).await;
    let post = block(&[(":method", "POST"), (":scheme", "http"), (":path", "/echo")]);
    raw.send(&[frame(HEADERS, END_HEADERS, 1, &post), frame(DATA, 0, 1, b"partial")].concat()).await;
    eventually(async || web[0].requests() == 1).await;
    assert_eq!(web[0].open.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The client's socket goes away: the router's upload to the instance must end too, not
    // wait for the rest of a body that will never come.
    drop(raw);
    eventually(async || web[0].open.load(std::sync::atomic::Ordering::Relaxed) == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_goaway_after_the_idle_timeout_and_a_busy_one_does_not() {
    let web = backends(1).await;
    let config = Config { header_read_timeout: Duration::from_millis(300), ..Config::default() };
    let fx = Fixture::start(Protocol::Http, config, members(&web));
    let mut raw = Raw::connect(fx.addr()).await;
    // A stream open longer than the idle timeout keeps the connection.
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &fields_of(&get("/slow?ms=600")))).await;
    assert_eq!(raw.answer_of(1).await[0], STATUS_200);
    raw.until("the answer's end", |f| f.stream == 1 && f.flags & END_STREAM != 0).await;
    // Then nothing for 300 ms: GOAWAY (no error, the last stream served), and the close.
    let started = std::time::Instant::now();
    let goaway = raw.until("a GOAWAY", |f| f.kind == GOAWAY).await;
    assert_eq!(u32::from_be_bytes(goaway.payload[..4].try_into().unwrap()), 1);
    assert_eq!(u32::from_be_bytes(goaway.payload[4..8].try_into().unwrap()), 0);
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    assert!(raw.next().await.is_none(), "the connection closes after the GOAWAY");
}
