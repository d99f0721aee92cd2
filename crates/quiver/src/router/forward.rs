//! Forwarding between the routers of one endpoint: a packet whose connection ID names another router
//! (a client whose address changed lands on another socket of a `SO_REUSEPORT` group) goes to that
//! router's forward queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::Router;
use crate::cid;
use crate::route::Inbound;
use crate::stats::DropReason;

/// Datagrams another router may have queued for this one (packets that arrived on a sibling socket
/// of a `SO_REUSEPORT` group, after a client's address changed). Forwarding is rare; past this, the
/// sender drops and counts, as for a full connection queue.
pub(crate) const FORWARD_QUEUE: usize = 1024;

/// How a router reaches its siblings (the other sockets of its endpoint) to forward packets whose
/// connection ID names them.
#[derive(Debug, Clone)]
pub(crate) struct Siblings {
    pub(crate) forward: Arc<[mpsc::Sender<Inbound>]>,
}

impl Router {
    /// Sends a datagram whose connection ID names another router of this endpoint to that router (a
    /// client whose address changed lands on another socket of a `SO_REUSEPORT` group). Returns false
    /// if the ID names no other router.
    pub(super) fn forward_to_owner(&self, data: &[u8], dcid: &[u8], from: SocketAddr) -> bool {
        let Some(owner) = cid::router_index(dcid).filter(|owner| *owner != self.index) else { return false };
        let Some(sibling) = self.siblings.forward.get(owner) else { return false };
        let counters = &self.shared.counters;
        let mut buffer = self.shared.small_buffers.take();
        let Some(copy) = buffer.get_mut(..data.len()) else {
            self.shared.small_buffers.give_back(buffer);
            return false;
        };
        copy.copy_from_slice(data);
        match sibling.try_send(Inbound::new(buffer, data.len(), data.len(), from)) {
            Ok(()) => {
                counters.datagrams_forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(inbound) | TrySendError::Closed(inbound)) => {
                self.shared.small_buffers.give_back(inbound.buffer);
                counters.drop(DropReason::ForwardQueueFull);
            }
        }
        true
    }
}
