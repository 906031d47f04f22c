//! `/metrics` on the network endpoint: Prometheus's text format, behind a bearer token
//! (`tug token metrics`). Everything is read from what the daemon already keeps (the routers'
//! counters, the table, the event counts) at scrape time: nothing is added to the request path.
//! Names follow Prometheus's conventions (base units, `_total` counters); the alerting rules
//! of `tug render alerts` read them (docs/metrics.md lists them all).

use std::fmt::Write;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tug_proto::stats::{Counters, InstanceStats, ServiceStats, StatsResponse};
use tug_proto::status::StackStatus;

use crate::daemon::{App, Body, error, whole};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn serve(app: &App, request: &Request<Incoming>) -> Response<Body> {
    if request.method() != hyper::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "/metrics answers GET");
    }
    let token = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized =
        token.is_some_and(|t| tug_proto::auth::same_secret(t.trim().as_bytes(), app.metrics_token.as_bytes()));
    if !authorized {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "/metrics needs `Authorization: Bearer TOKEN`; `tug token metrics` prints the token",
        );
        response
            .headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
        return response;
    }
    let status = app.supervisor.status(None, std::time::Duration::ZERO, true).await;
    let stats = app.supervisor.stats(None).unwrap_or_default();
    let events = app.supervisor.events().counts();
    let text = render(&status, &stats, &events);
    let gzipped = accepts_gzip(request.headers()).then(|| gzip(text.as_bytes())).flatten();
    let headers = [(hyper::header::CONTENT_TYPE, CONTENT_TYPE), (hyper::header::VARY, "Accept-Encoding")];
    let mut response = match gzipped {
        Some(bytes) => {
            let mut response = Response::new(whole(bytes));
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_ENCODING, hyper::header::HeaderValue::from_static("gzip"));
            response
        }
        None => Response::new(whole(text)),
    };
    for (name, value) in headers {
        response.headers_mut().insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

/// Whether the client takes a gzip body (Prometheus asks for one): `gzip` or `*` in
/// `Accept-Encoding` with a weight above 0.
fn accepts_gzip(headers: &hyper::HeaderMap) -> bool {
    headers.get_all(hyper::header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).any(|value| {
        value.split(',').any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let weight = parts
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && weight > 0.0
        })
    })
}

/// `text` gzip-compressed, fast: the text format shrinks about tenfold (label names repeat on
/// every line), and a scrape over a network is where the endpoint's bytes go.
fn gzip(text: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(text.len() / 8), flate2::Compression::fast());
    encoder.write_all(text).ok()?;
    encoder.finish().ok()
}

/// One metric family being written: its header once, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") }
}

/// The whole scrape. Pure: the tests give it a status and counters.
pub fn render(status: &StackStatus, stats: &StatsResponse, events: &[(String, &'static str, u64)]) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let project = status.project.as_str();
    family(&mut out, "tug_build_info", "gauge", "The tug that serves these metrics.").sample(
        "tug_build_info",
        &[("project", project), ("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    services(&mut out, status);
    instances(&mut out, status);
    requests(&mut out, project, stats);
    rollouts(&mut out, status, events);
    registry(&mut out, status);
    out
}

fn services(out: &mut String, status: &StackStatus) {
    let project = status.project.as_str();
    let mut f = family(out, "tug_service_replicas", "gauge", "Instances the service is set to run.");
    for s in &status.services {
        f.sample("tug_service_replicas", &[("project", project), ("service", &s.name)], f64::from(s.replicas));
    }
    let mut f =
        family(out, "tug_autoscale_desired_replicas", "gauge", "What the autoscaler wants, within min and max.");
    for s in &status.services {
        if let Some(a) = &s.autoscale {
            f.sample(
                "tug_autoscale_desired_replicas",
                &[("project", project), ("service", &s.name)],
                f64::from(a.desired),
            );
        }
    }
    let mut f = family(out, "tug_autoscale_max_replicas", "gauge", "The autoscaler's upper bound.");
    for s in &status.services {
        if let Some(a) = &s.autoscale {
            f.sample("tug_autoscale_max_replicas", &[("project", project), ("service", &s.name)], f64::from(a.max));
        }
    }
    let mut f = family(out, "tug_autoscale_min_replicas", "gauge", "The autoscaler's lower bound.");
    for s in &status.services {
        if let Some(a) = &s.autoscale {
            f.sample("tug_autoscale_min_replicas", &[("project", project), ("service", &s.name)], f64::from(a.min));
        }
    }
}

fn instances(out: &mut String, status: &StackStatus) {
    let project = status.project.as_str();
    let limits = |service: &str| status.services.iter().find(|s| s.name == service);
    let rows: Vec<_> = status.instances.iter().collect();
    let write_all = |out: &mut String,
                     name: &str,
                     kind: &str,
                     help: &str,
                     value: &dyn Fn(&tug_proto::status::InstanceStatus) -> Option<f64>| {
        let mut f = family(out, name, kind, help);
        for i in &rows {
            if let Some(v) = value(i) {
                let labels = [
                    ("project", project),
                    ("service", i.service.as_str()),
                    ("revision", i.revision.as_str()),
                    ("instance", i.instance.as_str()),
                ];
                f.sample(name, &labels, v);
            }
        }
    };
    write_all(out, "tug_instance_up", "gauge", "1 while the instance's process runs.", &|i| {
        Some(
            if i.pid.is_some()
                && !matches!(i.state, tug_proto::status::State::Stopped | tug_proto::status::State::Failed)
            {
                1.0
            } else {
                0.0
            },
        )
    });
    write_all(
        out,
        "tug_instance_ready",
        "gauge",
        "1 while the instance is ready (healthy, running without a healthcheck, or a completed job).",
        &|i| Some(if i.state.is_up() { 1.0 } else { 0.0 }),
    );
    write_all(out, "tug_instance_restarts_total", "counter", "Restarts of the instance.", &|i| {
        Some(f64::from(i.restarts))
    });
    write_all(out, "tug_instance_cpu_seconds_total", "counter", "CPU time of the instance's processes.", &|i| {
        i.cpu_seconds
    });
    write_all(out, "tug_instance_memory_bytes", "gauge", "Resident memory of the instance's processes.", &|i| {
        i.memory_bytes.map(|b| b as f64)
    });
    write_all(
        out,
        "tug_instance_memory_limit_bytes",
        "gauge",
        "The instance's memory limit (resources.memory).",
        &|i| limits(&i.service).and_then(|s| s.memory_limit_bytes).map(|b| b as f64),
    );
    write_all(out, "tug_instance_cpu_limit", "gauge", "The instance's CPU limit in cores (resources.cpu).", &|i| {
        limits(&i.service).and_then(|s| s.cpu_limit)
    });
}

/// A family read from one field of each instance's counters: name, type, help, the field.
type CounterFamily = (&'static str, &'static str, &'static str, fn(&Counters) -> u64);

/// The labels every router series of an instance carries.
fn instance_labels<'a>(
    project: &'a str,
    s: &'a ServiceStats,
    i: &'a InstanceStats,
    instance: &'a str,
) -> [(&'static str, &'a str); 4] {
    [("project", project), ("service", s.service.as_str()), ("revision", i.revision.as_str()), ("instance", instance)]
}

/// The routers' counters, per instance still in the router (an instance that left takes its
/// series with it).
fn requests(out: &mut String, project: &str, stats: &StatsResponse) {
    let members = || {
        stats.services.iter().flat_map(|s| {
            s.instances.iter().filter(|i| i.member).map(move |i| {
                // The router names instances `<host>/<instance>`; the status names them alone.
                let name = i.instance.rsplit('/').next().unwrap_or(&i.instance).to_string();
                (s, i, name)
            })
        })
    };
    let mut f = family(
        out,
        "tug_requests_total",
        "counter",
        "Requests (HTTP) or connections (TCP) through tug's router, by answer: 1xx to 5xx, or failed (no answer).",
    );
    for (s, i, name) in members() {
        let c = &i.counters;
        let classes = [
            ("1xx", c.status.informational),
            ("2xx", c.status.success),
            ("3xx", c.status.redirection),
            ("4xx", c.status.client_error),
            ("5xx", c.status.server_error),
            ("failed", c.failures),
        ];
        for (class, n) in classes {
            let mut l = instance_labels(project, s, i, &name).to_vec();
            l.push(("class", class));
            f.sample("tug_requests_total", &l, n as f64);
        }
    }
    let simple: [CounterFamily; 3] = [
        (
            "tug_request_retries_total",
            "counter",
            "Requests that failed on this instance and were retried on another.",
            |c| c.retries,
        ),
        (
            "tug_instance_ejections_total",
            "counter",
            "Times outlier detection took the instance out of rotation.",
            |c| c.ejections,
        ),
        ("tug_requests_in_flight", "gauge", "Requests (or connections) being served now.", |c| c.in_flight),
    ];
    for (name, kind, help, value) in simple {
        let mut f = family(out, name, kind, help);
        for (s, i, instance) in members() {
            f.sample(name, &instance_labels(project, s, i, &instance), value(&i.counters) as f64);
        }
    }
    let mut f =
        family(out, "tug_instance_ejected", "gauge", "1 while outlier detection keeps the instance out of rotation.");
    for (s, i, instance) in members() {
        let l = instance_labels(project, s, i, &instance);
        f.sample("tug_instance_ejected", &l, if i.ejected { 1.0 } else { 0.0 });
    }
    let mut f = family(
        out,
        "tug_request_duration_seconds",
        "histogram",
        "Time to the response's headers (HTTP) or to connect (TCP).",
    );
    for (s, i, instance) in members() {
        let latency = &i.counters.latency;
        let base = instance_labels(project, s, i, &instance);
        let mut cumulative = 0u64;
        for (bound, count) in latency.bounds.iter().zip(&latency.counts) {
            cumulative += count;
            let le = number(*bound);
            let mut l = base.to_vec();
            l.push(("le", &le));
            f.sample("tug_request_duration_seconds_bucket", &l, cumulative as f64);
        }
        let total = latency.count();
        let mut l = base.to_vec();
        l.push(("le", "+Inf"));
        f.sample("tug_request_duration_seconds_bucket", &l, total as f64);
        f.sample("tug_request_duration_seconds_sum", &base, latency.sum_seconds);
        f.sample("tug_request_duration_seconds_count", &base, total as f64);
    }
    let mut f = family(
        out,
        "tug_router_unrouted_total",
        "counter",
        "Requests or connections the router answered itself: no instance was ready.",
    );
    for s in &stats.services {
        f.sample("tug_router_unrouted_total", &[("project", project), ("service", &s.service)], s.unrouted as f64);
    }
    let mut f = family(
        out,
        "tug_router_refused_connections_total",
        "counter",
        "Connections the router closed at once: the port's connection limit was full.",
    );
    for s in &stats.services {
        f.sample(
            "tug_router_refused_connections_total",
            &[("project", project), ("service", &s.service)],
            s.refused_connections as f64,
        );
    }
    let mut f = family(out, "tug_router_retries_denied_total", "counter", "Retries the retry budget refused.");
    for s in &stats.services {
        f.sample(
            "tug_router_retries_denied_total",
            &[("project", project), ("service", &s.service)],
            s.retries_denied as f64,
        );
    }
}

const PHASES: [&str; 6] = ["progressing", "paused", "promoted", "rolled_back", "failed", "complete"];

fn rollouts(out: &mut String, status: &StackStatus, events: &[(String, &'static str, u64)]) {
    let project = status.project.as_str();
    let with_rollout = || status.services.iter().filter_map(|s| s.rollout.as_ref().map(|r| (s, r)));
    let mut f = family(
        out,
        "tug_rollout_phase",
        "gauge",
        "1 for the phase the service's latest rollout is in (one series per phase).",
    );
    for (s, r) in with_rollout() {
        for phase in PHASES {
            let l = [
                ("project", project),
                ("service", s.name.as_str()),
                ("revision", r.to_revision.as_str()),
                ("phase", phase),
            ];
            f.sample("tug_rollout_phase", &l, if r.phase.as_str() == phase { 1.0 } else { 0.0 });
        }
    }
    let mut f =
        family(out, "tug_rollout_step", "gauge", "The canary step the rollout is at (1-based; 0 before the first).");
    for (s, r) in with_rollout() {
        let l = [("project", project), ("service", s.name.as_str()), ("revision", r.to_revision.as_str())];
        f.sample("tug_rollout_step", &l, r.step.map_or(0.0, |s| s as f64 + 1.0));
    }
    let mut f = family(
        out,
        "tug_rollout_weight_ratio",
        "gauge",
        "The share of requests the rollout's new revision gets (0 to 1).",
    );
    for (s, r) in with_rollout() {
        let l = [("project", project), ("service", s.name.as_str()), ("revision", r.to_revision.as_str())];
        f.sample("tug_rollout_weight_ratio", &l, f64::from(r.weight) / 100.0);
    }
    let counted: [(&str, &str, &str); 5] = [
        ("tug_rollouts_started_total", "deploy", "Rollouts started since the daemon started."),
        ("tug_rollouts_completed_total", "deployed", "Rollouts that completed since the daemon started."),
        (
            "tug_rollouts_rolled_back_total",
            "rolled_back",
            "Rollouts rolled back (by analysis, a failure, a deadline or abort) since the daemon started.",
        ),
        ("tug_crash_loops_total", "crash_loop", "Times an instance of the service failed three times in a row."),
        ("tug_autoscale_decisions_total", "autoscale", "Replica changes the autoscaler made."),
    ];
    for (name, kind, help) in counted {
        let mut f = family(out, name, "counter", help);
        for s in &status.services {
            let n = events.iter().find(|(service, k, _)| *service == s.name && *k == kind).map_or(0, |(_, _, n)| *n);
            f.sample(name, &[("project", project), ("service", &s.name)], n as f64);
        }
    }
}

fn registry(out: &mut String, status: &StackStatus) {
    let Some(r) = &status.registry else { return };
    let project = status.project.as_str();
    let l = [("project", project), ("location", r.location.as_str())];
    family(
        out,
        "tug_registry_up",
        "gauge",
        "1 while the registry answers (0: stale, routers keep the last membership).",
    )
    .sample("tug_registry_up", &l, if r.state == "live" { 1.0 } else { 0.0 });
    family(out, "tug_registry_entries", "gauge", "Live instance entries in the registry, all hosts.").sample(
        "tug_registry_entries",
        &l,
        r.entries as f64,
    );
    family(out, "tug_registry_hosts", "gauge", "Hosts with live entries in the registry.").sample(
        "tug_registry_hosts",
        &l,
        r.hosts as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(accept: &[&str]) -> hyper::HeaderMap {
        let mut headers = hyper::HeaderMap::new();
        for value in accept {
            headers.append(hyper::header::ACCEPT_ENCODING, hyper::header::HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn gzip_is_sent_to_whoever_takes_it() {
        // Prometheus's own header, and the other ways of saying yes.
        for yes in [&["gzip"][..], &["gzip"], &["identity, gzip;q=0.5"], &["*"], &["br", "GZIP"]] {
            assert!(accepts_gzip(&with(yes)), "{yes:?}");
        }
        for no in [&[][..], &["identity"], &["gzip;q=0"], &["deflate, br"], &["*;q=0"], &["gzipx"]] {
            assert!(!accepts_gzip(&with(no)), "{no:?}");
        }
    }

    #[test]
    fn the_gzipped_scrape_decodes_to_the_text() {
        use std::io::Read;
        let text = "# HELP tug_x a family\n# TYPE tug_x gauge\n".to_string()
            + &(0..2000).map(|i| format!("tug_x{{service=\"web\",instance=\"web-{i}\"}} {i}\n")).collect::<String>();
        let packed = gzip(text.as_bytes()).unwrap();
        assert!(packed.len() * 5 < text.len(), "{} of {} bytes", packed.len(), text.len());
        let mut unpacked = String::new();
        flate2::read::GzDecoder::new(&packed[..]).read_to_string(&mut unpacked).unwrap();
        assert_eq!(unpacked, text);
    }
}
