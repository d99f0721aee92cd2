//! Loopback end-to-end runs with Quiver on both sides of the echo protocol.

mod support;

use std::time::Duration;

use quiver::{ConnectError, ConnectionError, Endpoint};
use support::echo::{EchoClient, EchoServer};
use support::*;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_echoes_one_mib_byte_exact() {
    let identity = identity();
    let server = spawn_echo_server(server_builder(&identity).build().unwrap());
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let sent = payload(MIB, 1);
    let (app, results) = EchoClient::new(vec![sent.clone()]);
    let connection = guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
    assert_eq!(connection.alpn(), b"echo");
    let echoed = guarded("echo", results).await.unwrap();
    assert!(echoed[0] == sent, "echoed bytes differ from sent bytes");
    let reason = guarded("close", connection.closed()).await;
    assert!(matches!(reason, ConnectionError::LocallyClosed(ref close) if close.is_no_error()), "{reason:?}");
}

async fn echo_many_connections(connections: usize, bytes_each: usize) {
    let identity = identity();
    let server = spawn_echo_server(server_builder(&identity).build().unwrap());
    // All connections share one client socket: the client's router demultiplexes them by CID.
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let mut tasks = Vec::new();
    for index in 0..connections {
        let client = client.clone();
        let server_addr = server.local_addr();
        tasks.push(tokio::spawn(async move {
            let sent = payload(bytes_each, index as u64);
            let (app, results) = EchoClient::new(vec![sent.clone()]);
            let connection = client.connect(server_addr, "localhost", app).await.expect("connect");
            let echoed = results.await.expect("results");
            assert!(echoed[0] == sent, "connection {index}: echoed bytes differ");
            connection.closed().await;
        }));
    }
    for task in tasks {
        guarded("echo task", task).await.unwrap();
    }
    assert_eq!(client.local_addrs().len(), 1);
    let stats = client.stats();
    assert_eq!(stats.connections_opened, connections as u64);
    guarded("client idle", client.wait_idle()).await;
    guarded("server idle", server.wait_idle()).await;
    assert_eq!(server.stats().connections_accepted, connections as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_echo_one_mib_each() {
    echo_many_connections(200, MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_share_one_client_socket() {
    echo_many_connections(50, 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_connection() {
    let identity = identity();
    let server = spawn_echo_server(server_builder(&identity).build().unwrap());
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    // More streams than the server's initial stream limit (100): the client must wait for credit.
    let sent: Vec<Vec<u8>> = (0..250).map(|index| payload(index * 97, index as u64)).collect();
    let (app, results) = EchoClient::new(sent.clone());
    guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
    let echoed = guarded("echo", results).await.unwrap();
    assert_eq!(echoed, sent);
}

#[tokio::test]
async fn idle_timeout_closes_both_ends() {
    let identity = identity();
    let idle = Duration::from_millis(300);
    let server_endpoint =
        Endpoint::server(loopback(), server_builder(&identity).idle_timeout(idle).build().unwrap()).unwrap();
    let client = Endpoint::client(loopback(), client_builder(&identity).idle_timeout(idle).build().unwrap()).unwrap();
    let (app, _results) = EchoClient::new(vec![b"x".to_vec()]);
    let (client_side, incoming) = tokio::join!(
        client.connect(server_endpoint.local_addr(), "localhost", app.keep_open()),
        server_endpoint.accept()
    );
    let client_side = client_side.unwrap();
    let server_side = incoming.expect("incoming").start(EchoServer::new());
    assert_eq!(guarded("client close", client_side.closed()).await, ConnectionError::IdleTimeout);
    assert_eq!(guarded("server close", server_side.closed()).await, ConnectionError::IdleTimeout);
    assert!(client_side.is_closed() && server_side.is_closed());
    assert!(client_side.stats().await.is_none(), "no stats from a closed connection");
}

#[tokio::test]
async fn connecting_to_a_dead_port_times_out_with_a_typed_error() {
    let identity = identity();
    // A bound socket that never answers: nothing else can take the port during the test.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let timeout = Duration::from_millis(400);
    let client =
        Endpoint::client(loopback(), client_builder(&identity).handshake_timeout(timeout).build().unwrap()).unwrap();
    let (app, _) = EchoClient::new(vec![]);
    let err = guarded("connect", client.connect(silent.local_addr().unwrap(), "localhost", app)).await.unwrap_err();
    assert!(matches!(err, ConnectError::TimedOut(waited) if waited == timeout), "{err:?}");
    guarded("client idle", client.wait_idle()).await;
}

#[tokio::test]
async fn wrong_certificate_fails_the_handshake() {
    let server = spawn_echo_server(server_builder(&identity()).build().unwrap());
    // Trusts a different certificate than the one the server presents.
    let client = Endpoint::client(loopback(), client_builder(&identity()).build().unwrap()).unwrap();
    let (app, _) = EchoClient::new(vec![]);
    let err = guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap_err();
    assert!(matches!(err, ConnectError::HandshakeFailed(_)), "{err:?}");
}

/// A server and a client endpoint, and one idle connection between them: the client's handle (or error)
/// and the server's not yet started `IncomingConnection`. The endpoints must outlive the connection.
async fn connect_idle_pair()
-> (Endpoint, Endpoint, Result<quiver::ConnectionHandle, ConnectError>, Option<quiver::IncomingConnection>) {
    let identity = identity();
    let server = Endpoint::server(loopback(), server_builder(&identity).build().unwrap()).unwrap();
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let (app, _) = EchoClient::new(vec![]);
    let (connected, incoming) =
        tokio::join!(client.connect(server.local_addr(), "localhost", app.keep_open()), server.accept());
    (server, client, connected, incoming)
}

#[tokio::test]
async fn dropping_an_incoming_connection_refuses_it() {
    let (_server, _client, connected, incoming) = connect_idle_pair().await;
    drop(incoming.expect("incoming"));
    let reason = guarded("close", connected.unwrap().closed()).await;
    match reason {
        ConnectionError::PeerClosed(close) => assert_eq!((close.is_application, close.code), (false, 0x2)),
        other => panic!("expected CONNECTION_REFUSED, got {other:?}"),
    }
}

#[tokio::test]
async fn handle_close_sends_the_application_code_to_the_peer() {
    let (_server, _client, connected, incoming) = connect_idle_pair().await;
    let server_side = incoming.unwrap().start(EchoServer::new());
    let client_side = connected.unwrap();
    assert!(server_side.stats().await.is_some());
    server_side.close(0x42, "bye");
    match guarded("client close", client_side.closed()).await {
        ConnectionError::PeerClosed(close) => {
            assert_eq!((close.is_application, close.code, close.reason.as_str()), (true, 0x42, "bye"));
        }
        other => panic!("unexpected close: {other:?}"),
    }
    assert!(matches!(guarded("server close", server_side.closed()).await, ConnectionError::LocallyClosed(_)));
}

#[tokio::test]
async fn endpoint_close_ends_every_connection() {
    let identity = identity();
    let server = spawn_echo_server(server_builder(&identity).build().unwrap());
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let (app, _) = EchoClient::new(vec![]);
    let connection = client.connect(server.local_addr(), "localhost", app.keep_open()).await.unwrap();
    server.close();
    guarded("server idle", server.wait_idle()).await;
    assert!(matches!(guarded("client close", connection.closed()).await, ConnectionError::PeerClosed(_)));
    assert!(server.accept().await.is_none());
}

#[tokio::test]
async fn keylog_file_receives_tls_secrets() {
    let identity = identity();
    let path = std::env::temp_dir().join(format!("quiver-keylog-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let server = spawn_echo_server(server_builder(&identity).keylog_path(&path).build().unwrap());
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let (app, results) = EchoClient::new(vec![b"secret".to_vec()]);
    guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
    guarded("echo", results).await.unwrap();
    let keylog = std::fs::read_to_string(&path).unwrap();
    // NSS key log format: one "LABEL <client_random hex> <secret hex>" line per secret.
    for label in ["CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"] {
        let line = keylog.lines().find(|line| line.starts_with(label)).unwrap_or_else(|| panic!("no {label}"));
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[1].len(), 64, "client random is 32 bytes of hex: {line}");
    }
    std::fs::remove_file(&path).ok();
}
