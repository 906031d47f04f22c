//! `.env` files: `KEY=VALUE` lines, as Docker Compose reads them.
//!
//! `# comments`, blank lines and an `export ` prefix are allowed. Values may be
//! unquoted (a ` #` starts a comment), 'single-quoted' (literal) or "double-quoted"
//! (with `\n`, `\t`, `\"`, `\\` escapes, and spanning lines). Values are not interpolated.

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub line: u32,
    pub col: u32,
    pub message: String,
}

/// Parses the whole file, collecting every bad line.
pub fn parse(text: &str) -> (Vec<Entry>, Vec<Error>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line_number = i as u32 + 1;
        let raw = lines[i];
        i += 1;
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let indent = (raw.len() - line.len()) as u32;
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some(eq) = line.find('=') else {
            errors.push(Error {
                line: line_number,
                col: indent + 1,
                // Nothing of the line is quoted: env files hold secrets.
                message: "expected `KEY=VALUE`: this line has no `=`".into(),
            });
            continue;
        };
        let key = line[..eq].trim();
        let valid_key = key.bytes().next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-');
        if !valid_key {
            errors.push(Error {
                line: line_number,
                col: indent + 1,
                message: "the name before `=` is not a valid variable name ([A-Za-z_][A-Za-z0-9_.-]*)".into(),
            });
            continue;
        }
        let rest = line[eq + 1..].trim_start();
        let value = match rest.chars().next() {
            Some('\'') => match rest[1..].find('\'') {
                Some(end) => rest[1..1 + end].to_string(),
                None => {
                    errors.push(Error {
                        line: line_number,
                        col: indent + 1,
                        message: format!("the value of `{key}` has no closing `'`"),
                    });
                    continue;
                }
            },
            Some('"') => {
                // A double-quoted value may continue on the following lines.
                let mut body = rest[1..].to_string();
                loop {
                    if let Some(value) = unescape_until_quote(&body) {
                        break value;
                    }
                    if i >= lines.len() {
                        errors.push(Error {
                            line: line_number,
                            col: indent + 1,
                            message: format!("the value of `{key}` has no closing `\"`"),
                        });
                        break String::new();
                    }
                    body.push('\n');
                    body.push_str(lines[i]);
                    i += 1;
                }
            }
            _ => match rest.find(" #") {
                Some(comment) => rest[..comment].trim_end().to_string(),
                None => rest.trim_end().to_string(),
            },
        };
        entries.push(Entry { key: key.to_string(), value, line: line_number });
    }
    (entries, errors)
}

/// The unescaped text up to the first unescaped `"`, or None if there is none.
fn unescape_until_quote(body: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => return None,
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(String, String)> {
        let (entries, errors) = parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        entries.into_iter().map(|e| (e.key, e.value)).collect()
    }

    #[test]
    fn forms() {
        let text = "# comment\nA=1\nexport B = two words # note\nC='lit $X # x'\nD=\"a\\nb \\\"q\\\"\"\n\nE=\n";
        assert_eq!(
            values(text),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "lit $X # x".into()),
                ("D".into(), "a\nb \"q\"".into()),
                ("E".into(), "".into()),
            ]
        );
    }

    #[test]
    fn multi_line_double_quotes() {
        assert_eq!(
            values("K=\"line1\nline2\"\nN=1"),
            vec![("K".into(), "line1\nline2".into()), ("N".into(), "1".into())]
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_line() {
        let (entries, errors) = parse("A=1\nnot a pair\n1X=2\nQ='open\n");
        assert_eq!(entries.len(), 1);
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 3, 4]);
    }
}
