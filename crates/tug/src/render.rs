//! `tug render TARGET [--out DIR]`: the stack written for another engine, from the compiled
//! stack (its environment overlay and settings applied). Standard output without `--out`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::StackArgs;
use crate::output;
use crate::stack::{self, Loaded};

pub fn command(
    args: &StackArgs,
    target: tug_render::Target,
    out: Option<PathBuf>,
    options: tug_render::Options,
) -> Result<ExitCode, String> {
    let Loaded { compiled, .. } = stack::load(args)?;
    let stack = crate::secrets::require_valid(&compiled)?;
    stack::print_problems(&compiled, output::stderr_palette(), true, tug_stackfile::Severity::Warning);
    let files = tug_render::render(stack, target, &options).map_err(|e| e.to_string())?;
    let Some(dir) = out else {
        return output::write_stdout(&tug_render::stream(&files));
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for file in &files {
        let path = dir.join(&file.path);
        tug_supervisor::persist::write_atomic(&path, file.text().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("wrote {} files for {} into {}", files.len(), target.as_str(), dir.display());
    Ok(ExitCode::SUCCESS)
}
