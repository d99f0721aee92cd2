//! The HTTP/3 server: serves any `tower::Service<http::Request<RecvBody>>` over Quiver connections.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Body;
use quiver::Endpoint;
use tower_service::Service;
use tracing::Instrument;

use crate::body::RecvBody;
use crate::command::{self, OutFrame, StreamSink};
use crate::driver::{Dispatch, H3Driver, H3Settings};
use crate::error::H3_INTERNAL_ERROR;
use crate::headers;
use crate::metrics::RequestMetrics;

/// Serves a `tower` service over HTTP/3.
///
/// Each request runs in its own task; a handler that fails or panics is answered with 500 and the
/// connection lives on. Requests are counted by status and timed through the `metrics` facade
/// ([`metrics`](crate::metrics)): install the recorder before serving. Each request runs
/// in a `request` span (level DEBUG, fields `stream`, `method`, `path`) inside its connection's span.
///
/// ```no_run
/// use http::{Request, Response};
/// use quiver_h3::{RecvBody, Server};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = quiver_h3::server_config().self_signed(["localhost"]).build()?;
/// let endpoint = quiver::Endpoint::server("127.0.0.1:4433".parse()?, config)?;
/// let hello = tower::service_fn(|_request: Request<RecvBody>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello, HTTP/3\n")))
/// });
/// Server::new(hello).serve(endpoint).await;
/// # Ok(()) }
/// ```
pub struct Server<S> {
    service: S,
    settings: H3Settings,
}

impl<S, B> Server<S>
where
    S: Service<Request<RecvBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Display,
{
    /// A server for `service` with default settings.
    pub fn new(service: S) -> Self {
        Self { service, settings: H3Settings::default() }
    }

    /// Replaces the HTTP/3 settings (header size limit, extended CONNECT).
    pub fn settings(mut self, settings: H3Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The application to start on one accepted connection; use it to mix HTTP/3 with other ALPNs.
    pub fn application(&self) -> H3Driver {
        let service = self.service.clone();
        let dispatch: Dispatch = Arc::new(move |request, sink| {
            // DEBUG: at the usual INFO level the span is disabled and entering it costs nothing (a
            // span entered per request measurably slowed small requests).
            let span = tracing::debug_span!(
                "request",
                stream = sink.stream_id(),
                method = %request.method(),
                path = request.uri().path()
            );
            run_inline_first(handle(service.clone(), request, sink, RequestMetrics::global()).instrument(span));
        });
        H3Driver::server(self.settings.clone(), dispatch)
    }

    /// Accepts connections on `endpoint` until it closes, serving HTTP/3 on those that negotiated
    /// `h3` (others are refused).
    ///
    /// # Cancel safety
    /// Dropping the future stops accepting; connections already running go on until they close.
    pub async fn serve(self, endpoint: Endpoint) {
        self.serve_with_graceful_shutdown(endpoint, std::future::pending(), Duration::ZERO).await;
    }

    /// As [`serve`](Self::serve), until `shutdown` resolves; then drains gracefully through
    /// [`quiver::serve`]: stops accepting, sends GOAWAY on every connection (the driver's
    /// `on_drain`), lets requests already received finish, closes each connection when it has none
    /// left, and closes whatever remains after `drain_deadline`. Returns when every connection has
    /// ended.
    ///
    /// # Cancel safety
    /// As [`quiver::serve`]: dropping the future while accepting stops accepting; dropping it during
    /// the drain leaves the endpoint draining (GOAWAY sent, new connections refused) but nothing
    /// closes what is left at the deadline.
    pub async fn serve_with_graceful_shutdown(
        self,
        endpoint: Endpoint,
        shutdown: impl std::future::Future<Output = ()>,
        drain_deadline: Duration,
    ) {
        let accept_h3 = |incoming: quiver::IncomingConnection| {
            // Other ALPNs are refused by dropping them.
            if incoming.alpn() == crate::ALPN {
                incoming.start(self.application());
            }
        };
        quiver::serve(&endpoint, accept_h3, shutdown, drain_deadline).await;
    }
}

/// Polls a request's handler once on the connection task and spawns it only if it has to wait.
///
/// Most handlers answer without waiting (a static page, `/bytes/N`, a cache hit): running them in
/// place saves a task spawn, a context switch and a wake-up of the connection task per request. A
/// handler that returns `Pending` moves into its own task, whose first poll registers the real wakers
/// (the in-place poll used a no-op waker), so nothing it waits for is missed.
fn run_inline_first(handler: impl Future<Output = ()> + Send + 'static) {
    let mut handler = Box::pin(handler);
    let mut context = Context::from_waker(Waker::noop());
    // `handle` contains the service's panics; this only guards its own bookkeeping. A panic here drops
    // the handler, whose response guard resets the stream.
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(&mut context)));
    if matches!(polled, Ok(std::task::Poll::Pending)) {
        // The connection's span goes along, so what the handler logs still names its connection.
        tokio::spawn(handler.in_current_span());
    }
}

/// Resets the stream if the handler task ends (or unwinds) before the response was complete, and
/// records the request's metrics once its response has a status.
struct ResponseGuard {
    sink: StreamSink,
    complete: bool,
    status: Option<StatusCode>,
    started: Instant,
    metrics: &'static RequestMetrics,
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        if !self.complete {
            self.sink.abort(H3_INTERNAL_ERROR);
        }
        if let Some(status) = self.status {
            self.metrics.record(status, self.started.elapsed());
        }
    }
}

async fn handle<S, B>(mut service: S, request: Request<RecvBody>, sink: StreamSink, metrics: &'static RequestMetrics)
where
    S: Service<Request<RecvBody>, Response = Response<B>>,
    S::Error: std::fmt::Display,
    B: Body,
    B::Error: std::fmt::Display,
{
    let mut guard = ResponseGuard { sink, complete: false, status: None, started: Instant::now(), metrics };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let outcome = AssertUnwindSafe(async {
        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(request).await
    })
    .catch_unwind()
    .await;
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            tracing::warn!(%method, %path, error = %err, "handler failed; answering 500");
            guard.status = Some(StatusCode::INTERNAL_SERVER_ERROR);
            guard.complete = send_status(&guard.sink, StatusCode::INTERNAL_SERVER_ERROR);
            return;
        }
        Err(_) => {
            tracing::error!(%method, %path, "handler panicked; answering 500");
            guard.status = Some(StatusCode::INTERNAL_SERVER_ERROR);
            guard.complete = send_status(&guard.sink, StatusCode::INTERNAL_SERVER_ERROR);
            return;
        }
    };
    let (parts, body) = response.into_parts();
    guard.status = Some(parts.status);
    // RFC 9114 §4.1.2 / RFC 9110 §6.4.1: a response to HEAD, and a 204 or 304, has no content whatever
    // the handler returned (a HEAD handler usually returns the GET body so its length is right); sending
    // it would make the message malformed for every client that checks, ours included.
    let without_content = method == http::Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let end = without_content || body.is_end_stream();
    let fields = headers::response_fields(parts.status, &parts.headers);
    if guard.sink.frame(OutFrame::Head { fields, end }).is_err() {
        guard.complete = true;
        return;
    }
    if end {
        guard.complete = true;
        return;
    }
    let sent = AssertUnwindSafe(command::send_body(body, &guard.sink)).catch_unwind().await;
    match sent {
        Ok(Ok(())) => guard.complete = true,
        // The stream was reset already (by send_body or the peer): nothing more to do.
        Ok(Err(reason)) => {
            tracing::debug!(stream = guard.sink.stream_id(), %reason, "response body not completed");
            guard.complete = true;
        }
        Err(_) => tracing::error!(%method, %path, "response body panicked; resetting the stream"),
    }
}

fn send_status(sink: &StreamSink, status: StatusCode) -> bool {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    let fields = headers::response_fields(status, &headers);
    sink.frame(OutFrame::Head { fields, end: true }).is_ok()
}
