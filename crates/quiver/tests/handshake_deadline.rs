//! Issue 12, finding 1: a client that starts handshakes and never finishes them (it discards every
//! packet of the server and keeps probing, which restarts quiche's idle timer each time) must not keep
//! a server's handshake slots: the handshake deadline frees them, and the per-source share keeps one
//! host from taking every slot meanwhile.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use quiver::{AddressValidation, DropReason, Endpoint};
use quiver_test_support::handshake_staller::{HandshakeStaller, StallerConfig};
use support::echo::EchoClient;
use support::*;

/// The server's handshake deadline: short, so the test waits little for it.
const DEADLINE: Duration = Duration::from_millis(500);
/// The server's handshake slots. The staller asks for twice as many, so without a per-source share
/// it alone would fill them and the honest client would be refused.
const HANDSHAKE_SLOTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_dropped_at_the_deadline_and_an_honest_client_still_connects() {
    let identity = identity();
    let server = spawn_echo_server(
        server_builder(&identity)
            .address_validation(AddressValidation::Never)
            .max_handshakes_in_flight(HANDSHAKE_SLOTS)
            .handshake_timeout(DEADLINE)
            .build()
            .expect("server config"),
    );
    // Another loopback address: a source of its own for the server's per-source limits.
    let staller_addr: SocketAddr = "127.0.0.2:0".parse().expect("literal address");
    let staller = HandshakeStaller::start(StallerConfig {
        bind: staller_addr,
        server: server.local_addr(),
        alpn: echo::ALPN.to_vec(),
        connections: 2 * HANDSHAKE_SLOTS,
    })
    .await
    .expect("start the staller");

    // The staller holds what the server lets one source hold; the rest of its attempts are refused.
    wait_until("the staller to hold handshake slots and be refused more", || {
        let stats = server.stats();
        let refused = stats.dropped(DropReason::SourceHandshakeLimit) + stats.dropped(DropReason::HandshakeLimit);
        stats.handshakes_in_flight >= 1 && refused >= 1
    })
    .await;
    // Bound: one source never holds more than its share (1 of 4 slots here).
    assert!(server.stats().handshakes_in_flight <= 1, "{:?}", server.stats());
    let sent_while_holding = staller.datagrams_sent();

    // An honest client from 127.0.0.1 is served while the attack runs.
    let client = Endpoint::client(loopback(), client_builder(&identity).build().expect("client config"))
        .expect("client endpoint");
    let sent = payload(10_000, 1);
    let (app, results) = EchoClient::new(vec![sent.clone()]);
    let connection = guarded("the honest client's handshake", client.connect(server.local_addr(), "localhost", app))
        .await
        .expect("an honest client connects while the staller runs");
    assert!(guarded("echo", results).await.expect("echo")[0] == sent, "echoed bytes differ");
    guarded("close", connection.closed()).await;

    // Its handshakes end at the deadline (without one, each of its retransmitted Initials would keep
    // them alive), and the attack goes on regardless.
    wait_until("a stalled handshake to hit its deadline", || server.stats().handshake_timeouts >= 1).await;
    assert!(staller.datagrams_discarded() > 0, "the server answered and the staller threw it away");
    wait_until("the staller to send more", || staller.datagrams_sent() > sent_while_holding).await;
    assert!(server.stats().handshakes_in_flight <= 1, "still no more than its share: {:?}", server.stats());

    // Once the attack stops, what it held is given back: no handshake, no connection, no CID left.
    drop(staller);
    wait_until("every slot and CID to be freed", || {
        let stats = server.stats();
        stats.handshakes_in_flight == 0 && stats.active_connections == 0 && stats.routed_connection_ids == 0
    })
    .await;
}
