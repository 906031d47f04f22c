//! Interpolation of `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}` and `$$`.
//!
//! A `$` that starts none of these forms (as in the regex `^a$`) stays a literal `$`.
//! Instance variables (`PORT`, `HOST`, `TUG_*`) are substituted per instance when it
//! starts; at compile time the resolver answers [`Lookup::Deferred`] for them and the
//! reference is kept in the output, with every literal `$` escaped as `$$` so that the
//! per-instance pass ([`substitute_instance`]) reads the template exactly.

/// What a name refers to.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Value {
        text: String,
        sensitive: bool,
    },
    /// A secret that does not exist yet and will be generated: set, non-empty, unknown.
    Pending,
    /// An instance variable, substituted when the instance starts.
    Deferred,
    /// A setting that is defined but has no value (`required: false`): not set. A
    /// reference to it is sensitive when the setting is, whether or not it has a value.
    Unset {
        sensitive: bool,
    },
    /// A sensitive setting that this service does not list under `secrets:`.
    NotListed,
    Unknown,
}

pub trait Resolver {
    fn lookup(&mut self, name: &str) -> Lookup;
}

impl<F: FnMut(&str) -> Lookup> Resolver for F {
    fn lookup(&mut self, name: &str) -> Lookup {
        self(name)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub text: String,
    /// Part of the value came from a secret (or from a value derived from one).
    pub sensitive: bool,
    /// Part of the value is a secret not generated yet: the text is not final.
    pub pending: bool,
    /// The text keeps instance-variable references for the per-instance pass.
    pub deferred: bool,
    /// Where in `text` values from secrets landed (byte ranges, in order). An empty range
    /// marks where an optional secret without a value was referred to: the text around it
    /// depends on a secret all the same.
    pub sensitive_ranges: Vec<std::ops::Range<usize>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    Unknown { name: String },
    Unset { name: String },
    NotListed { name: String },
    Required { name: String, message: String },
    Syntax { message: String },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unknown { name } => write!(f, "unknown variable `{name}`"),
            Error::Unset { name } => write!(f, "`{name}` has no value here (it is an optional setting)"),
            Error::NotListed { name } => {
                write!(f, "`{name}` is a secret (or derived from one) that this service does not list under `secrets:`")
            }
            Error::Required { name, message } if message.is_empty() => {
                write!(f, "`{name}` is required but not set")
            }
            Error::Required { name, message } => write!(f, "`{name}` is required: {message}"),
            Error::Syntax { message } => f.write_str(message),
        }
    }
}

enum Segment {
    /// Text, and whether it came from a secret.
    Literal(String, bool),
    Deferred(String),
}

#[derive(Default)]
struct Builder {
    segments: Vec<Segment>,
    sensitive: bool,
    pending: bool,
}

impl Builder {
    fn literal(&mut self, text: &str) {
        self.push(text, false);
    }

    /// Text from a secret: kept apart, so that its place in the output is known.
    fn secret(&mut self, text: &str) {
        self.sensitive = true;
        self.segments.push(Segment::Literal(text.to_string(), true));
    }

    fn push(&mut self, text: &str, sensitive: bool) {
        match self.segments.last_mut() {
            Some(Segment::Literal(s, false)) if !sensitive => s.push_str(text),
            _ if sensitive => self.secret(text),
            _ => self.segments.push(Segment::Literal(text.to_string(), false)),
        }
    }

    fn absorb(&mut self, other: Builder) {
        self.sensitive |= other.sensitive;
        self.pending |= other.pending;
        for segment in other.segments {
            match segment {
                Segment::Literal(s, sensitive) => self.push(&s, sensitive),
                deferred => self.segments.push(deferred),
            }
        }
    }

    fn finish(self) -> Output {
        let deferred = self.segments.iter().any(|s| matches!(s, Segment::Deferred(_)));
        let mut text = String::new();
        let mut sensitive_ranges = Vec::new();
        for segment in &self.segments {
            let start = text.len();
            match segment {
                Segment::Literal(s, _) if deferred => text.push_str(&s.replace('$', "$$")),
                Segment::Literal(s, _) => text.push_str(s),
                Segment::Deferred(name) => {
                    text.push_str("${");
                    text.push_str(name);
                    text.push('}');
                }
            }
            if let Segment::Literal(_, true) = segment {
                sensitive_ranges.push(start..text.len());
            }
        }
        Output { text, sensitive: self.sensitive, pending: self.pending, deferred, sensitive_ranges }
    }
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Interpolates `input`, collecting every error rather than stopping at the first.
/// The longest value interpolation may produce: values that refer to values could
/// otherwise double in size at every step and exhaust memory.
pub const MAX_VALUE: usize = 1 << 20;

pub fn interpolate(input: &str, resolver: &mut dyn Resolver) -> Result<Output, Vec<Error>> {
    let mut errors = Vec::new();
    let builder = expand(input, resolver, &mut errors, 0);
    if !errors.is_empty() {
        return Err(errors);
    }
    let output = builder.finish();
    if output.text.len() > MAX_VALUE {
        return Err(vec![Error::Syntax { message: "the value grows beyond 1 MiB once interpolated".into() }]);
    }
    Ok(output)
}

/// Whether the text contains anything interpolation would change.
pub fn has_references(input: &str) -> bool {
    let bytes = input.as_bytes();
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'$' && matches!(bytes.get(i + 1), Some(&c) if c == b'$' || c == b'{' || is_name_start(c)))
}

/// Every name the text refers to, defaults' references included, in order (`$$` skipped).
pub fn references(input: &str) -> Vec<String> {
    let bytes = input.as_bytes();
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let start = match bytes.get(i + 1) {
            Some(b'$') => {
                i += 2;
                continue;
            }
            Some(b'{') => i + 2,
            Some(&c) if is_name_start(c) => i + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let mut end = start;
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        if end > start && is_name_start(bytes[start]) && !names.iter().any(|n| n == &input[start..end]) {
            names.push(input[start..end].to_string());
        }
        i = end.max(i + 1);
    }
    names
}

/// How deeply defaults may nest (`${A:-${B:-...}}`): far beyond real use, far below the stack's limit.
pub const MAX_NESTING: usize = 32;

fn expand(input: &str, resolver: &mut dyn Resolver, errors: &mut Vec<Error>, depth: usize) -> Builder {
    let bytes = input.as_bytes();
    let mut out = Builder::default();
    if depth > MAX_NESTING {
        errors.push(Error::Syntax { message: format!("references nest more than {MAX_NESTING} deep") });
        return out;
    }
    let mut literal_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.literal(&input[literal_start..i + 1]);
                i += 2;
                literal_start = i;
            }
            Some(&c) if is_name_start(c) => {
                out.literal(&input[literal_start..i]);
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && is_name_char(bytes[end]) {
                    end += 1;
                }
                reference(&input[start..end], None, resolver, errors, &mut out, depth);
                i = end;
                literal_start = i;
            }
            Some(b'{') => {
                out.literal(&input[literal_start..i]);
                match closing_brace(bytes, i + 2) {
                    None => {
                        errors.push(Error::Syntax { message: format!("`{}` has no closing `}}`", &input[i..]) });
                        return out;
                    }
                    Some(close) => {
                        braced(&input[i + 2..close], resolver, errors, &mut out, depth);
                        i = close + 1;
                        literal_start = i;
                    }
                }
            }
            // A lone `$` is literal.
            _ => i += 1,
        }
    }
    out.literal(&input[literal_start..]);
    out
}

/// The index of the `}` closing a `${` whose body starts at `from`, skipping nested `${...}`.
fn closing_brace(bytes: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Clone, Copy, PartialEq)]
enum Modifier {
    /// `:-` (`true`: unset or empty) or `-` (unset only).
    Default(bool),
    Required(bool),
    Alternative(bool),
}

fn braced(body: &str, resolver: &mut dyn Resolver, errors: &mut Vec<Error>, out: &mut Builder, depth: usize) {
    let bytes = body.as_bytes();
    let name_len = bytes.iter().take_while(|&&c| is_name_char(c)).count();
    let name = &body[..name_len];
    if name.is_empty() || !is_name_start(bytes[0]) {
        errors.push(Error::Syntax { message: format!("`${{{body}}}` does not start with a variable name") });
        return;
    }
    let rest = &body[name_len..];
    let (modifier, word) = if rest.is_empty() {
        (None, "")
    } else {
        let colon = rest.starts_with(':');
        let op = &rest[colon as usize..];
        let modifier = match op.as_bytes().first() {
            Some(b'-') => Modifier::Default(colon),
            Some(b'?') => Modifier::Required(colon),
            Some(b'+') => Modifier::Alternative(colon),
            _ => {
                errors.push(Error::Syntax {
                    message: format!("`${{{body}}}`: expected `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+` after `{name}`"),
                });
                return;
            }
        };
        (Some(modifier), &op[1..])
    };
    reference(name, modifier.map(|m| (m, word)), resolver, errors, out, depth);
}

fn reference(
    name: &str,
    modifier: Option<(Modifier, &str)>,
    resolver: &mut dyn Resolver,
    errors: &mut Vec<Error>,
    out: &mut Builder,
    depth: usize,
) {
    let found = resolver.lookup(name);
    if found == Lookup::NotListed {
        // Not even a default may stand in: the reference itself is the mistake.
        errors.push(Error::NotListed { name: name.to_string() });
        return;
    }
    // "set" and "non-empty" as the shell means them; a pending secret or an instance variable is both.
    let (set, non_empty) = match &found {
        Lookup::Value { text, .. } => (true, !text.is_empty()),
        Lookup::Pending | Lookup::Deferred => (true, true),
        Lookup::Unknown | Lookup::Unset { .. } | Lookup::NotListed => (false, false),
    };
    if let Lookup::Unset { sensitive: true } = found {
        // No text, but what surrounds the reference depends on a secret.
        out.secret("");
    }
    let use_value = |out: &mut Builder| match &found {
        Lookup::Value { text, sensitive } => out.push(text, *sensitive),
        Lookup::Pending => {
            out.secret("********");
            out.pending = true;
        }
        Lookup::Deferred => out.segments.push(Segment::Deferred(name.to_string())),
        Lookup::Unknown | Lookup::Unset { .. } | Lookup::NotListed => {}
    };
    match modifier {
        None if set => use_value(out),
        None if matches!(found, Lookup::Unset { .. }) => errors.push(Error::Unset { name: name.to_string() }),
        None => errors.push(Error::Unknown { name: name.to_string() }),
        Some((Modifier::Default(colon), word)) => {
            if set && (non_empty || !colon) {
                use_value(out)
            } else {
                out.absorb(expand(word, resolver, errors, depth + 1))
            }
        }
        Some((Modifier::Required(colon), message)) => {
            if set && (non_empty || !colon) {
                use_value(out)
            } else {
                errors.push(Error::Required { name: name.to_string(), message: message.to_string() })
            }
        }
        Some((Modifier::Alternative(colon), word)) => {
            if set && (non_empty || !colon) {
                out.absorb(expand(word, resolver, errors, depth + 1))
            }
        }
    }
}

/// The per-instance pass over a template kept by compile-time interpolation:
/// substitutes the instance variables and turns `$$` back into `$`.
pub fn substitute_instance(template: &str, vars: &[(&str, &str)]) -> Result<String, Vec<Error>> {
    let mut resolver = |name: &str| match vars.iter().find(|(n, _)| *n == name) {
        Some((_, value)) => Lookup::Value { text: value.to_string(), sensitive: false },
        None => Lookup::Unknown,
    };
    interpolate(template, &mut resolver).map(|o| o.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Lookup {
        match name {
            "HOME" => Lookup::Value { text: "/home/me".into(), sensitive: false },
            "EMPTY" => Lookup::Value { text: String::new(), sensitive: false },
            "SECRET" => Lookup::Value { text: "s3cr3t".into(), sensitive: true },
            "GENERATED" => Lookup::Pending,
            "PORT" | "HOST" => Lookup::Deferred,
            _ => Lookup::Unknown,
        }
    }

    fn run(input: &str) -> Result<Output, Vec<Error>> {
        interpolate(input, &mut env)
    }

    fn text(input: &str) -> String {
        run(input).unwrap_or_else(|e| panic!("{input}: {e:?}")).text
    }

    #[test]
    fn plain_and_braced_references() {
        assert_eq!(text("$HOME/x"), "/home/me/x");
        assert_eq!(text("${HOME}x"), "/home/mex");
        assert_eq!(text("a${EMPTY}b"), "ab");
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(text("cost: $$5"), "cost: $5");
        assert_eq!(text("$${HOME}"), "${HOME}");
    }

    #[test]
    fn lone_dollar_is_literal() {
        assert_eq!(text("^a$"), "^a$");
        assert_eq!(text("$ 1"), "$ 1");
        assert_eq!(text("$(pwd)"), "$(pwd)");
    }

    #[test]
    fn defaults_distinguish_unset_and_empty() {
        assert_eq!(text("${NOPE:-d}"), "d");
        assert_eq!(text("${NOPE-d}"), "d");
        assert_eq!(text("${EMPTY:-d}"), "d");
        assert_eq!(text("${EMPTY-d}"), "");
        assert_eq!(text("${HOME:-d}"), "/home/me");
        assert_eq!(text("${NOPE:-}"), "");
    }

    #[test]
    fn nested_defaults() {
        assert_eq!(text("${NOPE:-${ALSO_NOPE:-${HOME}}}"), "/home/me");
        assert_eq!(text("${NOPE:-a-${HOME:-x}-b}"), "a-/home/me-b");
        assert_eq!(text("${NOPE:-{braces}}"), "{braces}");
    }

    #[test]
    fn required_forms() {
        assert_eq!(
            run("${NOPE:?set NOPE please}").unwrap_err(),
            vec![Error::Required { name: "NOPE".into(), message: "set NOPE please".into() }]
        );
        assert!(run("${EMPTY:?x}").is_err());
        assert_eq!(text("${EMPTY?x}"), "");
        assert!(run("${NOPE?x}").is_err());
        assert_eq!(text("${HOME:?x}"), "/home/me");
    }

    #[test]
    fn alternatives() {
        assert_eq!(text("${HOME:+yes}"), "yes");
        assert_eq!(text("${EMPTY:+yes}"), "");
        assert_eq!(text("${EMPTY+yes}"), "yes");
        assert_eq!(text("${NOPE+yes}"), "");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}x{}", "${NOPE:-".repeat(10_000), "}".repeat(10_000));
        assert!(matches!(run(&deep).unwrap_err()[0], Error::Syntax { .. }));
        let fine = format!("{}x{}", "${NOPE:-".repeat(MAX_NESTING), "}".repeat(MAX_NESTING));
        assert_eq!(text(&fine), "x");
    }

    #[test]
    fn values_cannot_grow_without_bound() {
        let mut resolver = |_: &str| Lookup::Value { text: "x".repeat(MAX_VALUE / 2 + 1), sensitive: false };
        assert!(matches!(interpolate("$A$A", &mut resolver).unwrap_err()[0], Error::Syntax { .. }));
        assert!(interpolate("$A", &mut resolver).is_ok());
    }

    #[test]
    fn unset_and_unlisted_settings() {
        let mut resolver = |name: &str| match name {
            "OPTIONAL" => Lookup::Unset { sensitive: false },
            "OPTIONAL_SECRET" => Lookup::Unset { sensitive: true },
            _ => Lookup::NotListed,
        };
        assert_eq!(interpolate("${OPTIONAL:-d}", &mut resolver).unwrap().text, "d");
        // Whether a value is sensitive does not depend on whether the secret is set.
        assert!(interpolate("redis://:${OPTIONAL_SECRET:-}@h", &mut resolver).unwrap().sensitive);
        assert_eq!(
            interpolate("$OPTIONAL", &mut resolver).unwrap_err(),
            vec![Error::Unset { name: "OPTIONAL".into() }]
        );
        assert_eq!(
            interpolate("${TOKEN:-fallback}", &mut resolver).unwrap_err(),
            vec![Error::NotListed { name: "TOKEN".into() }],
            "a default does not hide a secret the service may not use"
        );
    }

    #[test]
    fn unknown_references_are_all_reported() {
        assert_eq!(
            run("$A and ${B}").unwrap_err(),
            vec![Error::Unknown { name: "A".into() }, Error::Unknown { name: "B".into() }]
        );
    }

    #[test]
    fn syntax_errors() {
        assert!(matches!(run("${HOME").unwrap_err()[0], Error::Syntax { .. }));
        assert!(matches!(run("${}").unwrap_err()[0], Error::Syntax { .. }));
        assert!(matches!(run("${1X}").unwrap_err()[0], Error::Syntax { .. }));
        assert!(matches!(run("${HOME%x}").unwrap_err()[0], Error::Syntax { .. }));
    }

    #[test]
    fn secrets_make_the_result_sensitive() {
        let out = run("postgres://u:${SECRET}@h").unwrap();
        assert!(out.sensitive);
        assert_eq!(out.text, "postgres://u:s3cr3t@h");
        assert!(!run("$HOME").unwrap().sensitive);
        let pending = run("x${GENERATED}").unwrap();
        assert!(pending.pending && pending.sensitive);
        assert!(!pending.text.contains("GENERATED"));
    }

    #[test]
    fn instance_variables_are_deferred_and_escaped() {
        let out = run("serve --port ${PORT} --root $HOME --cost $$5").unwrap();
        assert!(out.deferred);
        assert_eq!(out.text, "serve --port ${PORT} --root /home/me --cost $$5");
        let done = substitute_instance(&out.text, &[("PORT", "41000")]).unwrap();
        assert_eq!(done, "serve --port 41000 --root /home/me --cost $5");
        // Modifiers on an instance variable reduce at compile time: it is always set.
        assert_eq!(text("${PORT:-8080}"), "${PORT}");
        assert_eq!(text("${PORT:+on}"), "on");
        assert_eq!(text("$PORT"), "${PORT}");
    }

    #[test]
    fn where_secrets_land_is_known() {
        let out = run("u:${SECRET}@h/${HOME}").unwrap();
        assert_eq!(&out.text[out.sensitive_ranges[0].clone()], "s3cr3t");
        assert_eq!(out.sensitive_ranges.len(), 1);
        // In a template, ranges are in the escaped text.
        let out = run("$$ ${PORT} ${SECRET:-x} ${GENERATED}").unwrap();
        assert_eq!(out.text, "$$ ${PORT} s3cr3t ********");
        let shown: Vec<&str> = out.sensitive_ranges.iter().map(|r| &out.text[r.clone()]).collect();
        assert_eq!(shown, ["s3cr3t", "********"]);
        // An optional secret with no value leaves an empty mark where it was referred to.
        let mut resolver = |name: &str| match name {
            "OPTIONAL_SECRET" => Lookup::Unset { sensitive: true },
            _ => Lookup::Unknown,
        };
        let out = interpolate("--token=${OPTIONAL_SECRET:-} next", &mut resolver).unwrap();
        assert!(out.sensitive);
        assert_eq!(out.sensitive_ranges, vec![std::ops::Range { start: 8, end: 8 }]);
    }

    #[test]
    fn references_lists_every_name_once() {
        assert_eq!(references("${A:-${B}} $C $$D ${A} $ x ${1}"), ["A", "B", "C"]);
        assert!(references("no references $$HOME").is_empty());
    }

    #[test]
    fn instance_pass_reports_unknown_names() {
        assert!(substitute_instance("${NOPE}", &[("PORT", "1")]).is_err());
    }
}
