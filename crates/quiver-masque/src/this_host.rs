//! What the proxy knows about its own host, so that no tunnel leads back into it: the addresses of
//! every local interface (read with `getifaddrs`, refreshed so an address added later is covered)
//! and the sockets the proxy listens on.
//!
//! A tunnel request refreshes the interface list before it is checked: one interface dump per
//! request, a cost bounded by the number of interfaces and small next to the request's own socket
//! and name lookup. CONNECT-IP checks every packet, so packets use a list at most
//! [`MAX_ADDRESS_AGE`] old instead of dumping the interfaces each time.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How old the interface list may be when a CONNECT-IP packet is checked against it. An address
/// added to the host is covered for packets at most this long after it appears (tunnel requests
/// always see the current list); one dump a second costs nothing measurable.
pub(crate) const MAX_ADDRESS_AGE: Duration = Duration::from_secs(1);

/// Listening sockets remembered per proxy. One per endpoint socket the proxy serves; a proxy
/// serving more endpoints than this (unusual: one endpoint usually has one or a few sockets)
/// stops remembering new ones and logs it, so the list cannot grow without bound.
const MAX_LISTENERS: usize = 64;

struct Snapshot {
    taken: Instant,
    addresses: Arc<HashSet<IpAddr>>,
}

/// This host's addresses and the proxy's listening sockets.
pub(crate) struct ThisHost {
    snapshot: RwLock<Snapshot>,
    listeners: RwLock<Vec<SocketAddr>>,
    /// Reads the interface addresses (the system's, or a test's list).
    read_addresses: fn() -> Vec<IpAddr>,
}

impl ThisHost {
    /// The host the process runs on.
    pub(crate) fn system() -> Self {
        Self::with_reader(interface_addresses)
    }

    pub(crate) fn with_reader(read_addresses: fn() -> Vec<IpAddr>) -> Self {
        let snapshot = Snapshot { taken: Instant::now(), addresses: Arc::new(canonical(read_addresses())) };
        Self { snapshot: RwLock::new(snapshot), listeners: RwLock::new(Vec::new()), read_addresses }
    }

    /// Reads the interface addresses again.
    pub(crate) fn refresh(&self) {
        let addresses = Arc::new(canonical((self.read_addresses)()));
        *self.snapshot.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Snapshot { taken: Instant::now(), addresses };
    }

    /// The interface addresses, refreshed first if older than [`MAX_ADDRESS_AGE`].
    fn addresses(&self) -> Arc<HashSet<IpAddr>> {
        {
            let snapshot = self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if snapshot.taken.elapsed() < MAX_ADDRESS_AGE {
                return snapshot.addresses.clone();
            }
        }
        self.refresh();
        self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner()).addresses.clone()
    }

    /// Whether `address` leads to this host: an interface's address, loopback, or unspecified
    /// (`0.0.0.0` and `::` reach the local host when connected to).
    pub(crate) fn is_local(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        address.is_loopback() || address.is_unspecified() || self.addresses().contains(&address)
    }

    /// Whether `address`:`port` is one of the proxy's own listening sockets. Any local address with a
    /// listening port counts, whatever address the socket is bound to: a wildcard bind answers on
    /// every local address, and refusing a few more local targets on that port costs nothing.
    pub(crate) fn is_listener(&self, address: IpAddr, port: u16) -> bool {
        let listening = self.listeners.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        listening.iter().any(|listener| listener.port() == port) && self.is_local(address)
    }

    /// Remembers a socket the proxy listens on.
    pub(crate) fn add_listener(&self, listener: SocketAddr) {
        let mut listening = self.listeners.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if listening.contains(&listener) {
            return;
        }
        if listening.len() >= MAX_LISTENERS {
            tracing::warn!(%listener, "too many listening sockets to remember; tunnels to this one are not refused");
            return;
        }
        listening.push(listener);
    }
}

fn canonical(addresses: Vec<IpAddr>) -> HashSet<IpAddr> {
    addresses.into_iter().map(|address| address.to_canonical()).collect()
}

/// Every address of every local interface, up or down (a down interface can come up without its
/// address changing). An error reading them is logged and leaves only the loopback and unspecified
/// addresses local: the proxy keeps serving, and special-purpose ranges stay closed regardless.
#[cfg(unix)]
fn interface_addresses() -> Vec<IpAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr};

    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocated into `list`, or fails and writes
    // nothing.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read this host's interface addresses");
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a non-null node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: a non-null `ifa_addr` points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let v4 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                addresses.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let v6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                addresses.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once; no reference into it outlives this.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

#[cfg(not(unix))]
fn interface_addresses() -> Vec<IpAddr> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_addresses_include_loopback() {
        let addresses = interface_addresses();
        assert!(addresses.iter().any(IpAddr::is_loopback), "{addresses:?}");
    }

    #[test]
    fn local_addresses_and_listeners() {
        let host = ThisHost::with_reader(|| vec!["203.0.113.9".parse().unwrap(), "2001:db8::9".parse().unwrap()]);
        assert!(host.is_local("203.0.113.9".parse().unwrap()));
        assert!(host.is_local("::ffff:203.0.113.9".parse().unwrap()), "mapped IPv4");
        assert!(host.is_local("127.0.0.2".parse().unwrap()) && host.is_local("0.0.0.0".parse().unwrap()));
        assert!(!host.is_local("203.0.113.10".parse().unwrap()));
        assert!(!host.is_listener("203.0.113.9".parse().unwrap(), 443));
        host.add_listener("0.0.0.0:443".parse().unwrap());
        assert!(host.is_listener("203.0.113.9".parse().unwrap(), 443));
        assert!(host.is_listener("127.0.0.1".parse().unwrap(), 443));
        assert!(!host.is_listener("203.0.113.10".parse().unwrap(), 443), "not this host");
        assert!(!host.is_listener("203.0.113.9".parse().unwrap(), 444));
    }
}
