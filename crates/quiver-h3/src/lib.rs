//! # quiver-h3
//!
//! HTTP/3 on [`quiver`]: a server for any `tower::Service<http::Request<RecvBody>>` and a client that
//! sends `http::Request`s, both with streaming bodies and trailers, built on `quiche::h3`.
//!
//! Each connection runs an [`H3Driver`] (an `ApplicationOverQuic`). Handlers and callers live in their
//! own tasks and exchange body chunks with the driver through bounded channels, so a slow handler or a
//! slow reader slows the peer down through QUIC flow control instead of growing buffers.
//!
//! ## Malformed messages
//! Both roles hold the peer to RFC 9114 §4: a request or response whose head breaks the rules
//! (pseudo-headers, connection-specific fields, an `http`/`https` request without `:authority` or
//! `Host`, an extended CONNECT without `:authority`, several different or invalid `Content-Length`
//! values) is reset with [`H3_MESSAGE_ERROR`] before a handler runs, or fails the request with
//! [`Error::MalformedResponse`]. A body whose DATA exceeds or falls short of its `Content-Length`
//! is reset the same way once that shows, and its [`RecvBody`] ends with [`BodyError::Malformed`]
//! instead of a clean end, never having handed out a byte past the declared length: a front end
//! built on this crate cannot be made to relay a body of another length than its head says.
//!
//! ## Server
//! ```no_run
//! use http::{Request, Response};
//! use quiver_h3::{RecvBody, Server};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = quiver_h3::server_config().self_signed(["localhost"]).build()?;
//! let endpoint = quiver::Endpoint::server("127.0.0.1:4433".parse()?, config)?;
//! let service = tower::service_fn(|request: Request<RecvBody>| async move {
//!     let reply = format!("you asked for {}\n", request.uri().path());
//!     Ok::<_, std::convert::Infallible>(Response::new(reply))
//! });
//! Server::new(service).serve(endpoint).await;
//! # Ok(()) }
//! ```
//!
//! ## Client
//! ```no_run
//! use http_body_util::BodyExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = quiver_h3::Client::new(quiver_h3::client_config().insecure_skip_verification().build()?);
//! let request = http::Request::get("https://localhost:4433/hello").body(String::new())?;
//! let response = client.send_request(request).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod body;
mod client;
mod command;
pub mod datagram;
mod driver;
mod error;
mod headers;
pub mod metrics;
mod server;
#[cfg(test)]
mod test_pipe;

pub use crate::body::RecvBody;
pub use crate::client::{Client, H3Connection};
pub use crate::datagram::{DatagramError, DatagramFlow};
pub use crate::driver::{EarlyData, H3Driver, H3Settings, PeerAddr};
pub use crate::error::{
    BodyError, Error, H3_DATAGRAM_ERROR, H3_EXCESSIVE_LOAD, H3_INTERNAL_ERROR, H3_MESSAGE_ERROR, H3_NO_ERROR,
    H3_REQUEST_CANCELLED, H3_REQUEST_INCOMPLETE, H3_REQUEST_REJECTED, Malformed,
};
pub use crate::headers::Protocol;
pub use crate::server::Server;

/// Pure parsing functions exposed for the fuzz targets (`fuzz/`). Not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::headers::{
        Malformed, parse_request, parse_response, parse_trailers, request_fields, response_fields, trailer_fields,
    };
}

/// The ALPN identifier of HTTP/3.
pub const ALPN: &[u8] = b"h3";

/// A server configuration builder with ALPN `h3` set.
pub fn server_config() -> quiver::ServerConfigBuilder {
    quiver::ServerConfig::builder().alpn([ALPN])
}

/// A client configuration builder with ALPN `h3` set.
pub fn client_config() -> quiver::ClientConfigBuilder {
    quiver::ClientConfig::builder().alpn([ALPN])
}
