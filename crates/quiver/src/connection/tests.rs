//! The connection's stages and timers, driven end to end over an in-memory network: no sockets,
//! and no assertion on how long anything took (timeouts are short, real, and waited on as events).

use std::time::Duration;

use crate::memory::MemoryNetwork;
use crate::test_support::{Event, GUARD, Pki, Probe, client_on, connect_pair, guarded, server_on};
use crate::{CloseKind, ConnectError, ConnectionError};

/// Short enough to keep the suite fast; quiche's timers are real `Instant`s.
const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn handshake_then_awaiting_accept_then_running() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let server = server_on(&network, pki.server());
    let client = client_on(&network, pki.client());
    let (client_app, _) = Probe::new();
    let (connected, incoming) =
        tokio::join!(client.connect(server.local_addr(), "localhost", client_app), server.accept());
    let client_side = connected.expect("handshake completes");
    // Awaiting accept: established, acknowledged, no application yet.
    let incoming = incoming.expect("an incoming connection");
    assert_eq!(incoming.alpn(), b"quiver-test");
    assert!(!client_side.is_closed());
    let (server_app, mut events) = Probe::new();
    let server_side = incoming.start(server_app);
    assert_eq!(guarded("running", events.recv()).await, Some(Event::Established));
    assert!(server_side.stats().await.is_some(), "the running connection answers its handle");
}

#[tokio::test]
async fn a_full_accept_queue_refuses_with_connection_refused() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let server = server_on(&network, pki.server().accept_backlog(1));
    let client = client_on(&network, pki.client());
    let first = client.connect(server.local_addr(), "localhost", Probe::new().0).await.expect("first connects");
    // Nobody accepts: the second finds the queue full once its handshake completes.
    let second = client.connect(server.local_addr(), "localhost", Probe::new().0).await;
    let reason = match second {
        Ok(second) => guarded("refusal", second.closed()).await,
        Err(ConnectError::HandshakeFailed(reason)) => reason,
        Err(other) => panic!("unexpected {other:?}"),
    };
    assert_refused(&reason);
    assert!(!first.is_closed(), "the queued connection stays");
    assert_eq!(server.stats().connections_refused_backlog, 1);
}

#[tokio::test]
async fn a_dropped_incoming_connection_is_refused() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let (_server, _client, connected, incoming) = connect_pair(&network, pki.server(), pki.client()).await;
    drop(incoming.expect("incoming"));
    assert_refused(&guarded("refusal", connected.expect("connected").closed()).await);
}

#[tokio::test]
async fn close_ends_both_sides_with_the_reason() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let (_server, _client, connected, incoming) = connect_pair(&network, pki.server(), pki.client()).await;
    let (server_app, mut events) = Probe::new();
    let server_side = incoming.expect("incoming").start(server_app);
    assert_eq!(guarded("running", events.recv()).await, Some(Event::Established));
    connected.expect("connected").close(0x42, "bye");
    let reason = guarded("server close", server_side.closed()).await;
    let ConnectionError::PeerClosed(close) = &reason else { panic!("unexpected {reason:?}") };
    assert_eq!((close.kind(), close.code, close.reason.as_str()), (CloseKind::Application, 0x42, "bye"));
    assert!(reason.is_closed() && !reason.is_timeout());
    assert_eq!(guarded("application told", events.recv()).await, Some(Event::Closed(reason)));
}

#[tokio::test]
async fn the_idle_timeout_closes_a_quiet_connection() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let (_server, _client, connected, _incoming) =
        connect_pair(&network, pki.server().idle_timeout(SHORT), pki.client().idle_timeout(SHORT)).await;
    let reason = guarded("idle timeout", connected.expect("connected").closed()).await;
    assert_eq!(reason, ConnectionError::IdleTimeout);
    assert!(reason.is_timeout());
}

#[tokio::test]
async fn a_client_handshake_gives_up_at_its_deadline() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let client = client_on(&network, pki.client().handshake_timeout(SHORT));
    // Nobody is bound there: every Initial is lost.
    let nowhere = "127.0.0.1:9".parse().expect("literal address");
    let err = guarded("deadline", client.connect(nowhere, "localhost", Probe::new().0)).await.unwrap_err();
    assert!(matches!(err, ConnectError::TimedOut(_)), "{err:?}");
    assert!(err.is_timeout() && err.is_retryable());
}

/// A stream of datagrams the connection cannot decrypt (so they never reset its idle timer) must not
/// keep quiche's timer from firing: the timeout is checked on every turn of the loop, not only when
/// the timer branch wins the select.
#[tokio::test]
async fn the_idle_timeout_fires_under_a_flood_of_datagrams() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let (server, client, connected, _incoming) =
        connect_pair(&network, pki.server().idle_timeout(SHORT), pki.client().idle_timeout(SHORT)).await;
    let connection = connected.expect("connected");
    let scid = hex_decode(connection.trace_id());
    let (from, to) = (server.local_addr(), client.local_addr());
    let flood = tokio::spawn({
        let network = network.clone();
        async move {
            // A short header naming the client's connection, then bytes that fail authentication.
            let mut garbage = vec![0x40];
            garbage.extend_from_slice(&scid);
            garbage.resize(200, 0xa5);
            loop {
                for _ in 0..16 {
                    network.inject(from, to, &garbage);
                }
                tokio::task::yield_now().await;
            }
        }
    });
    let reason = tokio::time::timeout(GUARD, connection.closed()).await;
    flood.abort();
    assert_eq!(reason.expect("the idle timeout fired during the flood"), ConnectionError::IdleTimeout);
    assert!(client.stats().datagrams_received > 0, "the flood reached the client");
}

/// A handshake's TLS details left on a thread by a connection that never took them (it closed in the
/// same `recv`) must not be reported by the next connection there, e.g. one usable in 0-RTT before its
/// own handshake completed. Single-threaded runtime: every task runs on this thread.
#[tokio::test]
async fn a_0rtt_connection_never_reports_another_connections_tls_details() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let server = server_on(&network, pki.server().early_data(true));
    let client = client_on(&network, pki.client().early_data(true));
    let acceptor = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = acceptor.accept().await {
            incoming.start(Probe::new().0);
        }
    });
    let first = guarded("first", client.connect(server.local_addr(), "localhost", Probe::new().0)).await.unwrap();
    assert!(first.handshake().cipher.is_some(), "a full handshake reports its own details");
    first.close(0, "done");
    guarded("first closed", first.closed()).await;

    crate::handshake::leave_behind("LEFT_BEHIND_BY_ANOTHER_CONNECTION");
    let second = guarded("second", client.connect(server.local_addr(), "localhost", Probe::new().0)).await.unwrap();
    assert!(second.started_in_early_data(), "resumed with 0-RTT");
    assert_ne!(second.handshake().cipher, Some("LEFT_BEHIND_BY_ANOTHER_CONNECTION"));
    assert!(second.handshake().resumed);
}

fn assert_refused(reason: &ConnectionError) {
    match reason {
        ConnectionError::PeerClosed(close) => assert_eq!((close.kind(), close.code), (CloseKind::Transport, 0x2)),
        other => panic!("expected CONNECTION_REFUSED, got {other:?}"),
    }
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2).map(|at| u8::from_str_radix(&hex[at * 2..at * 2 + 2], 16).expect("hex trace ID")).collect()
}
