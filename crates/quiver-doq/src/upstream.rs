//! The resolver the server forwards to: one query over UDP, again over TCP when the UDP answer is
//! truncated (RFC 1035 §4.2, RFC 7766).
//!
//! Each query gets its own connected UDP socket on an ephemeral port and a fresh random message ID.
//! A shared socket would need an ID table and would let one client's queries share a 16-bit ID space
//! with everyone else's; a socket per query gives every query a random port *and* ID (the usual
//! defence against spoofed answers, RFC 5452), keeps no state once the query is done, and makes the
//! kernel drop datagrams from anyone but the upstream. The cost, a socket per in-flight query, is
//! bounded by the server's in-flight limit.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::dns::{header_and_questions, message_id, set_message_id};
use crate::framing::{MAX_MESSAGE_BYTES, length_prefixed};

/// Largest query sent over UDP. Larger ones go straight to TCP: a UDP datagram cannot carry a full
/// 65535-byte DNS message, and fragments are the classic spoofing vector (RFC 8900).
const MAX_UDP_QUERY_BYTES: usize = 4096;

/// Why the upstream gave no usable answer. The server turns each into SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// Sending or receiving failed (connection refused, unreachable, reset).
    #[error("upstream {addr}: {source}")]
    Io {
        /// The upstream resolver.
        addr: SocketAddr,
        /// What the socket said.
        #[source]
        source: io::Error,
    },
    /// Over TCP the answer did not match the query.
    #[error("upstream {0} answered over TCP with a message that does not match the query")]
    Mismatch(SocketAddr),
}

/// What an exchange produced.
pub(crate) struct UpstreamAnswer {
    /// The answer, with message ID 0.
    pub(crate) message: Vec<u8>,
    /// Whether the UDP answer was truncated and this one came over TCP.
    pub(crate) via_tcp: bool,
}

/// Forwards `query` (ID 0, as it came over DoQ) to `addr` and returns the answer with ID 0 again.
/// Datagrams that do not answer it are counted in `ignored_datagrams` as they arrive (so the count
/// survives the caller's timeout). Has no timeout of its own: the caller bounds it.
pub(crate) async fn exchange(
    addr: SocketAddr,
    query: &[u8],
    ignored_datagrams: &AtomicU64,
) -> Result<UpstreamAnswer, UpstreamError> {
    let io_error = |source| UpstreamError::Io { addr, source };
    let id = random_nonzero_id();
    let mut query = query.to_vec();
    set_message_id(&mut query, id);
    if query.len() <= MAX_UDP_QUERY_BYTES {
        let local: SocketAddr =
            if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = UdpSocket::bind(local).await.map_err(io_error)?;
        socket.connect(addr).await.map_err(io_error)?;
        socket.send(&query).await.map_err(io_error)?;
        let mut buffer = vec![0u8; MAX_MESSAGE_BYTES];
        loop {
            let len = socket.recv(&mut buffer).await.map_err(io_error)?;
            let answer = &buffer[..len];
            if !answers(&query, answer) {
                // Late answers to nothing, or spoofing attempts: keep waiting for the real one.
                ignored_datagrams.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !is_truncated(answer) {
                let mut message = answer.to_vec();
                set_message_id(&mut message, 0);
                return Ok(UpstreamAnswer { message, via_tcp: false });
            }
            break;
        }
    }
    let message = exchange_tcp(addr, &query).await.map_err(io_error)?;
    if !answers(&query, &message) {
        return Err(UpstreamError::Mismatch(addr));
    }
    let mut message = message;
    set_message_id(&mut message, 0);
    Ok(UpstreamAnswer { message, via_tcp: true })
}

/// One query over TCP with 2-octet length framing (RFC 1035 §4.2.2).
async fn exchange_tcp(addr: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let framed = length_prefixed(query).ok_or_else(|| io::Error::other("query longer than 65535 bytes"))?;
    stream.write_all(&framed).await?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// Whether `answer` is a response to `query`: same ID, QR set, same question (names compared
/// case-insensitively).
fn answers(query: &[u8], answer: &[u8]) -> bool {
    let (Some((_, asked)), Some((header, answered))) = (header_and_questions(query), header_and_questions(answer))
    else {
        return false;
    };
    message_id(answer) == message_id(query)
        && header.metadata.message_type == hickory_proto::op::MessageType::Response
        && asked == answered
}

fn is_truncated(answer: &[u8]) -> bool {
    answer.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

/// A random message ID other than 0 (0 is what every DoQ query carries, RFC 9250 §4.2.1).
fn random_nonzero_id() -> u16 {
    loop {
        let id: u16 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query_bytes(name: &str) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        message.to_vec().unwrap()
    }

    #[test]
    fn answers_require_id_qr_and_question() {
        let query = query_bytes("example.com.");
        let mut response = Message::from_vec(&query).unwrap();
        response.metadata.message_type = MessageType::Response;
        let response_bytes = response.to_vec().unwrap();
        assert!(answers(&query, &response_bytes));
        assert!(!answers(&query, &query), "a query is no answer");
        let mut other_id = response_bytes.clone();
        set_message_id(&mut other_id, 0x4321);
        assert!(!answers(&query, &other_id));
        let mut other_name = Message::from_vec(&query_bytes("example.org.")).unwrap();
        other_name.metadata.message_type = MessageType::Response;
        assert!(!answers(&query, &other_name.to_vec().unwrap()));
        // Case differences in the name do not matter (resolvers may echo 0x20-mixed case).
        let mut upper = Message::from_vec(&query_bytes("EXAMPLE.com.")).unwrap();
        upper.metadata.message_type = MessageType::Response;
        assert!(answers(&query, &upper.to_vec().unwrap()));
        assert!(!answers(&query, b"\x12\x34"));
    }

    #[test]
    fn ids_are_never_zero() {
        assert!((0..10_000).all(|_| random_nonzero_id() != 0));
    }

    #[test]
    fn truncation_bit() {
        let mut bytes = query_bytes("example.com.");
        assert!(!is_truncated(&bytes));
        bytes[2] |= 0x02;
        assert!(is_truncated(&bytes));
        assert!(!is_truncated(b"\x00"));
    }
}
