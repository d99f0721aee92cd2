//! `quiver-attack`: one attack of the adversarial suite (or the honest client that measures a
//! server under attack) as a process of its own, for `bench/attack.sh`.
//!
//! ```text
//! quiver-attack ATTACK --server ADDR [--bind IP] [--seconds S] [--count N]
//! ATTACK: honest | partial-handshakes | slow-handshakes | streams | header-bomb | tiny-data | unread | idle
//! ```
//!
//! Every attack runs on one thread at full speed for `--seconds` and prints one `key=value` line
//! of what it did; `honest` prints its success rate and latency percentiles. The server is expected
//! to serve `GET /bytes/N` (as `quiver serve` does). Exit codes: 0 done, 1 failed, 2 bad usage.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use quiver_test_support::attacker::{
    self, HeaderBomb, HoldStyle, PeerSettings, QuicPeer, exhaust_streams, header_bomb, open_idle, open_unread,
    partial_handshakes, slow_handshake, tiny_data_flood,
};

const USAGE: &str = "usage: quiver-attack ATTACK --server ADDR [--bind IP] [--seconds S] [--count N]\n\
ATTACK: honest | partial-handshakes | slow-handshakes | streams | header-bomb | tiny-data | unread | idle";

/// One honest request may take this long before it counts as failed.
const HONEST_ATTEMPT_LIMIT: Duration = Duration::from_secs(5);
/// Pause between honest requests: the honest client measures, it does not add load of its own.
const HONEST_INTERVAL: Duration = Duration::from_millis(20);
/// How long the slow-handshake attacker holds each of its datagrams.
const SLOW_HANDSHAKE_DELAY: Duration = Duration::from_millis(250);
/// 1-byte DATA frames per request of the tiny-data flood (the next request follows at once).
const TINY_FRAMES_PER_REQUEST: u64 = 100_000;
/// What the unread attack asks for: far more than any window, so every stream stalls.
const UNREAD_PATH: &str = "/bytes/1073741824";

struct Args {
    attack: String,
    server: SocketAddr,
    bind: IpAddr,
    seconds: f64,
    count: Option<usize>,
}

fn parse(mut words: impl Iterator<Item = String>) -> Result<Args, String> {
    let attack = words.next().ok_or("missing ATTACK")?;
    let (mut server, mut bind, mut seconds, mut count) = (None, IpAddr::from([127, 0, 0, 3]), 10.0, None);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {value:?}: not {what}");
        match flag.as_str() {
            "--server" => server = Some(value.parse().map_err(|_| bad("an address"))?),
            "--bind" => bind = value.parse().map_err(|_| bad("an IP address"))?,
            "--seconds" => seconds = value.parse().map_err(|_| bad("a number"))?,
            "--count" => count = Some(value.parse().map_err(|_| bad("a count"))?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Args { attack, server: server.ok_or("--server is required")?, bind, seconds, count })
}

fn main() {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("quiver-attack: {problem}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // One thread: the attack gets one core, as bench/attack.sh pins it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(line) => println!("{line}"),
        Err(err) => {
            eprintln!("quiver-attack {}: {err}", args.attack);
            std::process::exit(1);
        }
    }
}

async fn run(args: &Args) -> io::Result<String> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.0));
    let authority = format!("localhost:{}", args.server.port());
    let bind = SocketAddr::new(args.bind, 0);
    let settings = PeerSettings::default();
    let left = || deadline.saturating_duration_since(Instant::now());
    Ok(match args.attack.as_str() {
        "honest" => honest(args, &authority, deadline).await?,
        "partial-handshakes" => {
            let socket = tokio::net::UdpSocket::bind(bind).await?;
            let mut total = attacker::PartialOutcome::default();
            while !left().is_zero() {
                let batch = partial_handshakes(&settings, &socket, args.server, 64, Duration::from_secs(1)).await?;
                total.answered += batch.answered;
                total.refused += batch.refused;
                total.retried += batch.retried;
                total.silent += batch.silent;
            }
            format!(
                "attack=partial-handshakes answered={} refused={} retried={} silent={}",
                total.answered, total.refused, total.retried, total.silent
            )
        }
        "slow-handshakes" => {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..args.count.unwrap_or(100) {
                let (settings, server) = (settings.clone(), args.server);
                tasks.spawn(async move {
                    let (mut established, mut failed) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        match slow_handshake(&settings, bind, server, SLOW_HANDSHAKE_DELAY).await {
                            Ok(mut peer) => {
                                established += 1;
                                let _ = peer.close().await;
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    (established, failed)
                });
            }
            let (mut established, mut failed) = (0, 0);
            while let Some(done) = tasks.join_next().await {
                let (ok, bad) = done.map_err(io::Error::other)?;
                established += ok;
                failed += bad;
            }
            format!("attack=slow-handshakes established={established} failed={failed}")
        }
        "streams" => {
            // Partial header sections: the demo site answers complete requests at once, so only
            // streams whose headers never complete stay open whatever the handler does.
            let hold = async |peer: &mut QuicPeer| {
                exhaust_streams(peer, &authority, "/bytes/1", HoldStyle::PartialHeaders).await
            };
            let (alive, opened) = hold_connections(args, args.count.unwrap_or(20), deadline, hold).await?;
            format!("attack=streams connections={alive} streams_held={opened}")
        }
        "header-bomb" => {
            // A header section is written in one piece, so it has to fit the initial window.
            let bomber = PeerSettings { initial_congestion_window_packets: 200, ..settings.clone() };
            let mut bomber_config = bomber.quiche_config()?;
            let bombs = [
                HeaderBomb::HugeValue { value_bytes: 64 * 1024 },
                HeaderBomb::ManyFields { fields: 10_000 },
                HeaderBomb::IndexedFields { fields: 20_000 },
            ];
            let (mut sent, mut closed, mut reset, mut answered) = (0u64, 0u64, 0u64, 0u64);
            while !left().is_zero() {
                let bomb = bombs[(sent % bombs.len() as u64) as usize];
                let mut peer = QuicPeer::connect_h3(&mut bomber_config, &bomber, bind, args.server).await?;
                let outcome = header_bomb(&mut peer, &authority, bomb).await?;
                sent += 1;
                match (outcome.connection_closed, outcome.stream) {
                    (Some(_), _) => closed += 1,
                    (None, Some(stream)) if stream.reset.is_some() => reset += 1,
                    _ => answered += 1,
                }
                let _ = peer.close().await;
            }
            format!(
                "attack=header-bomb sent={sent} connection_closed={closed} stream_reset={reset} answered={answered}"
            )
        }
        "tiny-data" => {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..args.count.unwrap_or(4) {
                let (settings, server, authority) = (settings.clone(), args.server, authority.clone());
                tasks.spawn(async move {
                    let mut frames = 0u64;
                    let mut config = settings.quiche_config()?;
                    while Instant::now() < deadline {
                        let mut peer = QuicPeer::connect_h3(&mut config, &settings, bind, server).await?;
                        while Instant::now() < deadline && !peer.is_closed() {
                            let flood = tiny_data_flood(&mut peer, &authority, "/bytes/1", TINY_FRAMES_PER_REQUEST);
                            match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), flood).await
                            {
                                Ok(outcome) => frames += outcome?.frames_sent,
                                Err(_) => break,
                            }
                        }
                        let _ = peer.close().await;
                    }
                    io::Result::Ok(frames)
                });
            }
            let mut frames = 0;
            while let Some(done) = tasks.join_next().await {
                frames += done.map_err(io::Error::other)??;
            }
            format!("attack=tiny-data frames_sent={frames}")
        }
        "unread" => {
            // Windows as an ordinary client offers them: the server may fill them once.
            let hold =
                async |peer: &mut QuicPeer| Ok(open_unread(peer, &authority, UNREAD_PATH, usize::MAX).await?.len());
            let (alive, unread) = hold_connections(args, args.count.unwrap_or(10), deadline, hold).await?;
            format!("attack=unread connections={alive} streams_unread={unread}")
        }
        "idle" => {
            let mut idle = open_idle(&settings, args.bind, args.server, args.count.unwrap_or(500)).await?;
            tokio::time::sleep(left()).await;
            let alive = idle.alive();
            format!(
                "attack=idle open={} refused={} failed={} alive_at_end={alive}",
                idle.open, idle.refused, idle.failed
            )
        }
        other => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unknown attack {other:?}\n{USAGE}"))),
    })
}

/// Opens `count` connections, lets `hold` misbehave on each (summing what it reports), and keeps
/// them all alive without reading a byte until `deadline`. Returns (connections alive at the end,
/// sum of what `hold` reported).
async fn hold_connections(
    args: &Args,
    count: usize,
    deadline: Instant,
    hold: impl AsyncFn(&mut QuicPeer) -> io::Result<usize>,
) -> io::Result<(usize, usize)> {
    let settings = PeerSettings::default();
    let mut config = settings.quiche_config()?;
    let mut held = tokio::task::JoinSet::new();
    let mut total = 0;
    for _ in 0..count {
        let mut peer = QuicPeer::connect_h3(&mut config, &settings, SocketAddr::new(args.bind, 0), args.server).await?;
        total += hold(&mut peer).await?;
        held.spawn(async move { peer.keep_alive(false).await });
    }
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    while held.try_join_next().is_some() {}
    Ok((held.len(), total))
}

/// Fresh connection, `GET /bytes/100`, close; again every 20 ms until the deadline. Each attempt
/// (handshake included) succeeds if a complete 200 response arrives within 5 s.
async fn honest(args: &Args, authority: &str, deadline: Instant) -> io::Result<String> {
    let settings = PeerSettings::default();
    let mut config = settings.quiche_config()?;
    let bind = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0);
    let (mut attempts, mut latencies_us) = (0u64, Vec::new());
    while Instant::now() < deadline {
        attempts += 1;
        let started = Instant::now();
        let attempt = async {
            let mut peer = QuicPeer::connect_h3(&mut config, &settings, bind, args.server).await?;
            let response = peer.get(authority, "/bytes/100").await?;
            let _ = peer.close().await;
            io::Result::Ok(response.status == Some(200) && response.finished && response.body_bytes == 100)
        };
        if let Ok(Ok(true)) = tokio::time::timeout(HONEST_ATTEMPT_LIMIT, attempt).await {
            latencies_us.push(started.elapsed().as_micros() as u64);
        }
        tokio::time::sleep(HONEST_INTERVAL).await;
    }
    latencies_us.sort_unstable();
    let percentile = |fraction: f64| {
        if latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((latencies_us.len() - 1) as f64 * fraction).round() as usize;
        latencies_us[index] as f64 / 1000.0
    };
    let succeeded = latencies_us.len() as u64;
    Ok(format!(
        "honest attempts={attempts} succeeded={succeeded} success_pct={:.1} p50_ms={:.2} p99_ms={:.2}",
        if attempts == 0 { 0.0 } else { succeeded as f64 * 100.0 / attempts as f64 },
        percentile(0.50),
        percentile(0.99)
    ))
}
