//! Interop with an independent HTTP/3 stack: `h3` + `h3-quinn` (quinn, rustls) from crates.io.
//! Their client against our server, and our client against their server, each with bodies both ways.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use quiver::{Endpoint, TlsIdentity};
use quiver_h3::{Client, RecvBody, Server};

const GUARD: Duration = Duration::from_secs(60);

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|index| (index % 251) as u8).collect()
}

fn rustls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `GET /bytes/N` answers N pattern bytes; anything else answers "METHOD PATH BODY_LEN".
async fn answer(method: &http::Method, path: &str, body_len: usize) -> Bytes {
    match path.strip_prefix("/bytes/").and_then(|len| len.parse().ok()) {
        Some(len) => Bytes::from(pattern(len)),
        None => Bytes::from(format!("{method} {path} {body_len}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_quinn_client_against_quiver_server() {
    let identity = TlsIdentity::self_signed(&["localhost"]).unwrap();
    let config = quiver_h3::server_config().identity(identity.clone()).build().unwrap();
    let endpoint = Endpoint::server("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let service = tower::service_fn(|request: Request<RecvBody>| async move {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map(|collected| collected.to_bytes().len()).unwrap_or(0);
        Ok::<_, Infallible>(Response::new(Full::new(answer(&parts.method, parts.uri.path(), body).await)))
    });
    tokio::spawn(Server::new(service).serve(endpoint.clone()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(identity.certificate_der())).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(rustls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let mut quinn_client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    quinn_client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let run = async {
        let connection = quinn_client.connect(endpoint.local_addr(), "localhost").unwrap().await.unwrap();
        let (mut driver, mut send_request) = h3::client::new(h3_quinn::Connection::new(connection)).await.unwrap();
        let _driver = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let authority = format!("localhost:{}", endpoint.local_addr().port());

        // Download.
        let request = Request::get(format!("https://{authority}/bytes/300000")).body(()).unwrap();
        let mut stream = send_request.send_request(request).await.unwrap();
        stream.finish().await.unwrap();
        let response = stream.recv_response().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.unwrap() {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        assert!(body == pattern(300_000), "download differs");

        // Upload.
        let request = Request::post(format!("https://{authority}/upload")).body(()).unwrap();
        let mut stream = send_request.send_request(request).await.unwrap();
        for _ in 0..10 {
            stream.send_data(Bytes::from(pattern(100_000))).await.unwrap();
        }
        stream.finish().await.unwrap();
        let response = stream.recv_response().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.unwrap() {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        assert_eq!(String::from_utf8_lossy(&body), "POST /upload 1000000");
    };
    tokio::time::timeout(GUARD, run).await.expect("h3 client run timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_client_against_h3_quinn_server() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = certified.cert.der().to_vec();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(rustls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![rustls::pki_types::CertificateDer::from(cert_der.clone())], key_der)
        .unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let server_config =
        quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap()));
    let quinn_server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = quinn_server.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Some(incoming) = quinn_server.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else { return };
                let Ok(mut h3_connection) =
                    h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(connection)).await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3_connection.accept().await {
                    tokio::spawn(async move {
                        let Ok((request, mut stream)) = resolver.resolve_request().await else { return };
                        let mut received = 0;
                        while let Ok(Some(chunk)) = stream.recv_data().await {
                            received += chunk.remaining();
                        }
                        let body = answer(request.method(), request.uri().path(), received).await;
                        let response = Response::builder().status(200).body(()).unwrap();
                        if stream.send_response(response).await.is_ok() && stream.send_data(body).await.is_ok() {
                            let _ = stream.finish().await;
                        }
                    });
                }
            });
        }
    });

    let client =
        Client::new(quiver_h3::client_config().without_system_roots().trust_certificate_der(cert_der).build().unwrap());
    let run = async {
        let url = format!("https://localhost:{port}/bytes/250000");
        let response = client.send_request(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body[..] == pattern(250_000)[..], "download differs");

        let url = format!("https://localhost:{port}/upload");
        let upload = Full::new(Bytes::from(pattern(2_000_000)));
        let response = client.send_request(Request::put(url).body(upload).unwrap()).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "PUT /upload 2000000");
    };
    tokio::time::timeout(GUARD, run).await.expect("quiver client run timed out");
}
