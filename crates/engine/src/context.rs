//! The build context: which files go (`.dockerignore`), and the tar of them, streamed.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hyper::body::Bytes;
use tokio::sync::mpsc;

use crate::Error;
use crate::ignore::{Ignore, clean};
use crate::tar::{Kind, TarWriter, entry_size};

/// The largest context sent; a bigger one is most likely a missing `.dockerignore`.
pub(crate) const CONTEXT_LIMIT: u64 = 1 << 30;
/// The size of the chunks the archive is sent in.
const CHUNK: usize = 64 << 10;

/// What will be sent: every entry, in archive order, with its size already checked.
#[derive(Debug)]
pub(crate) struct Plan {
    root: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Relative to the root, `/`-separated.
    name: String,
    mode: u32,
    kind: Kind,
}

/// The Dockerfile's path inside the context, cleaned; an error when it is outside.
pub(crate) fn dockerfile_path(root: &Path, dockerfile: Option<&str>) -> Result<String, Error> {
    let given = dockerfile.unwrap_or("Dockerfile");
    let cleaned = clean(given);
    if cleaned.starts_with('/') || cleaned == "." || cleaned == ".." || cleaned.starts_with("../") {
        return Err(Error::Context {
            path: root.to_path_buf(),
            message: format!("the Dockerfile must be a path inside the context, not {given:?}"),
        });
    }
    Ok(cleaned)
}

/// Walks the context at `root` and decides what goes: everything `.dockerignore` does not
/// exclude, plus the Dockerfile and `.dockerignore` themselves. Symlinks are sent as symlinks
/// (never followed); sockets, FIFOs and devices are left out. Refuses a context whose archive
/// would exceed `limit` bytes, and any path that is not UTF-8.
pub(crate) fn plan(root: &Path, dockerfile: &str, limit: u64) -> Result<Plan, Error> {
    let context_error = |path: &Path, message: String| Error::Context { path: path.to_path_buf(), message };
    let io_error = |path: &Path, e: io::Error| context_error(path, e.to_string());

    let meta = fs::metadata(root).map_err(|e| io_error(root, e))?;
    if !meta.is_dir() {
        return Err(context_error(root, "it is not a directory".to_string()));
    }
    let ignore_path = root.join(".dockerignore");
    let ignore = match fs::read(&ignore_path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| context_error(&ignore_path, "it is not UTF-8 text".to_string()))?;
            Ignore::parse(&text).map_err(|message| context_error(&ignore_path, message))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(io_error(&ignore_path, e)),
    };
    let always = |name: &str| name == dockerfile || name == ".dockerignore";

    let mut entries = Vec::new();
    // Directories to list, each with its entries left to visit (sorted, so the archive is the
    // same every time). Iterative: a deep tree cannot exhaust the stack.
    let mut stack: Vec<std::vec::IntoIter<(String, fs::Metadata)>> = vec![list(root, "")?.into_iter()];
    while let Some(pending) = stack.last_mut() {
        let Some((name, meta)) = pending.next() else {
            stack.pop();
            continue;
        };
        let path = root.join(&name);
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.is_file() {
            Kind::File { size: meta.len() }
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(|e| io_error(&path, e))?;
            let target = target
                .to_str()
                .ok_or_else(|| {
                    context_error(
                        &path,
                        "its link target is not UTF-8; rename it or list it in .dockerignore".to_string(),
                    )
                })?
                .to_string();
            Kind::Symlink { target }
        } else {
            continue;
        };
        let excluded = !ignore.is_empty() && !always(&name) && ignore.excludes(&name);
        if excluded {
            if kind == Kind::Dir && ignore.may_include_under(&name) {
                stack.push(list(&path, &name)?.into_iter());
            }
            continue;
        }
        let is_dir = kind == Kind::Dir;
        entries.push(Entry { name: name.clone(), mode: meta.permissions().mode(), kind });
        if is_dir {
            stack.push(list(&path, &name)?.into_iter());
        }
    }

    // The Dockerfile and .dockerignore always go, even from under an excluded directory.
    for name in [dockerfile, ".dockerignore"] {
        if entries.iter().any(|e| e.name == name) {
            continue;
        }
        let path = root.join(name);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => entries.push(Entry {
                name: name.to_string(),
                mode: meta.permissions().mode(),
                kind: Kind::File { size: meta.len() },
            }),
            Ok(_) => return Err(context_error(&path, "it is not a regular file".to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound && name == ".dockerignore" => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(context_error(root, format!("there is no {name} in it")));
            }
            Err(e) => return Err(io_error(&path, e)),
        }
    }

    let total: u64 = entries.iter().map(|e| entry_size(&e.name, &e.kind)).sum::<u64>() + 1024;
    if total > limit {
        return Err(context_error(
            root,
            format!(
                "it is {} MiB, over the {} MiB limit; list what the build does not need in .dockerignore",
                total >> 20,
                limit >> 20
            ),
        ));
    }
    Ok(Plan { root: root.to_path_buf(), entries })
}

/// The entries of a directory, sorted by name, with their metadata (symlinks not followed).
fn list(dir: &Path, prefix: &str) -> Result<Vec<(String, fs::Metadata)>, Error> {
    let io_error = |path: &Path, e: io::Error| Error::Context { path: path.to_path_buf(), message: e.to_string() };
    let mut out = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let item = item.map_err(|e| io_error(dir, e))?;
        let path = item.path();
        let file_name = item.file_name();
        let Some(name) = file_name.to_str() else {
            return Err(Error::Context {
                path,
                message: "the name is not UTF-8; rename it or list it in .dockerignore".to_string(),
            });
        };
        let meta = fs::symlink_metadata(&path).map_err(|e| io_error(&path, e))?;
        let name = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
        out.push((name, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

impl Plan {
    /// Writes the archive to `out`. A file that cannot be read, or that changed size since the
    /// walk, is an error naming it.
    pub(crate) fn write(&self, out: impl Write) -> Result<(), Error> {
        let mut tar = TarWriter::new(out);
        for entry in &self.entries {
            let path = self.root.join(&entry.name);
            let error = |e: io::Error| Error::Context { path: path.clone(), message: e.to_string() };
            match entry.kind {
                Kind::File { .. } => {
                    let mut file = fs::File::open(&path).map_err(error)?;
                    tar.append(&entry.name, entry.mode, &entry.kind, Some(&mut file)).map_err(error)?;
                }
                _ => tar.append(&entry.name, entry.mode, &entry.kind, None).map_err(error)?,
            }
        }
        tar.finish().map_err(|e| Error::Context { path: self.root.clone(), message: e.to_string() })?;
        Ok(())
    }

    /// Writes the archive into `tx` in chunks, from a blocking thread. When the reader goes away
    /// (the request ended) it stops quietly: the request's own error says why. A failure of its
    /// own is returned after the body has been ended with an error, so the request fails too.
    pub(crate) fn stream(&self, tx: mpsc::Sender<io::Result<Bytes>>) -> Result<(), Error> {
        let mut sink = ChannelSink { tx, buf: Vec::with_capacity(CHUNK), closed: false };
        match self.write(&mut sink) {
            Ok(()) => Ok(()),
            Err(_) if sink.closed => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A `Write` that sends what it is given as chunks on a channel.
struct ChannelSink {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    closed: bool,
}

impl ChannelSink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        if self.tx.blocking_send(Ok(chunk)).is_err() {
            self.closed = true;
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the request ended"));
        }
        Ok(())
    }
}

impl Write for ChannelSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::tests::read_archive;
    use std::os::unix::fs::symlink;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("tug-engine-unit-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn file(&self, name: &str, content: &str) -> &TempDir {
            let path = self.0.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
            self
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &TempDir, dockerfile: &str) -> Vec<String> {
        let plan = plan(&dir.0, dockerfile, CONTEXT_LIMIT).unwrap();
        let mut data = Vec::new();
        plan.write(&mut data).unwrap();
        read_archive(&data).into_iter().map(|e| e.name).collect()
    }

    #[test]
    fn sends_what_dockerignore_allows_and_always_the_dockerfile() {
        let dir = TempDir::new("ignore");
        dir.file("Dockerfile", "FROM scratch\n")
            .file(
                ".dockerignore",
                "# build output\ntarget\n*.log\n!keep.log\nDockerfile\n.dockerignore\nsecret/\n!secret/public.txt\n",
            )
            .file("src/main.rs", "fn main() {}\n")
            .file("target/debug/big", "x")
            .file("a.log", "")
            .file("keep.log", "")
            .file("secret/key", "k")
            .file("secret/public.txt", "p");
        symlink("src/main.rs", dir.0.join("link")).unwrap();
        assert_eq!(
            names(&dir, "Dockerfile"),
            [".dockerignore", "Dockerfile", "keep.log", "link", "secret/public.txt", "src/", "src/main.rs"]
        );
    }

    #[test]
    fn a_dockerfile_in_an_excluded_directory_is_still_sent() {
        let dir = TempDir::new("dockerfile");
        dir.file("docker/Dockerfile.prod", "FROM scratch\n").file("docker/other", "").file(".dockerignore", "docker\n");
        assert_eq!(names(&dir, "docker/Dockerfile.prod"), [".dockerignore", "docker/Dockerfile.prod"]);
        let message = plan(&dir.0, "Dockerfile", CONTEXT_LIMIT).unwrap_err().to_string();
        assert!(message.contains("there is no Dockerfile in it"), "{message}");
    }

    #[test]
    fn keeps_modes_and_symlinks() {
        let dir = TempDir::new("modes");
        dir.file("Dockerfile", "FROM scratch\n").file("run.sh", "#!/bin/sh\n");
        fs::set_permissions(dir.0.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("/does/not/exist", dir.0.join("dangling")).unwrap();
        let plan = plan(&dir.0, "Dockerfile", CONTEXT_LIMIT).unwrap();
        let mut data = Vec::new();
        plan.write(&mut data).unwrap();
        let entries = read_archive(&data);
        let run = entries.iter().find(|e| e.name == "run.sh").unwrap();
        assert_eq!(run.mode, 0o750);
        assert_eq!(run.data, b"#!/bin/sh\n");
        let link = entries.iter().find(|e| e.name == "dangling").unwrap();
        assert_eq!(link.kind, Kind::Symlink { target: "/does/not/exist".to_string() });
    }

    #[test]
    fn refuses_a_context_over_the_limit_and_names_that_are_not_utf8() {
        let dir = TempDir::new("limit");
        dir.file("Dockerfile", "FROM scratch\n").file("data", &"x".repeat(10_000));
        let message = plan(&dir.0, "Dockerfile", 8192).unwrap_err().to_string();
        assert!(message.contains("over the 0 MiB limit") && message.contains(".dockerignore"), "{message}");

        use std::os::unix::ffi::OsStrExt;
        let bad = dir.0.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name"));
        fs::write(&bad, "").unwrap();
        let message = plan(&dir.0, "Dockerfile", CONTEXT_LIMIT).unwrap_err().to_string();
        assert!(message.contains("not UTF-8") && message.contains("bad-"), "{message}");
    }

    #[test]
    fn the_dockerfile_must_be_inside() {
        let root = Path::new("/ctx");
        assert_eq!(dockerfile_path(root, None).unwrap(), "Dockerfile");
        assert_eq!(dockerfile_path(root, Some("./docker//Dockerfile")).unwrap(), "docker/Dockerfile");
        for bad in ["/etc/Dockerfile", "../Dockerfile", ".", "a/../../b"] {
            assert!(dockerfile_path(root, Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn streams_in_chunks_and_stops_when_the_reader_goes() {
        let dir = TempDir::new("stream");
        dir.file("Dockerfile", "FROM scratch\n").file("big", &"y".repeat(300_000));
        let plan = plan(&dir.0, "Dockerfile", CONTEXT_LIMIT).unwrap();
        let (tx, mut rx) = mpsc::channel(100);
        plan.stream(tx).unwrap();
        let mut data = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            data.extend_from_slice(&chunk);
        }
        assert_eq!(read_archive(&data).len(), 2);

        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        plan.stream(tx).unwrap();
    }
}
