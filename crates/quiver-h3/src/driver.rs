//! The HTTP/3 driver: an [`ApplicationOverQuic`] over `quiche::h3`, one per connection, for both roles.
//!
//! It is the only code that calls quiche's HTTP/3 API. User code (request handlers, the client's
//! callers) lives in other tasks and talks to it through:
//! - per-stream body channels towards the user (bounded; a full one pauses reading that QUIC stream, so
//!   flow control holds back the peer), and
//! - one wake channel towards the driver, carrying outbound frames and read credit. It is unbounded
//!   in type but bounded in fact: every outbound data frame holds permits of its stream's byte budget
//!   until quiche has taken its bytes, each stream queues at most one head and one end marker, read
//!   credit is one message per consumed chunk, and requests hold a per-connection request permit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use quiver::quiche;
use quiver::quiche::h3::{self, Header, NameValue};
use quiver::{ApplicationError, ApplicationOverQuic, ConnectionError, QuicConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::body::{BodyFrame, RecvBody};
use crate::datagram::{
    DATAGRAM_SEND_QUEUE, DatagramFlow, DatagramShared, PEER_SETTINGS_DISABLED, PEER_SETTINGS_ENABLED, get_varint,
};
use crate::error::{Error, H3_INTERNAL_ERROR, H3_MESSAGE_ERROR};
use crate::headers;

/// Bytes of one stream's outbound data that may wait for quiche at once: enough to keep a fast path
/// busy between wake-ups, small enough that a thousand streams stay in the hundreds of MiB worst case.
const STREAM_SEND_BUDGET: usize = 256 * 1024;
/// Largest DATA frame we hand quiche in one piece.
const MAX_DATA_CHUNK: usize = 64 * 1024;
/// Finished streams remembered before checking which quiche has collected.
const UNACKNOWLEDGED_PRUNE_AT: usize = 256;
/// Bytes read from a stream per `recv_body` call (and so per body chunk).
const RECV_CHUNK: usize = 16 * 1024;

thread_local! {
    /// One receive scratch buffer per thread, shared by every connection the thread drives: reads are
    /// copied out of it at once, so no connection needs its own (16 KiB each would be 160 MB at 10k
    /// idle connections).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; RECV_CHUNK]);
}

/// Runs `read` with the thread's scratch buffer.
fn with_scratch<R>(read: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => read(&mut scratch),
        // Only reachable if a read re-entered the driver, which it never does; stay correct anyway.
        Err(_) => read(&mut vec![0; RECV_CHUNK]),
    })
}

pub(crate) type WakeSender = mpsc::UnboundedSender<Wake>;

/// Something for the driver to do that did not come from the network.
pub(crate) enum Wake {
    /// A frame to send on a stream.
    Out { stream: u64, frame: OutFrame },
    /// The reader consumed a body chunk: read more of the stream.
    ReadMore { stream: u64 },
    /// Reset our sending side of a stream (the body we were sending failed).
    Abort { stream: u64, code: u64 },
    /// Open a request stream (client).
    Request(NewRequest),
    /// Send GOAWAY and stop taking requests (server).
    GoAway,
    /// Send an HTTP datagram (quarter stream ID already prefixed); the permit bounds the queue.
    Datagram { frame: Bytes, _permit: OwnedSemaphorePermit },
}

pub(crate) enum OutFrame {
    Head { fields: Vec<Header>, end: bool },
    Data { bytes: Bytes, _permit: OwnedSemaphorePermit },
    Trailers(Vec<Header>),
    End,
}

pub(crate) struct NewRequest {
    pub(crate) fields: Vec<Header>,
    pub(crate) end: bool,
    /// CONNECT requests get a [`DatagramFlow`] on their response.
    pub(crate) is_connect: bool,
    pub(crate) opened: oneshot::Sender<StreamSink>,
    pub(crate) response: oneshot::Sender<Result<Response<RecvBody>, Error>>,
    /// Bounds the requests queued per connection until this one has its response head.
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// The sending half of one stream, used by the task that produces its body.
#[derive(Clone)]
pub(crate) struct StreamSink {
    stream: u64,
    wake: WakeSender,
    budget: Arc<Semaphore>,
}

/// The stream is gone (reset by the peer, or the connection closed).
#[derive(Debug)]
pub(crate) struct StreamGone;

impl StreamSink {
    pub(crate) fn stream_id(&self) -> u64 {
        self.stream
    }

    pub(crate) fn frame(&self, frame: OutFrame) -> Result<(), StreamGone> {
        if self.budget.is_closed() {
            return Err(StreamGone);
        }
        self.wake.send(Wake::Out { stream: self.stream, frame }).map_err(|_| StreamGone)
    }

    /// Queues body bytes, waiting while the stream's budget is spent.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call may have queued a prefix of `bytes`.
    pub(crate) async fn data(&self, mut bytes: Bytes) -> Result<(), StreamGone> {
        while !bytes.is_empty() {
            let chunk = bytes.split_to(bytes.len().min(MAX_DATA_CHUNK));
            let permits = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let permit = self.budget.clone().acquire_many_owned(permits).await.map_err(|_| StreamGone)?;
            self.frame(OutFrame::Data { bytes: chunk, _permit: permit })?;
        }
        Ok(())
    }

    pub(crate) fn abort(&self, code: u64) {
        let _ = self.wake.send(Wake::Abort { stream: self.stream, code });
    }
}

/// Sends `body` on `sink` to its end (trailers included). A body error resets the stream.
pub(crate) async fn send_body<B>(body: B, sink: &StreamSink) -> Result<(), String>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    loop {
        let frame = match body.frame().await {
            None => return sink.frame(OutFrame::End).map_err(|_| "stream closed".to_owned()),
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                sink.abort(H3_INTERNAL_ERROR);
                return Err(err.to_string());
            }
        };
        match frame.into_data() {
            Ok(mut data) => {
                let bytes = data.copy_to_bytes(data.remaining());
                sink.data(bytes).await.map_err(|_| "stream closed".to_owned())?;
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let fields = headers::trailer_fields(&trailers);
                    return sink.frame(OutFrame::Trailers(fields)).map_err(|_| "stream closed".to_owned());
                }
            }
        }
    }
}

/// Hands a parsed request to user code (the server spawns a handler task).
pub(crate) type Dispatch = Arc<dyn Fn(Request<RecvBody>, StreamSink) + Send + Sync>;

enum Role {
    /// `goaway`: the stream ID our GOAWAY announced; requests at or above it are refused.
    Server {
        dispatch: Dispatch,
        goaway: Option<u64>,
    },
    Client {
        deferred: VecDeque<NewRequest>,
        going_away: Arc<AtomicBool>,
    },
}

#[derive(Default)]
struct StreamState {
    /// Towards the user; `None` once ended or when nobody reads (then data is discarded).
    body_tx: Option<mpsc::Sender<BodyFrame>>,
    /// Trailers and end markers waiting for room in `body_tx` (at most two).
    inbound_pending: VecDeque<BodyFrame>,
    inbound_done: bool,
    outbound: VecDeque<OutFrame>,
    outbound_done: bool,
    budget: Option<Arc<Semaphore>>,
    /// Client: the caller waiting for the response head.
    response: Option<oneshot::Sender<Result<Response<RecvBody>, Error>>>,
    /// Client: whether the request was a CONNECT (its response gets a datagram flow).
    is_connect: bool,
    /// HTTP datagrams towards the user.
    datagram_tx: Option<mpsc::Sender<Bytes>>,
}

impl StreamState {
    fn deliver(&mut self, frame: BodyFrame) {
        self.inbound_pending.push_back(frame);
        self.flush_inbound();
    }

    /// Moves queued markers into the body channel; true if nothing is left queued.
    fn flush_inbound(&mut self) -> bool {
        while let Some(frame) = self.inbound_pending.pop_front() {
            let Some(tx) = &self.body_tx else { continue };
            match tx.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    self.inbound_pending.push_front(frame);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.body_tx = None,
            }
        }
        true
    }

    /// The body the user reads for this stream: a channel when frames follow the head, else empty.
    fn open_body(&mut self, stream: u64, more_frames: bool, wake: &WakeSender) -> RecvBody {
        if more_frames {
            let (tx, body) = RecvBody::channel(stream, wake.clone());
            self.body_tx = Some(tx);
            body
        } else {
            self.inbound_done = true;
            RecvBody::empty()
        }
    }

    fn close_outbound(&mut self) {
        self.outbound.clear();
        self.outbound_done = true;
        if let Some(budget) = &self.budget {
            budget.close();
        }
    }

    fn finished(&self) -> bool {
        self.inbound_done && self.outbound_done && self.inbound_pending.is_empty()
    }
}

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
    stream_ids: Vec<u64>,
    highest_request: Option<u64>,
    /// Streams finished on our side whose data the peer may not have acknowledged yet.
    unacknowledged: Vec<u64>,
    peer_addr: Option<std::net::SocketAddr>,
    datagram_permits: Arc<Semaphore>,
    datagrams: Arc<DatagramShared>,
    /// Datagrams flows sent before the peer's SETTINGS arrived; each holds a `datagram_permits` permit,
    /// so there are at most `DATAGRAM_SEND_QUEUE`.
    datagrams_awaiting_settings: VecDeque<(Bytes, OwnedSemaphorePermit)>,
    /// A client whose endpoint shuts down gracefully: close once every request is answered.
    client_draining: bool,
}

/// Present in a request's extensions (server side) when the request arrived in 0-RTT early data,
/// before the handshake completed: an attacker could replay it. Handlers that are not safe to run
/// twice should answer 425 Too Early (RFC 8470); the client then retries after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyData;

/// Methods RFC 9110 §9.2.1 calls safe: repeating them changes nothing on the server.
fn is_safe_method(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// The client's address, in every request's extensions on the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

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
            highest_request: None,
            unacknowledged: Vec::new(),
            peer_addr: None,
            datagram_permits: Arc::new(Semaphore::new(DATAGRAM_SEND_QUEUE)),
            datagrams: Arc::default(),
            datagrams_awaiting_settings: VecDeque::new(),
            client_draining: false,
        }
    }

    pub(crate) fn server(settings: H3Settings, dispatch: Dispatch) -> Self {
        Self::new(settings, Role::Server { dispatch, goaway: None })
    }

    pub(crate) fn client(settings: H3Settings) -> Self {
        Self::new(settings, Role::Client { deferred: VecDeque::new(), going_away: Arc::default() })
    }

    /// Set once the server sent GOAWAY (client role): new requests must go to a new connection.
    pub(crate) fn going_away_flag(&self) -> Arc<AtomicBool> {
        match &self.role {
            Role::Client { going_away, .. } => going_away.clone(),
            Role::Server { .. } => Arc::default(),
        }
    }

    pub(crate) fn waker(&self) -> WakeSender {
        self.wake_tx.clone()
    }

    /// Routes received QUIC datagrams to their streams' flows; drops (and counts) the rest.
    fn recv_datagrams(&mut self, conn: &mut QuicConnection) {
        with_scratch(|scratch| {
            while let Ok(len) = conn.dgram_recv(scratch) {
                let routed = get_varint(&scratch[..len]).and_then(|(quarter, prefix)| {
                    let tx = self.streams.get(&quarter.checked_mul(4)?)?.datagram_tx.as_ref()?;
                    tx.try_send(Bytes::copy_from_slice(&scratch[prefix..len])).ok()
                });
                if routed.is_none() {
                    self.datagrams.recv_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    fn on_headers(&mut self, conn: &mut QuicConnection, stream: u64, list: Vec<Header>, more_frames: bool) {
        if let Some(state) = self.streams.get_mut(&stream) {
            if let Some(response) = state.response.take() {
                match headers::parse_response(&list) {
                    Ok(head) if head.status().is_informational() => state.response = Some(response),
                    Ok(head) => {
                        let body = state.open_body(stream, more_frames, &self.wake_tx);
                        let mut head = head.map(|()| body);
                        if state.is_connect
                            && head.status().is_success()
                            && let Some((flow, tx)) =
                                datagram_flow(conn, stream, &self.wake_tx, &self.datagram_permits, &self.datagrams)
                        {
                            state.datagram_tx = Some(tx);
                            head.extensions_mut().insert(flow.into_slot());
                        }
                        let _ = response.send(Ok(head));
                    }
                    Err(malformed) => {
                        let _ = response.send(Err(Error::MalformedResponse(malformed.0)));
                        reset_stream(conn, stream, H3_MESSAGE_ERROR);
                        state.inbound_done = true;
                        state.close_outbound();
                    }
                }
            } else {
                match headers::parse_trailers(&list) {
                    Ok(trailers) => state.deliver(BodyFrame::Trailers(trailers)),
                    Err(_) => {
                        state.deliver(BodyFrame::Reset(H3_MESSAGE_ERROR));
                        reset_stream(conn, stream, H3_MESSAGE_ERROR);
                        state.close_outbound();
                        state.inbound_done = true;
                    }
                }
            }
            self.remove_if_finished(stream);
            return;
        }
        let Role::Server { dispatch, goaway } = &self.role else { return };
        if goaway.is_some_and(|last| stream >= last) {
            // RFC 9114 §5.2: not processed, safe for the client to retry elsewhere.
            reset_stream(conn, stream, crate::error::H3_REQUEST_REJECTED);
            return;
        }
        if self.streams.len() >= self.settings.max_live_requests {
            // Requests whose peer already reset them still count while their handler runs: without
            // this cap, reset-and-reopen would grow tasks and state without bound.
            tracing::debug!(stream, live = self.streams.len(), "too many live requests; rejecting");
            reset_stream(conn, stream, crate::error::H3_REQUEST_REJECTED);
            return;
        }
        let mut request = match headers::parse_request(&list) {
            Ok(request) => request,
            Err(malformed) => {
                tracing::debug!(stream, reason = %malformed, "malformed request");
                reset_stream(conn, stream, H3_MESSAGE_ERROR);
                return;
            }
        };
        self.highest_request = self.highest_request.max(Some(stream));
        let early = conn.is_in_early_data();
        if early && self.settings.reject_unsafe_early_requests && !is_safe_method(request.method().as_str().as_bytes())
        {
            tracing::debug!(stream, method = %request.method(), "unsafe request in 0-RTT: 425 Too Early");
            let mut state = StreamState::default();
            let too_early = http::StatusCode::from_u16(425).unwrap_or(http::StatusCode::BAD_REQUEST);
            let mut head = http::HeaderMap::new();
            head.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
            state.outbound.push_back(OutFrame::Head { fields: headers::response_fields(too_early, &head), end: true });
            // The body, if any, is read and discarded.
            drop(state.open_body(stream, more_frames, &self.wake_tx));
            self.streams.insert(stream, state);
            return;
        }
        let budget = Arc::new(Semaphore::new(STREAM_SEND_BUDGET));
        let mut state = StreamState { budget: Some(budget.clone()), ..StreamState::default() };
        let body = state.open_body(stream, more_frames, &self.wake_tx);
        if request.method() == http::Method::CONNECT
            && let Some((flow, tx)) =
                datagram_flow(conn, stream, &self.wake_tx, &self.datagram_permits, &self.datagrams)
        {
            state.datagram_tx = Some(tx);
            request.extensions_mut().insert(flow.into_slot());
        }
        self.streams.insert(stream, state);
        let sink = StreamSink { stream, wake: self.wake_tx.clone(), budget };
        let mut request = request.map(|()| body);
        if let Some(peer) = self.peer_addr {
            request.extensions_mut().insert(PeerAddr(peer));
        }
        if early {
            request.extensions_mut().insert(EarlyData);
        }
        dispatch(request, sink);
    }

    /// Reads body data while the reader has room (discarding it if the reader is gone), then forgets
    /// the stream if that finished it.
    fn read_body(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection, stream: u64) {
        self.read_body_data(h3, conn, stream);
        self.remove_if_finished(stream);
    }

    fn read_body_data(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection, stream: u64) {
        let Some(state) = self.streams.get_mut(&stream) else {
            // Nobody tracks this stream: drain so quiche can release flow-control credit.
            with_scratch(|scratch| while matches!(h3.recv_body(conn, stream, scratch), Ok(read) if read > 0) {});
            return;
        };
        if !state.flush_inbound() {
            return;
        }
        loop {
            match &state.body_tx {
                Some(tx) if tx.is_closed() => state.body_tx = None,
                Some(tx) if tx.capacity() == 0 => return,
                _ => {}
            }
            let reader = state.body_tx.as_ref();
            let read = with_scratch(|scratch| {
                let read = h3.recv_body(conn, stream, scratch)?;
                // With nobody reading, the bytes are discarded: no copy.
                Ok(reader.map(|_| Bytes::copy_from_slice(&scratch[..read])))
            });
            match read {
                Ok(data) => {
                    if let (Some(tx), Some(data)) = (&state.body_tx, data) {
                        let _ = tx.try_send(BodyFrame::Data(data));
                    }
                }
                Err(h3::Error::Done) => return,
                // Reading surfaced the peer's RESET_STREAM; quiche will not report it again as an event.
                Err(h3::Error::TransportError(quiche::Error::StreamReset(code))) => {
                    self.on_reset(stream, code);
                    return;
                }
                Err(err) => {
                    tracing::debug!(stream, error = %err, "reading body failed");
                    return;
                }
            }
        }
    }

    fn on_finished(&mut self, stream: u64) {
        if let Some(state) = self.streams.get_mut(&stream) {
            if let Some(response) = state.response.take() {
                let _ = response.send(Err(Error::MalformedResponse("stream ended before response headers".into())));
                state.close_outbound();
            } else if !state.inbound_done {
                state.deliver(BodyFrame::End);
            }
            state.inbound_done = true;
        }
        self.remove_if_finished(stream);
    }

    fn on_reset(&mut self, stream: u64, code: u64) {
        if let Some(state) = self.streams.get_mut(&stream) {
            if let Some(response) = state.response.take() {
                let _ = response.send(Err(Error::StreamReset(code)));
                state.close_outbound();
            }
            state.inbound_pending.clear();
            state.deliver(BodyFrame::Reset(code));
            if !state.inbound_pending.is_empty() {
                // No room to say so: dropping the sender makes the reader see an incomplete body.
                state.inbound_pending.clear();
                state.body_tx = None;
            }
            state.inbound_done = true;
        }
        self.remove_if_finished(stream);
    }

    fn remove_if_finished(&mut self, stream: u64) {
        if self.streams.get(&stream).is_some_and(StreamState::finished) {
            self.streams.remove(&stream);
            self.unacknowledged.push(stream);
        }
    }

    /// Forgets finished streams quiche has collected (everything sent was acknowledged). Pruned lazily:
    /// the list only matters when draining.
    fn prune_acknowledged(&mut self, conn: &mut QuicConnection, force: bool) {
        if force || self.unacknowledged.len() > UNACKNOWLEDGED_PRUNE_AT {
            self.unacknowledged
                .retain(|stream| !matches!(conn.stream_capacity(*stream), Err(quiche::Error::InvalidStreamState(_))));
        }
    }

    fn handle_wake(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection, wake: Wake) {
        match wake {
            Wake::Out { stream, frame } => {
                if let Some(state) = self.streams.get_mut(&stream)
                    && !state.outbound_done
                {
                    state.outbound.push_back(frame);
                }
            }
            Wake::ReadMore { stream } => self.read_body(h3, conn, stream),
            Wake::Abort { stream, code } => {
                if let Some(state) = self.streams.get_mut(&stream) {
                    state.close_outbound();
                    let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, code);
                }
                self.remove_if_finished(stream);
            }
            Wake::Request(request) => match &mut self.role {
                Role::Client { deferred, .. } => deferred.push_back(request),
                Role::Server { .. } => {}
            },
            Wake::Datagram { frame, _permit: permit } => {
                if h3.peer_settings_raw().is_none() {
                    // RFC 9297 §2.1.1: wait for the peer's SETTINGS. The permit keeps counting against
                    // the connection's datagram queue, which bounds what waits here.
                    self.datagrams_awaiting_settings.push_back((frame, permit));
                } else {
                    self.send_datagram(h3, conn, &frame);
                }
            }
            Wake::GoAway => {
                if let Role::Server { goaway, .. } = &mut self.role
                    && goaway.is_none()
                {
                    // Requests below the next stream ID we have not seen are still served.
                    let last = self.highest_request.map_or(0, |id| id + 4);
                    tracing::debug!(last, in_flight = self.streams.len(), "sending GOAWAY");
                    *goaway = Some(last);
                    let _ = h3.send_goaway(conn, last);
                }
            }
        }
    }

    fn start_requests(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection) {
        let Role::Client { deferred, going_away } = &mut self.role else { return };
        let peer_limit = h3
            .peer_settings_raw()
            .and_then(|settings| settings.iter().find(|(id, _)| *id == SETTINGS_MAX_FIELD_SECTION_SIZE))
            .map(|(_, limit)| *limit);
        while let Some(request) = deferred.pop_front() {
            // The caller gave up (timeout, cancellation): do not send what nobody waits for.
            if request.response.is_closed() {
                continue;
            }
            if going_away.load(Ordering::Relaxed) {
                let _ = request.response.send(Err(Error::GoingAway));
                continue;
            }
            // RFC 9220 §3: extended CONNECT only once the server has said it supports it.
            if request.fields.iter().any(|field| field.name() == b":protocol") {
                if h3.peer_settings_raw().is_none() {
                    // SETTINGS not here yet; they arrive on the control stream and wake us.
                    deferred.push_front(request);
                    return;
                }
                if !h3.extended_connect_enabled_by_peer() {
                    let reason = "the server does not support extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)";
                    let _ = request.response.send(Err(Error::InvalidRequest(reason.into())));
                    continue;
                }
            }
            // Early data can be replayed: only safe requests go before the handshake completes; the
            // rest wait for it.
            if conn.is_in_early_data() {
                let method = request.fields.iter().find(|field| field.name() == b":method").map(|field| field.value());
                if !method.is_some_and(is_safe_method) {
                    deferred.push_front(request);
                    return;
                }
            }
            // RFC 9114 §4.2.2: do not send more than the server said it accepts.
            let size = field_section_size(&request.fields);
            if let Some(limit) = peer_limit.filter(|limit| size > *limit) {
                let _ = request.response.send(Err(Error::HeaderTooLarge { size, limit }));
                continue;
            }
            match h3.send_request(conn, &request.fields, request.end) {
                Ok(stream) => {
                    let budget = Arc::new(Semaphore::new(STREAM_SEND_BUDGET));
                    let state = StreamState {
                        budget: Some(budget.clone()),
                        outbound_done: request.end,
                        response: Some(request.response),
                        is_connect: request.is_connect,
                        ..StreamState::default()
                    };
                    self.streams.insert(stream, state);
                    let _ = request.opened.send(StreamSink { stream, wake: self.wake_tx.clone(), budget });
                }
                Err(h3::Error::StreamBlocked)
                    if self.streams.is_empty()
                        && size > UNSENDABLE_HEADER_BYTES
                        && h3.peer_settings_raw().is_some() =>
                {
                    // quiche writes a header block in one piece, within the congestion window. With
                    // nothing in flight the window cannot grow, so waiting would stall forever. (Before
                    // the server's SETTINGS arrive we wait for them: they may set a smaller limit.)
                    let limit = u64::try_from(conn.send_quantum()).unwrap_or(u64::MAX);
                    let _ = request.response.send(Err(Error::HeaderTooLarge { size, limit }));
                }
                Err(h3::Error::StreamBlocked | h3::Error::TransportError(quiche::Error::StreamLimit)) => {
                    // Out of stream credit or room for the headers: try again when the peer grants more.
                    deferred.push_front(request);
                    return;
                }
                Err(err) => {
                    let _ = request.response.send(Err(Error::Http3(err.to_string())));
                }
            }
        }
    }

    fn flush_outbound(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection, stream: u64) {
        let Some(state) = self.streams.get_mut(&stream) else { return };
        while let Some(frame) = state.outbound.front_mut() {
            let result = match frame {
                OutFrame::Head { fields, end } => h3.send_response(conn, stream, fields, *end).map(|()| *end),
                OutFrame::Data { bytes, .. } => match h3.send_body(conn, stream, bytes, false) {
                    Ok(written) if written == bytes.len() => Ok(false),
                    Ok(written) => {
                        bytes.advance(written);
                        Err(h3::Error::Done)
                    }
                    Err(err) => Err(err),
                },
                OutFrame::Trailers(fields) => {
                    h3.send_additional_headers(conn, stream, fields, true, true).map(|()| true)
                }
                OutFrame::End => h3.send_body(conn, stream, b"", true).map(|_| true),
            };
            match result {
                Ok(fin) => {
                    state.outbound.pop_front();
                    if fin {
                        state.close_outbound();
                    }
                }
                Err(h3::Error::Done | h3::Error::StreamBlocked) => break,
                Err(err) => {
                    tracing::debug!(stream, error = %err, "sending on stream failed");
                    state.close_outbound();
                }
            }
        }
        self.remove_if_finished(stream);
    }
    /// Sends an HTTP datagram if the peer's SETTINGS enabled them; drops and counts it otherwise.
    fn send_datagram(&self, h3: &h3::Connection, conn: &mut QuicConnection, frame: &[u8]) {
        if !h3.dgram_enabled_by_peer(conn) || conn.dgram_send(frame).is_err() {
            self.datagrams.send_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records whether the peer's SETTINGS (once they arrived) enabled HTTP Datagrams, for the flows.
    fn note_peer_settings(&self, h3: &h3::Connection, conn: &QuicConnection) {
        if h3.peer_settings_raw().is_none() {
            return;
        }
        let state = if h3.dgram_enabled_by_peer(conn) { PEER_SETTINGS_ENABLED } else { PEER_SETTINGS_DISABLED };
        self.datagrams.peer_settings.store(state, Ordering::Relaxed);
    }

    /// Sends (or drops) the datagrams that waited for the peer's SETTINGS, once they are here.
    fn settle_waiting_datagrams(&mut self, h3: &h3::Connection, conn: &mut QuicConnection) {
        if h3.peer_settings_raw().is_none() {
            return;
        }
        while let Some((frame, _permit)) = self.datagrams_awaiting_settings.pop_front() {
            self.send_datagram(h3, conn, &frame);
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
                    // A request with a body may already have data buffered.
                    if more_frames {
                        self.read_body(h3, conn, stream);
                    }
                }
                Ok((stream, h3::Event::Data)) => self.read_body(h3, conn, stream),
                Ok((stream, h3::Event::Finished)) => self.on_finished(stream),
                Ok((stream, h3::Event::Reset(code))) => self.on_reset(stream, code),
                Ok((_, h3::Event::PriorityUpdate)) => {}
                Ok((_, h3::Event::GoAway)) => {
                    if let Role::Client { going_away, .. } = &self.role {
                        going_away.store(true, Ordering::Relaxed);
                    }
                }
                Err(h3::Error::Done) => break,
                Err(err) => {
                    // quiche has already closed the connection with the right error code.
                    tracing::debug!(error = %err, "HTTP/3 connection error");
                    break;
                }
            }
        }
    }
}

/// A datagram flow for `stream` if the peer has QUIC datagrams on and its SETTINGS (if they arrived)
/// enabled HTTP Datagrams; a flow made before they arrive sends only once they say yes. A free
/// function so the caller can hold a stream's state mutably while passing the driver's shared parts.
fn datagram_flow(
    conn: &QuicConnection,
    stream: u64,
    wake: &WakeSender,
    permits: &Arc<Semaphore>,
    shared: &Arc<DatagramShared>,
) -> Option<(DatagramFlow, mpsc::Sender<Bytes>)> {
    conn.dgram_max_writable_len()?;
    if shared.peer_settings.load(Ordering::Relaxed) == PEER_SETTINGS_DISABLED {
        return None;
    }
    Some(DatagramFlow::new(stream, wake.clone(), permits.clone(), shared.clone()))
}

/// Header sections above this may never fit quiche's one-piece header write within a congestion window
/// that has nothing in flight to grow from (10 packets of 1350 bytes, less framing). Smaller blocked
/// requests wait: they are blocked by flow control, which a packet from the peer will lift.
const UNSENDABLE_HEADER_BYTES: u64 = 10_000;

/// SETTINGS_MAX_FIELD_SECTION_SIZE (RFC 9114 §7.2.4.1).
const SETTINGS_MAX_FIELD_SECTION_SIZE: u64 = 0x6;

/// A field section's size as RFC 9114 §4.2.2 counts it: each field's name and value plus 32 bytes.
fn field_section_size(fields: &[Header]) -> u64 {
    fields.iter().map(|field| (field.name().len() + field.value().len() + 32) as u64).sum()
}

fn reset_stream(conn: &mut QuicConnection, stream: u64, code: u64) {
    let _ = conn.stream_shutdown(stream, quiche::Shutdown::Read, code);
    let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, code);
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
        let mut ids = std::mem::take(&mut self.stream_ids);
        ids.extend(self.streams.iter().filter(|(_, state)| !state.outbound.is_empty()).map(|(id, _)| *id));
        for stream in ids.drain(..) {
            self.flush_outbound(&mut h3, conn, stream);
        }
        self.stream_ids = ids;
        self.h3 = Some(h3);
        if let Some(max) = conn.dgram_max_writable_len() {
            self.datagrams.max_writable.store(max, Ordering::Relaxed);
        }
        let draining = matches!(self.role, Role::Server { goaway: Some(_), .. }) || self.client_draining;
        self.prune_acknowledged(conn, draining);
        if draining && self.streams.is_empty() && self.unacknowledged.is_empty() {
            // Every request answered and every answer acknowledged: closing now loses nothing.
            let _ = conn.close(true, crate::error::H3_NO_ERROR, b"shutting down");
        }
        Ok(())
    }

    /// The endpoint shuts down gracefully: a server sends GOAWAY and closes once its last response is
    /// acknowledged; a client closes once its requests are answered.
    fn on_drain(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        match &self.role {
            Role::Server { .. } => {
                if let Some(mut h3) = self.h3.take() {
                    self.handle_wake(&mut h3, conn, Wake::GoAway);
                    self.h3 = Some(h3);
                }
            }
            Role::Client { going_away, .. } => {
                // New requests go elsewhere; the connection closes when nothing is left in flight.
                going_away.store(true, Ordering::Relaxed);
                self.client_draining = true;
            }
        }
        Ok(())
    }

    fn on_conn_close(&mut self, conn: &mut QuicConnection, reason: &ConnectionError) {
        let mut h3 = self.h3.take();
        for (stream, mut state) in self.streams.drain() {
            state.close_outbound();
            if let Some(response) = state.response.take() {
                let _ = response.send(Err(Error::ConnectionClosed(reason.clone())));
            }
            if let Some(h3) = h3.as_mut() {
                hand_over_received_body(h3, conn, stream, state);
            }
            // Otherwise dropping the body sender makes the reader see an incomplete body.
        }
        if let Role::Client { deferred, .. } = &mut self.role {
            for request in deferred.drain(..) {
                let _ = request.response.send(Err(Error::ConnectionClosed(reason.clone())));
            }
        }
        self.wake_rx.close();
        while let Ok(wake) = self.wake_rx.try_recv() {
            if let Wake::Request(request) = wake {
                let _ = request.response.send(Err(Error::ConnectionClosed(reason.clone())));
            }
        }
    }
}

/// A connection closed while a body was still being read (typically the server closing after GOAWAY
/// once everything it sent was acknowledged, while the reader lagged behind): the bytes that arrived
/// are still in quiche's stream buffer, bounded by the flow-control window we advertised. They go to
/// the reader from a task of their own, at the reader's pace, followed by the end of the body if the
/// peer's FIN arrived too; otherwise the body ends incomplete, as before.
fn hand_over_received_body(h3: &mut h3::Connection, conn: &mut QuicConnection, stream: u64, mut state: StreamState) {
    let Some(tx) = state.body_tx.take().filter(|tx| !tx.is_closed()) else { return };
    // Markers (end, trailers) still waiting for room go first.
    let mut frames: Vec<BodyFrame> = state.inbound_pending.drain(..).collect();
    if !state.inbound_done {
        with_scratch(|scratch| {
            while let Ok(read) = h3.recv_body(conn, stream, scratch) {
                if read == 0 {
                    break;
                }
                frames.push(BodyFrame::Data(Bytes::copy_from_slice(&scratch[..read])));
            }
        });
        if conn.stream_finished(stream) {
            frames.push(BodyFrame::End);
        }
    }
    if !frames.is_empty() {
        tokio::spawn(send_frames(tx, frames));
    }
}

/// Sends `frames` into a body channel as the reader makes room; stops if the reader goes away.
async fn send_frames(tx: mpsc::Sender<BodyFrame>, frames: Vec<BodyFrame>) {
    for frame in frames {
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}
