//! The server role: a request head arrives → checks (GOAWAY, live-request cap, malformed, 0-RTT) →
//! the request goes to user code through [`Dispatch`]; on drain, GOAWAY.

use std::sync::Arc;

use http::Request;
use quiver::QuicConnection;
use quiver::quiche::h3::{self, Header};
use tokio::sync::Semaphore;

use super::datagrams::datagram_flow;
use super::streams::{DeclaredLength, StreamState, reset_stream};
use super::{EarlyData, H3Driver, H3Settings, PeerAddr, Role, is_safe_method};
use crate::body::RecvBody;
use crate::command::{OnEarlyDrop, OutFrame, STREAM_SEND_BUDGET, StreamSink};
use crate::error::{H3_MESSAGE_ERROR, H3_REQUEST_REJECTED};
use crate::headers;

/// Hands a parsed request to user code (the server runs or spawns its handler).
pub(crate) type Dispatch = Arc<dyn Fn(Request<RecvBody>, StreamSink) + Send + Sync>;

pub(super) struct ServerRole {
    dispatch: Dispatch,
    /// The stream ID our GOAWAY announced; requests at or above it are refused.
    goaway: Option<u64>,
    /// The highest request stream we took, which decides what GOAWAY still lets through.
    highest_request: Option<u64>,
}

impl ServerRole {
    pub(super) fn goaway_sent(&self) -> bool {
        self.goaway.is_some()
    }
}

impl H3Driver {
    /// The driver for one server connection: each request goes to `dispatch`.
    pub(crate) fn server(settings: H3Settings, dispatch: Dispatch) -> Self {
        Self::new(settings, Role::Server(ServerRole { dispatch, goaway: None, highest_request: None }))
    }

    /// A new request stream opened by the client.
    pub(super) fn on_request(&mut self, conn: &mut QuicConnection, stream: u64, list: Vec<Header>, more_frames: bool) {
        let Role::Server(server) = &mut self.role else { return };
        if server.goaway.is_some_and(|last| stream >= last) {
            // RFC 9114 §5.2: not processed, safe for the client to retry elsewhere.
            reset_stream(conn, stream, H3_REQUEST_REJECTED);
            return;
        }
        if self.streams.len() >= self.settings.max_live_requests {
            // Requests whose peer already reset them still count while their handler runs: without
            // this cap, reset-and-reopen would grow tasks and state without bound.
            tracing::debug!(stream, live = self.streams.len(), "too many live requests; rejecting");
            reset_stream(conn, stream, H3_REQUEST_REJECTED);
            return;
        }
        // A CONNECT's DATA is tunnel bytes, not content (RFC 9110 §9.3.6): no length to hold it to.
        let parsed = headers::parse_request(&list).and_then(|request| {
            let declared = if request.method() == http::Method::CONNECT {
                None
            } else {
                headers::content_length(request.headers())?
            };
            Ok((request, DeclaredLength::expect(declared, more_frames)?))
        });
        let (mut request, declared_length) = match parsed {
            Ok(parsed) => parsed,
            Err(malformed) => {
                tracing::debug!(stream, reason = %malformed, "malformed request");
                reset_stream(conn, stream, H3_MESSAGE_ERROR);
                return;
            }
        };
        server.highest_request = server.highest_request.max(Some(stream));
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
            drop(state.open_body(stream, more_frames, &self.wake_tx, OnEarlyDrop::Discard));
            self.streams.insert(stream, state);
            return;
        }
        let budget = Arc::new(Semaphore::new(STREAM_SEND_BUDGET));
        let mut state = StreamState { budget: Some(budget.clone()), declared_length, ..StreamState::default() };
        let body = RecvBody::new(state.open_body(stream, more_frames, &self.wake_tx, OnEarlyDrop::Discard));
        if request.method() == http::Method::CONNECT
            && let Some((flow, tx)) =
                datagram_flow(conn, stream, &self.wake_tx, &self.datagram_permits, &self.datagrams)
        {
            state.datagram_tx = Some(tx);
            request.extensions_mut().insert(flow.into_slot());
        }
        self.streams.insert(stream, state);
        let sink = StreamSink::new(stream, self.wake_tx.clone(), budget);
        let mut request = request.map(|()| body);
        if let Some(peer) = self.peer_addr {
            request.extensions_mut().insert(PeerAddr(peer));
        }
        if early {
            request.extensions_mut().insert(EarlyData);
        }
        (server.dispatch)(request, sink);
    }

    /// Sends GOAWAY once (server): requests already received are still served, later ones refused.
    pub(super) fn send_goaway(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection) {
        let Role::Server(server) = &mut self.role else { return };
        if server.goaway.is_some() {
            return;
        }
        // Requests below the next stream ID we have not seen are still served.
        let last = server.highest_request.map_or(0, |id| id + 4);
        tracing::debug!(last, in_flight = self.streams.len(), "sending GOAWAY");
        server.goaway = Some(last);
        let _ = h3.send_goaway(conn, last);
    }
}
