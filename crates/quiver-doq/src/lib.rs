//! # quiver-doq
//!
//! DNS over QUIC (RFC 9250) on [`quiver`]: a forwarding server and a client.
//!
//! DoQ runs straight on QUIC streams (ALPN `doq`, no HTTP/3): each query takes one client-initiated
//! bidirectional stream and carries one DNS message with a 2-octet length prefix, then FIN; the
//! answer comes back the same way on the same stream. Both sides here are
//! [`ApplicationOverQuic`](quiver::ApplicationOverQuic) implementations; neither touches a socket of
//! the QUIC connection.
//!
//! * [`DoqServer`] forwards every query to an upstream resolver over UDP (TCP when the answer is
//!   truncated), restores message ID 0, answers SERVFAIL when the upstream is silent, pads answers
//!   for clients that pad (RFC 7830/8467), and enforces RFC 9250's protocol rules. Each connection
//!   and each client address gets a bounded share of the upstream slots, and the optional answer
//!   cache is bounded in bytes ([`DoqServerBuilder`]).
//! * [`DoqClient`] keeps one connection to a server and sends any number of queries over it in
//!   parallel, one stream each.
//!
//! ```no_run
//! use quiver_doq::{DoqClient, DoqServer, RecordType};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A forwarder on 127.0.0.1:8853 in front of the resolver at 127.0.0.1:53.
//! let config = quiver_doq::server_config().self_signed(["localhost"]).build()?;
//! let endpoint = quiver::Endpoint::server("127.0.0.1:8853".parse()?, config)?;
//! let server = DoqServer::builder("127.0.0.1:53".parse()?).build()?;
//! tokio::spawn(async move { server.serve(endpoint).await });
//!
//! // A client for it (development only: the self-signed certificate is not verified).
//! let config = quiver_doq::client_config().insecure_skip_verification().build()?;
//! let client = DoqClient::builder("127.0.0.1:8853".parse()?).build(config)?;
//! let answer = client.query("example.com.", RecordType::A).await?;
//! println!("{} answers", answer.answers.len());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod cache;
mod client;
mod dns;
mod error;
mod framing;
pub mod metrics;
mod server;
mod stats;
#[cfg(feature = "test-util")]
pub mod test_util;
mod upstream;

pub use crate::client::{DEFAULT_QUERY_TIMEOUT, DoqClient, DoqClientBuilder};
pub use crate::dns::{PADDING_BLOCK_BYTES, is_replay_safe};
pub use crate::error::{DoqConfigError, DoqError};
pub use crate::framing::MAX_MESSAGE_BYTES;
pub use crate::server::{
    DEFAULT_CACHE_BYTES, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_SOURCE, DEFAULT_MAX_STREAMS_PER_CONNECTION,
    DEFAULT_MAX_UPSTREAM_IN_FLIGHT, DEFAULT_MAX_UPSTREAM_PER_CONNECTION, DEFAULT_MAX_UPSTREAM_PER_SOURCE,
    DEFAULT_QUERY_READ_TIMEOUT, DEFAULT_UPSTREAM_TIMEOUT, DoqServer, DoqServerBuilder,
};
pub use crate::stats::ServerStats;
/// The DNS message library this crate speaks (`hickory-proto`), for building queries and reading
/// answers in full.
pub use hickory_proto as proto;
pub use hickory_proto::op::Message;
pub use hickory_proto::rr::{Name, RecordType};

/// Pure framing and message checks exposed for the fuzz targets (`fuzz/`). Not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::dns::{
        HEADER_BYTES, error_answer, format_error_for, has_tcp_keepalive, header_and_questions, message_id, pad,
        wants_padding,
    };
    pub use crate::framing::{FramingError, MessageReader};
}

/// The ALPN token that selects DoQ in the TLS handshake (RFC 9250 §4.1).
pub const ALPN: &[u8] = b"doq";

/// The port DoQ servers listen on unless agreed otherwise (RFC 9250 §4.1.1).
pub const DEFAULT_PORT: u16 = 853;

/// No error: closing a connection or stream that has done its work (RFC 9250 §4.3).
pub const DOQ_NO_ERROR: u64 = 0x0;
/// The implementation hit an internal error and cannot go on with the transaction or connection.
pub const DOQ_INTERNAL_ERROR: u64 = 0x1;
/// The peer broke the protocol: a non-zero message ID, a bad length prefix, a second message on a
/// stream, a unidirectional stream, edns-tcp-keepalive (RFC 9250 §4.3.3). Closes the connection.
pub const DOQ_PROTOCOL_ERROR: u64 = 0x2;
/// The client no longer wants the answer to an outstanding query (RFC 9250 §4.3.1).
pub const DOQ_REQUEST_CANCELLED: u64 = 0x3;
/// The server is closing the connection because it is overloaded. (This server refuses excess
/// connections per address in the QUIC handshake instead, with CONNECTION_REFUSED.)
pub const DOQ_EXCESSIVE_LOAD: u64 = 0x4;
/// A catch-all for errors without a more specific code.
pub const DOQ_UNSPECIFIED_ERROR: u64 = 0x5;

/// Flow-control window of one query stream on the server: the largest DoQ message with its length
/// prefix (2 + 65535 bytes). A stream carries exactly one message, so a client never needs more, and
/// quiche never buffers more than this for a stream the server has not read.
pub const STREAM_WINDOW_BYTES: u64 = 2 + MAX_MESSAGE_BYTES as u64;

/// Flow-control window of a whole connection on the server: bytes of queries a client may have in
/// flight, unread, at once. Queries are typically under 100 bytes, so 256 KiB is thousands of them,
/// and still four of the largest; it bounds what one slow or hostile client makes quiche buffer
/// (the per-stream window alone would allow 100 streams x 64 KiB).
pub const CONNECTION_WINDOW_BYTES: u64 = 256 * 1024;

/// A server configuration builder preset for DoQ: ALPN `doq`, at most
/// [`DEFAULT_MAX_STREAMS_PER_CONNECTION`] concurrent queries per connection, no unidirectional streams
/// (a client that opens one breaks the transport's stream limit), flow-control windows of
/// [`STREAM_WINDOW_BYTES`] per stream and [`CONNECTION_WINDOW_BYTES`] per connection (fixed: no
/// auto-tuning beyond them), a [`DEFAULT_IDLE_TIMEOUT`], and at most
/// [`DEFAULT_MAX_CONNECTIONS_PER_SOURCE`] connections per client address (the endpoint refuses more
/// with CONNECTION_REFUSED and counts them as `DropReason::SourceConnectionLimit`).
///
/// Add a certificate (`.identity(..)`, `.certificate_pem_files(..)` or `.self_signed(..)`) and build.
///
/// ```
/// let config = quiver_doq::server_config().self_signed(["localhost"]).build()?;
/// # Ok::<(), quiver::ConfigError>(())
/// ```
pub fn server_config() -> quiver::ServerConfigBuilder {
    quiver::ServerConfig::builder()
        .alpn([ALPN])
        .max_streams(DEFAULT_MAX_STREAMS_PER_CONNECTION as u64, 0)
        .idle_timeout(DEFAULT_IDLE_TIMEOUT)
        .max_connections_per_source(DEFAULT_MAX_CONNECTIONS_PER_SOURCE)
        .flow_control(CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES)
        .with_transport(|transport| {
            transport.max_connection_window = CONNECTION_WINDOW_BYTES;
            transport.max_stream_window = STREAM_WINDOW_BYTES;
        })
}

/// A client configuration builder preset for DoQ: ALPN `doq`, and no streams the server may open
/// (RFC 9250 §4.2: servers never open streams). Certificate verification is on.
///
/// ```
/// let config = quiver_doq::client_config().build()?;
/// # Ok::<(), quiver::ConfigError>(())
/// ```
pub fn client_config() -> quiver::ClientConfigBuilder {
    quiver::ClientConfig::builder().alpn([ALPN]).max_streams(0, 0).idle_timeout(DEFAULT_IDLE_TIMEOUT)
}

/// The name of a DoQ error code, for messages (`"DOQ_PROTOCOL_ERROR"`).
pub fn error_code_name(code: u64) -> &'static str {
    match code {
        DOQ_NO_ERROR => "DOQ_NO_ERROR",
        DOQ_INTERNAL_ERROR => "DOQ_INTERNAL_ERROR",
        DOQ_PROTOCOL_ERROR => "DOQ_PROTOCOL_ERROR",
        DOQ_REQUEST_CANCELLED => "DOQ_REQUEST_CANCELLED",
        DOQ_EXCESSIVE_LOAD => "DOQ_EXCESSIVE_LOAD",
        DOQ_UNSPECIFIED_ERROR => "DOQ_UNSPECIFIED_ERROR",
        _ => "unknown DoQ error",
    }
}

/// Whether a stream ID belongs to a client-initiated bidirectional stream, the only kind DoQ uses.
pub(crate) fn is_client_bidi(stream: u64) -> bool {
    stream.is_multiple_of(4)
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_config_bounds_flow_control() {
        let config = super::server_config().self_signed(["localhost"]).build().unwrap();
        let transport = config.transport();
        assert_eq!(transport.initial_max_data, super::CONNECTION_WINDOW_BYTES);
        assert_eq!(transport.initial_max_stream_data_bidi_remote, 65_537);
        assert_eq!(transport.max_stream_window, 65_537);
        assert_eq!(transport.max_connection_window, 256 * 1024);
    }
}
