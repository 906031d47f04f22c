//! File names, listings, and reading lines: what the writer, the reader and the follower share.

use std::collections::BTreeSet;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::split::boundary;
use crate::time::{TIME_LEN, parse_time};
use crate::{Stream, valid_name};

/// The longest line read from a file as one record; longer lines (only an edited file has them)
/// are read as several, so memory stays bounded.
pub(crate) const MAX_RECORD: usize = 1 << 20;

/// How much is read at once.
const CHUNK: usize = 64 * 1024;

/// What identifies a file whatever its name: device and inode.
pub(crate) type FileId = (u64, u64);

pub(crate) fn file_id(meta: &Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

pub(crate) fn current_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.log"))
}

pub(crate) fn rotated_path(dir: &Path, instance: &str, k: u32) -> PathBuf {
    dir.join(format!("{instance}.log.{k}"))
}

/// The instance a log file belongs to, and its number: 0 for the current file (`api-2.log`), `k`
/// for a rotated one (`api-2.log.<k>`). `None` for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<(&str, u32)> {
    let (instance, k) = match name.strip_suffix(".log") {
        Some(instance) => (instance, 0),
        None => {
            let (instance, k) = name.rsplit_once(".log.")?;
            // Only the names the writer makes: no sign, no leading zero.
            if k.starts_with('0') || !k.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (instance, k.parse().ok()?)
        }
    };
    valid_name(instance).then_some((instance, k))
}

/// The services that have a folder in `root`, sorted. None if `root` does not exist (yet).
pub(crate) fn list_services(root: &Path) -> io::Result<Vec<String>> {
    let mut services = Vec::new();
    for entry in read_dir_or_empty(root)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        // A symbolic link to a folder counts too.
        if valid_name(&name) && entry.path().is_dir() {
            services.push(name);
        }
    }
    services.sort();
    Ok(services)
}

/// The instances that have a log file, current or rotated, in a service's folder, sorted.
pub(crate) fn list_instances(dir: &Path) -> io::Result<BTreeSet<String>> {
    let mut instances = BTreeSet::new();
    for entry in read_dir_or_empty(dir)? {
        let name = entry?.file_name();
        if let Some((instance, _)) = name.to_str().and_then(parse_file_name) {
            instances.insert(instance.to_string());
        }
    }
    Ok(instances)
}

/// The entries of `dir`; none if it does not exist.
fn read_dir_or_empty(dir: &Path) -> io::Result<impl Iterator<Item = io::Result<fs::DirEntry>>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Some(entries).into_iter().flatten()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None.into_iter().flatten()),
        Err(e) => Err(e),
    }
}

/// A log file, open.
#[derive(Debug)]
pub(crate) struct Opened {
    pub file: File,
    pub id: FileId,
    pub len: u64,
    pub mtime: Option<SystemTime>,
    /// Whether it was the current file (`.log`) when opened, rather than a rotated one.
    pub current: bool,
}

fn open_existing(path: &Path) -> io::Result<Option<Opened>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    Ok(Some(Opened { id: file_id(&meta), len: meta.len(), mtime: meta.modified().ok(), file, current: false }))
}

/// The identity of the file at `path`, if there is one.
pub(crate) fn stat(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens all of an instance's log files, oldest first; the last is the current file when there is
/// one (there is none for a moment during a rotation).
///
/// The writer may rotate meanwhile. Names are opened from `.log.1` up, the way rotation moves
/// files (from the highest number down), so a file moved during the pass is met once or twice
/// (kept once), never missed, and the order stays right. A rotation that completes during the
/// pass replaces `.log`, which is checked afterwards: then the pass starts over.
pub(crate) fn open_files(dir: &Path, instance: &str) -> io::Result<Vec<Opened>> {
    let current_path = current_path(dir, instance);
    let mut files = Vec::new();
    for _attempt in 0..10 {
        files.clear();
        let current = open_existing(&current_path)?;
        let mut seen: Vec<FileId> = current.iter().map(|c| c.id).collect();
        // One more than the highest number listed: a rotation under way moves each file up by one.
        let highest = highest_rotated(dir, instance)?.saturating_add(1);
        for k in 1..=highest {
            if let Some(opened) = open_existing(&rotated_path(dir, instance, k))?
                && !seen.contains(&opened.id)
            {
                seen.push(opened.id);
                files.push(opened);
            }
        }
        files.reverse();
        let stable = stat(&current_path)?.map(|meta| file_id(&meta)) == current.as_ref().map(|c| c.id);
        if let Some(mut current) = current {
            current.current = true;
            files.push(current);
        }
        if stable {
            break;
        }
    }
    Ok(files)
}

fn highest_rotated(dir: &Path, instance: &str) -> io::Result<u32> {
    let mut highest = 0;
    for entry in read_dir_or_empty(dir)? {
        let name = entry?.file_name();
        if let Some((of, k)) = name.to_str().and_then(parse_file_name)
            && of == instance
        {
            highest = highest.max(k);
        }
    }
    Ok(highest)
}

/// Reads `file` from `*offset`, calling `line` with each line (without its `\n`) and moving
/// `*offset` past it, so that after an error it tells what was passed on. At the end, the rest (a
/// line without `\n`) is passed on too if the file is `whole` (rotated: it will not grow); if not,
/// it is a record being written and is left for later. A line longer than [`MAX_RECORD`] is
/// passed on in pieces.
pub(crate) fn read_lines(file: &File, offset: &mut u64, whole: bool, line: &mut impl FnMut(&[u8])) -> io::Result<()> {
    let mut chunk = vec![0; CHUNK];
    // The bytes from `*offset` to `pos`: the start of a line.
    let mut pending = Vec::new();
    let mut pos = *offset;
    loop {
        let read = match file.read_at(&mut chunk, pos) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pos += read as u64;
        let mut bytes = &chunk[..read];
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(newline);
            if pending.is_empty() && head.len() <= MAX_RECORD {
                line(head);
                *offset += head.len() as u64 + 1;
            } else {
                pending.extend_from_slice(head);
                pass_long(&mut pending, offset, line);
                line(&pending);
                *offset += pending.len() as u64 + 1;
                pending.clear();
            }
            bytes = rest.get(1..).unwrap_or_default();
        }
        pending.extend_from_slice(bytes);
        pass_long(&mut pending, offset, line);
    }
    if whole && !pending.is_empty() {
        line(&pending);
        *offset += pending.len() as u64;
    }
    Ok(())
}

/// Passes on the start of a line that is too long, until what is left fits.
fn pass_long(pending: &mut Vec<u8>, offset: &mut u64, line: &mut impl FnMut(&[u8])) {
    while pending.len() > MAX_RECORD {
        let cut = boundary(pending, MAX_RECORD);
        line(&pending[..cut]);
        *offset += cut as u64;
        pending.drain(..cut);
    }
}

/// Where the last complete line of `file` (`len` bytes long) ends: where to resume reading so as
/// to miss nothing written later, nor the end of a record being written now. A line without end
/// longer than [`MAX_RECORD`] is skipped.
pub(crate) fn end_of_last_line(file: &File, len: u64) -> io::Result<u64> {
    let mut chunk = vec![0; CHUNK];
    let mut end = len;
    while end > 0 && len - end < MAX_RECORD as u64 {
        let start = end.saturating_sub(CHUNK as u64);
        let Some(buf) = chunk.get_mut(..(end - start) as usize) else { break };
        match file.read_exact_at(buf, start) {
            Ok(()) => {}
            // Made shorter meanwhile (not by tug): start over from its start.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if let Some(newline) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(if end == 0 { 0 } else { len })
}

/// A record's parts: `<time> <stream> <text>`. `None` if the line is not a record.
pub(crate) fn parse_line(line: &[u8]) -> Option<(SystemTime, Stream, &[u8])> {
    let (time, rest) = line.split_at_checked(TIME_LEN)?;
    let time = parse_time(std::str::from_utf8(time).ok()?)?;
    let (stream, text) = match rest {
        [b' ', b'o', b'u', b't', text @ ..] => (Stream::Out, text),
        [b' ', b'e', b'r', b'r', text @ ..] => (Stream::Err, text),
        _ => return None,
    };
    let text = match text {
        [] => text,
        [b' ', text @ ..] => text,
        _ => return None,
    };
    Some((time, stream, text))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// A folder removed at the end of the test.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("tug-logs-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("make a temporary folder");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn lines_of(path: &Path, offset: u64, whole: bool) -> (Vec<Vec<u8>>, u64) {
        let file = File::open(path).expect("open");
        let mut lines = Vec::new();
        let mut offset = offset;
        read_lines(&file, &mut offset, whole, &mut |l: &[u8]| lines.push(l.to_vec())).expect("read");
        (lines, offset)
    }

    #[test]
    fn names_of_files() {
        assert_eq!(parse_file_name("api-2.log"), Some(("api-2", 0)));
        assert_eq!(parse_file_name("api-2.log.1"), Some(("api-2", 1)));
        assert_eq!(parse_file_name("api-2.log.12"), Some(("api-2", 12)));
        for other in
            ["api-2.log.", "api-2.log.0", "api-2.log.01", "api-2.log.+1", "api-2.txt", ".log", "Api.log", "a.b.log"]
        {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn reads_complete_lines_only_unless_whole() {
        let tmp = TempDir::new();
        let path = tmp.path().join("f");
        fs::write(&path, "one\n\ntwo\nthr").expect("write");
        let (lines, offset) = lines_of(&path, 0, false);
        assert_eq!(lines, [b"one".to_vec(), vec![], b"two".to_vec()]);
        assert_eq!(offset, 9);
        let (lines, offset) = lines_of(&path, offset, true);
        assert_eq!(lines, [b"thr".to_vec()]);
        assert_eq!(offset, 12);
        assert_eq!(lines_of(&path, 12, true), (vec![], 12));
    }

    #[test]
    fn cuts_huge_lines_in_files() {
        let tmp = TempDir::new();
        let path = tmp.path().join("f");
        let mut content = vec![b'a'; MAX_RECORD * 2 + 10];
        content.extend_from_slice(b"\nnext\n");
        content.extend(vec![b'b'; MAX_RECORD + 5]);
        fs::write(&path, &content).expect("write");
        let (lines, offset) = lines_of(&path, 0, false);
        let lens: Vec<usize> = lines.iter().map(Vec::len).collect();
        // The line that has no end yet is passed on as far as it is too long.
        assert_eq!(lens, [MAX_RECORD, MAX_RECORD, 10, 4, MAX_RECORD]);
        assert_eq!(offset, content.len() as u64 - 5);
        assert_eq!(lines_of(&path, offset, true).0, [b"bbbbb".to_vec()]);
    }

    #[test]
    fn finds_the_end_of_the_last_line() {
        let tmp = TempDir::new();
        let path = tmp.path().join("f");
        let end = |content: &[u8]| {
            fs::write(&path, content).expect("write");
            let file = File::open(&path).expect("open");
            end_of_last_line(&file, content.len() as u64).expect("read")
        };
        assert_eq!(end(b""), 0);
        assert_eq!(end(b"abc"), 0);
        assert_eq!(end(b"abc\n"), 4);
        assert_eq!(end(b"abc\nde"), 4);
        let mut long = b"x\n".to_vec();
        long.extend(vec![b'y'; 200_000]);
        assert_eq!(end(&long), 2);
        let mut huge = b"x\n".to_vec();
        huge.extend(vec![b'y'; MAX_RECORD + 10]);
        assert_eq!(end(&huge), huge.len() as u64);
    }

    #[test]
    fn parses_records() {
        let t = UNIX_EPOCH + Duration::new(1_795_341_845, 123_456_000);
        assert_eq!(parse_line(b"2026-11-22T10:04:05.123456Z out hi there"), Some((t, Stream::Out, &b"hi there"[..])));
        assert_eq!(parse_line(b"2026-11-22T10:04:05.123456Z err "), Some((t, Stream::Err, &b""[..])));
        assert_eq!(parse_line(b"2026-11-22T10:04:05.123456Z err"), Some((t, Stream::Err, &b""[..])));
        assert_eq!(parse_line(b"2026-11-22T10:04:05.123456Z out \xff"), Some((t, Stream::Out, &b"\xff"[..])));
        for bad in [
            &b""[..],
            b"hello",
            b"2026-11-22T10:04:05.123456Z",
            b"2026-11-22T10:04:05.123456Z outx",
            b"2026-11-22T10:04:05.123456Z ERR x",
            b"2026-11-22T10:04:05.123456Z  out x",
            b"2026-11-22T10:04:05Z out hello",
            b"2026-13-22T10:04:05.123456Z out x",
            b"\xff\xfe26-11-22T10:04:05.123456Z out x",
        ] {
            assert_eq!(parse_line(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lists_services_and_instances() {
        let tmp = TempDir::new();
        assert!(list_services(&tmp.path().join("missing")).expect("list").is_empty());
        for dir in ["api", "web", "Bad", ".hidden"] {
            fs::create_dir_all(tmp.path().join(dir)).expect("mkdir");
        }
        fs::write(tmp.path().join("file"), "").expect("write");
        for name in ["api-1.log", "api-1.log.1", "api-2.log.3", "api-3.txt", "x.log.0"] {
            fs::write(tmp.path().join("api").join(name), "").expect("write");
        }
        assert_eq!(list_services(tmp.path()).expect("list"), ["api", "web"]);
        let instances: Vec<String> = list_instances(&tmp.path().join("api")).expect("list").into_iter().collect();
        assert_eq!(instances, ["api-1", "api-2"]);
        assert!(list_instances(&tmp.path().join("nope")).expect("list").is_empty());
    }

    #[test]
    fn opens_files_oldest_first() {
        let tmp = TempDir::new();
        for (name, text) in
            [("a-1.log", "c"), ("a-1.log.1", "b"), ("a-1.log.2", "a"), ("a-1.log.4", "gap"), ("a-2.log.1", "x")]
        {
            fs::write(tmp.path().join(name), text).expect("write");
        }
        let contents = |instance: &str| -> Vec<(String, bool)> {
            open_files(tmp.path(), instance)
                .expect("open")
                .iter()
                .map(|o| {
                    let mut buf = vec![0; o.len as usize];
                    o.file.read_exact_at(&mut buf, 0).expect("read");
                    (String::from_utf8(buf).expect("utf8"), o.current)
                })
                .collect()
        };
        let expected = [("gap", false), ("a", false), ("b", false), ("c", true)];
        assert_eq!(contents("a-1"), expected.map(|(t, c)| (t.to_string(), c)));
        assert_eq!(contents("a-2"), [("x".to_string(), false)]);
        assert!(contents("a-3").is_empty());
    }
}
