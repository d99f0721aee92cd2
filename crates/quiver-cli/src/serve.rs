//! `quiver serve`: an HTTP/3 server for a directory of files, or for the embedded demo site.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use quiver::Endpoint;
use quiver_h3::{PeerAddr, RecvBody, Server};
use tokio::io::AsyncRead;

use crate::admission::{AdmissionArgs, SourceLimitArgs};
use crate::identity::IdentityArgs;
use crate::observe::{MetricsArgs, QlogArgs};

/// Options of `quiver serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub listen: SocketAddr,
    /// Serve files from this directory (default: the embedded demo site).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub admission: AdmissionArgs,
    #[command(flatten)]
    pub source_limit: SourceLimitArgs,
    /// Accept 0-RTT: a returning client's requests arrive with its first flight. Safe methods (GET,
    /// HEAD, OPTIONS, TRACE) are answered at once; others get 425 Too Early and are retried after the
    /// handshake. Share --secret-file across restarts and servers so that tickets keep working.
    #[arg(long)]
    pub early_data: bool,
    /// Seconds to let in-flight requests finish after Ctrl-C.
    #[arg(long, default_value_t = 10)]
    pub drain_seconds: u64,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub qlog: QlogArgs,
    /// UDP sockets sharing the port (SO_REUSEPORT), one router each: the kernel spreads clients over
    /// them, so more cores serve in parallel. Default: one per CPU this process may run on.
    #[arg(long)]
    pub sockets: Option<usize>,
}

const INDEX_HTML: &str = include_str!("site/index.html");
/// Largest `/bytes/N` the demo answers (1 TiB): effectively unlimited, but a number.
const MAX_DEMO_BYTES: u64 = 1 << 40;
/// Read size for streaming files.
const FILE_CHUNK_BYTES: usize = 64 * 1024;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = args.metrics.install()?;
    let server_identity = args.identity.load()?;
    let identity = server_identity.identity.clone();
    let root = match &args.dir {
        Some(dir) => Some(
            dir.canonicalize().with_context(|| format!("cannot serve {}: not a readable directory", dir.display()))?,
        ),
        None => None,
    };
    let config = quiver_h3::server_config()
        .identity(identity.clone())
        .max_streams(1000, 100)
        .flow_control(32 * 1024 * 1024, 8 * 1024 * 1024)
        .early_data(args.early_data)
        .with_transport(|transport| args.qlog.apply(transport));
    let config = args.source_limit.apply(args.admission.apply(config)).build()?;
    let sockets = args.sockets.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cores| cores.get()));
    let endpoint = if sockets > 1 {
        Endpoint::builder().bind_reuseport(args.listen, sockets).server(config).build()?
    } else {
        Endpoint::server(args.listen, config)?
    };
    let addr = endpoint.local_addr();
    say!(
        "quiver serving HTTP/3 on https://{addr}/ ({})",
        root.as_ref().map_or("embedded demo site".into(), |root| root.display().to_string())
    );
    if let Some(notice) = server_identity.self_signed_notice() {
        let pin = identity.spki_sha256_base64();
        say!("{notice}");
        say!("  chromium --origin-to-force-quic-on={addr} --ignore-certificate-errors-spki-list={pin} https://{addr}/");
        say!("  quiver get -k https://{addr}/");
    }
    if let Some(metrics) = metrics {
        metrics.serve(endpoint.clone(), || {}).await?;
    }
    let site = Arc::new(Site { root });
    let service = tower::service_fn(move |request| {
        let site = site.clone();
        async move { Ok::<_, Infallible>(site.respond(request).await) }
    });
    let draining = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let draining = draining.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            say!("shutting down: finishing in-flight requests (Ctrl-C again to stop now)");
            draining.notify_one();
        }
    };
    let drain = Duration::from_secs(args.drain_seconds);
    tokio::select! {
        () = Server::new(service).serve_with_graceful_shutdown(endpoint, shutdown, drain) => {}
        _ = async {
            draining.notified().await;
            let _ = tokio::signal::ctrl_c().await;
        } => {}
    }
    Ok(())
}

struct Site {
    root: Option<PathBuf>,
}

impl Site {
    async fn respond(&self, request: Request<RecvBody>) -> Response<ServeBody> {
        // The access log costs a clock read and formatting per request: skip both when it is off.
        let started = tracing::enabled!(target: "access", tracing::Level::INFO).then(Instant::now);
        let method = request.method();
        let mut response = if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        } else {
            match &self.root {
                // Boxed: file serving has a large future, which would otherwise make every request pay
                // for moving it, including the demo site's.
                Some(root) => Box::pin(serve_file(root, &request)).await,
                None => serve_demo(&request),
            }
        };
        if request.method() == Method::HEAD {
            *response.body_mut() = ServeBody::Empty;
        }
        if let Some(started) = started {
            log_access(&request, &response, started);
        }
        response
    }
}

/// One access-log line: time, peer, request line, status, content length, time to the response head
/// (`2026-11-25T14:05:10Z 127.0.0.1:50190 "GET /bytes/100 HTTP/3" 200 100 0.012ms`).
fn log_access(request: &Request<RecvBody>, response: &Response<ServeBody>, started: Instant) {
    let micros = started.elapsed().as_micros();
    let peer = request.extensions().get::<PeerAddr>().map(|peer| peer.0);
    let target = request.uri().path_and_query().map_or("/", |target| target.as_str());
    let length = response.headers().get(header::CONTENT_LENGTH).map_or(&b"-"[..], |value| value.as_bytes());
    // Integers are written by hand: `fmt` machinery was most of this line's cost.
    crate::logging::access_line(|line| {
        use std::io::Write as _;
        match peer {
            Some(SocketAddr::V4(peer)) => {
                for (index, octet) in peer.ip().octets().into_iter().enumerate() {
                    if index > 0 {
                        line.push(b'.');
                    }
                    push_decimal(line, u64::from(octet));
                }
                line.push(b':');
                push_decimal(line, u64::from(peer.port()));
            }
            Some(peer) => write!(line, "{peer}")?,
            None => line.push(b'-'),
        }
        line.extend_from_slice(b" \"");
        line.extend_from_slice(request.method().as_str().as_bytes());
        line.push(b' ');
        // The path as the client sent it, minus bytes that would break the line apart.
        line.extend(target.bytes().map(|byte| if byte.is_ascii_control() { b'?' } else { byte }));
        line.extend_from_slice(b" HTTP/3\" ");
        push_decimal(line, u64::from(response.status().as_u16()));
        line.push(b' ');
        line.extend_from_slice(length);
        line.push(b' ');
        push_decimal(line, u64::try_from(micros / 1000).unwrap_or(u64::MAX));
        let fraction = (micros % 1000) as u16;
        line.extend_from_slice(&[b'.', b'0' + (fraction / 100) as u8, b'0' + (fraction / 10 % 10) as u8]);
        line.extend_from_slice(&[b'0' + (fraction % 10) as u8, b'm', b's']);
        Ok(())
    });
}

/// Appends `value` in decimal.
fn push_decimal(line: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    line.extend_from_slice(&digits[start..]);
}

fn text(status: StatusCode, body: &'static str) -> Response<ServeBody> {
    let mut response = Response::new(ServeBody::Bytes(Some(Bytes::from_static(body.as_bytes()))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

fn serve_demo(request: &Request<RecvBody>) -> Response<ServeBody> {
    let path = request.uri().path();
    if path == "/" || path == "/index.html" {
        let mut response = Response::new(ServeBody::Bytes(Some(Bytes::from_static(INDEX_HTML.as_bytes()))));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(INDEX_HTML.len()));
        return response;
    }
    if let Some(count) = path.strip_prefix("/bytes/") {
        return match count.parse::<u64>() {
            Ok(count) if count <= MAX_DEMO_BYTES => {
                let mut response = Response::new(ServeBody::Repeat { remaining: count });
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
                response
            }
            _ => text(StatusCode::BAD_REQUEST, "use /bytes/N with N a whole number of bytes up to 2^40\n"),
        };
    }
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// Maps a request path to a file under `root`, refusing anything that would leave it.
fn resolve(root: &Path, request_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(request_path)?;
    let mut path = root.to_path_buf();
    for component in Path::new(&decoded).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    if path.is_dir() {
        path.push("index.html");
    }
    // Symlinks may point anywhere: the canonical path must still be inside the root.
    let canonical = path.canonicalize().ok()?;
    canonical.starts_with(root).then_some(canonical)
}

fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    (!decoded.contains('\0')).then_some(decoded)
}

fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|extension| extension.to_str()).unwrap_or("").to_ascii_lowercase();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        _ => "application/octet-stream",
    }
}

/// A single `bytes=` range resolved against `len`: `Ok(Some((first, last)))`, `Ok(None)` to ignore the
/// header (absent, malformed or multi-range, which RFC 9110 lets a server ignore), `Err(())` when it
/// cannot be satisfied.
fn parse_range(header: Option<&HeaderValue>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|value| value.to_str().ok()).and_then(|value| value.strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ok(None) };
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(first), Ok(last)) if first <= last => (first, last.min(len.saturating_sub(1))),
        (Ok(first), Err(_)) if last.is_empty() => (first, len.saturating_sub(1)),
        (Err(_), Ok(suffix)) if first.is_empty() && suffix > 0 => (len.saturating_sub(suffix), len.saturating_sub(1)),
        _ => return Ok(None),
    };
    if len == 0 || range.0 >= len { Err(()) } else { Ok(Some(range)) }
}

async fn serve_file(root: &Path, request: &Request<RecvBody>) -> Response<ServeBody> {
    let Some(path) = resolve(root, request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let Ok(metadata) = file.metadata().await else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
    };
    let len = metadata.len();
    let (status, first, count) = match parse_range(request.headers().get(header::RANGE), len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        Err(()) => {
            let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };
    if first > 0 {
        use tokio::io::AsyncSeekExt;
        if file.seek(std::io::SeekFrom::Start(first)).await.is_err() {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
        }
    }
    let mut response = Response::new(ServeBody::File { file, remaining: count, buffer: vec![0; FILE_CHUNK_BYTES] });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{}/{len}", first + count - 1))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    response
}

/// Response bodies of `quiver serve`.
enum ServeBody {
    Empty,
    Bytes(Option<Bytes>),
    /// `/bytes/N`: slices of one static buffer, no allocation per chunk.
    Repeat {
        remaining: u64,
    },
    File {
        file: tokio::fs::File,
        remaining: u64,
        buffer: Vec<u8>,
    },
}

static REPEAT_BUFFER: [u8; 64 * 1024] = {
    let mut buffer = [0u8; 64 * 1024];
    let mut index = 0;
    while index < buffer.len() {
        buffer[index] = b'a' + (index % 26) as u8;
        index += 1;
    }
    buffer
};

impl http_body::Body for ServeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ServeBody::Empty => Poll::Ready(None),
            ServeBody::Bytes(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            ServeBody::Repeat { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let len = (*remaining).min(REPEAT_BUFFER.len() as u64) as usize;
                *remaining -= len as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&REPEAT_BUFFER[..len])))))
            }
            ServeBody::File { file, remaining, buffer } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = (*remaining).min(buffer.len() as u64) as usize;
                let mut read_buf = tokio::io::ReadBuf::new(&mut buffer[..want]);
                match Pin::new(file).poll_read(cx, &mut read_buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(err)) => Poll::Ready(Some(Err(err))),
                    Poll::Ready(Ok(())) if read_buf.filled().is_empty() => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shrank while being served",
                    )))),
                    Poll::Ready(Ok(())) => {
                        let chunk = Bytes::copy_from_slice(read_buf.filled());
                        *remaining -= chunk.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServeBody::Empty => true,
            ServeBody::Bytes(bytes) => bytes.is_none(),
            ServeBody::Repeat { remaining } | ServeBody::File { remaining, .. } => *remaining == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let value = |text: &str| HeaderValue::from_str(text).unwrap();
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some(&value("bytes=0-9")), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some(&value("bytes=90-")), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some(&value("bytes=-10")), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some(&value("bytes=50-500")), 100), Ok(Some((50, 99))));
        assert_eq!(parse_range(Some(&value("bytes=100-")), 100), Err(()));
        assert_eq!(parse_range(Some(&value("bytes=0-1,5-6")), 100), Ok(None));
        assert_eq!(parse_range(Some(&value("bytes=9-0")), 100), Ok(None));
        assert_eq!(parse_range(Some(&value("items=0-1")), 100), Ok(None));
    }

    #[test]
    fn paths_cannot_leave_the_root() {
        let root = std::env::temp_dir().join(format!("quiver-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/index.html"), "hi").unwrap();
        std::fs::write(root.join("a b.txt"), "x").unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(resolve(&root, "/sub/"), Some(root.join("sub/index.html")));
        assert_eq!(resolve(&root, "/a%20b.txt"), Some(root.join("a b.txt")));
        assert_eq!(resolve(&root, "/../etc/passwd"), None);
        assert_eq!(resolve(&root, "/sub/%2e%2e/%2e%2e/etc/passwd"), None);
        assert_eq!(resolve(&root, "/%00"), None);
        assert_eq!(resolve(&root, "/%zz"), None);
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn decimals_are_written_by_hand_correctly() {
        for value in [0, 7, 10, 65535, 1_000_000, u64::MAX] {
            let mut line = Vec::new();
            push_decimal(&mut line, value);
            assert_eq!(line, value.to_string().as_bytes());
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type(Path::new("a/index.HTML")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("x.wasm")), "application/wasm");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
