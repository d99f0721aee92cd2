//! Admission as the router executes it, over an in-memory network: Retry when configured, refusal
//! over a limit. The decisions themselves are tested without any network in `admission.rs`.

use crate::memory::MemoryNetwork;
use crate::test_support::{Pki, Probe, client_on, guarded, server_on};
use crate::{AddressValidation, CloseKind, ConnectError, ConnectionError};

#[tokio::test]
async fn a_server_that_always_validates_sends_a_retry_first() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let server = server_on(&network, pki.server().address_validation(AddressValidation::Always));
    let client = client_on(&network, pki.client());
    let (connected, incoming) =
        tokio::join!(client.connect(server.local_addr(), "localhost", Probe::new().0), server.accept());
    connected.expect("the client follows the Retry");
    assert!(incoming.is_some());
    // One Retry per Initial datagram of the first flight (a post-quantum ClientHello spans two).
    assert!(server.stats().retries_sent >= 1);
}

#[tokio::test]
async fn past_the_connection_limit_a_validated_client_is_refused() {
    let (network, pki) = (MemoryNetwork::default(), Pki::new());
    let server = server_on(
        &network,
        pki.server().max_connections(1).address_validation(AddressValidation::UnderLoad { handshakes_in_flight: 1000 }),
    );
    let client = client_on(&network, pki.client());
    let (first, _incoming) =
        tokio::join!(client.connect(server.local_addr(), "localhost", Probe::new().0), server.accept());
    first.expect("the first connects");
    // Over the limit: a Retry first (the client proves its address), then CONNECTION_REFUSED.
    match guarded("second", client.connect(server.local_addr(), "localhost", Probe::new().0)).await {
        Err(err @ ConnectError::HandshakeFailed(ConnectionError::PeerClosed(_))) => {
            let ConnectError::HandshakeFailed(ConnectionError::PeerClosed(close)) = &err else { unreachable!() };
            assert_eq!((close.kind(), close.code), (CloseKind::Transport, 0x2), "CONNECTION_REFUSED");
            assert!(err.is_retryable());
        }
        other => panic!("expected CONNECTION_REFUSED, got {other:?}"),
    }
    let stats = server.stats();
    assert!(stats.retries_sent >= 1 && stats.connections_refused >= 1, "{stats:?}");
}
