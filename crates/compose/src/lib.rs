//! `tug import compose`: Docker Compose files read as Compose reads them (overlays,
//! `.env`, interpolation, anchors and merge keys, `x-` extensions) and written as one tug
//! stack file, with a finding for every choice made and every key not carried over.
//!
//! [`load`] reads and merges; [`convert`] maps field by field; `tug_stackfile::emit` writes YAML.

pub mod convert;
pub mod load;
pub mod ports;

use std::collections::HashMap;
use std::path::PathBuf;

use tug_stackfile::{Diagnostic, Severity, SourceMap};

pub struct Options {
    /// Compose files, later ones merged over earlier.
    pub files: Vec<PathBuf>,
    /// `--env-file`: replaces the `.env` beside the first file, as in Compose.
    pub env_files: Vec<PathBuf>,
    pub process_env: HashMap<String, String>,
    /// `--project-name`, else Compose's `name:`, else the folder's name.
    pub project_name: Option<String>,
    /// Where the stack file will be written: relative paths are rewritten against it.
    pub output_dir: PathBuf,
}

pub struct Imported {
    /// The stack file.
    pub text: String,
    /// Every choice and every key not carried over, pointing into `sources`.
    pub findings: Vec<Diagnostic>,
    pub sources: SourceMap,
    /// Secrets Compose reads from files: (setting, file) to put into tug's secret store.
    pub secret_files: Vec<(String, PathBuf)>,
}

impl Imported {
    /// Whether the Compose files themselves are invalid (Compose would refuse them too).
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Compose file given")]
    NoFiles,
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("{}:{}:{}: {}", path.display(), diagnostic.span.map_or(0, |s| s.line), diagnostic.span.map_or(0, |s| s.col), diagnostic.message)]
    Yaml { path: PathBuf, diagnostic: Box<Diagnostic> },
    #[error("{}: not a Compose file: {message}", path.display())]
    NotCompose { path: PathBuf, message: String },
    #[error("{}:{line}: {message}", path.display())]
    EnvFile { path: PathBuf, line: u32, message: String },
}

pub fn import(options: &Options) -> Result<Imported, Error> {
    let loaded = load::load(&options.files, &options.env_files, &options.process_env)?;
    let cx = convert::Context {
        vars: &loaded.vars,
        project_dir: &loaded.project_dir,
        output_dir: &options.output_dir,
        project_name: options.project_name.as_deref(),
    };
    let converted = convert::convert(&loaded.root, &cx);
    let shown: Vec<String> = options.files.iter().map(|f| convert::relative_path(f, &options.output_dir)).collect();
    let mut header = vec![
        format!("Imported from {} by `tug import compose`.", shown.join(" + ")),
        "Comments mark where the import chose; `tug check` explains every field.".to_string(),
    ];
    if let Some(env) = loaded.vars.env_files.first() {
        let env = convert::relative_path(env, &options.output_dir);
        header.push(format!("${{VARIABLES}} are read from {env} and the environment, as Compose read them."));
    }
    let text = tug_stackfile::emit::document(&header, &converted.root);
    let findings = fold_repeats(converted.findings);
    Ok(Imported { text, findings, sources: loaded.sources, secret_files: converted.secret_files })
}

/// One finding per place and message: a line shared through an anchor (`<<: *app`) is
/// reported once, naming every service it reached.
fn fold_repeats(findings: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<(Diagnostic, usize)> = Vec::new();
    for finding in findings {
        let generic = |d: &Diagnostic| (d.span, d.severity, d.message.clone());
        match out.iter_mut().find(|(d, _)| generic(d) == generic(&finding)) {
            Some((_, more)) => *more += 1,
            None => out.push((finding, 0)),
        }
    }
    let mut out: Vec<Diagnostic> = out
        .into_iter()
        .map(|(mut d, more)| {
            if more > 0 {
                d.path = format!("{} and {more} more", d.path);
            }
            d
        })
        .collect();
    out.sort_by_key(|f| f.span);
    out
}

#[cfg(test)]
mod tests;
