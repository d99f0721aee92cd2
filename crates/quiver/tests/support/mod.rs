//! Helpers shared by the loopback tests: endpoints on 127.0.0.1 port 0, payloads, event waits.

#![allow(dead_code)]

#[path = "../../examples/echo/protocol.rs"]
pub mod echo;
pub mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use quiver::{ClientConfig, ClientConfigBuilder, Endpoint, ServerConfig, ServerConfigBuilder, TlsIdentity};

/// Upper bound for any single wait in a test: a guard against hangs, never a correctness condition.
pub const GUARD: Duration = Duration::from_secs(60);

/// Logs to the test's captured output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

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

/// Waits until `condition` holds, checking after every millisecond tick; panics after [`GUARD`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// As [`wait_until`], for a condition that has to await (a handle's statistics).
pub async fn wait_until_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn guarded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, future).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}
