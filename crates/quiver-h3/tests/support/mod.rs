//! Shared by quiver-h3's loopback tests: an HTTP/3 server endpoint on 127.0.0.1 port 0 with a fresh
//! self-signed certificate, and client settings that trust exactly that certificate. Guards, relays
//! and logging come from `quiver_test_support`.

#![allow(dead_code)] // each test file uses part of it

use quiver::{ClientConfigBuilder, Endpoint, ServerConfigBuilder, TlsIdentity};

/// Connection and stream flow-control windows for the bulk tests (64 MiB, 16 MiB): large enough
/// that a transfer is limited by the path, not by the windows.
pub const BULK_WINDOWS: (u64, u64) = (64 * 1024 * 1024, 16 * 1024 * 1024);

/// Binds a server endpoint for "localhost" on loopback; `configure` adjusts the HTTP/3 server
/// settings (the identity is already set). The test starts its own `Server` on the endpoint.
pub fn server_endpoint(configure: impl FnOnce(ServerConfigBuilder) -> ServerConfigBuilder) -> (Endpoint, TlsIdentity) {
    quiver_test_support::init_tracing();
    let identity = TlsIdentity::self_signed(&["localhost"]).unwrap();
    let config = configure(quiver_h3::server_config().identity(identity.clone())).build().unwrap();
    let endpoint = Endpoint::server("127.0.0.1:0".parse().unwrap(), config).unwrap();
    (endpoint, identity)
}

/// HTTP/3 client settings that trust exactly `identity`'s certificate (verification stays on).
pub fn trusting(identity: &TlsIdentity) -> ClientConfigBuilder {
    quiver_h3::client_config().without_system_roots().trust_certificate_der(identity.certificate_der())
}

/// A client endpoint on loopback with `config`, and one HTTP/3 connection from it to `server`
/// ("localhost"); the endpoint must outlive the connection.
pub async fn connect(
    config: quiver::ClientConfig,
    server: std::net::SocketAddr,
) -> (Endpoint, quiver_h3::H3Connection) {
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let connecting = quiver_h3::H3Connection::connect(&client, server, "localhost");
    let connection = quiver_test_support::guarded("connect", connecting).await.unwrap();
    (client, connection)
}
