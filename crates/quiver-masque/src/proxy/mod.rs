//! The proxy: an HTTP/3 application that opens one connected UDP socket per CONNECT-UDP tunnel (or
//! leases one address of its IP gateway per CONNECT-IP tunnel, see [`crate::ip`]) and relays
//! payloads between it and the client.
//!
//! One file per job, dependencies pointing down:
//! * `mod.rs` — [`Proxy`]: the per-connection application and the serve lifecycle;
//! * `admission` — checks each tunnel request in order and refuses with the right status;
//! * `ip_tunnel` — the CONNECT-IP parts of admission and of the relay (leases, address requests);
//! * `relay` — one task per open tunnel, moving payloads between client and far end;
//! * `refusal` — a refused request's status, `Proxy-Status` and counter;
//! * `shared` — what every connection and tunnel of a proxy shares;
//! * `config` — [`ProxyConfig`] and its builder; `stats` — the counters.

mod admission;
mod config;
mod ip_tunnel;
mod refusal;
mod relay;
mod shared;
mod stats;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use quiver::{Endpoint, ServeEnd};
use quiver_h3::{H3Driver, H3Settings, RecvBody, Server};
use tokio::sync::Semaphore;

pub use self::config::{
    DEFAULT_DNS_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LOOKUPS_PER_CONNECTION, DEFAULT_MAX_LOOKUPS_PER_SOURCE,
    DEFAULT_MAX_TUNNELS, DEFAULT_MAX_TUNNELS_PER_CONNECTION, DEFAULT_MAX_TUNNELS_PER_SOURCE, ProxyConfig,
    ProxyConfigBuilder, ProxyConfigError, proxy_server_config,
};
use self::shared::{ConnectionShares, ProxyShared};
pub use self::stats::ProxyStats;

/// A CONNECT-UDP (and, with a gateway, CONNECT-IP) proxy; cheap to clone (clones share counters
/// and limits).
///
/// ```no_run
/// use quiver_masque::{Proxy, ProxyConfig, TargetPolicy};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ProxyConfig::builder().policy(TargetPolicy::parse(&["*:53,443"])?).bearer_token("s3cret").build()?;
/// let quic = quiver_masque::proxy_server_config(&config).certificate_pem_files("cert.pem", "key.pem").build()?;
/// let endpoint = quiver::Endpoint::server("[::]:443".parse()?, quic)?;
/// let proxy = Proxy::new(config);
/// let drain = std::time::Duration::from_secs(10);
/// proxy.serve_until(endpoint, async { let _ = tokio::signal::ctrl_c().await; }, drain).await;
/// println!("{:?}", proxy.stats());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyShared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy with this configuration.
    pub fn new(config: ProxyConfig) -> Self {
        Self { inner: Arc::new(ProxyShared::new(config)) }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.inner.counters.snapshot()
    }

    /// The HTTP/3 application for one accepted connection (each connection gets its own share of
    /// tunnels and name lookups). Use it to serve the proxy next to other protocols;
    /// [`serve`](Self::serve) does this for every connection of an endpoint. Tell the proxy the
    /// endpoint's addresses with [`listening_on`](Self::listening_on) so no tunnel leads back to it.
    pub fn application(&self) -> H3Driver {
        let config = &self.inner.config;
        let connection = ConnectionShares {
            tunnels: Arc::new(Semaphore::new(config.max_tunnels_per_connection)),
            lookups: Arc::new(Semaphore::new(config.max_lookups_per_connection)),
        };
        let inner = self.inner.clone();
        let service = tower::service_fn(move |request: Request<RecvBody>| {
            let inner = inner.clone();
            let connection = connection.clone();
            async move { Ok::<_, Infallible>(admission::open_tunnel(inner, request, connection).await) }
        });
        let settings = H3Settings { extended_connect: true, ..H3Settings::default() };
        Server::new(service).settings(settings).application()
    }

    /// Refuses tunnels to `listener` (and to its port on every address of this host): the proxy's
    /// own socket is never a target, whatever the policy allows. [`serve`](Self::serve) and
    /// [`serve_until`](Self::serve_until) call it for their endpoint's sockets.
    pub fn listening_on(&self, listener: std::net::SocketAddr) {
        self.inner.this_host.add_listener(listener);
    }

    /// Serves every `h3` connection `endpoint` accepts until the endpoint closes.
    ///
    /// # Cancel safety
    /// Dropping the future stops accepting; connections already running go on until they close.
    pub async fn serve(&self, endpoint: Endpoint) {
        self.serve_until(endpoint, std::future::pending(), Duration::ZERO).await;
    }

    /// As [`serve`](Self::serve) until `shutdown` resolves; then shuts down gracefully through
    /// [`quiver::serve`]: new connections are refused, every connection gets GOAWAY (so clients
    /// open no new tunnels on it), tunnels already open keep relaying until they end or
    /// `drain_deadline` passes, and then every connection is closed. Returns how it ended.
    ///
    /// # Cancel safety
    /// As [`quiver::serve`]: dropping the future while accepting stops accepting and leaves the
    /// endpoint open; dropping it during the drain leaves the connections draining but nothing
    /// closes what is left at the deadline.
    pub async fn serve_until(
        &self,
        endpoint: Endpoint,
        shutdown: impl Future<Output = ()>,
        drain_deadline: Duration,
    ) -> ServeEnd {
        for listener in endpoint.local_addrs() {
            self.listening_on(listener);
        }
        let accept_h3 = |incoming: quiver::IncomingConnection| {
            // Other ALPNs are refused by dropping them.
            if incoming.alpn() == quiver_h3::ALPN {
                incoming.start(self.application());
            }
        };
        quiver::serve(&endpoint, accept_h3, shutdown, drain_deadline).await
    }
}
