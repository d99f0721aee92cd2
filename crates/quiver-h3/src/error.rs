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
}

/// An HTTP/3 request failed (client side).
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
    /// The connection closed before the response arrived.
    #[error("connection closed before the response: {0}")]
    ConnectionClosed(quiver::ConnectionError),
    /// The server reset the request stream with this HTTP/3 error code.
    #[error("request reset by the server with error code 0x{0:x}")]
    StreamReset(u64),
    /// The server's response was not valid HTTP/3 (missing or invalid `:status`, bad header).
    #[error("malformed response: {0}")]
    MalformedResponse(String),
    /// The request headers could not be encoded (for example a header value that is not valid).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
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
    /// Reading the request body to send failed.
    #[error("request body failed: {0}")]
    RequestBody(String),
    /// The server is going away (GOAWAY) and did not take this request; it is safe to retry elsewhere.
    #[error("server is shutting down and refused the request")]
    GoingAway,
    /// quiche reported an HTTP/3 error.
    #[error("HTTP/3 error: {0}")]
    Http3(String),
}
