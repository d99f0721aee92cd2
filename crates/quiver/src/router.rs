//! The router: one task per socket, the only reader of that socket.
//!
//! For each datagram it reads the destination connection ID and either hands the datagram to the
//! connection's bounded queue (never waiting for a slow connection), forwards it to the sibling router
//! whose index the ID carries, answers it statelessly (Version Negotiation), starts a new server
//! connection from a valid Initial, or drops it and counts why. Datagrams are copied into pooled
//! buffers; a dense GRO run for one connection is handed over in its receive buffer as one message.
//! It owns the CID table; connection tasks change it only through [`RouterCommand`]s, which the router
//! applies before it reads more packets, so a CID is always mapped before a peer can learn it.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use quinn_udp::{RecvMeta, Transmit};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::Instrument;

use crate::buffer::LARGE_BUFFER_BYTES;
use crate::cid::{self, CidGenerator, CidTable, MIN_INITIAL_DCID_LEN, PacketKind};
use crate::config::{AddressValidation, STATELESS_RESET_RATE, ServerConfig};
use crate::connection::{self, ConnectionCore, CoreParts};
use crate::endpoint::{EndpointShared, IncomingConnection};
use crate::limits::{RateLimit, RateLimiter};
use crate::stats::DropReason;
use crate::token::RetryTokens;

/// Datagrams on their way from a router to a connection task: one datagram, or a GRO run of
/// equal-size datagrams from one sender, in a pooled buffer the connection gives back once quiche has
/// read it.
///
/// The local address is not carried: a connection sends from its router's socket, so that socket's
/// address is the local side of every path quiche sees, even for a packet a sibling forwarded. Small
/// on purpose: every connection's queue allocates room for 32 of these up front.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) buffer: Vec<u8>,
    /// Bytes of `buffer` in use (at most 64 KiB).
    len: u32,
    /// Size of every datagram but the last (the GRO segment size); `len` for a single datagram.
    stride: u32,
    pub(crate) from: SocketAddr,
}

impl Inbound {
    /// `len` bytes of `buffer` holding datagrams of `stride` bytes (the last may be shorter).
    pub(crate) fn new(buffer: Vec<u8>, len: usize, stride: usize, from: SocketAddr) -> Self {
        let len = len.min(buffer.len());
        Self { buffer, len: len as u32, stride: stride.clamp(1, len.max(1)) as u32, from }
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    pub(crate) fn stride(&self) -> usize {
        self.stride as usize
    }

    /// How many datagrams this carries.
    pub(crate) fn datagrams(&self) -> usize {
        self.len().div_ceil(self.stride())
    }
}

/// The inbound queue of one connection, as the router sees it. The channel bounds messages; `queued`
/// bounds datagrams (a GRO run is one message but many datagrams), which is what the limit is about.
#[derive(Debug)]
pub(crate) struct InboundQueue {
    /// Datagrams queued and not yet fed to quiche.
    pub(crate) queued: AtomicUsize,
    /// Most datagrams that may be queued.
    pub(crate) limit: usize,
    /// Datagrams dropped because the queue was full.
    pub(crate) drops: AtomicU64,
}

impl InboundQueue {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { queued: AtomicUsize::new(0), limit: limit.max(1), drops: AtomicU64::new(0) })
    }

    /// Reserves room for `datagrams`; false (and nothing reserved) when they do not fit.
    fn reserve(&self, datagrams: usize) -> bool {
        let before = self.queued.fetch_add(datagrams, Ordering::Relaxed);
        if before + datagrams > self.limit {
            self.queued.fetch_sub(datagrams, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The connection task has fed `datagrams` to quiche.
    pub(crate) fn release(&self, datagrams: usize) {
        self.queued.fetch_sub(datagrams, Ordering::Relaxed);
    }
}

/// Where the router sends a connection's datagrams.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) queue: Arc<InboundQueue>,
}

impl Route {
    /// A route and the receiving end of its channel.
    pub(crate) fn new(limit_datagrams: usize) -> (Self, mpsc::Receiver<Inbound>) {
        let (inbound, receiver) = mpsc::channel(limit_datagrams.max(1));
        (Self { inbound, queue: InboundQueue::new(limit_datagrams) }, receiver)
    }
}

/// Changes to the CID table, sent by connection tasks.
#[derive(Debug, Clone)]
pub(crate) enum RouterCommand {
    Register(Vec<u8>, Route),
    Unregister(Vec<Vec<u8>>),
    /// A client connection learned its server's stateless-reset token.
    RegisterResetToken(u128, Route),
    UnregisterResetToken(u128),
}

/// Commands queued for one router before connection tasks wait for room. Tasks only send a few per
/// connection lifetime (one per CID), so this absorbs a storm of thousands of connections closing at
/// once.
pub(crate) const ROUTER_COMMAND_QUEUE: usize = 4096;

/// Datagrams another router may have queued for this one (packets that arrived on a sibling socket
/// of a `SO_REUSEPORT` group, after a client's address changed). Forwarding is rare; past this, the
/// sender drops and counts, as for a full connection queue.
pub(crate) const FORWARD_QUEUE: usize = 1024;

/// Smallest UDP payload that may carry a client Initial (RFC 9000 §14.1).
pub(crate) const MIN_INITIAL_DATAGRAM_BYTES: usize = 1200;

/// A GRO run at least this large, all for one connection, is handed over in its receive buffer as is;
/// smaller runs are copied into small buffers. Moving only dense runs keeps a queued datagram's memory
/// within a few KiB whatever the mix, while large bursts (uploads) skip the copy.
const MOVE_RUN_BYTES: usize = LARGE_BUFFER_BYTES / 2;

/// Receive slots per system call: as many as `quinn-udp` batches.
const RECV_SLOTS: usize = quinn_udp::BATCH_SIZE;

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
    pub(crate) retry_tokens: RetryTokens,
}

impl ServerRole {
    pub(crate) fn new(
        config: Arc<ServerConfig>,
        accept_queue: mpsc::Sender<IncomingConnection>,
    ) -> Result<Self, crate::error::ConfigError> {
        Ok(Self {
            quiche_config: config.quiche_config()?,
            retry_tokens: RetryTokens::new(config.secret.clone()),
            config,
            accept_queue,
        })
    }
}

/// Longest Retry packet we build: header, two connection IDs, a token and the integrity tag.
const MAX_RETRY_BYTES: usize = 256;
/// A stateless reset must look like a short-header packet: at least 21 bytes (RFC 9000 §10.3), and we
/// only answer packets longer than that so ours can be shorter than theirs.
const MIN_STATELESS_RESET_BYTES: usize = 21;
/// Longest reset we send; any length above the minimum hides the packet as well.
const MAX_STATELESS_RESET_BYTES: usize = 64;
/// Transport error code CONNECTION_REFUSED (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;
/// Refusals cost a ClientHello's processing each; past this budget the Initial is just dropped.
const REFUSAL_RATE: RateLimit = RateLimit { per_second: 200.0, burst: 50.0 };

/// How a router reaches its siblings (the other sockets of its endpoint) to forward packets whose
/// connection ID names them.
#[derive(Debug, Clone)]
pub(crate) struct Siblings {
    pub(crate) forward: Arc<[mpsc::Sender<Inbound>]>,
}

pub(crate) struct Router {
    handle: RouterHandle,
    index: usize,
    commands: mpsc::Receiver<RouterCommand>,
    forwarded: mpsc::Receiver<Inbound>,
    siblings: Siblings,
    routes: CidTable<Route>,
    /// Client connections by their server's stateless-reset token (one entry per connection).
    reset_routes: HashMap<u128, Route, foldhash::fast::RandomState>,
    server: Option<ServerRole>,
    shared: Arc<EndpointShared>,
    resets: RateLimiter,
    refusals: RateLimiter,
}

/// Whether a datagram was already counted as received by the router that read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Read from this router's socket.
    Socket,
    /// Forwarded by a sibling, which counted it as received.
    Sibling,
}

pub(crate) struct RouterParts {
    pub(crate) handle: RouterHandle,
    pub(crate) index: usize,
    pub(crate) commands: mpsc::Receiver<RouterCommand>,
    pub(crate) forwarded: mpsc::Receiver<Inbound>,
    pub(crate) siblings: Siblings,
    pub(crate) server: Option<ServerRole>,
    pub(crate) shared: Arc<EndpointShared>,
}

impl Router {
    pub(crate) fn new(parts: RouterParts) -> Self {
        Self {
            handle: parts.handle,
            index: parts.index,
            commands: parts.commands,
            forwarded: parts.forwarded,
            siblings: parts.siblings,
            routes: CidTable::default(),
            reset_routes: HashMap::default(),
            server: parts.server,
            shared: parts.shared,
            resets: RateLimiter::new(STATELESS_RESET_RATE),
            refusals: RateLimiter::new(REFUSAL_RATE),
        }
    }

    /// Runs until the endpoint shuts down.
    pub(crate) async fn run(mut self) {
        let gro = self.handle.socket.gro_segments() > 1;
        let pool = if gro { &self.shared.large_buffers } else { &self.shared.small_buffers };
        let mut storage: [Vec<u8>; RECV_SLOTS] = std::array::from_fn(|_| pool.take());
        let mut meta = [RecvMeta::default(); RECV_SLOTS];
        let mut shutdown = self.shared.shutdown_signal();
        let socket = self.handle.socket.clone();
        // quiche identifies a path by (local, peer); the local side is always the bound address, the
        // same value `connect` and `accept` were given, even for a wildcard bind.
        let to = socket.local_addr();
        loop {
            let received = {
                let mut slots = storage.iter_mut();
                let mut bufs: [IoSliceMut<'_>; RECV_SLOTS] =
                    std::array::from_fn(|_| IoSliceMut::new(slots.next().map_or(&mut [][..], Vec::as_mut_slice)));
                tokio::select! {
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
                    forwarded = self.forwarded.recv() => {
                        if let Some(mut inbound) = forwarded {
                            let (from, len) = (inbound.from, inbound.len());
                            self.on_datagram(&mut inbound.buffer[..len], from, to, Origin::Sibling);
                            self.shared.small_buffers.give_back(inbound.buffer);
                        }
                        continue;
                    }
                    received = socket.recv(&mut bufs, &mut meta) => received,
                }
            };
            let count = match received {
                Ok(count) => count,
                Err(err) => {
                    // ICMP-triggered errors and the like are per-datagram; the socket is still good.
                    tracing::debug!(error = %err, "UDP receive error");
                    continue;
                }
            };
            for (slot, meta) in storage.iter_mut().zip(&meta).take(count) {
                let stride = meta.stride.clamp(1, meta.len.max(1));
                if meta.len >= MOVE_RUN_BYTES && self.deliver_run(slot, meta.len, stride, meta.addr) {
                    continue;
                }
                for datagram in slot[..meta.len].chunks_mut(stride) {
                    self.on_datagram(datagram, meta.addr, to, Origin::Socket);
                }
            }
        }
        tracing::debug!(routes = self.routes.len(), "router stopped");
    }

    fn apply(&mut self, command: RouterCommand) {
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

    fn map(&mut self, cid: &[u8], route: Route) {
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

    /// Hands a whole GRO run to its connection without copying, if every datagram in it is for the same
    /// known connection. Returns false (nothing done) otherwise.
    fn deliver_run(&mut self, slot: &mut Vec<u8>, len: usize, stride: usize, from: SocketAddr) -> bool {
        fn dcid(datagram: &[u8]) -> Option<&[u8]> {
            match cid::classify(datagram) {
                Some(PacketKind::Short { dcid }) => Some(dcid),
                _ => None,
            }
        }
        let mut datagrams = slot[..len].chunks(stride);
        let Some(first) = datagrams.next().and_then(dcid) else { return false };
        if !datagrams.all(|datagram| dcid(datagram) == Some(first)) {
            return false;
        }
        let Some(route) = self.routes.get(first).cloned() else { return false };
        let count = len.div_ceil(stride);
        let shared = self.shared.clone();
        let counters = &shared.counters;
        counters.datagrams_received.fetch_add(count as u64, Ordering::Relaxed);
        counters.bytes_received.fetch_add(len as u64, Ordering::Relaxed);
        if !route.queue.reserve(count) {
            route.queue.drops.fetch_add(count as u64, Ordering::Relaxed);
            counters.drop_many(DropReason::QueueFull, count as u64);
            return true;
        }
        let buffer = std::mem::replace(slot, self.shared.large_buffers.take());
        match route.inbound.try_send(Inbound::new(buffer, len, stride, from)) {
            Ok(()) => {
                counters.datagrams_delivered.fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(err) => {
                route.queue.release(count);
                let closed = matches!(err, TrySendError::Closed(_));
                let (TrySendError::Full(inbound) | TrySendError::Closed(inbound)) = err;
                // Keep the slot's buffer (it is already the right size) and return the fresh one.
                self.shared.large_buffers.give_back(std::mem::replace(slot, inbound.buffer));
                if closed {
                    self.forget_dead_route(&route.inbound);
                    counters.drop_many(DropReason::ConnectionGone, count as u64);
                } else {
                    route.queue.drops.fetch_add(count as u64, Ordering::Relaxed);
                    counters.drop_many(DropReason::QueueFull, count as u64);
                }
            }
        }
        true
    }

    fn on_datagram(&mut self, data: &mut [u8], from: SocketAddr, to: SocketAddr, origin: Origin) {
        let counters = &self.shared.counters;
        if origin == Origin::Socket {
            counters.datagrams_received.fetch_add(1, Ordering::Relaxed);
            counters.bytes_received.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let Some(kind) = cid::classify(data) else {
            counters.drop(DropReason::Unparseable);
            return;
        };
        let (dcid, long) = match kind {
            PacketKind::Short { dcid } => (dcid, None),
            PacketKind::Long { version, dcid, is_initial } => (dcid, Some((version, is_initial))),
        };
        if let Some(route) = self.routes.get(dcid) {
            let route = route.clone();
            self.deliver(&route, data, from);
            return;
        }
        if origin == Origin::Socket && self.forward_to_owner(data, dcid, from) {
            return;
        }
        match long {
            Some((version, _)) if !quiche::version_is_supported(version) => {
                self.negotiate_version(data, from);
                self.shared.counters.drop(DropReason::UnsupportedVersion);
            }
            Some((_, true)) => self.accept(data, from, to),
            Some(_) => counters.drop(DropReason::UnknownConnection),
            None => {
                // A stateless reset looks like a short-header packet with a random connection ID; only
                // its last 16 bytes say which connection it ends (RFC 9000 §10.3.1).
                if let Some(route) = self.reset_token_route(data) {
                    self.deliver(&route, data, from);
                    return;
                }
                counters.drop(DropReason::UnknownConnection);
                let dcid = dcid.to_vec();
                self.send_stateless_reset(data, &dcid, from);
            }
        }
    }

    /// Copies one datagram into a pooled buffer and queues it for `route`'s connection, or drops it and
    /// counts why.
    fn deliver(&mut self, route: &Route, data: &[u8], from: SocketAddr) {
        let counters = &self.shared.counters;
        if !route.queue.reserve(1) {
            route.queue.drops.fetch_add(1, Ordering::Relaxed);
            counters.drop(DropReason::QueueFull);
            return;
        }
        let mut buffer = self.shared.small_buffers.take();
        let Some(copy) = buffer.get_mut(..data.len()) else {
            // Larger than any datagram we accept (jumbo loopback MTU): not a packet for us.
            route.queue.release(1);
            self.shared.small_buffers.give_back(buffer);
            counters.drop(DropReason::Unparseable);
            return;
        };
        copy.copy_from_slice(data);
        match route.inbound.try_send(Inbound::new(buffer, data.len(), data.len(), from)) {
            Ok(()) => {
                counters.datagrams_delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(inbound)) => {
                route.queue.release(1);
                route.queue.drops.fetch_add(1, Ordering::Relaxed);
                self.shared.small_buffers.give_back(inbound.buffer);
                counters.drop(DropReason::QueueFull);
            }
            Err(TrySendError::Closed(inbound)) => {
                route.queue.release(1);
                self.shared.small_buffers.give_back(inbound.buffer);
                self.forget_dead_route(&route.inbound);
                self.shared.counters.drop(DropReason::ConnectionGone);
            }
        }
    }

    /// The connection whose peer's stateless-reset token ends `data`, if `data` could be a reset.
    fn reset_token_route(&self, data: &[u8]) -> Option<Route> {
        if data.len() < MIN_STATELESS_RESET_BYTES || self.reset_routes.is_empty() {
            return None;
        }
        let token = u128::from_be_bytes(data[data.len() - 16..].try_into().ok()?);
        self.reset_routes.get(&token).cloned()
    }

    /// The task behind `dead` ended without unregistering (it panicked, or its last command was lost):
    /// heal the table, dropping every CID of that connection, not just the one a packet named.
    fn forget_dead_route(&mut self, dead: &mpsc::Sender<Inbound>) {
        let before = self.routes.len();
        self.routes.retain(|route| !route.inbound.same_channel(dead));
        self.publish_route_count(before);
        self.reset_routes.retain(|_, route| !route.inbound.same_channel(dead));
    }

    /// Sends a datagram whose connection ID names another router of this endpoint to that router (a
    /// client whose address changed lands on another socket of a `SO_REUSEPORT` group). Returns false
    /// if the ID names no other router.
    fn forward_to_owner(&self, data: &[u8], dcid: &[u8], from: SocketAddr) -> bool {
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

    /// Starts a server connection from a client's first Initial, after admission: address validation
    /// (Retry), then the endpoint's limits.
    ///
    /// Everything before `quiche::accept` is cheap and stateless: a spoofed flood costs a header parse,
    /// an HMAC and at most one small Retry packet per datagram. The first packet is then processed
    /// here, before any task exists: an Initial that does not decrypt costs one failed AEAD open and no
    /// allocation beyond the discarded connection state.
    fn accept(&mut self, data: &mut [u8], from: SocketAddr, to: SocketAddr) {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let Some(server) = self.server.as_mut() else {
            counters.drop(DropReason::NotAServer);
            return;
        };
        if data.len() < MIN_INITIAL_DATAGRAM_BYTES {
            counters.drop(DropReason::InitialTooShort);
            return;
        }
        let Ok(header) = quiche::Header::from_slice(data, crate::cid::LOCAL_CID_LEN) else {
            counters.drop(DropReason::Unparseable);
            return;
        };
        if header.dcid.len() < MIN_INITIAL_DCID_LEN {
            counters.drop(DropReason::InvalidInitialCid);
            return;
        }
        let config = server.config.clone();
        // A token in an Initial is one of our Retry tokens or worthless (we never send NEW_TOKEN).
        let validated = match header.token.as_deref().filter(|token| !token.is_empty()) {
            None => None,
            Some(token) => match server.retry_tokens.validate(token, from, &header.dcid, SystemTime::now()) {
                Ok(validated) => Some(validated),
                Err(err) => {
                    tracing::debug!(%from, ?err, "Initial with an invalid Retry token");
                    counters.drop(DropReason::InvalidToken);
                    return;
                }
            },
        };
        let in_flight = counters.handshakes_in_flight.load(Ordering::Relaxed) as usize;
        let rate_ok = shared.source_rates.as_ref().is_none_or(|rates| rates.allow(from.ip(), Instant::now()));
        let can_retry = config.address_validation != AddressValidation::Never;
        if validated.is_none() && can_retry {
            let loaded = match config.address_validation {
                AddressValidation::Always => true,
                AddressValidation::Never => false,
                AddressValidation::UnderLoad { handshakes_in_flight } => in_flight >= handshakes_in_flight,
            };
            // Past a hard limit a client must prove its address before we spend anything on refusing it.
            let over_limit = !rate_ok
                || in_flight >= config.max_handshakes_in_flight
                || counters.active_connections.load(Ordering::Relaxed) >= config.max_connections as u64;
            if loaded || over_limit {
                self.send_retry(&header, from);
                return;
            }
        }
        let refusal = if shared.is_draining() {
            Some(DropReason::ShuttingDown)
        } else if !rate_ok {
            Some(DropReason::SourceRateLimit)
        } else if counters.active_connections.load(Ordering::Relaxed) >= config.max_connections as u64 {
            Some(DropReason::ConnectionLimit)
        } else if in_flight >= config.max_handshakes_in_flight {
            Some(DropReason::HandshakeLimit)
        } else if shared.source_connections.as_ref().is_some_and(|sources| !sources.try_add(from.ip())) {
            Some(DropReason::SourceConnectionLimit)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.refuse(data, from, to, reason);
            return;
        }
        let counted_source = shared.source_connections.as_ref().map(|_| from.ip());
        let forget_source = || {
            if let (Some(sources), Some(source)) = (&shared.source_connections, counted_source) {
                sources.remove(source);
            }
        };
        // After a Retry the client addresses us by the ID our Retry gave it; keep it as our ID.
        let (scid, client_dcid, odcid) = match validated {
            Some(validated) => (header.dcid.clone().into_owned(), None, Some(validated.original_dcid)),
            None => (self.handle.cids.generate(), Some(header.dcid.to_vec()), None),
        };
        let Some(server) = self.server.as_mut() else { return };
        let reset_token = server.config.stateless_reset.then(|| self.handle.cids.reset_token(&scid));
        server.quiche_config.set_stateless_reset_token(reset_token);
        let odcid_ref = odcid.as_ref().map(|odcid| quiche::ConnectionId::from_ref(odcid));
        let mut conn = match quiche::accept(&scid, odcid_ref.as_ref(), to, from, &mut server.quiche_config) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(error = %err, %from, "quiche refused an Initial");
                forget_source();
                counters.drop(DropReason::AcceptFailed);
                return;
            }
        };
        if let Some(keylog) = &server.config.keylog {
            conn.set_keylog(keylog.writer());
        }
        let qlog = server.config.transport.qlog_dir.as_ref().map(|dir| crate::qlog::attach(&mut conn, dir));
        let processed = conn.recv(data, quiche::RecvInfo { from, to });
        if processed.is_err() || conn.stats().recv == 0 {
            forget_source();
            counters.drop(DropReason::InvalidInitial);
            return;
        }
        counters.datagrams_delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(qlog) = qlog {
            qlog.open();
        }

        let accept_queue = server.accept_queue.clone();
        let (route, inbound_rx) = Route::new(server.config.transport.connection_queue_datagrams);
        self.map(&scid, route.clone());
        if let Some(client_dcid) = &client_dcid {
            self.map(client_dcid, route.clone());
        }
        let core = ConnectionCore::new(CoreParts {
            conn: Box::new(conn),
            inbound: inbound_rx,
            route: &route,
            router: self.handle.clone(),
            shared: self.shared.clone(),
            odcid: client_dcid,
            handshake_timeout: None,
            source: counted_source,
            session_store: None,
        });
        let span = tracing::info_span!("conn", scid = %core.trace_id(), peer = %from, alpn = tracing::field::Empty);
        tokio::spawn(connection::run_server(core, accept_queue).instrument(span));
    }

    /// Answers an Initial with a Retry carrying a token that binds the client's address and connection
    /// IDs. Stateless: nothing is kept until the client comes back with the token.
    fn send_retry(&mut self, header: &quiche::Header<'_>, from: SocketAddr) {
        let counters = &self.shared.counters;
        let Some(server) = self.server.as_ref() else { return };
        let retry_scid = self.handle.cids.generate();
        let token = server.retry_tokens.mint(from, &header.dcid, &retry_scid, SystemTime::now());
        let mut out = [0u8; MAX_RETRY_BYTES];
        match quiche::retry(&header.scid, &header.dcid, &retry_scid, &token, header.version, &mut out) {
            Ok(len) => {
                let transmit =
                    Transmit { destination: from, ecn: None, contents: &out[..len], segment_size: None, src_ip: None };
                if self.handle.socket.try_send(&transmit).is_ok() {
                    counters.retries_sent.fetch_add(1, Ordering::Relaxed);
                    counters.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                    counters.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot build a Retry"),
        }
        counters.drop(DropReason::RetryRequired);
    }

    /// Closes a would-be connection at once with CONNECTION_REFUSED. The client has proven its address
    /// (or address validation is off), so the answer goes where it asked; a global budget bounds how
    /// much work refusing may cost.
    fn refuse(&mut self, data: &mut [u8], from: SocketAddr, to: SocketAddr, reason: DropReason) {
        let counters = &self.shared.counters;
        counters.drop(reason);
        let Some(server) = self.server.as_mut() else { return };
        if !self.refusals.allow(Instant::now()) {
            return;
        }
        let scid = self.handle.cids.generate();
        server.quiche_config.set_stateless_reset_token(None);
        let Ok(mut conn) = quiche::accept(&scid, None, to, from, &mut server.quiche_config) else { return };
        // quiche derives the Initial keys from the client's first packet, so it must read it; the
        // connection is closed before it could do anything else.
        if conn.recv(data, quiche::RecvInfo { from, to }).is_err() {
            return;
        }
        let _ = conn.close(false, CONNECTION_REFUSED, b"server busy");
        let mut out = [0u8; crate::config::MAX_RECV_UDP_PAYLOAD_BYTES];
        while let Ok((len, info)) = conn.send(&mut out) {
            let transmit =
                Transmit { destination: info.to, ecn: None, contents: &out[..len], segment_size: None, src_ip: None };
            if self.handle.socket.try_send(&transmit).is_err() {
                break;
            }
            counters.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            counters.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
        }
        counters.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers a short-header packet for a connection we do not know with a stateless reset (RFC 9000
    /// §10.3), so that a client of a restarted server learns at once that its connection is gone. The
    /// reset is always shorter than the packet that triggered it (no amplification, and two endpoints
    /// can never bounce resets forever), and the endpoint sends at most [`STATELESS_RESET_RATE`].
    fn send_stateless_reset(&mut self, data: &[u8], dcid: &[u8], from: SocketAddr) {
        let Some(server) = self.server.as_ref() else { return };
        if !server.config.stateless_reset || data.len() <= MIN_STATELESS_RESET_BYTES {
            return;
        }
        if !self.resets.allow(Instant::now()) {
            return;
        }
        let len = (data.len() - 1).min(MAX_STATELESS_RESET_BYTES);
        let mut reset = [0u8; MAX_STATELESS_RESET_BYTES];
        let reset = &mut reset[..len];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut reset[..len - 16]);
        // A short header: fixed bit set, long-header bit clear, the rest unpredictable.
        reset[0] = (reset[0] & 0x3f) | 0x40;
        reset[len - 16..].copy_from_slice(&self.handle.cids.reset_token(dcid).to_be_bytes());
        let transmit = Transmit { destination: from, ecn: None, contents: reset, segment_size: None, src_ip: None };
        if self.handle.socket.try_send(&transmit).is_ok() {
            let counters = &self.shared.counters;
            counters.stateless_resets_sent.fetch_add(1, Ordering::Relaxed);
            counters.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            counters.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
        }
    }
}
