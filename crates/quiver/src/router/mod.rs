//! The router: one task per socket, the only reader of that socket.
//!
//! For each datagram it reads the destination connection ID and either hands the datagram to the
//! connection's bounded queue (never waiting for a slow connection), forwards it to the sibling router
//! whose index the ID carries (`forward.rs`), or, for an ID it does not know, asks admission
//! (`admission.rs`, a pure function) whether to start a connection (`accept.rs`), answer statelessly
//! (`stateless.rs`: Version Negotiation, Retry, refusal, stateless reset) or drop and count why.
//! Datagrams are copied into pooled buffers; a dense GRO run for one connection is handed over in its
//! receive buffer as one message. It owns the CID table (`table.rs`).
//!
//! Imports the connection (to spawn server connections) and the leaf modules; nothing but the
//! endpoint imports the router.

mod accept;
pub(crate) mod admission;
mod forward;
mod stateless;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use quinn_udp::RecvMeta;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

pub(crate) use self::accept::ServerRole;
use self::admission::{Admission, Load, Unknown};
pub(crate) use self::forward::{FORWARD_QUEUE, Siblings};
use crate::buffer::LARGE_BUFFER_BYTES;
use crate::cid::{self, CidTable, PacketKind};
use crate::config::STATELESS_RESET_RATE;
use crate::limits::{RateLimit, RateLimiter};
use crate::route::{Inbound, Route, RouterCommand, RouterHandle};
use crate::shared::EndpointShared;
use crate::stats::DropReason;

/// A GRO run at least this large, all for one connection, is handed over in its receive buffer as is;
/// smaller runs are copied into small buffers. Moving only dense runs keeps a queued datagram's memory
/// within a few KiB whatever the mix, while large bursts (uploads) skip the copy.
const MOVE_RUN_BYTES: usize = LARGE_BUFFER_BYTES / 2;

/// Receive slots per system call: as many as `quinn-udp` batches.
const RECV_SLOTS: usize = quinn_udp::BATCH_SIZE;

/// Refusals cost a ClientHello's processing each; past this budget the Initial is just dropped.
const REFUSAL_RATE: RateLimit = RateLimit { per_second: 200.0, burst: 50.0 };

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
        let unknown = match long {
            Some((version, _)) if !quiche::version_is_supported(version) => Unknown::UnsupportedVersion,
            Some((_, true)) => return self.on_initial(data, from, to),
            Some(_) => Unknown::OtherLong,
            None => {
                // A stateless reset looks like a short-header packet with a random connection ID; only
                // its last 16 bytes say which connection it ends (RFC 9000 §10.3.1).
                if let Some(route) = self.reset_token_route(data) {
                    self.deliver(&route, data, from);
                    return;
                }
                Unknown::Short
            }
        };
        let policy = self.server.as_ref().map(|server| server.policy);
        // Initials went to `on_initial`: the load is never needed here.
        let no_load = || Load {
            draining: false,
            handshakes_in_flight: 0,
            active_connections: 0,
            source_rate_ok: true,
            source_handshakes_full: false,
        };
        match admission::admit(unknown, data.len(), policy.as_ref(), no_load) {
            Admission::VersionNegotiation => {
                self.negotiate_version(data, from);
                counters.drop(DropReason::UnsupportedVersion);
            }
            Admission::StatelessReset => {
                counters.drop(DropReason::UnknownConnection);
                self.send_stateless_reset(data, dcid, from);
            }
            Admission::Drop(reason) | Admission::Refuse(reason) => counters.drop(reason),
            Admission::Accept | Admission::Retry => {}
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
}
