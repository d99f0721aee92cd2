//! Errors at the crate's API boundary.

use std::net::SocketAddr;
use std::time::Duration;

/// A DoQ client operation failed. Callers can tell a timeout from a refused connection from a
/// server that broke the protocol without parsing messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoqError {
    /// The QUIC client endpoint could not be created.
    #[error(transparent)]
    Endpoint(#[from] quiver::EndpointError),
    /// The QUIC connection to the server could not be established (timeout, TLS, ALPN).
    #[error("cannot connect to DoQ server {server}: {source}")]
    Connect {
        /// The server's address.
        server: SocketAddr,
        /// Why the handshake failed.
        #[source]
        source: quiver::ConnectError,
    },
    /// The connection closed before the answer came; `reason` says who closed it and with which code
    /// (a server closes with DOQ_PROTOCOL_ERROR when a query breaks RFC 9250).
    #[error("DoQ connection closed: {reason}")]
    ConnectionClosed {
        /// Why the connection ended.
        reason: quiver::ConnectionError,
    },
    /// The server reset the query's stream instead of answering.
    #[error("the server reset the query's stream with {} (0x{code:x})", crate::error_code_name(*code))]
    StreamReset {
        /// The application error code of the reset.
        code: u64,
    },
    /// No answer within the query timeout, which counts connecting and waiting for a stream too; a
    /// query already on a stream has been cancelled (DOQ_REQUEST_CANCELLED).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The name is not a valid domain name.
    #[error("invalid domain name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The query could not be encoded, or is larger than a DNS message can be.
    #[error("cannot send the query: {0}")]
    InvalidQuery(String),
    /// The server's answer broke RFC 9250 or is not DNS (the connection is closed with
    /// DOQ_PROTOCOL_ERROR when the framing or message ID is wrong).
    #[error("malformed answer from the server: {0}")]
    MalformedAnswer(String),
    /// The client was closed.
    #[error("the DoQ client is closed")]
    Closed,
}

impl DoqError {
    /// The DoQ error code the peer closed the connection or reset the stream with, if that is what
    /// happened.
    pub fn peer_error_code(&self) -> Option<u64> {
        let reason = match self {
            Self::StreamReset { code } => return Some(*code),
            Self::ConnectionClosed { reason } => reason,
            // A server that refuses at once (DOQ_EXCESSIVE_LOAD) may close before the handshake is
            // reported complete.
            Self::Connect { source: quiver::ConnectError::HandshakeFailed(reason), .. } => reason,
            _ => return None,
        };
        match reason {
            quiver::ConnectionError::PeerClosed(close) if close.is_application => Some(close.code),
            _ => None,
        }
    }
}

/// A [`DoqServerBuilder`](crate::DoqServerBuilder) setting that would leave the server unable to
/// answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DoqConfigError {
    /// A limit or timeout is zero; the field names the builder method.
    #[error("DoQ server setting `{0}` must be greater than zero")]
    Zero(&'static str),
}
