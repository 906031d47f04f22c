//! `.dockerignore`, matched as Docker does (moby's `fileutils.PatternMatcher`, the Docker CLI's
//! reading of the file).
//!
//! - Lines starting with `#` are comments; lines are trimmed; empty ones skipped.
//! - `!` makes an exception (a file it matches is sent again); later patterns win.
//! - A pattern is cleaned like a path (`./a/` is `a`, `a/../b` is `b`) and a leading `/` dropped.
//! - `*` is any run of characters but `/`, `?` one character but `/`, `[...]` a class, `\` escapes;
//!   `**` is any number of directories (`**/x`, `a/**/x`, `a/**`).
//! - A pattern also matches everything under a directory it matches: `build` excludes
//!   `build/out/x`, since the pattern matches the file's leading path components.

/// The patterns of one `.dockerignore`, in order.
#[derive(Debug, Default)]
pub(crate) struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug)]
struct Pattern {
    /// The cleaned pattern, without `!`.
    text: String,
    exception: bool,
    /// How many `/`-separated parts it has, to match it against a file's leading directories.
    parts: usize,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    /// `*`: any run of characters other than `/`.
    Star,
    /// `?`: one character other than `/`.
    One,
    /// `**` at the end: anything, `/` included.
    Rest,
    /// `**/` (or `**`) elsewhere: nothing, or anything ending with `/`.
    Dirs,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Ignore {
    /// Parses the text of a `.dockerignore`. A malformed pattern (an unclosed `[`) is an error
    /// naming its line, as Docker refuses it too.
    pub(crate) fn parse(text: &str) -> Result<Ignore, String> {
        let mut patterns = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (number, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let mut text = clean(pattern);
            if text.len() > 1 && text.starts_with('/') {
                text.remove(0);
            }
            let tokens = compile(&text).map_err(|e| format!(".dockerignore line {}: {e}: {line}", number + 1))?;
            let parts = text.split('/').count();
            patterns.push(Pattern { text, exception, parts, tokens });
        }
        Ok(Ignore { patterns })
    }

    /// Whether `path` (relative to the context, `/`-separated, cleaned) is excluded.
    pub(crate) fn excludes(&self, path: &str) -> bool {
        let parent_dirs: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that can change the verdict needs matching.
            if pattern.exception != excluded {
                continue;
            }
            let mut matched = matches(&pattern.tokens, path);
            if !matched && !parent_dirs.is_empty() && pattern.parts <= parent_dirs.len() {
                matched = matches(&pattern.tokens, &parent_dirs[..pattern.parts].join("/"));
            }
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether a directory that is excluded must still be walked, because an exception may
    /// bring back something under it (Docker's test: an exception starting with `dir/`).
    pub(crate) fn may_include_under(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.patterns.iter().any(|p| p.exception && format!("{}/", p.text).starts_with(&prefix))
    }

    /// Whether there are no patterns at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// Go's `filepath.Clean` for `/` paths.
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i == chars.len() { Token::Rest } else { Token::Dirs });
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::One),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    tokens.push(Token::Char(next));
                    i += 1;
                }
                None => tokens.push(Token::Char('\\')),
            },
            '[' => {
                let (token, next) = class(&chars, i)?;
                tokens.push(token);
                i = next;
            }
            _ => tokens.push(Token::Char(c)),
        }
    }
    Ok(tokens)
}

/// A `[...]` class starting after the `[` at `start`; returns it and the index after its `]`.
fn class(chars: &[char], start: usize) -> Result<(Token, usize), String> {
    let mut i = start;
    // Only `^` negates, as in Go's regexp and `filepath.Match` (`!` is gitignore's, not Docker's).
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i).ok_or("unclosed character class")?;
        if c == ']' && !first {
            return Ok((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *chars.get(i).ok_or("unclosed character class")?;
        }
        i += 1;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&n| n != ']') {
            let mut end = chars[i + 1];
            i += 2;
            if end == '\\' {
                end = *chars.get(i).ok_or("unclosed character class")?;
                i += 1;
            }
            if end < c {
                return Err("bad range in a character class".to_string());
            }
            ranges.push((c, end));
        } else {
            ranges.push((c, c));
        }
    }
}

/// Whether `tokens` match all of `text`. Dynamic programming over (token, position), so no
/// pattern can take exponential time.
fn matches(tokens: &[Token], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let n = text.len();
    // reach[j]: the tokens so far can match text[..j].
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    for token in tokens {
        let mut next = vec![false; n + 1];
        match token {
            Token::Char(c) => {
                for j in 0..n {
                    next[j + 1] = reach[j] && text[j] == *c;
                }
            }
            Token::One => {
                for j in 0..n {
                    next[j + 1] = reach[j] && text[j] != '/';
                }
            }
            Token::Class { negated, ranges } => {
                for j in 0..n {
                    let inside = ranges.iter().any(|&(lo, hi)| lo <= text[j] && text[j] <= hi);
                    next[j + 1] = reach[j] && inside != *negated;
                }
            }
            Token::Star => {
                for j in 0..=n {
                    next[j] = reach[j] || (j > 0 && next[j - 1] && text[j - 1] != '/');
                }
            }
            Token::Rest => {
                for j in 0..=n {
                    next[j] = reach[j] || (j > 0 && next[j - 1]);
                }
            }
            Token::Dirs => {
                // Nothing, or any run that ends with `/`.
                let mut any = false;
                for j in 0..=n {
                    if j > 0 {
                        any = any || reach[j - 1];
                    }
                    next[j] = reach[j] || (j > 0 && any && text[j - 1] == '/');
                }
            }
        }
        reach = next;
    }
    reach[n]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks, for one `.dockerignore`, which paths are excluded (`-`) and which are sent (`+`).
    fn check(ignore: &str, cases: &str) {
        let ignore = Ignore::parse(ignore).unwrap();
        for case in cases.split_whitespace() {
            let (expect, path) = case.split_at(1);
            let excluded = ignore.excludes(path);
            assert_eq!(excluded, expect == "-", "{path}: excluded = {excluded}, patterns {:?}", ignore.patterns);
        }
    }

    #[test]
    fn plain_names_match_the_path_and_everything_under_it() {
        check("node_modules\n", "-node_modules -node_modules/a/b.js +src/node_modules +node_modules2");
        check("a/b\n", "-a/b -a/b/c +a +a/bc +x/a/b");
        check("/target/\n", "-target -target/debug/x +src/target");
        check("./docs/../build\n", "-build -build/x +docs/build");
    }

    #[test]
    fn stars_and_question_marks_stay_within_a_directory() {
        check("*.log\n", "-x.log -.log +dir/x.log -x.log/inner +x.log.d/inner");
        check("*/*.tmp\n", "-a/b.tmp +b.tmp +a/b/c.tmp");
        check("file?.txt\n", "-file1.txt +file10.txt +file/.txt");
        check("[!x]y\n", "-!y -xy +ay");
        check("[a-c]at\n", "-bat -cat +dat");
        check("[^a]b\n", "-xb +ab");
        check("\\*star\n", "-*star +xstar");
    }

    #[test]
    fn double_stars_cross_directories() {
        check("**/*.go\n", "-main.go -a/b/c.go +a/b/c.rs");
        check("a/**/z\n", "-a/z -a/b/z -a/b/c/z +b/z");
        check("docs/**\n", "+docs -docs/a -docs/a/b");
        check("**\n", "-anything -a/b");
        check("**/cache\n", "-cache -x/cache -x/cache/file");
    }

    #[test]
    fn exceptions_and_later_patterns_win() {
        check("*.md\n!README.md\n", "-CHANGES.md +README.md +a/README.md");
        check("!README.md\n*.md\n", "-README.md");
        check("logs\n!logs/keep.txt\n", "-logs -logs/a.txt +logs/keep.txt");
        check("*\n!src\n", "-Cargo.toml +src +src/main.rs");
        check("# comment\n  \n  spaced  \n! spaced/keep\n", "-spaced -spaced/x +spaced/keep +#");
    }

    #[test]
    fn excluded_directories_are_walked_only_for_exceptions_under_them() {
        let ignore = Ignore::parse("logs\n!logs/keep.txt\ntarget\n").unwrap();
        assert!(ignore.may_include_under("logs"));
        assert!(!ignore.may_include_under("target"));
        assert!(!ignore.may_include_under("log"));
    }

    #[test]
    fn malformed_patterns_name_their_line() {
        let message = Ignore::parse("ok\n[abc\n").unwrap_err();
        assert!(message.contains("line 2") && message.contains("[abc"), "{message}");
    }

    #[test]
    fn clean_is_go_filepath_clean() {
        for (input, expected) in [
            ("a/", "a"),
            ("./a//b/", "a/b"),
            ("a/../..", ".."),
            ("/../a", "/a"),
            (".", "."),
            ("/", "/"),
            ("a/./b/../c", "a/c"),
        ] {
            assert_eq!(clean(input), expected, "{input}");
        }
    }

    #[test]
    fn matching_is_not_exponential() {
        let tokens = compile(&format!("{}b", "*a".repeat(30))).unwrap();
        assert!(!matches(&tokens, &"a".repeat(200)));
        let tokens = compile(&"**/".repeat(30)).unwrap();
        assert!(matches(&tokens, &"a/".repeat(100)));
    }
}
