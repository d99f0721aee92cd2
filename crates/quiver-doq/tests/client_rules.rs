//! The DoQ client against a server that breaks RFC 9250 on purpose (a raw quiver application, not
//! `DoqServer`): what §4.3.3 calls protocol errors must close the connection with DOQ_PROTOCOL_ERROR.

mod support;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use quiver::quiche;
use quiver::{ApplicationError, ApplicationOverQuic, Endpoint, QuicConnection};
use quiver_doq::{DOQ_PROTOCOL_ERROR, DoqError};
use support::{GUARD, guarded};

#[derive(Clone, Copy)]
enum Misbehaviour {
    /// STOP_SENDING on the query's stream as soon as it is readable.
    StopSending,
    /// Answers every query with edns-tcp-keepalive in it.
    KeepaliveAnswer,
}

struct BadServer {
    misbehaviour: Misbehaviour,
    received: Vec<u8>,
}

impl ApplicationOverQuic for BadServer {
    fn on_conn_established(&mut self, _: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        let mut scratch = vec![0u8; 65_536];
        for stream in conn.readable() {
            if let Misbehaviour::StopSending = self.misbehaviour {
                let _ = conn.stream_shutdown(stream, quiche::Shutdown::Read, 0);
                continue;
            }
            while let Ok((read, fin)) = conn.stream_recv(stream, &mut scratch) {
                self.received.extend_from_slice(&scratch[..read]);
                if fin {
                    let mut answer = Message::from_vec(&self.received[2..]).unwrap();
                    answer.metadata.message_type = MessageType::Response;
                    let mut edns = Edns::new();
                    edns.options_mut().insert(EdnsOption::Unknown(u16::from(EdnsCode::Keepalive), Vec::new()));
                    answer.edns = Some(edns);
                    let bytes = answer.to_vec().unwrap();
                    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&bytes);
                    let _ = conn.stream_send(stream, &framed, true);
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, _: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }
}

/// A bad server on 127.0.0.1 and a client for it; returns the client's error for `query`.
async fn ask_bad_server(misbehaviour: Misbehaviour, query: Message) -> DoqError {
    let config = quiver_doq::server_config().self_signed(["localhost"]).build().unwrap();
    let endpoint = Endpoint::server("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            incoming.start(BadServer { misbehaviour, received: Vec::new() });
        }
    });
    let config = quiver_doq::client_config().insecure_skip_verification().build().unwrap();
    let client = quiver_doq::DoqClient::builder(endpoint.local_addr())
        .query_timeout(GUARD)
        .padding(false)
        .build(config)
        .unwrap();
    let failure = guarded("client.send", client.send(query)).await.unwrap_err();
    let handle = client.connection_handle().await.expect("a connection was made");
    match guarded("handle.closed", handle.closed()).await {
        quiver::ConnectionError::LocallyClosed(close) => {
            assert!(close.is_application && close.code == DOQ_PROTOCOL_ERROR, "{close}")
        }
        other => panic!("expected the client to close with DOQ_PROTOCOL_ERROR, got {other}"),
    }
    endpoint.close();
    failure
}

fn query(name: &str) -> Message {
    let mut query = Message::new(0, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    query
}

#[tokio::test]
async fn stop_sending_from_the_server_is_a_protocol_error() {
    // A query larger than one packet, so the server sees its stream before the FIN (quiche sends
    // STOP_SENDING only for a stream still receiving).
    let mut large = query("example.com.");
    let mut edns = Edns::new();
    edns.options_mut().insert(EdnsOption::Unknown(u16::from(EdnsCode::Padding), vec![0; 30_000]));
    large.edns = Some(edns);
    let failure = ask_bad_server(Misbehaviour::StopSending, large).await;
    assert!(failure.to_string().contains("STOP_SENDING"), "{failure}");
}

#[tokio::test]
async fn keepalive_in_an_answer_is_a_protocol_error() {
    let failure = ask_bad_server(Misbehaviour::KeepaliveAnswer, query("example.com.")).await;
    assert!(failure.to_string().contains("edns-tcp-keepalive"), "{failure}");
}
