//! Instance log files: what tug's daemon writes and `tug logs` (and the foreground `tug up`) reads.
//!
//! The daemon reads each instance's stdout and stderr from pipes, cuts the bytes into lines with a
//! [`LineSplitter`] (one per stream) and writes each line with the instance's [`LogWriter`]. The CLI
//! reads the files with [`read`] and follows them with a [`Follower`]. This comment is the contract
//! between the two.
//!
//! # Files
//!
//! ```text
//! <logs_dir>/<service>/<instance>.log       the current file: the only one ever written to
//! <logs_dir>/<service>/<instance>.log.1     the newest rotated file
//! <logs_dir>/<service>/<instance>.log.2
//! ...
//! <logs_dir>/<service>/<instance>.log.<N-1> the oldest, where N is `logs.max_files`
//! ```
//!
//! The daemon's `logs_dir` is `.tug/logs`. Service and instance names match `[a-z0-9][a-z0-9_-]*`
//! (instances are `<service>-<n>`), so the service is the folder's name and the instance the file's
//! name before `.log`. Both streams of an instance go to the same file, in the order the daemon read
//! them.
//!
//! **Rotation.** Before a record that would take the current file past `logs.max_size` bytes, unless
//! the file is empty (so every file holds at least one record, and a single record larger than
//! `max_size` makes a file larger than `max_size`), the writer writes out what it buffered, then:
//! removes `.log.<N-1>`, renames each `.log.<k>` to `.log.<k+1>` (highest first), renames `.log` to
//! `.log.1` and creates a new, empty `.log`. With `max_files` = 1 it removes `.log` and creates a new
//! one. So `max_files` counts the current file, a rotated file never changes again, and records are
//! only ever appended, whole, to the current file.
//!
//! # Records
//!
//! One record per line, every line ends with `\n`:
//!
//! ```text
//! <time> <stream> <text>\n
//! 2026-11-22T10:04:05.123456Z out listening on :8080
//! 2026-11-22T10:04:05.123460Z err warning: no cache
//! ```
//!
//! - `time`: when the daemon read the line; RFC 3339 in UTC with exactly six decimals and `Z`, always
//!   27 bytes, so comparing times as strings compares them in time.
//! - `stream`: `out` (stdout) or `err` (stderr).
//! - `text`: the line without its `\n` and without a `\r` before it, as UTF-8 (invalid bytes are
//!   replaced with U+FFFD). It never contains `\n`. It may be empty: the space before it is always
//!   there.
//!
//! A line longer than the splitter's limit (16 KiB by default) is written as several consecutive
//! records, each at most that long and cut at a character boundary where one is near: there is no
//! continuation marker, readers show them as consecutive lines.
//!
//! # Reading
//!
//! What readers of these files must do (and what this crate's readers do):
//!
//! - Read the current file only up to its last `\n`: anything after it is a record being written.
//!   A rotated file is read to its end.
//! - Treat a line that does not parse as a record (someone edited the file) as text: stream `out`,
//!   and the time of the previous record read from the same file (the Unix epoch if there is
//!   none).
//! - Bound memory: a line longer than 1 MiB is read as several records of at most 1 MiB.
//! - Follow by file identity (device and inode), not by name: when `.log` is a different file than
//!   the one being read, that one was rotated: read it to its end, then the files newer than it, then
//!   the new current file from its start.

mod files;
mod read;
mod split;
mod time;
mod write;

pub use read::{Follower, Record, Selector, instances, read};
pub use split::{DEFAULT_MAX_LINE, LineSplitter};
pub use time::{format_time, parse_since, parse_time};
pub use write::LogWriter;

use std::fmt;

/// Which of an instance's output streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

impl Stream {
    /// The name used in log files and output: `out` or `err`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` can be a service or instance name: `[a-z0-9][a-z0-9_-]*`. Names become path
/// components, so this is also what keeps them inside the logs folder.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["api", "api-2", "a", "0", "my_service-10"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-api", "_x", "Api", "a.b", "a/b", "..", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn stream_names() {
        assert_eq!(Stream::Out.to_string(), "out");
        assert_eq!(Stream::Err.as_str(), "err");
    }
}
