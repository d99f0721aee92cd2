//! Interop with an independent HTTP/3 stack: `h3` + `h3-quinn` (quinn, rustls) from crates.io.
//! Their client against our server, and our client against their server, each with bodies both ways.

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use quiver::TlsIdentity;
use quiver_h3::{Client, H3Settings, RecvBody, Server};
use quiver_test_support::guarded;
use support::server_endpoint;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|index| (index % 251) as u8).collect()
}

fn rustls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A quinn endpoint that trusts `identity` and offers ALPN h3.
fn quinn_h3_client(identity: &TlsIdentity) -> quinn::Endpoint {
    quiver_test_support::quinn_client(
        "127.0.0.1:0".parse().unwrap(),
        &identity.certificate_der(),
        b"h3",
        Default::default(),
    )
}

/// `GET /bytes/N` answers N pattern bytes; anything else answers "METHOD PATH BODY_LEN".
async fn answer(method: &http::Method, path: &str, body_len: usize) -> Bytes {
    match path.strip_prefix("/bytes/").and_then(|len| len.parse().ok()) {
        Some(len) => Bytes::from(pattern(len)),
        None => Bytes::from(format!("{method} {path} {body_len}")),
    }
}

/// Reads an `h3` client stream's response: asserts 200 and returns the whole body.
async fn read_response<S: h3::quic::RecvStream>(stream: &mut h3::client::RequestStream<S, Bytes>) -> Vec<u8> {
    let response = stream.recv_response().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_quinn_client_against_quiver_server() {
    let (endpoint, identity) = server_endpoint(|config| config);
    let service = tower::service_fn(|request: Request<RecvBody>| async move {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map(|collected| collected.to_bytes().len()).unwrap_or(0);
        Ok::<_, Infallible>(Response::new(Full::new(answer(&parts.method, parts.uri.path(), body).await)))
    });
    tokio::spawn(Server::new(service).serve(endpoint.clone()));

    let quinn_client = quinn_h3_client(&identity);
    let run = async {
        let connection = quinn_client.connect(endpoint.local_addr(), "localhost").unwrap().await.unwrap();
        let (mut driver, mut send_request) = h3::client::new(h3_quinn::Connection::new(connection)).await.unwrap();
        let _driver = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let authority = format!("localhost:{}", endpoint.local_addr().port());

        // Download.
        let request = Request::get(format!("https://{authority}/bytes/300000")).body(()).unwrap();
        let mut stream = send_request.send_request(request).await.unwrap();
        stream.finish().await.unwrap();
        assert!(read_response(&mut stream).await == pattern(300_000), "download differs");

        // Upload.
        let request = Request::post(format!("https://{authority}/upload")).body(()).unwrap();
        let mut stream = send_request.send_request(request).await.unwrap();
        for _ in 0..10 {
            stream.send_data(Bytes::from(pattern(100_000))).await.unwrap();
        }
        stream.finish().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&read_response(&mut stream).await), "POST /upload 1000000");
    };
    guarded("h3 client run", run).await;
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
    guarded("quiver client run", run).await;
}

/// QPACK prefixed integer (RFC 9204 §4.1.1) with `prefix_bits` bits in the first byte, OR-ed with `flags`.
fn qpack_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// QUIC variable-length integer (RFC 9000 §16), up to 2^30.
fn quic_varint(out: &mut Vec<u8>, value: usize) {
    match value {
        0..=63 => out.push(value as u8),
        64..=16383 => out.extend_from_slice(&(0x4000 | value as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(0x8000_0000 | value as u32).to_be_bytes()),
    }
}

/// A GET request HEADERS frame with one extra literal (not Huffman-coded) header of `value_len` bytes.
/// Hand-encoded because well-behaved clients (ours, `h3`) refuse to send more than the server allows.
fn oversized_headers_frame(authority: &str, value_len: usize) -> Vec<u8> {
    let mut block = vec![0x00, 0x00]; // Required Insert Count 0, Base 0: static table only.
    block.push(0xc0 | 17); // :method GET (static index 17)
    block.push(0xc0 | 23); // :scheme https (23)
    block.push(0xc0 | 1); // :path / (1)
    qpack_int(&mut block, 0x50, 4, 0); // :authority (static name 0), literal value
    qpack_int(&mut block, 0x00, 7, authority.len());
    block.extend_from_slice(authority.as_bytes());
    qpack_int(&mut block, 0x20, 3, 6); // literal name, literal value
    block.extend_from_slice(b"x-huge");
    qpack_int(&mut block, 0x00, 7, value_len);
    block.extend(std::iter::repeat_n(b'a', value_len));
    let mut frame = vec![0x01]; // HEADERS
    quic_varint(&mut frame, block.len());
    frame.extend_from_slice(&block);
    frame
}

/// A client that ignores the server's SETTINGS_MAX_FIELD_SECTION_SIZE: the server must refuse the
/// header section (quiche closes with H3_EXCESSIVE_LOAD), never run the handler, and keep serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_server_rejects_oversized_headers_from_a_raw_client() {
    let (endpoint, identity) = server_endpoint(|config| config);
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = {
        let served = served.clone();
        tower::service_fn(move |_request: Request<RecvBody>| {
            served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        })
    };
    let settings = H3Settings { max_field_section_bytes: 4096, ..H3Settings::default() };
    tokio::spawn(Server::new(service).settings(settings).serve(endpoint.clone()));

    let quinn_client = quinn_h3_client(&identity);
    let authority = format!("localhost:{}", endpoint.local_addr().port());
    let run = async {
        let connection = quinn_client.connect(endpoint.local_addr(), "localhost").unwrap().await.unwrap();
        let mut control = connection.open_uni().await.unwrap();
        control.write_all(&[0x00, 0x04, 0x00]).await.unwrap(); // control stream, empty SETTINGS
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        send.write_all(&oversized_headers_frame(&authority, 8 * 1024)).await.unwrap();
        let _ = send.finish();
        match connection.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code.into_inner(), quiver_h3::H3_EXCESSIVE_LOAD);
            }
            other => panic!("expected H3_EXCESSIVE_LOAD, got {other:?}"),
        }
    };
    guarded("oversized header run", run).await;
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0, "the handler never saw the request");

    // The same raw encoding under the limit is answered, so the rejection was about size alone.
    let run = async {
        let connection = quinn_client.connect(endpoint.local_addr(), "localhost").unwrap().await.unwrap();
        let mut control = connection.open_uni().await.unwrap();
        control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&oversized_headers_frame(&authority, 100)).await.unwrap();
        send.finish().unwrap();
        let response = recv.read_to_end(64 * 1024).await.unwrap();
        // quiche may put a GREASE frame first; then HEADERS with `:status 200` (static index 25, so the
        // field line 0xd9) and a DATA frame "ok".
        assert!(response.contains(&0xd9), "no :status 200 in {response:?}");
        assert!(response.windows(4).any(|frame| frame == [0x00, 0x02, b'o', b'k']), "no body in {response:?}");
    };
    guarded("small header run", run).await;
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A request without `:path` is malformed (RFC 9114 §4.3.1): the server resets that stream with
/// H3_MESSAGE_ERROR and keeps serving other requests on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_resets_only_its_stream() {
    let (endpoint, identity) = server_endpoint(|config| config);
    let service = tower::service_fn(|_request: Request<RecvBody>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    tokio::spawn(Server::new(service).serve(endpoint.clone()));
    let quinn_client = quinn_h3_client(&identity);
    let authority = format!("localhost:{}", endpoint.local_addr().port());
    let run = async {
        let connection = quinn_client.connect(endpoint.local_addr(), "localhost").unwrap().await.unwrap();
        let mut control = connection.open_uni().await.unwrap();
        control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();

        // :method GET, :scheme https, :authority, but no :path.
        let mut block = vec![0x00, 0x00, 0xc0 | 17, 0xc0 | 23];
        qpack_int(&mut block, 0x50, 4, 0);
        qpack_int(&mut block, 0x00, 7, authority.len());
        block.extend_from_slice(authority.as_bytes());
        let mut frame = vec![0x01];
        quic_varint(&mut frame, block.len());
        frame.extend_from_slice(&block);
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        match recv.read_to_end(64 * 1024).await {
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                assert_eq!(code.into_inner(), quiver_h3::H3_MESSAGE_ERROR);
            }
            other => panic!("expected a reset with H3_MESSAGE_ERROR, got {other:?}"),
        }

        // A well-formed request on the same connection is still answered.
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&oversized_headers_frame(&authority, 10)).await.unwrap();
        send.finish().unwrap();
        let response = recv.read_to_end(64 * 1024).await.unwrap();
        assert!(response.windows(4).any(|frame| frame == [0x00, 0x02, b'o', b'k']), "no body in {response:?}");
        assert!(connection.close_reason().is_none(), "the connection stays open");
    };
    guarded("malformed request run", run).await;
}
