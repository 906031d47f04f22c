//! Dependency order: which services a request needs, the order to stop them in,
//! and whether a service's `depends_on` conditions hold right now.

use indexmap::IndexMap;
use tug_proto::spec::{Condition, Kind, ServiceSpec};
use tug_proto::status::{InstanceStatus, State};

/// `targets` and everything they depend on, transitively, in the specs' order.
/// Empty targets mean every service.
pub fn closure(specs: &IndexMap<String, std::sync::Arc<ServiceSpec>>, targets: &[String]) -> Vec<String> {
    if targets.is_empty() {
        return specs.keys().cloned().collect();
    }
    let mut wanted: Vec<&str> = Vec::new();
    let mut stack: Vec<&str> = targets.iter().map(String::as_str).collect();
    while let Some(name) = stack.pop() {
        if wanted.contains(&name) {
            continue;
        }
        wanted.push(name);
        if let Some(spec) = specs.get(name) {
            stack.extend(spec.depends_on.iter().map(|(d, _)| d.as_str()));
        }
    }
    specs.keys().filter(|k| wanted.contains(&k.as_str())).cloned().collect()
}

/// Each service's depth: 0 without dependencies, else one more than its deepest
/// dependency. Stopping goes from the deepest level to 0. Validation has ruled
/// out cycles; a cycle here would only stop the walk.
pub fn depths(specs: &IndexMap<String, std::sync::Arc<ServiceSpec>>) -> IndexMap<String, usize> {
    let mut depth: IndexMap<String, usize> = IndexMap::new();
    for _ in 0..=specs.len() {
        let mut changed = false;
        for (name, spec) in specs {
            let d = spec
                .depends_on
                .iter()
                .filter_map(|(dep, _)| depth.get(dep).map(|d| d + 1).or(specs.contains_key(dep).then_some(1)))
                .max()
                .unwrap_or(0);
            if depth.get(name) != Some(&d) {
                depth.insert(name.clone(), d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    depth
}

/// `names` with every service after the ones it depends on. Activating in this order marks a
/// failed dependency `pending` before its dependent's gate looks at it (which would otherwise
/// find the last run's `failed` and fail the dependent again).
pub fn dependencies_first(specs: &IndexMap<String, std::sync::Arc<ServiceSpec>>, names: &[String]) -> Vec<String> {
    let depths = depths(specs);
    let mut sorted = names.to_vec();
    sorted.sort_by_key(|name| depths.get(name).copied().unwrap_or(0));
    sorted
}

/// Whether a service may start now.
#[derive(Debug, PartialEq)]
pub enum Gate {
    Open,
    Wait(String),
    Failed(String),
}

fn satisfies(instance: &InstanceStatus, condition: Condition, has_healthcheck: bool) -> bool {
    match condition {
        Condition::Started => matches!(
            instance.state,
            State::Starting | State::Healthy | State::Unhealthy | State::Running | State::Completed
        ),
        Condition::Healthy => {
            instance.state == State::Healthy
                || instance.state == State::Completed
                || (!has_healthcheck && instance.state == State::Running)
        }
        Condition::CompletedSuccessfully => instance.state == State::Completed,
    }
}

/// Evaluates `spec.depends_on` against the instances' current states.
pub fn gate<'a>(
    spec: &ServiceSpec,
    specs: &IndexMap<String, std::sync::Arc<ServiceSpec>>,
    active: impl Fn(&str) -> bool,
    instances: impl Fn(&str) -> Vec<&'a InstanceStatus>,
) -> Gate {
    let mut waits = Vec::new();
    for (dep, condition) in &spec.depends_on {
        let Some(dep_spec) = specs.get(dep) else {
            return Gate::Failed(format!("depends on `{dep}`, which is not in the stack"));
        };
        let condition_text = condition.as_str();
        let rows = instances(dep);
        if let Some(failed) = rows.iter().find(|i| i.state == State::Failed) {
            let why = failed.message.clone().unwrap_or_else(|| "failed".into());
            return Gate::Failed(format!("{dep} ({condition_text}) failed: {}: {why}", failed.instance));
        }
        if dep_spec.kind == Kind::Job
            && *condition == Condition::CompletedSuccessfully
            && rows.iter().any(|i| i.state == State::Stopped && i.exit_code.is_some_and(|c| c != 0))
        {
            return Gate::Failed(format!("{dep} (completed_successfully) did not complete"));
        }
        if !active(dep) {
            waits.push(format!("{dep} ({condition_text}), which is not running"));
            continue;
        }
        let ok = rows.iter().all(|i| satisfies(i, *condition, dep_spec.healthcheck.is_some()));
        if !ok || (rows.is_empty() && dep_spec.replicas > 0) {
            waits.push(format!("{dep} ({condition_text})"));
        }
    }
    if waits.is_empty() { Gate::Open } else { Gate::Wait(format!("waiting for {}", waits.join(", "))) }
}
