//! The proxy: an HTTP/3 application that opens one connected UDP socket per CONNECT-UDP tunnel (or
//! leases one address of its IP gateway per CONNECT-IP tunnel, see [`crate::ip`]) and relays
//! payloads between it and the client.
//!
//! Each accepted request is checked in a fixed order, each failure with its own status and
//! `Proxy-Status` (RFC 9209): authentication (407), extended CONNECT with `connect-udp` and
//! `Capsule-Protocol: ?1` (400), the template (404 when the path is not ours, 400 when its values are
//! bad), the port policy (403), the tunnel limits (429 per connection, 503 overall), name resolution
//! (502 `dns_error`, 504 `dns_timeout`), the address policy (403 `destination_ip_prohibited`), the
//! socket (502 `destination_ip_unroutable`). Then 200, and one relay task per tunnel until the client
//! closes the stream, the connection goes, or the tunnel is idle for [`ProxyConfig::idle_timeout`].

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use quiver::Endpoint;
use quiver_h3::datagram::{CAPSULE_DATAGRAM, Capsule, encode_capsule};
use quiver_h3::{BodyError, DatagramError, DatagramFlow, H3Driver, H3Settings, PeerAddr, Protocol, RecvBody, Server};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{CapsuleReader, CapsuleSender, ChannelBody};
use crate::ip::capsule::{AddressEntry, IpCapsule, IpNetwork};
use crate::ip::gateway::{ForwardRefused, IpGateway, IpLease};
use crate::policy::{Denied, TargetPolicy};
use crate::resolve::{LookupError, MAX_LOOKUPS_IN_FLIGHT, Resolver};
use crate::target::{Target, TargetHost};
use crate::template::{MatchError, UriTemplate};
use crate::{CONNECT_UDP, CONTEXT_UDP_PAYLOAD, capsule_protocol_enabled};

/// Tunnels one client connection may hold open: enough for a busy client (a DNS forwarder opens one
/// per source port), few enough that one client cannot take every socket of the proxy.
pub const DEFAULT_MAX_TUNNELS_PER_CONNECTION: usize = 256;
/// Tunnels the whole proxy holds open: each is a UDP socket (a file descriptor) and a task; 8192 stays
/// under the usual 10k+ descriptor limits of a service with headroom for the QUIC socket and logs.
pub const DEFAULT_MAX_TUNNELS: usize = 8192;
/// A tunnel with no datagram either way for this long is closed and its socket freed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Resolving a target name takes at most this long (then 504 `dns_timeout`).
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams a relay reads from its socket per wake-up before letting other tunnels run.
const RECV_BATCH: usize = 64;
/// QUIC bidirectional streams granted beyond the tunnel limit, so requests the proxy refuses (and their
/// still-closing streams) do not eat into the streams of tunnels.
const EXTRA_STREAMS: u64 = 16;
/// The name this proxy gives itself in `Proxy-Status`.
const PROXY_STATUS_NAME: &str = "quiver";

/// What the proxy allows and how long tunnels live.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The URI template requests must match (path and query).
    pub template: UriTemplate,
    /// Which targets may be reached.
    pub policy: TargetPolicy,
    /// Tunnels one connection may hold open; more are refused with 429.
    pub max_tunnels_per_connection: usize,
    /// Tunnels the proxy holds open in total; more are refused with 503.
    pub max_tunnels: usize,
    /// Close a tunnel after this long without a datagram either way.
    pub idle_timeout: Duration,
    /// Longest time to resolve a target name.
    pub dns_timeout: Duration,
    /// When set, requests must carry `Proxy-Authorization: Bearer <token>` (else 407).
    pub bearer_token: Option<String>,
    /// When set, CONNECT-IP (RFC 9484) tunnels are served through this gateway's TUN device (else
    /// they are refused with 501).
    pub ip_gateway: Option<Arc<IpGateway>>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            template: UriTemplate::default(),
            policy: TargetPolicy::default(),
            max_tunnels_per_connection: DEFAULT_MAX_TUNNELS_PER_CONNECTION,
            max_tunnels: DEFAULT_MAX_TUNNELS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            dns_timeout: DEFAULT_DNS_TIMEOUT,
            bearer_token: None,
            ip_gateway: None,
        }
    }
}

/// A QUIC server configuration fit for the proxy: ALPN `h3`, QUIC datagrams on, and enough streams
/// for `config`'s tunnel limit. Add the certificate and build.
pub fn proxy_server_config(config: &ProxyConfig) -> quiver::ServerConfigBuilder {
    let streams = u64::try_from(config.max_tunnels_per_connection).unwrap_or(u64::MAX).saturating_add(EXTRA_STREAMS);
    quiver_h3::server_config().datagrams(true).max_streams(streams, 100)
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The proxy's counters since it started: every refused request and every dropped datagram
        /// ends in exactly one of them.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct ProxyStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        #[derive(Debug, Default)]
        struct Counters {
            $($name: AtomicU64,)*
        }

        impl Counters {
            fn snapshot(&self) -> ProxyStats {
                ProxyStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Tunnels answered with 2xx.
    tunnels_opened,
    /// Tunnels open now.
    tunnels_active,
    /// Tunnels closed because they were idle.
    tunnels_idle_closed,
    /// Requests refused with 407 (missing or wrong token).
    refused_unauthorized,
    /// Requests refused with 400 (not CONNECT-UDP, no `Capsule-Protocol`, bad host or port).
    refused_malformed,
    /// Requests refused with 404 (the path is not an expansion of the template).
    refused_not_found,
    /// Requests refused with 403 (target policy).
    refused_policy,
    /// Requests refused with 429 or 503 (tunnel limits).
    refused_limit,
    /// Requests refused with 502 or 504 because the target name did not resolve.
    refused_resolve,
    /// Requests refused with 503 because every name lookup slot was taken (the resolver hangs).
    refused_dns_busy,
    /// Requests refused with 502 because no socket could be connected to the target.
    refused_unreachable,
    /// UDP payloads sent to targets (IP packets handed to the TUN device, for CONNECT-IP).
    datagrams_to_target,
    /// Bytes of those payloads.
    bytes_to_target,
    /// UDP payloads from targets (IP packets from the TUN device) relayed to clients.
    datagrams_from_target,
    /// Bytes of those payloads.
    bytes_from_target,
    /// Datagrams from clients with a context ID other than 0, dropped.
    dropped_unknown_context,
    /// Payloads larger than the client's path carries in one QUIC datagram, dropped.
    dropped_too_large,
    /// Payloads dropped because a queue was full (towards the client, or the target socket's buffer).
    dropped_queue_full,
    /// Datagrams or capsules from clients without a valid context ID, dropped.
    dropped_malformed,
    /// Payloads the target socket refused (for example after an ICMP port unreachable), dropped.
    dropped_send_failed,
    /// IP packets from clients with a source other than their address or a destination outside the
    /// routes, dropped (CONNECT-IP).
    dropped_not_routed,
    /// IP packets from clients to a destination the target policy denies, dropped (CONNECT-IP).
    dropped_policy,
}

struct ProxyInner {
    config: ProxyConfig,
    counters: Counters,
    tunnels: Arc<Semaphore>,
    resolver: Resolver,
}

/// A CONNECT-UDP proxy; cheap to clone (clones share counters and limits).
///
/// ```no_run
/// use quiver_masque::{Proxy, ProxyConfig, TargetPolicy};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ProxyConfig {
///     policy: TargetPolicy::parse(&["*:53,443"])?,
///     bearer_token: Some("s3cret".into()),
///     ..ProxyConfig::default()
/// };
/// let quic = quiver_masque::proxy_server_config(&config).certificate_pem_files("cert.pem", "key.pem").build()?;
/// let endpoint = quiver::Endpoint::server("[::]:443".parse()?, quic)?;
/// let proxy = Proxy::new(config);
/// proxy.serve_until(endpoint, async { let _ = tokio::signal::ctrl_c().await; }).await;
/// println!("{:?}", proxy.stats());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy with this configuration.
    pub fn new(config: ProxyConfig) -> Self {
        let tunnels = Arc::new(Semaphore::new(config.max_tunnels));
        Self {
            inner: Arc::new(ProxyInner {
                config,
                counters: Counters::default(),
                tunnels,
                resolver: Resolver::system(),
            }),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.inner.counters.snapshot()
    }

    /// The HTTP/3 application for one accepted connection (each connection gets its own tunnel
    /// limit). Use it to serve the proxy next to other protocols; [`serve`](Self::serve) does this for
    /// every connection of an endpoint.
    pub fn application(&self) -> H3Driver {
        let connection_tunnels = Arc::new(Semaphore::new(self.inner.config.max_tunnels_per_connection));
        let inner = self.inner.clone();
        let service = tower::service_fn(move |request: Request<RecvBody>| {
            let inner = inner.clone();
            let connection_tunnels = connection_tunnels.clone();
            async move { Ok::<_, Infallible>(inner.open_tunnel(request, connection_tunnels).await) }
        });
        let settings = H3Settings { extended_connect: true, ..H3Settings::default() };
        Server::new(service).settings(settings).application()
    }

    /// Serves every `h3` connection `endpoint` accepts until the endpoint closes.
    pub async fn serve(&self, endpoint: Endpoint) {
        self.serve_until(endpoint, std::future::pending()).await;
    }

    /// As [`serve`](Self::serve) until `shutdown` resolves; then closes the endpoint (every client
    /// gets CONNECTION_CLOSE, so its tunnels end at once with a clear reason) and returns when every
    /// connection has ended.
    pub async fn serve_until(&self, endpoint: Endpoint, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => incoming,
                () = &mut shutdown => break,
            };
            let Some(incoming) = incoming else { return };
            if incoming.alpn() == quiver_h3::ALPN {
                incoming.start(self.application());
            }
        }
        endpoint.close();
        endpoint.wait_idle().await;
    }
}

/// A refused request: its status, RFC 9209 error type, and what to say about it.
struct Refusal {
    status: StatusCode,
    error: Option<&'static str>,
    /// Sent to the client in `Proxy-Status`.
    details: String,
    /// Logged only: what the client must not learn (resolved addresses, resolver errors).
    log_details: Option<String>,
    counter: fn(&Counters) -> &AtomicU64,
}

impl Refusal {
    fn new(
        status: StatusCode,
        error: Option<&'static str>,
        details: impl Into<String>,
        counter: fn(&Counters) -> &AtomicU64,
    ) -> Self {
        Self { status, error, details: details.into(), log_details: None, counter }
    }

    fn with_log_details(mut self, log_details: String) -> Self {
        self.log_details = Some(log_details);
        self
    }

    fn into_response(self) -> Response<ChannelBody> {
        let mut response = Response::new(ChannelBody::empty());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        if self.status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            headers.insert(http::header::PROXY_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(error) = self.error
            && let Ok(value) = HeaderValue::try_from(proxy_status(error, &self.details))
        {
            headers.insert(HeaderName::from_static("proxy-status"), value);
        }
        response
    }
}

/// A `Proxy-Status` value (RFC 9209): `quiver; error=<type>; details="<text>"`, the details reduced to
/// what an sf-string may hold.
fn proxy_status(error: &str, details: &str) -> String {
    let mut value = format!("{PROXY_STATUS_NAME}; error={error}");
    if !details.is_empty() {
        value.push_str("; details=\"");
        for character in details.chars() {
            match character {
                '"' | '\\' => {
                    value.push('\\');
                    value.push(character);
                }
                ' '..='~' => value.push(character),
                _ => value.push('?'),
            }
        }
        value.push('"');
    }
    value
}

/// Compares without an early exit, so response timing does not reveal how much of a guess was right.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

fn require_capsule_protocol(request: &Request<RecvBody>) -> Result<(), Refusal> {
    let capsules =
        request.headers().get("capsule-protocol").is_some_and(|value| capsule_protocol_enabled(value.as_bytes()));
    if capsules {
        return Ok(());
    }
    let details = "a tunnel request needs Capsule-Protocol: ?1";
    Err(Refusal::new(StatusCode::BAD_REQUEST, Some("http_request_error"), details, |c| &c.refused_malformed))
}

fn bearer_token(request: &Request<RecvBody>) -> Option<&[u8]> {
    let value = request.headers().get(http::header::PROXY_AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|byte| *byte == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
}

impl ProxyInner {
    async fn open_tunnel(
        self: Arc<Self>,
        request: Request<RecvBody>,
        connection_tunnels: Arc<Semaphore>,
    ) -> Response<ChannelBody> {
        let peer = request.extensions().get::<PeerAddr>().map(|peer| peer.0);
        let path = request.uri().path_and_query().map_or("/", |path| path.as_str()).to_owned();
        match self.clone().try_open(request, connection_tunnels).await {
            Ok(response) => response,
            Err(refusal) => {
                (refusal.counter)(&self.counters).fetch_add(1, Ordering::Relaxed);
                let logged = refusal.log_details.as_deref().unwrap_or(&refusal.details);
                tracing::debug!(?peer, %path, status = %refusal.status, details = %logged, "tunnel refused");
                refusal.into_response()
            }
        }
    }

    async fn try_open(
        self: Arc<Self>,
        request: Request<RecvBody>,
        connection_tunnels: Arc<Semaphore>,
    ) -> Result<Response<ChannelBody>, Refusal> {
        let config = &self.config;
        if let Some(expected) = &config.bearer_token
            && !bearer_token(&request).is_some_and(|token| constant_time_eq(token, expected.as_bytes()))
        {
            let details = "a valid Proxy-Authorization: Bearer token is required";
            return Err(Refusal::new(StatusCode::PROXY_AUTHENTICATION_REQUIRED, None, details, |c| {
                &c.refused_unauthorized
            }));
        }
        let protocol = request.extensions().get::<Protocol>().map(|protocol| protocol.0.as_str());
        if request.method() == Method::CONNECT && protocol == Some(crate::ip::CONNECT_IP) {
            return self.clone().open_ip_tunnel(request, connection_tunnels);
        }
        let path = request.uri().path_and_query().map_or("/", |path| path.as_str());
        let target = match config.template.match_path(path) {
            Ok(target) => target,
            Err(MatchError::NoMatch) => {
                let details = format!("{path} is not a CONNECT-UDP path of this proxy ({})", config.template);
                return Err(Refusal::new(StatusCode::NOT_FOUND, None, details, |c| &c.refused_not_found));
            }
            Err(bad) => {
                return Err(Refusal::new(StatusCode::BAD_REQUEST, Some("http_request_error"), bad.to_string(), |c| {
                    &c.refused_malformed
                }));
            }
        };
        if request.method() != Method::CONNECT || protocol != Some(CONNECT_UDP) {
            let details = "CONNECT-UDP needs extended CONNECT with :protocol connect-udp";
            return Err(Refusal::new(StatusCode::BAD_REQUEST, Some("http_request_error"), details, |c| {
                &c.refused_malformed
            }));
        }
        require_capsule_protocol(&request)?;
        if !config.policy.allows_port(target.port) {
            let details = format!("port {} is not allowed", target.port);
            return Err(Refusal::new(StatusCode::FORBIDDEN, Some("http_request_denied"), details, |c| {
                &c.refused_policy
            }));
        }
        let permits = self.tunnel_permits(connection_tunnels)?;
        let address = self.resolve(&target).await?;
        let socket = connect_socket(address).await.map_err(|err| {
            let details = format!("cannot open a UDP socket to {address}: {err}");
            Refusal::new(StatusCode::BAD_GATEWAY, Some("destination_ip_unroutable"), details, |c| {
                &c.refused_unreachable
            })
        })?;
        tracing::debug!(%target, %address, "UDP tunnel open");
        Ok(self.start_relay(request, FarEnd::Udp(socket), permits))
    }

    /// CONNECT-IP (RFC 9484), full-tunnel scope only: the client gets one address of the gateway's
    /// pool and the gateway's routes.
    fn open_ip_tunnel(
        self: Arc<Self>,
        request: Request<RecvBody>,
        connection_tunnels: Arc<Semaphore>,
    ) -> Result<Response<ChannelBody>, Refusal> {
        let Some(gateway) = &self.config.ip_gateway else {
            let details = "CONNECT-IP is not enabled on this proxy";
            return Err(Refusal::new(StatusCode::NOT_IMPLEMENTED, Some("proxy_configuration_error"), details, |c| {
                &c.refused_malformed
            }));
        };
        let path = request.uri().path_and_query().map_or("/", |path| path.as_str());
        if !crate::ip::is_full_tunnel_path(path) {
            let details = format!("{path}: only the full-tunnel scope {} is supported", crate::ip::IP_TUNNEL_PATH);
            return Err(Refusal::new(StatusCode::BAD_REQUEST, Some("http_request_error"), details, |c| {
                &c.refused_malformed
            }));
        }
        require_capsule_protocol(&request)?;
        let permits = self.tunnel_permits(connection_tunnels)?;
        let lease = gateway.lease().ok_or_else(|| {
            let details = if gateway.is_stopped() {
                "CONNECT-IP stopped: the proxy cannot read its TUN device".to_owned()
            } else {
                "the address pool is exhausted".to_owned()
            };
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, Some("connection_limit_reached"), details, |c| {
                &c.refused_limit
            })
        })?;
        tracing::debug!(address = %lease.address, "IP tunnel open");
        Ok(self.start_relay(request, FarEnd::Ip(lease), permits))
    }

    /// One permit of the connection's tunnel limit and one of the proxy's.
    fn tunnel_permits(&self, connection_tunnels: Arc<Semaphore>) -> Result<TunnelPermits, Refusal> {
        let config = &self.config;
        let connection_permit = connection_tunnels.try_acquire_owned().map_err(|_| {
            let details = format!("this connection already has {} tunnels open", config.max_tunnels_per_connection);
            Refusal::new(StatusCode::TOO_MANY_REQUESTS, Some("connection_limit_reached"), details, |c| &c.refused_limit)
        })?;
        let proxy_permit = self.tunnels.clone().try_acquire_owned().map_err(|_| {
            let details = format!("the proxy already has {} tunnels open", config.max_tunnels);
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, Some("connection_limit_reached"), details, |c| {
                &c.refused_limit
            })
        })?;
        Ok((connection_permit, proxy_permit))
    }

    /// Answers 200 and relays between the request's stream and datagrams and `far` until the tunnel
    /// ends.
    fn start_relay(
        self: Arc<Self>,
        request: Request<RecvBody>,
        far: FarEnd,
        permits: TunnelPermits,
    ) -> Response<ChannelBody> {
        let flow = DatagramFlow::take_from(request.extensions());
        let (downloads, body) = ChannelBody::channel();
        let relay = Relay { proxy: self.clone(), far, flow, downloads, _permits: permits };
        self.counters.tunnels_opened.fetch_add(1, Ordering::Relaxed);
        self.counters.tunnels_active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(relay.run(request.into_body()));
        let mut response = Response::new(body);
        response.headers_mut().insert(HeaderName::from_static("capsule-protocol"), HeaderValue::from_static("?1"));
        response
    }

    /// The first address of `target` the policy allows.
    async fn resolve(&self, target: &Target) -> Result<SocketAddr, Refusal> {
        let (name, addresses) = match &target.host {
            TargetHost::Ip(ip) => (None, vec![SocketAddr::new(*ip, target.port)]),
            TargetHost::Name(name) => {
                let timeout = self.config.dns_timeout;
                // What went wrong stays in the log: resolver error texts describe the proxy's network.
                let addresses = match self.resolver.resolve(name, target.port, timeout).await {
                    Err(LookupError::Busy) => {
                        let details = "too many name lookups in flight; try again later";
                        let refusal = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, Some("dns_error"), details, |c| {
                            &c.refused_dns_busy
                        });
                        return Err(refusal.with_log_details(format!(
                            "all {MAX_LOOKUPS_IN_FLIGHT} lookup slots taken resolving {name}"
                        )));
                    }
                    Err(LookupError::TimedOut) => {
                        let details = format!("resolving the target took longer than {timeout:?}");
                        return Err(Refusal::new(StatusCode::GATEWAY_TIMEOUT, Some("dns_timeout"), details, |c| {
                            &c.refused_resolve
                        }));
                    }
                    Err(LookupError::Failed(err)) => {
                        let refusal = Refusal::new(
                            StatusCode::BAD_GATEWAY,
                            Some("dns_error"),
                            "cannot resolve the target",
                            |c| &c.refused_resolve,
                        );
                        return Err(refusal.with_log_details(format!("cannot resolve {name}: {err}")));
                    }
                    Ok(addresses) => addresses,
                };
                if addresses.is_empty() {
                    let details = "the target name has no addresses";
                    return Err(Refusal::new(StatusCode::BAD_GATEWAY, Some("dns_error"), details, |c| {
                        &c.refused_resolve
                    }));
                }
                (Some(name.as_str()), addresses)
            }
        };
        let mut denied = Denied::NotAllowed;
        for address in &addresses {
            match self.config.policy.check(name, address.ip(), address.port()) {
                Ok(()) => return Ok(*address),
                Err(reason) => denied = reason,
            }
        }
        // The resolved address is for the log only: it would tell the client about the proxy's network.
        let refusal = Refusal::new(StatusCode::FORBIDDEN, Some("destination_ip_prohibited"), denied.to_string(), |c| {
            &c.refused_policy
        });
        Err(refusal.with_log_details(format!("{target} ({}) is denied: {denied}", addresses[0].ip())))
    }
}

/// The ADDRESS_ASSIGN that answers `requests` on a tunnel holding `leased` (RFC 9484 §4.7.1). A
/// request is met when it asks for the leased address's family and either any address (all zeros) or
/// a network holding the leased one: its entry carries the lease. Others cannot be met (one address
/// per tunnel): their entry carries the all-zero address with the full prefix length, as the RFC asks.
/// The lease is always in the answer (request ID 0 if no request got it), because an ADDRESS_ASSIGN
/// lists every address the client holds.
fn answer_address_requests(leased: IpAddr, requests: &[AddressEntry]) -> Vec<AddressEntry> {
    let unspecified = |family: IpAddr| -> IpAddr {
        if family.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() }
    };
    let mut entries: Vec<AddressEntry> = requests
        .iter()
        .map(|request| {
            let asked = request.network;
            let met = asked.address.is_ipv4() == leased.is_ipv4()
                && (asked.address.is_unspecified() || asked.contains(leased));
            let address = if met { leased } else { unspecified(asked.address) };
            AddressEntry { request_id: request.request_id, network: IpNetwork::host(address) }
        })
        .collect();
    if !entries.iter().any(|entry| entry.network.address == leased) {
        entries.insert(0, AddressEntry { request_id: 0, network: IpNetwork::host(leased) });
    }
    entries
}

async fn connect_socket(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: IpAddr = if address.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    socket.connect(address).await?;
    Ok(socket)
}

thread_local! {
    /// One receive buffer per worker thread, large enough for any UDP datagram (so a read is never
    /// truncated) without a 64 KiB buffer per tunnel: relays use it only between awaits.
    static RECV_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 65_536]);
}

type TunnelPermits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// Where a tunnel's payloads go: a UDP socket connected to the target (CONNECT-UDP), or an address
/// leased on the IP gateway (CONNECT-IP).
enum FarEnd {
    Udp(UdpSocket),
    Ip(IpLease),
}

/// Something from the far end.
enum Arrival {
    /// The UDP socket has datagrams to read.
    UdpReadable,
    /// A packet from the TUN device; `None` once the gateway stopped.
    Packet(Option<Bytes>),
}

impl FarEnd {
    /// # Cancel safety
    /// Cancel safe.
    async fn arrival(&mut self) -> Arrival {
        match self {
            Self::Udp(socket) => {
                let _ = socket.readable().await;
                Arrival::UdpReadable
            }
            Self::Ip(lease) => Arrival::Packet(lease.packets.recv().await),
        }
    }
}

/// One tunnel: its far end on one side, its datagram flow and stream on the other.
struct Relay {
    proxy: Arc<ProxyInner>,
    far: FarEnd,
    /// `None` when the connection has no QUIC datagrams: then everything goes as capsules.
    flow: Option<DatagramFlow>,
    downloads: CapsuleSender,
    _permits: TunnelPermits,
}

/// Why a relay ended.
#[derive(Debug)]
enum RelayEnd {
    ClientClosed,
    ClientReset(u64),
    /// The connection ended under the tunnel.
    ConnectionClosed,
    Idle,
    Malformed(String),
    GatewayStopped,
}

impl Relay {
    async fn run(mut self, uploads: RecvBody) {
        let end = self.relay(uploads).await;
        tracing::debug!(?end, "tunnel closed");
        let counters = &self.proxy.counters;
        counters.tunnels_active.fetch_sub(1, Ordering::Relaxed);
        match end {
            RelayEnd::Idle => {
                counters.tunnels_idle_closed.fetch_add(1, Ordering::Relaxed);
            }
            RelayEnd::Malformed(reason) => {
                // RFC 9297 §3.3: a malformed capsule stream is a malformed request: reset it.
                self.downloads.abort(reason);
            }
            RelayEnd::ClientReset(code) => tracing::debug!(code, "client reset the tunnel"),
            RelayEnd::ClientClosed | RelayEnd::ConnectionClosed | RelayEnd::GatewayStopped => {}
        }
        // Dropping `downloads` finishes our side of the stream (FIN) unless it was aborted above;
        // dropping the far end frees its socket or returns its address to the pool.
    }

    async fn relay(&mut self, mut uploads: RecvBody) -> RelayEnd {
        if let FarEnd::Ip(lease) = &self.far {
            // RFC 9484 §4.7: the client learns its address and routes before it can send anything.
            let gateway = lease.gateway();
            let assign =
                IpCapsule::AddressAssign(vec![AddressEntry { request_id: 0, network: IpNetwork::host(lease.address) }]);
            let _ = self.downloads.try_send(assign.encode());
            let _ = self.downloads.try_send(IpCapsule::RouteAdvertisement(gateway.routes().to_vec()).encode());
        }
        let idle_timeout = self.proxy.config.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let mut decoder = CapsuleReader::new();
        let mut flow = self.flow.take();
        let end = loop {
            tokio::select! {
                datagram = crate::next_datagram(&mut flow) => match datagram {
                    Some(datagram) => {
                        self.relay_to_far_end(&datagram);
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    }
                    // The stream's datagram side is gone; its end arrives on the stream.
                    None => flow = None,
                },
                frame = uploads.frame() => match frame {
                    Some(Ok(frame)) => {
                        let Some(data) = frame.data_ref() else { continue };
                        decoder.push(data);
                        loop {
                            match decoder.next_capsule() {
                                Ok(Some(capsule)) if capsule.capsule_type == CAPSULE_DATAGRAM => {
                                    self.relay_to_far_end(&capsule.value);
                                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                                }
                                Ok(Some(capsule)) => {
                                    if let Err(malformed) = self.on_capsule(&capsule) {
                                        return RelayEnd::Malformed(malformed);
                                    }
                                }
                                Ok(None) => break,
                                Err(too_large) => return RelayEnd::Malformed(too_large.to_string()),
                            }
                        }
                    }
                    // RFC 9297 §3.3: a stream that ends inside a capsule is malformed.
                    None => match decoder.finish() {
                        Ok(()) => break RelayEnd::ClientClosed,
                        Err(truncated) => break RelayEnd::Malformed(truncated),
                    },
                    Some(Err(BodyError::Reset(code))) => break RelayEnd::ClientReset(code),
                    Some(Err(_)) => break RelayEnd::ConnectionClosed,
                },
                arrival = self.far.arrival() => {
                    let relayed = match arrival {
                        Arrival::UdpReadable => self.relay_from_target(flow.as_ref()),
                        Arrival::Packet(Some(packet)) => {
                            self.relay_to_client(flow.as_ref(), crate::context_zero_datagram(&packet));
                            true
                        }
                        Arrival::Packet(None) => break RelayEnd::GatewayStopped,
                    };
                    if relayed {
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    }
                    if self.downloads.is_closed() {
                        break RelayEnd::ClientClosed;
                    }
                }
                () = &mut idle => break RelayEnd::Idle,
            }
        };
        self.flow = flow;
        end
    }

    /// A capsule other than DATAGRAM. Unknown types are skipped (RFC 9297 §3.2); on an IP tunnel an
    /// ADDRESS_REQUEST is answered by [`answer_address_requests`]. `Err` when the capsule is malformed.
    fn on_capsule(&self, capsule: &Capsule) -> Result<(), String> {
        let FarEnd::Ip(lease) = &self.far else { return Ok(()) };
        match IpCapsule::decode(capsule.capsule_type, &capsule.value).map_err(|err| err.to_string())? {
            Some(IpCapsule::AddressRequest(requests)) => {
                let assigned = answer_address_requests(lease.address, &requests);
                if self.downloads.try_send(IpCapsule::AddressAssign(assigned).encode()).is_err() {
                    self.proxy.counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The client's own addresses and routes change nothing here: every packet is checked
            // against the leased address and the gateway's routes.
            Some(IpCapsule::AddressAssign(_) | IpCapsule::RouteAdvertisement(_)) | None => {}
        }
        Ok(())
    }

    /// Sends one HTTP Datagram payload from the client to the far end.
    fn relay_to_far_end(&self, payload: &[u8]) {
        let counters = &self.proxy.counters;
        let Some((context, inner)) = crate::split_context(payload) else {
            counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if context != CONTEXT_UDP_PAYLOAD {
            counters.dropped_unknown_context.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sent = match &self.far {
            FarEnd::Udp(socket) => socket.try_send(inner).map(drop).map_err(|err| match err.kind() {
                std::io::ErrorKind::WouldBlock => &counters.dropped_queue_full,
                _ => &counters.dropped_send_failed,
            }),
            FarEnd::Ip(lease) => lease.forward(inner, &self.proxy.config.policy).map_err(|refused| match refused {
                ForwardRefused::Malformed => &counters.dropped_malformed,
                ForwardRefused::Spoofed => &counters.dropped_not_routed,
                ForwardRefused::Denied => &counters.dropped_policy,
                ForwardRefused::QueueFull => &counters.dropped_queue_full,
                ForwardRefused::Failed => &counters.dropped_send_failed,
            }),
        };
        match sent {
            Ok(()) => {
                counters.datagrams_to_target.fetch_add(1, Ordering::Relaxed);
                counters.bytes_to_target.fetch_add(inner.len() as u64, Ordering::Relaxed);
            }
            Err(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Relays what the target sent, up to a batch; true if anything arrived.
    fn relay_from_target(&self, flow: Option<&DatagramFlow>) -> bool {
        let FarEnd::Udp(socket) = &self.far else { return false };
        let mut received = false;
        for _ in 0..RECV_BATCH {
            let frame = RECV_BUFFER.with_borrow_mut(|buffer| match socket.try_recv(buffer) {
                Ok(length) => Some(Ok(crate::context_zero_datagram(&buffer[..length]))),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(err) => Some(Err(err)),
            });
            match frame {
                None => break,
                // An ICMP error for an earlier send (port unreachable): the tunnel stays, the
                // client's next datagram may find the target up.
                Some(Err(err)) => tracing::trace!(error = %err, "target socket error"),
                Some(Ok(frame)) => {
                    received = true;
                    self.relay_to_client(flow, frame);
                }
            }
        }
        received
    }

    /// Sends one HTTP Datagram payload (context ID included) to the client, as a QUIC datagram or
    /// a capsule; drops and counts it when it does not fit or the queue is full.
    fn relay_to_client(&self, flow: Option<&DatagramFlow>, frame: Vec<u8>) {
        let counters = &self.proxy.counters;
        let inner_length = frame.len() - 1;
        // RFC 9297 §2.1.1: HTTP Datagrams only to a client whose SETTINGS enabled them; else a capsule.
        let sent = match flow.filter(|flow| flow.peer_enabled()) {
            Some(flow) => flow.send(&frame).map_err(|err| match err {
                DatagramError::TooLarge { .. } => &counters.dropped_too_large,
                _ => &counters.dropped_queue_full,
            }),
            None => self
                .downloads
                .try_send(encode_capsule(CAPSULE_DATAGRAM, &frame))
                .map_err(|_| &counters.dropped_queue_full),
        };
        match sent {
            Ok(()) => {
                counters.datagrams_from_target.fetch_add(1, Ordering::Relaxed);
                counters.bytes_from_target.fetch_add(inner_length as u64, Ordering::Relaxed);
            }
            Err(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_status_values_are_structured_fields() {
        assert_eq!(proxy_status("dns_error", ""), "quiver; error=dns_error");
        assert_eq!(
            proxy_status("dns_error", "cannot resolve \"x\\y\": é"),
            "quiver; error=dns_error; details=\"cannot resolve \\\"x\\\\y\\\": ?\""
        );
    }

    #[test]
    fn address_requests_get_the_lease_or_the_all_zero_answer() {
        let leased: IpAddr = "10.89.0.2".parse().unwrap();
        let request = |id: u64, network: &str| AddressEntry { request_id: id, network: network.parse().unwrap() };
        let answer = answer_address_requests(
            leased,
            &[request(1, "0.0.0.0/32"), request(2, "10.89.0.0/24"), request(3, "::/128"), request(4, "10.1.0.0/16")],
        );
        let shown: Vec<String> = answer.iter().map(|entry| format!("{} {}", entry.request_id, entry.network)).collect();
        assert_eq!(shown, ["1 10.89.0.2/32", "2 10.89.0.2/32", "3 ::/128", "4 0.0.0.0/32"]);
        // Nothing met: the lease is still listed, unsolicited.
        let answer = answer_address_requests(leased, &[request(7, "192.0.2.9/32")]);
        let shown: Vec<String> = answer.iter().map(|entry| format!("{} {}", entry.request_id, entry.network)).collect();
        assert_eq!(shown, ["0 10.89.0.2/32", "7 0.0.0.0/32"]);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn refusals_carry_status_and_proxy_status() {
        let response = Refusal::new(StatusCode::BAD_GATEWAY, Some("dns_error"), "no such host", |c| &c.refused_resolve)
            .into_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()["proxy-status"], "quiver; error=dns_error; details=\"no such host\"");
        let auth = Refusal::new(StatusCode::PROXY_AUTHENTICATION_REQUIRED, None, "", |c| &c.refused_unauthorized)
            .into_response();
        assert_eq!(auth.headers()["proxy-authenticate"], "Bearer");
        assert!(auth.headers().get("proxy-status").is_none());
    }
}
