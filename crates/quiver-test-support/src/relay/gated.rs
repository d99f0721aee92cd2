//! A relay whose server-to-client direction can be held: while the gate is closed the client cannot
//! finish its handshake, so whatever it sends meanwhile is early data, deterministically.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::{ClientAddress, MAX_DATAGRAM_BYTES};

/// Server datagrams held while the gate is closed before more are dropped: a handshake's flight is a
/// handful, so this only bounds memory if a test forgets to open the gate.
const MAX_HELD_DATAGRAMS: usize = 1024;

/// A running gated relay; its tasks end when it is dropped (the gate's sender goes away).
#[derive(Debug)]
pub struct GatedRelay {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl GatedRelay {
    /// A relay in front of `server`, its gate open.
    pub async fn start(server: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay front"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay back"));
        back.connect(server).await.expect("connect relay back");
        let addr = front.local_addr().expect("front address");
        let (open, gate) = watch::channel(true);
        let client = ClientAddress::default();
        {
            let (front, back, client) = (front.clone(), back.clone(), client.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
                while let Ok((len, from)) = front.recv_from(&mut buffer).await {
                    client.remember(from);
                    let _ = back.send(&buffer[..len]).await;
                }
            });
        }
        tokio::spawn(async move {
            let mut gate = gate;
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
            loop {
                tokio::select! {
                    received = back.recv(&mut buffer) => {
                        let Ok(len) = received else { return };
                        if held.len() < MAX_HELD_DATAGRAMS {
                            held.push(buffer[..len].to_vec());
                        }
                    }
                    changed = gate.changed() => if changed.is_err() { return },
                }
                if *gate.borrow() {
                    let to = client.get();
                    for datagram in held.drain(..) {
                        if let Some(to) = to {
                            let _ = front.send_to(&datagram, to).await;
                        }
                    }
                }
            }
        });
        Self { addr, open }
    }

    /// Where the client sends.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens (releasing what was held) or closes the server-to-client direction.
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}
