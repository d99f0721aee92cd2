//! Endpoints with several sockets, one router each: connections spread over them, and a packet that
//! lands on a socket other than its connection's (after a client's address changed, the kernel's
//! `SO_REUSEPORT` hash picks another socket) is forwarded to the router that owns the connection.

mod support;

use quiver::{ConnectionError, ConnectionHandle, DropReason, Endpoint};
use support::echo::{EchoClient, EchoServer};
use support::*;
use tokio::sync::mpsc;

/// Parses a connection's trace ID (its first source connection ID, in hex) back into bytes.
fn cid_from_trace_id(trace_id: &str) -> Vec<u8> {
    (0..trace_id.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&trace_id[at..at + 2], 16).expect("hex trace ID"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_on_the_wrong_socket_reaches_its_connection() {
    let identity = identity();
    // Two sockets on two ports of one address, so a test can aim at either.
    let server = Endpoint::builder()
        .bind(loopback())
        .bind(loopback())
        .server(server_builder(&identity).build().unwrap())
        .build()
        .unwrap();
    let [first_socket, second_socket] = server.local_addrs()[..] else { panic!("two sockets") };
    let (incoming_tx, mut incoming_rx) = tokio::sync::mpsc::channel(1);
    let acceptor = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = acceptor.accept().await {
            let _ = incoming_tx.send(incoming.start(EchoServer::new())).await;
        }
    });

    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let sent = payload(200_000, 3);
    let (app, results) = EchoClient::new(vec![sent.clone()]);
    let client_side = guarded("connect", client.connect(first_socket, "localhost", app.keep_open())).await.unwrap();
    assert_eq!(guarded("echo", results).await.unwrap()[0], sent);
    let server_side = guarded("accepted", incoming_rx.recv()).await.unwrap();
    let server_cid = cid_from_trace_id(server_side.trace_id());
    assert_eq!(server_cid.len(), quiver::LOCAL_CID_LEN);
    assert_eq!(server_cid[0], 0, "the connection belongs to the first socket's router");

    // A short-header packet for that connection, sent to the second socket. (Its payload does not
    // decrypt, so quiche discards it; what matters is that the router delivered it to the connection.)
    let before = server.stats();
    let mut packet = vec![0x40];
    packet.extend_from_slice(&server_cid);
    packet.extend_from_slice(&[0x5a; 40]);
    let stray = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    stray.send_to(&packet, second_socket).await.unwrap();
    // Forwarded by the second router, then delivered or dropped by the first: wait for both.
    wait_until("the stray packet's outcome", || {
        let stats = server.stats();
        stats.datagrams_forwarded > before.datagrams_forwarded
            && stats.datagrams_delivered + stats.dropped_total() == stats.datagrams_received
    })
    .await;
    let after = server.stats();
    assert_eq!(after.datagrams_forwarded, before.datagrams_forwarded + 1, "{after:?}");
    // Delivered, not dropped (the client may still be acknowledging, so deliveries can be more).
    assert!(after.datagrams_delivered > before.datagrams_delivered, "{after:?}");
    assert_eq!(after.dropped_total(), before.dropped_total(), "{after:?}");

    // A packet naming a router the endpoint does not have is simply unknown.
    packet[1] = 9;
    stray.send_to(&packet, second_socket).await.unwrap();
    wait_until("the unknown packet's drop", || {
        server.stats().dropped(DropReason::UnknownConnection) > after.dropped(DropReason::UnknownConnection)
    })
    .await;

    // The connection is unharmed.
    assert!(!server_side.is_closed() && !client_side.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_sockets_share_one_port_and_serve_many_clients() {
    let identity = identity();
    let server = Endpoint::builder()
        .bind_reuseport(loopback(), 3)
        .server(server_builder(&identity).build().unwrap())
        .build()
        .unwrap();
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 3);
    assert!(addrs.iter().all(|addr| *addr == addrs[0]), "one port for the group: {addrs:?}");
    let acceptor = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = acceptor.accept().await {
            incoming.start(EchoServer::new());
        }
    });
    // Separate client sockets give separate 4-tuples, which the kernel spreads over the group.
    let mut tasks = Vec::new();
    for index in 0..24u64 {
        let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
        let target = addrs[0];
        tasks.push(tokio::spawn(async move {
            let sent = payload(50_000, index);
            let (app, results) = EchoClient::new(vec![sent.clone()]);
            client.connect(target, "localhost", app).await.expect("connect");
            assert!(results.await.expect("echo")[0] == sent, "connection {index} echoed wrong bytes");
        }));
    }
    for task in tasks {
        guarded("client", task).await.unwrap();
    }
    assert_eq!(server.stats().connections_accepted, 24);
    assert_eq!(server.stats().dropped_total(), 0, "{:?}", server.stats());
}

/// An echo server (its accepted connections' handles come out of the receiver) and a client with two
/// sockets: think Wi-Fi and cellular.
fn echo_server_and_two_socket_client() -> (Endpoint, mpsc::Receiver<ConnectionHandle>, Endpoint) {
    let identity = identity();
    let server = Endpoint::server(loopback(), server_builder(&identity).build().unwrap()).unwrap();
    let (incoming_tx, incoming_rx) = mpsc::channel(4);
    let acceptor = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = acceptor.accept().await {
            let _ = incoming_tx.try_send(incoming.start(EchoServer::new()));
        }
    });
    let client = Endpoint::builder()
        .bind(loopback())
        .bind(loopback())
        .client(client_builder(&identity).build().unwrap())
        .build()
        .unwrap();
    (server, incoming_rx, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_migrates_to_its_other_socket() {
    let (server, mut incoming_rx, client) = echo_server_and_two_socket_client();
    let [first_socket, second_socket] = client.local_addrs()[..] else { panic!("two sockets") };
    let sent = payload(1_000_000, 11);
    let (app, results) = EchoClient::new(vec![sent.clone()]);
    let connection =
        guarded("connect", client.connect(server.local_addr(), "localhost", app.keep_open())).await.unwrap();
    assert!(guarded("echo", results).await.unwrap()[0] == sent);
    let server_side = guarded("accepted", incoming_rx.recv()).await.unwrap();
    assert_eq!(connection.stats().await.unwrap().local_addr, Some(first_socket));

    assert_eq!(
        client.migrate(&connection, "127.0.0.1:1".parse().unwrap()).await,
        Err(quiver::MigrateError::UnknownLocalAddress("127.0.0.1:1".parse().unwrap()))
    );
    // Returns once the server has answered on the new path and the connection runs there.
    guarded("migrate", client.migrate(&connection, second_socket)).await.expect("migration");
    let stats = connection.stats().await.expect("still open");
    assert_eq!(stats.local_addr, Some(second_socket), "{stats:?}");
    // The new path carries the connection: the server hears the close sent on it.
    connection.close(0, "moved and done");
    match guarded("server side closed", server_side.closed()).await {
        ConnectionError::PeerClosed(close) => assert_eq!((close.is_application, close.code), (true, 0)),
        other => panic!("the server did not hear the close: {other:?}"),
    }
}

/// Ignored in the suite because about one run in twenty stalls (a known limit, see
/// `docs/architecture.md`): when the client's PATH_RESPONSE to the server's own challenge is dropped in
/// the server's full inbound queue, quiche 0.30 never challenges again (the challenge's packet was
/// acknowledged), so the server stays bound by the anti-amplification limit on the client's new path.
/// Run it with `cargo test -p quiver --test multi_socket -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stalls about once in twenty runs: quiche does not re-challenge after a lost PATH_RESPONSE"]
async fn a_client_migrates_in_the_middle_of_a_transfer() {
    let (server, _incoming, client) = echo_server_and_two_socket_client();
    let [_, second_socket] = client.local_addrs()[..] else { panic!("two sockets") };
    // Large enough that the echo is still running when the move is done: it takes a few
    // milliseconds, the echo about a second on loopback.
    let sent = payload(100_000_000, 12);
    let (app, results) = EchoClient::new(vec![sent.clone()]);
    let connection = guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
    // Move once the echo is flowing both ways (packets in flight on the old path).
    guarded("the echo to start", async {
        while connection.stats().await.is_some_and(|stats| stats.bytes_received < 2_000_000) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    guarded("migrate", client.migrate(&connection, second_socket)).await.expect("migration mid-transfer");
    let echoed = guarded("the rest of the echo", results).await.expect("the echo completed");
    assert!(echoed[0] == sent, "bytes differ after the migration");
    assert!(client.stats().datagrams_received > 0);
}
