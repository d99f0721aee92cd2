//! The CONNECT-UDP client: [`MasqueClient`] holds one HTTP/3 connection to a proxy (reopened when it
//! closes) and opens [`UdpTunnel`]s on it, as many as the proxy allows.

use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use quiver::{ClientConfig, ConnectionError};
use quiver_h3::datagram::{CAPSULE_DATAGRAM, encode_capsule};
use quiver_h3::{BodyError, DatagramError, DatagramFlow, H3Connection, Protocol, RecvBody};

use crate::body::{CapsuleReader, CapsuleSender, ChannelBody, QueueRefused};
use crate::target::Target;
use crate::template::UriTemplate;
use crate::{CONNECT_UDP, CONTEXT_UDP_PAYLOAD, MAX_UDP_PAYLOAD, context_zero_datagram};

/// How long a tunnel that saw its stream end unexpectedly waits for the connection's close reason.
const CLOSE_REASON_WAIT: Duration = Duration::from_secs(1);

/// A client configuration builder for talking to a proxy: ALPN `h3` and QUIC datagrams on.
pub fn client_config() -> quiver::ClientConfigBuilder {
    quiver_h3::client_config().datagrams(true)
}

/// The proxy URL or template given to [`MasqueClient::new`] is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Not `https://host[:port]`.
    #[error("invalid proxy URL {0:?}: need https://HOST[:PORT]")]
    InvalidProxy(String),
}

/// Opening or using a tunnel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The proxy could not be reached, or the request failed before a response.
    #[error("cannot reach the proxy: {0}")]
    Proxy(#[source] quiver_h3::Error),
    /// No response within the configured timeout.
    #[error("the proxy did not answer within {0:?}")]
    TimedOut(Duration),
    /// The proxy answered with a non-2xx status.
    #[error("the proxy refused the tunnel to {target}: {status}{}", proxy_status.as_ref().map(|status| format!(" ({status})")).unwrap_or_default())]
    Refused {
        /// The target asked for.
        target: String,
        /// The proxy's status code.
        status: StatusCode,
        /// The proxy's `Proxy-Status` header, which says why (RFC 9209).
        proxy_status: Option<String>,
    },
    /// The proxy closed the tunnel (it finished the stream: idle timeout, or its target socket went).
    #[error("the proxy closed the tunnel")]
    Closed,
    /// The proxy reset the tunnel's stream with this HTTP/3 error code.
    #[error("the proxy reset the tunnel (HTTP/3 error 0x{0:x})")]
    Reset(u64),
    /// The connection to the proxy ended, taking every tunnel on it.
    #[error("connection to the proxy lost: {0}")]
    ConnectionLost(ConnectionError),
    /// The payload does not fit: in one QUIC datagram on this path, or in a UDP datagram at all.
    #[error("payload of {size} bytes exceeds the {max} bytes this tunnel carries")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The largest payload that fits now.
        max: usize,
    },
    /// The send queue is full: the datagram was dropped.
    #[error("tunnel send queue full; datagram dropped")]
    QueueFull,
    /// The proxy sent a capsule larger than any UDP payload, or ended the stream inside a capsule.
    #[error("the proxy sent a malformed capsule stream: {0}")]
    Malformed(String),
    /// The proxy's 2xx answer to the tunnel request is malformed: it carries `Content-Length` or
    /// `Transfer-Encoding`, which RFC 9298 §3.5 forbids there (the stream is a tunnel, not a body of
    /// some length). The tunnel was not opened.
    #[error("the proxy's answer to the tunnel request is malformed: {0}")]
    MalformedResponse(String),
}

/// A handle on a CONNECT-UDP proxy; cheap to clone. Tunnels share one HTTP/3 connection, which is
/// opened on first use and reopened after it closes.
///
/// ```no_run
/// use quiver_masque::MasqueClient;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = quiver_masque::client_config().trust_pem_file("proxy-ca.pem").build()?;
/// let client = MasqueClient::new("https://proxy.example:4433", config)?.with_bearer_token("s3cret");
/// // Two tunnels on the same connection.
/// let dns = client.open(&"9.9.9.9:53".parse()?).await?;
/// let ntp = client.open(&"pool.ntp.org:123".parse()?).await?;
/// # drop((dns, ntp)); Ok(()) }
/// ```
#[derive(Clone)]
pub struct MasqueClient {
    http: quiver_h3::Client,
    authority: Authority,
    template: UriTemplate,
    bearer_token: Option<String>,
    open_timeout: Option<Duration>,
    /// Whether our configuration offers QUIC datagrams. quiver-h3 checks the proxy's side (its QUIC
    /// transport parameter and `SETTINGS_H3_DATAGRAM`) but cannot see ours, and RFC 9297 §2.1.1 wants
    /// both sides to have enabled HTTP Datagrams before they are used.
    datagrams: bool,
}

impl std::fmt::Debug for MasqueClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasqueClient")
            .field("proxy", &self.authority)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl MasqueClient {
    /// A client for the proxy at `proxy` (`https://HOST[:PORT]`, port 443 by default). `config`
    /// should come from [`client_config`]; without QUIC datagrams, tunnels use capsules.
    ///
    /// # Errors
    /// [`ClientError::InvalidProxy`] when `proxy` is not an https URL with a host.
    pub fn new(proxy: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let invalid = || ClientError::InvalidProxy(proxy.to_owned());
        let uri: Uri = proxy.parse().map_err(|_| invalid())?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() || uri.path_and_query().is_some_and(|p| p != "/") {
            return Err(invalid());
        }
        let authority = uri.authority().cloned().ok_or_else(invalid)?;
        Ok(Self {
            datagrams: config.transport().datagrams,
            http: quiver_h3::Client::new(config),
            authority,
            template: UriTemplate::default(),
            bearer_token: None,
            open_timeout: None,
        })
    }

    /// Uses `template` instead of the default `/.well-known/masque/udp/{target_host}/{target_port}/`.
    pub fn with_template(mut self, template: UriTemplate) -> Self {
        self.template = template;
        self
    }

    /// Sends `Proxy-Authorization: Bearer <token>` with every tunnel request.
    pub fn with_bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Gives up opening a tunnel (connecting included) after `timeout`.
    pub fn with_open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = Some(timeout);
        self
    }

    /// The proxy's `host:port`.
    pub fn proxy(&self) -> &Authority {
        &self.authority
    }

    /// Opens a tunnel to `target` and waits for the proxy's answer.
    ///
    /// # Errors
    /// [`TunnelError::Proxy`] (connection or request failure), [`TunnelError::TimedOut`],
    /// [`TunnelError::Refused`] with the proxy's status and `Proxy-Status`,
    /// [`TunnelError::MalformedResponse`] for a 2xx answer with `Content-Length`.
    ///
    /// # Cancel safety
    /// Cancel safe: a tunnel whose opening is cancelled is closed.
    pub async fn open(&self, target: &Target) -> Result<UdpTunnel, TunnelError> {
        let path = self.template.expand(target);
        let stream = self.with_timeout(self.open_stream(&path, CONNECT_UDP, &target.to_string())).await?;
        Ok(UdpTunnel { stream, target: target.clone() })
    }

    /// Runs `opening` within the open timeout, if one is set.
    pub(crate) async fn with_timeout<T>(
        &self,
        opening: impl std::future::Future<Output = Result<T, TunnelError>>,
    ) -> Result<T, TunnelError> {
        match self.open_timeout {
            Some(timeout) => {
                tokio::time::timeout(timeout, opening).await.map_err(|_| TunnelError::TimedOut(timeout))?
            }
            None => opening.await,
        }
    }

    /// Sends an extended CONNECT for `protocol` to `path` and returns the stream once the proxy
    /// answered 2xx; `what` names the tunnel in errors.
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        protocol: &str,
        what: &str,
    ) -> Result<TunnelStream, TunnelError> {
        let uri: Uri = format!("https://{}{path}", self.authority)
            .parse()
            .map_err(|_| TunnelError::Proxy(quiver_h3::Error::InvalidUri(path.to_owned())))?;
        let connection = self.http.connection(&uri).await.map_err(TunnelError::Proxy)?;
        let (uploads, body) = ChannelBody::channel();
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .header("capsule-protocol", "?1")
            .extension(Protocol(protocol.into()));
        if let Some(token) = &self.bearer_token {
            request = request.header(http::header::PROXY_AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(body).map_err(|err| TunnelError::Proxy(quiver_h3::Error::InvalidRequest(err)))?;
        let response = connection.send_request(request).await.map_err(TunnelError::Proxy)?;
        if !response.status().is_success() {
            let proxy_status = response
                .headers()
                .get("proxy-status")
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
            return Err(TunnelError::Refused { target: what.to_owned(), status: response.status(), proxy_status });
        }
        // RFC 9298 §3.5 (RFC 9484 §4.4 likewise): a 2xx answer with a body length is malformed.
        // quiver-h3 ignores those fields on CONNECT answers (RFC 9110 §9.3.6), so the check is ours.
        // Returning drops the request and the answer, which ends the stream.
        let length_fields = [http::header::CONTENT_LENGTH, http::header::TRANSFER_ENCODING];
        if let Some(field) = length_fields.iter().find(|field| response.headers().contains_key(*field)) {
            return Err(TunnelError::MalformedResponse(format!(
                "its {} answer for {what} carries {field}",
                response.status()
            )));
        }
        let flow = DatagramFlow::take_from(response.extensions()).filter(|_| self.datagrams);
        Ok(TunnelStream {
            _client: self.http.clone(),
            flow,
            uploads,
            downloads: response.into_body(),
            decoder: CapsuleReader::new(),
            connection,
            dropped_on_receive: 0,
        })
    }
}

/// The request stream of an open tunnel and its datagrams: what CONNECT-UDP and CONNECT-IP share.
pub(crate) struct TunnelStream {
    /// Keeps the client's endpoint (its socket) alive as long as a tunnel uses it.
    _client: quiver_h3::Client,
    /// QUIC datagrams, when the connection has them; otherwise everything goes as capsules.
    flow: Option<DatagramFlow>,
    uploads: CapsuleSender,
    downloads: RecvBody,
    decoder: CapsuleReader,
    connection: H3Connection,
    dropped_on_receive: u64,
}

/// What arrived on a tunnel.
pub(crate) enum StreamEvent {
    /// A context-0 payload (a UDP payload or an IP packet), from a datagram or a DATAGRAM capsule.
    Payload(Bytes),
    /// Any other capsule, for the protocol to interpret or skip.
    Capsule(quiver_h3::datagram::Capsule),
}

impl TunnelStream {
    /// The flow, if the proxy has enabled HTTP Datagrams (RFC 9297 §2.1.1); `None` means capsules.
    fn datagram_flow(&self) -> Option<&DatagramFlow> {
        self.flow.as_ref().filter(|flow| flow.peer_enabled())
    }

    pub(crate) fn uses_quic_datagrams(&self) -> bool {
        self.datagram_flow().is_some()
    }

    pub(crate) fn max_payload(&self) -> usize {
        match self.datagram_flow() {
            // One byte of context ID.
            Some(flow) => flow.max_payload().saturating_sub(1),
            None => MAX_UDP_PAYLOAD,
        }
    }

    /// Sends `payload` with context ID 0, never waiting.
    pub(crate) fn send(&self, payload: &[u8]) -> Result<(), TunnelError> {
        if payload.len() > MAX_UDP_PAYLOAD {
            return Err(TunnelError::TooLarge { size: payload.len(), max: self.max_payload() });
        }
        let frame = context_zero_datagram(payload);
        match self.datagram_flow() {
            Some(flow) => flow.send(&frame).map_err(|err| match err {
                DatagramError::TooLarge { max, .. } => {
                    TunnelError::TooLarge { size: payload.len(), max: max.saturating_sub(1) }
                }
                DatagramError::QueueFull => TunnelError::QueueFull,
                _ => TunnelError::Closed,
            }),
            None => self.send_capsule(encode_capsule(CAPSULE_DATAGRAM, &frame)),
        }
    }

    /// Queues a whole capsule on the stream, never waiting.
    pub(crate) fn send_capsule(&self, capsule: Bytes) -> Result<(), TunnelError> {
        self.uploads.try_send(capsule).map_err(|refused| match refused {
            QueueRefused::Full => TunnelError::QueueFull,
            QueueRefused::Closed => TunnelError::Closed,
        })
    }

    /// The next payload or capsule.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(crate) async fn recv(&mut self) -> Result<StreamEvent, TunnelError> {
        loop {
            while let Some(capsule) =
                self.decoder.next_capsule().map_err(|err| TunnelError::Malformed(err.to_string()))?
            {
                if capsule.capsule_type != CAPSULE_DATAGRAM {
                    return Ok(StreamEvent::Capsule(capsule));
                }
                if let Some(payload) = self.context_zero(&capsule.value) {
                    return Ok(StreamEvent::Payload(payload));
                }
            }
            tokio::select! {
                datagram = crate::next_datagram(&mut self.flow) => match datagram {
                    Some(datagram) => {
                        if let Some(payload) = self.context_zero(&datagram) {
                            return Ok(StreamEvent::Payload(payload));
                        }
                    }
                    None => self.flow = None,
                },
                frame = self.downloads.frame() => match frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            self.decoder.push(data);
                        }
                    }
                    // RFC 9297 §3.3: a stream that ends inside a capsule is malformed.
                    None => return Err(self.decoder.finish().map_or_else(TunnelError::Malformed, |()| TunnelError::Closed)),
                    Some(Err(BodyError::Reset(code))) => return Err(TunnelError::Reset(code)),
                    Some(Err(_)) => return Err(self.connection_lost().await),
                },
            }
        }
    }

    /// The payload of a context-0 datagram; counts and drops the rest.
    fn context_zero(&mut self, datagram: &Bytes) -> Option<Bytes> {
        match crate::split_context(datagram) {
            Some((CONTEXT_UDP_PAYLOAD, payload)) => Some(datagram.slice(datagram.len() - payload.len()..)),
            _ => {
                self.dropped_on_receive += 1;
                None
            }
        }
    }

    /// Finishes our side of the stream and waits for the proxy to finish (or reset) its side, which
    /// it does once the tunnel's socket or address is released. Payloads still arriving are dropped.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call has finished our side; the proxy closes the tunnel anyway.
    pub(crate) async fn close(self) {
        let Self { uploads, flow, mut downloads, .. } = self;
        drop((uploads, flow));
        while let Some(Ok(_)) = downloads.frame().await {}
    }

    async fn connection_lost(&self) -> TunnelError {
        match tokio::time::timeout(CLOSE_REASON_WAIT, self.connection.quic().closed()).await {
            Ok(reason) => TunnelError::ConnectionLost(reason),
            Err(_) => TunnelError::Closed,
        }
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("quic_datagrams", &self.flow.is_some())
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// One CONNECT-UDP tunnel: send UDP payloads to the target and receive its answers.
///
/// Dropping it closes the tunnel (the request stream is finished).
///
/// ```no_run
/// # async fn run(client: quiver_masque::MasqueClient) -> Result<(), quiver_masque::TunnelError> {
/// let mut tunnel = client.open(&"192.0.2.7:7".parse().expect("a target")).await?;
/// tunnel.send(b"ping")?; // never waits; refuses what does not fit (TunnelError::TooLarge)
/// let answer = tunnel.recv().await?; // Err says why the tunnel ended
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct UdpTunnel {
    stream: TunnelStream,
    target: Target,
}

impl UdpTunnel {
    /// Where this tunnel goes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether payloads travel as QUIC datagrams (else as capsules on the stream).
    pub fn uses_quic_datagrams(&self) -> bool {
        self.stream.uses_quic_datagrams()
    }

    /// The largest UDP payload [`send`](Self::send) accepts now.
    pub fn max_payload(&self) -> usize {
        self.stream.max_payload()
    }

    /// Sends one UDP payload to the target. Never waits: a payload that does not fit or finds the
    /// queue full is refused (and not sent), as UDP would drop it.
    ///
    /// # Errors
    /// [`TunnelError::TooLarge`], [`TunnelError::QueueFull`], [`TunnelError::Closed`] once the tunnel or
    /// its connection is gone.
    pub fn send(&self, payload: &[u8]) -> Result<(), TunnelError> {
        self.stream.send(payload)
    }

    /// The next UDP payload from the target. Capsules other than DATAGRAM are skipped.
    ///
    /// # Errors
    /// Why the tunnel ended: [`TunnelError::Closed`], [`TunnelError::Reset`],
    /// [`TunnelError::ConnectionLost`] (with the connection's close reason), [`TunnelError::Malformed`].
    ///
    /// # Cancel safety
    /// Cancel safe: no payload is lost when the future is dropped.
    pub async fn recv(&mut self) -> Result<Bytes, TunnelError> {
        loop {
            if let StreamEvent::Payload(payload) = self.stream.recv().await? {
                return Ok(payload);
            }
        }
    }

    /// Closes the tunnel and waits until the proxy has closed it too (its socket is then free),
    /// rather than only dropping it. Bound it with a timeout if the proxy may not answer.
    ///
    /// # Cancel safety
    /// Cancel safe: the tunnel is closing either way.
    pub async fn close(self) {
        self.stream.close().await;
    }

    /// Datagrams this tunnel dropped on receive because their context ID was not 0.
    pub fn dropped_on_receive(&self) -> u64 {
        self.stream.dropped_on_receive
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::HeaderValue;
    use http_body_util::Full;
    use quiver_test_support::guarded;

    use super::*;

    /// A stand-in proxy that answers every request 200 with `fields` and `body`, then ends the stream:
    /// what a broken or hostile proxy may send, and the real one never does. Serves until the test ends.
    fn fake_proxy(fields: &'static [(&'static str, &'static str)], body: &'static [u8]) -> MasqueClient {
        let config = quiver_h3::server_config().datagrams(true).self_signed(["localhost"]).build().unwrap();
        let endpoint = quiver::Endpoint::server("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let port = endpoint.local_addr().port();
        let service = tower::service_fn(move |_request: Request<RecvBody>| async move {
            let mut response = http::Response::new(Full::new(Bytes::from_static(body)));
            for (name, value) in fields {
                response.headers_mut().append(*name, HeaderValue::from_static(value));
            }
            Ok::<_, Infallible>(response)
        });
        let settings = quiver_h3::H3Settings { extended_connect: true, ..quiver_h3::H3Settings::default() };
        tokio::spawn(quiver_h3::Server::new(service).settings(settings).serve(endpoint));
        let config = client_config().insecure_skip_verification().build().unwrap();
        MasqueClient::new(&format!("https://localhost:{port}"), config).unwrap()
    }

    fn target() -> Target {
        "192.0.2.1:53".parse().unwrap()
    }

    #[tokio::test]
    async fn a_2xx_answer_with_content_length_is_malformed() {
        let client = fake_proxy(&[("capsule-protocol", "?1"), ("content-length", "0")], b"");
        let opened = guarded("open", client.open(&target())).await;
        assert!(matches!(opened, Err(TunnelError::MalformedResponse(_))), "{opened:?}");
        let client = fake_proxy(&[("capsule-protocol", "?1"), ("content-length", "100")], b"");
        let opened = guarded("open_ip", client.open_ip()).await;
        assert!(matches!(opened, Err(TunnelError::MalformedResponse(_))), "CONNECT-IP too: {opened:?}");
    }

    /// One DATAGRAM capsule with its type in 8 bytes and its length in 4 (RFC 9000 §16 allows it; our
    /// encoder and quiche's never do it), carrying context ID 0 and `ping`.
    const NON_MINIMAL_CAPSULE: &[u8] = &[0xc0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 5, 0, b'p', b'i', b'n', b'g'];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proxy_ends_a_tunnel_of_non_minimal_varint_capsules_with_fin() {
        let config = crate::ProxyConfig::builder()
            .policy(crate::TargetPolicy::parse(&["127.0.0.1/32:1-65535"]).unwrap())
            .build()
            .unwrap();
        let quic = crate::proxy_server_config(&config).self_signed(["localhost"]).build().unwrap();
        let endpoint = quiver::Endpoint::server("127.0.0.1:0".parse().unwrap(), quic).unwrap();
        let port = endpoint.local_addr().port();
        let proxy = crate::Proxy::new(config);
        let serving = proxy.clone();
        tokio::spawn(async move { serving.serve(endpoint).await });
        let target = quiver_test_support::udp::spawn_responder(|_| None);
        let h3 = quiver_h3::Client::new(client_config().insecure_skip_verification().build().unwrap());
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://localhost:{port}/.well-known/masque/udp/127.0.0.1/{}/", target.port()))
            .header("capsule-protocol", "?1")
            .extension(Protocol(CONNECT_UDP.into()))
            .body(Full::new(Bytes::from_static(NON_MINIMAL_CAPSULE)))
            .unwrap();
        let response = guarded("the proxy's answer", h3.send_request(request)).await.expect("answered");
        assert_eq!(response.status(), StatusCode::OK);
        // Our FIN after a whole capsule: the proxy closes the tunnel with its own FIN, no reset.
        let end = guarded("the tunnel's end", response.into_body().collect()).await;
        assert!(end.is_ok(), "{end:?}");
        // The capsule was read whole and its payload relayed (or, if it found the target's fresh
        // socket not yet writable, dropped as UDP may).
        let stats = proxy.stats();
        assert_eq!(stats.datagrams_to_target + stats.dropped_queue_full, 1, "{stats:?}");
        assert_eq!(stats.dropped_malformed, 0);
    }

    #[tokio::test]
    async fn capsules_with_non_minimal_varints_then_fin_end_the_tunnel_cleanly() {
        // The proxy sends the capsule, then finishes the stream.
        let client = fake_proxy(&[("capsule-protocol", "?1")], NON_MINIMAL_CAPSULE);
        let mut tunnel = guarded("open", client.open(&target())).await.expect("tunnel");
        assert_eq!(guarded("payload", tunnel.recv()).await.expect("payload"), "ping");
        let end = guarded("end", tunnel.recv()).await;
        assert!(matches!(end, Err(TunnelError::Closed)), "a clean end, not a malformed stream: {end:?}");
    }
}
