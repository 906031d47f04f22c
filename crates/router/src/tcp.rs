//! TCP mode: each connection is copied both ways to one backend.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::table::{InFlight, Shared, Tried};

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors, for example: wait instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(forward(shared.clone(), client));
    }
}

/// Connects to a backend (another one if connecting fails, within the
/// attempts allowed) and copies until either side closes. With no backend the
/// client's connection is closed.
async fn forward(shared: Arc<Shared>, mut client: TcpStream) {
    let mut tried = Tried::default();
    while tried.len() < shared.config.connect_attempts {
        let Some(endpoint) = shared.select(None, &tried, true) else { return };
        let guard = InFlight::new(endpoint);
        match guard.0.connect(shared.config.connect_timeout).await {
            Ok(mut upstream) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Err(_) => tried.push(&guard.0),
        }
    }
}
