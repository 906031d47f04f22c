//! `tug secrets generate | list | set | rotate | rm`: never prints a value.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use tug_secrets::{EntryInfo, Origin, Secret, Store, format_rfc3339};
use tug_stackfile::{Compiled, Generate, Setting, Source, Stack};

use crate::output;
use crate::stack::{self, Loaded, load, print_diagnostics, store_for_writing};
use crate::{SecretsCommand, StackArgs};

pub fn run(args: &StackArgs, command: SecretsCommand) -> Result<ExitCode, String> {
    match command {
        SecretsCommand::Generate => generate(args),
        SecretsCommand::List { json } => list(args, json),
        SecretsCommand::Set { name } => set(args, &name),
        SecretsCommand::Rotate { name } => rotate(args, &name),
        SecretsCommand::Rm { name } => remove(args, &name),
    }
}

/// Every secret setting of the stack (shared, then services' own), once each.
fn secret_settings(stack: &Stack) -> Vec<(&str, &Setting)> {
    let mut out: Vec<(&str, &Setting)> = Vec::new();
    let own = stack.services.values().flat_map(|s| s.settings.iter());
    for (name, setting) in stack.settings.iter().chain(own) {
        if setting.is_secret() && !out.iter().any(|(n, _)| *n == name.as_str()) {
            out.push((name, setting));
        }
    }
    out
}

pub fn require_valid(compiled: &Compiled) -> Result<&Stack, String> {
    compiled.valid().ok_or_else(|| {
        print_diagnostics(compiled, output::stderr_palette(), true);
        "the stack is invalid: fix the errors above first".to_string()
    })
}

fn generate(args: &StackArgs) -> Result<ExitCode, String> {
    let Loaded { compiled, state_dir, store } = load(args)?;
    let stack = require_valid(&compiled)?;
    let report = generate_missing(stack, &state_dir, store)?;
    if report.is_empty() {
        return output::write_stdout("nothing to generate: every secret has a value\n");
    }
    output::write_stdout(&report)
}

/// Generates every secret that has a `generate` rule and no value yet, and saves
/// them in the store. Returns one line per secret made (empty when none).
pub fn generate_missing(
    stack: &Stack,
    state_dir: &std::path::Path,
    store: Result<Option<tug_secrets::Store>, String>,
) -> Result<String, String> {
    let missing = to_be_generated(stack);
    if missing.is_empty() {
        return Ok(String::new());
    }
    let mut store = store_for_writing(store, state_dir)?;
    let mut report = String::new();
    for (name, rule) in &missing {
        let value = tug_secrets::generate(rule.length, rule.charset).map_err(|e| e.to_string())?;
        store.insert(name, value, Origin::Generated);
        report.push_str(&format!("generated {name} ({} {} characters)\n", rule.length, rule.charset.as_str()));
    }
    store.save().map_err(|e| e.to_string())?;
    Ok(report)
}

/// The secrets `up` would generate now: `generate` set, and no value from anywhere.
fn to_be_generated(stack: &Stack) -> Vec<(&str, Generate)> {
    secret_settings(stack)
        .into_iter()
        .filter(|(_, s)| s.source == Source::ToBeGenerated)
        .filter_map(|(n, s)| s.spec.generate.map(|g| (n, g)))
        .collect()
}

/// For a remote daemon (`tug --host`): a secret generated here would differ from the one
/// that host generated and runs with (a database's password), so none is; the user brings
/// that host's values.
pub fn refuse_generating_for_remote(stack: &Stack, host: &str) -> Result<(), String> {
    let missing: Vec<&str> = to_be_generated(stack).into_iter().map(|(name, _)| name).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "--host {host}: {} would be generated here, but the stack's generated secrets belong to the host that \
         runs it, and a new value would replace the one it runs with; copy that host's .tug/{} into this stack's \
         .tug folder with its key (.tug/{} or TUG_SECRETS_KEY), or give the values (environment or an env file)",
        missing.join(", "),
        tug_secrets::Store::FILE,
        tug_secrets::Store::KEY_FILE,
    ))
}

fn source_name(source: &Source) -> String {
    match source {
        Source::Value => "value".into(),
        Source::Environment => "environment".into(),
        Source::EnvFile(path) => format!("env file {}", path.display()),
        Source::SecretStore => "store".into(),
        Source::Default => "default".into(),
        Source::ToBeGenerated => "to be generated".into(),
        Source::Unset => "missing".into(),
    }
}

fn list(args: &StackArgs, json: bool) -> Result<ExitCode, String> {
    let loaded = load(args)?;
    let store = loaded.store.as_ref().map_err(String::clone)?.as_ref();
    let defined: Vec<(&str, &Setting)> = loaded.compiled.stack.as_ref().map(secret_settings).unwrap_or_default();
    let row = |name: &str, source: String, info: Option<EntryInfo>| {
        serde_json::json!({
            "name": name,
            "source": source,
            "origin": info.as_ref().map(|i| i.origin.as_str()),
            "version": info.as_ref().map(|i| i.version),
            "created_at": info.as_ref().map(|i| format_rfc3339(i.created_at)),
            "updated_at": info.as_ref().map(|i| format_rfc3339(i.updated_at)),
        })
    };
    let mut rows: Vec<serde_json::Value> = defined
        .iter()
        .map(|(name, setting)| row(name, source_name(&setting.source), store.and_then(|s| s.info(name))))
        .collect();
    // Stored values that the stack no longer defines.
    for info in store.map(Store::list).unwrap_or_default() {
        if !defined.iter().any(|(n, _)| *n == info.name) {
            rows.push(row(&info.name.clone(), "store (not defined in the stack)".into(), Some(info)));
        }
    }
    if json {
        return output::print_json(&serde_json::Value::Array(rows));
    }
    if rows.is_empty() {
        return output::write_stdout("no secrets: the stack defines none and the store holds none\n");
    }
    let cell = |row: &serde_json::Value, key: &str| match &row[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let columns = ["name", "source", "origin", "version", "updated_at"];
    let widths: Vec<usize> =
        columns.iter().map(|c| rows.iter().map(|r| cell(r, c).len()).max().unwrap_or(0).max(c.len())).collect();
    let mut text = String::new();
    let line = |cells: Vec<String>| {
        let mut l = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    text.push_str(&line(columns.iter().map(|c| c.to_uppercase()).collect()));
    for row in &rows {
        text.push_str(&line(columns.iter().map(|c| cell(row, c)).collect()));
    }
    output::write_stdout(&text)
}

/// Every definition of a secret (shared, or services' own), with a suggestion when
/// the name is unknown.
fn find_secret<'s>(compiled: &'s Compiled, name: &str) -> Result<Vec<&'s Setting>, String> {
    let Some(stack) = compiled.stack.as_ref() else {
        print_diagnostics(compiled, output::stderr_palette(), true);
        return Err("the stack cannot be read: fix the errors above first".into());
    };
    let own = stack.services.values().flat_map(|s| s.settings.get_key_value(name));
    let definitions: Vec<&Setting> =
        stack.settings.get_key_value(name).into_iter().chain(own).map(|(_, s)| s).filter(|s| s.is_secret()).collect();
    if !definitions.is_empty() {
        return Ok(definitions);
    }
    let secrets = secret_settings(stack);
    let defined_elsewhere =
        stack.settings.contains_key(name) || stack.services.values().any(|s| s.settings.contains_key(name));
    if defined_elsewhere {
        return Err(format!(
            "`{name}` is a setting but not a secret: set it in the environment or .env, or declare it `type: secret`"
        ));
    }
    let hint = match tug_stackfile::read::suggest(name, secrets.iter().map(|(n, _)| *n)) {
        Some(s) => format!("; did you mean `{s}`?"),
        None => "; define it under `settings:` with `type: secret`".into(),
    };
    Err(format!("the stack defines no secret `{name}`{hint}"))
}

/// The value from standard input: all of it from a pipe; one line, not echoed, from a terminal.
fn read_value(name: &str) -> Result<String, String> {
    let mut input = String::new();
    let mut stdin = std::io::stdin();
    if !stdin.is_terminal() {
        stdin.read_to_string(&mut input).map_err(|e| format!("cannot read the value from standard input: {e}"))?;
        return Ok(input);
    }
    eprint!("value for {name} (not shown): ");
    let echo = |on: bool| {
        let tty = std::fs::File::open("/dev/tty").ok()?;
        std::process::Command::new("stty").arg(if on { "echo" } else { "-echo" }).stdin(tty).status().ok()
    };
    let hidden = echo(false).is_some_and(|s| s.success());
    let read = stdin.read_line(&mut input);
    if hidden {
        echo(true);
    }
    eprintln!();
    if !hidden {
        return Err("cannot turn off the terminal's echo to read a secret: pipe the value in instead".into());
    }
    read.map_err(|e| format!("cannot read the value: {e}"))?;
    Ok(input)
}

fn set(args: &StackArgs, name: &str) -> Result<ExitCode, String> {
    let Loaded { compiled, state_dir, store } = load(args)?;
    let definitions = find_secret(&compiled, name)?;
    if definitions.iter().any(|d| d.source == Source::Value) {
        return Err(format!(
            "`{name}` has a `value:` in the stack file, which always wins: a stored value would never be used"
        ));
    }
    let input = read_value(name)?;
    let trimmed = input.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&input);
    if trimmed.is_empty() {
        return Err(format!(
            "no value for `{name}` on standard input: pipe it in, e.g. `tug secrets set {name} < file`"
        ));
    }
    // The same rule `tug check` applies, so a stored value never makes the stack invalid.
    let mut problems: Vec<String> =
        definitions.iter().flat_map(|d| tug_stackfile::settings::problems_with(name, d, trimmed)).collect();
    problems.dedup();
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{}", output::error_line(problem));
        }
        return Err(format!("`{name}` was not stored: the value breaks its rule"));
    }
    match &definitions[0].source {
        Source::Environment => {
            eprintln!("warning: `{name}` is also set in the environment, which takes precedence over the store")
        }
        Source::EnvFile(file) => {
            eprintln!("warning: `{name}` is also set in {}, which takes precedence over the store", file.display())
        }
        _ => {}
    }
    let mut store = store_for_writing(store, &state_dir)?;
    store.insert(name, Secret::new(trimmed.to_string()), Origin::Set);
    store.save().map_err(|e| e.to_string())?;
    let version = store.info(name).map(|i| i.version).unwrap_or(1);
    output::write_stdout(&format!("set {name} (version {version})\n"))
}

fn rotate(args: &StackArgs, name: &str) -> Result<ExitCode, String> {
    let Loaded { compiled, state_dir, store } = load(args)?;
    let definitions = find_secret(&compiled, name)?;
    let Some(rule) = definitions.iter().find_map(|d| d.spec.generate) else {
        return Err(format!(
            "`{name}` has no `generate` rule, so tug cannot make a new value: use `tug secrets set {name}`"
        ));
    };
    let mut store = store_for_writing(store, &state_dir)?;
    let value = tug_secrets::generate(rule.length, rule.charset).map_err(|e| e.to_string())?;
    store.insert(name, value, Origin::Generated);
    store.save().map_err(|e| e.to_string())?;
    let version = store.info(name).map(|i| i.version).unwrap_or(1);
    output::write_stdout(&format!(
        "rotated {name} (version {version}); services that use it get the new value when they restart\n"
    ))
}

fn remove(args: &StackArgs, name: &str) -> Result<ExitCode, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let state_dir = stack::state_dir(args, &cwd);
    let mut store = Store::open(&state_dir, stack::secrets_key_env().as_deref())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("there is no secret store in {}", state_dir.display()))?;
    if !store.remove(name) {
        return Err(format!("the store holds no secret `{name}`"));
    }
    store.save().map_err(|e| e.to_string())?;
    output::write_stdout(&format!("removed {name}\n"))
}
