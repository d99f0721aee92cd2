//! Connection-ID sync with the router: as quiche issues and retires CIDs, the connection maps and
//! unmaps them at every router it is mapped at, before the peer can learn a new one.

use super::ConnectionCore;
use crate::route::{Route, RouterCommand};

/// Connection IDs we keep issued to the peer at once (bounded further by the peer's
/// `active_connection_id_limit`): enough for a migration or two without growing the CID table.
const MAX_ISSUED_CIDS: usize = 4;

impl ConnectionCore {
    /// Issues fresh CIDs to the peer as it has room and drops retired ones from the router.
    pub(super) async fn sync_cids(&mut self) {
        let mut retired = Vec::new();
        while let Some(cid) = self.conn.retired_scid_next() {
            let cid = cid.to_vec();
            self.registered.retain(|known| *known != cid);
            retired.push(cid);
        }
        if !retired.is_empty() {
            self.tell_routers(RouterCommand::Unregister(retired)).await;
        }
        if !self.conn.is_established() || self.conn.is_draining() {
            return;
        }
        self.store_session(false);
        if !self.conn.is_server() {
            self.sync_peer_reset_tokens().await;
        }
        while self.conn.scids_left() > 0 && self.conn.active_scids() < MAX_ISSUED_CIDS {
            let Some(inbound) = self.route.upgrade() else { return };
            let cid = self.router.cids.generate();
            let route = Route { inbound, queue: self.queue.clone() };
            // Map first: the router applies commands before reading, so the CID is routable before the
            // NEW_CONNECTION_ID frame that announces it leaves.
            if !self.tell_routers(RouterCommand::Register(cid.to_vec(), route)).await {
                return;
            }
            self.registered.push(cid.to_vec());
            if self.conn.new_scid(&cid, self.router.cids.reset_token(&cid), false).is_err() {
                self.registered.pop();
                self.tell_routers(RouterCommand::Unregister(vec![cid.to_vec()])).await;
                return;
            }
        }
    }

    /// Keeps the routers' map of the server's stateless-reset tokens in step with the connection IDs
    /// the server issued and we have not retired: a reset's connection ID is random, only its token
    /// says which connection it ends (RFC 9000 §10.3.1), and the server may send it for any ID we
    /// use, not only the one of its transport parameters (after a migration, or once it retired
    /// that one). quiche (vendor/quiche.patch) decides whether a routed reset counts. At most
    /// `active_connection_id_limit` tokens: quiche holds no more of the server's IDs than that.
    async fn sync_peer_reset_tokens(&mut self) {
        if self.conn.peer_stateless_reset_tokens().eq(self.peer_reset_tokens.iter().copied()) {
            return;
        }
        let Some(inbound) = self.route.upgrade() else { return };
        let current: Vec<u128> = self.conn.peer_stateless_reset_tokens().collect();
        for &token in self.peer_reset_tokens.iter().filter(|token| !current.contains(token)) {
            self.tell_routers(RouterCommand::UnregisterResetToken(token)).await;
        }
        for &token in current.iter().filter(|token| !self.peer_reset_tokens.contains(token)) {
            let route = Route { inbound: inbound.clone(), queue: self.queue.clone() };
            // A router that is gone maps nothing; the connection is ending then anyway.
            self.tell_routers(RouterCommand::RegisterResetToken(token, route)).await;
        }
        self.peer_reset_tokens = current;
    }

    /// Unregisters every stateless-reset token of the server from the routers (the connection ends).
    pub(super) async fn forget_peer_reset_tokens(&mut self) {
        for token in std::mem::take(&mut self.peer_reset_tokens) {
            self.tell_routers(RouterCommand::UnregisterResetToken(token)).await;
        }
    }

    /// Sends a CID-table change to every router this connection is mapped at: the current one and
    /// those it migrated away from. True if the current router took it.
    pub(super) async fn tell_routers(&self, command: RouterCommand) -> bool {
        for router in &self.other_routers {
            let _ = router.commands.send(command.clone()).await;
        }
        self.router.commands.send(command).await.is_ok()
    }

    /// As [`tell_routers`](Self::tell_routers), without waiting (from `Drop`); best effort: a router
    /// whose queue is full heals its table when a packet finds the connection gone.
    pub(super) fn try_tell_routers(&self, command: RouterCommand) {
        for router in &self.other_routers {
            let _ = router.commands.try_send(command.clone());
        }
        let _ = self.router.commands.try_send(command);
    }
}
