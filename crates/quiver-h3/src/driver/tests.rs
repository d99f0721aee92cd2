//! Both roles of the driver over the in-memory pipe (`crate::test_pipe`): no sockets, no runtime, no
//! clock. The tests play the user's side through the same messages handlers and callers use.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use quiver::ApplicationOverQuic;
use quiver::quiche;
use quiver::quiche::h3::{self, Header};
use tokio::sync::{Semaphore, oneshot};

use super::{H3Driver, H3Settings};
use crate::body::RecvBody;
use crate::command::{NewRequest, OutFrame, ResponseResult, StreamSink, Wake};
use crate::error::{BodyError, Error, H3_DATAGRAM_ERROR, H3_MESSAGE_ERROR, H3_NO_ERROR, H3_REQUEST_CANCELLED};
use crate::headers;
use crate::test_pipe::{Pipe, Side, Windows};

/// Requests the server driver handed to "user code", in arrival order.
type Dispatched = Arc<Mutex<Vec<(Request<RecvBody>, StreamSink)>>>;

fn pipe_with(windows: Windows, server_settings: H3Settings) -> (Pipe, Dispatched) {
    let dispatched = Dispatched::default();
    let sink = dispatched.clone();
    let dispatch: super::Dispatch =
        Arc::new(move |request: Request<RecvBody>, stream: StreamSink| sink.lock().unwrap().push((request, stream)));
    let server = H3Driver::server(server_settings, dispatch);
    let client = H3Driver::client(H3Settings::default());
    (Pipe::with_windows(client, server, windows), dispatched)
}

fn pipe() -> (Pipe, Dispatched) {
    pipe_with(Windows::default(), H3Settings::default())
}

/// A request as the client's caller queues it, and its two answers.
struct Sent {
    opened: oneshot::Receiver<StreamSink>,
    response: oneshot::Receiver<ResponseResult>,
}

fn send_fields(pipe: &Pipe, fields: Vec<Header>, end: bool) -> Sent {
    let permits = Arc::new(Semaphore::new(1));
    let (opened_tx, opened) = oneshot::channel();
    let (response_tx, response) = oneshot::channel();
    let request = NewRequest {
        fields,
        end,
        is_connect: false,
        opened: opened_tx,
        response: response_tx,
        _permit: permits.try_acquire_owned().unwrap(),
    };
    assert!(pipe.client.driver.waker().send(Wake::Request(request)).is_ok());
    Sent { opened, response }
}

fn send(pipe: &Pipe, method: &str, path: &str, end: bool) -> Sent {
    let request = Request::builder().method(method).uri(format!("https://localhost{path}")).body(()).unwrap();
    send_fields(pipe, headers::request_fields(&request).unwrap(), end)
}

fn take_dispatched(dispatched: &Dispatched) -> Vec<(Request<RecvBody>, StreamSink)> {
    std::mem::take(&mut *dispatched.lock().unwrap())
}

/// What a body has delivered so far, without waiting.
#[derive(Debug, Default)]
struct Read {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    /// `Some(Ok)` at the end, `Some(Err)` when it ended with an error, `None` while more may come.
    end: Option<Result<(), BodyError>>,
}

fn read_available(body: &mut RecvBody, into: &mut Read) {
    while into.end.is_none() {
        match body.frame().now_or_never() {
            None => return,
            Some(None) => into.end = Some(Ok(())),
            Some(Some(Err(err))) => into.end = Some(Err(err)),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => into.data.extend_from_slice(&data),
                Err(frame) => into.trailers = frame.into_trailers().ok(),
            },
        }
    }
}

fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(name, http::HeaderValue::from_static(value));
    map
}

fn respond(sink: &StreamSink, status: StatusCode, end: bool) {
    let fields = headers::response_fields(status, &HeaderMap::new());
    assert!(sink.frame(OutFrame::Head { fields, end }).is_ok());
}

/// Queues `bytes` on `sink`; they must fit the stream's send budget.
fn queue_data(sink: &StreamSink, bytes: &'static [u8]) {
    let queued = sink.data(Bytes::from_static(bytes)).now_or_never();
    assert!(matches!(queued, Some(Ok(()))), "send budget exhausted");
}

#[test]
fn request_and_response_carry_bodies_and_trailers_both_ways() {
    let (mut pipe, dispatched) = pipe();
    let mut sent = send(&pipe, "POST", "/upload", false);
    pipe.run();
    let upload = sent.opened.try_recv().expect("request stream opened");
    queue_data(&upload, b"hello ");
    queue_data(&upload, b"server");
    assert!(upload.frame(OutFrame::Trailers(headers::trailer_fields(&trailers("x-sum", "11")))).is_ok());
    pipe.run();

    let (request, sink) = take_dispatched(&dispatched).pop().expect("request dispatched");
    assert_eq!((request.method().as_str(), request.uri().path()), ("POST", "/upload"));
    let mut request_body = request.into_body();
    let mut received = Read::default();
    read_available(&mut request_body, &mut received);
    assert_eq!(received.data, b"hello server");
    assert_eq!(received.trailers, Some(trailers("x-sum", "11")));
    assert!(matches!(received.end, Some(Ok(()))));

    respond(&sink, StatusCode::CREATED, false);
    queue_data(&sink, b"stored");
    assert!(sink.frame(OutFrame::Trailers(headers::trailer_fields(&trailers("x-id", "7")))).is_ok());
    pipe.run();

    let response = sent.response.try_recv().expect("response head").expect("response");
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut response_body = RecvBody::new(response.into_body());
    let mut answer = Read::default();
    read_available(&mut response_body, &mut answer);
    assert_eq!(answer.data, b"stored");
    assert_eq!(answer.trailers, Some(trailers("x-id", "7")));
    assert!(matches!(answer.end, Some(Ok(()))));
    // Both sides forgot the exchange.
    assert!(pipe.client.driver.streams.is_empty() && pipe.server.driver.streams.is_empty());
}

#[test]
fn a_malformed_request_resets_only_its_own_stream() {
    let (mut pipe, dispatched) = pipe();
    let good = send(&pipe, "GET", "/good", true);
    let mut fields = headers::request_fields(&Request::get("https://localhost/bad").body(()).unwrap()).unwrap();
    // A connection-specific field (RFC 9114 section 4.2). (An uppercase name would not do: quiche's
    // QPACK encoder lowercases names on the way out.)
    fields.push(Header::new(b"connection", b"close"));
    let mut bad = send_fields(&pipe, fields, true);
    pipe.run();

    let requests = take_dispatched(&dispatched);
    assert_eq!(requests.len(), 1, "only the well-formed request reaches the handler");
    assert_eq!(requests[0].0.uri().path(), "/good");
    assert!(matches!(bad.response.try_recv(), Ok(Err(Error::StreamReset(H3_MESSAGE_ERROR)))));

    respond(&requests[0].1, StatusCode::OK, true);
    pipe.run();
    let mut good = good;
    assert_eq!(good.response.try_recv().expect("head").expect("response").status(), StatusCode::OK);
    assert!(!pipe.client.conn.is_closed() && !pipe.server.conn.is_closed(), "the connection lives on");
}

#[test]
fn drain_sends_goaway_finishes_in_flight_requests_then_closes() {
    let (mut pipe, dispatched) = pipe();
    let mut in_flight = send(&pipe, "GET", "/slow", true);
    pipe.run();
    let (_, sink) = take_dispatched(&dispatched).pop().expect("request dispatched");

    pipe.server.driver.on_drain(&mut pipe.server.conn).expect("on_drain");
    pipe.run();
    assert!(pipe.client.driver.going_away_flag().load(std::sync::atomic::Ordering::Relaxed), "GOAWAY arrived");
    let mut refused = send(&pipe, "GET", "/late", true);
    pipe.run();
    let refused = refused.response.try_recv().expect("answered at once");
    assert!(matches!(refused, Err(ref err) if err.is_retryable()), "{refused:?}");
    assert!(!pipe.server.conn.is_closed() && pipe.server.conn.local_error().is_none(), "waits for in-flight");

    respond(&sink, StatusCode::OK, true);
    pipe.run();
    assert_eq!(in_flight.response.try_recv().expect("head").expect("response").status(), StatusCode::OK);
    let close = pipe.client.conn.peer_error().expect("server closed once its last answer was acknowledged");
    assert!(close.is_app && close.error_code == H3_NO_ERROR, "{close:?}");
}

#[test]
fn a_drained_server_with_nothing_in_flight_closes_at_once() {
    let (mut pipe, _) = pipe();
    pipe.server.driver.on_drain(&mut pipe.server.conn).expect("on_drain");
    pipe.run();
    let close = pipe.client.conn.peer_error().expect("closed");
    assert!(close.is_app && close.error_code == H3_NO_ERROR, "{close:?}");
}

#[test]
fn a_caller_that_stops_waiting_cancels_its_request_on_the_wire() {
    let (mut pipe, dispatched) = pipe();
    let sent = send(&pipe, "POST", "/upload", false);
    pipe.run();
    let (request, _sink) = take_dispatched(&dispatched).pop().expect("request dispatched");
    // What `H3Connection::send_request` does when its future is dropped.
    drop(sent.response);
    assert!(pipe.client.driver.waker().send(Wake::ResponseAbandoned).is_ok());
    pipe.run();

    let mut body = request.into_body();
    let mut received = Read::default();
    read_available(&mut body, &mut received);
    assert_eq!(received.end, Some(Err(BodyError::Reset(H3_REQUEST_CANCELLED))));
    // STOP_SENDING reached the server too: quiche answered it with a reset of the server's side, and
    // once both directions were reset and acknowledged it forgot the stream, so nothing more can be
    // sent on it (a stream quiche still held would refuse with StreamStopped instead).
    let stream = 0;
    assert!(
        matches!(
            pipe.server.conn.stream_send(stream, b"late", false),
            Err(quiche::Error::Done | quiche::Error::StreamStopped(H3_REQUEST_CANCELLED))
        ),
        "the server may not send on a cancelled request"
    );
    assert!(pipe.client.driver.streams.is_empty());
}

#[test]
fn dropping_a_response_body_stops_the_server_sending_it() {
    let (mut pipe, dispatched) = pipe();
    let mut sent = send(&pipe, "GET", "/large", true);
    pipe.run();
    let (_, sink) = take_dispatched(&dispatched).pop().expect("request dispatched");
    respond(&sink, StatusCode::OK, false);
    queue_data(&sink, &[7; 1000]);
    pipe.run();
    let response = sent.response.try_recv().expect("head").expect("response");
    drop(RecvBody::new(response.into_body()));
    pipe.run();

    assert_eq!(
        pipe.server.conn.stream_send(0, b"more", false),
        Err(quiche::Error::StreamStopped(H3_REQUEST_CANCELLED))
    );
    // The handler learns at its next write that nobody wants the rest.
    queue_data(&sink, b"more");
    pipe.run();
    assert!(sink.frame(OutFrame::End).is_err(), "the stream is gone for the handler");
    assert!(pipe.client.driver.streams.is_empty());
}

#[test]
fn a_reader_that_does_not_read_stops_the_peer_through_flow_control() {
    const WINDOW: u64 = 32 * 1024;
    let windows = Windows { stream_bytes: WINDOW, connection_bytes: 16 * WINDOW };
    let (mut pipe, dispatched) = pipe_with(windows, H3Settings::default());
    let mut sent = send(&pipe, "POST", "/upload", false);
    pipe.run();
    let upload = sent.opened.try_recv().expect("request stream opened");
    let chunk: &'static [u8] = &[1; 16 * 1024];
    // Queue the whole send budget: more than the server's window and body channel hold together.
    let mut queued = 0;
    while upload.data(Bytes::from_static(chunk)).now_or_never().is_some_and(|sent| sent.is_ok()) {
        queued += chunk.len();
    }
    pipe.run();
    let (request, _sink) = take_dispatched(&dispatched).pop().expect("request dispatched");
    let waiting = pending_bytes(&pipe, 0);
    assert!(waiting > 0, "the client still holds data: the server gave no more credit");
    pipe.run();
    assert_eq!(pending_bytes(&pipe, 0), waiting, "no progress while nobody reads");

    // Reading gives credit back, and the rest flows.
    let mut body = request.into_body();
    let mut received = Read::default();
    for _ in 0..100 {
        read_available(&mut body, &mut received);
        pipe.run();
        if received.data.len() == queued {
            break;
        }
    }
    assert_eq!(received.data.len(), queued);
    assert_eq!(pending_bytes(&pipe, 0), 0);
}

/// Body bytes the client driver still holds for `stream`, not yet taken by quiche.
fn pending_bytes(pipe: &Pipe, stream: u64) -> usize {
    let Some(state) = pipe.client.driver.streams.get(&stream) else { return 0 };
    state
        .outbound
        .iter()
        .map(|frame| match frame {
            OutFrame::Data { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum()
}

/// Takes a side's HTTP/3 connection out of its driver, which then stands still (its hooks find no
/// connection), so the test can play a hostile peer with raw `quiche::h3` calls: send what our own
/// driver never would. Packets still flow through the pipe.
fn raw_peer(side: &mut Side) -> h3::Connection {
    side.driver.h3.take().expect("HTTP/3 is up")
}

/// Every event the raw peer's connection has, as (stream, reset code if the event is a reset).
fn peer_resets(peer: &mut h3::Connection, conn: &mut quiver::QuicConnection) -> Vec<(u64, u64)> {
    let mut resets = Vec::new();
    loop {
        match peer.poll(conn) {
            Ok((stream, h3::Event::Reset(code))) => resets.push((stream, code)),
            Ok((stream, h3::Event::Data)) => {
                let mut scratch = [0u8; 1024];
                while matches!(peer.recv_body(conn, stream, &mut scratch), Ok(read) if read > 0) {}
            }
            Ok(_) => {}
            Err(_) => return resets,
        }
    }
}

fn fields_with(head: &[(&str, &str)], lengths: &[&str]) -> Vec<Header> {
    let mut fields: Vec<Header> =
        head.iter().map(|(name, value)| Header::new(name.as_bytes(), value.as_bytes())).collect();
    fields.extend(lengths.iter().map(|length| Header::new(b"content-length", length.as_bytes())));
    fields
}

/// A raw client sends a POST with these `Content-Length` values and `body` (none: the head ends the
/// stream); returns the stream.
fn raw_request(pipe: &mut Pipe, peer: &mut h3::Connection, lengths: &[&str], body: Option<&[u8]>) -> u64 {
    let head = [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"), (":path", "/")];
    let conn = &mut pipe.client.conn;
    let stream = peer.send_request(conn, &fields_with(&head, lengths), body.is_none()).expect("request");
    if let Some(body) = body {
        assert_eq!(peer.send_body(conn, stream, body, true), Ok(body.len()));
    }
    pipe.run();
    stream
}

fn read_all(body: RecvBody) -> Read {
    let mut body = body;
    let mut read = Read::default();
    read_available(&mut body, &mut read);
    read
}

#[test]
fn requests_without_an_authority_never_reach_the_handler() {
    // Host does not stand in for :authority in an extended CONNECT (RFC 9220 §3, RFC 9298 §3.4), and
    // an https request needs one of the two (RFC 9114 §4.3.1). Our own client always sends :authority.
    let extended_connect = [
        (":method", "CONNECT"),
        (":protocol", "connect-udp"),
        (":scheme", "https"),
        (":path", "/.well-known/masque/udp/192.0.2.1/53/"),
        ("host", "localhost"),
    ];
    let no_host = [(":method", "GET"), (":scheme", "https"), (":path", "/")];
    for head in [&extended_connect[..], &no_host] {
        let settings = H3Settings { extended_connect: true, ..H3Settings::default() };
        let (mut pipe, dispatched) = pipe_with(Windows::default(), settings);
        let mut peer = raw_peer(&mut pipe.client);
        let stream = peer.send_request(&mut pipe.client.conn, &fields_with(head, &[]), true).expect("request");
        pipe.run();
        assert!(take_dispatched(&dispatched).is_empty(), "{head:?} reached the handler");
        assert_eq!(peer_resets(&mut peer, &mut pipe.client.conn), [(stream, H3_MESSAGE_ERROR)], "{head:?}");
    }
}

/// A raw client uploads `body` under these `Content-Length` values; the head is well-formed, so a
/// handler gets it. Returns what the handler read, its sink, and the resets the raw client saw.
fn upload(lengths: &[&str], body: &[u8]) -> (Read, StreamSink, Vec<(u64, u64)>) {
    let (mut pipe, dispatched) = pipe();
    let mut peer = raw_peer(&mut pipe.client);
    raw_request(&mut pipe, &mut peer, lengths, Some(body));
    let (request, sink) = take_dispatched(&dispatched).pop().expect("the head alone is well-formed");
    let read = read_all(request.into_body());
    (read, sink, peer_resets(&mut peer, &mut pipe.client.conn))
}

#[test]
fn a_request_body_longer_than_its_content_length_is_malformed() {
    let (read, sink, resets) = upload(&["5"], b"12345GET /admin");
    assert!(read.data.len() <= 5, "the handler never sees bytes past the declared length: {:?}", read.data);
    assert!(matches!(read.end, Some(Err(BodyError::Malformed(_)))), "{:?}", read.end);
    assert!(sink.frame(OutFrame::End).is_err(), "the stream is gone for the handler");
    assert_eq!(resets, [(0, H3_MESSAGE_ERROR)]);
}

#[test]
fn a_request_body_shorter_than_its_content_length_is_malformed() {
    let (read, _sink, resets) = upload(&["10"], b"12345");
    assert_eq!(read.data, b"12345");
    assert!(matches!(read.end, Some(Err(BodyError::Malformed(_)))), "not a clean end: {:?}", read.end);
    assert_eq!(resets, [(0, H3_MESSAGE_ERROR)]);
}

#[test]
fn a_request_whose_head_is_malformed_by_content_length_never_reaches_the_handler() {
    for (lengths, body) in
        [(&["5", "6"][..], Some(&b"12345"[..])), (&["5, 6"], Some(b"12345")), (&["-5"], Some(b"12345")), (&["5"], None)]
    {
        let (mut pipe, dispatched) = pipe();
        let mut peer = raw_peer(&mut pipe.client);
        let stream = raw_request(&mut pipe, &mut peer, lengths, body);
        assert!(take_dispatched(&dispatched).is_empty(), "{lengths:?} {body:?} reached the handler");
        assert_eq!(peer_resets(&mut peer, &mut pipe.client.conn), [(stream, H3_MESSAGE_ERROR)], "{lengths:?}");
    }
}

#[test]
fn identical_content_length_values_are_one() {
    let (mut pipe, dispatched) = pipe();
    let mut peer = raw_peer(&mut pipe.client);
    raw_request(&mut pipe, &mut peer, &["5", "5"], Some(b"12345"));
    let (request, _sink) = take_dispatched(&dispatched).pop().expect("dispatched");
    assert_eq!(request.headers().get_all("content-length").iter().collect::<Vec<_>>(), ["5"], "folded");
    let read = read_all(request.into_body());
    assert_eq!((read.data.as_slice(), read.end), (&b"12345"[..], Some(Ok(()))));
}

/// The client driver sends `method` (its upload left open, so the server's reset shows on the wire
/// unless the method is HEAD); the raw server answers with `status`, these `Content-Length` values
/// and `body` (none: the head ends the stream). Returns the caller's result and the resets the raw
/// server saw.
fn raw_response(
    method: &str,
    status: &str,
    lengths: &[&str],
    body: Option<&[u8]>,
) -> (ResponseResult, Vec<(u64, u64)>) {
    let (mut pipe, _) = pipe();
    let mut peer = raw_peer(&mut pipe.server);
    let mut sent = send(&pipe, method, "/", method == "HEAD");
    pipe.run();
    let stream = 0;
    assert!(peer_resets(&mut peer, &mut pipe.server.conn).is_empty(), "the request head arrived");
    let conn = &mut pipe.server.conn;
    peer.send_response(conn, stream, &fields_with(&[(":status", status)], lengths), body.is_none()).expect("head");
    if let Some(body) = body {
        assert_eq!(peer.send_body(conn, stream, body, true), Ok(body.len()));
    }
    pipe.run();
    let response = sent.response.try_recv().expect("answered");
    let resets = peer_resets(&mut peer, &mut pipe.server.conn);
    (response, resets)
}

fn response_body(response: ResponseResult) -> Read {
    read_all(RecvBody::new(response.expect("a response head").into_body()))
}

#[test]
fn a_response_body_longer_than_its_content_length_is_malformed() {
    let (response, resets) = raw_response("POST", "200", &["5"], Some(b"12345HTTP/1.1 200 OK"));
    let read = response_body(response);
    assert!(read.data.len() <= 5, "{:?}", read.data);
    assert!(matches!(read.end, Some(Err(BodyError::Malformed(_)))), "{:?}", read.end);
    assert_eq!(resets, [(0, H3_MESSAGE_ERROR)], "the client reset the stream");
}

#[test]
fn a_response_body_shorter_than_its_content_length_is_malformed() {
    let (response, resets) = raw_response("POST", "200", &["10"], Some(b"12345"));
    let read = response_body(response);
    assert_eq!(read.data, b"12345");
    assert!(matches!(read.end, Some(Err(BodyError::Malformed(_)))), "not a clean end: {:?}", read.end);
    assert_eq!(resets, [(0, H3_MESSAGE_ERROR)]);
}

#[test]
fn a_response_whose_head_is_malformed_by_content_length_fails_the_request() {
    for (lengths, body) in [(&["5", "6"][..], Some(&b"12345"[..])), (&["x"], Some(b"12345")), (&["5"], None)] {
        let (response, resets) = raw_response("POST", "200", lengths, body);
        assert!(matches!(response, Err(Error::MalformedResponse(_))), "{lengths:?}: {response:?}");
        assert_eq!(resets, [(0, H3_MESSAGE_ERROR)], "{lengths:?}");
    }
}

#[test]
fn responses_without_content_may_declare_a_length() {
    // RFC 9114 §4.1.2: HEAD, 204 and 304 responses never have content, whatever Content-Length says.
    for (method, status) in [("HEAD", "200"), ("GET", "304"), ("GET", "204")] {
        let (response, _) = raw_response(method, status, &["1000"], None);
        let read = response_body(response);
        assert_eq!((read.data.len(), read.end), (0, Some(Ok(()))), "{method} {status}: an empty body, ended");
    }
    let (response, _) = raw_response("HEAD", "200", &["3"], Some(b"abc"));
    assert!(matches!(response_body(response).end, Some(Err(BodyError::Malformed(_)))), "content on a HEAD response");
}

#[test]
fn a_datagram_for_an_impossible_stream_closes_the_connection() {
    let (mut pipe, _) = pipe();
    // A quarter stream ID of 2^60 - 1 is possible (no such stream yet: dropped), 2^60 is not.
    let mut possible = Vec::new();
    crate::datagram::put_varint(&mut possible, (1 << 60) - 1);
    possible.push(0);
    pipe.client.conn.dgram_send(&possible).expect("datagram");
    pipe.run();
    assert!(!pipe.server.conn.is_closed());
    let mut impossible = Vec::new();
    crate::datagram::put_varint(&mut impossible, 1 << 60);
    impossible.push(0);
    pipe.client.conn.dgram_send(&impossible).expect("datagram");
    pipe.run();
    let close = pipe.client.conn.peer_error().expect("the server closed the connection");
    assert!(close.is_app && close.error_code == H3_DATAGRAM_ERROR, "{close:?}");
}
