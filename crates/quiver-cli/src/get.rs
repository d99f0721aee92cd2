//! `quiver get`: fetch URLs over HTTP/3, like `curl --http3-only`: several URLs on one connection,
//! one after another or at once (-Z), and TLS sessions kept between runs for resumption and 0-RTT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use quiver_h3::H3Connection;
use tokio::io::AsyncWriteExt;

use crate::identity::{ClientTlsArgs, tls_hint};

/// Options of `quiver get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The https:// URLs to fetch. URLs with the same host and port share one connection; their
    /// bodies go to standard output in order unless -o or -O says otherwise.
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Write the body to FILE instead of standard output. Repeat for several URLs: the first -o is for
    /// the first URL, and so on (like curl).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Vec<PathBuf>,
    /// Save each URL without its own -o under the last segment of its path (like curl -O).
    #[arg(short = 'O', long = "remote-name")]
    pub remote_name: bool,
    /// The directory -o and -O files go to (default: the current one).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Send the requests at the same time (streams of one connection) instead of one after another.
    #[arg(short = 'Z', long)]
    pub parallel: bool,
    /// Keep TLS sessions in FILE: load them before connecting, so a connection to a server seen before
    /// resumes its session, and save the servers' newest tickets after (like curl --ssl-sessions). The
    /// file holds secrets; it is created readable by its owner only.
    #[arg(long, value_name = "FILE")]
    pub ssl_sessions: Option<PathBuf>,
    /// Send the requests as 0-RTT early data when resuming a session saved by an earlier run with
    /// --ssl-sessions (like curl --tls-earlydata). Only safe requests (GET, HEAD) go early: early data
    /// can be replayed; the others wait for the handshake.
    #[arg(long)]
    pub tls_earlydata: bool,
    /// Request method (default GET, or POST with --data).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,
    /// Request body: literal DATA, or @FILE to send a file's contents.
    #[arg(short = 'd', long = "data", value_name = "DATA|@FILE")]
    pub data: Option<String>,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print the response status line and headers before the body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,
    /// Print request and response headers, handshake details (QUIC version, ALPN, TLS cipher and
    /// key exchange), timings and transfer statistics to standard error.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Exit with status 1 when the server answers 400 or above.
    #[arg(short = 'f', long)]
    pub fail: bool,
    /// Give up if the whole exchange takes longer than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub max_time: Option<f64>,
    #[command(flatten)]
    pub qlog: crate::observe::QlogArgs,
}

/// Bad usage (exit 2) as opposed to a failed operation (exit 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A [`UsageError`] (exit 2) saying `message`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

pub async fn run(args: GetArgs) -> anyhow::Result<()> {
    let jobs = jobs(&args)?;
    let body = match &args.data {
        None => Bytes::new(),
        Some(data) => match data.strip_prefix('@') {
            Some(path) => Bytes::from(std::fs::read(path).with_context(|| format!("cannot read {path}"))?),
            None => Bytes::from(data.clone()),
        },
    };
    let method = match &args.method {
        Some(method) => {
            Method::from_bytes(method.as_bytes()).map_err(|_| usage(format!("invalid method {method:?}")))?
        }
        None if args.data.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut headers = Vec::with_capacity(args.headers.len());
    for line in &args.headers {
        let (name, value) =
            line.split_once(':').ok_or_else(|| usage(format!("header {line:?} is not 'Name: value'")))?;
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| usage(format!("invalid header name in {line:?}")))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| usage(format!("invalid header value in {line:?}")))?;
        headers.push((name, value));
    }
    let requests = jobs
        .iter()
        .map(|job| {
            let mut request = Request::builder().method(method.clone()).uri(job.uri.clone());
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            request.body(Full::new(body.clone())).map_err(|err| usage(err.to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let config = quiver_h3::client_config()
        .with_transport(|transport| args.qlog.apply(transport))
        .early_data(args.tls_earlydata);
    let sessions = match &args.ssl_sessions {
        Some(path) => SessionFile::load(path)?,
        None => SessionFile::default(),
    };
    let mut connections = Connections::new(args.tls.apply(config).build()?, sessions);
    let exchange = fetch_all(&mut connections, jobs.into_iter().zip(requests).collect(), &args);
    let outcome = match args.max_time {
        Some(seconds) if seconds > 0.0 => tokio::time::timeout(Duration::from_secs_f64(seconds), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("operation timed out after {seconds} seconds"))
            .and_then(|outcome| outcome),
        _ => exchange.await,
    };
    let saved = connections.close_and_save(args.ssl_sessions.as_deref()).await;
    outcome.and(saved)
}

/// One URL to fetch and where its body goes (`None`: standard output).
struct Job {
    url: String,
    uri: Uri,
    output: Option<PathBuf>,
}

/// The URLs with their outputs: the i-th -o for the i-th URL, then -O names, then standard output.
fn jobs(args: &GetArgs) -> anyhow::Result<Vec<Job>> {
    if args.output.len() > args.urls.len() {
        return Err(usage(format!("{} -o options for {} URLs", args.output.len(), args.urls.len())));
    }
    let mut jobs = Vec::with_capacity(args.urls.len());
    for (index, url) in args.urls.iter().enumerate() {
        let uri: Uri = url.parse().map_err(|_| usage(format!("invalid URL {url:?}")))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(usage(format!("URL must be https://host[:port]/path, got {url:?}")));
        }
        let named = match args.output.get(index) {
            Some(path) => Some(path.clone()),
            None if args.remote_name => Some(PathBuf::from(
                remote_name(&uri)
                    .ok_or_else(|| usage(format!("-O: URL {url:?} has no file name in its path; give it -o FILE")))?,
            )),
            None => None,
        };
        let output = match (&args.output_dir, named) {
            (Some(dir), Some(name)) => Some(dir.join(name)),
            (_, named) => named,
        };
        jobs.push(Job { url: url.clone(), uri, output });
    }
    Ok(jobs)
}

/// The last segment of a URL's path, if it is a usable file name (not empty, `.` or `..`).
fn remote_name(uri: &Uri) -> Option<&str> {
    let name = uri.path().rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// The client endpoints (one per address family) and one HTTP/3 connection per host and port.
struct Connections {
    config: quiver::ClientConfig,
    sessions: SessionFile,
    endpoints: HashMap<bool, quiver::Endpoint>,
    open: Vec<Connected>,
}

/// An open connection and the server it was opened to (for saving its session).
struct Connected {
    host: String,
    port: u16,
    addr: SocketAddr,
    endpoint: quiver::Endpoint,
    connection: H3Connection,
}

impl Connections {
    fn new(config: quiver::ClientConfig, sessions: SessionFile) -> Self {
        Self { config, sessions, endpoints: HashMap::new(), open: Vec::new() }
    }

    /// The connection to `uri`'s host and port, opening it (and printing its handshake with -v).
    async fn connection(&mut self, uri: &Uri, args: &GetArgs) -> anyhow::Result<H3Connection> {
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(443);
        if let Some(open) = self.open.iter().find(|open| open.host == host && open.port == port) {
            return Ok(open.connection.clone());
        }
        let started = Instant::now();
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let endpoint = match self.endpoints.get(&addr.is_ipv4()) {
            Some(endpoint) => endpoint.clone(),
            None => {
                let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                let endpoint = quiver::Endpoint::client(bind, self.config.clone())?;
                for (name, server, session) in &self.sessions.entries {
                    endpoint.add_session(name, *server, session.clone());
                }
                self.endpoints.insert(addr.is_ipv4(), endpoint.clone());
                endpoint
            }
        };
        let connection = H3Connection::connect(&endpoint, addr, &host).await.map_err(|err| {
            let hint = match &err {
                quiver_h3::Error::Connect(connect) => tls_hint(connect),
                _ => "",
            };
            anyhow::anyhow!("cannot connect to {host}:{port}: {err}{hint}")
        })?;
        if args.verbose {
            print_handshake(&connection, started.elapsed());
        }
        self.open.push(Connected { host, port, addr, endpoint, connection: connection.clone() });
        Ok(connection)
    }

    /// Closes every connection and, with --ssl-sessions, saves the newest session of each server
    /// (connections store the server's latest ticket as they close).
    async fn close_and_save(mut self, path: Option<&std::path::Path>) -> anyhow::Result<()> {
        for open in &self.open {
            open.connection.quic().close(0, "done");
        }
        for open in &self.open {
            let _ = tokio::time::timeout(SESSION_SAVE_PATIENCE, open.connection.quic().closed()).await;
        }
        let Some(path) = path else { return Ok(()) };
        for open in &self.open {
            if let Some(session) = open.endpoint.session(&open.host, open.addr) {
                self.sessions.put(&open.host, open.addr, session);
            }
        }
        self.sessions.save(path)
    }
}

/// How long closing waits for each connection to finish (so its latest ticket is stored) before the
/// sessions are saved anyway.
const SESSION_SAVE_PATIENCE: Duration = Duration::from_secs(1);

/// Fetches every job, in order or (-Z) at once on the connections opened first.
async fn fetch_all(
    connections: &mut Connections,
    jobs: Vec<(Job, Request<Full<Bytes>>)>,
    args: &GetArgs,
) -> anyhow::Result<()> {
    if !args.parallel {
        for (job, request) in jobs {
            let connection = connections.connection(&job.uri, args).await?;
            fetch(&connection, request, &job, args, None).await?;
        }
        return Ok(());
    }
    let mut exchanges = Vec::with_capacity(jobs.len());
    for (job, request) in jobs {
        let connection = connections.connection(&job.uri, args).await?;
        exchanges.push((connection, job, request));
    }
    // Bodies for standard output are held and written in URL order, so they do not interleave.
    let results = futures_util::future::join_all(exchanges.iter().map(|(connection, job, request)| async move {
        let mut held = job.output.is_none().then(Vec::new);
        let outcome = fetch(connection, request.clone(), job, args, held.as_mut()).await;
        (outcome, held)
    }))
    .await;
    let mut stdout = tokio::io::stdout();
    let mut first_error = None;
    for (outcome, held) in results {
        if let Some(held) = held
            && outcome.is_ok()
        {
            match stdout.write_all(&held).await {
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                result => result.context("cannot write the body")?,
            }
        }
        if let Err(err) = outcome {
            first_error.get_or_insert(err);
        }
    }
    let _ = stdout.flush().await;
    first_error.map_or(Ok(()), Err)
}

fn print_handshake(connection: &H3Connection, connected: Duration) {
    let quic = connection.quic();
    let handshake = quic.handshake();
    eprintln!(
        "* connected to {} in {:.1} ms (QUIC handshake {:.1} ms)",
        quic.peer_addr(),
        connected.as_secs_f64() * 1000.0,
        handshake.duration.as_secs_f64() * 1000.0
    );
    if quic.started_in_early_data() {
        eprintln!("* resumed session: requests go as 0-RTT early data, before the handshake completes");
    } else {
        eprintln!(
            "* QUIC version 0x{:08x}, ALPN {}, {} {}, key exchange {}{}",
            handshake.quic_version,
            String::from_utf8_lossy(quic.alpn()),
            handshake.tls_version.unwrap_or("TLS"),
            handshake.cipher.unwrap_or("(cipher unknown)"),
            handshake.key_exchange_group.unwrap_or("(unknown)"),
            if handshake.resumed { ", resumed session" } else { "" }
        );
    }
}

/// TLS sessions saved between runs (`--ssl-sessions`): one line per server, `NAME ADDRESS HEX`.
/// Lines this version cannot read are kept as they are, so nothing another tool stored is lost.
#[derive(Default)]
struct SessionFile {
    entries: Vec<(String, SocketAddr, Vec<u8>)>,
    unreadable: Vec<String>,
}

impl SessionFile {
    fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut file = Self::default();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_session_line(line) {
                Some(entry) => file.entries.push(entry),
                None => {
                    eprintln!("quiver: {}:{}: not a session line; kept as it is", path.display(), number + 1);
                    file.unreadable.push(line.to_owned());
                }
            }
        }
        Ok(file)
    }

    fn put(&mut self, name: &str, addr: SocketAddr, session: Vec<u8>) {
        self.entries.retain(|(known, known_addr, _)| !(known == name && *known_addr == addr));
        self.entries.push((name.to_owned(), addr, session));
    }

    /// Writes the file whole, through a temporary file renamed over it, readable by its owner only.
    fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let mut text = String::new();
        for line in &self.unreadable {
            text.push_str(line);
            text.push('\n');
        }
        for (name, addr, session) in &self.entries {
            let hex: String = session.iter().map(|byte| format!("{byte:02x}")).collect();
            text.push_str(&format!("{name} {addr} {hex}\n"));
        }
        let temporary = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let write = |options: &std::fs::OpenOptions| -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = options.open(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        };
        write(&options).with_context(|| format!("cannot save TLS sessions to {}", path.display()))
    }
}

fn parse_session_line(line: &str) -> Option<(String, SocketAddr, Vec<u8>)> {
    let mut fields = line.split_whitespace();
    let (name, addr, hex) = (fields.next()?, fields.next()?.parse().ok()?, fields.next()?);
    if fields.next().is_some() || hex.len() % 2 != 0 {
        return None;
    }
    let session = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((name.to_owned(), addr, session))
}

/// Sends one request on `connection` and writes its response to the job's file, to `held` (-Z, for
/// standard output in URL order), or to standard output.
async fn fetch(
    connection: &H3Connection,
    request: Request<Full<Bytes>>,
    job: &Job,
    args: &GetArgs,
    held: Option<&mut Vec<u8>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.verbose {
        eprintln!("> {} {} HTTP/3", request.method(), request.uri().path_and_query().map_or("/", |p| p.as_str()));
        eprintln!("> host: {}", request.uri().authority().map_or("", |a| a.as_str()));
        for (name, value) in request.headers() {
            eprintln!("> {name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
    }
    let response = connection.send_request(request).await.with_context(|| format!("request to {} failed", job.url))?;
    let status = response.status();
    let mut head = format!("HTTP/3 {}\n", status.as_u16());
    for (name, value) in response.headers() {
        head.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    if args.verbose {
        for line in head.lines() {
            eprintln!("< {line}");
        }
    }
    let mut output: Box<dyn tokio::io::AsyncWrite + Unpin + Send + '_> = match (&job.output, held) {
        (Some(path), _) => {
            Box::new(tokio::fs::File::create(path).await.with_context(|| format!("cannot create {}", path.display()))?)
        }
        (None, Some(held)) => Box::new(held),
        (None, None) => Box::new(tokio::io::stdout()),
    };
    if args.include {
        head.push('\n');
        if let Err(err) = output.write_all(head.as_bytes()).await {
            return if err.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(err.into()) };
        }
    }
    let mut body = response.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("response body from {} was cut short", job.url))?;
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
            match output.write_all(data).await {
                // The reader went away (`| head`): not an error, like curl.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                result => result.context("cannot write the body")?,
            }
        }
    }
    match output.flush().await {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        result => result.context("cannot write the body")?,
    }
    if args.verbose {
        let total = started.elapsed().as_secs_f64();
        let mbytes_per_second = received as f64 / total.max(1e-9) / 1e6;
        eprintln!("* received {received} bytes in {:.1} ms ({mbytes_per_second:.1} MB/s)", total * 1000.0);
        if let Some(stats) = connection.quic().stats().await {
            eprintln!("* rtt {:.2} ms, cwnd {} bytes", stats.rtt.as_secs_f64() * 1000.0, stats.cwnd_bytes);
            eprintln!(
                "* packets sent {}, received {}, lost {}, retransmitted {}; bytes sent {}, received {}, lost {}",
                stats.packets_sent,
                stats.packets_received,
                stats.packets_lost,
                stats.packets_retransmitted,
                stats.bytes_sent,
                stats.bytes_received,
                stats.bytes_lost
            );
        }
    }
    if args.fail && (status.is_client_error() || status.is_server_error()) {
        bail!("server answered {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lines_round_trip_and_bad_ones_are_refused() {
        let line = "example.com 127.0.0.1:443 00ff10";
        let (name, addr, session) = parse_session_line(line).unwrap();
        assert_eq!((name.as_str(), addr.port(), session), ("example.com", 443, vec![0x00, 0xff, 0x10]));
        for bad in [
            "example.com 127.0.0.1:443",
            "x notanaddress 00",
            "x 127.0.0.1:1 0g",
            "x 127.0.0.1:1 abc",
            "x 127.0.0.1:1 00 extra",
        ] {
            assert!(parse_session_line(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn remote_names_are_the_last_path_segment() {
        let name = |url: &str| remote_name(&url.parse().unwrap()).map(str::to_owned);
        assert_eq!(name("https://h/a/b.txt").as_deref(), Some("b.txt"));
        assert_eq!(name("https://h/a/"), None);
        assert_eq!(name("https://h/"), None);
        assert_eq!(name("https://h/a/.."), None);
    }
}
