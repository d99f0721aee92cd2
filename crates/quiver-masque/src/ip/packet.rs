//! The few fields of an IP packet a CONNECT-IP proxy checks before forwarding it: version, addresses,
//! protocol, and that the header's length agrees with the datagram's. A pure function of the bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the proxy needs to know about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// IPv4 protocol, or the IPv6 next header of the fixed header.
    pub protocol: u8,
    /// The destination port of a TCP, UDP or SCTP packet (after IPv6 extension headers); `Some(0)`
    /// when the packet is one of those but the port cannot be read (a later fragment, a cut header),
    /// `None` for protocols without ports.
    pub destination_port: Option<u16>,
}

/// IP protocols whose header starts with a source and a destination port: TCP, UDP, SCTP, UDP-Lite.
const PORT_PROTOCOLS: [u8; 4] = [6, 17, 132, 136];
/// IPv6 extension headers walked to find the transport header (hop-by-hop, routing, fragment,
/// destination options, authentication).
const IPV6_EXTENSION_HEADERS: [u8; 5] = [0, 43, 44, 60, 51];
/// Extension headers walked at most: more is no real packet, and bounds the work per packet.
const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

/// The destination port of the transport header at `offset`, if `protocol` has ports.
fn port_at(packet: &[u8], protocol: u8, offset: usize) -> Option<u16> {
    PORT_PROTOCOLS.contains(&protocol).then(|| match packet.get(offset + 2..offset + 4) {
        Some(port) => u16::from_be_bytes([port[0], port[1]]),
        None => 0,
    })
}

/// Walks IPv6 extension headers from `next_header` at `offset` to the transport header's port.
fn ipv6_destination_port(packet: &[u8], mut next_header: u8, mut offset: usize) -> Option<u16> {
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        if !IPV6_EXTENSION_HEADERS.contains(&next_header) {
            return port_at(packet, next_header, offset);
        }
        let Some(&[following, length, ..]) = packet.get(offset..offset + 8) else { return Some(0) };
        if next_header == 44 {
            let fragment_offset = u16::from_be_bytes([packet[offset + 2], packet[offset + 3]]) >> 3;
            if fragment_offset != 0 {
                // A later fragment carries no transport header; unknown if it is a port protocol.
                return PORT_PROTOCOLS.contains(&following).then_some(0);
            }
            offset += 8;
        } else if next_header == 51 {
            offset += (usize::from(length) + 2) * 4;
        } else {
            offset += (usize::from(length) + 1) * 8;
        }
        next_header = following;
    }
    Some(0)
}

/// Why bytes are not an IP packet we forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Shorter than the fixed header.
    #[error("packet shorter than its IP header")]
    Truncated,
    /// Version nibble other than 4 or 6.
    #[error("IP version other than 4 or 6")]
    UnknownVersion,
    /// The header's length fields disagree with the packet's size.
    #[error("IP header length fields do not match the packet")]
    LengthMismatch,
}

/// Reads the header of an IPv4 or IPv6 packet that fills `packet` exactly.
///
/// # Errors
/// [`PacketError`].
pub fn inspect(packet: &[u8]) -> Result<PacketHeader, PacketError> {
    let first = *packet.first().ok_or(PacketError::Truncated)?;
    match first >> 4 {
        4 => {
            let header: &[u8; 20] = packet.get(..20).and_then(|h| h.try_into().ok()).ok_or(PacketError::Truncated)?;
            let header_length = usize::from(first & 0x0f) * 4;
            let total_length = usize::from(u16::from_be_bytes([header[2], header[3]]));
            if header_length < 20 || header_length > total_length || total_length != packet.len() {
                return Err(PacketError::LengthMismatch);
            }
            let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
            let protocol = header[9];
            let destination_port = match fragment_offset {
                0 => port_at(packet, protocol, header_length),
                _ => PORT_PROTOCOLS.contains(&protocol).then_some(0),
            };
            Ok(PacketHeader {
                source: IpAddr::V4(Ipv4Addr::new(header[12], header[13], header[14], header[15])),
                destination: IpAddr::V4(Ipv4Addr::new(header[16], header[17], header[18], header[19])),
                protocol,
                destination_port,
            })
        }
        6 => {
            let header: &[u8; 40] = packet.get(..40).and_then(|h| h.try_into().ok()).ok_or(PacketError::Truncated)?;
            let payload_length = usize::from(u16::from_be_bytes([header[4], header[5]]));
            if payload_length + 40 != packet.len() {
                return Err(PacketError::LengthMismatch);
            }
            let address = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&header[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(PacketHeader {
                source: address(8),
                destination: address(24),
                protocol: header[6],
                destination_port: ipv6_destination_port(packet, header[6], 40),
            })
        }
        _ => Err(PacketError::UnknownVersion),
    }
}

/// The Internet checksum (RFC 1071) of `bytes`, of any length.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    // A u64 holds the sum of 2^48 16-bit words without overflowing: far beyond any slice.
    let mut sum: u64 =
        bytes.chunks(2).map(|pair| u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 ICMP echo request with a valid header checksum.
    fn icmp_echo(source: [u8; 4], destination: [u8; 4]) -> Vec<u8> {
        let mut packet = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0];
        packet.extend_from_slice(&source);
        packet.extend_from_slice(&destination);
        packet.extend_from_slice(&[8, 0, 0, 0, 0, 7, 0, 1]);
        let checksum = internet_checksum(&packet[..20]);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        packet
    }

    #[test]
    fn reads_ipv4_and_ipv6_headers() {
        let header = inspect(&icmp_echo([10, 89, 0, 2], [10, 89, 0, 1])).unwrap();
        assert_eq!(header.source, "10.89.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(header.destination, "10.89.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(header.protocol, 1);
        let mut v6 = vec![0x60, 0, 0, 0, 0, 2, 17, 64];
        v6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0xab, 0xcd]);
        let header = inspect(&v6).unwrap();
        assert_eq!((header.destination, header.protocol), ("2001:db8::1".parse().unwrap(), 17));
    }

    #[test]
    fn refuses_what_is_not_a_whole_packet() {
        let packet = icmp_echo([10, 0, 0, 2], [10, 0, 0, 1]);
        assert_eq!(inspect(&[]), Err(PacketError::Truncated));
        assert_eq!(inspect(&packet[..19]), Err(PacketError::Truncated));
        assert_eq!(inspect(&packet[..27]), Err(PacketError::LengthMismatch));
        let mut long = packet.clone();
        long.push(0);
        assert_eq!(inspect(&long), Err(PacketError::LengthMismatch));
        let mut bad_ihl = packet.clone();
        bad_ihl[0] = 0x44;
        assert_eq!(inspect(&bad_ihl), Err(PacketError::LengthMismatch));
        let mut v5 = packet;
        v5[0] = 0x55;
        assert_eq!(inspect(&v5), Err(PacketError::UnknownVersion));
        assert_eq!(inspect(&[0x60; 39]), Err(PacketError::Truncated));
        // Every prefix of a valid packet is refused without panicking.
        let packet = icmp_echo([1, 2, 3, 4], [5, 6, 7, 8]);
        for end in 0..packet.len() {
            assert!(inspect(&packet[..end]).is_err());
        }
    }

    #[test]
    fn checksum_of_large_inputs_does_not_overflow() {
        // 256 KiB of 0xff: the u32 sum of its words would overflow (a panic in debug builds).
        let ones = vec![0xffu8; 256 * 1024];
        assert_eq!(internet_checksum(&ones), 0);
        let mut bytes = vec![0u8; 200_000];
        bytes[199_998] = 0x12;
        bytes[199_999] = 0x34;
        assert_eq!(internet_checksum(&bytes), !0x1234);
    }

    #[test]
    fn destination_ports_of_transport_headers() {
        let udp = |fragment: [u8; 2]| {
            let mut packet =
                vec![0x45, 0, 0, 28, 0, 1, fragment[0], fragment[1], 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
            packet.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0, 8, 0, 0]);
            packet
        };
        assert_eq!(inspect(&udp([0, 0])).unwrap().destination_port, Some(53));
        assert_eq!(inspect(&udp([0x00, 0x10])).unwrap().destination_port, Some(0), "later fragment");
        assert_eq!(inspect(&icmp_echo([10, 0, 0, 2], [10, 0, 0, 1])).unwrap().destination_port, None);
        // IPv6: UDP behind a hop-by-hop options header.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        v6.extend_from_slice(&[0; 32]);
        v6.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        v6.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb, 0, 8, 0, 0]);
        assert_eq!(inspect(&v6).unwrap().destination_port, Some(443));
        // A cut extension header: a port protocol cannot be ruled out.
        let mut cut = vec![0x60, 0, 0, 0, 0, 4, 0, 64];
        cut.extend_from_slice(&[0; 32]);
        cut.extend_from_slice(&[17, 0, 0, 0]);
        assert_eq!(inspect(&cut).unwrap().destination_port, Some(0));
    }

    #[test]
    fn checksum_of_a_checksummed_header_is_zero() {
        let packet = icmp_echo([192, 0, 2, 1], [192, 0, 2, 2]);
        assert_eq!(internet_checksum(&packet[..20]), 0);
        assert_eq!(internet_checksum(&[0x01]), !0x0100);
    }
}
