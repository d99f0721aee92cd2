//! What every connection and tunnel of one proxy shares: its settings, counters, tunnel limit and
//! resolver.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::config::ProxyConfig;
use super::stats::Counters;
use crate::resolve::Resolver;

/// Shared by every clone of a [`Proxy`](super::Proxy), every connection and every tunnel relay.
pub(crate) struct ProxyShared {
    pub(crate) config: ProxyConfig,
    pub(crate) counters: Counters,
    /// The proxy-wide tunnel limit ([`ProxyConfig::max_tunnels`]).
    pub(crate) tunnels: Arc<Semaphore>,
    pub(crate) resolver: Resolver,
}

impl ProxyShared {
    pub(crate) fn new(config: ProxyConfig) -> Self {
        let tunnels = Arc::new(Semaphore::new(config.max_tunnels));
        Self { config, counters: Counters::default(), tunnels, resolver: Resolver::system() }
    }
}
