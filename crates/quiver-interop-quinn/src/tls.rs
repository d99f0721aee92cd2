//! rustls configurations for both roles: certificates from `CERTS`, the cipher suites a test case allows,
//! ALPN, key logging, 0-RTT, and a client session store that reports when a ticket arrived.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, NamedGroup, SignatureScheme};
use tokio::sync::Notify;

use crate::{ALPN_H3, ALPN_HQ, TestCase};

/// Sessions the client remembers: it only ever talks to one server per run.
const CLIENT_SESSION_CACHE_ENTRIES: usize = 32;

/// The ring provider, restricted to TLS_CHACHA20_POLY1305_SHA256 for the chacha20 case.
fn provider(testcase: TestCase) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if testcase == TestCase::Chacha20 {
        provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    }
    Arc::new(provider)
}

/// QUIC Initial packets are always protected with AES-128-GCM (RFC 9001 §5), whatever suites TLS may
/// negotiate, so quinn needs that suite even when the provider offers only ChaCha20.
fn initial_suite() -> rustls::quic::Suite {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|suite| suite.quic_suite())
        .expect("ring's TLS13_AES_128_GCM_SHA256 is a QUIC-capable TLS 1.3 suite")
}

/// Server TLS: the `CERTS` chain and key, both ALPNs, 0-RTT allowed, secrets logged when `SSLKEYLOGFILE` is set.
pub(crate) fn server_config(testcase: TestCase, certs: &Path) -> anyhow::Result<QuicServerConfig> {
    let cert_path = certs.join("cert.pem");
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert_path.display()))?;
    let key_path = certs.join("priv.key");
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read the private key {}", key_path.display()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider(testcase))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not form a usable identity")?;
    tls.alpn_protocols = vec![ALPN_HQ.to_vec(), ALPN_H3.to_vec()];
    // QUIC allows only 0 or u32::MAX (RFC 9001 §4.6.1); the stateful session cache (the default) makes
    // each ticket single use, which is what lets rustls accept early data.
    tls.max_early_data_size = u32::MAX;
    tls.key_log = Arc::new(rustls::KeyLogFile::new());
    Ok(QuicServerConfig::with_initial(Arc::new(tls), initial_suite())?)
}

/// Client TLS: accepts any server certificate (interop only), one ALPN, early data enabled, session
/// tickets kept in `tickets` so a second connection from the same config resumes.
pub(crate) fn client_config(
    testcase: TestCase,
    alpn: &[u8],
    tickets: Arc<TicketStore>,
) -> anyhow::Result<QuicClientConfig> {
    let provider = provider(testcase);
    let verifier = Arc::new(AcceptAnyCertificate { provider: provider.clone() });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = true;
    tls.resumption = rustls::client::Resumption::store(tickets);
    tls.key_log = Arc::new(rustls::KeyLogFile::new());
    Ok(QuicClientConfig::with_initial(Arc::new(tls), initial_suite())?)
}

/// INTEROP ONLY: accepts every server certificate, because the runner's certificates are self-signed and
/// name no host the client knows. The handshake signature is still checked against the presented
/// certificate, so the server must hold the key of the certificate it sends. Never use this elsewhere.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// rustls' in-memory session cache, plus a count of the TLS 1.3 tickets received and offered, so the
/// client can wait for a ticket before closing its first connection and report whether it resumed.
#[derive(Debug)]
pub(crate) struct TicketStore {
    inner: ClientSessionMemoryCache,
    received: AtomicUsize,
    offered: AtomicUsize,
    ticket_arrived: Notify,
}

impl TicketStore {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: ClientSessionMemoryCache::new(CLIENT_SESSION_CACHE_ENTRIES),
            received: AtomicUsize::new(0),
            offered: AtomicUsize::new(0),
            ticket_arrived: Notify::new(),
        })
    }

    /// Resolves once at least one ticket has been received.
    pub(crate) async fn wait_for_ticket(&self) {
        loop {
            let notified = self.ticket_arrived.notified();
            if self.received.load(Ordering::SeqCst) > 0 {
                return;
            }
            notified.await;
        }
    }

    /// How many tickets the client has put into a ClientHello.
    pub(crate) fn offered(&self) -> usize {
        self.offered.load(Ordering::SeqCst)
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.inner.insert_tls13_ticket(server_name, value);
        self.received.fetch_add(1, Ordering::SeqCst);
        self.ticket_arrived.notify_waiters();
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        if ticket.is_some() {
            self.offered.fetch_add(1, Ordering::SeqCst);
        }
        ticket
    }
}
