//! `tug stats [SERVICE] [--json]`: the routers' counters, per service, revision and instance.

use std::process::ExitCode;

use tug_proto::stats::{Counters, StatsResponse};

use crate::StackArgs;
use crate::client::RequestError;
use crate::output;
use crate::run::{QUICK, connect, render_table};

pub fn command(args: &StackArgs, service: Option<String>, json: bool) -> Result<ExitCode, String> {
    if let Some(name) = &service
        && !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("`{name}` is not a service name"));
    }
    let (_, client) = connect(args, false)?;
    let path = match &service {
        Some(name) => format!("/v1/stats?service={name}"),
        None => "/v1/stats".to_string(),
    };
    let stats: StatsResponse = match client.map(|c| c.get(&path, QUICK)) {
        Some(Ok(stats)) => stats,
        None | Some(Err(RequestError::NoDaemon)) => {
            if json {
                return output::print_json(&serde_json::json!({ "services": [] }));
            }
            return output::write_stdout("nothing is running for this stack\n");
        }
        Some(Err(e)) => return Err(e.to_string()),
    };
    if json {
        return output::print_json(&serde_json::to_value(&stats).map_err(|e| e.to_string())?);
    }
    if stats.services.is_empty() {
        return output::write_stdout("no service has a router (no `port`, or `proxy: false`)\n");
    }
    output::write_stdout(&render(&stats))
}

/// One row per service (all instances), per revision when there are several, and per
/// instance; then what the router answered itself.
fn render(stats: &StatsResponse) -> String {
    let mut rows = vec![
        [
            "SERVICE",
            "INSTANCE",
            "REVISION",
            "REQUESTS",
            "2XX",
            "3XX",
            "4XX",
            "5XX",
            "FAILED",
            "RETRIED",
            "EJECTED",
            "IN-FLIGHT",
            "P50",
            "P99",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut notes = String::new();
    for s in &stats.services {
        rows.push(row(&s.service, "(all)", "", &s.total, false));
        if s.revisions.len() > 1 {
            for r in &s.revisions {
                rows.push(row(&s.service, "(revision)", &r.revision, &r.counters, false));
            }
        }
        for i in &s.instances {
            let name = if i.member { i.instance.clone() } else { format!("{} (left)", i.instance) };
            rows.push(row(&s.service, &name, &i.revision, &i.counters, i.ejected));
        }
        notes.push_str(&format!(
            "{} ({} on {}): {} answered with no instance ready, {} retries refused by the budget, \
             {} connections refused over the limit\n",
            s.service, s.protocol, s.address, s.unrouted, s.retries_denied, s.refused_connections
        ));
    }
    let mut out = render_table(&rows);
    out.push_str(&notes);
    out
}

fn row(service: &str, instance: &str, revision: &str, c: &Counters, ejected: bool) -> Vec<String> {
    let ms = |q: f64| c.latency.quantile(q).map(format_seconds).unwrap_or_else(|| "-".into());
    vec![
        service.to_string(),
        instance.to_string(),
        if revision.is_empty() { "-".into() } else { revision.to_string() },
        c.requests.to_string(),
        c.status.success.to_string(),
        c.status.redirection.to_string(),
        c.status.client_error.to_string(),
        c.status.server_error.to_string(),
        c.failures.to_string(),
        c.retries.to_string(),
        if ejected { format!("now ({})", c.ejections) } else { c.ejections.to_string() },
        c.in_flight.to_string(),
        ms(0.5),
        ms(0.99),
    ]
}

fn format_seconds(s: f64) -> String {
    if s < 1.0 { format!("{:.1}ms", s * 1000.0) } else { format!("{s:.2}s") }
}
