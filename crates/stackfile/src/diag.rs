//! Diagnostics: every problem found in a stack file, with where it is and what to do.
//!
//! Compilation never stops at the first problem: each stage pushes into one
//! [`Diagnostics`] list so that `tug check` reports everything in one run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A position in a source file (1-based line and column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub file: u32,
    pub line: u32,
    pub col: u32,
}

/// The files read during one compilation, so that diagnostics can show source lines.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<(PathBuf, String)>,
}

impl SourceMap {
    pub fn add(&mut self, path: PathBuf, text: String) -> u32 {
        self.files.push((path, text));
        (self.files.len() - 1) as u32
    }

    pub fn path(&self, file: u32) -> &Path {
        &self.files[file as usize].0
    }

    pub fn text(&self, file: u32) -> &str {
        &self.files[file as usize].1
    }

    fn line(&self, span: Span) -> Option<&str> {
        self.files.get(span.file as usize).and_then(|(_, text)| text.lines().nth(span.line.saturating_sub(1) as usize))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    /// Worth knowing, never a failure (for example: a secret that `up` will generate).
    Note,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

/// One problem: where, what, and how to fix it.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable identifier of the kind of problem (`unknown-field`, `dependency-cycle`, ...).
    pub code: &'static str,
    pub span: Option<Span>,
    /// The file, when the problem is about a file that has no span (cannot be read, say).
    pub file: Option<PathBuf>,
    /// The key path in the stack, such as `services.api.healthcheck.interval`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
    /// About a sensitive value: its source line is never shown (it may hold the secret).
    pub sensitive: bool,
}

impl Diagnostic {
    pub fn error(code: &'static str, span: Option<Span>, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            span,
            file: None,
            path: path.into(),
            message: message.into(),
            hint: None,
            sensitive: false,
        }
    }

    pub fn warning(
        code: &'static str,
        span: Option<Span>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, span, path, message) }
    }

    pub fn note(code: &'static str, span: Option<Span>, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Note, ..Diagnostic::error(code, span, path, message) }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn sensitive(mut self, sensitive: bool) -> Self {
        self.sensitive = sensitive;
        self
    }

    pub fn with_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }
}

/// The diagnostics of one compilation.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.items.iter().filter(|d| d.severity == severity).count()
    }

    pub fn has_errors(&self) -> bool {
        self.count(Severity::Error) > 0
    }

    /// Orders by file and position (problems without a position last), keeping the
    /// discovery order of problems at the same place, and drops exact repeats.
    pub fn sort(&mut self) {
        self.items.sort_by_key(|d| (d.span.is_none(), d.span.map(|s| (s.file, s.line, s.col))));
        self.items.dedup();
    }
}

/// Where a diagnostic points, as `file:line:col`.
pub fn location(diagnostic: &Diagnostic, sources: &SourceMap) -> Option<String> {
    match (diagnostic.span, &diagnostic.file) {
        (Some(span), _) => Some(format!("{}:{}:{}", sources.path(span.file).display(), span.line, span.col)),
        (None, Some(file)) => Some(file.display().to_string()),
        (None, None) => None,
    }
}

/// Colours for the human rendering; all empty when output is not a terminal.
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    pub error: &'static str,
    pub warning: &'static str,
    pub note: &'static str,
    pub dim: &'static str,
    pub bold: &'static str,
    pub reset: &'static str,
}

impl Palette {
    pub const PLAIN: Palette = Palette { error: "", warning: "", note: "", dim: "", bold: "", reset: "" };
    pub const ANSI: Palette = Palette {
        error: "\x1b[1;31m",
        warning: "\x1b[1;33m",
        note: "\x1b[1;36m",
        dim: "\x1b[2m",
        bold: "\x1b[1m",
        reset: "\x1b[0m",
    };

    fn severity(&self, severity: Severity) -> &'static str {
        match severity {
            Severity::Error => self.error,
            Severity::Warning => self.warning,
            Severity::Note => self.note,
        }
    }
}

/// Renders one diagnostic for a person, with the source line and a caret under the column.
pub fn render_human(diagnostic: &Diagnostic, sources: &SourceMap, palette: Palette) -> String {
    let p = palette;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}{}[{}]{}{}: {}{}",
        p.severity(diagnostic.severity),
        diagnostic.severity.as_str(),
        diagnostic.code,
        p.reset,
        p.bold,
        diagnostic.message,
        p.reset
    );
    if let Some(location) = location(diagnostic, sources) {
        let path = if diagnostic.path.is_empty() { String::new() } else { format!(" ({})", diagnostic.path) };
        let _ = writeln!(out, "  {}-->{} {location}{path}", p.dim, p.reset);
    }
    if let Some(span) = diagnostic.span
        && !diagnostic.sensitive
        && let Some(line) = sources.line(span)
    {
        let number = span.line.to_string();
        let gutter = " ".repeat(number.len());
        let (line, col) = excerpt(line, span.col.saturating_sub(1) as usize);
        let caret_pad: String = line.chars().take(col).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        let _ = writeln!(out, "  {gutter} {}|{}", p.dim, p.reset);
        let _ = writeln!(out, "  {}{number} |{} {line}", p.dim, p.reset);
        let _ = writeln!(
            out,
            "  {gutter} {}|{} {caret_pad}{}^{}",
            p.dim,
            p.reset,
            p.severity(diagnostic.severity),
            p.reset
        );
    }
    if let Some(hint) = &diagnostic.hint {
        let _ = writeln!(out, "  {}hint:{} {hint}", p.bold, p.reset);
    }
    out
}

/// At most [`EXCERPT`] characters of a long source line, around the column (which is
/// returned relative to the excerpt), marked with `…` where cut.
fn excerpt(line: &str, col: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= EXCERPT {
        return (line.to_string(), col);
    }
    let start = col.saturating_sub(EXCERPT / 2).min(chars.len() - EXCERPT);
    let end = start + EXCERPT;
    let mut out: String = chars[start..end].iter().collect();
    let mut col = col - start;
    if start > 0 {
        out.insert(0, '…');
        col += 1;
    }
    if end < chars.len() {
        out.push('…');
    }
    (out, col)
}

const EXCERPT: usize = 120;

/// A machine-readable diagnostic, for `tug check --format json`.
pub fn to_json(diagnostic: &Diagnostic, sources: &SourceMap) -> serde_json::Value {
    let file = match (diagnostic.span, &diagnostic.file) {
        (Some(span), _) => Some(sources.path(span.file).display().to_string()),
        (None, Some(file)) => Some(file.display().to_string()),
        _ => None,
    };
    serde_json::json!({
        "severity": diagnostic.severity.as_str(),
        "code": diagnostic.code,
        "file": file,
        "line": diagnostic.span.map(|s| s.line),
        "column": diagnostic.span.map(|s| s.col),
        "path": diagnostic.path,
        "message": diagnostic.message,
        "hint": diagnostic.hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_around_the_column() {
        let line = format!("{}X{}", "a".repeat(300), "b".repeat(300));
        let (shown, col) = excerpt(&line, 300);
        assert_eq!(shown.chars().nth(col), Some('X'));
        assert!(shown.starts_with('…') && shown.ends_with('…'));
        assert_eq!(shown.chars().count(), EXCERPT + 2);
        assert_eq!(excerpt("short", 2), ("short".to_string(), 2));
        // Multi-byte characters are cut on character boundaries.
        let (wide, col) = excerpt(&"é".repeat(500), 499);
        assert_eq!((wide.chars().count(), col), (EXCERPT + 1, EXCERPT));
    }
}
