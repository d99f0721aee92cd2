//! Admission limits for new server connections: how many handshakes may run, how many connections
//! and handshakes one source address may have at once, how many new handshakes per second it may
//! start, and how often the endpoint may answer unknown packets with a stateless reset.
//!
//! Everything here is bounded whatever the peers do: per-source state lives in a fixed table of rate
//! buckets indexed by a keyed hash of the address (a collision only makes two sources share a budget),
//! and connection (or handshake) counts per source only exist for sources that have one.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;

pub(crate) use crate::share::source_key;
use std::sync::Mutex;
use std::time::Instant;

/// A token-bucket rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate.
    pub per_second: f64,
    /// Largest burst.
    pub burst: f64,
}

/// One token bucket. `tokens` is refilled lazily from the elapsed time.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self { tokens: limit.burst, updated: now }
    }

    fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A single global token bucket (the stateless-reset budget).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
    bucket: Bucket,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self { limit, bucket: Bucket::full(limit, Instant::now()) }
    }

    /// Spends one token if there is one.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        self.bucket.take(self.limit, now)
    }
}

/// Per-source handshake rate buckets: a fixed table, so memory does not depend on how many addresses
/// (real or spoofed) send Initials.
const SOURCE_BUCKETS: usize = 4096;

#[derive(Debug)]
pub(crate) struct SourceRates {
    limit: RateLimit,
    buckets: Mutex<Vec<Bucket>>,
    hasher: foldhash::fast::RandomState,
}

impl SourceRates {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let now = Instant::now();
        Self {
            limit,
            buckets: Mutex::new(vec![Bucket::full(limit, now); SOURCE_BUCKETS]),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Whether `source` may start one more handshake now.
    pub(crate) fn allow(&self, source: IpAddr, now: Instant) -> bool {
        let slot = (self.hasher.hash_one(source_key(source)) as usize) % SOURCE_BUCKETS;
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        buckets[slot].take(self.limit, now)
    }
}

/// Live connections, or handshakes in flight, per source ([`source_key`]: IPv6 per /64), for sources
/// that have any. Bounded without a limit of its own: every entry is a live connection, and those are
/// capped by `max_connections`.
#[derive(Debug)]
pub(crate) struct SourceCounts {
    max_per_source: usize,
    live: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceCounts {
    pub(crate) fn new(max_per_source: usize) -> Self {
        Self { max_per_source, live: Mutex::new(HashMap::new()) }
    }

    /// Whether `source` already holds its maximum (a check without reserving: see [`try_add`](Self::try_add)).
    pub(crate) fn is_full(&self, source: IpAddr) -> bool {
        let live = self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        live.get(&source_key(source)).is_some_and(|count| *count >= self.max_per_source)
    }

    /// Counts one more from `source`, unless it already has its maximum.
    pub(crate) fn try_add(&self, source: IpAddr) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = live.entry(source_key(source)).or_insert(0);
        if *count >= self.max_per_source {
            return false;
        }
        *count += 1;
        true
    }

    /// One of `source`'s ended.
    pub(crate) fn remove(&self, source: IpAddr) {
        let mut live = self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let source = source_key(source);
        if let Some(count) = live.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                live.remove(&source);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.live.lock().map(|live| live.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn buckets_allow_bursts_then_refill_at_the_rate() {
        let limit = RateLimit { per_second: 10.0, burst: 3.0 };
        let start = Instant::now();
        let mut limiter = RateLimiter::new(limit);
        assert!((0..3).all(|_| limiter.allow(start)));
        assert!(!limiter.allow(start));
        assert!(limiter.allow(start + Duration::from_millis(100)), "one token after a tenth of a second");
        assert!(!limiter.allow(start + Duration::from_millis(100)));
        assert!((0..3).all(|_| limiter.allow(start + Duration::from_secs(60))), "refill stops at the burst");
        assert!(!limiter.allow(start + Duration::from_secs(60)));
    }

    #[test]
    fn sources_have_separate_budgets() {
        let rates = SourceRates::new(RateLimit { per_second: 1.0, burst: 2.0 });
        let now = Instant::now();
        let (first, second): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(rates.allow(first, now) && rates.allow(first, now));
        assert!(!rates.allow(first, now));
        // Unless they collide in the table, which is rare; the other source still has its budget here.
        assert!(rates.allow(second, now));
    }

    #[test]
    fn connection_counts_cap_per_source_and_forget_idle_sources() {
        let sources = SourceCounts::new(2);
        let source: IpAddr = "2001:db8::7".parse().unwrap();
        assert!(sources.try_add(source) && !sources.is_full(source) && sources.try_add(source));
        assert!(sources.is_full(source) && !sources.try_add(source));
        sources.remove(source);
        assert!(sources.try_add(source));
        sources.remove(source);
        sources.remove(source);
        assert_eq!(sources.tracked(), 0, "a source with no connection takes no memory");
        sources.remove(source);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let sources = SourceCounts::new(1);
        assert!(sources.try_add("2001:db8:1:2::1".parse().unwrap()));
        assert!(!sources.try_add("2001:db8:1:2:ffff::9".parse().unwrap()), "same /64, other address");
        assert!(sources.try_add("2001:db8:1:3::1".parse().unwrap()), "another /64");
        assert!(sources.try_add("192.0.2.1".parse().unwrap()));
        assert!(!sources.try_add("::ffff:192.0.2.1".parse().unwrap()), "the same IPv4 host, mapped");
        sources.remove("2001:db8:1:2:ffff::9".parse().unwrap());
        assert!(sources.try_add("2001:db8:1:2::5".parse().unwrap()), "the /64's slot came back");
    }
}
