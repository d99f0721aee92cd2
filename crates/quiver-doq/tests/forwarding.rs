//! The DoQ forwarder end to end on loopback: quiver's DoQ client → DoqServer → scripted upstream.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use quiver_doq::test_util::TEST_TTL;
use quiver_doq::{DOQ_PROTOCOL_ERROR, PADDING_BLOCK_BYTES};
use quiver_test_support::wait_until;
use support::{GUARD, client, forwarder, forwarder_with, guarded, unpadded_client};

fn query_bytes(name: &str, record_type: RecordType, id: u16) -> Vec<u8> {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    query.to_vec().unwrap()
}

/// `query` with an OPT record holding one EDNS(0) option.
fn with_option(query: &[u8], code: EdnsCode, data: Vec<u8>) -> Vec<u8> {
    let mut query = Message::from_vec(query).unwrap();
    let mut edns = Edns::new();
    edns.options_mut().insert(EdnsOption::Unknown(u16::from(code), data));
    query.edns = Some(edns);
    query.to_vec().unwrap()
}

#[tokio::test]
async fn a_aaaa_txt_answers_are_the_upstreams_bytes_with_id_zero() {
    let forwarder = forwarder(|server| server).await;
    let client = unpadded_client(forwarder.addr);
    for (name, record_type) in [
        ("www.test.", RecordType::A),
        ("www.test.", RecordType::AAAA),
        ("www.test.", RecordType::TXT),
        ("big.test.", RecordType::TXT),
    ] {
        let answer =
            guarded("client.send_bytes", client.send_bytes(&query_bytes(name, record_type, 0))).await.expect("answer");
        let upstream = forwarder.upstream.last_answer_for(name, record_type).expect("the upstream answered");
        assert_eq!(&answer[..2], &[0, 0], "DoQ answers carry message ID 0");
        assert_ne!(&upstream[..2], &[0, 0], "the upstream saw a random, non-zero ID");
        assert!(answer[2..] == upstream[2..], "{name} {record_type}: not the upstream's bytes");
        let parsed = Message::from_vec(&answer).unwrap();
        assert_eq!(parsed.metadata.response_code, ResponseCode::NoError);
        assert_eq!(parsed.answers.len(), 1);
    }
    let stats = forwarder.server.stats();
    assert_eq!(stats.answered_upstream, 4);
    assert_eq!(stats.connections_accepted, 1, "one connection for every query");
}

#[tokio::test]
async fn library_query_returns_parsed_records() {
    let forwarder = forwarder(|server| server).await;
    let client = client(forwarder.addr);
    let answer = guarded("client.query", client.query("host.test", RecordType::A)).await.expect("answer");
    assert_eq!(answer.metadata.id, 0);
    match &answer.answers[0].data {
        RData::A(address) => assert_eq!(address.0, std::net::Ipv4Addr::new(192, 0, 2, 7)),
        other => panic!("unexpected record {other:?}"),
    }
    let missing = guarded("client.query", client.query("nowhere.example.", RecordType::A)).await.expect("answer");
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(
        guarded("client.query", client.query("bad..name", RecordType::A)).await,
        Err(quiver_doq::DoqError::InvalidName { .. })
    ));
}

#[tokio::test]
async fn truncated_udp_answer_is_retried_over_tcp() {
    let forwarder = forwarder(|server| server).await;
    let client = unpadded_client(forwarder.addr);
    let answer = guarded("client.send_bytes", client.send_bytes(&query_bytes("truncated.test.", RecordType::A, 0)))
        .await
        .expect("answer");
    let parsed = Message::from_vec(&answer).unwrap();
    assert!(!parsed.metadata.truncation, "the TCP answer is complete");
    assert_eq!(parsed.answers.len(), 1);
    assert_eq!(forwarder.upstream.udp_queries(), 1);
    assert_eq!(forwarder.upstream.tcp_queries(), 1);
    let over_tcp = forwarder.upstream.last_answer_for("truncated.test.", RecordType::A).unwrap();
    assert!(answer[2..] == over_tcp[2..], "the TCP answer is forwarded byte for byte");
    assert_eq!(forwarder.server.stats().truncated_retried_over_tcp, 1);
}

#[tokio::test]
async fn silent_upstream_gets_servfail_not_silence() {
    let forwarder = forwarder(|server| server.upstream_timeout(Duration::from_millis(200))).await;
    let client = unpadded_client(forwarder.addr);
    let query = query_bytes("silent.test.", RecordType::A, 0);
    let answer = guarded("client.send_bytes", client.send_bytes(&query)).await.expect("an answer, not a timeout");
    let parsed = Message::from_vec(&answer).unwrap();
    assert_eq!(parsed.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(parsed.metadata.id, 0);
    assert_eq!(parsed.queries, Message::from_vec(&query).unwrap().queries, "SERVFAIL names the question");
    assert_eq!(forwarder.server.stats().servfail_timeout, 1);
}

#[tokio::test]
async fn unreachable_upstream_gets_servfail() {
    // A port nobody listens on: the kernel refuses at once.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let config = quiver_doq::server_config().self_signed(["localhost"]).build().unwrap();
    let endpoint = quiver::Endpoint::server("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let server = quiver_doq::DoqServer::builder(dead).build().unwrap();
    let (serving, accepting) = (server.clone(), endpoint.clone());
    tokio::spawn(async move { serving.serve(accepting).await });
    let client = unpadded_client(endpoint.local_addr());
    let answer = guarded("client.send_bytes", client.send_bytes(&query_bytes("www.test.", RecordType::A, 0)))
        .await
        .expect("answer");
    assert_eq!(Message::from_vec(&answer).unwrap().metadata.response_code, ResponseCode::ServFail);
    let stats = server.stats();
    assert_eq!(stats.servfail_upstream_error + stats.servfail_timeout, 1);
    endpoint.close();
}

#[tokio::test]
async fn non_zero_message_id_closes_with_protocol_error() {
    let forwarder = forwarder(|server| server).await;
    let client = unpadded_client(forwarder.addr);
    let failure = guarded("client.send_bytes", client.send_bytes(&query_bytes("www.test.", RecordType::A, 0x1234)))
        .await
        .unwrap_err();
    assert_eq!(failure.peer_error_code(), Some(DOQ_PROTOCOL_ERROR), "{failure}");
    assert_eq!(forwarder.server.stats().protocol_errors, 1);
    assert_eq!(forwarder.upstream.udp_queries(), 0, "nothing was forwarded");
    // The client recovers with a new connection.
    let answer = guarded("client.send_bytes", client.send_bytes(&query_bytes("www.test.", RecordType::A, 0)))
        .await
        .expect("answer");
    assert_eq!(Message::from_vec(&answer).unwrap().answers.len(), 1);
}

#[tokio::test]
async fn malformed_queries_get_formerr_without_disturbing_other_streams() {
    let forwarder = forwarder(|server| server).await;
    let client = unpadded_client(forwarder.addr);
    let good = query_bytes("www.test.", RecordType::A, 0);
    // ID 0 then garbage; a 5-byte "message"; a response instead of a query; an UPDATE.
    let garbage = [0u8, 0, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x3f, 0x3f];
    let mut response = Message::from_vec(&good).unwrap();
    response.metadata.message_type = MessageType::Response;
    let mut update = Message::from_vec(&good).unwrap();
    update.metadata.op_code = OpCode::Update;
    let (response, update) = (response.to_vec().unwrap(), update.to_vec().unwrap());
    let (first, short, as_response, as_update, answer) = guarded("the exchange", async {
        tokio::join!(
            client.send_bytes(&garbage),
            client.send_bytes(&[0, 0, 1, 0, 0]),
            client.send_bytes(&response),
            client.send_bytes(&update),
            client.send_bytes(&good),
        )
    })
    .await;
    for (bytes, expected) in [
        (first, ResponseCode::FormErr),
        (short, ResponseCode::FormErr),
        (as_response, ResponseCode::FormErr),
        (as_update, ResponseCode::NotImp),
    ] {
        let parsed = Message::from_vec(&bytes.expect("an answer")).unwrap();
        assert_eq!(parsed.metadata.response_code, expected);
        assert_eq!(parsed.metadata.id, 0);
    }
    assert_eq!(Message::from_vec(&answer.expect("answer")).unwrap().answers.len(), 1);
    let stats = forwarder.server.stats();
    assert_eq!((stats.format_errors, stats.not_implemented, stats.protocol_errors), (3, 1, 0));
    assert_eq!(stats.connections_accepted, 1, "the connection survived");
}

#[tokio::test]
async fn tcp_keepalive_option_is_a_protocol_error() {
    let forwarder = forwarder(|server| server).await;
    let client = unpadded_client(forwarder.addr);
    let query = with_option(&query_bytes("www.test.", RecordType::A, 0), EdnsCode::Keepalive, Vec::new());
    let failure = guarded("client.send_bytes", client.send_bytes(&query)).await.unwrap_err();
    assert_eq!(failure.peer_error_code(), Some(DOQ_PROTOCOL_ERROR), "{failure}");
}

#[tokio::test]
async fn thousand_parallel_queries_on_one_connection() {
    let forwarder = forwarder(|server| server).await;
    let client = client(forwarder.addr);
    let mut queries = tokio::task::JoinSet::new();
    for index in 0..1000 {
        let client = client.clone();
        queries.spawn(async move { (index, client.query(&format!("q{index}.test."), RecordType::A).await) });
    }
    let mut answered = 0;
    guarded("the exchange", async {
        while let Some(joined) = queries.join_next().await {
            let (index, result) = joined.expect("task");
            let answer = result.unwrap_or_else(|err| panic!("query {index}: {err}"));
            assert_eq!(answer.queries[0].name, Name::from_ascii(format!("q{index}.test.")).unwrap());
            assert_eq!(answer.answers.len(), 1);
            answered += 1;
        }
    })
    .await;
    assert_eq!(answered, 1000);
    let stats = forwarder.server.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.answered_upstream, 1000);
    assert_eq!(stats.padded_answers, 1000, "the client pads, so the server pads");
}

#[tokio::test]
async fn padded_query_gets_an_answer_padded_to_the_block() {
    let forwarder = forwarder(|server| server).await;
    let client = unpadded_client(forwarder.addr);
    let query = with_option(&query_bytes("www.test.", RecordType::TXT, 0), EdnsCode::Padding, vec![0; 30]);
    let answer = guarded("client.send_bytes", client.send_bytes(&query)).await.expect("answer");
    assert_eq!(answer.len() % PADDING_BLOCK_BYTES, 0, "{} bytes", answer.len());
    let parsed = Message::from_vec(&answer).unwrap();
    assert!(parsed.edns.unwrap().option(EdnsCode::Padding).is_some());
    assert_eq!(parsed.answers.len(), 1, "padding keeps the records");
    // Unpadded queries get the upstream's bytes, unpadded.
    let plain = guarded("client.send_bytes", client.send_bytes(&query_bytes("www.test.", RecordType::TXT, 0)))
        .await
        .expect("answer");
    assert_ne!(plain.len() % PADDING_BLOCK_BYTES, 0);
}

#[tokio::test]
async fn cache_answers_repeats_with_aged_ttls() {
    // The cache's clock is moved 100 s ahead between the queries, instead of waiting 100 s.
    let clock_offset = Arc::new(AtomicU64::new(0));
    let forwarder =
        forwarder(|server| server.cache_bytes(64 * 1024).cache_clock_offset_seconds(clock_offset.clone())).await;
    let client = unpadded_client(forwarder.addr);
    let query = query_bytes("cached.test.", RecordType::A, 0);
    let first = guarded("client.send_bytes", client.send_bytes(&query)).await.expect("answer");
    clock_offset.store(100, Ordering::Relaxed);
    let second = guarded("client.send_bytes", client.send_bytes(&query)).await.expect("answer");
    assert_eq!(forwarder.upstream.udp_queries(), 1, "the second answer came from the cache");
    assert_eq!(forwarder.server.stats().answered_from_cache, 1);
    let (first, second) = (Message::from_vec(&first).unwrap(), Message::from_vec(&second).unwrap());
    assert_eq!(first.answers[0].ttl, TEST_TTL);
    assert_eq!(second.answers[0].ttl, TEST_TTL - 100, "served with the time it spent in the cache taken off");
    assert_eq!(first.answers[0].data, second.answers[0].data);
    assert_eq!(second.metadata.id, 0);
    // Past the TTL the entry is gone: the upstream is asked again.
    clock_offset.store(u64::from(TEST_TTL) + 1, Ordering::Relaxed);
    guarded("client.send_bytes", client.send_bytes(&query)).await.expect("answer");
    assert_eq!(forwarder.upstream.udp_queries(), 2);
}

#[tokio::test]
async fn connections_past_the_per_source_cap_are_refused() {
    let forwarder = forwarder_with(|quic| quic.max_connections_per_source(1), |server| server).await;
    let first = unpadded_client(forwarder.addr);
    let query = query_bytes("www.test.", RecordType::A, 0);
    guarded("first.send_bytes", first.send_bytes(&query)).await.expect("the first connection is served");
    let second = unpadded_client(forwarder.addr);
    let refused = guarded("second.send_bytes", second.send_bytes(&query)).await.unwrap_err();
    assert!(matches!(refused, quiver_doq::DoqError::Connect { .. }), "{refused}");
    // The endpoint's one per-source cap refused it, and counted it (once per Initial it refused).
    assert!(forwarder.endpoint.stats().dropped(quiver::DropReason::SourceConnectionLimit) >= 1);
    assert_eq!(forwarder.server.stats().connections_accepted, 1);
    // The first connection is unaffected.
    guarded("first.send_bytes", first.send_bytes(&query)).await.expect("still served");
}

#[tokio::test]
async fn abandoned_query_is_cancelled_on_the_server() {
    let forwarder = forwarder(|server| server.upstream_timeout(Duration::from_secs(30))).await;
    let client = unpadded_client(forwarder.addr);
    guarded("client.send_bytes", client.send_bytes(&query_bytes("www.test.", RecordType::A, 0)))
        .await
        .expect("connected");
    // A query the upstream never answers, abandoned once the upstream has it (the caller drops it).
    let abandoned = tokio::spawn({
        let client = client.clone();
        async move { client.send_bytes(&query_bytes("silent.test.", RecordType::A, 0)).await }
    });
    guarded("forwarder.upstream.wait_for_queries", forwarder.upstream.wait_for_queries(2)).await;
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    // The cancellation (STOP_SENDING + RESET_STREAM) leaves before the next query on the same
    // connection, so once that one is answered the server has seen it.
    guarded("client.send_bytes", client.send_bytes(&query_bytes("www.test.", RecordType::A, 0))).await.expect("answer");
    assert_eq!(forwarder.server.stats().cancelled, 1);
    assert_eq!(forwarder.server.stats().connections_accepted, 1);
}

#[tokio::test]
async fn the_query_timeout_covers_connecting() {
    // A "server" that never answers the handshake: the query must time out at the query timeout,
    // not at the (ten second) handshake timeout.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = quiver_doq::client_config().insecure_skip_verification().build().unwrap();
    let timeout = Duration::from_millis(200);
    let client =
        quiver_doq::DoqClient::builder(silent.local_addr().unwrap()).query_timeout(timeout).build(config).unwrap();
    let failure =
        guarded("client.send_bytes", client.send_bytes(&query_bytes("www.test.", RecordType::A, 0))).await.unwrap_err();
    assert!(matches!(failure, quiver_doq::DoqError::Timeout(after) if after == timeout), "{failure}");
}

#[tokio::test]
async fn upstream_sees_no_padding_and_at_most_1232_bytes_of_udp() {
    let forwarder = forwarder(|server| server).await;
    let client = unpadded_client(forwarder.addr);
    let mut query = Message::from_vec(&query_bytes("www.test.", RecordType::TXT, 0)).unwrap();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    edns.options_mut().insert(EdnsOption::Unknown(u16::from(EdnsCode::Padding), vec![0; 40]));
    query.edns = Some(edns);
    let answer = guarded("client.send_bytes", client.send_bytes(&query.to_vec().unwrap())).await.expect("answer");
    assert_eq!(answer.len() % PADDING_BLOCK_BYTES, 0, "the client padded, so its answer is padded");
    let forwarded = forwarder.upstream.queries_received();
    let forwarded = Message::from_vec(&forwarded[0]).unwrap();
    let edns = forwarded.edns.expect("EDNS kept");
    assert_eq!(edns.max_payload(), 1232);
    assert!(edns.option(EdnsCode::Padding).is_none(), "padding stays on the encrypted hop");
}

#[tokio::test]
async fn zone_transfers_get_notimp() {
    let forwarder = forwarder(|server| server).await;
    let client = unpadded_client(forwarder.addr);
    for transfer in [RecordType::AXFR, RecordType::IXFR] {
        let answer = guarded("client.send_bytes", client.send_bytes(&query_bytes("zone.test.", transfer, 0)))
            .await
            .expect("answer");
        assert_eq!(Message::from_vec(&answer).unwrap().metadata.response_code, ResponseCode::NotImp);
    }
    assert_eq!(forwarder.upstream.udp_queries(), 0);
    assert_eq!(forwarder.server.stats().not_implemented, 2);
}

#[tokio::test]
async fn shutdown_lets_queries_in_flight_finish() {
    let upstream = quiver_doq::test_util::TestUpstream::start().await.unwrap();
    let config = quiver_doq::server_config().self_signed(["localhost"]).build().unwrap();
    let endpoint = quiver::Endpoint::server("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let server =
        quiver_doq::DoqServer::builder(upstream.addr()).upstream_timeout(Duration::from_millis(300)).build().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let (server, endpoint) = (server.clone(), endpoint.clone());
        async move {
            server
                .serve_until(
                    endpoint,
                    async {
                        let _ = stopped.await;
                    },
                    GUARD,
                )
                .await
        }
    });
    let client = client(endpoint.local_addr());
    let query = tokio::spawn(async move { client.query("silent.test.", RecordType::A).await });
    guarded("upstream.wait_for_queries", upstream.wait_for_queries(1)).await;
    stop.send(()).unwrap();
    // The query still gets its SERVFAIL (after the upstream timeout), then the server stops.
    let answer = guarded("query", query).await.unwrap().expect("answered despite the shutdown");
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(guarded("serving", serving).await.unwrap(), quiver::ServeEnd::Drained, "drained within the deadline");
}

#[tokio::test]
async fn a_query_that_never_finishes_arriving_is_reset() {
    let forwarder = forwarder(|server| server.query_read_timeout(Duration::from_millis(100))).await;
    let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
    let mut framed = (40u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&[0; 10]); // 10 of the 40 bytes announced, and no FIN
    let app = RawStream { bytes: framed, written: 0, fin: false, reset: Some(reset_tx) };
    let config = quiver_doq::client_config().insecure_skip_verification().build().unwrap();
    let endpoint = quiver::Endpoint::client("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let handle =
        guarded("endpoint.connect", endpoint.connect(forwarder.addr, "localhost", app)).await.expect("connect");
    assert_eq!(guarded("reset_rx", reset_rx).await.unwrap(), DOQ_PROTOCOL_ERROR);
    assert!(!handle.is_closed(), "only the stream is reset, not the connection");
    assert_eq!(forwarder.server.stats().read_timeouts, 1);
}

/// Writes raw bytes (and FIN, if `fin`) on the first stream, then waits for the server to react;
/// reports the code of a reset of that stream.
struct RawStream {
    bytes: Vec<u8>,
    written: usize,
    fin: bool,
    reset: Option<tokio::sync::oneshot::Sender<u64>>,
}

impl quiver::ApplicationOverQuic for RawStream {
    fn on_conn_established(&mut self, _: &mut quiver::QuicConnection) -> Result<(), quiver::ApplicationError> {
        Ok(())
    }
    fn process_reads(&mut self, conn: &mut quiver::QuicConnection) -> Result<(), quiver::ApplicationError> {
        let mut scratch = [0u8; 4096];
        for stream in conn.readable() {
            loop {
                match conn.stream_recv(stream, &mut scratch) {
                    Ok(_) => {}
                    Err(quiver::quiche::Error::StreamReset(code)) => {
                        if let Some(reset) = self.reset.take() {
                            let _ = reset.send(code);
                        }
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }
    fn process_writes(&mut self, conn: &mut quiver::QuicConnection) -> Result<(), quiver::ApplicationError> {
        if self.written < self.bytes.len()
            && let Ok(written) = conn.stream_send(0, &self.bytes[self.written..], self.fin)
        {
            self.written += written;
        }
        Ok(())
    }
}

#[tokio::test]
async fn framing_violations_close_with_protocol_error() {
    let forwarder = forwarder(|server| server).await;
    let query = query_bytes("www.test.", RecordType::A, 0);
    let framed = |message: &[u8]| {
        let mut bytes = (message.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(message);
        bytes
    };
    let two_messages = [framed(&query), framed(&query)].concat();
    let mut short = framed(&query);
    short.truncate(short.len() - 3); // FIN before the announced length
    let config = quiver_doq::client_config().insecure_skip_verification().build().unwrap();
    let endpoint = quiver::Endpoint::client("127.0.0.1:0".parse().unwrap(), config).unwrap();
    for bytes in [two_messages, short] {
        let handle = guarded(
            "endpoint.connect",
            endpoint.connect(forwarder.addr, "localhost", RawStream { bytes, written: 0, fin: true, reset: None }),
        )
        .await
        .expect("connect");
        match guarded("handle.closed", handle.closed()).await {
            quiver::ConnectionError::PeerClosed(close) => {
                assert!(close.is_application && close.code == DOQ_PROTOCOL_ERROR, "{close}")
            }
            other => panic!("expected DOQ_PROTOCOL_ERROR from the server, got {other}"),
        }
    }
    assert_eq!(forwarder.server.stats().protocol_errors, 2);
    assert_eq!(forwarder.upstream.udp_queries(), 0);
}

#[tokio::test]
async fn queries_queue_behind_a_small_stream_limit() {
    // The server lets a connection have 2 queries open; 50 are sent at once on one connection.
    let upstream = quiver_doq::test_util::TestUpstream::start().await.unwrap();
    let config = quiver_doq::server_config().max_streams(2, 0).self_signed(["localhost"]).build().unwrap();
    let endpoint = quiver::Endpoint::server("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let server = quiver_doq::DoqServer::builder(upstream.addr()).max_queries_per_connection(2).build().unwrap();
    let (serving, accepting) = (server.clone(), endpoint.clone());
    tokio::spawn(async move { serving.serve(accepting).await });
    let client = client(endpoint.local_addr());
    guarded("client.query", client.query("first.test.", RecordType::A)).await.expect("connected");
    let mut queries = tokio::task::JoinSet::new();
    for index in 0..50 {
        let client = client.clone();
        queries.spawn(async move { client.query(&format!("q{index}.test."), RecordType::A).await });
    }
    guarded("the exchange", async {
        while let Some(joined) = queries.join_next().await {
            assert_eq!(joined.unwrap().expect("answer").answers.len(), 1);
        }
    })
    .await;
    assert_eq!(server.stats().connections_accepted, 1);
    assert_eq!(server.stats().answered_upstream, 51);
    endpoint.close();
}

/// One connection fills its share of the upstream slots with queries the upstream never answers;
/// its queries past the share wait for its own, and another client is still served. Before the
/// shares, the first client's queries took every server-wide slot and the second client's query
/// waited for one until its upstream timeout.
#[tokio::test]
async fn one_connection_cannot_take_every_upstream_slot() {
    let forwarder = forwarder(|server| {
        server
            .max_upstream_in_flight(4)
            .max_upstream_per_connection(2)
            // Longer than the test's guard: a query waiting for a slot is never answered in time.
            .upstream_timeout(GUARD * 2)
    })
    .await;
    let greedy = unpadded_client(forwarder.addr);
    let _hung: Vec<_> = (0..4)
        .map(|_| {
            let greedy = greedy.clone();
            tokio::spawn(async move { greedy.send_bytes(&query_bytes("silent.test.", RecordType::A, 0)).await })
        })
        .collect();
    let server = forwarder.server.clone();
    wait_until("the greedy client's four queries reach the server", || server.stats().queries == 4).await;
    guarded("forwarder.upstream.wait_for_queries", forwarder.upstream.wait_for_queries(2)).await;
    let honest = unpadded_client(forwarder.addr);
    let answer = guarded("honest.send_bytes", honest.send_bytes(&query_bytes("www.test.", RecordType::A, 0)))
        .await
        .expect("answer");
    assert_eq!(Message::from_vec(&answer).unwrap().metadata.response_code, ResponseCode::NoError);
    assert_eq!(forwarder.upstream.udp_queries(), 3, "two of the greedy client's queries and the honest one");
}

/// A client address's connections together get no more than its share.
#[tokio::test]
async fn one_source_cannot_take_every_upstream_slot_through_many_connections() {
    let forwarder = forwarder(|server| {
        server.max_upstream_per_connection(2).max_upstream_per_source(3).upstream_timeout(GUARD * 2)
    })
    .await;
    let _hung: Vec<_> = (0..2)
        .flat_map(|_| {
            let connection = unpadded_client(forwarder.addr);
            (0..2).map(move |_| {
                let connection = connection.clone();
                tokio::spawn(async move { connection.send_bytes(&query_bytes("silent.test.", RecordType::A, 0)).await })
            })
        })
        .collect();
    guarded("forwarder.upstream.wait_for_queries", forwarder.upstream.wait_for_queries(3)).await;
    let server = forwarder.server.clone();
    wait_until("the fourth query refused", || server.stats().refused_over_share == 1).await;
    assert_eq!(forwarder.upstream.udp_queries(), 3);
}
