//! A listener's life: connections counted while they live, drained on
//! shutdown, dropped once the grace period is over; and a connection's own
//! end at its maximum age.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::balance;

/// Where a router is in its shutdown. Connections watch it; a router dropped
/// without [`Router::shutdown`](crate::Router::shutdown) stays `Serving` for
/// them forever (they go on until their clients leave).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Serving,
    /// Finish what is in flight, take nothing new.
    Draining,
    /// Drop everything still open.
    Stopped,
}

/// Resolves once the router has reached `phase`; never if it was dropped first.
pub(crate) async fn reached(mut phase: watch::Receiver<Phase>, wanted: Phase) {
    if phase.wait_for(|p| *p >= wanted).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs `work` until it ends or the router stops.
pub(crate) async fn until_stopped(phase: watch::Receiver<Phase>, work: impl Future<Output = ()>) {
    tokio::select! {
        biased;
        () = work => {}
        () = reached(phase, Phase::Stopped) => {}
    }
}

/// Accepts connections until the router is dropped, each served by `serve(stream, peer, live,
/// place)` (the place in the connection limit, held for as long as the connection lives: an
/// upgraded one's tunnel included)
/// in a task of its own that ends when the router stops. Over its connection limit a
/// connection is closed at once, so its client fails fast instead of waiting in the backlog.
pub(crate) async fn accept<F, W>(listener: tokio::net::TcpListener, shared: &Arc<crate::table::Shared>, serve: F)
where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr, Live, crate::config::Place) -> W,
    W: Future<Output = ()> + Send + 'static,
{
    let accepting = shared.config.connections.seat();
    loop {
        // Strict turns are safe: the router holding fewest connections always may accept, and
        // router threads never block, so a new connection waits at most for that thread's
        // current batch of work.
        shared.config.connections.wait_turn(&accepting.seat).await;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors, for example: wait instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(place) = shared.config.connections.acquire(&accepting.seat) else { continue };
        let live = shared.tracker.enter();
        tokio::spawn(until_stopped(shared.phase.clone(), serve(stream, peer, live, place)));
    }
}

/// Serves one HTTP connection: at its maximum age or when the router drains,
/// asks it to end gracefully (`graceful`), and drops it if the router stops.
pub(crate) async fn drive<C: Future>(
    conn: C,
    graceful: impl FnOnce(Pin<&mut C>),
    phase: watch::Receiver<Phase>,
    max_age: Option<Duration>,
) {
    let mut conn = pin!(conn);
    let aged = async {
        match max_age {
            Some(age) => tokio::time::sleep(jittered(age)).await,
            None => std::future::pending().await,
        }
    };
    // Biased: the connection is what wakes this task nearly every time.
    tokio::select! {
        biased;
        _ = conn.as_mut() => return,
        () = aged => {}
        () = reached(phase.clone(), Phase::Draining) => {}
    }
    graceful(conn.as_mut());
    until_stopped(phase, async {
        conn.await;
    })
    .await;
}

/// `d` ± 10%, so connections opened together do not all close together.
pub(crate) fn jittered(d: Duration) -> Duration {
    let unit = (balance::random() >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.9 + 0.2 * unit)
}

/// Counts what is open (client connections, upgraded tunnels, TCP streams)
/// so shutdown can wait for it (the cap is the `ConnectionLimit`).
#[derive(Default)]
pub(crate) struct Tracker {
    live: AtomicUsize,
    none_left: Notify,
}

/// One open thing; uncounted when dropped.
pub(crate) struct Live(Arc<Tracker>);

impl Tracker {
    pub fn enter(self: &Arc<Self>) -> Live {
        self.live.fetch_add(1, SeqCst);
        Live(self.clone())
    }

    pub fn count(&self) -> usize {
        self.live.load(SeqCst)
    }

    /// Returns once nothing is open.
    pub async fn idle(&self) {
        loop {
            let mut notified = pin!(self.none_left.notified());
            // Registered before the check, so a drop in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, SeqCst) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = Duration::from_secs(100);
        let spread: Vec<Duration> = (0..1000).map(|_| jittered(d)).collect();
        assert!(spread.iter().all(|j| (Duration::from_secs(90)..=Duration::from_secs(110)).contains(j)));
        assert!(
            spread.iter().any(|j| *j < Duration::from_secs(95)) && spread.iter().any(|j| *j > Duration::from_secs(105))
        );
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_one() {
        let tracker = Arc::new(Tracker::default());
        tracker.idle().await;
        let (a, b) = (tracker.enter(), tracker.enter());
        let waiter = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn reached_never_resolves_for_a_dropped_router() {
        let (tx, rx) = watch::channel(Phase::Serving);
        drop(tx);
        let waited = tokio::time::timeout(Duration::from_millis(20), reached(rx, Phase::Draining)).await;
        assert!(waited.is_err());
        let (tx, rx) = watch::channel(Phase::Serving);
        tx.send_replace(Phase::Stopped);
        drop(tx);
        // Already there: resolves at once even though the sender is gone.
        reached(rx, Phase::Draining).await;
    }
}
