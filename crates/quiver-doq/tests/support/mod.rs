//! A DoQ forwarder on 127.0.0.1 port 0 in front of the scripted [`TestUpstream`], and clients for it.

#![allow(dead_code)] // each test file uses part of it

use std::net::SocketAddr;

use quiver::Endpoint;
use quiver_doq::test_util::TestUpstream;
use quiver_doq::{DoqClient, DoqServer, DoqServerBuilder};

#[allow(unused_imports)] // each test file uses part of it
pub use quiver_test_support::{GUARD, guarded};

pub struct Forwarder {
    pub upstream: TestUpstream,
    pub endpoint: Endpoint,
    pub server: DoqServer,
    pub addr: SocketAddr,
    pub certificate_der: Vec<u8>,
    pub certificate_pem: String,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.endpoint.close();
    }
}

/// Starts a forwarder; `configure` adjusts the server before it is built.
pub async fn forwarder(configure: impl FnOnce(DoqServerBuilder) -> DoqServerBuilder) -> Forwarder {
    forwarder_with(|quic| quic, configure).await
}

/// As [`forwarder`], with `quic` adjusting the endpoint's configuration too.
pub async fn forwarder_with(
    quic: impl FnOnce(quiver::ServerConfigBuilder) -> quiver::ServerConfigBuilder,
    configure: impl FnOnce(DoqServerBuilder) -> DoqServerBuilder,
) -> Forwarder {
    let upstream = TestUpstream::start().await.expect("start the test upstream");
    let config = quic(quiver_doq::server_config()).self_signed(["localhost"]).build().expect("server config");
    let certificate_der = config.identity().certificate_der();
    let certificate_pem = config.identity().certificate_chain_pem();
    let endpoint = Endpoint::server("127.0.0.1:0".parse().unwrap(), config).expect("bind");
    let addr = endpoint.local_addr();
    let server = configure(DoqServer::builder(upstream.addr())).build().expect("server");
    let serving = server.clone();
    let accepting = endpoint.clone();
    tokio::spawn(async move { serving.serve(accepting).await });
    Forwarder { upstream, endpoint, server, addr, certificate_der, certificate_pem }
}

/// A client that trusts nothing but skips verification (the server's certificate is self-signed).
pub fn client(addr: SocketAddr) -> DoqClient {
    let config = quiver_doq::client_config().insecure_skip_verification().build().expect("client config");
    DoqClient::builder(addr).query_timeout(GUARD).build(config).expect("client")
}

/// A client that sends queries unpadded, so answers are the upstream's bytes.
pub fn unpadded_client(addr: SocketAddr) -> DoqClient {
    let config = quiver_doq::client_config().insecure_skip_verification().build().expect("client config");
    DoqClient::builder(addr).query_timeout(GUARD).padding(false).build(config).expect("client")
}
