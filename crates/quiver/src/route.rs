//! The contract between a router and the connections it feeds: the datagrams it hands over
//! ([`Inbound`]), the bounded queue they wait in ([`InboundQueue`], [`Route`]), and the commands a
//! connection sends to keep the router's CID table in step ([`RouterCommand`], [`RouterHandle`]).
//!
//! A leaf module: both the router and the connection import it, neither imports the other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::cid::CidGenerator;
use crate::socket::QuicSocket;

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
    pub(crate) fn reserve(&self, datagrams: usize) -> bool {
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
    /// A client connection learned one of its server's stateless-reset tokens (one per connection ID
    /// the server issued).
    RegisterResetToken(u128, Route),
    UnregisterResetToken(u128),
}

/// Commands queued for one router before connection tasks wait for room. Tasks only send a few per
/// connection lifetime (one per CID), so this absorbs a storm of thousands of connections closing at
/// once.
pub(crate) const ROUTER_COMMAND_QUEUE: usize = 4096;

/// What connection tasks and the endpoint need to reach one router and its socket.
#[derive(Debug, Clone)]
pub(crate) struct RouterHandle {
    pub(crate) socket: Arc<QuicSocket>,
    pub(crate) commands: mpsc::Sender<RouterCommand>,
    pub(crate) cids: CidGenerator,
}
