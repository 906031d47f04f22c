//! The Redis registry against a real `redis-server`.

use std::time::{Duration, Instant};

use crate::common::{RedisServer, WAIT, entry, fast, ids, survives_a_restart, wait_for};
use tug_registry::resp::Value;
use tug_registry::{Config, RedisRegistry, Registry, RegistryError, Status};

fn open(server: &RedisServer, project: &str, config: Config) -> RedisRegistry {
    RedisRegistry::new(server.url().parse().unwrap(), project, config)
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Bulk(b) => String::from_utf8_lossy(b).parse::<f64>().unwrap() as i64,
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

#[tokio::test]
async fn register_snapshot_deregister_round_trip() {
    let server = RedisServer::start(None);
    let reg = open(&server, "shop", Config::default());
    let (a, b) = (entry("web", "h1/web-1", 8001), entry("api", "h1/api-1", 9001));
    reg.register(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(reg.snapshot().await.unwrap(), vec![b.clone(), a.clone()]);
    let mut rx = reg.watch();
    let m = wait_for(&mut rx, WAIT, |m| m.entries.len() == 2).await;
    assert_eq!(m.status, Status::Live);
    assert_eq!(m.ready("web").collect::<Vec<_>>(), vec![&a]);

    // An update replaces the entry.
    let mut a2 = a.clone();
    a2.ready = false;
    a2.revision = "r2".into();
    reg.register(std::slice::from_ref(&a2)).await.unwrap();
    wait_for(&mut rx, WAIT, |m| m.service("web").next() == Some(&a2)).await;

    reg.deregister(&["h1/web-1".into()]).await.unwrap();
    assert_eq!(reg.snapshot().await.unwrap(), vec![b.clone()]);
    wait_for(&mut rx, WAIT, |m| ids(m) == ["h1/api-1"]).await;
    // The layout: a sorted set of expiries and a hash of JSON, under the project's prefix.
    assert_eq!(server.raw(&["ZCARD", "tug:shop:live"]).await, Value::Int(1));
    assert_eq!(server.raw(&["HLEN", "tug:shop:entries"]).await, Value::Int(1));
}

#[tokio::test]
async fn entries_expire_by_the_servers_clock_when_heartbeats_stop() {
    let server = RedisServer::start(None);
    let reg = open(&server, "p", fast());
    let mut rx = reg.watch();
    let e = entry("web", "h1/web-1", 8001);

    // Heartbeats keep the entry alive well past its TTL.
    for _ in 0..8 {
        reg.register(std::slice::from_ref(&e)).await.unwrap();
        // The expiry stored is the server's TIME plus the TTL: the client sends only the TTL (300),
        // never a timestamp, so the score can only come from the server's clock.
        let score = int(&server.raw(&["ZSCORE", "tug:p:live", "h1/web-1"]).await);
        let Value::Array(time) = server.raw(&["TIME"]).await else { panic!() };
        let server_now = int(&time[0]) * 1000 + int(&time[1]) / 1000;
        assert!(score > server_now && score <= server_now + 300, "score {score}, server now {server_now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reg.snapshot().await.unwrap(), vec![e.clone()]);
    wait_for(&mut rx, WAIT, |m| m.entries.len() == 1).await;

    // Heartbeats stop: the entry is gone from snapshots after the TTL, and the watch follows.
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(reg.snapshot().await.unwrap(), vec![]);
    wait_for(&mut rx, WAIT, |m| m.entries.is_empty()).await;
    assert!(stopped.elapsed() < Duration::from_secs(1), "left after {:?}", stopped.elapsed());
    // And the expired entry was removed from both keys, not only hidden.
    assert_eq!(server.raw(&["HLEN", "tug:p:entries"]).await, Value::Int(0));
}

#[tokio::test]
async fn two_hosts_see_each_other_and_changes_arrive_by_pub_sub() {
    let server = RedisServer::start(None);
    // A resync period far longer than the test: only pub/sub can deliver changes quickly.
    let config = Config { resync: Duration::from_secs(60), ..Config::default() };
    let h1 = open(&server, "p", config);
    let h2 = open(&server, "p", config);
    let (mut rx1, mut rx2) = (h1.watch(), h2.watch());
    // Both watchers have subscribed once their first sync is done.
    wait_for(&mut rx1, WAIT, |m| m.status == Status::Live).await;
    wait_for(&mut rx2, WAIT, |m| m.status == Status::Live).await;

    let started = Instant::now();
    h1.register(&[entry("web", "h1/web-1", 8001)]).await.unwrap();
    wait_for(&mut rx2, WAIT, |m| ids(m) == ["h1/web-1"]).await;
    let latency = started.elapsed();
    assert!(latency < Duration::from_millis(500), "change took {latency:?}");

    h2.register(&[entry("web", "h2/web-1", 8001)]).await.unwrap();
    let both = ["h1/web-1", "h2/web-1"];
    wait_for(&mut rx1, WAIT, |m| ids(m) == both).await;
    wait_for(&mut rx2, WAIT, |m| ids(m) == both).await;

    h2.deregister(&["h2/web-1".into()]).await.unwrap();
    wait_for(&mut rx1, WAIT, |m| ids(m) == ["h1/web-1"]).await;
    eprintln!("pub/sub change reached the other host in {latency:?}");
}

#[tokio::test]
async fn a_dead_hosts_entries_leave_the_other_watchers() {
    let server = RedisServer::start(None);
    let survivor = open(&server, "p", Config { resync: Duration::from_secs(60), ..fast() });
    let mut rx = survivor.watch();
    {
        let dead = open(&server, "p", fast());
        dead.register(&[entry("web", "h2/web-1", 8001)]).await.unwrap();
        wait_for(&mut rx, WAIT, |m| m.entries.len() == 1).await;
        // Dropped without deregistering, like a SIGKILLed daemon.
    }
    let gone = Instant::now();
    wait_for(&mut rx, WAIT, |m| m.entries.is_empty()).await;
    // Within the TTL (300 ms): the watcher resyncs when the earliest entry is due to expire, whatever
    // its resync period (a generous bound for loaded test machines).
    assert!(gone.elapsed() < Duration::from_millis(600), "left after {:?}", gone.elapsed());
}

#[tokio::test]
async fn watchers_keep_the_last_membership_while_redis_is_down_and_resync_after_restart() {
    let mut server = RedisServer::start(None);
    let config = Config { ttl: Duration::from_secs(3), ..fast() };
    let h1 = open(&server, "p", config);
    let h2 = open(&server, "p", config);
    let mut rx = h2.watch();
    let e = entry("web", "h1/web-1", 8001);
    h1.register(std::slice::from_ref(&e)).await.unwrap();
    wait_for(&mut rx, WAIT, |m| m.entries.len() == 1 && m.status == Status::Live).await;

    // Down, then a fresh, empty server on the same port: the heartbeat re-registers, the
    // watcher reconnects.
    survives_a_restart(&mut server, &h1, &mut rx, &e, config.heartbeat).await;
}

#[tokio::test]
async fn projects_do_not_see_each_other() {
    let server = RedisServer::start(None);
    let shop = open(&server, "shop", fast());
    let blog = open(&server, "blog", fast());
    shop.register(&[entry("web", "h1/web-1", 8001)]).await.unwrap();
    blog.register(&[entry("web", "h1/web-1", 9001), entry("db", "h1/db-1", 9002)]).await.unwrap();
    let mut rx = shop.watch();
    wait_for(&mut rx, WAIT, |m| m.entries.len() == 1).await;
    assert_eq!(shop.snapshot().await.unwrap()[0].address.port(), 8001);
    assert_eq!(blog.snapshot().await.unwrap().len(), 2);
    // Deregistering in one project leaves the same instance id in the other.
    blog.deregister(&["h1/web-1".into()]).await.unwrap();
    assert_eq!(shop.snapshot().await.unwrap().len(), 1);
    assert_eq!(server.raw(&["HLEN", "tug:shop:entries"]).await, Value::Int(1));
    assert_eq!(server.raw(&["HLEN", "tug:blog:entries"]).await, Value::Int(1));

    // The URL's database number is selected: entries in database 3 are not in database 0.
    let db3 = RedisRegistry::new(server.url().replace("/0", "/3").parse().unwrap(), "other", fast());
    db3.register(&[entry("web", "h1/web-1", 7001)]).await.unwrap();
    assert_eq!(db3.snapshot().await.unwrap().len(), 1);
    assert_eq!(server.raw(&["EXISTS", "tug:other:entries"]).await, Value::Int(0));
}

#[tokio::test]
async fn password_auth_and_a_clear_error_without_the_password() {
    let server = RedisServer::start(Some("correct-horse-42"));
    let good = open(&server, "p", fast());
    good.ping().await.unwrap();
    good.register(&[entry("web", "h1/web-1", 8001)]).await.unwrap();
    assert_eq!(good.snapshot().await.unwrap().len(), 1);

    let url = format!("redis://:wrong-battery-99@127.0.0.1:{}/0", server.port);
    let bad = RedisRegistry::new(url.parse().unwrap(), "p", fast());
    let err = bad.register(&[entry("web", "h1/web-2", 8002)]).await.unwrap_err();
    assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{}", server.port)) && text.contains("WRONGPASS"), "{text}");
    assert!(!text.contains("wrong-battery-99") && !format!("{err:?}").contains("wrong-battery-99"));
    assert!(!format!("{:?} {}", bad.url(), bad.url()).contains("wrong-battery-99"));
    // The watcher reports the same, without the password either.
    let mut rx = bad.watch();
    let m = wait_for(&mut rx, WAIT, |m| matches!(m.status, Status::Stale(_))).await;
    let Status::Stale(why) = &m.status else { unreachable!() };
    assert!(why.contains("WRONGPASS") && !why.contains("wrong-battery-99"), "{why}");

    // No password at all against a server that wants one.
    let none = RedisRegistry::new(format!("redis://127.0.0.1:{}", server.port).parse().unwrap(), "p", fast());
    let err = none.ping().await.unwrap_err();
    assert!(matches!(err, RegistryError::Auth { .. }) && err.to_string().contains("NOAUTH"), "{err}");
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error_and_a_stale_watch() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let reg = RedisRegistry::new(format!("redis://127.0.0.1:{port}").parse().unwrap(), "p", fast());
    let err = reg.snapshot().await.unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    let mut rx = reg.watch();
    let m = wait_for(&mut rx, WAIT, |m| matches!(m.status, Status::Stale(_))).await;
    assert!(m.entries.is_empty());
}
