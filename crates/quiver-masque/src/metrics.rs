//! MASQUE proxy metrics through the [`metrics`] facade, published from the proxy's counters
//! ([`ProxyStats`]) on demand: relaying a datagram costs nothing beyond the counters it already
//! updates. Without an installed recorder every call is a no-op. The table of every metric is in
//! `docs/metrics.md`.
//!
//! ```no_run
//! # fn demo(proxy: &quiver_masque::Proxy) {
//! quiver_masque::metrics::describe();
//! // Before each scrape:
//! quiver_masque::metrics::publish(&proxy.stats());
//! # }
//! ```

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

use crate::ProxyStats;

/// Counter: tunnels opened (answered 2xx).
pub const TUNNELS_OPENED: &str = "quiver_masque_tunnels_opened_total";
/// Gauge: tunnels open now.
pub const TUNNELS_ACTIVE: &str = "quiver_masque_tunnels_active";
/// Counter: tunnels closed because they were idle.
pub const TUNNELS_IDLE_CLOSED: &str = "quiver_masque_tunnels_idle_closed_total";
/// Counter, label `reason` (`unauthorized`, `malformed`, `not_found`, `policy`, `limit`, `resolve`,
/// `unreachable`): tunnel requests refused.
pub const TUNNELS_REFUSED: &str = "quiver_masque_tunnels_refused_total";
/// Counter, label `direction` (`to_target`, `from_target`): payloads relayed.
pub const DATAGRAMS: &str = "quiver_masque_datagrams_total";
/// Counter, label `direction`: bytes of those payloads.
pub const BYTES: &str = "quiver_masque_bytes_total";
/// Counter, label `reason` (`unknown_context`, `too_large`, `queue_full`, `malformed`, `send_failed`,
/// `not_routed`): payloads dropped.
pub const DATAGRAMS_DROPPED: &str = "quiver_masque_datagrams_dropped_total";

/// Registers the description and unit of every metric above with the installed recorder.
pub fn describe() {
    describe_counter!(TUNNELS_OPENED, Unit::Count, "MASQUE tunnels opened");
    describe_gauge!(TUNNELS_ACTIVE, Unit::Count, "MASQUE tunnels open now");
    describe_counter!(TUNNELS_IDLE_CLOSED, Unit::Count, "MASQUE tunnels closed for idleness");
    describe_counter!(TUNNELS_REFUSED, Unit::Count, "MASQUE tunnel requests refused, by reason");
    describe_counter!(DATAGRAMS, Unit::Count, "Payloads relayed, by direction");
    describe_counter!(BYTES, Unit::Bytes, "Bytes of payloads relayed, by direction");
    describe_counter!(DATAGRAMS_DROPPED, Unit::Count, "Payloads dropped, by reason");
}

/// Copies a proxy's counters into the installed recorder (absolute values).
pub fn publish(stats: &ProxyStats) {
    counter!(TUNNELS_OPENED).absolute(stats.tunnels_opened);
    gauge!(TUNNELS_ACTIVE).set(stats.tunnels_active as f64);
    counter!(TUNNELS_IDLE_CLOSED).absolute(stats.tunnels_idle_closed);
    let refused = [
        ("unauthorized", stats.refused_unauthorized),
        ("malformed", stats.refused_malformed),
        ("not_found", stats.refused_not_found),
        ("policy", stats.refused_policy),
        ("limit", stats.refused_limit),
        ("source_limit", stats.refused_source_limit),
        ("resolve", stats.refused_resolve),
        ("dns_busy", stats.refused_dns_busy),
        ("dns_share", stats.refused_dns_share),
        ("unreachable", stats.refused_unreachable),
    ];
    for (reason, count) in refused {
        counter!(TUNNELS_REFUSED, "reason" => reason).absolute(count);
    }
    counter!(DATAGRAMS, "direction" => "to_target").absolute(stats.datagrams_to_target);
    counter!(DATAGRAMS, "direction" => "from_target").absolute(stats.datagrams_from_target);
    counter!(BYTES, "direction" => "to_target").absolute(stats.bytes_to_target);
    counter!(BYTES, "direction" => "from_target").absolute(stats.bytes_from_target);
    let dropped = [
        ("unknown_context", stats.dropped_unknown_context),
        ("too_large", stats.dropped_too_large),
        ("queue_full", stats.dropped_queue_full),
        ("malformed", stats.dropped_malformed),
        ("send_failed", stats.dropped_send_failed),
        ("not_routed", stats.dropped_not_routed),
        ("policy", stats.dropped_policy),
    ];
    for (reason, count) in dropped {
        counter!(DATAGRAMS_DROPPED, "reason" => reason).absolute(count);
    }
}
