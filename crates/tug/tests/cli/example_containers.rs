//! `examples/containers`, run as its README runs it, on the machine's Docker Engine: its
//! `prepare.sh` builds the base images (under tags of this test's own), `tug up` builds `web`
//! from `./web`, Redis runs hardened with its password as a secret file and keeps its data on a
//! named volume across `down`/`up`, an edited `web/Dockerfile` is rolled out as a canary under
//! load, a bad one is rolled back by itself, and `down --volumes` leaves no container and no
//! volume. The images it made are removed when it ends, failed or not.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Stack, demo_bin, free_port};
use crate::images::{Tags, docker, image_id, stack_containers, stack_volumes};
use crate::repo_dir;
use crate::rollout::{Load, deploy, history, set, status, versions, wait_versions, web_rows};
use crate::routing::{field_of, http_once};

/// Replaces `from` with `to` in the stack's file `name`, which must contain it.
fn edit(stack: &Stack, name: &str, from: &str, to: &str) {
    let path = stack.path().join(name);
    let text = std::fs::read_to_string(&path).expect("read file");
    assert!(text.contains(from), "{name} has no `{from}`:\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write file");
}

/// Rewrites web/Dockerfile's `ENV VERSION=…` line (whatever the example's copy says) as `line`.
fn set_version(stack: &Stack, line: &str) {
    let path = stack.path().join("web/Dockerfile");
    let text = std::fs::read_to_string(&path).expect("read web/Dockerfile");
    assert!(text.lines().any(|l| l.starts_with("ENV VERSION=")), "web/Dockerfile sets no VERSION:\n{text}");
    let lines: Vec<&str> = text.lines().map(|l| if l.starts_with("ENV VERSION=") { line } else { l }).collect();
    std::fs::write(&path, lines.join("\n") + "\n").expect("write web/Dockerfile");
}

/// What Redis answers on 127.0.0.1:port to an inline `PING`.
fn redis_ping(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to :{port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).expect("Redis answers");
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

/// The counts the `starts` job wrote to its log, one per run.
fn counts(stack: &Stack) -> Vec<String> {
    let log = stack.log("starts", "starts-1");
    log.lines().filter_map(|l| l.split_once("counted in Redis: ")).map(|(_, n)| n.trim().to_string()).collect()
}

fn ready_web(stack: &Stack) -> usize {
    web_rows(stack).iter().filter(|r| r["state"] == "healthy").count()
}

#[test]
fn example_containers_builds_serves_keeps_its_volume_and_deploys_a_canary() {
    let started = Instant::now();
    let pid = std::process::id();
    let (project, demo_tag, redis_tag) = (
        format!("tug-test-ex-{pid}"),
        format!("tug-test-ex-demo-{pid}:local"),
        format!("tug-test-ex-redis-{pid}:local"),
    );
    let web_image = format!("{project}-web");
    // Dropped in reverse order: the stack's containers first, then the web builds, then the bases.
    let _bases = Tags(vec![redis_tag.clone(), demo_tag.clone()]);
    let mut builds = Tags(vec![web_image.clone()]);

    // The example, under this test's own names: project (so volume and built image), base tags;
    // and canary steps of 1 s rather than 3 s (under more load, for the analysis's 20 requests).
    let example = repo_dir().join("examples/containers");
    let yaml = std::fs::read_to_string(example.join("tug.yaml")).expect("read the example");
    for needed in ["\nname: containers\n", "tug-example-redis:local", "step_duration: 3s"] {
        assert!(yaml.contains(needed), "the example has no `{needed}`:\n{yaml}");
    }
    let yaml = yaml
        .replace("\nname: containers\n", &format!("\nname: {project}\n"))
        .replace("tug-example-redis:local", &redis_tag)
        .replace("step_duration: 3s", "step_duration: 1s");
    let mut stack = Stack::new("example-containers", &yaml);
    // The example's folder, but its `tug.yaml` (which `Stack::new` wrote) and any state.
    crate::copy_dir(&example, stack.path(), &[".tug", "tug.yaml"]);
    edit(&stack, "web/Dockerfile", "FROM tug-example-demo:local", &format!("FROM {demo_tag}"));
    set_version(&stack, "ENV VERSION=1");
    let (web_port, cache_port) = (free_port(), free_port());
    stack.env.push(("WEB_PORT".into(), web_port.to_string()));
    stack.env.push(("CACHE_PORT".into(), cache_port.to_string()));

    // ./prepare.sh, with the demo the tests built.
    let prepared = Command::new(stack.path().join("prepare.sh"))
        .current_dir(stack.path())
        .env("TUG_DEMO", demo_bin())
        .env("DEMO_IMAGE", &demo_tag)
        .env("REDIS_IMAGE", &redis_tag)
        .output()
        .expect("run prepare.sh");
    let said = format!("{}{}", String::from_utf8_lossy(&prepared.stdout), String::from_utf8_lossy(&prepared.stderr));
    assert!(prepared.status.success(), "prepare.sh failed (scripts/test installs busybox-static and redis):\n{said}");
    assert!(said.contains(&format!("{redis_tag}: sha256:")), "{said}");
    let prepare_took = started.elapsed();

    let check = stack.tug(&["check"]);
    assert_eq!(check.code, 0, "tug check:\n{}", check.all());
    assert!(!check.all().contains("warning["), "tug check:\n{}", check.all());

    // `tug up -d`: the web image is built, everything comes up healthy.
    let up = stack.up();
    assert!(up.stderr.contains(&format!("building {web_image}")), "{}", up.all());
    builds.0.push(image_id(&web_image));
    assert_eq!(ready_web(&stack), 3, "{:#?}", stack.ps());
    // web answers through the router, every replica in turn, from the image's VERSION.
    let (status_code, body) = http_once("127.0.0.1", web_port, "GET", "/").expect("an answer");
    assert_eq!((status_code, field_of(&body, "message").as_str()), (200, "Hello from a container"), "{body}");
    assert_eq!(versions(web_port, 30), set(&["1"]));
    let instances: std::collections::BTreeSet<String> = (0..30)
        .filter_map(|_| http_once("127.0.0.1", web_port, "GET", "/"))
        .map(|(_, b)| field_of(&b, "instance"))
        .collect();
    assert_eq!(instances.len(), 3, "{instances:?}");
    // The cache: the job counted in it through CACHE_ADDR; it wants its password.
    assert_eq!(counts(&stack), ["1"], "{}", stack.log("starts", "starts-1"));
    assert!(redis_ping(cache_port).starts_with("-NOAUTH"), "{}", redis_ping(cache_port));
    // Hardened as the file says, the password on no command line, the data on the volume.
    let containers = stack_containers(&stack.state_dir());
    assert_eq!(containers.len(), 4, "cache and 3 web: {containers:?}");
    let volume = format!("{project}_cache-data");
    assert_eq!(stack_volumes(&stack.state_dir()), std::slice::from_ref(&volume));
    let of = |service: &str| {
        let label = format!("label=tug.state_dir={}", stack.state_dir().display());
        let ids = docker(&["ps", "-q", "--filter", &label, "--filter", &format!("label=tug.service={service}")]);
        ids.lines().next().unwrap_or_else(|| panic!("no container of {service}")).to_string()
    };
    let hardening =
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}}";
    let (cache, web) = (of("cache"), of("web"));
    assert_eq!(docker(&["inspect", "-f", hardening, &cache]), "999:999 true [ALL] [no-new-privileges:true]");
    assert_eq!(docker(&["inspect", "-f", hardening, &web]), "65534:65534 true [ALL] [no-new-privileges:true]");
    let password = docker(&["exec", &cache, "cat", "/run/secrets/CACHE_PASSWORD"]);
    assert_eq!(password.len(), 40, "the generated secret, as a file");
    let top = docker(&["top", &cache]);
    assert!(top.contains("redis-server *:6379") && !top.contains(&password), "{top}");

    // `down` keeps the volume; the next `up` finds the count there.
    let down = stack.tug(&["down"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(stack_containers(&stack.state_dir()).is_empty(), "down leaves no container");
    assert_eq!(stack_volumes(&stack.state_dir()), std::slice::from_ref(&volume), "down keeps the volume");
    stack.up();
    assert_eq!(counts(&stack), ["1", "2"], "{}", stack.log("starts", "starts-1"));

    // An edited Dockerfile: a new image, rolled out as a canary under load, no request failing.
    set_version(&stack, "ENV VERSION=2");
    let load = Load::start(web_port, 4, 40);
    let at = Instant::now();
    let run = deploy(&stack);
    let canary_took = at.elapsed();
    let report = load.stop();
    assert_eq!(run.code, 0, "{}", run.all());
    report.assert_clean("a canary of the rebuilt web", 100);
    wait_versions(web_port, &["2"]);
    builds.0.push(image_id(&web_image));
    let s = status(&stack);
    assert_eq!((s["strategy"].as_str(), s["phase"].as_str()), (Some("canary"), Some("complete")), "{s:#}");

    // A bad build (30% of requests fail): the canary's analysis sends everything back to v2.
    set_version(&stack, "ENV VERSION=3 DEMO_FAIL_RATE=30%");
    let load = Load::start(web_port, 4, 40);
    let at = Instant::now();
    let run = deploy(&stack);
    let rollback_took = at.elapsed();
    load.stop();
    builds.0.push(image_id(&web_image));
    assert_eq!(run.code, 1, "a rolled back deploy fails:\n{}", run.all());
    assert!(run.stderr.contains("rolled back") && run.stderr.contains("error rate"), "{}", run.all());
    wait_versions(web_port, &["2"]);
    let h = history(&stack);
    let outcomes: Vec<&str> = h.iter().filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["rolled_back", "complete", "complete"], "{h:#?}");

    // `down --volumes`: nothing of the stack is left on the engine.
    let down = stack.tug(&["down", "--volumes"]);
    assert_eq!(down.code, 0, "{}", down.all());
    assert!(down.stdout.contains(&format!("removed volume {volume}")), "{}", down.all());
    assert!(stack_containers(&stack.state_dir()).is_empty(), "no container left");
    assert!(stack_volumes(&stack.state_dir()).is_empty(), "no volume left");
    eprintln!(
        "example_containers: {:.1}s (prepare.sh {:.1}s, canary deploy {:.1}s, rolled back deploy {:.1}s)",
        started.elapsed().as_secs_f64(),
        prepare_took.as_secs_f64(),
        canary_took.as_secs_f64(),
        rollback_took.as_secs_f64()
    );
}
