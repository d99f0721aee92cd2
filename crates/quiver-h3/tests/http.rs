//! HTTP/3 over loopback with Quiver on both sides: methods, body sizes, concurrency, trailers, handler
//! failures, cancellation and limits.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use quiver::Endpoint;
use quiver_h3::{BodyError, Client, Error, RecvBody, Server};
use quiver_test_support::{GUARD, guarded};
use support::{BULK_WINDOWS, server_endpoint, trusting};
use tokio::sync::mpsc;

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|index| (index % 251) as u8 ^ (index >> 12) as u8).collect()
}

type Reply = Response<BoxBody<Bytes, BodyError>>;

fn full(bytes: impl Into<Bytes>) -> BoxBody<Bytes, BodyError> {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// Test routes:
/// - `/bytes/N`: N pattern bytes; `/echo`: the request body streamed back;
/// - `/digest`: length and FNV of the request body; `/trailers`: body plus trailers, and echoes the
///   request's trailers as headers; `/panic`: panics; `/watch`: reports how reading the body ended.
async fn route(request: Request<RecvBody>, watch: Option<mpsc::Sender<Result<usize, BodyError>>>) -> Reply {
    let path = request.uri().path().to_owned();
    if let Some(len) = path.strip_prefix("/bytes/") {
        let len: usize = len.parse().unwrap_or(0);
        // The same body for HEAD, as a naive handler would: the server must drop it (RFC 9114 §4.1.2).
        return Response::builder().header("content-length", len).body(full(Bytes::from(pattern(len)))).unwrap();
    }
    match path.as_str() {
        "/echo" => Response::new(request.into_body().boxed()),
        "/digest" => {
            let method = request.method().clone();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            Response::new(full(format!("{method} {} {:016x}", body.len(), fnv(&body))))
        }
        "/trailers" => {
            let collected = request.into_body().collect().await.unwrap();
            let received = collected.trailers().cloned().unwrap_or_default();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            let frames = vec![
                Ok::<_, BodyError>(http_body::Frame::data(Bytes::from_static(b"body"))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            if let Some(value) = received.get("x-request-trailer") {
                response.headers_mut().insert("x-got-trailer", value.clone());
            }
            response
        }
        "/panic" => panic!("handler bug"),
        "/watch" => {
            // Reports `Ok(usize::MAX)` once the handler runs, then how reading the body ended.
            if let Some(watch) = &watch {
                let _ = watch.send(Ok(usize::MAX)).await;
            }
            let mut body = request.into_body();
            let mut total = 0;
            let outcome = loop {
                match body.frame().await {
                    Some(Ok(frame)) => total += frame.data_ref().map_or(0, |data| data.len()),
                    Some(Err(err)) => break Err(err),
                    None => break Ok(total),
                }
            };
            if let Some(watch) = watch {
                let _ = watch.send(outcome).await;
            }
            Response::new(full("watched"))
        }
        _ => Response::builder().status(StatusCode::NOT_FOUND).body(full("")).unwrap(),
    }
}

struct Fixture {
    endpoint: Endpoint,
    client: Client,
}

fn start(watch: Option<mpsc::Sender<Result<usize, BodyError>>>) -> Fixture {
    let (endpoint, identity) =
        server_endpoint(|config| config.max_streams(1000, 100).flow_control(BULK_WINDOWS.0, BULK_WINDOWS.1));
    let service = tower::service_fn(move |request| {
        let watch = watch.clone();
        async move { Ok::<_, Infallible>(route(request, watch).await) }
    });
    tokio::spawn(Server::new(service).serve(endpoint.clone()));
    let client_config = trusting(&identity).flow_control(BULK_WINDOWS.0, BULK_WINDOWS.1).build().unwrap();
    Fixture { endpoint, client: Client::new(client_config) }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.endpoint.local_addr().port())
    }

    async fn send(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let request = Request::builder().method(method).uri(self.url(path)).body(Full::new(Bytes::from(body))).unwrap();
        let response = guarded("request", self.client.send_request(request)).await.unwrap();
        let status = response.status();
        (status, guarded("body", response.into_body().collect()).await.unwrap().to_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_body_sizes_are_byte_exact() {
    let fixture = start(None);
    for len in [0usize, 1, 1200, 16 * 1024, 1_000_000, 100 * 1024 * 1024] {
        let (status, body) = fixture.send(Method::GET, &format!("/bytes/{len}"), Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), len);
        assert!(body[..] == pattern(len)[..], "GET {len} bytes differ");
    }
    let (status, body) = fixture.send(Method::HEAD, "/bytes/5000", Vec::new()).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    for len in [0usize, 1, 65_537, 5_000_000, 100 * 1024 * 1024] {
        let sent = pattern(len);
        for method in [Method::POST, Method::PUT] {
            let (status, body) = fixture.send(method.clone(), "/digest", sent.clone()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(String::from_utf8_lossy(&body), format!("{method} {len} {:016x}", fnv(&sent)));
        }
    }
    // Streamed both ways at once: the server echoes while the client still uploads.
    let sent = pattern(20 * 1024 * 1024);
    let (status, body) = fixture.send(Method::POST, "/echo", sent.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body[..] == sent[..], "echo differs");
    let (status, _) = fixture.send(Method::GET, "/missing", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_on_one_connection() {
    let fixture = Arc::new(start(None));
    let connection = fixture.client.connection(&fixture.url("/").parse().unwrap()).await.unwrap();
    let mut tasks = Vec::new();
    for index in 0..1000usize {
        let connection = connection.clone();
        let url = fixture.url(&format!("/bytes/{}", index * 13));
        tasks.push(tokio::spawn(async move {
            let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            let response = connection.send_request(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(body[..] == pattern(index * 13)[..], "stream {index}");
        }));
    }
    for task in tasks {
        guarded("stream task", task).await.unwrap();
    }
    // Every request went over the same QUIC connection.
    assert_eq!(fixture.endpoint.stats().connections_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_flow_both_ways() {
    let fixture = start(None);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-request-trailer", "42".parse().unwrap());
    let frames = vec![
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"upload"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let request =
        Request::post(fixture.url("/trailers")).body(StreamBody::new(futures_util::stream::iter(frames))).unwrap();
    let response = guarded("request", fixture.client.send_request(request)).await.unwrap();
    assert_eq!(response.headers()["x-got-trailer"], "42");
    let collected = guarded("body", response.into_body().collect()).await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_and_the_server_lives() {
    let fixture = start(None);
    let (status, _) = fixture.send(Method::GET, "/panic", Vec::new()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, body) = fixture.send(Method::GET, "/bytes/10", Vec::new()).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_mid_upload_reaches_the_handler_as_an_error() {
    let (watch_tx, mut watch_rx) = mpsc::channel(1);
    let fixture = start(Some(watch_tx));
    // An upload whose source fails once the handler is reading it: the client resets the stream.
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| chunks_rx.poll_recv(cx)));
    let request = Request::post(fixture.url("/watch")).body(body).unwrap();
    let client = fixture.client.clone();
    let _request = tokio::spawn(async move { client.send_request(request).await });
    chunks_tx.send(Ok(http_body::Frame::data(Bytes::from(vec![7u8; 50_000])))).await.unwrap();
    assert_eq!(guarded("handler start", watch_rx.recv()).await.unwrap(), Ok(usize::MAX));
    chunks_tx.send(Err(std::io::Error::other("source failed"))).await.unwrap();
    let outcome = guarded("handler outcome", watch_rx.recv()).await.unwrap();
    assert!(matches!(outcome, Err(BodyError::Reset(_)) | Err(BodyError::Incomplete)), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_rejected() {
    let fixture = start(None);
    let request = Request::get(fixture.url("/bytes/1"))
        .header("x-huge", "a".repeat(64 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    // The server advertised a 16 KiB limit: our client refuses at once instead of sending (RFC 9114
    // §4.2.2). The server's own rejection is tested against a client that does not check, in
    // interop_h3_quinn.rs.
    let outcome = guarded("request", fixture.client.send_request(request)).await;
    assert!(matches!(outcome, Err(Error::HeaderTooLarge { limit: 16384, .. })), "{outcome:?}");
    // Other requests on the same connection still work.
    let (status, _) = fixture.send(Method::GET, "/bytes/1", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn requests_to_a_dead_server_fail_with_a_typed_error() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = quiver_h3::client_config().insecure_skip_verification().handshake_timeout(Duration::from_millis(300));
    let client = Client::new(config.build().unwrap());
    let url = format!("https://127.0.0.1:{}/", silent.local_addr().unwrap().port());
    let err = client.send_request(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await.unwrap_err();
    assert!(matches!(err, Error::Connect(quiver::ConnectError::TimedOut(_))), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let (endpoint, identity) = server_endpoint(|config| config);
    let port = endpoint.local_addr().port();
    let (started_tx, mut started_rx) = mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let service = {
        let release = release.clone();
        tower::service_fn(move |_request: Request<RecvBody>| {
            let (started, release) = (started_tx.clone(), release.clone());
            async move {
                let _ = started.send(()).await;
                release.notified().await;
                Ok::<_, Infallible>(Response::new(full("finished")))
            }
        })
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new(service).serve_with_graceful_shutdown(
        endpoint.clone(),
        async move {
            let _ = shutdown_rx.await;
        },
        Duration::from_secs(30),
    ));
    let client_config = trusting(&identity);
    let client = Client::new(client_config.build().unwrap());
    let url = format!("https://localhost:{port}/slow");
    let in_flight = {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let response = client
                .send_request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
                .await
                .map_err(|err| err.to_string())?;
            let body = response.into_body().collect().await.map_err(|err| err.to_string())?;
            Ok::<_, String>(body.to_bytes())
        })
    };
    guarded("handler start", started_rx.recv()).await.unwrap();
    shutdown_tx.send(()).unwrap();
    // The drain is under way and waits for the handler; the server must still be running.
    assert!(!server.is_finished());
    release.notify_one();
    let body = guarded("in-flight request", in_flight).await.unwrap().unwrap();
    assert_eq!(body, "finished");
    guarded("server drained", server).await.unwrap();
    assert_eq!(endpoint.stats().active_connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_fires_when_the_server_never_answers() {
    let (endpoint, identity) = server_endpoint(|config| config);
    let service = tower::service_fn(|_request: Request<RecvBody>| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(Response::new(full("never")))
    });
    tokio::spawn(Server::new(service).serve(endpoint.clone()));
    let client_config = trusting(&identity);
    let timeout = Duration::from_millis(300);
    let client = Client::new(client_config.build().unwrap()).with_timeout(timeout);
    let url = format!("https://localhost:{}/", endpoint.local_addr().port());
    let outcome =
        guarded("request", client.send_request(Request::get(url).body(Full::new(Bytes::new())).unwrap())).await;
    assert!(matches!(outcome, Err(Error::TimedOut(waited)) if waited == timeout), "{outcome:?}");
}

/// Bodies dropped unread, on either side, must not pin their streams: 150 requests on one connection
/// whose stream limit is 100 all complete only if every dropped body's stream is finished and freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_bodies_do_not_leak_streams() {
    // Default transport: at most 100 concurrent bidirectional streams.
    let (endpoint, identity) = server_endpoint(|config| config);
    let service = tower::service_fn(|request: Request<RecvBody>| async move {
        let reply = if request.uri().path() == "/big" {
            Response::new(full(pattern(1024 * 1024)))
        } else {
            // Answers without reading the upload; the body is dropped with data still buffered.
            Response::builder().status(StatusCode::PAYLOAD_TOO_LARGE).body(full("no")).unwrap()
        };
        Ok::<_, Infallible>(reply)
    });
    tokio::spawn(Server::new(service).serve(endpoint.clone()));
    let client_config = trusting(&identity).build().unwrap();
    let client = Client::new(client_config);
    let base = format!("https://localhost:{}", endpoint.local_addr().port());
    let connection = client.connection(&base.parse().unwrap()).await.unwrap();
    let run = async {
        for index in 0..150 {
            let upload =
                Request::post(format!("{base}/upload")).body(Full::new(Bytes::from(pattern(512 * 1024)))).unwrap();
            let response = connection.send_request(upload).await.unwrap();
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "request {index}");
            // And the client drops a large response body after reading only the head.
            let download = Request::get(format!("{base}/big")).body(Full::new(Bytes::new())).unwrap();
            let response = connection.send_request(download).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "request {index}");
            drop(response);
        }
    };
    guarded("150 requests with unread bodies", run).await;
    assert_eq!(endpoint.stats().connections_accepted, 1, "all on one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_requests_per_connection_are_capped() {
    let (endpoint, identity) = server_endpoint(|config| config);
    let (started_tx, mut started_rx) = mpsc::channel::<()>(16);
    let service = tower::service_fn(move |_request: Request<RecvBody>| {
        let started = started_tx.clone();
        async move {
            let _ = started.send(()).await;
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(full("never")))
        }
    });
    let settings = quiver_h3::H3Settings { max_live_requests: 3, ..quiver_h3::H3Settings::default() };
    tokio::spawn(Server::new(service).settings(settings).serve(endpoint.clone()));
    let client_config = trusting(&identity);
    let client = Client::new(client_config.build().unwrap());
    let url = format!("https://localhost:{}/", endpoint.local_addr().port());
    for _ in 0..3 {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(
            async move { client.send_request(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await },
        );
        guarded("handler start", started_rx.recv()).await.unwrap();
    }
    let outcome =
        guarded("fourth request", client.send_request(Request::get(url).body(Full::new(Bytes::new())).unwrap())).await;
    assert!(matches!(outcome, Err(Error::StreamReset(code)) if code == quiver_h3::H3_REQUEST_REJECTED), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_authority_does_not_hold_up_requests_to_others() {
    use futures_util::FutureExt;
    let fixture = start(None);
    // A handshake to a socket that never answers stays in progress (its timeout is far beyond the
    // guard below) while the other authority is asked.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_uri: http::Uri = format!("https://127.0.0.1:{}/", silent.local_addr().unwrap().port()).parse().unwrap();
    let mut hung = Box::pin(fixture.client.connection(&silent_uri));
    assert!(hung.as_mut().now_or_never().is_none(), "the silent authority is connecting");
    let (status, _) = fixture.send(Method::GET, "/bytes/3", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_response_future_cancels_the_request_on_the_wire() {
    let (watch_tx, mut watch_rx) = mpsc::channel(1);
    let fixture = start(Some(watch_tx));
    // An upload that never ends, so only a cancellation can end the handler's read.
    let (_chunks_tx, mut chunks_rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| chunks_rx.poll_recv(cx)));
    let request = Request::post(fixture.url("/watch")).body(body).unwrap();
    let client = fixture.client.clone();
    let waiting = tokio::spawn(async move { client.send_request(request).await });
    assert_eq!(guarded("handler start", watch_rx.recv()).await.unwrap(), Ok(usize::MAX));
    waiting.abort();
    let outcome = guarded("handler outcome", watch_rx.recv()).await.unwrap();
    assert_eq!(outcome, Err(BodyError::Reset(quiver_h3::H3_REQUEST_CANCELLED)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_timeout_keeps_sharing_the_connections_of_its_clones() {
    let fixture = start(None);
    let (status, _) = fixture.send(Method::GET, "/bytes/1", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    // `fixture.client` is still alive: the timed handle is a clone, and must reuse its connection.
    let timed = fixture.client.clone().with_timeout(GUARD);
    let request = Request::get(fixture.url("/bytes/2")).body(Full::new(Bytes::new())).unwrap();
    let response = guarded("request", timed.send_request(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fixture.endpoint.stats().active_connections, 1, "one connection, shared");
}
