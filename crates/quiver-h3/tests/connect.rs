//! Extended CONNECT (RFC 9220) with HTTP Datagrams and capsules (RFC 9297), Quiver on both sides: the
//! machinery MASQUE stands on.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use quiver::Endpoint;
use quiver_h3::datagram::{CAPSULE_DATAGRAM, CapsuleDecoder, encode_capsule};
use quiver_h3::{Client, DatagramError, DatagramFlow, Error, H3Settings, Protocol, RecvBody, Server};
use quiver_test_support::guarded;
use support::{server_endpoint, trusting};
use tokio::sync::mpsc;

type FrameSender = mpsc::Sender<Result<http_body::Frame<Bytes>, Infallible>>;

fn channel_body()
-> (FrameSender, StreamBody<impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>>>) {
    let (tx, mut rx) = mpsc::channel(16);
    (tx, StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))))
}

/// For `CONNECT` with `:protocol` "echo": echoes datagrams, and echoes each capsule on the request
/// stream back on the response stream.
async fn tunnel(
    request: Request<RecvBody>,
) -> Response<StreamBody<impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>>>> {
    let (frames, body) = channel_body();
    let is_echo = request.method() == Method::CONNECT
        && request.extensions().get::<Protocol>().is_some_and(|protocol| protocol.0 == "echo");
    if !is_echo {
        drop(frames);
        return Response::builder().status(StatusCode::BAD_REQUEST).body(body).unwrap();
    }
    if let Some(mut flow) = DatagramFlow::take_from(request.extensions()) {
        tokio::spawn(async move {
            while let Some(datagram) = flow.recv().await {
                let _ = flow.send(&datagram);
            }
        });
    }
    let mut upload = request.into_body();
    tokio::spawn(async move {
        let mut decoder = CapsuleDecoder::new(64 * 1024);
        while let Some(Ok(frame)) = upload.frame().await {
            if let Some(data) = frame.data_ref() {
                decoder.push(data);
            }
            while let Ok(Some(capsule)) = decoder.next_capsule() {
                let echoed = encode_capsule(capsule.capsule_type, &capsule.value);
                if frames.send(Ok(http_body::Frame::data(echoed))).await.is_err() {
                    return;
                }
            }
        }
    });
    Response::new(body)
}

fn start(extended_connect: bool) -> (Endpoint, Client) {
    let (endpoint, identity) = server_endpoint(|config| config.datagrams(true));
    let service = tower::service_fn(|request| async move { Ok::<_, Infallible>(tunnel(request).await) });
    let settings = H3Settings { extended_connect, ..H3Settings::default() };
    tokio::spawn(Server::new(service).settings(settings).serve(endpoint.clone()));
    let client_config = trusting(&identity).datagrams(true).build().unwrap();
    (endpoint, Client::new(client_config))
}

fn connect_request(
    port: u16,
    body: impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
) -> Request<impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost:{port}/tunnel"))
        .header("capsule-protocol", "?1")
        .extension(Protocol("echo".into()))
        .body(body)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_carries_datagrams_and_capsules() {
    let (endpoint, client) = start(true);
    let (upload, body) = channel_body();
    let run = async {
        let response = client.send_request(connect_request(endpoint.local_addr().port(), body)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut flow = DatagramFlow::take_from(response.extensions()).expect("datagram flow on a CONNECT response");
        assert!(DatagramFlow::take_from(response.extensions()).is_none(), "taken once");
        assert!(flow.max_payload() > 1000, "max payload {}", flow.max_payload());

        for index in 0..200u32 {
            let payload = index.to_be_bytes().repeat(1 + index as usize % 250);
            flow.send(&payload).unwrap();
            assert_eq!(flow.recv().await.expect("echoed datagram"), payload, "datagram {index}");
        }
        let too_big = vec![0u8; flow.max_payload() + 1];
        assert!(matches!(flow.send(&too_big), Err(DatagramError::TooLarge { .. })));

        // The Capsule Protocol on the stream itself (the fallback when datagrams are unavailable).
        let mut downloads = response.into_body();
        let mut decoder = CapsuleDecoder::new(64 * 1024);
        for index in 0..20u8 {
            let value = vec![index; 100 * index as usize];
            upload.send(Ok(http_body::Frame::data(encode_capsule(CAPSULE_DATAGRAM, &value)))).await.unwrap();
            let capsule = loop {
                if let Some(capsule) = decoder.next_capsule().unwrap() {
                    break capsule;
                }
                let frame = downloads.frame().await.expect("stream open").unwrap();
                decoder.push(frame.data_ref().expect("data"));
            };
            assert_eq!((capsule.capsule_type, &capsule.value[..]), (CAPSULE_DATAGRAM, &value[..]));
        }
    };
    guarded("tunnel run", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_needs_the_server_setting() {
    let (endpoint, client) = start(false);
    let (_upload, body) = channel_body();
    let outcome =
        guarded("the CONNECT request", client.send_request(connect_request(endpoint.local_addr().port(), body))).await;
    assert!(matches!(outcome, Err(Error::ExtendedConnectUnsupported)), "{outcome:?}");
}
