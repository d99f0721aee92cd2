//! The client role: queued requests become request streams when quiche has room (and, for extended
//! CONNECT or 0-RTT, when it is allowed); response heads go back to their callers; a caller that stops
//! waiting cancels its request on the wire (H3_REQUEST_CANCELLED); GOAWAY stops new requests.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quiver::quiche;
use quiver::quiche::h3::{self, Header, NameValue};
use quiver::{ConnectionError, QuicConnection};
use tokio::sync::Semaphore;

use super::datagrams::datagram_flow;
use super::streams::{DeclaredLength, StreamState, reset_stream};
use super::{H3Driver, H3Settings, Role, is_safe_method};
use crate::command::{NewRequest, OnEarlyDrop, STREAM_SEND_BUDGET, StreamSink};
use crate::error::{Error, H3_MESSAGE_ERROR, H3_REQUEST_CANCELLED};
use crate::headers;

/// Header sections above this may never fit quiche's one-piece header write within a congestion window
/// that has nothing in flight to grow from (10 packets of 1350 bytes, less framing). Smaller blocked
/// requests wait: they are blocked by flow control, which a packet from the peer will lift.
const UNSENDABLE_HEADER_BYTES: u64 = 10_000;

/// SETTINGS_MAX_FIELD_SECTION_SIZE (RFC 9114 §7.2.4.1).
const SETTINGS_MAX_FIELD_SECTION_SIZE: u64 = 0x6;

pub(super) struct ClientRole {
    /// Requests waiting for a stream (each holds a request permit, which bounds this queue).
    deferred: VecDeque<NewRequest>,
    /// Set once the server sent GOAWAY (or we drain): new requests go to a new connection.
    going_away: Arc<AtomicBool>,
    /// Our endpoint shuts down gracefully: close once every request is answered.
    pub(super) draining: bool,
}

impl ClientRole {
    pub(super) fn start_draining(&mut self) {
        // New requests go elsewhere; the connection closes when nothing is left in flight.
        self.going_away.store(true, Ordering::Relaxed);
        self.draining = true;
    }

    /// The connection closed: every request still waiting for a stream fails with `reason`.
    pub(super) fn fail_queued(&mut self, reason: &ConnectionError) {
        for request in self.deferred.drain(..) {
            fail_request(request, reason);
        }
    }
}

/// Tells a request's caller that the connection closed before it was sent.
pub(super) fn fail_request(request: NewRequest, reason: &ConnectionError) {
    let _ = request.response.send(Err(Error::ConnectionClosed(reason.clone())));
}

/// The RFC 9114 §8.1 code for an HTTP/3 error quiche reported while opening a request.
fn error_code(err: &h3::Error) -> u64 {
    match err {
        h3::Error::ExcessiveLoad => 0x107,
        h3::Error::IdError => 0x108,
        h3::Error::StreamCreationError => 0x103,
        h3::Error::ClosedCriticalStream => 0x104,
        h3::Error::MissingSettings => 0x10a,
        h3::Error::FrameUnexpected => 0x105,
        h3::Error::FrameError => 0x106,
        h3::Error::SettingsError => 0x109,
        h3::Error::RequestRejected => 0x10b,
        h3::Error::RequestCancelled => 0x10c,
        h3::Error::RequestIncomplete => 0x10d,
        h3::Error::MessageError => 0x10e,
        h3::Error::ConnectError => 0x10f,
        h3::Error::VersionFallback => 0x110,
        _ => crate::error::H3_INTERNAL_ERROR,
    }
}

impl H3Driver {
    /// The driver for one client connection; requests arrive through its inbox.
    pub(crate) fn client(settings: H3Settings) -> Self {
        let role = ClientRole { deferred: VecDeque::new(), going_away: Arc::default(), draining: false };
        Self::new(settings, Role::Client(role))
    }

    /// Set once the server sent GOAWAY (client role): new requests must go to a new connection.
    pub(crate) fn going_away_flag(&self) -> Arc<AtomicBool> {
        match &self.role {
            Role::Client(client) => client.going_away.clone(),
            Role::Server(_) => Arc::default(),
        }
    }

    pub(super) fn queue_request(&mut self, request: NewRequest) {
        if let Role::Client(client) = &mut self.role {
            client.deferred.push_back(request);
        }
    }

    pub(super) fn on_goaway_received(&mut self) {
        if let Role::Client(client) = &self.role {
            client.going_away.store(true, Ordering::Relaxed);
        }
    }

    /// A header section on a request stream whose caller still waits for the response head.
    pub(super) fn on_response(&mut self, conn: &mut QuicConnection, stream: u64, list: Vec<Header>, more_frames: bool) {
        let Some(state) = self.streams.get_mut(&stream) else { return };
        let Some(response) = state.response.take() else { return };
        let parsed = headers::parse_response(&list).and_then(|head| {
            if head.status().is_informational() {
                return Ok((head, None));
            }
            let declared = if state.is_connect && head.status().is_success() {
                // A tunnel, not content: RFC 9110 §9.3.6 has the client ignore Content-Length here.
                None
            } else if state.is_head || matches!(head.status().as_u16(), 204 | 304) {
                // No content, whatever Content-Length says (RFC 9114 §4.1.2, RFC 9110 §6.4.1).
                Some(0)
            } else {
                headers::content_length(head.headers())?
            };
            Ok((head, DeclaredLength::expect(declared, more_frames)?))
        });
        match parsed {
            Ok((head, _)) if head.status().is_informational() => state.response = Some(response),
            Ok((head, declared_length)) => {
                state.declared_length = declared_length;
                let body = state.open_body(stream, more_frames, &self.wake_tx, OnEarlyDrop::StopSending);
                let mut head = head.map(|()| body);
                if state.is_connect
                    && head.status().is_success()
                    && let Some((flow, tx)) =
                        datagram_flow(conn, stream, &self.wake_tx, &self.datagram_permits, &self.datagrams)
                {
                    state.datagram_tx = Some(tx);
                    head.extensions_mut().insert(flow.into_slot());
                }
                // A caller that left just now drops the body with the message, which cancels it.
                let _ = response.send(Ok(head));
            }
            Err(malformed) => {
                let _ = response.send(Err(Error::MalformedResponse(malformed)));
                reset_stream(conn, stream, H3_MESSAGE_ERROR);
                state.inbound_done = true;
                state.close_outbound();
            }
        }
        self.remove_if_finished(stream);
    }

    /// Callers stopped waiting for their response heads (dropped or timed out): reset those streams
    /// with H3_REQUEST_CANCELLED (RFC 9114 §4.1.1) so the server stops working on them. Requests still
    /// queued are skipped when their turn comes.
    pub(super) fn cancel_abandoned_requests(&mut self, conn: &mut QuicConnection) {
        let mut ids = std::mem::take(&mut self.stream_ids);
        ids.extend(
            self.streams
                .iter()
                .filter(|(_, state)| state.response.as_ref().is_some_and(|response| response.is_closed()))
                .map(|(id, _)| *id),
        );
        for stream in ids.drain(..) {
            if let Some(state) = self.streams.get_mut(&stream) {
                tracing::debug!(stream, "request cancelled by its caller");
                reset_stream(conn, stream, H3_REQUEST_CANCELLED);
                state.response = None;
                state.close_outbound();
                state.close_inbound();
            }
            self.remove_if_finished(stream);
        }
        self.stream_ids = ids;
    }

    /// Opens streams for queued requests while quiche has room.
    pub(super) fn start_requests(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection) {
        let Role::Client(client) = &mut self.role else { return };
        let peer_limit = h3
            .peer_settings_raw()
            .and_then(|settings| settings.iter().find(|(id, _)| *id == SETTINGS_MAX_FIELD_SECTION_SIZE))
            .map(|(_, limit)| *limit);
        while let Some(request) = client.deferred.pop_front() {
            // The caller gave up (timeout, cancellation): do not send what nobody waits for.
            if request.response.is_closed() {
                continue;
            }
            if client.going_away.load(Ordering::Relaxed) {
                let _ = request.response.send(Err(Error::GoingAway));
                continue;
            }
            // RFC 9220 §3: extended CONNECT only once the server has said it supports it.
            if request.fields.iter().any(|field| field.name() == b":protocol") {
                if h3.peer_settings_raw().is_none() {
                    // SETTINGS not here yet; they arrive on the control stream and wake us.
                    client.deferred.push_front(request);
                    return;
                }
                if !h3.extended_connect_enabled_by_peer() {
                    let _ = request.response.send(Err(Error::ExtendedConnectUnsupported));
                    continue;
                }
            }
            // Early data can be replayed: only safe requests go before the handshake completes; the
            // rest wait for it.
            if conn.is_in_early_data() && !request_method(&request.fields).is_some_and(is_safe_method) {
                client.deferred.push_front(request);
                return;
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
                        is_head: request_method(&request.fields) == Some(b"HEAD"),
                        ..StreamState::default()
                    };
                    self.streams.insert(stream, state);
                    let _ = request.opened.send(StreamSink::new(stream, self.wake_tx.clone(), budget));
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
                    client.deferred.push_front(request);
                    return;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "cannot open a request stream");
                    let _ = request.response.send(Err(Error::Http3 { code: error_code(&err) }));
                }
            }
        }
    }
}

/// The `:method` of a request's field section.
fn request_method(fields: &[Header]) -> Option<&[u8]> {
    fields.iter().find(|field| field.name() == b":method").map(|field| field.value())
}

/// A field section's size as RFC 9114 §4.2.2 counts it: each field's name and value plus 32 bytes.
fn field_section_size(fields: &[Header]) -> u64 {
    fields.iter().map(|field| (field.name().len() + field.value().len() + 32) as u64).sum()
}
