//! # quiver-masque
//!
//! MASQUE CONNECT-UDP (RFC 9298) over HTTP/3 on [`quiver_h3`]: a [`Proxy`] and a client
//! ([`MasqueClient`], [`UdpTunnel`]).
//!
//! A tunnel is an extended CONNECT request (`:protocol` `connect-udp`) whose path names the target by
//! a URI template ([`UriTemplate`], by default `/.well-known/masque/udp/{target_host}/{target_port}/`).
//! Once the proxy answers 2xx, UDP payloads travel both ways as HTTP Datagrams (RFC 9297) whose
//! payload is a context ID (a QUIC varint) followed by the UDP payload; context 0 is the only one
//! defined, others are dropped and counted. When the connection has no QUIC datagrams, or the peer's
//! SETTINGS did not enable HTTP Datagrams (RFC 9297 §2.1.1), the same payloads travel as DATAGRAM
//! capsules on the request stream. Payloads that do not fit the path are
//! dropped and counted, never truncated.
//!
//! The proxy never lets a tunnel lead back into its own host: special-purpose ranges and every
//! address of a local interface need an explicit IP/CIDR rule ([`TargetPolicy`]), and its own
//! listening sockets are refused always. Each connection and each client address (IPv6 per /64) gets
//! a bounded share of the proxy's tunnels and name lookups ([`ProxyConfigBuilder`]).
//!
//! ## Proxy
//! ```no_run
//! use quiver_masque::{Proxy, ProxyConfig, TargetPolicy};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::builder().policy(TargetPolicy::parse(&["*:53", "127.0.0.1/32:5353"])?).build()?;
//! let quic = quiver_masque::proxy_server_config(&config).self_signed(["localhost"]).build()?;
//! let endpoint = quiver::Endpoint::server("127.0.0.1:4433".parse()?, quic)?;
//! Proxy::new(config).serve(endpoint).await;
//! # Ok(()) }
//! ```
//!
//! ## Client
//! ```no_run
//! use quiver_masque::MasqueClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = quiver_masque::client_config().build()?; // verifies the proxy's certificate
//! let client = MasqueClient::new("https://proxy.example:443", config)?;
//! let mut tunnel = client.open(&"dns.example:53".parse()?).await?;
//! tunnel.send(b"\x12\x34...a DNS query...")?;
//! let answer = tunnel.recv().await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod body;
mod client;
mod forward;
pub mod ip;
pub mod metrics;
mod network;
pub mod policy;
mod proxy;
mod resolve;
pub mod target;
pub mod template;
mod this_host;

pub use crate::body::{ChannelBody, TunnelAborted};
pub use crate::client::{ClientError, MasqueClient, TunnelError, UdpTunnel, client_config};
pub use crate::forward::{
    DEFAULT_FLOW_IDLE_TIMEOUT, DROP_REPORT_INTERVAL, ForwardError, ForwardEvent, MAX_LOCAL_FLOWS, UdpForwarder,
};
pub use crate::policy::{AllowRule, Denied, RuleError, TargetPolicy};
pub use crate::proxy::{
    DEFAULT_DNS_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LOOKUPS_PER_CONNECTION, DEFAULT_MAX_LOOKUPS_PER_SOURCE,
    DEFAULT_MAX_TUNNELS, DEFAULT_MAX_TUNNELS_PER_CONNECTION, DEFAULT_MAX_TUNNELS_PER_SOURCE, Proxy, ProxyConfig,
    ProxyConfigBuilder, ProxyConfigError, ProxyStats, proxy_server_config,
};
pub use crate::target::{Target, TargetError, TargetHost};
pub use crate::template::{DEFAULT_TEMPLATE, MatchError, TemplateError, UriTemplate};

use quiver_h3::datagram::{get_varint, put_varint};

/// The `:protocol` of a CONNECT-UDP request.
pub const CONNECT_UDP: &str = "connect-udp";

/// The context ID of UDP payloads (RFC 9298 §4).
pub const CONTEXT_UDP_PAYLOAD: u64 = 0;

/// Largest UDP payload a tunnel carries: a UDP datagram over IPv6 without jumbograms (65535 bytes
/// minus the 8-byte UDP header). Over IPv4 the target's socket refuses more than 65507.
pub const MAX_UDP_PAYLOAD: usize = 65_527;

/// Largest capsule either side accepts: a whole UDP payload with its context ID. Bounds the capsule
/// decoder's buffer per tunnel.
pub(crate) const MAX_CAPSULE_BYTES: usize = MAX_UDP_PAYLOAD + 8;

/// Splits an HTTP Datagram payload into its context ID and the rest; `None` if it does not start with
/// a complete varint.
pub fn split_context(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (context, length) = get_varint(payload)?;
    Some((context, &payload[length..]))
}

/// An HTTP Datagram payload carrying `payload` (a UDP payload, or an IP packet for CONNECT-IP) with
/// context ID 0.
pub(crate) fn context_zero_datagram(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 1);
    put_varint(&mut frame, CONTEXT_UDP_PAYLOAD);
    frame.extend_from_slice(payload);
    frame
}

/// The next datagram of a flow; never resolves without one (the capsule-only case), so it can sit in a
/// `select!` beside the stream.
///
/// # Cancel safety
/// Cancel safe.
pub(crate) async fn next_datagram(flow: &mut Option<quiver_h3::DatagramFlow>) -> Option<bytes::Bytes> {
    match flow {
        Some(flow) => flow.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether a `Capsule-Protocol` field value is the structured-field boolean true (`?1`, parameters
/// allowed; RFC 9297 §3.4).
pub(crate) fn capsule_protocol_enabled(value: &[u8]) -> bool {
    let item = value.split(|byte| *byte == b';').next().unwrap_or_default();
    item.trim_ascii() == b"?1"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_ids_split_off() {
        assert_eq!(split_context(&context_zero_datagram(b"abc")), Some((0, &b"abc"[..])));
        assert_eq!(split_context(&context_zero_datagram(b"")), Some((0, &b""[..])));
        assert_eq!(split_context(&[0x40, 0x02, 9]), Some((2, &[9u8][..])), "two-byte varint");
        assert_eq!(split_context(&[]), None);
        assert_eq!(split_context(&[0x40]), None, "truncated varint");
    }

    #[test]
    fn capsule_protocol_values() {
        for yes in [&b"?1"[..], b" ?1 ", b"?1;a=b"] {
            assert!(capsule_protocol_enabled(yes), "{yes:?}");
        }
        for no in [&b"?0"[..], b"1", b"", b"?1x", b"true"] {
            assert!(!capsule_protocol_enabled(no), "{no:?}");
        }
    }
}
