//! A process service's `source`: the digest of the folder's content (part of the revision)
//! and the revision's own immutable copy (`.tug/revisions/<service>/<digest>`), which its
//! instances run from. So a rollback, an `undo` or a `scale` runs the old revision's code,
//! never the files now on disk.
//!
//! What is hashed and copied: every regular file (content and whether it is executable),
//! folder and symbolic link (its target, as written), by path relative to the source. Left
//! out: `.git`, `__pycache__` and the stack's state folder. The copy is made in a temporary
//! folder beside its final place, hashed as it is written (so a file edited meanwhile cannot
//! give a copy that does not match its name), made read-only, then renamed into place.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use tug_supervisor::history::REVISIONS;
/// At most this many entries, and bytes, in a source: a `source: /` mistake must fail fast.
const MAX_ENTRIES: usize = 200_000;
const MAX_BYTES: u64 = 4 << 30;

/// A source copied for one revision.
#[derive(Debug)]
pub struct Snapshot {
    pub digest: String,
    pub copy: PathBuf,
}

/// Digests `source` and names the copy it would have, without making it (`deploy --plan`).
pub fn digest_only(service: &str, source: &Path, state_dir: &Path) -> Result<Snapshot, String> {
    let entries = walk(source, state_dir)?;
    let digest = digest(source, &entries)?;
    let copy = state_dir.join(REVISIONS).join(service).join(&digest);
    Ok(Snapshot { digest, copy })
}

/// Digests `source` and makes sure its copy exists under `state_dir`.
pub fn snapshot(service: &str, source: &Path, state_dir: &Path) -> Result<Snapshot, String> {
    let entries = walk(source, state_dir)?;
    let digest = digest(source, &entries)?;
    if let Some(snapshot) = existing(service, &digest, state_dir) {
        return Ok(snapshot);
    }
    let folder = revisions_folder(service, state_dir)?;
    let tmp = folder.join(format!(".tmp-{digest}-{}", std::process::id()));
    let _ = remove_tree(&tmp);
    let copied = copy_tree(source, &entries, &tmp);
    let copied_digest = match copied {
        Ok(d) => d,
        Err(e) => {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
    };
    // Edited while it was copied: the copy is what runs, so its own digest names it.
    let copy = folder.join(&copied_digest);
    put_in_place(&tmp, &copy, &entries)?;
    Ok(Snapshot { digest: copied_digest, copy })
}

/// Makes the copy at `tmp` read-only and names it `copy`, unless a copy of that content is
/// there already (made meanwhile by another deploy: the same files, so either will do).
fn put_in_place(tmp: &Path, copy: &Path, entries: &[(PathBuf, Kind)]) -> Result<(), String> {
    if !copy.is_dir() {
        make_read_only(tmp, entries);
        if let Err(e) = std::fs::rename(tmp, copy)
            && !copy.is_dir()
        {
            let _ = remove_tree(tmp);
            return Err(format!("cannot move the copy into {}: {e}", copy.display()));
        }
    }
    let _ = remove_tree(tmp);
    Ok(())
}

/// The copy of `service`'s source with `digest`, if this host has it (made fresh again: the
/// daemon never prunes a copy `up` has just chosen).
pub fn existing(service: &str, digest: &str, state_dir: &Path) -> Option<Snapshot> {
    let copy = state_dir.join(REVISIONS).join(service).join(digest);
    if !copy.is_dir() {
        return None;
    }
    if let Ok(dir) = std::fs::File::open(&copy) {
        let _ = dir.set_modified(std::time::SystemTime::now());
    }
    Some(Snapshot { digest: digest.to_string(), copy })
}

/// `service`'s folder of copies, made private: a source may hold files only its owner may
/// read (an env file, a key).
fn revisions_folder(service: &str, state_dir: &Path) -> Result<PathBuf, String> {
    let folder = state_dir.join(REVISIONS).join(service);
    for dir in [state_dir.to_path_buf(), state_dir.join(REVISIONS), folder.clone()] {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
    Ok(folder)
}

#[derive(Debug, PartialEq)]
enum Kind {
    Dir,
    /// Read and execute bits (the copy has no write bit).
    File {
        mode: u32,
    },
    Link(PathBuf),
}

/// Every entry under `root`, sorted by relative path, without what is left out.
fn walk(root: &Path, state_dir: &Path) -> Result<Vec<(PathBuf, Kind)>, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("source {}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("source {} is not a folder", root.display()));
    }
    let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let folder = root.join(&relative);
        let mut children: Vec<_> = std::fs::read_dir(&folder)
            .map_err(|e| format!("cannot read {}: {e}", folder.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot read {}: {e}", folder.display()))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let name = child.file_name();
            if tug_stackfile::model::SOURCE_EXCLUDED.iter().any(|x| name == *x) {
                continue;
            }
            let path = child.path();
            if std::fs::canonicalize(&path).is_ok_and(|p| p == state_dir) {
                continue;
            }
            let rel = relative.join(&name);
            let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let kind = if meta.file_type().is_symlink() {
                Kind::Link(std::fs::read_link(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
            } else if meta.is_dir() {
                pending.push(rel.clone());
                Kind::Dir
            } else if meta.is_file() {
                bytes += meta.len();
                // Its read and execute bits: a copy is no more readable than the file was.
                Kind::File { mode: meta.permissions().mode() & 0o555 }
            } else {
                // Sockets, fifos, devices: not code.
                continue;
            };
            out.push((rel, kind));
            if out.len() > MAX_ENTRIES || bytes > MAX_BYTES {
                return Err(format!(
                    "source {} is too large to copy per revision (over {MAX_ENTRIES} entries or {} GiB); point \
                     `source` at the service's code only",
                    root.display(),
                    MAX_BYTES >> 30
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One entry's contribution to the digest.
fn hash_entry(hasher: &mut Sha256, relative: &Path, kind: &Kind, content: Option<&[u8; 32]>) {
    let path = relative.as_os_str().as_encoded_bytes();
    hasher.update((path.len() as u64).to_le_bytes());
    hasher.update(path);
    match kind {
        Kind::Dir => hasher.update(b"d"),
        Kind::File { mode } => {
            hasher.update(b"f");
            hasher.update(mode.to_le_bytes());
            hasher.update(content.copied().unwrap_or_default());
        }
        Kind::Link(target) => {
            let target = target.as_os_str().as_encoded_bytes();
            hasher.update(b"l");
            hasher.update((target.len() as u64).to_le_bytes());
            hasher.update(target);
        }
    }
}

/// A source's digest as [`finish`] writes it: 16 lowercase hex digits.
pub fn is_digest(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn finish(hasher: Sha256) -> String {
    tug_proto::auth::hex(&hasher.finalize()[..8])
}

fn digest(root: &Path, entries: &[(PathBuf, Kind)]) -> Result<String, String> {
    let mut hasher = Sha256::new();
    for (relative, kind) in entries {
        let content = match kind {
            Kind::File { .. } => Some(file_digest(&root.join(relative), None)?),
            _ => None,
        };
        hash_entry(&mut hasher, relative, kind, content.as_ref());
    }
    Ok(finish(hasher))
}

/// A file's SHA-256, copying it to `to` on the way when asked.
fn file_digest(path: &Path, mut to: Option<&mut dyn Write>) -> Result<[u8; 32], String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(out) = to.as_mut() {
            out.write_all(&buf[..n]).map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
        }
    }
    Ok(hasher.finalize().into())
}

/// Copies the entries into `to`, returning the digest of what was copied.
fn copy_tree(root: &Path, entries: &[(PathBuf, Kind)], to: &Path) -> Result<String, String> {
    std::fs::create_dir(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let mut hasher = Sha256::new();
    for (relative, kind) in entries {
        let target = to.join(relative);
        let mut content = None;
        match kind {
            Kind::Dir => {
                std::fs::create_dir(&target).map_err(|e| format!("cannot create {}: {e}", target.display()))?
            }
            Kind::Link(link) => std::os::unix::fs::symlink(link, &target)
                .map_err(|e| format!("cannot create {}: {e}", target.display()))?,
            Kind::File { mode } => {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600 | mode)
                    .open(&target)
                    .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
                content = Some(file_digest(&root.join(relative), Some(&mut out))?);
            }
        }
        hash_entry(&mut hasher, relative, kind, content.as_ref());
    }
    Ok(finish(hasher))
}

/// Files lose their write bits, then folders (deepest first): the copy is the revision's.
fn make_read_only(root: &Path, entries: &[(PathBuf, Kind)]) {
    for (relative, kind) in entries.iter().rev() {
        let path = root.join(relative);
        let mode = match kind {
            Kind::File { mode } => *mode,
            Kind::Dir => 0o555,
            Kind::Link(_) => continue,
        };
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
    }
    let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o555));
}

pub use tug_supervisor::history::remove_tree;

/// A source as sent to a remote daemon (`tug --host`): this line, then each entry in the
/// walk's order: its kind (`d`, `f`, `l`), its path's length (u32, little-endian) and path,
/// then for a file its mode (u32) and length (u64) and content, for a link its target's
/// length (u32) and target. The daemon rebuilds the copy from it and names it by the digest
/// of what it wrote.
const BUNDLE_MAGIC: &[u8] = b"tug source bundle 1\n";
/// The longest path or link target a bundle may hold (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;
/// All of a bundle's paths together: what unpacking it holds in memory.
const MAX_PATH_BYTES: usize = 64 << 20;

/// Writes `source` as a bundle to `out`; answers the digest of what it wrote, which is the
/// revision's if nothing changed meanwhile.
pub fn write_bundle(source: &Path, state_dir: &Path, out: &mut dyn Write) -> Result<String, String> {
    let entries = walk(source, state_dir)?;
    let failed = |e: std::io::Error| format!("cannot write the source's bundle: {e}");
    out.write_all(BUNDLE_MAGIC).map_err(failed)?;
    let mut hasher = Sha256::new();
    for (relative, kind) in &entries {
        let path = relative.as_os_str().as_encoded_bytes();
        let mut content = None;
        match kind {
            Kind::Dir => {
                out.write_all(b"d").map_err(failed)?;
                write_bytes(out, path).map_err(failed)?;
            }
            Kind::Link(target) => {
                out.write_all(b"l").map_err(failed)?;
                write_bytes(out, path).map_err(failed)?;
                write_bytes(out, target.as_os_str().as_encoded_bytes()).map_err(failed)?;
            }
            Kind::File { mode } => {
                let file = source.join(relative);
                let length =
                    std::fs::metadata(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?.len();
                out.write_all(b"f").map_err(failed)?;
                write_bytes(out, path).map_err(failed)?;
                out.write_all(&mode.to_le_bytes())
                    .and_then(|_| out.write_all(&length.to_le_bytes()))
                    .map_err(failed)?;
                // Exactly the length announced: a file that grew or shrank meanwhile is a
                // changed source, which the digest then says.
                let mut limited = ExactLength { inner: out, left: length };
                content =
                    Some(file_digest(&file, Some(&mut limited)).map_err(|e| format!("{e}; run the command again"))?);
                if limited.left != 0 {
                    return Err(format!("{} changed while it was sent; run the command again", file.display()));
                }
            }
        }
        hash_entry(&mut hasher, relative, kind, content.as_ref());
    }
    Ok(finish(hasher))
}

fn write_bytes(out: &mut dyn Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

/// Writes at most `left` bytes to `inner`, and refuses more.
struct ExactLength<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    left: u64,
}

impl<W: Write + ?Sized> Write for ExactLength<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::other("the file grew while it was sent"));
        }
        self.inner.write_all(buf)?;
        self.left -= buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Rebuilds a bundle's source as `service`'s copy under `state_dir` (made read-only and named
/// by the digest of what was written, as [`snapshot`] does). Every path must be relative, in
/// the walk's order, inside a folder the bundle made before; no entry is followed through a
/// link. Nothing is left behind when the bundle is refused.
pub fn unpack_bundle(service: &str, bundle: &mut impl Read, state_dir: &Path) -> Result<Snapshot, String> {
    let folder = revisions_folder(service, state_dir)?;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = folder.join(format!(".tmp-bundle-{}-{n}", std::process::id()));
    let _ = remove_tree(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let unpacked = unpack_into(bundle, &tmp);
    let (digest, entries) = match unpacked {
        Ok(done) => done,
        Err(e) => {
            let _ = remove_tree(&tmp);
            return Err(format!("service `{service}`: the source's bundle: {e}"));
        }
    };
    let copy = folder.join(&digest);
    put_in_place(&tmp, &copy, &entries)?;
    Ok(Snapshot { digest, copy })
}

fn unpack_into(bundle: &mut impl Read, to: &Path) -> Result<(String, Vec<(PathBuf, Kind)>), String> {
    let mut magic = [0u8; BUNDLE_MAGIC.len()];
    bundle.read_exact(&mut magic).map_err(|_| "it is not a tug source bundle".to_string())?;
    if magic != BUNDLE_MAGIC {
        return Err("it is not a tug source bundle".into());
    }
    let mut unpacked = Unpacked::default();
    loop {
        let mut kind = [0u8; 1];
        match bundle.read(&mut kind) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("cannot read it: {e}")),
        }
        let relative = unpacked.next_path(&read_bytes(bundle)?)?;
        let target = to.join(&relative);
        let (entry, content) = match kind[0] {
            b'd' => (unpack_folder(&target)?, None),
            b'l' => {
                let link = unpack_link(bundle, &target)?;
                if let Kind::Link(to) = &link {
                    unpacked.count_path(to.as_os_str().len())?;
                }
                (link, None)
            }
            b'f' => {
                let (entry, content) = unpack_file(bundle, &target, &mut unpacked.bytes)?;
                (entry, Some(content))
            }
            other => return Err(format!("unknown entry kind {other:#04x} at {}", relative.display())),
        };
        unpacked.add(relative, entry, content)?;
    }
    Ok((finish(unpacked.hasher), unpacked.entries))
}

/// What a bundle has unpacked so far, and its limits.
#[derive(Default)]
struct Unpacked {
    hasher: Sha256,
    entries: Vec<(PathBuf, Kind)>,
    folders: std::collections::HashSet<PathBuf>,
    /// Content and path bytes: what the entries hold, and what they take in memory here.
    bytes: u64,
    path_bytes: usize,
}

impl Unpacked {
    /// The next entry's path, checked: plain, after the one before (so each comes once, after
    /// its folder), inside a folder the bundle made.
    fn next_path(&mut self, bytes: &[u8]) -> Result<PathBuf, String> {
        let relative = bundle_path(bytes)?;
        self.count_path(bytes.len())?;
        if self.entries.last().is_some_and(|(last, _)| *last >= relative) {
            return Err(format!("{} is out of order", relative.display()));
        }
        if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty())
            && !self.folders.contains(parent)
        {
            return Err(format!("{} is not inside a folder of the bundle", relative.display()));
        }
        Ok(relative)
    }

    /// Paths and link targets are held here until the end: together they are capped.
    fn count_path(&mut self, bytes: usize) -> Result<(), String> {
        self.path_bytes += bytes;
        if self.path_bytes > MAX_PATH_BYTES {
            return Err(format!("its paths take over {} MiB", MAX_PATH_BYTES >> 20));
        }
        Ok(())
    }

    fn add(&mut self, relative: PathBuf, entry: Kind, content: Option<[u8; 32]>) -> Result<(), String> {
        hash_entry(&mut self.hasher, &relative, &entry, content.as_ref());
        if entry == Kind::Dir {
            self.folders.insert(relative.clone());
        }
        self.entries.push((relative, entry));
        if self.entries.len() > MAX_ENTRIES {
            return Err(format!("it holds over {MAX_ENTRIES} entries"));
        }
        Ok(())
    }
}

fn unpack_folder(target: &Path) -> Result<Kind, String> {
    std::fs::create_dir(target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    Ok(Kind::Dir)
}

fn unpack_link(bundle: &mut impl Read, target: &Path) -> Result<Kind, String> {
    // Kept as written, wherever it points: nothing here follows it.
    let link = PathBuf::from(std::ffi::OsStr::from_bytes(&read_bytes(bundle)?));
    std::os::unix::fs::symlink(&link, target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    Ok(Kind::Link(link))
}

/// A file entry, written new (never through what is there); answers its kind and SHA-256.
fn unpack_file(bundle: &mut impl Read, target: &Path, bytes: &mut u64) -> Result<(Kind, [u8; 32]), String> {
    let created = |e: std::io::Error| format!("cannot create {}: {e}", target.display());
    let mode = u32::from_le_bytes(read_array(bundle)?) & 0o555;
    let length = u64::from_le_bytes(read_array(bundle)?);
    *bytes = bytes.saturating_add(length);
    if *bytes > MAX_BYTES {
        return Err(format!("it holds over {} GiB", MAX_BYTES >> 30));
    }
    let mut out =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600 | mode).open(target).map_err(created)?;
    let mut hashing = HashingWriter { inner: &mut out, hasher: Sha256::new() };
    let copied = std::io::copy(&mut bundle.take(length), &mut hashing).map_err(created)?;
    if copied != length {
        return Err(format!("it ends inside {}", target.display()));
    }
    Ok((Kind::File { mode }, hashing.hasher.finalize().into()))
}

/// A bundle's path: relative, plain names only (no `..`, no root, nothing empty).
fn bundle_path(bytes: &[u8]) -> Result<PathBuf, String> {
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(bytes));
    let plain = !bytes.is_empty()
        && !bytes.ends_with(b"/")
        && path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain { Ok(path) } else { Err(format!("the path {:?} is not a plain relative path", path.display())) }
}

fn read_array<const N: usize>(bundle: &mut impl Read) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    bundle.read_exact(&mut out).map_err(|_| "it ends inside an entry".to_string())?;
    Ok(out)
}

fn read_bytes(bundle: &mut impl Read) -> Result<Vec<u8>, String> {
    let length = u32::from_le_bytes(read_array(bundle)?) as usize;
    if length > MAX_PATH {
        return Err(format!("a path of {length} bytes (at most {MAX_PATH})"));
    }
    let mut out = vec![0u8; length];
    bundle.read_exact(&mut out).map_err(|_| "it ends inside an entry".to_string())?;
    Ok(out)
}

/// Hashes what it writes.
pub struct HashingWriter<'a, W: Write> {
    pub inner: &'a mut W,
    pub hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where `working_dir` points into the copy, when it is inside the source.
pub fn working_dir_in_copy(working_dir: &Path, source: &Path, copy: &Path) -> PathBuf {
    match working_dir.strip_prefix(source) {
        Ok(rest) => copy.join(rest),
        Err(_) => working_dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tug-source-{name}-{}", std::process::id()));
        let _ = remove_tree(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_edit_is_a_new_digest_and_each_revision_keeps_its_copy() {
        let root = temp("edit");
        let source = root.join("api");
        let state = root.join(".tug");
        std::fs::create_dir_all(source.join("pkg/__pycache__")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(source.join("app.py"), "print('v1')\n").unwrap();
        std::fs::write(source.join("pkg/__pycache__/x.pyc"), "junk").unwrap();
        std::os::unix::fs::symlink("app.py", source.join("main.py")).unwrap();
        let first = snapshot("api", &source, &state).unwrap();
        assert_eq!(std::fs::read_to_string(first.copy.join("app.py")).unwrap(), "print('v1')\n");
        assert!(!first.copy.join("pkg/__pycache__").exists(), "caches are not code");
        assert_eq!(std::fs::read_link(first.copy.join("main.py")).unwrap(), PathBuf::from("app.py"));
        assert!(std::fs::metadata(first.copy.join("app.py")).unwrap().permissions().readonly());
        // The same content: the same digest, the same copy.
        std::fs::write(source.join("pkg/__pycache__/x.pyc"), "other junk").unwrap();
        assert_eq!(snapshot("api", &source, &state).unwrap().digest, first.digest);
        // An edit: a new revision, and the old copy still holds the old code.
        std::fs::write(source.join("app.py"), "print('v2')\n").unwrap();
        let second = snapshot("api", &source, &state).unwrap();
        assert_ne!(second.digest, first.digest);
        assert_eq!(std::fs::read_to_string(second.copy.join("app.py")).unwrap(), "print('v2')\n");
        assert_eq!(std::fs::read_to_string(first.copy.join("app.py")).unwrap(), "print('v1')\n");
        // A private file stays private in its copy.
        std::fs::write(source.join("secret.env"), "TOKEN=x\n").unwrap();
        std::fs::set_permissions(source.join("secret.env"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let private = snapshot("api", &source, &state).unwrap();
        assert_eq!(std::fs::metadata(private.copy.join("secret.env")).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::metadata(state.join(REVISIONS)).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_file(source.join("secret.env")).unwrap();
        // Making a file executable is a change too.
        std::fs::set_permissions(source.join("app.py"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(snapshot("api", &source, &state).unwrap().digest, second.digest);
        remove_tree(&root).unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn the_state_folder_inside_the_source_is_left_out() {
        let root = temp("state");
        std::fs::write(root.join("app.py"), "x").unwrap();
        let state = root.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let snap = snapshot("svc", &root, &state).unwrap();
        assert!(snap.copy.join("app.py").exists());
        assert!(!snap.copy.join("state").exists());
        // Taking a snapshot again (the state folder now holds the copy) changes nothing.
        assert_eq!(snapshot("svc", &root, &state).unwrap().digest, snap.digest);
        remove_tree(&root).unwrap();
    }

    #[test]
    fn working_dir_follows_into_the_copy() {
        let copy = Path::new("/s/.tug/revisions/api/abc");
        assert_eq!(working_dir_in_copy(Path::new("/s/api/sub"), Path::new("/s/api"), copy), copy.join("sub"));
        assert_eq!(working_dir_in_copy(Path::new("/other"), Path::new("/s/api"), copy), PathBuf::from("/other"));
    }

    #[test]
    fn a_bundle_rebuilds_the_same_copy_and_a_crafted_one_is_refused_whole() {
        let root = temp("bundle");
        let source = root.join("api");
        std::fs::create_dir_all(source.join("pkg")).unwrap();
        std::fs::write(source.join("app.py"), "print('v1')\n").unwrap();
        std::fs::write(source.join("pkg/run.sh"), "exec true\n").unwrap();
        std::fs::set_permissions(source.join("pkg/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("../app.py", source.join("pkg/main.py")).unwrap();
        let here = root.join("client");
        let mut bundle = Vec::new();
        let sent = write_bundle(&source, &here, &mut bundle).unwrap();
        assert_eq!(sent, digest_only("api", &source, &here).unwrap().digest, "the revision's digest");
        let there = root.join("daemon");
        let copy = unpack_bundle("api", &mut bundle.as_slice(), &there).unwrap();
        assert_eq!(copy.digest, sent);
        assert_eq!(copy.digest, snapshot("api", &copy.copy, &root.join("again")).unwrap().digest, "same content");
        assert_eq!(std::fs::read_to_string(copy.copy.join("app.py")).unwrap(), "print('v1')\n");
        assert_eq!(std::fs::read_link(copy.copy.join("pkg/main.py")).unwrap(), PathBuf::from("../app.py"));
        assert_eq!(std::fs::metadata(copy.copy.join("pkg/run.sh")).unwrap().permissions().mode() & 0o777, 0o555);

        // Crafted bundles: each refused, and nothing is left in the revisions folder.
        let entry = |kind: u8, path: &[u8]| {
            let mut out = vec![kind];
            out.extend((path.len() as u32).to_le_bytes());
            out.extend(path);
            out
        };
        let file = |path: &[u8], content: &[u8]| {
            let mut out = entry(b'f', path);
            out.extend(0o444u32.to_le_bytes());
            out.extend((content.len() as u64).to_le_bytes());
            out.extend(content);
            out
        };
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("a parent path", vec![file(b"../evil", b"x")]),
            ("an absolute path", vec![file(b"/tmp/evil", b"x")]),
            (
                "a path through a link",
                vec![
                    entry(b'l', b"out").into_iter().chain(entry(0, b"/tmp")[1..].to_vec()).collect(),
                    file(b"out/evil", b"x"),
                ],
            ),
            ("a file outside any folder", vec![file(b"nowhere/evil", b"x")]),
            ("the same path twice", vec![file(b"a", b"x"), file(b"a", b"y")]),
            ("a truncated file", vec![file(b"a", b"xyz")[..20].to_vec()]),
            ("an unknown kind", vec![entry(b'z', b"a")]),
        ];
        for (what, parts) in cases {
            let mut crafted = BUNDLE_MAGIC.to_vec();
            crafted.extend(parts.concat());
            let refused = unpack_bundle("api", &mut crafted.as_slice(), &there);
            assert!(refused.is_err(), "{what} was accepted");
            let left: Vec<_> =
                std::fs::read_dir(there.join(REVISIONS).join("api")).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, [std::ffi::OsString::from(&sent)], "{what} left something");
        }
        assert!(!Path::new("/tmp/evil").exists());
        assert!(unpack_bundle("api", &mut b"not a bundle".as_slice(), &there).is_err());
        remove_tree(&root).unwrap();
    }

    #[test]
    fn a_file_is_refused_as_a_source() {
        let root = temp("file");
        std::fs::write(root.join("f"), "x").unwrap();
        assert!(snapshot("svc", &root.join("f"), &root).unwrap_err().contains("not a folder"));
        assert!(snapshot("svc", &root.join("missing"), &root).unwrap_err().contains("missing"));
        remove_tree(&root).unwrap();
    }
}
