//! An independent CONNECT-UDP client against our proxy: written here on `h3` + `h3-quinn` +
//! `h3-datagram` (hyperium's HTTP/3 on quinn and rustls, from crates.io), relaying UDP to a loopback
//! echo server. Their stack does the QUIC, TLS, QPACK, SETTINGS, extended CONNECT and HTTP Datagram
//! framing; only the CONNECT-UDP conventions (path, context ID, capsules) are spelled out here.
//!
//! h3-datagram 0.0.2 always writes quarter stream ID 0 into the datagrams it sends (its encoder
//! drops the varint it computed: hyperium/h3 issue 345, fixed by their PR 340 after the last release),
//! so its datagrams only work on the first request stream; the datagram test uses that stream, the
//! capsule test covers other streams, and the aioquic test has datagrams on several streams.

mod support;

use bytes::{Buf, Bytes};
use h3_datagram::datagram_handler::HandleDatagramsExt;
use http::{Method, Request, StatusCode};
use quiver_h3::datagram::{CAPSULE_DATAGRAM, CapsuleDecoder, encode_capsule};
use support::{TestProxy, guarded, loopback_config, payload, start_proxy, udp_echo};

fn quinn_client(identity: &quiver::TlsIdentity, datagrams: bool) -> quinn::Endpoint {
    let mut transport = quinn::TransportConfig::default();
    if !datagrams {
        transport.datagram_receive_buffer_size(None);
    }
    quiver_test_support::quinn_client("127.0.0.1:0".parse().unwrap(), &identity.certificate_der(), b"h3", transport)
}

/// A quinn connection to the proxy and h3's client on it (its driver polled on a task of its own).
async fn h3_session(
    quinn: &quinn::Endpoint,
    proxy: &TestProxy,
) -> (quinn::Connection, h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>) {
    let connection = quinn.connect(proxy.endpoint.local_addr(), "localhost").unwrap().await.unwrap();
    let (mut driver, send_request) = h3::client::new(h3_quinn::Connection::new(connection.clone())).await.unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    (connection, send_request)
}

fn connect_udp(port: u16, target_host: &str, target_port: u16) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost:{port}/.well-known/masque/udp/{target_host}/{target_port}/"))
        .header("capsule-protocol", "?1")
        .extension(h3::ext::Protocol::CONNECT_UDP)
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_client_tunnels_udp_over_http_datagrams() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let quinn = quinn_client(&proxy.identity, true);
    let run = async {
        let port = proxy.endpoint.local_addr().port();
        let connection = quinn.connect(proxy.endpoint.local_addr(), "localhost").unwrap().await.unwrap();
        let (mut driver, mut send_request) = h3::client::builder()
            .enable_datagram(true)
            .enable_extended_connect(true)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(connection))
            .await
            .unwrap();
        let first_request = h3::quic::StreamId::try_from(0).unwrap();
        let mut datagram_sender = driver.get_datagram_sender(first_request);
        let mut datagram_reader = driver.get_datagram_reader();
        let _driver = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });

        let mut stream = send_request.send_request(connect_udp(port, "127.0.0.1", echo.port())).await.unwrap();
        assert_eq!(stream.id(), first_request);
        let response = stream.recv_response().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["capsule-protocol"], "?1");

        for index in 0..500u32 {
            let udp = payload(index, 4 + (index as usize * 37) % 1100);
            let mut datagram = vec![0u8]; // context ID 0: a UDP payload
            datagram.extend_from_slice(&udp);
            datagram_sender.send_datagram(Bytes::from(datagram)).unwrap();
            let received = datagram_reader.read_datagram().await.unwrap();
            assert_eq!(received.stream_id(), first_request);
            let mut echoed = received.into_payload();
            assert_eq!(echoed.get_u8(), 0, "context ID");
            assert!(echoed[..] == udp[..], "datagram {index}");
        }
        assert_eq!(proxy.proxy.stats().datagrams_from_target, 500);
    };
    guarded("the test's exchange", run).await;
}

type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Sends `udp` as a DATAGRAM capsule (context ID 0) and checks that the echo comes back as one.
async fn capsule_echo(stream: &mut H3Stream, decoder: &mut CapsuleDecoder, udp: &[u8]) {
    let mut value = vec![0u8];
    value.extend_from_slice(udp);
    stream.send_data(encode_capsule(CAPSULE_DATAGRAM, &value)).await.unwrap();
    let capsule = loop {
        if let Some(capsule) = decoder.next_capsule().unwrap() {
            break capsule;
        }
        let mut chunk = stream.recv_data().await.unwrap().expect("tunnel open");
        decoder.push(&chunk.copy_to_bytes(chunk.remaining()));
    };
    assert_eq!(capsule.capsule_type, CAPSULE_DATAGRAM);
    assert_eq!(capsule.value[0], 0, "context ID");
    assert!(capsule.value[1..] == udp[..], "echo of {} bytes differs", udp.len());
}

/// RFC 9297 §2.1.1: quinn offers QUIC datagrams (its transport parameter is on by default) but h3
/// leaves `SETTINGS_H3_DATAGRAM` off unless asked. The proxy must then answer with capsules: HTTP
/// Datagrams sent to this client would be dropped by it and the echo would never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_client_with_quic_datagrams_but_no_http_datagrams_gets_capsules() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let quinn = quinn_client(&proxy.identity, true);
    let run = async {
        let port = proxy.endpoint.local_addr().port();
        let (connection, mut send_request) = h3_session(&quinn, &proxy).await;
        assert!(connection.max_datagram_size().is_some(), "the proxy offers QUIC datagrams to this client");
        let mut stream = send_request.send_request(connect_udp(port, "127.0.0.1", echo.port())).await.unwrap();
        assert_eq!(stream.recv_response().await.unwrap().status(), StatusCode::OK);
        let mut decoder = CapsuleDecoder::new(70_000);
        for index in 0..20u32 {
            capsule_echo(&mut stream, &mut decoder, &payload(index, 4 + index as usize * 50)).await;
        }
        let stats = proxy.proxy.stats();
        assert_eq!((stats.datagrams_to_target, stats.datagrams_from_target), (20, 20), "{stats:?}");
    };
    guarded("the echoes (did the proxy send HTTP Datagrams the client never enabled?)", run).await;
}

/// The client turns QUIC datagrams off at the transport: capsules again, on several streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_client_without_quic_datagrams_uses_capsules() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let quinn = quinn_client(&proxy.identity, false);
    let run = async {
        let port = proxy.endpoint.local_addr().port();
        let (_connection, mut send_request) = h3_session(&quinn, &proxy).await;

        // A denied target first (no rule covers 127.0.0.2): 403 with Proxy-Status.
        let mut refused = send_request.send_request(connect_udp(port, "127.0.0.2", 53)).await.unwrap();
        let response = refused.recv_response().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let proxy_status = response.headers()["proxy-status"].to_str().unwrap();
        assert!(proxy_status.starts_with("quiver; error=destination_ip_prohibited"), "{proxy_status}");

        // Then two tunnels at once, on streams 4 and 8, each with its own capsules.
        let mut tunnels = Vec::new();
        for _ in 0..2 {
            let mut stream = send_request.send_request(connect_udp(port, "127.0.0.1", echo.port())).await.unwrap();
            assert_eq!(stream.recv_response().await.unwrap().status(), StatusCode::OK);
            tunnels.push((stream, CapsuleDecoder::new(70_000)));
        }
        let sizes = [4usize, 1200, 9000, 30_000];
        for index in 0..100u32 {
            let (stream, decoder) = &mut tunnels[index as usize % 2];
            let udp = payload(index, sizes[index as usize % sizes.len()]);
            capsule_echo(stream, decoder, &udp).await;
        }
        // Finishing our side closes the tunnel: the proxy finishes its side too.
        let (mut stream, _) = tunnels.remove(0);
        stream.finish().await.unwrap();
        assert!(stream.recv_data().await.unwrap().is_none());
    };
    guarded("the test's exchange", run).await;
}
