//! A lossy relay: each direction impaired on its own ([`Impairment`]): loss, duplication, reordering
//! (a packet held back until the next N have gone ahead of it) and a fixed plus jittered delay.
//! Decisions come from a seeded generator, so the k-th datagram of a direction meets the same fate
//! in every run with the same seed (which datagram is k-th still depends on the stacks' timing).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ClientAddress, MAX_DATAGRAM_BYTES};

/// A held-back packet goes out after this long even if fewer than N packets followed it, so that the
/// last packet of a burst is late rather than lost.
const MAX_REORDER_HOLD: Duration = Duration::from_millis(5);

/// Datagrams waiting in one direction (held back or delayed) before more are dropped: bounds the
/// relay's memory whatever the peers send. 4096 full-size QUIC packets is far more than any
/// congestion window here.
const MAX_QUEUED_DATAGRAMS: usize = 4096;

/// What happens to the datagrams going one way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a forwarded datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back ...
    pub reorder: f64,
    /// ... until this many later datagrams went ahead of it (or [`MAX_REORDER_HOLD`] passed).
    pub reorder_distance: usize,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter`, per datagram (reorders too, when larger than the gap
    /// between datagrams).
    pub jitter: Duration,
}

impl Impairment {
    /// Forward everything at once, untouched.
    pub const NONE: Self = Self {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_distance: 0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// `loss` of the datagrams dropped and `reorder` of them overtaken by the next `distance`.
    pub fn lossy(loss: f64, reorder: f64, distance: usize) -> Self {
        Self { loss, reorder, reorder_distance: distance, ..Self::NONE }
    }
}

/// What one direction of the relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams that arrived at the relay.
    pub received: u64,
    /// Dropped on purpose (loss).
    pub dropped: u64,
    /// Dropped because [`MAX_QUEUED_DATAGRAMS`] were already waiting.
    pub overflowed: u64,
    /// Sent an extra time.
    pub duplicated: u64,
    /// Held back behind later datagrams.
    pub reordered: u64,
    /// Sent on (duplicates included).
    pub sent: u64,
}

impl DirectionStats {
    /// The share of received datagrams dropped on purpose.
    pub fn loss_ratio(&self) -> f64 {
        self.dropped as f64 / self.received.max(1) as f64
    }
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    dropped: AtomicU64,
    overflowed: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    sent: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// SplitMix64: small, fast, and good enough to decide a datagram's fate reproducibly.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in `0.0..1.0`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.unit() < probability
    }
}

/// Where a direction sends what it forwards.
#[derive(Debug, Clone)]
enum Destination {
    /// The server, through the relay's server-side socket (connected).
    Server(Arc<UdpSocket>),
    /// The client's latest address, through the client-side socket.
    Client(Arc<UdpSocket>, ClientAddress),
}

impl Destination {
    async fn send(&self, datagram: &[u8]) {
        // A send error (the peer's socket is gone) is just one more lost datagram.
        let _ = match self {
            Self::Server(socket) => socket.send(datagram).await,
            Self::Client(socket, client) => {
                let Some(to) = client.get() else { return };
                socket.send_to(datagram, to).await
            }
        };
    }
}

/// One direction: impairs what `receive` reads and sends it to `destination`.
struct Line {
    impairment: Impairment,
    rng: Rng,
    counters: Arc<Counters>,
    destination: Destination,
    /// Held back: the datagram, how many more must overtake it, and when it goes anyway.
    held: VecDeque<(Vec<u8>, usize, Instant)>,
    /// Delayed: release time, sequence number (keeps equal times in order), datagram.
    delayed: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    sequence: u64,
}

impl Line {
    fn queued(&self) -> usize {
        self.held.len() + self.delayed.len()
    }

    async fn on_datagram(&mut self, datagram: &[u8]) {
        bump(&self.counters.received);
        if self.rng.chance(self.impairment.loss) {
            bump(&self.counters.dropped);
            return;
        }
        let copies = if self.rng.chance(self.impairment.duplicate) { 2 } else { 1 };
        if copies == 2 {
            bump(&self.counters.duplicated);
        }
        for _ in 0..copies {
            if self.queued() >= MAX_QUEUED_DATAGRAMS {
                bump(&self.counters.overflowed);
                continue;
            }
            if self.impairment.reorder_distance > 0 && self.rng.chance(self.impairment.reorder) {
                bump(&self.counters.reordered);
                let until = Instant::now() + MAX_REORDER_HOLD;
                self.held.push_back((datagram.to_vec(), self.impairment.reorder_distance, until));
                continue;
            }
            self.emit(datagram.to_vec()).await;
            // One more datagram went ahead of everything held.
            for held in &mut self.held {
                held.1 = held.1.saturating_sub(1);
            }
            self.release_held(Instant::now()).await;
        }
    }

    /// Releases held datagrams that enough others overtook, or that waited long enough.
    async fn release_held(&mut self, now: Instant) {
        while let Some(index) = self.held.iter().position(|(_, remaining, until)| *remaining == 0 || *until <= now) {
            if let Some((datagram, _, _)) = self.held.remove(index) {
                self.emit(datagram).await;
            }
        }
    }

    /// Sends now, or after the delay.
    async fn emit(&mut self, datagram: Vec<u8>) {
        let Impairment { delay, jitter, .. } = self.impairment;
        if delay.is_zero() && jitter.is_zero() {
            self.send(&datagram).await;
            return;
        }
        let extra = jitter.mul_f64(self.rng.unit());
        self.sequence += 1;
        self.delayed.push(Reverse((Instant::now() + delay + extra, self.sequence, datagram)));
    }

    async fn send(&self, datagram: &[u8]) {
        self.destination.send(datagram).await;
        bump(&self.counters.sent);
    }

    /// When the next held or delayed datagram is due.
    fn next_deadline(&self) -> Option<Instant> {
        let held = self.held.iter().map(|(_, _, until)| *until).min();
        let delayed = self.delayed.peek().map(|Reverse((at, _, _))| *at);
        held.into_iter().chain(delayed).min()
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        self.release_held(now).await;
        while self.delayed.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            if let Some(Reverse((_, _, datagram))) = self.delayed.pop() {
                self.send(&datagram).await;
            }
        }
    }

    /// Reads from `socket` forever, remembering the sender in `client` when given.
    async fn run(mut self, socket: Arc<UdpSocket>, client: Option<ClientAddress>) {
        let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                received = socket.recv_from(&mut buffer) => {
                    let Ok((len, from)) = received else { continue };
                    if let Some(client) = &client {
                        client.remember(from);
                    }
                    self.on_datagram(&buffer[..len]).await;
                }
                () = sleep_until(deadline) => self.on_deadline().await,
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How the relay impairs each direction.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Client to server.
    pub client_to_server: Impairment,
    /// Server to client.
    pub server_to_client: Impairment,
    /// Seeds both directions' decisions.
    pub seed: u64,
}

impl RelayConfig {
    /// The same impairment both ways.
    pub fn symmetric(impairment: Impairment, seed: u64) -> Self {
        Self { client_to_server: impairment, server_to_client: impairment, seed }
    }
}

/// A running relay; dropping it stops it.
#[derive(Debug)]
pub struct LossyRelay {
    addr: SocketAddr,
    client_to_server: Arc<Counters>,
    server_to_client: Arc<Counters>,
    tasks: Vec<JoinHandle<()>>,
}

impl LossyRelay {
    /// Starts a relay on 127.0.0.1 (a port of its own) in front of `server`.
    pub async fn start(server: SocketAddr, config: RelayConfig) -> io::Result<Self> {
        let client_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let server_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        server_side.connect(server).await?;
        let client = ClientAddress::default();
        let (client_to_server, server_to_client) = (Arc::<Counters>::default(), Arc::<Counters>::default());
        let toward_server = Line {
            impairment: config.client_to_server,
            rng: Rng(config.seed),
            counters: client_to_server.clone(),
            destination: Destination::Server(server_side.clone()),
            held: VecDeque::new(),
            delayed: BinaryHeap::new(),
            sequence: 0,
        };
        let toward_client = Line {
            impairment: config.server_to_client,
            rng: Rng(config.seed ^ 0x5eed_5e7e_70c1_0f0f),
            counters: server_to_client.clone(),
            destination: Destination::Client(client_side.clone(), client.clone()),
            held: VecDeque::new(),
            delayed: BinaryHeap::new(),
            sequence: 0,
        };
        let addr = client_side.local_addr()?;
        let tasks = vec![
            tokio::spawn(toward_server.run(client_side, Some(client))),
            tokio::spawn(toward_client.run(server_side, None)),
        ];
        Ok(Self { addr, client_to_server, server_to_client, tasks })
    }

    /// Where the client sends.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What happened to the client's datagrams so far.
    pub fn client_to_server(&self) -> DirectionStats {
        self.client_to_server.snapshot()
    }

    /// What happened to the server's datagrams so far.
    pub fn server_to_client(&self) -> DirectionStats {
        self.server_to_client.snapshot()
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_roughly_uniform() {
        let (mut first, mut second) = (Rng(7), Rng(7));
        let draws: Vec<u64> = (0..100).map(|_| first.next_u64()).collect();
        assert_eq!(draws, (0..100).map(|_| second.next_u64()).collect::<Vec<_>>());
        let hits = (0..100_000).filter(|_| first.chance(0.05)).count();
        assert!((4_000..6_000).contains(&hits), "{hits} of 100000 at 5%");
        assert!(!Rng(1).chance(0.0));
    }
}
