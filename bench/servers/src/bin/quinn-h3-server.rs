//! A minimal `/bytes/N` HTTP/3 server on quinn 0.11 + h3 0.0.8, for the side-by-side benchmark.
//! Usage: `quinn-h3-server [IP:PORT]`.

use std::sync::Arc;

use bytes::Bytes;
use quiver_bench_servers::{chunks, listen_addr, requested_bytes, self_signed};

#[tokio::main]
async fn main() {
    let addr = listen_addr();
    let (cert_der, key_der, _, _) = self_signed();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert_der)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .expect("certificate");
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC TLS config");
    let endpoint = quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), addr).expect("bind");
    println!("quinn + h3 server on https://{addr}/");
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else { return };
            let Ok(mut h3) = h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(connection)).await
            else {
                return;
            };
            while let Ok(Some(resolver)) = h3.accept().await {
                tokio::spawn(async move {
                    let Ok((request, mut stream)) = resolver.resolve_request().await else { return };
                    let len = requested_bytes(request.uri().path().as_bytes());
                    let status = if len.is_some() { 200 } else { 404 };
                    let len = len.unwrap_or(0);
                    let response =
                        http::Response::builder().status(status).header("content-length", len).body(()).expect("head");
                    if stream.send_response(response).await.is_err() {
                        return;
                    }
                    for chunk in chunks(len) {
                        if stream.send_data(chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = stream.finish().await;
                });
            }
        });
    }
}
