//! `tug import compose FILE...`: writes a tug stack file from Compose files, reports every
//! choice and every key not carried over, stores the secrets Compose read from files, and
//! checks the result as `tug check` would.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tug_secrets::{Origin, Secret, Store};
use tug_stackfile::diag;

use crate::StackArgs;
use crate::output;
use crate::stack::{self, secrets_key_env};

pub struct ImportOptions {
    pub files: Vec<PathBuf>,
    /// The stack file to write; `-` for standard output.
    pub output: Option<PathBuf>,
    pub force: bool,
    pub project_name: Option<String>,
}

pub fn compose(args: &StackArgs, options: ImportOptions) -> Result<ExitCode, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let first = options.files.first().ok_or("give at least one Compose file")?;
    let to_stdout = options.output.as_deref() == Some(Path::new("-"));
    let output = match &options.output {
        Some(path) if !to_stdout => cwd.join(path),
        _ => cwd.join(first).parent().unwrap_or(&cwd).join(tug_stackfile::DEFAULT_FILE),
    };
    if !to_stdout && output.exists() && !options.force {
        return Err(format!(
            "{} already exists: pass --force to replace it, or -o to write elsewhere",
            output.display()
        ));
    }
    let output_dir = output.parent().map(Path::to_path_buf).unwrap_or_else(|| cwd.clone());
    let imported = tug_compose::import(&tug_compose::Options {
        files: options.files.iter().map(|f| cwd.join(f)).collect(),
        env_files: args.env_files.iter().map(|f| cwd.join(f)).collect(),
        process_env: std::env::vars().collect(),
        project_name: options.project_name.clone(),
        output_dir: output_dir.clone(),
    })
    .map_err(|e| e.to_string())?;
    let palette = output::stderr_palette();
    for finding in &imported.findings {
        eprint!("{}", diag::render_human(finding, &imported.sources, palette));
    }
    if imported.has_errors() {
        return Err("the Compose files are invalid (Compose would refuse them too): nothing was written".into());
    }
    if to_stdout {
        output::write_stdout(&imported.text)?;
        if !imported.secret_files.is_empty() {
            eprintln!("note: secrets read from files are not stored when the stack goes to standard output");
        }
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&output_dir).map_err(|e| format!("cannot create {}: {e}", output_dir.display()))?;
    tug_supervisor::persist::write_atomic(&output, imported.text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    let stack_args = StackArgs { files: vec![output.clone()], ..args.clone() };
    store_secret_files(&stack::state_dir(&stack_args, &cwd), &imported.secret_files)?;
    let shown = output.strip_prefix(&cwd).unwrap_or(&output).display().to_string();
    let warnings = imported.findings.iter().filter(|f| f.severity == tug_stackfile::Severity::Warning).count();
    eprintln!(
        "wrote {shown}: {warnings} key{} not carried over, {} choice{} noted above",
        if warnings == 1 { "" } else { "s" },
        imported.findings.len() - warnings,
        if imported.findings.len() - warnings == 1 { "" } else { "s" },
    );
    // The result must be a stack tug accepts: check it as `tug check` would.
    let loaded = stack::load(&stack_args)?;
    match loaded.compiled.valid() {
        Some(stack) => {
            stack::print_problems(&loaded.compiled, palette, true, tug_stackfile::Severity::Warning);
            eprintln!("tug check: {} is valid ({} services); start it with `tug up`", stack.name, stack.services.len());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            stack::print_problems(&loaded.compiled, palette, true, tug_stackfile::Severity::Warning);
            eprintln!("tug check: {shown} needs the changes above before `tug up`");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Compose reads these secrets from files; tug keeps secrets in its encrypted store. A
/// value already stored is kept: the store is where it is changed from now on.
fn store_secret_files(state_dir: &Path, files: &[(String, PathBuf)]) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    let mut store = Store::open_or_create(state_dir, secrets_key_env().as_deref()).map_err(|e| e.to_string())?;
    let mut changed = false;
    for (name, file) in files {
        if store.get(name).is_some() {
            eprintln!("secret {name}: already in the store, kept (change it with `tug secrets set {name}`)");
            continue;
        }
        let value =
            std::fs::read_to_string(file).map_err(|e| format!("secret {name}: cannot read {}: {e}", file.display()))?;
        store.insert(name, Secret::new(value), Origin::Set);
        changed = true;
        eprintln!("secret {name}: stored from {} in the encrypted store", file.display());
    }
    if changed {
        store.save().map_err(|e| e.to_string())?;
    }
    Ok(())
}
