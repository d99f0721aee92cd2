//! What the relay saw: every datagram on both legs, in the order the relay handled them.
//!
//! The client-side leg holds what the client sent (before any impairment) and what the client was given;
//! the server-side leg holds what the server was given and what it sent. Checks read this record rather
//! than anything an endpoint reports about itself.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Payload bytes the record keeps; beyond it datagrams are counted but not stored (the largest case moves
/// about 10 MB, seen twice per direction, so this leaves ample room).
pub const MAX_RECORDED_BYTES: usize = 512 * 1024 * 1024;

/// Which way a datagram travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the server.
    ToServer,
    /// From the server to the client.
    ToClient,
}

impl Direction {
    /// Short label used in reports.
    pub fn label(self) -> &'static str {
        match self {
            Direction::ToServer => "to_server",
            Direction::ToClient => "to_client",
        }
    }
}

/// Which side of the relay a datagram was seen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    /// Between the client and the relay's client-facing socket.
    ClientSide,
    /// Between a client's server-side binding socket and the server.
    ServerSide,
}

/// One datagram as seen on one leg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// The leg it was seen on.
    pub leg: Leg,
    /// Which way it went.
    pub direction: Direction,
    /// Time since the relay started.
    pub at: Duration,
    /// Sender address on this leg.
    pub src: SocketAddr,
    /// Receiver address on this leg.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// All datagrams of one relay run.
#[derive(Clone, Debug)]
pub struct Record {
    /// Wall-clock time of the relay start (pcap timestamps).
    pub started: SystemTime,
    /// Datagrams in handling order.
    pub datagrams: Vec<Datagram>,
    /// Datagrams not stored because [`MAX_RECORDED_BYTES`] was reached.
    pub not_recorded: u64,
    recorded_bytes: usize,
}

impl Record {
    /// An empty record of a relay started at `started`.
    pub fn new(started: SystemTime) -> Self {
        Record { started, datagrams: Vec::new(), not_recorded: 0, recorded_bytes: 0 }
    }

    /// Appends a datagram unless the byte budget is spent.
    pub fn push(&mut self, datagram: Datagram) {
        if self.recorded_bytes + datagram.payload.len() > MAX_RECORDED_BYTES {
            self.not_recorded += 1;
            return;
        }
        self.recorded_bytes += datagram.payload.len();
        self.datagrams.push(datagram);
    }

    /// The datagrams of one leg, in order.
    pub fn leg(&self, leg: Leg) -> impl Iterator<Item = &Datagram> {
        self.datagrams.iter().filter(move |d| d.leg == leg)
    }
}
