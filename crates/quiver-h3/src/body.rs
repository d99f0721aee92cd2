//! [`RecvBody`]: a request or response body arriving from the peer, as an `http_body::Body`.
//!
//! The connection task feeds it through a small bounded channel and stops reading the QUIC stream while
//! the channel is full, so a slow reader holds back the peer through QUIC flow control.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use tokio::sync::mpsc;

use crate::driver::{Wake, WakeSender};
use crate::error::BodyError;

/// Body chunks buffered between the connection task and the reader. Each chunk is at most one read
/// (16 KiB), so this bounds the buffer at 128 KiB per stream; the rest waits in quiche's flow-controlled
/// stream buffer.
pub(crate) const BODY_CHANNEL_CHUNKS: usize = 8;

#[derive(Debug)]
pub(crate) enum BodyFrame {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    Reset(u64),
}

/// A body received from the peer. Read it with `http_body_util::BodyExt` (`collect`, `frame`).
///
/// Ends with `None` after the last frame; a peer reset or a dropped connection ends with
/// [`BodyError`] instead, so a truncated body is never mistaken for a complete one.
#[derive(Debug)]
pub struct RecvBody {
    frames: Option<mpsc::Receiver<BodyFrame>>,
    credit: Option<(u64, WakeSender)>,
}

impl RecvBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Self { frames: None, credit: None }
    }

    pub(crate) fn channel(stream: u64, wake: WakeSender) -> (mpsc::Sender<BodyFrame>, Self) {
        let (tx, rx) = mpsc::channel(BODY_CHANNEL_CHUNKS);
        (tx, Self { frames: Some(rx), credit: Some((stream, wake)) })
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        // Dropped before the end: the connection task may have stopped reading because our channel
        // was full, and quiche will not raise another event for that data. Wake it so it discards the
        // rest and the stream can finish (otherwise the stream would hold a stream slot forever).
        if self.frames.is_some()
            && let Some((stream, wake)) = &self.credit
        {
            let _ = wake.send(Wake::ReadMore { stream: *stream });
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(frames) = self.frames.as_mut() else { return Poll::Ready(None) };
        let frame = match frames.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        match frame {
            Some(BodyFrame::Data(data)) => {
                // Room freed in the channel: ask the connection task to read more of the stream.
                if let Some((stream, wake)) = &self.credit {
                    let _ = wake.send(Wake::ReadMore { stream: *stream });
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(BodyFrame::Trailers(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Some(BodyFrame::End) => {
                self.frames = None;
                Poll::Ready(None)
            }
            Some(BodyFrame::Reset(code)) => {
                self.frames = None;
                Poll::Ready(Some(Err(BodyError::Reset(code))))
            }
            None => {
                self.frames = None;
                Poll::Ready(Some(Err(BodyError::Incomplete)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_none()
    }
}
