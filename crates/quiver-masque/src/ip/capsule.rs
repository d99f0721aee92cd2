//! The CONNECT-IP capsules (RFC 9484 §4.7): ADDRESS_ASSIGN, ADDRESS_REQUEST, ROUTE_ADVERTISEMENT.
//! Pure encoders and decoders; a decoder refuses anything RFC 9484 calls malformed, and the stream
//! that carried it is then aborted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use quiver_h3::datagram::{encode_capsule, get_varint, put_varint};

/// ADDRESS_ASSIGN capsule type.
pub const CAPSULE_ADDRESS_ASSIGN: u64 = 0x01;
/// ADDRESS_REQUEST capsule type.
pub const CAPSULE_ADDRESS_REQUEST: u64 = 0x02;
/// ROUTE_ADVERTISEMENT capsule type.
pub const CAPSULE_ROUTE_ADVERTISEMENT: u64 = 0x03;

pub use crate::network::IpNetwork;
pub(crate) use crate::network::max_prefix;

/// One entry of ADDRESS_ASSIGN or ADDRESS_REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressEntry {
    /// Ties an assignment to the request it answers; 0 for an unsolicited assignment.
    pub request_id: u64,
    /// The address or network.
    pub network: IpNetwork,
}

/// One entry of ROUTE_ADVERTISEMENT: destinations reachable through the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    /// First address of the range.
    pub start: IpAddr,
    /// Last address of the range (same family, not below `start`).
    pub end: IpAddr,
    /// The IP protocol (IPv4 protocol / IPv6 next header), 0 for any.
    pub protocol: u8,
}

impl IpRange {
    /// Whether a packet to `destination` with `protocol` is in this range.
    pub fn allows(&self, destination: IpAddr, protocol: u8) -> bool {
        (self.protocol == 0 || self.protocol == protocol)
            && match (self.start, self.end, destination) {
                (IpAddr::V4(start), IpAddr::V4(end), IpAddr::V4(address)) => (start..=end).contains(&address),
                (IpAddr::V6(start), IpAddr::V6(end), IpAddr::V6(address)) => (start..=end).contains(&address),
                _ => false,
            }
    }
}

/// A CONNECT-IP capsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpCapsule {
    /// Addresses the peer assigns to us (or we to it).
    AddressAssign(Vec<AddressEntry>),
    /// Addresses the peer asks for.
    AddressRequest(Vec<AddressEntry>),
    /// Destinations reachable through the tunnel.
    RouteAdvertisement(Vec<IpRange>),
}

/// A CONNECT-IP capsule that RFC 9484 calls malformed: the stream must be aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed CONNECT-IP capsule: {0}")]
pub struct MalformedIpCapsule(pub &'static str);

impl IpCapsule {
    /// Decodes a capsule's value; `Ok(None)` for capsule types that are not CONNECT-IP's.
    ///
    /// # Errors
    /// [`MalformedIpCapsule`] for truncated values, unknown IP versions, prefixes too long, host bits
    /// set, request ID 0 in a request, or ranges out of order (RFC 9484 §4.7).
    pub fn decode(capsule_type: u64, value: &[u8]) -> Result<Option<Self>, MalformedIpCapsule> {
        let mut input = value;
        Ok(Some(match capsule_type {
            CAPSULE_ADDRESS_ASSIGN | CAPSULE_ADDRESS_REQUEST => {
                let mut entries = Vec::new();
                while !input.is_empty() {
                    let request_id = take_varint(&mut input)?;
                    let address = take_address(&mut input)?;
                    let prefix = take_byte(&mut input)?;
                    let network =
                        IpNetwork::new(address, prefix).ok_or(MalformedIpCapsule("bad prefix or host bits set"))?;
                    if capsule_type == CAPSULE_ADDRESS_REQUEST && request_id == 0 {
                        return Err(MalformedIpCapsule("ADDRESS_REQUEST with request ID 0"));
                    }
                    entries.push(AddressEntry { request_id, network });
                }
                if capsule_type == CAPSULE_ADDRESS_ASSIGN {
                    Self::AddressAssign(entries)
                } else {
                    Self::AddressRequest(entries)
                }
            }
            CAPSULE_ROUTE_ADVERTISEMENT => {
                let mut ranges: Vec<IpRange> = Vec::new();
                while !input.is_empty() {
                    let version = take_byte(&mut input)?;
                    let start = take_address_of(version, &mut input)?;
                    let end = take_address_of(version, &mut input)?;
                    let protocol = take_byte(&mut input)?;
                    if start > end {
                        return Err(MalformedIpCapsule("range starts after its end"));
                    }
                    let range = IpRange { start, end, protocol };
                    // §4.7.3: ordered by version, then protocol, then start, without overlap.
                    if let Some(previous) = ranges.last() {
                        let key = |range: &IpRange| (range.start.is_ipv6(), range.protocol);
                        let ordered =
                            key(previous) < key(&range) || (key(previous) == key(&range) && previous.end < range.start);
                        if !ordered {
                            return Err(MalformedIpCapsule("ranges out of order or overlapping"));
                        }
                    }
                    ranges.push(range);
                }
                Self::RouteAdvertisement(ranges)
            }
            _ => return Ok(None),
        }))
    }

    /// The whole capsule (type, length, value), ready to send on the stream.
    pub fn encode(&self) -> Bytes {
        let mut value = Vec::new();
        let capsule_type = match self {
            Self::AddressAssign(entries) | Self::AddressRequest(entries) => {
                for entry in entries {
                    put_varint(&mut value, entry.request_id);
                    put_address(&mut value, entry.network.address);
                    value.push(entry.network.prefix);
                }
                if matches!(self, Self::AddressAssign(_)) { CAPSULE_ADDRESS_ASSIGN } else { CAPSULE_ADDRESS_REQUEST }
            }
            Self::RouteAdvertisement(ranges) => {
                for range in ranges {
                    put_address(&mut value, range.start);
                    value.extend_from_slice(&address_bytes(range.end));
                    value.push(range.protocol);
                }
                CAPSULE_ROUTE_ADVERTISEMENT
            }
        };
        encode_capsule(capsule_type, &value)
    }
}

fn address_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(address) => address.octets().to_vec(),
        IpAddr::V6(address) => address.octets().to_vec(),
    }
}

/// IP Version byte, then the address.
fn put_address(out: &mut Vec<u8>, address: IpAddr) {
    out.push(if address.is_ipv4() { 4 } else { 6 });
    out.extend_from_slice(&address_bytes(address));
}

fn take_byte(input: &mut &[u8]) -> Result<u8, MalformedIpCapsule> {
    let (first, rest) = input.split_first().ok_or(MalformedIpCapsule("truncated"))?;
    *input = rest;
    Ok(*first)
}

fn take_varint(input: &mut &[u8]) -> Result<u64, MalformedIpCapsule> {
    let (value, length) = get_varint(input).ok_or(MalformedIpCapsule("truncated"))?;
    *input = &input[length..];
    Ok(value)
}

fn take_address(input: &mut &[u8]) -> Result<IpAddr, MalformedIpCapsule> {
    let version = take_byte(input)?;
    take_address_of(version, input)
}

fn take_address_of(version: u8, input: &mut &[u8]) -> Result<IpAddr, MalformedIpCapsule> {
    let length = match version {
        4 => 4,
        6 => 16,
        _ => return Err(MalformedIpCapsule("IP version other than 4 or 6")),
    };
    if input.len() < length {
        return Err(MalformedIpCapsule("truncated"));
    }
    let (bytes, rest) = input.split_at(length);
    *input = rest;
    Ok(match <[u8; 4]>::try_from(bytes) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).map_err(|_| MalformedIpCapsule("truncated"))?)),
    })
}

#[cfg(test)]
mod tests {
    use quiver_h3::datagram::CapsuleDecoder;

    use super::*;

    fn network(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    fn round_trip(capsule: &IpCapsule) -> IpCapsule {
        let mut decoder = CapsuleDecoder::new(4096);
        decoder.push(&capsule.encode());
        let raw = decoder.next_capsule().unwrap().unwrap();
        IpCapsule::decode(raw.capsule_type, &raw.value).unwrap().unwrap()
    }

    #[test]
    fn capsules_round_trip() {
        let assign = IpCapsule::AddressAssign(vec![
            AddressEntry { request_id: 0, network: network("192.0.2.7/32") },
            AddressEntry { request_id: 300, network: network("2001:db8:1::/48") },
        ]);
        assert_eq!(round_trip(&assign), assign);
        let request = IpCapsule::AddressRequest(vec![AddressEntry { request_id: 1, network: network("0.0.0.0/32") }]);
        assert_eq!(round_trip(&request), request);
        let routes = IpCapsule::RouteAdvertisement(vec![
            IpRange { start: "10.0.0.0".parse().unwrap(), end: "10.0.0.255".parse().unwrap(), protocol: 0 },
            IpRange { start: "10.0.1.0".parse().unwrap(), end: "10.0.1.0".parse().unwrap(), protocol: 0 },
            IpRange { start: "10.0.0.0".parse().unwrap(), end: "10.255.255.255".parse().unwrap(), protocol: 17 },
            IpRange { start: "::".parse().unwrap(), end: "ffff::".parse().unwrap(), protocol: 0 },
        ]);
        assert_eq!(round_trip(&routes), routes);
        assert_eq!(IpCapsule::decode(0x00, b"x"), Ok(None), "not ours");
    }

    #[test]
    fn malformed_capsules_are_refused() {
        let cases: &[(u64, &[u8])] = &[
            (CAPSULE_ADDRESS_ASSIGN, &[0, 4, 10, 0, 0]),        // truncated address
            (CAPSULE_ADDRESS_ASSIGN, &[0, 5, 10, 0, 0, 1, 32]), // IP version 5
            (CAPSULE_ADDRESS_ASSIGN, &[0, 4, 10, 0, 0, 1, 33]), // prefix too long
            (CAPSULE_ADDRESS_ASSIGN, &[0, 4, 10, 0, 0, 1, 24]), // host bits set
            (CAPSULE_ADDRESS_REQUEST, &[0, 4, 0, 0, 0, 0, 32]), // request ID 0
            (CAPSULE_ROUTE_ADVERTISEMENT, &[4, 10, 0, 0, 9, 10, 0, 0, 1, 0]), // start after end
            // Two ranges out of order.
            (CAPSULE_ROUTE_ADVERTISEMENT, &[4, 10, 0, 1, 0, 10, 0, 1, 9, 0, 4, 10, 0, 0, 0, 10, 0, 0, 9, 0]),
            (CAPSULE_ROUTE_ADVERTISEMENT, &[4, 10, 0, 0]),
        ];
        for (capsule_type, value) in cases {
            assert!(IpCapsule::decode(*capsule_type, value).is_err(), "accepted {capsule_type} {value:?}");
        }
    }

    #[test]
    fn networks_and_ranges() {
        let pool = network("10.89.0.0/24");
        assert!(pool.contains("10.89.0.200".parse().unwrap()));
        assert!(!pool.contains("10.89.1.0".parse().unwrap()));
        assert_eq!(pool.last(), "10.89.0.255".parse::<IpAddr>().unwrap());
        assert_eq!(network("::/0").last(), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap());
        assert!("10.89.0.1/24".parse::<IpNetwork>().is_err(), "host bits");
        assert!("10.0.0.0/33".parse::<IpNetwork>().is_err());
        let udp_only = IpRange { start: pool.first(), end: pool.last(), protocol: 17 };
        assert!(udp_only.allows("10.89.0.9".parse().unwrap(), 17));
        assert!(!udp_only.allows("10.89.0.9".parse().unwrap(), 6));
        assert!(!udp_only.allows("::1".parse().unwrap(), 17));
    }
}
