//! Quiver's server against an independent QUIC stack: quinn + rustls from crates.io, speaking the echo
//! protocol over raw bidirectional streams. A shared bug between our client and server cannot hide here.

mod support;

use support::*;

fn quinn_client(identity: &quiver::TlsIdentity) -> quinn::Endpoint {
    quiver_test_support::quinn_client(loopback(), &identity.certificate_der(), echo::ALPN, Default::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_client_echoes_through_quiver_server() {
    let identity = identity();
    let server = spawn_echo_server(server_builder(&identity).build().unwrap());
    let client = quinn_client(&identity);
    let connection = guarded("quinn connect", client.connect(server.local_addr(), "localhost").unwrap()).await.unwrap();
    assert_eq!(
        connection
            .handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .unwrap(),
        b"echo"
    );

    // Several streams at once, 1 MiB on the first.
    let mut streams = Vec::new();
    for (index, len) in [1024 * 1024, 0, 1, 65_537].into_iter().enumerate() {
        let connection = connection.clone();
        streams.push(tokio::spawn(async move {
            let sent = payload(len, index as u64);
            let (mut send, mut recv) = connection.open_bi().await.unwrap();
            let writer = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    send.write_all(&sent).await.unwrap();
                    send.finish().unwrap();
                })
            };
            let echoed = recv.read_to_end(2 * 1024 * 1024).await.unwrap();
            writer.await.unwrap();
            assert!(echoed == sent, "stream {index}: {} bytes echoed for {} sent", echoed.len(), sent.len());
        }));
    }
    for stream in streams {
        guarded("quinn stream", stream).await.unwrap();
    }
    connection.close(0u32.into(), b"done");
    guarded("server idle", server.wait_idle()).await;
}

/// Address validation against an independent client: every connection gets a Retry, quinn comes back
/// with the token, and the handshake completes with the original and retry connection IDs in the
/// transport parameters as RFC 9000 §7.3 requires (quinn checks them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_client_completes_a_retry_round_trip() {
    let identity = identity();
    let server = spawn_echo_server(
        server_builder(&identity).address_validation(quiver::AddressValidation::Always).build().unwrap(),
    );
    let client = quinn_client(&identity);
    for round in 0..3u64 {
        let connection =
            guarded("quinn connect", client.connect(server.local_addr(), "localhost").unwrap()).await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        let sent = payload(10_000, round);
        send.write_all(&sent).await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(20_000).await.unwrap(), sent);
        connection.close(0u32.into(), b"done");
    }
    let stats = server.stats();
    assert_eq!(stats.retries_sent, 3, "{stats:?}");
    assert_eq!(stats.connections_accepted, 3, "{stats:?}");
    assert_eq!(stats.dropped(quiver::DropReason::InvalidToken), 0, "{stats:?}");
}
