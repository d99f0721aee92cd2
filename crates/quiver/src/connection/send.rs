//! Sending: what quiche produced leaves in GSO batches of equal-size datagrams, at most
//! [`MAX_SENDS_PER_FLUSH`] send calls per flush, and a packet the pacer holds waits for its release
//! time.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quinn_udp::Transmit;

use super::ConnectionCore;
use crate::batch::{self, HeldPacket, ProducedPacket};
use crate::socket::{QuicSocket, SEND_BATCH_BYTES};

/// Send calls one flush makes before the task lets others run (16 GSO batches, about 1 MB): long
/// enough to amortise a wake-up, short enough that the router reads the peer's ACKs before the socket's
/// receive buffer could fill while this connection sends.
const MAX_SENDS_PER_FLUSH: usize = 16;
/// Packets whose release time is at most this far ahead go now: Tokio's timers tick in milliseconds,
/// so holding a packet for less would cost a wake-up without pacing it any better.
const PACING_GRANULARITY: Duration = Duration::from_millis(1);

/// What a flush left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flushed {
    /// quiche has nothing more to send now.
    Done,
    /// More is ready, but this flush sent its share.
    MoreReady,
    /// The pacer holds the next packet until its release time.
    Paced,
    /// quiche's `send` failed with an error other than `Done`: it cannot produce this connection's
    /// packets (see [`ConnectionCore::on_send_failure`](super::ConnectionCore)).
    Failed(quiche::Error),
}

/// A packet quiche released for later, kept until the pacer's time for it.
pub(super) struct PacedPacket {
    pub(super) bytes: Vec<u8>,
    pub(super) from: SocketAddr,
    pub(super) to: SocketAddr,
    pub(super) at: std::time::Instant,
}

impl ConnectionCore {
    /// Sends what quiche has to send, in GSO batches of equal-size datagrams to one destination, until
    /// quiche has nothing more, the pacer holds the next packet back, or this flush has made
    /// [`MAX_SENDS_PER_FLUSH`] send calls.
    pub(super) async fn flush(&mut self) -> Flushed {
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
        let mut failure = None;
        for _ in 0..MAX_SENDS_PER_FLUSH {
            let conn = &mut self.conn;
            #[cfg(test)]
            let injected = &mut self.injected_send_failures;
            let batch = batch::fill_batch(&mut buffer[..SEND_BATCH_BYTES], mtu, max_segments, horizon, |out| {
                #[cfg(test)]
                if let Some((err, left)) = injected.as_mut().filter(|(_, left)| *left > 0) {
                    *left -= 1;
                    failure = Some(*err);
                    return None;
                }
                match conn.send(out) {
                    Ok((len, info)) => Some(ProducedPacket { len, from: info.from, to: info.to, at: info.at }),
                    Err(quiche::Error::Done) => None,
                    Err(err) => {
                        tracing::debug!(error = %err, "quiche send failed");
                        failure = Some(err);
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
        failure.map_or(outcome, Flushed::Failed)
    }

    /// The socket a path's packets leave from: the current one, or, while quiche still uses a path of
    /// a socket this connection migrated away from, that socket.
    fn socket_for(&self, from: SocketAddr) -> &QuicSocket {
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
}
