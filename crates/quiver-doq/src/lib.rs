//! # quiver-doq
//!
//! DNS over QUIC (RFC 9250) on [`quiver`]: a forwarding server and a client.

#![deny(missing_docs)]
