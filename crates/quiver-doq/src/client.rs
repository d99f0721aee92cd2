//! The DoQ client: one QUIC connection to one server, reused for every query, with any number of
//! queries in flight on it (one stream each, up to the server's stream limit; the rest queue).
//!
//! [`DoqClient`] hands queries to the connection's [`ClientConnection`] (an [`ApplicationOverQuic`])
//! through a bounded channel; the answer comes back on a oneshot channel. A query whose caller gives
//! up (timeout, dropped future) is cancelled on the wire with DOQ_REQUEST_CANCELLED.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use quiver::quiche;
use quiver::{ApplicationError, ApplicationOverQuic, ConnectionError, ConnectionHandle, Endpoint, QuicConnection};
use tokio::sync::{mpsc, oneshot};

use crate::dns::{QUERY_PADDING_BLOCK_BYTES, has_tcp_keepalive, message_id, pad_message};
use crate::error::DoqError;
use crate::framing::{MessageReader, Outbound, READ_CHUNK_BYTES, StreamRead, WriteFailure, read_message};
use crate::{DOQ_NO_ERROR, DOQ_PROTOCOL_ERROR, DOQ_REQUEST_CANCELLED};

/// How long [`DoqClient`] waits for an answer by default (common stub resolvers wait 5 s).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Queries handed to the connection but not yet on a stream: callers past it wait to hand theirs
/// over (backpressure), so a burst of queries costs bounded memory.
const MAX_QUEUED_QUERIES: usize = 1024;

/// Commands waiting in the channel from [`DoqClient`] to its connection.
const COMMAND_QUEUE: usize = 256;

/// Builds a [`DoqClient`].
#[derive(Debug, Clone)]
pub struct DoqClientBuilder {
    server: SocketAddr,
    server_name: Option<String>,
    query_timeout: Duration,
    padding: bool,
}

impl DoqClientBuilder {
    /// The name the server's certificate is checked against (and sent as SNI). Defaults to the
    /// server's IP address.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// How long a query may take in all (default [`DEFAULT_QUERY_TIMEOUT`]): connecting if no
    /// connection is open, waiting for a stream, and waiting for the answer.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Whether [`DoqClient::query`] and [`DoqClient::send`] pad queries with EDNS(0) padding to
    /// 128-byte blocks (RFC 8467), which also asks the server to pad its answers (RFC 9250 §5.4).
    /// On by default.
    pub fn padding(mut self, enabled: bool) -> Self {
        self.padding = enabled;
        self
    }

    /// Creates the client's QUIC endpoint (one UDP socket on an ephemeral port). Nothing is sent
    /// until the first query. `config` should come from [`client_config`](crate::client_config).
    ///
    /// # Errors
    /// [`DoqError::Endpoint`] when the socket cannot be bound or there is no Tokio runtime.
    pub fn build(self, config: quiver::ClientConfig) -> Result<DoqClient, DoqError> {
        let local: SocketAddr =
            if self.server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let endpoint = Endpoint::client(local, config)?;
        Ok(DoqClient {
            inner: Arc::new(ClientInner {
                endpoint,
                server: self.server,
                server_name: self.server_name.unwrap_or_else(|| self.server.ip().to_string()),
                query_timeout: self.query_timeout,
                padding: self.padding,
                live: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

/// A DNS over QUIC client for one server.
///
/// The connection is opened on the first query and reused; if it closes (idle timeout, server
/// restart), the next query opens a new one. Queries may be sent from many tasks at once: each takes
/// its own stream, and they all share the connection. Cloning is cheap and shares the connection.
///
/// ```no_run
/// use quiver_doq::{DoqClient, RecordType};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = quiver_doq::client_config().build()?;
/// let client = DoqClient::builder("94.140.14.14:853".parse()?).server_name("dns.adguard-dns.com").build(config)?;
/// let (a, aaaa) = tokio::join!(client.query("example.com.", RecordType::A), client.query("example.com.", RecordType::AAAA));
/// for record in a?.answers.iter().chain(&aaaa?.answers) {
///     println!("{record}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DoqClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for DoqClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoqClient")
            .field("server", &self.inner.server)
            .field("server_name", &self.inner.server_name)
            .finish_non_exhaustive()
    }
}

struct ClientInner {
    endpoint: Endpoint,
    server: SocketAddr,
    server_name: String,
    query_timeout: Duration,
    padding: bool,
    live: tokio::sync::Mutex<Option<LiveConnection>>,
}

struct LiveConnection {
    handle: ConnectionHandle,
    commands: mpsc::Sender<Command>,
}

impl DoqClient {
    /// Starts building a client for the DoQ server at `server`.
    pub fn builder(server: SocketAddr) -> DoqClientBuilder {
        DoqClientBuilder { server, server_name: None, query_timeout: DEFAULT_QUERY_TIMEOUT, padding: true }
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.inner.server
    }

    /// Asks for `record_type` records of `name` (recursion desired) and returns the answer.
    ///
    /// # Errors
    /// [`DoqError::InvalidName`] for a bad name; otherwise as [`send_bytes`](Self::send_bytes).
    ///
    /// # Cancel safety
    /// Dropping the future cancels the query on the wire (at the connection's next wake-up).
    pub async fn query(&self, name: &str, record_type: RecordType) -> Result<Message, DoqError> {
        let mut fqdn = Name::from_ascii(name)
            .map_err(|err| DoqError::InvalidName { name: name.to_owned(), reason: err.to_string() })?;
        fqdn.set_fqdn(true);
        let mut query = Message::new(0, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(fqdn, record_type));
        self.send(query).await
    }

    /// Sends `query` (its ID is set to 0, and it is padded if the client pads) and returns the
    /// parsed answer.
    ///
    /// # Errors
    /// As [`send_bytes`](Self::send_bytes), and [`DoqError::MalformedAnswer`] when the answer does
    /// not parse.
    ///
    /// # Cancel safety
    /// As [`query`](Self::query).
    pub async fn send(&self, mut query: Message) -> Result<Message, DoqError> {
        query.metadata.id = 0;
        let bytes = if self.inner.padding {
            pad_message(&mut query, QUERY_PADDING_BLOCK_BYTES)
                .ok_or_else(|| DoqError::InvalidQuery("cannot encode the padded query".into()))?
        } else {
            query.to_vec().map_err(|err| DoqError::InvalidQuery(err.to_string()))?
        };
        let answer = self.send_bytes(&bytes).await?;
        Message::from_vec(&answer).map_err(|err| DoqError::MalformedAnswer(err.to_string()))
    }

    /// Sends a query exactly as given (RFC 9250 wants its ID to be 0; this does not check) and
    /// returns the answer's wire bytes. For tools and tests that need byte-level control.
    ///
    /// # Errors
    /// [`DoqError::Connect`] when no connection can be made, [`DoqError::Timeout`],
    /// [`DoqError::ConnectionClosed`] (with the server's close code), [`DoqError::StreamReset`],
    /// [`DoqError::MalformedAnswer`], [`DoqError::InvalidQuery`] for a query over 65535 bytes.
    ///
    /// # Cancel safety
    /// As [`query`](Self::query).
    pub async fn send_bytes(&self, query: &[u8]) -> Result<Vec<u8>, DoqError> {
        let outbound = Outbound::new(query).ok_or_else(|| {
            DoqError::InvalidQuery(format!("{} bytes is more than a DNS message can hold", query.len()))
        })?;
        let timeout = self.inner.query_timeout;
        // The connection the query went to, to wake it if the query times out.
        let mut handed_to = None;
        let exchange = async {
            let commands = self.connection().await?;
            handed_to = Some(commands.clone());
            let (reply_tx, reply_rx) = oneshot::channel();
            commands
                .send(Command::Query(PendingQuery { outbound, reply: reply_tx }))
                .await
                .map_err(|_| DoqError::ConnectionClosed { reason: ConnectionError::Aborted })?;
            reply_rx.await.map_err(|_| DoqError::ConnectionClosed { reason: ConnectionError::Aborted })?
        };
        // One deadline for all of it: connecting, queueing behind the stream limit, the answer.
        let outcome = tokio::time::timeout(timeout, exchange).await;
        outcome.unwrap_or_else(|_| {
            // Wake the connection so it cancels the stream now rather than at its next packet.
            if let Some(commands) = handed_to {
                let _ = commands.try_send(Command::Sweep);
            }
            Err(DoqError::Timeout(timeout))
        })
    }

    /// The handle of the current connection, if one is open.
    pub async fn connection_handle(&self) -> Option<ConnectionHandle> {
        self.inner.live.lock().await.as_ref().map(|live| live.handle.clone())
    }

    /// Closes the connection with DOQ_NO_ERROR and waits until it is closed. A later query opens a
    /// new one.
    pub async fn close(&self) {
        let live = self.inner.live.lock().await.take();
        if let Some(live) = live {
            live.handle.close(DOQ_NO_ERROR, "");
            live.handle.closed().await;
        }
    }

    /// The command channel of a live connection, opening one if there is none.
    async fn connection(&self) -> Result<mpsc::Sender<Command>, DoqError> {
        let mut live = self.inner.live.lock().await;
        if let Some(current) = live.as_ref()
            && !current.handle.is_closed()
            && !current.commands.is_closed()
        {
            return Ok(current.commands.clone());
        }
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let app = ClientConnection::new(receiver);
        let handle = self
            .inner
            .endpoint
            .connect(self.inner.server, &self.inner.server_name, app)
            .await
            .map_err(|source| DoqError::Connect { server: self.inner.server, source })?;
        *live = Some(LiveConnection { handle, commands: commands.clone() });
        Ok(commands)
    }
}

enum Command {
    Query(PendingQuery),
    /// Nothing to add: look for abandoned queries now.
    Sweep,
}

struct PendingQuery {
    outbound: Outbound,
    reply: oneshot::Sender<Result<Vec<u8>, DoqError>>,
}

struct Exchange {
    outbound: Outbound,
    sent: bool,
    reader: MessageReader,
    reply: oneshot::Sender<Result<Vec<u8>, DoqError>>,
}

/// Client side of one DoQ connection.
struct ClientConnection {
    commands: mpsc::Receiver<Command>,
    commands_closed: bool,
    queued: VecDeque<PendingQuery>,
    exchanges: HashMap<u64, Exchange>,
    next_stream: u64,
    scratch: Vec<u8>,
}

impl ClientConnection {
    fn new(commands: mpsc::Receiver<Command>) -> Self {
        Self {
            commands,
            commands_closed: false,
            queued: VecDeque::new(),
            exchanges: HashMap::new(),
            next_stream: 0,
            scratch: vec![0; READ_CHUNK_BYTES],
        }
    }

    fn take_command(&mut self, command: Command) {
        match command {
            Command::Query(query) => self.queued.push_back(query),
            Command::Sweep => {}
        }
    }

    /// Fails the query on `stream` and returns the DOQ_PROTOCOL_ERROR that closes the connection.
    fn server_stopped_sending(&mut self, stream: u64) -> ApplicationError {
        let reason = "the server sent STOP_SENDING, which RFC 9250 section 4.3.3 makes a protocol error";
        if let Some(exchange) = self.exchanges.remove(&stream) {
            let _ = exchange.reply.send(Err(DoqError::MalformedAnswer(reason.into())));
        }
        ApplicationError::new(DOQ_PROTOCOL_ERROR, reason)
    }

    /// Cancels exchanges whose caller went away: STOP_SENDING and RESET_STREAM with
    /// DOQ_REQUEST_CANCELLED (RFC 9250 §4.3.1).
    fn cancel_abandoned(&mut self, conn: &mut QuicConnection) {
        let abandoned: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, exchange)| exchange.reply.is_closed())
            .map(|(stream, _)| *stream)
            .collect();
        for stream in abandoned {
            self.exchanges.remove(&stream);
            let _ = conn.stream_shutdown(stream, quiche::Shutdown::Read, DOQ_REQUEST_CANCELLED);
            let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, DOQ_REQUEST_CANCELLED);
        }
        self.queued.retain(|query| !query.reply.is_closed());
    }
}

impl ApplicationOverQuic for ClientConnection {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    /// # Cancel safety
    /// Cancel safe: a command is only taken from the channel when it is stored.
    async fn wait_for_data(&mut self) -> Result<(), ApplicationError> {
        if self.commands_closed || self.queued.len() >= MAX_QUEUED_QUERIES {
            // Woken by the network instead (answers free streams, which drains the queue).
            return std::future::pending().await;
        }
        match self.commands.recv().await {
            Some(command) => self.take_command(command),
            None => self.commands_closed = true,
        }
        while self.queued.len() < MAX_QUEUED_QUERIES
            && let Ok(command) = self.commands.try_recv()
        {
            self.take_command(command);
        }
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        for stream in conn.readable() {
            let Some(exchange) = self.exchanges.get_mut(&stream) else { continue };
            let outcome = match read_message(conn, stream, &mut exchange.reader, &mut self.scratch) {
                Ok(StreamRead::Pending) => continue,
                Ok(outcome) => outcome,
                Err(framing) => {
                    return Err(ApplicationError::new(DOQ_PROTOCOL_ERROR, framing.to_string()));
                }
            };
            let Some(exchange) = self.exchanges.remove(&stream) else { continue };
            let result = match outcome {
                StreamRead::Message(answer) => match message_id(&answer) {
                    Some(0) if Message::from_vec(&answer).is_ok_and(|parsed| has_tcp_keepalive(&parsed)) => {
                        let reason = "answer carries edns-tcp-keepalive (RFC 9250 section 5.5.2)";
                        let _ = exchange.reply.send(Err(DoqError::MalformedAnswer(reason.into())));
                        return Err(ApplicationError::new(DOQ_PROTOCOL_ERROR, reason));
                    }
                    Some(0) => Ok(answer),
                    Some(id) => {
                        let reason = format!("answer has message ID {id}, not 0 (RFC 9250 section 4.2.1)");
                        let _ = exchange.reply.send(Err(DoqError::MalformedAnswer(reason.clone())));
                        return Err(ApplicationError::new(DOQ_PROTOCOL_ERROR, reason));
                    }
                    None => Err(DoqError::MalformedAnswer(format!("{} bytes is not a DNS message", answer.len()))),
                },
                StreamRead::Reset(code) => Err(DoqError::StreamReset { code }),
                StreamRead::Pending | StreamRead::Gone => {
                    Err(DoqError::MalformedAnswer("the stream ended without an answer".into()))
                }
            };
            let _ = exchange.reply.send(result);
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        self.cancel_abandoned(conn);
        // RFC 9250 §4.3.3: a server never sends STOP_SENDING; a client that gets one closes the
        // connection with DOQ_PROTOCOL_ERROR.
        let stopped = self
            .exchanges
            .keys()
            .find(|stream| matches!(conn.stream_capacity(**stream), Err(quiche::Error::StreamStopped(_))));
        if let Some(stream) = stopped.copied() {
            return Err(self.server_stopped_sending(stream));
        }
        let mut failed = Vec::new();
        for (stream, exchange) in self.exchanges.iter_mut().filter(|(_, exchange)| !exchange.sent) {
            match exchange.outbound.write(conn, *stream) {
                Ok(done) => exchange.sent = done,
                Err(failure) => failed.push((*stream, failure)),
            }
        }
        // One new stream per queued query, as far as the server's stream limit allows. Each is
        // written at once: quiche counts a stream against the limit only when it is first written.
        while conn.peer_streams_left_bidi() > 0
            && let Some(query) = self.queued.pop_front()
        {
            let stream = self.next_stream;
            self.next_stream += 4;
            let mut exchange = Exchange {
                outbound: query.outbound,
                sent: false,
                reader: MessageReader::default(),
                reply: query.reply,
            };
            match exchange.outbound.write(conn, stream) {
                Ok(done) => exchange.sent = done,
                Err(failure) => failed.push((stream, failure)),
            }
            self.exchanges.insert(stream, exchange);
        }
        for (stream, failure) in failed {
            if failure != WriteFailure::Gone {
                return Err(self.server_stopped_sending(stream));
            }
            if let Some(exchange) = self.exchanges.remove(&stream) {
                let error = DoqError::InvalidQuery("the connection refused the query's stream".into());
                let _ = exchange.reply.send(Err(error));
            }
        }
        if self.commands_closed && self.queued.is_empty() && self.exchanges.is_empty() {
            // The client is gone and nothing is outstanding.
            let _ = conn.close(true, DOQ_NO_ERROR, b"");
        }
        Ok(())
    }

    fn on_conn_close(&mut self, _conn: &mut QuicConnection, reason: &ConnectionError) {
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            self.take_command(command);
        }
        let pending = self.queued.drain(..).map(|query| query.reply);
        let open = self.exchanges.drain().map(|(_, exchange)| exchange.reply);
        for reply in pending.chain(open).collect::<Vec<_>>() {
            let _ = reply.send(Err(DoqError::ConnectionClosed { reason: reason.clone() }));
        }
    }
}
