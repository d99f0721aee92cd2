//! A body fed from a bounded queue: the proxy's response (capsules towards the client) and the
//! client's request (capsules towards the proxy) on a CONNECT-UDP stream.
//!
//! The queue is bounded twice: in capsules ([`CAPSULE_QUEUE`]) and in bytes ([`CAPSULE_QUEUE_BYTES`]),
//! because a capsule can carry a 64 KiB UDP payload and a peer that reads slowly must not make us hold
//! hundreds of them per tunnel. What does not fit is refused at once (UDP semantics), never waited for.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use quiver_h3::datagram::{Capsule, CapsuleDecoder, CapsuleTooLarge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Capsules queued towards the peer per tunnel before more are dropped: about a bandwidth-delay
/// product of 1200-byte payloads on a fast LAN path.
pub(crate) const CAPSULE_QUEUE: usize = 256;
/// Bytes of capsules queued towards the peer per tunnel: four of the largest UDP payloads, or the
/// whole [`CAPSULE_QUEUE`] of 1200-byte ones. Behind it, quiver-h3 holds at most its own per-stream
/// send budget.
pub(crate) const CAPSULE_QUEUE_BYTES: usize = 4 * (crate::MAX_CAPSULE_BYTES + 8);

/// Sent through a [`ChannelBody`] to reset the stream instead of finishing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tunnel aborted: {0}")]
pub struct TunnelAborted(pub String);

/// One queued chunk and the share of the byte budget it holds until the body hands it on.
type Queued = Result<(Bytes, OwnedSemaphorePermit), TunnelAborted>;

/// Why [`CapsuleSender::try_send`] did not queue a capsule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueRefused {
    /// The queue is full (in capsules or bytes): the capsule was dropped.
    Full,
    /// The body is gone: the stream ended.
    Closed,
}

/// The sending side of a [`ChannelBody`]. Dropping every clone finishes the body (FIN).
#[derive(Debug, Clone)]
pub(crate) struct CapsuleSender {
    queue: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    /// A queue slot reserved for the reset, so a full queue cannot swallow it. Shared by the clones,
    /// so it goes (with its hold on the channel) when the last one does.
    abort_slot: Arc<std::sync::Mutex<Option<mpsc::OwnedPermit<Queued>>>>,
}

impl CapsuleSender {
    /// Queues `bytes` without waiting.
    pub(crate) fn try_send(&self, bytes: Bytes) -> Result<(), QueueRefused> {
        let length = u32::try_from(bytes.len()).map_err(|_| QueueRefused::Full)?;
        let permit = self.budget.clone().try_acquire_many_owned(length).map_err(|_| QueueRefused::Full)?;
        self.queue.try_send(Ok((bytes, permit))).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => QueueRefused::Full,
            mpsc::error::TrySendError::Closed(_) => QueueRefused::Closed,
        })
    }

    /// Resets the stream instead of finishing it, after what is queued. Never refused for lack of
    /// room: the slot was reserved when the body was made. Later calls do nothing.
    pub(crate) fn abort(&self, reason: String) {
        let slot = self.abort_slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(slot) = slot {
            slot.send(Err(TunnelAborted(reason)));
        }
    }

    /// Whether the body is gone (the stream was reset or the connection closed).
    pub(crate) fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }
}

/// The [`CapsuleDecoder`] of a tunnel's stream (both the proxy's and the client's), with MASQUE's
/// capsule size limit. The decoder itself knows whether the stream ended inside a capsule (RFC 9297
/// §3.3), from the bytes it holds: capsules with non-minimal varints (RFC 9000 §16) end cleanly too.
#[derive(Debug)]
pub(crate) struct CapsuleReader(CapsuleDecoder);

impl CapsuleReader {
    /// A reader refusing capsules over [`MAX_CAPSULE_BYTES`](crate::MAX_CAPSULE_BYTES).
    pub(crate) fn new() -> Self {
        Self(CapsuleDecoder::new(crate::MAX_CAPSULE_BYTES))
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.0.push(data);
    }

    /// As [`CapsuleDecoder::next_capsule`].
    pub(crate) fn next_capsule(&mut self) -> Result<Option<Capsule>, CapsuleTooLarge> {
        self.0.next_capsule()
    }

    /// Checks the end of the stream: `Err` (why, for the tunnel's end) when it cut a capsule short.
    pub(crate) fn finish(&self) -> Result<(), String> {
        self.0.finish().map_err(|truncated| truncated.to_string())
    }
}

/// Ends (FIN) when every sender is dropped; an abort resets the stream.
#[derive(Debug)]
pub struct ChannelBody {
    queue: Option<mpsc::Receiver<Queued>>,
}

impl ChannelBody {
    /// A body with nothing in it: the response to a refused request.
    pub(crate) fn empty() -> Self {
        Self { queue: None }
    }

    /// A body and its sender, bounded by [`CAPSULE_QUEUE`] and [`CAPSULE_QUEUE_BYTES`] (plus one slot
    /// kept for the reset).
    pub(crate) fn channel() -> (CapsuleSender, Self) {
        let (queue, receiver) = mpsc::channel(CAPSULE_QUEUE + 1);
        let abort_slot = queue.clone().try_reserve_owned().ok();
        let budget = Arc::new(Semaphore::new(CAPSULE_QUEUE_BYTES));
        let sender = CapsuleSender { queue, budget, abort_slot: Arc::new(std::sync::Mutex::new(abort_slot)) };
        (sender, Self { queue: Some(receiver) })
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = TunnelAborted;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, TunnelAborted>>> {
        let Some(queue) = self.queue.as_mut() else { return Poll::Ready(None) };
        match queue.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            // The permit is released here: from now on the bytes count against quiver-h3's budget.
            Poll::Ready(Some(Ok((bytes, _permit)))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(Err(aborted))) => {
                self.queue = None;
                Poll::Ready(Some(Err(aborted)))
            }
            Poll::Ready(None) => {
                self.queue = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.queue.is_none()
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_frees_what_the_body_hands_on() {
        let (sender, mut body) = ChannelBody::channel();
        let big = Bytes::from(vec![0u8; crate::MAX_CAPSULE_BYTES]);
        let mut queued = 0;
        while sender.try_send(big.clone()).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 4);
        assert_eq!(sender.try_send(big.clone()), Err(QueueRefused::Full));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), crate::MAX_CAPSULE_BYTES);
        assert_eq!(sender.try_send(big), Ok(()), "room again once a chunk was handed on");
        sender.abort("bad capsule".into());
        for _ in 0..4 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        assert_eq!(body.frame().await.unwrap().unwrap_err(), TunnelAborted("bad capsule".into()));
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn an_abort_gets_through_a_full_queue() {
        let (sender, mut body) = ChannelBody::channel();
        let mut queued = 0;
        while sender.try_send(Bytes::from_static(b"x")).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, CAPSULE_QUEUE);
        sender.abort("malformed".into());
        sender.abort("second".into()); // no effect
        for _ in 0..queued {
            assert!(body.frame().await.unwrap().is_ok());
        }
        assert_eq!(body.frame().await.unwrap().unwrap_err(), TunnelAborted("malformed".into()));
    }

    #[tokio::test]
    async fn dropping_a_clone_keeps_the_body_open_and_the_last_one_finishes_it() {
        let (sender, mut body) = ChannelBody::channel();
        drop(sender.clone());
        sender.try_send(Bytes::from_static(b"still")).unwrap();
        drop(sender);
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "still");
        assert!(body.frame().await.is_none(), "the reserved abort slot does not hold the body open");
    }

    #[test]
    fn a_stream_ending_inside_a_capsule_is_malformed() {
        let capsule = quiver_h3::datagram::encode_capsule(0, &[7u8; 300]);
        let mut reader = CapsuleReader::new();
        reader.push(&capsule[..100]);
        assert_eq!(reader.next_capsule(), Ok(None));
        assert!(reader.finish().is_err());
        reader.push(&capsule[100..]);
        assert_eq!(reader.next_capsule().unwrap().unwrap().value.len(), 300);
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn a_stream_of_non_minimal_varint_capsules_ends_cleanly() {
        // A DATAGRAM capsule whose type (8 bytes) and length (4 bytes) are not minimally encoded,
        // which RFC 9000 §16 allows; built by hand because our encoder (and quiche's) never sends it.
        let mut wire = vec![0xc0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0x05];
        wire.extend_from_slice(b"\0ping");
        let mut reader = CapsuleReader::new();
        reader.push(&wire);
        let capsule = reader.next_capsule().unwrap().expect("a whole capsule");
        assert_eq!((capsule.capsule_type, &capsule.value[..]), (0, &b"\0ping"[..]));
        assert_eq!(reader.next_capsule(), Ok(None));
        // What decides FIN (a clean end) or a reset (malformed) when the stream ends now.
        assert_eq!(reader.finish(), Ok(()));
    }

    #[tokio::test]
    async fn dropping_the_sender_finishes_the_body() {
        let (sender, mut body) = ChannelBody::channel();
        sender.try_send(Bytes::from_static(b"last")).unwrap();
        drop(sender);
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "last");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }
}
