//! A scripted DNS resolver on loopback, for tests of DoQ forwarding (feature `test-util`).
//!
//! [`TestUpstream`] answers classic DNS over UDP and TCP on the same 127.0.0.1 port from a fixed,
//! made-up zone, and records every answer it sends so tests can compare bytes:
//!
//! | name | answer |
//! |---|---|
//! | `*.test.` A / AAAA | `192.0.2.7` / `2001:db8::7`, TTL 300 |
//! | `*.test.` TXT | two strings naming the query |
//! | `big.test.` TXT | 40 strings of 100 bytes: over 4 KB, larger than any UDP answer here |
//! | `truncated.test.` (any type) | over UDP: empty with TC set; over TCP: as for `*.test.` |
//! | `silent.test.` | no answer at all |
//! | anything else | NXDOMAIN |
//!
//! Queries with EDNS(0) get an OPT record back. Answers are built with hickory-proto.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Answers in [`TestUpstream::answers_sent`] kept at most (oldest dropped first): enough for any test.
const MAX_RECORDED_ANSWERS: usize = 10_000;

/// The TTL of every record the test zone returns.
pub const TEST_TTL: u32 = 300;

/// A scripted resolver on 127.0.0.1 (UDP and TCP, same port). Stops when dropped.
pub struct TestUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    udp_queries: AtomicU64,
    tcp_queries: AtomicU64,
    answers: Mutex<Vec<Vec<u8>>>,
    queries: Mutex<Vec<Vec<u8>>>,
    /// Woken on every query received.
    query_arrived: Notify,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl TestUpstream {
    /// Binds UDP and TCP on the same free port of 127.0.0.1 and starts answering.
    ///
    /// # Errors
    /// No port could be bound for both protocols.
    pub async fn start() -> io::Result<Self> {
        let mut last_error = io::Error::other("no attempt");
        for _ in 0..20 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let shared = Arc::new(Shared::default());
                    let tasks = vec![
                        tokio::spawn(serve_udp(udp, shared.clone())),
                        tokio::spawn(serve_tcp(tcp, shared.clone())),
                    ];
                    return Ok(Self { addr, shared, tasks });
                }
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    /// The address to forward to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received over UDP.
    pub fn udp_queries(&self) -> u64 {
        self.shared.udp_queries.load(Ordering::Relaxed)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> u64 {
        self.shared.tcp_queries.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` queries (UDP and TCP) have arrived.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_for_queries(&self, count: u64) {
        loop {
            let arrived = self.shared.query_arrived.notified();
            if self.udp_queries() + self.tcp_queries() >= count {
                return;
            }
            arrived.await;
        }
    }

    /// Every query received so far, as wire bytes (the last [`MAX_RECORDED_ANSWERS`] of them).
    pub fn queries_received(&self) -> Vec<Vec<u8>> {
        self.shared.queries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Every answer sent so far, as wire bytes (with the ID the query had).
    pub fn answers_sent(&self) -> Vec<Vec<u8>> {
        self.shared.answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The last answer sent whose question is `name`/`record_type`.
    pub fn last_answer_for(&self, name: &str, record_type: RecordType) -> Option<Vec<u8>> {
        let name = Name::from_ascii(name).ok()?;
        self.answers_sent().into_iter().rev().find(|answer| {
            Message::from_vec(answer).is_ok_and(|message| {
                message.queries.first().is_some_and(|query| query.name == name && query.query_type == record_type)
            })
        })
    }

    /// The answer the zone gives to `query` over UDP (`over_udp`) or TCP; `None` for silence.
    pub fn answer(query: &Message, over_udp: bool) -> Option<Message> {
        let question = query.queries.first()?;
        let name = question.name.to_ascii().to_ascii_lowercase();
        if name == "silent.test." {
            return None;
        }
        let mut answer = Message::new(query.metadata.id, MessageType::Response, query.metadata.op_code);
        answer.metadata.recursion_desired = query.metadata.recursion_desired;
        answer.metadata.recursion_available = true;
        answer.add_query(question.clone());
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            answer.edns = Some(edns);
        }
        if !name.ends_with(".test.") {
            answer.metadata.response_code = ResponseCode::NXDomain;
            return Some(answer);
        }
        if name == "truncated.test." && over_udp {
            answer.metadata.truncation = true;
            return Some(answer);
        }
        let owner = question.name.clone();
        let record = |data: RData| Record::from_rdata(owner.clone(), TEST_TTL, data);
        match question.query_type {
            RecordType::A => {
                answer.add_answer(record(RData::A(A::new(192, 0, 2, 7))));
            }
            RecordType::AAAA => {
                answer.add_answer(record(RData::AAAA(AAAA::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)))));
            }
            RecordType::TXT if name == "big.test." => {
                let strings = (0..40).map(|index| format!("{index:03}{}", "x".repeat(97))).collect();
                answer.add_answer(record(RData::TXT(TXT::new(strings))));
            }
            RecordType::TXT => {
                answer.add_answer(record(RData::TXT(TXT::new(vec!["quiver test zone".into(), name.clone()]))));
            }
            _ => {}
        }
        Some(answer)
    }

    /// Builds, records and returns the wire answer to `query`.
    fn respond(shared: &Shared, query: &[u8], over_udp: bool) -> Option<Vec<u8>> {
        record(&shared.queries, query);
        shared.query_arrived.notify_waiters();
        let query = Message::from_vec(query).ok()?;
        let bytes = Self::answer(&query, over_udp)?.to_vec().ok()?;
        record(&shared.answers, &bytes);
        Some(bytes)
    }
}

/// Appends `message` to `log`, forgetting the oldest past [`MAX_RECORDED_ANSWERS`].
fn record(log: &Mutex<Vec<Vec<u8>>>, message: &[u8]) {
    let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if log.len() >= MAX_RECORDED_ANSWERS {
        log.remove(0);
    }
    log.push(message.to_vec());
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buffer = vec![0u8; 65_535];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buffer).await else { continue };
        shared.udp_queries.fetch_add(1, Ordering::Relaxed);
        if let Some(answer) = TestUpstream::respond(&shared, &buffer[..len], true) {
            let _ = socket.send_to(&answer, from).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(serve_tcp_connection(stream, shared.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let mut prefix = [0u8; 2];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        shared.tcp_queries.fetch_add(1, Ordering::Relaxed);
        let Some(answer) = TestUpstream::respond(&shared, &query, false) else { continue };
        let Ok(len) = u16::try_from(answer.len()) else { return };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
