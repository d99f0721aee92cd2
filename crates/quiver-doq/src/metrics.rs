//! DoQ server metrics through the [`metrics`] facade: answers by response code, counted as they are
//! sent, and the server's other counters ([`ServerStats`]) published on demand.
//!
//! Install the recorder before building the [`DoqServer`](crate::DoqServer): its per-rcode handles
//! are resolved then, so an answer costs one atomic add. Without a recorder every call is a no-op.
//! The table of every metric is in `docs/metrics.md`.
//!
//! ```no_run
//! # fn demo(server: &quiver_doq::DoqServer) {
//! quiver_doq::metrics::describe();
//! // Before each scrape:
//! quiver_doq::metrics::publish(&server.stats());
//! # }
//! ```

use metrics::{Counter, Unit, counter, describe_counter};

use crate::stats::ServerStats;

/// Counter, label `rcode` (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...): answers sent.
pub const QUERIES: &str = "quiver_doq_queries_total";
/// Counter, label `source` (`upstream`, `cache`, `local`): where answers came from (`local`: SERVFAIL,
/// FORMERR, NOTIMP or REFUSED made by the server itself).
pub const ANSWERS: &str = "quiver_doq_answers_total";
/// Counter: DoQ connections started.
pub const CONNECTIONS_ACCEPTED: &str = "quiver_doq_connections_accepted_total";
/// Counter, label `reason` (`timeout`, `upstream_error`): queries answered SERVFAIL.
pub const SERVFAILS: &str = "quiver_doq_servfail_total";
/// Counter: queries the client cancelled.
pub const CANCELLED: &str = "quiver_doq_queries_cancelled_total";
/// Counter: connections closed with DOQ_PROTOCOL_ERROR.
pub const PROTOCOL_ERRORS: &str = "quiver_doq_protocol_errors_total";
/// Counter: queries answered REFUSED because their address was over its share of upstream queries
/// in flight.
pub const REFUSED_OVER_SHARE: &str = "quiver_doq_refused_over_share_total";
/// Counter, label `reason` (`evicted`, `too_large`): answers the cache let go to stay within its
/// byte budget (`evicted`) or did not keep because one was over 1/16 of it (`too_large`).
pub const CACHE_DROPPED: &str = "quiver_doq_cache_dropped_total";

/// DNS response codes 0 to 15 (the header's four bits) by their IANA mnemonics.
const RCODE_NAMES: [&str; 16] = [
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
    "DSOTYPENI",
    "RCODE12",
    "RCODE13",
    "RCODE14",
    "RCODE15",
];

/// Registers the description and unit of every metric above with the installed recorder.
pub fn describe() {
    describe_counter!(QUERIES, Unit::Count, "DoQ answers sent, by response code");
    describe_counter!(ANSWERS, Unit::Count, "DoQ answers by where they came from");
    describe_counter!(CONNECTIONS_ACCEPTED, Unit::Count, "DoQ connections started");
    describe_counter!(SERVFAILS, Unit::Count, "Queries answered SERVFAIL, by reason");
    describe_counter!(CANCELLED, Unit::Count, "Queries the client cancelled");
    describe_counter!(PROTOCOL_ERRORS, Unit::Count, "Connections closed with DOQ_PROTOCOL_ERROR");
    describe_counter!(REFUSED_OVER_SHARE, Unit::Count, "Queries refused: the client was over its upstream share");
    describe_counter!(CACHE_DROPPED, Unit::Count, "Answers evicted from the cache or too large to keep");
}

/// Copies a server's counters into the installed recorder (absolute values).
pub fn publish(stats: &ServerStats) {
    counter!(ANSWERS, "source" => "upstream").absolute(stats.answered_upstream);
    counter!(ANSWERS, "source" => "cache").absolute(stats.answered_from_cache);
    let local = stats.servfail_timeout
        + stats.servfail_upstream_error
        + stats.format_errors
        + stats.not_implemented
        + stats.refused_over_share;
    counter!(ANSWERS, "source" => "local").absolute(local);
    counter!(CONNECTIONS_ACCEPTED).absolute(stats.connections_accepted);
    counter!(SERVFAILS, "reason" => "timeout").absolute(stats.servfail_timeout);
    counter!(SERVFAILS, "reason" => "upstream_error").absolute(stats.servfail_upstream_error);
    counter!(CANCELLED).absolute(stats.cancelled);
    counter!(PROTOCOL_ERRORS).absolute(stats.protocol_errors);
    counter!(REFUSED_OVER_SHARE).absolute(stats.refused_over_share);
    counter!(CACHE_DROPPED, "reason" => "evicted").absolute(stats.cache_evictions);
    counter!(CACHE_DROPPED, "reason" => "too_large").absolute(stats.cache_too_large);
}

/// One counter per response code, resolved when the server is built.
pub(crate) struct RcodeCounters([Counter; 16]);

impl RcodeCounters {
    pub(crate) fn new() -> Self {
        Self(RCODE_NAMES.map(|name| counter!(QUERIES, "rcode" => name)))
    }

    /// Counts an answer by the response code in its header (a message too short to have one is not
    /// an answer we send).
    pub(crate) fn count(&self, answer: &[u8]) {
        if let Some(flags) = answer.get(3) {
            self.0[usize::from(flags & 0x0f)].increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcode_names_follow_iana() {
        assert_eq!(RCODE_NAMES[0], "NOERROR");
        assert_eq!(RCODE_NAMES[2], "SERVFAIL");
        assert_eq!(RCODE_NAMES[3], "NXDOMAIN");
        assert_eq!(RCODE_NAMES[5], "REFUSED");
    }
}
