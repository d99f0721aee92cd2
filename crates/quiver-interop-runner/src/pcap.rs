//! A minimal pcap writer: LINKTYPE_RAW records with synthetic IPv4/IPv6 and UDP headers, enough for
//! tshark to dissect QUIC and decrypt it with the endpoints' key logs.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::record::{Leg, Record};

/// Link type of raw IPv4/IPv6 packets without a link-layer header.
const LINKTYPE_RAW: u32 = 101;
const SNAPLEN: u32 = 262_144;
const UDP_PROTOCOL: u8 = 17;

/// Writes the datagrams of `leg` in `record` as a pcap file to `out`.
pub fn write_leg(record: &Record, leg: Leg, out: &mut impl Write) -> io::Result<()> {
    write_global_header(out)?;
    for (id, datagram) in record.leg(leg).enumerate() {
        let packet = ip_udp_packet(datagram.src, datagram.dst, &datagram.payload, id as u16);
        let at = record.started + datagram.at;
        write_packet(out, at, &packet)?;
    }
    out.flush()
}

fn write_global_header(out: &mut impl Write) -> io::Result<()> {
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&0i32.to_le_bytes())?; // thiszone
    out.write_all(&0u32.to_le_bytes())?; // sigfigs
    out.write_all(&SNAPLEN.to_le_bytes())?;
    out.write_all(&LINKTYPE_RAW.to_le_bytes())
}

fn write_packet(out: &mut impl Write, at: SystemTime, packet: &[u8]) -> io::Result<()> {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    out.write_all(&(since_epoch.as_secs() as u32).to_le_bytes())?;
    out.write_all(&since_epoch.subsec_micros().to_le_bytes())?;
    let len = packet.len() as u32;
    out.write_all(&len.min(SNAPLEN).to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&packet[..packet.len().min(SNAPLEN as usize)])
}

/// An IP packet carrying `payload` in UDP from `src` to `dst`. Mixed families (which a relay never
/// produces on one leg) are written as IPv6 with IPv4-mapped addresses.
pub fn ip_udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8], id: u16) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + udp_len;
            let mut p = Vec::with_capacity(total as usize);
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&[0x40, 0]); // don't fragment
            p.extend_from_slice(&[64, UDP_PROTOCOL, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let checksum = internet_checksum(&[&p[..20]]);
            p[10..12].copy_from_slice(&checksum.to_be_bytes());
            // UDP checksum 0: "not computed", allowed over IPv4.
            push_udp(&mut p, src.port(), dst.port(), udp_len, 0, payload);
            p
        }
        (s, d) => {
            let s = to_v6(s).octets();
            let d = to_v6(d).octets();
            let mut p = Vec::with_capacity(40 + udp_len as usize);
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&udp_len.to_be_bytes());
            p.extend_from_slice(&[UDP_PROTOCOL, 64]);
            p.extend_from_slice(&s);
            p.extend_from_slice(&d);
            // IPv6 requires the UDP checksum, over a pseudo-header.
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s);
            pseudo.extend_from_slice(&d);
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, UDP_PROTOCOL]);
            let mut udp_header = Vec::with_capacity(8);
            udp_header.extend_from_slice(&src.port().to_be_bytes());
            udp_header.extend_from_slice(&dst.port().to_be_bytes());
            udp_header.extend_from_slice(&udp_len.to_be_bytes());
            udp_header.extend_from_slice(&[0, 0]);
            let mut checksum = internet_checksum(&[&pseudo, &udp_header, payload]);
            if checksum == 0 {
                checksum = 0xffff;
            }
            push_udp(&mut p, src.port(), dst.port(), udp_len, checksum, payload);
            p
        }
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn push_udp(p: &mut Vec<u8>, src_port: u16, dst_port: u16, udp_len: u16, checksum: u16, payload: &[u8]) {
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&checksum.to_be_bytes());
    p.extend_from_slice(payload);
}

/// RFC 1071 one's-complement sum over the concatenation of `parts` (each part but the last of even length).
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for pair in &mut chunks {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Datagram;
    use crate::relay::Direction;

    #[test]
    fn ipv4_header_checksum_verifies_and_lengths_match() {
        let p = ip_udp_packet("127.0.0.1:1000".parse().unwrap(), "127.0.0.2:443".parse().unwrap(), b"hello", 7);
        assert_eq!(p.len(), 20 + 8 + 5);
        assert_eq!(internet_checksum(&[&p[..20]]), 0, "a valid header sums to zero");
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 33);
        assert_eq!(&p[20..22], &1000u16.to_be_bytes());
        assert_eq!(&p[24..26], &13u16.to_be_bytes());
        assert_eq!(&p[28..], b"hello");
    }

    #[test]
    fn ipv6_udp_checksum_verifies() {
        let (src, dst): (SocketAddr, SocketAddr) = ("[::1]:5000".parse().unwrap(), "[::1]:443".parse().unwrap());
        let p = ip_udp_packet(src, dst, b"odd", 0);
        assert_eq!(p.len(), 40 + 8 + 3);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[8..40]);
        pseudo.extend_from_slice(&11u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(internet_checksum(&[&pseudo, &p[40..]]), 0);
    }

    #[test]
    fn file_layout_has_one_record_per_datagram_of_the_leg() {
        let mut record = Record::new(UNIX_EPOCH + Duration::from_secs(1_000));
        for leg in [Leg::ClientSide, Leg::ServerSide, Leg::ClientSide] {
            record.push(Datagram {
                leg,
                direction: Direction::ToServer,
                at: Duration::from_micros(1_500_000),
                src: "127.0.0.1:1".parse().unwrap(),
                dst: "127.0.0.1:2".parse().unwrap(),
                payload: vec![1, 2, 3, 4],
            });
        }
        let mut out = Vec::new();
        write_leg(&record, Leg::ClientSide, &mut out).unwrap();
        let record_len = 16 + 20 + 8 + 4;
        assert_eq!(out.len(), 24 + 2 * record_len);
        assert_eq!(&out[20..24], &101u32.to_le_bytes());
        assert_eq!(&out[24..28], &1001u32.to_le_bytes());
        assert_eq!(&out[28..32], &500_000u32.to_le_bytes());
    }
}
