//! An image's string `command` or `entrypoint`, split into words as Docker Compose does:
//! shell-like quoting (single quotes, double quotes, backslash escapes), but no shell runs
//! it, so shell syntax that the split would pass on as arguments is refused.
//!
//! The split runs after interpolation, on the interpolated text. Each word keeps the flags
//! of what it is made of: a word with an instance variable (`${PORT}`) stays a template
//! (literal `$` escaped as `$$`), and a word with a secret's text in it is sensitive.

use std::ops::Range;

use crate::model::Text;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// A quote (`'` or `"`) that is never closed.
    Unbalanced(char),
    /// Shell syntax (`|`, `&&`, `;`, `>`, `$(`, a backtick, ...) that only a shell understands.
    Shell(&'static str),
}

/// A piece of the text: a character, or (in a template) an instance-variable reference.
#[derive(Clone, Copy, PartialEq)]
enum Unit<'a> {
    Char(char),
    Reference(&'a str),
}

/// The units of `text` with their byte ranges. In a template, `$$` is one literal `$` and
/// `${NAME}` one reference (that is all a template's `$` can start: see `interp`).
fn units(text: &str, template: bool) -> Vec<(Unit<'_>, Range<usize>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        if template && c == '$' {
            let rest = &text[i + 1..];
            if rest.starts_with('$') {
                out.push((Unit::Char('$'), i..i + 2));
                i += 2;
                continue;
            }
            if let Some(body) = rest.strip_prefix('{')
                && let Some(close) = body.find('}')
            {
                let end = i + 2 + close + 1;
                out.push((Unit::Reference(&body[..close]), i..end));
                i = end;
                continue;
            }
        }
        out.push((Unit::Char(c), i..i + c.len_utf8()));
        i += c.len_utf8();
    }
    out
}

#[derive(Default)]
struct Word {
    /// The word's characters.
    plain: String,
    /// The same as a template: `$` escaped, references as `${NAME}`.
    template: String,
    references: bool,
    /// The bytes of the input the word was made from (quotes included).
    span: Option<Range<usize>>,
}

impl Word {
    fn touch(&mut self, range: &Range<usize>) {
        self.span = Some(match &self.span {
            Some(span) => span.start.min(range.start)..span.end.max(range.end),
            None => range.clone(),
        });
    }

    fn push(&mut self, unit: Unit, range: &Range<usize>) {
        self.touch(range);
        match unit {
            Unit::Char(c) => {
                self.plain.push(c);
                if c == '$' {
                    self.template.push('$');
                }
                self.template.push(c);
            }
            Unit::Reference(name) => {
                self.references = true;
                self.template.push_str("${");
                self.template.push_str(name);
                self.template.push('}');
            }
        }
    }
}

/// The shell operator starting at unit `k`, when it is one.
fn operator(units: &[(Unit, Range<usize>)], k: usize) -> Option<&'static str> {
    let next = units.get(k + 1).map(|(u, _)| *u);
    let Unit::Char(c) = units[k].0 else { return None };
    Some(match (c, next) {
        ('|', Some(Unit::Char('|'))) => "||",
        ('|', _) => "|",
        ('&', Some(Unit::Char('&'))) => "&&",
        ('&', _) => "&",
        (';', _) => ";",
        ('>', Some(Unit::Char('>'))) => ">>",
        ('>', _) => ">",
        ('<', _) => "<",
        ('`', _) => "`",
        ('$', Some(Unit::Char('('))) => "$(",
        _ => return None,
    })
}

/// Splits `text` into words. `secrets` are the byte ranges of `text` that came from secrets
/// (from interpolation): words made from them are sensitive, and their characters are data,
/// never taken for shell syntax.
pub fn split(text: &Text, secrets: &[Range<usize>]) -> Result<Vec<Text>, SplitError> {
    let source = text.expose();
    let units = units(source, text.template);
    let secret = |range: &Range<usize>| secrets.iter().any(|s| s.start < range.end && range.start < s.end);
    let mut words: Vec<Word> = Vec::new();
    let mut word: Option<Word> = None;
    let mut quote: Option<char> = None;
    let mut k = 0;
    while k < units.len() {
        let (unit, range) = (units[k].0, &units[k].1);
        let next = units.get(k + 1);
        // Shell syntax starting here; a secret's characters are data.
        let op = if secret(range) { None } else { operator(&units, k) };
        k += 1;
        match quote {
            Some('\'') => {
                let current = word.get_or_insert_with(Word::default);
                if unit == Unit::Char('\'') {
                    current.touch(range);
                    quote = None;
                } else {
                    current.push(unit, range);
                }
            }
            Some(_) => {
                let current = word.get_or_insert_with(Word::default);
                match unit {
                    Unit::Char('"') => {
                        current.touch(range);
                        quote = None;
                    }
                    // In double quotes, a backslash escapes only these (POSIX).
                    Unit::Char('\\') => match next {
                        Some((Unit::Char('\n'), next_range)) => {
                            current.touch(next_range);
                            k += 1;
                        }
                        Some((escaped @ (Unit::Char('$' | '`' | '"' | '\\') | Unit::Reference(_)), next_range)) => {
                            current.touch(range);
                            current.push(*escaped, next_range);
                            k += 1;
                        }
                        _ => current.push(unit, range),
                    },
                    _ => match op {
                        // A shell still expands these in double quotes.
                        Some(op @ ("`" | "$(")) => return Err(SplitError::Shell(op)),
                        _ => current.push(unit, range),
                    },
                }
            }
            None => match unit {
                Unit::Char(c) if c.is_whitespace() => words.extend(word.take()),
                Unit::Char(c @ ('\'' | '"')) => {
                    word.get_or_insert_with(Word::default).touch(range);
                    quote = Some(c);
                }
                Unit::Char('\\') => match next {
                    // A line continuation.
                    Some((Unit::Char('\n'), _)) => k += 1,
                    Some((escaped, next_range)) => {
                        let current = word.get_or_insert_with(Word::default);
                        current.touch(range);
                        current.push(*escaped, next_range);
                        k += 1;
                    }
                    None => word.get_or_insert_with(Word::default).push(unit, range),
                },
                _ => match op {
                    Some(op) => return Err(SplitError::Shell(op)),
                    None => word.get_or_insert_with(Word::default).push(unit, range),
                },
            },
        }
    }
    if let Some(q) = quote {
        return Err(SplitError::Unbalanced(q));
    }
    words.extend(word);
    let sensitive_word = |span: &Option<Range<usize>>| {
        let Some(span) = span else { return false };
        secrets.iter().any(|s| {
            if s.is_empty() {
                span.start <= s.start && s.start <= span.end
            } else {
                s.start < span.end && span.start < s.end
            }
        })
    };
    let mut out: Vec<(Text, bool)> = words
        .into_iter()
        .map(|w| {
            let sensitive = sensitive_word(&w.span);
            let value = if w.references { w.template } else { w.plain };
            (Text::new(value, sensitive, sensitive && text.pending, w.references), sensitive)
        })
        .collect();
    // A secret that left no mark on any word (an empty optional secret between words):
    // nothing can tell which word depends on it, so all do.
    if text.sensitive && !out.iter().any(|(_, s)| *s) {
        for (word, _) in &mut out {
            word.sensitive = true;
            word.pending = text.pending;
        }
    }
    Ok(out.into_iter().map(|(w, _)| w).collect())
}

/// How an operator is named in a message.
pub fn operator_name(op: &str) -> String {
    if op == "`" { "a backtick".to_string() } else { format!("`{op}`") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Vec<String> {
        split(&Text::plain(text), &[])
            .unwrap_or_else(|e| panic!("{text}: {e:?}"))
            .iter()
            .map(|w| w.expose().to_string())
            .collect()
    }

    #[test]
    fn words_and_quotes() {
        assert_eq!(plain("postgres -c  max_connections=200"), ["postgres", "-c", "max_connections=200"]);
        assert_eq!(plain(r#"echo 'a b' "c d" e' 'f"#), ["echo", "a b", "c d", "e f"]);
        assert_eq!(plain(r#"printf '' "" x"#), ["printf", "", "", "x"], "empty quotes are empty words");
        assert_eq!(plain("  \n\t  one\ntwo  "), ["one", "two"]);
        assert_eq!(plain("grep 'a|b' \"c;d\" 'x > y'"), ["grep", "a|b", "c;d", "x > y"], "quoted syntax is data");
        assert_eq!(plain("echo 'it''s'"), ["echo", "its"]);
    }

    #[test]
    fn backslash_escapes() {
        assert_eq!(plain(r"echo a\ b \'c\' \\d"), ["echo", "a b", "'c'", r"\d"]);
        assert_eq!(plain(r#"echo "a\"b" "c\d" "\\" 'e\f'"#), ["echo", "a\"b", r"c\d", r"\", r"e\f"]);
        assert_eq!(plain("echo a\\\nb"), ["echo", "ab"], "a line continuation");
        assert_eq!(plain("echo a \\\n  b"), ["echo", "a", "b"], "a line continuation between words");
        assert_eq!(plain(r"echo \| \;"), ["echo", "|", ";"], "an escaped operator is a character");
        assert_eq!(plain(r"trailing\"), [r"trailing\"]);
    }

    #[test]
    fn unbalanced_quotes_and_shell_syntax_are_errors() {
        let err = |t: &str| split(&Text::plain(t), &[]).unwrap_err();
        assert_eq!(err("echo 'oops"), SplitError::Unbalanced('\''));
        assert_eq!(err(r#"echo "oops\""#), SplitError::Unbalanced('"'));
        assert_eq!(err("a | b"), SplitError::Shell("|"));
        assert_eq!(err("a || b"), SplitError::Shell("||"));
        assert_eq!(err("migrate && serve"), SplitError::Shell("&&"));
        assert_eq!(err("a; b"), SplitError::Shell(";"));
        assert_eq!(err("a >> log"), SplitError::Shell(">>"));
        assert_eq!(err("a < in"), SplitError::Shell("<"));
        assert_eq!(err("echo $(date)"), SplitError::Shell("$("));
        assert_eq!(err("echo \"`date`\""), SplitError::Shell("`"), "a shell expands it in double quotes");
        assert_eq!(err("echo \"$(date)\""), SplitError::Shell("$("));
        assert_eq!(plain("echo '$(date)' cost$5"), ["echo", "$(date)", "cost$5"]);
    }

    #[test]
    fn instance_variables_stay_templates_per_word() {
        // As interpolation leaves `serve --port ${PORT} --cost $5 'at ${HOST}'`.
        let template = Text::new("serve --port ${PORT} --cost $$5 'at ${HOST}:$$x'".into(), false, false, true);
        let words = split(&template, &[]).unwrap();
        let shown: Vec<(&str, bool)> = words.iter().map(|w| (w.expose(), w.template)).collect();
        assert_eq!(
            shown,
            [
                ("serve", false),
                ("--port", false),
                ("${PORT}", true),
                ("--cost", false),
                ("$5", false),
                ("at ${HOST}:$$x", true)
            ]
        );
        assert_eq!(crate::interp::substitute_instance(words[5].expose(), &[("HOST", "h")]).unwrap(), "at h:$x");
        // `$$(` in a template is a literal `$(`: shell syntax all the same.
        let shell = Text::new("echo $$(date) ${PORT}".into(), false, false, true);
        assert_eq!(split(&shell, &[]).unwrap_err(), SplitError::Shell("$("));
        // A backslash before a reference leaves the reference.
        let escaped = Text::new(r#"x\${PORT} \$$y "\${HOST}""#.into(), false, false, true);
        let words: Vec<String> = split(&escaped, &[]).unwrap().iter().map(|w| w.expose().to_string()).collect();
        assert_eq!(words, ["x${PORT}", "$y", "${HOST}"]);
    }

    #[test]
    fn words_from_secrets_are_sensitive() {
        // `login --user admin --password ${PW} --verbose` with PW = `p|w d`.
        let text = Text::new("login --user admin --password p|w d --verbose".into(), true, false, false);
        let secret = 30..35;
        assert_eq!(&text.expose()[secret.clone()], "p|w d");
        let words = split(&text, std::slice::from_ref(&secret)).unwrap();
        let shown: Vec<(&str, bool)> = words.iter().map(|w| (w.expose(), w.sensitive)).collect();
        assert_eq!(
            shown,
            [
                ("login", false),
                ("--user", false),
                ("admin", false),
                ("--password", false),
                ("p|w", true),
                ("d", true),
                ("--verbose", false)
            ],
            "a secret's `|` is data, not a pipe"
        );
        // `--token=${OPTIONAL_SECRET:-}`: no text, but the word depends on the secret.
        let empty = Text::new("run --token=".into(), true, false, false);
        let words = split(&empty, std::slice::from_ref(&(12..12))).unwrap();
        assert_eq!(words.iter().map(|w| w.sensitive).collect::<Vec<_>>(), [false, true]);
        // A pending (not yet generated) secret keeps its flag on its word only.
        let pending = Text::new("run ********".into(), true, true, false);
        let words = split(&pending, std::slice::from_ref(&(4..12))).unwrap();
        assert_eq!(words.iter().map(|w| (w.sensitive, w.pending)).collect::<Vec<_>>(), [(false, false), (true, true)]);
        // With nothing to tell which word it is, every word is sensitive.
        let unknown = Text::new("a b".into(), true, false, false);
        assert!(split(&unknown, &[]).unwrap().iter().all(|w| w.sensitive));
    }
}
