//! A connection's life as types: [`Handshake`] → [`AwaitingAccept`] → [`Running`] → [`Draining`] →
//! [`Closed`]. Each stage owns the [`ConnectionCore`] and consumes itself into the next, so a stage
//! that has ended cannot be driven again. Clients start in `Running` (an application is there from
//! the start, and may send 0-RTT data); servers go through every stage.
//!
//! Each stage runs the same loop ([`ConnectionCore::drive`]); what differs, the [`Stage`] trait says:
//! what to do once the connection is usable, what else may wake the task, and what the endpoint's
//! graceful shutdown means for it.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{AppFailure, ConnectionCore, ConnectionHandle, DriveExit, guard};
use crate::app::ApplicationOverQuic;
use crate::error::ApplicationError;

/// Transport error code CONNECTION_REFUSED (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;

/// Starts the application's task on an accepted connection (the handshake task hands its state over).
type StartFn = Box<dyn FnOnce(ConnectionCore) + Send>;

/// What the loop does in one stage.
pub(super) trait Stage {
    /// Whether the stage has a wake-up of its own ([`wait`](Self::wait)) and hears the endpoint's
    /// graceful shutdown.
    const WAITS: bool;
    /// Whether the stage ends as soon as the connection is closing (a CONNECTION_CLOSE was sent or
    /// received), rather than when it is closed.
    const LEAVES_WHEN_CLOSING: bool;

    /// The connection is usable (and not closing): act on it. Called on every turn of the loop.
    fn act(&mut self, core: &mut ConnectionCore) -> StageStep;

    /// Resolves when the stage has something to do that did not come from the network. Polled only
    /// when [`WAITS`](Self::WAITS); the default never resolves.
    ///
    /// # Cancel safety
    /// Must be cancel safe: the loop drops it whenever another branch wins.
    fn wait(&mut self) -> impl Future<Output = StageWake> + Send {
        std::future::pending()
    }

    /// What [`wait`](Self::wait) resolved with.
    fn on_wake(&mut self, core: &mut ConnectionCore, woken: StageWake) {
        let _ = (core, woken);
    }

    /// The endpoint began a graceful shutdown (only for stages that [`WAITS`](Self::WAITS)).
    fn on_drain(&mut self, core: &mut ConnectionCore) {
        let _ = core;
    }
}

/// Whether the loop keeps going in this stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StageStep {
    Stay,
    Leave,
}

/// A stage's own wake-up.
pub(super) enum StageWake {
    /// The application's `wait_for_data` returned.
    App(Result<(), ApplicationError>),
    AppPanicked,
    /// The accept queue answered: the application to start, or `None` when the connection was refused.
    Start(Option<StartFn>),
}

/// A server connection completing its handshake. No application yet: nothing of the peer's reaches
/// anyone until the connection is accepted.
pub(super) struct Handshake {
    core: ConnectionCore,
}

/// An established server connection waiting in the accept queue: it keeps acknowledging and its
/// timers run, until [`IncomingConnection::start`] hands it an application or it is refused.
pub(super) struct AwaitingAccept {
    core: ConnectionCore,
    accept: AcceptWait,
}

/// The application runs on the connection.
pub(super) struct Running<A> {
    core: ConnectionCore,
    app: AppStage<A>,
}

/// A CONNECTION_CLOSE was sent or received: the closing or draining period runs out (RFC 9000 §10.2),
/// without the application.
pub(super) struct Draining<A> {
    core: ConnectionCore,
    app: A,
    /// Already closed (or given up on): nothing left to drive.
    closed: bool,
}

/// The connection is closed: tell the application, unmap the CIDs, publish the reason.
pub(super) struct Closed {
    core: ConnectionCore,
}

impl Handshake {
    /// Runs the handshake: the connection is established (or, with 0-RTT, usable), or it closed.
    async fn complete(mut self) -> Result<AwaitingAccept, Closed> {
        if self.core.drive(&mut HandshakeStage).await == DriveExit::Closed || self.core.handle.is_none() {
            return Err(Closed { core: self.core });
        }
        Ok(AwaitingAccept { core: self.core, accept: AcceptWait::default() })
    }
}

impl AwaitingAccept {
    /// Offers the connection to the application's accept stream; a full backlog refuses it
    /// (CONNECTION_REFUSED) at once.
    fn enqueue(mut self, accept_queue: &mpsc::Sender<IncomingConnection>) -> Self {
        let Some(handle) = self.core.handle.clone() else { return self };
        let (start_tx, start_rx) = oneshot::channel();
        let counters = &self.core.shared.counters;
        match accept_queue.try_send(IncomingConnection::new(handle, start_tx)) {
            Ok(()) => {
                counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
                self.accept.start = Some(start_rx);
            }
            Err(_) => {
                counters.connections_refused_backlog.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("accept queue full; refusing connection");
                self.accept.refused = true;
            }
        }
        self
    }

    /// Waits for the application: the core and how to start it, or the connection closed first.
    async fn wait_for_start(mut self) -> Result<(ConnectionCore, StartFn), Closed> {
        if self.core.drive(&mut self.accept).await == DriveExit::Leave
            && let Some(start) = self.accept.started.take()
        {
            return Ok((self.core, start));
        }
        Err(Closed { core: self.core })
    }
}

impl<A: ApplicationOverQuic> Running<A> {
    pub(super) fn new(core: ConnectionCore, app: A) -> Self {
        Self { core, app: AppStage { app, established_told: false } }
    }

    /// Runs the application until the connection is closing.
    async fn run(mut self) -> Draining<A> {
        let exit = self.core.drive(&mut self.app).await;
        Draining { core: self.core, app: self.app.app, closed: exit == DriveExit::Closed }
    }
}

impl<A: ApplicationOverQuic> Draining<A> {
    /// Lets the closing or draining period run out, then tells the application.
    async fn run(mut self) {
        if !self.closed {
            self.core.drive(&mut DrainingStage).await;
        }
        let app = &mut self.app;
        Closed { core: self.core }.finish(|conn, reason| app.on_conn_close(conn, reason)).await;
    }
}

impl Closed {
    async fn finish(mut self, tell_application: impl FnOnce(&mut crate::app::QuicConnection, &crate::ConnectionError)) {
        self.core.finish(tell_application).await;
    }

    /// A connection that closed before any application ran on it.
    async fn finish_unaccepted(self) {
        self.finish(|_, _| {}).await;
    }
}

impl ConnectionCore {
    /// Runs the connection with `app` until it closes (clients, and accepted server connections).
    pub(crate) async fn run<A: ApplicationOverQuic>(self, app: A) {
        Running::new(self, app).run().await.run().await;
    }
}

/// A server connection's task: handshake, wait in the accept queue, then run the application.
pub(crate) async fn run_server(core: ConnectionCore, accept_queue: mpsc::Sender<IncomingConnection>) {
    let awaiting = match (Handshake { core }).complete().await {
        Ok(awaiting) => awaiting.enqueue(&accept_queue),
        Err(closed) => return closed.finish_unaccepted().await,
    };
    drop(accept_queue);
    match awaiting.wait_for_start().await {
        // The application runs in a task of its own, sized for it; this task (sized for the
        // handshake) ends here and frees its memory.
        Ok((core, start)) => start(core),
        Err(closed) => closed.finish_unaccepted().await,
    }
}

/// Wraps an application so [`IncomingConnection::start`] can hand it to an already running task.
fn start_fn<A: ApplicationOverQuic>(app: A) -> StartFn {
    Box::new(move |core: ConnectionCore| {
        // Still inside the handshake task's span: the connection keeps its span (and trace ID).
        tokio::spawn(core.run(app).instrument(tracing::Span::current()));
    })
}

type StartSender = oneshot::Sender<StartFn>;

/// The handshake stage's loop: leave as soon as the connection is usable.
struct HandshakeStage;

impl Stage for HandshakeStage {
    const WAITS: bool = false;
    const LEAVES_WHEN_CLOSING: bool = false;

    fn act(&mut self, _core: &mut ConnectionCore) -> StageStep {
        StageStep::Leave
    }
}

/// The accept stage's loop: wait for the application, refuse if none comes.
#[derive(Default)]
struct AcceptWait {
    /// Where `IncomingConnection::start` sends the application; `None` once answered or never queued.
    start: Option<oneshot::Receiver<StartFn>>,
    started: Option<StartFn>,
    refused: bool,
}

impl Stage for AcceptWait {
    const WAITS: bool = true;
    const LEAVES_WHEN_CLOSING: bool = false;

    fn act(&mut self, core: &mut ConnectionCore) -> StageStep {
        if self.started.is_some() {
            return StageStep::Leave;
        }
        if self.refused {
            core.close_transport(CONNECTION_REFUSED, "connection not accepted");
        }
        StageStep::Stay
    }

    async fn wait(&mut self) -> StageWake {
        let Some(start) = self.start.as_mut() else { return std::future::pending().await };
        StageWake::Start(start.await.ok())
    }

    fn on_wake(&mut self, _core: &mut ConnectionCore, woken: StageWake) {
        if let StageWake::Start(start) = woken {
            self.start = None;
            match start {
                Some(start) => self.started = Some(start),
                None => self.refused = true,
            }
        }
    }

    fn on_drain(&mut self, core: &mut ConnectionCore) {
        // Nobody will accept it now.
        let _ = core.conn.close(true, 0, b"endpoint shutting down");
    }
}

/// The running stage's loop: the application's hooks.
struct AppStage<A> {
    app: A,
    established_told: bool,
}

impl<A: ApplicationOverQuic> Stage for AppStage<A> {
    const WAITS: bool = true;
    const LEAVES_WHEN_CLOSING: bool = true;

    fn act(&mut self, core: &mut ConnectionCore) -> StageStep {
        let app = &mut self.app;
        if !std::mem::replace(&mut self.established_told, true) {
            let result = guard(|| app.on_conn_established(&mut core.conn));
            core.apply_app_result(result);
        }
        if app.should_act() {
            let result = guard(|| app.process_reads(&mut core.conn));
            core.apply_app_result(result);
            let result = guard(|| app.process_writes(&mut core.conn));
            core.apply_app_result(result);
        }
        StageStep::Stay
    }

    fn wait(&mut self) -> impl Future<Output = StageWake> + Send {
        AssertUnwindSafe(self.app.wait_for_data()).catch_unwind().map(|result| match result {
            Ok(result) => StageWake::App(result),
            Err(_) => StageWake::AppPanicked,
        })
    }

    fn on_wake(&mut self, core: &mut ConnectionCore, woken: StageWake) {
        match woken {
            StageWake::App(result) => core.apply_app_result(result.map_err(AppFailure::Error)),
            StageWake::AppPanicked => core.apply_app_result(Err(AppFailure::Panic)),
            StageWake::Start(_) => {}
        }
    }

    fn on_drain(&mut self, core: &mut ConnectionCore) {
        let app = &mut self.app;
        let result = guard(|| app.on_drain(&mut core.conn));
        core.apply_app_result(result);
    }
}

/// The draining stage's loop: nothing but ACKs, timers and the close.
struct DrainingStage;

impl Stage for DrainingStage {
    const WAITS: bool = false;
    const LEAVES_WHEN_CLOSING: bool = false;

    fn act(&mut self, _core: &mut ConnectionCore) -> StageStep {
        StageStep::Stay
    }
}

/// A server connection that completed its handshake and waits for an application.
///
/// Call [`start`](Self::start) to run an application on it; drop it to refuse the connection
/// (CONNECTION_REFUSED).
pub struct IncomingConnection {
    handle: ConnectionHandle,
    start: StartSender,
}

impl std::fmt::Debug for IncomingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingConnection").field("connection", &self.handle).finish_non_exhaustive()
    }
}

impl IncomingConnection {
    fn new(handle: ConnectionHandle, start: StartSender) -> Self {
        Self { handle, start }
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.handle.peer_addr()
    }

    /// The negotiated application protocol; pick the application by it when serving several.
    pub fn alpn(&self) -> &[u8] {
        self.handle.alpn()
    }

    /// The server name the client asked for (SNI).
    pub fn server_name(&self) -> Option<&str> {
        self.handle.server_name()
    }

    /// Runs `app` on this connection and returns its handle.
    pub fn start<A: ApplicationOverQuic>(self, app: A) -> ConnectionHandle {
        // If the connection died while waiting, the handle already reports it closed.
        let _ = self.start.send(start_fn(app));
        self.handle
    }
}
