//! What every connection and tunnel of one proxy shares: its settings, counters, tunnel limit and
//! resolver.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::config::ProxyConfig;
use super::stats::Counters;
use crate::resolve::Resolver;
use crate::this_host::ThisHost;
use quiver::SourceShares;

/// Shared by every clone of a [`Proxy`](super::Proxy), every connection and every tunnel relay.
pub(crate) struct ProxyShared {
    pub(crate) config: ProxyConfig,
    pub(crate) counters: Counters,
    /// The proxy-wide tunnel limit ([`ProxyConfig::max_tunnels`]).
    pub(crate) tunnels: Arc<Semaphore>,
    /// Tunnels per client address ([`ProxyConfig::max_tunnels_per_source`]).
    pub(crate) source_tunnels: Arc<SourceShares>,
    /// Name lookups per client address ([`ProxyConfig::max_lookups_per_source`]).
    pub(crate) source_lookups: Arc<SourceShares>,
    pub(crate) resolver: Resolver,
    /// This host's addresses and the proxy's listening sockets: never reachable by default.
    pub(crate) this_host: ThisHost,
}

impl ProxyShared {
    pub(crate) fn new(config: ProxyConfig) -> Self {
        Self::with_resolver(config, Resolver::system())
    }

    pub(crate) fn with_resolver(config: ProxyConfig, resolver: Resolver) -> Self {
        Self {
            tunnels: Arc::new(Semaphore::new(config.max_tunnels)),
            source_tunnels: SourceShares::new(config.max_tunnels_per_source),
            source_lookups: SourceShares::new(config.max_lookups_per_source),
            counters: Counters::default(),
            resolver,
            this_host: ThisHost::system(),
            config,
        }
    }
}

/// One connection's shares of the proxy's pools.
#[derive(Clone)]
pub(crate) struct ConnectionShares {
    /// Tunnels ([`ProxyConfig::max_tunnels_per_connection`]).
    pub(crate) tunnels: Arc<Semaphore>,
    /// Name lookups in flight ([`ProxyConfig::max_lookups_per_connection`]).
    pub(crate) lookups: Arc<Semaphore>,
}
