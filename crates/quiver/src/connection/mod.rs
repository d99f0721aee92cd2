//! The connection task: one per connection, sole owner of its `quiche::Connection` and application.
//!
//! Loop ([`ConnectionCore::drive`]): feed every queued datagram to quiche (ACKs first: a sender that
//! does not read starves itself), fire quiche's timer if it is due, let the stage act (the
//! application reads and writes once it runs), keep the router's CID table in step (`cids.rs`), send
//! what quiche produced (`send.rs`), then wait for the next datagram, timer, handle command
//! (`handle.rs`), migration probe (`migration.rs`) or application wake-up. A connection's life is a
//! sequence of stage types (`stage.rs`): Handshake → AwaitingAccept → Running → Draining → Closed.
//!
//! Imports only the leaf modules (route, shared, app, error, ...): never the router or the endpoint.

mod cids;
mod handle;
mod migration;
mod send;
mod stage;
#[cfg(test)]
mod tests;

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};

pub use self::handle::ConnectionHandle;
use self::handle::{CONTROL_QUEUE, Control};
use self::migration::PendingMigration;
use self::send::{Flushed, PacedPacket};
pub use self::stage::IncomingConnection;
pub(crate) use self::stage::run_server;
use self::stage::{Stage, StageStep, StageWake};
use crate::app::QuicConnection;
use crate::error::{ApplicationError, CloseReason, ConnectionError};
use crate::route::{Inbound, InboundQueue, Route, RouterCommand, RouterHandle};
use crate::shared::{EndpointShared, SessionCache, SessionKey};
use crate::stats::ConnectionStats;

/// Transport error code INTERNAL_ERROR (RFC 9000 §20.1).
const INTERNAL_ERROR: u64 = 0x1;
/// A sleep deadline far enough away to mean "no timer".
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// What [`ConnectionCore::drive`] stopped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DriveExit {
    /// quiche's connection is closed (or the handshake deadline passed): the stage ends in Closed.
    Closed,
    /// The stage asked to leave: the next stage takes over the connection.
    Leave,
}

/// What woke the task.
enum Wake {
    Datagram(Option<Inbound>),
    Timer,
    CloseRequested,
    Control(Option<Control>),
    Shutdown,
    Drain,
    Stage(StageWake),
}

pub(crate) struct CoreParts<'a> {
    pub(crate) conn: Box<quiche::Connection>,
    pub(crate) inbound: mpsc::Receiver<Inbound>,
    pub(crate) route: &'a Route,
    pub(crate) router: RouterHandle,
    pub(crate) shared: Arc<EndpointShared>,
    /// The client's original DCID, mapped to this connection until it closes (servers only).
    pub(crate) odcid: Option<Vec<u8>>,
    /// Give up if the handshake has not completed by then.
    pub(crate) handshake_timeout: Option<Duration>,
    /// The client's address (servers): its per-source handshake slot (and connection slot, with a
    /// per-source connection limit) is reserved, and given back when the handshake (the connection) ends.
    pub(crate) source: Option<std::net::IpAddr>,
    /// Clients: where to keep the session ticket for resumption.
    pub(crate) session_store: Option<SessionSlot>,
}

/// One connection's state, owned by its task and handed from stage to stage.
pub(crate) struct ConnectionCore {
    /// Boxed: a quiche connection is about 8 KB, and the task's futures would otherwise hold it (and
    /// move it) inline, twice over for a server connection.
    conn: Box<quiche::Connection>,
    inbound: mpsc::Receiver<Inbound>,
    route: mpsc::WeakSender<Inbound>,
    queue: Arc<InboundQueue>,
    /// A packet the pacer wants sent later, and its release time.
    paced: Option<PacedPacket>,
    router: RouterHandle,
    shared: Arc<EndpointShared>,
    inbound_closed: bool,
    registered: Vec<Vec<u8>>,
    unregistered: bool,
    trace_id: String,
    /// When the connection was created: the start of its handshake.
    created: Instant,
    handshake_deadline: Option<(Instant, Duration)>,
    forced_reason: Option<ConnectionError>,
    timer: Pin<Box<Sleep>>,
    close_requests: watch::Receiver<Option<CloseReason>>,
    close_requests_tx: watch::Sender<Option<CloseReason>>,
    controls: mpsc::Receiver<Control>,
    controls_tx: mpsc::Sender<Control>,
    closed_tx: watch::Sender<Option<ConnectionError>>,
    handle: Option<ConnectionHandle>,
    established_waiter: Option<oneshot::Sender<Result<ConnectionHandle, ConnectionError>>>,
    shutdown: watch::Receiver<bool>,
    /// The endpoint's graceful-shutdown signal, and whether the application has been told.
    drain: watch::Receiver<bool>,
    drain_told: bool,
    /// Counted in the endpoint's handshakes in flight until established or gone (servers).
    handshaking: bool,
    source: Option<std::net::IpAddr>,
    /// The server's stateless-reset tokens registered with the routers, one for each of its
    /// connection IDs we have not retired (clients; see `sync_peer_reset_tokens`).
    peer_reset_tokens: Vec<u128>,
    /// Where a client keeps the server's session ticket for resuming later, and whether it has.
    session_store: Option<SessionSlot>,
    /// Routers of the endpoint's other sockets this connection is mapped at: those it migrated away
    /// from (the peer may still answer on the old path) and one it is probing. quiche may send on any
    /// of their paths, so packets leave from the socket their path names.
    other_routers: Vec<RouterHandle>,
    /// A migration waiting for its path to validate.
    pending_migration: Option<PendingMigration>,
    /// The TLS details of this connection's handshake, once its own `recv` completed it.
    tls: Option<crate::handshake::TlsDetails>,
    /// quiche's `send` failed (other than `Done`) and the connection was closed with INTERNAL_ERROR:
    /// one more failure and it is dropped without a word.
    send_failed: bool,
    /// Tests: failures the next calls of quiche's `send` return instead of running (error, calls left).
    #[cfg(test)]
    injected_send_failures: Option<(quiche::Error, usize)>,
}

/// A client connection's place in its endpoint's session cache.
pub(crate) struct SessionSlot {
    pub(crate) cache: Arc<SessionCache>,
    pub(crate) key: SessionKey,
    pub(crate) stored: bool,
}

impl Drop for ConnectionCore {
    fn drop(&mut self) {
        self.handshake_over();
        if let Some(source) = self.source {
            self.shared.forget_connection(source);
        }
        for token in std::mem::take(&mut self.peer_reset_tokens) {
            self.try_tell_routers(RouterCommand::UnregisterResetToken(token));
        }
        if !self.unregistered {
            let cids = std::mem::take(&mut self.registered);
            // Best effort; if the router's queue is full it heals the table when a packet comes.
            self.try_tell_routers(RouterCommand::Unregister(cids));
        }
        if self.closed_tx.borrow().is_none() {
            self.closed_tx.send_replace(Some(ConnectionError::Aborted));
        }
        let counters = &self.shared.counters;
        counters.connections_closed.fetch_add(1, Ordering::Relaxed);
        if counters.active_connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.shared.idle.notify_waiters();
        }
    }
}

enum AppFailure {
    Error(ApplicationError),
    Panic,
}

/// Runs an application hook, turning a panic into a failure instead of killing the task.
fn guard(hook: impl FnOnce() -> Result<(), ApplicationError>) -> Result<(), AppFailure> {
    match std::panic::catch_unwind(AssertUnwindSafe(hook)) {
        Ok(result) => result.map_err(AppFailure::Error),
        Err(_) => Err(AppFailure::Panic),
    }
}

impl ConnectionCore {
    pub(crate) fn new(parts: CoreParts<'_>) -> Self {
        let (close_requests_tx, close_requests) = watch::channel(None);
        let (controls_tx, controls) = mpsc::channel(CONTROL_QUEUE);
        let (closed_tx, _) = watch::channel(None);
        let mut registered = vec![parts.conn.source_id().to_vec()];
        registered.extend(parts.odcid.iter().cloned());
        parts.shared.counters.active_connections.fetch_add(1, Ordering::Relaxed);
        let handshaking = parts.conn.is_server() && !parts.conn.is_established();
        if handshaking {
            parts.shared.counters.handshakes_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            trace_id: parts.conn.trace_id().to_owned(),
            created: Instant::now(),
            handshake_deadline: parts.handshake_timeout.map(|timeout| (Instant::now() + timeout, timeout)),
            conn: parts.conn,
            inbound: parts.inbound,
            route: parts.route.inbound.downgrade(),
            queue: parts.route.queue.clone(),
            paced: None,
            router: parts.router,
            shutdown: parts.shared.shutdown_signal(),
            drain: parts.shared.drain_signal(),
            drain_told: false,
            shared: parts.shared,
            inbound_closed: false,
            registered,
            unregistered: false,
            forced_reason: None,
            timer: Box::pin(tokio::time::sleep(FAR_FUTURE)),
            close_requests,
            close_requests_tx,
            controls,
            controls_tx,
            closed_tx,
            handle: None,
            established_waiter: None,
            handshaking,
            source: parts.source,
            peer_reset_tokens: Vec::new(),
            session_store: parts.session_store,
            other_routers: Vec::new(),
            pending_migration: None,
            tls: None,
            send_failed: false,
            #[cfg(test)]
            injected_send_failures: None,
        }
    }

    pub(crate) fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// A receiver for the close reason, usable before the handshake completes.
    pub(crate) fn closed_signal(&self) -> watch::Receiver<Option<ConnectionError>> {
        self.closed_tx.subscribe()
    }

    pub(crate) fn notify_when_established(&mut self) -> oneshot::Receiver<Result<ConnectionHandle, ConnectionError>> {
        let (tx, rx) = oneshot::channel();
        self.established_waiter = Some(tx);
        rx
    }

    /// The heart of the task: runs the connection for `stage` until quiche closes it or the stage
    /// leaves.
    async fn drive<S: Stage>(&mut self, stage: &mut S) -> DriveExit {
        // Whether the stage has seen the connection usable (and may therefore be woken).
        let mut stage_usable = false;
        // Set for the one turn after the first flight derived 0-RTT keys: that turn starts the
        // application before reading what arrived meanwhile. On a fast path the server's answer may
        // already be queued; reading it first would complete the handshake and send the requests in
        // 1-RTT, defeating early data (seen on loopback about one connection in fifteen).
        let mut start_early = false;
        loop {
            if !std::mem::take(&mut start_early) {
                while let Ok(datagram) = self.inbound.try_recv() {
                    self.recv(datagram);
                }
            }
            // Every turn, whichever branch woke it: under a continuous stream of datagrams the timer
            // branch of the biased select below would never win, and loss detection and the idle
            // timeout would wait for the stream to pause.
            self.fire_timer_if_due();
            if self.handshaking && self.conn.is_established() {
                self.handshake_over();
            }
            self.on_path_events();
            if self.is_closing() {
                if S::LEAVES_WHEN_CLOSING {
                    return DriveExit::Leave;
                }
            } else if self.is_usable() {
                if !stage_usable {
                    stage_usable = true;
                    self.on_established();
                }
                if stage.act(self) == StageStep::Leave {
                    return DriveExit::Leave;
                }
            }
            self.sync_cids().await;
            if let Some((deadline, timeout)) = self.handshake_deadline
                && !self.conn.is_established()
                && Instant::now() >= deadline
            {
                // A client: the server never answered, there is nobody to send CONNECTION_CLOSE to. A
                // server: the client is too slow or stalls on purpose (each of its packets restarts
                // quiche's idle timer); it is dropped without a word so that stalling costs it as much
                // as us, and its handshake slot is freed when the core is dropped.
                tracing::debug!(?timeout, "handshake deadline passed");
                self.shared.counters.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                self.forced_reason = Some(ConnectionError::HandshakeTimeout(timeout));
                return DriveExit::Closed;
            }
            let flushed = self.flush().await;
            if self.conn.is_closed() {
                return DriveExit::Closed;
            }
            if let Flushed::Failed(err) = flushed {
                if self.on_send_failure(err) {
                    return DriveExit::Closed;
                }
                // Closed with INTERNAL_ERROR: try to send the CONNECTION_CLOSE now, not at the next
                // wake-up (the peer may be quiet). The next failure ends the connection, so this
                // cannot spin.
                continue;
            }
            if !stage_usable && self.conn.is_in_early_data() {
                // Sending the first flight derived the 0-RTT keys: start the application now so its
                // first data rides in early data, instead of waiting a round trip for the server.
                start_early = true;
                continue;
            }
            if flushed == Flushed::MoreReady {
                // Let the router and every other task run before sending more: the router reads the
                // peer's ACKs off the socket (they open the window for the rest), and nobody waits
                // behind one connection's burst.
                tokio::task::yield_now().await;
                continue;
            }

            let deadline = self.next_deadline();
            self.timer.as_mut().reset(deadline);
            let wake = {
                let stage_waits = stage_usable && S::WAITS;
                // Branches that complete for good (closed queue, shutdown) are disabled once seen, or the
                // biased select would spin on them and starve the other branches.
                let inbound_open = !self.inbound_closed;
                let shutdown_pending = self.forced_reason.is_none();
                tokio::select! {
                    biased;
                    datagram = self.inbound.recv(), if inbound_open => Wake::Datagram(datagram),
                    _ = &mut self.timer => Wake::Timer,
                    _ = self.close_requests.changed() => Wake::CloseRequested,
                    control = self.controls.recv() => Wake::Control(control),
                    _ = self.shutdown.wait_for(|stop| *stop), if shutdown_pending => Wake::Shutdown,
                    _ = self.drain.wait_for(|drain| *drain), if stage_waits && !self.drain_told => Wake::Drain,
                    woken = stage.wait(), if stage_waits => Wake::Stage(woken),
                }
            };
            match wake {
                Wake::Datagram(Some(datagram)) => self.recv(datagram),
                Wake::Datagram(None) => {
                    // The router stopped (endpoint shutdown): nothing more will arrive.
                    self.inbound_closed = true;
                    self.close_transport(0, "endpoint shut down");
                    self.forced_reason.get_or_insert(ConnectionError::EndpointShutdown);
                }
                // Fired at the top of the next turn.
                Wake::Timer => {}
                Wake::CloseRequested => {
                    let request = self.close_requests.borrow_and_update().clone();
                    if let Some(request) = request {
                        let _ = self.conn.close(request.is_application, request.code, request.reason.as_bytes());
                    }
                }
                Wake::Control(Some(Control::Stats(reply))) => {
                    let _ = reply.send(self.stats());
                }
                Wake::Control(Some(Control::Migrate(router, reply))) => self.migrate(*router, reply).await,
                #[cfg(test)]
                Wake::Control(Some(Control::FailSends(err, count))) => {
                    self.injected_send_failures = Some((err, count));
                }
                Wake::Control(None) => {}
                Wake::Shutdown => {
                    self.close_transport(0, "endpoint shut down");
                    self.forced_reason.get_or_insert(ConnectionError::EndpointShutdown);
                }
                Wake::Drain => {
                    self.drain_told = true;
                    stage.on_drain(self);
                }
                Wake::Stage(woken) => stage.on_wake(self, woken),
            }
        }
    }

    /// quiche's `send` failed with `err` (not `Done`): it cannot build this connection's packets, and
    /// would fail the same way at every later turn while the connection waited out its idle timeout
    /// (a wedged connection: quiche 0.30 re-queued the announcement of a connection ID the peer had
    /// retired, see vendor/README.md). The first failure closes the connection with INTERNAL_ERROR,
    /// so that the next flush can tell the peer; a failure after that gives up at once. Returns
    /// whether the connection must end now.
    fn on_send_failure(&mut self, err: quiche::Error) -> bool {
        if !self.send_failed {
            self.send_failed = true;
            self.shared.counters.connections_send_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "quiche cannot send on this connection; closing it");
            let reason = format!("cannot send: {err}");
            if self.conn.close(false, INTERNAL_ERROR, reason.as_bytes()).is_ok() {
                return false;
            }
        }
        tracing::debug!(error = %err, "quiche still cannot send; dropping the connection");
        self.forced_reason.get_or_insert(ConnectionError::LocallyClosed(CloseReason {
            is_application: false,
            code: INTERNAL_ERROR,
            reason: format!("cannot send: {err}"),
        }));
        true
    }

    /// Runs quiche's timeout handling if its timer is due.
    fn fire_timer_if_due(&mut self) {
        if self.conn.timeout_instant().is_some_and(|at| at <= std::time::Instant::now()) {
            self.conn.on_timeout();
        }
    }

    /// The connection can carry application data: established, or a resumed one in 0-RTT.
    fn is_usable(&self) -> bool {
        self.conn.is_established() || self.conn.is_in_early_data()
    }

    /// A CONNECTION_CLOSE was sent or received: only the closing or draining period is left.
    fn is_closing(&self) -> bool {
        self.conn.is_draining() || self.conn.local_error().is_some()
    }

    fn next_deadline(&self) -> Instant {
        let quic = self.conn.timeout_instant().map(Instant::from_std);
        let handshake = self.handshake_deadline.filter(|_| !self.conn.is_established()).map(|(at, _)| at);
        let paced = self.paced.as_ref().map(|paced| Instant::from_std(paced.at));
        let probe = self.pending_migration.as_ref().map(|pending| pending.next_probe);
        [quic, handshake, paced, probe].into_iter().flatten().min().unwrap_or_else(|| Instant::now() + FAR_FUTURE)
    }

    /// Feeds quiche every datagram of one hand-off, then gives the buffer back to the pool.
    fn recv(&mut self, mut inbound: Inbound) {
        let info = quiche::RecvInfo { from: inbound.from, to: self.router.socket.local_addr() };
        let (len, stride) = (inbound.len(), inbound.stride());
        let was_open = !self.conn.is_closed();
        // Whatever another connection's handshake left on this thread is not ours.
        let _ = crate::handshake::take_completed();
        for datagram in inbound.buffer[..len].chunks_mut(stride) {
            if let Err(err) = self.conn.recv(datagram, info)
                && err != quiche::Error::Done
            {
                tracing::trace!(error = %err, "packet rejected by quiche");
            }
        }
        if let Some(tls) = crate::handshake::take_completed() {
            self.tls = Some(tls);
        }
        // quiche closes a connection silently when a packet is the peer's stateless reset: no error on
        // either side and no timeout is how it looks from here.
        if was_open
            && self.conn.is_closed()
            && self.conn.peer_error().is_none()
            && self.conn.local_error().is_none()
            && !self.conn.is_timed_out()
        {
            self.forced_reason.get_or_insert(ConnectionError::StatelessReset);
        }
        self.queue.release(inbound.datagrams());
        self.shared.give_back(inbound.buffer);
    }

    fn close_transport(&mut self, code: u64, reason: &str) {
        let _ = self.conn.close(false, code, reason.as_bytes());
    }

    fn apply_app_result(&mut self, result: Result<(), AppFailure>) {
        match result {
            Ok(()) => {}
            Err(AppFailure::Error(err)) => {
                tracing::debug!(code = err.code, reason = %err.reason, "application closes the connection");
                let _ = self.conn.close(true, err.code, err.reason.as_bytes());
            }
            Err(AppFailure::Panic) => {
                tracing::error!("application panicked; closing the connection");
                self.close_transport(INTERNAL_ERROR, "internal error");
            }
        }
    }

    fn handshake_over(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.shared.counters.handshakes_in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Some(source) = self.source {
                self.shared.forget_handshake(source);
            }
        }
    }

    fn stats(&self) -> ConnectionStats {
        ConnectionStats::from_connection(&self.conn, self.queue.drops.load(Ordering::Relaxed))
    }

    fn close_reason(&self) -> ConnectionError {
        if let Some(reason) = &self.forced_reason {
            return reason.clone();
        }
        if self.conn.is_timed_out() {
            return ConnectionError::IdleTimeout;
        }
        if let Some(err) = self.conn.peer_error() {
            return ConnectionError::PeerClosed(CloseReason::from_quiche(err));
        }
        match self.conn.local_error() {
            Some(err) => ConnectionError::LocallyClosed(CloseReason::from_quiche(err)),
            None => {
                ConnectionError::LocallyClosed(CloseReason { is_application: false, code: 0, reason: String::new() })
            }
        }
    }

    /// Keeps the server's session ticket for the next connection to resume: once, when the ticket first
    /// arrives (soon after the handshake), and again at close (the server may have sent a newer one).
    fn store_session(&mut self, closing: bool) {
        let Some(slot) = &mut self.session_store else { return };
        if slot.stored && !closing {
            return;
        }
        if let Some(session) = self.conn.session() {
            slot.cache.store(slot.key.clone(), session.to_vec());
            slot.stored = true;
        }
    }

    /// Tells the application, unmaps every CID and publishes the reason.
    async fn finish(&mut self, tell_application: impl FnOnce(&mut QuicConnection, &ConnectionError)) {
        self.store_session(true);
        let reason = self.close_reason();
        let stats = self.stats();
        tracing::debug!(%reason, ?stats, "connection closed");
        crate::metrics::connection_closed(&stats);
        let _ = guard(|| {
            tell_application(&mut self.conn, &reason);
            Ok(())
        });
        let cids = std::mem::take(&mut self.registered);
        self.forget_peer_reset_tokens().await;
        if self.tell_routers(RouterCommand::Unregister(cids)).await {
            self.unregistered = true;
        }
        if let Some(waiter) = self.established_waiter.take() {
            let _ = waiter.send(Err(reason.clone()));
        }
        self.closed_tx.send_replace(Some(reason));
    }
}
