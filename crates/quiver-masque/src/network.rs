//! Addresses with a prefix length ([`IpNetwork`]): shared by the target policy and CONNECT-IP, so
//! neither module depends on the other for them. A leaf: it imports nothing from this crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address with a prefix length: one address (/32, /128) or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    /// The address; bits past the prefix are zero.
    pub address: IpAddr,
    /// The prefix length, at most 32 (IPv4) or 128 (IPv6).
    pub prefix: u8,
}

impl IpNetwork {
    /// A network, or `None` if the prefix is too long for the address family or host bits are set.
    pub fn new(address: IpAddr, prefix: u8) -> Option<Self> {
        let network = Self { address, prefix };
        (prefix <= max_prefix(address) && network.first() == address).then_some(network)
    }

    /// The network of `prefix` bits that holds `address` (host bits cleared), or `None` if the prefix
    /// is too long for the address family.
    pub fn containing(address: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= max_prefix(address)).then(|| Self { address: Self { address, prefix }.first(), prefix })
    }

    /// The network of just `address` (a /32 or /128).
    pub fn host(address: IpAddr) -> Self {
        Self { address, prefix: max_prefix(address) }
    }

    /// Whether `address` is in this network (of the same family).
    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.address.is_ipv4() && Self { address, prefix: self.prefix }.first() == self.first()
    }

    /// The first address (the network address itself).
    pub fn first(&self) -> IpAddr {
        match self.address {
            IpAddr::V4(base) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(base) & mask))
            }
            IpAddr::V6(base) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(base) & mask))
            }
        }
    }

    /// The last address.
    pub fn last(&self) -> IpAddr {
        match self.address {
            IpAddr::V4(base) => {
                let host = u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(base) | host))
            }
            IpAddr::V6(base) => {
                let host = u128::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(base) | host))
            }
        }
    }
}

impl std::fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl std::str::FromStr for IpNetwork {
    type Err = String;

    /// `ADDRESS/PREFIX` or a bare address (a /32 or /128).
    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("invalid network {text:?}: need ADDRESS/PREFIX with the host bits zero");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let prefix = match prefix {
            Some(prefix) => prefix.parse().map_err(|_| invalid())?,
            None => max_prefix(address),
        };
        Self::new(address, prefix).ok_or_else(invalid)
    }
}

/// The longest prefix of `address`'s family: 32 for IPv4, 128 for IPv6.
pub(crate) fn max_prefix(address: IpAddr) -> u8 {
    if address.is_ipv4() { 32 } else { 128 }
}
