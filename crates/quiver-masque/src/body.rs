//! A body fed from a bounded channel: the proxy's response (capsules towards the client) and the
//! client's request (capsules towards the proxy) on a CONNECT-UDP stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;

/// Sent through a [`ChannelBody`] to reset the stream instead of finishing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tunnel aborted: {0}")]
pub struct TunnelAborted(pub String);

pub(crate) type BodySender = mpsc::Sender<Result<Bytes, TunnelAborted>>;

/// Ends (FIN) when every sender is dropped; an `Err` item resets the stream.
#[derive(Debug)]
pub struct ChannelBody {
    frames: Option<mpsc::Receiver<Result<Bytes, TunnelAborted>>>,
}

impl ChannelBody {
    /// A body with nothing in it: the response to a refused request.
    pub(crate) fn empty() -> Self {
        Self { frames: None }
    }

    /// A body and its sender, holding at most `capacity` chunks.
    pub(crate) fn channel(capacity: usize) -> (BodySender, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self { frames: Some(rx) })
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = TunnelAborted;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, TunnelAborted>>> {
        let Some(frames) = self.frames.as_mut() else { return Poll::Ready(None) };
        match frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(Err(aborted))) => {
                self.frames = None;
                Poll::Ready(Some(Err(aborted)))
            }
            Poll::Ready(None) => {
                self.frames = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_none()
    }
}
