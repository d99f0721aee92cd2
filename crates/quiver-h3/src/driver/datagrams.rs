//! HTTP datagrams in the driver: QUIC DATAGRAM frames in, routed to their stream's flow by quarter
//! stream ID (one above 2^60 - 1 closes the connection with H3_DATAGRAM_ERROR, RFC 9297 §2.1);
//! flows' datagrams out, held until the peer's SETTINGS say whether it takes them (RFC 9297 §2.1.1).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use quiver::QuicConnection;
use quiver::quiche::h3;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::H3Driver;
use super::streams::with_scratch;
use crate::command::WakeSender;
use crate::datagram::{DatagramFlow, DatagramShared, PEER_SETTINGS_DISABLED, PEER_SETTINGS_ENABLED, get_varint};
use crate::error::H3_DATAGRAM_ERROR;

/// The largest quarter stream ID (RFC 9297 §2.1): a client-initiated bidirectional stream ID is below
/// 2^62, so its quarter is below 2^60.
const MAX_QUARTER_STREAM_ID: u64 = (1 << 60) - 1;

impl H3Driver {
    /// Routes received QUIC datagrams to their streams' flows; drops (and counts) the rest. A quarter
    /// stream ID no stream can have is a connection error (RFC 9297 §2.1).
    pub(super) fn recv_datagrams(&mut self, conn: &mut QuicConnection) {
        with_scratch(|scratch| {
            while let Ok(len) = conn.dgram_recv(scratch) {
                let quarter = get_varint(&scratch[..len]);
                if let Some((quarter, _)) = quarter
                    && quarter > MAX_QUARTER_STREAM_ID
                {
                    tracing::debug!(quarter, "HTTP datagram with an impossible quarter stream ID");
                    let _ = conn.close(true, H3_DATAGRAM_ERROR, b"quarter stream ID above 2^60-1");
                    return;
                }
                let routed = quarter.and_then(|(quarter, prefix)| {
                    let tx = self.streams.get(&(quarter * 4))?.datagram_tx.as_ref()?;
                    tx.try_send(Bytes::copy_from_slice(&scratch[prefix..len])).ok()
                });
                if routed.is_none() {
                    self.datagrams.recv_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    /// A datagram from a flow: sent now, or held until the peer's SETTINGS arrive.
    pub(super) fn queue_datagram(
        &mut self,
        h3: &h3::Connection,
        conn: &mut QuicConnection,
        frame: Bytes,
        permit: OwnedSemaphorePermit,
    ) {
        if h3.peer_settings_raw().is_none() {
            // RFC 9297 §2.1.1: wait for the peer's SETTINGS. The permit keeps counting against the
            // connection's datagram queue, which bounds what waits here.
            self.datagrams_awaiting_settings.push_back((frame, permit));
        } else {
            self.send_datagram(h3, conn, &frame);
        }
    }

    /// Sends an HTTP datagram if the peer's SETTINGS enabled them; drops and counts it otherwise.
    fn send_datagram(&self, h3: &h3::Connection, conn: &mut QuicConnection, frame: &[u8]) {
        if !h3.dgram_enabled_by_peer(conn) || conn.dgram_send(frame).is_err() {
            self.datagrams.send_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records whether the peer's SETTINGS (once they arrived) enabled HTTP Datagrams, for the flows.
    pub(super) fn note_peer_settings(&self, h3: &h3::Connection, conn: &QuicConnection) {
        if h3.peer_settings_raw().is_none() {
            return;
        }
        let state = if h3.dgram_enabled_by_peer(conn) { PEER_SETTINGS_ENABLED } else { PEER_SETTINGS_DISABLED };
        self.datagrams.peer_settings.store(state, Ordering::Relaxed);
    }

    /// Sends (or drops) the datagrams that waited for the peer's SETTINGS, once they are here.
    pub(super) fn settle_waiting_datagrams(&mut self, h3: &h3::Connection, conn: &mut QuicConnection) {
        if h3.peer_settings_raw().is_none() {
            return;
        }
        while let Some((frame, _permit)) = self.datagrams_awaiting_settings.pop_front() {
            self.send_datagram(h3, conn, &frame);
        }
    }

    /// Tells the flows how large a datagram fits the path now.
    pub(super) fn publish_datagram_room(&self, conn: &QuicConnection) {
        if let Some(max) = conn.dgram_max_writable_len() {
            self.datagrams.max_writable.store(max, Ordering::Relaxed);
        }
    }
}

/// A datagram flow for `stream` if the peer has QUIC datagrams on and its SETTINGS (if they arrived)
/// enabled HTTP Datagrams; a flow made before they arrive sends only once they say yes. A free
/// function so the caller can hold a stream's state mutably while passing the driver's shared parts.
pub(super) fn datagram_flow(
    conn: &QuicConnection,
    stream: u64,
    wake: &WakeSender,
    permits: &Arc<Semaphore>,
    shared: &Arc<DatagramShared>,
) -> Option<(DatagramFlow, mpsc::Sender<Bytes>)> {
    conn.dgram_max_writable_len()?;
    if shared.peer_settings.load(Ordering::Relaxed) == PEER_SETTINGS_DISABLED {
        return None;
    }
    Some(DatagramFlow::new(stream, wake.clone(), permits.clone(), shared.clone()))
}
