//! Checks across services: dependencies and their conditions, cycles, ports,
//! secrets, profiles, and commands that are not on this machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::diag::{Diagnostic, Diagnostics, Span};
use crate::model::{Balance, Check, Command, Condition, Probe, Service, ServiceKind, Setting, Strategy, Text};
use crate::read::suggest;
use crate::service::Spans;

pub struct Checked<'a> {
    pub services: &'a IndexMap<String, (Service, Spans)>,
    pub shared: &'a IndexMap<String, Setting>,
    pub active: &'a dyn Fn(&Service) -> bool,
}

pub fn check(diags: &mut Diagnostics, c: &Checked, path_var: Option<&str>) {
    // Many services run the same programs: look each one up on PATH once.
    let mut on_path: HashMap<String, bool> = HashMap::new();
    for (name, (service, spans)) in c.services {
        let path = format!("services.{name}");
        dependencies(diags, c, name, service, spans, &path);
        secrets(diags, c, spans, &path);
        if service.balance == Balance::TenantHash && service.tenant_header.is_none() {
            diags.push(
                Diagnostic::error(
                    "missing-field",
                    Some(service.span),
                    &path,
                    "`balance: tenant_hash` needs a `tenant_header`",
                )
                .with_hint("name the header that carries the tenant: `tenant_header: x-tenant-id`"),
            );
        }
        if service.balance != Balance::TenantHash
            && let Some(span) = spans.tenant_header
        {
            diags.push(Diagnostic::warning(
                "unused-field",
                Some(span),
                format!("{path}.tenant_header"),
                "`tenant_header` is only used with `balance: tenant_hash`",
            ));
        }
        if service.kind == ServiceKind::Job
            && let Some(span) = spans.port
        {
            diags.push(Diagnostic::warning(
                "job-port",
                Some(span),
                format!("{path}.port"),
                "a job runs to completion: nothing will be routed to its port",
            ));
        }
        deploy_needs(diags, service, &path);
        deploy_hooks(diags, c, name, service, spans, &path);
        if let Some(autoscale) = &service.autoscale
            && autoscale.min <= autoscale.max
            && (service.replicas < autoscale.min || service.replicas > autoscale.max)
        {
            diags.push(Diagnostic::warning(
                "replicas-outside-autoscale",
                Some(service.span),
                format!("{path}.replicas"),
                format!(
                    "`replicas: {}` is outside autoscale's {}..{}: the autoscaler will move it into range",
                    service.replicas, autoscale.min, autoscale.max
                ),
            ));
        }
        // An image's working_dir is a folder inside the container.
        if spans.working_dir.is_some() && !spans.runs_image && !service.working_dir.is_dir() {
            diags.push(Diagnostic::warning(
                "missing-directory",
                spans.working_dir,
                format!("{path}.working_dir"),
                format!("`{}` is not a folder on this machine", service.working_dir.display()),
            ));
        }
        // An image's programs are in the image, not on this machine.
        if let Some(path_var) = path_var
            && (c.active)(service)
            && !spans.runs_image
        {
            commands(diags, service, spans, &path, path_var, &mut on_path);
        }
    }
    cycles(diags, c);
    ports(diags, c);
}

/// `deploy.before` names jobs of this stack (not the service itself), and `deploy.smoke`'s
/// http or tcp check has a port to check.
fn deploy_hooks(diags: &mut Diagnostics, c: &Checked, name: &str, service: &Service, spans: &Spans, path: &str) {
    let before_path = format!("{path}.deploy.before");
    for (job, span) in &spans.before {
        let Some((target, _)) = c.services.get(job) else {
            let mut d = Diagnostic::error(
                "unknown-job",
                Some(*span),
                &before_path,
                format!("`{name}` runs `{job}` before each deploy, but there is no job named `{job}`"),
            );
            if let Some(s) = suggest(job, c.services.keys().map(String::as_str)) {
                d = d.with_hint(format!("did you mean `{s}`?"));
            }
            diags.push(d);
            continue;
        };
        if target.kind != ServiceKind::Job || job == name {
            diags.push(
                Diagnostic::error(
                    "not-a-job",
                    Some(*span),
                    &before_path,
                    format!("`{job}` is a long-running service: only a job runs to completion before a deploy"),
                )
                .with_hint(format!("declare `{job}` with `kind: job`")),
            );
        } else if (c.active)(service) && !(c.active)(target) {
            diags.push(
                Diagnostic::error(
                    "inactive-job",
                    Some(*span),
                    &before_path,
                    format!("`{job}` runs before each deploy of `{name}`, but its profile is not active"),
                )
                .with_hint(format!("activate a profile of `{job}`, or remove it from `deploy.before`")),
            );
        }
    }
    if let Some(smoke) = &service.deploy.smoke
        && service.port.is_none()
        && matches!(smoke.check, Check::Http(_) | Check::Tcp)
    {
        diags.push(
            Diagnostic::error(
                "smoke-without-port",
                Some(service.span),
                format!("{path}.deploy.smoke"),
                format!("`{name}` has no port for its smoke check to reach"),
            )
            .with_hint("give the service a `port`, or check it with `exec`"),
        );
    }
}

fn dependencies(diags: &mut Diagnostics, c: &Checked, name: &str, service: &Service, spans: &Spans, path: &str) {
    for dep in &spans.dependencies {
        let dep_path = format!("{path}.depends_on.{}", dep.name);
        let Some((target, _)) = c.services.get(&dep.name) else {
            let mut d = Diagnostic::error(
                "unknown-dependency",
                Some(dep.span),
                dep_path,
                format!("`{name}` depends on `{}`, which is not a service", dep.name),
            );
            if let Some(s) = suggest(&dep.name, c.services.keys().map(String::as_str)) {
                d = d.with_hint(format!("did you mean `{s}`?"));
            }
            diags.push(d);
            continue;
        };
        if (c.active)(service) && !(c.active)(target) && dep.required {
            diags.push(
                Diagnostic::error(
                    "inactive-dependency",
                    Some(dep.span),
                    &dep_path,
                    format!(
                        "`{name}` depends on `{}`, whose profiles ({}) are not active",
                        dep.name,
                        target.profiles.join(", ")
                    ),
                )
                .with_hint(format!(
                    "activate a profile with `--profile {}`, or mark the dependency `required: false`",
                    target.profiles[0]
                )),
            );
        }
        match dep.condition {
            Condition::Healthy if target.healthcheck.is_none() => diags.push(
                Diagnostic::error(
                    "condition-without-healthcheck",
                    Some(dep.span),
                    &dep_path,
                    format!("`{name}` waits for `{}` to be healthy, but `{}` has no healthcheck", dep.name, dep.name),
                )
                .with_hint(format!("add a `healthcheck` to `{}`, or wait for `started`", dep.name)),
            ),
            Condition::CompletedSuccessfully if target.kind != ServiceKind::Job => diags.push(
                Diagnostic::error(
                    "condition-not-a-job",
                    Some(dep.span),
                    &dep_path,
                    format!(
                        "`{name}` waits for `{}` to complete, but `{}` is a long-running service, not a job",
                        dep.name, dep.name
                    ),
                )
                .with_hint(format!("declare `{}` with `kind: job`, or wait for `healthy` or `started`", dep.name)),
            ),
            _ => {}
        }
        // `<DEP>_ADDR` exists only for a dependency with a port.
        if target.port.is_none() {
            let variable = crate::read::address_variable(&dep.name);
            if uses_instance_variable(service, &variable) {
                diags.push(
                    Diagnostic::error(
                        "unknown-variable",
                        Some(dep.span),
                        &dep_path,
                        format!("`{name}` uses `{variable}`, but `{}` has no `port`, so it has no address", dep.name),
                    )
                    .with_hint(format!("give `{}` a `port`, or stop using `{variable}`", dep.name)),
                );
            }
        }
    }
}

/// Whether one of the service's per-instance values (command, entrypoint, environment, probes) refers to
/// the instance variable `name`.
fn uses_instance_variable(service: &Service, name: &str) -> bool {
    // Deferred references are kept written as `${NAME}` (see `interp`), whatever the form used.
    let reference = format!("${{{name}}}");
    let refers = |t: &Text| t.template && t.expose().contains(&reference);
    let in_command = |c: &Command| match c {
        Command::Argv(args) => args.iter().any(refers),
        Command::Shell(text) => refers(text),
    };
    let in_probe = |p: &Option<Probe>| match p.as_ref().map(|p| &p.check) {
        Some(Check::Http(path)) => refers(path),
        Some(Check::Exec(command)) => in_command(command),
        _ => false,
    };
    let in_entrypoint =
        service.container.as_ref().and_then(|c| c.entrypoint.as_ref()).is_some_and(|e| e.iter().any(refers));
    service.command.as_ref().is_some_and(in_command)
        || in_entrypoint
        || service.environment.values().any(refers)
        || in_probe(&service.healthcheck)
        || in_probe(&service.liveness)
}

fn secrets(diags: &mut Diagnostics, c: &Checked, spans: &Spans, path: &str) {
    for (secret, span) in &spans.secrets {
        match c.shared.get(secret) {
            Some(setting) if crate::read::is_sensitive(setting) => {}
            Some(_) => diags.push(
                Diagnostic::error(
                    "not-a-secret",
                    Some(*span),
                    format!("{path}.secrets"),
                    format!("`{secret}` is not secret"),
                )
                .with_hint(
                    "every setting that is neither a secret nor derived from one is delivered to every service already",
                ),
            ),
            None => {
                let secret_names =
                    c.shared.iter().filter(|(_, s)| crate::read::is_sensitive(s)).map(|(n, _)| n.as_str());
                let mut d = Diagnostic::error(
                    "unknown-secret",
                    Some(*span),
                    format!("{path}.secrets"),
                    format!("secret `{secret}` is not defined"),
                );
                d = match suggest(secret, secret_names) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None => d.with_hint("define it under `settings:` with `type: secret`"),
                };
                diags.push(d);
            }
        }
    }
}

/// Reports each dependency cycle once, naming every service on it in order.
fn cycles(diags: &mut Diagnostics, c: &Checked) {
    let names: Vec<&str> = c.services.keys().map(String::as_str).collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let edges: Vec<Vec<(usize, Span)>> = c
        .services
        .values()
        .map(|(_, spans)| {
            spans.dependencies.iter().filter_map(|d| index.get(d.name.as_str()).map(|&i| (i, d.span))).collect()
        })
        .collect();
    let found = find_cycles(&edges);
    let mut reported: Vec<Vec<usize>> = Vec::new();
    for (cycle, span) in found {
        let mut key = cycle.clone();
        key.sort_unstable();
        if reported.contains(&key) {
            continue;
        }
        reported.push(key);
        let mut chain: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
        chain.push(names[cycle[0]]);
        let last = names[*cycle.last().unwrap_or(&cycle[0])];
        diags.push(
            Diagnostic::error(
                "dependency-cycle",
                Some(span),
                format!("services.{last}.depends_on.{}", names[cycle[0]]),
                format!("dependency cycle: {}", chain.join(" → ")),
            )
            .with_hint("remove one of these dependencies: services on a cycle could never start"),
        );
    }
}

/// Each back edge of a depth-first search closes a cycle: the path from its target to
/// here. Iterative, so that a long dependency chain cannot exhaust the stack.
fn find_cycles(edges: &[Vec<(usize, Span)>]) -> Vec<(Vec<usize>, Span)> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        OnPath,
        Done,
    }
    let mut state = vec![State::New; edges.len()];
    let mut found = Vec::new();
    for start in 0..edges.len() {
        if state[start] != State::New {
            continue;
        }
        // The current path, each with the index of its next edge to follow.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = State::OnPath;
        while let Some(&mut (v, ref mut next)) = path.last_mut() {
            let Some(&(w, span)) = edges[v].get(*next) else {
                state[v] = State::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match state[w] {
                State::New => {
                    state[w] = State::OnPath;
                    path.push((w, 0));
                }
                State::OnPath => {
                    let from = path.iter().position(|&(x, _)| x == w).unwrap_or(0);
                    found.push((path[from..].iter().map(|&(x, _)| x).collect(), span));
                }
                State::Done => {}
            }
        }
    }
    found
}

/// What a strategy needs from the rest of the service: a canary or blue-green deploy steers
/// tug's router, and an instance that binds its fixed port itself cannot run beside its
/// replacement. The daemon falls back (to rolling, to recreate) and says so; `check` says it first.
fn deploy_needs(diags: &mut Diagnostics, service: &Service, path: &str) {
    if service.kind == ServiceKind::Job {
        return;
    }
    let strategy = service.deploy.strategy;
    // The default (rolling) on a `proxy: false` port is recreated silently, as documented: a
    // warning on every such service would be noise. A strategy asked for by name is not.
    if !matches!(strategy, Strategy::Canary | Strategy::BlueGreen) || (service.port.is_some() && service.proxy) {
        return;
    }
    let problem = if service.port.is_some() {
        Some(format!(
            "`{}` steers tug's router, but with `proxy: false` the instance binds its port itself: it will be recreated (stop, then start)",
            strategy.as_str()
        ))
    } else {
        Some(format!(
            "`{}` steers tug's router, which fronts only a service with a `port`: it will be rolled out as `rolling`",
            strategy.as_str()
        ))
    };
    if let Some(message) = problem {
        diags.push(
            Diagnostic::warning("strategy-fallback", Some(service.span), format!("{path}.deploy.strategy"), message)
                .with_hint("give the service a `port` (routed), or choose `strategy: rolling` or `recreate`"),
        );
    }
}

fn ports(diags: &mut Diagnostics, c: &Checked) {
    let mut taken: HashMap<u16, (&str, &str)> = HashMap::new();
    // Services of inactive profiles never run beside the active ones.
    for (name, (service, spans)) in c.services.iter().filter(|(_, (s, _))| (c.active)(s)) {
        let ports = [
            (service.port, spans.port, "port"),
            (service.deploy.preview_port, spans.preview_port, "deploy.preview_port"),
        ];
        for (port, span, field) in ports {
            let (Some(port), Some(span)) = (port, span) else {
                continue;
            };
            match taken.get(&port) {
                Some((other, other_field)) => diags.push(
                    Diagnostic::error(
                        "port-conflict",
                        Some(span),
                        format!("services.{name}.{field}"),
                        format!("port {port} is already used by `{other}` ({other_field})"),
                    )
                    .with_hint(
                        "each service needs its own port; instances of one service share it through tug's router",
                    ),
                ),
                None => {
                    taken.insert(port, (name, field));
                }
            }
        }
    }
}

const SHELL_BUILTINS: &[&str] = &[
    ".", ":", "[", "alias", "cd", "command", "eval", "exec", "exit", "export", "false", "for", "if", "read", "set",
    "source", "test", "trap", "true", "ulimit", "umask", "unset", "wait", "while", "until", "case", "echo", "printf",
    "sleep", "{", "(",
];

/// A command not found on this machine is a warning: the stack may be checked on one machine and run on another.
fn commands(
    diags: &mut Diagnostics,
    service: &Service,
    spans: &Spans,
    path: &str,
    path_var: &str,
    on_path: &mut HashMap<String, bool>,
) {
    let mut check = |command: &Command, field: &str, span: Option<Span>| {
        let Some(program) = program(command) else {
            return;
        };
        let exists = if program.contains('/') {
            found(&program, &service.working_dir, path_var)
        } else {
            *on_path.entry(program.clone()).or_insert_with(|| found(&program, &service.working_dir, path_var))
        };
        if !exists {
            diags.push(
                Diagnostic::warning("command-not-found", span, format!("{path}.{field}"), format!("`{program}` is not found on this machine"))
                    .with_hint("install it, or check the name; this is only a warning because the stack may run on another machine"),
            );
        }
    };
    if let Some(command) = &service.command {
        check(command, "command", spans.command.or(Some(service.span)));
    }
}

/// The program a command runs, when it can be known without running anything.
fn program(command: &Command) -> Option<String> {
    // A program named by a secret is not looked up: a warning would have to show it.
    let first = match command {
        Command::Argv(argv) => argv.first().filter(|p| !p.sensitive)?.expose().to_string(),
        Command::Shell(line) if line.sensitive => return None,
        Command::Shell(line) => {
            let mut words = line.expose().split_whitespace().skip_while(|w| w.contains('=') && !w.starts_with('='));
            let mut word = words.next()?;
            if word == "exec" {
                word = words.next()?;
            }
            word.to_string()
        }
    };
    let shell_line = matches!(command, Command::Shell(_));
    if first.is_empty()
        || first.contains('$')
        || (shell_line
            && (SHELL_BUILTINS.contains(&first.as_str())
                || first.contains(['(', '`', '"', '\'', ';', '|', '&', '<', '>'])))
    {
        return None;
    }
    Some(first)
}

fn found(program: &str, working_dir: &Path, path_var: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: PathBuf| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if program.contains('/') {
        return executable(working_dir.join(program));
    }
    path_var.split(':').filter(|d| !d.is_empty()).any(|dir| executable(Path::new(dir).join(program)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> Span {
        Span { file: 0, line: 1, col: 1 }
    }

    #[test]
    fn cycles_are_found_in_order() {
        // 0 → 1 → 2 → 0, and 3 → 3.
        let edges = vec![vec![(1, span())], vec![(2, span())], vec![(0, span())], vec![(3, span())]];
        let cycles: Vec<Vec<usize>> = find_cycles(&edges).into_iter().map(|(c, _)| c).collect();
        assert_eq!(cycles, vec![vec![0, 1, 2], vec![3]]);
    }

    #[test]
    fn a_long_chain_does_not_exhaust_the_stack() {
        let n = 200_000;
        let edges: Vec<Vec<(usize, Span)>> =
            (0..n).map(|i| if i + 1 < n { vec![(i + 1, span())] } else { vec![] }).collect();
        assert!(find_cycles(&edges).is_empty());
        let mut looped = edges;
        looped[n - 1].push((0, span()));
        assert_eq!(find_cycles(&looped)[0].0.len(), n);
    }
}
