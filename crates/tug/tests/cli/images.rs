//! Container images for the tests, built once per run on the machine's engine (there is no
//! registry: nothing can be pulled). Each is `FROM scratch` around binaries of this machine and
//! the libraries `ldd` lists for them, with Debian's static busybox for a shell.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::TempDir;
use crate::harness::demo_bin;

/// `docker ARGS`, panicking with its output when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    assert!(
        out.status.success(),
        "docker {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker ARGS`, whatever happens.
pub fn docker_quiet(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Copies `binary` to `/usr/local/bin/<name>` under `root`, with every library it loads at its
/// own path.
fn add_binary(root: &Path, binary: &Path) {
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(binary, bin.join(binary.file_name().unwrap())).expect("copy binary");
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
        if !path.starts_with('/') {
            continue;
        }
        let to = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(path, &to).unwrap_or_else(|e| panic!("copy {path}: {e}"));
    }
}

/// A build context: `rootfs/` with busybox and `binaries`, and a Dockerfile that copies it in.
fn context(label: &str, binaries: &[&Path], dockerfile_tail: &str) -> TempDir {
    let dir = TempDir::new(label);
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.exists(), "the tests need Debian's busybox-static (scripts/test installs it)");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for binary in binaries {
        add_binary(&root, binary);
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    dir.write(
        "Dockerfile",
        &format!(
            "FROM scratch\nCOPY rootfs/ /\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n{dockerfile_tail}"
        ),
    );
    dir
}

fn build(tag: &str, context: &Path) {
    docker(&["build", "-q", "-t", tag, &context.display().to_string()]);
}

/// `tug-test-demo:latest`: the demo HTTP service (`CMD tug-demo`) and busybox.
pub fn demo_image() -> &'static str {
    static BUILT: OnceLock<&'static str> = OnceLock::new();
    BUILT.get_or_init(|| {
        let ctx = context("image-demo", &[demo_bin()], "CMD [\"/usr/local/bin/tug-demo\"]\n");
        build("tug-test-demo:latest", ctx.path());
        "tug-test-demo:latest"
    })
}

/// `tug-test-redis:latest`: this machine's redis-server and redis-cli, and busybox.
pub fn redis_image() -> &'static str {
    static BUILT: OnceLock<&'static str> = OnceLock::new();
    BUILT.get_or_init(|| {
        let server = which("redis-server");
        let cli = which("redis-cli");
        let ctx = context("image-redis", &[&server, &cli], "CMD [\"/usr/local/bin/redis-server\"]\n");
        build("tug-test-redis:latest", ctx.path());
        "tug-test-redis:latest"
    })
}

fn which(program: &str) -> PathBuf {
    ["/usr/local/bin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{program}` is not installed (scripts/test installs it)"))
}

/// Builds `tag` from the demo image with `VERSION` and extra `ENV` lines: a new image id each
/// time its content differs. Returns the id, for [`Tags`] to remove when the test ends (a
/// rebuilt tag leaves the earlier image untagged, not gone). The tag is in a label, so two
/// tests never share an id: one's cleanup would remove the other's untagged image.
pub fn web_image(tag: &str, version: &str, extra_env: &str) -> String {
    let dir = TempDir::new("image-web");
    let dockerfile =
        format!("FROM {}\nENV VERSION={version}\n{extra_env}LABEL tug-test=web tug-test-tag={tag}\n", demo_image());
    dir.write("Dockerfile", &dockerfile);
    build(tag, dir.path());
    image_id(tag)
}

/// Image tags (and ids) a test made, removed when it ends (failed or not).
pub struct Tags(pub Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for tag in &self.0 {
            docker_quiet(&["rmi", "-f", tag]);
        }
    }
}

/// The id of an image on the engine.
pub fn image_id(reference: &str) -> String {
    docker(&["image", "inspect", "-f", "{{.Id}}", reference])
}

/// Containers labelled with this stack's state folder (all states).
pub fn stack_containers(state_dir: &Path) -> Vec<String> {
    let label = format!("label=tug.state_dir={}", state_dir.display());
    docker_quiet(&["ps", "-aq", "--filter", &label]).lines().map(str::to_string).collect()
}

/// Volumes labelled with this stack's state folder.
pub fn stack_volumes(state_dir: &Path) -> Vec<String> {
    let label = format!("label=tug.state_dir={}", state_dir.display());
    docker_quiet(&["volume", "ls", "-q", "--filter", &label]).lines().map(str::to_string).collect()
}
