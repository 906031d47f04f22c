//! `tug render TARGET`: the compiled stack written for another engine. One module per target,
//! each a pure function from the stack to files; the same stack gives the same bytes.

pub mod alerts;
pub mod compose;
pub mod kubernetes;
pub mod systemd;

use serde_json::Value;
use tug_stackfile::Stack;
use tug_stackfile::emit;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Kubernetes,
    Compose,
    Systemd,
    Alerts,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Kubernetes => "kubernetes",
            Target::Compose => "compose",
            Target::Systemd => "systemd",
            Target::Alerts => "alerts",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Write secrets' values into the output (otherwise their keys, to fill).
    pub include_secrets: bool,
    /// systemd: the `tug` binary the boot unit runs.
    pub tug_binary: Option<String>,
    /// Kubernetes: canary and blue-green services as Argo Rollouts.
    pub argo_rollouts: bool,
    /// Kubernetes: NetworkPolicies from the dependency graph.
    pub network_policies: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{target} runs images: {} {} no `image` (or `build`); give {} an image, or leave {} out with a profile",
        services.join(", "),
        if services.len() == 1 { "has" } else { "have" },
        if services.len() == 1 { "it" } else { "each" },
        if services.len() == 1 { "it" } else { "them" }
    )]
    NeedsImage { target: &'static str, services: Vec<String> },
}

/// One document of a file, with comments written above it.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub value: Value,
    pub comments: Vec<String>,
}

impl Manifest {
    pub fn new(value: Value) -> Manifest {
        Manifest { value, comments: Vec::new() }
    }
}

/// A file to write: its name (within `--out`) and its content.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub path: String,
    pub manifests: Vec<Manifest>,
    /// Text as it is (a systemd unit, an env file), instead of YAML documents.
    pub raw: Option<String>,
}

impl File {
    pub fn new(path: String, manifests: Vec<Manifest>) -> File {
        File { path, manifests, raw: None }
    }

    pub fn raw(path: String, text: String) -> File {
        File { path, manifests: Vec::new(), raw: Some(text) }
    }

    /// The file's text: YAML documents separated by `---`, or the raw text.
    pub fn text(&self) -> String {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut out = String::new();
        for (i, manifest) in self.manifests.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            let root = match emit::from_json(&manifest.value) {
                emit::Value::Map(map) => map,
                _ => emit::Map::default(),
            };
            out.push_str(&emit::document(&manifest.comments, &root));
        }
        out
    }
}

pub fn render(stack: &Stack, target: Target, options: &Options) -> Result<Vec<File>, Error> {
    match target {
        Target::Kubernetes => kubernetes::render(stack, options),
        Target::Compose => compose::render(stack, options),
        Target::Systemd => systemd::render(stack, options),
        Target::Alerts => alerts::render(stack, options),
    }
}

/// Every file as one stream (stdout): each introduced by a comment naming it (YAML
/// documents separated by `---`, other files by a blank line).
pub fn stream(files: &[File]) -> String {
    let mut out = String::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            out.push_str(if file.raw.is_some() { "\n" } else { "---\n" });
        }
        out.push_str(&format!("# {}\n", file.path));
        out.push_str(&file.text());
    }
    out
}
