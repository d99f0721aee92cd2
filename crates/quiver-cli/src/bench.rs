//! `quiver bench`: an h2load-style HTTP/3 load generator. Every response's status and body length are
//! checked; a wrong one is an error, not a fast request.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use quiver::Endpoint;
use quiver_h3::H3Connection;

use crate::get::UsageError;

/// Options of `quiver bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The https:// URL every request asks for.
    pub url: String,
    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub connections: usize,
    /// Concurrent requests (streams) per connection.
    #[arg(short = 'm', long, default_value_t = 1)]
    pub streams: usize,
    /// Total requests (default 10000 unless --duration is given).
    #[arg(short = 'n', long, conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Run for this many seconds instead of a request count.
    #[arg(short = 'd', long)]
    pub duration: Option<f64>,
    /// Client runtime threads (and client sockets).
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// Only measure handshakes: connect, then close, as fast as possible.
    #[arg(long)]
    pub hs_only: bool,
    /// Open -c connections, keep them idle (no requests) for this many seconds, then close them: for
    /// measuring a server's memory per idle connection. Prints a line when all are open.
    #[arg(long, conflicts_with_all = ["hs_only", "requests", "duration"])]
    pub hold: Option<f64>,
    /// Open a new connection after this many requests on one.
    #[arg(long)]
    pub reqs_per_conn: Option<u64>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request body size in bytes (sent with every request).
    #[arg(long, default_value_t = 0)]
    pub body: usize,
    /// Do not verify the server certificate.
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// TLS key-exchange groups to offer, colon-separated (BoringSSL names). The default, X25519, is
    /// what the project's reference figures use; `X25519MLKEM768:X25519` adds the post-quantum hybrid.
    #[arg(long, default_value = "X25519")]
    pub groups: String,
    /// Resume TLS sessions on new connections (session tickets), as a returning browser does. Off by
    /// default: every handshake is a full one, certificate and signature included.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    handshakes: AtomicU64,
    resumed: AtomicU64,
}

struct Plan {
    addr: SocketAddr,
    server_name: String,
    uri: Uri,
    method: Method,
    body: Bytes,
    limit: Option<u64>,
    deadline: Option<Instant>,
    reqs_per_conn: u64,
    hs_only: bool,
    resume: bool,
    /// Set when a server sent no ticket within [`TICKET_PATIENCE`]: later connections stop waiting.
    no_tickets: AtomicBool,
    issued: AtomicU64,
    stop: AtomicBool,
    totals: Totals,
}

impl Plan {
    /// Claims the right to send one more request (or open one more connection with --hs-only).
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return false;
        }
        match self.limit {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.streams == 0 || args.threads == 0 {
        return Err(UsageError("-c, -m and -t must be at least 1".into()).into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let uri: Uri = args.url.parse().map_err(|_| UsageError(format!("invalid URL {:?}", args.url)))?;
    let host = uri.host().ok_or_else(|| UsageError(format!("URL {:?} has no host", args.url)))?.to_owned();
    if uri.scheme_str() != Some("https") {
        return Err(UsageError("URL must be https://".into()).into());
    }
    let port = uri.port_u16().unwrap_or(443);
    let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let addr = tokio::net::lookup_host((host_for_lookup.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let method = Method::from_bytes(args.method.as_bytes()).map_err(|_| UsageError("invalid --method".into()))?;
    let limit = match (args.requests, args.duration) {
        (Some(requests), _) => Some(requests),
        (None, Some(_)) => None,
        (None, None) => Some(10_000),
    };
    let started = Instant::now();
    let plan = Arc::new(Plan {
        addr,
        server_name: host_for_lookup,
        uri,
        method,
        body: Bytes::from(vec![b'x'; args.body]),
        limit,
        deadline: args.duration.map(|seconds| started + Duration::from_secs_f64(seconds)),
        reqs_per_conn: args.reqs_per_conn.unwrap_or(u64::MAX),
        hs_only: args.hs_only,
        resume: args.resume,
        no_tickets: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        totals: Totals::default(),
    });

    let mut config = quiver_h3::client_config()
        .flow_control(64 * 1024 * 1024, 16 * 1024 * 1024)
        .key_exchange_groups(args.groups.split(':'))
        .session_resumption(args.resume);
    if args.insecure {
        config = config.insecure_skip_verification();
    }
    let config = config.build()?;
    let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let endpoints: Vec<Endpoint> =
        (0..args.threads).map(|_| Endpoint::client(bind, config.clone())).collect::<Result<_, _>>()?;

    if let Some(seconds) = args.hold {
        return hold_idle(&plan, &endpoints, args.connections, Duration::from_secs_f64(seconds.max(0.0))).await;
    }
    let progress = std::io::stderr().is_terminal().then(|| tokio::spawn(progress_line(plan.clone(), started)));
    let mut tasks = Vec::new();
    for index in 0..args.connections {
        let endpoint = endpoints[index % endpoints.len()].clone();
        tasks.push(tokio::spawn(drive_connection(plan.clone(), endpoint, args.streams)));
    }
    let mut latencies_us: Vec<u32> = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(mut samples)) => latencies_us.append(&mut samples),
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(err) => {
                first_error.get_or_insert(anyhow::anyhow!("connection task failed: {err}"));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    report(&args, &plan.totals, &mut latencies_us, elapsed);
    let totals = &plan.totals;
    if let Some(err) = first_error
        && totals.requests.load(Ordering::Relaxed) == 0
        && totals.handshakes.load(Ordering::Relaxed) == 0
    {
        return Err(err);
    }
    if totals.errors.load(Ordering::Relaxed) > 0 {
        bail!("{} requests failed", totals.errors.load(Ordering::Relaxed));
    }
    Ok(())
}

async fn connect(plan: &Plan, endpoint: &Endpoint) -> anyhow::Result<H3Connection> {
    let connection = H3Connection::connect(endpoint, plan.addr, &plan.server_name)
        .await
        .with_context(|| format!("cannot connect to {}", plan.addr))?;
    plan.totals.handshakes.fetch_add(1, Ordering::Relaxed);
    if connection.quic().handshake().resumed {
        plan.totals.resumed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(connection)
}

/// Handshakes opened at once by `--hold`: enough to open 10k connections in seconds without the
/// burst overflowing a server's accept queue.
const HOLD_PARALLEL_HANDSHAKES: usize = 64;

/// `--hold`: opens `count` connections, keeps them idle for `duration`, closes them.
async fn hold_idle(plan: &Arc<Plan>, endpoints: &[Endpoint], count: usize, duration: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(HOLD_PARALLEL_HANDSHAKES));
    let mut opening = Vec::with_capacity(count);
    for index in 0..count {
        let (plan, endpoint, permits) = (plan.clone(), endpoints[index % endpoints.len()].clone(), permits.clone());
        opening.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            connect(&plan, &endpoint).await
        }));
    }
    let mut open = Vec::with_capacity(count);
    for task in opening {
        open.push(task.await.map_err(|err| anyhow::anyhow!("connection task failed: {err}"))??);
    }
    println!(
        "idle connections: {} open in {:.2} s; holding for {:.1} s",
        open.len(),
        started.elapsed().as_secs_f64(),
        duration.as_secs_f64()
    );
    tokio::time::sleep(duration).await;
    let closed = open.iter().filter(|connection| connection.is_closed()).count();
    for connection in &open {
        connection.quic().close(0, "benchmark done");
    }
    println!("idle connections: {closed} closed by the server or idle timeout while held");
    if closed > 0 {
        bail!("{closed} of {count} idle connections did not survive the hold");
    }
    Ok(())
}

/// One connection slot: `streams` concurrent request loops, reconnecting after --reqs-per-conn.
async fn drive_connection(plan: Arc<Plan>, endpoint: Endpoint, streams: usize) -> anyhow::Result<Vec<u32>> {
    let mut samples = Vec::new();
    if plan.hs_only {
        while plan.claim() {
            // Close without waiting out the draining period: that is not handshake cost.
            let connection = connect(&plan, &endpoint).await?;
            if plan.resume && !plan.no_tickets.load(Ordering::Relaxed) {
                await_session_ticket(&plan, &endpoint, &connection).await;
            }
            connection.quic().close(0, "benchmark");
        }
        return Ok(samples);
    }
    while !plan.stop.load(Ordering::Relaxed) {
        let connection = match connect(&plan, &endpoint).await {
            Ok(connection) => connection,
            Err(err) => {
                plan.totals.errors.fetch_add(1, Ordering::Relaxed);
                plan.stop.store(true, Ordering::Relaxed);
                return Err(err);
            }
        };
        let budget = Arc::new(AtomicU64::new(plan.reqs_per_conn));
        let mut loops = Vec::with_capacity(streams);
        for _ in 0..streams {
            loops.push(tokio::spawn(request_loop(plan.clone(), connection.clone(), budget.clone())));
        }
        let mut exhausted = false;
        for request_loop in loops {
            let (mut loop_samples, loop_exhausted) = request_loop.await.unwrap_or_default();
            samples.append(&mut loop_samples);
            exhausted |= loop_exhausted;
        }
        connection.quic().close(0, "benchmark done");
        if !exhausted {
            break;
        }
    }
    Ok(samples)
}

/// How long `--hs-only --resume` waits for a server's first session ticket before closing anyway.
const TICKET_PATIENCE: Duration = Duration::from_secs(2);

/// With `--resume`, keeps a connection open until the endpoint holds a session ticket for the server:
/// the ticket arrives after the handshake, so closing at once (what `--hs-only` does) would leave
/// every later connection without one to resume. Only the first connections wait; once a ticket is
/// held, the rest close at once. A server that sends none costs one wait, not one per connection.
async fn await_session_ticket(plan: &Plan, endpoint: &Endpoint, connection: &H3Connection) {
    let deadline = Instant::now() + TICKET_PATIENCE;
    while endpoint.session(&plan.server_name, plan.addr).is_none() && !connection.is_closed() {
        if Instant::now() >= deadline {
            plan.no_tickets.store(true, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends requests back to back; returns latencies and whether it stopped because the connection's
/// request budget ran out (so the caller reconnects).
async fn request_loop(plan: Arc<Plan>, connection: H3Connection, budget: Arc<AtomicU64>) -> (Vec<u32>, bool) {
    let mut samples = Vec::new();
    loop {
        if budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_err() {
            return (samples, true);
        }
        if !plan.claim() {
            return (samples, false);
        }
        let started = Instant::now();
        let request =
            Request::builder().method(plan.method.clone()).uri(plan.uri.clone()).body(Full::new(plan.body.clone()));
        let outcome = match request {
            Ok(request) => exchange(&connection, request).await,
            Err(err) => Err(anyhow::anyhow!("{err}")),
        };
        match outcome {
            Ok(bytes) => {
                samples.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                plan.totals.requests.fetch_add(1, Ordering::Relaxed);
                plan.totals.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(err) => {
                if plan.totals.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("quiver bench: first error: {err:#}");
                }
                if connection.is_closed() {
                    return (samples, true);
                }
            }
        }
    }
}

/// One request; fails unless the status is 2xx and the body length matches content-length.
async fn exchange(connection: &H3Connection, request: Request<Full<Bytes>>) -> anyhow::Result<u64> {
    let response = connection.send_request(request).await?;
    let status = response.status();
    let expected: Option<u64> = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            received += data.len() as u64;
        }
    }
    if !status.is_success() {
        bail!("status {status}");
    }
    if let Some(expected) = expected
        && expected != received
    {
        bail!("body of {received} bytes, content-length said {expected}");
    }
    Ok(received)
}

async fn progress_line(plan: Arc<Plan>, started: Instant) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done = plan.totals.requests.load(Ordering::Relaxed) + plan.totals.handshakes.load(Ordering::Relaxed);
        eprint!(
            "\r{:>6.1}s  {done} done  {} per second  {} errors   ",
            started.elapsed().as_secs_f64(),
            done - last,
            plan.totals.errors.load(Ordering::Relaxed)
        );
        last = done;
    }
}

fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

fn report(args: &BenchArgs, totals: &Totals, latencies_us: &mut [u32], elapsed: f64) {
    let requests = totals.requests.load(Ordering::Relaxed);
    let handshakes = totals.handshakes.load(Ordering::Relaxed);
    let bytes = totals.bytes.load(Ordering::Relaxed);
    let errors = totals.errors.load(Ordering::Relaxed);
    println!(
        "quiver bench {} -c {} -m {} -t {}{}",
        args.url,
        args.connections,
        args.streams,
        args.threads,
        if args.hs_only { " --hs-only" } else { "" }
    );
    println!("finished in {elapsed:.2} s");
    if args.hs_only {
        println!("handshakes: {handshakes} ({:.0} per second), errors: {errors}", handshakes as f64 / elapsed);
        println!("resumed: {}", totals.resumed.load(Ordering::Relaxed));
        return;
    }
    latencies_us.sort_unstable();
    println!("requests: {requests} succeeded, {errors} failed, {handshakes} connections");
    println!("requests/s: {:.0}", requests as f64 / elapsed);
    println!("throughput: {:.1} MB/s ({bytes} body bytes)", bytes as f64 / elapsed / 1e6);
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        percentile(latencies_us, 0.50),
        percentile(latencies_us, 0.90),
        percentile(latencies_us, 0.99),
        latencies_us.last().map_or(0.0, |max| f64::from(*max) / 1000.0)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&samples, 0.5), 51.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
