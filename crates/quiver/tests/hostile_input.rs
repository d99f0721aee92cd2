//! The server under garbage: random datagrams, truncated and forged Initials, and an application that
//! panics. Nothing may crash, every dropped datagram is counted by reason, and service continues.

mod support;

use quiver::{ApplicationError, ApplicationOverQuic, ConnectionError, DropReason, Endpoint, QuicConnection};
use rand::{Rng, RngCore, SeedableRng};
use support::echo::{EchoClient, EchoServer};
use support::*;

/// A well-formed QUIC v1 Initial header with the given DCID, padded with random bytes to `len`.
fn forged_initial(rng: &mut impl RngCore, dcid_len: u8, len: usize) -> Vec<u8> {
    let mut packet = vec![0xc3, 0x00, 0x00, 0x00, 0x01, dcid_len];
    packet.extend((0..dcid_len).map(|_| rng.next_u32() as u8));
    packet.push(8);
    packet.extend((0..8).map(|_| rng.next_u32() as u8));
    // Token length 0, then a 2-byte varint payload length, then "encrypted" garbage.
    packet.push(0x00);
    packet.extend_from_slice(&[0x44, 0xd0]);
    while packet.len() < len {
        packet.push(rng.next_u32() as u8);
    }
    packet.truncate(len);
    packet
}

// Current-thread runtime: the router and the test never run at the same instant, so a counter snapshot
// is consistent (every datagram read has exactly one outcome).
#[tokio::test]
async fn garbage_and_forged_initials_are_dropped_counted_and_harmless() {
    let identity = identity();
    let server = spawn_echo_server(server_builder(&identity).build().unwrap());
    let server_addr = server.local_addr();
    let attacker = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);

    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    for _ in 0..10_000 {
        let len = rng.random_range(1..=1500);
        let mut garbage = vec![0u8; len];
        rng.fill_bytes(&mut garbage);
        datagrams.push(garbage);
    }
    // Truncated Initials: every length from a bare first byte to one byte short of the minimum.
    let truncated: Vec<Vec<u8>> =
        (1..1200).step_by(7).map(|len| forged_initial(&mut rng, 8, 1200)[..len].to_vec()).collect();
    let truncated_count = truncated.len() as u64;
    datagrams.extend(truncated);
    // Full-size Initials with valid headers and garbage payloads: they must fail decryption, not spawn.
    let forged_count = 200u64;
    datagrams.extend((0..forged_count).map(|_| forged_initial(&mut rng, 8, 1200)));
    // Initials with a DCID below the 8-byte minimum.
    datagrams.extend((0..50).map(|_| forged_initial(&mut rng, 4, 1200)));

    let total = datagrams.len() as u64;
    for (index, datagram) in datagrams.iter().enumerate() {
        attacker.send_to(datagram, server_addr).await.unwrap();
        // Pace in chunks so the kernel's receive buffer never overflows (that drop would be uncounted).
        if index % 256 == 255 {
            let expected = index as u64 + 1;
            wait_until("router to read the chunk", || server.stats().datagrams_received >= expected).await;
        }
    }
    wait_until("router to read everything", || server.stats().datagrams_received >= total).await;

    let stats = server.stats();
    assert_eq!(stats.datagrams_received, total, "{stats:?}");
    assert_eq!(stats.dropped_total(), total, "every garbage datagram is dropped: {stats:?}");
    assert_eq!(stats.datagrams_delivered, 0);
    // Truncations shorter than the 14-byte header (lengths 1 and 8) cannot even be parsed; every longer
    // one is a recognisable Initial below 1200 bytes. Random garbage adds to both counters.
    assert!(stats.dropped(DropReason::InitialTooShort) >= truncated_count - 2, "{stats:?}");
    assert_eq!(stats.dropped(DropReason::InvalidInitial), forged_count, "{stats:?}");
    assert_eq!(stats.dropped(DropReason::InvalidInitialCid), 50, "{stats:?}");
    assert_eq!(stats.active_connections, 0, "no connection task was spawned for garbage");
    let by_reason: u64 = stats.drops().map(|(_, count)| count).sum();
    assert_eq!(by_reason, total);

    // And the server still serves.
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let sent = payload(100_000, 9);
    let (app, results) = EchoClient::new(vec![sent.clone()]);
    guarded("connect after garbage", client.connect(server_addr, "localhost", app)).await.unwrap();
    assert_eq!(guarded("echo after garbage", results).await.unwrap()[0], sent);
}

/// Panics on the first stream data it sees.
struct Panicker;

impl ApplicationOverQuic for Panicker {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        if conn.readable().len() > 0 {
            panic!("application bug");
        }
        Ok(())
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_application_closes_only_its_connection() {
    let identity = identity();
    let server = Endpoint::server(loopback(), server_builder(&identity).build().unwrap()).unwrap();
    let acceptor = server.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Some(incoming) = acceptor.accept().await {
            if std::mem::take(&mut first) {
                incoming.start(Panicker);
            } else {
                incoming.start(EchoServer::new());
            }
        }
    });
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let (app, _) = EchoClient::new(vec![b"boom".to_vec()]);
    let doomed = guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
    match guarded("close", doomed.closed()).await {
        ConnectionError::PeerClosed(close) => assert_eq!((close.is_application, close.code), (false, 0x1)),
        other => panic!("expected INTERNAL_ERROR from the server, got {other:?}"),
    }
    let (app, results) = EchoClient::new(vec![b"still here".to_vec()]);
    guarded("connect again", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
    assert_eq!(guarded("echo", results).await.unwrap()[0], b"still here");
}
