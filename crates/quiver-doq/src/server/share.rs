//! Each client's share of the server-wide upstream slots per source address (a count in a map), so
//! that one host with many connections cannot take every slot while other clients wait. (The
//! per-connection share is a semaphore the connection owns.)
//!
//! A query over its source's share is answered REFUSED at once instead of waiting: the source
//! already has more in flight than its share, over as many connections as it likes, and a queue
//! for it would be one more thing it could grow.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The key a source is counted by: IPv6 addresses per /64 (one host usually holds a whole /64, so
/// single addresses would multiply its share by 2^64), IPv4-mapped addresses as IPv4. The same
/// grouping as the endpoint's per-source limits (`quiver`'s `limits::source_key`, not public).
pub(crate) fn source_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

/// Upstream queries in flight per source ([`source_key`]), for sources that have any. The map needs
/// no limit of its own: an entry exists only while one of its queries holds its connection's share,
/// and those are bounded by the endpoint's connections times
/// [`max_upstream_per_connection`](super::DoqServerBuilder::max_upstream_per_connection).
pub(crate) struct SourceShares {
    max_per_source: usize,
    in_flight: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceShares {
    pub(crate) fn new(max_per_source: usize) -> Arc<Self> {
        Arc::new(Self { max_per_source, in_flight: Mutex::new(HashMap::new()) })
    }

    /// One more query from `source`, unless it already has its share in flight; the share is given
    /// back when the returned guard drops.
    pub(crate) fn try_take(self: &Arc<Self>, source: IpAddr) -> Option<SourceShare> {
        let key = source_key(source);
        let mut in_flight = super::lock(&self.in_flight);
        let count = in_flight.entry(key).or_insert(0);
        if *count >= self.max_per_source {
            return None;
        }
        *count += 1;
        Some(SourceShare { shares: self.clone(), key })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        super::lock(&self.in_flight).len()
    }
}

/// One query's place in its source's share.
pub(crate) struct SourceShare {
    shares: Arc<SourceShares>,
    key: IpAddr,
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut in_flight = super::lock(&self.shares.in_flight);
        if let Some(count) = in_flight.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_gives_it_back() {
        let shares = SourceShares::new(2);
        let first = shares.try_take("2001:db8::1".parse().unwrap()).unwrap();
        let _second = shares.try_take("2001:db8::2".parse().unwrap()).unwrap();
        assert!(shares.try_take("2001:db8::ffff".parse().unwrap()).is_none(), "the same /64");
        assert!(shares.try_take("2001:db8:0:1::1".parse().unwrap()).is_some(), "another /64");
        drop(first);
        assert!(shares.try_take("2001:db8::3".parse().unwrap()).is_some());
        assert_eq!(shares.tracked(), 1, "sources with nothing in flight are forgotten");
    }
}
