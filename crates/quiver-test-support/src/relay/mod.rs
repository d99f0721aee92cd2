//! UDP relays between one client and one server on loopback. The client sends to the relay's
//! address; the relay forwards to the server from a socket of its own and sends the answers back to
//! the address the client last sent from.
//!
//! - [`lossy`]: drops, duplicates, reorders and delays datagrams, seeded and per direction;
//! - [`path_change`]: after a given number of client datagrams, a NAT rebinding or a new server;
//! - [`gated`]: holds the server's datagrams until the test opens the gate.

pub mod gated;
pub mod lossy;
pub mod path_change;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Largest datagram a relay carries: anything QUIC sends over loopback (64 KiB UDP payload).
pub const MAX_DATAGRAM_BYTES: usize = 65_535;

/// The client's latest address, as the client-side reader saw it; shared with the task that sends
/// the server's datagrams back.
#[derive(Debug, Clone, Default)]
struct ClientAddress(Arc<Mutex<Option<SocketAddr>>>);

impl ClientAddress {
    fn remember(&self, from: SocketAddr) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(from);
    }

    fn get(&self) -> Option<SocketAddr> {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
