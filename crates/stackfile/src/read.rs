//! Readers that turn YAML nodes into typed values, reporting every problem with
//! its position and key path, and interpolating every string they read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;

use crate::diag::{Diagnostic, Diagnostics, Span};
use crate::interp::{self, Lookup};
use crate::model::{Setting, Source, Text};
use crate::units::{self, Percent, Signal, Size};
use crate::yaml::{Kind, Node};

/// `<NAME>_ADDR`: where an instance finds its dependency `name` (upper-cased, `-` as `_`).
pub fn address_variable(service: &str) -> String {
    let mut name: String = service.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }).collect();
    name.push_str("_ADDR");
    name
}

/// The instance variables every instance receives, substituted when it starts.
pub const INSTANCE_VARIABLES: [&str; 7] =
    ["HOST", "PORT", "TUG_SERVICE", "TUG_INSTANCE", "TUG_REPLICA", "TUG_REVISION", "TUG_STATE_DIR"];

/// Variables from outside the stack file: the process environment, then env files.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub process: HashMap<String, String>,
    /// Names of settings declared `type: secret`: their values are sensitive wherever
    /// they come from, even where settings are not resolved yet.
    pub secret_names: std::collections::HashSet<String>,
    /// From `.env` and `--env-file`, later files winning: value, file and span of the line.
    pub files: HashMap<String, (String, PathBuf, Span)>,
}

impl Env {
    pub fn get(&self, name: &str) -> Option<(&str, Source, Option<Span>)> {
        if let Some(v) = self.process.get(name) {
            return Some((v, Source::Environment, None));
        }
        self.files.get(name).map(|(v, file, span)| (v.as_str(), Source::EnvFile(file.clone()), Some(*span)))
    }
}

/// What names an interpolated string may refer to.
#[derive(Clone, Copy, Default)]
pub struct Scope<'s> {
    /// A service's own settings: all of them usable by the service.
    pub own: Option<&'s IndexMap<String, Setting>>,
    /// The shared settings.
    pub shared: Option<&'s IndexMap<String, Setting>>,
    /// The sensitive shared settings this scope may use (a service's `secrets:`); None: all.
    pub listed: Option<&'s [String]>,
    /// Keep instance variables for the per-instance pass (command, probes, environment).
    pub defer_instance: bool,
    /// With `defer_instance`: the `<NAME>_ADDR` variables of the service's dependencies, also
    /// substituted per instance.
    pub addresses: &'s [String],
}

impl Scope<'_> {
    /// Only the environment: for the parts of the file read before settings are resolved.
    pub const ENV_ONLY: Scope<'static> =
        Scope { own: None, shared: None, listed: None, defer_instance: false, addresses: &[] };
}

/// Whether a setting's value must be kept from people and from unlisted services.
pub fn is_sensitive(setting: &Setting) -> bool {
    setting.is_secret()
        || setting.source == Source::ToBeGenerated
        || setting.value.as_ref().is_some_and(|v| v.sensitive)
}

pub fn lookup_in(scope: &Scope, env: &Env, name: &str) -> Lookup {
    if let Some(setting) = scope.own.and_then(|own| own.get(name)) {
        return setting_lookup(setting);
    }
    if let Some(setting) = scope.shared.and_then(|shared| shared.get(name)) {
        if is_sensitive(setting) && scope.listed.is_some_and(|listed| !listed.iter().any(|l| l == name)) {
            return Lookup::NotListed;
        }
        return setting_lookup(setting);
    }
    if scope.defer_instance && (INSTANCE_VARIABLES.contains(&name) || scope.addresses.iter().any(|a| a == name)) {
        return Lookup::Deferred;
    }
    match env.get(name) {
        // A secret is used through its setting (listed, in a service): never straight
        // from the environment, which would bypass the listing.
        Some(_) if env.secret_names.contains(name) && scope.listed.is_some() => Lookup::NotListed,
        Some((v, _, _)) => Lookup::Value { text: v.to_string(), sensitive: env.secret_names.contains(name) },
        None => Lookup::Unknown,
    }
}

/// What a reference to a resolved setting interpolates to.
pub fn setting_lookup(setting: &Setting) -> Lookup {
    match (&setting.value, &setting.source) {
        (_, Source::ToBeGenerated) => Lookup::Pending,
        (Some(v), _) if v.pending => Lookup::Pending,
        (Some(v), _) => Lookup::Value { text: v.expose().to_string(), sensitive: v.sensitive },
        (None, _) => Lookup::Unset { sensitive: setting.is_secret() },
    }
}

/// Reports interpolation errors at the node, with a hint for unknown names.
pub fn report_interp_errors(diags: &mut Diagnostics, span: Span, path: &str, errors: Vec<interp::Error>, defer: bool) {
    for error in errors {
        let mut d = Diagnostic::error("interpolation", Some(span), path, error.to_string());
        d = match &error {
            interp::Error::NotListed { name } => {
                d.code = "secret-not-listed";
                d.with_hint(format!("add `{name}` to this service's `secrets:` if it needs it"))
            }
            interp::Error::Unset { name } => {
                d.with_hint(format!("give it a value, or write `${{{name}:-}}` to accept it empty"))
            }
            interp::Error::Unknown { name } => {
                d.code = "unknown-variable";
                d.with_hint(if INSTANCE_VARIABLES.contains(&name.as_str()) && !defer {
                    format!("`{name}` is an instance variable: it is only substituted in command, entrypoint, healthcheck, liveness, environment, deploy.smoke and backup")
                } else {
                    format!("define `{name}` under settings, set it in the environment or .env, or give a default: `${{{name}:-value}}`")
                })
            }
            interp::Error::Required { .. } | interp::Error::Syntax { .. } => d,
        };
        diags.push(d);
    }
}

/// The decoding context: where diagnostics go, and the environment interpolation reads.
/// What a string may refer to is the `Scope` each reader is given.
pub struct Ctx<'a> {
    pub diags: &'a mut Diagnostics,
    pub env: &'a Env,
}

impl Ctx<'_> {
    pub fn error(&mut self, code: &'static str, span: Span, path: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(code, Some(span), path, message));
    }

    pub fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        self.error("wrong-type", node.span, path, format!("expected {expected}, found {}", node.type_name()));
    }

    /// A mapping's entries, reporting unknown keys (with a suggestion) and a node that is not a mapping.
    /// Keys starting with `x-` are extension fields and ignored, as in Docker Compose.
    pub fn fields<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Kind::Map(entries) = &node.kind else {
            if node.is_null() {
                return Some(Fields {
                    entries: Vec::new(),
                    misspelled: Vec::new(),
                    path: path.to_string(),
                    span: node.span,
                });
            }
            self.type_error(node, path, "a mapping");
            return None;
        };
        let mut out = Vec::new();
        let mut misspelled = Vec::new();
        for (key, value) in entries {
            let name = key.key_text().unwrap_or_default();
            if name.starts_with("x-") {
                continue;
            }
            if !allowed.contains(&name) {
                let mut d = Diagnostic::error(
                    "unknown-field",
                    Some(key.span),
                    join(path, name),
                    format!("unknown field `{name}`"),
                );
                let suggestion = suggest(name, allowed.iter().copied());
                misspelled.extend(suggestion.map(str::to_string));
                // A Compose field with another name here says what to use, better than a near name.
                d = match (suggestion, foreign_field_hint(name, value)) {
                    (_, Some(hint)) => d.with_hint(hint),
                    (Some(s), None) => d.with_hint(format!("did you mean `{s}`?")),
                    (None, None) => d.with_hint(format!("expected one of: {}", allowed.join(", "))),
                };
                self.diags.push(d);
                continue;
            }
            out.push((name, key.span, value));
        }
        Some(Fields { entries: out, misspelled, path: path.to_string(), span: node.span })
    }

    /// A scalar's raw text (no interpolation); reports other node kinds.
    pub fn scalar<'n>(&mut self, node: &'n Node, path: &str, expected: &str) -> Option<&'n str> {
        match &node.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => {
                self.type_error(node, path, expected);
                None
            }
        }
    }

    /// A scalar, interpolated in `scope`.
    pub fn text(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<Text> {
        let raw = self.scalar(node, path, "a string")?;
        self.interpolate(raw, node.span, path, scope)
    }

    pub fn interpolate(&mut self, raw: &str, span: Span, path: &str, scope: &Scope) -> Option<Text> {
        self.interpolate_marked(raw, span, path, scope).map(|(text, _)| text)
    }

    /// As [`Ctx::interpolate`], with the byte ranges of the result that came from secrets.
    pub fn interpolate_marked(
        &mut self,
        raw: &str,
        span: Span,
        path: &str,
        scope: &Scope,
    ) -> Option<(Text, Vec<std::ops::Range<usize>>)> {
        if !interp::has_references(raw) {
            return Some((Text::plain(raw), Vec::new()));
        }
        let env = self.env;
        let mut resolver = |name: &str| lookup_in(scope, env, name);
        match interp::interpolate(raw, &mut resolver) {
            Ok(out) => Some((Text::new(out.text, out.sensitive, out.pending, out.deferred), out.sensitive_ranges)),
            Err(errors) => {
                report_interp_errors(self.diags, span, path, errors, scope.defer_instance);
                None
            }
        }
    }

    /// The names `raw` refers to that are secrets (or derived from one) in `scope`.
    pub fn secret_references(&self, raw: &str, scope: &Scope) -> Vec<String> {
        interp::references(raw)
            .into_iter()
            .filter(|name| {
                matches!(
                    lookup_in(scope, self.env, name),
                    Lookup::Value { sensitive: true, .. } | Lookup::Pending | Lookup::Unset { sensitive: true }
                )
            })
            .collect()
    }

    /// A non-sensitive interpolated string, for fields that configure rather than carry data.
    pub fn string(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<String> {
        self.configuring(node, path, scope, "a string")
    }

    /// An interpolated scalar that must not be (or contain) a secret: it configures tug, and
    /// would be shown in clear (in `tug config`, or in an error about it).
    fn configuring(&mut self, node: &Node, path: &str, scope: &Scope, expected: &str) -> Option<String> {
        let raw = self.scalar(node, path, expected)?;
        let text = self.interpolate(raw, node.span, path, scope)?;
        if text.sensitive {
            self.error(
                "sensitive-value",
                node.span,
                path,
                "this field cannot take a secret (it would be shown in clear)",
            );
            return None;
        }
        Some(text.expose().to_string())
    }

    /// Parses an interpolated scalar with `parse`, reporting its error message.
    pub fn parsed<T>(
        &mut self,
        node: &Node,
        path: &str,
        scope: &Scope,
        expected: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        self.parsed_with_hint(node, path, scope, expected, parse, None)
    }

    /// As [`Ctx::parsed`], with a hint for when the text does not parse.
    fn parsed_with_hint<T>(
        &mut self,
        node: &Node,
        path: &str,
        scope: &Scope,
        expected: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        hint: Option<String>,
    ) -> Option<T> {
        let text = self.configuring(node, path, scope, expected)?;
        match parse(text.trim()) {
            Ok(v) => Some(v),
            Err(message) => {
                let mut d = Diagnostic::error("invalid-value", Some(node.span), path, message);
                d.hint = hint;
                self.diags.push(d);
                None
            }
        }
    }

    pub fn bool(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<bool> {
        self.parsed(node, path, scope, "a boolean", |t| {
            parse_bool(t).ok_or_else(|| format!("`{t}` is not a boolean (true or false)"))
        })
    }

    pub fn uint(&mut self, node: &Node, path: &str, scope: &Scope, min: u64, max: u64) -> Option<u64> {
        self.parsed(node, path, scope, "a whole number", |t| match t.parse::<u64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            Ok(v) => Err(format!("{v} is out of range: expected {min} to {max}")),
            Err(_) => Err(format!("`{t}` is not a whole number")),
        })
    }

    pub fn port(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<u16> {
        self.uint(node, path, scope, 1, 65535).map(|p| p as u16)
    }

    pub fn float(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<f64> {
        self.parsed(node, path, scope, "a number", |t| match t.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!("`{t}` is not a number")),
        })
    }

    pub fn duration(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<Duration> {
        self.parsed(node, path, scope, "a duration", |t| {
            units::parse_duration(t).map_err(|e| format!("{e} (write durations like 100ms, 2s, 1m30s)"))
        })
    }

    pub fn percent(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<Percent> {
        self.parsed(node, path, scope, "a percentage", units::parse_percent)
    }

    pub fn size(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<Size> {
        self.parsed(node, path, scope, "a size", units::parse_size)
    }

    pub fn signal(&mut self, node: &Node, path: &str, scope: &Scope) -> Option<Signal> {
        let names: Vec<&str> = units::SIGNALS.iter().map(|(n, _)| *n).collect();
        let hint = format!("use one of {}", names.join(", "));
        self.parsed_with_hint(node, path, scope, "a signal", units::parse_signal, Some(hint))
    }

    /// One of `choices`, with a suggestion when it is close to one.
    pub fn choice<T: Copy>(&mut self, node: &Node, path: &str, scope: &Scope, choices: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, path, scope)?;
        let text = text.as_str();
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let mut d = Diagnostic::error(
            "invalid-value",
            Some(node.span),
            path,
            format!("`{text}` is not one of: {}", names.join(", ")),
        );
        if let Some(s) = suggest(text, names.iter().copied()) {
            d = d.with_hint(format!("did you mean `{s}`?"));
        }
        self.diags.push(d);
        None
    }

    /// A list of strings; a single string is a list of one.
    pub fn string_list(&mut self, node: &Node, path: &str, scope: &Scope) -> Vec<(String, Span)> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.string(item, &format!("{path}[{i}]"), scope).map(|s| (s, item.span)))
                .collect(),
            Kind::Scalar { .. } => self.string(node, path, scope).map(|s| vec![(s, node.span)]).unwrap_or_default(),
            Kind::Null => Vec::new(),
            Kind::Map(_) => {
                self.type_error(node, path, "a list of strings");
                Vec::new()
            }
        }
    }
}

pub fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// The entries of a mapping that passed the unknown-field check.
pub struct Fields<'n> {
    pub entries: Vec<(&'n str, Span, &'n Node)>,
    /// Known fields that an unknown key was reported as a likely typo of: a field
    /// missing because of a typo is reported once, as the typo.
    pub misspelled: Vec<String>,
    pub path: String,
    pub span: Span,
}

impl<'n> Fields<'n> {
    /// The value of a key; a `null` value counts as absent (so an overlay can blank a field).
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _, v)| *k == key && !v.is_null()).map(|(_, _, v)| *v)
    }

    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Docker Compose fields with no tug equivalent of the same name: what to use instead.
fn foreign_field_hint(name: &str, value: &Node) -> Option<String> {
    let scalars = |node: &Node| -> Vec<String> {
        match &node.kind {
            Kind::Seq(items) => items.iter().filter_map(|i| i.key_text().map(str::to_string)).collect(),
            Kind::Scalar { text, .. } => vec![text.clone()],
            _ => Vec::new(),
        }
    };
    Some(match name {
        "ports" | "expose" => {
            // Compose's `"8000:80"`: the host side is the service's port, the other the image's.
            let first = scalars(value).into_iter().next().unwrap_or_default();
            let parts: Vec<&str> = first.split('/').next().unwrap_or_default().rsplit(':').collect();
            match parts.as_slice() {
                [inside, outside, ..] if inside != outside && name == "ports" => format!(
                    "write `port: {outside}` (tug's router listens there and balances the replicas) and \
                     `container_port: {inside}` (where the image listens)"
                ),
                [port, ..] if port.parse::<u16>().is_ok() => format!(
                    "write `port: {port}`: a service has one stable port, which tug's router serves (an image's \
                     own port is `container_port: {port}`)"
                ),
                _ => "a service has one stable `port`; tug's router balances its replicas behind it (an image's own \
                      port is `container_port`)"
                    .into(),
            }
        }
        "test" => {
            let words = scalars(value);
            match words.split_first() {
                Some((first, rest)) if first == "CMD" => {
                    format!("tug's probe is `exec: [{}]` (also `http: /path`, `tcp: true`)", rest.join(", "))
                }
                Some((first, rest)) if first == "CMD-SHELL" => {
                    format!("tug's probe is `exec: \"{}\"` (also `http: /path`, `tcp: true`)", rest.join(" "))
                }
                Some((only, [])) => format!("tug's probe is `exec: \"{only}\"` (also `http: /path`, `tcp: true`)"),
                _ => "tug's probe takes `exec: CMD`, `http: /path`, `tcp: true` or `log: REGEX`".into(),
            }
        }
        "replicas" => {
            let n = scalars(value).into_iter().next().unwrap_or_else(|| "N".into());
            format!("`replicas: {n}` is a field of the service itself, beside `deploy`")
        }
        "resources" => "`resources: { memory: 512Mi, cpu: 0.5 }` is a field of the service itself".into(),
        "restart_policy" => "`restart: on-failure` (or `always`, `no`) is a field of the service itself".into(),
        "logging" => "tug keeps every instance's logs (`tug logs`): rotate them with `logs: { max_size: 10m, max_files: 3 }`".into(),
        "mem_limit" => "write `resources: { memory: … }`".into(),
        "cpus" => "write `resources: { cpu: … }`".into(),
        "scale" => "write `replicas:`".into(),
        "pull_policy" => "tug's name is `pull`: always, missing or never".into(),
        "driver" | "driver_opts" => {
            "tug creates volumes with the engine's default driver; create another kind yourself and declare it `external: true`"
                .into()
        }
        "networks" | "network_mode" | "links" => {
            "services reach each other through their stable ports (`<SERVICE>_ADDR`), and a container reaches a \
             dependency by its name"
                .into()
        }
        "container_name" | "hostname" => "instances are named `<service>-<n>` (TUG_INSTANCE)".into(),
        "env" | "environments" | "variables" => "use `environment` (literals) or `settings` (typed)".into(),
        _ => return None,
    })
}

/// The closest candidate to `word`, if it is close enough to be a likely typo
/// (a small edit distance, or one name a prefix of the other).
pub fn suggest<'c>(word: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let word = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .filter_map(|c| {
            let lower = c.to_lowercase();
            let distance = edit_distance(&word, &lower);
            let prefix = word.len() >= 3 && lower.len() >= 3 && (lower.starts_with(&word) || word.starts_with(&lower));
            (distance <= limit || prefix).then_some((distance, c))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push((previous[j] + cost).min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let fields = ["command", "healthcheck", "depends_on", "replicas"];
        assert_eq!(suggest("comand", fields.iter().copied()), Some("command"));
        assert_eq!(suggest("helthcheck", fields.iter().copied()), Some("healthcheck"));
        assert_eq!(suggest("depends-on", fields.iter().copied()), Some("depends_on"));
        assert_eq!(suggest("image", fields.iter().copied()), None);
    }
}
