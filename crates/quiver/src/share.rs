//! Per-source shares of a pool that applications built on quiver hand out (DoQ upstream slots, MASQUE
//! tunnels and name lookups), so that one host with many connections cannot take a whole pool while
//! other clients wait. Sources are grouped the way the endpoint's own per-source limits group them
//! ([`source_key`]). A leaf: it imports nothing from the crate.
//!
//! ```
//! let shares = quiver::SourceShares::new(1);
//! let held = shares.try_take("2001:db8::1".parse().unwrap()).expect("a first share");
//! assert!(shares.try_take("2001:db8::2".parse().unwrap()).is_none(), "the same /64");
//! drop(held);
//! assert!(shares.try_take("2001:db8::2".parse().unwrap()).is_some());
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// The key a source is counted by: its address, with IPv6 addresses grouped by /64 (and IPv4-mapped
/// IPv6 addresses as the IPv4 address they are). One IPv6 host usually holds a whole /64 (SLAAC,
/// privacy addresses), so counting single addresses would let it multiply every per-source budget
/// by 2^64.
pub fn source_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

/// How many units of one pool each source ([`source_key`]) holds, for sources that hold any.
///
/// The map has no limit of its own: callers take a source's share only for work that already holds
/// a bounded per-connection share, so its entries are bounded by the connections times that share.
#[derive(Debug)]
pub struct SourceShares {
    max_per_source: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceShares {
    /// Shares of at most `max_per_source` units per source.
    pub fn new(max_per_source: usize) -> Arc<Self> {
        Arc::new(Self { max_per_source, held: Mutex::new(HashMap::new()) })
    }

    fn held(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map is consistent after every statement; a panic elsewhere leaves nothing half-done.
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One more unit for `source`, unless it holds its whole share; given back when the returned
    /// guard drops.
    pub fn try_take(self: &Arc<Self>, source: IpAddr) -> Option<SourceShare> {
        let key = source_key(source);
        let mut held = self.held();
        let count = held.entry(key).or_insert(0);
        if *count >= self.max_per_source {
            return None;
        }
        *count += 1;
        Some(SourceShare { shares: self.clone(), key })
    }

    /// How many sources hold a unit now.
    pub fn sources(&self) -> usize {
        self.held().len()
    }
}

/// One unit of a source's share; dropping it gives the unit back.
#[derive(Debug)]
pub struct SourceShare {
    shares: Arc<SourceShares>,
    key: IpAddr,
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut held = self.shares.held();
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_ipv6_per_64_and_come_back() {
        let shares = SourceShares::new(1);
        let first = shares.try_take("2001:db8::1".parse().unwrap()).unwrap();
        assert!(shares.try_take("2001:db8::2".parse().unwrap()).is_none(), "the same /64");
        assert!(shares.try_take("192.0.2.1".parse().unwrap()).is_some());
        assert!(shares.try_take("::ffff:192.0.2.1".parse().unwrap()).is_some(), "mapped is IPv4, share 1 each");
        drop(first);
        assert!(shares.try_take("2001:db8::2".parse().unwrap()).is_some());
        assert_eq!(shares.sources(), 0, "nothing held, nothing remembered");
    }
}
