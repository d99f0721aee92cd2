//! The relay with plain UDP sockets on loopback: byte-exact forwarding without impairments, counters that
//! show each impairment applied, and rebinds that the server sees as new addresses.

use std::net::SocketAddr;
use std::time::Duration;

use quiver_interop_runner::record::Leg;
use quiver_interop_runner::relay::{Direction, Impairments, RebindPlan, Relay, RelayConfig};
use tokio::net::UdpSocket;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(10);

/// A server that answers every datagram with its reverse; returns its address.
async fn reversing_server(bind: &str) -> SocketAddr {
    let socket = UdpSocket::bind(bind).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let mut reply = buf[..len].to_vec();
            reply.reverse();
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

async fn relay(server: SocketAddr, impairments: Impairments) -> Relay {
    let listen = if server.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" };
    Relay::start(RelayConfig { listen: listen.parse().unwrap(), server, impairments, seed: 9 }).await.unwrap()
}

#[tokio::test]
async fn no_impairment_forwards_everything_byte_exact() {
    for (bind, client_bind) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
        let server = reversing_server(bind).await;
        let relay = relay(server, Impairments::default()).await;
        let client = UdpSocket::bind(client_bind).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        for size in [1usize, 100, 1200, 1452, 9000] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            client.send_to(&payload, relay.local_addr()).await.unwrap();
            let (len, from) = timeout(GUARD, client.recv_from(&mut buf)).await.unwrap().unwrap();
            assert_eq!(from, relay.local_addr());
            let mut expected = payload.clone();
            expected.reverse();
            assert_eq!(&buf[..len], &expected[..]);
        }
        let outcome = relay.stop().await.unwrap();
        let c = outcome.counters;
        assert_eq!((c.to_server.received, c.to_server.delivered), (5, 5));
        assert_eq!((c.to_client.received, c.to_client.delivered), (5, 5));
        assert_eq!(c.to_server.dropped_rate + c.to_server.corrupted + c.to_client.corrupted, 0);
        assert_eq!(c.bindings, 1);
        // Each datagram recorded on both legs in both directions.
        assert_eq!(outcome.record.leg(Leg::ClientSide).count(), 10);
        assert_eq!(outcome.record.leg(Leg::ServerSide).count(), 10);
        let to_server: Vec<_> =
            outcome.record.leg(Leg::ServerSide).filter(|d| d.direction == Direction::ToServer).collect();
        assert!(to_server.iter().all(|d| d.dst == server));
    }
}

#[tokio::test]
async fn droplist_and_corruption_show_in_counters() {
    let server = reversing_server("127.0.0.1:0").await;
    let mut impairments = Impairments { droplist_to_server: [2, 3].into_iter().collect(), ..Impairments::default() };
    impairments.corrupt_to_client.percent = 100;
    let relay = relay(server, impairments).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 2000];
    let payload = vec![0x40u8; 100];
    let mut answers = 0;
    // Datagrams 2 and 3 are dropped; send until three answers came back.
    for _ in 0..5 {
        client.send_to(&payload, relay.local_addr()).await.unwrap();
        if let Ok(Ok((len, _))) = timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await {
            assert_eq!(len, 100);
            assert_eq!(buf[..len].iter().filter(|b| **b != 0x40).count(), 1, "exactly one byte corrupted");
            answers += 1;
        }
    }
    let c = relay.stop().await.unwrap().counters;
    assert_eq!(c.to_server.received, 5);
    assert_eq!(c.to_server.dropped_droplist, 2);
    assert_eq!(c.to_server.delivered, 3);
    assert_eq!(c.to_client.corrupted, c.to_client.received);
    assert_eq!(answers as u64, c.to_client.delivered);
}

/// Sends until the server sees the client from a source different from `previous`.
async fn wait_new_source(
    client: &UdpSocket,
    relay_addr: SocketAddr,
    server: &UdpSocket,
    previous: Option<SocketAddr>,
) -> SocketAddr {
    let mut buf = vec![0u8; 100];
    timeout(GUARD, async {
        loop {
            client.send_to(b"ping", relay_addr).await.unwrap();
            if let Ok(Ok((_, from))) = timeout(Duration::from_millis(50), server.recv_from(&mut buf)).await
                && Some(from) != previous
            {
                return from;
            }
        }
    })
    .await
    .expect("the server never saw a new source")
}

#[tokio::test]
async fn rebind_moves_the_servers_view_of_the_client() {
    for new_address in [false, true] {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let plan = RebindPlan { first: Duration::from_millis(300), every: None, new_address };
        let impairments = Impairments { rebind: Some(plan), ..Impairments::default() };
        let relay = relay(server.local_addr().unwrap(), impairments).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = wait_new_source(&client, relay.local_addr(), &server, None).await;
        let after = wait_new_source(&client, relay.local_addr(), &server, Some(before)).await;
        assert_ne!(before.port(), after.port());
        if new_address {
            assert_eq!(after.ip().to_string(), "127.0.0.2");
        } else {
            assert_eq!(after.ip(), before.ip());
        }
        let c = relay.stop().await.unwrap().counters;
        assert_eq!(c.rebinds, 1);
    }
}
