//! The connection task: one per connection, sole owner of its `quiche::Connection` and application.
//!
//! Loop: feed every queued datagram to quiche (ACKs first: a sender that does not read starves
//! itself), let the application read and write, keep the router's CID table in step with quiche, send
//! what quiche produced in GSO batches, then wait for the next datagram, timer, handle command or
//! application wake-up. Others reach the connection only through [`ConnectionHandle`].

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use quinn_udp::Transmit;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use crate::app::{ApplicationOverQuic, QuicConnection};
use crate::batch::{self, HeldPacket, ProducedPacket};
use crate::endpoint::{EndpointShared, IncomingConnection};
use crate::error::{ApplicationError, CloseReason, ConnectionError, MigrateError};
use crate::handshake::HandshakeInfo;
use crate::router::{Inbound, InboundQueue, Route, RouterCommand, RouterHandle};
use crate::socket::SEND_BATCH_BYTES;
use crate::stats::ConnectionStats;

/// Transport error code CONNECTION_REFUSED (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;
/// Transport error code INTERNAL_ERROR (RFC 9000 §20.1).
const INTERNAL_ERROR: u64 = 0x1;
/// Connection IDs we keep issued to the peer at once (bounded further by the peer's
/// `active_connection_id_limit`): enough for a migration or two without growing the CID table.
const MAX_ISSUED_CIDS: usize = 4;
/// Requests from handles (stats, migration) queued per connection before senders wait.
const CONTROL_QUEUE: usize = 8;

/// What a [`ConnectionHandle`] asks of its connection's task.
pub(crate) enum Control {
    Stats(oneshot::Sender<ConnectionStats>),
    /// Move to another socket of the endpoint (client-side active migration).
    Migrate(Box<RouterHandle>, oneshot::Sender<Result<(), MigrateError>>),
}
/// Send calls one flush makes before the task lets others run (16 GSO batches, about 1 MB): long
/// enough to amortise a wake-up, short enough that the router reads the peer's ACKs before the socket's
/// receive buffer could fill while this connection sends.
const MAX_SENDS_PER_FLUSH: usize = 16;
/// Packets whose release time is at most this far ahead go now: Tokio's timers tick in milliseconds,
/// so holding a packet for less would cost a wake-up without pacing it any better.
const PACING_GRANULARITY: Duration = Duration::from_millis(1);
/// A sleep deadline far enough away to mean "no timer".
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// A cheap, cloneable reference to a running connection.
///
/// Dropping every handle does not close the connection: the application owns its lifetime.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    shared: Arc<HandleShared>,
}

#[derive(Debug)]
struct HandleShared {
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

pub(crate) struct CoreParts<'a> {
    pub(crate) conn: Box<quiche::Connection>,
    pub(crate) inbound: mpsc::Receiver<Inbound>,
    pub(crate) route: &'a Route,
    pub(crate) router: RouterHandle,
    pub(crate) shared: Arc<EndpointShared>,
    /// The client's original DCID, mapped to this connection until it closes (servers only).
    pub(crate) odcid: Option<Vec<u8>>,
    /// Give up if the handshake has not completed by then (clients).
    pub(crate) handshake_timeout: Option<Duration>,
    /// The client address counted against the per-source connection limit (servers that have one).
    pub(crate) source: Option<std::net::IpAddr>,
    /// Clients: where to keep the session ticket for resumption.
    pub(crate) session_store: Option<SessionSlot>,
}

/// Starts the application's task on an accepted connection (the handshake task hands its state over).
type StartFn = Box<dyn FnOnce(ConnectionCore) + Send>;

/// What a flush left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flushed {
    /// quiche has nothing more to send now.
    Done,
    /// More is ready, but this flush sent its share.
    MoreReady,
    /// The pacer holds the next packet until its release time.
    Paced,
}

/// A packet quiche released for later, kept until the pacer's time for it.
struct PacedPacket {
    bytes: Vec<u8>,
    from: SocketAddr,
    to: SocketAddr,
    at: std::time::Instant,
}

/// What [`ConnectionCore::drive`] stopped for.
enum DriveExit {
    Closed,
    HandedOff,
}

/// What woke the task.
enum Wake {
    Datagram(Option<Inbound>),
    Timer,
    CloseRequested,
    Control(Option<Control>),
    Shutdown,
    Drain,
    App(Result<(), ApplicationError>),
    AppPanicked,
}

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
    /// The server's stateless-reset token, once registered with the router (clients).
    peer_reset_token: Option<u128>,
    /// Where a client keeps the server's session ticket for resuming later, and whether it has.
    session_store: Option<SessionSlot>,
    /// Routers of the endpoint's other sockets this connection is mapped at: those it migrated away
    /// from (the peer may still answer on the old path) and one it is probing. quiche may send on any
    /// of their paths, so packets leave from the socket their path names.
    other_routers: Vec<RouterHandle>,
    /// A migration waiting for its path to validate.
    pending_migration: Option<PendingMigration>,
}

/// A client's migration whose new path is being validated.
struct PendingMigration {
    /// The new local address.
    local: SocketAddr,
    /// The server's address, which the probes go to.
    peer: SocketAddr,
    /// Who to tell the outcome.
    reply: oneshot::Sender<Result<(), MigrateError>>,
    /// When to send the next PATH_CHALLENGE if no answer came.
    next_probe: Instant,
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

/// A client connection's place in its endpoint's session cache.
pub(crate) struct SessionSlot {
    pub(crate) cache: Arc<crate::endpoint::SessionCache>,
    pub(crate) key: crate::endpoint::SessionKey,
    pub(crate) stored: bool,
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
            peer_reset_token: None,
            session_store: parts.session_store,
            other_routers: Vec::new(),
            pending_migration: None,
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

    /// Runs the connection with `app` until it closes.
    pub(crate) async fn run<A: ApplicationOverQuic>(mut self, mut app: A) {
        self.drive(&mut app, |_| false).await;
        self.finish(&mut app).await;
    }

    /// The heart of the task; returns when the connection is closed or `hand_off(app)` says so.
    async fn drive<A: ApplicationOverQuic>(&mut self, app: &mut A, hand_off: impl Fn(&A) -> bool) -> DriveExit {
        let mut app_started = false;
        loop {
            while let Ok(datagram) = self.inbound.try_recv() {
                self.recv(datagram);
            }
            if self.handshaking && self.conn.is_established() {
                self.handshake_over();
            }
            self.on_path_events();
            // 0-RTT: a resumed connection carries application data before its handshake completes.
            let usable = self.conn.is_established() || self.conn.is_in_early_data();
            if usable && !self.conn.is_draining() && self.conn.local_error().is_none() {
                if !app_started {
                    app_started = true;
                    self.on_established();
                    let result = guard(|| app.on_conn_established(&mut self.conn));
                    self.apply_app_result(result);
                }
                if hand_off(app) {
                    return DriveExit::HandedOff;
                }
                if app.should_act() {
                    let result = guard(|| app.process_reads(&mut self.conn));
                    self.apply_app_result(result);
                    let result = guard(|| app.process_writes(&mut self.conn));
                    self.apply_app_result(result);
                }
            }
            self.sync_cids().await;
            if let Some((deadline, timeout)) = self.handshake_deadline
                && !self.conn.is_established()
                && Instant::now() >= deadline
            {
                // The peer never answered: there is nobody to send CONNECTION_CLOSE to.
                self.forced_reason = Some(ConnectionError::HandshakeTimeout(timeout));
                return DriveExit::Closed;
            }
            let flushed = self.flush().await;
            if self.conn.is_closed() {
                return DriveExit::Closed;
            }
            if !app_started && self.conn.is_in_early_data() && !self.conn.is_closed() {
                // Sending the first flight derived the 0-RTT keys: start the application now so its
                // first data rides in early data, instead of waiting a round trip for the server.
                continue;
            }
            if flushed == Flushed::MoreReady {
                // Let the router and every other task run before sending more: the router reads the
                // peer's ACKs off the socket (they open the window for the rest), and nobody waits
                // behind one connection's burst.
                tokio::task::yield_now().await;
                if self.conn.timeout_instant().is_some_and(|at| at <= std::time::Instant::now()) {
                    self.conn.on_timeout();
                }
                continue;
            }

            let deadline = self.next_deadline();
            self.timer.as_mut().reset(deadline);
            let wake = {
                let app_waits = app_started;
                // Branches that complete for good (closed queue, shutdown) are disabled once seen, or the
                // biased select would spin on them and starve the timer.
                let inbound_open = !self.inbound_closed;
                let shutdown_pending = self.forced_reason.is_none();
                let wait_for_app = AssertUnwindSafe(app.wait_for_data()).catch_unwind();
                tokio::select! {
                    biased;
                    datagram = self.inbound.recv(), if inbound_open => Wake::Datagram(datagram),
                    _ = &mut self.timer => Wake::Timer,
                    _ = self.close_requests.changed() => Wake::CloseRequested,
                    control = self.controls.recv() => Wake::Control(control),
                    _ = self.shutdown.wait_for(|stop| *stop), if shutdown_pending => Wake::Shutdown,
                    _ = self.drain.wait_for(|drain| *drain), if app_waits && !self.drain_told => Wake::Drain,
                    result = wait_for_app, if app_waits => match result {
                        Ok(result) => Wake::App(result),
                        Err(_) => Wake::AppPanicked,
                    },
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
                Wake::Timer => {
                    if self.conn.timeout_instant().is_some_and(|at| at <= std::time::Instant::now()) {
                        self.conn.on_timeout();
                    }
                }
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
                Wake::Control(None) => {}
                Wake::Shutdown => {
                    self.close_transport(0, "endpoint shut down");
                    self.forced_reason.get_or_insert(ConnectionError::EndpointShutdown);
                }
                Wake::Drain => {
                    self.drain_told = true;
                    let result = guard(|| app.on_drain(&mut self.conn));
                    self.apply_app_result(result);
                }
                Wake::App(result) => self.apply_app_result(result.map_err(AppFailure::Error)),
                Wake::AppPanicked => self.apply_app_result(Err(AppFailure::Panic)),
            }
        }
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
        for datagram in inbound.buffer[..len].chunks_mut(stride) {
            if let Err(err) = self.conn.recv(datagram, info)
                && err != quiche::Error::Done
            {
                tracing::trace!(error = %err, "packet rejected by quiche");
            }
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
        }
    }

    /// Publishes the handle once the handshake is done (first call only).
    fn on_established(&mut self) {
        if self.handle.is_some() {
            return;
        }
        // First, before anything else can run on this thread: see `handshake` for why.
        let tls = crate::handshake::take_completed();
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

    /// Sends a CID-table change to every router this connection is mapped at: the current one and
    /// those it migrated away from. True if the current router took it.
    async fn tell_routers(&self, command: RouterCommand) -> bool {
        for router in &self.other_routers {
            let _ = router.commands.send(command.clone()).await;
        }
        self.router.commands.send(command).await.is_ok()
    }

    /// As [`tell_routers`](Self::tell_routers), without waiting (from `Drop`); best effort: a router
    /// whose queue is full heals its table when a packet finds the connection gone.
    fn try_tell_routers(&self, command: RouterCommand) {
        for router in &self.other_routers {
            let _ = router.commands.try_send(command.clone());
        }
        let _ = self.router.commands.try_send(command);
    }

    /// Starts moving this client connection to another socket of its endpoint, the way RFC 9000 §9
    /// describes: every connection ID is mapped at the new socket's router (so the peer's answers find
    /// the connection), the new path is probed, and only once the peer has answered the probe does the
    /// connection switch to it ([`on_path_events`](Self::on_path_events) finishes the job and replies).
    async fn migrate(&mut self, router: RouterHandle, reply: oneshot::Sender<Result<(), MigrateError>>) {
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
                    let _ = previous.reply.send(Err(MigrateError::Refused("superseded by another migration".into())));
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
            if let Some(token) = self.peer_reset_token {
                let _ = router.commands.send(RouterCommand::RegisterResetToken(token, route)).await;
            }
            // From now on the probe (and later everything) can leave from this socket.
            self.other_routers.push(router.clone());
        }
        self.conn.probe_path(local, peer).map_err(|err| MigrateError::Refused(err.to_string()))?;
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
            let _ = pending.reply.send(Err(MigrateError::Refused("the peer did not answer on the new path".into())));
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
    fn on_path_events(&mut self) {
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
        self.conn.migrate_source(local).map_err(|err| MigrateError::Refused(err.to_string()))?;
        if let Some(at) = self.other_routers.iter().position(|other| other.socket.local_addr() == local) {
            let new = self.other_routers.swap_remove(at);
            let old = std::mem::replace(&mut self.router, new);
            self.other_routers.push(old);
        }
        tracing::debug!(%local, "migrated to a new local address");
        Ok(())
    }

    /// Issues fresh CIDs to the peer as it has room and drops retired ones from the router.
    async fn sync_cids(&mut self) {
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
        if !self.conn.is_server()
            && self.peer_reset_token.is_none()
            && let Some(token) = self.conn.peer_transport_params().and_then(|params| params.stateless_reset_token)
            && let Some(inbound) = self.route.upgrade()
        {
            // The router needs the token to recognise the server's stateless reset, whose connection
            // ID is random (RFC 9000 §10.3.1).
            let route = Route { inbound, queue: self.queue.clone() };
            if self.tell_routers(RouterCommand::RegisterResetToken(token, route)).await {
                self.peer_reset_token = Some(token);
            }
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

    /// Sends what quiche has to send, in GSO batches of equal-size datagrams to one destination, until
    /// quiche has nothing more, the pacer holds the next packet back, or this flush has made
    /// [`MAX_SENDS_PER_FLUSH`] send calls.
    async fn flush(&mut self) -> Flushed {
        let socket = self.router.socket.clone();
        let horizon = std::time::Instant::now() + PACING_GRANULARITY;
        if let Some(paced) = self.paced.take() {
            if paced.at > horizon {
                self.paced = Some(paced);
                return Flushed::Paced;
            }
            self.transmit(paced.from, &paced.bytes, paced.to, None, 1).await;
        }
        let mut buffer = self.shared.large_buffers.take();
        let max_segments = socket.max_gso_segments().max(1);
        // quiche accepts any configured payload size; one datagram must still fit the batch buffer.
        let mtu = self.conn.max_send_udp_payload_size().min(SEND_BATCH_BYTES);
        let mut outcome = Flushed::MoreReady;
        for _ in 0..MAX_SENDS_PER_FLUSH {
            let conn = &mut self.conn;
            let batch =
                batch::fill_batch(&mut buffer[..SEND_BATCH_BYTES], mtu, max_segments, horizon, |out| {
                    match conn.send(out) {
                        Ok((len, info)) => Some(ProducedPacket { len, from: info.from, to: info.to, at: info.at }),
                        Err(quiche::Error::Done) => None,
                        Err(err) => {
                            tracing::debug!(error = %err, "quiche send failed; connection is closing");
                            None
                        }
                    }
                });
            if let (Some(to), Some(from)) = (batch.destination, batch.source) {
                let segment_size = (batch.segments > 1).then_some(batch.segment_size);
                self.transmit(from, &buffer[..batch.len], to, segment_size, batch.segments).await;
            }
            if let Some(HeldPacket { len, from, to, at }) = batch.held {
                let bytes = &buffer[batch.len..batch.len + len];
                if at > horizon {
                    self.paced = Some(PacedPacket { bytes: bytes.to_vec(), from, to, at });
                    outcome = Flushed::Paced;
                    break;
                }
                self.transmit(from, bytes, to, None, 1).await;
            }
            if batch.exhausted {
                outcome = Flushed::Done;
                break;
            }
        }
        self.shared.large_buffers.give_back(buffer);
        outcome
    }

    /// The socket a path's packets leave from: the current one, or, while quiche still uses a path of
    /// a socket this connection migrated away from, that socket.
    fn socket_for(&self, from: SocketAddr) -> &crate::socket::QuicSocket {
        if from == self.router.socket.local_addr() {
            return &self.router.socket;
        }
        self.other_routers
            .iter()
            .find(|router| router.socket.local_addr() == from)
            .map_or(&self.router.socket, |router| &router.socket)
    }

    async fn transmit(
        &self,
        from: SocketAddr,
        contents: &[u8],
        destination: SocketAddr,
        segment_size: Option<usize>,
        segments: usize,
    ) {
        let socket = self.socket_for(from);
        let transmit = Transmit { destination, ecn: None, contents, segment_size, src_ip: None };
        let counters = &self.shared.counters;
        match socket.send(&transmit).await {
            Ok(()) => {
                counters.datagrams_sent.fetch_add(segments as u64, Ordering::Relaxed);
                counters.bytes_sent.fetch_add(contents.len() as u64, Ordering::Relaxed);
            }
            Err(err) => {
                // Lost on the floor: QUIC's loss recovery resends whatever mattered.
                counters.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %err, %destination, "UDP send failed");
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
    async fn finish<A: ApplicationOverQuic>(&mut self, app: &mut A) {
        self.store_session(true);
        let reason = self.close_reason();
        let stats = self.stats();
        tracing::debug!(%reason, ?stats, "connection closed");
        crate::metrics::connection_closed(&stats);
        let _ = guard(|| {
            app.on_conn_close(&mut self.conn, &reason);
            Ok(())
        });
        let cids = std::mem::take(&mut self.registered);
        if let Some(token) = self.peer_reset_token.take() {
            self.tell_routers(RouterCommand::UnregisterResetToken(token)).await;
        }
        if self.tell_routers(RouterCommand::Unregister(cids)).await {
            self.unregistered = true;
        }
        if let Some(waiter) = self.established_waiter.take() {
            let _ = waiter.send(Err(reason.clone()));
        }
        self.closed_tx.send_replace(Some(reason));
    }
}

impl Drop for ConnectionCore {
    fn drop(&mut self) {
        self.handshake_over();
        if let (Some(sources), Some(source)) = (&self.shared.source_connections, self.source) {
            sources.remove(source);
        }
        if let Some(token) = self.peer_reset_token.take() {
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

/// Placeholder application for the handshake, before a server connection is accepted.
struct Handshaking;

impl ApplicationOverQuic for Handshaking {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }
    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }
}

/// Keeps an established server connection alive (ACKs, timers) while it waits in the accept queue.
struct AwaitingStart {
    start: Option<oneshot::Receiver<StartFn>>,
    started: Option<StartFn>,
    refused: bool,
}

impl ApplicationOverQuic for AwaitingStart {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    async fn wait_for_data(&mut self) -> Result<(), ApplicationError> {
        let Some(start) = self.start.as_mut() else { return std::future::pending().await };
        match start.await {
            Ok(start_fn) => self.started = Some(start_fn),
            Err(_) => self.refused = true,
        }
        self.start = None;
        Ok(())
    }

    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        if self.refused {
            let _ = conn.close(false, CONNECTION_REFUSED, b"connection not accepted");
        }
        Ok(())
    }
}

/// A server connection's task: handshake, wait in the accept queue, then run the application.
pub(crate) async fn run_server(mut core: ConnectionCore, accept_queue: mpsc::Sender<IncomingConnection>) {
    if let DriveExit::Closed = core.drive(&mut Handshaking, |_| true).await {
        core.finish(&mut Handshaking).await;
        return;
    }
    let Some(handle) = core.handle.clone() else {
        core.finish(&mut Handshaking).await;
        return;
    };
    let (start_tx, start_rx) = oneshot::channel();
    let incoming = IncomingConnection::new(handle, start_tx);
    let counters = &core.shared.counters;
    let mut waiting = AwaitingStart { start: Some(start_rx), started: None, refused: false };
    match accept_queue.try_send(incoming) {
        Ok(()) => {
            counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            counters.connections_refused_backlog.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("accept queue full; refusing connection");
            waiting.start = None;
            waiting.refused = true;
        }
    }
    drop(accept_queue);
    if let DriveExit::HandedOff = core.drive(&mut waiting, |waiting| waiting.started.is_some()).await
        && let Some(start) = waiting.started.take()
    {
        // The application runs in a task of its own, sized for it; this task (sized for the handshake)
        // ends here and frees its memory.
        start(core);
        return;
    }
    core.finish(&mut waiting).await;
}

/// Wraps an application so [`IncomingConnection::start`] can hand it to an already running task.
pub(crate) fn start_fn<A: ApplicationOverQuic>(app: A) -> StartFn {
    Box::new(move |core: ConnectionCore| {
        // Still inside the handshake task's span: the connection keeps its span (and trace ID).
        tokio::spawn(core.run(app).instrument(tracing::Span::current()));
    })
}

pub(crate) type StartSender = oneshot::Sender<StartFn>;
