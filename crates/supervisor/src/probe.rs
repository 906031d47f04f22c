//! One probe attempt of each kind. Scheduling (intervals, retries, start period)
//! is the instance's; this module only answers "did it pass, and what happened".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::{Exec, ExecError};

/// A probe with its instance's values substituted.
#[derive(Clone, Debug)]
pub enum Check {
    Http {
        path: String,
        /// Whether `path` is sensitive (it interpolates a secret): then the probe's
        /// messages, which `tug ps` and the API show, never quote it. Masking by value
        /// misses secrets under 8 characters.
        sensitive: bool,
    },
    Tcp,
    Exec {
        program: String,
        args: Vec<String>,
        /// The program as it may be shown (`********` when sensitive).
        shown: String,
    },
    /// Set by the log pump when a line matched.
    Log {
        matched: Arc<AtomicBool>,
        regex: String,
    },
}

pub struct Target<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
    /// Where an exec probe runs: inside the instance, whatever its driver.
    pub exec: &'a Exec,
}

/// Runs one attempt within `timeout`. Ok carries a short description of success.
pub async fn attempt(check: &Check, target: &Target<'_>, timeout: Duration) -> Result<String, String> {
    match check {
        Check::Http { path, sensitive } => {
            let port = target.port.ok_or("the http probe needs a port, and this instance has none")?;
            within(timeout, http(target.host, port, path, *sensitive)).await
        }
        Check::Tcp => {
            let port = target.port.ok_or("the tcp probe needs a port, and this instance has none")?;
            within(timeout, async {
                TcpStream::connect((target.host, port))
                    .await
                    .map(|_| format!("connected to {}:{port}", target.host))
                    .map_err(|e| format!("cannot connect to {}:{port}: {e}", target.host))
            })
            .await
        }
        Check::Exec { program, args, shown } => exec(program, args, shown, target, timeout).await,
        Check::Log { matched, regex } => {
            if matched.load(Ordering::Acquire) {
                Ok(format!("a log line matched /{regex}/"))
            } else {
                Err(format!("no log line has matched /{regex}/ yet"))
            }
        }
    }
}

async fn within<F: Future<Output = Result<String, String>>>(timeout: Duration, f: F) -> Result<String, String> {
    match tokio::time::timeout(timeout, f).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {}", tug_stackfile::units::format_duration(timeout))),
    }
}

async fn http(host: &str, port: u16, path: &str, sensitive: bool) -> Result<String, String> {
    let mut stream =
        TcpStream::connect((host, port)).await.map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: tug-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    // The status line is all a probe needs.
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("cannot read the response: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let status = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            if line.is_empty() {
                "the connection closed without a response".to_string()
            } else {
                format!("not an HTTP response: {:?}", truncate(line, 80))
            }
        })?;
    if (200..400).contains(&status) {
        Ok(format!("HTTP {status}"))
    } else {
        let shown = if sensitive { tug_stackfile::model::MASK } else { &path };
        Err(format!("HTTP {status} from GET {shown}"))
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

async fn exec(
    program: &str,
    args: &[String],
    shown: &str,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<String, String> {
    let output = target.exec.run(program, args, timeout).await.map_err(|e| match e {
        ExecError::Start(why) => format!("cannot run the probe `{shown}`: {why}"),
        other => other.describe(shown),
    })?;
    let text = output.text;
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| truncate(l.trim(), 200).to_string());
    if output.exit.success() {
        Ok(last.unwrap_or_else(|| "exit 0".into()))
    } else {
        let what = output.exit.describe();
        Err(match last {
            Some(line) => format!("{what}: {line}"),
            None => what,
        })
    }
}
