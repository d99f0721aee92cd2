//! The CID table: which connection each of this router's connection IDs (and each client
//! connection's peer stateless-reset tokens) belongs to. Connection tasks change it only through
//! [`RouterCommand`]s, applied before the router reads more packets, so a CID is always mapped before
//! a peer can learn it.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::Router;
use crate::route::{Inbound, Route, RouterCommand};

impl Router {
    pub(super) fn apply(&mut self, command: RouterCommand) {
        match command {
            RouterCommand::Register(cid, route) => self.map(&cid, route),
            RouterCommand::Unregister(cids) => {
                for cid in cids {
                    self.unmap(&cid);
                }
            }
            RouterCommand::RegisterResetToken(token, route) => {
                self.reset_routes.insert(token, route);
            }
            RouterCommand::UnregisterResetToken(token) => {
                self.reset_routes.remove(&token);
            }
        }
    }

    pub(super) fn map(&mut self, cid: &[u8], route: Route) {
        let before = self.routes.len();
        self.routes.insert(cid, route);
        self.publish_route_count(before);
    }

    fn unmap(&mut self, cid: &[u8]) {
        let before = self.routes.len();
        self.routes.remove(cid);
        self.publish_route_count(before);
    }

    /// Keeps the endpoint's count of mapped connection IDs (all routers together) in step with this
    /// router's table after a change.
    fn publish_route_count(&self, before: usize) {
        let now = self.routes.len();
        let counter = &self.shared.counters.routed_connection_ids;
        if now > before {
            counter.fetch_add((now - before) as u64, Ordering::Relaxed);
        } else {
            counter.fetch_sub((before - now) as u64, Ordering::Relaxed);
        }
    }

    /// The connection whose peer's stateless-reset token ends `data`, if `data` could be a reset.
    pub(super) fn reset_token_route(&self, data: &[u8]) -> Option<Route> {
        if data.len() < super::admission::MIN_STATELESS_RESET_BYTES || self.reset_routes.is_empty() {
            return None;
        }
        let token = u128::from_be_bytes(data[data.len() - 16..].try_into().ok()?);
        self.reset_routes.get(&token).cloned()
    }

    /// The task behind `dead` ended without unregistering (it panicked, or its last command was lost):
    /// heal the table, dropping every CID of that connection, not just the one a packet named.
    pub(super) fn forget_dead_route(&mut self, dead: &mpsc::Sender<Inbound>) {
        let before = self.routes.len();
        self.routes.retain(|route| !route.inbound.same_channel(dead));
        self.publish_route_count(before);
        self.reset_routes.retain(|_, route| !route.inbound.same_channel(dead));
    }
}
