//! Settings: the typed configuration contract.
//!
//! A setting's value comes from, first to last: `value`; the process environment;
//! env files; the secret store (secrets only); `default`. `value` and `default` are
//! interpolated and may refer to other settings, so resolution follows references
//! (depth first, with cycle detection). Every value is checked against its rule.

use indexmap::IndexMap;
use regex::Regex;

use crate::SecretSource;
use crate::diag::{Diagnostic, Span};
use crate::interp::{self, Lookup};
use crate::model::{Generate, Setting, SettingSpec, SettingType, Source, Text};
use crate::read::{Ctx, Scope, lookup_in, parse_bool, report_interp_errors, setting_lookup, suggest};
use crate::yaml::{self, Kind, Node};
use tug_secrets::Charset;

pub const SETTING_FIELDS: &[&str] = &[
    "type",
    "description",
    "required",
    "default",
    "value",
    "min",
    "max",
    "min_length",
    "max_length",
    "pattern",
    "values",
    "schemes",
    "forbid",
    "generate",
    "environments",
];

/// A setting's definition before resolution.
pub struct Definition {
    pub spec: SettingSpec,
    pub span: Span,
    pub path: String,
    pub value: Option<Node>,
    pub default: Option<Node>,
    pattern: Option<Regex>,
}

/// Reads the `settings:` mapping. Each setting's `environments.<active>` rule is
/// merged over its base rule first (a `null` there removes the base field).
pub fn definitions(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    environment: &str,
    environments: &[String],
) -> IndexMap<String, Definition> {
    let mut out = IndexMap::new();
    let Kind::Map(entries) = &node.kind else {
        if !node.is_null() {
            ctx.type_error(node, path, "a mapping of setting names to rules");
        }
        return out;
    };
    for (key, def) in entries {
        let name = key.key_text().unwrap_or_default();
        let setting_path = format!("{path}.{name}");
        if !is_env_name(name) {
            ctx.error(
                "invalid-name",
                key.span,
                &setting_path,
                format!(
                    "`{name}` is not a valid setting name: settings are environment variables ([A-Za-z_][A-Za-z0-9_]*)"
                ),
            );
            continue;
        }
        if let Some(d) = definition(ctx, def, key.span, &setting_path, environment, environments) {
            out.insert(name.to_string(), d);
        }
    }
    out
}

pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn definition(
    ctx: &mut Ctx,
    node: &Node,
    span: Span,
    path: &str,
    environment: &str,
    environments: &[String],
) -> Option<Definition> {
    // A scalar is shorthand for a string setting with that default.
    if let Kind::Scalar { .. } = node.kind {
        let spec = SettingSpec { ty: Some(SettingType::String), required: true, ..SettingSpec::default() };
        return Some(Definition {
            spec,
            span,
            path: path.to_string(),
            value: None,
            default: Some(node.clone()),
            pattern: None,
        });
    }
    let base = ctx.fields(node, path, SETTING_FIELDS)?;
    // Per-environment rules: each is checked; the active one is merged over the base rule.
    let mut merged = None;
    if let Some(per_env) = base.get("environments") {
        let names: Vec<&str> = environments.iter().map(String::as_str).collect();
        // A per-environment rule is a rule without rules of its own.
        let rule_fields: Vec<&str> = SETTING_FIELDS.iter().copied().filter(|f| *f != "environments").collect();
        if let Some(envs) = ctx.fields(per_env, &base.path("environments"), &names) {
            for (env_name, _, rule) in &envs.entries {
                if ctx.fields(rule, &envs.path(env_name), &rule_fields).is_some() && *env_name == environment {
                    let mut node = node.clone();
                    yaml::merge(&mut node, (*rule).clone());
                    merged = Some(node);
                }
            }
        }
    }
    // The merged rule's fields were all checked above; read them without reporting twice.
    let mut quiet = crate::diag::Diagnostics::default();
    let f = match &merged {
        Some(node) => Ctx { diags: &mut quiet, env: ctx.env }.fields(node, path, SETTING_FIELDS)?,
        None => base,
    };
    let scope = Scope::ENV_ONLY;
    let mut spec = SettingSpec { required: true, ..SettingSpec::default() };
    spec.ty = match f.get("type") {
        Some(n) => ctx.choice(
            n,
            &f.path("type"),
            &scope,
            &SettingType::NAMES.iter().copied().zip(SettingType::ALL).collect::<Vec<_>>(),
        ),
        None => Some(SettingType::String),
    };
    if let Some(n) = f.get("description") {
        spec.description = ctx.string(n, &f.path("description"), &scope);
    }
    if let Some(n) = f.get("required") {
        spec.required = ctx.bool(n, &f.path("required"), &scope).unwrap_or(true);
    }
    let ty = spec.ty;
    let applies = |ctx: &mut Ctx, field: &str, types: &[SettingType]| -> Option<&Node> {
        let n = f.get(field)?;
        if let Some(ty) = ty
            && !types.contains(&ty)
        {
            let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
            ctx.diags.push(
                Diagnostic::error(
                    "constraint-type",
                    Some(n.span),
                    f.path(field),
                    format!("`{field}` does not apply to a setting of type {}", ty.name()),
                )
                .with_hint(format!("`{field}` applies to: {}", names.join(", "))),
            );
            return None;
        }
        Some(n)
    };
    use SettingType as T;
    for field in ["min", "max"] {
        if let Some(n) = applies(ctx, field, &[T::Int, T::Float, T::Duration, T::Port]) {
            let bound = if ty == Some(T::Duration) {
                ctx.duration(n, &f.path(field), &scope).map(|d| d.as_secs_f64())
            } else {
                ctx.float(n, &f.path(field), &scope)
            };
            if field == "min" { spec.min = bound } else { spec.max = bound }
        }
    }
    let textual = [T::String, T::Secret, T::Path, T::Url];
    if let Some(n) = applies(ctx, "min_length", &textual) {
        spec.min_length = ctx.uint(n, &f.path("min_length"), &scope, 0, u32::MAX as u64).map(|v| v as usize);
    }
    if let Some(n) = applies(ctx, "max_length", &textual) {
        spec.max_length = ctx.uint(n, &f.path("max_length"), &scope, 0, u32::MAX as u64).map(|v| v as usize);
    }
    let mut pattern = None;
    if let Some(n) = applies(ctx, "pattern", &textual)
        && let Some(text) = ctx.string(n, &f.path("pattern"), &scope)
    {
        match anchored(&text) {
            Ok(re) => {
                pattern = Some(re);
                spec.pattern = Some(text);
            }
            Err(e) => ctx.error(
                "invalid-regex",
                n.span,
                &f.path("pattern"),
                format!("invalid regular expression: {}", regex_reason(&e.to_string())),
            ),
        }
    }
    if let Some(n) = applies(ctx, "values", &[T::Enum]) {
        spec.values = ctx.string_list(n, &f.path("values"), &scope).into_iter().map(|(s, _)| s).collect();
    }
    if ty == Some(T::Enum) && f.get("values").is_none() {
        ctx.diags.push(
            Diagnostic::error("missing-field", Some(f.span), path, "a setting of type enum needs `values`")
                .with_hint("list the allowed values: `values: [a, b]`"),
        );
    }
    if let Some(n) = applies(ctx, "schemes", &[T::Url]) {
        spec.schemes = ctx.string_list(n, &f.path("schemes"), &scope).into_iter().map(|(s, _)| s).collect();
    }
    if let Some(n) = f.get("forbid") {
        spec.forbid = ctx.string_list(n, &f.path("forbid"), &scope).into_iter().map(|(s, _)| s).collect();
    }
    if let Some(n) = applies(ctx, "generate", &[T::Secret]) {
        spec.generate = generate(ctx, n, &f.path("generate"));
    }
    let value = f.get("value").cloned();
    let default = f.get("default").cloned();
    Some(Definition { spec, span, path: path.to_string(), value, default, pattern })
}

fn generate(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Generate> {
    let f = ctx.fields(node, path, &["length", "charset"])?;
    let scope = Scope::ENV_ONLY;
    let length = match f.get("length") {
        Some(n) => ctx.uint(n, &f.path("length"), &scope, 8, 4096)? as usize,
        None => 32,
    };
    let charset = match f.get("charset") {
        Some(n) => ctx.choice(
            n,
            &f.path("charset"),
            &scope,
            &Charset::NAMES
                .iter()
                .map(|name| (*name, Charset::parse(name).unwrap_or(Charset::Alnum)))
                .collect::<Vec<_>>(),
        )?,
        None => Charset::Alnum,
    };
    Some(Generate { length, charset })
}

/// The regex crate's message is several lines; its last line says what is wrong.
pub fn regex_reason(text: &str) -> String {
    let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(text).trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// Resolves every definition in `defs`; `outer` are settings already resolved
/// (the shared ones, when resolving a service's own).
pub fn resolve(
    ctx: &mut Ctx,
    defs: &IndexMap<String, Definition>,
    outer: &Scope,
    secrets: &dyn SecretSource,
) -> IndexMap<String, Setting> {
    let mut r = Resolution {
        defs,
        outer,
        secrets,
        done: IndexMap::new(),
        in_progress: Vec::new(),
        too_deep: false,
        in_cycle: Vec::new(),
    };
    for name in defs.keys() {
        r.resolve(ctx, name);
    }
    // Keep declaration order.
    defs.keys().filter_map(|k| r.done.swap_remove(k).map(|s| (k.clone(), s))).collect()
}

/// How long a chain of settings referring to settings may be.
pub const MAX_REFERENCE_DEPTH: usize = 64;

struct Resolution<'r> {
    defs: &'r IndexMap<String, Definition>,
    outer: &'r Scope<'r>,
    secrets: &'r dyn SecretSource,
    done: IndexMap<String, Setting>,
    in_progress: Vec<String>,
    /// The depth limit was hit: said once, not once per setting beyond it.
    too_deep: bool,
    /// Settings in a reported cycle: they have no value, and no other error is about them.
    in_cycle: Vec<String>,
}

impl Resolution<'_> {
    /// Resolves one setting (and, first, those its `value` or `default` refer to).
    fn resolve(&mut self, ctx: &mut Ctx, name: &str) -> Lookup {
        if let Some(setting) = self.done.get(name) {
            return setting_lookup(setting);
        }
        let Some(def) = self.defs.get(name) else {
            return lookup_in(self.outer, ctx.env, name);
        };
        if self.in_progress.len() >= MAX_REFERENCE_DEPTH {
            if std::mem::replace(&mut self.too_deep, true) {
                return Lookup::Pending;
            }
            ctx.diags.push(Diagnostic::error(
                "setting-depth",
                Some(def.span),
                &def.path,
                format!("settings refer to settings more than {MAX_REFERENCE_DEPTH} deep"),
            ));
            return Lookup::Pending;
        }
        if let Some(start) = self.in_progress.iter().position(|n| n == name) {
            let mut cycle: Vec<&str> = self.in_progress[start..].iter().map(String::as_str).collect();
            cycle.push(name);
            ctx.diags.push(
                Diagnostic::error(
                    "setting-cycle",
                    Some(def.span),
                    &def.path,
                    format!("settings refer to each other in a cycle: {}", cycle.join(" → ")),
                )
                .with_hint("break the cycle: one of them needs a value that does not refer back"),
            );
            // Reported once here; `Pending` keeps the referring value from also reporting it.
            self.in_cycle.extend(cycle.iter().map(|n| n.to_string()));
            return Lookup::Pending;
        }
        self.in_progress.push(name.to_string());
        let mut setting = self.compute(ctx, name, def);
        self.in_progress.pop();
        // A value that is only a placeholder for the cycle: pending (so nothing else reports
        // it) but not sensitive, or a service using it would hear it "is a secret".
        if self.in_cycle.iter().any(|n| n == name) && !setting.is_secret() && setting.value.is_some() {
            setting.value = Some(Text::new(String::new(), false, true, false));
        }
        let lookup = setting_lookup(&setting);
        self.done.insert(name.to_string(), setting);
        lookup
    }

    fn interpolate(&mut self, ctx: &mut Ctx, node: &Node, path: &str) -> Option<Text> {
        let raw = ctx.scalar(node, path, "a value")?.to_string();
        if !interp::has_references(&raw) {
            return Some(Text::plain(raw));
        }
        let result = {
            let mut resolver = |n: &str| self.resolve(ctx, n);
            interp::interpolate(&raw, &mut resolver)
        };
        match result {
            Ok(out) => Some(Text::new(out.text, out.sensitive, out.pending, false)),
            Err(errors) => {
                report_interp_errors(ctx.diags, node.span, path, errors, false);
                None
            }
        }
    }

    fn compute(&mut self, ctx: &mut Ctx, name: &str, def: &Definition) -> Setting {
        let secret = def.spec.ty == Some(SettingType::Secret);
        let mut setting = Setting { spec: def.spec.clone(), value: None, source: Source::Unset, span: def.span };
        if def.spec.ty.is_none() {
            // Its `type` is wrong and reported: checking a value against no type says nothing more.
            return setting;
        }
        // Where the chosen value is written, for errors about it.
        let mut at = (def.span, def.path.clone(), String::new());
        if let Some(node) = &def.value {
            setting.source = Source::Value;
            at = (node.span, format!("{}.value", def.path), String::new());
            setting.value = self.interpolate(ctx, node, &at.1);
            if setting.value.is_none() {
                // The interpolation error is reported; don't also call it missing.
                return setting;
            }
        } else if let Some((value, source, span)) = ctx.env.get(name) {
            at.2 = match &source {
                Source::Environment => format!(" (from the environment variable `{name}`)"),
                Source::EnvFile(file) => format!(" (from {})", file.display()),
                _ => String::new(),
            };
            if let Some(span) = span {
                at.0 = span;
            }
            setting.value = Some(Text::new(value.to_string(), ctx.env.secret_names.contains(name), false, false));
            setting.source = source;
        } else if let Some(value) = secret.then(|| self.secrets.get(name)).flatten() {
            setting.value = Some(Text::plain(value.expose()));
            setting.source = Source::SecretStore;
            at.2 = " (from the secret store)".into();
        } else if let Some(node) = &def.default {
            setting.source = Source::Default;
            at = (node.span, format!("{}.default", def.path), String::new());
            setting.value = self.interpolate(ctx, node, &at.1);
            if setting.value.is_none() {
                return setting;
            }
        } else if let (true, Some(generate)) = (secret, def.spec.generate) {
            setting.source = Source::ToBeGenerated;
            ctx.diags.push(Diagnostic::note(
                "secret-generated",
                Some(def.span),
                &def.path,
                format!(
                    "secret `{name}` has no value yet: `tug up` (or `tug secrets generate`) creates it ({} {} characters)",
                    generate.length,
                    generate.charset.as_str()
                ),
            ));
            return setting;
        } else {
            if def.spec.required {
                let hint = if secret {
                    format!(
                        "run `tug secrets set {name}`, set it in the environment, or add `generate:` to generate it"
                    )
                } else {
                    format!(
                        "set `{name}` in the environment or .env, give it a `default`, or mark it `required: false`"
                    )
                };
                ctx.diags.push(
                    Diagnostic::error(
                        "missing-value",
                        Some(def.span),
                        &def.path,
                        format!("setting `{name}` has no value"),
                    )
                    .with_hint(hint),
                );
            }
            return setting;
        }
        if let Some(value) = &mut setting.value {
            value.sensitive |= secret;
            if !value.pending {
                let (span, path, from) = &at;
                check_value(ctx, name, def, value, *span, path, from);
            }
        }
        // A default that is not the chosen value is still part of the contract: check it too.
        if !matches!(setting.source, Source::Default)
            && let Some(node) = &def.default
            && let Kind::Scalar { text, .. } = &node.kind
            && !interp::has_references(text)
        {
            let mut value = Text::plain(text.clone());
            value.sensitive = secret;
            check_value(ctx, name, def, &mut value, node.span, &format!("{}.default", def.path), "");
        }
        setting
    }
}

/// A setting's `pattern` matches the whole value, not a part of it.
fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// Checks a proposed value for a resolved setting against its rule (for `tug secrets set`):
/// the problems, each a message that never quotes a sensitive value.
pub fn problems_with(name: &str, setting: &Setting, value: &str) -> Vec<String> {
    let mut diags = crate::diag::Diagnostics::default();
    let env = crate::read::Env::default();
    let mut ctx = Ctx { diags: &mut diags, env: &env };
    let pattern = setting.spec.pattern.as_deref().and_then(|p| anchored(p).ok());
    let def = Definition {
        spec: setting.spec.clone(),
        span: setting.span,
        path: name.to_string(),
        value: None,
        default: None,
        pattern,
    };
    let mut text = Text::new(value.to_string(), crate::read::is_sensitive(setting), false, false);
    check_value(&mut ctx, name, &def, &mut text, setting.span, name, "");
    diags.items.into_iter().map(|d| d.message).collect()
}

/// Checks a value against its type and constraints, normalizing it (booleans to
/// `true`/`false`). Messages never contain a sensitive value.
fn check_value(ctx: &mut Ctx, name: &str, def: &Definition, value: &mut Text, span: Span, path: &str, from: &str) {
    let spec = &def.spec;
    let sensitive = value.sensitive;
    let shown = |v: &str| {
        if sensitive { "the value".to_string() } else { format!("`{v}`") }
    };
    let text = value.expose().to_string();
    // Each problem: its code, its message, and a hint.
    let mut problems: Vec<(&'static str, String, Option<String>)> = Vec::new();
    use SettingType as T;
    let number = match spec.ty {
        Some(T::Int) => match text.trim().parse::<i64>() {
            Ok(v) => Some(v as f64),
            Err(_) => {
                problems.push(("constraint", format!("{} is not an int", shown(&text)), None));
                None
            }
        },
        Some(T::Float) => match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Some(v),
            _ => {
                problems.push(("constraint", format!("{} is not a float", shown(&text)), None));
                None
            }
        },
        Some(T::Port) => match text.trim().parse::<u16>() {
            Ok(v) if v > 0 => Some(v as f64),
            _ => {
                problems.push(("constraint", format!("{} is not a port (1 to 65535)", shown(&text)), None));
                None
            }
        },
        Some(T::Duration) => match crate::units::parse_duration(&text) {
            Ok(d) => Some(d.as_secs_f64()),
            Err(e) => {
                problems.push((
                    "constraint",
                    if sensitive { "the value is not a duration".into() } else { e },
                    Some("write durations like 100ms, 2s, 1m30s".into()),
                ));
                None
            }
        },
        Some(T::Bool) => {
            match parse_bool(text.trim()) {
                Some(b) => *value = Text::new(b.to_string(), sensitive, false, false),
                None => problems.push((
                    "constraint",
                    format!("{} is not a bool", shown(&text)),
                    Some("use true or false".into()),
                )),
            }
            None
        }
        Some(T::Url) => {
            match url_scheme(&text) {
                None => problems.push((
                    "constraint",
                    format!("{} is not a URL", shown(&text)),
                    Some("write it as scheme://host[:port][/path]".into()),
                )),
                Some(scheme)
                    if !spec.schemes.is_empty() && !spec.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) =>
                {
                    problems.push((
                        "constraint",
                        if sensitive {
                            "the URL's scheme is not allowed here".to_string()
                        } else {
                            format!("the URL's scheme `{scheme}` is not allowed here")
                        },
                        Some(format!("allowed schemes: {}", spec.schemes.join(", "))),
                    ));
                }
                Some(_) => {}
            }
            None
        }
        Some(T::Enum) => {
            if !spec.values.is_empty() && !spec.values.contains(&text) {
                let hint = match suggest(&text, spec.values.iter().map(String::as_str)) {
                    Some(s) if !sensitive => {
                        format!("did you mean `{s}`? allowed: {}", spec.values.join(", "))
                    }
                    _ => format!("allowed: {}", spec.values.join(", ")),
                };
                problems.push(("constraint", format!("{} is not one of the allowed values", shown(&text)), Some(hint)));
            }
            None
        }
        Some(T::Path) if text.is_empty() => {
            problems.push(("constraint", "an empty path".into(), None));
            None
        }
        _ => None,
    };
    if let Some(n) = number {
        let unit = |v: f64| {
            if spec.ty == Some(T::Duration) {
                crate::units::format_duration(std::time::Duration::from_secs_f64(v))
            } else {
                v.to_string()
            }
        };
        if let Some(min) = spec.min
            && n < min
        {
            problems.push(("constraint", format!("{} is less than the minimum {}", shown(&text), unit(min)), None));
        }
        if let Some(max) = spec.max
            && n > max
        {
            problems.push(("constraint", format!("{} is more than the maximum {}", shown(&text), unit(max)), None));
        }
    }
    let length = text.chars().count();
    if let Some(min) = spec.min_length
        && length < min
    {
        problems.push((
            "constraint",
            format!("{} is {length} characters long, shorter than min_length {min}", shown(&text)),
            None,
        ));
    }
    if let Some(max) = spec.max_length
        && length > max
    {
        problems.push((
            "constraint",
            format!("{} is {length} characters long, longer than max_length {max}", shown(&text)),
            None,
        ));
    }
    if let (Some(re), Some(pattern)) = (&def.pattern, &spec.pattern)
        && !re.is_match(&text)
    {
        problems.push(("constraint", format!("{} does not match the pattern `{pattern}`", shown(&text)), None));
    }
    if spec.forbid.contains(&text) {
        problems.push((
            "forbidden-value",
            format!("{} is a known placeholder that is not allowed", shown(&text)),
            Some(if spec.ty == Some(T::Secret) && spec.generate.is_some() {
                format!("remove it so that tug generates `{name}`, or set a real value with `tug secrets set {name}`")
            } else {
                format!("set a real value for `{name}`")
            }),
        ));
    }
    for (code, message, hint) in problems {
        let mut d = Diagnostic::error(code, Some(span), path, format!("setting `{name}`{from}: {message}"))
            .sensitive(sensitive);
        if let Some(hint) = hint {
            d = d.with_hint(hint);
        }
        ctx.diags.push(d);
    }
}

/// The scheme of a URL, if the text is shaped like one (`scheme:` then something).
pub fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, rest) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid || rest.is_empty() || text.chars().any(char::is_whitespace) {
        return None;
    }
    if let Some(authority) = rest.strip_prefix("//") {
        let host = authority.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() && scheme != "file" {
            return None;
        }
    }
    Some(scheme)
}
