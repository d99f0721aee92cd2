//! `UdpForwarder` on loopback: each local peer gets its own tunnel to the echo target and its own
//! answers; a target the proxy refuses is reported as an event.

mod support;

use std::time::Duration;

use quiver_masque::{ForwardEvent, UdpForwarder};
use support::{guarded, loopback_config, start_proxy, udp_echo};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Sends `payload` to the forwarder from `peer` until the echo comes back (the first datagram waits
/// for its tunnel to open; datagrams are unreliable, so it is resent after a quiet spell).
async fn echoed(peer: &UdpSocket, forwarder: std::net::SocketAddr, payload: &[u8]) {
    let mut buffer = vec![0u8; 2048];
    loop {
        peer.send_to(payload, forwarder).await.unwrap();
        if let Ok(received) = tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buffer)).await {
            let (length, from) = received.unwrap();
            assert_eq!(from, forwarder);
            assert_eq!(&buffer[..length], payload);
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_local_peer_gets_its_own_tunnel_and_answers() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let target = format!("127.0.0.1:{}", echo.port()).parse().unwrap();
    let forwarder = UdpForwarder::bind("127.0.0.1:0".parse().unwrap(), proxy.client(true), target).await.unwrap();
    let local = forwarder.local_addr();
    tokio::spawn(forwarder.run());
    let run = async {
        let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let second = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        echoed(&first, local, b"from the first peer").await;
        echoed(&second, local, b"from the second peer").await;
        echoed(&first, local, b"the first again").await;
        assert_eq!(proxy.proxy.stats().tunnels_opened, 2, "one tunnel per local peer");
    };
    guarded("the forwarded exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_is_reported() {
    let proxy = start_proxy(loopback_config());
    // 127.0.0.2 is outside the loopback rule (127.0.0.1/32): the proxy answers 403.
    let target = "127.0.0.2:53".parse().unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let forwarder = UdpForwarder::bind("127.0.0.1:0".parse().unwrap(), proxy.client(true), target)
        .await
        .unwrap()
        .on_event(move |event| {
            let _ = events_tx.send(event);
        });
    let local = forwarder.local_addr();
    tokio::spawn(forwarder.run());
    let run = async {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        peer.send_to(b"query", local).await.unwrap();
        match events.recv().await.unwrap() {
            ForwardEvent::OpenFailed { peer: from, error } => {
                assert_eq!(from, peer.local_addr().unwrap());
                assert!(error.to_string().contains("403"), "{error}");
            }
            other => panic!("unexpected event {other:?}"),
        }
    };
    guarded("the idle flow", run).await;
}
