//! Session resumption and 0-RTT: a client that connected once resumes its next connection, sends safe
//! requests in early data, and the server marks them; unsafe requests wait for the handshake.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use quiver::{Endpoint, TlsIdentity};
use quiver_h3::{EarlyData, H3Connection, RecvBody, Server};
use quiver_test_support::guarded;
use quiver_test_support::relay::gated::GatedRelay;
use support::{server_endpoint, trusting};

/// Answers with whether the request arrived in early data, and its method.
async fn report(request: Request<RecvBody>) -> Result<Response<String>, Infallible> {
    let early = request.extensions().get::<EarlyData>().is_some();
    Ok(Response::new(format!("{} {}", request.method(), if early { "early" } else { "after-handshake" })))
}

/// A client endpoint on loopback that trusts `identity`, with `configure` applied to its settings.
fn client_trusting(
    identity: &TlsIdentity,
    configure: impl FnOnce(quiver::ClientConfigBuilder) -> quiver::ClientConfigBuilder,
) -> Endpoint {
    Endpoint::client("127.0.0.1:0".parse().unwrap(), configure(trusting(identity)).build().unwrap()).unwrap()
}

async fn ask(connection: &H3Connection, method: Method, port: u16) -> String {
    let request = Request::builder()
        .method(method)
        .uri(format!("https://localhost:{port}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = guarded("request", connection.send_request(request)).await.unwrap();
    let body = guarded("body", response.into_body().collect()).await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_connection_sends_safe_requests_in_early_data_and_the_server_marks_them() {
    let (server, identity) = server_endpoint(|config| config.early_data(true));
    // Every request the server handles is also reported here, so the test can wait for it.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let service = tower::service_fn(move |request: Request<RecvBody>| {
        let seen_tx = seen_tx.clone();
        async move {
            let response = report(request).await?;
            let _ = seen_tx.send(response.body().clone());
            Ok::<_, Infallible>(response)
        }
    });
    tokio::spawn(Server::new(service).serve(server.clone()));
    let relay = GatedRelay::start(server.local_addr()).await;
    let port = relay.addr().port();
    let client = client_trusting(&identity, |config| config.early_data(true));

    // First contact: a full handshake, which leaves a session ticket behind.
    let first = guarded("connect", H3Connection::connect(&client, relay.addr(), "localhost")).await.unwrap();
    assert!(!first.quic().started_in_early_data());
    assert_eq!(ask(&first, Method::GET, port).await, "GET after-handshake");
    first.quic().close(0, "done");
    guarded("first closed", first.quic().closed()).await;

    // Second contact, with the server's answers held back: the client resumes, is usable at once, and
    // cannot complete the handshake, so its GET goes in 0-RTT; its POST waits for the handshake.
    relay.set_open(false);
    let second = guarded("resume", H3Connection::connect(&client, relay.addr(), "localhost")).await.unwrap();
    assert!(second.quic().started_in_early_data(), "the resumed connection was usable before its handshake");
    let get = tokio::spawn({
        let second = second.clone();
        async move { ask(&second, Method::GET, port).await }
    });
    let post = tokio::spawn({
        let second = second.clone();
        async move { ask(&second, Method::POST, port).await }
    });
    assert_eq!(guarded("the first request", seen.recv()).await.as_deref(), Some("GET after-handshake"));
    assert_eq!(guarded("the early GET", seen.recv()).await.as_deref(), Some("GET early"));
    relay.set_open(true);
    assert_eq!(guarded("GET", get).await.unwrap(), "GET early");
    assert_eq!(guarded("POST", post).await.unwrap(), "POST after-handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_early_data_a_resumed_connection_waits_for_the_handshake() {
    // The server does not accept early data.
    let (server, identity) = server_endpoint(|config| config);
    tokio::spawn(Server::new(tower::service_fn(report)).serve(server.clone()));
    let client = client_trusting(&identity, |config| config.early_data(true));
    for round in 0..2 {
        let connection =
            guarded("connect", H3Connection::connect(&client, server.local_addr(), "localhost")).await.unwrap();
        assert!(!connection.quic().started_in_early_data(), "round {round}");
        assert_eq!(ask(&connection, Method::GET, server.local_addr().port()).await, "GET after-handshake");
        connection.quic().close(0, "done");
        guarded("closed", connection.quic().closed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumption_can_be_turned_off() {
    let (server, identity) = server_endpoint(|config| config);
    tokio::spawn(Server::new(tower::service_fn(report)).serve(server.clone()));
    for resumption in [true, false] {
        let client = client_trusting(&identity, |config| config.session_resumption(resumption));
        let mut resumed = Vec::new();
        for _ in 0..2 {
            let connection =
                guarded("connect", H3Connection::connect(&client, server.local_addr(), "localhost")).await.unwrap();
            // A request, so that the server's session ticket has surely arrived before the close.
            assert_eq!(ask(&connection, Method::GET, server.local_addr().port()).await, "GET after-handshake");
            resumed.push(connection.quic().handshake().resumed);
            connection.quic().close(0, "done");
            guarded("closed", connection.quic().closed()).await;
        }
        assert_eq!(resumed, [false, resumption], "resumption {resumption}");
    }
}
