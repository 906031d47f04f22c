//! The registry in the daemon's memory: the same TTL semantics as Redis, on tokio's clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::{Config, Entry, Membership, Registry, RegistryError, Status, check_entries, publish};

struct State {
    entries: HashMap<String, (Entry, Instant)>,
}

struct Shared {
    state: Mutex<State>,
    tx: watch::Sender<Arc<Membership>>,
    /// Wakes the sweeper when an expiry moved earlier.
    wake: Arc<Notify>,
}

/// The embedded registry. Dropping it stops its sweeper.
pub struct EmbeddedRegistry {
    shared: Arc<Shared>,
    project: String,
    config: Config,
    sweeper: tokio::task::JoinHandle<()>,
}

impl EmbeddedRegistry {
    /// Must be called inside a tokio runtime: starts the task that drops expired entries.
    pub fn new(project: &str, config: Config) -> EmbeddedRegistry {
        let (tx, _) = watch::channel(Arc::new(Membership::new(Vec::new(), Status::Live)));
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared { state: Mutex::new(State { entries: HashMap::new() }), tx, wake: wake.clone() });
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&shared), wake));
        EmbeddedRegistry { shared, project: project.to_string(), config, sweeper }
    }
}

impl Drop for EmbeddedRegistry {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops expired entries and publishes the membership. Returns the next expiry.
    fn refresh(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        state.entries.retain(|_, (_, expiry)| *expiry > now);
        let live = state.entries.values().map(|(e, _)| e.clone()).collect();
        let next = state.entries.values().map(|(_, expiry)| *expiry).min();
        publish(&self.tx, Membership::new(live, Status::Live));
        next
    }
}

async fn sweep(shared: Weak<Shared>, notify: Arc<Notify>) {
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let wake = notify.notified();
        tokio::pin!(wake);
        // Register interest before releasing the strong reference, so a wake in between is not lost.
        wake.as_mut().enable();
        let next = strong.refresh();
        drop(strong);
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = &mut wake => {}
                }
            }
            None => wake.await,
        }
    }
}

impl Registry for EmbeddedRegistry {
    async fn register(&self, entries: &[Entry]) -> Result<(), RegistryError> {
        check_entries(entries)?;
        let expiry = Instant::now() + self.config.ttl;
        {
            let mut state = self.shared.lock();
            for e in entries {
                state.entries.insert(e.instance.clone(), (e.clone(), expiry));
            }
        }
        self.shared.refresh();
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn deregister(&self, instances: &[String]) -> Result<(), RegistryError> {
        {
            let mut state = self.shared.lock();
            for i in instances {
                state.entries.remove(i);
            }
        }
        self.shared.refresh();
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn snapshot(&self) -> Result<Vec<Entry>, RegistryError> {
        self.shared.refresh();
        Ok(self.shared.tx.borrow().entries.clone())
    }

    fn watch(&self) -> watch::Receiver<Arc<Membership>> {
        self.shared.tx.subscribe()
    }

    fn project(&self) -> &str {
        &self.project
    }
}
