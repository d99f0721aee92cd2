//! The HTTP/3 driver: an [`ApplicationOverQuic`] over `quiche::h3`, one per connection.
//!
//! It is the only code that calls quiche's HTTP/3 API. User code (request handlers, the client's
//! callers) lives in other tasks and talks to it through the messages of [`crate::command`]:
//! per-stream body channels towards the user (bounded; a full one pauses reading that QUIC stream, so
//! flow control holds back the peer), and one inbox towards the driver, carrying outbound frames, read
//! credit and new requests.
//!
//! Where things are:
//! - this file: the driver's state, its settings, and the [`ApplicationOverQuic`] hooks, which route
//!   quiche's events to the parts below;
//! - [`streams`]: what both roles do with a stream once it exists (bodies in and out, trailers, resets,
//!   remembering finished streams until the peer acknowledged them);
//! - [`datagrams`]: HTTP datagrams between QUIC DATAGRAM frames and the per-stream flows;
//! - [`server`]: the server role (a request head arrives → dispatch; GOAWAY);
//! - [`client`]: the client role (open request streams; response heads; cancellation).

mod client;
mod datagrams;
mod server;
mod streams;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use quiver::quiche::h3;
use quiver::{ApplicationError, ApplicationOverQuic, ConnectionError, QuicConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::command::{Wake, WakeSender};
use crate::datagram::{DATAGRAM_SEND_QUEUE, DatagramShared};
use crate::error::{H3_INTERNAL_ERROR, H3_NO_ERROR};

pub(crate) use self::server::Dispatch;
use self::streams::StreamState;

/// Settings of the HTTP/3 layer.
#[derive(Debug, Clone)]
pub struct H3Settings {
    /// Largest header (or trailer) section we accept, in bytes of uncompressed fields
    /// (`SETTINGS_MAX_FIELD_SECTION_SIZE`). Larger ones are rejected.
    pub max_field_section_bytes: u64,
    /// Advertise extended CONNECT (RFC 9220).
    pub extended_connect: bool,
    /// Requests one connection may have in flight on the server, counting those the peer reset whose
    /// handler still runs; more are refused with H3_REQUEST_REJECTED. Keep it above the transport's
    /// stream limit (`initial_max_streams_bidi`) so it only ever stops abuse.
    pub max_live_requests: usize,
    /// Answer requests that arrive in 0-RTT early data with 425 Too Early (RFC 8470) unless their
    /// method is safe (GET, HEAD, OPTIONS, TRACE), before any handler sees them. Early data can be
    /// replayed by an attacker, so only requests that may run twice should be served from it; safe
    /// requests reach the handler marked with [`EarlyData`], and it can still answer 425 itself.
    pub reject_unsafe_early_requests: bool,
}

impl Default for H3Settings {
    fn default() -> Self {
        Self {
            max_field_section_bytes: 16 * 1024,
            extended_connect: false,
            max_live_requests: 2048,
            reject_unsafe_early_requests: true,
        }
    }
}

/// Present in a request's extensions (server side) when the request arrived in 0-RTT early data,
/// before the handshake completed: an attacker could replay it. Handlers that are not safe to run
/// twice should answer 425 Too Early (RFC 8470); the client then retries after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyData;

/// The client's address, in every request's extensions on the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Methods RFC 9110 §9.2.1 calls safe: repeating them changes nothing on the server.
fn is_safe_method(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// What only one side of the connection does.
enum Role {
    Server(server::ServerRole),
    Client(client::ClientRole),
}

/// The HTTP/3 application for one connection. Build it with [`Server`](crate::Server) (server side) or
/// let [`Client`](crate::Client) make it.
pub struct H3Driver {
    settings: H3Settings,
    h3: Option<h3::Connection>,
    wake_rx: mpsc::UnboundedReceiver<Wake>,
    wake_tx: WakeSender,
    woken: Vec<Wake>,
    streams: HashMap<u64, StreamState>,
    role: Role,
    /// Scratch list of streams with outbound frames, kept to reuse its allocation.
    stream_ids: Vec<u64>,
    /// Streams finished on our side whose data the peer may not have acknowledged yet.
    unacknowledged: Vec<u64>,
    peer_addr: Option<std::net::SocketAddr>,
    datagram_permits: Arc<Semaphore>,
    datagrams: Arc<DatagramShared>,
    /// Datagrams flows sent before the peer's SETTINGS arrived; each holds a `datagram_permits` permit,
    /// so there are at most `DATAGRAM_SEND_QUEUE`.
    datagrams_awaiting_settings: VecDeque<(Bytes, OwnedSemaphorePermit)>,
}

impl H3Driver {
    fn new(settings: H3Settings, role: Role) -> Self {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        Self {
            settings,
            h3: None,
            wake_rx,
            wake_tx,
            woken: Vec::new(),
            streams: HashMap::new(),
            role,
            stream_ids: Vec::new(),
            unacknowledged: Vec::new(),
            peer_addr: None,
            datagram_permits: Arc::new(Semaphore::new(DATAGRAM_SEND_QUEUE)),
            datagrams: Arc::default(),
            datagrams_awaiting_settings: VecDeque::new(),
        }
    }

    /// The driver's inbox, for the handles that talk to it.
    pub(crate) fn waker(&self) -> WakeSender {
        self.wake_tx.clone()
    }

    /// Whether the connection is winding down: once nothing is in flight it closes.
    fn draining(&self) -> bool {
        match &self.role {
            Role::Server(server) => server.goaway_sent(),
            Role::Client(client) => client.draining,
        }
    }

    fn handle_wake(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection, wake: Wake) {
        match wake {
            Wake::Out { stream, frame } => self.queue_outbound(stream, frame),
            Wake::ReadMore { stream } => self.read_body(h3, conn, stream),
            Wake::StopReading { stream } => self.stop_reading(conn, stream),
            Wake::Abort { stream, code } => self.abort_outbound(conn, stream, code),
            Wake::Request(request) => self.queue_request(request),
            Wake::ResponseAbandoned => self.cancel_abandoned_requests(conn),
            Wake::Datagram { frame, _permit: permit } => self.queue_datagram(h3, conn, frame, permit),
        }
    }

    /// Handles every event quiche has queued. Called on each wake-up and again after reads the driver
    /// made on its own (read credit), because `recv_body` queues `Finished` for the next poll.
    fn poll_events(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection) {
        loop {
            match h3.poll(conn) {
                Ok((stream, h3::Event::Headers { list, more_frames })) => {
                    // A flow for this stream depends on what the peer's SETTINGS said so far.
                    self.note_peer_settings(h3, conn);
                    self.on_headers(conn, stream, list, more_frames);
                    // A message with a body may already have data buffered.
                    if more_frames {
                        self.read_body(h3, conn, stream);
                    }
                }
                Ok((stream, h3::Event::Data)) => self.read_body(h3, conn, stream),
                Ok((stream, h3::Event::Finished)) => self.on_finished(conn, stream),
                Ok((stream, h3::Event::Reset(code))) => self.on_reset(stream, code),
                Ok((_, h3::Event::PriorityUpdate)) => {}
                Ok((_, h3::Event::GoAway)) => self.on_goaway_received(),
                Err(h3::Error::Done) => break,
                Err(err) => {
                    // quiche has already closed the connection with the right error code.
                    tracing::debug!(error = %err, "HTTP/3 connection error");
                    break;
                }
            }
        }
    }

    /// A header section arrived: a continuation of a stream we track (response head, trailers), or a
    /// new request (server).
    fn on_headers(&mut self, conn: &mut QuicConnection, stream: u64, list: Vec<h3::Header>, more_frames: bool) {
        if self.streams.contains_key(&stream) {
            self.on_stream_headers(conn, stream, list, more_frames);
        } else if matches!(self.role, Role::Server(_)) {
            self.on_request(conn, stream, list, more_frames);
        }
    }
}

impl ApplicationOverQuic for H3Driver {
    fn on_conn_established(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        let mut config = h3::Config::new().map_err(|err| ApplicationError::new(H3_INTERNAL_ERROR, err.to_string()))?;
        config.set_max_field_section_size(self.settings.max_field_section_bytes);
        config.enable_extended_connect(self.settings.extended_connect);
        let h3 = h3::Connection::with_transport(conn, &config)
            .map_err(|err| ApplicationError::new(H3_INTERNAL_ERROR, err.to_string()))?;
        self.h3 = Some(h3);
        self.peer_addr = conn.path_stats().next().map(|path| path.peer_addr);
        Ok(())
    }

    async fn wait_for_data(&mut self) -> Result<(), ApplicationError> {
        // The driver's own sender keeps the channel open, so this only ends with a message.
        if let Some(wake) = self.wake_rx.recv().await {
            self.woken.push(wake);
        }
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        let Some(mut h3) = self.h3.take() else { return Ok(()) };
        self.poll_events(&mut h3, conn);
        self.note_peer_settings(&h3, conn);
        self.settle_waiting_datagrams(&h3, conn);
        self.h3 = Some(h3);
        self.recv_datagrams(conn);
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        let Some(mut h3) = self.h3.take() else { return Ok(()) };
        let mut woken = std::mem::take(&mut self.woken);
        for wake in woken.drain(..) {
            self.handle_wake(&mut h3, conn, wake);
        }
        self.woken = woken;
        while let Ok(wake) = self.wake_rx.try_recv() {
            self.handle_wake(&mut h3, conn, wake);
        }
        self.poll_events(&mut h3, conn);
        self.note_peer_settings(&h3, conn);
        self.settle_waiting_datagrams(&h3, conn);
        self.start_requests(&mut h3, conn);
        self.flush_all_outbound(&mut h3, conn);
        self.h3 = Some(h3);
        self.publish_datagram_room(conn);
        let draining = self.draining();
        self.prune_acknowledged(conn, draining);
        if draining && self.streams.is_empty() && self.unacknowledged.is_empty() {
            // Every request answered and every answer acknowledged: closing now loses nothing.
            let _ = conn.close(true, H3_NO_ERROR, b"shutting down");
        }
        Ok(())
    }

    /// The endpoint shuts down gracefully: a server sends GOAWAY and closes once its last response is
    /// acknowledged; a client closes once its requests are answered.
    fn on_drain(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        if self.h3.is_none() {
            // No HTTP/3 yet, so nothing in flight: close at once.
            let _ = conn.close(true, H3_NO_ERROR, b"shutting down");
            return Ok(());
        }
        if let Role::Client(client) = &mut self.role {
            client.start_draining();
        } else if let Some(mut h3) = self.h3.take() {
            self.send_goaway(&mut h3, conn);
            self.h3 = Some(h3);
        }
        // With nothing in flight there is no later wake-up to close on: decide now.
        self.process_writes(conn)
    }

    fn on_conn_close(&mut self, conn: &mut QuicConnection, reason: &ConnectionError) {
        let mut h3 = self.h3.take();
        for (stream, state) in self.streams.drain() {
            streams::end_on_close(h3.as_mut(), conn, stream, state, reason);
        }
        if let Role::Client(client) = &mut self.role {
            client.fail_queued(reason);
        }
        self.wake_rx.close();
        while let Ok(wake) = self.wake_rx.try_recv() {
            if let Wake::Request(request) = wake {
                client::fail_request(request, reason);
            }
        }
    }
}
