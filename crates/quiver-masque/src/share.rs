//! Per-source shares of the proxy's pools (tunnels, name lookups), so that one host with many
//! connections cannot take a whole pool while other clients wait. (Per-connection shares are
//! semaphores each connection owns.)
//!
//! Sources are counted like the endpoint's per-source limits: IPv6 per /64, IPv4-mapped addresses
//! as IPv4. `quiver`'s `limits::source_key` does the same but is not public, hence [`source_key`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// The key a source is counted by: one IPv6 host usually holds a whole /64, so single addresses
/// would multiply its share by 2^64.
pub(crate) fn source_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

/// How much of one pool each source holds, for sources that hold any. The map needs no limit of its
/// own: a share is only taken by a request that already holds its connection's share, so entries
/// are bounded by the endpoint's connections times the per-connection share.
pub(crate) struct SourceShares {
    max_per_source: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceShares {
    pub(crate) fn new(max_per_source: usize) -> Arc<Self> {
        Arc::new(Self { max_per_source, held: Mutex::new(HashMap::new()) })
    }

    fn held(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One more from `source`, unless it holds its whole share; given back when the guard drops.
    pub(crate) fn try_take(self: &Arc<Self>, source: IpAddr) -> Option<SourceShare> {
        let key = source_key(source);
        let mut held = self.held();
        let count = held.entry(key).or_insert(0);
        if *count >= self.max_per_source {
            return None;
        }
        *count += 1;
        Some(SourceShare { shares: self.clone(), key })
    }
}

/// One unit of a source's share, held by a tunnel or a lookup.
pub(crate) struct SourceShare {
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
        drop(first);
        assert!(shares.try_take("2001:db8::2".parse().unwrap()).is_some());
        assert!(shares.held().is_empty(), "nothing held, nothing remembered");
    }
}
