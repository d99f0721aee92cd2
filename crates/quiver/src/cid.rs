//! Connection IDs: how we mint them and how the router reads them off the wire.
//!
//! Every CID we issue is [`LOCAL_CID_LEN`] bytes: one byte naming the router (socket) that owns the
//! connection, then random bytes. The fixed length lets the router read a short header's DCID without a
//! full parse; the router byte names the socket that owns the connection, so that a multi-socket
//! endpoint forwards a packet that lands on the wrong socket to the router that knows it.

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;

use crate::token::ResetTokens;

/// Length of every connection ID this endpoint issues: 1 router byte + 15 random bytes (120 bits is
/// far beyond guessing range).
pub const LOCAL_CID_LEN: usize = 16;

/// The router a connection ID of ours names, or `None` for an ID we did not mint (a client's original
/// DCID, or garbage).
pub fn router_index(cid: &[u8]) -> Option<usize> {
    (cid.len() == LOCAL_CID_LEN).then(|| usize::from(cid[0]))
}

/// Shortest DCID a client may put in its first Initial (RFC 9000 §7.2).
pub const MIN_INITIAL_DCID_LEN: usize = 8;

/// Mints connection IDs for one router, and the stateless-reset token that goes with each.
#[derive(Debug, Clone)]
pub(crate) struct CidGenerator {
    router_index: u8,
    /// Server endpoints derive reset tokens from their secret, so a restarted server (or another of
    /// the fleet) can still reset the connection; clients' tokens are never used, so random.
    reset_tokens: Option<Arc<ResetTokens>>,
}

impl CidGenerator {
    pub(crate) fn new(router_index: u8, reset_tokens: Option<Arc<ResetTokens>>) -> Self {
        Self { router_index, reset_tokens }
    }

    pub(crate) fn generate(&self) -> quiche::ConnectionId<'static> {
        let mut bytes = vec![0u8; LOCAL_CID_LEN];
        bytes[0] = self.router_index;
        rand::rng().fill_bytes(&mut bytes[1..]);
        quiche::ConnectionId::from_vec(bytes)
    }

    pub(crate) fn reset_token(&self, cid: &[u8]) -> u128 {
        if let Some(tokens) = &self.reset_tokens {
            return tokens.token(cid);
        }
        let mut token = [0u8; 16];
        rand::rng().fill_bytes(&mut token);
        u128::from_be_bytes(token)
    }
}

/// A connection ID as a table key: its bytes inline, so inserting and looking up allocate nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CidKey {
    len: u8,
    bytes: [u8; MAX_CID_LEN],
}

impl CidKey {
    /// The key for `cid`, or `None` if it is longer than QUIC v1 allows (20 bytes).
    pub fn new(cid: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; MAX_CID_LEN];
        bytes.get_mut(..cid.len())?.copy_from_slice(cid);
        Some(Self { len: cid.len() as u8, bytes })
    }

    /// The connection ID's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The router's map from connection ID to connection.
///
/// Hashing is foldhash with a per-table random seed: several times cheaper than SipHash for 16-byte
/// keys, and a peer that picks the client-chosen IDs (original DCIDs) still cannot predict collisions.
#[derive(Debug)]
pub struct CidTable<V> {
    map: HashMap<CidKey, V, foldhash::fast::RandomState>,
}

impl<V> Default for CidTable<V> {
    fn default() -> Self {
        Self { map: HashMap::default() }
    }
}

impl<V> CidTable<V> {
    /// The entry for `cid`, if any.
    pub fn get(&self, cid: &[u8]) -> Option<&V> {
        self.map.get(&CidKey::new(cid)?)
    }

    /// Maps `cid` to `value`; IDs longer than 20 bytes are never routable and are ignored.
    pub fn insert(&mut self, cid: &[u8], value: V) {
        if let Some(key) = CidKey::new(cid) {
            self.map.insert(key, value);
        }
    }

    /// Unmaps `cid`.
    pub fn remove(&mut self, cid: &[u8]) -> Option<V> {
        self.map.remove(&CidKey::new(cid)?)
    }

    /// Keeps only the entries `keep` approves.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.map.retain(|_, value| keep(value));
    }

    /// How many IDs are mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no ID is mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What the first bytes of a datagram say about where it goes.
#[derive(Debug, PartialEq, Eq)]
pub enum PacketKind<'a> {
    /// Short header: only the DCID is visible.
    Short {
        /// The destination connection ID ([`LOCAL_CID_LEN`] bytes: only ours are routable).
        dcid: &'a [u8],
    },
    /// Long header.
    Long {
        /// The QUIC version field.
        version: u32,
        /// The destination connection ID.
        dcid: &'a [u8],
        /// Whether the type bits say Initial (meaningful for supported versions only).
        is_initial: bool,
    },
}

const LONG_HEADER_BIT: u8 = 0x80;
const LONG_PACKET_TYPE_MASK: u8 = 0x30;
const LONG_PACKET_TYPE_INITIAL: u8 = 0x00;
/// RFC 9000 §17.2: a long header's connection IDs are at most 20 bytes in QUIC v1.
const MAX_CID_LEN: usize = 20;

/// Reads a packet's kind and DCID without decrypting anything. Returns `None` for bytes that cannot be a
/// QUIC packet addressed to us. Never panics, whatever the input.
pub fn classify(datagram: &[u8]) -> Option<PacketKind<'_>> {
    let first = *datagram.first()?;
    if first & LONG_HEADER_BIT == 0 {
        let dcid = datagram.get(1..1 + LOCAL_CID_LEN)?;
        return Some(PacketKind::Short { dcid });
    }
    let version = u32::from_be_bytes(datagram.get(1..5)?.try_into().ok()?);
    let dcid_len = usize::from(*datagram.get(5)?);
    // Version 0 (Version Negotiation) and unknown versions may carry longer CIDs (RFC 8999 allows 255),
    // but none of those is a packet we route; cap so we never treat a huge length as a CID.
    if dcid_len > MAX_CID_LEN && quiche::version_is_supported(version) {
        return None;
    }
    let dcid = datagram.get(6..6 + dcid_len)?;
    // Version 1 Initial type bits; other versions are only answered with Version Negotiation.
    let is_initial = first & LONG_PACKET_TYPE_MASK == LONG_PACKET_TYPE_INITIAL;
    Some(PacketKind::Long { version, dcid, is_initial })
}

/// The source CID of a long-header packet (needed for Version Negotiation), or `None` if truncated.
pub fn long_header_scid(datagram: &[u8]) -> Option<&[u8]> {
    let dcid_len = usize::from(*datagram.get(5)?);
    let scid_len_at = 6 + dcid_len;
    let scid_len = usize::from(*datagram.get(scid_len_at)?);
    datagram.get(scid_len_at + 1..scid_len_at + 1 + scid_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_cids_carry_router_index() {
        let generator = CidGenerator::new(7, None);
        let first = generator.generate();
        let second = generator.generate();
        assert_eq!(first.len(), LOCAL_CID_LEN);
        assert_eq!(first[0], 7);
        assert_ne!(first, second);
    }

    #[test]
    fn cid_table_maps_unmaps_and_ignores_overlong_ids() {
        let mut table = CidTable::default();
        table.insert(&[1, 2, 3], "a");
        table.insert(&[1, 2, 3, 0], "b");
        table.insert(&[7; 21], "too long");
        assert_eq!(table.get(&[1, 2, 3]), Some(&"a"), "a shorter ID is not a prefix match");
        assert_eq!(table.get(&[1, 2, 3, 0]), Some(&"b"));
        assert_eq!(table.get(&[7; 21]), None);
        assert_eq!(table.len(), 2);
        assert_eq!(table.remove(&[1, 2, 3]), Some("a"));
        table.retain(|value| *value != "b");
        assert!(table.is_empty());
        assert_eq!(CidKey::new(&[9; 20]).map(|key| key.as_bytes().len()), Some(20));
    }

    #[test]
    fn classify_short_header() {
        let mut packet = vec![0x40u8];
        packet.extend_from_slice(&[9u8; LOCAL_CID_LEN]);
        packet.extend_from_slice(b"payload");
        assert_eq!(classify(&packet), Some(PacketKind::Short { dcid: &[9u8; LOCAL_CID_LEN] }));
        assert_eq!(classify(&packet[..5]), None, "truncated short header");
    }

    #[test]
    fn classify_long_header_initial() {
        let mut packet = vec![0xc0u8, 0, 0, 0, 1, 8];
        packet.extend_from_slice(&[1u8; 8]);
        packet.push(4);
        packet.extend_from_slice(&[2u8; 4]);
        assert_eq!(classify(&packet), Some(PacketKind::Long { version: 1, dcid: &[1u8; 8], is_initial: true }));
        assert_eq!(long_header_scid(&packet), Some(&[2u8; 4][..]));
        // Handshake type bits (0x20) are not an Initial.
        packet[0] = 0xe0;
        assert!(matches!(classify(&packet), Some(PacketKind::Long { is_initial: false, .. })));
    }

    #[test]
    fn classify_rejects_oversized_v1_cid_and_truncation() {
        let packet = [0xc0u8, 0, 0, 0, 1, 21];
        assert_eq!(classify(&packet), None);
        assert_eq!(classify(&[]), None);
        assert_eq!(classify(&[0xc0, 0, 0]), None);
    }

    #[test]
    fn classify_never_panics_on_any_short_input() {
        // Exhaustive over every 1- and 2-byte input and a sweep of 7-byte inputs.
        for first in 0..=255u8 {
            let _ = classify(&[first]);
            for second in 0..=255u8 {
                let _ = classify(&[first, second]);
                let _ = long_header_scid(&[first, 0, 0, 0, 1, second, 3]);
            }
        }
    }
}
