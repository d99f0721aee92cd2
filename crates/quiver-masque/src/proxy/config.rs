//! The proxy's settings: [`ProxyConfig`], built and checked by [`ProxyConfigBuilder`], and the QUIC
//! configuration that fits them.

use std::sync::Arc;
use std::time::Duration;

use crate::ip::IpGateway;
use crate::policy::TargetPolicy;
use crate::template::UriTemplate;

/// Tunnels one client connection may hold open: enough for a busy client (a DNS forwarder opens one
/// per source port), few enough that one client cannot take every socket of the proxy.
pub const DEFAULT_MAX_TUNNELS_PER_CONNECTION: usize = 256;
/// Tunnels the whole proxy holds open: each is a UDP socket (a file descriptor) and a task; 8192 stays
/// under the usual 10k+ descriptor limits of a service with headroom for the QUIC socket and logs.
pub const DEFAULT_MAX_TUNNELS: usize = 8192;
/// Tunnels one client address (IPv6: one /64) may hold open over all its connections: an eighth of
/// [`DEFAULT_MAX_TUNNELS`], so one host opening many connections leaves most of the proxy to others,
/// and four times a connection's share, for NATs with several clients.
pub const DEFAULT_MAX_TUNNELS_PER_SOURCE: usize = 1024;
/// Name lookups one connection may have in flight. The proxy has 64 (each holds a thread until the
/// resolver answers); a client opening tunnels by name needs a few at once.
pub const DEFAULT_MAX_LOOKUPS_PER_CONNECTION: usize = 8;
/// Name lookups one client address (IPv6: one /64) may have in flight over all its connections: a
/// quarter of the proxy's 64, so a host whose lookups hang (names in a zone it controls, served
/// slowly) leaves three quarters to everyone else.
pub const DEFAULT_MAX_LOOKUPS_PER_SOURCE: usize = 16;
/// A tunnel with no datagram either way for this long is closed and its socket freed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Resolving a target name takes at most this long (then 504 `dns_timeout`).
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC bidirectional streams granted beyond the tunnel limit, so requests the proxy refuses (and their
/// still-closing streams) do not eat into the streams of tunnels.
const EXTRA_STREAMS: u64 = 16;

/// What the proxy allows and how long tunnels live. Build it with [`ProxyConfig::builder`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub(crate) template: UriTemplate,
    pub(crate) policy: TargetPolicy,
    pub(crate) max_tunnels_per_connection: usize,
    pub(crate) max_tunnels: usize,
    pub(crate) max_tunnels_per_source: usize,
    pub(crate) max_lookups_per_connection: usize,
    pub(crate) max_lookups_per_source: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) dns_timeout: Duration,
    pub(crate) bearer_token: Option<String>,
    pub(crate) ip_gateway: Option<Arc<IpGateway>>,
}

impl ProxyConfig {
    /// A builder with the defaults: the default template, the default policy (public addresses
    /// only), [`DEFAULT_MAX_TUNNELS_PER_CONNECTION`], [`DEFAULT_MAX_TUNNELS`],
    /// [`DEFAULT_MAX_TUNNELS_PER_SOURCE`], [`DEFAULT_MAX_LOOKUPS_PER_CONNECTION`],
    /// [`DEFAULT_MAX_LOOKUPS_PER_SOURCE`], [`DEFAULT_IDLE_TIMEOUT`], [`DEFAULT_DNS_TIMEOUT`], no
    /// token, no CONNECT-IP.
    pub fn builder() -> ProxyConfigBuilder {
        ProxyConfigBuilder {
            config: ProxyConfig {
                template: UriTemplate::default(),
                policy: TargetPolicy::default(),
                max_tunnels_per_connection: DEFAULT_MAX_TUNNELS_PER_CONNECTION,
                max_tunnels: DEFAULT_MAX_TUNNELS,
                max_tunnels_per_source: DEFAULT_MAX_TUNNELS_PER_SOURCE,
                max_lookups_per_connection: DEFAULT_MAX_LOOKUPS_PER_CONNECTION,
                max_lookups_per_source: DEFAULT_MAX_LOOKUPS_PER_SOURCE,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                dns_timeout: DEFAULT_DNS_TIMEOUT,
                bearer_token: None,
                ip_gateway: None,
            },
        }
    }

    /// The URI template requests must match.
    pub fn template(&self) -> &UriTemplate {
        &self.template
    }

    /// Which targets may be reached.
    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    /// Tunnels one connection may hold open.
    pub fn max_tunnels_per_connection(&self) -> usize {
        self.max_tunnels_per_connection
    }

    /// Tunnels the proxy holds open in total.
    pub fn max_tunnels(&self) -> usize {
        self.max_tunnels
    }

    /// Tunnels one client address (IPv6: one /64) may hold open.
    pub fn max_tunnels_per_source(&self) -> usize {
        self.max_tunnels_per_source
    }

    /// Name lookups one connection may have in flight.
    pub fn max_lookups_per_connection(&self) -> usize {
        self.max_lookups_per_connection
    }

    /// Name lookups one client address (IPv6: one /64) may have in flight.
    pub fn max_lookups_per_source(&self) -> usize {
        self.max_lookups_per_source
    }

    /// How long a tunnel may go without a datagram.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The gateway serving CONNECT-IP, if enabled.
    pub fn ip_gateway(&self) -> Option<&Arc<IpGateway>> {
        self.ip_gateway.as_ref()
    }
}

/// Builds a [`ProxyConfig`]; [`build`](Self::build) checks it.
///
/// ```
/// use quiver_masque::{ProxyConfig, TargetPolicy};
///
/// let config = ProxyConfig::builder()
///     .policy(TargetPolicy::parse(&["*:53,443"])?)
///     .bearer_token("s3cret")
///     .max_tunnels(1024)
///     .build()?;
/// assert_eq!(config.max_tunnels(), 1024);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProxyConfigBuilder {
    config: ProxyConfig,
}

impl ProxyConfigBuilder {
    /// The URI template requests must match (path and query; default [`crate::DEFAULT_TEMPLATE`]).
    pub fn template(mut self, template: UriTemplate) -> Self {
        self.config.template = template;
        self
    }

    /// Which targets may be reached (default: public addresses, any port).
    pub fn policy(mut self, policy: TargetPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Tunnels one connection may hold open; more are refused with 429 (at least 1).
    pub fn max_tunnels_per_connection(mut self, max: usize) -> Self {
        self.config.max_tunnels_per_connection = max;
        self
    }

    /// Tunnels the proxy holds open in total; more are refused with 503 (at least 1).
    pub fn max_tunnels(mut self, max: usize) -> Self {
        self.config.max_tunnels = max;
        self
    }

    /// Tunnels one client address (IPv6: one /64) may hold open over all its connections; more are
    /// refused with 429 (at least 1).
    pub fn max_tunnels_per_source(mut self, max: usize) -> Self {
        self.config.max_tunnels_per_source = max;
        self
    }

    /// Name lookups one connection may have in flight; more are refused with 503 `dns_error` (at
    /// least 1).
    pub fn max_lookups_per_connection(mut self, max: usize) -> Self {
        self.config.max_lookups_per_connection = max;
        self
    }

    /// Name lookups one client address (IPv6: one /64) may have in flight over all its
    /// connections; more are refused with 503 `dns_error` (at least 1).
    pub fn max_lookups_per_source(mut self, max: usize) -> Self {
        self.config.max_lookups_per_source = max;
        self
    }

    /// Closes a tunnel after this long without a datagram either way (not zero). Only datagrams
    /// that are relayed count: one the proxy drops (policy, malformed, unknown context) does not
    /// keep a tunnel open.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Longest time to resolve a target name (not zero).
    pub fn dns_timeout(mut self, timeout: Duration) -> Self {
        self.config.dns_timeout = timeout;
        self
    }

    /// Requires `Proxy-Authorization: Bearer <token>` on every request (else 407). Not empty.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.config.bearer_token = Some(token.into());
        self
    }

    /// Serves CONNECT-IP (RFC 9484) tunnels through this gateway's TUN device (without one they are
    /// refused with 501).
    pub fn ip_gateway(mut self, gateway: Arc<IpGateway>) -> Self {
        self.config.ip_gateway = Some(gateway);
        self
    }

    /// The configuration.
    ///
    /// # Errors
    /// [`ProxyConfigError`] for a zero limit or timeout, or an empty bearer token.
    pub fn build(self) -> Result<ProxyConfig, ProxyConfigError> {
        let config = self.config;
        let zero = [
            ("max_tunnels_per_connection", config.max_tunnels_per_connection == 0),
            ("max_tunnels", config.max_tunnels == 0),
            ("max_tunnels_per_source", config.max_tunnels_per_source == 0),
            ("max_lookups_per_connection", config.max_lookups_per_connection == 0),
            ("max_lookups_per_source", config.max_lookups_per_source == 0),
            ("idle_timeout", config.idle_timeout.is_zero()),
            ("dns_timeout", config.dns_timeout.is_zero()),
        ];
        if let Some((setting, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err(ProxyConfigError::Zero(setting));
        }
        if config.bearer_token.as_deref().is_some_and(|token| token.trim().is_empty()) {
            return Err(ProxyConfigError::EmptyBearerToken);
        }
        Ok(config)
    }
}

/// A [`ProxyConfigBuilder`] setting the proxy cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyConfigError {
    /// A limit or timeout is zero; the field names the builder method.
    #[error("proxy setting `{0}` must be greater than zero")]
    Zero(&'static str),
    /// The bearer token is empty: every client would be sent `Bearer ` and none could match.
    #[error("the bearer token is empty")]
    EmptyBearerToken,
}

/// A QUIC server configuration fit for the proxy: ALPN `h3`, QUIC datagrams on, and enough streams
/// for `config`'s tunnel limit. Add the certificate and build.
pub fn proxy_server_config(config: &ProxyConfig) -> quiver::ServerConfigBuilder {
    let streams = u64::try_from(config.max_tunnels_per_connection).unwrap_or(u64::MAX).saturating_add(EXTRA_STREAMS);
    quiver_h3::server_config().datagrams(true).max_streams(streams, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_refuses_what_cannot_work() {
        assert!(ProxyConfig::builder().build().is_ok());
        assert_eq!(ProxyConfig::builder().max_tunnels(0).build().unwrap_err(), ProxyConfigError::Zero("max_tunnels"));
        assert_eq!(
            ProxyConfig::builder().idle_timeout(Duration::ZERO).build().unwrap_err(),
            ProxyConfigError::Zero("idle_timeout")
        );
        assert_eq!(ProxyConfig::builder().bearer_token(" ").build().unwrap_err(), ProxyConfigError::EmptyBearerToken);
    }
}
