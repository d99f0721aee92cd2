//! HTTP/3 errors and the RFC 9114 error codes we send.

/// H3_NO_ERROR (RFC 9114 §8.1).
pub const H3_NO_ERROR: u64 = 0x100;
/// H3_INTERNAL_ERROR.
pub const H3_INTERNAL_ERROR: u64 = 0x102;
/// H3_REQUEST_CANCELLED.
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// H3_REQUEST_REJECTED: the request was not processed; the client may retry it.
pub const H3_REQUEST_REJECTED: u64 = 0x10b;
/// H3_REQUEST_INCOMPLETE.
pub const H3_REQUEST_INCOMPLETE: u64 = 0x10d;
/// H3_MESSAGE_ERROR.
pub const H3_MESSAGE_ERROR: u64 = 0x10e;
/// H3_EXCESSIVE_LOAD.
pub const H3_EXCESSIVE_LOAD: u64 = 0x107;
/// H3_DATAGRAM_ERROR (RFC 9297 §2.1): an HTTP Datagram that cannot be parsed.
pub const H3_DATAGRAM_ERROR: u64 = 0x33;

/// Reading a [`RecvBody`](crate::RecvBody) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The peer reset the stream (RESET_STREAM) with this HTTP/3 error code.
    #[error("stream reset by peer with error code 0x{0:x}")]
    Reset(u64),
    /// The connection ended before the body was complete.
    #[error("connection closed before the body was complete")]
    Incomplete,
    /// The peer's message is malformed (RFC 9114 §4.1.2): its DATA disagrees with its
    /// `Content-Length`, or its trailers are invalid. We reset the stream with H3_MESSAGE_ERROR; the
    /// body is not to be used.
    #[error("malformed message: {0}")]
    Malformed(#[source] Malformed),
}

/// Why a message is malformed (RFC 9114 §4.1.2): a pseudo-header missing, repeated, out of place or
/// invalid, a missing authority, an uppercase or connection-specific field, an invalid name or value,
/// several different or invalid `Content-Length` values, or DATA whose length disagrees with
/// `Content-Length`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Malformed {
    reason: std::borrow::Cow<'static, str>,
}

impl Malformed {
    pub(crate) fn new(reason: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self { reason: reason.into() }
    }

    /// What was wrong, for people (logs, error messages).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// An HTTP/3 request failed (client side).
///
/// Callers decide with the queries rather than by matching every variant: [`is_timeout`](Self::is_timeout),
/// [`is_closed`](Self::is_closed), [`is_retryable`](Self::is_retryable),
/// [`is_application_close`](Self::is_application_close), [`reset_code`](Self::reset_code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URI has no host, or a scheme other than https.
    #[error("invalid request URI {0:?}: need https://host[:port]/path")]
    InvalidUri(String),
    /// The host name did not resolve to an address.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host that was looked up.
        host: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the client endpoint failed.
    #[error(transparent)]
    Endpoint(#[from] quiver::EndpointError),
    /// The QUIC connection could not be established.
    #[error(transparent)]
    Connect(#[from] quiver::ConnectError),
    /// The connection closed before the response arrived; the reason says who closed it and how
    /// (see [`is_application_close`](Self::is_application_close)).
    #[error("connection closed before the response: {0}")]
    ConnectionClosed(quiver::ConnectionError),
    /// The server reset the request stream with this HTTP/3 error code.
    #[error("request reset by the server with error code 0x{0:x}")]
    StreamReset(u64),
    /// The server's response was not valid HTTP/3 (missing or invalid `:status`, bad header, several
    /// different or invalid `Content-Length` values, a `Content-Length` above zero with no DATA, no
    /// head before the stream ended). The stream was reset with H3_MESSAGE_ERROR.
    #[error("malformed response: {0}")]
    MalformedResponse(#[source] Malformed),
    /// The request has neither an authority in its URI nor a `Host` header.
    #[error("the request has no authority (URI host or Host header)")]
    MissingAuthority,
    /// The request could not be built.
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] http::Error),
    /// An extended CONNECT request (RFC 9220, `:protocol`) to a server that has not enabled it
    /// (SETTINGS_ENABLE_CONNECT_PROTOCOL). Nothing was sent.
    #[error("the server does not support extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)")]
    ExtendedConnectUnsupported,
    /// The request's header section is larger than the server accepts (its
    /// SETTINGS_MAX_FIELD_SECTION_SIZE), or larger than quiche can ever send in one piece.
    #[error("request header section of {size} bytes exceeds the limit of {limit} bytes")]
    HeaderTooLarge {
        /// Size as RFC 9114 §4.2.2 counts it (name + value + 32 per field).
        size: u64,
        /// The limit that applies.
        limit: u64,
    },
    /// No response within the configured timeout.
    #[error("request timed out after {0:?}")]
    TimedOut(std::time::Duration),
    /// The server is going away (GOAWAY) and did not take this request; it is safe to retry elsewhere.
    #[error("server is shutting down and refused the request")]
    GoingAway,
    /// The HTTP/3 layer refused to open the request stream, with this RFC 9114 §8.1 error code (for
    /// example H3_FRAME_UNEXPECTED when the connection is no longer usable for requests).
    #[error("HTTP/3 error 0x{code:x} while opening the request")]
    Http3 {
        /// The HTTP/3 error code.
        code: u64,
    },
}

impl Error {
    /// Whether the request failed because something took too long: the client's timeout, the
    /// connection's idle timeout, or the handshake's.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::TimedOut(_) | Self::Connect(quiver::ConnectError::TimedOut(_)) => true,
            Self::ConnectionClosed(reason) | Self::Connect(quiver::ConnectError::HandshakeFailed(reason)) => {
                matches!(reason, quiver::ConnectionError::IdleTimeout | quiver::ConnectionError::HandshakeTimeout(_))
            }
            _ => false,
        }
    }

    /// Whether the connection is gone (closed by either side, reset, or its endpoint shut down), or
    /// going away (GOAWAY): the request did not get a response on it.
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            Self::ConnectionClosed(_) | Self::GoingAway | Self::Connect(quiver::ConnectError::EndpointClosed)
        )
    }

    /// Whether the server did not process the request, so sending it again (on a new connection) is
    /// safe even if it is not idempotent: GOAWAY refused it, or the server reset it with
    /// H3_REQUEST_REJECTED (RFC 9114 §4.1.1).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::GoingAway | Self::StreamReset(H3_REQUEST_REJECTED))
    }

    /// Whether the connection ended with an application close (CONNECTION_CLOSE of type 0x1d, an
    /// HTTP/3 error code such as H3_NO_ERROR), by either side.
    pub fn is_application_close(&self) -> bool {
        self.close_reason().is_some_and(|reason| reason.is_application)
    }

    /// Whether the connection ended with a transport close (CONNECTION_CLOSE of type 0x1c, a QUIC
    /// transport error code, including TLS alerts), by either side.
    pub fn is_transport_close(&self) -> bool {
        self.close_reason().is_some_and(|reason| !reason.is_application)
    }

    /// The CONNECTION_CLOSE that ended the connection, if one did.
    pub fn close_reason(&self) -> Option<&quiver::CloseReason> {
        let reason = match self {
            Self::ConnectionClosed(reason) | Self::Connect(quiver::ConnectError::HandshakeFailed(reason)) => reason,
            _ => return None,
        };
        match reason {
            quiver::ConnectionError::PeerClosed(close) | quiver::ConnectionError::LocallyClosed(close) => Some(close),
            _ => None,
        }
    }

    /// The HTTP/3 error code the server reset the request stream with, if it did.
    pub fn reset_code(&self) -> Option<u64> {
        match self {
            Self::StreamReset(code) => Some(*code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(is_application: bool) -> Error {
        let reason = quiver::CloseReason { is_application, code: 0x100, reason: String::new() };
        Error::ConnectionClosed(quiver::ConnectionError::PeerClosed(reason))
    }

    #[test]
    fn queries_tell_failures_apart() {
        assert!(Error::GoingAway.is_retryable() && Error::GoingAway.is_closed());
        assert!(Error::StreamReset(H3_REQUEST_REJECTED).is_retryable());
        assert!(!Error::StreamReset(H3_REQUEST_CANCELLED).is_retryable());
        assert_eq!(Error::StreamReset(H3_REQUEST_CANCELLED).reset_code(), Some(H3_REQUEST_CANCELLED));
        assert!(Error::TimedOut(std::time::Duration::from_secs(1)).is_timeout());
        assert!(Error::ConnectionClosed(quiver::ConnectionError::IdleTimeout).is_timeout());
        assert!(!Error::GoingAway.is_timeout());
        assert!(closed(true).is_application_close() && !closed(true).is_transport_close());
        assert!(closed(false).is_transport_close() && !closed(false).is_application_close());
        assert!(closed(true).is_closed() && !closed(true).is_retryable());
        assert!(Error::MissingAuthority.close_reason().is_none());
    }
}
