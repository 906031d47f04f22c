//! `tug-engine` against the real engine (`DOCKER_HOST`, else the usual sockets).
//!
//! The engine needs no images and no registry: the tests build their own from the host's static
//! busybox (Debian's `busybox-static`). Everything a test makes is named and labelled
//! `tug-engine-test-<pid>-<n>`, and its [`Fixture`] removes it on drop, even when the test fails.
//! With no engine the tests fail; `TUG_SKIP_ENGINE_TESTS=1` skips them with a message.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tug_engine::{
    BuildRequest, ContainerConfig, Endpoint, Engine, Error, ExecConfig, Mount, MountKind, Network, Origin, Publish,
    remove_labelled_containers_blocking, resolve_endpoint,
};

/// The label every test object carries; its value is the test's prefix.
const LABEL: &str = "tug-engine-test";
const BUSYBOX: &str = "/bin/busybox";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Builds and image removals take turns, so removing one test's image never prunes a cached
/// layer another test's build is using.
static IMAGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's engine, prefix, scratch directory, and what it must remove.
struct Fixture {
    engine: Engine,
    prefix: String,
    dir: PathBuf,
    /// Image tags built, removed in reverse order.
    images: Mutex<Vec<String>>,
}

/// What a container run to its end gave.
#[derive(Debug)]
struct Ran {
    id: String,
    stdout: String,
    stderr: String,
    code: i64,
}

impl Fixture {
    /// `None` when the tests are to be skipped; panics (fails the test) when there is no engine.
    fn new() -> Option<Fixture> {
        if std::env::var("TUG_SKIP_ENGINE_TESTS").as_deref() == Ok("1") {
            eprintln!("skipped: TUG_SKIP_ENGINE_TESTS=1");
            return None;
        }
        let env = |name| std::env::var(name).ok();
        let endpoint = resolve_endpoint(None, env("DOCKER_HOST").as_deref(), env("XDG_RUNTIME_DIR").as_deref())
            .unwrap_or_else(|e| {
                panic!("the engine tests need a container engine: {e} (TUG_SKIP_ENGINE_TESTS=1 skips them)")
            });
        let prefix = format!("{LABEL}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Some(Fixture { engine: Engine::new(endpoint), prefix, dir, images: Mutex::default() })
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    fn labels(&self) -> Vec<(String, String)> {
        vec![(LABEL.to_string(), self.prefix.clone())]
    }

    /// A container config for `image` with this test's label.
    fn config(&self, image: &str, cmd: &[&str]) -> ContainerConfig {
        ContainerConfig {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            labels: self.labels(),
            ..ContainerConfig::new(image)
        }
    }

    /// A build context directory holding busybox and `files`.
    fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: apt-get install -y busybox-static");
        std::fs::copy(BUSYBOX, dir.join("busybox")).unwrap();
        for (path, content) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    /// Builds, with the tag recorded first so it is removed even if the build half-succeeds.
    async fn build(&self, request: &BuildRequest, lines: &mut Vec<String>) -> Result<String, Error> {
        self.images.lock().unwrap().push(request.tag.clone());
        let _turn = IMAGES.lock().await;
        self.engine.build(request, &mut |line: &str| lines.push(line.to_string())).await
    }

    /// A busybox image (`FROM scratch`, busybox and its links in /bin, a /tmp), tagged for this test.
    /// Every test's is the same image from the build cache, under its own tag.
    async fn base(&self) -> String {
        let context = self.context(
            "base",
            &[(
                "Dockerfile",
                "FROM scratch\nCOPY busybox /bin/busybox\n\
                 RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && mkdir -m 1777 /tmp\"]\n",
            )],
        );
        let tag = format!("{}-base:latest", self.prefix);
        let mut lines = Vec::new();
        self.build(&BuildRequest::new(context, &tag), &mut lines)
            .await
            .unwrap_or_else(|e| panic!("building the busybox image: {e}\n{}", lines.join("\n")));
        tag
    }

    /// Creates, attaches, starts and waits for a container.
    async fn run(&self, suffix: &str, config: &ContainerConfig) -> Ran {
        let id = self.engine.create_container(&self.name(suffix), config).await.unwrap();
        let mut output = self.engine.attach(&id).await.unwrap();
        self.engine.start(&id).await.unwrap();
        let (stdout, stderr) = output.collect().await.unwrap();
        let code = self.engine.wait(&id).await.unwrap();
        Ran { id, stdout: utf8(stdout), stderr: utf8(stderr), code }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let endpoint = self.engine.endpoint().clone();
        let prefix = self.prefix.clone();
        let images = std::mem::take(&mut *self.images.lock().unwrap_or_else(|p| p.into_inner()));
        // Its own thread and runtime: a drop cannot await, and may run inside a test's runtime.
        let cleanup = std::thread::spawn(move || {
            if let Err(e) = remove_labelled_containers_blocking(&endpoint, (LABEL, &prefix), Duration::from_secs(20)) {
                eprintln!("cleanup of {prefix}'s containers: {e}");
            }
            let _turn = IMAGES.blocking_lock();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async {
                let engine = Engine::new(endpoint);
                match engine.list_volumes(&[(LABEL, &prefix)]).await {
                    Ok(volumes) => {
                        for volume in volumes {
                            if let Err(e) = engine.remove_volume(&volume).await {
                                eprintln!("cleanup of volume {volume}: {e}");
                            }
                        }
                    }
                    Err(e) => eprintln!("cleanup of {prefix}'s volumes: {e}"),
                }
                for image in images.iter().rev() {
                    if let Err(e) = engine.remove_image(image, false).await {
                        eprintln!("cleanup of image {image}: {e}");
                    }
                }
            });
        });
        let _ = cleanup.join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("UTF-8 output")
}

/// Runs a test body with a time limit, so a hang fails the test instead of the whole run.
async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, body).await.unwrap_or_else(|_| panic!("the test took over {limit:?}"))
}

const LIMIT: Duration = Duration::from_secs(40);

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GETs `/` on `127.0.0.1:port` until the answer contains `expected` (up to 15 s).
async fn http_get_until(port: u16, expected: &str) -> String {
    let expected = expected.to_string();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while Instant::now() < deadline {
            let attempt = (|| -> std::io::Result<String> {
                let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer)
            })();
            match attempt {
                Ok(answer) if answer.contains(&expected) => return answer,
                Ok(answer) => last = answer,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nothing served {expected:?} on port {port}; last: {last}");
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn version_names_the_engine() {
    let Some(f) = Fixture::new() else { return };
    let version = within(LIMIT, f.engine.version()).await.unwrap();
    assert!(["Docker Engine", "Podman Engine"].contains(&version.product.as_str()), "{version:?}");
    assert!(!version.version.is_empty(), "{version:?}");
    let (major, minor) = version.api_version.split_once('.').expect("an API version like 1.41");
    let api: (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
    assert!(api >= (1, 41), "{version:?}");
}

#[tokio::test]
async fn an_unreachable_socket_is_named_with_what_to_do() {
    let endpoint = Endpoint { socket: PathBuf::from("/nonexistent/docker.sock"), origin: Origin::DockerHost };
    let error = Engine::new(endpoint).version().await.unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("/nonexistent/docker.sock") && message.contains("set by DOCKER_HOST"), "{message}");
    assert!(message.contains("is the Docker daemon") && message.contains("`engine:`"), "{message}");
}

#[tokio::test]
async fn builds_with_args_labels_and_dockerignore() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        let dockerfile = format!(
            "FROM {base}\nARG GREETING=unset\nCOPY . /ctx/\nRUN echo \"greeting=$GREETING\" > /greeting\n\
             EXPOSE 8080\nUSER 1234\nWORKDIR /ctx\nCMD [\"cat\", \"/greeting\"]\n"
        );
        let context = f.context(
            "args",
            &[
                ("docker/Dockerfile.test", &dockerfile),
                (".dockerignore", "# not for the image\nignored.txt\nlogs\n!logs/keep.log\nbusybox\ndocker\n"),
                ("kept.txt", "k"),
                ("ignored.txt", "i"),
                ("logs/a.log", "a"),
                ("logs/keep.log", "k"),
            ],
        );
        let tag = format!("{}-args:1", f.prefix);
        let request = BuildRequest {
            dockerfile: Some("docker/Dockerfile.test".to_string()),
            args: vec![("GREETING".to_string(), "hello there".to_string())],
            labels: vec![("tug.test".to_string(), "yes".to_string())],
            ..BuildRequest::new(&context, &tag)
        };
        let mut lines = Vec::new();
        let id = f.build(&request, &mut lines).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(id.starts_with("sha256:"), "{id}");
        assert!(lines.iter().any(|l| l.starts_with("Step 1/")), "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains('\n')), "{lines:?}");

        let image = f.engine.inspect_image(&tag).await.unwrap().expect("the built image");
        assert_eq!(image.id, id);
        assert!(image.repo_tags.contains(&tag), "{image:?}");
        assert_eq!(image.exposed_ports, ["8080/tcp"]);
        assert_eq!(image.user, "1234");
        assert_eq!(image.working_dir, "/ctx");
        assert_eq!(image.cmd, Some(vec!["cat".to_string(), "/greeting".to_string()]));
        assert_eq!(image.entrypoint, None);
        assert_eq!(f.engine.inspect_image(&id).await.unwrap().map(|i| i.id), Some(id.clone()));
        let absent = format!("{}-absent:nope", f.prefix);
        assert_eq!(f.engine.inspect_image(&absent).await.unwrap(), None);

        let config = f.config(&id, &["sh", "-c", "cat /greeting; ls -A /ctx /ctx/logs"]);
        let ran = f.run("args", &config).await;
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.stdout.starts_with("greeting=hello there\n"), "{ran:?}");
        for present in ["kept.txt", "keep.log", ".dockerignore"] {
            assert!(ran.stdout.contains(present), "{present} should be in the image: {ran:?}");
        }
        // The Dockerfile is sent though `docker` is ignored (the builder needs it); the engine
        // then drops it from what `COPY .` sees, as .dockerignore lists it.
        for absent in ["ignored.txt", "a.log", "busybox", "Dockerfile.test"] {
            assert!(!ran.stdout.contains(absent), "{absent} should not be in the image: {ran:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_failing_build_reports_the_engine_message_and_the_output_tail() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        let context = f.context(
            "fail",
            &[("Dockerfile", &format!("FROM {base}\nRUN echo oops-output && echo to-stderr >&2 && exit 3\n"))],
        );
        let tag = format!("{}-fail:latest", f.prefix);
        let mut lines = Vec::new();
        let error = f.build(&BuildRequest::new(&context, &tag), &mut lines).await.unwrap_err();
        let Error::Build { image, message, output_tail } = &error else { panic!("{error:?}") };
        assert_eq!(image, &tag);
        assert!(message.contains("returned a non-zero code: 3"), "{message}");
        assert!(output_tail.iter().any(|l| l == "oops-output"), "{output_tail:?}");
        assert!(output_tail.len() <= 20);
        assert!(lines.iter().any(|l| l == "oops-output"), "{lines:?}");
        assert!(lines.iter().any(|l| l == "to-stderr"), "{lines:?}");
        let shown = error.to_string();
        assert!(shown.starts_with(&format!("building {tag} failed: ")) && shown.contains("\n  oops-output"), "{shown}");
        assert_eq!(f.engine.inspect_image(&tag).await.unwrap(), None);

        // A context without its Dockerfile is refused before anything is sent.
        let empty = f.context("empty", &[]);
        let error = f.engine.build(&BuildRequest::new(&empty, &tag), &mut |_: &str| {}).await.unwrap_err();
        assert!(matches!(&error, Error::Context { message, .. } if message.contains("no Dockerfile")), "{error:?}");
        // A Dockerfile the builder cannot parse.
        let bad = f.context("bad", &[("Dockerfile", "FROM scratch\nNOTANINSTRUCTION x\n")]);
        let error = f.build(&BuildRequest::new(&bad, &tag), &mut Vec::new()).await.unwrap_err();
        assert!(
            matches!(&error, Error::Build { message, .. } if message.to_lowercase().contains("notaninstruction")),
            "{error:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn pulling_without_a_registry_fails_clearly() {
    let Some(f) = Fixture::new() else { return };
    for reference in [format!("{}-absent:v1", f.prefix), format!("localhost:1/{}-absent", f.prefix)] {
        let result = tokio::time::timeout(Duration::from_secs(25), f.engine.pull(&reference)).await;
        let error = result.unwrap_or_else(|_| panic!("pulling {reference} hung")).unwrap_err();
        let Error::Pull { image, message } = &error else { panic!("{error:?}") };
        assert_eq!(image, &reference);
        assert!(!message.is_empty());
        let shown = error.to_string();
        assert!(shown.starts_with(&format!("pulling {reference} failed: ")), "{shown}");
    }
}

#[tokio::test]
async fn runs_a_container_with_stdout_and_stderr_apart() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        let mut config = f.config(&base, &["sh", "-c", "echo out-line; echo err-line >&2; echo \"$GREETING\"; exit 3"]);
        config.env = vec![("GREETING".to_string(), "hi there".to_string())];
        let ran = f.run("attach", &config).await;
        assert_eq!((ran.stdout.as_str(), ran.stderr.as_str(), ran.code), ("out-line\nhi there\n", "err-line\n", 3));

        let info = f.engine.inspect_container(&ran.id).await.unwrap().expect("the container");
        assert_eq!(info.id, ran.id);
        assert_eq!(info.name, f.name("attach"));
        assert!(!info.running);
        assert_eq!(info.status, "exited");
        assert_eq!((info.pid, info.exit_code, info.oom_killed, info.error), (None, Some(3), false, None));
        assert_eq!(info.labels.get(LABEL), Some(&f.prefix));
        assert!(info.image.starts_with("sha256:"), "{}", info.image);

        let listed = f.engine.list_containers(&[(LABEL, &f.prefix)]).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].id.as_str(), listed[0].names.as_slice(), listed[0].state.as_str()),
            (ran.id.as_str(), &[f.name("attach")][..], "exited")
        );
        assert_eq!(f.engine.list_containers(&[(LABEL, "no-such-value")]).await.unwrap(), []);

        // A name in use, and an image that does not exist.
        let error = f.engine.create_container(&f.name("attach"), &config).await.unwrap_err();
        assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
        let missing = format!("{}-missing:v1", f.prefix);
        let error = f.engine.create_container(&f.name("missing"), &f.config(&missing, &["true"])).await.unwrap_err();
        assert!(matches!(&error, Error::NotFound { what, .. } if what.contains(&missing)), "{error:?}");

        // A command that cannot start: the engine's message says why.
        let id = f.engine.create_container(&f.name("nocmd"), &f.config(&base, &["/no/such/program"])).await.unwrap();
        let error = f.engine.start(&id).await.unwrap_err();
        assert!(matches!(&error, Error::Api { message, .. } if message.contains("/no/such/program")), "{error:?}");

        f.engine.remove_container(&ran.id, false).await.unwrap();
        assert_eq!(f.engine.inspect_container(&ran.id).await.unwrap(), None);
        f.engine.remove_container(&ran.id, false).await.unwrap();
        f.engine.kill(&ran.id, "SIGTERM").await.unwrap();
        let error = f.engine.wait(&ran.id).await.unwrap_err();
        assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
    })
    .await;
}

#[tokio::test]
async fn kill_delivers_signals_and_wait_reports_them() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        // With the engine's init as PID 1, SIGTERM reaches `sleep` (a PID 1 without a handler
        // would ignore it).
        let term = f
            .engine
            .create_container(&f.name("term"), &ContainerConfig { init: true, ..f.config(&base, &["sleep", "30"]) })
            .await
            .unwrap();
        let kill = f.engine.create_container(&f.name("kill"), &f.config(&base, &["sleep", "30"])).await.unwrap();
        for id in [&term, &kill] {
            f.engine.start(id).await.unwrap();
            f.engine.start(id).await.unwrap(); // already started: fine
        }
        let running = f.engine.inspect_container(&kill).await.unwrap().unwrap();
        assert!(running.running && running.pid.is_some_and(|p| p > 0) && running.exit_code.is_none(), "{running:?}");
        let cannot_remove = f.engine.remove_container(&kill, false).await.unwrap_err();
        assert!(matches!(cannot_remove, Error::Conflict { .. }), "{cannot_remove:?}");

        f.engine.kill(&term, "SIGTERM").await.unwrap();
        f.engine.kill(&kill, "SIGKILL").await.unwrap();
        assert_eq!(f.engine.wait(&term).await.unwrap(), 143);
        assert_eq!(f.engine.wait(&kill).await.unwrap(), 137);
        let info = f.engine.inspect_container(&kill).await.unwrap().unwrap();
        assert_eq!((info.running, info.exit_code, info.pid), (false, Some(137), None));
        // Not running any more: nothing to kill.
        f.engine.kill(&term, "SIGTERM").await.unwrap();
        f.engine.remove_container(&term, true).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn exec_gives_output_exit_code_and_takes_stdin() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        let id = f
            .engine
            .create_container(&f.name("exec"), &ContainerConfig { init: true, ..f.config(&base, &["sleep", "30"]) })
            .await
            .unwrap();
        let not_running = f.engine.exec(&id, &ExecConfig::new(["true"])).await.unwrap_err();
        assert!(matches!(not_running, Error::Conflict { .. }), "{not_running:?}");
        f.engine.start(&id).await.unwrap();

        let config = ExecConfig {
            env: vec![("FOO".to_string(), "bar".to_string())],
            user: Some("1234".to_string()),
            working_dir: Some("/tmp".to_string()),
            ..ExecConfig::new(["sh", "-c", "echo \"$FOO in $(pwd) as $(id -u)\"; echo to-err >&2; exit 5"])
        };
        let mut exec = f.engine.exec(&id, &config).await.unwrap();
        assert!(exec.stdin.is_none());
        let (stdout, stderr) = exec.output.collect().await.unwrap();
        assert_eq!((utf8(stdout).as_str(), utf8(stderr).as_str()), ("bar in /tmp as 1234\n", "to-err\n"));
        assert_eq!(exec.exit_code().await.unwrap(), 5);

        // stdin, closed so `cat` sees the end.
        let mut exec = f.engine.exec(&id, &ExecConfig { stdin: true, ..ExecConfig::new(["cat"]) }).await.unwrap();
        let mut stdin = exec.stdin.take().expect("stdin");
        stdin.write_all(b"hello\n").await.unwrap();
        let (kind, data) = exec.output.next().await.unwrap().expect("the echo of the first line");
        assert_eq!((kind, data.as_slice()), (tug_engine::StreamKind::Stdout, &b"hello\n"[..]));
        stdin.write_all(b"world\n").await.unwrap();
        stdin.close().await.unwrap();
        let (stdout, _) = exec.output.collect().await.unwrap();
        assert_eq!(utf8(stdout), "world\n");
        assert_eq!(exec.exit_code().await.unwrap(), 0);

        // Output over many frames and reads.
        let mut exec = f
            .engine
            .exec(&id, &ExecConfig::new(["sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"]))
            .await
            .unwrap();
        let (stdout, stderr) = exec.output.collect().await.unwrap();
        assert_eq!((stdout.len(), stderr.as_slice()), (3_000_000, &b"done\n"[..]));
        assert!(stdout.iter().all(|&b| b == 0));
        assert_eq!(exec.exit_code().await.unwrap(), 0);

        // exit_code reads what is left of the output itself.
        let mut exec = f.engine.exec(&id, &ExecConfig::new(["sh", "-c", "echo ignored; exit 7"])).await.unwrap();
        assert_eq!(exec.exit_code().await.unwrap(), 7);

        let absent = f.engine.exec(&f.name("absent"), &ExecConfig::new(["true"])).await.unwrap_err();
        assert!(matches!(absent, Error::NotFound { .. }), "{absent:?}");
    })
    .await;
}

#[tokio::test]
async fn volumes_are_created_listed_mounted_and_removed() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        let volume = f.name("data");
        f.engine.create_volume(&volume, &f.labels()).await.unwrap();
        f.engine.create_volume(&volume, &f.labels()).await.unwrap();
        assert_eq!(f.engine.list_volumes(&[(LABEL, &f.prefix)]).await.unwrap(), std::slice::from_ref(&volume));

        let mount =
            Mount { kind: MountKind::Volume, source: volume.clone(), target: "/data".to_string(), read_only: false };
        let writer =
            ContainerConfig { mounts: vec![mount.clone()], ..f.config(&base, &["sh", "-c", "echo kept > /data/f"]) };
        assert_eq!(f.run("writer", &writer).await.code, 0);
        let reader = ContainerConfig {
            mounts: vec![Mount { read_only: true, ..mount }],
            ..f.config(&base, &["sh", "-c", "cat /data/f; touch /data/g 2>/dev/null || echo read-only"])
        };
        let ran = f.run("reader", &reader).await;
        assert_eq!(ran.stdout, "kept\nread-only\n", "{ran:?}");

        // In use by a container, even a stopped one.
        let error = f.engine.remove_volume(&volume).await.unwrap_err();
        assert!(matches!(&error, Error::Conflict { message, .. } if message.contains("in use")), "{error:?}");
        for container in f.engine.list_containers(&[(LABEL, &f.prefix)]).await.unwrap() {
            f.engine.remove_container(&container.id, true).await.unwrap();
        }
        f.engine.remove_volume(&volume).await.unwrap();
        f.engine.remove_volume(&volume).await.unwrap();
        assert_eq!(f.engine.list_volumes(&[(LABEL, &f.prefix)]).await.unwrap(), Vec::<String>::new());
    })
    .await;
}

#[tokio::test]
async fn container_settings_are_applied() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        let host_dir = f.dir.join("bound");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(host_dir.join("bound.txt"), "from-host\n").unwrap();
        let script = "cat /host/bound.txt; grep tughost /etc/hosts; \
            touch /scratch/x && echo tmpfs-writable; \
            touch /rootfile 2>/dev/null || echo root-read-only; \
            touch /host/y 2>/dev/null || echo bind-read-only; \
            cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
            id -u; pwd";
        let config = ContainerConfig {
            read_only: true,
            tmpfs: vec![("/scratch".to_string(), "size=1m".to_string())],
            mounts: vec![Mount {
                kind: MountKind::Bind,
                source: host_dir.to_str().unwrap().to_string(),
                target: "/host".to_string(),
                read_only: true,
            }],
            extra_hosts: vec!["tughost:10.1.2.3".to_string()],
            memory_bytes: Some(64 << 20),
            nano_cpus: Some(500_000_000),
            cap_drop: vec!["NET_RAW".to_string()],
            security_opt: vec!["no-new-privileges".to_string()],
            user: Some("0:0".to_string()),
            working_dir: Some("/scratch".to_string()),
            stop_signal: Some("SIGINT".to_string()),
            ..f.config(&base, &["sh", "-c", script])
        };
        let ran = f.run("settings", &config).await;
        assert_eq!(
            ran.stdout,
            "from-host\n10.1.2.3\ttughost\ntmpfs-writable\nroot-read-only\nbind-read-only\n67108864\n0\n/scratch\n",
            "{ran:?}"
        );
        assert_eq!(ran.code, 0);
    })
    .await;
}

#[tokio::test]
async fn the_bridge_gateway_is_found() {
    let Some(f) = Fixture::new() else { return };
    let version = f.engine.version().await.unwrap();
    let default = if version.is_podman() { "podman" } else { "bridge" };
    let gateway = f.engine.network_gateway(default).await.unwrap().expect("the default network's gateway");
    assert!(gateway.is_private(), "{gateway}");
    assert_eq!(f.engine.network_gateway(&f.name("no-such-network")).await.unwrap(), None);
    assert_eq!(f.engine.network_gateway("host").await.unwrap(), None);
}

#[tokio::test]
async fn serves_on_a_published_port() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        let port = free_port();
        let config = ContainerConfig {
            network: Network::Bridge {
                publish: vec![Publish { host_ip: "127.0.0.1".to_string(), host_port: port, container_port: 8080 }],
            },
            ..f.config(&base, &["sh", "-c", "mkdir /tmp/www && echo hello-from-bridge > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"])
        };
        let id = f.engine.create_container(&f.name("bridge"), &config).await.unwrap();
        f.engine.start(&id).await.unwrap();
        let answer = http_get_until(port, "hello-from-bridge").await;
        assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "{answer}");
    })
    .await;
}

#[tokio::test]
async fn serves_on_the_host_network() {
    let Some(f) = Fixture::new() else { return };
    within(LIMIT, async {
        let base = f.base().await;
        let port = free_port();
        let script = format!("mkdir /tmp/www && echo hello-from-host > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /tmp/www");
        let config = ContainerConfig { network: Network::Host, ..f.config(&base, &["sh", "-c", &script]) };
        let id = f.engine.create_container(&f.name("host"), &config).await.unwrap();
        f.engine.start(&id).await.unwrap();
        http_get_until(port, "hello-from-host").await;
    })
    .await;
}

#[test]
fn the_blocking_cleanup_removes_every_labelled_container() {
    let Some(f) = Fixture::new() else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cleanup_label = "tug-engine-test-cleanup";
    runtime.block_on(within(LIMIT, async {
        let base = f.base().await;
        for (suffix, start) in [("running", true), ("created", false)] {
            let mut config = f.config(&base, &["sleep", "30"]);
            config.labels.push((cleanup_label.to_string(), f.prefix.clone()));
            let id = f.engine.create_container(&f.name(suffix), &config).await.unwrap();
            if start {
                f.engine.start(&id).await.unwrap();
            }
        }
        // One that must stay: same test, no cleanup label.
        f.engine.create_container(&f.name("other"), &f.config(&base, &["true"])).await.unwrap();
    }));

    let started = Instant::now();
    let removed =
        remove_labelled_containers_blocking(f.engine.endpoint(), (cleanup_label, &f.prefix), Duration::from_secs(20))
            .unwrap();
    assert_eq!(removed, 2);
    assert!(started.elapsed() < Duration::from_secs(15));
    runtime.block_on(async {
        assert_eq!(f.engine.list_containers(&[(cleanup_label, &f.prefix)]).await.unwrap(), []);
        assert_eq!(f.engine.list_containers(&[(LABEL, &f.prefix)]).await.unwrap().len(), 1);
    });
    let again =
        remove_labelled_containers_blocking(f.engine.endpoint(), (cleanup_label, &f.prefix), Duration::from_secs(20));
    assert_eq!(again.unwrap(), 0);

    let nowhere = Endpoint { socket: f.dir.join("absent.sock"), origin: Origin::Field };
    let error =
        remove_labelled_containers_blocking(&nowhere, (cleanup_label, "x"), Duration::from_secs(5)).unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
}
