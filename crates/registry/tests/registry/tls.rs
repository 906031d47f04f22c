//! The Redis registry over TLS (`rediss://`), against a real `redis-server` that serves only TLS,
//! with certificates made at test time.

use std::time::{Duration, Instant};

use crate::common::{Pki, RedisServer, TlsServer, WAIT, entry, fast, ids, survives_a_restart, wait_for};
use tug_registry::{AnyRegistry, Config, RedisRegistry, Registry, RegistryError, Status};

fn open(url: &str, config: Config) -> RedisRegistry {
    RedisRegistry::new(url.parse().unwrap(), "p", config)
}

/// The TLS error's message, or a panic naming what came instead.
fn tls_message(err: RegistryError) -> String {
    match err {
        RegistryError::Tls { message, .. } => message,
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

/// The stale status a watcher settles on.
async fn stale_reason(reg: &RedisRegistry) -> String {
    let mut rx = reg.watch();
    let m = wait_for(&mut rx, WAIT, |m| matches!(m.status, Status::Stale(_))).await;
    let Status::Stale(why) = &m.status else { unreachable!() };
    why.clone()
}

#[tokio::test]
async fn rediss_with_a_private_ca_auth_select_and_pub_sub() {
    let server = RedisServer::start_tls(Some("tls-secret-77"), TlsServer::GOOD);
    let url = server.url().replace("/0?", "/2?");
    // A resync period far longer than the test: only pub/sub over TLS can deliver changes quickly.
    let config = Config { resync: Duration::from_secs(60), ..Config::default() };
    let h1 = open(&url, config);
    // By name too: the certificate is for `localhost` and `127.0.0.1`.
    let h2 = match AnyRegistry::open(Some(&url.replace("127.0.0.1", "localhost")), "p", config).unwrap() {
        AnyRegistry::Redis(r) => r,
        AnyRegistry::Embedded(_) => panic!("rediss:// opened the embedded registry"),
    };
    assert!(h1.url().is_tls() && !h1.url().is_insecure());
    assert!(!h1.url().to_string().contains("tls-secret-77"));
    let (mut rx1, mut rx2) = (h1.watch(), h2.watch());
    wait_for(&mut rx1, WAIT, |m| m.status == Status::Live).await;
    wait_for(&mut rx2, WAIT, |m| m.status == Status::Live).await;

    let started = Instant::now();
    let (a, b) = (entry("web", "h1/web-1", 8001), entry("api", "h1/api-1", 9001));
    h1.register(&[a.clone(), b.clone()]).await.unwrap();
    wait_for(&mut rx2, WAIT, |m| ids(m) == ["h1/api-1", "h1/web-1"]).await;
    let latency = started.elapsed();
    assert!(latency < Duration::from_millis(500), "change took {latency:?}");
    assert_eq!(h2.snapshot().await.unwrap(), vec![b.clone(), a.clone()]);
    h2.deregister(&["h1/web-1".into()]).await.unwrap();
    wait_for(&mut rx1, WAIT, |m| ids(m) == ["h1/api-1"]).await;

    // The database in the URL was selected: database 0 holds nothing.
    let db0 = open(&server.url().replace("/2?", "/0?"), fast());
    assert_eq!(db0.snapshot().await.unwrap(), vec![]);

    // A wrong password over TLS is the same clear error as in plain text, without the password.
    let bad = open(&url.replace("tls-secret-77", "wrong-battery-99"), fast());
    let err = bad.ping().await.unwrap_err();
    assert!(matches!(err, RegistryError::Auth { .. }) && err.to_string().contains("WRONGPASS"), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong-battery-99"));
    eprintln!("pub/sub change over TLS reached the other host in {latency:?}");
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate_and_a_clear_error_without() {
    let pki = Pki::get();
    let server = RedisServer::start_tls(Some("mtls-pw-31"), TlsServer { client_certs: true, ..TlsServer::GOOD });
    let with = |cert: &str, key: &str| format!("{}&cert={}&key={}", server.url(), pki.path(cert), pki.path(key));

    let good = open(&with("client.pem", "client.key"), fast());
    good.register(&[entry("web", "h1/web-1", 8001)]).await.unwrap();
    assert_eq!(good.snapshot().await.unwrap().len(), 1);
    let mut rx = good.watch();
    wait_for(&mut rx, WAIT, |m| m.status == Status::Live && m.entries.len() == 1).await;

    // No client certificate: the server refuses, and the error says what to pass.
    let none = open(&server.url(), fast());
    let text = tls_message(none.register(&[entry("web", "h1/web-2", 8002)]).await.unwrap_err());
    assert!(text.contains("certificate problem") && text.contains("client certificate"), "{text}");
    assert!(text.contains("cert= and key="), "{text}");
    let why = stale_reason(&none).await;
    assert!(why.contains("TLS: certificate problem") && !why.contains("mtls-pw-31"), "{why}");

    // A client certificate from a CA the server does not trust.
    let stranger = open(&with("other-server.pem", "other-server.key"), fast());
    let text = tls_message(stranger.ping().await.unwrap_err());
    assert!(text.contains("certificate problem") && text.contains("refused the client certificate"), "{text}");

    // TLS 1.2 (managed Redis may offer nothing newer): the same, but a missing client certificate
    // fails the handshake itself, with a less specific alert.
    let tls12 = RedisServer::start_tls(None, TlsServer { client_certs: true, tls12_only: true, ..TlsServer::GOOD });
    let with12 = format!("{}&cert={}&key={}", tls12.url(), pki.path("client.pem"), pki.path("client.key"));
    let good12 = open(&with12, fast());
    good12.register(&[entry("web", "h1/web-1", 8001)]).await.unwrap();
    assert_eq!(good12.snapshot().await.unwrap().len(), 1);
    let text = tls_message(open(&tls12.url(), fast()).ping().await.unwrap_err());
    assert!(text.contains("client certificate") && text.contains("cert= and key="), "{text}");

    // A key that is not the certificate's is refused when the URL is parsed.
    let err = with("client.pem", "server.key").parse::<tug_registry::RedisUrl>().unwrap_err().to_string();
    assert!(err.contains("do not make a client certificate") && !err.contains("mtls-pw-31"), "{err}");
}

#[tokio::test]
async fn untrusted_or_misnamed_server_certificates_are_certificate_problems() {
    let pki = Pki::get();
    let stranger = RedisServer::start_tls(
        Some("pw-5150"),
        TlsServer { cert: "other-server.pem", key: "other-server.key", ..TlsServer::GOOD },
    );

    // Signed by another CA than ca= names.
    let reg = open(&stranger.url(), fast());
    let text = tls_message(reg.snapshot().await.unwrap_err());
    assert!(text.starts_with("certificate problem: the server's certificate is not signed by"), "{text}");
    assert!(text.contains(&format!("ca={}", pki.path("ca.pem"))) && text.contains("UnknownIssuer"), "{text}");
    let why = stale_reason(&reg).await;
    assert!(why.contains("certificate problem") && !why.contains("pw-5150"), "{why}");

    // Without ca=, the system's CAs do not know the test CA either.
    let system = open(&format!("rediss://:pw-5150@127.0.0.1:{}", stranger.port), fast());
    let text = tls_message(system.ping().await.unwrap_err());
    assert!(
        text.contains("certificate problem") && text.contains("a CA the system trusts") && text.contains("pass ca="),
        "{text}"
    );
    assert!(!text.contains("pw-5150"));

    // insecure=true connects anyway (and says so).
    let insecure = open(&format!("rediss://:pw-5150@127.0.0.1:{}/0?insecure=true", stranger.port), fast());
    assert!(insecure.url().is_insecure() && insecure.url().to_string().ends_with("?insecure=true"));
    insecure.register(&[entry("web", "h1/web-1", 8001)]).await.unwrap();
    assert_eq!(insecure.snapshot().await.unwrap().len(), 1);

    // Signed by the trusted CA, but for another name.
    let misnamed =
        RedisServer::start_tls(None, TlsServer { cert: "elsewhere.pem", key: "elsewhere.key", ..TlsServer::GOOD });
    let text = tls_message(open(&misnamed.url(), fast()).ping().await.unwrap_err());
    assert!(text.contains("certificate problem") && text.contains("not for this host"), "{text}");
    assert!(text.contains("elsewhere.test"), "{text}");
}

#[tokio::test]
async fn tls_and_plain_ports_mixed_up_are_clear_errors() {
    let plain = RedisServer::start(None);
    let url = format!("rediss://127.0.0.1:{}?ca={}", plain.port, Pki::get().path("ca.pem"));
    // A plain server waits for the end of what it takes for a command: the handshake times out.
    let quick = Config { timeout: Duration::from_millis(300), ..fast() };
    let text = tls_message(open(&url, quick).ping().await.unwrap_err());
    assert!(text.contains("no answer to the handshake") && text.contains("--tls-port"), "{text}");

    let tls = RedisServer::start_tls(None, TlsServer::GOOD);
    let err = open(&format!("redis://127.0.0.1:{}", tls.port), quick).ping().await.unwrap_err();
    assert!(err.to_string().contains("rediss://"), "{err:?}");
}

#[tokio::test]
async fn watchers_reconnect_after_the_tls_server_restarts() {
    let mut server = RedisServer::start_tls(None, TlsServer::GOOD);
    let config = Config { ttl: Duration::from_secs(3), ..fast() };
    let h1 = open(&server.url(), config);
    let h2 = open(&server.url(), config);
    let mut rx = h2.watch();
    let e = entry("web", "h1/web-1", 8001);
    h1.register(std::slice::from_ref(&e)).await.unwrap();
    wait_for(&mut rx, WAIT, |m| m.entries.len() == 1 && m.status == Status::Live).await;

    // A fresh, empty TLS server on the same port: new TLS sessions, the same recovery.
    survives_a_restart(&mut server, &h1, &mut rx, &e, config.heartbeat).await;
}
