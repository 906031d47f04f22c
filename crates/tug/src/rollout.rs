//! `tug rollout status|promote|abort|undo SERVICE` and `tug history SERVICE`, and the words
//! `deploy` uses for a rollout's progress and end.

use std::process::ExitCode;

use tug_proto::rollout::{HistoryEntry, Measured, Phase, RolloutStatus, Sample};
use tug_proto::spec::{RolloutAction, RolloutRequest};

use crate::StackArgs;
use crate::output;
use crate::run::{QUICK, render_table, running_client};

fn check_name(service: &str) -> Result<(), String> {
    let valid = !service.is_empty() && service.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid { Ok(()) } else { Err(format!("`{service}` is not a service name")) }
}

pub fn status(args: &StackArgs, service: &str, json: bool) -> Result<ExitCode, String> {
    check_name(service)?;
    let client = running_client(args)?;
    let status: RolloutStatus = client.get(&format!("/v1/rollout?service={service}"), QUICK)?;
    if json {
        return output::print_json(&serde_json::to_value(&status).map_err(|e| e.to_string())?);
    }
    let mut text = String::new();
    let mut line = |k: &str, v: String| text.push_str(&format!("{k:<10} {v}\n"));
    line("service", status.service.clone());
    line("strategy", status.strategy.as_str().to_string());
    line("phase", status.phase.as_str().to_string());
    line("revision", format!("{} → {}", status.from_revision.as_deref().unwrap_or("-"), status.to_revision));
    line("weight", format!("{}% of requests on {}", status.weight, status.to_revision));
    if let Some(step) = status.step {
        let steps: Vec<String> = status.steps.iter().map(|s| format!("{s}%")).collect();
        line(
            "step",
            format!("{} of {} ({})", (step + 1).min(status.steps.len()), status.steps.len(), steps.join(", ")),
        );
    }
    line(
        "instances",
        format!(
            "{} new ({} ready), {} old, {} wanted",
            status.new_instances, status.new_ready, status.old_instances, status.replicas
        ),
    );
    if let Some(reason) = &status.reason {
        line("reason", reason.clone());
    }
    if let Some(m) = &status.measured {
        line("analysis", measured(m));
    }
    line("started", status.started_at.clone());
    if let Some(finished) = &status.finished_at {
        line("finished", finished.clone());
    }
    output::write_stdout(&text)
}

pub fn act(
    args: &StackArgs,
    service: &str,
    action: RolloutAction,
    detach: bool,
    timeout: Option<std::time::Duration>,
) -> Result<ExitCode, String> {
    check_name(service)?;
    let client = running_client(args)?;
    let path = format!("/v1/rollout?service={service}");
    let before: Option<RolloutStatus> = client.get(&path, QUICK).ok();
    let request = RolloutRequest { service: service.to_string(), action };
    let answer: serde_json::Value = client.send("POST", "/v1/rollout", &request, QUICK)?;
    eprintln!("{}", answer["message"].as_str().unwrap_or("done"));
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    // Until it is done: `undo` starts a rollout of its own; `abort` and `promote` end the one
    // under way.
    let same = |a: &RolloutStatus, b: &RolloutStatus| a.started_at == b.started_at && a.to_revision == b.to_revision;
    let started = std::time::Instant::now();
    let mut shown = String::new();
    loop {
        let now: RolloutStatus = client.get(&path, QUICK)?;
        // An undo of a rollout not yet final (blue-green's promoted set) ends that rollout; of a
        // finished one, it starts a new one.
        let ours = match (action, &before) {
            (RolloutAction::Undo, Some(before)) => !same(before, &now) || !before.phase.is_final(),
            _ => true,
        };
        let done = ours && (now.phase.is_final() || (action == RolloutAction::Promote && now.phase == Phase::Promoted));
        let line = summary(&now);
        if line != shown {
            eprintln!("{service}: {line}");
            shown = line.clone();
        }
        if done {
            // Abort, and an undo that switches a rollout back, end in `rolled_back` as asked.
            let switched_back = action == RolloutAction::Undo && before.as_ref().is_some_and(|b| same(b, &now));
            let failed = matches!(now.phase, Phase::RolledBack | Phase::Failed)
                && action != RolloutAction::Abort
                && !switched_back;
            if failed {
                eprintln!("{service}: {}", describe_end(&now));
            }
            return Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS });
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            return Err(format!(
                "{service}: not done after {}: {line}; `tug rollout status {service}` follows it",
                tug_stackfile::units::format_duration(limit)
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

pub fn history(args: &StackArgs, service: &str, json: bool) -> Result<ExitCode, String> {
    check_name(service)?;
    let client = running_client(args)?;
    let entries: Vec<HistoryEntry> = client.get(&format!("/v1/history?service={service}"), QUICK)?;
    if json {
        return output::print_json(&serde_json::to_value(&entries).map_err(|e| e.to_string())?);
    }
    if entries.is_empty() {
        return output::write_stdout(&format!("`{service}` has no recorded revision yet\n"));
    }
    let mut rows =
        vec![["", "REVISION", "STRATEGY", "OUTCOME", "STARTED", "FINISHED", "REASON"].map(String::from).to_vec()];
    for e in &entries {
        rows.push(vec![
            if e.current { "*".into() } else { String::new() },
            e.revision.clone(),
            e.strategy.as_str().into(),
            e.outcome.as_str().into(),
            e.started_at.clone(),
            e.finished_at.clone().unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
        ]);
    }
    output::write_stdout(&render_table(&rows))
}

fn sample(s: &Sample) -> String {
    let p99 = s.p99_ms.map(|p| format!(", p99 {p:.1}ms")).unwrap_or_default();
    format!("{} requests, {} errors ({:.1}%){p99}", s.requests, s.errors, s.error_rate * 100.0)
}

/// The figures of a canary analysis, in a line.
pub fn measured(m: &Measured) -> String {
    format!("over {:.1}s: canary {}; stable {}", m.window_ms as f64 / 1000.0, sample(&m.canary), sample(&m.stable))
}

/// A rollout's progress, in a line (`deploy`).
pub fn summary(r: &RolloutStatus) -> String {
    let mut text = format!(
        "{} {} → {}: {}",
        r.strategy.as_str(),
        short(r.from_revision.as_deref()),
        r.to_revision,
        r.phase.as_str()
    );
    if r.phase == Phase::Progressing || r.phase == Phase::Paused {
        text.push_str(&format!(
            ", {}% of requests, {}/{} new ready, {} old",
            r.weight, r.new_ready, r.replicas, r.old_instances
        ));
    }
    if let Some(reason) = &r.reason {
        text.push_str(&format!(" ({reason})"));
    }
    text
}

fn short(revision: Option<&str>) -> &str {
    revision.unwrap_or("-")
}

/// Why a rollout ended badly, with the measured values.
pub fn describe_end(r: &RolloutStatus) -> String {
    let mut text =
        format!("{} ({} → {})", r.phase.as_str().replace('_', " "), r.to_revision, short(r.from_revision.as_deref()));
    if let Some(reason) = &r.reason {
        text.push_str(&format!(": {reason}"));
    }
    if let Some(m) = &r.measured {
        text.push_str(&format!("; measured {}", measured(m)));
    }
    text
}
