//! The proxy's side of CONNECT-IP: one TUN device shared by every IP tunnel, an address pool, and
//! the routes clients may send to. Each tunnel leases one address; packets the kernel routes to the
//! TUN device go to the tunnel that holds their destination address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::capsule::{IpNetwork, IpRange, max_prefix};
use super::packet::inspect;
use super::tun::TunDevice;
use crate::policy::TargetPolicy;
use crate::this_host::ThisHost;

/// Packets queued from the TUN device towards one tunnel before more are dropped: a few
/// milliseconds of a fast flow, at most 384 KiB of 1500-byte packets.
const TUNNEL_PACKET_QUEUE: usize = 256;
/// Addresses tried when looking for a free one in a large (IPv6) pool before giving up.
const MAX_ADDRESS_PROBES: u128 = 65_536;
/// Largest packet read from the TUN device (its MTU is at most this).
const MAX_PACKET_BYTES: usize = 65_535;

/// What an [`IpGateway`] hands out and allows.
#[derive(Debug, Clone)]
pub struct IpGatewayConfig {
    /// The TUN interface's network: its first host address is the interface's own (the gateway);
    /// each tunnel leases one of the others.
    pub pool: IpNetwork,
    /// Destinations tunnels may send to, advertised to clients as routes (any protocol).
    pub routes: Vec<IpNetwork>,
}

/// Why a gateway configuration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpGatewayError {
    /// The pool has no room for a gateway and at least one client.
    #[error("address pool {0} is too small: it needs room for the gateway and a client (at most /30 or /126)")]
    PoolTooSmall(IpNetwork),
    /// Routes must have the pool's address family (one family per gateway).
    #[error("route {route} is not of the pool's address family ({pool})")]
    MixedFamilies {
        /// The route.
        route: IpNetwork,
        /// The pool.
        pool: IpNetwork,
    },
}

/// Counters of the shared TUN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpGatewayStats {
    /// Packets read from the TUN device.
    pub packets_from_tun: u64,
    /// Packets for an address no tunnel holds, dropped.
    pub dropped_no_tunnel: u64,
    /// Packets dropped because their tunnel's queue was full.
    pub dropped_queue_full: u64,
    /// Packets read that were not valid IP packets, dropped.
    pub dropped_malformed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    packets_from_tun: AtomicU64,
    dropped_no_tunnel: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_malformed: AtomicU64,
}

type Leases = Arc<Mutex<HashMap<IpAddr, mpsc::Sender<Bytes>>>>;

/// The shared TUN device, address pool and routes of a CONNECT-IP proxy.
pub struct IpGateway {
    tun: Arc<TunDevice>,
    pool: IpNetwork,
    routes: Vec<IpRange>,
    leases: Leases,
    counters: Arc<Counters>,
    /// Set when reading the TUN device failed: no new leases, and every tunnel has been told.
    stopped: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for IpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpGateway")
            .field("tun", &self.tun.name())
            .field("pool", &self.pool)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl Drop for IpGateway {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl IpGateway {
    /// Starts reading `tun` (which should already have the pool's first host address and be up) and
    /// routing what it reads to tunnels. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// [`IpGatewayError`] for a pool without room or routes of another family.
    pub fn start(tun: TunDevice, config: IpGatewayConfig) -> Result<Arc<Self>, IpGatewayError> {
        let pool = config.pool;
        let host_bits = u32::from(max_prefix(pool.address) - pool.prefix);
        if host_bits < 2 {
            return Err(IpGatewayError::PoolTooSmall(pool));
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            if route.address.is_ipv4() != pool.address.is_ipv4() {
                return Err(IpGatewayError::MixedFamilies { route: *route, pool });
            }
            routes.push(IpRange { start: route.first(), end: route.last(), protocol: 0 });
        }
        // RFC 9484 §4.7.3 wants ranges sorted and disjoint: merge what overlaps.
        routes.sort_by_key(|range| range.start);
        let mut merged: Vec<IpRange> = Vec::with_capacity(routes.len());
        for range in routes {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        let tun = Arc::new(tun);
        let leases: Leases = Arc::default();
        let counters = Arc::new(Counters::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_tun(tun.clone(), leases.clone(), counters.clone(), stopped.clone()));
        Ok(Arc::new(Self { tun, pool, routes: merged, leases, counters, stopped, reader }))
    }

    /// The TUN interface's name.
    pub fn tun_name(&self) -> &str {
        self.tun.name()
    }

    /// The gateway's own address: the pool's first host address, which the TUN device should have.
    pub fn gateway_address(&self) -> IpAddr {
        nth_address(self.pool, 1)
    }

    /// Whether `address` is the pool's network address or (IPv4) its broadcast address. Neither is
    /// ever leased, and no client may send to them whatever the policy says: the kernel delivers
    /// both to this host (a directed broadcast to every address on the TUN link).
    pub fn is_network_or_broadcast(&self, address: IpAddr) -> bool {
        network_or_broadcast(self.pool, address)
    }

    /// The pool.
    pub fn pool(&self) -> IpNetwork {
        self.pool
    }

    /// The routes advertised to clients.
    pub fn routes(&self) -> &[IpRange] {
        &self.routes
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> IpGatewayStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        IpGatewayStats {
            packets_from_tun: load(&self.counters.packets_from_tun),
            dropped_no_tunnel: load(&self.counters.dropped_no_tunnel),
            dropped_queue_full: load(&self.counters.dropped_queue_full),
            dropped_malformed: load(&self.counters.dropped_malformed),
        }
    }

    /// Whether the gateway stopped because its TUN device failed (then it leases nothing).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Leases a free address, or `None` when the pool is exhausted or the gateway stopped.
    pub(crate) fn lease(self: &Arc<Self>) -> Option<IpLease> {
        let mut leases = self.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.is_stopped() {
            return None;
        }
        let host_bits = u32::from(max_prefix(self.pool.address) - self.pool.prefix);
        // Host addresses 2 ..= last - 1: not the network, the gateway, or (IPv4) broadcast.
        let usable = 1u128.checked_shl(host_bits).map_or(u128::MAX, |size| size - 1).saturating_sub(2);
        let address = (2..2 + usable.min(MAX_ADDRESS_PROBES))
            .map(|index| nth_address(self.pool, index))
            .find(|address| !leases.contains_key(address))?;
        let (sender, packets) = mpsc::channel(TUNNEL_PACKET_QUEUE);
        leases.insert(address, sender);
        Some(IpLease { gateway: self.clone(), address, packets })
    }
}

/// Whether `address` is `pool`'s network address or (IPv4) its broadcast address.
fn network_or_broadcast(pool: IpNetwork, address: IpAddr) -> bool {
    let address = address.to_canonical();
    address == pool.first() || (address.is_ipv4() && address == pool.last())
}

/// The `index`th address of `pool` (0 is the network address).
fn nth_address(pool: IpNetwork, index: u128) -> IpAddr {
    match pool.first() {
        IpAddr::V4(base) => IpAddr::V4((u32::from(base).wrapping_add(index as u32)).into()),
        IpAddr::V6(base) => IpAddr::V6((u128::from(base).wrapping_add(index)).into()),
    }
}

/// Routes packets from the TUN device to the tunnels holding their destination address.
async fn read_tun(tun: Arc<TunDevice>, leases: Leases, counters: Arc<Counters>, stopped: Arc<AtomicBool>) {
    let mut buffer = vec![0u8; MAX_PACKET_BYTES];
    loop {
        let length = match tun.recv(&mut buffer).await {
            Ok(length) => length,
            Err(err) => {
                tracing::warn!(tun = tun.name(), error = %err, "reading the TUN device failed; CONNECT-IP stops");
                // Dropping every tunnel's sender ends its relay (GatewayStopped) instead of leaving it
                // waiting for packets that will never come; the flag (set under the same lock that
                // `lease` takes) keeps new tunnels from starting.
                let mut leases = leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                stopped.store(true, Ordering::Relaxed);
                leases.clear();
                return;
            }
        };
        counters.packets_from_tun.fetch_add(1, Ordering::Relaxed);
        let packet = &buffer[..length];
        let Ok(header) = inspect(packet) else {
            counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let sender = leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&header.destination).cloned();
        match sender.map(|sender| sender.try_send(Bytes::copy_from_slice(packet))) {
            Some(Ok(())) => {}
            Some(Err(_)) => {
                counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                counters.dropped_no_tunnel.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One tunnel's address; returned to the pool on drop.
pub(crate) struct IpLease {
    gateway: Arc<IpGateway>,
    pub(crate) address: IpAddr,
    /// Packets from the TUN device for `address`.
    pub(crate) packets: mpsc::Receiver<Bytes>,
}

/// Why a packet from a client was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForwardRefused {
    /// Not an IP packet.
    Malformed,
    /// Its source is not the tunnel's address, or its destination is not in the routes.
    Spoofed,
    /// The target policy denies its destination.
    Denied,
    /// The TUN device's queue is full.
    QueueFull,
    /// The kernel refused it (for example larger than the MTU).
    Failed,
}

impl IpLease {
    pub(crate) fn gateway(&self) -> &Arc<IpGateway> {
        &self.gateway
    }

    /// Hands a client's packet to the kernel if its addresses are ones this tunnel may use and
    /// `policy` allows its destination.
    ///
    /// Destinations in the pool are other clients of this gateway (client-to-client traffic, when the
    /// routes cover the pool, as they do by default): the kernel sends them straight back through
    /// the TUN device to the tunnel that holds the address. The gateway's own address is this host:
    /// only an IP or CIDR rule naming it opens it. The pool's network and broadcast addresses are
    /// never a destination (they reach this host too). Every other destination must pass `policy`
    /// like a CONNECT-UDP target (special-purpose ranges and the addresses of `host` need an
    /// explicit rule; the proxy's listening sockets are closed always).
    pub(crate) fn forward(&self, packet: &[u8], policy: &TargetPolicy, host: &ThisHost) -> Result<(), ForwardRefused> {
        let header = inspect(packet).map_err(|_| ForwardRefused::Malformed)?;
        let routed = self.gateway.routes.iter().any(|range| range.allows(header.destination, header.protocol));
        if header.source != self.address || !routed {
            return Err(ForwardRefused::Spoofed);
        }
        let destination = header.destination;
        let allowed = if self.gateway.is_network_or_broadcast(destination) {
            false
        } else if destination == self.gateway.gateway_address() {
            policy.check_explicit(destination, header.destination_port).is_ok()
        } else {
            self.gateway.pool.contains(destination)
                || policy.check_packet_on(host, destination, header.destination_port).is_ok()
        };
        if !allowed {
            return Err(ForwardRefused::Denied);
        }
        self.gateway.tun.try_send(packet).map_err(|err| match err.kind() {
            std::io::ErrorKind::WouldBlock => ForwardRefused::QueueFull,
            _ => ForwardRefused::Failed,
        })
    }
}

impl Drop for IpLease {
    fn drop(&mut self) {
        self.gateway.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_broadcast_addresses_are_never_leased() {
        let v4: IpNetwork = "10.89.0.0/30".parse().unwrap();
        let v6: IpNetwork = "fd00:89::/126".parse().unwrap();
        for (pool, reserved, leasable) in
            [(v4, ["10.89.0.0", "10.89.0.3"], "10.89.0.2"), (v6, ["fd00:89::", "fd00:89::"], "fd00:89::2")]
        {
            for address in reserved {
                assert!(network_or_broadcast(pool, address.parse().unwrap()), "{address}");
            }
            assert!(!network_or_broadcast(pool, leasable.parse().unwrap()));
            assert!(!network_or_broadcast(pool, "fd00:89::3".parse().unwrap()), "IPv6 has no broadcast");
            // The lease range (2 ..= last - 1) never reaches them.
            assert_eq!(nth_address(pool, 2), leasable.parse::<IpAddr>().unwrap());
        }
    }

    #[test]
    fn addresses_count_from_the_network_address() {
        let pool: IpNetwork = "10.89.0.0/24".parse().unwrap();
        assert_eq!(nth_address(pool, 1), "10.89.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(nth_address(pool, 254), "10.89.0.254".parse::<IpAddr>().unwrap());
        let v6: IpNetwork = "fd00:89::/64".parse().unwrap();
        assert_eq!(nth_address(v6, 2), "fd00:89::2".parse::<IpAddr>().unwrap());
    }
}
