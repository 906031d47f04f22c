//! The tug stack file: parsing, overlays, interpolation, settings, validation, schema.
//!
//! [`compile`] turns stack files into a typed [`Stack`], collecting every problem
//! as a [`Diagnostic`] instead of stopping at the first. No async, no I/O beyond
//! reading the stack's files (and, for warnings, looking up commands on `PATH`).

pub mod container;
pub mod cron;
pub mod diag;
pub mod dotenv;
pub mod emit;
pub mod endpoint;
pub mod interp;
pub mod model;
pub mod read;
pub mod schema;
pub mod service;
pub mod settings;
pub mod units;
pub mod validate;
pub mod words;
pub mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

pub use diag::{Diagnostic, Diagnostics, Severity, SourceMap, Span};
pub use model::*;
use read::{Ctx, Env, Scope};
use tug_secrets::Secret;
use yaml::{Kind, Node};

/// Where secret values come from at compile time (the encrypted store, in practice).
pub trait SecretSource {
    fn get(&self, name: &str) -> Option<Secret>;
}

/// No stored secrets.
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _: &str) -> Option<Secret> {
        None
    }
}

impl<F: Fn(&str) -> Option<Secret>> SecretSource for F {
    fn get(&self, name: &str) -> Option<Secret> {
        self(name)
    }
}

pub const TOP_FIELDS: &[&str] =
    &["name", "environments", "settings", "services", "registry", "engine", "volumes", "listen", "api", "notify"];
pub const DEFAULT_FILE: &str = "tug.yaml";

/// What to compile, and the world it is compiled in (passed in, so that tests and
/// the fuzzer control it).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Stack files, later ones merged over earlier; empty means `tug.yaml` in `cwd`.
    pub files: Vec<PathBuf>,
    pub cwd: PathBuf,
    /// `--env`, else `TUG_ENV` (the caller reads it), else the first of `environments`.
    pub environment: Option<String>,
    pub env_files: Vec<PathBuf>,
    /// Active profiles (`--profile`), besides services with no profile.
    pub profiles: Vec<String>,
    /// The process environment: feeds interpolation and settings.
    pub process_env: HashMap<String, String>,
    /// Look commands up on `PATH` and warn about missing ones.
    pub check_commands: bool,
}

/// The result of a compilation: the stack as far as it could be read, and every diagnostic.
pub struct Compiled {
    /// Present whenever the file could be decoded at all; only *valid* without errors:
    /// use [`Compiled::valid`] for anything that acts on the stack.
    pub stack: Option<Stack>,
    pub diagnostics: Diagnostics,
    pub sources: SourceMap,
}

impl Compiled {
    /// The stack, if it has no error.
    pub fn valid(&self) -> Option<&Stack> {
        if self.diagnostics.has_errors() { None } else { self.stack.as_ref() }
    }
}

/// Reads, merges and compiles the stack files named in `options`.
pub fn compile(options: &Options, secrets: &dyn SecretSource) -> Compiled {
    let mut sources = SourceMap::default();
    let mut diags = Diagnostics::default();
    let files: Vec<PathBuf> = if options.files.is_empty() {
        vec![options.cwd.join(DEFAULT_FILE)]
    } else {
        options.files.iter().map(|f| options.cwd.join(f)).collect()
    };
    let mut documents = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => documents.push((file.clone(), text)),
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::InvalidData {
                    "the file must be UTF-8 text"
                } else if options.files.is_empty() {
                    "run tug in the folder of your tug.yaml, or name the file with `-f FILE`"
                } else {
                    "check the path given with `-f`"
                };
                diags.push(
                    Diagnostic::error(
                        "unreadable-file",
                        None,
                        "",
                        format!("cannot read the stack file {}: {e}", file.display()),
                    )
                    .with_file(file)
                    .with_hint(hint),
                );
            }
        }
    }
    if diags.has_errors() {
        return Compiled { stack: None, diagnostics: diags, sources };
    }
    let read_overlay = |base: &Path, environment: &str| -> Result<Option<(PathBuf, String)>, Box<Diagnostic>> {
        let overlay = overlay_path(base, environment);
        match std::fs::read_to_string(&overlay) {
            Ok(text) => Ok(Some((overlay, text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // An overlay that exists but cannot be read must not be skipped quietly.
            Err(e) => Err(Box::new(
                Diagnostic::error(
                    "unreadable-file",
                    None,
                    "",
                    format!("cannot read the overlay {}: {e}", overlay.display()),
                )
                .with_file(&overlay),
            )),
        }
    };
    compile_documents(documents, options, secrets, &mut sources, &mut diags, &read_overlay)
}

/// Compiles one stack file given as text (for tests, benchmarks and the fuzzer); no overlays.
pub fn compile_str(path: &Path, text: &str, options: &Options, secrets: &dyn SecretSource) -> Compiled {
    let mut sources = SourceMap::default();
    let mut diags = Diagnostics::default();
    compile_documents(
        vec![(path.to_path_buf(), text.to_string())],
        options,
        secrets,
        &mut sources,
        &mut diags,
        &|_, _| Ok(None),
    )
}

/// `tug.production.yaml` beside `tug.yaml`; `stack.production.yml` beside `stack.yml`.
pub fn overlay_path(base: &Path, environment: &str) -> PathBuf {
    let name = base.file_name().and_then(|n| n.to_str()).unwrap_or(DEFAULT_FILE);
    let overlay = match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{environment}.{ext}"),
        None => format!("{name}.{environment}"),
    };
    base.with_file_name(overlay)
}

type OverlayReader<'a> = dyn Fn(&Path, &str) -> Result<Option<(PathBuf, String)>, Box<Diagnostic>> + 'a;

/// Adds a file to the source map and parses it. `Ok(None)` when it holds nothing (an
/// empty document changes nothing); `Err` when it cannot be parsed (the error is reported).
fn parse_file(
    path: &Path,
    text: String,
    cwd: &Path,
    sources: &mut SourceMap,
    diags: &mut Diagnostics,
) -> Result<Option<Node>, ()> {
    // Editors on some systems start files with a byte order mark; it is not content.
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    };
    let id = sources.add(display_path(cwd, path), text);
    match yaml::parse(sources.text(id), id) {
        Ok((node, problems)) => {
            diags.items.extend(problems);
            Ok((!node.is_null()).then_some(node))
        }
        Err(d) => {
            diags.push(*d);
            Err(())
        }
    }
}

/// Names declared `type: secret`, shared or a service's own, as written in a document.
fn secret_names(doc: &Node) -> Vec<String> {
    let is_secret =
        |rule: &Node| matches!(rule.get("type").map(|t| &t.kind), Some(Kind::Scalar { text, .. }) if text == "secret");
    let mut names = Vec::new();
    let mut collect = |settings: Option<&Node>| {
        if let Some(Node { kind: Kind::Map(entries), .. }) = settings {
            names.extend(
                entries
                    .iter()
                    .filter(|(_, rule)| is_secret(rule))
                    .filter_map(|(k, _)| k.key_text().map(str::to_string)),
            );
        }
    };
    collect(doc.get("settings"));
    if let Some(Node { kind: Kind::Map(services), .. }) = doc.get("services") {
        for (_, service) in services {
            collect(service.get("settings"));
        }
    }
    names
}

fn compile_documents(
    documents: Vec<(PathBuf, String)>,
    options: &Options,
    secrets: &dyn SecretSource,
    sources: &mut SourceMap,
    diags: &mut Diagnostics,
    read_overlay: &OverlayReader,
) -> Compiled {
    let root =
        documents.first().and_then(|(p, _)| p.parent()).map(Path::to_path_buf).unwrap_or_else(|| options.cwd.clone());
    let files: Vec<PathBuf> = documents.iter().map(|(p, _)| p.clone()).collect();
    let mut parsed = Vec::new();
    let mut unparsable = false;
    for (path, text) in documents {
        match parse_file(&path, text, &options.cwd, sources, diags) {
            Ok(node) => parsed.push(node),
            Err(()) => unparsable = true,
        }
    }
    let finish = |diags: &mut Diagnostics, sources: &mut SourceMap, stack: Option<Stack>| {
        let mut diagnostics = std::mem::take(diags);
        diagnostics.sort();
        Compiled { stack, diagnostics, sources: std::mem::take(sources) }
    };
    // A file that parsed with problems (a duplicate key) is still checked through.
    if unparsable {
        return finish(diags, sources, None);
    }
    if let Some(node) = parsed.iter().flatten().find(|n| !matches!(n.kind, Kind::Map(_))) {
        let mut ctx = Ctx { diags, env: &Env::default() };
        ctx.type_error(node, "", "a mapping of top-level fields (name, settings, services, ...)");
        return finish(diags, sources, None);
    }
    let mut env = load_env(options, &root, sources, diags);
    env.secret_names.extend(parsed.iter().flatten().flat_map(secret_names));
    // The environment is chosen from the base files, before overlays (which depend on
    // it): the last file that lists `environments` decides, as a merge would.
    let listed = parsed.iter().flatten().rev().find_map(|n| n.get("environments"));
    let environments = environments(&mut Ctx { diags, env: &env }, listed);
    let environment = options.environment.clone().unwrap_or_else(|| environments[0].clone());
    if !environments.contains(&environment) {
        let span = listed.map(|n| n.span);
        let mut d = Diagnostic::error(
            "unknown-environment",
            span,
            "environments",
            format!("environment `{environment}` is not one of this stack's environments: {}", environments.join(", ")),
        );
        if let Some(s) = read::suggest(&environment, environments.iter().map(String::as_str)) {
            d = d.with_hint(format!("did you mean `{s}`?"));
        } else {
            d = d.with_hint("add it to `environments:`");
        }
        diags.push(d);
        return finish(diags, sources, None);
    }
    // Each file, then its environment overlay.
    let mut merged = Node { kind: Kind::Map(Vec::new()), span: Span { file: 0, line: 1, col: 1 }, tag: None };
    for (node, file) in parsed.into_iter().zip(&files) {
        if let Some(node) = node {
            yaml::merge(&mut merged, node);
        }
        match read_overlay(file, &environment) {
            Ok(Some((path, text))) => match parse_file(&path, text, &options.cwd, sources, diags) {
                Ok(Some(node)) if matches!(node.kind, Kind::Map(_)) => yaml::merge(&mut merged, node),
                Ok(Some(node)) => Ctx { diags, env: &env }.type_error(&node, "", "a mapping of top-level fields"),
                Ok(None) | Err(()) => {}
            },
            Ok(None) => {}
            Err(d) => diags.push(*d),
        }
    }
    env.secret_names.extend(secret_names(&merged));
    let mut ctx = Ctx { diags, env: &env };
    let stack = stack(&mut ctx, &merged, options, &root, files, environment, environments, secrets);
    finish(diags, sources, stack)
}

/// The process environment, then `.env` beside the first stack file, then each `--env-file`.
fn load_env(options: &Options, root: &Path, sources: &mut SourceMap, diags: &mut Diagnostics) -> Env {
    let mut env = Env { process: options.process_env.clone(), ..Env::default() };
    let dot_env = root.join(".env");
    let mut files: Vec<(PathBuf, bool)> = vec![(dot_env, false)];
    files.extend(options.env_files.iter().map(|f| (options.cwd.join(f), true)));
    for (path, required) in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if required || e.kind() != std::io::ErrorKind::NotFound => {
                diags.push(
                    Diagnostic::error(
                        "unreadable-file",
                        None,
                        "",
                        format!("cannot read the env file {}: {e}", path.display()),
                    )
                    .with_file(&path),
                );
                continue;
            }
            Err(_) => continue,
        };
        let shown = display_path(&options.cwd, &path);
        let text = text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text);
        let id = sources.add(shown.clone(), text);
        let (entries, errors) = dotenv::parse(sources.text(id));
        for e in errors {
            // Env files hold secrets: never show the offending line itself.
            diags.push(
                Diagnostic::error("env-file", Some(Span { file: id, line: e.line, col: e.col }), "", e.message)
                    .sensitive(true),
            );
        }
        for e in entries {
            env.files.insert(e.key, (e.value, shown.clone(), Span { file: id, line: e.line, col: 1 }));
        }
    }
    env
}

fn environments(ctx: &mut Ctx, listed: Option<&Node>) -> Vec<String> {
    let Some(node) = listed.filter(|n| !n.is_null()) else {
        return vec!["development".to_string()];
    };
    let list = ctx.string_list(node, "environments", &Scope::ENV_ONLY);
    let mut out: Vec<String> = Vec::new();
    for (name, span) in list {
        if !service::is_profile_name(&name) {
            ctx.error(
                "invalid-name",
                span,
                "environments",
                format!("`{name}` is not a valid environment name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            );
        } else if out.contains(&name) {
            ctx.error("duplicate-name", span, "environments", format!("environment `{name}` is listed twice"));
        } else {
            out.push(name);
        }
    }
    if out.is_empty() {
        out.push("development".to_string());
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn stack(
    ctx: &mut Ctx,
    doc: &Node,
    options: &Options,
    root: &Path,
    files: Vec<PathBuf>,
    environment: String,
    environments: Vec<String>,
    secrets: &dyn SecretSource,
) -> Option<Stack> {
    let f = ctx.fields(doc, "", TOP_FIELDS)?;
    let env_scope = Scope::ENV_ONLY;
    let name = match f.get("name") {
        Some(n) => ctx.string(n, "name", &env_scope).filter(|name| {
            let ok = is_dns_label(name);
            if !ok {
                ctx.diags.push(
                    Diagnostic::error("invalid-name", Some(n.span), "name", format!("`{name}` is not a valid project name"))
                        .with_hint("use lowercase letters, digits and `-`, at most 63 characters, starting and ending with a letter or digit"),
                );
            }
            ok
        }),
        // Like Docker Compose: the folder's name, made valid.
        None => Some(project_name_from(root)),
    };

    let shared_defs = match f.get("settings") {
        Some(n) => settings::definitions(ctx, n, "settings", &environment, &environments),
        None => IndexMap::new(),
    };
    let shared = settings::resolve(ctx, &shared_defs, &Scope::ENV_ONLY, secrets);
    let scope = Scope { shared: Some(&shared), ..Scope::ENV_ONLY };

    let registry = match f.get("registry") {
        None => Registry::Embedded,
        Some(n) => match ctx.text(n, "registry", &scope) {
            Some(t) if t.expose() == "embedded" => Registry::Embedded,
            Some(t) if matches!(settings::url_scheme(t.expose()), Some("redis" | "rediss")) => Registry::Redis(t),
            Some(t) => {
                ctx.diags.push(
                    Diagnostic::error(
                        "invalid-value",
                        Some(n.span),
                        "registry",
                        format!("`{}` is not a registry", t.shown()),
                    )
                    .with_hint("use `embedded` (one machine), or a Redis URL `redis://host:6379/0` / `rediss://...`"),
                );
                Registry::Embedded
            }
            None => Registry::Embedded,
        },
    };

    let engine = f.get("engine").and_then(|n| container::engine(ctx, n, &scope));
    let listen = f.get("listen").and_then(|n| {
        let text = ctx.string(n, "listen", &scope)?;
        match text.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                ctx.diags.push(
                    Diagnostic::error("invalid-value", Some(n.span), "listen", format!("`{text}` is not an IP address"))
                        .with_hint("`0.0.0.0` (every interface), `127.0.0.1` (this host only, the default), or one address of this host"),
                );
                None
            }
        }
    });
    let api = f.get("api").and_then(|n| endpoint::api(ctx, n, &scope, root));
    let notify = f.get("notify").map(|n| endpoint::notify(ctx, n, &scope)).unwrap_or_default();
    let declared = f.get("volumes").map(|n| container::volumes(ctx, n, &scope)).unwrap_or_default();
    let volumes: IndexMap<String, Volume> = declared.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect();
    // An image built without a name is named after the project (the folder's, when `name` is wrong).
    let project = name.clone().unwrap_or_else(|| project_name_from(root));

    let mut services: IndexMap<String, (Service, service::Spans)> = IndexMap::new();
    match f.get("services").map(|n| &n.kind) {
        Some(Kind::Map(entries)) => {
            for (key, node) in entries {
                let service_name = key.key_text().unwrap_or_default();
                if !is_dns_label(service_name) {
                    ctx.diags.push(
                        Diagnostic::error("invalid-name", Some(key.span), format!("services.{service_name}"), format!("`{service_name}` is not a valid service name"))
                            .with_hint("use lowercase letters, digits and `-`, at most 63 characters (it becomes a host and resource name)"),
                    );
                    continue;
                }
                let input = service::Input {
                    name: service_name,
                    key_span: key.span,
                    node,
                    root,
                    environment: &environment,
                    environments: &environments,
                    shared: &shared,
                    secrets,
                    project: &project,
                    volumes: &volumes,
                };
                if let Some(decoded) = service::decode(ctx, input) {
                    services.insert(service_name.to_string(), decoded);
                }
            }
        }
        Some(_) => {
            let n = f.get("services")?;
            ctx.type_error(n, "services", "a mapping of service names to services");
        }
        None => {
            ctx.diags.push(
                Diagnostic::warning("no-services", Some(f.span), "services", "the stack has no services")
                    .with_hint("add a `services:` mapping"),
            );
        }
    }

    for (volume, (_, span)) in &declared {
        if !services.values().any(|(_, spans)| spans.volumes_used.contains(volume)) {
            ctx.diags.push(
                Diagnostic::warning(
                    "unused-volume",
                    Some(*span),
                    format!("volumes.{volume}"),
                    format!("volume `{volume}` is declared, but no service mounts it"),
                )
                .with_hint(format!("mount it in a service (`{volume}:/path`), or remove it")),
            );
        }
    }

    let profiles = options.profiles.clone();
    let active = |s: &Service| s.profiles.is_empty() || s.profiles.iter().any(|p| profiles.contains(p));
    let path_var = options.check_commands.then(|| options.process_env.get("PATH").cloned().unwrap_or_default());
    validate::check(
        ctx.diags,
        &validate::Checked { services: &services, shared: &shared, active: &active },
        path_var.as_deref(),
    );
    // Worth knowing about a stack that can run; noise beside errors.
    if !ctx.diags.items.iter().any(|d| d.severity == Severity::Error) {
        default_strategies(ctx.diags, &services, &active);
    }

    let mut inactive = Vec::new();
    let services: IndexMap<String, Service> = services
        .into_iter()
        .filter_map(|(name, (service, _))| {
            if active(&service) {
                Some((name, service))
            } else {
                inactive.push(name);
                None
            }
        })
        .collect();
    Some(Stack {
        name: name?,
        environment,
        environments,
        profiles,
        root: root.to_path_buf(),
        files,
        registry,
        engine,
        listen,
        api,
        notify,
        volumes,
        settings: shared,
        services,
        inactive,
    })
}

/// Says which strategy each service gets when the file is silent: `recreate` for a stateful
/// single instance (one note each, with why), `rolling` for the rest (one note for all).
fn default_strategies(
    diags: &mut Diagnostics,
    services: &IndexMap<String, (Service, service::Spans)>,
    active: &dyn Fn(&Service) -> bool,
) {
    let mut rolling = Vec::new();
    for (name, (service, spans)) in services.iter().filter(|(_, (s, _))| active(s)) {
        match &spans.default_strategy {
            Some(Some(why)) => diags.push(
                Diagnostic::note(
                    "default-strategy",
                    Some(service.span),
                    format!("services.{name}.deploy.strategy"),
                    format!(
                        "`{name}` is deployed with `recreate` (its instance stops before the new one starts): \
                         {why}, and it runs one instance, which must never run twice at once"
                    ),
                )
                .with_hint("set `deploy.strategy` to choose another"),
            ),
            Some(None) => rolling.push(name.as_str()),
            None => {}
        }
    }
    if !rolling.is_empty() {
        diags.push(Diagnostic::note(
            "default-strategy",
            None,
            "services",
            format!("deployed with `rolling`, the default strategy: {}", rolling.join(", ")),
        ));
    }
}

/// A path as diagnostics show it: relative to the current folder when inside it.
fn display_path(cwd: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(cwd).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf())
}

/// Lowercase letters, digits and `-`, at most 63, starting and ending alphanumeric.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn project_name_from(root: &Path) -> String {
    let folder = root.file_name().and_then(|n| n.to_str()).unwrap_or("tug").to_ascii_lowercase();
    let mut name: String = folder.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    name = name.trim_matches('-').chars().take(63).collect();
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() { "tug".to_string() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_env(text: &str, environment: Option<&str>, env: &[(&str, &str)]) -> Compiled {
        let options = Options {
            environment: environment.map(str::to_string),
            process_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Options::default()
        };
        compile_str(Path::new("tug.yaml"), text, &options, &NoSecrets)
    }

    fn value(compiled: &Compiled, name: &str) -> Option<String> {
        compiled.stack.as_ref()?.settings.get(name)?.value.as_ref().map(|v| v.expose().to_string())
    }

    fn codes(compiled: &Compiled) -> Vec<&'static str> {
        compiled.diagnostics.items.iter().filter(|d| d.severity == Severity::Error).map(|d| d.code).collect()
    }

    const PER_ENV: &str = "
environments: [development, staging, production]
settings:
  LOG_LEVEL:
    type: enum
    values: [DEBUG, INFO, WARNING]
    default: INFO
    environments:
      development: { default: DEBUG }
      production: { values: [INFO, WARNING], default: WARNING }
  REDIS_URL:
    type: url
    schemes: [redis, rediss]
    default: redis://127.0.0.1:6379/0
    environments:
      production: { schemes: [rediss], default: null }
services:
  api: { command: [sleep, '1'] }
";

    #[test]
    fn router_options_and_dependency_addresses() {
        let text = "services:\n  db: { command: [sleep, '1'], port: 5432 }\n  api:\n    command: [echo, '${DB_ADDR}']\n    depends_on: [db]\n    port: 8000\n    router: { request_timeout: 5s, max_connection_age: 10m }\n";
        let c = compile_env(text, None, &[]);
        assert!(codes(&c).is_empty(), "{:?}", c.diagnostics.items);
        let api = &c.stack.as_ref().unwrap().services["api"];
        assert_eq!(api.router.request_timeout, std::time::Duration::from_secs(5));
        assert_eq!(api.router.connect_timeout, std::time::Duration::from_secs(2));
        assert_eq!(api.router.max_connection_age, Some(std::time::Duration::from_secs(600)));
        // A dependency's address is for its dependents only; zero timeouts are refused.
        let other = "services:\n  db: { command: [echo, '${API_ADDR}'] }\n  api: { command: [sleep, '1'], port: 1, router: { connect_timeout: 0s, retries: 2 } }\n";
        assert_eq!(codes(&compile_env(other, None, &[])), ["unknown-variable", "invalid-value", "unknown-field"]);
        // A dependency without a port has no address.
        let portless =
            "services:\n  db: { command: [sleep, '1'] }\n  api: { command: 'echo $DB_ADDR', depends_on: [db] }\n";
        let c = compile_env(portless, None, &[]);
        assert_eq!(codes(&c), ["unknown-variable"]);
        assert!(c.diagnostics.items[0].message.contains("`db` has no `port`"), "{:?}", c.diagnostics.items);
    }

    #[test]
    fn deploy_hooks_name_jobs_and_smoke_checks_reach_the_service() {
        let text = "services:\n  migrate: { kind: job, command: [true] }\n  api:\n    command: [sleep, '1']\n    port: 8000\n    deploy: { before: [migrate], smoke: { http: /smoke } }\n";
        let c = compile_env(text, None, &[]);
        assert!(codes(&c).is_empty(), "{:?}", c.diagnostics.items);
        let deploy = &c.stack.as_ref().unwrap().services["api"].deploy;
        assert_eq!(deploy.before, ["migrate"]);
        let smoke = deploy.smoke.as_ref().expect("a smoke check");
        assert_eq!(smoke.timeout, std::time::Duration::from_secs(10), "the default timeout");
        assert!(matches!(&smoke.check, model::Check::Http(p) if p.expose() == "/smoke"));
        let bad = [
            ("deploy: { before: [migrat] }", "unknown-job", "did you mean `migrate`?"),
            ("deploy: { before: [db] }", "not-a-job", "`db` is a long-running service"),
            ("deploy: { before: [migrate, migrate] }", "duplicate-value", "listed twice"),
            ("deploy: { smoke: { log: ready } }", "unknown-field", "log"),
            ("deploy: { smoke: { timeout: 2s } }", "missing-field", "http: /smoke"),
            ("deploy: { smoke: { http: /a, tcp: true } }", "conflicting-fields", "one check"),
            ("deploy: { smoke: { http: /a, timeout: 0s } }", "invalid-value", "more than zero"),
        ];
        for (deploy, code, says) in bad {
            let text = format!(
                "services:\n  migrate: {{ kind: job, command: [true] }}\n  db: {{ command: [sleep, '1'] }}\n  api: {{ command: [sleep, '1'], port: 8000, {deploy} }}\n"
            );
            let c = compile_env(&text, None, &[]);
            assert_eq!(codes(&c), [code], "{deploy}: {:?}", c.diagnostics.items);
            let shown = format!("{:?}", c.diagnostics.items);
            assert!(shown.contains(says), "{deploy}: {shown}");
        }
        // An http or tcp smoke check needs a port; exec does not.
        let portless = "services:\n  worker: { command: [sleep, '1'], deploy: { smoke: { tcp: true } } }\n";
        assert_eq!(codes(&compile_env(portless, None, &[])), ["smoke-without-port"]);
        let exec = "services:\n  worker: { command: [sleep, '1'], deploy: { smoke: { exec: [true] } } }\n";
        assert!(codes(&compile_env(exec, None, &[])).is_empty());
    }

    #[test]
    fn the_first_environment_is_the_default() {
        let c = compile_env(PER_ENV, None, &[]);
        assert_eq!(c.stack.as_ref().map(|s| s.environment.as_str()), Some("development"));
        assert_eq!(value(&c, "LOG_LEVEL").as_deref(), Some("DEBUG"));
    }

    #[test]
    fn an_environment_without_a_rule_uses_the_base_rule() {
        let c = compile_env(PER_ENV, Some("staging"), &[]);
        assert_eq!(value(&c, "LOG_LEVEL").as_deref(), Some("INFO"));
        assert_eq!(value(&c, "REDIS_URL").as_deref(), Some("redis://127.0.0.1:6379/0"));
    }

    #[test]
    fn a_rule_replaces_fields_and_null_removes_a_default() {
        let c = compile_env(PER_ENV, Some("production"), &[]);
        assert_eq!(value(&c, "LOG_LEVEL").as_deref(), Some("WARNING"));
        assert_eq!(codes(&c), ["missing-value"], "production must provide REDIS_URL");
        let given = compile_env(PER_ENV, Some("production"), &[("REDIS_URL", "redis://cache:6379/0")]);
        assert_eq!(codes(&given), ["constraint"], "production's schemes replace the base list");
        let good = compile_env(PER_ENV, Some("production"), &[("REDIS_URL", "rediss://cache:6380/0")]);
        assert!(codes(&good).is_empty());
        // Production's `values` replace the list: DEBUG is no longer allowed there.
        let debug =
            compile_env(PER_ENV, Some("production"), &[("LOG_LEVEL", "DEBUG"), ("REDIS_URL", "rediss://c:1/0")]);
        assert_eq!(codes(&debug), ["constraint"]);
    }

    #[test]
    fn rules_for_unknown_environments_and_fields_are_errors() {
        let text = "environments: [development, production]\nsettings:\n  A:\n    default: x\n    environments:\n      prod: { default: y }\n      production: { defualt: z }\n";
        let c = compile_env(text, None, &[]);
        assert_eq!(codes(&c), ["unknown-field", "unknown-field"]);
        let hints: Vec<_> = c.diagnostics.items.iter().filter_map(|d| d.hint.as_deref()).collect();
        assert!(
            hints.contains(&"did you mean `production`?") && hints.contains(&"did you mean `default`?"),
            "{hints:?}"
        );
    }

    #[test]
    fn an_unknown_environment_is_refused() {
        let c = compile_env(PER_ENV, Some("prod"), &[]);
        assert_eq!(codes(&c), ["unknown-environment"]);
    }

    #[test]
    fn settings_follow_references_and_keep_sensitivity() {
        let text = "
settings:
  PASSWORD: { type: secret }
  HOST: { default: db }
  URL: { type: url, value: 'postgresql://app:${PASSWORD}@${HOST}/app' }
  LABEL: { default: 'on ${HOST}' }
services:
  api: { command: [sleep, '1'] }
";
        let c = compile_env(text, None, &[("PASSWORD", "pw")]);
        assert!(codes(&c).is_empty(), "{:?}", c.diagnostics);
        let settings = &c.stack.as_ref().expect("stack").settings;
        let url = settings["URL"].value.as_ref().expect("url");
        assert_eq!((url.expose(), url.sensitive), ("postgresql://app:pw@db/app", true));
        assert!(!settings["LABEL"].value.as_ref().expect("label").sensitive);
        assert_eq!(format!("{url:?}"), "\"********\"", "Debug never shows a sensitive value");
    }

    #[test]
    fn delivery_lists_secrets_only_where_listed() {
        let text = "
settings:
  TOKEN: { type: secret }
  LEVEL: { default: INFO }
services:
  api: { command: [sleep, '1'], secrets: [TOKEN], settings: { WORKERS: { type: int, default: 2 } } }
  web: { command: [sleep, '1'], environment: { LEVEL: DEBUG } }
";
        let c = compile_env(text, None, &[("TOKEN", "t0k")]);
        let stack = c.valid().expect("valid");
        let api = &stack.services["api"].environment;
        assert_eq!(api.keys().collect::<Vec<_>>(), ["TOKEN", "LEVEL", "WORKERS"]);
        let web = &stack.services["web"].environment;
        assert!(!web.contains_key("TOKEN") && !web.contains_key("WORKERS"));
        assert_eq!(web["LEVEL"].expose(), "DEBUG", "`environment` wins over a setting");
    }

    /// A folder for a stack whose paths must exist, removed when dropped.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Folder {
            let path = std::env::temp_dir().join(format!("tug-stackfile-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create a folder");
            Folder(path)
        }

        fn compile(&self, text: &str, env: &[(&str, &str)]) -> Compiled {
            let options = Options {
                cwd: self.0.clone(),
                process_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Options::default()
            };
            compile_str(&self.0.join("tug.yaml"), text, &options, &NoSecrets)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn services_that_run_images() {
        let dir = Folder::new("images");
        std::fs::create_dir_all(dir.0.join("api")).unwrap();
        std::fs::write(dir.0.join("api/Dockerfile"), "FROM scratch\n").unwrap();
        let text = r#"
name: shop
engine: unix:///run/podman/podman.sock
volumes:
  pgdata: {}
  shared: { external: true }
services:
  db:
    image: postgres:15
    command: postgres -c 'shared_buffers=128MB' -p ${PORT}
    entrypoint: ""
    port: 5432
    volumes:
      - pgdata:/var/lib/postgresql/data
      - ./initdb:/docker-entrypoint-initdb.d:ro
      - { type: volume, source: shared, target: /shared, read_only: true }
    tmpfs: /run/postgresql
    cap_drop: [ALL]
    cap_add: [CAP_CHOWN]
  api:
    build: { context: ./api, args: { VERSION: "1.0" }, target: prod }
    port: 8000
    container_port: 8000
    pull: never
    init: true
    entrypoint: [tini, --]
    working_dir: /srv
  worker:
    command: [python3, worker.py]
    source: ./api
    working_dir: ./api
"#;
        let c = dir.compile(text, &[]);
        assert!(!c.diagnostics.has_errors(), "{:#?}", c.diagnostics.items);
        let stack = c.stack.as_ref().unwrap();
        assert_eq!(stack.engine.as_deref(), Some("unix:///run/podman/podman.sock"));
        assert_eq!(stack.volumes["shared"], Volume { external: true });
        let db = &stack.services["db"];
        let container = db.container.as_ref().unwrap();
        assert_eq!((container.image.as_str(), container.pull), ("postgres:15", Pull::Missing));
        assert_eq!(container.entrypoint, Some(Vec::new()), "an empty entrypoint clears the image's");
        let Some(Command::Argv(argv)) = &db.command else { panic!("{:?}", db.command) };
        let words: Vec<(&str, bool)> = argv.iter().map(|w| (w.expose(), w.template)).collect();
        assert_eq!(
            words,
            [("postgres", false), ("-c", false), ("shared_buffers=128MB", false), ("-p", false), ("${PORT}", true)]
        );
        assert_eq!(
            container.volumes,
            [
                VolumeMount::Named {
                    name: "pgdata".into(),
                    target: "/var/lib/postgresql/data".into(),
                    read_only: false
                },
                VolumeMount::Bind {
                    source: dir.0.join("initdb"),
                    target: "/docker-entrypoint-initdb.d".into(),
                    read_only: true
                },
                VolumeMount::Named { name: "shared".into(), target: "/shared".into(), read_only: true },
            ]
        );
        assert_eq!(container.tmpfs, ["/run/postgresql"]);
        let api = &stack.services["api"];
        assert!(api.command.is_none(), "the image's CMD runs");
        let container = api.container.as_ref().unwrap();
        assert_eq!(container.image, "shop-api", "Compose's name for a built image");
        let build = container.build.as_ref().unwrap();
        assert_eq!((build.context.as_path(), build.target.as_deref()), (dir.0.join("api").as_path(), Some("prod")));
        assert_eq!(build.args["VERSION"].expose(), "1.0");
        assert_eq!((container.pull, container.init, container.container_port), (Pull::Never, true, Some(8000)));
        assert_eq!(container.working_dir.as_deref(), Some("/srv"), "a folder inside the container");
        assert_eq!(stack.services["db"].container.as_ref().unwrap().working_dir, None, "the image's WORKDIR");
        assert_eq!(stack.services["worker"].source.as_deref(), Some(dir.0.join("api").as_path()));
        let notes: Vec<&str> = c.diagnostics.items.iter().map(|d| d.message.as_str()).collect();
        assert!(notes.contains(&"`api` runs the image `shop-api`, built from `./api`"), "{notes:?}");
        assert!(notes.contains(&"`./initdb` does not exist yet: `up` creates it, as an empty folder"), "{notes:?}");
        // Masked when serialized, like every value.
        let json = serde_json::to_value(stack).unwrap();
        assert_eq!(json["services"]["db"]["container"]["volumes"][0]["type"], "volume");
        assert_eq!(json["services"]["api"]["container"]["pull"], "never");
    }

    #[test]
    fn image_mistakes() {
        let dir = Folder::new("image-mistakes");
        let text = r#"
volumes:
  pgdata: {}
  unused: {}
services:
  a:
    image: Postgres
    command: "migrate && serve"
    volumes: [pgdat:/data, /anon, ./x:rel, "/outside-tug-nowhere:/y", "pgdata:/y", "./y:/y/"]
    container_port: 80
    source: .
  b:
    command: [sleep, "1"]
    read_only: true
    cap_add: [net_admin]
  c:
    build: { dockerfile: Dockerfile }
    entrypoint: "run 'unclosed"
"#;
        let c = dir.compile(text, &[]);
        let codes: Vec<&str> =
            c.diagnostics.items.iter().filter(|d| d.severity == Severity::Error).map(|d| d.code).collect();
        assert_eq!(
            codes,
            [
                "invalid-value",
                "shell-syntax",
                "unknown-volume",
                "anonymous-volume",
                "invalid-value",
                "missing-path",
                "duplicate-mount",
                "missing-field",
                "conflicting-fields",
                "container-only",
                "container-only",
                "missing-field",
                "unbalanced-quote",
            ],
            "{:#?}",
            c.diagnostics.items
        );
        let warnings: Vec<&str> =
            c.diagnostics.items.iter().filter(|d| d.severity == Severity::Warning).map(|d| d.code).collect();
        assert_eq!(warnings, ["unused-volume"]);
        let unknown = c.diagnostics.items.iter().find(|d| d.code == "unknown-volume").unwrap();
        assert_eq!(unknown.hint.as_deref(), Some("did you mean `pgdata`?"));
    }

    #[test]
    fn builds() {
        let dir = Folder::new("builds");
        std::fs::create_dir_all(dir.0.join("api")).unwrap();
        let text = r#"
settings:
  NPM_TOKEN: { type: secret }
services:
  api:
    build: { context: api, args: [VERSION=1, "NPM_TOKEN=${NPM_TOKEN}"] }
    secrets: [NPM_TOKEN]
  web:
    build: { context: ./api, dockerfile: web.Dockerfile }
    image: registry.local:5000/web:${TAG:-dev}
"#;
        let c = dir.compile(text, &[("NPM_TOKEN", "npm-secret-1234")]);
        let found: Vec<(&str, &str)> = c
            .diagnostics
            .items
            .iter()
            .filter(|d| d.severity != Severity::Note)
            .map(|d| (d.severity.as_str(), d.code))
            .collect();
        assert_eq!(
            found,
            [("warning", "missing-dockerfile"), ("warning", "secret-in-build-arg"), ("error", "missing-path")],
            "{:#?}",
            c.diagnostics.items
        );
        let arg = &c.stack.as_ref().unwrap().services["api"].container.as_ref().unwrap().build.as_ref().unwrap().args;
        assert!(arg["NPM_TOKEN"].sensitive && !arg["VERSION"].sensitive);
        std::fs::write(dir.0.join("api/web.Dockerfile"), "FROM scratch\n").unwrap();
        let c = dir.compile(text, &[("NPM_TOKEN", "npm-secret-1234"), ("TAG", "1.4")]);
        assert!(!c.diagnostics.has_errors(), "{:#?}", c.diagnostics.items);
        let web = c.stack.as_ref().unwrap().services["web"].container.as_ref().unwrap();
        assert_eq!(web.image, "registry.local:5000/web:1.4", "`image` names what `build` makes");
    }

    #[test]
    fn secrets_on_command_lines_are_errors() {
        let text = r#"
settings:
  TOKEN: { type: secret }
  URL: { value: "https://x:${TOKEN}@h" }
  PLAIN: { default: p }
services:
  a:
    command: [run, "--token=${TOKEN}", "$PLAIN"]
    secrets: [TOKEN, URL]
    healthcheck: { exec: "check ${URL} ${TOKEN}" }
  b:
    command: 'run --token "$$TOKEN"'
    secrets: [TOKEN]
  c:
    image: alpine
    entrypoint: ["${TOKEN}"]
    secrets: [TOKEN]
"#;
        let c = compile_env(text, None, &[("TOKEN", "t0k3n-value")]);
        let errors: Vec<(&str, &str)> = c
            .diagnostics
            .items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (d.code, d.message.as_str()))
            .collect();
        assert_eq!(
            errors,
            [
                (
                    "secret-in-command",
                    "`command` interpolates the secret `TOKEN`: any local user can read a process's arguments (in `ps`)"
                ),
                (
                    "secret-in-command",
                    "`healthcheck.exec` interpolates the secrets `URL`, `TOKEN`: any local user can read a process's arguments (in `ps`)"
                ),
                (
                    "secret-in-command",
                    "`entrypoint` interpolates the secret `TOKEN`: any local user can read a process's arguments (in `ps`)"
                ),
            ]
        );
        assert!(!format!("{:?}", c.diagnostics.items).contains("t0k3n-value"));
    }

    #[test]
    fn engine_sockets() {
        for (engine, ok) in [
            ("unix:///var/run/docker.sock", true),
            ("/run/user/1000/podman/podman.sock", true),
            ("tcp://10.0.0.1:2375", false),
            ("ssh://me@host", false),
            ("docker.sock", false),
        ] {
            let c = compile_env(&format!("engine: {engine}\nservices:\n  a: {{ command: [sleep, '1'] }}\n"), None, &[]);
            assert_eq!(!c.diagnostics.has_errors(), ok, "{engine}: {:?}", c.diagnostics.items);
        }
        let c = compile_env("engine: tcp://h:2375\nservices:\n  a: { command: [sleep, '1'] }\n", None, &[]);
        assert!(c.diagnostics.items[0].message.starts_with("tug talks to the engine over a Unix socket"));
    }

    #[test]
    fn overlay_file_names() {
        assert_eq!(overlay_path(Path::new("/s/tug.yaml"), "production"), Path::new("/s/tug.production.yaml"));
        assert_eq!(overlay_path(Path::new("stack.yml"), "dev"), Path::new("stack.dev.yml"));
    }

    #[test]
    fn project_names_default_to_the_folder() {
        assert_eq!(project_name_from(Path::new("/home/me/My_Shop")), "my-shop");
        assert_eq!(project_name_from(Path::new("/")), "tug");
        assert!(is_dns_label("api-2") && !is_dns_label("-api") && !is_dns_label("Api") && !is_dns_label(""));
    }

    #[test]
    fn a_stateful_single_instance_is_recreated_unless_the_file_says_otherwise() {
        let compiled = compile_env(
            "
volumes: { data: {} }
services:
  web: { command: [sleep, '1'], port: 8080 }
  fixed: { command: [sleep, '1'], port: 5433, proxy: false }
  cache: { command: [sleep, '1'], port: 6390, protocol: tcp }
  files: { command: [sh, -c, 'exec db --dir ${TUG_STATE_DIR}/db'] }
  volume: { image: postgres:16, volumes: ['data:/var/lib/postgresql/data'] }
  scaled: { command: [sleep, '1'], port: 6391, protocol: tcp, replicas: 2 }
  chosen: { command: [sleep, '1'], port: 6392, protocol: tcp, deploy: { strategy: rolling } }
  job: { kind: job, command: [sh, -c, 'touch ${TUG_STATE_DIR}/x'] }
",
            None,
            &[],
        );
        let stack = compiled.valid().unwrap_or_else(|| panic!("{:#?}", compiled.diagnostics.items));
        let strategy = |name: &str| stack.services[name].deploy.strategy;
        for name in ["fixed", "cache", "files", "volume"] {
            assert_eq!(strategy(name), Strategy::Recreate, "{name}");
        }
        for name in ["web", "scaled", "chosen"] {
            assert_eq!(strategy(name), Strategy::Rolling, "{name}");
        }
        let notes: Vec<(&str, &str)> = compiled
            .diagnostics
            .items
            .iter()
            .filter(|d| d.code == "default-strategy")
            .map(|d| (d.path.as_str(), d.message.as_str()))
            .collect();
        assert_eq!(notes.len(), 5, "{notes:#?}");
        assert!(notes.iter().any(|(p, m)| *p == "services.volume.deploy.strategy" && m.contains("the volume `data`")));
        assert!(notes.iter().any(|(p, m)| *p == "services.files.deploy.strategy" && m.contains("$TUG_STATE_DIR")));
        assert!(notes.iter().any(|(p, m)| *p == "services.fixed.deploy.strategy" && m.contains("proxy: false")));
        assert!(notes.iter().any(|(p, m)| *p == "services.cache.deploy.strategy" && m.contains("`tcp` service")));
        assert!(
            notes.contains(&("services", "deployed with `rolling`, the default strategy: web, scaled")),
            "{notes:#?}"
        );
    }

    #[test]
    fn compose_habits_get_the_tug_spelling_in_the_hint() {
        let compiled = compile_env(
            "
services:
  api:
    image: api:1
    ports: [\"8000:5000\"]
    logging: { driver: json-file }
    healthcheck: { test: [\"CMD\", \"curl\", \"-f\", \"http://localhost\"] }
    deploy: { replicas: 3, resources: { limits: { memory: 1g } } }
  db:
    image: postgres
    ports: [\"5432\"]
    healthcheck: { test: [\"CMD-SHELL\", \"pg_isready -U app\"] }
",
            None,
            &[],
        );
        let hint = |path: &str| {
            let d = compiled.diagnostics.items.iter().find(|d| d.path == path);
            d.and_then(|d| d.hint.clone()).unwrap_or_else(|| panic!("{path}: {:#?}", compiled.diagnostics.items))
        };
        assert!(
            hint("services.api.ports").contains("`port: 8000`")
                && hint("services.api.ports").contains("`container_port: 5000`")
        );
        assert!(hint("services.db.ports").contains("write `port: 5432`"));
        assert!(hint("services.api.logging").contains("logs: { max_size"));
        assert!(hint("services.api.healthcheck.test").contains("`exec: [curl, -f, http://localhost]`"));
        assert!(hint("services.db.healthcheck.test").contains("`exec: \"pg_isready -U app\"`"));
        assert!(hint("services.api.deploy.replicas").contains("`replicas: 3` is a field of the service itself"));
        assert!(hint("services.api.deploy.resources").contains("`resources: { memory"));
    }
}
