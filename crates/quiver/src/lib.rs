//! # quiver
//!
//! Async QUIC for Tokio, driven by Cloudflare's [`quiche`] state machine.
//!
//! An [`Endpoint`] owns one or more UDP sockets. Each socket has a router task that reads every
//! datagram, finds its connection by destination connection ID, and hands it to that connection's
//! task. Each connection task owns one `quiche::Connection` and one application: anything that
//! implements [`ApplicationOverQuic`] (HTTP/3, DNS over QUIC, or your own protocol).
//!
//! ```no_run
//! use quiver::{ApplicationError, ApplicationOverQuic, Endpoint, QuicConnection, ServerConfig};
//!
//! /// Answers every stream with its own bytes (a simplified echo).
//! #[derive(Clone)]
//! struct Echo;
//!
//! impl ApplicationOverQuic for Echo {
//!     fn on_conn_established(&mut self, _: &mut QuicConnection) -> Result<(), ApplicationError> { Ok(()) }
//!     fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
//!         let mut buf = [0u8; 65536];
//!         for stream in conn.readable() {
//!             while let Ok((len, fin)) = conn.stream_recv(stream, &mut buf) {
//!                 let _ = conn.stream_send(stream, &buf[..len], fin);
//!             }
//!         }
//!         Ok(())
//!     }
//!     fn process_writes(&mut self, _: &mut QuicConnection) -> Result<(), ApplicationError> { Ok(()) }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig::builder().alpn(["echo"]).self_signed(["localhost"]).build()?;
//! let endpoint = Endpoint::server("127.0.0.1:4433".parse()?, config)?;
//! while let Some(incoming) = endpoint.accept().await {
//!     incoming.start(Echo);
//! }
//! # Ok(()) }
//! ```
//!
//! The full echo protocol, with flow-control backpressure, is in `examples/echo`.

#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

mod app;
mod batch;
mod buffer;
mod cid;
mod config;
mod connection;
mod endpoint;
mod error;
mod handshake;
mod limits;
#[cfg(test)]
mod memory;
pub mod metrics;
mod qlog;
mod route;
mod router;
mod serve;
mod share;
mod shared;
mod socket;
mod stats;
#[cfg(test)]
mod test_support;
mod ticket;
mod token;

pub use crate::app::{ApplicationOverQuic, QuicConnection};
pub use crate::cid::LOCAL_CID_LEN;
pub use crate::config::toml_file;
pub use crate::config::{
    AddressValidation, ClientConfig, ClientConfigBuilder, CongestionControl, DEFAULT_ACCEPT_BACKLOG,
    DEFAULT_ADDRESS_VALIDATION, DEFAULT_CONNECTION_QUEUE_DATAGRAMS, DEFAULT_HANDSHAKE_SHARE_DIVISOR,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES_IN_FLIGHT, RateLimit,
    STATELESS_RESET_RATE, ServerConfig, ServerConfigBuilder, ServerSecret, TlsIdentity, TransportConfig,
};
pub use crate::connection::{ConnectionHandle, IncomingConnection};
pub use crate::endpoint::{Endpoint, EndpointBuilder};
pub use crate::error::{
    ApplicationError, CloseKind, CloseReason, ConfigError, ConnectError, ConnectionError, EndpointError, MigrateError,
    MigrateRefusal, QuicError,
};
pub use crate::handshake::HandshakeInfo;
pub use crate::serve::{ServeEnd, serve};
pub use crate::share::{SourceShare, SourceShares, source_key};
pub use crate::stats::{ConnectionStats, DropReason, EndpointStats};
pub use crate::ticket::TICKET_KEY_ROTATION;
pub use quiche;

/// Internals exposed for the crate's micro-benchmarks (`benches/`) and fuzz targets (`fuzz/`). Not a
/// stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::batch::{Batch, HeldPacket, ProducedPacket, fill_batch};
    pub use crate::cid::{CidKey, CidTable};
    pub use crate::cid::{MIN_INITIAL_DCID_LEN, PacketKind, classify, long_header_scid, router_index};

    /// The `quiche::Config` a server endpoint with `config` accepts connections with: the fuzz target
    /// for the router's accept path feeds `quiche::accept` exactly what the router does.
    ///
    /// # Errors
    /// As [`Endpoint::server`](crate::Endpoint::server) for a bad identity or transport setting.
    pub fn server_quiche_config(config: &crate::ServerConfig) -> Result<quiche::Config, crate::ConfigError> {
        config.quiche_config()
    }
}
