//! What a DoQ server reports about itself: a leaf module, so that the server (which counts) and
//! `metrics` (which publishes) both read it without depending on each other.

/// What the server has done, counted since it started. Every query ends in exactly one of
/// `answered_upstream`, `answered_from_cache`, `servfail_timeout`, `servfail_upstream_error`,
/// `format_errors`, `not_implemented`, `refused_over_share`, `cancelled`, or a protocol error (or its
/// connection closing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections started. Connections refused because their address already had its maximum are
    /// counted by the endpoint: `EndpointStats::dropped(DropReason::SourceConnectionLimit)`.
    pub connections_accepted: u64,
    /// Complete query messages received.
    pub queries: u64,
    /// Queries answered with the upstream's answer.
    pub answered_upstream: u64,
    /// Queries answered from the cache.
    pub answered_from_cache: u64,
    /// Of the upstream answers, those fetched again over TCP because the UDP answer was truncated.
    pub truncated_retried_over_tcp: u64,
    /// Queries answered SERVFAIL because the upstream did not answer in time.
    pub servfail_timeout: u64,
    /// Queries answered SERVFAIL because the upstream refused or sent garbage.
    pub servfail_upstream_error: u64,
    /// Queries answered FORMERR.
    pub format_errors: u64,
    /// Queries answered NOTIMP.
    pub not_implemented: u64,
    /// Queries the client cancelled before the answer was sent.
    pub cancelled: u64,
    /// Connections closed with DOQ_PROTOCOL_ERROR.
    pub protocol_errors: u64,
    /// Answers padded because the query was.
    pub padded_answers: u64,
    /// Upstream datagrams ignored because they did not answer the query they arrived for.
    pub upstream_datagrams_ignored: u64,
    /// Query streams reset (DOQ_PROTOCOL_ERROR) because the query did not arrive whole in time.
    pub read_timeouts: u64,
    /// Query streams reset with DOQ_INTERNAL_ERROR because the answer could not be sent (larger
    /// than a DNS message may be).
    pub internal_errors: u64,
    /// Queries answered REFUSED because their address (IPv6: /64) already had its share of upstream
    /// queries in flight over all its connections (`max_upstream_per_source`).
    pub refused_over_share: u64,
    /// Cached answers evicted, closest to expiry first, to keep the cache within its byte budget.
    pub cache_evictions: u64,
    /// Answers not cached because one would take more than 1/16 of the cache's byte budget.
    pub cache_too_large: u64,
}
