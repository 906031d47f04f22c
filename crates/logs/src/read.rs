//! Reading instance logs, merged in time order, and following them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Stream;
use crate::files::{
    FileId, Opened, current_path, end_of_last_line, file_id, list_instances, list_services, open_files, parse_line,
    read_lines, stat,
};

/// One line of an instance's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When the daemon read the line (microseconds).
    pub time: SystemTime,
    pub service: String,
    pub instance: String,
    pub stream: Stream,
    pub text: String,
}

/// Which instances to read: all of them, or those named. A name selects the service of that name
/// (all its instances, including replicas that appear later) or the instance of that name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    names: Vec<String>,
}

impl Selector {
    /// Every instance of every service.
    pub fn all() -> Self {
        Self::default()
    }

    /// The services and instances named; no names selects everything.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { names: names.into_iter().map(Into::into).collect() }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn matches(&self, service: &str, instance: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|name| name == service || name == instance)
    }

    /// The names that match no service and no instance with logs in `logs_dir`, in the order
    /// given, so the CLI can say "no service or instance named X". A service counts once it has a
    /// folder, even an empty one.
    pub fn unmatched(&self, logs_dir: &Path) -> io::Result<Vec<String>> {
        if self.names.is_empty() {
            return Ok(Vec::new());
        }
        let services = list_services(logs_dir)?;
        let mut instances = BTreeSet::new();
        for service in &services {
            instances.append(&mut list_instances(&logs_dir.join(service))?);
        }
        Ok(self.names.iter().filter(|name| !services.contains(name) && !instances.contains(*name)).cloned().collect())
    }
}

/// Every instance that has logs in `logs_dir`, as (service, instance), sorted.
pub fn instances(logs_dir: &Path) -> io::Result<Vec<(String, String)>> {
    let mut all = Vec::new();
    for service in list_services(logs_dir)? {
        let instances = list_instances(&logs_dir.join(&service))?;
        all.extend(instances.into_iter().map(|instance| (service.clone(), instance)));
    }
    Ok(all)
}

/// Reads the selected instances' logs as they are on disk: for each instance its rotated files,
/// oldest first, then its current file up to its last complete line; all instances merged by time
/// (an instance's own records stay in file order; equal times go by service, then instance).
///
/// `since` drops records older than it; then `tail: Some(n)` keeps each instance's last `n`
/// records (like `docker compose logs --tail`). Only the files needed are read: with `--tail`,
/// older files are read only if the newer ones hold fewer than `n` records; with `--since`, files
/// last written well before it are skipped.
pub fn read(
    logs_dir: &Path,
    selector: &Selector,
    tail: Option<usize>,
    since: Option<SystemTime>,
) -> io::Result<Vec<Record>> {
    Ok(Follower::read_then_follow(logs_dir, selector.clone(), tail, since)?.0)
}

/// A file last modified this long before `--since` holds nothing as recent: records are stamped
/// just before they are written, and file times may lag the clock a little.
const SKIP_MARGIN: Duration = Duration::from_secs(1);

/// Follows the selected instances' logs: each [`poll`](Self::poll) returns the records written
/// since the last one, across rotations, including those of instances whose files appear later
/// (new replicas; their files are read from the start).
///
/// Polling is cheap when nothing changed: one `stat` for each instance's current file and for each
/// folder. A rotation is noticed because `.log` is then another file than the one held open; the
/// file held open is read to its end (even if it was removed meanwhile), then the files newer than
/// it, then the new current file.
///
/// Limit: if more than `max_files - 1` rotations happen between two polls, the files that were
/// rotated away and removed in between were never opened, and their records are lost (the file
/// held open is still read to its end). At 100 ms between polls that takes `max_files - 1` times
/// `max_size` bytes written in 100 ms.
#[derive(Debug)]
pub struct Follower {
    root: PathBuf,
    selector: Selector,
    root_watch: DirWatch,
    /// The service folders seen.
    services: BTreeMap<String, DirWatch>,
    /// The selected instances seen, by (service, instance).
    instances: BTreeMap<(String, String), Tracked>,
    /// An error met by a poll that had records to return: returned by the next poll.
    error: Option<io::Error>,
}

impl Follower {
    /// Follows from the end of what is there now: only records written later are returned (a
    /// record that is being written now is returned once complete).
    pub fn from_end(logs_dir: &Path, selector: Selector) -> io::Result<Self> {
        Ok(Self::read_then_follow(logs_dir, selector, Some(0), None)?.1)
    }

    /// [`read`], then follows from exactly where the reading stopped in each file, so that
    /// `tug logs -f` neither misses nor repeats a record written meanwhile.
    pub fn read_then_follow(
        logs_dir: &Path,
        selector: Selector,
        tail: Option<usize>,
        since: Option<SystemTime>,
    ) -> io::Result<(Vec<Record>, Self)> {
        let mut follower = Self {
            root: logs_dir.to_path_buf(),
            selector,
            root_watch: DirWatch::new(logs_dir.to_path_buf()),
            services: BTreeMap::new(),
            instances: BTreeMap::new(),
            error: None,
        };
        // Each folder is looked at before it is listed, so that what appears later is found.
        follower.root_watch.needs_listing()?;
        let mut groups = Vec::new();
        for service in list_services(logs_dir)? {
            let mut watch = DirWatch::new(logs_dir.join(&service));
            watch.needs_listing()?;
            for instance in list_instances(&watch.dir)? {
                if follower.selector.matches(&service, &instance) {
                    let mut tracked = Tracked::new(&watch.dir, &service, &instance);
                    groups.push(tracked.read_existing(tail, since)?);
                    follower.instances.insert((service.clone(), instance), tracked);
                }
            }
            follower.services.insert(service, watch);
        }
        Ok((merge(groups), follower))
    }

    /// The records written since the last poll, in time order.
    ///
    /// After an error with some instance, the other instances are still read; if there are
    /// records, they are returned and the error is returned by the next call. Polling again after
    /// an error tries again.
    pub fn poll(&mut self) -> io::Result<Vec<Record>> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let mut groups = Vec::new();
        let mut error = self.discover().err();
        for tracked in self.instances.values_mut() {
            let mut records = Vec::new();
            let polled = tracked.poll(&mut records);
            if !records.is_empty() {
                groups.push(records);
            }
            if let Err(e) = polled {
                error.get_or_insert(e);
            }
        }
        let records = merge(groups);
        match error {
            Some(error) if records.is_empty() => Err(error),
            error => {
                self.error = error;
                Ok(records)
            }
        }
    }

    /// Finds the instances that appeared since the last poll, listing only folders that changed.
    fn discover(&mut self) -> io::Result<()> {
        if self.root_watch.needs_listing()? {
            for service in list_services(&self.root)? {
                let dir = self.root.join(&service);
                self.services.entry(service).or_insert_with(|| DirWatch::new(dir));
            }
        }
        for (service, watch) in &mut self.services {
            if !watch.needs_listing()? {
                continue;
            }
            for instance in list_instances(&watch.dir)? {
                if self.selector.matches(service, &instance) {
                    let dir = &watch.dir;
                    self.instances
                        .entry((service.clone(), instance))
                        .or_insert_with_key(|(s, i)| Tracked::new(dir, s, i));
                }
            }
        }
        Ok(())
    }
}

/// Whether a folder may have new entries, from its modification time.
#[derive(Debug)]
struct DirWatch {
    dir: PathBuf,
    /// The folder's modification time when it was last listed.
    mtime: Option<SystemTime>,
    /// When it was last listed (taken before looking at it).
    listed: Option<SystemTime>,
}

impl DirWatch {
    fn new(dir: PathBuf) -> Self {
        Self { dir, mtime: None, listed: None }
    }

    /// Whether to list the folder (now, after this call). A change in the same tick of the file
    /// system's clock as the last listing leaves the modification time as it was, so the folder
    /// is listed again until a listing is clearly later than its last change.
    fn needs_listing(&mut self) -> io::Result<bool> {
        let now = SystemTime::now();
        let Some(meta) = stat(&self.dir)? else {
            self.mtime = None;
            return Ok(false);
        };
        let mtime = meta.modified().ok();
        let settled = match (mtime, self.mtime, self.listed) {
            (Some(mtime), Some(seen), Some(listed)) => mtime == seen && listed >= mtime + SKIP_MARGIN,
            _ => false,
        };
        if !settled {
            self.mtime = mtime;
            self.listed = Some(now);
        }
        Ok(!settled)
    }
}

/// One instance being followed.
#[derive(Debug)]
struct Tracked {
    service: String,
    instance: String,
    dir: PathBuf,
    current: PathBuf,
    /// The newest file read so far, and how far. `None` until the instance has a file.
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    file: File,
    id: FileId,
    /// Where the next line starts.
    offset: u64,
    /// The time of the last record read, for lines that are not records.
    prev: SystemTime,
}

impl Held {
    fn new(opened: Opened) -> Self {
        Self { file: opened.file, id: opened.id, offset: 0, prev: UNIX_EPOCH }
    }
}

impl Tracked {
    fn new(dir: &Path, service: &str, instance: &str) -> Self {
        Self {
            service: service.to_string(),
            instance: instance.to_string(),
            dir: dir.to_path_buf(),
            current: current_path(dir, instance),
            held: None,
        }
    }

    /// Reads the files there are now, newest first, as far as `tail` needs, and holds the newest.
    fn read_existing(&mut self, tail: Option<usize>, since: Option<SystemTime>) -> io::Result<Vec<Record>> {
        let files = open_files(&self.dir, &self.instance)?;
        let mut remaining = tail;
        let mut newest_first = Vec::new();
        for (newer, opened) in files.into_iter().rev().enumerate() {
            let whole = !opened.current;
            let len = opened.len;
            let before_since = since.zip(opened.mtime).is_some_and(|(since, mtime)| mtime + SKIP_MARGIN < since);
            let mut held = Held::new(opened);
            if remaining == Some(0) || before_since {
                // Skipped: only the newest file matters, to know where to follow from.
                if newer == 0 {
                    held.offset = if whole { len } else { end_of_last_line(&held.file, len)? };
                }
            } else {
                let mut records = VecDeque::new();
                read_records(&mut held, whole, &self.service, &self.instance, &mut |record| {
                    if since.is_some_and(|since| record.time < since) {
                        return;
                    }
                    if remaining.is_some_and(|n| records.len() >= n) {
                        records.pop_front();
                    }
                    records.push_back(record);
                })?;
                if let Some(n) = &mut remaining {
                    *n -= records.len().min(*n);
                }
                newest_first.push(Vec::from(records));
            }
            if newer == 0 {
                self.held = Some(held);
            }
        }
        Ok(newest_first.into_iter().rev().flatten().collect())
    }

    /// Reads what was written since the last poll into `out`.
    fn poll(&mut self, out: &mut Vec<Record>) -> io::Result<()> {
        let now = stat(&self.current)?;
        if self.held.is_none() && now.is_none() {
            // No file yet (or for a moment during a rotation): nothing to read.
            return Ok(());
        }
        let mut sink = |record: Record| out.push(record);
        if let Some(held) = &mut self.held {
            match &now {
                Some(meta) if file_id(meta) == held.id => {
                    if meta.len() < held.offset {
                        // Made shorter in place, which tug never does: read it again from the start.
                        held.offset = 0;
                    }
                    if meta.len() > held.offset {
                        read_records(held, false, &self.service, &self.instance, &mut sink)?;
                    }
                    return Ok(());
                }
                // Between a rotation's rename and the new file (or the logs were removed): what
                // is held may still grow.
                None => return read_records(held, false, &self.service, &self.instance, &mut sink),
                // Another file is the current one: the one held was rotated and no longer grows.
                Some(_) => read_records(held, true, &self.service, &self.instance, &mut sink)?,
            }
        }
        let files = open_files(&self.dir, &self.instance)?;
        // The files newer than the one held; all of them if it is gone (it was the oldest) or
        // there was none.
        let newer =
            self.held.as_ref().and_then(|held| files.iter().position(|f| f.id == held.id)).map_or(0, |at| at + 1);
        for opened in files.into_iter().skip(newer) {
            let whole = !opened.current;
            let held = self.held.insert(Held::new(opened));
            read_records(held, whole, &self.service, &self.instance, &mut sink)?;
        }
        Ok(())
    }
}

/// Reads the held file from where it was left, passing on each record.
fn read_records(
    held: &mut Held,
    whole: bool,
    service: &str,
    instance: &str,
    sink: &mut impl FnMut(Record),
) -> io::Result<()> {
    let Held { file, offset, prev, .. } = held;
    read_lines(file, offset, whole, &mut |line| {
        // A line that is not a record (the file was edited) is kept as text, at the time of the
        // record before it.
        let (time, stream, text) = parse_line(line).unwrap_or((*prev, Stream::Out, line));
        *prev = time;
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        sink(Record {
            time,
            service: service.to_string(),
            instance: instance.to_string(),
            stream,
            text: String::from_utf8_lossy(text).into_owned(),
        });
    })
}

/// Merges instances' records, each group in its own order, by time; equal times go to the
/// earlier group.
fn merge(groups: Vec<Vec<Record>>) -> Vec<Record> {
    let mut groups: Vec<_> = groups.into_iter().filter(|g| !g.is_empty()).collect();
    if groups.len() <= 1 {
        return groups.pop().unwrap_or_default();
    }
    let mut merged = Vec::with_capacity(groups.iter().map(Vec::len).sum());
    let mut iters: Vec<_> = groups.into_iter().map(|g| g.into_iter().peekable()).collect();
    let mut heads: BinaryHeap<_> =
        iters.iter_mut().enumerate().filter_map(|(at, it)| Some(Reverse((it.peek()?.time, at)))).collect();
    while let Some(Reverse((_, at))) = heads.pop() {
        let Some(group) = iters.get_mut(at) else { continue };
        if let Some(record) = group.next() {
            merged.push(record);
        }
        if let Some(next) = group.peek() {
            heads.push(Reverse((next.time, at)));
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::LogWriter;
    use crate::files::tests::TempDir;

    /// A time an hour ago, in whole seconds: file times are later than every record's, as in use.
    fn base() -> SystemTime {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        UNIX_EPOCH + Duration::from_secs(now - 3600)
    }

    fn at(micros: u64) -> SystemTime {
        base() + Duration::from_micros(micros)
    }

    /// Writes `(micros, text)` records, stdout, to an instance's log, which is never rotated.
    fn write(root: &Path, service: &str, instance: &str, records: &[(u64, &str)]) {
        let mut w = LogWriter::open(root, service, instance, u64::MAX, 2).expect("open");
        for (micros, text) in records {
            w.write(at(*micros), Stream::Out, text.as_bytes()).expect("write");
        }
        w.flush().expect("flush");
    }

    /// Appends raw bytes to a file.
    fn append(path: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).create(true).open(path).expect("open");
        file.write_all(bytes).expect("append");
    }

    /// `instance:text` for each record.
    fn lines(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| format!("{}:{}", r.instance, r.text)).collect()
    }

    fn texts(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.text.clone()).collect()
    }

    #[test]
    fn merges_instances_in_time_order() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[(1, "a1"), (3, "a3"), (5, "a5")]);
        write(tmp.path(), "api", "api-2", &[(2, "b2"), (3, "b3"), (4, "b4")]);
        write(tmp.path(), "web", "web-1", &[(0, "w0"), (6, "w6")]);
        let records = read(tmp.path(), &Selector::all(), None, None).expect("read");
        assert_eq!(
            lines(&records),
            ["web-1:w0", "api-1:a1", "api-2:b2", "api-1:a3", "api-2:b3", "api-2:b4", "api-1:a5", "web-1:w6"]
        );
        assert_eq!(records[0].service, "web");
        assert_eq!(records[0].time, at(0));
        assert_eq!(records[0].stream, Stream::Out);
    }

    #[test]
    fn an_instance_keeps_its_order_when_its_clock_goes_back() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[(10, "first"), (5, "second")]);
        write(tmp.path(), "api", "api-2", &[(7, "other")]);
        let records = read(tmp.path(), &Selector::all(), None, None).expect("read");
        assert_eq!(lines(&records), ["api-2:other", "api-1:first", "api-1:second"]);
    }

    #[test]
    fn reads_rotated_files_oldest_first() {
        let tmp = TempDir::new();
        // 27 + 5 + 3 + 1 = 36 bytes a record, two to a file.
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", 80, 10).expect("open");
        for i in 0..7u64 {
            w.write(at(i), Stream::Err, format!("l{i:02}").as_bytes()).expect("write");
        }
        w.flush().expect("flush");
        assert!(tmp.path().join("api/api-1.log.3").exists());
        let records = read(tmp.path(), &Selector::all(), None, None).expect("read");
        assert_eq!(texts(&records), ["l00", "l01", "l02", "l03", "l04", "l05", "l06"]);
        assert!(records.iter().all(|r| r.stream == Stream::Err));
        // The tail comes from as many files as it needs.
        let tail = |n| texts(&read(tmp.path(), &Selector::all(), Some(n), None).expect("read"));
        assert_eq!(tail(0), Vec::<String>::new());
        assert_eq!(tail(1), ["l06"]);
        assert_eq!(tail(2), ["l05", "l06"]);
        assert_eq!(tail(5), ["l02", "l03", "l04", "l05", "l06"]);
        assert_eq!(tail(100).len(), 7);
    }

    #[test]
    fn tail_is_per_instance() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[(1, "a1"), (2, "a2"), (3, "a3"), (4, "a4"), (9, "a9")]);
        write(tmp.path(), "api", "api-2", &[(0, "b0"), (5, "b5")]);
        let records = read(tmp.path(), &Selector::all(), Some(2), None).expect("read");
        assert_eq!(lines(&records), ["api-2:b0", "api-1:a4", "api-2:b5", "api-1:a9"]);
    }

    #[test]
    fn since_drops_older_records_before_the_tail() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[(1, "a1"), (2, "a2"), (3, "a3"), (4, "a4")]);
        write(tmp.path(), "api", "api-2", &[(1, "b1"), (5, "b5")]);
        let records = read(tmp.path(), &Selector::all(), None, Some(at(3))).expect("read");
        assert_eq!(lines(&records), ["api-1:a3", "api-1:a4", "api-2:b5"]);
        let records = read(tmp.path(), &Selector::all(), Some(5), Some(at(2))).expect("read");
        assert_eq!(lines(&records), ["api-1:a2", "api-1:a3", "api-1:a4", "api-2:b5"]);
        assert!(read(tmp.path(), &Selector::all(), None, Some(at(6))).expect("read").is_empty());
    }

    #[test]
    fn since_skips_files_last_written_before_it() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("api");
        fs::create_dir_all(&dir).expect("mkdir");
        let old = base() - Duration::from_secs(7200);
        let record = |t: SystemTime, text: &str| format!("{} out {text}\n", crate::format_time(t));
        fs::write(dir.join("api-1.log.1"), record(old, "old")).expect("write");
        let file = File::options().write(true).open(dir.join("api-1.log.1")).expect("open");
        file.set_modified(old).expect("set mtime");
        fs::write(dir.join("api-1.log"), record(at(0), "new")).expect("write");
        let since = base() - Duration::from_secs(3600);
        assert_eq!(texts(&read(tmp.path(), &Selector::all(), None, Some(since)).expect("read")), ["new"]);
        assert_eq!(texts(&read(tmp.path(), &Selector::all(), None, Some(old)).expect("read")), ["old", "new"]);
    }

    #[test]
    fn selects_services_and_instances() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[(1, "a1")]);
        write(tmp.path(), "api", "api-2", &[(2, "a2")]);
        write(tmp.path(), "web", "web-1", &[(3, "w1")]);
        write(tmp.path(), "web-1", "web-1-1", &[(4, "x")]);
        fs::create_dir_all(tmp.path().join("empty")).expect("mkdir");
        let selected =
            |names: &[&str]| lines(&read(tmp.path(), &Selector::new(names.to_vec()), None, None).expect("read"));
        assert_eq!(selected(&[]), ["api-1:a1", "api-2:a2", "web-1:w1", "web-1-1:x"]);
        assert_eq!(selected(&["api"]), ["api-1:a1", "api-2:a2"]);
        assert_eq!(selected(&["api-2", "web"]), ["api-2:a2", "web-1:w1"]);
        // A name can be a service and an instance at once.
        assert_eq!(selected(&["web-1"]), ["web-1:w1", "web-1-1:x"]);
        assert!(selected(&["nope"]).is_empty());

        let selector = Selector::new(["api", "api-3", "web-1", "empty", "nope", "api-1"]);
        assert_eq!(selector.unmatched(tmp.path()).expect("list"), ["api-3", "nope"]);
        assert!(Selector::all().unmatched(tmp.path()).expect("list").is_empty());
        assert_eq!(Selector::new(["x"]).unmatched(&tmp.path().join("missing")).expect("list"), ["x"]);
        assert!(Selector::all().matches("a", "a-1"));
        assert!(Selector::new(["a"]).matches("a", "a-1"));
        assert!(!Selector::new(["a-2"]).matches("a", "a-1"));

        let all = instances(tmp.path()).expect("list");
        let names: Vec<String> = all.iter().map(|(s, i)| format!("{s}/{i}")).collect();
        assert_eq!(names, ["api/api-1", "api/api-2", "web/web-1", "web-1/web-1-1"]);
    }

    #[test]
    fn reading_survives_any_content() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("api");
        fs::create_dir_all(&dir).expect("mkdir");
        let t1 = crate::format_time(at(1));
        let t2 = crate::format_time(at(2));
        let mut content = format!("not a record\n{t1} err one\r\n\u{0}garbage\n{t2} out two\n").into_bytes();
        content.extend_from_slice(b"\xff\xfe invalid\n");
        content.extend_from_slice(format!("{t2} out being written").as_bytes());
        fs::write(dir.join("api-1.log"), &content).expect("write");
        let records = read(tmp.path(), &Selector::all(), None, None).expect("read");
        let seen: Vec<(SystemTime, Stream, &str)> =
            records.iter().map(|r| (r.time, r.stream, r.text.as_str())).collect();
        assert_eq!(
            seen,
            [
                (UNIX_EPOCH, Stream::Out, "not a record"),
                (at(1), Stream::Err, "one"),
                (at(1), Stream::Out, "\u{0}garbage"),
                (at(2), Stream::Out, "two"),
                (at(2), Stream::Out, "\u{fffd}\u{fffd} invalid"),
            ]
        );
        // A rotated file does not grow: its last line is read even without a newline.
        fs::rename(dir.join("api-1.log"), dir.join("api-1.log.1")).expect("rename");
        let records = read(tmp.path(), &Selector::all(), None, None).expect("read");
        assert_eq!(records.last().map(|r| r.text.as_str()), Some("being written"));
        // No folder at all is no logs.
        assert!(read(&tmp.path().join("missing"), &Selector::all(), None, None).expect("read").is_empty());
    }

    #[test]
    fn follows_appended_lines() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[(1, "old")]);
        let mut follower = Follower::from_end(tmp.path(), Selector::all()).expect("follow");
        assert!(follower.poll().expect("poll").is_empty());
        write(tmp.path(), "api", "api-1", &[(2, "new")]);
        assert_eq!(lines(&follower.poll().expect("poll")), ["api-1:new"]);
        assert!(follower.poll().expect("poll").is_empty());

        // A record being written is returned once complete.
        let path = tmp.path().join("api/api-1.log");
        let record = format!("{} err partly\n", crate::format_time(at(3)));
        let (head, rest) = record.split_at(35);
        append(&path, head.as_bytes());
        assert!(follower.poll().expect("poll").is_empty());
        append(&path, rest.as_bytes());
        let records = follower.poll().expect("poll");
        assert_eq!(lines(&records), ["api-1:partly"]);
        assert_eq!(records[0].stream, Stream::Err);
    }

    #[test]
    fn from_end_returns_a_record_being_written_once_complete() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[(1, "old")]);
        let path = tmp.path().join("api/api-1.log");
        append(&path, format!("{} out hal", crate::format_time(at(2))).as_bytes());
        let mut follower = Follower::from_end(tmp.path(), Selector::all()).expect("follow");
        append(&path, b"f\n");
        assert_eq!(texts(&follower.poll().expect("poll")), ["half"]);
    }

    #[test]
    fn merges_instances_within_a_poll() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[]);
        write(tmp.path(), "web", "web-1", &[]);
        let mut follower = Follower::from_end(tmp.path(), Selector::all()).expect("follow");
        write(tmp.path(), "web", "web-1", &[(1, "w1"), (4, "w4")]);
        write(tmp.path(), "api", "api-1", &[(2, "a2"), (3, "a3")]);
        assert_eq!(lines(&follower.poll().expect("poll")), ["web-1:w1", "api-1:a2", "api-1:a3", "web-1:w4"]);
    }

    /// Writes `count` numbered records from `from` through `w`, flushing each.
    fn numbered(w: &mut LogWriter, from: u64, count: u64) {
        for i in from..from + count {
            w.write(at(i), Stream::Out, format!("{i:05}").as_bytes()).expect("write");
            w.flush().expect("flush");
        }
    }

    fn numbers(from: u64, to: u64) -> Vec<String> {
        (from..to).map(|i| format!("{i:05}")).collect()
    }

    /// The record is 27 + 5 + 5 + 1 = 38 bytes: three to a file of 120.
    const SIZE: u64 = 120;

    #[test]
    fn follows_across_one_rotation() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", SIZE, 3).expect("open");
        numbered(&mut w, 0, 2);
        let mut follower = Follower::from_end(tmp.path(), Selector::all()).expect("follow");
        numbered(&mut w, 2, 3); // 2 ends the first file; 3 and 4 start the next
        assert!(tmp.path().join("api/api-1.log.1").exists());
        assert_eq!(texts(&follower.poll().expect("poll")), numbers(2, 5));
        numbered(&mut w, 5, 1);
        assert_eq!(texts(&follower.poll().expect("poll")), numbers(5, 6));
    }

    #[test]
    fn follows_across_two_rotations_between_polls() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", SIZE, 3).expect("open");
        numbered(&mut w, 0, 1);
        let mut follower = Follower::from_end(tmp.path(), Selector::all()).expect("follow");
        // Files: [0 1 2] [3 4 5] [6 7]: the file held is now .log.2, the oldest kept.
        numbered(&mut w, 1, 7);
        assert!(tmp.path().join("api/api-1.log.2").exists());
        assert_eq!(texts(&follower.poll().expect("poll")), numbers(1, 8));
        numbered(&mut w, 8, 4);
        assert_eq!(texts(&follower.poll().expect("poll")), numbers(8, 12));
    }

    #[test]
    fn too_many_rotations_between_polls_lose_only_the_files_removed() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", SIZE, 2).expect("open");
        numbered(&mut w, 0, 1);
        let mut follower = Follower::from_end(tmp.path(), Selector::all()).expect("follow");
        // Files: [0 1 2] [3 4 5] [6 7 8] [9]: the one held (0-2) and 3-5 are removed, 6-8 is .log.1.
        numbered(&mut w, 1, 9);
        let mut expected = numbers(1, 3); // still read from the file held open
        expected.extend(numbers(6, 10));
        assert_eq!(texts(&follower.poll().expect("poll")), expected);
        numbered(&mut w, 10, 1);
        assert_eq!(texts(&follower.poll().expect("poll")), numbers(10, 11));
    }

    #[test]
    fn follows_a_single_file_that_starts_over() {
        let tmp = TempDir::new();
        let mut w = LogWriter::open(tmp.path(), "api", "api-1", SIZE, 1).expect("open");
        numbered(&mut w, 0, 2);
        let mut follower = Follower::from_end(tmp.path(), Selector::all()).expect("follow");
        numbered(&mut w, 2, 2);
        assert_eq!(texts(&follower.poll().expect("poll")), numbers(2, 4));
        numbered(&mut w, 4, 3);
        assert_eq!(texts(&follower.poll().expect("poll")), numbers(4, 7));
    }

    #[test]
    fn picks_up_new_instances_and_services() {
        let tmp = TempDir::new();
        // Nothing at all yet: not even the logs folder.
        let root = tmp.path().join("logs");
        let mut follower = Follower::from_end(&root, Selector::new(["api", "web-2"])).expect("follow");
        assert!(follower.poll().expect("poll").is_empty());
        write(&root, "api", "api-1", &[(1, "a1")]);
        assert_eq!(lines(&follower.poll().expect("poll")), ["api-1:a1"]);
        // A new replica, whose first file was already rotated: everything in it is new.
        let mut w = LogWriter::open(&root, "api", "api-2", SIZE, 5).expect("open");
        numbered(&mut w, 10, 5);
        write(&root, "web", "web-1", &[(2, "not selected")]);
        write(&root, "web", "web-2", &[(3, "w2")]);
        assert_eq!(
            lines(&follower.poll().expect("poll")),
            ["web-2:w2", "api-2:00010", "api-2:00011", "api-2:00012", "api-2:00013", "api-2:00014"]
        );
        assert!(follower.poll().expect("poll").is_empty());
    }

    #[test]
    fn finds_instances_after_the_folder_settles() {
        let tmp = TempDir::new();
        write(tmp.path(), "api", "api-1", &[(1, "a1")]);
        let mut follower = Follower::from_end(tmp.path(), Selector::all()).expect("follow");
        // Pretend the folders were last listed long after their last change: no listing until the
        // folder changes again, which a new file does.
        for watch in follower.services.values_mut().chain([&mut follower.root_watch]) {
            watch.listed = watch.mtime.map(|m| m + Duration::from_secs(10));
        }
        assert!(!follower.root_watch.needs_listing().expect("stat"));
        write(tmp.path(), "api", "api-2", &[(2, "a2")]);
        assert_eq!(lines(&follower.poll().expect("poll")), ["api-2:a2"]);
    }

    #[test]
    fn read_then_follow_loses_and_repeats_nothing() {
        let tmp = TempDir::new();
        let root = tmp.path().to_path_buf();
        const COUNT: u64 = 3000;
        let started = Arc::new(AtomicBool::new(false));
        let writer = {
            let (root, started) = (root.clone(), started.clone());
            std::thread::spawn(move || {
                // About 40 rotations; enough files are kept that none is removed before it is read.
                let mut w = LogWriter::open(&root, "api", "api-1", 3000, 100).expect("open");
                for i in 0..COUNT {
                    w.write(at(i), Stream::Out, format!("{i:05}").as_bytes()).expect("write");
                    if i % 7 == 0 {
                        w.flush().expect("flush");
                    }
                    if i == 500 {
                        started.store(true, Ordering::SeqCst);
                    }
                }
            })
        };
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let (mut records, mut follower) =
            Follower::read_then_follow(&root, Selector::all(), Some(200), None).expect("read");
        assert_eq!(records.len(), 200);
        let first: u64 = records[0].text.parse().expect("number");
        let mut done = false;
        while !done {
            done = writer.is_finished();
            records.extend(follower.poll().expect("poll"));
        }
        writer.join().expect("writer");
        records.extend(follower.poll().expect("poll"));
        assert_eq!(texts(&records), numbers(first, COUNT));
    }

    #[test]
    fn poll_keeps_up_with_a_writer_rotating_underneath() {
        let tmp = TempDir::new();
        let root = tmp.path().to_path_buf();
        let mut follower = Follower::from_end(&root, Selector::all()).expect("follow");
        const COUNT: u64 = 3000;
        let writers: Vec<_> = ["api-1", "api-2"]
            .into_iter()
            .map(|instance| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let mut w = LogWriter::open(&root, "api", instance, 1000, 200).expect("open");
                    numbered(&mut w, 0, COUNT);
                })
            })
            .collect();
        let mut records = Vec::new();
        while !writers.iter().all(|w| w.is_finished()) {
            records.extend(follower.poll().expect("poll"));
        }
        for w in writers {
            w.join().expect("writer");
        }
        records.extend(follower.poll().expect("poll"));
        for instance in ["api-1", "api-2"] {
            let of: Vec<Record> = records.iter().filter(|r| r.instance == instance).cloned().collect();
            assert_eq!(texts(&of), numbers(0, COUNT), "{instance}");
        }
    }

    #[test]
    fn merge_is_stable() {
        let record = |instance: &str, micros| Record {
            time: at(micros),
            service: "s".into(),
            instance: instance.into(),
            stream: Stream::Out,
            text: micros.to_string(),
        };
        let merged = merge(vec![
            vec![record("a", 1), record("a", 1), record("a", 3)],
            vec![],
            vec![record("b", 1), record("b", 2)],
            vec![record("c", 0)],
        ]);
        assert_eq!(lines(&merged), ["c:0", "a:1", "a:1", "b:1", "b:2", "a:3"]);
        assert!(merge(Vec::new()).is_empty());
    }
}
