//! The adversarial suite: each test runs one attack from quiver-test-support's attacker (a real
//! QUIC + HTTP/3 client on quiche, bound to 127.0.0.3) against a quiver-h3 server on 127.0.0.1,
//! while an honest quiver-h3 client on 127.0.0.1 checks that it is still served. Each test states
//! the bound it holds the server to and asserts it.
//!
//! Honest-client latency is bounded by [`HONEST_LATENCY_LIMIT`], a guard thousands of times what a
//! loopback request takes: it only trips when the server stopped serving, never on a slow machine.
//! Correctness never waits on a clock: the tests wait on counters and events.
//!
//! The findings of issue 12 have their own regression tests next to their fixes; SECURITY.md maps
//! every attack to its defence and its test.

mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use quiver::{AddressValidation, ConnectError, ConnectionError, Endpoint, ServerConfigBuilder, TlsIdentity};
use quiver_h3::{BodyError, H3Connection, RecvBody, Server};
use quiver_test_support::attacker::{
    self, HeaderBomb, HoldStyle, PeerSettings, QuicPeer, exhaust_streams, header_bomb, open_idle, open_unread,
    partial_handshakes, slow_handshake, tiny_data_flood,
};
use quiver_test_support::{guarded, wait_until};
use support::{server_endpoint, trusting};

/// The attacker's source address: another host, as far as the server's per-source limits go.
const ATTACKER_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// The honest client's bound while an attack runs: connect and one request within 5 s. A loopback
/// request takes milliseconds even in a debug build on a loaded machine.
const HONEST_LATENCY_LIMIT: Duration = Duration::from_secs(5);

/// HTTP/3 error code H3_EXCESSIVE_LOAD (RFC 9114 §8.1).
const H3_EXCESSIVE_LOAD: u64 = 0x107;

/// What the test server's handlers have seen, for bounds that do not depend on timing.
#[derive(Default)]
struct Observed {
    /// Handlers running now, and the most ever at once.
    running: AtomicUsize,
    peak_running: AtomicUsize,
    /// Requests that reached any handler.
    requests: AtomicUsize,
    /// Body bytes the `/stream/N` handlers have produced (pulled by the server).
    produced_bytes: AtomicU64,
}

/// Chunk size of the lazily produced `/stream/N` bodies.
const STREAM_CHUNK_BYTES: usize = 16 * 1024;

/// A body of `left` bytes produced one chunk at a time, only when the server pulls it, counting
/// what it produced: the server's buffering is then exactly what this counter says it pulled.
struct CountedBody {
    left: u64,
    observed: Arc<Observed>,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let len = this.left.min(STREAM_CHUNK_BYTES as u64);
        this.left -= len;
        this.observed.produced_bytes.fetch_add(len, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b's'; len as usize])))))
    }
}

/// Counts a running handler for as long as it lives.
struct Running(Arc<Observed>);

impl Running {
    fn start(observed: &Arc<Observed>) -> Self {
        let now = observed.running.fetch_add(1, Ordering::SeqCst) + 1;
        observed.peak_running.fetch_max(now, Ordering::SeqCst);
        Self(observed.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

type Reply = Response<BoxBody<Bytes, BodyError>>;

fn full(bytes: impl Into<Bytes>) -> BoxBody<Bytes, BodyError> {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// Routes: `/bytes/N` (N bytes), `/count` (reads the whole body, answers its length), `/hold`
/// (reads the body, counted as running meanwhile), `/stream/N` (N bytes produced on demand).
async fn route(request: Request<RecvBody>, observed: Arc<Observed>) -> Reply {
    observed.requests.fetch_add(1, Ordering::SeqCst);
    let path = request.uri().path().to_owned();
    if let Some(len) = path.strip_prefix("/bytes/").and_then(|len| len.parse::<usize>().ok()) {
        return Response::new(full(vec![b'b'; len]));
    }
    if let Some(len) = path.strip_prefix("/stream/").and_then(|len| len.parse::<u64>().ok()) {
        return Response::new(CountedBody { left: len, observed }.boxed());
    }
    match path.as_str() {
        "/count" | "/hold" => {
            let _running = Running::start(&observed);
            let mut body = request.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |data| data.len() as u64),
                    Err(err) => {
                        return Response::builder()
                            .status(StatusCode::BAD_REQUEST)
                            .body(full(err.to_string()))
                            .unwrap();
                    }
                }
            }
            Response::new(full(total.to_string()))
        }
        _ => Response::builder().status(StatusCode::NOT_FOUND).body(full("")).unwrap(),
    }
}

struct Target {
    endpoint: Endpoint,
    identity: TlsIdentity,
    observed: Arc<Observed>,
}

impl Target {
    fn start(configure: impl FnOnce(ServerConfigBuilder) -> ServerConfigBuilder) -> Self {
        let (endpoint, identity) = server_endpoint(configure);
        let observed = Arc::new(Observed::default());
        let service = {
            let observed = observed.clone();
            tower::service_fn(move |request| {
                let observed = observed.clone();
                async move { Ok::<_, Infallible>(route(request, observed).await) }
            })
        };
        tokio::spawn(Server::new(service).serve(endpoint.clone()));
        Self { endpoint, identity, observed }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    fn authority(&self) -> String {
        format!("localhost:{}", self.addr().port())
    }

    /// One honest exchange on a new connection from 127.0.0.1: connect, `GET /bytes/100`, check the
    /// body. Returns how long it took, or why it failed.
    async fn honest_exchange(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let (_client, connection) = self.honest_connect().await.map_err(|err| format!("{err:?}"))?;
        let url = format!("https://{}/bytes/100", self.authority());
        let response = connection
            .send_request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
            .await
            .map_err(|err| format!("{err:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|err| format!("{err:?}"))?.to_bytes();
        connection.quic().close(0, "done");
        if status != StatusCode::OK || body.len() != 100 {
            return Err(format!("status {status}, {} body bytes", body.len()));
        }
        Ok(started.elapsed())
    }

    /// `count` partial handshakes from one attacker socket on 127.0.0.3, each given `patience` to
    /// be answered (a server that drops the attacker's Initials costs `patience` per handshake).
    async fn partial_handshakes(&self, count: usize, patience: Duration) -> attacker::PartialOutcome {
        let socket = tokio::net::UdpSocket::bind(attacker_bind()).await.unwrap();
        let settings = PeerSettings::default();
        let attack = partial_handshakes(&settings, &socket, self.addr(), count, patience);
        guarded("partial handshakes", attack).await.unwrap()
    }

    /// An attacker connection from 127.0.0.3, HTTP/3 started.
    async fn attacker(&self, settings: &PeerSettings, config: &mut quiver::quiche::Config) -> QuicPeer {
        let connecting = QuicPeer::connect_h3(config, settings, attacker_bind(), self.addr());
        guarded("attacker connects", connecting).await.unwrap()
    }

    /// A new honest connection from 127.0.0.1 (its endpoint must outlive it).
    async fn honest_connect(&self) -> Result<(Endpoint, H3Connection), quiver_h3::Error> {
        let client = Endpoint::client("127.0.0.1:0".parse().unwrap(), trusting(&self.identity).build().unwrap())
            .expect("a client endpoint on loopback");
        let connection = H3Connection::connect(&client, self.addr(), "localhost").await?;
        Ok((client, connection))
    }

    /// Asserts that `rounds` honest exchanges in a row each succeed within [`HONEST_LATENCY_LIMIT`].
    async fn assert_honest_served(&self, during: &str, rounds: usize) {
        for round in 0..rounds {
            match tokio::time::timeout(HONEST_LATENCY_LIMIT, self.honest_exchange()).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => panic!("{during}: honest exchange {round} failed: {err}"),
                Err(_) => panic!("{during}: honest exchange {round} took over {HONEST_LATENCY_LIMIT:?}"),
            }
        }
    }
}

fn attacker_bind() -> SocketAddr {
    SocketAddr::new(ATTACKER_IP, 0)
}

/// Partial handshakes below the endpoint's limit: the server holds each (it answered, so it keeps
/// state until the handshake deadline) and still serves others. The per-source share is lifted to
/// the whole limit here: this test is about the endpoint limit (the next one is about the share).
/// Bound: handshakes in flight never exceed `max_handshakes_in_flight` (64); honest latency < 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_handshakes_below_the_limit_leave_honest_clients_served() {
    let target = Target::start(|config| {
        config.max_handshakes_in_flight(64).max_handshakes_per_source(64).address_validation(AddressValidation::Never)
    });
    let outcome = target.partial_handshakes(48, Duration::from_secs(5)).await;
    assert_eq!(outcome.answered, 48, "{outcome:?}");
    wait_until("the server to hold the half-open handshakes", || target.endpoint.stats().handshakes_in_flight >= 48)
        .await;
    target.assert_honest_served("48 partial handshakes held", 3).await;
    assert!(target.endpoint.stats().handshakes_in_flight <= 64, "{:?}", target.endpoint.stats());
}

/// Partial handshakes from ONE source, twice the endpoint's limit, behind Retry (the attacker owns
/// its address and follows the Retry). Bound: one source cannot take every handshake slot, so an
/// honest client from another address connects within 5 s while all of them are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_handshakes_from_one_source_cannot_lock_out_others() {
    let target = Target::start(|config| {
        config.max_handshakes_in_flight(64).address_validation(AddressValidation::UnderLoad { handshakes_in_flight: 8 })
    });
    let outcome = target.partial_handshakes(128, Duration::from_millis(500)).await;
    assert_eq!(outcome.answered + outcome.refused + outcome.silent, 128, "{outcome:?}");
    assert!(outcome.answered <= 64, "the endpoint limit holds: {outcome:?}");
    target.assert_honest_served("a source's handshakes at the endpoint limit", 3).await;
}

/// Handshakes that take as long as possible (each datagram held 100 ms) from 8 connections at once.
/// Bound: honest latency < 5 s while they crawl; each slow handshake ends (completes or is closed)
/// within the guard, none is left holding a slot: handshakes in flight return to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_do_not_delay_honest_clients() {
    let target = Target::start(|config| config);
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let server = target.addr();
        slow.spawn(async move {
            slow_handshake(&PeerSettings::default(), attacker_bind(), server, Duration::from_millis(100)).await
        });
    }
    wait_until("the slow handshakes to reach the server", || target.endpoint.stats().handshakes_in_flight >= 1).await;
    target.assert_honest_served("8 slow handshakes", 3).await;
    let mut peers = Vec::new();
    while let Some(done) = guarded("a slow handshake to end", slow.join_next()).await {
        if let Ok(peer) = done.unwrap() {
            peers.push(peer);
        }
    }
    wait_until("no handshake left in flight", || target.endpoint.stats().handshakes_in_flight == 0).await;
    drop(peers);
}

/// One connection opens every request stream the server allows (50) and never finishes them, once
/// with bodies that never end (50 handlers wait) and once with header sections that never end.
/// Bound: per connection, the attacker gets exactly `max_streams` (50) streams and at most 50
/// handlers run for it; a second attacker connection adds at most 50 more; honest latency < 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_exhaustion_is_capped_by_the_stream_limit() {
    let target = Target::start(|config| config.max_streams(50, 100));
    let settings = PeerSettings::default();
    let mut config = settings.quiche_config().unwrap();
    let mut bodies = target.attacker(&settings, &mut config).await;
    let opened =
        guarded("open streams", exhaust_streams(&mut bodies, &target.authority(), "/hold", HoldStyle::OpenBodies))
            .await
            .unwrap();
    assert_eq!(opened, 50, "the server's MAX_STREAMS is the attacker's whole budget");
    let keep_bodies = tokio::spawn(async move { bodies.keep_alive(false).await.map(|()| bodies) });
    wait_until("50 handlers waiting for bodies", || target.observed.running.load(Ordering::SeqCst) == 50).await;

    let mut headers = target.attacker(&settings, &mut config).await;
    let opened =
        guarded("open streams", exhaust_streams(&mut headers, &target.authority(), "/hold", HoldStyle::PartialHeaders))
            .await
            .unwrap();
    assert_eq!(opened, 50);
    let keep_headers = tokio::spawn(async move { headers.keep_alive(false).await });
    target.assert_honest_served("100 streams held open", 3).await;
    // Partial header sections never reach a handler.
    assert_eq!(target.observed.peak_running.load(Ordering::SeqCst), 50);
    keep_bodies.abort();
    keep_headers.abort();
}

/// Header sections far beyond the server's advertised SETTINGS_MAX_FIELD_SECTION_SIZE (16 KiB):
/// one 64 KiB value, 10,000 literal fields, 20,000 one-byte static-table references (820 KB once
/// decoded). Bound: none reaches a handler (the request counter stays 0), the server ends each
/// with H3_EXCESSIVE_LOAD (on the connection or the stream), honest latency < 5 s after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bombs_are_refused_before_any_handler() {
    let target = Target::start(|config| config);
    // quiche's client writes a header section in one piece: give it a window that holds the bomb.
    let settings = PeerSettings { initial_congestion_window_packets: 200, ..PeerSettings::default() };
    let mut config = settings.quiche_config().unwrap();
    for bomb in [
        HeaderBomb::HugeValue { value_bytes: 64 * 1024 },
        HeaderBomb::ManyFields { fields: 10_000 },
        HeaderBomb::IndexedFields { fields: 20_000 },
    ] {
        let mut peer = target.attacker(&settings, &mut config).await;
        let outcome = guarded("the server's verdict", header_bomb(&mut peer, &target.authority(), bomb)).await.unwrap();
        let excessive_load = outcome.connection_closed == Some((true, H3_EXCESSIVE_LOAD))
            || outcome.stream.as_ref().and_then(|stream| stream.reset) == Some(H3_EXCESSIVE_LOAD);
        assert!(excessive_load, "{bomb:?}: {outcome:?}");
        target.assert_honest_served("after a header bomb", 1).await;
    }
    // Only the honest requests reached the handlers.
    assert_eq!(target.observed.requests.load(Ordering::SeqCst), 3);
}

/// A body sent as 50,000 DATA frames of one byte each, at full speed.
/// Bound: the handler receives exactly 50,000 bytes (nothing lost, nothing duplicated) and the
/// honest client keeps its latency < 5 s while the flood runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_byte_data_frames_is_served_exactly() {
    const FRAMES: u64 = 50_000;
    let target = Target::start(|config| config);
    let (server, authority) = (target.addr(), target.authority());
    let flood = tokio::spawn(async move {
        let settings = PeerSettings::default();
        let mut config = settings.quiche_config().unwrap();
        let mut peer = QuicPeer::connect_h3(&mut config, &settings, attacker_bind(), server).await.unwrap();
        tiny_data_flood(&mut peer, &authority, "/count", FRAMES).await.unwrap()
    });
    target.assert_honest_served("a tiny-frame flood", 3).await;
    let outcome = guarded("the flood to end", flood).await.unwrap();
    assert_eq!(outcome.frames_sent, FRAMES);
    let response = outcome.response.expect("a response");
    assert_eq!((response.status, response.body), (Some(200), FRAMES.to_string().into_bytes()));
}

/// A client asks for 100 responses of 1 GiB each and never reads them (it acknowledges packets,
/// so the connection stays alive, but its flow-control windows, 4 MiB per connection and 64 KiB
/// per stream, never reopen). Bound: the server pulls at most 100 x (256 KiB send budget + 2
/// chunks of 16 KiB) + 4 MiB from the handlers (about 33 MiB of the 100 GiB asked for), and the
/// test process's resident memory grows by less than 128 MiB; honest latency < 5 s meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_bounded_memory() {
    const STREAMS: u64 = 100;
    const SEND_BUDGET_BYTES: u64 = 256 * 1024;
    const ATTACKER_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
    let produced_bound = STREAMS * (SEND_BUDGET_BYTES + 2 * STREAM_CHUNK_BYTES as u64) + ATTACKER_WINDOW_BYTES;
    let target = Target::start(|config| config.max_streams(STREAMS, 100));
    target.assert_honest_served("warm-up", 1).await;
    let rss_before = resident_bytes();

    let settings =
        PeerSettings { max_data: ATTACKER_WINDOW_BYTES, max_stream_data: 64 * 1024, ..PeerSettings::default() };
    let mut config = settings.quiche_config().unwrap();
    let mut peer = target.attacker(&settings, &mut config).await;
    let streams =
        guarded("requests", open_unread(&mut peer, &target.authority(), "/stream/1073741824", STREAMS as usize))
            .await
            .unwrap();
    assert_eq!(streams.len() as u64, STREAMS);
    let holder = tokio::spawn(async move { peer.keep_alive(false).await });
    // Every stream has filled the attacker's window and the server's send budget behind it.
    wait_until("the server to fill every stream's budget", || {
        target.observed.produced_bytes.load(Ordering::Relaxed) >= STREAMS * SEND_BUDGET_BYTES / 2
    })
    .await;
    target.assert_honest_served("100 stalled streams", 5).await;
    let produced = target.observed.produced_bytes.load(Ordering::Relaxed);
    assert!(produced <= produced_bound, "the server pulled {produced} bytes, bound {produced_bound}");
    let growth = resident_bytes().saturating_sub(rss_before);
    eprintln!(
        "never-read: the server pulled {produced} bytes (bound {produced_bound}); resident memory grew {growth} bytes"
    );
    assert!(growth < 128 * 1024 * 1024, "resident memory grew by {growth} bytes");
    holder.abort();
}

/// Resident set size of this test process (Linux), in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|pages| pages.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Idle connections up to `max_connections` (16), kept alive with PINGs.
/// Bound (documented behaviour at the endpoint limit): a 17th client, honest or not, is refused at
/// once with CONNECTION_REFUSED after a Retry (a typed, retryable error), never left to time out;
/// the server holds exactly 16 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_limit_get_others_a_clean_refusal() {
    let target = Target::start(|config| config.max_connections(16));
    let mut idle =
        guarded("idle connections", open_idle(&PeerSettings::default(), ATTACKER_IP, target.addr(), 16)).await.unwrap();
    assert_eq!((idle.open, idle.refused, idle.failed), (16, 0, 0));
    let refused = tokio::time::timeout(HONEST_LATENCY_LIMIT, target.honest_connect()).await.expect("a prompt answer");
    match refused {
        Err(quiver_h3::Error::Connect(ConnectError::HandshakeFailed(ConnectionError::PeerClosed(close)))) => {
            assert_eq!((close.is_application, close.code), (false, 0x2), "CONNECTION_REFUSED: {close:?}");
        }
        Err(other) => panic!("expected CONNECTION_REFUSED, got {other:?}"),
        Ok(_) => panic!("expected CONNECTION_REFUSED, got a connection"),
    }
    assert_eq!(target.endpoint.stats().active_connections, 16);
    assert_eq!(idle.alive(), 16, "the server keeps the idle connections it accepted");
}

/// The same attack against a server with a per-source limit (8 of 16): the attacker gets 8 and is
/// refused the rest, and the honest client (another source) is served.
/// Bound: at most 8 connections from the attacker's address; honest latency < 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_source_stop_at_its_limit() {
    let target = Target::start(|config| config.max_connections(16).max_connections_per_source(8));
    let idle =
        guarded("idle connections", open_idle(&PeerSettings::default(), ATTACKER_IP, target.addr(), 16)).await.unwrap();
    assert_eq!((idle.open, idle.refused, idle.failed), (8, 8, 0));
    target.assert_honest_served("8 idle connections from one source", 3).await;
    drop(idle);
}

/// The attacker's plain request path works, so a test above that sees no response is seeing the
/// server's defence, not a broken attacker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attacker_is_a_working_http3_client() {
    let target = Target::start(|config| config);
    let settings = PeerSettings::default();
    let mut config = settings.quiche_config().unwrap();
    let mut peer = target.attacker(&settings, &mut config).await;
    let response = guarded("GET", peer.get(&target.authority(), "/bytes/5000")).await.unwrap();
    assert_eq!((response.status, response.body_bytes, response.finished), (Some(200), 5000, true));
    assert_eq!(attacker::ALPN, quiver_h3::ALPN);
}
