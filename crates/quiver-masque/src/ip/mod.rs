//! CONNECT-IP (RFC 9484): IP packets through an HTTP/3 proxy.
//!
//! A client asks with an extended CONNECT (`:protocol` `connect-ip`); the proxy leases it one address
//! of its [`IpGateway`]'s pool (ADDRESS_ASSIGN), advertises the routes it may use
//! (ROUTE_ADVERTISEMENT), and relays whole IP packets as HTTP Datagrams with context ID 0 between
//! the client and a TUN device, where the kernel routes them. A packet whose source is not the
//! client's address, whose destination is outside the routes, or whose destination the proxy's
//! [`TargetPolicy`](crate::TargetPolicy) denies (the gateway's own address always needs an explicit
//! IP/CIDR rule; other clients' addresses in the pool pass), is dropped and counted.
//!
//! Scope: the full-tunnel request (`/.well-known/masque/ip/*/*/`); one address per tunnel; one
//! address family per gateway. The proxy does not send ICMP errors (for example Packet Too Big).

pub mod capsule;
pub mod gateway;
pub mod packet;
pub mod tun;

pub use capsule::{AddressEntry, IpCapsule, IpNetwork, IpRange, MalformedIpCapsule};
pub use gateway::{IpGateway, IpGatewayConfig, IpGatewayError, IpGatewayStats};
pub use tun::TunDevice;

use bytes::Bytes;

use crate::TunnelError;
use crate::client::{MasqueClient, StreamEvent, TunnelStream};

/// The `:protocol` of a CONNECT-IP request.
pub const CONNECT_IP: &str = "connect-ip";

/// The full-tunnel request path of the default CONNECT-IP template
/// (`/.well-known/masque/ip/{target}/{ipproto}/` with both variables `*`).
pub const IP_TUNNEL_PATH: &str = "/.well-known/masque/ip/*/*/";

/// Whether `path` asks for the full tunnel (`*` may come percent-encoded as `%2A`).
pub(crate) fn is_full_tunnel_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/.well-known/masque/ip/") else { return false };
    let mut parts = rest.split('/');
    let is_star = |part: Option<&str>| part.is_some_and(|part| part == "*" || part.eq_ignore_ascii_case("%2A"));
    is_star(parts.next()) && is_star(parts.next()) && parts.next() == Some("") && parts.next().is_none()
}

impl MasqueClient {
    /// Opens a CONNECT-IP tunnel and waits until the proxy has assigned an address and advertised
    /// routes.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`TunnelError::Malformed`] when the proxy's capsules are malformed.
    pub async fn open_ip(&self) -> Result<IpTunnel, TunnelError> {
        self.with_timeout(async {
            let stream = self.open_stream(IP_TUNNEL_PATH, CONNECT_IP, "an IP tunnel").await?;
            let mut tunnel = IpTunnel { stream, assigned: Vec::new(), routes: Vec::new() };
            let (mut assigned, mut routed) = (false, false);
            while !(assigned && routed) {
                // Packets before the address is known cannot be for us: they are dropped.
                if let StreamEvent::Capsule(capsule) = tunnel.stream.recv().await? {
                    match tunnel.apply(&capsule)? {
                        Some(IpCapsule::AddressAssign(_)) => assigned = true,
                        Some(IpCapsule::RouteAdvertisement(_)) => routed = true,
                        _ => {}
                    }
                }
            }
            Ok(tunnel)
        })
        .await
    }
}

/// A CONNECT-IP tunnel: send IP packets from [`assigned`](Self::assigned) addresses to destinations
/// in [`routes`](Self::routes), receive the packets for those addresses.
#[derive(Debug)]
pub struct IpTunnel {
    stream: TunnelStream,
    assigned: Vec<IpNetwork>,
    routes: Vec<IpRange>,
}

impl IpTunnel {
    /// The addresses the proxy assigned (the latest ADDRESS_ASSIGN).
    pub fn assigned(&self) -> &[IpNetwork] {
        &self.assigned
    }

    /// The destinations the proxy routes (the latest ROUTE_ADVERTISEMENT).
    pub fn routes(&self) -> &[IpRange] {
        &self.routes
    }

    /// Whether packets travel as QUIC datagrams (else as capsules on the stream).
    pub fn uses_quic_datagrams(&self) -> bool {
        self.stream.uses_quic_datagrams()
    }

    /// The largest packet [`send`](Self::send) accepts now.
    pub fn max_packet(&self) -> usize {
        self.stream.max_payload()
    }

    /// Closes the tunnel and waits until the proxy has closed it too (its address is then back in
    /// the pool). Bound it with a timeout if the proxy may not answer.
    ///
    /// # Cancel safety
    /// Cancel safe: the tunnel is closing either way.
    pub async fn close(self) {
        self.stream.close().await;
    }

    /// Sends one IP packet. Never waits.
    ///
    /// # Errors
    /// As [`UdpTunnel::send`](crate::UdpTunnel::send).
    pub fn send(&self, packet: &[u8]) -> Result<(), TunnelError> {
        self.stream.send(packet)
    }

    /// The next IP packet; address and route updates from the proxy are applied on the way.
    ///
    /// # Errors
    /// As [`UdpTunnel::recv`](crate::UdpTunnel::recv).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Result<Bytes, TunnelError> {
        loop {
            match self.stream.recv().await? {
                StreamEvent::Payload(packet) => return Ok(packet),
                StreamEvent::Capsule(capsule) => {
                    self.apply(&capsule)?;
                }
            }
        }
    }

    fn apply(&mut self, capsule: &quiver_h3::datagram::Capsule) -> Result<Option<IpCapsule>, TunnelError> {
        let decoded = IpCapsule::decode(capsule.capsule_type, &capsule.value)
            .map_err(|err| TunnelError::Malformed(err.to_string()))?;
        match &decoded {
            Some(IpCapsule::AddressAssign(entries)) => {
                self.assigned = entries.iter().map(|entry| entry.network).collect();
            }
            Some(IpCapsule::RouteAdvertisement(ranges)) => self.routes.clone_from(ranges),
            _ => {}
        }
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_full_tunnel_path_is_served() {
        for path in [IP_TUNNEL_PATH, "/.well-known/masque/ip/%2A/%2a/"] {
            assert!(is_full_tunnel_path(path), "{path}");
        }
        for path in [
            "/.well-known/masque/ip/*/*",
            "/.well-known/masque/ip/10.0.0.0%2F8/*/",
            "/.well-known/masque/ip/*/17/",
            "/x/*/*/",
            "/.well-known/masque/ip/*/*/x",
        ] {
            assert!(!is_full_tunnel_path(path), "{path}");
        }
    }
}
