//! Many connections that complete their handshake and then do nothing but stay alive.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::task::JoinSet;

use super::peer::{CONNECTION_REFUSED, PeerSettings, QuicPeer};

/// Connections opened by [`open_idle`]. Each open one has a task that keeps it alive (PINGs before
/// the idle timeout, nothing else); dropping this value ends them all (they then idle out on the
/// server).
pub struct IdleConnections {
    /// Connections the server accepted (handshake complete, HTTP/3 started).
    pub open: usize,
    /// Connections the server refused with CONNECTION_REFUSED.
    pub refused: usize,
    /// Connections that failed otherwise (timed out, closed with another code).
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

/// Opens `count` connections to `server`, one after another, each from a socket of its own on
/// `bind_ip` (port chosen by the system), and keeps the accepted ones idle but alive.
///
/// # Errors
/// A socket cannot be bound (file-descriptor limit) or quiche refuses the configuration.
///
/// # Cancel safety
/// Cancel-safe: connections opened so far are dropped and idle out on the server.
pub async fn open_idle(
    settings: &PeerSettings,
    bind_ip: IpAddr,
    server: SocketAddr,
    count: usize,
) -> io::Result<IdleConnections> {
    let mut config = settings.quiche_config()?;
    let mut idle = IdleConnections { open: 0, refused: 0, failed: 0, keepers: JoinSet::new() };
    for _ in 0..count {
        let mut peer = QuicPeer::connect(&mut config, settings, SocketAddr::new(bind_ip, 0), server).await?;
        match peer.establish().await {
            Ok(()) => {
                peer.start_h3()?;
                idle.open += 1;
                idle.keepers.spawn(async move {
                    let _ = peer.keep_alive(false).await;
                });
            }
            Err(_) if peer.peer_error() == Some((false, CONNECTION_REFUSED)) => idle.refused += 1,
            Err(_) => idle.failed += 1,
        }
    }
    Ok(idle)
}
