//! What happened, as it happens: deploys, rollbacks, promotions, restarts, crash loops and
//! autoscaling. The dashboard's timeline and the webhooks (`notify`) read this; nothing here
//! carries an environment value, only names, states, figures and the supervisor's own words.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;
use tug_proto::rollout::RolloutStatus;

/// How many past events a new reader (a dashboard opening) gets.
const RECENT: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A rollout started.
    Deploy,
    /// A rollout completed: the new revision serves everything.
    Deployed,
    RolledBack,
    /// A deploy stopped before anything changed (a `deploy.before` job failed).
    DeployFailed,
    /// Blue-green switched to the new set, or a canary was promoted by a person.
    Promoted,
    Restart,
    /// An instance failed three times in a row and waits out a growing backoff.
    CrashLoop,
    Autoscale,
    /// A scheduled backup was written.
    Backup,
    /// A scheduled backup failed.
    BackupFailed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Deployed => "deployed",
            Kind::RolledBack => "rolled_back",
            Kind::DeployFailed => "deploy_failed",
            Kind::Promoted => "promoted",
            Kind::Restart => "restart",
            Kind::CrashLoop => "crash_loop",
            Kind::Autoscale => "autoscale",
            Kind::Backup => "backup",
            Kind::BackupFailed => "backup_failed",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// RFC 3339.
    pub at: String,
    pub kind: Kind,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub message: String,
    /// For rollout events: where it stands, with the analysis figures it was decided on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

impl Event {
    pub fn new(kind: Kind, service: &str, message: impl Into<String>) -> Event {
        Event {
            at: tug_logs::format_time(std::time::SystemTime::now()),
            kind,
            service: service.to_string(),
            instance: None,
            message: message.into(),
            rollout: None,
        }
    }
}

pub struct Events {
    sender: broadcast::Sender<Event>,
    recent: Mutex<VecDeque<Event>>,
    /// Events so far by service and kind, since the daemon started (`/metrics`' counters).
    counts: Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
}

impl Default for Events {
    fn default() -> Self {
        Events { sender: broadcast::channel(256).0, recent: Mutex::new(VecDeque::new()), counts: Mutex::default() }
    }
}

impl Events {
    pub fn emit(&self, event: Event) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((event.service.clone(), event.kind.as_str()))
            .or_default() += 1;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        // Sent under the same lock: `recent_then_subscribe` sees each event once, in the list
        // or from the receiver.
        // No reader is fine: nobody is watching.
        let _ = self.sender.send(event);
    }

    /// The last events, oldest first, and a reader of every event after them: none missing, none
    /// twice (what a dashboard shows first, then follows).
    pub fn recent_then_subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        (recent.iter().cloned().collect(), self.sender.subscribe())
    }

    /// A reader of what happens from now on (a slow one misses the oldest, and is told).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    /// How many events of each kind each service had since the daemon started.
    pub fn counts(&self) -> Vec<(String, &'static str, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|((service, kind), n)| (service.clone(), *kind, *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// While events are emitted from another thread, what `recent_then_subscribe` lists and what
    /// its receiver gets after are one unbroken run: nothing twice, nothing missing between.
    #[test]
    fn the_recent_list_and_the_receiver_after_it_neither_overlap_nor_leave_a_gap() {
        let events = Arc::new(Events::default());
        let emitter = {
            let events = events.clone();
            std::thread::spawn(move || {
                for n in 0..3000 {
                    events.emit(Event::new(Kind::Deployed, "web", n.to_string()));
                }
            })
        };
        let mut checked = 0;
        while !emitter.is_finished() || checked == 0 {
            let (list, mut rx) = events.recent_then_subscribe();
            let mut seen: Vec<u32> = list.iter().map(|e| e.message.parse().unwrap()).collect();
            // A few of what follows (the channel keeps 256; the emitter may outrun a slow read).
            for _ in 0..50 {
                match rx.try_recv() {
                    Ok(e) => seen.push(e.message.parse().unwrap()),
                    Err(_) => break,
                }
            }
            assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
            checked += 1;
        }
        emitter.join().unwrap();
        assert!(checked > 0);
    }
}
