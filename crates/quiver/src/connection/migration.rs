//! Client-side active migration (RFC 9000 §9): map the connection at another socket's router, probe
//! the new path, switch once the peer answered, re-probe on a timer of our own.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ConnectionCore;
use crate::error::{MigrateError, MigrateRefusal};
use crate::route::{Route, RouterCommand, RouterHandle};

/// A client's migration whose new path is being validated.
pub(super) struct PendingMigration {
    /// The new local address.
    local: SocketAddr,
    /// The server's address, which the probes go to.
    peer: SocketAddr,
    /// Who to tell the outcome.
    reply: oneshot::Sender<Result<(), MigrateError>>,
    /// When to send the next PATH_CHALLENGE if no answer came.
    pub(super) next_probe: Instant,
    /// Challenges sent so far.
    probes: u32,
}

/// PATH_CHALLENGEs a migration sends before it gives up. quiche sends a new challenge only when the
/// packet carrying the last one is lost; when that packet is acknowledged but the PATH_RESPONSE is
/// lost (a full inbound queue under load drops it), validation would wait forever. The connection
/// therefore re-probes on a timer of its own, as RFC 9000 §8.2.4 has the initiator do.
const MAX_MIGRATION_PROBES: u32 = 5;

/// The first wait for a PATH_RESPONSE; it doubles with every probe. At least three round trips.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(30);

impl ConnectionCore {
    /// Starts moving this client connection to another socket of its endpoint, the way RFC 9000 §9
    /// describes: every connection ID is mapped at the new socket's router (so the peer's answers find
    /// the connection), the new path is probed, and only once the peer has answered the probe does the
    /// connection switch to it ([`on_path_events`](Self::on_path_events) finishes the job and replies).
    pub(super) async fn migrate(&mut self, router: RouterHandle, reply: oneshot::Sender<Result<(), MigrateError>>) {
        let result = self.start_migration(&router).await;
        match result {
            Ok(true) => {
                let Some(peer) = self.active_peer() else {
                    let _ = reply.send(Err(MigrateError::NotEstablished));
                    return;
                };
                let pending = PendingMigration {
                    local: router.socket.local_addr(),
                    peer,
                    reply,
                    next_probe: Instant::now() + self.probe_interval(1),
                    probes: 1,
                };
                if let Some(previous) = self.pending_migration.replace(pending) {
                    let _ = previous.reply.send(Err(MigrateError::Refused(MigrateRefusal::Superseded)));
                }
            }
            Ok(false) => {
                let _ = reply.send(Ok(()));
            }
            Err(err) => {
                let _ = reply.send(Err(err));
            }
        }
    }

    /// Maps the connection at `router` and probes the path from its socket. Ok(false) when already
    /// there.
    async fn start_migration(&mut self, router: &RouterHandle) -> Result<bool, MigrateError> {
        if self.conn.is_server() {
            return Err(MigrateError::NotAClient);
        }
        if !self.conn.is_established() || self.conn.is_closed() {
            return Err(MigrateError::NotEstablished);
        }
        let local = router.socket.local_addr();
        if local == self.router.socket.local_addr() {
            return Ok(false);
        }
        let peer = self.active_peer().ok_or(MigrateError::NotEstablished)?;
        if !self.other_routers.iter().any(|other| other.socket.local_addr() == local) {
            let inbound = self.route.upgrade().ok_or(MigrateError::NotEstablished)?;
            let route = Route { inbound, queue: self.queue.clone() };
            for cid in &self.registered {
                if router.commands.send(RouterCommand::Register(cid.clone(), route.clone())).await.is_err() {
                    return Err(MigrateError::NotEstablished);
                }
            }
            for &token in &self.peer_reset_tokens {
                let _ = router.commands.send(RouterCommand::RegisterResetToken(token, route.clone())).await;
            }
            // From now on the probe (and later everything) can leave from this socket.
            self.other_routers.push(router.clone());
        }
        self.conn.probe_path(local, peer).map_err(refusal)?;
        Ok(true)
    }

    fn active_path(&self) -> Option<quiche::PathStats> {
        self.conn.path_stats().find(|path| path.active)
    }

    /// The peer address of the active path.
    fn active_peer(&self) -> Option<SocketAddr> {
        self.active_path().map(|path| path.peer_addr)
    }

    /// How long to wait for an answer to the `probe`-th PATH_CHALLENGE.
    fn probe_interval(&self, probe: u32) -> Duration {
        let rtt = self.active_path().map_or(Duration::ZERO, |path| path.rtt);
        (rtt * 3).max(MIN_PROBE_INTERVAL) * 2u32.saturating_pow(probe.saturating_sub(1))
    }

    /// Gives up the pending migration: the new path never answered.
    fn fail_pending_migration(&mut self) {
        if let Some(pending) = self.pending_migration.take() {
            let _ = pending.reply.send(Err(MigrateError::Refused(MigrateRefusal::NoAnswer)));
        }
    }

    /// Sends another PATH_CHALLENGE when the last one went unanswered for too long, or gives the
    /// migration up after [`MAX_MIGRATION_PROBES`].
    fn reprobe_if_due(&mut self) {
        let Some(pending) = &self.pending_migration else { return };
        if Instant::now() < pending.next_probe {
            return;
        }
        let (local, peer, probes) = (pending.local, pending.peer, pending.probes);
        if probes >= MAX_MIGRATION_PROBES || self.conn.probe_path(local, peer).is_err() {
            self.fail_pending_migration();
            return;
        }
        let next_probe = Instant::now() + self.probe_interval(probes + 1);
        if let Some(pending) = &mut self.pending_migration {
            pending.probes += 1;
            pending.next_probe = next_probe;
        }
        tracing::debug!(%local, probes = probes + 1, "no PATH_RESPONSE yet; probing the new path again");
    }

    /// Follows quiche's path events: when the path a migration probes is validated, the connection
    /// switches to it; when validation fails, the migration is refused.
    pub(super) fn on_path_events(&mut self) {
        while let Some(event) = self.conn.path_event_next() {
            let Some(target) = self.pending_migration.as_ref().map(|pending| pending.local) else { continue };
            match event {
                quiche::PathEvent::Validated(local, _) if local == target => {
                    let result = self.switch_to(local);
                    if let Some(pending) = self.pending_migration.take() {
                        let _ = pending.reply.send(result);
                    }
                }
                quiche::PathEvent::FailedValidation(local, _) if local == target => self.fail_pending_migration(),
                _ => {}
            }
        }
        self.reprobe_if_due();
    }

    /// Makes the validated path from `local` the active one, and its socket the connection's own.
    fn switch_to(&mut self, local: SocketAddr) -> Result<(), MigrateError> {
        self.conn.migrate_source(local).map_err(refusal)?;
        if let Some(at) = self.other_routers.iter().position(|other| other.socket.local_addr() == local) {
            let new = self.other_routers.swap_remove(at);
            let old = std::mem::replace(&mut self.router, new);
            self.other_routers.push(old);
        }
        tracing::debug!(%local, "migrated to a new local address");
        Ok(())
    }
}

/// Why quiche would not probe or move to a path.
fn refusal(err: quiche::Error) -> MigrateError {
    MigrateError::Refused(match err {
        quiche::Error::OutOfIdentifiers => MigrateRefusal::NoSpareConnectionId,
        // quiche's answer when the peer's transport parameters disable active migration.
        quiche::Error::InvalidState => MigrateRefusal::MigrationDisabled,
        _ => MigrateRefusal::PathRejected,
    })
}
