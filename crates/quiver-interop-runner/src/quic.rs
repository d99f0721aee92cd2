//! Reading the cleartext parts of QUIC datagrams (RFC 9000 section 17, RFC 9369 for v2): packet types,
//! versions, connection IDs, tokens and lengths of coalesced long-header packets. Nothing here decrypts.

/// QUIC version 1.
pub const VERSION_1: u32 = 0x0000_0001;
/// QUIC version 2.
pub const VERSION_2: u32 = 0x6b33_43cf;

/// Kind of a QUIC packet as far as its cleartext header tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// Long header, Initial.
    Initial,
    /// Long header, 0-RTT.
    ZeroRtt,
    /// Long header, Handshake.
    Handshake,
    /// Long header, Retry.
    Retry,
    /// Long header with version 0.
    VersionNegotiation,
    /// Short header (1-RTT).
    OneRtt,
    /// Not parseable as QUIC (e.g. corrupted, or a version this module does not know).
    Unknown,
}

/// The cleartext header of one packet of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    /// Its kind.
    pub kind: PacketKind,
    /// Version (0 for short headers).
    pub version: u32,
    /// Destination connection ID (empty for short headers: its length is not in the packet).
    pub dcid: Vec<u8>,
    /// Source connection ID (long headers).
    pub scid: Vec<u8>,
    /// Token of an Initial, or the retry token of a Retry.
    pub token: Vec<u8>,
    /// Bytes of the packet, header included.
    pub packet_bytes: usize,
    /// Bytes after the header: the Length field's value for long headers with one, else the rest.
    pub payload_bytes: usize,
}

/// Splits a UDP payload into the headers of its coalesced packets. A short-header packet or an
/// unparseable remainder ends the list.
pub fn parse_datagram(mut datagram: &[u8]) -> Vec<PacketHeader> {
    let mut packets = Vec::new();
    while !datagram.is_empty() {
        match parse_one(datagram) {
            Some(header) => {
                let consumed = header.packet_bytes;
                let last =
                    matches!(header.kind, PacketKind::OneRtt | PacketKind::Retry | PacketKind::VersionNegotiation);
                packets.push(header);
                if last || consumed == 0 || consumed > datagram.len() {
                    break;
                }
                datagram = &datagram[consumed..];
            }
            None => {
                packets.push(PacketHeader {
                    kind: PacketKind::Unknown,
                    version: 0,
                    dcid: Vec::new(),
                    scid: Vec::new(),
                    token: Vec::new(),
                    packet_bytes: datagram.len(),
                    payload_bytes: datagram.len(),
                });
                break;
            }
        }
    }
    packets
}

/// Reads a QUIC variable-length integer; returns it and the bytes it took.
pub fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    if bytes.len() < len {
        return None;
    }
    let mut value = u64::from(first & 0x3f);
    for byte in &bytes[1..len] {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, len))
}

fn parse_one(packet: &[u8]) -> Option<PacketHeader> {
    let first = *packet.first()?;
    if first & 0x80 == 0 {
        return Some(PacketHeader {
            kind: PacketKind::OneRtt,
            version: 0,
            dcid: Vec::new(),
            scid: Vec::new(),
            token: Vec::new(),
            packet_bytes: packet.len(),
            payload_bytes: packet.len().saturating_sub(1),
        });
    }
    let version = u32::from_be_bytes(packet.get(1..5)?.try_into().ok()?);
    let mut at = 5;
    let dcid_len = usize::from(*packet.get(at)?);
    at += 1;
    let dcid = packet.get(at..at + dcid_len)?.to_vec();
    at += dcid_len;
    let scid_len = usize::from(*packet.get(at)?);
    at += 1;
    let scid = packet.get(at..at + scid_len)?.to_vec();
    at += scid_len;
    let header = |kind, token: Vec<u8>, packet_bytes, payload_bytes| PacketHeader {
        kind,
        version,
        dcid: dcid.clone(),
        scid: scid.clone(),
        token,
        packet_bytes,
        payload_bytes,
    };
    if version == 0 {
        return Some(header(PacketKind::VersionNegotiation, Vec::new(), packet.len(), packet.len() - at));
    }
    let type_bits = (first >> 4) & 0x3;
    let kind = match (version, type_bits) {
        (VERSION_2, 1) | (VERSION_1, 0) => PacketKind::Initial,
        (VERSION_2, 2) | (VERSION_1, 1) => PacketKind::ZeroRtt,
        (VERSION_2, 3) | (VERSION_1, 2) => PacketKind::Handshake,
        (VERSION_2, 0) | (VERSION_1, 3) => PacketKind::Retry,
        _ => return None,
    };
    if kind == PacketKind::Retry {
        // Retry token runs up to the 16-byte integrity tag.
        let token = packet.get(at..packet.len().checked_sub(16)?)?.to_vec();
        return Some(header(kind, token, packet.len(), packet.len() - at));
    }
    let mut token = Vec::new();
    if kind == PacketKind::Initial {
        let (token_len, used) = read_varint(packet.get(at..)?)?;
        at += used;
        let token_len = usize::try_from(token_len).ok()?;
        token = packet.get(at..at.checked_add(token_len)?)?.to_vec();
        at += token_len;
    }
    let (length, used) = read_varint(packet.get(at..)?)?;
    at += used;
    let length = usize::try_from(length).ok()?;
    let end = at.checked_add(length)?;
    if end > packet.len() {
        return None;
    }
    Some(header(kind, token, end, length))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A v1 long-header packet with the given type bits, connection IDs, token (Initial) and payload length.
    pub(crate) fn long_packet(
        type_bits: u8,
        dcid: &[u8],
        scid: &[u8],
        token: Option<&[u8]>,
        payload: usize,
    ) -> Vec<u8> {
        let mut p = vec![0xc0 | (type_bits << 4)];
        p.extend_from_slice(&VERSION_1.to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend_from_slice(dcid);
        p.push(scid.len() as u8);
        p.extend_from_slice(scid);
        if let Some(token) = token {
            p.push(token.len() as u8);
            p.extend_from_slice(token);
        }
        // Two-byte varint length.
        p.extend_from_slice(&(0x4000u16 | payload as u16).to_be_bytes());
        p.extend(std::iter::repeat_n(0xaa, payload));
        p
    }

    #[test]
    fn coalesced_initial_handshake_and_short_header() {
        let mut datagram = long_packet(0, &[1; 8], &[2; 4], Some(b"tok"), 100);
        datagram.extend(long_packet(2, &[1; 8], &[2; 4], None, 50));
        datagram.extend_from_slice(&[0x40, 9, 9, 9, 9]);
        let packets = parse_datagram(&datagram);
        let kinds: Vec<_> = packets.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [PacketKind::Initial, PacketKind::Handshake, PacketKind::OneRtt]);
        assert_eq!(packets[0].token, b"tok");
        assert_eq!(packets[0].scid, [2; 4]);
        assert_eq!(packets[0].payload_bytes, 100);
        assert_eq!(packets[1].payload_bytes, 50);
        assert_eq!(packets[2].packet_bytes, 5);
    }

    #[test]
    fn retry_token_excludes_the_integrity_tag_and_garbage_is_unknown() {
        let mut retry = vec![0xf0];
        retry.extend_from_slice(&VERSION_1.to_be_bytes());
        retry.extend_from_slice(&[1, 7, 1, 8]);
        retry.extend_from_slice(b"the-token");
        retry.extend_from_slice(&[0; 16]);
        let packets = parse_datagram(&retry);
        assert_eq!(packets[0].kind, PacketKind::Retry);
        assert_eq!(packets[0].token, b"the-token");
        assert_eq!(parse_datagram(&[0xc0, 0, 0, 0, 1, 200])[0].kind, PacketKind::Unknown);
        assert_eq!(read_varint(&[0x7b, 0xbd]), Some((15_293, 2)));
    }
}
