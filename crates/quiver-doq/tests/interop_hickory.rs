//! An independent DoQ client — hickory-net's, on quinn + rustls — querying our forwarder, verifying
//! the server's certificate against the self-signed one it was given.

mod support;

use std::sync::Arc;

use futures_util::StreamExt;
use hickory_net::quic::QuicClientStream;
use hickory_net::xfer::DnsRequestSender;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use support::{forwarder, guarded};

fn rustls_config(certificate_der: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(certificate_der.to_vec())).expect("trust the certificate");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// hickory's DoQ client, connected to the forwarder and verifying its certificate for "localhost".
async fn connect(forwarder: &support::Forwarder) -> QuicClientStream {
    guarded(
        "the hickory handshake",
        QuicClientStream::builder()
            .crypto_config(rustls_config(&forwarder.certificate_der))
            .build(forwarder.addr, Arc::from("localhost")),
    )
    .await
    .expect("hickory connects over DoQ")
}

fn query(name: &str, record_type: RecordType) -> Message {
    let mut query = Message::new(0, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    query
}

#[tokio::test]
async fn hickory_doq_client_queries_our_server() {
    let forwarder = forwarder(|server| server).await;
    let mut stream = connect(&forwarder).await;

    for (name, record_type) in
        [("www.test.", RecordType::A), ("www.test.", RecordType::AAAA), ("www.test.", RecordType::TXT)]
    {
        let response = guarded("stream.send_message", stream.send_message(query(name, record_type).into()).next())
            .await
            .expect("a response")
            .expect("no error");
        assert_eq!(response.metadata.id, 0);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(response.answers.len(), 1, "{name} {record_type}");
        let upstream = forwarder.upstream.last_answer_for(name, record_type).unwrap();
        assert!(response.as_buffer()[2..] == upstream[2..], "{name} {record_type}: the upstream's bytes");
        match (&response.answers[0].data, record_type) {
            (RData::A(_), RecordType::A) | (RData::AAAA(_), RecordType::AAAA) | (RData::TXT(_), RecordType::TXT) => {}
            (other, _) => panic!("unexpected record {other:?}"),
        }
    }
    let missing =
        guarded("stream.send_message", stream.send_message(query("nowhere.example.", RecordType::A).into()).next())
            .await
            .expect("a response")
            .expect("no error");
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(forwarder.server.stats().connections_accepted, 1, "hickory reused its connection");
}

#[tokio::test]
async fn hickory_sees_servfail_for_a_silent_upstream() {
    let forwarder = forwarder(|server| server.upstream_timeout(std::time::Duration::from_millis(100))).await;
    let mut stream = connect(&forwarder).await;
    let response =
        guarded("stream.send_message", stream.send_message(query("silent.test.", RecordType::A).into()).next())
            .await
            .expect("a response")
            .expect("no error");
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
}
