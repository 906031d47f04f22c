//! Prometheus recording and alerting rules for a stack's objectives (`slo`, or the defaults:
//! 99.9% of requests succeed, p99 under 100 ms): the error budget as multiwindow, multi-burn-rate
//! alerts (the SRE workbook's 14.4× over 1h and 5m, 6× over 6h and 30m, 1× over 3d and 6h), p99
//! latency, CPU and memory over 80% of the limits, crash loops and rollbacks. They read the
//! metrics the daemon's `/metrics` serves (docs/metrics.md).

use serde_json::{Value, json};
use tug_stackfile::model::Protocol;
use tug_stackfile::{ServiceKind, Slo, Stack};

use crate::{Error, File, Manifest, Options};

/// The windows the burn rates are recorded over.
const WINDOWS: [&str; 5] = ["5m", "30m", "1h", "6h", "3d"];

/// (long window, short window, burn rate, severity, how long it lasts before it fires).
const BURNS: [(&str, &str, f64, &str, &str); 3] =
    [("1h", "5m", 14.4, "page", "2m"), ("6h", "30m", 6.0, "page", "15m"), ("3d", "6h", 1.0, "ticket", "1h")];

/// Share of the limit above which CPU and memory alert.
const RESOURCE_SHARE: f64 = 0.8;

pub fn render(stack: &Stack, _options: &Options) -> Result<Vec<File>, Error> {
    let mut recording = Vec::new();
    for window in WINDOWS {
        recording.push(json!({
            "record": format!("tug_service:request_errors:ratio_rate{window}"),
            "expr": format!(
                "sum by (service) (rate(tug_requests_total{{project=\"{p}\",class=~\"5xx|failed\"}}[{window}])) / \
                 sum by (service) (rate(tug_requests_total{{project=\"{p}\"}}[{window}]))",
                p = stack.name
            ),
        }));
    }
    recording.push(json!({
        "record": "tug_service:request_duration_seconds:p99_rate5m",
        "expr": format!(
            "histogram_quantile(0.99, sum by (service, le) (rate(tug_request_duration_seconds_bucket{{project=\"{}\"}}[5m])))",
            stack.name
        ),
    }));
    let mut alerts = Vec::new();
    for (name, service) in &stack.services {
        let slo = service.slo.clone().unwrap_or_default();
        let serves_requests = service.kind == ServiceKind::Service && service.port.is_some();
        if serves_requests && service.protocol != Protocol::Tcp {
            alerts.extend(budget_alerts(name, &slo));
            alerts.push(latency_alert(name, &slo));
        }
        if let Some(cpu) = service.resources.cpu {
            let series =
                format!("rate(tug_instance_cpu_seconds_total{{project=\"{}\",service=\"{name}\"}}[5m])", stack.name);
            alerts.push(near_limit(
                "TugCpuNearLimit",
                name,
                &series,
                number(cpu * RESOURCE_SHARE),
                &format!("{cpu} CPU"),
            ));
        }
        if let Some(memory) = service.resources.memory {
            let series = format!("tug_instance_memory_bytes{{project=\"{}\",service=\"{name}\"}}", stack.name);
            let limit = ((memory.0 as f64 * RESOURCE_SHARE).round() as u64).to_string();
            alerts.push(near_limit(
                "TugMemoryNearLimit",
                name,
                &series,
                limit,
                &format!("{} bytes of memory", memory.0),
            ));
        }
        if service.kind == ServiceKind::Service {
            alerts.push(json!({
                "alert": "TugCrashLooping",
                "expr": format!(
                    "increase(tug_instance_restarts_total{{project=\"{p}\",service=\"{name}\"}}[15m]) > 3",
                    p = stack.name
                ),
                "labels": { "severity": "page", "service": name },
                "annotations": {
                    "summary": format!("{{{{ $labels.instance }}}} of {name} restarted more than 3 times in 15 minutes"),
                },
            }));
            alerts.push(json!({
                "alert": "TugRolledBack",
                "expr": format!(
                    "increase(tug_rollouts_rolled_back_total{{project=\"{p}\",service=\"{name}\"}}[10m]) > 0",
                    p = stack.name
                ),
                "labels": { "severity": "ticket", "service": name },
                "annotations": { "summary": format!("a rollout of {name} was rolled back (tug rollout status {name})") },
            }));
        }
    }
    let document = json!({
        "groups": [
            { "name": format!("tug-{}-recording", stack.name), "rules": recording },
            { "name": format!("tug-{}-alerts", stack.name), "rules": alerts },
        ],
    });
    let mut manifest = Manifest::new(document);
    manifest.comments.push(format!(
        "Prometheus rules for the stack `{}`, rendered by `tug render alerts`. They read the daemon's /metrics.",
        stack.name
    ));
    Ok(vec![File::new(format!("{}-alerts.yaml", stack.name), vec![manifest])])
}

/// An instance over [`RESOURCE_SHARE`] of a limit (`series` above `threshold`) for 10 minutes.
fn near_limit(alert: &str, service: &str, series: &str, threshold: String, limit: &str) -> Value {
    json!({
        "alert": alert,
        "expr": format!("{series} > {threshold}"),
        "for": "10m",
        "labels": { "severity": "ticket", "service": service },
        "annotations": {
            "summary": format!("{{{{ $labels.instance }}}} of {service} uses over 80% of its {limit}"),
        },
    })
}

/// The error budget's burn, as the SRE workbook's multiwindow alerts: fast burns page within
/// minutes, a slow one opens a ticket.
fn budget_alerts(name: &str, slo: &Slo) -> Vec<Value> {
    let budget = 1.0 - slo.availability.0 / 100.0;
    BURNS
        .iter()
        .map(|(long, short, rate, severity, wait)| {
            let threshold = number(rate * budget);
            json!({
                "alert": "TugErrorBudgetBurn",
                "expr": format!(
                    "tug_service:request_errors:ratio_rate{long}{{service=\"{name}\"}} > {threshold} and \
                     tug_service:request_errors:ratio_rate{short}{{service=\"{name}\"}} > {threshold}"
                ),
                "for": wait,
                "labels": { "severity": severity, "service": name, "window": long },
                "annotations": {
                    "summary": format!(
                        "{name} is spending its error budget {rate}× too fast ({long} and {short} windows; objective {})",
                        slo.availability
                    ),
                },
            })
        })
        .collect()
}

fn latency_alert(name: &str, slo: &Slo) -> Value {
    json!({
        "alert": "TugLatencyHigh",
        "expr": format!(
            "tug_service:request_duration_seconds:p99_rate5m{{service=\"{name}\"}} > {}",
            number(slo.latency.as_secs_f64())
        ),
        "for": "10m",
        "labels": { "severity": "page", "service": name },
        "annotations": { "summary": format!("{name}'s p99 is over {}ms", slo.latency.as_millis()) },
    })
}

/// A threshold as PromQL reads it: no float noise (`0.0144`, not `0.014400000000000001`).
fn number(value: f64) -> String {
    let text = format!("{value:.10}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() { "0".into() } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_have_no_float_noise() {
        assert_eq!(number(14.4 * 0.001), "0.0144");
        assert_eq!(number(0.1), "0.1");
        assert_eq!(number(6.0), "6");
    }
}
