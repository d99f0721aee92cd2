//! HTTP/3 request mapping: a decoded field section (what QPACK hands quiver-h3) becomes an
//! `http::Request`, `Response` or trailer map, with the message checks of RFC 9114 §4.3.
//!
//! Input: fields separated by `\n`, each `name\tvalue` (a field without a tab has an empty value), so
//! seeds are readable; names and values are arbitrary bytes otherwise. Properties: a section that is
//! accepted is a valid message, and encoding it again gives a section that parses to the same message.

#![no_main]

use http::header::HOST;
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use quiver::quiche::h3::{Header, NameValue};
use quiver_h3::Protocol;
use quiver_h3::internals::{
    parse_request, parse_response, parse_trailers, request_fields, response_fields, trailer_fields,
};

fuzz_target!(|data: &[u8]| {
    let fields: Vec<Header> = data
        .split(|byte| *byte == b'\n')
        .map(|line| match line.iter().position(|byte| *byte == b'\t') {
            Some(tab) => Header::new(&line[..tab], &line[tab + 1..]),
            None => Header::new(line, b""),
        })
        .collect();
    check_request(&fields);
    check_response(&fields);
    check_trailers(&fields);
});

/// Regular fields as they go back on the wire: `Host` is carried as `:authority` instead.
fn without_host(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.remove(HOST);
    headers
}

fn check_request(fields: &[Header]) {
    let Ok(request) = parse_request(fields) else { return };
    let uri = request.uri();
    if request.method() == Method::CONNECT && request.extensions().get::<Protocol>().is_none() {
        assert!(uri.authority().is_some() && uri.scheme().is_none(), "plain CONNECT is authority-only: {uri}");
    } else {
        assert!(uri.scheme().is_some(), "accepted a request without a scheme: {uri}");
        assert!(!uri.path().is_empty(), "accepted a request without a path: {uri}");
    }
    // RFC 9114 §4.3.1: Host, when present, names the same authority as the URI.
    if let Some(host) = request.headers().get(HOST) {
        assert_eq!(uri.authority().map(|authority| authority.as_str().as_bytes()), Some(host.as_bytes()));
    }
    for name in request.headers().keys() {
        assert!(!name.as_str().starts_with(':'), "pseudo-header {name} among regular fields");
    }
    // A request without any authority cannot be re-encoded (a client never sends one).
    let Ok(encoded) = request_fields(&request) else {
        assert!(uri.authority().is_none() && request.headers().get(HOST).is_none());
        return;
    };
    let again = parse_request(&encoded).unwrap_or_else(|err| panic!("re-encoded request refused: {err}"));
    assert_eq!(again.method(), request.method());
    assert_eq!(again.uri(), request.uri());
    assert_eq!(again.extensions().get::<Protocol>(), request.extensions().get::<Protocol>());
    assert_eq!(again.headers(), &without_host(request.headers()));
}

fn check_response(fields: &[Header]) {
    let Ok(response) = parse_response(fields) else { return };
    let again = parse_response(&response_fields(response.status(), response.headers()))
        .unwrap_or_else(|err| panic!("re-encoded response refused: {err}"));
    assert_eq!(again.status(), response.status());
    assert_eq!(again.headers(), &without_host(response.headers()));
}

fn check_trailers(fields: &[Header]) {
    let Ok(trailers) = parse_trailers(fields) else { return };
    assert_eq!(trailers.len(), fields.len(), "a trailer field went missing");
    let encoded = trailer_fields(&trailers);
    assert!(encoded.iter().all(|field| field.name().first() != Some(&b':')));
    let again = parse_trailers(&encoded).unwrap_or_else(|err| panic!("re-encoded trailers refused: {err}"));
    assert_eq!(again, without_host(&trailers));
}
