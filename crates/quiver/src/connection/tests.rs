//! The connection's stages and timers, driven end to end over an in-memory network: no sockets,
//! and no assertion on how long anything took (timeouts are short, real, and waited on as events).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::memory::MemoryNetwork;
use crate::test_support::{Event, GUARD, Pki, Probe, any_addr, client_on, connect_pair, guarded, server_on};
use crate::{
    ApplicationError, ApplicationOverQuic, CloseKind, ConnectError, ConnectionError, Endpoint, QuicConnection,
    ServerSecret,
};

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

/// A server that lost its state answers with a stateless reset carrying the token of the connection
/// ID the client sent to (RFC 9000 §10.3). After a migration that ID came in a NEW_CONNECTION_ID
/// frame, not in the transport parameters, and the client must still close at once: quiche 0.30
/// recognised only the transport parameters' token (vendor/README.md), so this client used to hang on
/// until its idle timeout.
#[tokio::test]
async fn a_stateless_reset_for_a_later_connection_id_closes_the_client() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let secret = || ServerSecret::from_bytes(&[7; 32]);
    // Far beyond the guard: an idle timeout can never pass for the reset.
    let idle_timeout = GUARD * 3;
    let before_restart = server_on(&network, pki.server().secret(secret()).idle_timeout(idle_timeout));
    let server_addr = before_restart.local_addr();
    let acceptor = before_restart.clone();
    tokio::spawn(async move {
        while let Some(incoming) = acceptor.accept().await {
            incoming.start(Probe::new().0);
        }
    });
    let client = Endpoint::builder()
        .memory(&network)
        .bind(any_addr())
        .bind(any_addr())
        .client(pki.client().idle_timeout(idle_timeout).build().expect("client config"))
        .build()
        .expect("client");
    let [_, second_socket] = client.local_addrs()[..] else { panic!("two sockets") };
    let (pokes, app) = Poked::new();
    let connection = guarded("connect", client.connect(server_addr, "localhost", app)).await.expect("connect");
    // The probe of the new path takes the next of the server's connection IDs.
    guarded("migrate", client.migrate(&connection, second_socket)).await.expect("migration");

    // The server restarts behind the same address: same secret, no connections.
    network.release(server_addr);
    let after_restart = Endpoint::builder()
        .memory(&network)
        .bind(server_addr)
        .server(pki.server().secret(secret()).build().expect("server config"))
        .build()
        .expect("restarted server");
    pokes.send(()).expect("the client application runs");
    let reason = guarded("the reset to close the client", connection.closed()).await;
    assert_eq!(reason, ConnectionError::StatelessReset, "{:?}", after_restart.stats());
    assert!(after_restart.stats().stateless_resets_sent >= 1, "{:?}", after_restart.stats());
}

/// A connection whose quiche `send` fails with an error other than `Done` (a wedged quiche
/// connection: every later call fails the same way) is closed at once with INTERNAL_ERROR and the
/// peer is told, instead of being held until its idle timeout.
#[tokio::test]
async fn a_connection_quiche_cannot_send_on_closes_with_internal_error() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    // Far beyond the guard: only the send failure can close the connection in time.
    let idle_timeout = GUARD * 3;
    let (_server, client, connected, incoming) =
        connect_pair(&network, pki.server().idle_timeout(idle_timeout), pki.client().idle_timeout(idle_timeout)).await;
    let (server_app, mut events) = Probe::new();
    let server_side = incoming.expect("incoming").start(server_app);
    assert_eq!(guarded("running", events.recv()).await, Some(Event::Established));
    let client_side = connected.expect("connected");

    // One failure: the CONNECTION_CLOSE still goes out on the next flush.
    client_side.fail_sends(quiche::Error::InvalidState, 1).await;
    let reason = guarded("client closed", client_side.closed()).await;
    assert_internal_error(&reason, false);
    assert_internal_error(&guarded("server told", server_side.closed()).await, true);
    assert_eq!(client.stats().connections_send_failed, 1);
}

/// When quiche cannot even send the CONNECTION_CLOSE, the connection is dropped at once.
#[tokio::test]
async fn a_connection_quiche_never_sends_on_again_is_dropped_at_once() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let idle_timeout = GUARD * 3;
    let (_server, client, connected, _incoming) =
        connect_pair(&network, pki.server().idle_timeout(idle_timeout), pki.client().idle_timeout(idle_timeout)).await;
    let client_side = connected.expect("connected");
    client_side.fail_sends(quiche::Error::InvalidState, usize::MAX).await;
    let reason = guarded("client dropped", client_side.closed()).await;
    assert_internal_error(&reason, false);
    let ConnectionError::LocallyClosed(close) = &reason else { unreachable!() };
    assert!(close.reason.contains("cannot send"), "{close:?}");
    assert_eq!(client.stats().connections_send_failed, 1);
}

fn assert_internal_error(reason: &ConnectionError, by_peer: bool) {
    let close = match (reason, by_peer) {
        (ConnectionError::PeerClosed(close), true) | (ConnectionError::LocallyClosed(close), false) => close,
        (other, _) => panic!("expected INTERNAL_ERROR (by the peer: {by_peer}), got {other:?}"),
    };
    assert_eq!((close.kind(), close.code), (CloseKind::Transport, 0x1), "{close:?}");
}

/// `tls13_ciphers` restricts the TLS 1.3 cipher suites: ChaCha20 when both sides allow only it,
/// and when either side does (the interop runner's `chacha20` case restricts both).
#[tokio::test]
async fn tls13_ciphers_restrict_the_handshake_to_chacha20() {
    const CHACHA20: &str = "TLS_CHACHA20_POLY1305_SHA256";
    for (server_restricted, client_restricted) in [(true, true), (false, true), (true, false)] {
        let (network, pki) = (MemoryNetwork::default(), Pki::new());
        let (mut server_config, mut client_config) = (pki.server(), pki.client());
        if server_restricted {
            server_config = server_config.tls13_ciphers([CHACHA20]);
        }
        if client_restricted {
            client_config = client_config.tls13_ciphers([CHACHA20]);
        }
        let (_server, _client, connected, incoming) = connect_pair(&network, server_config, client_config).await;
        let client_side = connected.expect("connected");
        let case = format!("server restricted: {server_restricted}, client restricted: {client_restricted}");
        assert_eq!(client_side.handshake().cipher, Some(CHACHA20), "{case}");
        let server_side = incoming.expect("incoming").start(Probe::new().0);
        assert_eq!(server_side.handshake().cipher, Some(CHACHA20), "{case}");
    }
}

/// A client application that sends a few bytes on a new stream each time the test pokes it: the way
/// to make a quiet connection send a packet when the test wants one.
struct Poked {
    pokes: mpsc::UnboundedReceiver<()>,
    unsent: usize,
    next_stream: u64,
}

impl Poked {
    fn new() -> (mpsc::UnboundedSender<()>, Self) {
        let (sender, pokes) = mpsc::unbounded_channel();
        (sender, Self { pokes, unsent: 0, next_stream: 0 })
    }
}

impl ApplicationOverQuic for Poked {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    async fn wait_for_data(&mut self) -> Result<(), ApplicationError> {
        match self.pokes.recv().await {
            Some(()) => self.unsent += 1,
            None => std::future::pending().await,
        }
        Ok(())
    }

    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        while self.unsent > 0 && conn.stream_send(self.next_stream, b"poke", true).is_ok() {
            self.unsent -= 1;
            // Client-initiated bidirectional streams: 0, 4, 8, ...
            self.next_stream += 4;
        }
        Ok(())
    }
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
