//! Endpoint-wide counters. Every datagram a router reads ends in exactly one outcome: delivered to a
//! connection, or dropped for one [`DropReason`]. Counters are relaxed atomics: cheap on the hot path,
//! exact once the traffic stops.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a router did not deliver a datagram to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The bytes are not a QUIC packet header we can parse.
    Unparseable,
    /// Long header with a version we do not speak: answered with Version Negotiation.
    UnsupportedVersion,
    /// An Initial in a datagram shorter than the 1200 bytes RFC 9000 §14.1 requires.
    InitialTooShort,
    /// An Initial whose destination connection ID is shorter than 8 bytes (RFC 9000 §7.2).
    InvalidInitialCid,
    /// A packet for no known connection that cannot start one (short header or non-Initial long header).
    UnknownConnection,
    /// An Initial arrived on an endpoint that has no server configuration.
    NotAServer,
    /// The endpoint already holds its maximum number of connections: refused (CONNECTION_REFUSED).
    ConnectionLimit,
    /// quiche refused to create a connection from the Initial.
    AcceptFailed,
    /// The connection's inbound queue was full: its task is not keeping up.
    QueueFull,
    /// The connection's task had already ended.
    ConnectionGone,
    /// The first packet of a new connection did not decrypt or parse: the connection was discarded.
    InvalidInitial,
    /// The packet belonged to another socket's router, whose forwarding queue was full.
    ForwardQueueFull,
    /// An Initial without a token while address validation was required: answered with a Retry.
    RetryRequired,
    /// An Initial whose Retry token was forged, altered, expired, or presented from another address:
    /// closed with INVALID_TOKEN (counted in `connections_refused`). A token that is not of our Retry
    /// tokens' layout is handled as no token and never counted here.
    InvalidToken,
    /// Too many handshakes in flight: refused (CONNECTION_REFUSED).
    HandshakeLimit,
    /// The client's address already holds its maximum number of connections: refused.
    SourceConnectionLimit,
    /// The client's address started handshakes faster than its rate allows: refused.
    SourceRateLimit,
    /// The endpoint is shutting down gracefully: refused.
    ShuttingDown,
    /// The client's address already has its maximum of handshakes in flight: refused.
    SourceHandshakeLimit,
}

impl DropReason {
    /// Every reason, in a stable order (for exporting).
    pub const ALL: [DropReason; 19] = [
        DropReason::Unparseable,
        DropReason::UnsupportedVersion,
        DropReason::InitialTooShort,
        DropReason::InvalidInitialCid,
        DropReason::UnknownConnection,
        DropReason::NotAServer,
        DropReason::ConnectionLimit,
        DropReason::AcceptFailed,
        DropReason::QueueFull,
        DropReason::ConnectionGone,
        DropReason::InvalidInitial,
        DropReason::ForwardQueueFull,
        DropReason::RetryRequired,
        DropReason::InvalidToken,
        DropReason::HandshakeLimit,
        DropReason::SourceConnectionLimit,
        DropReason::SourceRateLimit,
        DropReason::ShuttingDown,
        DropReason::SourceHandshakeLimit,
    ];

    /// A snake_case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Unparseable => "unparseable",
            DropReason::UnsupportedVersion => "unsupported_version",
            DropReason::InitialTooShort => "initial_too_short",
            DropReason::InvalidInitialCid => "invalid_initial_cid",
            DropReason::UnknownConnection => "unknown_connection",
            DropReason::NotAServer => "not_a_server",
            DropReason::ConnectionLimit => "connection_limit",
            DropReason::AcceptFailed => "accept_failed",
            DropReason::QueueFull => "queue_full",
            DropReason::ConnectionGone => "connection_gone",
            DropReason::InvalidInitial => "invalid_initial",
            DropReason::ForwardQueueFull => "forward_queue_full",
            DropReason::RetryRequired => "retry_required",
            DropReason::InvalidToken => "invalid_token",
            DropReason::HandshakeLimit => "handshake_limit",
            DropReason::SourceConnectionLimit => "source_connection_limit",
            DropReason::SourceRateLimit => "source_rate_limit",
            DropReason::ShuttingDown => "shutting_down",
            DropReason::SourceHandshakeLimit => "source_handshake_limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Live counters shared by an endpoint's routers and connections.
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    pub(crate) datagrams_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) datagrams_delivered: AtomicU64,
    pub(crate) datagrams_forwarded: AtomicU64,
    pub(crate) datagrams_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_refused_backlog: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
    pub(crate) active_connections: AtomicU64,
    pub(crate) handshakes_in_flight: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) connections_send_failed: AtomicU64,
    pub(crate) routed_connection_ids: AtomicU64,
    pub(crate) retries_sent: AtomicU64,
    pub(crate) stateless_resets_sent: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl EndpointCounters {
    pub(crate) fn drop(&self, reason: DropReason) {
        self.drop_many(reason, 1);
    }

    pub(crate) fn drop_many(&self, reason: DropReason, datagrams: u64) {
        self.dropped[reason.index()].fetch_add(datagrams, Ordering::Relaxed);
        tracing::trace!(reason = reason.as_str(), datagrams, "datagrams dropped");
    }

    pub(crate) fn snapshot(&self) -> EndpointStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut dropped = [0; DropReason::ALL.len()];
        for (slot, counter) in dropped.iter_mut().zip(&self.dropped) {
            *slot = load(counter);
        }
        EndpointStats {
            datagrams_received: load(&self.datagrams_received),
            bytes_received: load(&self.bytes_received),
            datagrams_delivered: load(&self.datagrams_delivered),
            datagrams_forwarded: load(&self.datagrams_forwarded),
            datagrams_sent: load(&self.datagrams_sent),
            bytes_sent: load(&self.bytes_sent),
            send_errors: load(&self.send_errors),
            connections_accepted: load(&self.connections_accepted),
            connections_refused_backlog: load(&self.connections_refused_backlog),
            connections_opened: load(&self.connections_opened),
            connections_closed: load(&self.connections_closed),
            active_connections: load(&self.active_connections),
            handshakes_in_flight: load(&self.handshakes_in_flight),
            handshake_timeouts: load(&self.handshake_timeouts),
            connections_send_failed: load(&self.connections_send_failed),
            routed_connection_ids: load(&self.routed_connection_ids),
            retries_sent: load(&self.retries_sent),
            stateless_resets_sent: load(&self.stateless_resets_sent),
            connections_refused: load(&self.connections_refused),
            dropped,
        }
    }
}

/// A point-in-time copy of an endpoint's counters, from [`Endpoint::stats`](crate::Endpoint::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    /// UDP datagrams read from the sockets (a GRO batch counts once per datagram in it).
    pub datagrams_received: u64,
    /// Bytes in those datagrams.
    pub bytes_received: u64,
    /// Datagrams handed to a connection.
    pub datagrams_delivered: u64,
    /// Datagrams that arrived on one socket of a `SO_REUSEPORT` group and were passed to the router of
    /// the socket that owns their connection (which then delivered or dropped them). Not an outcome:
    /// every received datagram is still either delivered or dropped.
    pub datagrams_forwarded: u64,
    /// UDP datagrams written (a GSO batch counts once per segment).
    pub datagrams_sent: u64,
    /// Bytes in those datagrams.
    pub bytes_sent: u64,
    /// Send calls the kernel refused (the packets are lost; QUIC recovery resends their data).
    pub send_errors: u64,
    /// Server connections that completed the handshake and entered the accept queue.
    pub connections_accepted: u64,
    /// Server connections refused because the accept queue was full.
    pub connections_refused_backlog: u64,
    /// Client connections started with [`Endpoint::connect`](crate::Endpoint::connect).
    pub connections_opened: u64,
    /// Connections (either role) whose task has ended.
    pub connections_closed: u64,
    /// Connections (either role) whose task is running.
    pub active_connections: u64,
    /// Server connections whose handshake is still running.
    pub handshakes_in_flight: u64,
    /// Handshakes (either role) abandoned at their deadline: a server's
    /// [`handshake_timeout`](crate::ServerConfigBuilder::handshake_timeout) (a slow or stalling client),
    /// a client's own.
    pub handshake_timeouts: u64,
    /// Connections closed at once because quiche could not build their packets (its `send` failed
    /// with an error other than `Done`): closed with INTERNAL_ERROR, or dropped if even that could
    /// not be sent, instead of being held until their idle timeout.
    pub connections_send_failed: u64,
    /// Connection IDs the routers currently map to connections (several per connection).
    pub routed_connection_ids: u64,
    /// Retry packets sent (address validation).
    pub retries_sent: u64,
    /// Stateless resets sent for packets of unknown connections.
    pub stateless_resets_sent: u64,
    /// New connections closed at once: with CONNECTION_REFUSED (limits), or with INVALID_TOKEN (a bad
    /// Retry token).
    pub connections_refused: u64,
    dropped: [u64; DropReason::ALL.len()],
}

impl EndpointStats {
    /// Datagrams dropped for this reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Datagrams dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// `(reason, count)` for every reason with a non-zero count.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|reason| (*reason, self.dropped(*reason))).filter(|(_, count)| *count > 0)
    }
}

/// Counters of one connection, from quiche, available while it runs and when it closes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// QUIC packets received.
    pub packets_received: u64,
    /// QUIC packets sent.
    pub packets_sent: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Packets retransmitted.
    pub packets_retransmitted: u64,
    /// Bytes sent (UDP payload).
    pub bytes_sent: u64,
    /// Bytes received (UDP payload).
    pub bytes_received: u64,
    /// Bytes declared lost.
    pub bytes_lost: u64,
    /// Smoothed round-trip time on the active path.
    pub rtt: std::time::Duration,
    /// Congestion window on the active path, in bytes.
    pub cwnd_bytes: u64,
    /// Datagrams the router dropped because this connection's queue was full.
    pub queue_drops: u64,
    /// The active path's local address.
    pub local_addr: Option<std::net::SocketAddr>,
    /// The active path's peer address.
    pub peer_addr: Option<std::net::SocketAddr>,
}

impl ConnectionStats {
    pub(crate) fn from_connection(conn: &quiche::Connection, queue_drops: u64) -> Self {
        let stats = conn.stats();
        // The active path (after a migration, not the first one).
        let path = conn.path_stats().find(|path| path.active).or_else(|| conn.path_stats().next());
        Self {
            packets_received: stats.recv as u64,
            packets_sent: stats.sent as u64,
            packets_lost: stats.lost as u64,
            packets_retransmitted: stats.retrans as u64,
            bytes_sent: stats.sent_bytes,
            bytes_received: stats.recv_bytes,
            bytes_lost: stats.lost_bytes,
            rtt: path.as_ref().map(|path| path.rtt).unwrap_or_default(),
            cwnd_bytes: path.as_ref().map(|path| path.cwnd as u64).unwrap_or_default(),
            queue_drops,
            local_addr: path.as_ref().map(|path| path.local_addr),
            peer_addr: path.as_ref().map(|path| path.peer_addr),
        }
    }
}
