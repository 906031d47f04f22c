//! The autoscaler: each second, for every service with `autoscale`, the average CPU and memory
//! of its ready instances (their whole process groups) and the requests a second its router
//! gave each of them, against the targets; the replicas follow as Kubernetes' HPA does:
//! `ceil(replicas × measured / target)` for the most demanding target, within `min` and `max`,
//! ignoring changes within 10%. Up at once; down only to the highest recommendation of the
//! stabilization window, so a dip does not shed capacity. Never during a rollout of the service.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tug_proto::rollout::AutoscaleStatus;
use tug_proto::spec::{AutoscaleSpec, ServiceSpec};
use tug_proto::status::State;

use crate::Supervisor;

const PERIOD: Duration = Duration::from_secs(1);
/// Measurements are averaged over this long, so one busy second does not double the replicas.
const SMOOTHING: Duration = Duration::from_secs(3);
/// A ratio this close to 1 changes nothing (HPA's default tolerance).
const TOLERANCE: f64 = 0.1;

/// One service's measurements and recommendations.
#[derive(Default)]
struct Scaler {
    /// Per instance: when, and its group's CPU ticks then.
    cpu_seen: HashMap<String, (Instant, u64)>,
    /// Each second's figures.
    readings: VecDeque<(Instant, Figures)>,
    requests_seen: Option<(Instant, u64)>,
    recommendations: VecDeque<(Instant, u32)>,
    /// A scale it ordered is still running.
    busy: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) async fn run(sup: Supervisor) {
    let mut scalers: HashMap<String, Scaler> = HashMap::new();
    let ticks_per_second = tug_sys::procfs::clock_ticks_per_second().max(1) as f64;
    let machine_memory = machine_memory_bytes();
    let mut interval = tokio::time::interval(PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let services: Vec<Candidate> = {
            let t = sup.inner.lock();
            if t.shutting_down {
                return;
            }
            t.services
                .iter()
                .filter(|(_, s)| s.spec.autoscale.is_some() && s.active)
                .map(|(name, s)| {
                    let ready = t
                        .instances
                        .values()
                        .filter(|i| i.status.service == *name && i.status.revision == s.spec.revision)
                        .filter(|i| match i.status.state {
                            State::Healthy => true,
                            State::Running => s.spec.healthcheck.is_none(),
                            _ => false,
                        })
                        .filter_map(|i| Some((i.status.instance.clone(), i.group?)))
                        .collect();
                    Candidate { name: name.clone(), spec: s.spec.clone(), rolling_out: s.rolling_out(), ready }
                })
                .collect()
        };
        scalers.retain(|name, _| services.iter().any(|c| &c.name == name));
        // Measuring reads every process in /proc: not once a second for a stack that
        // autoscales nothing.
        if services.is_empty() {
            continue;
        }
        let groups: Vec<i32> = services.iter().flat_map(|c| c.ready.iter().map(|(_, pid)| *pid)).collect();
        let usage = tug_sys::procfs::groups_usage_except(&groups, Some(crate::shim::NAME));
        let now = Instant::now();
        for Candidate { name, spec, rolling_out, ready } in services {
            let Some(target) = spec.autoscale.clone() else { continue };
            let scaler = scalers.entry(name.clone()).or_default();
            if scaler.busy.as_ref().is_some_and(|task| !task.is_finished()) {
                continue;
            }
            scaler.busy = None;
            // CPU: each ready instance's ticks since the last reading, as a share of its allowance.
            let allowance = spec.cpu.unwrap_or(1.0).max(0.001);
            let mut cpu = Vec::new();
            let mut memory = Vec::new();
            for (instance, pid) in &ready {
                let Some(u) = usage.get(pid) else { continue };
                if let Some((at, ticks)) = scaler.cpu_seen.get(instance) {
                    let seconds = now.duration_since(*at).as_secs_f64();
                    if seconds > 0.0 {
                        let used = u.cpu_ticks.saturating_sub(*ticks) as f64 / ticks_per_second;
                        cpu.push(used / seconds / allowance);
                    }
                }
                scaler.cpu_seen.insert(instance.clone(), (now, u.cpu_ticks));
                let limit = spec.memory_bytes.unwrap_or(machine_memory).max(1) as f64;
                memory.push(u.rss_bytes as f64 / limit);
            }
            scaler.cpu_seen.retain(|instance, _| ready.iter().any(|(i, _)| i == instance));
            let requests = sup.inner.routing.stats(Some(&name)).services.first().map(|s| s.total.requests);
            let rps = match (requests, scaler.requests_seen) {
                (Some(total), Some((at, before))) if !ready.is_empty() => {
                    let seconds = now.duration_since(at).as_secs_f64().max(0.001);
                    Some(total.saturating_sub(before) as f64 / seconds / ready.len() as f64)
                }
                _ => None,
            };
            scaler.requests_seen = requests.map(|r| (now, r));
            let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            scaler.readings.push_back((now, Figures { cpu: mean(&cpu), memory: mean(&memory), rps }));
            while scaler.readings.front().is_some_and(|(at, _)| now.duration_since(*at) > SMOOTHING) {
                scaler.readings.pop_front();
            }
            if rolling_out || ready.is_empty() {
                continue;
            }
            let current = spec.replicas;
            let figures = Figures::average(&scaler.readings);
            let Some((desired, why)) = recommend(current, &target, &figures) else { continue };
            let window = Duration::from_millis(target.scale_down_stabilization_ms);
            scaler.recommendations.push_back((now, desired));
            while scaler.recommendations.front().is_some_and(|(at, _)| now.duration_since(*at) > window) {
                scaler.recommendations.pop_front();
            }
            // Down only as far as the highest recommendation of the window.
            let stable_floor = scaler.recommendations.iter().map(|(_, d)| *d).max().unwrap_or(desired);
            let next = if desired > current { desired } else { stable_floor.min(current) };
            let status = |decision: Option<String>| AutoscaleStatus {
                min: target.min,
                max: target.max,
                desired: next,
                last_decision: decision,
                decided_at: Some(tug_logs::format_time(std::time::SystemTime::now())),
            };
            if next == current {
                sup.inner.update(|t| {
                    if let Some(s) = t.services.get_mut(&name) {
                        let last = s.autoscale.as_ref().and_then(|a| a.last_decision.clone());
                        let at = s.autoscale.as_ref().and_then(|a| a.decided_at.clone());
                        s.autoscale = Some(AutoscaleStatus { last_decision: last, decided_at: at, ..status(None) });
                    }
                });
                continue;
            }
            let decision = format!("{current} → {next} replicas: {why}");
            crate::log::info(&format!("autoscale {decision}"), &[("service", &name)]);
            sup.inner.events.emit(crate::events::Event::new(
                crate::events::Kind::Autoscale,
                &name,
                format!("autoscale {decision}"),
            ));
            sup.inner.update(|t| {
                if let Some(s) = t.services.get_mut(&name) {
                    s.autoscale = Some(status(Some(decision.clone())));
                }
            });
            let this = sup.clone();
            let service = name.clone();
            scaler.busy = Some(tokio::spawn(async move {
                if let Err(e) = this.scale(&service, next).await {
                    crate::log::warn(&format!("autoscale could not scale: {e}"), &[("service", &service)]);
                }
            }));
        }
    }
}

/// An autoscaled service as one pass sees it.
struct Candidate {
    name: String,
    spec: Arc<ServiceSpec>,
    rolling_out: bool,
    /// Its ready instances of the current revision: (instance, process group).
    ready: Vec<(String, i32)>,
}

/// Per instance: CPU as a share of its allowance, memory as a share of its limit (or of the
/// machine), requests a second its router gave it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Figures {
    cpu: Option<f64>,
    memory: Option<f64>,
    rps: Option<f64>,
}

impl Figures {
    /// The mean of each figure over the readings that have it.
    fn average(readings: &VecDeque<(Instant, Figures)>) -> Figures {
        let avg = |pick: fn(&Figures) -> Option<f64>| {
            let v: Vec<f64> = readings.iter().filter_map(|(_, f)| pick(f)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        Figures { cpu: avg(|f| f.cpu), memory: avg(|f| f.memory), rps: avg(|f| f.rps) }
    }
}

/// The replicas the figures call for, and the figures that drove it; `None` without figures.
fn recommend(current: u32, target: &AutoscaleSpec, figures: &Figures) -> Option<(u32, String)> {
    let mut reasons = Vec::new();
    let mut desired: Option<u32> = None;
    let mut consider = |measured: Option<f64>, wanted: Option<f64>, describe: &dyn Fn(f64, f64) -> String| {
        let (Some(m), Some(w)) = (measured, wanted) else { return };
        if w <= 0.0 {
            return;
        }
        let ratio = m / w;
        let n = if (ratio - 1.0).abs() <= TOLERANCE { current } else { (f64::from(current) * ratio).ceil() as u32 };
        reasons.push(describe(m, w));
        desired = Some(desired.map_or(n, |d| d.max(n)));
    };
    consider(figures.cpu, target.cpu_percent.map(|p| p / 100.0), &|m, w| {
        format!("cpu {:.0}% per instance (target {:.0}%)", m * 100.0, w * 100.0)
    });
    consider(figures.memory, target.memory_percent.map(|p| p / 100.0), &|m, w| {
        format!("memory {:.0}% per instance (target {:.0}%)", m * 100.0, w * 100.0)
    });
    consider(figures.rps, target.requests_per_second, &|m, w| format!("{m:.1} requests/s per instance (target {w})"));
    let desired = desired?.clamp(target.min, target.max.max(target.min));
    Some((desired, reasons.join(", ")))
}

fn machine_memory_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages > 0 && size > 0 { pages as u64 * size as u64 } else { u64::MAX }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(min: u32, max: u32) -> AutoscaleSpec {
        AutoscaleSpec {
            min,
            max,
            cpu_percent: Some(50.0),
            memory_percent: None,
            requests_per_second: Some(20.0),
            scale_down_stabilization_ms: 300_000,
        }
    }

    #[test]
    fn the_most_demanding_target_wins_within_bounds() {
        let f = Figures { cpu: Some(0.25), memory: None, rps: Some(60.0) };
        let (n, why) = recommend(2, &target(1, 10), &f).unwrap();
        assert_eq!(n, 6, "60/s against 20/s triples 2 replicas; cpu alone would halve them");
        assert!(why.contains("60.0 requests/s") && why.contains("cpu 25%"), "{why}");
        assert_eq!(recommend(2, &target(1, 4), &f).unwrap().0, 4, "capped at max");
        let idle = Figures { cpu: Some(0.0), memory: None, rps: Some(0.0) };
        assert_eq!(recommend(5, &target(2, 10), &idle).unwrap().0, 2, "never below min");
    }

    #[test]
    fn small_deviations_change_nothing_and_no_figures_no_decision() {
        let f = Figures { cpu: Some(0.53), memory: None, rps: Some(21.0) };
        assert_eq!(recommend(3, &target(1, 10), &f).unwrap().0, 3);
        assert_eq!(recommend(3, &target(1, 10), &Figures::default()), None);
    }
}
