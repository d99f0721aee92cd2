//! Helpers shared by the loopback tests: endpoints on 127.0.0.1 port 0, payloads, event waits.

#![allow(dead_code)]

#[path = "../../examples/echo/protocol.rs"]
pub mod echo;

use std::net::SocketAddr;

use quiver::{ClientConfig, ClientConfigBuilder, Endpoint, ServerConfig, ServerConfigBuilder, TlsIdentity};
#[allow(unused_imports)] // each test file uses part of it
pub use quiver_test_support::{GUARD, guarded, init_tracing, wait_until, wait_until_async};

pub fn loopback() -> SocketAddr {
    init_tracing();
    "127.0.0.1:0".parse().expect("literal address")
}

pub fn identity() -> TlsIdentity {
    TlsIdentity::self_signed(&["localhost", "127.0.0.1"]).expect("self-signed certificate")
}

pub fn server_builder(identity: &TlsIdentity) -> ServerConfigBuilder {
    ServerConfig::builder().alpn([echo::ALPN]).identity(identity.clone())
}

/// A client that trusts exactly `identity`'s certificate (verification stays on).
pub fn client_builder(identity: &TlsIdentity) -> ClientConfigBuilder {
    ClientConfig::builder().alpn([echo::ALPN]).without_system_roots().trust_certificate_der(identity.certificate_der())
}

/// An echo server endpoint that starts [`echo::EchoServer`] on every connection.
pub fn spawn_echo_server(config: ServerConfig) -> Endpoint {
    let endpoint = Endpoint::server(loopback(), config).expect("bind server");
    let acceptor = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = acceptor.accept().await {
            incoming.start(echo::EchoServer::new());
        }
    });
    endpoint
}

/// Deterministic, non-repeating-looking bytes so a shifted or duplicated chunk cannot pass a compare.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
