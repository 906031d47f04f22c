//! Writing an instance's log file, with rotation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::files::{current_path, parse_file_name, rotated_path};
use crate::time::time_bytes;
use crate::{Stream, valid_name};

/// Records are written out when this much is buffered, even before [`LogWriter::flush`].
const FLUSH_AT: usize = 64 * 1024;

/// Writes one instance's log: both of its streams, into `<logs_dir>/<service>/<instance>.log`,
/// rotated as the crate documentation describes.
///
/// Records are buffered and written out by [`flush`](Self::flush) (the daemon calls it after each
/// batch of lines from one read), when 64 KiB are buffered, before a rotation, and on drop. Writing
/// out is one `write` to a file opened for appending: the daemon never waits on a reader. Nothing
/// here panics; after an error the writer stays usable.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    instance: String,
    current: PathBuf,
    file: File,
    /// Bytes in the current file, counting those still in `buf`.
    size: u64,
    buf: Vec<u8>,
    max_size: u64,
    max_files: u32,
    /// A write failed, maybe part-way: the file may end inside a record.
    damaged: bool,
}

impl LogWriter {
    /// Opens the log of `instance` of `service` for appending (creating the folder and the file if
    /// needed), to be rotated before it grows past `max_size` bytes, keeping at most `max_files`
    /// files (the current one included; 0 counts as 1). Rotated files beyond `max_files` (from a
    /// larger setting before) are removed.
    pub fn open(logs_dir: &Path, service: &str, instance: &str, max_size: u64, max_files: u32) -> io::Result<Self> {
        for (what, name) in [("service", service), ("instance", instance)] {
            if !valid_name(name) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid {what} name {name:?}")));
            }
        }
        let dir = logs_dir.join(service);
        fs::create_dir_all(&dir)?;
        let current = current_path(&dir, instance);
        let file = open_append(&current)?;
        let mut writer = Self {
            dir,
            instance: instance.to_string(),
            current,
            file,
            size: 0,
            buf: Vec::with_capacity(FLUSH_AT),
            max_size,
            max_files: max_files.max(1),
            damaged: false,
        };
        // The daemon may have stopped in the middle of a record: end it, so the next one starts on
        // a line of its own.
        writer.repair()?;
        writer.remove_extra_files();
        Ok(writer)
    }

    /// Writes one line of `stream` read at `time`. `line` should be a line without its newline, as
    /// [`LineSplitter`](crate::LineSplitter) gives them; a `\r` at its end is dropped, bytes that
    /// are not UTF-8 are replaced, and a `\n` inside it (or at its end) ends a record (so the text
    /// of a record never holds one). Rotates first if the record would take the file past
    /// `max_size`. After an error the record is still written to the file the writer has, if it
    /// can be.
    pub fn write(&mut self, time: SystemTime, stream: Stream, line: &[u8]) -> io::Result<()> {
        let stamp = time_bytes(time);
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let mut result = Ok(());
        for text in line.split(|&b| b == b'\n') {
            let written = self.record(&stamp, stream, text);
            if result.is_ok() {
                result = written;
            }
        }
        result
    }

    /// Writes out the buffered records.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_out(self.buf.len())
    }

    /// The current file: `<logs_dir>/<service>/<instance>.log`.
    pub fn path(&self) -> &Path {
        &self.current
    }

    fn record(&mut self, stamp: &[u8], stream: Stream, text: &[u8]) -> io::Result<()> {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let start = self.buf.len();
        self.buf.extend_from_slice(stamp);
        self.buf.push(b' ');
        self.buf.extend_from_slice(stream.as_str().as_bytes());
        self.buf.push(b' ');
        for chunk in text.utf8_chunks() {
            self.buf.extend_from_slice(chunk.valid().as_bytes());
            if !chunk.invalid().is_empty() {
                self.buf.extend_from_slice(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
        self.buf.push(b'\n');
        let len = (self.buf.len() - start) as u64;

        let mut result = Ok(());
        if self.size > 0 && self.size.saturating_add(len) > self.max_size {
            result = self.rotate(start);
        }
        self.size = self.size.saturating_add(len);
        if self.buf.len() >= FLUSH_AT {
            let flushed = self.flush();
            if result.is_ok() {
                result = flushed;
            }
        }
        result
    }

    /// Writes out the first `end` buffered bytes. They leave the buffer even if that fails: the
    /// daemon must not hold on to output it cannot store.
    fn write_out(&mut self, end: usize) -> io::Result<()> {
        let mut result = if self.damaged { self.repair() } else { Ok(()) };
        if result.is_ok() {
            result = self.file.write_all(&self.buf[..end]);
        }
        self.buf.drain(..end);
        if result.is_err() {
            self.damaged = true;
        }
        result
    }

    /// Makes sure the file ends with a newline, and counts its size again.
    fn repair(&mut self) -> io::Result<()> {
        let mut len = self.file.metadata()?.len();
        let mut last = [0];
        if len > 0 && self.file.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n' {
            self.file.write_all(b"\n")?;
            len += 1;
        }
        self.size = len + self.buf.len() as u64;
        self.damaged = false;
        Ok(())
    }

    /// Rotates the files, writing out the records buffered before `start` into the old one first.
    fn rotate(&mut self, start: usize) -> io::Result<()> {
        let written = self.write_out(start);
        // From here on the size is that of a new file, even if what follows fails, so that a
        // rotation that fails is tried again only after another `max_size` bytes.
        self.size = 0;
        written?;
        if self.max_files >= 2 {
            let oldest = self.max_files - 1;
            remove_if_exists(&rotated_path(&self.dir, &self.instance, oldest))?;
            for k in (1..oldest).rev() {
                rename_if_exists(
                    &rotated_path(&self.dir, &self.instance, k),
                    &rotated_path(&self.dir, &self.instance, k + 1),
                )?;
            }
            rename_if_exists(&self.current, &rotated_path(&self.dir, &self.instance, 1))?;
        } else {
            remove_if_exists(&self.current)?;
        }
        // The folder may have been removed (someone cleaned the logs): make it again.
        fs::create_dir_all(&self.dir)?;
        self.file = open_append(&self.current)?;
        Ok(())
    }

    /// Removes rotated files numbered `max_files` and above. Best effort: they only take room.
    fn remove_extra_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((instance, k)) = name.to_str().and_then(parse_file_name) else { continue };
            if instance == self.instance && k >= self.max_files {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Nothing can report an error from here; the records are as good as lost either way.
        let _ = self.flush();
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // Readable too, to look at the last byte when repairing.
    OpenOptions::new().read(true).append(true).create(true).open(path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::files::tests::TempDir;

    fn at(micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_341_845) + Duration::from_micros(micros)
    }

    fn files_of(dir: &Path) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = fs::read_dir(dir)
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                let text = fs::read_to_string(e.path()).expect("read");
                (e.file_name().to_string_lossy().into_owned(), text)
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn writes_records() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 1 << 20, 3).expect("open");
        w.write(at(0), Stream::Out, b"hello").expect("write");
        w.write(at(1), Stream::Err, b"crlf\r").expect("write");
        w.write(at(2), Stream::Out, b"").expect("write");
        w.write(at(3), Stream::Out, b"bad \xff\xfe utf8 \xe2\x82").expect("write");
        w.write(at(4), Stream::Err, b"two\nlines\n").expect("write");
        // Nothing reaches the file before a flush.
        assert_eq!(fs::read_to_string(w.path()).expect("read"), "");
        w.flush().expect("flush");
        assert_eq!(
            fs::read_to_string(tmp.path().join("api/api-1.log")).expect("read"),
            "2026-11-22T10:04:05.000000Z out hello\n\
             2026-11-22T10:04:05.000001Z err crlf\n\
             2026-11-22T10:04:05.000002Z out \n\
             2026-11-22T10:04:05.000003Z out bad \u{fffd}\u{fffd} utf8 \u{fffd}\n\
             2026-11-22T10:04:05.000004Z err two\n\
             2026-11-22T10:04:05.000004Z err lines\n"
        );
    }

    #[test]
    fn rejects_names_that_are_not_names() {
        let tmp = TempDir::new();
        for (service, instance) in [("../x", "x-1"), ("api", "../api-1"), ("", "a"), ("api", "API-1")] {
            let error = LogWriter::open(tmp.path(), service, instance, 100, 2).expect_err(instance);
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn appends_and_ends_a_record_cut_short() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("api");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("api-1.log"), "2026-11-22T10:04:05.000000Z out whole\n2026-11-22T10:04:05.0")
            .expect("write");
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 1 << 20, 3).expect("open");
        w.write(at(9), Stream::Out, b"next").expect("write");
        drop(w); // flushes
        assert_eq!(
            fs::read_to_string(dir.join("api-1.log")).expect("read"),
            "2026-11-22T10:04:05.000000Z out whole\n2026-11-22T10:04:05.0\n2026-11-22T10:04:05.000009Z out next\n"
        );
    }

    #[test]
    fn rotation_keeps_max_files_of_at_most_max_size() {
        let tmp = TempDir::new();
        // Each record is 27 + 5 + 4 + 1 = 37 bytes: three fit in 120.
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 120, 3).expect("open");
        for i in 0..20u64 {
            w.write(at(i), Stream::Out, format!("{i:04}").as_bytes()).expect("write");
            if i % 4 == 0 {
                w.flush().expect("flush");
            }
        }
        w.flush().expect("flush");
        let files = files_of(&tmp.path().join("api"));
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["api-1.log", "api-1.log.1", "api-1.log.2"]);
        for (name, text) in &files {
            assert!(text.len() <= 120, "{name} has {} bytes", text.len());
        }
        let texts = |name: &str| -> Vec<String> {
            let text = &files.iter().find(|(n, _)| n == name).expect(name).1;
            text.lines().map(|l| l[32..].to_string()).collect()
        };
        // 20 records, 3 to a file: the last 8 remain, oldest in the highest number.
        assert_eq!(texts("api-1.log.2"), ["0012", "0013", "0014"]);
        assert_eq!(texts("api-1.log.1"), ["0015", "0016", "0017"]);
        assert_eq!(texts("api-1.log"), ["0018", "0019"]);
    }

    #[test]
    fn an_oversized_record_gets_a_file_of_its_own() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 50, 4).expect("open");
        w.write(at(0), Stream::Out, b"small").expect("write");
        w.write(at(1), Stream::Out, &[b'x'; 100]).expect("write");
        w.write(at(2), Stream::Out, b"small").expect("write");
        w.flush().expect("flush");
        let files = files_of(&tmp.path().join("api"));
        let sizes: Vec<(&str, usize)> = files.iter().map(|(n, t)| (n.as_str(), t.len())).collect();
        assert_eq!(sizes, [("api-1.log", 38), ("api-1.log.1", 133), ("api-1.log.2", 38)]);
    }

    #[test]
    fn one_file_starts_over() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 80, 1).expect("open");
        for i in 0..5u64 {
            w.write(at(i), Stream::Out, format!("{i:04}").as_bytes()).expect("write");
        }
        w.flush().expect("flush");
        let files = files_of(&tmp.path().join("api"));
        assert_eq!(files, [("api-1.log".to_string(), "2026-11-22T10:04:05.000004Z out 0004\n".to_string())]);
    }

    #[test]
    fn fewer_max_files_than_before_removes_the_extra() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("api");
        fs::create_dir_all(&dir).expect("mkdir");
        for name in ["api-1.log.1", "api-1.log.2", "api-1.log.3", "api-10.log.3", "notes.txt"] {
            fs::write(dir.join(name), "x\n").expect("write");
        }
        let _w = LogWriter::open(tmp.path(), "api", "api-1", 80, 3).expect("open");
        let names: Vec<String> = files_of(&dir).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["api-1.log", "api-1.log.1", "api-1.log.2", "api-10.log.3", "notes.txt"]);
    }

    #[test]
    fn writes_out_a_large_batch_without_a_flush() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 1 << 30, 2).expect("open");
        let line = [b'z'; 1000];
        for i in 0..100 {
            w.write(at(i), Stream::Out, &line).expect("write");
        }
        let on_disk = fs::metadata(w.path()).expect("stat").len();
        assert!(on_disk >= 64 * 1024, "{on_disk}");
        assert!(w.buf.len() < FLUSH_AT);
    }

    #[test]
    fn a_full_disk_neither_panics_nor_holds_output() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("api");
        fs::create_dir_all(&dir).expect("mkdir");
        std::os::unix::fs::symlink("/dev/full", dir.join("api-1.log")).expect("symlink");
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 1 << 20, 2).expect("open");
        for i in 0..3 {
            w.write(at(i), Stream::Out, &[b'x'; 40_000]).ok();
            assert!(w.flush().is_err());
            assert!(w.buf.is_empty());
        }
        // A large batch fails as it is written out, without a flush.
        let errors = (0..10).filter(|&i| w.write(at(i), Stream::Out, &[b'x'; 40_000]).is_err()).count();
        assert!(errors >= 4, "{errors}");
        assert!(w.buf.len() < FLUSH_AT);
    }

    #[test]
    fn survives_its_folder_being_removed() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 40, 2).expect("open");
        w.write(at(0), Stream::Out, b"one").expect("write");
        w.flush().expect("flush");
        fs::remove_dir_all(tmp.path().join("api")).expect("rm");
        w.write(at(1), Stream::Out, b"two").expect("write");
        w.flush().expect("flush");
        assert_eq!(fs::read_to_string(w.path()).expect("read"), "2026-11-22T10:04:05.000001Z out two\n");
    }
}
