//! Shared by the loopback tests: a proxy on 127.0.0.1 port 0, a client that trusts it, UDP targets.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use quiver::{Endpoint, TlsIdentity};
use quiver_masque::{MasqueClient, Proxy, ProxyConfig, ProxyConfigBuilder, TargetPolicy, UdpTunnel};
use tokio::net::UdpSocket;

#[allow(unused_imports)] // each test file uses part of it
pub use quiver_test_support::{GUARD, guarded};

pub struct TestProxy {
    pub proxy: Proxy,
    pub endpoint: Endpoint,
    pub identity: TlsIdentity,
}

impl TestProxy {
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.endpoint.local_addr().port())
    }

    /// A client that trusts this proxy's certificate; QUIC datagrams on or off.
    pub fn client(&self, datagrams: bool) -> MasqueClient {
        let config = quiver_masque::client_config()
            .datagrams(datagrams)
            .without_system_roots()
            .trust_certificate_der(self.identity.certificate_der())
            .build()
            .unwrap();
        MasqueClient::new(&self.url(), config).unwrap().with_open_timeout(GUARD)
    }

    /// A plain HTTP/3 client that trusts this proxy, for hand-made requests.
    pub fn h3_client(&self) -> quiver_h3::Client {
        let config = quiver_masque::client_config()
            .without_system_roots()
            .trust_certificate_der(self.identity.certificate_der())
            .build()
            .unwrap();
        quiver_h3::Client::new(config).with_timeout(GUARD)
    }
}

/// Loopback targets allowed, everything else as configured.
pub fn loopback_config() -> ProxyConfigBuilder {
    ProxyConfig::builder().policy(TargetPolicy::parse(&["127.0.0.1/32:1-65535"]).unwrap())
}

/// Builds `config` and serves it on 127.0.0.1 port 0 until the test's endpoint closes.
pub fn start_proxy(config: ProxyConfigBuilder) -> TestProxy {
    start_proxy_until(config, std::future::pending(), Duration::ZERO).0
}

/// As [`start_proxy`], shutting down gracefully when `shutdown` resolves, within `drain_deadline`;
/// the task ends with how the serve lifecycle ended.
pub fn start_proxy_until(
    config: ProxyConfigBuilder,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain_deadline: Duration,
) -> (TestProxy, tokio::task::JoinHandle<quiver::ServeEnd>) {
    let config = config.build().expect("proxy config");
    let identity = TlsIdentity::self_signed(&["localhost"]).unwrap();
    let quic = quiver_masque::proxy_server_config(&config).identity(identity.clone()).build().unwrap();
    let endpoint = Endpoint::server("127.0.0.1:0".parse().unwrap(), quic).unwrap();
    let proxy = Proxy::new(config);
    let serving = tokio::spawn({
        let proxy = proxy.clone();
        let endpoint = endpoint.clone();
        async move { proxy.serve_until(endpoint, shutdown, drain_deadline).await }
    });
    (TestProxy { proxy, endpoint, identity }, serving)
}

/// A UDP echo server on 127.0.0.1; answers "big" with 4000 bytes and then "after" (a payload no QUIC
/// datagram carries, followed by one that fits).
pub async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
            if &buffer[..length] == b"big" {
                let _ = socket.send_to(&[7u8; 4000], peer).await;
                let _ = socket.send_to(b"after", peer).await;
            } else {
                let _ = socket.send_to(&buffer[..length], peer).await;
            }
        }
    });
    addr
}

/// Payload number `index` of `size` bytes (at least 4): the index, then bytes derived from it.
pub fn payload(index: u32, size: usize) -> Vec<u8> {
    let mut bytes = index.to_be_bytes().to_vec();
    bytes.extend((4..size).map(|position| (index as usize * 31 + position * 7) as u8));
    bytes
}

/// Sends `count` datagrams through `tunnel` to an echo target, `window` at a time, sizes from
/// `size_of(index)`; checks every echo byte for byte. Datagrams are unreliable: ones missing after a
/// quiet spell are sent again. Returns how many were resent.
pub async fn echo_exchange(tunnel: &mut UdpTunnel, count: u32, window: u32, size_of: impl Fn(u32) -> usize) -> u32 {
    let mut resent = 0;
    let mut start = 0;
    while start < count {
        let end = (start + window).min(count);
        let mut missing: HashMap<u32, Vec<u8>> =
            (start..end).map(|index| (index, payload(index, size_of(index)))).collect();
        for expected in missing.values() {
            tunnel.send(expected).unwrap();
        }
        while !missing.is_empty() {
            match tokio::time::timeout(Duration::from_millis(500), tunnel.recv()).await {
                Ok(received) => {
                    let received = received.unwrap();
                    let index = u32::from_be_bytes(received[..4].try_into().unwrap());
                    if let Some(expected) = missing.get(&index) {
                        assert!(received[..] == expected[..], "datagram {index} differs ({} bytes)", received.len());
                        missing.remove(&index);
                    }
                }
                Err(_) => {
                    resent += missing.len() as u32;
                    assert!(resent < count / 10 + 10, "too many datagrams lost: {resent}");
                    for expected in missing.values() {
                        // A full queue drops it again; the next quiet spell retries.
                        match tunnel.send(expected) {
                            Ok(()) | Err(quiver_masque::TunnelError::QueueFull) => {}
                            Err(err) => panic!("resending datagram: {err}"),
                        }
                    }
                }
            }
        }
        start = end;
    }
    resent
}
