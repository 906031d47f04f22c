//! `tug`: one binary that turns one stack file into a running stack.
//!
//! This file is the command line: it parses flags, calls the library crates, and
//! turns their results into output and exit codes (0 ok, 1 failed, 2 usage).

mod archive;
mod artifacts;
mod backup;
mod client;
mod daemon;
mod doctor;
mod endpoint;
mod exec;
mod import;
mod logs;
mod metrics;
mod notify;
mod output;
mod plan;
mod render;
mod rollout;
mod run;
mod secrets;
mod source;
mod stack;
mod stats;
mod upload;
mod url;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tug_proto::spec::RolloutAction;

#[derive(Parser)]
#[command(
    name = "tug",
    version,
    about = "One stack file to a running, routed, observable stack",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    stack: StackArgs,
    #[command(subcommand)]
    command: Command,
}

/// Which stack, in which environment: shared by every command.
#[derive(Args, Clone, Debug, Default)]
pub struct StackArgs {
    /// Stack file (repeatable: later files merge over earlier) [default: tug.yaml]
    #[arg(short = 'f', long = "file", value_name = "FILE", global = true)]
    pub files: Vec<PathBuf>,
    /// Environment: selects tug.<ENV>.yaml overlays and per-environment rules
    #[arg(long = "env", value_name = "NAME", env = "TUG_ENV", global = true)]
    pub environment: Option<String>,
    /// Extra env file feeding interpolation and settings (repeatable; after .env)
    #[arg(long = "env-file", value_name = "FILE", global = true)]
    pub env_files: Vec<PathBuf>,
    /// Activate a profile (repeatable, or comma-separated in TUG_PROFILES)
    #[arg(long = "profile", value_name = "NAME", env = "TUG_PROFILES", value_delimiter = ',', global = true)]
    pub profiles: Vec<String>,
    /// Drive a remote daemon through its network endpoint (`api.listen`): https://HOST:PORT
    #[arg(long = "host", value_name = "URL", env = "TUG_HOST", global = true)]
    pub host: Option<String>,
    /// With --host: CA certificates (PEM) to trust instead of the system's
    #[arg(long = "tls-ca", value_name = "FILE", env = "TUG_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// With --host: a client certificate (PEM), for an endpoint that requires one (mTLS)
    #[arg(long = "tls-cert", value_name = "FILE", env = "TUG_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// With --host: the client certificate's private key (PEM)
    #[arg(long = "tls-key", value_name = "FILE", env = "TUG_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the stack and report every problem at once (exit 1 when invalid)
    Check {
        #[arg(long, value_enum, default_value_t = CheckFormat::Human)]
        format: CheckFormat,
    },
    /// Print the resolved stack: overlays merged, interpolated, defaults filled, secrets masked
    Config {
        /// Print JSON instead of YAML
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema (2020-12) of the stack file, for editors
    Schema,
    /// Manage the stack's encrypted secrets
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Write the stack for another engine (stdout, or files in --out)
    Render {
        #[arg(value_enum)]
        target: RenderTarget,
        /// A folder to write the files into (one per service, and shared ones)
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Write secrets' values (otherwise each Secret lists its keys, empty, to fill)
        #[arg(long)]
        include_secrets: bool,
        /// Kubernetes: canary and blue-green services as Argo Rollouts (`--rollouts argo`)
        #[arg(long, value_name = "CONTROLLER", value_parser = ["argo"])]
        rollouts: Option<String>,
        /// Kubernetes: NetworkPolicies that let in only what `depends_on` allows
        #[arg(long)]
        network_policies: bool,
    },
    /// Write a tug stack file from another tool's files
    #[command(subcommand)]
    Import(ImportCommand),
    /// Start the stack (or SERVICEs and what they need) in dependency order
    Up {
        /// Return once everything started is healthy (or running) and needed jobs completed
        #[arg(short = 'd', long)]
        detach: bool,
        /// With -d: give up after this long (e.g. 2m)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// This host's address: routers and instances bind it and register it [default: 127.0.0.1]
        #[arg(long, value_name = "ADDR", env = "TUG_ADVERTISE")]
        advertise: Option<String>,
        /// The address the routers bind (0.0.0.0: every interface), over the stack's `listen:`
        #[arg(long, value_name = "ADDR", env = "TUG_LISTEN")]
        listen: Option<String>,
        /// Let the network endpoint (`api.listen`) serve a non-loopback address without TLS
        #[arg(long)]
        insecure: bool,
        /// Show what would start or change, service by service, and why; do nothing
        #[arg(long)]
        plan: bool,
        /// With --plan: print the plan as JSON
        #[arg(long, requires = "plan")]
        json: bool,
        #[arg(value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Apply the stack file's changes: new services start, removed ones stop, changed ones roll
    /// out by their `deploy.strategy`; waits until every rollout ends (exit 1 if one was rolled back)
    Deploy {
        /// Return once the daemon accepted the change
        #[arg(long)]
        detach: bool,
        /// Give up waiting after this long (e.g. 10m); the rollouts go on
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Let the network endpoint (`api.listen`) serve a non-loopback address without TLS
        #[arg(long)]
        insecure: bool,
        /// Show what would change, service by service, and why (which field, image or
        /// source), and the strategy each would use; do nothing
        #[arg(long)]
        plan: bool,
        /// With --plan: print the plan as JSON
        #[arg(long, requires = "plan")]
        json: bool,
        #[arg(value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// A service's rollout: status, or promote, abort, undo
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Print a login link to the web dashboard (one use, valid 5 minutes; needs `api.listen`)
    Dashboard {
        /// The session can look but not promote, abort or undo
        #[arg(long)]
        read_only: bool,
    },
    /// Print a token derived from the stack's API key
    Token {
        #[arg(value_enum)]
        kind: TokenKind,
    },
    /// A service's revisions, newest first: strategy, outcome, times
    History {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
        #[arg(value_name = "SERVICE")]
        service: String,
    },
    /// Run a command inside a running instance (a service's first running one, or the instance
    /// named), in its container or with its environment and folder; exits with its exit code
    Exec {
        /// A service, or an instance (`web-2`)
        #[arg(value_name = "SERVICE|INSTANCE")]
        target: String,
        /// The command and its arguments (after `--`)
        #[arg(value_name = "COMMAND", trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Run a one-off instance of a service (its command, or COMMAND) with its configuration,
    /// after starting what it depends on; removed when it ends; exits with its exit code
    Run {
        #[arg(value_name = "SERVICE")]
        service: String,
        /// Let the network endpoint (`api.listen`) serve a non-loopback address without TLS, when
        /// starting the dependencies starts the stack
        #[arg(long)]
        insecure: bool,
        /// A command instead of the service's own (after `--`)
        #[arg(value_name = "COMMAND", trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Write one encrypted archive of the stack's state and of its services' data (each
    /// service's `backup.command`, run in a ready instance); prints the archive's path
    Backup {
        /// Where to write it [default: backups/<project>-<UTC time>.tug-backup beside the stack file]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only these services' data (the state is always in it)
        #[arg(value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Bring a stack that is down back to an archive's state and data: checks the whole archive,
    /// puts the state back, starts the services it holds dumps of, loads each with
    /// `backup.restore`, then starts the rest
    Restore {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The secrets key of the stack the archive came from (a copy of its .tug/secrets.key),
        /// when this folder has none (TUG_SECRETS_KEY also works)
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Let the network endpoint (`api.listen`) serve a non-loopback address without TLS
        #[arg(long)]
        insecure: bool,
    },
    /// Check this host and this stack before a deploy: the stack file and its secrets, the state
    /// folder's permissions, disk space, fixed ports, cgroups for `resources`, the container
    /// engine and images, a Redis registry (TLS in production, its clock). Exit 0 when all
    /// passed, 1 when one failed, 3 when some only warned
    Doctor {
        /// Print a JSON array of findings
        #[arg(long)]
        json: bool,
    },
    /// Stop everything in reverse dependency order; returns when all is gone
    Down {
        /// Also remove the named volumes the stack created (their data is lost)
        #[arg(short = 'v', long)]
        volumes: bool,
    },
    /// The routers' counters: requests by status class, latency, retries, ejections, per revision and instance
    Stats {
        /// Print JSON (the API's `GET /v1/stats`)
        #[arg(long)]
        json: bool,
        #[arg(value_name = "SERVICE")]
        service: Option<String>,
    },
    /// One row per instance: state, pid, port, restarts, health
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Show instances' logs, merged in time order
    Logs {
        /// Keep printing new lines (`-f` also works here)
        #[arg(long)]
        follow: bool,
        /// Only the last N lines of each instance
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Only lines since a time (RFC 3339) or a duration ago (10m, 1h)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        /// Also the logs of services no longer in the stack file
        #[arg(long)]
        all: bool,
        /// tug's own log (daemon.log: JSON lines, shown as text unless --json)
        #[arg(long, conflicts_with_all = ["names", "all", "since"])]
        daemon: bool,
        #[arg(value_name = "SERVICE|INSTANCE")]
        names: Vec<String>,
    },
    /// Start services or instances (and what they depend on)
    Start {
        #[arg(required = true, value_name = "SERVICE|INSTANCE")]
        targets: Vec<String>,
    },
    /// Stop services or instances gracefully
    Stop {
        #[arg(required = true, value_name = "SERVICE|INSTANCE")]
        targets: Vec<String>,
    },
    /// Restart services or instances
    Restart {
        #[arg(required = true, value_name = "SERVICE|INSTANCE")]
        targets: Vec<String>,
    },
    /// Set the number of instances: tug scale web=5 (removes the newest first)
    Scale {
        /// Return once the daemon accepted it, without waiting for new instances to be ready
        #[arg(long)]
        detach: bool,
        /// Give up waiting after this long (e.g. 2m); the instances go on starting
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        #[arg(required = true, value_name = "SERVICE=N")]
        assignments: Vec<String>,
    },
    /// The per-stack daemon (started by `tug up`)
    #[command(hide = true)]
    Daemon {
        #[arg(long)]
        serve: bool,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Where the service's latest rollout stands
    Status {
        #[arg(long)]
        json: bool,
        #[arg(value_name = "SERVICE")]
        service: String,
    },
    /// Blue-green: switch to the new set now; canary: skip the remaining steps (waits until it is done)
    Promote {
        /// Return once the daemon accepted it
        #[arg(long)]
        detach: bool,
        /// Give up waiting after this long (e.g. 5m); the rollout goes on
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        #[arg(value_name = "SERVICE")]
        service: String,
    },
    /// Stop the rollout under way; all traffic goes back to the stable revision (waits until it is done)
    Abort {
        /// Return once the daemon accepted it
        #[arg(long)]
        detach: bool,
        /// Give up waiting after this long (e.g. 5m); the rollout goes on
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        #[arg(value_name = "SERVICE")]
        service: String,
    },
    /// Go back to the last revision that completed before the current one (waits until it is done)
    Undo {
        /// Return once the daemon accepted it
        #[arg(long)]
        detach: bool,
        /// Give up waiting after this long (e.g. 5m); the rollout goes on
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        #[arg(value_name = "SERVICE")]
        service: String,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    tug_stackfile::units::parse_duration(text)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TokenKind {
    /// The bearer token of /metrics (for Prometheus's `authorization: { credentials: … }`)
    Metrics,
    /// The key webhooks are signed with (X-Tug-Signature: sha256=HMAC(key, "TIMESTAMP.BODY"))
    Webhook,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RenderTarget {
    Kubernetes,
    Compose,
    Systemd,
    /// Prometheus alerting and recording rules for the services' objectives (`slo`)
    Alerts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Docker Compose files (overlays merged in order, `.env` read as Compose reads it) to
    /// tug.yaml beside the first; reports every key not carried over, with its line
    Compose {
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// Where to write the stack file (`-` for standard output) [default: tug.yaml beside the first FILE]
        #[arg(short = 'o', long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Replace the stack file if it exists
        #[arg(long)]
        force: bool,
        /// The project's name [default: Compose's `name:`, else the folder's]
        #[arg(short = 'p', long, value_name = "NAME")]
        project_name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Generate every missing secret that has a `generate` rule
    Generate,
    /// List secrets: names, where each value comes from, dates; never values
    List {
        #[arg(long)]
        json: bool,
    },
    /// Set a secret from standard input (one trailing newline is dropped)
    Set { name: String },
    /// Replace a secret with a newly generated value
    Rotate { name: String },
    /// Remove a secret from the store
    Rm { name: String },
}

/// `-f` is the global `--file`, except after `logs`, where it means `--follow`
/// (as in `docker compose logs -f`): clap cannot express that, so it is rewritten here.
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy();
        if ["-f", "--file", "--env", "--env-file", "--profile", "--host", "--tls-ca", "--tls-cert", "--tls-key"]
            .contains(&arg.as_ref())
        {
            i += 2;
            continue;
        }
        if arg.starts_with('-') {
            i += 1;
            continue;
        }
        if arg == "logs" {
            for later in &mut args[i + 1..] {
                if later == "-f" {
                    *later = "--follow".into();
                }
            }
        }
        break;
    }
    args
}

fn main() -> ExitCode {
    // An instance's shim: as little as possible runs before it (it is on every start's path).
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|a| a == tug_supervisor::shim::ARG) {
        std::process::exit(tug_supervisor::shim::run(raw.collect()));
    }
    let mut cli = Cli::parse_from(arguments());
    // As Compose does: the stack file is the nearest `tug.yaml`, here or in a parent folder.
    if cli.stack.files.is_empty()
        && !matches!(cli.command, Command::Schema | Command::Import(_) | Command::Daemon { .. })
    {
        match stack::find_stack_file() {
            Ok(Some(found)) => cli.stack.files = vec![found],
            Ok(None) => {}
            // A remote daemon needs no local file for commands that only talk to it.
            Err(_) if cli.stack.host.is_some() => {}
            Err(message) => {
                eprintln!("{}", output::error_line(&message));
                return ExitCode::from(1);
            }
        }
    }
    let result = match cli.command {
        Command::Check { format } => stack::check(&cli.stack, format),
        Command::Config { json } => stack::config(&cli.stack, json),
        Command::Schema => output::print_json(&tug_stackfile::schema::schema()),
        Command::Secrets(command) => secrets::run(&cli.stack, command),
        Command::Render { target, out, include_secrets, rollouts, network_policies } => {
            let target = match target {
                RenderTarget::Kubernetes => tug_render::Target::Kubernetes,
                RenderTarget::Compose => tug_render::Target::Compose,
                RenderTarget::Systemd => tug_render::Target::Systemd,
                RenderTarget::Alerts => tug_render::Target::Alerts,
            };
            let tug_binary = std::env::current_exe().ok().map(|p| p.display().to_string());
            let options = tug_render::Options {
                include_secrets,
                tug_binary,
                argo_rollouts: rollouts.is_some(),
                network_policies,
            };
            render::command(&cli.stack, target, out, options)
        }
        Command::Import(ImportCommand::Compose { files, output, force, project_name }) => {
            import::compose(&cli.stack, import::ImportOptions { files, output, force, project_name })
        }
        Command::Up { plan: true, json, services, .. } | Command::Deploy { plan: true, json, services, .. } => {
            plan::show(&cli.stack, &services, json)
        }
        Command::Up { detach, timeout, advertise, listen, insecure, services, .. } => run::up(
            &cli.stack,
            run::UpOptions {
                detach,
                advertise,
                listen,
                insecure,
                services,
                timeout,
                deploy: false,
                no_wait: false,
                quiet: false,
            },
        ),
        Command::Deploy { detach, timeout, insecure, services, .. } => run::up(
            &cli.stack,
            run::UpOptions {
                detach: true,
                advertise: None,
                listen: None,
                insecure,
                services,
                timeout,
                deploy: true,
                no_wait: detach,
                quiet: false,
            },
        ),
        Command::Rollout(command) => match command {
            RolloutCommand::Status { json, service } => rollout::status(&cli.stack, &service, json),
            RolloutCommand::Promote { service, detach, timeout } => {
                rollout::act(&cli.stack, &service, RolloutAction::Promote, detach, timeout)
            }
            RolloutCommand::Abort { service, detach, timeout } => {
                rollout::act(&cli.stack, &service, RolloutAction::Abort, detach, timeout)
            }
            RolloutCommand::Undo { service, detach, timeout } => {
                rollout::act(&cli.stack, &service, RolloutAction::Undo, detach, timeout)
            }
        },
        Command::Dashboard { read_only } => run::dashboard(&cli.stack, read_only),
        Command::Token { kind } => run::token(
            &cli.stack,
            match kind {
                TokenKind::Metrics => "metrics",
                TokenKind::Webhook => "webhook",
            },
        ),
        Command::History { json, service } => rollout::history(&cli.stack, &service, json),
        Command::Down { volumes } => run::down(&cli.stack, volumes),
        Command::Doctor { json } => doctor::command(&cli.stack, json),
        Command::Backup { out, services } => backup::backup(&cli.stack, out, services),
        Command::Restore { file, key_file, insecure } => {
            backup::restore(&cli.stack, &file, key_file.as_deref(), insecure)
        }
        Command::Exec { target, command } => exec::exec(&cli.stack, &target, command),
        Command::Run { service, insecure, command } => exec::run(&cli.stack, &service, command, insecure),
        Command::Stats { json, service } => stats::command(&cli.stack, service, json),
        Command::Ps { json } => run::ps(&cli.stack, json),
        Command::Logs { follow, tail, since, json, all, daemon, names } => {
            logs::command(&cli.stack, logs::LogsOptions { follow, tail, since, json, all, daemon, names })
        }
        Command::Start { targets } => run::control(&cli.stack, "start", targets),
        Command::Stop { targets } => run::control(&cli.stack, "stop", targets),
        Command::Restart { targets } => run::control(&cli.stack, "restart", targets),
        Command::Scale { assignments, detach, timeout } => run::scale(&cli.stack, assignments, detach, timeout),
        Command::Daemon { serve, state_dir } => {
            let code = match daemon::state_dir_arg(state_dir) {
                Ok(dir) if serve => daemon::serve(&dir),
                Ok(dir) => daemon::keep(&dir),
                Err(error) => {
                    eprintln!("tug daemon: {error}");
                    2
                }
            };
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{}", output::error_line(&error));
            ExitCode::from(1)
        }
    }
}
