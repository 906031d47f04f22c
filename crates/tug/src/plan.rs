//! `tug deploy --plan` and `tug up --plan`: what would change, service by service, and why,
//! without acting; and the same plan printed by `deploy` as it acts, and what did and did not
//! change when it ends.

use std::process::ExitCode;

use tug_proto::plan::{Action, Plan, ServicePlan};
use tug_proto::spec::UpRequest;
use tug_stackfile::diag::Palette;

use crate::StackArgs;
use crate::output;
use crate::stack::{self, Loaded};

pub fn show(args: &StackArgs, targets: &[String], json: bool) -> Result<ExitCode, String> {
    let Loaded { compiled, state_dir, .. } = stack::load(args)?;
    let stack = crate::secrets::require_valid(&compiled)?;
    stack::print_problems(&compiled, output::stderr_palette(), true, tug_stackfile::Severity::Warning);
    crate::run::check_targets(stack, targets)?;
    // A remote daemon looks the images up on its own engine, and its copies' paths are its own.
    let (artifacts, on_host) = if args.host.is_some() {
        let everything: Vec<String> = stack.services.keys().cloned().collect();
        let artifacts = crate::artifacts::resolve_for_remote_plan(stack, &state_dir)?;
        let on_host = crate::artifacts::for_host(stack, &everything, &artifacts);
        (artifacts, Some(on_host))
    } else {
        (crate::artifacts::resolve_for_plan(stack, &state_dir)?, None)
    };
    let request = UpRequest { spec: crate::run::to_spec(stack, &artifacts), targets: targets.to_vec(), on_host };
    let (_, client) = crate::run::connect(args, false)?;
    let running = client.as_ref().filter(|c| c.get::<serde_json::Value>("/v1/status", crate::run::QUICK).is_ok());
    let plan: Plan = match running {
        Some(client) => client.send("POST", "/v1/plan", &request, crate::run::QUICK)?,
        None => tug_supervisor::plan::plan_stack(&Default::default(), &request.spec, targets),
    };
    if json {
        return output::print_json(&serde_json::to_value(&plan).map_err(|e| e.to_string())?);
    }
    let mut text = String::new();
    let palette = output::stdout_palette();
    let against = if running.is_some() { "what runs now" } else { "nothing running" };
    text.push_str(&format!("plan for {} ({}), against {against}:\n", stack.name, stack.environment));
    text.push_str(&render(&plan, palette));
    for (name, service) in &stack.services {
        if let Some(container) = &service.container
            && container.build.is_some()
            && plan.get(name).is_some_and(|p| p.action != Action::NotStarted)
        {
            text.push_str(&format!(
                "note: `{name}` builds {} first: the plan compares the image the engine has now\n",
                container.image
            ));
        }
    }
    text.push_str(&summary(&plan));
    output::write_stdout(&text)
}

/// One line per service (action, strategy, revisions, note), then one per changed field.
pub fn render(plan: &Plan, palette: Palette) -> String {
    let width = plan.services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut text = String::new();
    for service in &plan.services {
        let action = action_text(service);
        let colour = match service.action {
            Action::Unchanged | Action::NotStarted => palette.dim,
            Action::Remove => palette.error,
            _ => palette.bold,
        };
        text.push_str(&format!("  {:width$}  {colour}{action}{}", service.name, palette.reset));
        if let (Some(from), Some(to)) = (&service.from_revision, &service.to_revision)
            && from != to
        {
            text.push_str(&format!("  {from} → {to}"));
        }
        if let Some(note) = &service.note {
            text.push_str(&format!(" ({note})"));
        }
        text.push('\n');
        for change in &service.changes {
            let from = change.from.as_deref().unwrap_or("(none)");
            let to = change.to.as_deref().unwrap_or("(none)");
            text.push_str(&format!("  {:width$}    {}: {from} → {to}\n", "", change.field));
        }
    }
    text
}

fn action_text(service: &ServicePlan) -> String {
    match (service.action, service.strategy) {
        (Action::RollOut, Some(strategy)) => format!("roll out ({})", strategy.as_str()),
        (Action::Start, _) if service.kind == tug_proto::spec::Kind::Job => "run".into(),
        (Action::Replace, _) if service.kind == tug_proto::spec::Kind::Job => "run again".into(),
        (Action::Replace, _) => "replace (stop, then start)".into(),
        (action, _) => action.as_str().into(),
    }
}

/// `2 services change: web (roll out), migrate (run again); 3 do not`.
pub fn summary(plan: &Plan) -> String {
    let changing: Vec<String> = plan
        .services
        .iter()
        .filter(|s| !matches!(s.action, Action::Unchanged | Action::NotStarted))
        .map(|s| format!("{} ({})", s.name, action_text(s)))
        .collect();
    let unchanged = plan.services.len() - changing.len();
    match changing.len() {
        0 => format!("nothing changes ({unchanged} unchanged)\n"),
        n => format!("{n} to change: {}; {unchanged} unchanged\n", changing.join(", ")),
    }
}

/// The services the plan changes, as `deploy` starts (nothing when nothing changes).
pub fn announce(plan: &Plan, palette: Palette) -> String {
    let changing = Plan {
        services: plan
            .services
            .iter()
            .filter(|s| !matches!(s.action, Action::Unchanged | Action::NotStarted))
            .cloned()
            .collect(),
    };
    if changing.services.is_empty() {
        return "no service changed: every service runs the revision the stack file asks for\n".into();
    }
    render(&changing, palette)
}

/// After a deploy that failed or gave up waiting: for each service the plan meant to change,
/// whether it did, from what the daemon reports now.
pub fn outcome(plan: &Plan, status: &tug_proto::status::StackStatus) -> String {
    use tug_proto::rollout::Phase;
    let mut changed = Vec::new();
    let mut not = Vec::new();
    for step in &plan.services {
        let to = step.to_revision.as_deref().unwrap_or_default();
        let rows: Vec<&tug_proto::status::InstanceStatus> =
            status.instances.iter().filter(|i| i.service == step.name).collect();
        let runs_new = rows.iter().any(|i| i.revision == to && i.state.is_up());
        let service = status.services.iter().find(|s| s.name == step.name);
        let line = |what: &str| format!("{} ({what})", step.name);
        match step.action {
            Action::Unchanged | Action::NotStarted | Action::Keep => not.push(line("unchanged")),
            Action::RollOut => match service.and_then(|s| s.rollout.as_ref()).map(|r| (r.phase, r)) {
                Some((Phase::Complete | Phase::Promoted, _)) => changed.push(line(&format!("now runs {to}"))),
                Some((Phase::RolledBack | Phase::Failed, r)) => {
                    let from = step.from_revision.as_deref().unwrap_or_default();
                    not.push(line(&format!("rolled back, runs {from}: {}", crate::rollout::describe_end(r))))
                }
                Some((_, r)) => not.push(line(&format!("still rolling out: {}", crate::rollout::summary(r)))),
                None => not.push(line("its rollout did not start")),
            },
            Action::Remove if rows.is_empty() => changed.push(line("removed")),
            Action::Remove => not.push(line("still stopping")),
            Action::Start | Action::Replace if runs_new => changed.push(line(&format!("runs {to}"))),
            Action::Start | Action::Replace => not.push(line(&format!("{to} is not up"))),
            Action::Rescale | Action::Reconfigure => changed.push(line(action_text(step).as_str())),
        }
    }
    let list = |items: &[String]| if items.is_empty() { "nothing".to_string() } else { items.join(", ") };
    format!("changed: {}\nnot changed: {}\n", list(&changed), list(&not))
}
