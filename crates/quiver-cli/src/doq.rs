//! `quiver doq`: a DNS over QUIC forwarder (`serve`) and a dig-like DoQ client (`query`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use quiver::Endpoint;
use quiver_doq::{DoqClient, DoqError, DoqServer, Message, Name, RecordType};

use crate::admission::AdmissionArgs;
use crate::get::usage;
use crate::identity::{ClientTlsArgs, IdentityArgs, tls_hint};
use crate::observe::{MetricsArgs, QlogArgs};

/// `quiver doq` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DoqCommand {
    /// Forward DNS over QUIC to a classic resolver (UDP, TCP on truncation).
    Serve(ServeArgs),
    /// Ask a DoQ server, dig style: `quiver doq query [@HOST[:PORT]] NAME [TYPE]`.
    Query(QueryArgs),
}

/// Options of `quiver doq serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (UDP). Port 853 is DoQ's (and needs root); never 53 (RFC 9250 §4.1.1).
    #[arg(long, default_value = "127.0.0.1:853")]
    pub listen: SocketAddr,
    /// The resolver to forward to, IP:PORT (for example 127.0.0.1:53).
    #[arg(long, value_name = "IP:PORT")]
    pub upstream: SocketAddr,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub admission: AdmissionArgs,
    /// Accept 0-RTT from returning clients (RFC 9250 section 4.5): only replay-safe queries (one
    /// question, opcode QUERY, no zone transfer) are ever forwarded, early or not. Share
    /// --secret-file across restarts so that session tickets keep working.
    #[arg(long)]
    pub early_data: bool,
    /// Milliseconds to wait for the upstream before answering SERVFAIL.
    #[arg(long, value_name = "MS", default_value_t = quiver_doq::DEFAULT_UPSTREAM_TIMEOUT.as_millis() as u64)]
    pub upstream_timeout_ms: u64,
    /// Queries one connection may have in flight (its stream limit).
    #[arg(long, default_value_t = quiver_doq::DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams: usize,
    /// Connections one client address may hold; more are refused (CONNECTION_REFUSED).
    #[arg(long, default_value_t = quiver_doq::DEFAULT_MAX_CONNECTIONS_PER_SOURCE)]
    pub max_connections_per_source: usize,
    /// Bytes of positive answers to cache for their TTL (0: no cache). An answer over 1/16 of it is
    /// not cached.
    #[arg(long, value_name = "BYTES", default_value_t = quiver_doq::DEFAULT_CACHE_BYTES)]
    pub cache_bytes: usize,
    /// Upstream queries one connection may have in flight; more wait for the connection's own.
    #[arg(long, default_value_t = quiver_doq::DEFAULT_MAX_UPSTREAM_PER_CONNECTION)]
    pub max_upstream_per_connection: usize,
    /// Upstream queries one client address (IPv6: /64) may have in flight; more are answered REFUSED.
    #[arg(long, default_value_t = quiver_doq::DEFAULT_MAX_UPSTREAM_PER_SOURCE)]
    pub max_upstream_per_source: usize,
    /// Seconds a connection may stay idle before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = quiver_doq::DEFAULT_IDLE_TIMEOUT.as_secs())]
    pub idle_timeout: u64,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub qlog: QlogArgs,
}

/// Options of `quiver doq query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// `[@HOST[:PORT]] NAME [TYPE]`: server (default @127.0.0.1:853), domain name, record type
    /// (default A).
    #[arg(value_name = "[@SERVER] NAME [TYPE]", required = true, num_args = 1..=3)]
    pub words: Vec<String>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Name to verify the certificate against and send as SNI (default: the server's host).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Give up if connecting and answering take longer than this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub timeout: f64,
    /// Do not pad the query (RFC 8467 padding is on by default; it asks the server to pad too).
    #[arg(long)]
    pub no_padding: bool,
    #[command(flatten)]
    pub qlog: QlogArgs,
}

pub async fn run(command: DoqCommand) -> anyhow::Result<()> {
    match command {
        DoqCommand::Serve(args) => serve(args).await,
        DoqCommand::Query(args) => query(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.listen.port() == 53 {
        return Err(usage("DoQ must not listen on port 53 (RFC 9250 section 4.1.1): use 853, or e.g. 8853"));
    }
    let metrics = args.metrics.install()?;
    let server_identity = args.identity.load()?;
    let config = quiver_doq::server_config()
        .identity(server_identity.identity.clone())
        .max_streams(args.max_streams.max(1) as u64, 0)
        .idle_timeout(Duration::from_secs(args.idle_timeout.max(1)))
        .max_connections_per_source(args.max_connections_per_source.max(1))
        .early_data(args.early_data)
        .with_transport(|transport| args.qlog.apply(transport));
    let config = args.admission.apply(config).build()?;
    let endpoint = Endpoint::server(args.listen, config).map_err(|err| {
        let denied = matches!(&err, quiver::EndpointError::Bind { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied);
        let hint = if denied && args.listen.port() < 1024 { " (ports below 1024 need root: try --listen 127.0.0.1:8853)" } else { "" };
        anyhow::anyhow!("{err}{hint}")
    })?;
    let addr = endpoint.local_addr();
    let server = DoqServer::builder(args.upstream)
        .upstream_timeout(Duration::from_millis(args.upstream_timeout_ms.max(1)))
        .max_queries_per_connection(args.max_streams.max(1))
        .cache_bytes(args.cache_bytes)
        .max_upstream_per_connection(args.max_upstream_per_connection)
        .max_upstream_per_source(args.max_upstream_per_source)
        .build()
        .map_err(|err| usage(err.to_string()))?;
    say!("quiver doq serving DNS over QUIC on {addr}, forwarding to {}", args.upstream);
    if let Some(notice) = server_identity.self_signed_notice() {
        say!("{notice}");
        say!("  quiver doq query -k @{addr} example.com A");
    }
    if let Some(metrics) = metrics {
        let server = server.clone();
        metrics.serve(endpoint.clone(), move || quiver_doq::metrics::publish(&server.stats())).await?;
    }
    // Ctrl-C: no new connections; queries in flight get their answers (or SERVFAIL), then close.
    let drain = server.drain_deadline();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        say!("shutting down: answering the queries in flight (at most {:.1} s)", drain.as_secs_f64());
    };
    if !server.serve_until(endpoint.clone(), shutdown, drain).await.drained() {
        say!("some queries were still unanswered after {:.1} s; closed anyway", drain.as_secs_f64());
    }
    let stats = server.stats();
    say!(
        "quiver doq stopped: {} connections, {} queries ({} upstream, {} cached, {} SERVFAIL, {} FORMERR, {} cancelled), {} protocol errors",
        stats.connections_accepted,
        stats.queries,
        stats.answered_upstream,
        stats.answered_from_cache,
        stats.servfail_timeout + stats.servfail_upstream_error,
        stats.format_errors,
        stats.cancelled,
        stats.protocol_errors
    );
    Ok(())
}

/// What `[@SERVER] NAME [TYPE]` said.
#[derive(Debug, PartialEq, Eq)]
struct Question {
    host: String,
    port: u16,
    name: String,
    record_type: RecordType,
}

/// Parses dig-style words: `@HOST`, `@HOST:PORT`, `@[V6]:PORT`, `@V6`, then NAME and TYPE.
fn parse_question(words: &[String]) -> Result<Question, anyhow::Error> {
    let mut server = None;
    let mut rest = Vec::new();
    for word in words {
        match word.strip_prefix('@') {
            Some(_) if server.is_some() => return Err(usage("give one @SERVER at most")),
            Some(spec) => server = Some(parse_server(spec)?),
            None => rest.push(word.as_str()),
        }
    }
    let (host, port) = server.unwrap_or_else(|| ("127.0.0.1".to_owned(), quiver_doq::DEFAULT_PORT));
    if port == 53 {
        return Err(usage(format!(
            "@{host}:53 is classic DNS, not DoQ: DoQ never uses port 53 (RFC 9250 section 4.1.1); try port 853"
        )));
    }
    let (name, record_type) = match rest.as_slice() {
        [name] => (*name, "A"),
        [name, record_type] => (*name, *record_type),
        [] => return Err(usage("missing NAME: quiver doq query [@SERVER] NAME [TYPE]")),
        _ => return Err(usage(format!("too many arguments: {rest:?}; expected NAME [TYPE]"))),
    };
    Name::from_ascii(name).map_err(|err| usage(format!("invalid domain name {name:?}: {err}")))?;
    let record_type = parse_record_type(record_type).ok_or_else(|| {
        usage(format!("unknown record type {record_type:?} (try A, AAAA, TXT, MX, NS, ... or TYPE65)"))
    })?;
    if matches!(record_type, RecordType::AXFR | RecordType::IXFR) {
        return Err(usage(format!(
            "{record_type} is a zone transfer, which quiver doq query does not do (one question, one answer)"
        )));
    }
    Ok(Question { host, port, name: name.to_owned(), record_type })
}

/// A mnemonic (`aaaa`, `TXT`) or RFC 3597's `TYPEnnn`.
fn parse_record_type(text: &str) -> Option<RecordType> {
    let upper = text.to_ascii_uppercase();
    match upper.strip_prefix("TYPE").map(str::parse::<u16>) {
        Some(Ok(code)) => Some(RecordType::from(code)),
        _ => RecordType::from_str(&upper).ok(),
    }
}

fn parse_server(spec: &str) -> Result<(String, u16), anyhow::Error> {
    let bad = || usage(format!("invalid server @{spec}: use @HOST, @HOST:PORT or @[IPv6]:PORT"));
    let port_of = |text: &str| text.parse::<u16>().ok().filter(|port| *port != 0).ok_or_else(bad);
    if let Some(bracketed) = spec.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => quiver_doq::DEFAULT_PORT,
            _ => port_of(after.strip_prefix(':').ok_or_else(bad)?)?,
        };
        return Ok((host.to_owned(), port));
    }
    match spec.matches(':').count() {
        0 if !spec.is_empty() => Ok((spec.to_owned(), quiver_doq::DEFAULT_PORT)),
        1 => {
            let (host, port) = spec.split_once(':').ok_or_else(bad)?;
            if host.is_empty() {
                return Err(bad());
            }
            Ok((host.to_owned(), port_of(port)?))
        }
        // Several colons and no brackets: a bare IPv6 address.
        _ if spec.parse::<std::net::Ipv6Addr>().is_ok() => Ok((spec.to_owned(), quiver_doq::DEFAULT_PORT)),
        _ => Err(bad()),
    }
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let question = parse_question(&args.words)?;
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(usage(format!("--timeout must be a positive number of seconds, got {}", args.timeout)));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let server = tokio::net::lookup_host((question.host.as_str(), question.port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| format!("cannot resolve server name {:?}", question.host))?;
    let mut config =
        quiver_doq::client_config().handshake_timeout(timeout).with_transport(|transport| args.qlog.apply(transport));
    config = args.tls.apply(config);
    let client = DoqClient::builder(server)
        .server_name(args.tls_name.clone().unwrap_or_else(|| question.host.clone()))
        .query_timeout(timeout)
        .padding(!args.no_padding)
        .build(config.build()?)?;
    let started = Instant::now();
    // The client's query timeout covers connecting, waiting for a stream and the answer.
    let answer = client.query(&question.name, question.record_type).await.map_err(|err| {
        let hint = match &err {
            DoqError::Connect { source, .. } => tls_hint(source),
            _ => "",
        };
        anyhow::anyhow!("query to {server} failed: {err}{hint}")
    })?;
    let elapsed = started.elapsed();
    client.close().await;
    say!("; <<>> quiver doq {} <<>> @{server} {} {}", env!("CARGO_PKG_VERSION"), question.name, question.record_type);
    say!("{}", render(&answer, elapsed, server));
    Ok(())
}

/// Record data in zone-file form; TXT strings quoted and escaped (RFC 1035 §5.1), which hickory's
/// display does not do.
fn rdata_text(data: &quiver_doq::proto::rr::RData) -> String {
    let quiver_doq::proto::rr::RData::TXT(txt) = data else { return data.to_string() };
    let quoted: Vec<String> = txt
        .txt_data
        .iter()
        .map(|bytes| {
            let mut text = String::from("\"");
            for &byte in bytes.iter() {
                match byte {
                    b'"' | b'\\' => {
                        text.push('\\');
                        text.push(char::from(byte));
                    }
                    0x20..=0x7e => text.push(char::from(byte)),
                    _ => text.push_str(&format!("\\{byte:03}")),
                }
            }
            text.push('"');
            text
        })
        .collect();
    quoted.join(" ")
}

/// The response code as dig names it (RFC 6895 §2.3).
fn rcode_mnemonic(code: u16) -> String {
    let name = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        _ => return format!("RCODE{code}"),
    };
    name.to_owned()
}

/// The answer as dig prints it: header, flags, sections, timing and server.
fn render(answer: &Message, elapsed: Duration, server: SocketAddr) -> String {
    use std::fmt::Write as _;
    let metadata = &answer.metadata;
    let mut out = String::new();
    let _ = writeln!(
        out,
        ";; ->>HEADER<<- opcode: {}, status: {}, id: {}",
        metadata.op_code,
        rcode_mnemonic(u16::from(metadata.response_code)),
        metadata.id
    );
    let flags: Vec<&str> = [
        (metadata.message_type == quiver_doq::proto::op::MessageType::Response, "qr"),
        (metadata.authoritative, "aa"),
        (metadata.truncation, "tc"),
        (metadata.recursion_desired, "rd"),
        (metadata.recursion_available, "ra"),
        (metadata.authentic_data, "ad"),
        (metadata.checking_disabled, "cd"),
    ]
    .into_iter()
    .filter_map(|(set, flag)| set.then_some(flag))
    .collect();
    let _ = writeln!(
        out,
        ";; flags: {}; QUERY: {}, ANSWER: {}, AUTHORITY: {}, ADDITIONAL: {}",
        flags.join(" "),
        answer.queries.len(),
        answer.answers.len(),
        answer.authorities.len(),
        answer.additionals.len() + usize::from(answer.edns.is_some())
    );
    if let Some(edns) = &answer.edns {
        let _ = writeln!(out, "\n;; OPT PSEUDOSECTION:");
        let _ = writeln!(
            out,
            "; EDNS: version: {}, flags:{}; udp: {}",
            edns.version(),
            if edns.flags().dnssec_ok { " do" } else { "" },
            edns.max_payload()
        );
        if let Some(padding) = edns.option(quiver_doq::proto::rr::rdata::opt::EdnsCode::Padding) {
            let _ = writeln!(out, "; PAD: ({} bytes)", padding.len());
        }
    }
    let _ = writeln!(out, "\n;; QUESTION SECTION:");
    for query in &answer.queries {
        let _ = writeln!(out, ";{}\t\t\t{}\t{}", query.name, query.query_class, query.query_type);
    }
    for (title, records) in
        [("ANSWER", &answer.answers), ("AUTHORITY", &answer.authorities), ("ADDITIONAL", &answer.additionals)]
    {
        if records.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n;; {title} SECTION:");
        for record in records {
            let _ = writeln!(
                out,
                "{}\t\t{}\t{}\t{}\t{}",
                record.name,
                record.ttl,
                record.dns_class,
                record.record_type(),
                rdata_text(&record.data)
            );
        }
    }
    let _ = writeln!(out, "\n;; Query time: {} msec", elapsed.as_millis());
    let _ = write!(out, ";; SERVER: {}#{}({}) (QUIC)", server.ip(), server.port(), server.ip());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn parsed(line: &str) -> Question {
        parse_question(&words(line)).unwrap_or_else(|err| panic!("{line}: {err}"))
    }

    fn is_usage(line: &str) -> bool {
        parse_question(&words(line)).err().is_some_and(|err| err.is::<crate::get::UsageError>())
    }

    #[test]
    fn dig_style_words() {
        let q = parsed("example.com");
        assert_eq!(
            (q.host.as_str(), q.port, q.name.as_str(), q.record_type),
            ("127.0.0.1", 853, "example.com", RecordType::A)
        );
        let q = parsed("@127.0.0.1:8853 example.com aaaa");
        assert_eq!((q.host.as_str(), q.port, q.record_type), ("127.0.0.1", 8853, RecordType::AAAA));
        let q = parsed("example.com TXT @localhost");
        assert_eq!((q.host.as_str(), q.port, q.record_type), ("localhost", 853, RecordType::TXT));
        let q = parsed("@[::1]:8853 example.com MX");
        assert_eq!((q.host.as_str(), q.port), ("::1", 8853));
        let q = parsed("@::1 example.com");
        assert_eq!((q.host.as_str(), q.port), ("::1", 853));
        assert_eq!(parsed("example.com TYPE65").record_type, RecordType::HTTPS);
    }

    #[test]
    fn txt_strings_are_quoted_and_escaped() {
        let txt = quiver_doq::proto::rr::rdata::TXT::from_bytes(vec![b"plain text", b"say \"hi\"\\", b"\x01\xff"]);
        let text = rdata_text(&quiver_doq::proto::rr::RData::TXT(txt));
        assert_eq!(text, r#""plain text" "say \"hi\"\\" "\001\255""#);
    }

    #[test]
    fn bad_words_are_usage_errors() {
        for line in [
            "example.com NOTATYPE",
            "a..b A",
            "example.com A extra",
            "@1.2.3.4:0 example.com",
            "@1.2.3.4:99999 example.com",
            "@[::1 example.com",
            "@:53 example.com",
            "@a @b example.com",
            "@127.0.0.1",
            "@127.0.0.1:53 example.com",
            "@[::1]:53 example.com",
            "example.com AXFR",
            "example.com ixfr",
        ] {
            assert!(is_usage(line), "{line} should be a usage error");
        }
    }
}
