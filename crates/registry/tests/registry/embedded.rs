//! The embedded registry: the same semantics as Redis, in memory.

use std::time::{Duration, Instant};

use crate::common::{WAIT, entry, fast, ids, wait_for};
use tug_registry::{AnyRegistry, Config, EmbeddedRegistry, Registry, RegistryError, Status};

#[tokio::test]
async fn register_snapshot_deregister_round_trip() {
    let reg = EmbeddedRegistry::new("shop", Config::default());
    let mut rx = reg.watch();
    let (a, b) = (entry("web", "h1/web-1", 8001), entry("api", "h1/api-1", 9001));
    reg.register(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(reg.snapshot().await.unwrap(), vec![b.clone(), a.clone()]);
    let m = wait_for(&mut rx, WAIT, |m| m.entries.len() == 2).await;
    assert_eq!(m.status, Status::Live);
    let mut a2 = a.clone();
    a2.ready = false;
    reg.register(std::slice::from_ref(&a2)).await.unwrap();
    let m = wait_for(&mut rx, WAIT, |m| m.service("web").next() == Some(&a2)).await;
    assert_eq!(m.ready("web").count(), 0);
    reg.deregister(&["h1/web-1".into()]).await.unwrap();
    wait_for(&mut rx, WAIT, |m| ids(m) == ["h1/api-1"]).await;
    assert!(reg.register(&[entry("web", "", 1)]).await.is_err());
}

#[tokio::test]
async fn entries_expire_when_heartbeats_stop() {
    let reg = EmbeddedRegistry::new("p", fast());
    let mut rx = reg.watch();
    let e = entry("web", "h1/web-1", 8001);
    for _ in 0..8 {
        reg.register(std::slice::from_ref(&e)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reg.snapshot().await.unwrap(), vec![e.clone()]);
    // No snapshot is asked for: the sweeper alone announces the expiry, on time.
    let stopped = Instant::now();
    wait_for(&mut rx, WAIT, |m| m.entries.is_empty()).await;
    let after = stopped.elapsed();
    assert!(after >= Duration::from_millis(150) && after < Duration::from_millis(600), "left after {after:?}");
}

#[tokio::test]
async fn any_registry_defaults_to_embedded_and_opens_redis_urls() {
    let reg = AnyRegistry::open(None, "p", fast()).unwrap();
    assert!(matches!(reg, AnyRegistry::Embedded(_)));
    assert_eq!(reg.project(), "p");
    reg.register(&[entry("web", "h1/web-1", 8001)]).await.unwrap();
    assert_eq!(reg.snapshot().await.unwrap().len(), 1);
    assert!(matches!(AnyRegistry::open(Some("redis://h:6380"), "p", fast()).unwrap(), AnyRegistry::Redis(_)));
    assert!(matches!(AnyRegistry::open(Some("rediss://:pw@h:6380"), "p", fast()).unwrap(), AnyRegistry::Redis(_)));
    // A TLS file that cannot be read fails the opening, naming the parameter and the path only.
    let err = AnyRegistry::open(Some("rediss://:hunter2@h:6380?ca=/nonexistent/ca.pem"), "p", fast()).err().unwrap();
    assert!(matches!(err, RegistryError::Url(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("cannot read ca=/nonexistent/ca.pem") && !text.contains("hunter2"), "{text}");
}
