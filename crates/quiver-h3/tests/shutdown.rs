//! Endpoint::shutdown with HTTP/3: in-flight requests finish, new connections are refused, and the
//! shutdown resolves when the last connection is gone.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use quiver::{ConnectError, ConnectionError};
use quiver_h3::{Error, H3Connection, RecvBody, Server};
use quiver_test_support::guarded;
use support::{connect, server_endpoint, trusting};
use tokio::sync::{mpsc, oneshot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let (server, identity) = server_endpoint(|config| config);
    // The handler tells the test it started, then waits for the test's go-ahead.
    let (started_tx, mut started) = mpsc::channel(1);
    let release: Arc<Mutex<Option<oneshot::Receiver<()>>>> = Arc::default();
    let (release_tx, release_rx) = oneshot::channel();
    *release.lock().unwrap() = Some(release_rx);
    let service = tower::service_fn(move |_request: Request<RecvBody>| {
        let (started_tx, release) = (started_tx.clone(), release.clone());
        async move {
            let _ = started_tx.send(()).await;
            let wait = release.lock().unwrap().take();
            if let Some(wait) = wait {
                let _ = wait.await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"finished"))))
        }
    });
    tokio::spawn(Server::new(service).serve(server.clone()));
    let (client, connection) = connect(trusting(&identity).build().unwrap(), server.local_addr()).await;
    let uri = format!("https://localhost:{}/slow", server.local_addr().port());
    let in_flight = tokio::spawn({
        let connection = connection.clone();
        async move {
            let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
            let response = connection.send_request(request).await.map_err(|err| err.to_string())?;
            let body = response.into_body().collect().await.map_err(|err| err.to_string())?.to_bytes();
            Ok::<_, String>(body)
        }
    });
    guarded("the handler to start", started.recv()).await;

    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown(Duration::from_secs(20)).await }
    });
    // New connections are refused while the endpoint drains.
    let refused = loop {
        match guarded("a new connection", H3Connection::connect(&client, server.local_addr(), "localhost")).await {
            Err(Error::Connect(ConnectError::HandshakeFailed(ConnectionError::PeerClosed(close)))) => break close,
            // The drain may not have begun yet when the first attempt arrives.
            Ok(extra) => extra.quic().close(0, "retry"),
            Err(other) => panic!("unexpected: {other:?}"),
        }
    };
    assert_eq!((refused.is_application, refused.code), (false, 0x2), "CONNECTION_REFUSED");
    assert!(!shutdown.is_finished(), "the shutdown waits for the request in flight");

    release_tx.send(()).unwrap();
    assert_eq!(guarded("the in-flight response", in_flight).await.unwrap().unwrap(), "finished");
    guarded("the shutdown", shutdown).await.unwrap();
    assert_eq!(server.stats().active_connections, 0);
    // The client heard a graceful close (GOAWAY, then NO_ERROR).
    match guarded("client side closed", connection.quic().closed()).await {
        ConnectionError::PeerClosed(close) => assert_eq!((close.is_application, close.code), (true, 0x100)),
        other => panic!("unexpected close: {other:?}"),
    }
}

/// A server that drains closes its connection once everything it sent is acknowledged, which can be
/// before the client's reader has read it all: what arrived must still reach the reader, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_received_before_the_server_closes_is_read_whole_afterwards() {
    const BODY_BYTES: usize = 8 * 1024 * 1024;
    let (server, identity) = server_endpoint(|config| config);
    let body: Bytes = (0..BODY_BYTES).map(|at| (at % 251) as u8).collect::<Vec<_>>().into();
    let served = body.clone();
    let service = tower::service_fn(move |_request: Request<RecvBody>| {
        let body = served.clone();
        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
    });
    tokio::spawn(Server::new(service).serve(server.clone()));
    // Windows larger than the body: the server can send all of it while nobody reads.
    let client_config = trusting(&identity).flow_control(4 * BODY_BYTES as u64, 2 * BODY_BYTES as u64).build().unwrap();
    let (_client, connection) = connect(client_config, server.local_addr()).await;
    let uri = format!("https://localhost:{}/", server.local_addr().port());
    let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let response = guarded("response", connection.send_request(request)).await.unwrap();
    // Nothing read yet. The server drains: its connection closes once the body is acknowledged.
    guarded("shutdown", server.shutdown(Duration::from_secs(20))).await;
    guarded("client side closed", connection.quic().closed()).await;
    let received = guarded("body", response.into_body().collect()).await.expect("whole body").to_bytes();
    assert_eq!(received.len(), BODY_BYTES);
    assert!(received == body, "body bytes differ");
}
