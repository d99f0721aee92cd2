//! quinn (with rustls) as the independent QUIC peer of the interop tests.

use std::net::SocketAddr;
use std::sync::Arc;

/// A quinn client endpoint on `bind` that trusts exactly `certificate_der`, speaks TLS 1.3 with
/// `alpn`, and uses `transport` (quinn's defaults unless the test changes some).
pub fn quinn_client(
    bind: SocketAddr,
    certificate_der: &[u8],
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(certificate_der.to_vec())).expect("a DER certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("a QUIC-capable TLS config");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(bind).expect("bind the quinn client");
    endpoint.set_default_client_config(config);
    endpoint
}
