//! `tug logs`, and the log following of a foreground `tug up`. Reads the
//! instances' log files directly (the format is `tug_logs`'s contract), so logs
//! can be read whether or not the daemon runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use tug_logs::{Follower, Record, Selector, Stream};

use crate::StackArgs;
use crate::output;

/// A line of `daemon.log` as a person reads it: `TIME LEVEL [service instance] message k=v`.
/// A line that is not JSON (a panic, an older daemon's) is shown as it is.
pub fn daemon_line(raw: &str) -> String {
    let Ok(serde_json::Value::Object(event)) = serde_json::from_str::<serde_json::Value>(raw) else {
        return raw.to_string();
    };
    let text = |key: &str| event.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let mut out = format!("{} {:<5}", text("ts"), text("level"));
    for key in ["service", "instance", "revision"] {
        if let Some(value) = event.get(key).and_then(|v| v.as_str()) {
            out.push(' ');
            out.push_str(value);
        }
    }
    out.push(' ');
    out.push_str(&text("msg"));
    for (key, value) in &event {
        if !matches!(key.as_str(), "ts" | "level" | "msg" | "service" | "instance" | "revision") {
            out.push_str(&format!(
                " {key}={}",
                value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string())
            ));
        }
    }
    out
}

/// `tug logs --daemon`: tug's own log, as JSON lines (`--json`) or read as text.
pub fn daemon(args: &StackArgs, options: &LogsOptions) -> Result<ExitCode, String> {
    let path = logs_dir(args)?.parent().map(|d| d.join(crate::daemon::LOG_FILE)).ok_or("no state folder")?;
    let show = |raw: &str| {
        if options.json {
            match serde_json::from_str::<serde_json::Value>(raw) {
                Ok(_) => raw.to_string(),
                Err(_) => serde_json::json!({ "msg": raw }).to_string(),
            }
        } else {
            daemon_line(raw)
        }
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = options.tail.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out = String::new();
    for raw in &lines[from..] {
        out.push_str(&show(raw));
        out.push('\n');
    }
    output::write_stdout(&out)?;
    if !options.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Follows what is appended (the daemon's log is never rotated).
    let mut offset = text.len() as u64;
    let mut partial = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut file) = std::fs::File::open(&path) else { continue };
        let length = file.metadata().map(|m| m.len()).unwrap_or(0);
        if length < offset {
            offset = 0;
        }
        if length == offset {
            continue;
        }
        use std::io::{Read, Seek, SeekFrom};
        let mut added = String::new();
        if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_string(&mut added).is_err() {
            continue;
        }
        offset += added.len() as u64;
        partial.push_str(&added);
        let mut out = String::new();
        while let Some(end) = partial.find('\n') {
            let raw: String = partial.drain(..=end).collect();
            out.push_str(&show(raw.trim_end_matches('\n')));
            out.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(out.as_bytes()).and_then(|_| stdout.flush()).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

pub struct LogsOptions {
    pub follow: bool,
    pub tail: Option<usize>,
    pub since: Option<String>,
    pub json: bool,
    /// Also services no longer in the stack file.
    pub all: bool,
    /// tug's own log instead of the instances'.
    pub daemon: bool,
    pub names: Vec<String>,
}

const COLOURS: [&str; 6] = ["\x1b[36m", "\x1b[33m", "\x1b[32m", "\x1b[35m", "\x1b[34m", "\x1b[91m"];

struct Printer {
    json: bool,
    colour: bool,
    width: usize,
    instances: Vec<String>,
}

impl Printer {
    fn new(json: bool, logs_dir: &Path) -> Printer {
        let width = tug_logs::instances(logs_dir).unwrap_or_default().iter().map(|(_, i)| i.len()).max().unwrap_or(0);
        Printer { json, colour: !output::stdout_palette().reset.is_empty(), width, instances: Vec::new() }
    }

    fn line(&mut self, record: &Record) -> String {
        if self.json {
            let value = serde_json::json!({
                "time": tug_logs::format_time(record.time),
                "service": record.service,
                "instance": record.instance,
                "stream": record.stream.as_str(),
                "line": record.text,
            });
            return format!("{value}\n");
        }
        // Control characters other than tab would let a log line drive the terminal.
        let text: String =
            record.text.chars().map(|c| if c.is_control() && c != '\t' { '\u{FFFD}' } else { c }).collect();
        self.width = self.width.max(record.instance.len());
        let prefix = format!("{:<width$} |", record.instance, width = self.width);
        if !self.colour {
            return format!("{prefix} {text}\n");
        }
        let index = match self.instances.iter().position(|i| *i == record.instance) {
            Some(i) => i,
            None => {
                self.instances.push(record.instance.clone());
                self.instances.len() - 1
            }
        };
        let colour = COLOURS[index % COLOURS.len()];
        let text = if record.stream == Stream::Err { format!("\x1b[2m{text}\x1b[0m") } else { text };
        format!("{colour}{prefix}\x1b[0m {text}\n")
    }

    /// Writes records; false when stdout is closed (`tug logs | head`).
    fn print(&mut self, records: &[Record]) -> bool {
        if records.is_empty() {
            return true;
        }
        let mut text = String::new();
        for record in records {
            text.push_str(&self.line(record));
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_ok()
    }
}

fn logs_dir(args: &StackArgs) -> Result<PathBuf, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    Ok(crate::stack::state_dir(args, &cwd).join("logs"))
}

pub fn command(args: &StackArgs, options: LogsOptions) -> Result<ExitCode, String> {
    if args.host.is_some() {
        return remote(args, &options);
    }
    if options.daemon {
        return daemon(args, &options);
    }
    let dir = logs_dir(args)?;
    let since = match &options.since {
        Some(text) => Some(tug_logs::parse_since(text, SystemTime::now()).map_err(|e| format!("--since: {e}"))?),
        None => None,
    };
    // The stack file's services (profiles included): what `logs` shows by default, and what
    // `logs -f` may wait for. Unreadable, every log is shown.
    let services: Option<Vec<String>> = crate::stack::load(args)
        .ok()
        .and_then(|loaded| loaded.compiled.stack.map(|s| s.services.keys().chain(&s.inactive).cloned().collect()));
    let in_stack = |name: &str| {
        services.as_ref().is_some_and(|services| {
            services.iter().any(|s| {
                name == s || name.strip_prefix(s.as_str()).and_then(|r| r.strip_prefix('-')).is_some_and(is_number)
            })
        })
    };
    let selector = match (&services, options.names.is_empty(), options.all) {
        (Some(services), true, false) => Selector::new(services.iter().cloned()),
        _ => Selector::new(options.names.iter().cloned()),
    };
    // `logs -f web` may wait for `web` to write its first line; a name the stack does not have
    // fails at once, as `logs NAME` does.
    let unmatched: Vec<String> = Selector::new(options.names.iter().cloned())
        .unmatched(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|name| !(options.follow && in_stack(name)))
        .collect();
    if !unmatched.is_empty() {
        let known: Vec<String> = tug_logs::instances(&dir).unwrap_or_default().into_iter().map(|(_, i)| i).collect();
        let stack_names =
            services.as_ref().map(|s| format!("; the stack's services: {}", s.join(", "))).unwrap_or_default();
        return Err(format!(
            "no logs for {}: {}{stack_names}",
            unmatched.join(", "),
            if known.is_empty() {
                "no instance has written any yet".to_string()
            } else {
                format!("instances with logs: {}", known.join(", "))
            }
        ));
    }
    let mut printer = Printer::new(options.json, &dir);
    if !options.follow {
        let records = tug_logs::read(&dir, &selector, options.tail, since)
            .map_err(|e| format!("cannot read the logs in {}: {e}", dir.display()))?;
        printer.print(&records);
        return Ok(ExitCode::SUCCESS);
    }
    let (records, follower) = Follower::read_then_follow(&dir, selector, options.tail, since)
        .map_err(|e| format!("cannot read the logs in {}: {e}", dir.display()))?;
    if !printer.print(&records) {
        return Ok(ExitCode::SUCCESS);
    }
    follow(follower, &mut printer, || false)
}

/// `tug --host URL logs`: the remote daemon streams the lines (`GET /v1/logs`).
fn remote(args: &StackArgs, options: &LogsOptions) -> Result<ExitCode, String> {
    if options.daemon || options.since.is_some() || options.all {
        return Err("with --host, `tug logs` takes names, --tail, -f and --json (--daemon, --since and --all read files on the daemon's host)".into());
    }
    if let Some(bad) =
        options.names.iter().find(|n| !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        return Err(format!("no service or instance is named `{bad}`"));
    }
    let (_, client) = crate::run::connect(args, false)?;
    let client = client.ok_or("no API key")?;
    let mut path = format!("/v1/logs?names={}", options.names.join(","));
    if let Some(tail) = options.tail {
        path.push_str(&format!("&tail={tail}"));
    }
    if options.follow {
        path.push_str("&follow=1");
    }
    let mut printer = Printer {
        json: options.json,
        colour: !output::stdout_palette().reset.is_empty(),
        width: 0,
        instances: Vec::new(),
    };
    let mut pending: Vec<u8> = Vec::new();
    let result = client.stream_raw("GET", &path, &[], &mut |bytes| {
        pending.extend_from_slice(bytes);
        let mut records = Vec::new();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
            let text = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            records.push(Record {
                time: tug_logs::parse_time(&text("time")).unwrap_or_else(SystemTime::now),
                service: text("service"),
                instance: text("instance"),
                stream: if text("stream") == "err" { Stream::Err } else { Stream::Out },
                text: text("line"),
            });
        }
        if printer.print(&records) { Ok(()) } else { Err("stdout closed".into()) }
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(crate::client::RequestError::Other(e)) if e == "stdout closed" => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn follow(mut follower: Follower, printer: &mut Printer, stop: impl Fn() -> bool) -> Result<ExitCode, String> {
    while !stop() {
        match follower.poll() {
            Ok(records) => {
                if !printer.print(&records) {
                    break;
                }
            }
            Err(e) => eprintln!("{}", output::warning_line(&format!("reading the logs: {e}"))),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(ExitCode::SUCCESS)
}

/// A follower positioned at the end of every log there is now.
pub fn follow_from_now(state_dir: &Path) -> Result<Follower, String> {
    let dir = state_dir.join("logs");
    Follower::from_end(&dir, Selector::all()).map_err(|e| format!("cannot read the logs in {}: {e}", dir.display()))
}

/// Prints what the follower sees until `stop` says so (the foreground `up`).
pub fn follow_until(follower: Follower, stop: impl Fn() -> bool) -> Result<ExitCode, String> {
    let mut printer =
        Printer { json: false, colour: !output::stdout_palette().reset.is_empty(), width: 0, instances: Vec::new() };
    follow(follower, &mut printer, stop)
}

/// The last `n` lines of one instance, for failure reports.
pub fn last_lines(state_dir: &Path, instance: &str, n: usize) -> Vec<String> {
    let selector = Selector::new([instance.to_string()]);
    tug_logs::read(&state_dir.join("logs"), &selector, Some(n), None)
        .map(|records| records.into_iter().map(|r| r.text).collect())
        .unwrap_or_default()
}
