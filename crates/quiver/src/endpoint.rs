//! [`Endpoint`]: the sockets, their routers, and the entry points for accepting and opening
//! connections.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::app::ApplicationOverQuic;
use crate::cid::CidGenerator;
use crate::config::{ClientConfig, ServerConfig};
use crate::connection::{ConnectionCore, ConnectionHandle, CoreParts, IncomingConnection, SessionSlot};
use crate::error::{ConnectError, ConnectionError, EndpointError, MigrateError};
use crate::limits::{SourceCounts, SourceRates};
use crate::route::{ROUTER_COMMAND_QUEUE, Route, RouterCommand, RouterHandle};
use crate::router::{FORWARD_QUEUE, Router, RouterParts, ServerRole, Siblings};
use crate::shared::{EndpointShared, SessionCache, SessionKey};
use crate::socket::QuicSocket;
use crate::stats::EndpointStats;
use crate::token::ResetTokens;

struct ClientRole {
    config: ClientConfig,
    quiche_config: Mutex<quiche::Config>,
    sessions: Arc<SessionCache>,
}

struct EndpointInner {
    shared: Arc<EndpointShared>,
    routers: Vec<RouterHandle>,
    accept_queue: tokio::sync::Mutex<mpsc::Receiver<IncomingConnection>>,
    client: Option<ClientRole>,
    next_router: std::sync::atomic::AtomicUsize,
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

/// A QUIC endpoint: one or more UDP sockets, each read by its own router task, serving as a server,
/// a client, or both.
///
/// Cloning is cheap and shares the endpoint. When the last clone is dropped (or on
/// [`close`](Self::close)), every connection is closed and the sockets are released.
///
/// ```no_run
/// # async fn demo(app: impl quiver::ApplicationOverQuic + Clone) -> Result<(), Box<dyn std::error::Error>> {
/// use quiver::{Endpoint, ServerConfig};
///
/// let config = ServerConfig::builder().alpn(["echo"]).self_signed(["localhost"]).build()?;
/// let endpoint = Endpoint::server("127.0.0.1:4433".parse()?, config)?;
/// while let Some(incoming) = endpoint.accept().await {
///     incoming.start(app.clone());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<EndpointInner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("local_addrs", &self.local_addrs()).finish_non_exhaustive()
    }
}

/// Builds an [`Endpoint`] with any number of sockets and either or both roles.
///
/// ```no_run
/// # fn demo(server: quiver::ServerConfig, client: quiver::ClientConfig) -> Result<(), quiver::EndpointError> {
/// # let rt = tokio::runtime::Runtime::new().unwrap(); let _guard = rt.enter();
/// let endpoint = quiver::Endpoint::builder()
///     .bind_reuseport("0.0.0.0:443".parse().unwrap(), 4) // four sockets, four routers
///     .server(server)
///     .client(client)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct EndpointBuilder {
    binds: Vec<(SocketAddr, bool)>,
    server: Option<ServerConfig>,
    client: Option<ClientConfig>,
    /// Unit tests: bind on this in-memory network instead of UDP.
    #[cfg(test)]
    memory: Option<crate::memory::MemoryNetwork>,
}

impl EndpointBuilder {
    /// Adds one socket bound to `addr` (port 0 picks a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.binds.push((addr, false));
        self
    }

    /// Adds `count` sockets sharing `addr` with `SO_REUSEPORT`, one router each, so the kernel spreads
    /// clients across them. With port 0, the first socket picks the port and the others join it.
    pub fn bind_reuseport(mut self, addr: SocketAddr, count: usize) -> Self {
        for _ in 0..count.max(1) {
            self.binds.push((addr, true));
        }
        self
    }

    /// Binds every socket on an in-memory network instead of UDP (unit tests).
    #[cfg(test)]
    pub(crate) fn memory(mut self, network: &crate::memory::MemoryNetwork) -> Self {
        self.memory = Some(network.clone());
        self
    }

    /// Accepts connections with this configuration.
    pub fn server(mut self, config: ServerConfig) -> Self {
        self.server = Some(config);
        self
    }

    /// Opens connections with this configuration.
    pub fn client(mut self, config: ClientConfig) -> Self {
        self.client = Some(config);
        self
    }

    /// Binds the sockets and starts one router task per socket.
    ///
    /// # Errors
    /// [`EndpointError::Bind`] naming the address, [`EndpointError::NoRuntime`] outside Tokio, and
    /// configuration errors.
    pub fn build(self) -> Result<Endpoint, EndpointError> {
        if self.binds.is_empty() {
            return Err(EndpointError::NoSocket);
        }
        if self.server.is_none() && self.client.is_none() {
            return Err(EndpointError::NoRole);
        }
        if self.binds.len() > usize::from(u8::MAX) + 1 {
            return Err(EndpointError::Bind {
                addr: self.binds[0].0,
                source: std::io::Error::other("at most 256 sockets per endpoint"),
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EndpointError::NoRuntime)?;
        let shared = Arc::new(EndpointShared::new(
            self.server.as_ref().and_then(|config| config.handshake_rate_per_source).map(SourceRates::new),
            self.server.as_ref().and_then(|config| config.max_connections_per_source).map(SourceCounts::new),
            self.server.as_ref().map(|config| SourceCounts::new(config.max_handshakes_per_source)),
        ));
        let backlog = self.server.as_ref().map_or(1, |config| config.accept_backlog);
        let (accept_tx, accept_rx) = mpsc::channel(backlog);

        let mut sockets = Vec::with_capacity(self.binds.len());
        let mut shared_port: Option<SocketAddr> = None;
        for (addr, reuse_port) in &self.binds {
            // Sockets after the first in a reuseport group join the port the first one got.
            let target = match (reuse_port, shared_port) {
                (true, Some(first)) if addr.port() == 0 && first.ip() == addr.ip() => first,
                _ => *addr,
            };
            let socket =
                self.bind_socket(target, *reuse_port).map_err(|source| EndpointError::Bind { addr: target, source })?;
            if *reuse_port && shared_port.is_none() {
                shared_port = Some(socket.local_addr());
            }
            sockets.push(Arc::new(socket));
        }

        let server = self.server.map(Arc::new);
        let mut routers = Vec::with_capacity(sockets.len());
        let mut tasks = Vec::with_capacity(sockets.len());
        let (forward_senders, forward_receivers): (Vec<_>, Vec<_>) =
            sockets.iter().map(|_| mpsc::channel(FORWARD_QUEUE)).unzip();
        let siblings = Siblings { forward: forward_senders.into() };
        let reset_tokens = server.as_ref().map(|config| Arc::new(ResetTokens::new(&config.secret)));
        for (index, (socket, forwarded)) in sockets.into_iter().zip(forward_receivers).enumerate() {
            let (commands_tx, commands_rx) = mpsc::channel(ROUTER_COMMAND_QUEUE);
            let handle = RouterHandle {
                socket,
                commands: commands_tx,
                cids: CidGenerator::new(u8::try_from(index).unwrap_or(u8::MAX), reset_tokens.clone()),
            };
            let role = match &server {
                Some(config) => Some(ServerRole::new(config.clone(), accept_tx.clone())?),
                None => None,
            };
            tasks.push(Router::new(RouterParts {
                handle: handle.clone(),
                index,
                commands: commands_rx,
                forwarded,
                siblings: siblings.clone(),
                server: role,
                shared: shared.clone(),
            }));
            routers.push(handle);
        }
        let client = match self.client {
            Some(config) => Some(ClientRole {
                quiche_config: Mutex::new(config.quiche_config()?),
                config,
                sessions: Arc::default(),
            }),
            None => None,
        };
        for (index, router) in tasks.into_iter().enumerate() {
            let span = tracing::info_span!("router", index, addr = %routers[index].socket.local_addr());
            runtime.spawn(router.run().instrument(span));
        }
        Ok(Endpoint {
            inner: Arc::new(EndpointInner {
                shared,
                routers,
                accept_queue: tokio::sync::Mutex::new(accept_rx),
                client,
                next_router: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }
}

impl EndpointBuilder {
    fn bind_socket(&self, addr: SocketAddr, reuse_port: bool) -> std::io::Result<QuicSocket> {
        #[cfg(test)]
        if let Some(network) = &self.memory {
            return QuicSocket::memory(network, addr);
        }
        QuicSocket::bind(addr, reuse_port)
    }
}

impl Endpoint {
    /// Starts building an endpoint.
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder::default()
    }

    /// A server on one socket bound to `addr`.
    ///
    /// # Errors
    /// See [`EndpointBuilder::build`].
    pub fn server(addr: SocketAddr, config: ServerConfig) -> Result<Self, EndpointError> {
        Self::builder().bind(addr).server(config).build()
    }

    /// A client on one socket bound to `addr` (for example `127.0.0.1:0` or `[::]:0`). Many connections
    /// share the socket.
    ///
    /// # Errors
    /// See [`EndpointBuilder::build`].
    pub fn client(addr: SocketAddr, config: ClientConfig) -> Result<Self, EndpointError> {
        Self::builder().bind(addr).client(config).build()
    }

    /// The address of the first socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.routers[0].socket.local_addr()
    }

    /// The addresses of every socket.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.routers.iter().map(|router| router.socket.local_addr()).collect()
    }

    /// Waits for the next connection that completed its handshake. Returns `None` once the endpoint
    /// is closed (or has no server role).
    ///
    /// Connections wait in a bounded queue (see
    /// [`ServerConfigBuilder::accept_backlog`](crate::ServerConfigBuilder::accept_backlog)); while they
    /// wait, their task keeps acknowledging packets. Drop an [`IncomingConnection`] to refuse it.
    ///
    /// # Cancel safety
    /// Cancel safe: a connection is only taken from the queue when this returns it.
    pub async fn accept(&self) -> Option<IncomingConnection> {
        let mut shutdown = self.inner.shared.shutdown_signal();
        let mut queue = self.inner.accept_queue.lock().await;
        tokio::select! {
            incoming = queue.recv() => incoming,
            _ = shutdown.wait_for(|stop| *stop) => None,
        }
    }

    /// Opens a connection to `remote`, verifying its certificate for `server_name` (unless the client
    /// configuration is insecure), and runs `app` on it. Returns once the handshake has completed.
    ///
    /// # Errors
    /// [`ConnectError::TimedOut`] when the server does not answer within the handshake timeout (or the
    /// idle timeout, if shorter), [`ConnectError::HandshakeFailed`] when the server refuses or TLS
    /// fails, and configuration problems.
    ///
    /// # Cancel safety
    /// Dropping the future does not stop the connection attempt; the task ends by itself on failure.
    pub async fn connect<A: ApplicationOverQuic>(
        &self,
        remote: SocketAddr,
        server_name: &str,
        app: A,
    ) -> Result<ConnectionHandle, ConnectError> {
        let client = self.inner.client.as_ref().ok_or(ConnectError::NotAClient)?;
        if self.inner.shared.is_shut_down() {
            return Err(ConnectError::EndpointClosed);
        }
        let index = self.inner.next_router.fetch_add(1, Ordering::Relaxed) % self.inner.routers.len();
        let router = self.inner.routers[index].clone();
        let local = router.socket.local_addr();
        if local.is_ipv4() != remote.is_ipv4() {
            return Err(ConnectError::AddressFamily { local, remote });
        }
        if server_name.is_empty() || server_name.len() > 253 {
            return Err(ConnectError::InvalidServerName(server_name.to_owned()));
        }
        let scid = router.cids.generate();
        let mut conn = {
            let mut quiche_config = client.quiche_config.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            quiche::connect(Some(server_name), &scid, local, remote, &mut quiche_config)?
        };
        if let Some(keylog) = &client.config.keylog {
            conn.set_keylog(keylog.writer());
        }
        if let Some(dir) = &client.config.transport.qlog_dir {
            crate::qlog::attach(&mut conn, dir).open();
        }
        let session_key: SessionKey = (server_name.to_owned(), remote);
        let resumption = client.config.session_resumption;
        if let Some(session) = resumption.then(|| client.sessions.get(&session_key)).flatten() {
            // A stale or foreign ticket only means a full handshake.
            let _ = conn.set_session(&session);
        }
        let (route, inbound_rx) = Route::new(client.config.transport.connection_queue_datagrams);
        // Mapped before the first Initial leaves, so the server's answer always finds the connection.
        router
            .commands
            .send(RouterCommand::Register(scid.to_vec(), route.clone()))
            .await
            .map_err(|_| ConnectError::EndpointClosed)?;
        let mut core = ConnectionCore::new(CoreParts {
            conn: Box::new(conn),
            inbound: inbound_rx,
            route: &route,
            router,
            shared: self.inner.shared.clone(),
            odcid: None,
            handshake_timeout: Some(client.config.handshake_timeout),
            source: None,
            session_store: resumption.then(|| SessionSlot {
                cache: client.sessions.clone(),
                key: session_key,
                stored: false,
            }),
        });
        drop(route);
        self.inner.shared.counters.connections_opened.fetch_add(1, Ordering::Relaxed);
        let established = core.notify_when_established();
        let mut closed = core.closed_signal();
        let span = tracing::info_span!("conn", scid = %core.trace_id(), peer = %remote, alpn = tracing::field::Empty);
        tokio::spawn(core.run(app).instrument(span));
        let outcome = match established.await {
            Ok(outcome) => outcome,
            Err(_) => Err(closed
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|reason| reason.clone())
                .unwrap_or(ConnectionError::Aborted)),
        };
        outcome.map_err(|reason| match reason {
            ConnectionError::HandshakeTimeout(timeout) => ConnectError::TimedOut(timeout),
            ConnectionError::IdleTimeout => ConnectError::TimedOut(client.config.transport.idle_timeout),
            ConnectionError::EndpointShutdown => ConnectError::EndpointClosed,
            other => ConnectError::HandshakeFailed(other),
        })
    }

    /// Moves a client connection to another socket of this endpoint, as a device does when it changes
    /// networks (RFC 9000 §9): the new path is probed, and once the server has answered on it, traffic
    /// continues there. Returns when the connection runs on the new socket. Bind the second socket when
    /// building the endpoint (`Endpoint::builder().bind(a).bind(b).client(..)`).
    ///
    /// # Errors
    /// [`MigrateError`]: no socket at `local`, a server connection, a connection not established or
    /// closed, or QUIC refusing (no spare connection IDs from the peer yet, or migration disabled).
    ///
    /// # Cancel safety
    /// If cancelled, the migration may still happen.
    pub async fn migrate(&self, connection: &ConnectionHandle, local: SocketAddr) -> Result<(), MigrateError> {
        let router = self
            .inner
            .routers
            .iter()
            .find(|router| router.socket.local_addr() == local)
            .ok_or(MigrateError::UnknownLocalAddress(local))?;
        connection.migrate_to(router.clone()).await
    }

    /// The TLS session this client endpoint keeps for `server_name` at `remote` (quiche's serialized
    /// session: the server's latest session ticket and what resuming it needs), if the server sent
    /// one. A connection stores it when the ticket arrives, soon after its handshake, and again when
    /// it closes. Save it to resume in a later process with [`add_session`](Self::add_session); treat
    /// it as a secret (it opens the resumed connection's early data). `None` on a server endpoint or
    /// with session resumption off.
    ///
    /// ```no_run
    /// # async fn demo(endpoint: quiver::Endpoint, addr: std::net::SocketAddr) {
    /// if let Some(session) = endpoint.session("example.com", addr) {
    ///     std::fs::write("session.bin", &session).unwrap();
    /// }
    /// # }
    /// ```
    pub fn session(&self, server_name: &str, remote: SocketAddr) -> Option<Vec<u8>> {
        let client = self.inner.client.as_ref()?;
        client.sessions.get(&(server_name.to_owned(), remote))
    }

    /// Gives this client endpoint a session saved from [`session`](Self::session) (perhaps by
    /// another process), so its next connection to `server_name` at `remote` resumes it (and, with
    /// early data on, sends 0-RTT). A session quiche cannot use only means a full handshake. Ignored on
    /// a server endpoint.
    pub fn add_session(&self, server_name: &str, remote: SocketAddr, session: Vec<u8>) {
        if let Some(client) = &self.inner.client {
            client.sessions.store((server_name.to_owned(), remote), session);
        }
    }

    /// A snapshot of the endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.inner.shared.counters.snapshot()
    }

    /// Stops accepting, closes every connection (CONNECTION_CLOSE with NO_ERROR) and stops the
    /// routers. Use [`wait_idle`](Self::wait_idle) to wait until every connection task has ended.
    pub fn close(&self) {
        self.inner.shared.shut_down();
    }

    /// Shuts the endpoint down gracefully: new connections are refused (CONNECTION_REFUSED), every
    /// application is asked to finish and close ([`ApplicationOverQuic::on_drain`]), and whatever is
    /// still open after `deadline` is closed. Resolves when every connection has ended.
    ///
    /// # Cancel safety
    /// Cancelling stops the waiting, not the shutdown: new connections stay refused.
    ///
    /// [`ApplicationOverQuic::on_drain`]: crate::ApplicationOverQuic::on_drain
    pub async fn shutdown(&self, deadline: std::time::Duration) {
        self.inner.shared.start_drain();
        if tokio::time::timeout(deadline, self.wait_idle()).await.is_err() {
            tracing::warn!(
                connections = self.inner.shared.counters.active_connections.load(Ordering::Relaxed),
                "shutdown deadline passed; closing what is left"
            );
        }
        self.close();
        self.wait_idle().await;
    }

    /// Resolves when no connection task is running.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.shared.counters.active_connections.load(Ordering::Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }
}
