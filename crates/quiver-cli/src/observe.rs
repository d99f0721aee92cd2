//! What every command shares for being watched: `--metrics ADDR` (Prometheus text format over HTTP),
//! `--qlog-dir DIR`, and the `SSLKEYLOGFILE` environment variable.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use quiver::TransportConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// `--metrics`; flatten into a server command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve metrics in Prometheus text format at http://ADDR/metrics (e.g. 127.0.0.1:9090; port 0
    /// picks one, printed at start).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// `--qlog-dir`; flatten into any command that makes QUIC connections.
#[derive(Debug, Clone, clap::Args)]
pub struct QlogArgs {
    /// Write a qlog of every connection into this directory (`<trace ID>-<role>.sqlog`, JSON-SEQ:
    /// open them with qvis).
    #[arg(long, value_name = "DIR")]
    pub qlog_dir: Option<PathBuf>,
}

impl MetricsArgs {
    /// Installs the recorder if `--metrics` was given. Call it before building servers: they resolve
    /// their metric handles when built.
    ///
    /// # Errors
    /// A recorder is already installed.
    pub fn install(&self) -> anyhow::Result<Option<Metrics>> {
        self.metrics.map(Metrics::install).transpose()
    }
}

/// The environment variable naming the NSS key-log file, as in curl, Firefox and Chrome.
const SSLKEYLOGFILE: &str = "SSLKEYLOGFILE";

impl QlogArgs {
    /// Applies `--qlog-dir` and `SSLKEYLOGFILE` to a configuration's transport settings.
    pub fn apply(&self, transport: &mut TransportConfig) {
        transport.qlog_dir.clone_from(&self.qlog_dir);
        if let Some(path) = std::env::var_os(SSLKEYLOGFILE).filter(|path| !path.is_empty()) {
            let path = PathBuf::from(path);
            // Anyone with this file can decrypt the traffic: say so where it cannot be missed.
            tracing::warn!("writing TLS secrets to {} ({SSLKEYLOGFILE} is set)", path.display());
            transport.keylog_path = Some(path);
        }
    }
}

/// Scrape connections served at once; more wait in the kernel's backlog. Prometheus uses one per
/// target, so a handful covers a few scrapers and a curl.
const MAX_SCRAPE_CONNECTIONS: usize = 8;
/// A scrape connection is closed after this long, whatever it is doing: a client that opens one and
/// sends nothing must not hold a slot.
const SCRAPE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often histogram samples are folded into their buckets and summaries (the exporter keeps raw
/// samples until then, so this bounds their memory).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The installed Prometheus recorder and the address to serve it on.
pub struct Metrics {
    handle: PrometheusHandle,
    addr: SocketAddr,
}

impl Metrics {
    /// Installs the process-wide recorder and describes every quiver metric.
    fn install(addr: SocketAddr) -> anyhow::Result<Self> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(quiver::metrics::HANDSHAKE_DURATION.into()),
                quiver::metrics::HANDSHAKE_DURATION_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(quiver_h3::metrics::REQUEST_DURATION.into()),
                quiver_h3::metrics::REQUEST_DURATION_BUCKETS,
            )?
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        quiver::metrics::describe();
        quiver_h3::metrics::describe();
        quiver_doq::metrics::describe();
        quiver_masque::metrics::describe();
        Ok(Self { handle, addr })
    }

    /// Serves `GET /metrics`, copying `endpoint`'s counters and then calling `publish_server` (for the
    /// server's own counters) before rendering each scrape, and prints where.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn serve(
        self,
        endpoint: quiver::Endpoint,
        publish_server: impl Fn() + Send + Sync + 'static,
    ) -> anyhow::Result<()> {
        let published = quiver::metrics::EndpointMetrics::new();
        let refresh = move || {
            published.publish(&endpoint.stats());
            publish_server();
        };
        let addr = self.addr;
        let listener =
            TcpListener::bind(addr).await.with_context(|| format!("cannot listen for --metrics on {addr}"))?;
        let bound = listener.local_addr()?;
        let upkeep = self.handle.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                interval.tick().await;
                upkeep.run_upkeep();
            }
        });
        let page = Arc::new(MetricsPage { handle: self.handle, refresh: Box::new(refresh) });
        tokio::spawn(accept_scrapes(listener, page));
        say!("metrics on http://{bound}/metrics");
        Ok(())
    }
}

struct MetricsPage {
    handle: PrometheusHandle,
    refresh: Box<dyn Fn() + Send + Sync>,
}

impl MetricsPage {
    fn respond(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let (status, content_type, body) = if request.uri().path() != "/metrics" {
            (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "metrics are at /metrics\n".to_owned())
        } else if request.method() != Method::GET && request.method() != Method::HEAD {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "use GET\n".to_owned())
        } else {
            (self.refresh)();
            (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.handle.render())
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        response
    }
}

async fn accept_scrapes(listener: TcpListener, page: Arc<MetricsPage>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "metrics listener: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Waits for a slot: connections past the limit stay queued, unread.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let page = page.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = page.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(SCRAPE_CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}
