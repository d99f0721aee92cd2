//! [`RecvBody`]: a request or response body arriving from the peer, as an `http_body::Body`.
//!
//! The connection task feeds it through a small bounded channel and stops reading the QUIC stream while
//! the channel is full, so a slow reader holds back the peer through QUIC flow control.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use crate::command::{BodyFrame, InboundBody};
use crate::error::BodyError;

/// A body received from the peer. Read it with `http_body_util::BodyExt` (`collect`, `frame`).
///
/// Ends with `None` after the last frame; a peer reset, a dropped connection, or a message whose DATA
/// disagrees with its `Content-Length` (more than it declared, or a stream that ends short of it) ends
/// with [`BodyError`] instead, so a truncated or overlong body is never mistaken for a complete one.
/// The bytes handed out before such an error never exceed the declared length.
///
/// Dropping a response body (client side) before its end cancels the rest on the wire: the stream's
/// receiving side is stopped with STOP_SENDING (H3_REQUEST_CANCELLED). Dropping a request body (server
/// side) discards the rest, so the response can still be sent.
#[derive(Debug)]
pub struct RecvBody {
    inbound: Option<InboundBody>,
}

impl RecvBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Self { inbound: None }
    }

    pub(crate) fn new(inbound: Option<InboundBody>) -> Self {
        Self { inbound }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inbound) = self.inbound.as_mut() else { return Poll::Ready(None) };
        let frame = match inbound.poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        match frame {
            Some(BodyFrame::Data(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(BodyFrame::Trailers(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Some(BodyFrame::End) => {
                self.inbound = None;
                Poll::Ready(None)
            }
            Some(BodyFrame::Reset(code)) => {
                self.inbound = None;
                Poll::Ready(Some(Err(BodyError::Reset(code))))
            }
            Some(BodyFrame::Malformed(reason)) => {
                self.inbound = None;
                Poll::Ready(Some(Err(BodyError::Malformed(reason))))
            }
            None => {
                self.inbound = None;
                Poll::Ready(Some(Err(BodyError::Incomplete)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inbound.is_none()
    }
}
