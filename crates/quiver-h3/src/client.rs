//! The HTTP/3 client: `send_request(http::Request) -> http::Response<RecvBody>`, one connection per
//! authority, reused while it lives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body::Body;
use quiver::{ClientConfig, ConnectionHandle, Endpoint};
use tokio::sync::{Mutex, Semaphore, oneshot};

use crate::body::RecvBody;
use crate::driver::{self, H3Driver, H3Settings, NewRequest, Wake, WakeSender};
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
    pub async fn connect(endpoint: &Endpoint, addr: SocketAddr, server_name: &str) -> Result<Self, Error> {
        Self::connect_with(endpoint, addr, server_name, H3Settings::default()).await
    }

    /// As [`connect`](Self::connect), with explicit HTTP/3 settings.
    ///
    /// # Errors
    /// [`Error::Connect`] when the QUIC handshake fails.
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
    pub async fn send_request<B>(&self, request: Request<B>) -> Result<Response<RecvBody>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::fmt::Display,
    {
        let fields = headers::request_fields(&request).map_err(Error::InvalidRequest)?;
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
                    && let Err(reason) = driver::send_body(body, &sink).await
                {
                    tracing::debug!(%reason, "request body not completed");
                }
            });
        }
        match response_rx.await {
            Ok(result) => result,
            Err(_) => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> Error {
        Error::ConnectionClosed(quiver::ConnectionError::Aborted)
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
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    config: ClientConfig,
    settings: H3Settings,
    timeout: Option<Duration>,
    endpoints: Mutex<HashMap<bool, Endpoint>>,
    connections: Mutex<HashMap<String, H3Connection>>,
}

impl Client {
    /// A client with this QUIC configuration (ALPN must include `h3`).
    pub fn new(config: ClientConfig) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                config,
                settings: H3Settings::default(),
                timeout: None,
                endpoints: Mutex::new(HashMap::new()),
                connections: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Fails requests whose response head has not arrived within `timeout` (including connecting).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| ClientInner {
            config: shared.config.clone(),
            settings: shared.settings.clone(),
            timeout: shared.timeout,
            endpoints: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
        });
        Self { inner: Arc::new(ClientInner { timeout: Some(timeout), ..inner }) }
    }

    /// The connection for `uri`'s authority, opening it if needed.
    ///
    /// # Errors
    /// Invalid URI, resolution failure, or connection failure.
    pub async fn connection(&self, uri: &Uri) -> Result<H3Connection, Error> {
        if uri.scheme_str().is_some_and(|scheme| scheme != "https") {
            return Err(Error::InvalidUri(uri.to_string()));
        }
        let host = uri.host().ok_or_else(|| Error::InvalidUri(uri.to_string()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let key = format!("{host}:{port}");
        let mut connections = self.inner.connections.lock().await;
        if let Some(connection) = connections.get(&key)
            && !connection.is_closed()
        {
            return Ok(connection.clone());
        }
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| Error::Resolve { host: host.clone(), source })?
            .next()
            .ok_or_else(|| Error::Resolve { host: host.clone(), source: std::io::Error::other("no addresses") })?;
        let endpoint = self.endpoint_for(addr).await?;
        let connection = H3Connection::connect_with(&endpoint, addr, &host, self.inner.settings.clone()).await?;
        connections.insert(key, connection.clone());
        Ok(connection)
    }

    async fn endpoint_for(&self, addr: SocketAddr) -> Result<Endpoint, Error> {
        let mut endpoints = self.inner.endpoints.lock().await;
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
        match self.inner.timeout {
            Some(timeout) => tokio::time::timeout(timeout, exchange).await.map_err(|_| Error::TimedOut(timeout))?,
            None => exchange.await,
        }
    }
}
