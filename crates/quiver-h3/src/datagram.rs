//! HTTP Datagrams (RFC 9297) and the Capsule Protocol.
//!
//! A datagram belongs to a request stream: on the wire it is a QUIC DATAGRAM frame whose payload starts
//! with the stream's quarter ID (stream ID / 4) as a variable-length integer. Datagrams are unreliable:
//! when a queue is full or a payload does not fit the path, it is dropped and counted, never truncated.
//! A received quarter stream ID above 2^60 - 1, which no stream can have, closes the connection with
//! [`H3_DATAGRAM_ERROR`](crate::H3_DATAGRAM_ERROR) (RFC 9297 §2.1).
//!
//! Requests with the CONNECT method (plain or extended, RFC 9220) carry a [`DatagramFlow`] in their
//! extensions on the server side, and their responses carry one on the client side, when the peer has
//! QUIC datagrams on and has not said no to HTTP Datagrams. RFC 9297 §2.1.1 allows sending HTTP
//! Datagrams only to a peer whose SETTINGS carry `SETTINGS_H3_DATAGRAM = 1`. When its SETTINGS are
//! known and say no, no flow is created. A flow created before they arrived (a request that overtook
//! them) holds what it sends until they do, then sends it or drops and counts it; an application with
//! another way to carry a payload checks [`DatagramFlow::peer_enabled`] first (MASQUE sends a
//! DATAGRAM capsule instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{Semaphore, mpsc};

use crate::command::{Wake, WakeSender};

/// Received datagrams buffered per stream before more are dropped.
pub(crate) const DATAGRAM_RECV_QUEUE: usize = 256;
/// Datagrams queued towards the connection task, per connection, before more are refused.
pub(crate) const DATAGRAM_SEND_QUEUE: usize = 1024;

/// Why a datagram was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The payload does not fit in one QUIC DATAGRAM frame on this path.
    #[error("datagram of {size} bytes exceeds the {max} bytes this path carries")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The largest payload that fits now.
        max: usize,
    },
    /// The send queue is full: the connection is not keeping up. The datagram was dropped.
    #[error("datagram send queue full")]
    QueueFull,
    /// The stream or connection is gone.
    #[error("HTTP datagrams are not available on this stream")]
    Unavailable,
    /// The peer's SETTINGS did not enable HTTP Datagrams (`SETTINGS_H3_DATAGRAM = 1`, RFC 9297
    /// §2.1.1): send the payload another way, such as a DATAGRAM capsule.
    #[error("the peer has not enabled HTTP datagrams (SETTINGS_H3_DATAGRAM)")]
    NotNegotiated,
}

/// The peer sent `SETTINGS_H3_DATAGRAM = 1` and has QUIC datagrams on.
pub(crate) const PEER_SETTINGS_ENABLED: u8 = 1;
/// The peer's SETTINGS arrived without `SETTINGS_H3_DATAGRAM = 1`.
pub(crate) const PEER_SETTINGS_DISABLED: u8 = 2;

/// Counters and limits one connection's flows share with its task.
#[derive(Debug, Default)]
pub(crate) struct DatagramShared {
    /// Largest QUIC DATAGRAM frame payload (quarter stream ID included) that fits right now.
    pub(crate) max_writable: AtomicUsize,
    /// Datagrams dropped on receive (queue full, unknown stream).
    pub(crate) recv_dropped: AtomicU64,
    /// Datagrams the QUIC layer refused to send.
    pub(crate) send_dropped: AtomicU64,
    /// What the peer's SETTINGS said about HTTP Datagrams: 0 while they have not arrived, then
    /// `PEER_SETTINGS_ENABLED` or `PEER_SETTINGS_DISABLED` (the driver updates it).
    pub(crate) peer_settings: AtomicU8,
}

impl DatagramShared {
    /// Whether the peer's SETTINGS enabled HTTP Datagrams.
    pub(crate) fn peer_enabled(&self) -> bool {
        self.peer_settings.load(Ordering::Relaxed) == PEER_SETTINGS_ENABLED
    }

    /// Whether the peer's SETTINGS arrived and did not enable HTTP Datagrams.
    pub(crate) fn peer_disabled(&self) -> bool {
        self.peer_settings.load(Ordering::Relaxed) == PEER_SETTINGS_DISABLED
    }
}

/// The datagram side of one request stream.
#[derive(Debug)]
pub struct DatagramFlow {
    stream: u64,
    prefix: Vec<u8>,
    wake: WakeSender,
    permits: Arc<Semaphore>,
    shared: Arc<DatagramShared>,
    incoming: mpsc::Receiver<Bytes>,
}

impl DatagramFlow {
    pub(crate) fn new(
        stream: u64,
        wake: WakeSender,
        permits: Arc<Semaphore>,
        shared: Arc<DatagramShared>,
    ) -> (Self, mpsc::Sender<Bytes>) {
        let (tx, incoming) = mpsc::channel(DATAGRAM_RECV_QUEUE);
        let mut prefix = Vec::with_capacity(8);
        put_varint(&mut prefix, stream / 4);
        (Self { stream, prefix, wake, permits, shared, incoming }, tx)
    }

    /// Takes the flow out of a request's (server) or response's (client) extensions. Only the first
    /// call gets it.
    ///
    /// ```no_run
    /// # fn handler(request: http::Request<quiver_h3::RecvBody>) {
    /// if let Some(mut flow) = quiver_h3::DatagramFlow::take_from(request.extensions()) {
    ///     let _ = flow.send(b"hello");
    /// }
    /// # }
    /// ```
    pub fn take_from(extensions: &http::Extensions) -> Option<Self> {
        let slot = extensions.get::<DatagramSlot>()?;
        slot.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }

    pub(crate) fn into_slot(self) -> DatagramSlot {
        DatagramSlot(Arc::new(std::sync::Mutex::new(Some(self))))
    }

    /// The request stream this flow belongs to.
    pub fn stream_id(&self) -> u64 {
        self.stream
    }

    /// Whether the peer's SETTINGS have enabled HTTP Datagrams (RFC 9297 §2.1.1). False while they
    /// have not arrived: [`send`](Self::send) then holds the datagram until they do (and drops it if
    /// they say no). Receiving works either way.
    pub fn peer_enabled(&self) -> bool {
        self.shared.peer_enabled()
    }

    /// The largest payload that fits in one datagram on the current path.
    pub fn max_payload(&self) -> usize {
        self.shared.max_writable.load(Ordering::Relaxed).saturating_sub(self.prefix.len())
    }

    /// Queues a datagram. Never waits: a full queue or an oversized payload is an error and the
    /// datagram is not sent.
    ///
    /// # Errors
    /// [`DatagramError::NotNegotiated`] once the peer's SETTINGS said no to HTTP Datagrams,
    /// [`DatagramError::TooLarge`], [`DatagramError::QueueFull`], [`DatagramError::Unavailable`].
    pub fn send(&self, payload: &[u8]) -> Result<(), DatagramError> {
        if self.shared.peer_disabled() {
            return Err(DatagramError::NotNegotiated);
        }
        let max = self.max_payload();
        if payload.len() > max {
            return Err(DatagramError::TooLarge { size: payload.len(), max });
        }
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| DatagramError::QueueFull)?;
        let mut frame = Vec::with_capacity(self.prefix.len() + payload.len());
        frame.extend_from_slice(&self.prefix);
        frame.extend_from_slice(payload);
        self.wake
            .send(Wake::Datagram { frame: Bytes::from(frame), _permit: permit })
            .map_err(|_| DatagramError::Unavailable)
    }

    /// The next datagram the peer sent on this stream; `None` once the stream or connection is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.incoming.recv().await
    }

    /// Datagrams dropped on this connection because a receive queue was full or the stream unknown.
    pub fn dropped_on_receive(&self) -> u64 {
        self.shared.recv_dropped.load(Ordering::Relaxed)
    }
}

/// Holds a [`DatagramFlow`] in `http` extensions, which must be `Clone`; see [`DatagramFlow::take_from`].
#[derive(Debug, Clone)]
pub struct DatagramSlot(Arc<std::sync::Mutex<Option<DatagramFlow>>>);

/// Appends a QUIC variable-length integer (RFC 9000 §16). Values above 2^62 - 1 are clamped.
pub fn put_varint(out: &mut impl BufMut, value: u64) {
    match value {
        0..=0x3f => out.put_u8(value as u8),
        0x40..=0x3fff => out.put_u16(0x4000 | value as u16),
        0x4000..=0x3fff_ffff => out.put_u32(0x8000_0000 | value as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | value.min((1 << 62) - 1)),
    }
}

/// Reads a QUIC variable-length integer from the front of `input`: `(value, length)`, or `None` if
/// `input` is too short.
pub fn get_varint(input: &[u8]) -> Option<(u64, usize)> {
    let first = *input.first()?;
    let len = 1usize << (first >> 6);
    let bytes = input.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for byte in &bytes[1..] {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, len))
}

/// The DATAGRAM capsule type (RFC 9297 §3.5).
pub const CAPSULE_DATAGRAM: u64 = 0x00;

/// One capsule (RFC 9297 §3.2) from a stream using the Capsule Protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capsule {
    /// The capsule type; unknown types must be skipped by receivers.
    pub capsule_type: u64,
    /// The capsule value.
    pub value: Bytes,
}

/// Encodes a capsule for sending as stream body data.
pub fn encode_capsule(capsule_type: u64, value: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(value.len() + 16);
    put_varint(&mut out, capsule_type);
    put_varint(&mut out, value.len() as u64);
    out.extend_from_slice(value);
    out.freeze()
}

/// A capsule longer than the decoder accepts: the stream is malformed for this application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("capsule of {length} bytes exceeds the {max} byte limit")]
pub struct CapsuleTooLarge {
    /// The announced length.
    pub length: u64,
    /// The limit.
    pub max: usize,
}

/// The stream ended inside a capsule, which RFC 9297 §3.3 makes a malformed stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stream ended inside a capsule ({buffered} bytes of it received)")]
pub struct CapsuleTruncated {
    /// Bytes of the unfinished capsule that arrived.
    pub buffered: usize,
}

/// Splits stream body bytes into capsules, holding at most one capsule's worth of bytes.
///
/// Type and length may use any varint encoding, minimal or not (RFC 9000 §16 allows both): what a
/// capsule occupied is what was read, never re-derived from its values.
#[derive(Debug)]
pub struct CapsuleDecoder {
    buffer: BytesMut,
    max_capsule_bytes: usize,
}

impl CapsuleDecoder {
    /// A decoder that refuses capsules longer than `max_capsule_bytes` (bounds its memory).
    pub fn new(max_capsule_bytes: usize) -> Self {
        Self { buffer: BytesMut::new(), max_capsule_bytes }
    }

    /// Adds received body bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next complete capsule, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// [`CapsuleTooLarge`] when a capsule announces more than the limit; the stream should be reset.
    pub fn next_capsule(&mut self) -> Result<Option<Capsule>, CapsuleTooLarge> {
        let Some((capsule_type, type_len)) = get_varint(&self.buffer) else { return Ok(None) };
        let Some((length, length_len)) = get_varint(&self.buffer[type_len..]) else { return Ok(None) };
        if length > self.max_capsule_bytes as u64 {
            return Err(CapsuleTooLarge { length, max: self.max_capsule_bytes });
        }
        let header = type_len + length_len;
        let total = header + length as usize;
        if self.buffer.len() < total {
            return Ok(None);
        }
        self.buffer.advance(header);
        let value = self.buffer.split_to(length as usize).freeze();
        Ok(Some(Capsule { capsule_type, value }))
    }

    /// Checks the end of the stream, once every complete capsule was taken.
    ///
    /// # Errors
    /// [`CapsuleTruncated`] when bytes of an unfinished capsule are left: the stream is malformed.
    pub fn finish(&self) -> Result<(), CapsuleTruncated> {
        match self.buffer.len() {
            0 => Ok(()),
            buffered => Err(CapsuleTruncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        for value in [0, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, (1 << 62) - 1] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(get_varint(&out), Some((value, out.len())), "{value}");
            assert_eq!(get_varint(&out[..out.len() - 1]), None);
        }
        // RFC 9000 appendix A.1 examples.
        assert_eq!(get_varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]), Some((151_288_809_941_952_652, 8)));
        assert_eq!(get_varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(get_varint(&[0x25]), Some((37, 1)));
    }

    #[test]
    fn capsules_decode_across_arbitrary_splits() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode_capsule(CAPSULE_DATAGRAM, b"hello"));
        wire.extend_from_slice(&encode_capsule(0x1234, &[7u8; 300]));
        wire.extend_from_slice(&encode_capsule(CAPSULE_DATAGRAM, b""));
        for split in 0..wire.len() {
            let mut decoder = CapsuleDecoder::new(1024);
            let mut capsules = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                decoder.push(part);
                while let Some(capsule) = decoder.next_capsule().unwrap() {
                    capsules.push(capsule);
                }
            }
            assert_eq!(capsules.len(), 3, "split at {split}");
            assert_eq!(capsules[0], Capsule { capsule_type: 0, value: Bytes::from_static(b"hello") });
            assert_eq!(capsules[1].capsule_type, 0x1234);
            assert_eq!(capsules[1].value.len(), 300);
            assert!(capsules[2].value.is_empty());
        }
    }

    #[test]
    fn non_minimal_varints_are_read_as_what_they_occupy() {
        // Type 0 in eight bytes and length 3 in two: legal (RFC 9000 §16), and what quiche's own
        // encoder never sends, so the bytes are written by hand.
        let mut wire = vec![0xc0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x03];
        wire.extend_from_slice(b"abc");
        // Type 0x1234 in four bytes, empty value with its length in eight.
        wire.extend_from_slice(&[0x80, 0x00, 0x12, 0x34, 0xc0, 0, 0, 0, 0, 0, 0, 0]);
        let mut decoder = CapsuleDecoder::new(100);
        decoder.push(&wire);
        assert_eq!(decoder.next_capsule(), Ok(Some(Capsule { capsule_type: 0, value: Bytes::from_static(b"abc") })));
        assert_eq!(decoder.next_capsule(), Ok(Some(Capsule { capsule_type: 0x1234, value: Bytes::new() })));
        assert_eq!(decoder.next_capsule(), Ok(None));
        assert_eq!(decoder.finish(), Ok(()), "nothing left over: the stream may end here");
        decoder.push(&[0x40]);
        assert_eq!(decoder.finish(), Err(CapsuleTruncated { buffered: 1 }));
    }

    #[test]
    fn oversized_capsules_are_refused_before_buffering() {
        let mut decoder = CapsuleDecoder::new(100);
        let mut header = Vec::new();
        put_varint(&mut header, CAPSULE_DATAGRAM);
        put_varint(&mut header, 1 << 40);
        decoder.push(&header);
        assert_eq!(decoder.next_capsule(), Err(CapsuleTooLarge { length: 1 << 40, max: 100 }));
    }
}
