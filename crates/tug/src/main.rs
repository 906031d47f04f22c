//! `tug`: one binary that turns one stack file into a running stack.
//!
//! This file is the command line: it parses flags, calls the library crates, and
//! turns their results into output and exit codes (0 ok, 1 failed, 2 usage).

mod output;
mod secrets;
mod stack;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Human,
    Json,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { format } => stack::check(&cli.stack, format),
        Command::Config { json } => stack::config(&cli.stack, json),
        Command::Schema => output::print_json(&tug_stackfile::schema::schema()),
        Command::Secrets(command) => secrets::run(&cli.stack, command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{}", output::error_line(&error));
            ExitCode::from(1)
        }
    }
}
