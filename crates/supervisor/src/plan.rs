//! The deploy plan, as data: from what the daemon runs and the stack it is given, what
//! happens to each service and why. Pure: `apply` executes exactly what [`plan`] returns, and
//! `tug deploy --plan` shows it without acting.

use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value as Json;
use tug_proto::plan::{Action, Change, Plan, ServicePlan};
use tug_proto::spec::{Kind, ServiceSpec, Strategy};

use crate::order;

/// What the daemon has for one service.
#[derive(Clone, Debug)]
pub struct Running {
    pub spec: Arc<ServiceSpec>,
    /// The revision a rollout under way started from.
    pub stable: Option<Arc<ServiceSpec>>,
    /// Started by an `up` (not stopped by `tug stop`).
    pub active: bool,
    /// Has an instance with a process.
    pub runs: bool,
    pub rolling_out: bool,
}

/// The daemon's services; empty when nothing runs yet.
pub type Current = IndexMap<String, Running>;

/// What `up` (with `targets`: those and what they need) does with `new`.
pub fn plan(current: &Current, new: &IndexMap<String, Arc<ServiceSpec>>, targets: &[String]) -> Plan {
    let wanted = order::closure(new, targets);
    let all: Vec<String> = new.keys().cloned().collect();
    let mut services: Vec<ServicePlan> = order::dependencies_first(new, &all)
        .iter()
        .map(|name| service(current.get(name), &new[name], &wanted))
        .collect();
    if targets.is_empty() {
        for (name, running) in current.iter().filter(|(n, _)| !new.contains_key(*n)) {
            services.push(ServicePlan {
                name: name.clone(),
                kind: running.spec.kind,
                action: Action::Remove,
                changes: Vec::new(),
                strategy: None,
                note: None,
                from_revision: Some(running.spec.revision.clone()),
                to_revision: None,
            });
        }
    }
    Plan { services }
}

fn service(running: Option<&Running>, new: &Arc<ServiceSpec>, wanted: &[String]) -> ServicePlan {
    let name = &new.name;
    let is_wanted = wanted.contains(name);
    let mut plan = ServicePlan {
        name: name.clone(),
        kind: new.kind,
        action: Action::Unchanged,
        changes: Vec::new(),
        strategy: None,
        note: None,
        from_revision: running.map(|r| r.spec.revision.clone()),
        to_revision: Some(new.revision.clone()),
    };
    let Some(running) = running else {
        plan.action = if is_wanted { Action::Start } else { Action::NotStarted };
        return plan;
    };
    if running.spec.revision == new.revision {
        plan.changes = changes(&running.spec, new);
        // `up` goes back to the file's count (as Compose does); an autoscaled service keeps
        // its count within its bounds.
        let replicas = replicas_for(new, Some(running.spec.replicas));
        plan.changes.retain(|c| c.field != "replicas");
        if running.spec.replicas != replicas && is_wanted && !running.rolling_out {
            plan.changes.push(Change {
                field: "replicas".into(),
                from: Some(running.spec.replicas.to_string()),
                to: Some(replicas.to_string()),
            });
            plan.action = Action::Rescale;
        } else if !plan.changes.is_empty() {
            plan.action = Action::Reconfigure;
        } else if new.kind == Kind::Job {
            plan.note = Some("its revision did not change: it does not run again".into());
        }
        return plan;
    }
    let stable = running.stable.clone().unwrap_or_else(|| running.spec.clone());
    plan.from_revision = Some(stable.revision.clone());
    plan.changes = changes(&stable, new);
    if !is_wanted {
        plan.action = Action::Keep;
        plan.note = Some("not started by this request: the running revision is kept".into());
        return plan;
    }
    let replicas = replicas_for(new, Some(stable.replicas));
    if new.kind == Kind::Service && running.active && running.runs && replicas > 0 {
        let (strategy, note) = effective_strategy(new);
        plan.action = Action::RollOut;
        plan.strategy = Some(strategy);
        plan.note = note;
        if running.rolling_out {
            plan.note = Some(match plan.note {
                Some(note) => format!("{note}; the rollout under way winds down first"),
                None => "the rollout under way winds down first".into(),
            });
        }
        if !new.deploy.before.is_empty() {
            let jobs: Vec<String> = new.deploy.before.iter().map(|j| format!("`{j}`")).collect();
            let first = format!("runs {} first (deploy.before)", jobs.join(", "));
            plan.note = Some(match plan.note {
                Some(note) => format!("{note}; {first}"),
                None => first,
            });
        }
    } else if running.rolling_out {
        plan.action = Action::Keep;
        plan.note = Some("a rollout of it is under way and nothing of it runs: wait for it to end".into());
    } else {
        plan.action = Action::Replace;
        if new.kind == Kind::Job {
            plan.note = Some("its revision changed: it runs again".into());
        }
    }
    plan
}

/// [`plan`] for a whole stack as the API sends it.
pub fn plan_stack(current: &Current, spec: &tug_proto::spec::StackSpec, targets: &[String]) -> Plan {
    let new: IndexMap<String, Arc<ServiceSpec>> =
        spec.services.iter().map(|s| (s.name.clone(), Arc::new(s.clone()))).collect();
    plan(current, &new, targets)
}

pub fn replicas_for(spec: &ServiceSpec, current: Option<u32>) -> u32 {
    match &spec.autoscale {
        Some(a) => current.unwrap_or(spec.replicas).clamp(a.min, a.max.max(a.min)),
        None => spec.replicas,
    }
}

/// The strategy a service can have: a canary or blue-green deploy needs the router in front
/// of it, and an instance that binds its fixed port itself cannot run beside its replacement.
pub fn effective_strategy(spec: &ServiceSpec) -> (Strategy, Option<String>) {
    let strategy = spec.deploy.strategy;
    if spec.port.is_some() && !spec.proxy && strategy != Strategy::Recreate {
        let why = "its instance binds its fixed port itself (proxy: false), so it is recreated";
        return (Strategy::Recreate, Some(why.into()));
    }
    if matches!(strategy, Strategy::Canary | Strategy::BlueGreen) && !(spec.port.is_some() && spec.proxy) {
        let why = format!("{} needs the router (a `port`): rolled out as rolling", strategy.as_str());
        return (Strategy::Rolling, Some(why));
    }
    (strategy, None)
}

/// Shown in place of a sensitive value.
const MASK: &str = "********";
/// A value longer than this is cut in a plan.
const SHOWN: usize = 80;

/// Every field that differs between two revisions of a service, the way a user names it:
/// `environment.LOG_LEVEL`, `image`, `source`, `healthcheck.interval_ms`. A sensitive value
/// is never shown.
pub fn changes(old: &ServiceSpec, new: &ServiceSpec) -> Vec<Change> {
    let mut out = Vec::new();
    environment(&old.environment, &new.environment, &mut out);
    if old.container.as_ref().map(|c| (&c.image, &c.image_id))
        != new.container.as_ref().map(|c| (&c.image, &c.image_id))
    {
        let shown = |c: &Option<tug_proto::spec::ContainerSpec>| {
            c.as_ref().map(|c| match c.image_id.strip_prefix("sha256:") {
                Some(id) => format!("{} ({})", c.image, &id[..id.len().min(12)]),
                None if c.image_id.is_empty() => format!("{} (not on the engine yet)", c.image),
                None => format!("{} ({})", c.image, c.image_id),
            })
        };
        out.push(Change { field: "image".into(), from: shown(&old.container), to: shown(&new.container) });
    }
    if old.source.as_ref().map(|s| &s.digest) != new.source.as_ref().map(|s| &s.digest) {
        let shown = |s: &Option<tug_proto::spec::SourceSpec>| {
            s.as_ref().map(|s| format!("{} ({})", s.path.display(), &s.digest[..s.digest.len().min(12)]))
        };
        out.push(Change { field: "source".into(), from: shown(&old.source), to: shown(&new.source) });
    }
    let (old_json, new_json) = (to_json(old), to_json(new));
    let skip = ["name", "revision", "environment", "source", "working_dir"];
    let (Json::Object(a), Json::Object(b)) = (&old_json, &new_json) else { return out };
    let mut keys: Vec<&String> = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))).collect();
    keys.retain(|k| !skip.contains(&k.as_str()));
    for key in keys {
        diff(key, a.get(key.as_str()), b.get(key.as_str()), 0, &mut out);
    }
    // A working folder inside the source copy moves with every edit: only a real move counts.
    if old.source.is_none() && new.source.is_none() && old.working_dir != new.working_dir {
        out.push(Change {
            field: "working_dir".into(),
            from: Some(old.working_dir.display().to_string()),
            to: Some(new.working_dir.display().to_string()),
        });
    }
    out
}

fn environment(
    old: &[(String, tug_proto::spec::Value)],
    new: &[(String, tug_proto::spec::Value)],
    out: &mut Vec<Change>,
) {
    let shown = |v: &tug_proto::spec::Value| if v.sensitive { MASK.to_string() } else { cut(&v.value) };
    let find = |list: &[(String, tug_proto::spec::Value)], name: &str| {
        list.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };
    let mut names: Vec<&String> = old.iter().map(|(n, _)| n).collect();
    names.extend(new.iter().map(|(n, _)| n));
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            continue;
        }
        let (a, b) = (find(old, name), find(new, name));
        if a != b {
            out.push(Change {
                field: format!("environment.{name}"),
                from: a.as_ref().map(shown),
                to: b.as_ref().map(shown),
            });
        }
    }
}

fn to_json(spec: &ServiceSpec) -> Json {
    let mut json = serde_json::to_value(spec).unwrap_or(Json::Null);
    if let Some(container) = json.get_mut("container").and_then(Json::as_object_mut) {
        // Shown once, as `image`.
        container.remove("image");
        container.remove("image_id");
        container.remove("image_user");
    }
    json
}

/// Fields that are records of settings, compared setting by setting (`deploy.strategy`);
/// everything else is compared as a whole.
const RECORDS: &[&str] = &["route", "deploy", "autoscale", "healthcheck", "liveness", "container"];

fn diff(field: &str, a: Option<&Json>, b: Option<&Json>, depth: usize, out: &mut Vec<Change>) {
    if a == b {
        return;
    }
    if let (Some(Json::Object(x)), Some(Json::Object(y))) = (a, b)
        && depth < 1
        && RECORDS.contains(&field)
    {
        let mut keys: Vec<&String> = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))).collect();
        keys.dedup();
        for key in keys {
            diff(&format!("{field}.{key}"), x.get(key.as_str()), y.get(key.as_str()), depth + 1, out);
        }
        return;
    }
    out.push(Change { field: field.to_string(), from: a.map(render), to: b.map(render) });
}

/// A `Value` (`{value, sensitive, template}`) of the spec.
fn is_value(map: &serde_json::Map<String, Json>) -> bool {
    map.contains_key("value") && map.keys().all(|k| matches!(k.as_str(), "value" | "sensitive" | "template"))
}

/// Compact text for a plan: `Value`s as their text (masked when sensitive), the rest as JSON.
fn render(json: &Json) -> String {
    fn plain(json: &Json) -> Json {
        match json {
            Json::Object(map) if is_value(map) => {
                if map.get("sensitive") == Some(&Json::Bool(true)) {
                    Json::String(MASK.into())
                } else {
                    map.get("value").cloned().unwrap_or(Json::Null)
                }
            }
            Json::Object(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), plain(v))).collect()),
            Json::Array(items) => Json::Array(items.iter().map(plain).collect()),
            other => other.clone(),
        }
    }
    // A command is `{"shell": TEXT}` or `{"argv": [...]}`: shown as the text or the list.
    let json = match json {
        Json::Object(map) if map.len() == 1 && (map.contains_key("shell") || map.contains_key("argv")) => {
            map.values().next().unwrap_or(json)
        }
        other => other,
    };
    let text = match plain(json) {
        Json::String(s) => s,
        other => other.to_string(),
    };
    cut(&text)
}

fn cut(text: &str) -> String {
    if text.chars().count() <= SHOWN {
        return text.to_string();
    }
    let mut out: String = text.chars().take(SHOWN - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_proto::spec::{CommandSpec, ContainerSpec, Value};

    fn spec(name: &str) -> ServiceSpec {
        crate::tests::service(name, 1, 5)
    }

    fn with(mut s: ServiceSpec, change: impl FnOnce(&mut ServiceSpec)) -> ServiceSpec {
        change(&mut s);
        s.revision = s.compute_revision();
        s
    }

    fn running(s: &ServiceSpec) -> Running {
        Running { spec: Arc::new(s.clone()), stable: None, active: true, runs: true, rolling_out: false }
    }

    fn stack(specs: &[&ServiceSpec]) -> IndexMap<String, Arc<ServiceSpec>> {
        specs.iter().map(|s| (s.name.clone(), Arc::new((*s).clone()))).collect()
    }

    fn actions(plan: &Plan) -> Vec<(String, Action)> {
        plan.services.iter().map(|s| (s.name.clone(), s.action)).collect()
    }

    fn pairs(items: &[(&str, Action)]) -> Vec<(String, Action)> {
        items.iter().map(|(n, a)| (n.to_string(), *a)).collect()
    }

    #[test]
    fn a_first_up_starts_everything_in_dependency_order() {
        let db = spec("db");
        let web = with(spec("web"), |s| s.depends_on = vec![("db".into(), tug_proto::spec::Condition::Healthy)]);
        let first = plan(&Current::new(), &stack(&[&web, &db]), &[]);
        assert_eq!(actions(&first), pairs(&[("db", Action::Start), ("web", Action::Start)]));
        assert_eq!(
            plan(&Current::new(), &stack(&[&web, &db]), &["db".into()]).get("web").unwrap().action,
            Action::NotStarted
        );
    }

    #[test]
    fn an_unchanged_stack_changes_nothing() {
        let web = spec("web");
        let job = with(spec("migrate"), |s| s.kind = Kind::Job);
        let current: Current = [("web".into(), running(&web)), ("migrate".into(), running(&job))].into_iter().collect();
        let same = plan(&current, &stack(&[&web, &job]), &[]);
        assert!(!same.changes_anything(), "{same:#?}");
        assert_eq!(
            same.get("migrate").unwrap().note.as_deref(),
            Some("its revision did not change: it does not run again")
        );
    }

    #[test]
    fn a_new_revision_rolls_out_by_strategy_and_says_why() {
        let web = with(spec("web"), |s| {
            s.port = Some(8000);
            s.proxy = true;
            s.deploy.strategy = Strategy::Canary;
            s.environment = vec![
                ("LOG_LEVEL".into(), Value { value: "info".into(), sensitive: false, template: false }),
                ("TOKEN".into(), Value { value: "old-secret".into(), sensitive: true, template: false }),
            ];
        });
        let new = with(web.clone(), |s| {
            s.environment[0].1.value = "debug".into();
            s.environment[1].1.value = "new-secret".into();
        });
        let current: Current = [("web".into(), running(&web))].into_iter().collect();
        let rollout = plan(&current, &stack(&[&new]), &[]);
        let web_plan = rollout.get("web").unwrap();
        assert_eq!(web_plan.action, Action::RollOut);
        assert_eq!(web_plan.strategy, Some(Strategy::Canary));
        assert_eq!(web_plan.from_revision.as_deref(), Some(web.revision.as_str()));
        assert_eq!(web_plan.to_revision.as_deref(), Some(new.revision.as_str()));
        assert_eq!(
            web_plan.changes,
            vec![
                Change { field: "environment.LOG_LEVEL".into(), from: Some("info".into()), to: Some("debug".into()) },
                Change { field: "environment.TOKEN".into(), from: Some(MASK.into()), to: Some(MASK.into()) },
            ]
        );
        let text = serde_json::to_string(&rollout).unwrap();
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn a_rollout_with_before_jobs_says_they_run_first() {
        let web = with(spec("web"), |s| s.deploy.before = vec!["migrate".into(), "seed".into()]);
        let new = with(web.clone(), |s| s.command = Some(CommandSpec::Argv(vec![Value::plain("v2")])));
        let current: Current = [("web".into(), running(&web))].into_iter().collect();
        let web_plan = plan(&current, &stack(&[&new]), &[]).services.remove(0);
        assert_eq!(web_plan.action, Action::RollOut);
        assert_eq!(web_plan.note.as_deref(), Some("runs `migrate`, `seed` first (deploy.before)"));
        // Nothing rolls out: nothing runs first.
        let same = plan(&current, &stack(&[&web]), &[]).services.remove(0);
        assert_eq!((same.action, same.note), (Action::Unchanged, None));
    }

    #[test]
    fn strategies_the_service_cannot_have_are_replaced_with_a_reason() {
        let fixed = with(spec("db"), |s| {
            s.port = Some(5432);
            s.proxy = false;
        });
        let new = with(fixed.clone(), |s| s.command = Some(CommandSpec::Argv(vec![Value::plain("postgres")])));
        let current: Current = [("db".into(), running(&fixed))].into_iter().collect();
        let db = plan(&current, &stack(&[&new]), &[]).services.remove(0);
        assert_eq!((db.action, db.strategy), (Action::RollOut, Some(Strategy::Recreate)));
        assert!(db.note.unwrap().contains("proxy: false"));
        assert_eq!(db.changes[0].field, "command");
        assert_eq!(
            (db.changes[0].from.as_deref(), db.changes[0].to.as_deref()),
            (Some("true"), Some("[\"postgres\"]"))
        );
    }

    #[test]
    fn images_and_sources_are_named_by_digest() {
        let image = |id: &str| ContainerSpec {
            image: "shop-api:dev".into(),
            image_id: id.into(),
            image_user: String::new(),
            entrypoint: None,
            working_dir: None,
            mounts: Vec::new(),
            tmpfs: Vec::new(),
            read_only: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            security_opt: Vec::new(),
            init: false,
            container_port: None,
        };
        let old = with(spec("api"), |s| s.container = Some(image("sha256:aaaaaaaaaaaaaaaaaaaa")));
        let new = with(spec("api"), |s| s.container = Some(image("sha256:bbbbbbbbbbbbbbbbbbbb")));
        assert_eq!(
            changes(&old, &new),
            vec![Change {
                field: "image".into(),
                from: Some("shop-api:dev (aaaaaaaaaaaa)".into()),
                to: Some("shop-api:dev (bbbbbbbbbbbb)".into())
            }]
        );
    }

    #[test]
    fn jobs_run_again_only_when_their_revision_changed() {
        let job = with(spec("migrate"), |s| s.kind = Kind::Job);
        let changed = with(job.clone(), |s| s.command = Some(CommandSpec::Shell(Value::plain("migrate --v2"))));
        let mut done = running(&job);
        done.runs = false;
        let current: Current = [("migrate".into(), done)].into_iter().collect();
        let again = plan(&current, &stack(&[&changed]), &[]).services.remove(0);
        assert_eq!(again.action, Action::Replace);
        assert_eq!(again.note.as_deref(), Some("its revision changed: it runs again"));
        assert_eq!(plan(&current, &stack(&[&job]), &[]).services[0].action, Action::Unchanged);
    }

    #[test]
    fn routing_scaling_and_removal() {
        let web = with(spec("web"), |s| s.replicas = 2);
        let old = spec("old");
        let mut scaled = running(&web);
        Arc::make_mut(&mut scaled.spec).replicas = 5;
        let current: Current = [("web".into(), scaled), ("old".into(), running(&old))].into_iter().collect();
        let plan_all = plan(&current, &stack(&[&web]), &[]);
        assert_eq!(actions(&plan_all), pairs(&[("web", Action::Rescale), ("old", Action::Remove)]));
        assert_eq!(
            plan_all.get("web").unwrap().changes,
            vec![Change { field: "replicas".into(), from: Some("5".into()), to: Some("2".into()) }]
        );
        // `up web` removes nothing.
        assert_eq!(actions(&plan(&current, &stack(&[&web]), &["web".into()])), pairs(&[("web", Action::Rescale)]));
        let rerouted = with(web.clone(), |s| s.deploy.strategy = Strategy::BlueGreen);
        let current: Current = [("web".into(), running(&web))].into_iter().collect();
        let p = plan(&current, &stack(&[&rerouted]), &[]).services.remove(0);
        assert_eq!(p.action, Action::Reconfigure);
        assert_eq!(p.changes[0].field, "deploy.strategy");
    }

    #[test]
    fn a_changed_service_not_started_now_is_kept() {
        let (a, b) = (spec("a"), spec("b"));
        let b2 = with(b.clone(), |s| s.command = Some(CommandSpec::Shell(Value::plain("other"))));
        let current: Current = [("a".into(), running(&a)), ("b".into(), running(&b))].into_iter().collect();
        let p = plan(&current, &stack(&[&a, &b2]), &["a".into()]);
        assert_eq!(actions(&p), pairs(&[("a", Action::Unchanged), ("b", Action::Keep)]));
    }
}
