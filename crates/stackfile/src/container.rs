//! Services that run an image: `image`, `build`, `pull`, `entrypoint`, `volumes`, `tmpfs`,
//! the security fields and `container_port`; and the stack's `engine:` and named `volumes:`.
//! The field lists here are the schema's too.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use indexmap::IndexMap;
use regex::Regex;

use crate::diag::{Diagnostic, Span};
use crate::model::{Build, Container, Pull, Text, Volume, VolumeMount};
use crate::read::{Ctx, Fields, Scope, join, suggest};
use crate::service::{Spans, environment_entries, is_profile_name, normalize};
use crate::words::{self, SplitError};
use crate::yaml::{Kind, Node};

/// The fields only a service that runs an image may have (besides `image` and `build`).
pub const CONTAINER_FIELDS: &[&str] = &[
    "pull",
    "entrypoint",
    "volumes",
    "tmpfs",
    "read_only",
    "cap_add",
    "cap_drop",
    "security_opt",
    "init",
    "container_port",
];
pub const BUILD_FIELDS: &[&str] = &["context", "dockerfile", "args", "target"];
/// A service's volume, the long way.
pub const MOUNT_FIELDS: &[&str] = &["type", "source", "target", "read_only"];
pub const MOUNT_TYPES: &[&str] = &["volume", "bind"];
/// One of the stack's named volumes.
pub const VOLUME_FIELDS: &[&str] = &["external"];
pub const PULLS: &[(&str, Pull)] = &[("always", Pull::Always), ("missing", Pull::Missing), ("never", Pull::Never)];
/// Short-syntax modes: `ro` and `rw`, and Docker Desktop's consistency modes, which do
/// nothing on Linux.
pub const MOUNT_MODES: &[&str] = &["ro", "rw", "cached", "delegated", "consistent"];

/// Linux capabilities, without their `CAP_` prefix (as Docker and Podman take them).
pub const CAPABILITIES: &[&str] = &[
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];
/// `security_opt` keys Docker or Podman read (`KEY`, `KEY:VALUE` or `KEY=VALUE`).
pub const SECURITY_OPTIONS: &[&str] = &[
    "no-new-privileges",
    "seccomp",
    "apparmor",
    "label",
    "systempaths",
    "writable-cgroups",
    "mask",
    "unmask",
    "proc-opts",
];

/// `[registry[:port]/]path[:tag][@digest]`, as Docker's reference grammar has it (unanchored).
pub fn image_pattern() -> String {
    let component = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let label = "[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?";
    let domain = format!(r"{label}(?:\.{label})*(?::[0-9]+)?");
    let tag = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
    let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    format!("(?:{domain}/)?{component}(?:/{component})*(?::{tag})?(?:@{digest})?")
}

static IMAGE_REFERENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^(?:{})$", image_pattern())).expect("a valid pattern"));

/// What decoding a service's container needs from the service and the stack.
pub struct Input<'a> {
    pub service: &'a str,
    pub project: &'a str,
    pub root: &'a Path,
    pub volumes: &'a IndexMap<String, Volume>,
    pub port: Option<u16>,
    /// `HOME`, for bind mounts from `~`.
    pub home: Option<&'a str>,
    /// `working_dir` as written, when it is an absolute path (the service reports the others).
    pub working_dir: Option<&'a str>,
}

/// The container of a service that has `image` or `build`. Every field is checked even
/// when one fails, so that every problem is reported.
pub fn decode(
    ctx: &mut Ctx,
    f: &Fields,
    input: &Input,
    scope: &Scope,
    instance_scope: &Scope,
    spans: &mut Spans,
) -> Option<Container> {
    let build = f.get("build").and_then(|n| build(ctx, n, &f.path("build"), input.root, scope));
    let image = match f.get("image") {
        Some(n) => image(ctx, n, &f.path("image"), scope),
        // Compose's name for an image it builds.
        None => Some(format!("{}-{}", input.project, input.service)),
    };
    let pull = f.get("pull").and_then(|n| ctx.choice(n, &f.path("pull"), scope, PULLS)).unwrap_or_default();
    let entrypoint = f.get("entrypoint").and_then(|n| {
        spans.entrypoint = Some(n.span);
        argv(ctx, n, &f.path("entrypoint"), instance_scope, "entrypoint", true)
    });
    let volumes = f.get("volumes").map(|n| mounts(ctx, n, &f.path("volumes"), input, scope, spans)).unwrap_or_default();
    let tmpfs = f.get("tmpfs").map(|n| tmpfs(ctx, n, &f.path("tmpfs"), scope)).unwrap_or_default();
    duplicate_targets(ctx, f, &volumes, &tmpfs);
    let read_only = f.get("read_only").and_then(|n| ctx.bool(n, &f.path("read_only"), scope)).unwrap_or(false);
    let cap_add = f.get("cap_add").map(|n| capabilities(ctx, n, &f.path("cap_add"), scope)).unwrap_or_default();
    let cap_drop = f.get("cap_drop").map(|n| capabilities(ctx, n, &f.path("cap_drop"), scope)).unwrap_or_default();
    let security_opt =
        f.get("security_opt").map(|n| security_options(ctx, n, &f.path("security_opt"), scope)).unwrap_or_default();
    let init = f.get("init").and_then(|n| ctx.bool(n, &f.path("init"), scope)).unwrap_or(false);
    let container_port = f.get("container_port").and_then(|n| {
        let port = ctx.port(n, &f.path("container_port"), scope)?;
        if input.port.is_none() {
            ctx.diags.push(
                Diagnostic::error(
                    "missing-field",
                    Some(n.span),
                    f.path("container_port"),
                    "`container_port` needs `port`: `$PORT` is what is published to `container_port`",
                )
                .with_hint("give the service a `port`, or remove `container_port` to share the host's network"),
            );
        }
        Some(port)
    });
    let image = image?;
    let (build, context) = match build {
        Some((build, context)) => (Some(build), Some(context)),
        None if f.get("build").is_some() => return None,
        None => (None, None),
    };
    // What will run, as the stack file cannot always say it (a default name, a variable).
    let (span, path) = match f.get("image") {
        Some(n) => (n.span, f.path("image")),
        None => (f.get("build").map_or(f.span, |n| n.span), f.path("build")),
    };
    let message = match &context {
        Some(context) => format!("`{}` runs the image `{image}`, built from `{context}`", input.service),
        None => format!("`{}` runs the image `{image}`", input.service),
    };
    ctx.diags.push(Diagnostic::note("image", Some(span), path, message));
    Some(Container {
        image,
        pull,
        build,
        entrypoint,
        working_dir: input.working_dir.map(str::to_string),
        volumes: volumes.into_iter().map(|(m, _, _)| m).collect(),
        tmpfs: tmpfs.into_iter().map(|(t, _)| t).collect(),
        read_only,
        cap_add,
        cap_drop,
        security_opt,
        init,
        container_port,
    })
}

fn image(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Option<String> {
    let reference = ctx.string(node, path, scope)?;
    if IMAGE_REFERENCE.is_match(&reference) {
        return Some(reference);
    }
    ctx.diags.push(
        Diagnostic::error(
            "invalid-value",
            Some(node.span),
            path,
            format!("`{reference}` is not a valid image reference"),
        )
        .with_hint(
            "write `[registry/]name[:tag][@digest]`, the name in lowercase, such as `postgres:15` or `ghcr.io/acme/api:1.2`",
        ),
    );
    None
}

/// `build: ./folder`, or `{ context, dockerfile, args, target }`; with the context as written.
fn build(ctx: &mut Ctx, node: &Node, path: &str, root: &Path, scope: &Scope) -> Option<(Build, String)> {
    let (context_node, context_path, f) = match &node.kind {
        Kind::Scalar { .. } => (node, path.to_string(), None),
        Kind::Map(_) => {
            let f = ctx.fields(node, path, BUILD_FIELDS)?;
            match f.get("context") {
                Some(n) => (n, f.path("context"), Some(f)),
                None => {
                    if !f.misspelled.iter().any(|m| m == "context") {
                        ctx.diags.push(
                            Diagnostic::error("missing-field", Some(node.span), path, "a `build` needs a `context`")
                                .with_hint(
                                    "add `context: ./folder` (relative to the stack file), or write `build: ./folder`",
                                ),
                        );
                    }
                    return None;
                }
            }
        }
        _ => {
            ctx.type_error(node, path, "a folder, or a mapping with a `context`");
            return None;
        }
    };
    let written = ctx.string(context_node, &context_path, scope);
    let mut context = written.as_ref().map(|c| normalize(&root.join(c)));
    if let (Some(written), Some(folder)) = (&written, &context)
        && !folder.is_dir()
    {
        let problem = if folder.exists() { "is not a folder" } else { "does not exist" };
        ctx.diags.push(
            Diagnostic::error(
                "missing-path",
                Some(context_node.span),
                &context_path,
                format!("the build context `{written}` {problem}"),
            )
            .with_hint("the context is a folder, relative to the stack file's folder"),
        );
        context = None;
    }
    let mut dockerfile = None;
    let mut args = IndexMap::new();
    let mut target = None;
    if let Some(f) = &f {
        if let Some(n) = f.get("dockerfile") {
            dockerfile = ctx.string(n, &f.path("dockerfile"), scope);
            if let (Some(file), Some(context)) = (&dockerfile, &context)
                && !context.join(file).is_file()
            {
                ctx.diags.push(
                    Diagnostic::error(
                        "missing-path",
                        Some(n.span),
                        f.path("dockerfile"),
                        format!("the Dockerfile `{file}` does not exist in the build context"),
                    )
                    .with_hint("`dockerfile` is relative to the build context"),
                );
            }
        }
        if let Some(n) = f.get("args") {
            for (name, value) in environment_entries(ctx, n, &f.path("args"), scope) {
                if value.sensitive {
                    ctx.diags.push(
                        Diagnostic::warning(
                            "secret-in-build-arg",
                            Some(n.span),
                            join(&f.path("args"), &name),
                            format!("the build argument `{name}` is a secret: build arguments stay readable in the image's history"),
                        )
                        .with_hint("give the secret to the service when it runs (`secrets:`), not to its build"),
                    );
                }
                args.insert(name, value);
            }
        }
        target = f.get("target").and_then(|n| ctx.string(n, &f.path("target"), scope));
    }
    if dockerfile.is_none()
        && let Some(context) = &context
        && !context.join("Dockerfile").is_file()
        && !context.join("Containerfile").is_file()
    {
        ctx.diags.push(
            Diagnostic::warning(
                "missing-dockerfile",
                Some(context_node.span),
                &context_path,
                format!("the build context `{}` has no `Dockerfile`", written.as_deref().unwrap_or_default()),
            )
            .with_hint("add one, or name the file with `dockerfile:`"),
        );
    }
    Some((Build { context: context?, dockerfile, args, target }, written?))
}

/// A `command` or `entrypoint` for an image: a list is the arguments as they are; a string is
/// split into words as Docker Compose does, never run by a shell. An empty entrypoint
/// clears the image's (`allow_empty`).
pub fn argv(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    scope: &Scope,
    field: &str,
    allow_empty: bool,
) -> Option<Vec<Text>> {
    match &node.kind {
        Kind::Seq(items) => {
            if items.is_empty() && !allow_empty {
                ctx.error("invalid-value", node.span, path, "an empty command");
                return None;
            }
            let argv: Vec<Option<Text>> =
                items.iter().enumerate().map(|(i, item)| ctx.text(item, &format!("{path}[{i}]"), scope)).collect();
            argv.into_iter().collect()
        }
        Kind::Scalar { text, .. } if text.trim().is_empty() => {
            if allow_empty {
                return Some(Vec::new());
            }
            ctx.error("invalid-value", node.span, path, "an empty command");
            None
        }
        Kind::Scalar { text: raw, .. } => {
            let (text, secrets) = ctx.interpolate_marked(raw, node.span, path, scope)?;
            match words::split(&text, &secrets) {
                Ok(words) => Some(words),
                Err(SplitError::Unbalanced(quote)) => {
                    ctx.diags.push(
                        Diagnostic::error(
                            "unbalanced-quote",
                            Some(node.span),
                            path,
                            format!("this `{field}` opens a `{quote}` quote that it never closes, so it cannot be split into words"),
                        )
                        .with_hint(format!("close the quote, or write `{field}` as a list: `[program, argument]`")),
                    );
                    None
                }
                Err(SplitError::Shell(op)) => {
                    ctx.diags.push(
                        Diagnostic::error(
                            "shell-syntax",
                            Some(node.span),
                            path,
                            format!(
                                "an image's `{field}` string is split into words, not run by a shell, so {} would reach the program as an argument",
                                words::operator_name(op)
                            ),
                        )
                        .with_hint(format!("write `{field}: [sh, -c, \"…\"]` if the image has a shell")),
                    );
                    None
                }
            }
        }
        _ => {
            ctx.type_error(node, path, &format!("a {field}: a list of arguments or a string"));
            None
        }
    }
}

/// A short-syntax volume: `SOURCE:TARGET[:MODE]`, or `TARGET` alone (no source).
#[derive(Debug, PartialEq, Eq)]
pub struct ShortMount<'a> {
    pub source: Option<&'a str>,
    pub target: &'a str,
    pub read_only: bool,
}

/// Parses Compose's short syntax; the error is the message to show.
pub fn parse_short_mount(text: &str) -> Result<ShortMount<'_>, String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{text}` has an empty part: write `SOURCE:TARGET` or `SOURCE:TARGET:ro`"));
    }
    let (source, target, mode) = match parts.as_slice() {
        [target] => (None, *target, None),
        [source, target] => (Some(*source), *target, None),
        [source, target, mode] => (Some(*source), *target, Some(*mode)),
        _ => return Err(format!("`{text}` has too many parts: write `SOURCE:TARGET` or `SOURCE:TARGET:ro`")),
    };
    let mut read_only = None;
    for option in mode.unwrap_or_default().split(',').filter(|o| !o.is_empty()) {
        if !MOUNT_MODES.contains(&option) {
            return Err(format!("`{option}` is not a mount mode tug supports: use `ro` (read-only) or `rw`"));
        }
        let ro = match option {
            "ro" => true,
            "rw" => false,
            _ => continue,
        };
        if read_only.is_some_and(|r| r != ro) {
            return Err(format!("`{text}` is both `ro` and `rw`"));
        }
        read_only = Some(ro);
    }
    Ok(ShortMount { source, target, read_only: read_only.unwrap_or(false) })
}

/// Whether a volume's source is a path on this machine (a bind mount) rather than a volume's
/// name, as Compose decides it.
fn is_path(source: &str) -> bool {
    source.starts_with(['.', '/', '~'])
}

fn mounts(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    input: &Input,
    scope: &Scope,
    spans: &mut Spans,
) -> Vec<(VolumeMount, Span, String)> {
    let Kind::Seq(items) = &node.kind else {
        ctx.type_error(node, path, "a list of volumes");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let mount = match &item.kind {
            Kind::Scalar { .. } => short_mount(ctx, item, &item_path, input, scope, spans),
            Kind::Map(_) => long_mount(ctx, item, &item_path, input, scope, spans),
            _ => {
                ctx.type_error(item, &item_path, "`SOURCE:TARGET[:ro]`, or a mapping with `source` and `target`");
                None
            }
        };
        out.extend(mount.map(|m| (m, item.span, item_path)));
    }
    out
}

fn short_mount(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    input: &Input,
    scope: &Scope,
    spans: &mut Spans,
) -> Option<VolumeMount> {
    let text = ctx.string(node, path, scope)?;
    let short = match parse_short_mount(&text) {
        Ok(short) => short,
        Err(message) => {
            ctx.error("invalid-value", node.span, path, message);
            return None;
        }
    };
    let Some(source) = short.source else {
        anonymous(ctx, node.span, path, short.target);
        return None;
    };
    let at = Place { path, source: node.span, target: node.span };
    mount(ctx, &at, is_path(source), source, short.target, short.read_only, input, spans)
}

fn long_mount(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    input: &Input,
    scope: &Scope,
    spans: &mut Spans,
) -> Option<VolumeMount> {
    let f = ctx.fields(node, path, MOUNT_FIELDS)?;
    let bind = match f.get("type") {
        Some(n) => match ctx.string(n, &f.path("type"), scope)?.as_str() {
            "bind" => Some(true),
            "volume" => Some(false),
            "tmpfs" => {
                ctx.diags.push(
                    Diagnostic::error("invalid-value", Some(n.span), f.path("type"), "a tmpfs is not a volume here")
                        .with_hint("list its path under the service's `tmpfs:`"),
                );
                return None;
            }
            other => {
                ctx.error(
                    "invalid-value",
                    n.span,
                    &f.path("type"),
                    format!("`{other}` is not one of: {}", MOUNT_TYPES.join(", ")),
                );
                return None;
            }
        },
        None => None,
    };
    let source = f.get("source").and_then(|n| ctx.string(n, &f.path("source"), scope).map(|s| (s, n.span)));
    let read_only = f.get("read_only").and_then(|n| ctx.bool(n, &f.path("read_only"), scope)).unwrap_or(false);
    let Some(target_node) = f.get("target") else {
        if !f.misspelled.iter().any(|m| m == "target") {
            ctx.error("missing-field", f.span, path, "a volume needs a `target`: where it appears in the container");
        }
        return None;
    };
    let target = ctx.string(target_node, &f.path("target"), scope)?;
    let Some((source, source_span)) = source else {
        if f.get("source").is_some() || f.misspelled.iter().any(|m| m == "source") {
            return None;
        }
        if bind == Some(true) {
            ctx.error("missing-field", f.span, path, "a bind mount needs a `source`: a folder of this machine");
        } else {
            anonymous(ctx, f.span, path, &target);
        }
        return None;
    };
    if bind == Some(false) && is_path(&source) {
        ctx.diags.push(
            Diagnostic::error(
                "invalid-value",
                Some(source_span),
                f.path("source"),
                format!("`{source}` is a path, but a `volume`'s source is a volume's name"),
            )
            .with_hint("write `type: bind` to mount a folder of this machine"),
        );
        return None;
    }
    let at = Place { path, source: source_span, target: target_node.span };
    mount(ctx, &at, bind.unwrap_or_else(|| is_path(&source)), &source, &target, read_only, input, spans)
}

/// Where a mount is written, for its diagnostics.
struct Place<'p> {
    path: &'p str,
    source: Span,
    target: Span,
}

#[allow(clippy::too_many_arguments)]
fn mount(
    ctx: &mut Ctx,
    at: &Place,
    bind: bool,
    source: &str,
    target: &str,
    read_only: bool,
    input: &Input,
    spans: &mut Spans,
) -> Option<VolumeMount> {
    let target_ok = target.starts_with('/');
    if !target_ok {
        ctx.diags.push(
            Diagnostic::error(
                "invalid-value",
                Some(at.target),
                at.path,
                format!("the target `{target}` is not an absolute path"),
            )
            .with_hint("a target is a path inside the container, such as `/var/lib/data`"),
        );
    }
    if !bind {
        spans.volumes_used.push(source.to_string());
        if !is_profile_name(source) {
            ctx.error(
                "invalid-name",
                at.source,
                at.path,
                format!("`{source}` is not a valid volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            );
            return None;
        }
        if !input.volumes.contains_key(source) {
            let mut d = Diagnostic::error(
                "unknown-volume",
                Some(at.source),
                at.path,
                format!("volume `{source}` is not declared under the stack's `volumes:`"),
            );
            d = match suggest(source, input.volumes.keys().map(String::as_str)) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!(
                    "declare it at the top of the stack file (`volumes: {{ {source}: {{}} }}`), or write `./{source}` to mount a folder"
                )),
            };
            ctx.diags.push(d);
            return None;
        }
        return target_ok.then(|| VolumeMount::Named {
            name: source.to_string(),
            target: target.to_string(),
            read_only,
        });
    }
    let resolved = match source.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match input.home {
            Some(home) => normalize(&Path::new(home).join(rest.trim_start_matches('/'))),
            None => {
                ctx.error(
                    "invalid-value",
                    at.source,
                    at.path,
                    format!("`{source}` starts with `~`, but HOME is not set"),
                );
                return None;
            }
        },
        Some(_) => {
            ctx.diags.push(
                Diagnostic::error(
                    "invalid-value",
                    Some(at.source),
                    at.path,
                    format!("`{source}`: `~user` is not supported"),
                )
                .with_hint("write the folder's absolute path"),
            );
            return None;
        }
        None => normalize(&input.root.join(source)),
    };
    if std::fs::symlink_metadata(&resolved).is_err() {
        if resolved.starts_with(normalize(input.root)) {
            if !target_ok {
                return None;
            }
            ctx.diags.push(Diagnostic::note(
                "bind-created",
                Some(at.source),
                at.path,
                format!("`{source}` does not exist yet: `up` creates it, as an empty folder"),
            ));
        } else {
            ctx.diags.push(
                Diagnostic::error(
                    "missing-path",
                    Some(at.source),
                    at.path,
                    format!("the bind mount source `{source}` does not exist"),
                )
                .with_hint(
                    "create it first: outside the stack's folder, the engine would refuse it or create it owned by root",
                ),
            );
            return None;
        }
    }
    target_ok.then(|| VolumeMount::Bind { source: resolved, target: target.to_string(), read_only })
}

/// A volume with a target and no source: the engine would make a new, nameless one for
/// every container, so its content would be lost whenever an instance is replaced.
fn anonymous(ctx: &mut Ctx, span: Span, path: &str, target: &str) {
    let name: String = target
        .rsplit('/')
        .find(|c| !c.is_empty())
        .unwrap_or("data")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' })
        .collect();
    let name = if is_profile_name(&name) { name } else { "data".to_string() };
    ctx.diags.push(
        Diagnostic::error(
            "anonymous-volume",
            Some(span),
            path,
            format!(
                "`{target}` alone is an anonymous volume: its content would be lost whenever an instance is replaced"
            ),
        )
        .with_hint(format!("name it: declare `{name}: {{}}` under the stack's `volumes:` and write `{name}:{target}`")),
    );
}

fn tmpfs(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Vec<(String, Span)> {
    let list = ctx.string_list(node, path, scope);
    list.into_iter()
        .filter(|(entry, span)| {
            let target = entry.split_once(':').map_or(entry.as_str(), |(t, _)| t);
            if target.starts_with('/') {
                return true;
            }
            ctx.diags.push(
                Diagnostic::error(
                    "invalid-value",
                    Some(*span),
                    path,
                    format!("the tmpfs path `{target}` is not absolute"),
                )
                .with_hint("write a path inside the container, such as `/run` or `/tmp:size=64m`"),
            );
            false
        })
        .collect()
}

/// Two mounts on one path of the container: the engine refuses to start it.
fn duplicate_targets(ctx: &mut Ctx, f: &Fields, volumes: &[(VolumeMount, Span, String)], tmpfs: &[(String, Span)]) {
    let mounts = volumes.iter().map(|(m, span, path)| {
        let target = match m {
            VolumeMount::Named { target, .. } | VolumeMount::Bind { target, .. } => target.as_str(),
        };
        (target, *span, path.clone())
    });
    let tmpfs_path = f.path("tmpfs");
    let tmpfs =
        tmpfs.iter().map(|(t, span)| (t.split_once(':').map_or(t.as_str(), |(t, _)| t), *span, tmpfs_path.clone()));
    let mut seen: Vec<PathBuf> = Vec::new();
    for (target, span, path) in mounts.chain(tmpfs) {
        let key = normalize(Path::new(target));
        if seen.contains(&key) {
            ctx.diags.push(
                Diagnostic::error(
                    "duplicate-mount",
                    Some(span),
                    path,
                    format!("`{target}` is mounted twice in this service"),
                )
                .with_hint("each path in the container takes one volume or tmpfs"),
            );
        } else {
            seen.push(key);
        }
    }
}

fn capabilities(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Vec<String> {
    let list = ctx.string_list(node, path, scope);
    for (cap, span) in &list {
        let name = cap.strip_prefix("CAP_").unwrap_or(cap);
        let upper = name.to_ascii_uppercase();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            let mut d = Diagnostic::error(
                "invalid-value",
                Some(*span),
                path,
                format!("`{cap}` is not a capability name: capabilities are written in upper case, like `NET_ADMIN`"),
            );
            if CAPABILITIES.contains(&upper.as_str()) {
                d = d.with_hint(format!("did you mean `{upper}`?"));
            }
            ctx.diags.push(d);
        } else if !CAPABILITIES.contains(&name) {
            let mut d = Diagnostic::warning(
                "unknown-capability",
                Some(*span),
                path,
                format!("`{cap}` is not a Linux capability tug knows"),
            );
            if let Some(s) = suggest(name, CAPABILITIES.iter().copied()) {
                d = d.with_hint(format!("did you mean `{s}`?"));
            }
            ctx.diags.push(d);
        }
    }
    list.into_iter().map(|(c, _)| c).collect()
}

fn security_options(ctx: &mut Ctx, node: &Node, path: &str, scope: &Scope) -> Vec<String> {
    let list = ctx.string_list(node, path, scope);
    for (option, span) in &list {
        let key = option.split([':', '=']).next().unwrap_or_default();
        if !SECURITY_OPTIONS.contains(&key) {
            let mut d = Diagnostic::warning(
                "unknown-security-opt",
                Some(*span),
                path,
                format!("`{key}` is not a security option Docker or Podman knows"),
            );
            d = match suggest(key, SECURITY_OPTIONS.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("known options: {}", SECURITY_OPTIONS.join(", "))),
            };
            ctx.diags.push(d);
        }
    }
    list.into_iter().map(|(o, _)| o).collect()
}

/// `engine:`: the engine's Unix socket, `unix:///path` or an absolute path.
pub fn engine(ctx: &mut Ctx, node: &Node, scope: &Scope) -> Option<String> {
    let engine = ctx.string(node, "engine", scope)?;
    let socket = engine.strip_prefix("unix://").unwrap_or(&engine);
    if socket.starts_with('/') {
        return Some(engine);
    }
    let d = match engine.split_once("://") {
        Some((scheme, _)) => Diagnostic::error(
            "invalid-value",
            Some(node.span),
            "engine",
            format!("tug talks to the engine over a Unix socket; `{scheme}://` is not one"),
        )
        .with_hint(
            "for a remote engine, forward its socket (`ssh -nNT -L /tmp/docker.sock:/var/run/docker.sock HOST`) and write `engine: unix:///tmp/docker.sock`",
        ),
        None => Diagnostic::error(
            "invalid-value",
            Some(node.span),
            "engine",
            format!("`{engine}` is not an engine socket"),
        )
        .with_hint("write `unix:///var/run/docker.sock`, or the socket's absolute path"),
    };
    ctx.diags.push(d);
    None
}

/// The stack's named volumes, with where each is declared.
pub fn volumes(ctx: &mut Ctx, node: &Node, scope: &Scope) -> IndexMap<String, (Volume, Span)> {
    let mut out = IndexMap::new();
    let Kind::Map(entries) = &node.kind else {
        if !node.is_null() {
            ctx.type_error(node, "volumes", "a mapping of volume names (`pgdata: {}`)");
        }
        return out;
    };
    for (key, value) in entries {
        let name = key.key_text().unwrap_or_default();
        if name.starts_with("x-") {
            continue;
        }
        let path = join("volumes", name);
        if !is_profile_name(name) {
            ctx.error(
                "invalid-name",
                key.span,
                &path,
                format!("`{name}` is not a valid volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            );
            continue;
        }
        let mut volume = Volume::default();
        match &value.kind {
            Kind::Null => {}
            Kind::Map(_) => {
                if let Some(f) = ctx.fields(value, &path, VOLUME_FIELDS)
                    && let Some(n) = f.get("external")
                {
                    volume.external = ctx.bool(n, &f.path("external"), scope).unwrap_or(false);
                }
            }
            _ => ctx.type_error(value, &path, "a mapping (`{}`, or `{ external: true }`)"),
        }
        out.insert(name.to_string(), (volume, key.span));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_field_is_a_service_field() {
        // The decoder's list (and so the schema's) must know each one it checks for.
        for field in CONTAINER_FIELDS.iter().chain(&["image", "build"]) {
            assert!(crate::service::SERVICE_FIELDS.contains(field), "{field} is not in SERVICE_FIELDS");
        }
    }

    #[test]
    fn short_volume_syntax() {
        let ok = |text| parse_short_mount(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            ok("pgdata:/var/lib/postgresql/data"),
            ShortMount { source: Some("pgdata"), target: "/var/lib/postgresql/data", read_only: false }
        );
        assert_eq!(
            ok("./initdb:/docker-entrypoint-initdb.d:ro"),
            ShortMount { source: Some("./initdb"), target: "/docker-entrypoint-initdb.d", read_only: true }
        );
        assert_eq!(
            ok("~/cache:/cache:rw,cached"),
            ShortMount { source: Some("~/cache"), target: "/cache", read_only: false }
        );
        assert_eq!(ok("/data"), ShortMount { source: None, target: "/data", read_only: false }, "an anonymous volume");
        for bad in ["", ":/data", "a:", "a:/b:ro:x", "a:/b:z", "a:/b:ro,rw", "a:/b:"] {
            assert!(parse_short_mount(bad).is_err(), "{bad}");
        }
        assert!(is_path("./x") && is_path("/x") && is_path("~/x") && is_path("../x") && !is_path("pgdata"));
    }

    #[test]
    fn image_references() {
        for good in [
            "postgres",
            "postgres:15",
            "library/postgres:15-alpine",
            "ghcr.io/acme/api:1.2",
            "localhost:5000/api",
            "registry.example.com:443/team/app_name__x:v1.0",
            "redis@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "demo-api",
        ] {
            assert!(IMAGE_REFERENCE.is_match(good), "{good}");
        }
        for bad in ["", "Postgres", "postgres:", "postgres 15", "api:-x", "a//b", "api@sha256:12", "-api"] {
            assert!(!IMAGE_REFERENCE.is_match(bad), "{bad}");
        }
    }
}
