//! Many connections that complete their handshake and then do nothing but stay alive.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::peer::{CONNECTION_REFUSED, PeerSettings, QuicPeer};

/// Handshakes [`open_idle`] runs at once: enough to open a thousand connections in a second or two
/// without one burst overflowing the server's accept queue.
const PARALLEL_HANDSHAKES: usize = 64;

/// How long one handshake may take before it counts as failed. A server past its refusal rate
/// drops Initials silently, and waiting for quiche's idle timeout on each would take minutes.
const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(3);

/// Connections opened by [`open_idle`]. Each open one has a task that keeps it alive (PINGs before
/// the idle timeout, nothing else); dropping this value ends them all (they then idle out on the
/// server).
pub struct IdleConnections {
    /// Connections the server accepted (handshake complete, HTTP/3 started).
    pub open: usize,
    /// Connections the server refused with CONNECTION_REFUSED.
    pub refused: usize,
    /// Connections that failed otherwise (no answer in time, another close, no socket).
    pub failed: usize,
    keepers: JoinSet<()>,
}

impl IdleConnections {
    /// Connections whose keep-alive task is still running (the server has not closed them).
    pub fn alive(&mut self) -> usize {
        while self.keepers.try_join_next().is_some() {}
        self.keepers.len()
    }
}

/// How one connection attempt of [`open_idle`] ended.
enum Attempt {
    Open,
    Refused,
    Failed,
}

/// Opens `count` connections to `server`, 64 handshakes at a time, each from a socket of its own
/// on `bind_ip` (port chosen by the system), and keeps the accepted ones idle but alive.
///
/// # Errors
/// Only if the runtime is shutting down; connections that cannot even get a socket count as failed.
///
/// # Cancel safety
/// Cancel-safe: connections opened so far are dropped and idle out on the server.
pub async fn open_idle(
    settings: &PeerSettings,
    bind_ip: IpAddr,
    server: SocketAddr,
    count: usize,
) -> io::Result<IdleConnections> {
    let permits = Arc::new(Semaphore::new(PARALLEL_HANDSHAKES));
    // One report per attempt, so `count` slots never make a sender wait.
    let (report_tx, mut report_rx) = mpsc::channel(count.max(1));
    let mut keepers = JoinSet::new();
    for _ in 0..count {
        let permit = permits.clone().acquire_owned().await.map_err(io::Error::other)?;
        let (settings, report) = (settings.clone(), report_tx.clone());
        keepers.spawn(async move {
            let attempt = handshake(&settings, bind_ip, server).await;
            drop(permit);
            match attempt {
                Ok(mut peer) => {
                    let _ = report.send(Attempt::Open).await;
                    drop(report);
                    let _ = peer.keep_alive(false).await;
                }
                Err(attempt) => {
                    let _ = report.send(attempt).await;
                }
            }
        });
    }
    drop(report_tx);
    let mut idle = IdleConnections { open: 0, refused: 0, failed: 0, keepers };
    while let Some(attempt) = report_rx.recv().await {
        match attempt {
            Attempt::Open => idle.open += 1,
            Attempt::Refused => idle.refused += 1,
            Attempt::Failed => idle.failed += 1,
        }
    }
    Ok(idle)
}

async fn handshake(settings: &PeerSettings, bind_ip: IpAddr, server: SocketAddr) -> Result<QuicPeer, Attempt> {
    let mut config = settings.quiche_config().map_err(|_| Attempt::Failed)?;
    let mut peer = QuicPeer::connect(&mut config, settings, SocketAddr::new(bind_ip, 0), server)
        .await
        .map_err(|_| Attempt::Failed)?;
    match tokio::time::timeout(HANDSHAKE_PATIENCE, peer.establish()).await {
        Ok(Ok(())) => {
            peer.start_h3().map_err(|_| Attempt::Failed)?;
            peer.flush().await.map_err(|_| Attempt::Failed)?;
            Ok(peer)
        }
        _ if peer.peer_error() == Some((false, CONNECTION_REFUSED)) => Err(Attempt::Refused),
        _ => Err(Attempt::Failed),
    }
}
