//! TCP mode: each connection is copied both ways to one backend.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use crate::config::Place;
use crate::lifecycle::Live;
use crate::stats::Counters;
use crate::table::{InFlight, Shared, Tried};

/// Bytes buffered each way per copied connection, as HAProxy's and nginx's
/// defaults: fewer system calls than tokio's 8 KiB, little memory.
pub(crate) const COPY_BUFFER: usize = 16 << 10;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    crate::lifecycle::accept(listener, &shared, |client, _, live, place| {
        let _ = client.set_nodelay(true);
        forward(shared.clone(), client, live, place)
    })
    .await;
}

/// Connects to a backend (another one if connecting fails, within the
/// attempts and the retry budget) and copies until either side closes. With
/// no backend the client's connection is closed.
pub(crate) async fn forward(shared: Arc<Shared>, mut client: TcpStream, _live: Live, _place: Place) {
    let Some((_in_flight, mut upstream)) = connect(&shared).await else { return };
    copy(&mut client, &mut upstream).await;
}

/// Bytes both ways until either side closes.
pub(crate) async fn copy(client: &mut TcpStream, upstream: &mut TcpStream) {
    let _ = tokio::io::copy_bidirectional_with_sizes(client, upstream, COPY_BUFFER, COPY_BUFFER).await;
}

/// A connection to a backend, counted in flight on it while the guard lives: another backend
/// if connecting fails, within the attempts and the retry budget. None when none could be
/// reached (or there is none).
pub(crate) async fn connect(shared: &Arc<Shared>) -> Option<(InFlight, TcpStream)> {
    shared.budget.deposit();
    let mut tried = Tried::default();
    let Some(mut endpoint) = shared.select(None, &mut tried, true) else {
        Counters::bump(&shared.unrouted);
        return None;
    };
    loop {
        tried.push(&endpoint);
        let guard = InFlight::new(endpoint);
        let counters = &guard.0.counters;
        let started = Instant::now();
        match guard.0.connect(shared.config.connect_timeout).await {
            Ok(upstream) => {
                counters.observe(started.elapsed());
                shared.succeeded(&guard.0);
                return Some((guard, upstream));
            }
            Err(_) => {
                Counters::bump(&counters.failures);
                shared.failed(&guard.0);
                if tried.len() < shared.config.retry.max_attempts
                    && let Some(next) = shared.select(None, &mut tried, true)
                {
                    if shared.budget.withdraw() {
                        Counters::bump(&counters.retries);
                        endpoint = next;
                        continue;
                    }
                    Counters::bump(&shared.retries_denied);
                }
                // The connection is counted where it last failed.
                counters.observe(started.elapsed());
                return None;
            }
        }
    }
}
