//! [`ConnectionHandle`]: how everyone but the connection's own task reaches it, by commands over a
//! channel (the task is the one owner of the connection's state).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::ConnectionCore;
use crate::error::{CloseReason, ConnectionError, MigrateError};
use crate::handshake::HandshakeInfo;
use crate::route::RouterHandle;
use crate::stats::ConnectionStats;

/// Requests from handles (stats, migration) queued per connection before senders wait.
pub(super) const CONTROL_QUEUE: usize = 8;

/// What a [`ConnectionHandle`] asks of its connection's task.
pub(crate) enum Control {
    Stats(oneshot::Sender<ConnectionStats>),
    /// Move to another socket of the endpoint (client-side active migration).
    Migrate(Box<RouterHandle>, oneshot::Sender<Result<(), MigrateError>>),
    /// Tests: make the next `n` calls of quiche's `send` fail with this error, as a wedged quiche
    /// connection does.
    #[cfg(test)]
    FailSends(quiche::Error, usize),
}

/// A cheap, cloneable reference to a running connection.
///
/// Dropping every handle does not close the connection: the application owns its lifetime.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    shared: Arc<HandleShared>,
}

#[derive(Debug)]
pub(super) struct HandleShared {
    trace_id: String,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    alpn: Vec<u8>,
    server_name: Option<String>,
    handshake: HandshakeInfo,
    close_requests: watch::Sender<Option<CloseReason>>,
    controls: mpsc::Sender<Control>,
    closed: watch::Receiver<Option<ConnectionError>>,
    early_data: bool,
}

impl ConnectionHandle {
    /// Whether the connection became usable before its handshake completed, carrying 0-RTT data (a
    /// resumed session with early data on both sides). Early data can be replayed by an attacker.
    pub fn started_in_early_data(&self) -> bool {
        self.shared.early_data
    }

    /// The connection's trace ID (its first source connection ID, hex): the key in logs and qlog.
    pub fn trace_id(&self) -> &str {
        &self.shared.trace_id
    }

    /// The peer's address when the handshake completed.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }

    /// Our address for this connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The negotiated application protocol.
    pub fn alpn(&self) -> &[u8] {
        &self.shared.alpn
    }

    /// The server name the client asked for (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        self.shared.server_name.as_deref()
    }

    /// What the handshake negotiated (QUIC version, TLS cipher and group) and how long it took.
    pub fn handshake(&self) -> &HandshakeInfo {
        &self.shared.handshake
    }

    /// Asks the connection to close with an application error code and reason. Returns at once; await
    /// [`closed`](Self::closed) to know when it is done. Does nothing if it is already closed.
    pub fn close(&self, code: u64, reason: &str) {
        self.shared.close_requests.send_replace(Some(CloseReason {
            is_application: true,
            code,
            reason: reason.to_owned(),
        }));
    }

    /// Current statistics, or `None` once the connection has closed.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future drops the request.
    pub async fn stats(&self) -> Option<ConnectionStats> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared.controls.send(Control::Stats(reply_tx)).await.ok()?;
        reply_rx.await.ok()
    }

    /// Tests: the next `count` calls of quiche's `send` on this connection fail with `err`.
    #[cfg(test)]
    pub(crate) async fn fail_sends(&self, err: quiche::Error, count: usize) {
        let _ = self.shared.controls.send(Control::FailSends(err, count)).await;
    }

    pub(crate) async fn migrate_to(&self, router: RouterHandle) -> Result<(), MigrateError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared
            .controls
            .send(Control::Migrate(Box::new(router), reply_tx))
            .await
            .map_err(|_| MigrateError::NotEstablished)?;
        reply_rx.await.unwrap_or(Err(MigrateError::NotEstablished))
    }

    /// Resolves when the connection has closed, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn closed(&self) -> ConnectionError {
        let mut closed = self.shared.closed.clone();
        let reason = closed.wait_for(Option::is_some).await.ok().and_then(|reason| reason.clone());
        // A task gone without a word can only have been aborted.
        reason.or_else(|| closed.borrow().clone()).unwrap_or(ConnectionError::Aborted)
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some() || self.shared.closed.has_changed().is_err()
    }
}

impl ConnectionCore {
    /// Publishes the handle once the handshake is done (first call only).
    pub(super) fn on_established(&mut self) {
        if self.handle.is_some() {
            return;
        }
        // Only what this connection's own `recv` completed: see `handshake` for why.
        let tls = self.tls.unwrap_or_default();
        let handshake = HandshakeInfo::new(self.created.elapsed(), tls, &self.conn);
        crate::metrics::handshake_completed(handshake.duration);
        let path = self.conn.path_stats().next();
        let handle = ConnectionHandle {
            shared: Arc::new(HandleShared {
                trace_id: self.trace_id.clone(),
                peer_addr: path.as_ref().map(|path| path.peer_addr).unwrap_or(self.router.socket.local_addr()),
                local_addr: path.as_ref().map(|path| path.local_addr).unwrap_or(self.router.socket.local_addr()),
                alpn: self.conn.application_proto().to_vec(),
                server_name: self.conn.server_name().map(str::to_owned),
                handshake,
                close_requests: self.close_requests_tx.clone(),
                controls: self.controls_tx.clone(),
                closed: self.closed_tx.subscribe(),
                early_data: self.conn.is_in_early_data(),
            }),
        };
        let alpn = String::from_utf8_lossy(handle.alpn());
        tracing::Span::current().record("alpn", &*alpn);
        if handle.started_in_early_data() {
            tracing::debug!("0-RTT: usable before the handshake completes");
        } else {
            tracing::debug!(handshake = ?handle.handshake(), "handshake complete");
        }
        if let Some(waiter) = self.established_waiter.take() {
            let _ = waiter.send(Ok(handle.clone()));
        }
        self.handle = Some(handle);
    }
}
