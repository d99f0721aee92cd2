//! The UDP relay that stands in for the interop runner's ns-3 network simulator.
//!
//! The client talks to the relay's client-facing socket; the relay forwards each client's datagrams to the
//! server through a socket of its own per client (a NAT binding), so the server sees the relay's addresses,
//! and a rebind is just a new binding socket. Between the two, every datagram passes a [`LinkJudge`] (drop
//! list, black hole, drop rate and corrupt rate with bursts, all from a seeded RNG) and a [`LinkShaper`]
//! (bandwidth with a drop-tail queue, then one-way delay), one of each per direction. Both are pure: they
//! take the time since the relay started and never touch a socket, so the tests below replay them.
//!
//! The relay task is the single owner of its sockets, bindings, pending deliveries and the [`Record`]; it
//! hands everything back in a [`RelayOutcome`] when stopped.

use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use crate::record::Direction;
use crate::record::{Datagram, Leg, Record};

/// Largest datagram the relay reads; QUIC datagrams on loopback stay far below it.
const MAX_DATAGRAM_BYTES: usize = 65_535;
/// Client addresses the relay keeps a binding for. Sequential `multiconnect` runs open one per connection
/// at most (50 in handshakeloss); datagrams from further clients are dropped and counted.
const MAX_CLIENT_BINDINGS: usize = 512;
/// Datagrams from server-side sockets waiting for the relay task; bounded so a stalled task sheds load.
const SERVER_SIDE_CHANNEL: usize = 4096;

/// A random impairment applied with `percent` probability to each datagram, never to more than
/// `max_burst` datagrams in a row (the simulator's `--rate_to_*` / `--burst_to_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBurst {
    /// Probability in percent, 0..=100.
    pub percent: u32,
    /// After this many impaired datagrams in a row, the next one passes untouched. `None`: no limit.
    pub max_burst: Option<u32>,
}

/// Periods of total loss: traffic flows for `on`, then is dropped for `off`, `repeat` times, then flows
/// for good (the simulator's `blackhole --on --off --repeat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blackhole {
    /// How long traffic flows before each black-out.
    pub on: Duration,
    /// How long each black-out lasts.
    pub off: Duration,
    /// Number of black-outs.
    pub repeat: u32,
}

impl Blackhole {
    /// Whether the link is blacked out at `elapsed` since the relay started.
    pub fn is_dark(&self, elapsed: Duration) -> bool {
        let period = self.on + self.off;
        if period.is_zero() {
            return false;
        }
        let cycle = (elapsed.as_nanos() / period.as_nanos()) as u64;
        if cycle >= u64::from(self.repeat) {
            return false;
        }
        let into_cycle = elapsed.as_nanos() % period.as_nanos();
        into_cycle >= self.on.as_nanos()
    }
}

/// How the relay moves the client's server-side socket (the simulator's `rebind` scenario).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebindPlan {
    /// Time of the first rebind after the relay starts.
    pub first: Duration,
    /// Interval between later rebinds; `None`: only one.
    pub every: Option<Duration>,
    /// Also move to a new address (127.0.0.2, .3, ... for IPv4; IPv6 has only ::1, so a new port).
    pub new_address: bool,
}

impl RebindPlan {
    /// Time of rebind number `index` (0 = first), or `None` if the plan has no such rebind.
    pub fn due_at(&self, index: u64) -> Option<Duration> {
        match (index, self.every) {
            (0, _) => Some(self.first),
            (_, None) => None,
            (n, Some(every)) => Some(self.first + every.saturating_mul(n as u32)),
        }
    }
}

/// The local address a binding socket uses after `rebinds` rebinds, for a client whose first binding
/// address is `first` (a loopback address). Port 0: the kernel picks a new port each time.
pub fn binding_address(first: IpAddr, rebinds: u64, new_address: bool) -> SocketAddr {
    match first {
        IpAddr::V4(v4) if new_address && rebinds > 0 => {
            // Stay inside 127.0.0.0/8 and skip .0 and .255 of the last octet; 127.0.0.1 is the start.
            let base = u32::from(v4);
            let step = (rebinds % 250_000) as u32;
            let mut candidate = base.wrapping_add(step);
            if candidate & 0xff == 0 || candidate & 0xff == 0xff {
                candidate = candidate.wrapping_add(2);
            }
            let ip = Ipv4Addr::from(0x7f00_0000 | (candidate & 0x00ff_ffff));
            SocketAddr::new(IpAddr::V4(ip), 0)
        }
        ip => SocketAddr::new(ip, 0),
    }
}

/// Every impairment of one relay, per direction where the simulator has one per direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Impairments {
    /// One-way delay added to every datagram in both directions.
    pub delay: Duration,
    /// Link rate in bits per second per direction; `None`: unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Datagrams that may wait for the link per direction before drop-tail (only with a bandwidth).
    pub queue_packets: usize,
    /// Random drops towards the server.
    pub drop_to_server: RateBurst,
    /// Random drops towards the client.
    pub drop_to_client: RateBurst,
    /// Random corruption towards the server.
    pub corrupt_to_server: RateBurst,
    /// Random corruption towards the client.
    pub corrupt_to_client: RateBurst,
    /// Black-out periods (both directions).
    pub blackhole: Option<Blackhole>,
    /// 1-based indexes of datagrams towards the server to drop.
    pub droplist_to_server: BTreeSet<u64>,
    /// 1-based indexes of datagrams towards the client to drop.
    pub droplist_to_client: BTreeSet<u64>,
    /// Rebinding of the server-side sockets.
    pub rebind: Option<RebindPlan>,
}

impl Impairments {
    /// The runner's default link: 15 ms one-way, 10 Mbit/s, 25-packet queue (`simple-p2p`).
    pub fn simple_p2p() -> Self {
        Impairments {
            delay: Duration::from_millis(15),
            bandwidth_bps: Some(10_000_000),
            queue_packets: 25,
            ..Impairments::default()
        }
    }

    /// One line saying what is applied, for reports.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("delay={}ms", self.delay.as_millis())];
        if let Some(bps) = self.bandwidth_bps {
            parts.push(format!("bandwidth={}bps queue={}", bps, self.queue_packets));
        }
        for (name, rb) in [
            ("drop_to_server", self.drop_to_server),
            ("drop_to_client", self.drop_to_client),
            ("corrupt_to_server", self.corrupt_to_server),
            ("corrupt_to_client", self.corrupt_to_client),
        ] {
            if rb.percent > 0 {
                let burst = rb.max_burst.map(|b| format!(" burst={b}")).unwrap_or_default();
                parts.push(format!("{name}={}%{burst}", rb.percent));
            }
        }
        if let Some(bh) = self.blackhole {
            parts.push(format!(
                "blackhole on={}ms off={}ms repeat={}",
                bh.on.as_millis(),
                bh.off.as_millis(),
                bh.repeat
            ));
        }
        if !self.droplist_to_server.is_empty() {
            parts.push(format!("droplist_to_server={:?}", self.droplist_to_server));
        }
        if !self.droplist_to_client.is_empty() {
            parts.push(format!("droplist_to_client={:?}", self.droplist_to_client));
        }
        if let Some(rebind) = self.rebind {
            let every = rebind.every.map(|e| format!(" every={}ms", e.as_millis())).unwrap_or_default();
            let what = if rebind.new_address { "addr" } else { "port" };
            parts.push(format!("rebind-{what} first={}ms{every}", rebind.first.as_millis()));
        }
        parts.join(" ")
    }
}

/// Why the judge or the shaper dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    /// Its index is on the drop list.
    Droplist,
    /// The link was blacked out.
    Blackhole,
    /// The random drop rate chose it.
    Rate,
    /// The queue in front of the bandwidth limit was full.
    QueueFull,
}

/// What happens to one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Dropped.
    Drop(DropCause),
    /// Forwarded; `corrupted_at` is the payload offset of the byte replaced, if any.
    Forward {
        /// Offset of the corrupted byte.
        corrupted_at: Option<usize>,
    },
}

/// Counters for one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    /// Datagrams that entered the relay.
    pub received: u64,
    /// Datagrams delivered to the other side.
    pub delivered: u64,
    /// Dropped by the drop list.
    pub dropped_droplist: u64,
    /// Dropped during a black-out.
    pub dropped_blackhole: u64,
    /// Dropped by the random drop rate.
    pub dropped_rate: u64,
    /// Dropped because the queue was full.
    pub dropped_queue: u64,
    /// Dropped for lack of a binding (too many clients, or a failed send).
    pub dropped_other: u64,
    /// Forwarded with one byte replaced.
    pub corrupted: u64,
    /// Held back by delay or queueing before delivery.
    pub delayed: u64,
}

impl DirectionCounters {
    fn count_drop(&mut self, cause: DropCause) {
        match cause {
            DropCause::Droplist => self.dropped_droplist += 1,
            DropCause::Blackhole => self.dropped_blackhole += 1,
            DropCause::Rate => self.dropped_rate += 1,
            DropCause::QueueFull => self.dropped_queue += 1,
        }
    }

    /// Only the non-zero counters, e.g. `received=10 delivered=9 dropped_rate=1`.
    pub fn describe(&self) -> String {
        let fields = [
            ("received", self.received),
            ("delivered", self.delivered),
            ("dropped_droplist", self.dropped_droplist),
            ("dropped_blackhole", self.dropped_blackhole),
            ("dropped_rate", self.dropped_rate),
            ("dropped_queue", self.dropped_queue),
            ("dropped_other", self.dropped_other),
            ("corrupted", self.corrupted),
            ("delayed", self.delayed),
        ];
        fields.iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }
}

/// Everything the relay counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Client to server.
    pub to_server: DirectionCounters,
    /// Server to client.
    pub to_client: DirectionCounters,
    /// Rebinds performed (each moves every client's binding).
    pub rebinds: u64,
    /// Client bindings created.
    pub bindings: u64,
}

impl RelayCounters {
    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "to_server[{}] to_client[{}] bindings={} rebinds={}",
            self.to_server.describe(),
            self.to_client.describe(),
            self.bindings,
            self.rebinds
        )
    }
}

/// The seeded decisions for one direction: drop list, black hole, drop rate, corrupt rate.
#[derive(Debug)]
pub struct LinkJudge {
    rng: StdRng,
    drop: RateBurst,
    corrupt: RateBurst,
    droplist: BTreeSet<u64>,
    blackhole: Option<Blackhole>,
    datagrams_seen: u64,
    dropped_in_a_row: u32,
    corrupted_in_a_row: u32,
}

impl LinkJudge {
    /// The judge for `direction` of `impairments`; both directions draw from streams derived from `seed`.
    pub fn new(impairments: &Impairments, direction: Direction, seed: u64) -> Self {
        let (drop, corrupt, droplist, stream) = match direction {
            Direction::ToServer => {
                (impairments.drop_to_server, impairments.corrupt_to_server, impairments.droplist_to_server.clone(), 1)
            }
            Direction::ToClient => {
                (impairments.drop_to_client, impairments.corrupt_to_client, impairments.droplist_to_client.clone(), 2)
            }
        };
        LinkJudge {
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(stream)),
            drop,
            corrupt,
            droplist,
            blackhole: impairments.blackhole,
            datagrams_seen: 0,
            dropped_in_a_row: 0,
            corrupted_in_a_row: 0,
        }
    }

    /// Decides one datagram's fate at `elapsed` since the relay started, corrupting `payload` in place
    /// when it is chosen.
    pub fn judge(&mut self, elapsed: Duration, payload: &mut [u8]) -> Fate {
        self.datagrams_seen += 1;
        if self.droplist.contains(&self.datagrams_seen) {
            return Fate::Drop(DropCause::Droplist);
        }
        if self.blackhole.is_some_and(|bh| bh.is_dark(elapsed)) {
            return Fate::Drop(DropCause::Blackhole);
        }
        if Self::draw(&mut self.rng, self.drop, &mut self.dropped_in_a_row) {
            return Fate::Drop(DropCause::Rate);
        }
        // The simulator never corrupts a Version Negotiation packet (long header, version 0): a client
        // must ignore one that lists its own version, and corrupting it would only test the simulator.
        let is_version_negotiation = payload.len() >= 5 && payload[0] & 0x80 != 0 && payload[1..5] == [0; 4];
        if payload.is_empty() || is_version_negotiation {
            self.corrupted_in_a_row = 0;
            return Fate::Forward { corrupted_at: None };
        }
        if !Self::draw(&mut self.rng, self.corrupt, &mut self.corrupted_in_a_row) {
            return Fate::Forward { corrupted_at: None };
        }
        // Like the simulator: replace one byte among the first 50 of the UDP payload with a different
        // value, so the QUIC header is hit often.
        let offset = self.rng.random_range(0..=payload.len().saturating_sub(1).min(50));
        let old = payload[offset];
        let mut new = old;
        while new == old {
            new = self.rng.random();
        }
        payload[offset] = new;
        Fate::Forward { corrupted_at: Some(offset) }
    }

    /// The simulator's rate-with-burst rule: after `max_burst` hits in a row the next one is spared.
    fn draw(rng: &mut StdRng, rule: RateBurst, in_a_row: &mut u32) -> bool {
        if rule.percent == 0 {
            *in_a_row = 0;
            return false;
        }
        if rule.max_burst.is_some_and(|max| *in_a_row >= max) {
            *in_a_row = 0;
            return false;
        }
        if rng.random_range(0..100u32) < rule.percent {
            *in_a_row += 1;
            true
        } else {
            *in_a_row = 0;
            false
        }
    }
}

/// Bandwidth, drop-tail queue and delay of one direction, in time since the relay started.
#[derive(Debug)]
pub struct LinkShaper {
    bandwidth_bps: Option<u64>,
    queue_packets: usize,
    delay: Duration,
    /// When the link finishes sending what it has accepted so far.
    busy_until: Duration,
    /// Start times of transmission of the datagrams still waiting in the queue.
    waiting_starts: VecDeque<Duration>,
}

impl LinkShaper {
    /// The shaper for `impairments` (same in both directions).
    pub fn new(impairments: &Impairments) -> Self {
        LinkShaper {
            bandwidth_bps: impairments.bandwidth_bps.filter(|bps| *bps > 0),
            queue_packets: impairments.queue_packets,
            delay: impairments.delay,
            busy_until: Duration::ZERO,
            waiting_starts: VecDeque::new(),
        }
    }

    /// Accepts a datagram of `bytes` at `now`: returns its delivery time, or `None` if the queue is full.
    pub fn admit(&mut self, now: Duration, bytes: usize) -> Option<Duration> {
        let Some(bps) = self.bandwidth_bps else {
            return Some(now + self.delay);
        };
        while self.waiting_starts.front().is_some_and(|start| *start <= now) {
            self.waiting_starts.pop_front();
        }
        let start = self.busy_until.max(now);
        if start > now && self.waiting_starts.len() >= self.queue_packets {
            return None;
        }
        // Serialization time of the datagram plus the IPv4 and UDP headers the simulator would carry.
        let wire_bits = (bytes as u64 + 28) * 8;
        let transmit = Duration::from_nanos(wire_bits.saturating_mul(1_000_000_000) / bps);
        self.busy_until = start + transmit;
        if start > now {
            self.waiting_starts.push_back(start);
        }
        Some(self.busy_until + self.delay)
    }
}

/// How to set up a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Client-facing address to bind (port 0 picks one).
    pub listen: SocketAddr,
    /// The server's address.
    pub server: SocketAddr,
    /// What to do to the datagrams.
    pub impairments: Impairments,
    /// Seed of every random decision.
    pub seed: u64,
}

/// What a stopped relay hands back.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Counters of everything applied.
    pub counters: RelayCounters,
    /// Every datagram on both legs.
    pub record: Record,
}

/// A running relay; stop it with [`Relay::stop`] to get its outcome.
#[derive(Debug)]
pub struct Relay {
    client_facing: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<RelayOutcome>>,
}

impl Relay {
    /// Binds the client-facing socket and starts the relay task.
    pub async fn start(config: RelayConfig) -> Result<Relay> {
        let socket = UdpSocket::bind(config.listen)
            .await
            .with_context(|| format!("cannot bind the relay's client-facing socket on {}", config.listen))?;
        let client_facing = socket.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(RelayTask::new(config, Arc::new(socket), client_facing).run(stop_rx));
        Ok(Relay { client_facing, stop: Some(stop_tx), task })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.client_facing
    }

    /// Stops forwarding and returns counters and record. Datagrams still delayed are discarded.
    pub async fn stop(mut self) -> Result<RelayOutcome> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.context("relay task panicked")?
    }
}

/// One client's NAT binding: the socket the server sees as that client.
struct Binding {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A datagram waiting for its delivery time.
struct Pending {
    deliver_at: Duration,
    /// Tie-breaker keeping FIFO order among equal times.
    sequence: u64,
    direction: Direction,
    client: SocketAddr,
    payload: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.sequence) == (other.deliver_at, other.sequence)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        (other.deliver_at, other.sequence).cmp(&(self.deliver_at, self.sequence))
    }
}

/// A datagram a binding socket read from the server.
struct FromServer {
    client: SocketAddr,
    binding_addr: SocketAddr,
    from: SocketAddr,
    payload: Vec<u8>,
}

struct RelayTask {
    config: RelayConfig,
    client_socket: Arc<UdpSocket>,
    client_facing: SocketAddr,
    started: Instant,
    bindings: HashMap<SocketAddr, Binding>,
    judges: [LinkJudge; 2],
    shapers: [LinkShaper; 2],
    pending: BinaryHeap<Pending>,
    sequence: u64,
    counters: RelayCounters,
    record: Record,
    from_server_tx: mpsc::Sender<FromServer>,
    from_server_rx: mpsc::Receiver<FromServer>,
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::ToServer => 0,
        Direction::ToClient => 1,
    }
}

impl RelayTask {
    fn new(config: RelayConfig, client_socket: Arc<UdpSocket>, client_facing: SocketAddr) -> Self {
        let judges = [
            LinkJudge::new(&config.impairments, Direction::ToServer, config.seed),
            LinkJudge::new(&config.impairments, Direction::ToClient, config.seed),
        ];
        let shapers = [LinkShaper::new(&config.impairments), LinkShaper::new(&config.impairments)];
        let (from_server_tx, from_server_rx) = mpsc::channel(SERVER_SIDE_CHANNEL);
        RelayTask {
            config,
            client_socket,
            client_facing,
            started: Instant::now(),
            bindings: HashMap::new(),
            judges,
            shapers,
            pending: BinaryHeap::new(),
            sequence: 0,
            counters: RelayCounters::default(),
            record: Record::new(SystemTime::now()),
            from_server_tx,
            from_server_rx,
        }
    }

    fn counters_mut(&mut self, direction: Direction) -> &mut DirectionCounters {
        match direction {
            Direction::ToServer => &mut self.counters.to_server,
            Direction::ToClient => &mut self.counters.to_client,
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Result<RelayOutcome> {
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        let mut rebinds_done = 0u64;
        loop {
            let next_delivery = self.pending.peek().map(|p| self.started + p.deliver_at);
            let next_rebind =
                self.config.impairments.rebind.and_then(|plan| plan.due_at(rebinds_done)).map(|at| self.started + at);
            tokio::select! {
                _ = &mut stop => break,
                received = self.client_socket.recv_from(&mut buf) => {
                    // A loopback recv error (e.g. ICMP port unreachable surfaced late) is not fatal.
                    if let Ok((len, client)) = received {
                        let payload = buf[..len].to_vec();
                        self.on_client_datagram(client, payload).await;
                    }
                }
                Some(datagram) = self.from_server_rx.recv() => self.on_server_datagram(datagram),
                _ = sleep_until_opt(next_delivery) => self.deliver_due().await,
                _ = sleep_until_opt(next_rebind) => {
                    rebinds_done += 1;
                    self.rebind_all(rebinds_done).await;
                }
            }
        }
        Ok(RelayOutcome { counters: self.counters, record: self.record })
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    async fn on_client_datagram(&mut self, client: SocketAddr, payload: Vec<u8>) {
        let now = self.elapsed();
        self.record.push(Datagram {
            leg: Leg::ClientSide,
            direction: Direction::ToServer,
            at: now,
            src: client,
            dst: self.client_facing,
            payload: payload.clone(),
        });
        self.counters.to_server.received += 1;
        if !self.bindings.contains_key(&client) {
            if self.bindings.len() >= MAX_CLIENT_BINDINGS {
                self.counters.to_server.dropped_other += 1;
                return;
            }
            let first = binding_address(self.client_facing.ip(), self.counters.rebinds, self.rebind_new_address());
            match self.bind(client, first).await {
                Ok(binding) => {
                    self.bindings.insert(client, binding);
                    self.counters.bindings += 1;
                }
                Err(_) => {
                    self.counters.to_server.dropped_other += 1;
                    return;
                }
            }
        }
        self.impair_and_queue(Direction::ToServer, client, payload, now);
    }

    fn on_server_datagram(&mut self, datagram: FromServer) {
        let now = self.elapsed();
        self.record.push(Datagram {
            leg: Leg::ServerSide,
            direction: Direction::ToClient,
            at: now,
            src: datagram.from,
            dst: datagram.binding_addr,
            payload: datagram.payload.clone(),
        });
        self.counters.to_client.received += 1;
        self.impair_and_queue(Direction::ToClient, datagram.client, datagram.payload, now);
    }

    fn impair_and_queue(&mut self, direction: Direction, client: SocketAddr, mut payload: Vec<u8>, now: Duration) {
        let fate = self.judges[index(direction)].judge(now, &mut payload);
        match fate {
            Fate::Drop(cause) => self.counters_mut(direction).count_drop(cause),
            Fate::Forward { corrupted_at } => {
                if corrupted_at.is_some() {
                    self.counters_mut(direction).corrupted += 1;
                }
                match self.shapers[index(direction)].admit(now, payload.len()) {
                    None => self.counters_mut(direction).count_drop(DropCause::QueueFull),
                    Some(deliver_at) => {
                        if deliver_at > now {
                            self.counters_mut(direction).delayed += 1;
                        }
                        self.sequence += 1;
                        self.pending.push(Pending { deliver_at, sequence: self.sequence, direction, client, payload });
                    }
                }
            }
        }
    }

    async fn deliver_due(&mut self) {
        let now = self.elapsed();
        while self.pending.peek().is_some_and(|p| p.deliver_at <= now) {
            let Some(item) = self.pending.pop() else { break };
            self.deliver(item).await;
        }
    }

    async fn deliver(&mut self, item: Pending) {
        let now = self.elapsed();
        match item.direction {
            Direction::ToServer => {
                let Some(binding) = self.bindings.get(&item.client) else {
                    self.counters.to_server.dropped_other += 1;
                    return;
                };
                let socket = binding.socket.clone();
                let src = socket.local_addr().unwrap_or(self.client_facing);
                if socket.send_to(&item.payload, self.config.server).await.is_err() {
                    self.counters.to_server.dropped_other += 1;
                    return;
                }
                self.counters.to_server.delivered += 1;
                self.record.push(Datagram {
                    leg: Leg::ServerSide,
                    direction: Direction::ToServer,
                    at: now,
                    src,
                    dst: self.config.server,
                    payload: item.payload,
                });
            }
            Direction::ToClient => {
                if self.client_socket.send_to(&item.payload, item.client).await.is_err() {
                    self.counters.to_client.dropped_other += 1;
                    return;
                }
                self.counters.to_client.delivered += 1;
                self.record.push(Datagram {
                    leg: Leg::ClientSide,
                    direction: Direction::ToClient,
                    at: now,
                    src: self.client_facing,
                    dst: item.client,
                    payload: item.payload,
                });
            }
        }
    }

    fn rebind_new_address(&self) -> bool {
        self.config.impairments.rebind.is_some_and(|plan| plan.new_address)
    }

    /// Gives every client a new server-side socket; the old one is closed, so the server's datagrams to
    /// it are lost, as with the simulator's NAT forgetting the old binding.
    async fn rebind_all(&mut self, rebinds: u64) {
        self.counters.rebinds = rebinds;
        let clients: Vec<SocketAddr> = self.bindings.keys().copied().collect();
        let new_address = self.rebind_new_address();
        for client in clients {
            let local = binding_address(self.client_facing.ip(), rebinds, new_address);
            if let Ok(binding) = self.bind(client, local).await {
                self.bindings.insert(client, binding);
            }
        }
    }

    async fn bind(&self, client: SocketAddr, local: SocketAddr) -> Result<Binding> {
        let socket = Arc::new(
            UdpSocket::bind(local).await.with_context(|| format!("cannot bind a server-side socket on {local}"))?,
        );
        let binding_addr = socket.local_addr()?;
        let reader_socket = socket.clone();
        let tx = self.from_server_tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
            loop {
                match reader_socket.recv_from(&mut buf).await {
                    Ok((len, from)) => {
                        let datagram = FromServer { client, binding_addr, from, payload: buf[..len].to_vec() };
                        // Full channel: shed the datagram like a full socket buffer would.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(datagram) {
                            return;
                        }
                    }
                    Err(_) => continue,
                }
            }
        });
        Ok(Binding { socket, reader })
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(judge: &mut LinkJudge, count: usize) -> Vec<bool> {
        (0..count).map(|_| matches!(judge.judge(Duration::ZERO, &mut [0x40, 1, 2, 3]), Fate::Drop(_))).collect()
    }

    #[test]
    fn drop_pattern_replays_from_the_seed_and_respects_the_burst() {
        let impairments =
            Impairments { drop_to_server: RateBurst { percent: 30, max_burst: Some(3) }, ..Impairments::default() };
        let first = pattern(&mut LinkJudge::new(&impairments, Direction::ToServer, 42), 2000);
        let again = pattern(&mut LinkJudge::new(&impairments, Direction::ToServer, 42), 2000);
        let other_seed = pattern(&mut LinkJudge::new(&impairments, Direction::ToServer, 43), 2000);
        assert_eq!(first, again, "same seed, same drops");
        assert_ne!(first, other_seed);
        let drops = first.iter().filter(|d| **d).count();
        assert!((400..800).contains(&drops), "about 30% of 2000, got {drops}");
        let longest_run = first.split(|dropped| !dropped).map(|run| run.len()).max().unwrap();
        assert_eq!(longest_run, 3, "never more than 3 in a row, and 30% makes 3 likely in 2000");
        // The other direction has no drop rate.
        assert!(!pattern(&mut LinkJudge::new(&impairments, Direction::ToClient, 42), 100).contains(&true));
    }

    #[test]
    fn corruption_replaces_one_byte_within_the_first_fifty_and_spares_version_negotiation() {
        let impairments =
            Impairments { corrupt_to_client: RateBurst { percent: 100, max_burst: None }, ..Impairments::default() };
        let mut judge = LinkJudge::new(&impairments, Direction::ToClient, 7);
        for _ in 0..200 {
            let original = vec![0x55u8; 1200];
            let mut payload = original.clone();
            let Fate::Forward { corrupted_at: Some(offset) } = judge.judge(Duration::ZERO, &mut payload) else {
                panic!("100% corrupt rate must corrupt");
            };
            assert!(offset <= 50);
            let changed: Vec<usize> = (0..payload.len()).filter(|i| payload[*i] != original[*i]).collect();
            assert_eq!(changed, vec![offset]);
        }
        let mut version_negotiation = vec![0x80, 0, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let before = version_negotiation.clone();
        assert_eq!(judge.judge(Duration::ZERO, &mut version_negotiation), Fate::Forward { corrupted_at: None });
        assert_eq!(version_negotiation, before);
    }

    #[test]
    fn droplist_drops_exactly_the_listed_datagrams() {
        let impairments =
            Impairments { droplist_to_server: [2, 3, 4, 5, 6, 7].into_iter().collect(), ..Impairments::default() };
        let dropped = pattern(&mut LinkJudge::new(&impairments, Direction::ToServer, 1), 10);
        assert_eq!(dropped, [false, true, true, true, true, true, true, false, false, false]);
        assert!(!pattern(&mut LinkJudge::new(&impairments, Direction::ToClient, 1), 10).contains(&true));
    }

    #[test]
    fn blackhole_alternates_then_stays_open() {
        let bh = Blackhole { on: Duration::from_secs(5), off: Duration::from_secs(2), repeat: 2 };
        let dark = |ms: u64| bh.is_dark(Duration::from_millis(ms));
        assert!(!dark(0) && !dark(4_999));
        assert!(dark(5_000) && dark(6_999));
        assert!(!dark(7_000) && !dark(11_999));
        assert!(dark(12_000) && dark(13_999));
        assert!(!dark(14_000) && !dark(100_000));
    }

    #[test]
    fn shaper_queues_at_the_link_rate_and_drops_the_tail() {
        let impairments = Impairments {
            delay: Duration::from_millis(15),
            bandwidth_bps: Some(8_000_000), // 1 byte per microsecond
            queue_packets: 2,
            ..Impairments::default()
        };
        let mut shaper = LinkShaper::new(&impairments);
        let now = Duration::from_millis(1);
        // 972 + 28 header bytes = 1 ms on the wire each.
        let first = shaper.admit(now, 972).unwrap();
        assert_eq!(first, now + Duration::from_millis(1) + Duration::from_millis(15));
        assert_eq!(shaper.admit(now, 972), Some(now + Duration::from_millis(17)));
        assert_eq!(shaper.admit(now, 972), Some(now + Duration::from_millis(18)));
        assert_eq!(shaper.admit(now, 972), None, "two waiting: the queue is full");
        // Once the link drained, it accepts again at once.
        let later = now + Duration::from_millis(10);
        assert_eq!(shaper.admit(later, 972), Some(later + Duration::from_millis(16)));
    }

    #[test]
    fn rebind_schedule_and_addresses() {
        let plan = RebindPlan { first: Duration::from_secs(1), every: Some(Duration::from_secs(5)), new_address: true };
        assert_eq!(plan.due_at(0), Some(Duration::from_secs(1)));
        assert_eq!(plan.due_at(2), Some(Duration::from_secs(11)));
        let once = RebindPlan { every: None, ..plan };
        assert_eq!(once.due_at(1), None);

        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(binding_address(v4, 0, true), "127.0.0.1:0".parse().unwrap());
        assert_eq!(binding_address(v4, 1, true), "127.0.0.2:0".parse().unwrap());
        assert_eq!(binding_address(v4, 3, true), "127.0.0.4:0".parse().unwrap());
        assert_eq!(binding_address(v4, 3, false), "127.0.0.1:0".parse().unwrap());
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(binding_address(v6, 3, true), "[::1]:0".parse().unwrap());
        for rebinds in 0..2000 {
            let SocketAddr::V4(addr) = binding_address(v4, rebinds, true) else { panic!() };
            assert_eq!(addr.ip().octets()[0], 127);
            assert!(addr.ip().octets()[3] != 0 && addr.ip().octets()[3] != 255);
        }
    }
}
