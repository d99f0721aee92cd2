//! The messages between user code and a connection's [`H3Driver`](crate::H3Driver): the driver's
//! inbox ([`Wake`]), the frames a handler or caller sends on a stream ([`OutFrame`] through a
//! [`StreamSink`]), and the body frames the driver hands the reader ([`BodyFrame`] through an
//! [`InboundBody`]).
//!
//! A leaf module: it knows nothing of the driver, bodies or datagram flows, so each of them can import
//! it without an import cycle. The inbox is unbounded in type but bounded in fact: every outbound data
//! frame holds permits of its stream's byte budget until quiche has taken its bytes, each stream queues
//! at most one head and one end marker, read credit is one message per consumed chunk, and requests
//! hold a per-connection request permit.

use bytes::{Buf, Bytes};
use http::{HeaderMap, Response};
use http_body::Body;
use http_body_util::BodyExt;
use quiver::quiche::h3::Header;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::{Error, H3_INTERNAL_ERROR};
use crate::headers;

/// Bytes of one stream's outbound data that may wait for quiche at once: enough to keep a fast path
/// busy between wake-ups, small enough that a thousand streams stay in the hundreds of MiB worst case.
pub(crate) const STREAM_SEND_BUDGET: usize = 256 * 1024;
/// Largest DATA frame we hand quiche in one piece.
const MAX_DATA_CHUNK: usize = 64 * 1024;
/// Body chunks buffered between the connection task and the reader. Each chunk is at most one read
/// (16 KiB), so this bounds the buffer at 128 KiB per stream; the rest waits in quiche's flow-controlled
/// stream buffer.
pub(crate) const BODY_CHANNEL_CHUNKS: usize = 8;

/// The sending half of a driver's inbox.
pub(crate) type WakeSender = mpsc::UnboundedSender<Wake>;

/// Something for the driver to do that did not come from the network.
pub(crate) enum Wake {
    /// A frame to send on a stream.
    Out { stream: u64, frame: OutFrame },
    /// The reader consumed a body chunk: read more of the stream. Also sent by a server-side reader
    /// that gave up early, so the driver discards the rest of the request body.
    ReadMore { stream: u64 },
    /// A client-side reader dropped its body before the end: stop reading the stream (STOP_SENDING
    /// with H3_REQUEST_CANCELLED) instead of discarding what keeps arriving.
    StopReading { stream: u64 },
    /// Reset our sending side of a stream (the body we were sending failed).
    Abort { stream: u64, code: u64 },
    /// Open a request stream (client).
    Request(NewRequest),
    /// A caller stopped waiting for its response head (client): cancel those requests on the wire.
    ResponseAbandoned,
    /// Send an HTTP datagram (quarter stream ID already prefixed); the permit bounds the queue.
    Datagram { frame: Bytes, _permit: OwnedSemaphorePermit },
}

/// One frame a handler or caller sends on its stream, in order.
pub(crate) enum OutFrame {
    Head { fields: Vec<Header>, end: bool },
    Data { bytes: Bytes, _permit: OwnedSemaphorePermit },
    Trailers(Vec<Header>),
    End,
}

/// What a client caller receives for its request: the response head with the body's channel (none
/// when the head ended the stream), or why there is no response.
pub(crate) type ResponseResult = Result<Response<Option<InboundBody>>, Error>;

/// A request for the client driver to open a stream for.
pub(crate) struct NewRequest {
    pub(crate) fields: Vec<Header>,
    pub(crate) end: bool,
    /// CONNECT requests get a [`DatagramFlow`](crate::DatagramFlow) on their response.
    pub(crate) is_connect: bool,
    pub(crate) opened: oneshot::Sender<StreamSink>,
    pub(crate) response: oneshot::Sender<ResponseResult>,
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
    pub(crate) fn new(stream: u64, wake: WakeSender, budget: Arc<Semaphore>) -> Self {
        Self { stream, wake, budget }
    }

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
///
/// # Cancel safety
/// Not cancel safe: a cancelled call leaves the stream with part of the body sent and no end; drop the
/// sink's stream (the driver resets it when its owner goes away).
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

/// One piece of a body arriving from the peer.
#[derive(Debug)]
pub(crate) enum BodyFrame {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    Reset(u64),
    /// We found the message malformed and reset the stream with H3_MESSAGE_ERROR.
    Malformed(headers::Malformed),
}

/// What a reader that stops before the end of a body asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnEarlyDrop {
    /// Read and discard the rest (server: the response may still be sent; the client may still be
    /// uploading).
    Discard,
    /// Stop reading with STOP_SENDING (client: nobody wants the response any more).
    StopSending,
}

/// The receiving end of one body: the frames from the driver and the read credit back to it. Dropped
/// before the end, it tells the driver what to do with the rest (see [`OnEarlyDrop`]); that includes a
/// response head nobody received, dropped inside its channel.
#[derive(Debug)]
pub(crate) struct InboundBody {
    frames: mpsc::Receiver<BodyFrame>,
    stream: u64,
    wake: WakeSender,
    on_early_drop: OnEarlyDrop,
    /// The last frame (end, reset, or the driver gone) was read: nothing to abandon.
    ended: bool,
}

impl InboundBody {
    /// A body channel for `stream`: the driver keeps the sender.
    pub(crate) fn channel(
        stream: u64,
        wake: WakeSender,
        on_early_drop: OnEarlyDrop,
    ) -> (mpsc::Sender<BodyFrame>, Self) {
        let (tx, frames) = mpsc::channel(BODY_CHANNEL_CHUNKS);
        (tx, Self { frames, stream, wake, on_early_drop, ended: false })
    }

    /// The next frame; `None` when the driver dropped the sender (the connection ended).
    pub(crate) fn poll_frame(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<BodyFrame>> {
        let polled = self.frames.poll_recv(cx);
        match &polled {
            std::task::Poll::Ready(Some(BodyFrame::Data(_))) => {
                // Room freed in the channel: ask the connection task to read more of the stream.
                let _ = self.wake.send(Wake::ReadMore { stream: self.stream });
            }
            std::task::Poll::Ready(Some(BodyFrame::End | BodyFrame::Reset(_) | BodyFrame::Malformed(_)) | None) => {
                self.ended = true;
            }
            _ => {}
        }
        polled
    }
}

impl Drop for InboundBody {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The reader gave up before the end. The driver may have stopped reading because our channel
        // was full, and quiche will not raise another event for that data; tell it what to do with the
        // rest (otherwise the stream would hold a stream slot forever).
        let wake = match self.on_early_drop {
            OnEarlyDrop::Discard => Wake::ReadMore { stream: self.stream },
            OnEarlyDrop::StopSending => Wake::StopReading { stream: self.stream },
        };
        let _ = self.wake.send(wake);
    }
}
