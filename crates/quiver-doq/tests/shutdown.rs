//! A graceful shutdown of the DoQ server (`DoqServer::serve_until`): a query in flight when the
//! shutdown starts still gets its answer (the upstream answers when the test lets it), new
//! connections are refused, and the server ends as soon as the answer is delivered.

mod support;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use quiver_doq::{DoqError, DoqServer, RecordType};
use support::{GUARD, client, guarded};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// An upstream resolver that holds each query until the test releases it, then answers NOERROR
/// with no records.
async fn held_upstream() -> (std::net::SocketAddr, mpsc::Receiver<oneshot::Sender<()>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (arrived_tx, arrived_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
            let Ok(mut answer) = Message::from_vec(&buffer[..length]) else { continue };
            let (release, released) = oneshot::channel();
            if arrived_tx.send(release).await.is_err() || released.await.is_err() {
                return;
            }
            answer.metadata.message_type = MessageType::Response;
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
        }
    });
    (addr, arrived_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_in_flight_is_answered_before_the_server_closes() {
    let (upstream, mut arrived) = held_upstream().await;
    let config = quiver_doq::server_config().self_signed(["localhost"]).build().unwrap();
    let endpoint = quiver::Endpoint::server("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let addr = endpoint.local_addr();
    let server = DoqServer::builder(upstream).upstream_timeout(GUARD).build().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.serve_until(endpoint, shutdown, GUARD).await
        }
    });

    let first = client(addr);
    let query = tokio::spawn(async move { first.query("late.test.", RecordType::A).await });
    let release =
        guarded("the query reaching the upstream", arrived.recv()).await.expect("the query reached the upstream");
    stop.send(()).unwrap();

    // While the query is held, a new client gets nothing: its connection is refused, or (had it
    // slipped in before the drain began) its query stream is reset with DOQ_NO_ERROR.
    let latecomer = client(addr);
    let refused = guarded("the latecomer's query", latecomer.query("other.test.", RecordType::A)).await.unwrap_err();
    assert!(
        matches!(refused, DoqError::Connect { .. } | DoqError::StreamReset { code: quiver_doq::DOQ_NO_ERROR }),
        "{refused}"
    );

    // The upstream answers now; the query in flight gets that answer, then the server ends.
    release.send(()).unwrap();
    let answer = guarded("the query in flight", query).await.unwrap().expect("answered despite the shutdown");
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(guarded("the drain", serving).await.unwrap(), quiver::ServeEnd::Drained);
    assert_eq!(endpoint.stats().active_connections, 0);
}
