//! A hostile HTTP/3 client for the adversarial tests and `bench/attack.sh` (feature `attacker`).
//!
//! It is built on quiche, so it speaks real QUIC and HTTP/3 and gets as far into the server as a
//! real client would; it misbehaves only where told to. Each attack is a function that runs one
//! misbehaviour against a server address and reports what the server did, so a test can assert the
//! server's defence and, at the same time, that an honest client is still served:
//!
//! | attack | what the peer does | module |
//! |---|---|---|
//! | [`partial_handshakes`] | sends a ClientHello (and answers a Retry), then goes silent | `handshake` |
//! | [`slow_handshake`] | completes a handshake, holding each of its datagrams back for a while | `handshake` |
//! | [`exhaust_streams`] | opens every request stream the server allows and never ends one | `h3` |
//! | [`header_bomb`] | sends a header section far beyond the server's advertised limit | `h3` |
//! | [`tiny_data_flood`] | uploads a body as 1-byte DATA frames, as fast as flow control allows | `h3` |
//! | [`open_unread`] | asks for large responses and never reads them (flow-control stall) | `h3` |
//! | [`open_idle`] | opens connections and keeps them idle (held by [`IdleConnections`]) | `idle` |
//!
//! [`QuicPeer`] is the one connection driver underneath: a quiche connection on a tokio UDP socket
//! of its own, bound wherever the test says (for example 127.0.0.3, so that the server sees the
//! attacker and the honest client on 127.0.0.1 as different sources). [`QuicPeer::get`] is the
//! well-behaved request the `quiver-attack` binary's honest client measures with.
//!
//! Everything here is for tests on loopback: the attacker never verifies the server's certificate.

mod h3;
mod handshake;
mod idle;
mod peer;

pub use h3::{
    BombOutcome, FloodOutcome, HeaderBomb, HoldStyle, exhaust_streams, header_bomb, open_unread, tiny_data_flood,
};
pub use handshake::{PartialOutcome, partial_handshakes, slow_handshake};
pub use idle::{IdleConnections, open_idle};
pub use peer::{PeerSettings, QuicPeer, StreamState};

/// The ALPN every attack offers: the attacks are against HTTP/3 servers.
pub const ALPN: &[u8] = b"h3";
