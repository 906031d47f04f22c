//! `tug render TARGET`: the compiled stack written for another engine. One module per target,
//! each a pure function from the stack to files; the same stack gives the same bytes.

pub mod kubernetes;

use serde_json::Value;
use tug_stackfile::Stack;
use tug_stackfile::emit;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Kubernetes,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Write secrets' values into the output (otherwise their keys, to fill).
    pub include_secrets: bool,
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

/// A file to write: its name (within `--out`) and its documents.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub path: String,
    pub manifests: Vec<Manifest>,
}

impl File {
    pub fn new(path: String, manifests: Vec<Manifest>) -> File {
        File { path, manifests }
    }

    /// The file's text: YAML documents separated by `---`.
    pub fn text(&self) -> String {
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
    }
}

/// Every file as one stream (stdout): each introduced by a comment naming it.
pub fn stream(files: &[File]) -> String {
    let mut out = String::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&format!("# {}\n", file.path));
        out.push_str(&file.text());
    }
    out
}
