//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Built from the event parser of `yaml-rust2` so that every node keeps its file,
//! line and column and its tag (`!reset`, `!override`). Scalars stay text: their type
//! is decided by the field that reads them, as the stack file's schema says.

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{Diagnostic, Span};

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// `null`, `~` or an empty value.
    Null,
    /// A scalar: its text and whether it was written plain (unquoted).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub span: Span,
    pub tag: Option<String>,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "null",
            Kind::Scalar { text, plain: true } if is_bool(text) => "a boolean",
            Kind::Scalar { text, plain: true } if text.parse::<f64>().is_ok() => "a number",
            Kind::Scalar { .. } => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// The key of a mapping entry, as text.
    pub fn key_text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| k.key_text() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }
}

fn is_bool(text: &str) -> bool {
    matches!(text, "true" | "false" | "True" | "False" | "TRUE" | "FALSE")
}

/// What a document may expand to through aliases: far beyond any real stack file,
/// far below what would exhaust memory ("billion laughs").
pub const MAX_NODES: usize = 1_000_000;
pub const MAX_BYTES: usize = 64 << 20;
/// How deeply mappings and lists may nest: every walk of the tree is recursive, and a
/// stack file needs a handful of levels.
pub const MAX_DEPTH: usize = 128;

/// Parses one YAML document. An empty document is an empty mapping. Problems that
/// leave a usable tree (a duplicate key, say) come back beside it, so that everything
/// else in the file is still checked; a syntax error is fatal.
pub fn parse(text: &str, file: u32) -> Result<(Node, Vec<Diagnostic>), Box<Diagnostic>> {
    let mut builder = Builder {
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        problems: Vec::new(),
        fatal: None,
        budget: Size::default(),
    };
    let mut parser = Parser::new_from_str(text);
    // The parser's own `load` recurses once per nesting level; pulling events in a loop
    // does not, and stops at the first fatal problem (such as nesting too deep).
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((event, mark)) => builder.on_event(event, mark),
            Err(e) => {
                let m = e.marker();
                let span = Span { file, line: m.line() as u32, col: m.col() as u32 + 1 };
                let message = format!("invalid YAML: {}", e.info());
                return Err(Box::new(Diagnostic::error("yaml-syntax", Some(span), "", message)));
            }
        }
        if builder.fatal.is_some() {
            break;
        }
    }
    if let Some(fatal) = builder.fatal {
        return Err(Box::new(fatal));
    }
    let root =
        builder.root.unwrap_or(Node { kind: Kind::Map(Vec::new()), span: Span { file, line: 1, col: 1 }, tag: None });
    Ok((root, builder.problems))
}

/// A mapping under construction.
struct OpenMap {
    node: Node,
    anchor: usize,
    /// A key waiting for its value.
    key: Option<Node>,
    /// Keys present, once the mapping is wide enough for scanning to cost (thousands
    /// of services or settings); small mappings are scanned.
    keys: Option<HashSet<String>>,
    /// Keys that came from a merge key `<<`, which explicit keys override.
    from_merge: HashSet<String>,
}

enum Open {
    Seq(Node, usize),
    Map(OpenMap),
}

#[derive(Clone, Copy, Default)]
struct Size {
    nodes: usize,
    bytes: usize,
}

impl Size {
    fn of(node: &Node) -> Size {
        let mut size = Size { nodes: 1, bytes: 0 };
        match &node.kind {
            Kind::Scalar { text, .. } => size.bytes = text.len(),
            Kind::Seq(items) => items.iter().for_each(|i| size.add(Size::of(i))),
            Kind::Map(entries) => entries.iter().for_each(|(k, v)| {
                size.add(Size::of(k));
                size.add(Size::of(v));
            }),
            Kind::Null => {}
        }
        size
    }

    fn add(&mut self, other: Size) {
        self.nodes += other.nodes;
        self.bytes += other.bytes;
    }

    fn within_limits(self) -> bool {
        self.nodes <= MAX_NODES && self.bytes <= MAX_BYTES
    }
}

struct Builder {
    file: u32,
    stack: Vec<Open>,
    /// Anchored nodes and their size.
    anchors: HashMap<usize, (Node, Size)>,
    root: Option<Node>,
    problems: Vec<Diagnostic>,
    fatal: Option<Diagnostic>,
    /// What the document holds so far, aliases counted at their full size.
    budget: Size,
}

impl Builder {
    fn span(&self, mark: Marker) -> Span {
        Span { file: self.file, line: mark.line() as u32, col: mark.col() as u32 + 1 }
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if self.fatal.is_some() {
            return;
        }
        if anchor > 0 {
            let size = Size::of(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Seq(seq, _)) => {
                if let Kind::Seq(items) = &mut seq.kind {
                    items.push(node);
                }
            }
            Some(Open::Map(map)) => match map.key.take() {
                None => map.key = Some(node),
                Some(key) => {
                    if let Some(problem) = insert(map, key, node) {
                        self.problems.push(problem);
                    }
                }
            },
        }
    }
}

const INDEX_FROM: usize = 32;

impl OpenMap {
    fn has_key(&self, text: &str) -> bool {
        match (&self.keys, &self.node.kind) {
            (Some(keys), _) => keys.contains(text),
            (None, Kind::Map(entries)) => entries.iter().any(|(k, _)| k.key_text() == Some(text)),
            _ => false,
        }
    }

    fn push(&mut self, key: Node, value: Node) {
        let Kind::Map(entries) = &mut self.node.kind else { return };
        if let Some(keys) = &mut self.keys {
            keys.insert(key.key_text().unwrap_or_default().to_string());
        }
        entries.push((key, value));
        if self.keys.is_none() && entries.len() >= INDEX_FROM {
            self.keys = Some(entries.iter().filter_map(|(k, _)| k.key_text().map(str::to_string)).collect());
        }
    }

    fn remove(&mut self, text: &str) {
        if let Kind::Map(entries) = &mut self.node.kind {
            entries.retain(|(e, _)| e.key_text() != Some(text));
        }
        if let Some(keys) = &mut self.keys {
            keys.remove(text);
        }
    }
}

/// Adds an entry to a mapping under construction; a problem leaves the mapping as it was.
fn insert(map: &mut OpenMap, key: Node, value: Node) -> Option<Diagnostic> {
    let Some(text) = key.key_text().map(str::to_string) else {
        return Some(Diagnostic::error("yaml-key", Some(key.span), "", "mapping keys must be plain strings"));
    };
    if text == "<<" && key.tag.is_none() {
        // YAML merge key: entries of the merged mapping(s) fill keys not set here.
        let sources = match value.kind {
            Kind::Seq(items) => items,
            _ => vec![value],
        };
        for source in sources {
            let Kind::Map(merged) = source.kind else {
                return Some(Diagnostic::error(
                    "yaml-merge",
                    Some(key.span),
                    "",
                    "the merge key `<<` takes a mapping or a list of mappings",
                ));
            };
            for (k, v) in merged {
                let name = k.key_text().unwrap_or_default().to_string();
                if !map.has_key(&name) {
                    map.from_merge.insert(name);
                    map.push(k, v);
                }
            }
        }
        return None;
    }
    if map.from_merge.remove(&text) {
        map.remove(&text);
    }
    if map.has_key(&text) {
        let Kind::Map(entries) = &map.node.kind else { return None };
        let first_line = entries.iter().find(|(e, _)| e.key_text() == Some(&text)).map(|(e, _)| e.span.line);
        let mut d = Diagnostic::error("duplicate-key", Some(key.span), "", format!("duplicate key `{text}`"));
        if let Some(line) = first_line {
            d = d.with_hint(format!("it is already set on line {line}; the first one is used"));
        }
        return Some(d);
    }
    map.push(key, value);
    None
}

fn tag_name(tag: Option<Tag>) -> Option<String> {
    tag.map(|t| if t.handle == "!" { format!("!{}", t.suffix) } else { format!("{}{}", t.handle, t.suffix) })
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let span = self.span(mark);
        if let Event::Scalar(text, ..) = &event {
            self.budget.add(Size { nodes: 1, bytes: text.len() });
        } else if matches!(event, Event::SequenceStart(..) | Event::MappingStart(..)) {
            self.budget.add(Size { nodes: 1, bytes: 0 });
        }
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == TScalarStyle::Plain;
                let tag = tag_name(tag);
                let kind = if plain && tag.is_none() && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Kind::Null
                } else {
                    Kind::Scalar { text, plain }
                };
                self.finish(Node { kind, span, tag }, anchor);
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                self.fatal.get_or_insert(Diagnostic::error(
                    "yaml-too-deep",
                    Some(span),
                    "",
                    format!("mappings and lists nest more than {MAX_DEPTH} levels deep here"),
                ));
            }
            Event::SequenceStart(anchor, tag) => {
                self.stack.push(Open::Seq(Node { kind: Kind::Seq(Vec::new()), span, tag: tag_name(tag) }, anchor));
            }
            Event::MappingStart(anchor, tag) => {
                self.stack.push(Open::Map(OpenMap {
                    node: Node { kind: Kind::Map(Vec::new()), span, tag: tag_name(tag) },
                    anchor,
                    key: None,
                    keys: None,
                    from_merge: HashSet::new(),
                }));
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq(node, anchor)) => self.finish(node, anchor),
                Some(Open::Map(map)) => self.finish(map.node, map.anchor),
                None => {}
            },
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, size)) => {
                    let mut after = self.budget;
                    after.add(*size);
                    if !after.within_limits() {
                        self.fatal.get_or_insert(
                            Diagnostic::error(
                                "yaml-too-large",
                                Some(span),
                                "",
                                "aliases expand this document beyond a million nodes or 64 MiB",
                            )
                            .with_hint("a stack file never needs this much: check for aliases that refer to aliases"),
                        );
                        return;
                    }
                    self.budget = after;
                    let node = node.clone();
                    self.finish(node, 0);
                }
                None => self.problems.push(Diagnostic::error("yaml-alias", Some(span), "", "unknown alias")),
            },
            Event::DocumentStart if self.root.is_some() => {
                self.fatal.get_or_insert(
                    Diagnostic::error("yaml-documents", Some(span), "", "a stack file holds one YAML document; this starts a second")
                        .with_hint("remove the `---` line, or put the second document in its own file and pass it with another `-f`"),
                );
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
        }
    }
}

/// Merges `over` onto `base` as overlays do: mappings merge key by key, lists and
/// scalars replace, a value tagged `!reset` removes the key, and a mapping tagged
/// `!override` replaces instead of merging.
pub fn merge(base: &mut Node, over: Node) {
    match (&mut base.kind, over.kind) {
        (Kind::Map(entries), Kind::Map(over_entries)) if over.tag.as_deref() != Some("!override") => {
            // An index, since mappings can be wide (thousands of services).
            let mut index: HashMap<String, usize> =
                entries.iter().enumerate().filter_map(|(i, (k, _))| k.key_text().map(|t| (t.to_string(), i))).collect();
            let mut removed = HashSet::new();
            for (key, value) in over_entries {
                let name = key.key_text().unwrap_or_default().to_string();
                if value.tag.as_deref() == Some("!reset") {
                    if let Some(i) = index.remove(&name) {
                        removed.insert(i);
                    }
                    continue;
                }
                match index.get(&name) {
                    Some(&i) => merge(&mut entries[i].1, value),
                    None => {
                        index.insert(name, entries.len());
                        entries.push((key, strip_directives(value)));
                    }
                }
            }
            if !removed.is_empty() {
                let mut i = 0;
                entries.retain(|_| {
                    i += 1;
                    !removed.contains(&(i - 1))
                });
            }
        }
        (_, kind) => {
            *base = strip_directives(Node { kind, span: over.span, tag: over.tag });
        }
    }
}

/// Removes overlay directives from a node that is taken whole (nothing below it to reset).
fn strip_directives(mut node: Node) -> Node {
    strip_in_place(&mut node);
    node
}

fn strip_in_place(node: &mut Node) {
    if matches!(node.tag.as_deref(), Some("!override") | Some("!reset")) {
        node.tag = None;
    }
    match &mut node.kind {
        Kind::Map(entries) => {
            entries.retain(|(_, v)| v.tag.as_deref() != Some("!reset"));
            entries.iter_mut().for_each(|(_, v)| strip_in_place(v));
        }
        Kind::Seq(items) => items.iter_mut().for_each(strip_in_place),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Node {
        let (node, problems) = parse(text, 0).expect("valid yaml");
        assert!(problems.is_empty(), "{problems:?}");
        node
    }

    fn texts(node: &Node) -> String {
        match &node.kind {
            Kind::Null => "~".into(),
            Kind::Scalar { text, .. } => text.clone(),
            Kind::Seq(items) => format!("[{}]", items.iter().map(texts).collect::<Vec<_>>().join(",")),
            Kind::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{}:{}", k.key_text().unwrap_or("?"), texts(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    fn merged(base: &str, over: &str) -> String {
        let mut b = doc(base);
        merge(&mut b, doc(over));
        texts(&b)
    }

    #[test]
    fn spans_point_at_values() {
        let d = doc("a:\n  b: 1\n  c: [x, y]\n");
        let b = d.get("a").and_then(|a| a.get("b")).unwrap();
        assert_eq!((b.span.line, b.span.col), (2, 6));
        let c = d.get("a").and_then(|a| a.get("c")).unwrap();
        let Kind::Seq(items) = &c.kind else { panic!() };
        assert_eq!((items[1].span.line, items[1].span.col), (3, 10));
    }

    #[test]
    fn maps_merge_key_by_key_and_lists_replace() {
        assert_eq!(merged("a: {x: 1, y: 2}\nl: [1, 2]", "a: {y: 3, z: 4}\nl: [9]"), "{a:{x:1,y:3,z:4},l:[9]}");
    }

    #[test]
    fn reset_removes_a_key() {
        assert_eq!(merged("a: {x: 1, y: 2}", "a: {x: !reset null}"), "{a:{y:2}}");
        assert_eq!(merged("a: {x: 1}\nb: 2", "a: !reset {}"), "{b:2}");
        // Resetting a key that is not there is not an error, and leaves nothing behind.
        assert_eq!(merged("a: 1", "b: !reset ~"), "{a:1}");
    }

    #[test]
    fn override_replaces_a_mapping() {
        assert_eq!(merged("a: {x: 1, y: 2}", "a: !override {z: 3}"), "{a:{z:3}}");
    }

    #[test]
    fn scalars_replace_maps_and_back() {
        assert_eq!(merged("a: {x: 1}", "a: text"), "{a:text}");
        assert_eq!(merged("a: text", "a: {x: 1}"), "{a:{x:1}}");
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let d = doc("x-base: &base {restart: always, replicas: 2}\nsvc:\n  <<: *base\n  replicas: 3\n");
        assert_eq!(texts(d.get("svc").unwrap()), "{restart:always,replicas:3}");
    }

    #[test]
    fn duplicate_keys_are_errors_naming_the_first_and_keep_the_rest() {
        let (node, problems) = parse("a: 1\nb: 2\na: 3\n", 0).unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code, "duplicate-key");
        assert_eq!(problems[0].span.map(|s| s.line), Some(3));
        assert!(problems[0].hint.as_deref().unwrap().contains("line 1"));
        assert_eq!(texts(&node), "{a:1,b:2}");
    }

    #[test]
    fn duplicates_are_found_in_wide_mappings_too() {
        let mut text: String = (0..100).map(|i| format!("k{i}: {i}\n")).collect();
        text.push_str("k3: again\nk99: again\n");
        let (node, problems) = parse(&text, 0).unwrap();
        assert_eq!(problems.iter().filter(|p| p.code == "duplicate-key").count(), 2);
        assert_eq!(texts(node.get("k3").unwrap()), "3", "the first value is kept");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("x-a:\n{}x\n", "- ".repeat(50_000));
        assert_eq!(parse(&text, 0).unwrap_err().code, "yaml-too-deep");
        let ok = format!("a:\n{}x\n", "- ".repeat(MAX_DEPTH - 2));
        assert!(parse(&ok, 0).is_ok());
    }

    #[test]
    fn a_second_document_is_an_error() {
        assert_eq!(parse("a: 1\n---\nb: 2\n", 0).unwrap_err().code, "yaml-documents");
        assert!(parse("---\na: 1\n", 0).is_ok(), "one document may start with ---");
    }

    #[test]
    fn wide_mappings_merge_by_key() {
        let text: String = (0..20_000).map(|i| format!("k{i}: {i}\n")).collect();
        let (mut node, _) = parse(&text, 0).unwrap();
        let (over, _) = parse("k7: seven\nk9: !reset\nnew: 1\n", 1).unwrap();
        merge(&mut node, over);
        let Kind::Map(entries) = &node.kind else { panic!("a mapping") };
        assert_eq!(entries.len(), 20_000);
        assert_eq!(texts(node.get("k7").unwrap()), "seven");
        assert!(node.get("k9").is_none() && node.get("new").is_some());
    }

    #[test]
    fn big_scalars_behind_aliases_are_refused() {
        let big = "x".repeat(100_000);
        let text =
            format!("a: &a [{big}]\nb: &b [{}]\nc: &c [{}]\n", vec!["*a"; 100].join(","), vec!["*b"; 100].join(","));
        assert_eq!(parse(&text, 0).unwrap_err().code, "yaml-too-large");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a: [1, 2\nb: 3\n", 0).unwrap_err();
        assert_eq!(e.code, "yaml-syntax");
        assert!(e.span.is_some());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g"].iter().zip(["b", "c", "d", "e", "f", "g", "h"]) {
            text.push_str(&format!("{name}: &{name} [{}]\n", vec![format!("*{prev}"); 10].join(", ")));
        }
        assert_eq!(parse(&text, 0).unwrap_err().code, "yaml-too-large");
    }

    #[test]
    fn null_forms_and_quoted_null() {
        let d = doc("a: ~\nb:\nc: 'null'\n");
        assert!(d.get("a").unwrap().is_null());
        assert!(d.get("b").unwrap().is_null());
        assert!(!d.get("c").unwrap().is_null());
    }
}
