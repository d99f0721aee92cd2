//! The router: one task per socket, the only reader of that socket.
//!
//! For each datagram it reads the destination connection ID and either hands the datagram to the
//! connection's bounded queue (never waiting for a slow connection), answers it statelessly (Version
//! Negotiation), starts a new server connection from a valid Initial, or drops it and counts why.
//! It owns the CID table; connection tasks change it only through [`RouterCommand`]s, which the router
//! applies before it reads more packets, so a CID is always mapped before a peer can learn it.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quinn_udp::{RecvMeta, Transmit};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::Instrument;

use crate::cid::{self, CidGenerator, MIN_INITIAL_DCID_LEN, PacketKind};
use crate::config::ServerConfig;
use crate::connection::{self, ConnectionCore, CoreParts};
use crate::endpoint::{EndpointShared, IncomingConnection};
use crate::stats::DropReason;

/// A datagram on its way from the router to a connection task.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) data: Vec<u8>,
    pub(crate) from: SocketAddr,
    pub(crate) to: SocketAddr,
}

/// Where the router sends a connection's datagrams.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) inbound: mpsc::Sender<Datagram>,
    pub(crate) queue_drops: Arc<AtomicU64>,
}

/// Changes to the CID table, sent by connection tasks.
#[derive(Debug)]
pub(crate) enum RouterCommand {
    Register(Vec<u8>, Route),
    Unregister(Vec<Vec<u8>>),
}

/// Commands queued for one router before connection tasks wait for room. Tasks only send a few per
/// connection lifetime (one per CID), so this absorbs a storm of thousands of connections closing at
/// once.
pub(crate) const ROUTER_COMMAND_QUEUE: usize = 4096;

/// Smallest UDP payload that may carry a client Initial (RFC 9000 §14.1).
pub(crate) const MIN_INITIAL_DATAGRAM_BYTES: usize = 1200;

/// What connection tasks and the endpoint need to reach one router and its socket.
#[derive(Debug, Clone)]
pub(crate) struct RouterHandle {
    pub(crate) socket: Arc<crate::socket::QuicSocket>,
    pub(crate) commands: mpsc::Sender<RouterCommand>,
    pub(crate) cids: CidGenerator,
}

/// The server half of a router: how to accept.
pub(crate) struct ServerRole {
    pub(crate) quiche_config: quiche::Config,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) accept_queue: mpsc::Sender<IncomingConnection>,
}

pub(crate) struct Router {
    handle: RouterHandle,
    commands: mpsc::Receiver<RouterCommand>,
    routes: HashMap<Vec<u8>, Route>,
    server: Option<ServerRole>,
    shared: Arc<EndpointShared>,
}

/// Receive buffer per datagram slot: a GRO batch coalesces up to 64 KiB into one slot.
const RECV_SLOT_BYTES: usize = 64 * 1024;

impl Router {
    pub(crate) fn new(
        handle: RouterHandle,
        commands: mpsc::Receiver<RouterCommand>,
        server: Option<ServerRole>,
        shared: Arc<EndpointShared>,
    ) -> Self {
        Self { handle, commands, routes: HashMap::new(), server, shared }
    }

    /// Runs until the endpoint shuts down.
    pub(crate) async fn run(mut self) {
        let slots = quinn_udp::BATCH_SIZE.max(1);
        let slot_bytes = if self.handle.socket.gro_segments() > 1 {
            RECV_SLOT_BYTES
        } else {
            crate::config::MAX_RECV_UDP_PAYLOAD_BYTES
        };
        let mut storage = vec![0u8; slots * slot_bytes];
        let mut meta = vec![RecvMeta::default(); slots];
        let mut shutdown = self.shared.shutdown_signal();
        let socket = self.handle.socket.clone();
        loop {
            let mut bufs: Vec<IoSliceMut<'_>> = storage.chunks_mut(slot_bytes).map(IoSliceMut::new).collect();
            let received = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                command = self.commands.recv() => {
                    // The router holds a sender itself, so the queue never closes under it.
                    if let Some(command) = command {
                        self.apply(command);
                    }
                    while let Ok(command) = self.commands.try_recv() {
                        self.apply(command);
                    }
                    continue;
                }
                received = socket.recv(&mut bufs, &mut meta) => received,
            };
            drop(bufs);
            let count = match received {
                Ok(count) => count,
                Err(err) => {
                    // ICMP-triggered errors and the like are per-datagram; the socket is still good.
                    tracing::debug!(error = %err, "UDP receive error");
                    continue;
                }
            };
            // quiche identifies a path by (local, peer); the local side is always the bound address, the
            // same value `connect` and `accept` were given, even for a wildcard bind.
            let to = socket.local_addr();
            for (slot, meta) in storage.chunks_mut(slot_bytes).zip(&meta).take(count) {
                let stride = meta.stride.max(1);
                for datagram in slot[..meta.len].chunks_mut(stride) {
                    self.on_datagram(datagram, meta.addr, to);
                }
            }
        }
        tracing::debug!(routes = self.routes.len(), "router stopped");
    }

    fn apply(&mut self, command: RouterCommand) {
        match command {
            RouterCommand::Register(cid, route) => {
                self.routes.insert(cid, route);
            }
            RouterCommand::Unregister(cids) => {
                for cid in cids {
                    self.routes.remove(&cid);
                }
            }
        }
    }

    fn on_datagram(&mut self, data: &mut [u8], from: SocketAddr, to: SocketAddr) {
        let counters = &self.shared.counters;
        counters.datagrams_received.fetch_add(1, Ordering::Relaxed);
        counters.bytes_received.fetch_add(data.len() as u64, Ordering::Relaxed);
        let Some(kind) = cid::classify(data) else {
            counters.drop(DropReason::Unparseable);
            return;
        };
        let (dcid, long) = match kind {
            PacketKind::Short { dcid } => (dcid, None),
            PacketKind::Long { version, dcid, is_initial } => (dcid, Some((version, is_initial))),
        };
        if let Some(route) = self.routes.get(dcid) {
            match route.inbound.try_send(Datagram { data: data.to_vec(), from, to }) {
                Ok(()) => {
                    counters.datagrams_delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => {
                    route.queue_drops.fetch_add(1, Ordering::Relaxed);
                    counters.drop(DropReason::QueueFull);
                }
                Err(TrySendError::Closed(_)) => {
                    // The task ended without unregistering (it panicked, or its last command was lost):
                    // heal the table, dropping every CID of that connection, not just this one.
                    let dead = route.inbound.clone();
                    self.routes.retain(|_, route| !route.inbound.same_channel(&dead));
                    counters.drop(DropReason::ConnectionGone);
                }
            }
            return;
        }
        match long {
            Some((version, _)) if !quiche::version_is_supported(version) => {
                self.negotiate_version(data, from);
                self.shared.counters.drop(DropReason::UnsupportedVersion);
            }
            Some((_, true)) => {
                let dcid = dcid.to_vec();
                self.accept(data, dcid, from, to);
            }
            _ => counters.drop(DropReason::UnknownConnection),
        }
    }

    /// Answers a long-header packet of an unknown version. Only datagrams large enough to be a client's
    /// first flight get an answer, so the reply (smaller) can never amplify.
    fn negotiate_version(&self, data: &[u8], from: SocketAddr) {
        if self.server.is_none() || data.len() < MIN_INITIAL_DATAGRAM_BYTES {
            return;
        }
        let (Some(PacketKind::Long { dcid, .. }), Some(scid)) = (cid::classify(data), cid::long_header_scid(data))
        else {
            return;
        };
        let mut out = [0u8; 256];
        let scid = quiche::ConnectionId::from_ref(scid);
        let dcid = quiche::ConnectionId::from_ref(dcid);
        if let Ok(len) = quiche::negotiate_version(&scid, &dcid, &mut out) {
            let transmit =
                Transmit { destination: from, ecn: None, contents: &out[..len], segment_size: None, src_ip: None };
            if self.handle.socket.try_send(&transmit).is_ok() {
                self.shared.counters.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                self.shared.counters.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
            }
        }
    }

    /// Starts a server connection from a client's first Initial.
    ///
    /// The first packet is processed here, before any task exists: an Initial that does not decrypt
    /// costs one failed AEAD open and no allocation beyond the discarded connection state.
    fn accept(&mut self, data: &mut [u8], odcid: Vec<u8>, from: SocketAddr, to: SocketAddr) {
        let counters = &self.shared.counters;
        let Some(server) = self.server.as_mut() else {
            counters.drop(DropReason::NotAServer);
            return;
        };
        if data.len() < MIN_INITIAL_DATAGRAM_BYTES {
            counters.drop(DropReason::InitialTooShort);
            return;
        }
        if odcid.len() < MIN_INITIAL_DCID_LEN {
            counters.drop(DropReason::InvalidInitialCid);
            return;
        }
        if counters.active_connections.load(Ordering::Relaxed) >= server.config.max_connections as u64 {
            counters.drop(DropReason::ConnectionLimit);
            return;
        }
        let scid = self.handle.cids.generate();
        let mut conn = match quiche::accept(&scid, None, to, from, &mut server.quiche_config) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(error = %err, %from, "quiche refused an Initial");
                counters.drop(DropReason::AcceptFailed);
                return;
            }
        };
        if let Some(keylog) = &server.config.keylog {
            conn.set_keylog(keylog.writer());
        }
        let processed = conn.recv(data, quiche::RecvInfo { from, to });
        if processed.is_err() || conn.stats().recv == 0 {
            counters.drop(DropReason::InvalidInitial);
            return;
        }
        counters.datagrams_delivered.fetch_add(1, Ordering::Relaxed);

        let (inbound_tx, inbound_rx) = mpsc::channel(server.config.transport.connection_queue_datagrams.max(1));
        let route = Route { inbound: inbound_tx, queue_drops: Arc::new(AtomicU64::new(0)) };
        self.routes.insert(scid.to_vec(), route.clone());
        self.routes.insert(odcid.clone(), route.clone());
        let core = ConnectionCore::new(CoreParts {
            conn,
            inbound: inbound_rx,
            route: &route,
            router: self.handle.clone(),
            shared: self.shared.clone(),
            odcid: Some(odcid),
            handshake_timeout: None,
        });
        let span = tracing::info_span!("conn", scid = %core.trace_id(), peer = %from);
        tokio::spawn(connection::run_server(core, server.accept_queue.clone()).instrument(span));
    }
}
