//! Small UDP services on loopback for tests that need something at the far end of a tunnel or a
//! forwarded port.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

/// Largest datagram a responder reads (anything the tests send over loopback).
const MAX_DATAGRAM_BYTES: usize = 65_535;

/// A UDP socket on 127.0.0.1 port 0 that answers each datagram with what `answer` returns for it
/// (nothing for `None`), on a thread of its own for the rest of the process; returns its address.
pub fn spawn_responder(mut answer: impl FnMut(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> SocketAddr {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the responder");
    let addr = socket.local_addr().expect("responder address");
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer) {
            if let Some(reply) = answer(&buffer[..length]) {
                let _ = socket.send_to(&reply, peer);
            }
        }
    });
    addr
}

/// A UDP echo server on 127.0.0.1: every datagram goes back to its sender.
pub fn spawn_echo() -> SocketAddr {
    spawn_responder(|datagram| Some(datagram.to_vec()))
}
