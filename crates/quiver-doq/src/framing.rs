//! One DNS message per stream direction, with a 2-octet length prefix (RFC 9250 §4.2): reading it
//! from a quiche stream and writing it back under flow control. Both the server and the client use
//! these; nothing here knows what the message means.

use quiver::QuicConnection;
use quiver::quiche;

/// Largest DNS message: the 2-octet length prefix caps it (RFC 9250 §4.2), as for DNS over TCP.
pub const MAX_MESSAGE_BYTES: usize = u16::MAX as usize;

/// `message` with its 2-octet length prefix, as DoQ (RFC 9250 §4.2) and DNS over TCP (RFC 1035
/// §4.2.2) frame it; `None` when it is longer than [`MAX_MESSAGE_BYTES`].
pub(crate) fn length_prefixed(message: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

/// Bytes read from a stream per `stream_recv` call.
pub(crate) const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How a stream broke the one-message-then-FIN rule; each is a DOQ_PROTOCOL_ERROR (RFC 9250 §4.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// More bytes than the length prefix announced: a second message on one stream.
    #[error("more than one DNS message on a stream")]
    TrailingData,
    /// FIN came before the whole message did.
    #[error("stream ended inside a DNS message")]
    Truncated,
}

/// Collects the one length-prefixed message a stream carries. Holds at most
/// 2 + [`MAX_MESSAGE_BYTES`] bytes: anything beyond the announced length is an error, not buffered.
#[derive(Debug, Default)]
pub struct MessageReader {
    buffer: Vec<u8>,
}

impl MessageReader {
    /// Adds what the stream delivered. Returns the message (without its prefix) once it is complete
    /// and the stream has ended.
    pub fn push(&mut self, data: &[u8], fin: bool) -> Result<Option<Vec<u8>>, FramingError> {
        let expected = self.expected_len();
        let room = expected.map_or(2 + MAX_MESSAGE_BYTES, |len| 2 + len).saturating_sub(self.buffer.len());
        if data.len() > room {
            return Err(FramingError::TrailingData);
        }
        self.buffer.extend_from_slice(data);
        // The announced length may only now be known: check again.
        if let Some(len) = self.expected_len()
            && self.buffer.len() > 2 + len
        {
            return Err(FramingError::TrailingData);
        }
        if !fin {
            return Ok(None);
        }
        match self.expected_len() {
            Some(len) if self.buffer.len() == 2 + len => Ok(Some(self.buffer.split_off(2))),
            _ => Err(FramingError::Truncated),
        }
    }

    fn expected_len(&self) -> Option<usize> {
        match self.buffer.as_slice() {
            [high, low, ..] => Some(usize::from(u16::from_be_bytes([*high, *low]))),
            _ => None,
        }
    }
}

/// What reading a stream produced.
#[derive(Debug)]
pub(crate) enum StreamRead {
    /// The message is not complete yet; the stream has nothing more to read for now.
    Pending,
    /// The whole message, and the stream's FIN.
    Message(Vec<u8>),
    /// The peer reset the stream with this application error code.
    Reset(u64),
    /// The stream is gone (already collected, or quiche refused it).
    Gone,
}

/// Reads what `stream` has into `reader`, through `scratch`.
///
/// # Errors
/// A [`FramingError`] when the stream breaks the one-message rule.
pub(crate) fn read_message(
    conn: &mut QuicConnection,
    stream: u64,
    reader: &mut MessageReader,
    scratch: &mut [u8],
) -> Result<StreamRead, FramingError> {
    loop {
        match conn.stream_recv(stream, scratch) {
            Ok((read, fin)) => {
                if let Some(message) = reader.push(&scratch[..read], fin)? {
                    return Ok(StreamRead::Message(message));
                }
                if fin {
                    return Ok(StreamRead::Pending);
                }
            }
            Err(quiche::Error::Done) => return Ok(StreamRead::Pending),
            Err(quiche::Error::StreamReset(code)) => return Ok(StreamRead::Reset(code)),
            Err(_) => return Ok(StreamRead::Gone),
        }
    }
}

/// A framed message being written to one stream, with FIN after it.
#[derive(Debug)]
pub(crate) struct Outbound {
    framed: Vec<u8>,
    written: usize,
}

/// Why a message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteFailure {
    /// The peer sent STOP_SENDING with this code (for DoQ: it cancelled the query).
    Stopped(u64),
    /// The stream is gone or quiche refused the write.
    Gone,
}

impl Outbound {
    /// Frames `message`; `None` when it is longer than [`MAX_MESSAGE_BYTES`].
    pub(crate) fn new(message: &[u8]) -> Option<Self> {
        Some(Self { framed: length_prefixed(message)?, written: 0 })
    }

    /// Writes as much as flow control allows. `Ok(true)` once everything and the FIN are queued.
    pub(crate) fn write(&mut self, conn: &mut QuicConnection, stream: u64) -> Result<bool, WriteFailure> {
        match conn.stream_send(stream, &self.framed[self.written..], true) {
            Ok(written) => {
                self.written += written;
                Ok(self.written == self.framed.len())
            }
            Err(quiche::Error::Done) => Ok(false),
            Err(quiche::Error::StreamStopped(code)) => Err(WriteFailure::Stopped(code)),
            Err(_) => Err(WriteFailure::Gone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        length_prefixed(message).unwrap()
    }

    #[test]
    fn message_in_pieces_completes_only_at_fin() {
        let bytes = framed(b"hello dns");
        let mut reader = MessageReader::default();
        assert_eq!(reader.push(&bytes[..1], false), Ok(None));
        assert_eq!(reader.push(&bytes[1..5], false), Ok(None));
        assert_eq!(reader.push(&bytes[5..], false), Ok(None), "waits for FIN");
        assert_eq!(reader.push(&[], true), Ok(Some(b"hello dns".to_vec())));
    }

    #[test]
    fn whole_message_with_fin_at_once() {
        let mut reader = MessageReader::default();
        assert_eq!(reader.push(&framed(b"abc"), true), Ok(Some(b"abc".to_vec())));
    }

    #[test]
    fn second_message_is_trailing_data() {
        let mut bytes = framed(b"one");
        bytes.extend_from_slice(&framed(b"two"));
        assert_eq!(MessageReader::default().push(&bytes, false), Err(FramingError::TrailingData));
        // Also when the extra byte arrives separately.
        let mut reader = MessageReader::default();
        assert_eq!(reader.push(&framed(b"one"), false), Ok(None));
        assert_eq!(reader.push(b"x", true), Err(FramingError::TrailingData));
    }

    #[test]
    fn fin_inside_the_message_or_prefix_is_truncated() {
        let bytes = framed(b"hello");
        assert_eq!(MessageReader::default().push(&bytes[..4], true), Err(FramingError::Truncated));
        assert_eq!(MessageReader::default().push(&bytes[..1], true), Err(FramingError::Truncated));
        assert_eq!(MessageReader::default().push(&[], true), Err(FramingError::Truncated));
    }

    #[test]
    fn buffer_never_exceeds_the_largest_message() {
        let mut reader = MessageReader::default();
        let chunk = vec![0xff; 40_000];
        assert_eq!(reader.push(&chunk, false), Ok(None));
        assert_eq!(reader.push(&chunk, false), Err(FramingError::TrailingData));
        assert!(reader.buffer.len() <= 2 + MAX_MESSAGE_BYTES);
    }

    #[test]
    fn outbound_refuses_oversized_messages() {
        assert!(Outbound::new(&vec![0; MAX_MESSAGE_BYTES]).is_some());
        assert!(Outbound::new(&vec![0; MAX_MESSAGE_BYTES + 1]).is_none());
    }
}
