//! Output helpers: colour, JSON and YAML printing, error lines.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use serde_json::Value;
use tug_stackfile::diag::Palette;

/// Colours for a stream: only on a terminal, and never when NO_COLOR is set.
pub fn palette(terminal: bool) -> Palette {
    if terminal && std::env::var_os("NO_COLOR").is_none() { Palette::ANSI } else { Palette::PLAIN }
}

pub fn stdout_palette() -> Palette {
    palette(std::io::stdout().is_terminal())
}

pub fn stderr_palette() -> Palette {
    palette(std::io::stderr().is_terminal())
}

pub fn error_line(message: &str) -> String {
    let p = stderr_palette();
    format!("{}error:{} {message}", p.error, p.reset)
}

pub fn warning_line(message: &str) -> String {
    let p = stderr_palette();
    format!("{}warning:{} {message}", p.warning, p.reset)
}

pub fn print_json(value: &Value) -> Result<ExitCode, String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| format!("cannot encode JSON: {e}"))?;
    write_stdout(&format!("{text}\n"))
}

pub fn write_stdout(text: &str) -> Result<ExitCode, String> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`tug config | head`) is not an error worth reporting.
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(format!("cannot write to standard output: {e}")),
    }
}

/// YAML for a JSON value: block style, strings quoted only where YAML needs it.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => emit_map(map, 0, &mut out),
        Value::Array(items) if !items.is_empty() => emit_seq(items, 0, &mut out),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn emit_map(map: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&quote(key));
        out.push(':');
        emit_value(value, indent, out);
    }
}

fn emit_seq(items: &[Value], indent: usize, out: &mut String) {
    for value in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        emit_value(value, indent, out);
    }
}

fn emit_value(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            emit_map(map, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            emit_seq(items, indent + 2, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A string as a YAML scalar: plain when it reads back as the same string, else double-quoted.
fn quote(s: &str) -> String {
    let reserved = matches!(
        s.to_ascii_lowercase().as_str(),
        "" | "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    );
    let numeric = s.parse::<f64>().is_ok() || s.starts_with("0x") || s.starts_with("0o");
    let special_start = s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c) || c.is_whitespace());
    let special_inside = s.contains(": ") || s.contains(" #") || s.ends_with(':') || s.ends_with(char::is_whitespace);
    let control = s.chars().any(|c| c.is_control());
    if reserved || numeric || special_start || special_inside || control {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_quotes_only_what_needs_it() {
        let value = serde_json::json!({
            "name": "genesis",
            "port": 8002,
            "text": "8002",
            "flag": "true",
            "empty": "",
            "cmd": ["sh", "-c", "echo: hi"],
            "nested": {"a": null, "list": []},
            "multi": "a\nb",
        });
        let yaml = to_yaml(&value);
        assert_eq!(
            yaml,
            "name: genesis\nport: 8002\ntext: \"8002\"\nflag: \"true\"\nempty: \"\"\ncmd:\n  - sh\n  - \"-c\"\n  - \"echo: hi\"\nnested:\n  a: null\n  list: []\nmulti: \"a\\nb\"\n"
        );
    }

    #[test]
    fn yaml_output_parses_back_to_the_same_value() {
        let value = serde_json::json!({"a": {"b": ["x: y", "#no", "- dash", " lead"], "c": "ok"}});
        let yaml = to_yaml(&value);
        let (node, _) = tug_stackfile::yaml::parse(&yaml, 0).expect("valid yaml");
        let b = node.get("a").and_then(|a| a.get("b")).expect("a.b");
        let tug_stackfile::yaml::Kind::Seq(items) = &b.kind else { panic!("a list") };
        let texts: Vec<_> = items
            .iter()
            .map(|i| match &i.kind {
                tug_stackfile::yaml::Kind::Scalar { text, .. } => text.as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(texts, ["x: y", "#no", "- dash", " lead"]);
    }
}
