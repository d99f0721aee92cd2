//! Packets the router answers without a connection: Version Negotiation, Retry, stateless reset, and
//! the close of a refused Initial (CONNECTION_REFUSED, or INVALID_TOKEN for a bad Retry token).
//!
//! The builders are plain functions of their inputs (tested below); the `Router` methods send what
//! they build with `try_send`, because a stateless answer is never worth waiting for.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use quinn_udp::Transmit;

use super::Router;
use crate::cid::{self, PacketKind};
use crate::stats::DropReason;

/// Longest Retry packet we build: header, two connection IDs, a token and the integrity tag.
const MAX_RETRY_BYTES: usize = 256;
/// Longest Version Negotiation packet we build: header, two connection IDs of at most 20 bytes and
/// quiche's few versions.
const MAX_VERSION_NEGOTIATION_BYTES: usize = 256;
/// Longest reset we send; any length above the minimum hides the packet as well.
pub(crate) const MAX_STATELESS_RESET_BYTES: usize = 64;
/// Transport error code CONNECTION_REFUSED (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;
/// Transport error code INVALID_TOKEN (RFC 9000 §20.1).
const INVALID_TOKEN: u64 = 0xb;

/// Builds the Version Negotiation answer to a long-header packet `data` into `out`.
pub(crate) fn version_negotiation(data: &[u8], out: &mut [u8]) -> Option<usize> {
    let (Some(PacketKind::Long { dcid, .. }), Some(scid)) = (cid::classify(data), cid::long_header_scid(data)) else {
        return None;
    };
    // Our answer swaps the client's IDs (RFC 9000 §17.2.1).
    let scid = quiche::ConnectionId::from_ref(scid);
    let dcid = quiche::ConnectionId::from_ref(dcid);
    quiche::negotiate_version(&scid, &dcid, out).ok()
}

/// Builds a stateless reset answering a packet of `trigger_bytes` (which must be longer than
/// [`MIN_STATELESS_RESET_BYTES`](super::admission::MIN_STATELESS_RESET_BYTES)) into `out`: always
/// shorter than the trigger (no amplification, and two endpoints can never bounce resets forever),
/// unpredictable but for the token at its end.
pub(crate) fn stateless_reset(trigger_bytes: usize, token: u128, out: &mut [u8; MAX_STATELESS_RESET_BYTES]) -> &[u8] {
    let len =
        trigger_bytes.saturating_sub(1).clamp(super::admission::MIN_STATELESS_RESET_BYTES, MAX_STATELESS_RESET_BYTES);
    let reset = &mut out[..len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut reset[..len - 16]);
    // A short header: fixed bit set, long-header bit clear, the rest unpredictable.
    reset[0] = (reset[0] & 0x3f) | 0x40;
    reset[len - 16..].copy_from_slice(&token.to_be_bytes());
    reset
}

impl Router {
    /// Sends one stateless answer now or never, counting it as sent.
    fn send_now(&self, contents: &[u8], destination: SocketAddr) -> bool {
        let transmit = Transmit { destination, ecn: None, contents, segment_size: None, src_ip: None };
        let sent = self.handle.socket.try_send(&transmit).is_ok();
        if sent {
            let counters = &self.shared.counters;
            counters.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            counters.bytes_sent.fetch_add(contents.len() as u64, Ordering::Relaxed);
        }
        sent
    }

    /// Answers a long-header packet of an unknown version.
    pub(super) fn negotiate_version(&self, data: &[u8], from: SocketAddr) {
        let mut out = [0u8; MAX_VERSION_NEGOTIATION_BYTES];
        if let Some(len) = version_negotiation(data, &mut out) {
            self.send_now(&out[..len], from);
        }
    }

    /// Answers an Initial with a Retry carrying a token that binds the client's address and connection
    /// IDs. Stateless: nothing is kept until the client comes back with the token.
    pub(super) fn send_retry(&mut self, header: &quiche::Header<'_>, from: SocketAddr) {
        let Some(server) = self.server.as_ref() else { return };
        let retry_scid = self.handle.cids.generate();
        let token = server.retry_tokens.mint(from, &header.dcid, &retry_scid, SystemTime::now());
        let mut out = [0u8; MAX_RETRY_BYTES];
        match quiche::retry(&header.scid, &header.dcid, &retry_scid, &token, header.version, &mut out) {
            Ok(len) => {
                if self.send_now(&out[..len], from) {
                    self.shared.counters.retries_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot build a Retry"),
        }
        self.shared.counters.drop(DropReason::RetryRequired);
    }

    /// Closes a would-be connection at once: with INVALID_TOKEN if its Retry token failed (the client
    /// would not take a second Retry, RFC 9000 §8.1.2), with CONNECTION_REFUSED otherwise. quiche can
    /// only send a CONNECTION_CLOSE from a connection, so one is made for the Initial and closed before
    /// it does anything else. The answer goes where the Initial came from: it is smaller than the
    /// Initial (no amplification), and a global budget bounds how much work refusing may cost.
    pub(super) fn refuse(&mut self, data: &mut [u8], from: SocketAddr, to: SocketAddr, reason: DropReason) {
        self.shared.counters.drop(reason);
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
        let (code, reason) = match reason {
            DropReason::InvalidToken => (INVALID_TOKEN, &b"invalid Retry token"[..]),
            _ => (CONNECTION_REFUSED, &b"server busy"[..]),
        };
        let _ = conn.close(false, code, reason);
        let mut out = [0u8; crate::config::MAX_RECV_UDP_PAYLOAD_BYTES];
        while let Ok((len, info)) = conn.send(&mut out) {
            if !self.send_now(&out[..len], info.to) {
                break;
            }
        }
        self.shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers a short-header packet for a connection we do not know with a stateless reset (RFC 9000
    /// §10.3), so that a client of a restarted server learns at once that its connection is gone; at
    /// most [`STATELESS_RESET_RATE`](crate::config::STATELESS_RESET_RATE).
    pub(super) fn send_stateless_reset(&mut self, data: &[u8], dcid: &[u8], from: SocketAddr) {
        if !self.resets.allow(Instant::now()) {
            return;
        }
        let mut out = [0u8; MAX_STATELESS_RESET_BYTES];
        let reset = stateless_reset(data.len(), self.handle.cids.reset_token(dcid), &mut out);
        if self.send_now(reset, from) {
            self.shared.counters.stateless_resets_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_is_shorter_than_its_trigger_and_ends_with_the_token() {
        let mut out = [0u8; MAX_STATELESS_RESET_BYTES];
        for trigger in [22, 40, 1200] {
            let reset = stateless_reset(trigger, 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10, &mut out);
            assert!(reset.len() < trigger && reset.len() >= 21, "{trigger}: {}", reset.len());
            assert_eq!(reset[0] & 0xc0, 0x40, "short header with the fixed bit");
            assert_eq!(&reset[reset.len() - 16..], &0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.to_be_bytes());
        }
    }

    #[test]
    fn version_negotiation_swaps_the_connection_ids() {
        // A long header of version 0x0a0a0a0a with an 8-byte DCID and a 4-byte SCID, padded.
        let mut packet = vec![0xc0, 0x0a, 0x0a, 0x0a, 0x0a, 8, 1, 2, 3, 4, 5, 6, 7, 8, 4, 9, 9, 9, 9];
        packet.resize(1200, 0);
        let mut out = [0u8; MAX_VERSION_NEGOTIATION_BYTES];
        let len = version_negotiation(&packet, &mut out).expect("a Version Negotiation packet");
        let answer = &out[..len];
        assert_eq!(&answer[1..5], &[0, 0, 0, 0], "version 0 marks Version Negotiation");
        assert_eq!(&answer[5..10], &[4, 9, 9, 9, 9], "our DCID is the client's SCID");
        assert_eq!(&answer[10..19], &[8, 1, 2, 3, 4, 5, 6, 7, 8], "our SCID is the client's DCID");
        assert!(version_negotiation(&[0x40, 1, 2, 3], &mut out).is_none(), "not for a short header");
    }
}
