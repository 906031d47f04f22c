//! Auto mode: each new connection is served as HTTP when it opens with an HTTP/1 request line
//! or the HTTP/2 preface, and as TCP otherwise: a PostgreSQL or Redis client (binary or RESP
//! first bytes), or a client that waits for the server to speak first (SMTP, MySQL). A client
//! silent for [`SERVER_FIRST_WAIT`] is not taken at its word: an instance is connected, and
//! whoever speaks first decides. The instance (a greeting): TCP. The client: its bytes are
//! looked at again, so an HTTP client cannot skip the router's HTTP handling (its
//! `X-Forwarded-For`, its strict edge) just by waiting. Nobody within `header_read_timeout`:
//! closed, as an idle HTTP connection is. Nothing is consumed: the chosen mode reads the
//! connection from its first byte.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::config::Place;
use crate::http::{self, H2_PREFACE, Servers};
use crate::lifecycle::Live;
use crate::table::Shared;
use crate::tcp;

/// How long a silent client is waited for before an instance is asked whether it speaks
/// first. HTTP clients send their request with the connection.
pub const SERVER_FIRST_WAIT: Duration = Duration::from_millis(200);

/// Connections in a row whose instance spoke first, after which a silent client is not waited
/// for: an instance is connected at once and whoever speaks first still decides, so nothing
/// changes but the wait (a port of MySQL or SMTP clients stops paying it on every connection;
/// on an HTTP port clients speak first and the wait stays, sparing instance connections).
const LEARNED: u32 = 3;

/// Bytes looked at: a request line longer than this that is still HTTP-shaped is HTTP.
const LOOK: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Http,
    Tcp,
    /// HTTP-shaped so far: more bytes decide.
    Unsure,
}

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let servers = Servers::new(&shared.config);
    crate::lifecycle::accept(listener, &shared, |stream, peer, live, place| {
        one(stream, peer.ip(), shared.clone(), servers.clone(), live, place)
    })
    .await;
}

async fn one(
    mut stream: TcpStream,
    ip: std::net::IpAddr,
    shared: Arc<Shared>,
    servers: Arc<Servers>,
    live: Live,
    place: Place,
) {
    let _ = stream.set_nodelay(true);
    let streak = &shared.server_first_streak;
    let wait = if streak.load(Relaxed) >= LEARNED { Duration::ZERO } else { SERVER_FIRST_WAIT };
    match sniff(&stream, wait).await {
        Sniffed::Http => {
            streak.store(0, Relaxed);
            return http::connection(stream, ip, shared, servers, live, place).await;
        }
        Sniffed::Tcp => {
            streak.store(0, Relaxed);
            return tcp::forward(shared, stream, live, place).await;
        }
        Sniffed::Gone => return,
        Sniffed::Silent => {}
    }
    // Silent: whoever speaks first, the client or an instance, decides.
    let Some((in_flight, mut upstream)) = tcp::connect(&shared).await else { return };
    let client_first = tokio::select! {
        ready = stream.readable() => ready.is_ok(),
        _ = upstream.readable() => false,
        () = tokio::time::sleep(shared.config.header_read_timeout) => return,
    };
    if client_first {
        streak.store(0, Relaxed);
        match sniff(&stream, shared.config.header_read_timeout).await {
            Sniffed::Http => {
                drop((in_flight, upstream));
                return http::connection(stream, ip, shared, servers, live, place).await;
            }
            Sniffed::Gone | Sniffed::Silent => return,
            Sniffed::Tcp => {}
        }
    } else {
        let _ = streak.fetch_update(Relaxed, Relaxed, |n| n.checked_add(1));
    }
    tcp::copy(&mut stream, &mut upstream).await;
    drop(in_flight);
}

/// What a connection's first bytes say.
enum Sniffed {
    Http,
    Tcp,
    /// Nothing, or an HTTP-shaped beginning that never completed, within the wait.
    Silent,
    /// The client left.
    Gone,
}

async fn sniff(stream: &TcpStream, wait: Duration) -> Sniffed {
    let mut buf = [0u8; LOOK];
    let look = async {
        loop {
            let Ok(n) = stream.peek(&mut buf).await else { return Sniffed::Gone };
            if n == 0 {
                return Sniffed::Gone;
            }
            match classify(&buf[..n]) {
                Seen::Http => return Sniffed::Http,
                Seen::Tcp => return Sniffed::Tcp,
                Seen::Unsure if n == LOOK => return Sniffed::Http,
                // Peeking again at once would return the same bytes: wait for more.
                Seen::Unsure => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    };
    tokio::time::timeout(wait, look).await.unwrap_or(Sniffed::Silent)
}

/// Whether `bytes`, a connection's first, are HTTP: the HTTP/2 preface, or an HTTP/1 request
/// line (`METHOD SP target SP HTTP/1.x`), as far as they go.
fn classify(bytes: &[u8]) -> Seen {
    let preface = bytes.len().min(H2_PREFACE.len());
    if bytes[..preface] == H2_PREFACE[..preface] {
        return if bytes.len() >= H2_PREFACE.len() { Seen::Http } else { Seen::Unsure };
    }
    // METHOD: uppercase letters (every common method; `M-SEARCH` and the like are served as
    // TCP, passed through whole), then one space.
    let method = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    let Some(&after) = bytes.get(method) else { return if method <= 20 { Seen::Unsure } else { Seen::Tcp } };
    if method == 0 || method > 20 || after != b' ' {
        return Seen::Tcp;
    }
    // The target: visible characters, then one space.
    let rest = &bytes[method + 1..];
    let target = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    let Some(&after) = rest.get(target) else { return Seen::Unsure };
    if target == 0 || after != b' ' {
        return Seen::Tcp;
    }
    let version = &rest[target + 1..];
    const V: &[u8] = b"HTTP/1.";
    let shared = version.len().min(V.len());
    if version[..shared] != V[..shared] {
        return Seen::Tcp;
    }
    match version.get(V.len()) {
        None => Seen::Unsure,
        Some(b'0' | b'1') => Seen::Http,
        Some(_) => Seen::Tcp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_request_lines_and_the_h2_preface_are_http() {
        for http in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /api/v1/orders?x=1 HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(classify(http), Seen::Http, "{}", String::from_utf8_lossy(http));
        }
    }

    #[test]
    fn other_protocols_are_tcp() {
        // PostgreSQL's startup message (length, then version 3.0), Redis RESP and inline
        // commands, TLS's ClientHello, a MySQL-like binary packet, SSH's banner.
        for tcp in [
            &b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..],
            b"\x00\x00\x00\x54\x00\x03\x00\x00user\x00app\x00",
            b"*1\r\n$4\r\nPING\r\n",
            b"PING\r\n",
            b"GET key\r\n",
            b"SET key value\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"get / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
        ] {
            assert_eq!(classify(tcp), Seen::Tcp, "{}", String::from_utf8_lossy(tcp));
        }
    }

    #[test]
    fn a_prefix_of_either_waits_for_more() {
        for partial in [&b"G"[..], b"GET", b"GET /", b"GET /x HTTP/", b"PRI * HTTP/2.0\r\n"] {
            assert_eq!(classify(partial), Seen::Unsure, "{}", String::from_utf8_lossy(partial));
        }
    }
}
