//! Reading Compose files: YAML with anchors and merge keys, overlays merged in order by
//! Compose's rules, and the variables interpolation reads (`.env`, then the process
//! environment over it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tug_stackfile::interp::{self, Lookup};
use tug_stackfile::yaml::{self, Kind, Node};
use tug_stackfile::{SourceMap, Span, dotenv};

use crate::Error;

/// Service fields whose lists from an overlay are added to the base's (Compose's merge
/// rules); every other list is replaced.
const APPENDED: &[&str] = &[
    "ports",
    "expose",
    "dns",
    "dns_search",
    "tmpfs",
    "cap_add",
    "cap_drop",
    "security_opt",
    "env_file",
    "secrets",
    "configs",
    "external_links",
    "extra_hosts",
    "profiles",
];
/// Lists merged by the mount target of each item.
const BY_TARGET: &[&str] = &["volumes", "devices"];

/// The Compose model once every file is read and merged.
pub struct Loaded {
    pub root: Node,
    pub sources: SourceMap,
    pub vars: Vars,
    /// The folder of the first file: relative paths are relative to it.
    pub project_dir: PathBuf,
}

pub fn load(files: &[PathBuf], env_files: &[PathBuf], process_env: &HashMap<String, String>) -> Result<Loaded, Error> {
    let first = files.first().ok_or(Error::NoFiles)?;
    let project_dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
    let project_dir = if project_dir.as_os_str().is_empty() { PathBuf::from(".") } else { project_dir };
    let mut sources = SourceMap::default();
    let mut root: Option<Node> = None;
    for path in files {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Read { path: path.clone(), message: e.to_string() })?;
        let id = sources.add(path.clone(), text.clone());
        let (node, problems) = yaml::parse(&text, id).map_err(|d| Error::Yaml { path: path.clone(), diagnostic: d })?;
        if let Some(problem) = problems.into_iter().next() {
            return Err(Error::Yaml { path: path.clone(), diagnostic: Box::new(problem) });
        }
        if !matches!(node.kind, Kind::Map(_)) {
            return Err(Error::NotCompose { path: path.clone(), message: "the file is not a mapping".into() });
        }
        let node = normalize_services(node);
        root = Some(match root {
            None => strip_resets(node),
            Some(base) => merge(base, node, &[]),
        });
    }
    let root = root.ok_or(Error::NoFiles)?;
    if root.get("services").is_none_or(|s| !matches!(s.kind, Kind::Map(_))) {
        return Err(Error::NotCompose { path: first.clone(), message: "it has no `services:` mapping".into() });
    }
    let default_env = project_dir.join(".env");
    let env_files: Vec<PathBuf> = if env_files.is_empty() {
        [default_env].into_iter().filter(|p| p.is_file()).collect()
    } else {
        env_files.to_vec()
    };
    let mut vars = Vars { values: HashMap::new(), from_files: HashMap::new(), env_files: env_files.clone() };
    for file in &env_files {
        let text =
            std::fs::read_to_string(file).map_err(|e| Error::Read { path: file.clone(), message: e.to_string() })?;
        let (entries, errors) = dotenv::parse(&text);
        if let Some(e) = errors.first() {
            return Err(Error::EnvFile { path: file.clone(), line: e.line, message: e.message.clone() });
        }
        for entry in entries {
            vars.from_files.insert(entry.key.clone(), file.clone());
            vars.values.insert(entry.key, entry.value);
        }
    }
    for (k, v) in process_env {
        vars.values.insert(k.clone(), v.clone());
        vars.from_files.remove(k);
    }
    Ok(Loaded { root, sources, vars, project_dir })
}

/// The variables Compose interpolates from.
pub struct Vars {
    values: HashMap<String, String>,
    /// Names whose value came from an env file (and which file), not the environment.
    from_files: HashMap<String, PathBuf>,
    pub env_files: Vec<PathBuf>,
}

/// A value once interpolated as Compose does it.
#[derive(Debug)]
pub struct Resolved {
    pub text: String,
    /// Variables referred to that are not set (Compose reads them as empty).
    pub unset: Vec<String>,
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The env file a variable came from, when it did not come from the environment.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.from_files.get(name).map(PathBuf::as_path)
    }

    /// Interpolates as Compose does: an unset variable without a default is empty.
    pub fn resolve(&self, raw: &str) -> Result<Resolved, String> {
        let mut unset: Vec<String> = Vec::new();
        loop {
            let mut lookup = |name: &str| match self.values.get(name) {
                Some(v) => Lookup::Value { text: v.clone(), sensitive: false },
                None if unset.iter().any(|u| u == name) => Lookup::Value { text: String::new(), sensitive: false },
                None => Lookup::Unset { sensitive: false },
            };
            match interp::interpolate(raw, &mut lookup) {
                Ok(out) => return Ok(Resolved { text: out.text, unset }),
                Err(errors) => {
                    let mut progressed = false;
                    for e in &errors {
                        match e {
                            interp::Error::Unset { name } if !unset.contains(name) => {
                                unset.push(name.clone());
                                progressed = true;
                            }
                            interp::Error::Required { name, message } if message.is_empty() => {
                                return Err(format!("`{name}` is required but not set"));
                            }
                            interp::Error::Required { name, message } => {
                                return Err(format!("`{name}` is required: {message}"));
                            }
                            interp::Error::Syntax { message } => return Err(message.clone()),
                            _ => {}
                        }
                    }
                    if !progressed {
                        return Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
                    }
                }
            }
        }
    }
}

fn node(kind: Kind, span: Span) -> Node {
    Node { kind, span, tag: None }
}

fn scalar(text: &str, span: Span) -> Node {
    node(Kind::Scalar { text: text.to_string(), plain: false }, span)
}

/// Lists that Compose also accepts as maps become maps, so overlays merge key by key:
/// `environment`/`labels` `KEY=VALUE` lists, `depends_on` name lists, `build` as a path.
fn normalize_services(mut root: Node) -> Node {
    let Kind::Map(entries) = &mut root.kind else { return root };
    for (key, services) in entries.iter_mut() {
        if key.key_text() != Some("services") {
            continue;
        }
        let Kind::Map(services) = &mut services.kind else { continue };
        for (_, service) in services.iter_mut() {
            let Kind::Map(fields) = &mut service.kind else { continue };
            for (field, value) in fields.iter_mut() {
                match field.key_text() {
                    Some("environment" | "labels" | "annotations") => *value = keyed_list_to_map(value.clone()),
                    Some("depends_on") => *value = names_to_map(value.clone()),
                    Some("build") => {
                        if let Kind::Scalar { .. } = value.kind {
                            let span = value.span;
                            let context = value.clone();
                            *value = node(Kind::Map(vec![(scalar("context", span), context)]), span);
                        }
                        if let Kind::Map(build) = &mut value.kind {
                            for (k, v) in build.iter_mut() {
                                if k.key_text() == Some("args") {
                                    *v = keyed_list_to_map(v.clone());
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    root
}

/// `[A=1, B]` as `{A: "1", B: null}`.
fn keyed_list_to_map(value: Node) -> Node {
    let Kind::Seq(items) = &value.kind else { return value };
    let mut entries = Vec::new();
    for item in items {
        let Some(text) = item.key_text() else {
            return value;
        };
        let (k, v) = match text.split_once('=') {
            Some((k, v)) => (k, scalar(v, item.span)),
            None => (text, node(Kind::Null, item.span)),
        };
        entries.push((scalar(k, item.span), v));
    }
    Node { kind: Kind::Map(entries), span: value.span, tag: value.tag }
}

/// `depends_on: [db]` as `{db: {condition: service_started}}`.
fn names_to_map(value: Node) -> Node {
    let Kind::Seq(items) = &value.kind else { return value };
    let entries = items
        .iter()
        .map(|item| {
            let condition = vec![(scalar("condition", item.span), scalar("service_started", item.span))];
            (item.clone(), node(Kind::Map(condition), item.span))
        })
        .collect();
    Node { kind: Kind::Map(entries), span: value.span, tag: value.tag }
}

fn is_tag(node: &Node, tag: &str) -> bool {
    node.tag.as_deref() == Some(tag)
}

/// `!reset` in a single file (or the first) removes the entry.
fn strip_resets(mut node: Node) -> Node {
    match &mut node.kind {
        Kind::Map(entries) => {
            entries.retain(|(_, v)| !is_tag(v, "!reset"));
            for (_, v) in entries.iter_mut() {
                *v = strip_resets(std::mem::replace(v, node_null()));
            }
        }
        Kind::Seq(items) => {
            for v in items.iter_mut() {
                *v = strip_resets(std::mem::replace(v, node_null()));
            }
        }
        _ => {}
    }
    if is_tag(&node, "!override") {
        node.tag = None;
    }
    node
}

fn node_null() -> Node {
    node(Kind::Null, Span { file: 0, line: 0, col: 0 })
}

/// Merges an overlay over the base, as `docker compose -f a -f b` does.
pub fn merge(base: Node, over: Node, path: &[&str]) -> Node {
    if is_tag(&over, "!override") {
        return strip_resets(over);
    }
    match (base.kind, over.kind) {
        (Kind::Map(mut entries), Kind::Map(over_entries)) => {
            for (key, value) in over_entries {
                let name = key.key_text().unwrap_or_default().to_string();
                let at = entries.iter().position(|(k, _)| k.key_text() == Some(name.as_str()));
                if is_tag(&value, "!reset") {
                    if let Some(i) = at {
                        entries.remove(i);
                    }
                    continue;
                }
                match at {
                    Some(i) => {
                        let old = std::mem::replace(&mut entries[i].1, node_null());
                        let mut child: Vec<&str> = path.to_vec();
                        child.push(&name);
                        entries[i].1 = merge(old, value, &child);
                    }
                    None => entries.push((key, strip_resets(value))),
                }
            }
            Node { kind: Kind::Map(entries), span: base.span, tag: None }
        }
        (Kind::Seq(mut items), Kind::Seq(over_items)) if is_service_field(path, APPENDED) => {
            for item in over_items {
                if !items.iter().any(|i| same_scalar(i, &item)) {
                    items.push(strip_resets(item));
                }
            }
            Node { kind: Kind::Seq(items), span: base.span, tag: None }
        }
        (Kind::Seq(mut items), Kind::Seq(over_items)) if is_service_field(path, BY_TARGET) => {
            for item in over_items {
                match items.iter().position(|i| mount_target(i).is_some() && mount_target(i) == mount_target(&item)) {
                    Some(i) => items[i] = item,
                    None => items.push(item),
                }
            }
            Node { kind: Kind::Seq(items), span: base.span, tag: None }
        }
        (_, kind) => strip_resets(Node { kind, span: over.span, tag: over.tag }),
    }
}

/// Whether `path` is `services.<name>.<one of fields>`.
fn is_service_field(path: &[&str], fields: &[&str]) -> bool {
    match path {
        ["services", _, rest @ ..] => fields.contains(&rest.join(".").as_str()),
        _ => false,
    }
}

fn same_scalar(a: &Node, b: &Node) -> bool {
    matches!((&a.kind, &b.kind), (Kind::Scalar { text: x, .. }, Kind::Scalar { text: y, .. }) if x == y)
}

/// The container path of a volume, short (`src:/target:ro`) or long (`target:`).
fn mount_target(node: &Node) -> Option<String> {
    match &node.kind {
        Kind::Scalar { text, .. } => {
            let parts: Vec<&str> = text.split(':').collect();
            match parts.as_slice() {
                [target] => Some(target.to_string()),
                [_, target] | [_, target, _] => Some(target.to_string()),
                _ => None,
            }
        }
        Kind::Map(_) => node.get("target").and_then(Node::key_text).map(str::to_string),
        _ => None,
    }
}

/// Keeps the raw text when tug, reading the same environment, would interpolate it the
/// same way; else `None` and the caller writes the value Compose would use.
pub fn keepable(raw: &str, vars: &Vars, env_beside_output: Option<&Path>) -> bool {
    if !interp::has_references(raw) {
        return true;
    }
    let names = interp::references(raw);
    // Instance variables mean something else to tug: never keep a reference to one.
    if names.iter().any(|n| matches!(n.as_str(), "PORT" | "HOST") || n.starts_with("TUG_")) {
        return false;
    }
    let mut lookup = |name: &str| {
        let visible = match vars.file_of(name) {
            Some(file) => env_beside_output.is_some_and(|beside| beside == file),
            None => vars.get(name).is_some(),
        };
        match vars.get(name) {
            Some(v) if visible => Lookup::Value { text: v.to_string(), sensitive: false },
            _ => Lookup::Unknown,
        }
    };
    // Kept only when tug would read the same value as Compose does now.
    let compose = vars.resolve(raw).map(|r| r.text).ok();
    interp::interpolate(raw, &mut lookup).is_ok_and(|out| Some(out.text) == compose)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Node {
        normalize_services(yaml::parse(text, 0).unwrap().0)
    }

    fn dump(node: &Node) -> String {
        match &node.kind {
            Kind::Null => "~".into(),
            Kind::Scalar { text, .. } => text.clone(),
            Kind::Seq(items) => format!("[{}]", items.iter().map(dump).collect::<Vec<_>>().join(",")),
            Kind::Map(entries) => format!(
                "{{{}}}",
                entries.iter().map(|(k, v)| format!("{}:{}", dump(k), dump(v))).collect::<Vec<_>>().join(",")
            ),
        }
    }

    #[test]
    fn overlays_merge_by_composes_rules() {
        let base = parse(
            "services:\n  web:\n    image: a\n    command: [x, y]\n    ports: ['80:80']\n    environment: [A=1, B=2]\n    \
             volumes: ['d:/data', './c:/conf']\n    depends_on: [db]\n    labels: {x: '1'}\n",
        );
        let over = parse(
            "services:\n  web:\n    image: b\n    command: [z]\n    ports: ['443:443', '80:80']\n    environment:\n      B: '3'\n      C: '4'\n    \
             volumes: ['e:/data']\n    depends_on:\n      cache: {condition: service_healthy}\n    labels: !reset {}\n",
        );
        let merged = merge(strip_resets(base), over, &[]);
        assert_eq!(
            dump(&merged),
            "{services:{web:{image:b,command:[z],ports:[80:80,443:443],environment:{A:1,B:3,C:4},\
             volumes:[e:/data,./c:/conf],depends_on:{db:{condition:service_started},cache:{condition:service_healthy}}}}}"
        );
    }

    #[test]
    fn override_replaces_instead_of_merging() {
        let base = parse("services:\n  web:\n    ports: ['80:80']\n");
        let over = parse("services:\n  web:\n    ports: !override ['81:81']\n");
        assert_eq!(dump(&merge(base, over, &[])), "{services:{web:{ports:[81:81]}}}");
    }

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars {
            values: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            from_files: HashMap::new(),
            env_files: Vec::new(),
        }
    }

    #[test]
    fn interpolation_reads_unset_as_empty_as_compose_does() {
        let v = vars(&[("TAG", "7"), ("EMPTY", "")]);
        let r = v.resolve("redis:${TAG}-${MISSING}${EMPTY:-x}${NOPE-y}${TAG:+z}$$").unwrap();
        assert_eq!(r.text, "redis:7-xyz$");
        assert_eq!(r.unset, ["MISSING"]);
        assert!(v.resolve("${MISSING:?set it}").unwrap_err().contains("set it"));
    }

    #[test]
    fn references_are_kept_only_where_tug_resolves_them_alike() {
        let v = vars(&[("TAG", "7")]);
        assert!(keepable("redis:${TAG}", &v, None));
        assert!(keepable("${MISSING:-x}", &v, None));
        assert!(!keepable("${MISSING}", &v, None));
        assert!(!keepable("--port ${PORT}", &vars(&[("PORT", "1")]), None));
        // From an env file tug will not read: `${TAG:-dev}` would become `dev` there.
        let mut from_file = vars(&[("TAG", "7")]);
        from_file.from_files.insert("TAG".into(), PathBuf::from("/elsewhere/.env"));
        assert!(!keepable("app:${TAG:-dev}", &from_file, None));
        assert!(keepable("app:${TAG:-dev}", &from_file, Some(Path::new("/elsewhere/.env"))));
    }
}
