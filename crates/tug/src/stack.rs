//! `tug check` and `tug config`, and loading a stack for any command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tug_secrets::{Secret, Store};
use tug_stackfile::diag::{self, Palette};
use tug_stackfile::{Compiled, Diagnostic, Options, SecretSource, ServiceKind, Severity};

use crate::output;
use crate::{CheckFormat, StackArgs};

/// The folder of the first stack file: where `.tug/` and `.env` live.
pub fn stack_root(args: &StackArgs, cwd: &Path) -> PathBuf {
    let first = args.files.first().map(|f| cwd.join(f)).unwrap_or_else(|| cwd.join(tug_stackfile::DEFAULT_FILE));
    first.parent().map(Path::to_path_buf).unwrap_or_else(|| cwd.to_path_buf())
}

/// The nearest `tug.yaml`: in the current folder or the closest parent that has one. `None`
/// when there is none but `TUG_STATE_DIR` names the stack's state (commands that only talk to
/// its daemon still work); an error naming where it looked otherwise.
pub fn find_stack_file() -> Result<Option<PathBuf>, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    for dir in cwd.ancestors() {
        let candidate = dir.join(tug_stackfile::DEFAULT_FILE);
        if candidate.is_file() {
            // In the current folder, relative, so messages say `tug.yaml` as before.
            return Ok(Some(if dir == cwd { PathBuf::from(tug_stackfile::DEFAULT_FILE) } else { candidate }));
        }
    }
    if std::env::var_os("TUG_STATE_DIR").is_some_and(|d| !d.is_empty()) {
        return Ok(None);
    }
    Err(format!(
        "no {} in {} or any folder above it: write one (or `tug import compose docker-compose.yml`), \
         or give it with -f",
        tug_stackfile::DEFAULT_FILE,
        cwd.display()
    ))
}

/// The default state folder's name, beside the stack file.
pub const STATE_FOLDER: &str = ".tug";

/// The stack's state folder: `.tug/` beside the stack file, or `TUG_STATE_DIR`.
pub fn state_dir(args: &StackArgs, cwd: &Path) -> PathBuf {
    let dir = match std::env::var_os("TUG_STATE_DIR") {
        Some(dir) if !dir.is_empty() => cwd.join(dir),
        _ => stack_root(args, cwd).join(STATE_FOLDER),
    };
    canonical(&dir)
}

/// `path` without `..`, `.` or symbolic links (as far as it exists), as the daemon names it: the
/// state folder labels containers and volumes and names the revisions' copies, so `-f ../x` and
/// `cd x` must give the same one.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => canonical(parent).join(name),
        _ => path.to_path_buf(),
    }
}

pub fn secrets_key_env() -> Option<String> {
    std::env::var("TUG_SECRETS_KEY").ok().filter(|k| !k.is_empty())
}

/// Secrets from the encrypted store, when it can be opened.
struct StoreSource<'a>(Option<&'a Store>);

impl SecretSource for StoreSource<'_> {
    fn get(&self, name: &str) -> Option<Secret> {
        self.0.and_then(|s| s.get(name).cloned())
    }
}

pub struct Loaded {
    pub compiled: Compiled,
    pub state_dir: PathBuf,
    /// The store as opened for compiling (decrypted once per command): none yet, or why
    /// it cannot be opened.
    pub store: Result<Option<Store>, String>,
}

/// The store to change: the one already open, or a new one when there is none yet.
/// A store that could not be opened is never replaced.
pub fn store_for_writing(store: Result<Option<Store>, String>, state_dir: &Path) -> Result<Store, String> {
    match store {
        Ok(Some(store)) => Ok(store),
        Ok(None) => Store::open_or_create(state_dir, secrets_key_env().as_deref()).map_err(|e| e.to_string()),
        Err(error) => Err(error),
    }
}

/// Compiles the stack with its stored secrets. A store that cannot be opened is
/// reported as a diagnostic (the rest is still checked).
pub fn load(args: &StackArgs) -> Result<Loaded, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let state_dir = state_dir(args, &cwd);
    let store = Store::open(&state_dir, secrets_key_env().as_deref()).map_err(|e| e.to_string());
    let options = Options {
        files: args.files.clone(),
        cwd,
        environment: args.environment.clone().filter(|e| !e.is_empty()),
        env_files: args.env_files.clone(),
        profiles: args.profiles.iter().filter(|p| !p.is_empty()).cloned().collect(),
        process_env: std::env::vars().collect(),
        check_commands: true,
    };
    let mut compiled = tug_stackfile::compile(&options, &StoreSource(store.as_ref().ok().and_then(Option::as_ref)));
    if let Err(error) = &store {
        compiled.diagnostics.push(
            Diagnostic::error("secret-store", None, "", format!("the secret store cannot be opened: {error}"))
                .with_file(state_dir.join(Store::FILE)),
        );
    }
    Ok(Loaded { compiled, state_dir, store })
}

pub fn print_diagnostics(compiled: &Compiled, palette: Palette, to_stderr: bool) {
    print_problems(compiled, palette, to_stderr, Severity::Note);
}

/// The diagnostics as severe as `least` or more: commands that act on a stack show its errors
/// and warnings, and leave the notes to `tug check`.
pub fn print_problems(compiled: &Compiled, palette: Palette, to_stderr: bool, least: Severity) {
    let rank = |s: Severity| match s {
        Severity::Error => 0,
        Severity::Warning => 1,
        Severity::Note => 2,
    };
    let mut text = String::new();
    for d in compiled.diagnostics.items.iter().filter(|d| rank(d.severity) <= rank(least)) {
        text.push_str(&diag::render_human(d, &compiled.sources, palette));
    }
    if to_stderr {
        eprint!("{text}");
    } else {
        // Output errors are not worth more than the diagnostics themselves.
        let _ = output::write_stdout(&text);
    }
}

fn summary(compiled: &Compiled) -> String {
    let count = |severity, word: &str| {
        let n = compiled.diagnostics.count(severity);
        format!("{n} {word}{}", if n == 1 { "" } else { "s" })
    };
    format!(
        "{}, {}, {}",
        count(Severity::Error, "error"),
        count(Severity::Warning, "warning"),
        count(Severity::Note, "note")
    )
}

pub fn check(args: &StackArgs, format: CheckFormat) -> Result<ExitCode, String> {
    let loaded = load(args)?;
    let compiled = &loaded.compiled;
    let valid = compiled.valid().is_some();
    match format {
        CheckFormat::Json => {
            let diagnostics: Vec<_> =
                compiled.diagnostics.items.iter().map(|d| diag::to_json(d, &compiled.sources)).collect();
            output::print_json(&serde_json::json!({
                "valid": valid,
                "project": compiled.stack.as_ref().map(|s| s.name.clone()),
                "environment": compiled.stack.as_ref().map(|s| s.environment.clone()),
                "errors": compiled.diagnostics.count(Severity::Error),
                "warnings": compiled.diagnostics.count(Severity::Warning),
                "notes": compiled.diagnostics.count(Severity::Note),
                "diagnostics": diagnostics,
            }))?;
        }
        CheckFormat::Human => {
            let palette = output::stdout_palette();
            print_diagnostics(compiled, palette, false);
            let line = match compiled.valid() {
                Some(stack) => {
                    let jobs = stack.services.values().filter(|s| s.kind == ServiceKind::Job).count();
                    let services = stack.services.len() - jobs;
                    format!(
                        "{}✓{} {}: valid (environment {}; {services} service{}, {jobs} job{}; {})\n",
                        palette.bold,
                        palette.reset,
                        stack.name,
                        stack.environment,
                        if services == 1 { "" } else { "s" },
                        if jobs == 1 { "" } else { "s" },
                        summary(compiled)
                    )
                }
                None => format!("{}✗ invalid:{} {}\n", palette.error, palette.reset, summary(compiled)),
            };
            output::write_stdout(&line)?;
        }
    }
    Ok(if valid { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn config(args: &StackArgs, json: bool) -> Result<ExitCode, String> {
    let loaded = load(args)?;
    let Some(stack) = loaded.compiled.valid() else {
        print_diagnostics(&loaded.compiled, output::stderr_palette(), true);
        return Err(format!("the stack is invalid ({})", summary(&loaded.compiled)));
    };
    // Serializing the model masks every sensitive value (see tug_stackfile::Text).
    let value = serde_json::to_value(stack).map_err(|e| format!("cannot encode the stack: {e}"))?;
    if json { output::print_json(&value) } else { output::write_stdout(&output::to_yaml(&value)) }
}
