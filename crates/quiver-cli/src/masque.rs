//! `quiver masque`: a CONNECT-UDP proxy, a client that forwards a local UDP port through one, and a
//! throughput benchmark of UDP through a tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver::Endpoint;
use quiver_masque::ip::{IpGateway, IpGatewayConfig, IpNetwork, TunDevice};
use quiver_masque::{
    ForwardEvent, MasqueClient, Proxy, ProxyConfig, Target, TargetPolicy, TunnelError, UdpForwarder, UdpTunnel,
    UriTemplate,
};
use tokio::net::UdpSocket;

use crate::admission::{AdmissionArgs, SourceLimitArgs};
use crate::get::usage;
use crate::identity::{ClientTlsArgs, IdentityArgs};
use crate::observe::{MetricsArgs, QlogArgs};

/// Bench: how long without an echo before the datagrams in flight count as lost and are replaced.
const BENCH_LOSS_TIMEOUT: Duration = Duration::from_millis(200);

/// Options of `quiver masque`.
#[derive(Debug, clap::Args)]
pub struct MasqueArgs {
    #[command(subcommand)]
    command: MasqueCommand,
}

#[derive(Debug, clap::Subcommand)]
enum MasqueCommand {
    /// Run a CONNECT-UDP proxy (RFC 9298) over HTTP/3.
    Proxy(Box<ProxyArgs>),
    /// Forward a local UDP port to a target through a CONNECT-UDP proxy.
    Client(ClientArgs),
    /// Measure UDP echo throughput through one or more tunnels.
    Bench(BenchArgs),
}

/// Options of `quiver masque proxy`.
#[derive(Debug, clap::Args)]
struct ProxyArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Allow targets: HOST:PORTS, repeatable. HOST is * (any public address), a DNS name, an IP or a
    /// CIDR ([v6]/n in brackets); PORTS is *, N, N-M or a comma list. Without --allow: *:* (public
    /// addresses only). Loopback and private ranges need an IP/CIDR rule, e.g. 127.0.0.1/32:1-65535.
    #[arg(long, value_name = "HOST:PORTS")]
    allow: Vec<String>,
    /// URI template of tunnel requests (path and query on this proxy).
    #[arg(long, default_value = quiver_masque::DEFAULT_TEMPLATE)]
    template: String,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    admission: AdmissionArgs,
    #[command(flatten)]
    source_limit: SourceLimitArgs,
    /// Require `Proxy-Authorization: Bearer TOKEN` on every tunnel request. Needed to listen on an
    /// address other than loopback, unless --no-auth.
    #[arg(long, env = "QUIVER_MASQUE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve anyone who can reach --listen, without a token: an open relay for every allowed target.
    #[arg(long, conflicts_with = "token")]
    no_auth: bool,
    /// Tunnels one client connection may hold open.
    #[arg(long, default_value_t = quiver_masque::DEFAULT_MAX_TUNNELS_PER_CONNECTION)]
    max_tunnels_per_connection: usize,
    /// Tunnels the proxy holds open in total.
    #[arg(long, default_value_t = quiver_masque::DEFAULT_MAX_TUNNELS)]
    max_tunnels: usize,
    /// Tunnels one client address (IPv6: one /64) may hold open over all its connections.
    #[arg(long, default_value_t = quiver_masque::DEFAULT_MAX_TUNNELS_PER_SOURCE)]
    max_tunnels_per_source: usize,
    /// Name lookups one client connection may have in flight.
    #[arg(long, default_value_t = quiver_masque::DEFAULT_MAX_LOOKUPS_PER_CONNECTION)]
    max_lookups_per_connection: usize,
    /// Name lookups one client address (IPv6: one /64) may have in flight.
    #[arg(long, default_value_t = quiver_masque::DEFAULT_MAX_LOOKUPS_PER_SOURCE)]
    max_lookups_per_source: usize,
    /// Close a tunnel after this many seconds without a datagram.
    #[arg(long, value_name = "SECONDS", default_value_t = quiver_masque::DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout: u64,
    /// Seconds open tunnels keep relaying after Ctrl-C (no new tunnels are taken meanwhile).
    #[arg(long, default_value_t = 10)]
    drain_seconds: u64,
    /// Serve CONNECT-IP (RFC 9484) too: lease client addresses from this network (e.g. 10.89.0.0/24).
    /// Creates the --tun device and gives it the network's first host address (needs root, Linux).
    #[arg(long, value_name = "CIDR")]
    ip_pool: Option<String>,
    /// Destinations CONNECT-IP clients may reach (repeatable; default: the pool only). Reaching
    /// beyond this host also needs IP forwarding and NAT, which the proxy leaves to you.
    #[arg(long, value_name = "CIDR", requires = "ip_pool")]
    ip_route: Vec<String>,
    /// Name of the TUN device CONNECT-IP uses.
    #[arg(long, value_name = "NAME", default_value = "quiver-ip0", requires = "ip_pool")]
    tun: String,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    qlog: QlogArgs,
}

/// How `quiver masque client` and `bench` reach the proxy.
#[derive(Debug, clap::Args)]
struct ProxyConnectArgs {
    /// The proxy: https://HOST[:PORT].
    #[arg(long)]
    proxy: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// URI template of the proxy's tunnel requests.
    #[arg(long, default_value = quiver_masque::DEFAULT_TEMPLATE)]
    template: String,
    /// Send `Proxy-Authorization: Bearer TOKEN`.
    #[arg(long, env = "QUIVER_MASQUE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    qlog: QlogArgs,
}

/// Options of `quiver masque client`.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    #[command(flatten)]
    connect: ProxyConnectArgs,
    /// Local UDP address to forward from (port 0 picks one; the banner says which).
    #[arg(long)]
    listen: SocketAddr,
    /// Where datagrams go: HOST:PORT ([IPv6]:PORT).
    #[arg(long)]
    target: String,
    /// Close a local peer's tunnel after this many seconds without a datagram either way.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    idle_timeout: u64,
}

/// Options of `quiver masque bench`.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    connect: ProxyConnectArgs,
    /// UDP echo server to tunnel to (default: one started in this process on 127.0.0.1).
    #[arg(long)]
    target: Option<String>,
    /// UDP payload size in bytes.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Datagrams in flight per tunnel.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Tunnels, all on one connection.
    #[arg(long, default_value_t = 1)]
    tunnels: usize,
    /// Turn QUIC datagrams off, so payloads travel as capsules on the request streams.
    #[arg(long)]
    capsules: bool,
}

/// Writes a line to standard error, ignoring failures (like `say!`).
fn complain(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "quiver: {message}");
}

pub async fn run(args: MasqueArgs) -> anyhow::Result<()> {
    match args.command {
        MasqueCommand::Proxy(args) => run_proxy(*args).await,
        MasqueCommand::Client(args) => run_client(args).await,
        MasqueCommand::Bench(args) => run_bench(args).await,
    }
}

async fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let metrics = args.metrics.install()?;
    let policy = if args.allow.is_empty() {
        TargetPolicy::default()
    } else {
        TargetPolicy::parse(&args.allow).map_err(|err| usage(err.to_string()))?
    };
    let template = UriTemplate::parse(&args.template).map_err(|err| usage(err.to_string()))?;
    check_token(args.token.as_deref())?;
    if !args.listen.ip().is_loopback() && args.token.is_none() && !args.no_auth {
        return Err(usage(format!(
            "refusing to run an open proxy on {}: give --token TOKEN (clients send it as a bearer token), or --no-auth to serve anyone who can reach it",
            args.listen
        )));
    }
    let limits = [
        args.max_tunnels_per_connection,
        args.max_tunnels,
        args.max_tunnels_per_source,
        args.max_lookups_per_connection,
        args.max_lookups_per_source,
    ];
    if limits.contains(&0) || args.idle_timeout == 0 {
        return Err(usage(
            "--max-tunnels-per-connection, --max-tunnels, --max-tunnels-per-source, --max-lookups-per-connection, --max-lookups-per-source and --idle-timeout must be at least 1",
        ));
    }
    let ip_gateway = match &args.ip_pool {
        Some(pool) => Some(start_ip_gateway(pool, &args.ip_route, &args.tun)?),
        None => None,
    };
    let mut config = ProxyConfig::builder()
        .template(template)
        .policy(policy)
        .max_tunnels_per_connection(args.max_tunnels_per_connection)
        .max_tunnels(args.max_tunnels)
        .max_tunnels_per_source(args.max_tunnels_per_source)
        .max_lookups_per_connection(args.max_lookups_per_connection)
        .max_lookups_per_source(args.max_lookups_per_source)
        .idle_timeout(Duration::from_secs(args.idle_timeout));
    if let Some(token) = args.token {
        config = config.bearer_token(token);
    }
    if let Some(gateway) = ip_gateway {
        config = config.ip_gateway(gateway);
    }
    let config = config.build().map_err(|err| usage(err.to_string()))?;
    let server_identity = args.identity.load()?;
    let quic = quiver_masque::proxy_server_config(&config)
        .identity(server_identity.identity.clone())
        .with_transport(|transport| args.qlog.apply(transport));
    let quic = args.source_limit.apply(args.admission.apply(quic)).build()?;
    let endpoint = Endpoint::server(args.listen, quic)?;
    let addr = endpoint.local_addr();
    let rules: Vec<String> = config.policy().rules().iter().map(ToString::to_string).collect();
    say!("quiver masque proxy on https://{addr} (template {}; allow {})", config.template(), rules.join(" "));
    if let Some(gateway) = config.ip_gateway() {
        let routes: Vec<String> =
            gateway.routes().iter().map(|range| format!("{}-{}", range.start, range.end)).collect();
        say!(
            "CONNECT-IP on TUN {} (gateway {}, pool {}; routes {})",
            gateway.tun_name(),
            gateway.gateway_address(),
            gateway.pool(),
            routes.join(" ")
        );
    }
    if let Some(notice) = server_identity.self_signed_notice() {
        say!("{notice}");
        say!("  quiver masque client --proxy https://{addr} -k --listen 127.0.0.1:5353 --target HOST:PORT");
    }
    let proxy = Proxy::new(config);
    if let Some(metrics) = metrics {
        let proxy = proxy.clone();
        metrics.serve(endpoint.clone(), move || quiver_masque::metrics::publish(&proxy.stats())).await?;
    }
    let drain = Duration::from_secs(args.drain_seconds);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        say!("shutting down: no new tunnels; open ones relay for at most {} s", drain.as_secs());
    };
    proxy.serve_until(endpoint, shutdown, drain).await;
    let stats = proxy.stats();
    say!(
        "tunnels opened {}, datagrams to targets {}, from targets {}",
        stats.tunnels_opened,
        stats.datagrams_to_target,
        stats.datagrams_from_target
    );
    Ok(())
}

/// Creates the TUN device, gives it the pool's first host address, brings it up, and starts the
/// gateway on it.
fn start_ip_gateway(pool: &str, routes: &[String], tun_name: &str) -> anyhow::Result<Arc<IpGateway>> {
    let pool: IpNetwork = pool.parse().map_err(|err: String| usage(format!("--ip-pool: {err}")))?;
    let mut parsed = Vec::with_capacity(routes.len().max(1));
    for route in routes {
        parsed.push(route.parse::<IpNetwork>().map_err(|err| usage(format!("--ip-route: {err}")))?);
    }
    if parsed.is_empty() {
        parsed.push(pool);
    }
    let tun = TunDevice::create(tun_name).map_err(|err| anyhow::anyhow!("{err} (CONNECT-IP needs root on Linux)"))?;
    let config = IpGatewayConfig { pool, routes: parsed };
    // Validate (pool size, families) before touching the interface's addresses.
    let gateway = IpGateway::start(tun, config).map_err(|err| usage(err.to_string()))?;
    let address = format!("{}/{}", gateway.gateway_address(), pool.prefix);
    run_ip(&["addr", "replace", &address, "dev", tun_name])?;
    run_ip(&["link", "set", tun_name, "up"])?;
    Ok(gateway)
}

/// Runs `ip ARGS` (iproute2), with an error that says what failed.
fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| anyhow::anyhow!("cannot run `ip {}`: {err} (install iproute2)", args.join(" ")))?;
    if !output.status.success() {
        anyhow::bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn masque_client(args: &ProxyConnectArgs, datagrams: bool) -> anyhow::Result<MasqueClient> {
    let template = UriTemplate::parse(&args.template).map_err(|err| usage(err.to_string()))?;
    let mut config =
        quiver_masque::client_config().datagrams(datagrams).with_transport(|transport| args.qlog.apply(transport));
    config = args.tls.apply(config);
    check_token(args.token.as_deref())?;
    let mut client = MasqueClient::new(&args.proxy, config.build()?).map_err(|err| usage(err.to_string()))?;
    client = client.with_template(template).with_open_timeout(Duration::from_secs(30));
    if let Some(token) = &args.token {
        client = client.with_bearer_token(token.clone());
    }
    Ok(client)
}

/// An empty token would be sent (or required) as `Bearer ` and match nothing useful: refuse it.
fn check_token(token: Option<&str>) -> anyhow::Result<()> {
    match token {
        Some(token) if token.trim().is_empty() => {
            Err(usage("--token (or QUIVER_MASQUE_TOKEN) is empty: give the token, or leave the option out"))
        }
        _ => Ok(()),
    }
}

fn parse_target(text: &str) -> anyhow::Result<Target> {
    text.parse().map_err(|err: quiver_masque::TargetError| usage(err.to_string()))
}

async fn run_client(args: ClientArgs) -> anyhow::Result<()> {
    let client = masque_client(&args.connect, true)?;
    let target = parse_target(&args.target)?;
    if args.idle_timeout == 0 {
        return Err(usage("--idle-timeout must be at least 1"));
    }
    let shown_target = target.to_string();
    let forwarder = UdpForwarder::bind(args.listen, client, target)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on udp://{}: {err}", args.listen))?
        .idle_timeout(Duration::from_secs(args.idle_timeout))
        .on_event({
            let target = shown_target.clone();
            move |event| report(&event, &target)
        });
    say!(
        "quiver masque client forwarding udp://{} to {shown_target} via {}",
        forwarder.local_addr(),
        args.connect.proxy
    );
    tokio::select! {
        result = forwarder.run() => Ok(result?),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Tells the user on standard error what happened to a local peer's flow.
fn report(event: &ForwardEvent, target: &str) {
    match event {
        ForwardEvent::OpenFailed { peer, error } => {
            complain(format_args!("cannot open a tunnel for {peer} to {target}: {error}; datagrams dropped"));
        }
        ForwardEvent::Ended { peer, error } => complain(format_args!(
            "tunnel for {peer} to {target} ended: {error}; the next datagram from {peer} opens a new one"
        )),
        ForwardEvent::Dropped { peer, count, last_payload_bytes, error } => complain(format_args!(
            "{count} datagram(s) from {peer} dropped, the last of {last_payload_bytes} bytes: {error}"
        )),
        other => complain(format_args!("{other:?}")),
    }
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.size < 8 || args.size > quiver_masque::MAX_UDP_PAYLOAD {
        return Err(usage(format!("--size must be 8 to {} bytes", quiver_masque::MAX_UDP_PAYLOAD)));
    }
    if args.window == 0 || args.tunnels == 0 || !args.seconds.is_finite() || args.seconds <= 0.0 {
        return Err(usage("--window, --tunnels and --seconds must be positive"));
    }
    let client = masque_client(&args.connect, !args.capsules)?;
    let target = match &args.target {
        Some(target) => parse_target(target)?,
        None => {
            let echo = start_udp_echo().await?;
            Target::new("127.0.0.1", echo.port())?
        }
    };
    let mut tunnels = Vec::with_capacity(args.tunnels);
    for _ in 0..args.tunnels {
        let tunnel = client.open(&target).await.map_err(|err| anyhow::anyhow!("{err}"))?;
        if tunnel.max_payload() < args.size {
            anyhow::bail!(
                "--size {} does not fit this tunnel: at most {} bytes per datagram",
                args.size,
                tunnel.max_payload()
            );
        }
        tunnels.push(tunnel);
    }
    let mode = if tunnels[0].uses_quic_datagrams() { "QUIC datagrams" } else { "capsules" };
    let duration = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let deadline = started + duration;
    let mut runs = tokio::task::JoinSet::new();
    for tunnel in tunnels {
        runs.spawn(echo_loop(tunnel, args.size, args.window, deadline));
    }
    let mut totals = EchoCounts::default();
    while let Some(result) = runs.join_next().await {
        let counts = result??;
        totals.echoed += counts.echoed;
        totals.lost += counts.lost;
        totals.late += counts.late;
    }
    let EchoCounts { echoed, lost, late } = totals;
    let elapsed = started.elapsed().as_secs_f64();
    let per_second = echoed as f64 / elapsed;
    say!(
        "masque bench: {} tunnel(s) over {mode}, {}-byte payloads, window {}, {elapsed:.1} s",
        args.tunnels,
        args.size,
        args.window
    );
    say!(
        "  {per_second:.0} datagrams/s echoed, {:.1} MB/s of payload each way ({echoed} echoed, {lost} lost, {late} late)",
        per_second * args.size as f64 / 1e6
    );
    Ok(())
}

/// What one tunnel's echo loop counted. Each datagram sent ends in at most one of echoed and lost;
/// `late` echoes arrived after their datagram was already counted lost, and count as nothing else.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct EchoCounts {
    echoed: u64,
    lost: u64,
    late: u64,
}

/// Keeps `window` datagrams in flight until `deadline`. Each payload starts with its sequence number,
/// so an echo is matched to its datagram: one given up as lost and echoed later is late, not echoed.
async fn echo_loop(mut tunnel: UdpTunnel, size: usize, window: usize, deadline: Instant) -> anyhow::Result<EchoCounts> {
    let mut payload = vec![0x5a; size];
    let mut counts = EchoCounts::default();
    let mut in_flight = std::collections::HashSet::with_capacity(window);
    let mut next_sequence = 0u64;
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        while in_flight.len() < window {
            payload[..8].copy_from_slice(&next_sequence.to_be_bytes());
            match tunnel.send(&payload) {
                Ok(()) => {
                    in_flight.insert(next_sequence);
                    next_sequence += 1;
                }
                Err(TunnelError::QueueFull) => break,
                Err(err) => anyhow::bail!("tunnel failed: {err}"),
            }
        }
        let received = tokio::select! {
            received = tunnel.recv() => received,
            () = tokio::time::sleep(BENCH_LOSS_TIMEOUT) => {
                // Nothing came back for a while: whatever is in flight is lost.
                counts.lost += in_flight.len() as u64;
                in_flight.clear();
                continue;
            }
            () = tokio::time::sleep_until(deadline) => return Ok(counts),
        };
        let echo = received.map_err(|err| anyhow::anyhow!("tunnel failed: {err}"))?;
        count_echo(&mut counts, &mut in_flight, &echo);
    }
}

/// Counts one echo: echoed if its datagram is still in flight, late otherwise.
fn count_echo(counts: &mut EchoCounts, in_flight: &mut std::collections::HashSet<u64>, echo: &[u8]) {
    let sequence = echo.get(..8).and_then(|bytes| bytes.try_into().ok()).map(u64::from_be_bytes);
    if sequence.is_some_and(|sequence| in_flight.remove(&sequence)) {
        counts.echoed += 1;
    } else {
        counts.late += 1;
    }
}

async fn start_udp_echo() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
            let _ = socket.send_to(&buffer[..length], peer).await;
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_echoes_are_not_counted_twice() {
        let mut counts = EchoCounts::default();
        let mut in_flight: std::collections::HashSet<u64> = [1, 2].into();
        count_echo(&mut counts, &mut in_flight, &1u64.to_be_bytes());
        // 2 is given up as lost, then its echo arrives.
        counts.lost += in_flight.len() as u64;
        in_flight.clear();
        count_echo(&mut counts, &mut in_flight, &2u64.to_be_bytes());
        count_echo(&mut counts, &mut in_flight, b"short");
        assert_eq!(counts, EchoCounts { echoed: 1, lost: 1, late: 2 });
    }
}
