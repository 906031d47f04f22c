//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Built from the event parser of `yaml-rust2` so that every node keeps its file,
//! line and column and its tag (`!reset`, `!override`). Scalars stay text: their type
//! is decided by the field that reads them, as the stack file's schema says.

use std::collections::HashMap;

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

/// The most nodes a document may expand to through aliases: far beyond any real
/// stack file, far below what would exhaust memory ("billion laughs").
pub const MAX_NODES: usize = 1_000_000;

/// Parses one YAML document. An empty document is an empty mapping.
pub fn parse(text: &str, file: u32) -> Result<Node, Box<Diagnostic>> {
    let mut builder = Builder { file, stack: Vec::new(), anchors: HashMap::new(), root: None, error: None, nodes: 0 };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        let m = e.marker();
        let span = Span { file, line: m.line() as u32, col: m.col() as u32 + 1 };
        return Err(Box::new(Diagnostic::error("yaml-syntax", Some(span), "", format!("invalid YAML: {}", e.info()))));
    }
    if let Some(error) = builder.error {
        return Err(Box::new(error));
    }
    Ok(builder.root.unwrap_or(Node { kind: Kind::Map(Vec::new()), span: Span { file, line: 1, col: 1 }, tag: None }))
}

enum Open {
    Seq(Node, usize),
    /// A mapping under construction, its anchor, a key waiting for its value, and
    /// the keys that came from a merge key `<<` (which explicit keys override).
    Map(Node, usize, Option<Node>, Vec<String>),
}

struct Builder {
    file: u32,
    stack: Vec<Open>,
    /// Anchored nodes and how many nodes each holds.
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    error: Option<Diagnostic>,
    /// Nodes built so far, aliases counted at their full size.
    nodes: usize,
}

fn size(node: &Node) -> usize {
    1 + match &node.kind {
        Kind::Seq(items) => items.iter().map(size).sum(),
        Kind::Map(entries) => entries.iter().map(|(k, v)| size(k) + size(v)).sum(),
        _ => 0,
    }
}

impl Builder {
    fn span(&self, mark: Marker) -> Span {
        Span { file: self.file, line: mark.line() as u32, col: mark.col() as u32 + 1 }
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if self.error.is_some() {
            return;
        }
        if anchor > 0 {
            let size = size(&node);
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
            Some(Open::Map(map, _, pending, from_merge)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    let Kind::Map(entries) = &mut map.kind else {
                        return;
                    };
                    if key.key_text() == Some("<<") && key.tag.is_none() {
                        // YAML merge key: entries of the merged mapping(s) fill keys not set here.
                        let sources = match node.kind {
                            Kind::Seq(items) => items,
                            _ => vec![node],
                        };
                        for source in sources {
                            match source.kind {
                                Kind::Map(merged) => {
                                    for (k, v) in merged {
                                        if !entries.iter().any(|(e, _)| e.key_text() == k.key_text()) {
                                            from_merge.push(k.key_text().unwrap_or_default().to_string());
                                            entries.push((k, v));
                                        }
                                    }
                                }
                                _ => {
                                    self.error.get_or_insert(Diagnostic::error(
                                        "yaml-merge",
                                        Some(key.span),
                                        "",
                                        "the merge key `<<` takes a mapping or a list of mappings",
                                    ));
                                }
                            }
                        }
                        return;
                    }
                    if let Some(text) = key.key_text()
                        && let Some(i) = from_merge.iter().position(|k| k == text)
                    {
                        from_merge.swap_remove(i);
                        entries.retain(|(e, _)| e.key_text() != Some(text));
                    }
                    if let Some(text) = key.key_text()
                        && let Some((first, _)) = entries.iter().find(|(e, _)| e.key_text() == Some(text))
                    {
                        let first_line = first.span.line;
                        self.error.get_or_insert(
                            Diagnostic::error("duplicate-key", Some(key.span), "", format!("duplicate key `{text}`"))
                                .with_hint(format!("it is already set on line {first_line}")),
                        );
                        return;
                    }
                    if !matches!(key.kind, Kind::Scalar { .. }) {
                        self.error.get_or_insert(Diagnostic::error(
                            "yaml-key",
                            Some(key.span),
                            "",
                            "mapping keys must be plain strings",
                        ));
                        return;
                    }
                    entries.push((key, node));
                }
            },
        }
    }
}

fn tag_name(tag: Option<Tag>) -> Option<String> {
    tag.map(|t| if t.handle == "!" { format!("!{}", t.suffix) } else { format!("{}{}", t.handle, t.suffix) })
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let span = self.span(mark);
        if matches!(event, Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..)) {
            self.nodes += 1;
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
            Event::SequenceStart(anchor, tag) => {
                self.stack.push(Open::Seq(Node { kind: Kind::Seq(Vec::new()), span, tag: tag_name(tag) }, anchor));
            }
            Event::MappingStart(anchor, tag) => {
                self.stack.push(Open::Map(
                    Node { kind: Kind::Map(Vec::new()), span, tag: tag_name(tag) },
                    anchor,
                    None,
                    Vec::new(),
                ));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Open::Seq(node, anchor) | Open::Map(node, anchor, _, _)) = self.stack.pop() {
                    self.finish(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((_, size)) if self.nodes + size > MAX_NODES => {
                    self.error.get_or_insert(
                        Diagnostic::error(
                            "yaml-too-large",
                            Some(span),
                            "",
                            "aliases expand this document beyond a million nodes",
                        )
                        .with_hint("a stack file never needs this many: check for aliases that refer to aliases"),
                    );
                }
                Some((node, size)) => {
                    self.nodes += size;
                    let node = node.clone();
                    self.finish(node, 0);
                }
                None => {
                    self.error.get_or_insert(Diagnostic::error("yaml-alias", Some(span), "", "unknown alias"));
                }
            },
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
            for (key, value) in over_entries {
                let position = entries.iter().position(|(k, _)| k.key_text() == key.key_text());
                if value.tag.as_deref() == Some("!reset") {
                    if let Some(i) = position {
                        entries.remove(i);
                    }
                    continue;
                }
                match position {
                    Some(i) => merge(&mut entries[i].1, value),
                    None => entries.push((key, strip_directives(value))),
                }
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
        parse(text, 0).expect("valid yaml")
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
    fn duplicate_keys_are_errors_naming_the_first() {
        let e = parse("a: 1\nb: 2\na: 3\n", 0).unwrap_err();
        assert_eq!(e.code, "duplicate-key");
        assert_eq!(e.span.map(|s| s.line), Some(3));
        assert!(e.hint.unwrap().contains("line 1"));
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
