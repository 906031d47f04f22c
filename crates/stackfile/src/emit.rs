//! A small YAML writer, for the files tug writes (`tug import`'s stack file, `tug render`'s
//! manifests): block style, a comment above any entry, flow style only for short lists of
//! scalars, and every string that YAML could read as something else quoted. Deterministic:
//! the same value gives the same bytes.

/// A value to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Written as is: numbers and booleans.
    Plain(String),
    /// Text: written plain when YAML reads it back as the same string, quoted otherwise.
    Str(String),
    Seq(Vec<Value>),
    Map(Map),
}

impl Value {
    pub fn str(text: impl Into<String>) -> Value {
        Value::Str(text.into())
    }

    pub fn int(n: impl std::fmt::Display) -> Value {
        Value::Plain(n.to_string())
    }

    pub fn bool(b: bool) -> Value {
        Value::Plain(b.to_string())
    }

    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::Seq(items.into_iter().map(|s| Value::Str(s.into())).collect())
    }

    fn is_scalar(&self) -> bool {
        matches!(self, Value::Plain(_) | Value::Str(_))
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map {
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    /// Lines written as `# …` above the entry.
    pub comments: Vec<String>,
}

impl Map {
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> &mut Entry {
        let key = key.into();
        match self.entries.iter().position(|e| e.key == key) {
            Some(i) => {
                self.entries[i].value = value;
                &mut self.entries[i]
            }
            None => {
                self.entries.push(Entry { key, value, comments: Vec::new() });
                self.entries.last_mut().expect("just pushed")
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.key == key)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Entry {
    pub fn comment(&mut self, text: impl Into<String>) -> &mut Entry {
        self.comments.push(text.into());
        self
    }
}

/// A JSON value as YAML: objects in their order, numbers and booleans plain, strings quoted
/// only where YAML would read them as something else.
pub fn from_json(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Plain("null".into()),
        serde_json::Value::Bool(b) => Value::bool(*b),
        serde_json::Value::Number(n) => Value::Plain(n.to_string()),
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(items) => Value::Seq(items.iter().map(from_json).collect()),
        serde_json::Value::Object(map) => {
            let mut out = Map::default();
            for (k, v) in map {
                out.insert(k.clone(), from_json(v));
            }
            Value::Map(out)
        }
    }
}

/// The document: top-level entries, separated by blank lines where they are large.
pub fn document(header: &[String], root: &Map) -> String {
    let mut out = String::new();
    for line in header {
        comment_line(&mut out, 0, line);
    }
    if !header.is_empty() {
        out.push('\n');
    }
    for (i, entry) in root.entries.iter().enumerate() {
        if i > 0 && (matches!(entry.value, Value::Map(_)) || !entry.comments.is_empty()) {
            out.push('\n');
        }
        write_entry(&mut out, 0, entry);
    }
    out
}

fn comment_line(out: &mut String, indent: usize, text: &str) {
    for line in text.lines() {
        out.push_str(&" ".repeat(indent));
        out.push('#');
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    }
}

fn write_entry(out: &mut String, indent: usize, entry: &Entry) {
    for c in &entry.comments {
        comment_line(out, indent, c);
    }
    out.push_str(&" ".repeat(indent));
    out.push_str(&key(&entry.key));
    out.push(':');
    write_value_after(out, indent, &entry.value);
}

/// Writes a value after `key:` or `- `: inline when it fits, else on the lines below.
fn write_value_after(out: &mut String, indent: usize, value: &Value) {
    match value {
        Value::Plain(_) | Value::Str(_) => {
            out.push(' ');
            out.push_str(&scalar(value));
            out.push('\n');
        }
        Value::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Value::Map(map) if map.is_empty() => out.push_str(" {}\n"),
        Value::Seq(items) => match flow(items) {
            Some(text) if indent + text.len() < 100 => {
                out.push(' ');
                out.push_str(&text);
                out.push('\n');
            }
            _ => {
                out.push('\n');
                write_seq(out, indent + 2, items);
            }
        },
        Value::Map(map) => {
            out.push('\n');
            for entry in &map.entries {
                write_entry(out, indent + 2, entry);
            }
        }
    }
}

fn write_seq(out: &mut String, indent: usize, items: &[Value]) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Map(map) if !map.is_empty() => {
                // The first entry shares the dash's line; the rest line up under it.
                let mut first = true;
                for entry in &map.entries {
                    if first {
                        for c in &entry.comments {
                            out.push(' ');
                            comment_line(out, 0, c);
                            out.push_str(&" ".repeat(indent + 1));
                        }
                        out.push(' ');
                        out.push_str(&key(&entry.key));
                        out.push(':');
                        write_value_after(out, indent + 2, &entry.value);
                        first = false;
                    } else {
                        write_entry(out, indent + 2, entry);
                    }
                }
            }
            other => write_value_after(out, indent, other),
        }
    }
}

/// `[a, b, c]` for a list of scalars.
fn flow(items: &[Value]) -> Option<String> {
    if !items.iter().all(Value::is_scalar) {
        return None;
    }
    let parts: Vec<String> = items.iter().map(flow_scalar).collect();
    Some(format!("[{}]", parts.join(", ")))
}

fn flow_scalar(value: &Value) -> String {
    match value {
        Value::Str(s) if s.contains([',', '[', ']', '{', '}']) => quote(s),
        _ => scalar(value),
    }
}

fn key(text: &str) -> String {
    if is_plain_safe(text) { text.to_string() } else { quote(text) }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Plain(text) => text.clone(),
        Value::Str(text) if is_plain_safe(text) => text.clone(),
        Value::Str(text) => quote(text),
        _ => unreachable!("scalar() is called on scalars only"),
    }
}

/// Whether YAML reads `text`, written plain, back as the same string (never as a
/// number, boolean or null, and never as structure).
pub fn is_plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    // `-x` is text; `- x` and a lone `-` are a list item.
    let dash = first == '-' && text.len() > 1 && !text[1..].starts_with(' ') && !text.starts_with("---");
    if !(first.is_ascii_alphanumeric() || matches!(first, '/' | '.' | '_' | '$') || dash) {
        return false;
    }
    if text.ends_with([' ', ':']) || text.contains(": ") || text.contains(" #") || text.contains('\t') {
        return false;
    }
    if !text.chars().all(|c| c.is_ascii_graphic() || c == ' ') || text.contains(['"', '\'', '`', '#']) {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    let reserved = matches!(
        lower.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~" | ".inf" | ".nan" | "-.inf"
    );
    let numeric = text.parse::<f64>().is_ok()
        || text.starts_with("0x")
        || text.starts_with("0o")
        || (text.chars().any(|c| c.is_ascii_digit())
            && text.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '_' || c == '.'));
    !reserved && !numeric
}

/// A double-quoted YAML string.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: Vec<(&str, Value)>) -> Map {
        let mut m = Map::default();
        for (k, v) in entries {
            m.insert(k, v);
        }
        m
    }

    #[test]
    fn strings_that_yaml_would_misread_are_quoted() {
        for text in [
            "true", "no", "8000", "8000:80", "1.5", "", " x", "a: b", "x #y", "- x", "---", "*a", "{a}", "0x1f", "null",
        ] {
            assert!(!is_plain_safe(text), "{text:?} must be quoted");
        }
        for text in ["postgres:15", "redis", "./data:/data:ro", "${DB_URL}", "/health", "sh -c true", "a,b", "-x", "."]
        {
            assert!(is_plain_safe(text), "{text:?} may be plain");
        }
        assert_eq!(quote("say \"hi\"\n\\"), r#""say \"hi\"\n\\""#);
        assert_eq!(quote("\u{1}"), r#""\x01""#);
    }

    #[test]
    fn block_and_flow_layout() {
        let mut service = map(vec![
            ("image", Value::str("redis:7")),
            ("command", Value::strings(["redis-server", "--port", "6379"])),
            ("environment", Value::Map(map(vec![("A", Value::str("1")), ("B", Value::str("x y"))]))),
            ("volumes", Value::Seq(vec![])),
        ]);
        service.get_mut("image").unwrap().comment("from compose");
        let volumes = Value::Seq(vec![Value::Map(map(vec![("a", Value::int(1)), ("b", Value::bool(true))]))]);
        service.insert("list", volumes);
        let root = map(vec![
            ("name", Value::str("demo")),
            ("services", Value::Map(map(vec![("redis", Value::Map(service))]))),
        ]);
        let text = document(&["made by test".to_string()], &root);
        assert_eq!(
            text,
            "# made by test\n\nname: demo\n\nservices:\n  redis:\n    # from compose\n    image: redis:7\n    \
             command: [redis-server, --port, \"6379\"]\n    environment:\n      A: \"1\"\n      B: x y\n    \
             volumes: []\n    list:\n      - a: 1\n        b: true\n"
        );
    }
}
