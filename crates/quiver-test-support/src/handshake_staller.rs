//! A client that starts QUIC handshakes and never lets them finish: the attack of a server's handshake
//! slots (issue 12, finding 1).
//!
//! Each of its connections is a real quiche client: its Initials are well formed, so the server
//! admits it and spends a handshake slot on it. The staller then throws away every packet the server
//! sends, and keeps sending what quiche's timers produce: ack-eliciting Initials (loss probes, ever
//! further apart), each of which restarts the server's idle timer. Only a handshake deadline on the
//! server ends such a connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest datagram the staller reads (and discards) or sends.
const MAX_DATAGRAM_BYTES: usize = 65_535;

/// What to attack, from where.
#[derive(Debug, Clone)]
pub struct StallerConfig {
    /// The staller's own address, e.g. `127.0.0.2:0`: a source of its own, so a test can tell its
    /// share of the server's per-source limits from an honest client's on 127.0.0.1.
    pub bind: SocketAddr,
    /// The server under attack.
    pub server: SocketAddr,
    /// The ALPN the server speaks: with another one the server would end the handshake at once.
    pub alpn: Vec<u8>,
    /// Handshakes to start (all at once).
    pub connections: usize,
}

/// A running staller; dropping it stops the attack.
#[derive(Debug)]
pub struct HandshakeStaller {
    task: JoinHandle<()>,
    sent: Arc<AtomicU64>,
    discarded: Arc<AtomicU64>,
}

impl HandshakeStaller {
    /// Binds `config.bind` and starts every handshake.
    ///
    /// # Errors
    /// Binding the socket, or quiche refusing to create a client connection.
    pub async fn start(config: StallerConfig) -> io::Result<Self> {
        let socket = UdpSocket::bind(config.bind).await?;
        let local = socket.local_addr()?;
        let mut quiche_config = quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(io::Error::other)?;
        quiche_config.set_application_protos(&[config.alpn.as_slice()]).map_err(io::Error::other)?;
        quiche_config.verify_peer(false);
        // No idle timeout of its own: the staller never gives up first.
        quiche_config.set_max_idle_timeout(0);
        let mut connections = Vec::with_capacity(config.connections);
        for _ in 0..config.connections {
            let scid: [u8; 16] = std::array::from_fn(|_| rand_byte());
            let scid = quiche::ConnectionId::from_vec(scid.to_vec());
            let conn = quiche::connect(Some("localhost"), &scid, local, config.server, &mut quiche_config)
                .map_err(io::Error::other)?;
            connections.push(conn);
        }
        let sent = Arc::new(AtomicU64::new(0));
        let discarded = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(stall(socket, connections, sent.clone(), discarded.clone()));
        Ok(Self { task, sent, discarded })
    }

    /// Datagrams sent to the server so far.
    pub fn datagrams_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Datagrams from the server thrown away so far.
    pub fn datagrams_discarded(&self) -> u64 {
        self.discarded.load(Ordering::Relaxed)
    }
}

impl Drop for HandshakeStaller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stall(
    socket: UdpSocket,
    mut connections: Vec<quiche::Connection>,
    sent: Arc<AtomicU64>,
    discarded: Arc<AtomicU64>,
) {
    let mut out = vec![0u8; MAX_DATAGRAM_BYTES];
    let mut incoming = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        let now = Instant::now();
        for conn in &mut connections {
            if conn.timeout_instant().is_some_and(|at| at <= now) {
                conn.on_timeout();
            }
            while let Ok((len, info)) = conn.send(&mut out) {
                if socket.send_to(&out[..len], info.to).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let wake = connections.iter().filter_map(quiche::Connection::timeout_instant).min();
        tokio::select! {
            _ = sleep_until(wake) => {}
            // Read only to throw away: nothing the server says reaches quiche.
            received = socket.recv_from(&mut incoming) => {
                if received.is_ok() {
                    discarded.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A byte from the process's randomness, without a dependency for it: SCIDs only need to differ
/// between the staller's connections and runs.
fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() as u8
}
