//! `quiver get`: fetch a URL over HTTP/3, like `curl --http3-only`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;

use crate::identity::{ClientTlsArgs, tls_hint};

/// Options of `quiver get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The https:// URL to fetch.
    pub url: String,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Write the body to FILE instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
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
    let uri: Uri = args.url.parse().map_err(|_| usage(format!("invalid URL {:?}", args.url)))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(usage(format!("URL must be https://host[:port]/path, got {:?}", args.url)));
    }
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
    let mut request = Request::builder().method(method).uri(uri.clone());
    for line in &args.headers {
        let (name, value) =
            line.split_once(':').ok_or_else(|| usage(format!("header {line:?} is not 'Name: value'")))?;
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| usage(format!("invalid header name in {line:?}")))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| usage(format!("invalid header value in {line:?}")))?;
        request = request.header(name, value);
    }
    let request = request.body(Full::new(body)).map_err(|err| usage(err.to_string()))?;

    let config = quiver_h3::client_config().with_transport(|transport| args.qlog.apply(transport));
    let client = quiver_h3::Client::new(args.tls.apply(config).build()?);
    let exchange = fetch(&client, request, &args);
    match args.max_time {
        Some(seconds) if seconds > 0.0 => tokio::time::timeout(Duration::from_secs_f64(seconds), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("operation timed out after {seconds} seconds"))?,
        _ => exchange.await,
    }
}

async fn fetch(client: &quiver_h3::Client, request: Request<Full<Bytes>>, args: &GetArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.verbose {
        eprintln!("> {} {} HTTP/3", request.method(), request.uri().path_and_query().map_or("/", |p| p.as_str()));
        eprintln!("> host: {}", request.uri().authority().map_or("", |a| a.as_str()));
        for (name, value) in request.headers() {
            eprintln!("> {name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
    }
    let connection = client.connection(request.uri()).await.map_err(|err| {
        let hint = match &err {
            quiver_h3::Error::Connect(connect) => tls_hint(connect),
            _ => "",
        };
        anyhow::anyhow!("cannot connect to {}: {err}{hint}", args.url)
    })?;
    let connected = started.elapsed();
    if args.verbose {
        let quic = connection.quic();
        let handshake = quic.handshake();
        eprintln!(
            "* connected to {} in {:.1} ms (QUIC handshake {:.1} ms)",
            quic.peer_addr(),
            connected.as_secs_f64() * 1000.0,
            handshake.duration.as_secs_f64() * 1000.0
        );
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
    let response = connection.send_request(request).await.with_context(|| format!("request to {} failed", args.url))?;
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
    let mut output: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.output {
        Some(path) => {
            Box::new(tokio::fs::File::create(path).await.with_context(|| format!("cannot create {}", path.display()))?)
        }
        None => Box::new(tokio::io::stdout()),
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
        let frame = frame.with_context(|| format!("response body from {} was cut short", args.url))?;
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
