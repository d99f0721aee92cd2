//! Loss soak: HTTP/3 with Quiver on both sides through a relay that drops 5% of the datagrams each
//! way and holds others back behind later ones (`quiver_test_support::relay::lossy`). Transfers must complete byte-exact;
//! only QUIC's recovery stands between the impairments and the bytes.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use quiver::Endpoint;
use quiver_h3::{BodyError, H3Connection, RecvBody, Server};
use quiver_test_support::guarded_for;
use quiver_test_support::relay::lossy::{DirectionStats, Impairment, LossyRelay, RelayConfig};
use support::{BULK_WINDOWS, connect, server_endpoint, trusting};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// Timeouts here are guards against a hang, never part of what is tested; a 100 MiB transfer through
/// 5% loss on a loaded two-core machine takes longer than the usual guard allows.
const SOAK_GUARD: Duration = Duration::from_secs(120);

/// The impairment under test: 5% loss, and 5% of the datagrams overtaken by the next three (enough to
/// trip QUIC's packet-threshold loss detection: spurious retransmits, too).
fn five_percent_loss_and_reordering() -> Impairment {
    Impairment::lossy(0.05, 0.05, 3)
}

/// Byte `offset` of every generated body: position-dependent, so a lost, repeated or misplaced chunk
/// cannot go unnoticed.
fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8 ^ (offset >> 12) as u8
}

fn pattern(start: u64, len: usize) -> Vec<u8> {
    (start..start + len as u64).map(pattern_byte).collect()
}

/// FNV-1a, to report what was checked.
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3))
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Chunks the server streams a `/bytes/N` body in.
const CHUNK_BYTES: usize = 64 * 1024;

type Body = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// `/bytes/N`: N pattern bytes, generated as they are sent; `/echo`: the request body back.
async fn route(request: Request<RecvBody>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    if let Some(len) = path.strip_prefix("/bytes/").and_then(|len| len.parse::<u64>().ok()) {
        let chunks = (0..len.div_ceil(CHUNK_BYTES as u64)).map(move |index| {
            let start = index * CHUNK_BYTES as u64;
            let chunk = pattern(start, (len - start).min(CHUNK_BYTES as u64) as usize);
            Ok::<_, BodyError>(http_body::Frame::data(Bytes::from(chunk)))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        return Ok(Response::builder().header("content-length", len).body(body).unwrap());
    }
    if path == "/echo" {
        return Ok(Response::new(request.into_body().boxed()));
    }
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::NOT_FOUND;
    Ok(response)
}

/// A server, a relay in front of it, and one HTTP/3 connection through the relay.
struct Soak {
    relay: LossyRelay,
    connection: H3Connection,
    _server: Endpoint,
    _client: Endpoint,
}

async fn start(impairment: Impairment, seed: u64) -> Soak {
    let (server, identity) =
        server_endpoint(|config| config.max_streams(1000, 100).flow_control(BULK_WINDOWS.0, BULK_WINDOWS.1));
    tokio::spawn(Server::new(tower::service_fn(route)).serve(server.clone()));
    let relay = LossyRelay::start(server.local_addr(), RelayConfig::symmetric(impairment, seed)).await.unwrap();
    let client_config = trusting(&identity).flow_control(BULK_WINDOWS.0, BULK_WINDOWS.1).build().unwrap();
    let (client, connection) = connect(client_config, relay.addr()).await;
    Soak { relay, connection, _server: server, _client: client }
}

impl Soak {
    /// Fails unless the relay really dropped and reordered about as configured, both ways.
    fn assert_impaired(&self, started: Instant, what: &str) {
        let report = |direction: &str, stats: DirectionStats| {
            eprintln!(
                "{what}: {direction}: {} datagrams, {} dropped ({:.2}%), {} reordered, {} duplicated, {} overflowed",
                stats.received,
                stats.dropped,
                100.0 * stats.loss_ratio(),
                stats.reordered,
                stats.duplicated,
                stats.overflowed
            );
            assert!(stats.dropped > 0 && stats.reordered > 0, "{direction}: the relay did not impair anything");
            if stats.received >= 2000 {
                let ratio = stats.loss_ratio();
                assert!((0.035..0.065).contains(&ratio), "{direction}: loss {ratio:.4} is not about 5%");
            }
        };
        report("client to server", self.relay.client_to_server());
        report("server to client", self.relay.server_to_client());
        eprintln!("{what}: done in {:.1?}", started.elapsed());
    }
}

async fn get(connection: &H3Connection, path: &str) -> Response<RecvBody> {
    let request = Request::get(format!("https://localhost{path}")).body(Full::new(Bytes::new())).unwrap();
    guarded_for(SOAK_GUARD, "response head", connection.send_request(request)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_get_is_byte_exact_through_loss_and_reordering() {
    const LEN: u64 = 100 * 1024 * 1024;
    let soak = start(five_percent_loss_and_reordering(), 0x9e11).await;
    let started = Instant::now();
    let response = get(&soak.connection, &format!("/bytes/{LEN}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let (mut offset, mut hash) = (0u64, FNV_OFFSET);
    let mut expected = Vec::new();
    while let Some(frame) = guarded_for(SOAK_GUARD, "body frame", body.frame()).await {
        let frame = frame.unwrap_or_else(|err| panic!("body failed after {offset} bytes: {err}"));
        let Ok(data) = frame.into_data() else { continue };
        assert!(offset + data.len() as u64 <= LEN, "more than {LEN} bytes");
        expected.clear();
        expected.extend((offset..offset + data.len() as u64).map(pattern_byte));
        assert!(data[..] == expected[..], "bytes differ in {}..{}", offset, offset + data.len() as u64);
        hash = fnv(hash, &data);
        offset += data.len() as u64;
    }
    assert_eq!(offset, LEN, "body ended early");
    assert_eq!(hash, fnv(FNV_OFFSET, &pattern(0, LEN as usize)));
    let stats = soak.connection.quic().stats().await;
    eprintln!("100 MiB: fnv {hash:016x}; client connection {stats:?}");
    soak.assert_impaired(started, "100 MiB GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_requests_are_byte_exact_through_loss_and_reordering() {
    const REQUESTS: usize = 10_000;
    /// Requests in flight at once: many streams share every packet, and a lost packet stalls several.
    const CONCURRENT: usize = 200;
    let soak = start(five_percent_loss_and_reordering(), 0x10_000).await;
    let started = Instant::now();
    let in_flight = Arc::new(Semaphore::new(CONCURRENT));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..REQUESTS {
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let connection = soak.connection.clone();
        tasks.spawn(async move {
            let _permit = permit;
            // Alternate uploads (echoed back) and downloads, 0 to ~3 KB each: some fit one packet,
            // some need several.
            let len = (index * 7919) % 3000;
            let (request, expected) = if index % 2 == 0 {
                let sent = pattern(index as u64, len);
                let request = Request::builder()
                    .method(Method::POST)
                    .uri("https://localhost/echo")
                    .body(Full::new(Bytes::from(sent.clone())))
                    .unwrap();
                (request, sent)
            } else {
                let request =
                    Request::get(format!("https://localhost/bytes/{len}")).body(Full::new(Bytes::new())).unwrap();
                (request, pattern(0, len))
            };
            let response =
                connection.send_request(request).await.unwrap_or_else(|err| panic!("request {index}: {err}"));
            assert_eq!(response.status(), StatusCode::OK, "request {index}");
            let body = response.into_body().collect().await.unwrap_or_else(|err| panic!("body {index}: {err}"));
            assert!(body.to_bytes()[..] == expected[..], "request {index}: body differs");
        });
    }
    while let Some(done) = guarded_for(SOAK_GUARD, "requests", tasks.join_next()).await {
        done.unwrap();
    }
    let stats = soak.connection.quic().stats().await;
    eprintln!("10k requests: client connection {stats:?}");
    soak.assert_impaired(started, "10k requests");
}

/// The relay does what it is told: every datagram arrives unless dropped, reordering and duplication
/// show, and delay holds datagrams back at least that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_impairs_as_configured() {
    const DATAGRAMS: u32 = 2000;
    const BATCH: u32 = 50;
    let impairment = Impairment {
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.1,
        reorder_distance: 3,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(2),
    };
    let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = LossyRelay::start(
        receiver.local_addr().unwrap(),
        RelayConfig { client_to_server: impairment, server_to_client: Impairment::NONE, seed: 42 },
    )
    .await
    .unwrap();
    // Receive as the relay sends: a socket buffer left unread would overflow and lose datagrams.
    let (arrivals_tx, mut arrivals_rx) = tokio::sync::mpsc::unbounded_channel();
    let receiving = tokio::spawn(async move {
        let mut buffer = [0u8; 16];
        while let Ok(len) = receiver.recv(&mut buffer).await {
            let sequence = u32::from_be_bytes(buffer[..len].try_into().unwrap());
            if arrivals_tx.send((sequence, Instant::now())).is_err() {
                break;
            }
        }
    });
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sender.connect(relay.addr()).await.unwrap();
    let first_sent = Instant::now();
    let mut arrivals = Vec::new();
    let mut first_arrival = None;
    // In batches, each drained through the relay and read back before the next goes: the relay
    // releases a delayed batch all at once, and a burst larger than a socket buffer would be lost
    // in the kernel whenever the receiving task is slow to run (a loaded machine), not by the relay.
    for batch in 0..DATAGRAMS / BATCH {
        for sequence in batch * BATCH..(batch + 1) * BATCH {
            sender.send(&sequence.to_be_bytes()).await.unwrap();
        }
        let received = u64::from((batch + 1) * BATCH);
        let stats = guarded_for(SOAK_GUARD, "relay drained", async {
            loop {
                let stats = relay.client_to_server();
                if stats.received == received
                    && stats.sent == stats.received - stats.dropped + stats.duplicated - stats.overflowed
                {
                    break stats;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        while arrivals.len() < stats.sent as usize {
            let (sequence, at) = guarded_for(SOAK_GUARD, "datagram", arrivals_rx.recv()).await.unwrap();
            first_arrival.get_or_insert(at);
            arrivals.push(sequence);
        }
    }
    let stats = relay.client_to_server();
    receiving.abort();
    assert_eq!(stats.overflowed, 0);
    assert!((150..250).contains(&stats.dropped), "{stats:?}");
    assert!(stats.duplicated > 50 && stats.reordered > 100, "{stats:?}");
    assert!(first_arrival.unwrap() - first_sent >= Duration::from_millis(20), "delay not applied");
    let mut unique = arrivals.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len() as u64, u64::from(DATAGRAMS) - stats.dropped, "a datagram was lost beyond the drops");
    assert_eq!(arrivals.len() - unique.len(), stats.duplicated as usize);
    assert!(arrivals.windows(2).any(|pair| pair[0] > pair[1]), "nothing arrived out of order");
}
