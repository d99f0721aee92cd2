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
    /// Whether no answer came in time: the query timeout, or a connection that timed out while
    /// connecting or waiting.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Connect { source, .. } => source.is_timeout(),
            Self::ConnectionClosed { reason } => reason.is_timeout(),
            _ => false,
        }
    }

    /// Whether the query ended because a side closed: the connection (either side, see
    /// [`peer_error_code`](Self::peer_error_code)), or this client.
    pub fn is_closed(&self) -> bool {
        match self {
            Self::Closed => true,
            Self::Connect { source, .. } => source.is_closed(),
            Self::ConnectionClosed { reason } => reason.is_closed(),
            _ => false,
        }
    }

    /// Whether asking again may well succeed: a timeout, a server that was busy
    /// (CONNECTION_REFUSED, DOQ_EXCESSIVE_LOAD), or a connection closed under the query by the
    /// server's shutdown (DOQ_NO_ERROR) or a restart. Malformed queries, names and answers are not.
    pub fn is_retryable(&self) -> bool {
        if matches!(self.peer_error_code(), Some(crate::DOQ_EXCESSIVE_LOAD | crate::DOQ_NO_ERROR)) {
            return true;
        }
        match self {
            Self::Timeout(_) => true,
            Self::Connect { source, .. } => source.is_retryable(),
            Self::ConnectionClosed { reason } => reason.is_retryable(),
            _ => false,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_closed(is_application: bool, code: u64) -> quiver::ConnectionError {
        quiver::ConnectionError::PeerClosed(quiver::CloseReason { is_application, code, reason: String::new() })
    }

    #[test]
    fn queries_tell_timeouts_closes_and_retries_apart() {
        let timeout = DoqError::Timeout(Duration::from_secs(1));
        assert!(timeout.is_timeout() && timeout.is_retryable() && !timeout.is_closed());

        let draining = DoqError::ConnectionClosed { reason: peer_closed(true, crate::DOQ_NO_ERROR) };
        assert!(draining.is_closed() && draining.is_retryable() && !draining.is_timeout());

        let protocol = DoqError::ConnectionClosed { reason: peer_closed(true, crate::DOQ_PROTOCOL_ERROR) };
        assert!(protocol.is_closed() && !protocol.is_retryable());

        let idle = DoqError::ConnectionClosed { reason: quiver::ConnectionError::IdleTimeout };
        assert!(idle.is_timeout());

        let busy = DoqError::StreamReset { code: crate::DOQ_EXCESSIVE_LOAD };
        assert!(busy.is_retryable() && !busy.is_closed());

        let bad = DoqError::InvalidQuery("too large".into());
        assert!(!bad.is_timeout() && !bad.is_closed() && !bad.is_retryable());
        assert!(DoqError::Closed.is_closed());
    }
}
