//! State every router and connection task of one endpoint shares: counters, buffer pools, the
//! shutdown and drain signals, per-source limits and the client's session cache.
//!
//! A leaf module: the endpoint builds it, routers and connections read it, and it imports none of
//! them, so neither side has to import the other to reach it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::{Notify, watch};

use crate::buffer::{BufferPool, LARGE_BUFFER_BYTES};
use crate::limits::{SourceCounts, SourceRates};
use crate::stats::EndpointCounters;

/// State every router and connection task of one endpoint shares.
#[derive(Debug)]
pub(crate) struct EndpointShared {
    pub(crate) counters: EndpointCounters,
    /// GSO send batches and GRO receive batches.
    pub(crate) large_buffers: BufferPool,
    /// Single received datagrams.
    pub(crate) small_buffers: BufferPool,
    /// Notified when the last connection task ends.
    pub(crate) idle: Notify,
    shutdown: watch::Sender<bool>,
    /// Set by a graceful shutdown: no new connections, applications finish and close.
    drain: watch::Sender<bool>,
    /// Handshake rate per client address, if the server limits it.
    pub(crate) source_rates: Option<SourceRates>,
    /// Live connections per client address, if the server limits them.
    pub(crate) source_connections: Option<SourceCounts>,
    /// Handshakes in flight per client address (servers).
    pub(crate) source_handshakes: Option<SourceCounts>,
}

impl EndpointShared {
    pub(crate) fn new(
        source_rates: Option<SourceRates>,
        source_connections: Option<SourceCounts>,
        source_handshakes: Option<SourceCounts>,
    ) -> Self {
        Self {
            counters: EndpointCounters::default(),
            large_buffers: BufferPool::large(),
            small_buffers: BufferPool::small(),
            idle: Notify::new(),
            shutdown: watch::channel(false).0,
            drain: watch::channel(false).0,
            source_rates,
            source_connections,
            source_handshakes,
        }
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Stops every router and closes every connection.
    pub(crate) fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether the endpoint has shut down.
    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Begins a graceful shutdown: no new connections, applications are asked to finish.
    pub(crate) fn start_drain(&self) {
        self.drain.send_replace(true);
    }

    /// A connection from `source` ended (or never started): gives back its per-source connection slot.
    pub(crate) fn forget_connection(&self, source: std::net::IpAddr) {
        if let Some(sources) = &self.source_connections {
            sources.remove(source);
        }
    }

    /// A handshake from `source` ended (established, failed or never started): gives back its slot.
    pub(crate) fn forget_handshake(&self, source: std::net::IpAddr) {
        if let Some(sources) = &self.source_handshakes {
            sources.remove(source);
        }
    }

    /// Whether a graceful shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Returns a buffer from either pool to the pool it came from.
    pub(crate) fn give_back(&self, buffer: Vec<u8>) {
        if buffer.len() == LARGE_BUFFER_BYTES {
            self.large_buffers.give_back(buffer);
        } else {
            self.small_buffers.give_back(buffer);
        }
    }
}

/// Which server a session ticket is for: the name it was verified as and its address.
pub(crate) type SessionKey = (String, SocketAddr);

/// Session tickets a client endpoint remembers, for resumption and 0-RTT. Tickets are a few hundred
/// bytes; past [`SESSION_CACHE_ENTRIES`] servers, an arbitrary old one is forgotten.
#[derive(Debug, Default)]
pub(crate) struct SessionCache {
    sessions: Mutex<HashMap<SessionKey, Vec<u8>>>,
}

/// Servers a client endpoint keeps a session ticket for.
const SESSION_CACHE_ENTRIES: usize = 1024;

impl SessionCache {
    pub(crate) fn store(&self, key: SessionKey, session: Vec<u8>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if sessions.len() >= SESSION_CACHE_ENTRIES
            && !sessions.contains_key(&key)
            && let Some(victim) = sessions.keys().next().cloned()
        {
            sessions.remove(&victim);
        }
        sessions.insert(key, session);
    }

    pub(crate) fn get(&self, key: &SessionKey) -> Option<Vec<u8>> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(key).cloned()
    }
}
