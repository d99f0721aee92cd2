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
    /// IPv4 protocol, or the IPv6 next header (extension headers are not walked).
    pub protocol: u8,
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
            Ok(PacketHeader {
                source: IpAddr::V4(Ipv4Addr::new(header[12], header[13], header[14], header[15])),
                destination: IpAddr::V4(Ipv4Addr::new(header[16], header[17], header[18], header[19])),
                protocol: header[9],
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
            Ok(PacketHeader { source: address(8), destination: address(24), protocol: header[6] })
        }
        _ => Err(PacketError::UnknownVersion),
    }
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum();
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
    fn checksum_of_a_checksummed_header_is_zero() {
        let packet = icmp_echo([192, 0, 2, 1], [192, 0, 2, 2]);
        assert_eq!(internet_checksum(&packet[..20]), 0);
        assert_eq!(internet_checksum(&[0x01]), !0x0100);
    }
}
