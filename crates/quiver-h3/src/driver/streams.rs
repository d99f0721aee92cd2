//! The stream machinery both roles share: a stream's state, its body in (read while the reader has
//! room, discard when nobody reads, counted against the declared `Content-Length`) and out (frames
//! queued by the handler or caller, flushed while quiche takes them), trailers, resets, and finished
//! streams kept until the peer acknowledged them.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use quiver::quiche::h3;
use quiver::quiche::{self, h3::Header};
use quiver::{ConnectionError, QuicConnection};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::H3Driver;
use crate::command::{BodyFrame, InboundBody, OnEarlyDrop, OutFrame, ResponseResult, WakeSender};
use crate::error::{Error, H3_MESSAGE_ERROR, H3_REQUEST_CANCELLED};
use crate::headers::{self, Malformed};

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
pub(super) fn with_scratch<R>(read: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => read(&mut scratch),
        // Only reachable if a read re-entered the driver, which it never does; stay correct anyway.
        Err(_) => read(&mut vec![0; RECV_CHUNK]),
    })
}

/// RFC 9114 §4.1.2: the content length a message declared, and the DATA received so far. A message
/// whose DATA exceeds it, or ends short of it, is malformed; the reader gets an error, never a body
/// of another length than the head said (a front end relaying it to an HTTP/1.1 back end would
/// otherwise let the surplus be read there as a second request).
#[derive(Debug, Clone, Copy)]
pub(super) struct DeclaredLength {
    declared: u64,
    received: u64,
}

impl DeclaredLength {
    /// The length to hold a message's body to: `Ok(None)` when nothing is declared or no body follows
    /// the head; a declared length above zero with no body after the head is malformed.
    pub(super) fn expect(declared: Option<u64>, more_frames: bool) -> Result<Option<Self>, Malformed> {
        match declared {
            Some(declared) if !more_frames && declared > 0 => {
                Err(Malformed::new(format!("Content-Length {declared} but the message has no DATA")))
            }
            Some(declared) if more_frames => Ok(Some(Self { declared, received: 0 })),
            _ => Ok(None),
        }
    }

    /// Counts `bytes` more of DATA: an error once they exceed the declared length.
    fn receive(&mut self, bytes: usize) -> Result<(), Malformed> {
        self.received = self.received.saturating_add(bytes as u64);
        if self.received > self.declared {
            return Err(Malformed::new(format!(
                "more DATA than its Content-Length {} (at least {} bytes)",
                self.declared, self.received
            )));
        }
        Ok(())
    }

    /// The DATA ended (trailers or the end of the stream): an error if it fell short.
    fn check_complete(&self) -> Result<(), Malformed> {
        if self.received < self.declared {
            return Err(Malformed::new(format!(
                "{} bytes of DATA, Content-Length said {}",
                self.received, self.declared
            )));
        }
        Ok(())
    }
}

/// Resets both directions of a stream with `code`.
pub(super) fn reset_stream(conn: &mut QuicConnection, stream: u64, code: u64) {
    let _ = conn.stream_shutdown(stream, quiche::Shutdown::Read, code);
    let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, code);
}

#[derive(Default)]
pub(super) struct StreamState {
    /// Towards the user; `None` once ended or when nobody reads (then data is discarded).
    pub(super) body_tx: Option<mpsc::Sender<BodyFrame>>,
    /// Trailers and end markers waiting for room in `body_tx` (at most two).
    pub(super) inbound_pending: VecDeque<BodyFrame>,
    pub(super) inbound_done: bool,
    pub(super) outbound: VecDeque<OutFrame>,
    pub(super) outbound_done: bool,
    pub(super) budget: Option<Arc<Semaphore>>,
    /// Client: the caller waiting for the response head.
    pub(super) response: Option<oneshot::Sender<ResponseResult>>,
    /// Client: whether the request was a CONNECT (its response gets a datagram flow).
    pub(super) is_connect: bool,
    /// Client: whether the request was a HEAD (its response has no content, RFC 9110 §9.3.2).
    pub(super) is_head: bool,
    /// The body length the message's head declared, checked as DATA arrives.
    pub(super) declared_length: Option<DeclaredLength>,
    /// HTTP datagrams towards the user.
    pub(super) datagram_tx: Option<mpsc::Sender<Bytes>>,
}

impl StreamState {
    pub(super) fn deliver(&mut self, frame: BodyFrame) {
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

    /// The body the user reads for this stream: a channel when frames follow the head, else none.
    pub(super) fn open_body(
        &mut self,
        stream: u64,
        more_frames: bool,
        wake: &WakeSender,
        on_early_drop: OnEarlyDrop,
    ) -> Option<InboundBody> {
        if more_frames {
            let (tx, body) = InboundBody::channel(stream, wake.clone(), on_early_drop);
            self.body_tx = Some(tx);
            Some(body)
        } else {
            self.inbound_done = true;
            None
        }
    }

    pub(super) fn close_outbound(&mut self) {
        self.outbound.clear();
        self.outbound_done = true;
        if let Some(budget) = &self.budget {
            budget.close();
        }
    }

    /// Ends the body early with `frame` (a reset or a malformation), dropping what waits for room;
    /// with no room for `frame` either, the reader sees the sender go, an incomplete body.
    fn end_inbound(&mut self, frame: BodyFrame) {
        self.inbound_pending.clear();
        self.deliver(frame);
        if !self.inbound_pending.is_empty() {
            self.inbound_pending.clear();
            self.body_tx = None;
        }
        self.inbound_done = true;
    }

    /// The message turned out malformed after its head (RFC 9114 §4.1.2): both directions are reset
    /// with H3_MESSAGE_ERROR and the reader gets the reason instead of an end.
    pub(super) fn reject_malformed(&mut self, conn: &mut QuicConnection, stream: u64, reason: Malformed) {
        tracing::debug!(stream, %reason, "malformed message");
        reset_stream(conn, stream, H3_MESSAGE_ERROR);
        self.close_outbound();
        self.end_inbound(BodyFrame::Malformed(reason));
    }

    /// Nothing more will come in (the message ended, or was cut off).
    pub(super) fn close_inbound(&mut self) {
        self.inbound_pending.clear();
        self.body_tx = None;
        self.inbound_done = true;
    }

    fn finished(&self) -> bool {
        self.inbound_done && self.outbound_done && self.inbound_pending.is_empty()
    }
}

impl H3Driver {
    /// Header sections after the first on a stream we track: trailers (both roles), or the response
    /// head (client).
    pub(super) fn on_stream_headers(
        &mut self,
        conn: &mut QuicConnection,
        stream: u64,
        list: Vec<Header>,
        more_frames: bool,
    ) {
        let Some(state) = self.streams.get_mut(&stream) else { return };
        if state.response.is_some() {
            self.on_response(conn, stream, list, more_frames);
            return;
        }
        // Trailers end the DATA, so a body that fell short of its declared length shows here.
        let complete = state.declared_length.as_ref().map_or(Ok(()), DeclaredLength::check_complete);
        match complete.and_then(|()| headers::parse_trailers(&list)) {
            Ok(trailers) => state.deliver(BodyFrame::Trailers(trailers)),
            Err(malformed) => state.reject_malformed(conn, stream, malformed),
        }
        self.remove_if_finished(stream);
    }

    /// Reads body data while the reader has room (discarding it if the reader is gone), then forgets
    /// the stream if that finished it.
    pub(super) fn read_body(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection, stream: u64) {
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
                Ok((read, reader.map(|_| Bytes::copy_from_slice(&scratch[..read]))))
            });
            match read {
                Ok((read, data)) => {
                    // Checked before delivery: the reader never sees a byte past the declared length.
                    if let Some(length) = &mut state.declared_length
                        && let Err(malformed) = length.receive(read)
                    {
                        state.reject_malformed(conn, stream, malformed);
                        return;
                    }
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

    /// The reader of a response body went away before its end: stop the peer sending the rest
    /// (STOP_SENDING) rather than reading and discarding it.
    pub(super) fn stop_reading(&mut self, conn: &mut QuicConnection, stream: u64) {
        let Some(state) = self.streams.get_mut(&stream) else { return };
        if state.inbound_done {
            return;
        }
        let _ = conn.stream_shutdown(stream, quiche::Shutdown::Read, H3_REQUEST_CANCELLED);
        state.close_inbound();
        self.remove_if_finished(stream);
    }

    pub(super) fn on_finished(&mut self, conn: &mut QuicConnection, stream: u64) {
        if let Some(state) = self.streams.get_mut(&stream) {
            if let Some(response) = state.response.take() {
                let reason = Malformed::new("stream ended before the response head");
                let _ = response.send(Err(Error::MalformedResponse(reason)));
                state.close_outbound();
            } else if !state.inbound_done {
                match state.declared_length.as_ref().map_or(Ok(()), DeclaredLength::check_complete) {
                    Ok(()) => state.deliver(BodyFrame::End),
                    Err(malformed) => state.reject_malformed(conn, stream, malformed),
                }
            }
            state.inbound_done = true;
        }
        self.remove_if_finished(stream);
    }

    pub(super) fn on_reset(&mut self, stream: u64, code: u64) {
        if let Some(state) = self.streams.get_mut(&stream) {
            if let Some(response) = state.response.take() {
                let _ = response.send(Err(Error::StreamReset(code)));
                state.close_outbound();
            }
            state.end_inbound(BodyFrame::Reset(code));
        }
        self.remove_if_finished(stream);
    }

    pub(super) fn remove_if_finished(&mut self, stream: u64) {
        if self.streams.get(&stream).is_some_and(StreamState::finished) {
            self.streams.remove(&stream);
            self.unacknowledged.push(stream);
        }
    }

    /// Forgets finished streams quiche has collected (everything sent was acknowledged). Pruned lazily:
    /// the list only matters when draining.
    pub(super) fn prune_acknowledged(&mut self, conn: &mut QuicConnection, force: bool) {
        if force || self.unacknowledged.len() > UNACKNOWLEDGED_PRUNE_AT {
            self.unacknowledged
                .retain(|stream| !matches!(conn.stream_capacity(*stream), Err(quiche::Error::InvalidStreamState(_))));
        }
    }

    /// A frame from the stream's handler or caller; dropped if the stream can no longer send.
    pub(super) fn queue_outbound(&mut self, stream: u64, frame: OutFrame) {
        if let Some(state) = self.streams.get_mut(&stream)
            && !state.outbound_done
        {
            state.outbound.push_back(frame);
        }
    }

    /// The body we were sending failed: reset our sending side.
    pub(super) fn abort_outbound(&mut self, conn: &mut QuicConnection, stream: u64, code: u64) {
        if let Some(state) = self.streams.get_mut(&stream) {
            state.close_outbound();
            let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, code);
        }
        self.remove_if_finished(stream);
    }

    /// Hands quiche the queued frames of every stream that has some.
    pub(super) fn flush_all_outbound(&mut self, h3: &mut h3::Connection, conn: &mut QuicConnection) {
        let mut ids = std::mem::take(&mut self.stream_ids);
        ids.extend(self.streams.iter().filter(|(_, state)| !state.outbound.is_empty()).map(|(id, _)| *id));
        for stream in ids.drain(..) {
            self.flush_outbound(h3, conn, stream);
        }
        self.stream_ids = ids;
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
}

/// Ends one stream's exchange as its connection closes: the waiting caller gets the reason; a body
/// still being read gets what already arrived (see [`hand_over_received_body`]), otherwise the reader
/// sees an incomplete body when the sender drops.
pub(super) fn end_on_close(
    h3: Option<&mut h3::Connection>,
    conn: &mut QuicConnection,
    stream: u64,
    mut state: StreamState,
    reason: &ConnectionError,
) {
    state.close_outbound();
    if let Some(response) = state.response.take() {
        let _ = response.send(Err(Error::ConnectionClosed(reason.clone())));
    }
    if let Some(h3) = h3 {
        hand_over_received_body(h3, conn, stream, state);
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
        let mut length = state.declared_length;
        let overlong = with_scratch(|scratch| {
            while let Ok(read) = h3.recv_body(conn, stream, scratch) {
                if read == 0 {
                    break;
                }
                if let Some(Err(malformed)) = length.as_mut().map(|length| length.receive(read)) {
                    return Some(malformed);
                }
                frames.push(BodyFrame::Data(Bytes::copy_from_slice(&scratch[..read])));
            }
            None
        });
        if let Some(malformed) = overlong {
            frames.push(BodyFrame::Malformed(malformed));
        } else if conn.stream_finished(stream) {
            frames.push(match length.as_ref().map_or(Ok(()), DeclaredLength::check_complete) {
                Ok(()) => BodyFrame::End,
                Err(malformed) => BodyFrame::Malformed(malformed),
            });
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
