//! The proxy's counters: one atomic per outcome, read as a [`ProxyStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The proxy's counters since it started: every refused request and every dropped datagram
        /// ends in exactly one of them.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct ProxyStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> ProxyStats {
                ProxyStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Tunnels answered with 2xx.
    tunnels_opened,
    /// Tunnels open now.
    tunnels_active,
    /// Tunnels closed because they were idle.
    tunnels_idle_closed,
    /// Requests refused with 407 (missing or wrong token).
    refused_unauthorized,
    /// Requests refused with 400 (not CONNECT-UDP, no `Capsule-Protocol`, bad host or port).
    refused_malformed,
    /// Requests refused with 404 (the path is not an expansion of the template).
    refused_not_found,
    /// Requests refused with 403 (target policy).
    refused_policy,
    /// Requests refused with 429 or 503 (tunnel limits).
    refused_limit,
    /// Requests refused with 429 because the client's address (IPv6: its /64) already holds its
    /// share of tunnels over all its connections.
    refused_source_limit,
    /// Requests refused with 502 or 504 because the target name did not resolve.
    refused_resolve,
    /// Requests refused with 503 because every name lookup slot was taken (the resolver hangs).
    refused_dns_busy,
    /// Requests refused with 503 because their connection or address already had its share of name
    /// lookups in flight.
    refused_dns_share,
    /// Requests refused with 502 because no socket could be connected to the target.
    refused_unreachable,
    /// UDP payloads sent to targets (IP packets handed to the TUN device, for CONNECT-IP).
    datagrams_to_target,
    /// Bytes of those payloads.
    bytes_to_target,
    /// UDP payloads from targets (IP packets from the TUN device) relayed to clients.
    datagrams_from_target,
    /// Bytes of those payloads.
    bytes_from_target,
    /// Datagrams from clients with a context ID other than 0, dropped.
    dropped_unknown_context,
    /// Payloads larger than the client's path carries in one QUIC datagram, dropped.
    dropped_too_large,
    /// Payloads dropped because a queue was full (towards the client, or the target socket's buffer).
    dropped_queue_full,
    /// Datagrams or capsules from clients without a valid context ID, dropped.
    dropped_malformed,
    /// Payloads the target socket refused (for example after an ICMP port unreachable), dropped.
    dropped_send_failed,
    /// IP packets from clients with a source other than their address or a destination outside the
    /// routes, dropped (CONNECT-IP).
    dropped_not_routed,
    /// IP packets from clients to a destination the target policy denies, or to the pool's network
    /// or broadcast address, dropped (CONNECT-IP).
    dropped_policy,
}
