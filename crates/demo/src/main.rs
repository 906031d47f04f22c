//! `tug-demo`: a small HTTP service for tug's quickstart and tests. No dependencies beyond std and libc.
//!
//! ```text
//! tug-demo [--host HOST] [--port PORT]                  serve HTTP/1.1 (defaults: $HOST or 127.0.0.1, $PORT or 8080)
//! tug-demo job [--sleep 1s] [--exit CODE] [--write FILE] run to completion, for jobs
//! ```
//!
//! Identity, from the environment tug gives every instance: `TUG_SERVICE`, `TUG_INSTANCE`,
//! `TUG_REVISION`, and `VERSION` (default `1`).
//!
//! Knobs (environment; the first two also per request as query parameters, which win):
//!
//! | variable | query | effect |
//! |---|---|---|
//! | `DEMO_DELAY` | `?delay=50ms` | added latency on the application endpoints |
//! | `DEMO_FAIL_RATE` | `?fail=0.3` or `?fail=30%25` | that share of application requests answer 500: exactly 30 of every 100 (3 of every 10), spread evenly, counted per process, the first one failing |
//! | `DEMO_READY_AFTER` | | `/health` answers 503 until this long after the start |
//! | `DEMO_EXIT_AFTER` | | exit with code 1 this long after the start (a crash) |
//! | `DEMO_MESSAGE` | | the `message` of the JSON answer |
//! | `DEMO_ACCESS_LOG=1` | | a line on stdout per request (off by default, for honest benchmarks) |
//!
//! Durations are written as in the stack file (`50ms`, `2s`, `1m30s`). Empty variables are unset.
//!
//! Endpoints:
//!
//! - any path not below, any method: 200 with JSON `{"service", "instance", "version", "revision",
//!   "message", "pid", "uptime_ms"}`; an injected failure is 500 with the same JSON and an `"error"`.
//! - `/echo`: JSON of the request: `method`, `path`, `query`, `version`, `remote_addr`, `instance`,
//!   `body_bytes`, and `headers` (names in lower case, repeated ones joined with `, `).
//! - `/bytes?n=N`: N bytes (`abc…z` repeated), streamed; `N` may be written `64Ki`, `10Mi`, `1Gi`.
//! - `GET /health`: readiness, 200 `ok`, or 503 before `DEMO_READY_AFTER`, after `/admin/unready`, or
//!   while stopping. `GET /live`: liveness, 200 `ok`, or 500 after `/admin/sick`.
//! - `POST /admin/ready`, `POST /admin/unready`: force readiness. `POST /admin/sick`: fail `/live`.
//! - `POST /crash`: answer, then exit with code 1.
//!
//! Delays and failures apply to the application endpoints (the first three) only, so that a slow or
//! failing replica still passes its probes; the admin endpoints control the probes.
//!
//! Every response has `X-Demo-Instance`. HTTP/1.1 keep-alive and pipelining; request bodies
//! (`Content-Length` or chunked) are read and discarded; heads over 16 KiB get 431, malformed requests
//! 400. On SIGTERM or SIGINT: stop accepting, print `tug-demo <instance> stopping`, let requests in
//! flight finish for up to 5 s, exit 0 (a second signal exits at once, with code 1).

mod http;
mod knobs;
mod server;

use knobs::Config;
use server::Server;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::{env, fs, thread};

const USAGE: &str = "\
usage: tug-demo [--host HOST] [--port PORT]
       tug-demo job [--sleep DURATION] [--exit CODE] [--write FILE]

Environment: TUG_SERVICE, TUG_INSTANCE, TUG_REVISION, VERSION (default 1), HOST (default 127.0.0.1),
PORT (default 8080), DEMO_DELAY, DEMO_FAIL_RATE, DEMO_READY_AFTER, DEMO_EXIT_AFTER, DEMO_MESSAGE,
DEMO_ACCESS_LOG=1. Endpoints: / (any path), /echo, /bytes?n=N, /health, /live, POST /admin/ready,
POST /admin/unready, POST /admin/sick, POST /crash. Query parameters ?delay=50ms and ?fail=0.3 override
DEMO_DELAY and DEMO_FAIL_RATE per request.";

/// How long requests in flight may take to finish once a stop signal arrives.
const GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("job") => job(&args[1..]),
        _ => serve(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tug-demo: {message}");
            ExitCode::from(2)
        }
    }
}

/// Splits `--flag value` and `--flag=value` for the `known` flags (and `--help`); `Ok(None)` at the end.
fn next_flag(
    args: &mut std::slice::Iter<'_, String>,
    known: &[&str],
) -> Result<Option<(String, Option<String>)>, String> {
    let Some(arg) = args.next() else {
        return Ok(None);
    };
    if arg == "-h" || arg == "--help" {
        return Ok(Some((arg.clone(), None)));
    }
    if let Some((flag, value)) = arg.split_once('=').filter(|(flag, _)| flag.starts_with("--")) {
        return Ok(Some((flag.to_string(), Some(value.to_string()))));
    }
    if !arg.starts_with("--") {
        return Err(format!("unexpected argument `{arg}`\n{USAGE}"));
    }
    if !known.contains(&arg.as_str()) {
        return Err(format!("unknown flag `{arg}`\n{USAGE}"));
    }
    let value = args.next().ok_or_else(|| format!("`{arg}` needs a value"))?;
    Ok(Some((arg.clone(), Some(value.clone()))))
}

fn serve(args: &[String]) -> Result<ExitCode, String> {
    let var = |name: &str| env::var(name).ok().filter(|v| !v.is_empty());
    let mut host = var("HOST").unwrap_or_else(|| "127.0.0.1".into());
    let mut port = var("PORT").unwrap_or_else(|| "8080".into());
    const FLAGS: &[&str] = &["--host", "--port"];
    let mut args = args.iter();
    while let Some((flag, value)) = next_flag(&mut args, FLAGS)? {
        match (flag.as_str(), value) {
            ("-h" | "--help", _) => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            ("--host", Some(value)) => host = value,
            ("--port", Some(value)) => port = value,
            _ => return Err(format!("unknown flag `{flag}`\n{USAGE}")),
        }
    }
    let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a port number"))?;
    let config = Config::from_lookup(|name| env::var(name).ok())?;

    // Stop signals are taken by a thread of their own (sigwait), so they must be blocked in every thread:
    // block them before any thread starts.
    let signals = block_stop_signals();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let server = match Server::bind((host, port), config.clone()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("tug-demo: cannot listen on {host}:{port}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    println!("tug-demo {} version {} listening on {addr}", config.instance, config.version);

    let stopper = server.stopper();
    let instance = config.instance.clone();
    thread::spawn(move || {
        wait_for_signal(&signals);
        println!("tug-demo {instance} stopping");
        stopper.stop();
        wait_for_signal(&signals);
        eprintln!("tug-demo {instance}: second stop signal, exiting now");
        std::process::exit(1);
    });
    if let Some(after) = config.exit_after {
        let instance = config.instance.clone();
        thread::spawn(move || {
            thread::sleep(after);
            eprintln!("tug-demo {instance} exiting with code 1 (DEMO_EXIT_AFTER={after:?})");
            std::process::exit(1);
        });
    }
    let left = server.run(GRACE);
    if left > 0 {
        eprintln!("tug-demo {}: {left} connections still busy after {GRACE:?}", config.instance);
    }
    Ok(ExitCode::SUCCESS)
}

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) {
    let mut signal = 0;
    // SAFETY: `set` is an initialised signal set and `signal` a valid place for the result.
    while unsafe { libc::sigwait(set, &mut signal) } != 0 {}
}

/// `tug-demo job`: prints progress, optionally writes a file, exits with the code asked for.
fn job(args: &[String]) -> Result<ExitCode, String> {
    let mut sleep = Duration::ZERO;
    let mut code = 0u8;
    let mut write = None;
    const FLAGS: &[&str] = &["--sleep", "--exit", "--write"];
    let mut args = args.iter();
    while let Some((flag, value)) = next_flag(&mut args, FLAGS)? {
        match (flag.as_str(), value) {
            ("-h" | "--help", _) => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            ("--sleep", Some(value)) => sleep = knobs::parse_duration(&value).map_err(|e| format!("--sleep: {e}"))?,
            ("--exit", Some(value)) => {
                code = value.parse().map_err(|_| format!("--exit: `{value}` is not an exit code (0 to 255)"))?;
            }
            ("--write", Some(value)) => write = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag `{flag}`\n{USAGE}")),
        }
    }
    let instance = env::var("TUG_INSTANCE").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "job".into());
    println!("job {instance}: starting");
    const STEPS: u32 = 3;
    for step in 1..=STEPS {
        thread::sleep(sleep / STEPS);
        println!("job {instance}: step {step}/{STEPS} done");
    }
    if let Some(path) = write {
        let written = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&path, format!("{instance} done\n")));
        if let Err(e) = written {
            eprintln!("job {instance}: cannot write {}: {e}", path.display());
            return Ok(ExitCode::FAILURE);
        }
        println!("job {instance}: wrote {}", path.display());
    }
    println!("job {instance}: finished with exit code {code}");
    Ok(ExitCode::from(code))
}
