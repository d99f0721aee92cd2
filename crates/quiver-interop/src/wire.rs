//! The two places this endpoint waits on other work: a key update initiated on demand (a vendored
//! quiche addition) and a TLS 1.3 cipher-suite choice (a quiver configuration option). Each is one
//! function marked `// WIRE:`; a build without them sets the `*_AVAILABLE` constants to false, and
//! the test case then exits 127 (see [`TestCase::unsupported_in`](crate::settings::TestCase::unsupported_in)).

use quiver::{ClientConfigBuilder, QuicConnection, ServerConfigBuilder, quiche};

/// Whether [`initiate_key_update`] really starts a key update in this build.
pub const KEY_UPDATE_AVAILABLE: bool = true;

/// Whether [`chacha20_only_server`] and [`chacha20_only_client`] really restrict the cipher suites.
pub const CIPHER_CHOICE_AVAILABLE: bool = true;

/// The only cipher suite the chacha20 case offers and accepts.
pub const CHACHA20_SUITE: &str = "TLS_CHACHA20_POLY1305_SHA256";

/// Starts a key update on `conn` (RFC 9001 §6). quiche refuses while the handshake is not confirmed or
/// the previous update is not yet acknowledged; the caller tries again on a later turn.
///
/// # Errors
/// quiche's refusal; [`quiche::Error::InvalidState`] in a build without the feature.
pub fn initiate_key_update(conn: &mut QuicConnection) -> Result<(), quiche::Error> {
    // WIRE: the vendored quiche's `Connection::initiate_key_update`.
    conn.initiate_key_update()
}

/// A server configuration that accepts only [`CHACHA20_SUITE`].
pub fn chacha20_only_server(builder: ServerConfigBuilder) -> ServerConfigBuilder {
    // WIRE: quiver's `tls13_ciphers` option.
    builder.tls13_ciphers([CHACHA20_SUITE])
}

/// A client configuration that offers only [`CHACHA20_SUITE`].
pub fn chacha20_only_client(builder: ClientConfigBuilder) -> ClientConfigBuilder {
    // WIRE: quiver's `tls13_ciphers` option.
    builder.tls13_ciphers([CHACHA20_SUITE])
}
