//! The HTTP/3 client: `send_request(http::Request) -> http::Response<RecvBody>`, one connection per
//! authority, reused while it lives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body::Body;
use quiver::{ClientConfig, ConnectionHandle, Endpoint};
use tokio::sync::{OnceCell, Semaphore, oneshot};

use crate::body::RecvBody;
use crate::command::{self, NewRequest, Wake, WakeSender};
use crate::driver::{H3Driver, H3Settings};
use crate::error::Error;
use crate::headers;

/// Requests one connection may have waiting for a stream or for their response head at once.
const MAX_PENDING_REQUESTS: usize = 4096;

/// One HTTP/3 connection; cheap to clone. Many requests may run on it at once.
#[derive(Clone)]
pub struct H3Connection {
    wake: WakeSender,
    handle: ConnectionHandle,
    permits: Arc<Semaphore>,
    going_away: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for H3Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Connection").field("connection", &self.handle).finish_non_exhaustive()
    }
}

impl H3Connection {
    /// Opens an HTTP/3 connection to `addr` on `endpoint` (which needs a client configuration with ALPN
    /// `h3`, see [`client_config`](crate::client_config)).
    ///
    /// # Errors
    /// [`Error::Connect`] when the QUIC handshake fails.
    ///
    /// # Cancel safety
    /// Cancel safe in that nothing is lost: dropping the future drops the connection it would have
    /// returned. As with [`Endpoint::connect`], the handshake already under way is not stopped; with
    /// no handle left, the connection closes when it completes or fails.
    pub async fn connect(endpoint: &Endpoint, addr: SocketAddr, server_name: &str) -> Result<Self, Error> {
        Self::connect_with(endpoint, addr, server_name, H3Settings::default()).await
    }

    /// As [`connect`](Self::connect), with explicit HTTP/3 settings.
    ///
    /// # Errors
    /// [`Error::Connect`] when the QUIC handshake fails.
    ///
    /// # Cancel safety
    /// Cancel safe in that nothing is lost: dropping the future drops the connection it would have
    /// returned. As with [`Endpoint::connect`], the handshake already under way is not stopped; with
    /// no handle left, the connection closes when it completes or fails.
    pub async fn connect_with(
        endpoint: &Endpoint,
        addr: SocketAddr,
        server_name: &str,
        settings: H3Settings,
    ) -> Result<Self, Error> {
        let driver = H3Driver::client(settings);
        let wake = driver.waker();
        let going_away = driver.going_away_flag();
        let handle = endpoint.connect(addr, server_name, driver).await?;
        Ok(Self { wake, handle, permits: Arc::new(Semaphore::new(MAX_PENDING_REQUESTS)), going_away })
    }

    /// The underlying QUIC connection.
    pub fn quic(&self) -> &ConnectionHandle {
        &self.handle
    }

    /// Whether new requests would fail: the connection closed, or the server sent GOAWAY. [`Client`]
    /// opens a new connection then.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed() || self.wake.is_closed() || self.is_going_away()
    }

    /// Whether the server announced it is shutting down (GOAWAY). Requests already sent still complete.
    pub fn is_going_away(&self) -> bool {
        self.going_away.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends a request and waits for the response head; the body streams in after.
    ///
    /// The request body is sent concurrently with waiting for the response, so a server that answers
    /// before reading the whole upload works.
    ///
    /// # Errors
    /// See [`Error`]: the server reset the stream, the connection closed, malformed response, ...
    ///
    /// # Cancel safety
    /// Dropping the future cancels the request: if it was sent, its stream is reset with
    /// H3_REQUEST_CANCELLED (the server stops working on it); if not, it is never sent. A response
    /// head that arrived as the future was dropped is discarded and its body stopped (STOP_SENDING).
    pub async fn send_request<B>(&self, request: Request<B>) -> Result<Response<RecvBody>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::fmt::Display,
    {
        let fields = headers::request_fields(&request)?;
        let is_connect = request.method() == http::Method::CONNECT;
        let body = request.into_body();
        let end = body.is_end_stream();
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| self.closed_error())?;
        let (opened_tx, opened_rx) = oneshot::channel();
        let (response_tx, response_rx) = oneshot::channel();
        self.wake
            .send(Wake::Request(NewRequest {
                fields,
                end,
                is_connect,
                opened: opened_tx,
                response: response_tx,
                _permit: permit,
            }))
            .map_err(|_| self.closed_error())?;
        if !end {
            tokio::spawn(async move {
                if let Ok(sink) = opened_rx.await
                    && let Err(reason) = command::send_body(body, &sink).await
                {
                    tracing::debug!(%reason, "request body not completed");
                }
            });
        }
        let mut cancel = CancelOnDrop { wake: &self.wake, armed: true };
        let outcome = response_rx.await;
        cancel.armed = false;
        match outcome {
            Ok(result) => result.map(|response| response.map(RecvBody::new)),
            Err(_) => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> Error {
        Error::ConnectionClosed(quiver::ConnectionError::Aborted)
    }
}

/// Tells the driver when a caller stops waiting for its response head, so the request is cancelled on
/// the wire instead of running to its end for nobody.
struct CancelOnDrop<'a> {
    wake: &'a WakeSender,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.wake.send(Wake::ResponseAbandoned);
        }
    }
}

/// An HTTP/3 client that keeps one connection per authority (`host:port`) and reuses it.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use http_body_util::BodyExt;
///
/// let client = quiver_h3::Client::new(quiver_h3::client_config().build()?);
/// let response = client.send_request(http::Request::get("https://localhost:4433/").body(String::new())?).await?;
/// println!("{}", response.status());
/// let body = response.into_body().collect().await?.to_bytes();
/// # Ok(()) }
/// ```
///
/// Clones share the connections (and their sockets); a clone made with
/// [`with_timeout`](Client::with_timeout) differs only in its timeout.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
    /// Per handle, not shared: `with_timeout` changes it for one handle without splitting the
    /// connection cache.
    timeout: Option<Duration>,
}

/// One authority's connection, shared by every request to it. The map's lock is held only to find or
/// insert a slot; the DNS lookup and the handshake run inside the slot, so connecting to one authority
/// never holds up requests to another, and concurrent requests to the same authority wait for one
/// handshake instead of starting several.
type ConnectionSlot = Arc<OnceCell<H3Connection>>;

struct ClientInner {
    config: ClientConfig,
    settings: H3Settings,
    /// One client endpoint per address family, made on first use. Creating one does not wait.
    endpoints: std::sync::Mutex<HashMap<bool, Endpoint>>,
    /// Keyed by `host:port`. A slot whose connect failed is removed, so the next request tries again;
    /// a slot whose connection closed is replaced on the next request to it. The keys are the
    /// authorities this client's own callers name, so the map grows only as they choose.
    connections: std::sync::Mutex<HashMap<String, ConnectionSlot>>,
}

impl Client {
    /// A client with this QUIC configuration (ALPN must include `h3`).
    pub fn new(config: ClientConfig) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                config,
                settings: H3Settings::default(),
                endpoints: std::sync::Mutex::new(HashMap::new()),
                connections: std::sync::Mutex::new(HashMap::new()),
            }),
            timeout: None,
        }
    }

    /// This client with requests failing with [`Error::TimedOut`] when their response head has not
    /// arrived within `timeout` (connecting included). The returned handle shares its connections with
    /// `self` and every clone of it; only the timeout is its own.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout: Some(timeout), ..self }
    }

    /// The connection for `uri`'s authority, opening it if needed.
    ///
    /// # Errors
    /// Invalid URI, resolution failure, or connection failure.
    ///
    /// # Cancel safety
    /// Cancel safe. Dropping the future while it connects abandons this caller's wait only; other
    /// callers waiting for the same authority take over the connecting (with a fresh handshake) if
    /// it was the one connecting.
    pub async fn connection(&self, uri: &Uri) -> Result<H3Connection, Error> {
        if uri.scheme_str().is_some_and(|scheme| scheme != "https") {
            return Err(Error::InvalidUri(uri.to_string()));
        }
        let host = uri.host().ok_or_else(|| Error::InvalidUri(uri.to_string()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let key = format!("{host}:{port}");
        let slot = self.slot(&key);
        let connecting = slot.get_or_try_init(|| self.connect(host, port));
        match connecting.await {
            Ok(connection) => Ok(connection.clone()),
            Err(err) => {
                self.forget(&key, &slot);
                Err(err)
            }
        }
    }

    /// The slot for `key`: the live one, or a fresh one in place of a closed connection's.
    fn slot(&self, key: &str) -> ConnectionSlot {
        let mut connections = self.inner.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = connections.get(key)
            && !slot.get().is_some_and(H3Connection::is_closed)
        {
            return slot.clone();
        }
        let slot = ConnectionSlot::default();
        connections.insert(key.to_owned(), slot.clone());
        slot
    }

    /// Removes `slot` from the map unless another request already replaced it.
    fn forget(&self, key: &str, slot: &ConnectionSlot) {
        let mut connections = self.inner.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if connections.get(key).is_some_and(|current| Arc::ptr_eq(current, slot)) {
            connections.remove(key);
        }
    }

    async fn connect(&self, host: &str, port: u16) -> Result<H3Connection, Error> {
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| Error::Resolve { host: host.to_owned(), source })?
            .next()
            .ok_or_else(|| Error::Resolve { host: host.to_owned(), source: std::io::Error::other("no addresses") })?;
        let endpoint = self.endpoint_for(addr)?;
        H3Connection::connect_with(&endpoint, addr, host, self.inner.settings.clone()).await
    }

    fn endpoint_for(&self, addr: SocketAddr) -> Result<Endpoint, Error> {
        let mut endpoints = self.inner.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(endpoint) = endpoints.get(&addr.is_ipv4()) {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let endpoint = Endpoint::client(bind, self.inner.config.clone())?;
        endpoints.insert(addr.is_ipv4(), endpoint.clone());
        Ok(endpoint)
    }

    /// Sends a request to the authority in its URI (`https://host:port/path`).
    ///
    /// # Errors
    /// See [`Error`]; [`Error::TimedOut`] if a timeout is set and passes.
    ///
    /// # Cancel safety
    /// As [`H3Connection::send_request`]: dropping the future (or the timeout passing) cancels the
    /// request on the wire if it was sent.
    pub async fn send_request<B>(&self, request: Request<B>) -> Result<Response<RecvBody>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::fmt::Display,
    {
        let exchange = async {
            let connection = self.connection(request.uri()).await?;
            connection.send_request(request).await
        };
        match self.timeout {
            Some(timeout) => tokio::time::timeout(timeout, exchange).await.map_err(|_| Error::TimedOut(timeout))?,
            None => exchange.await,
        }
    }
}
