//! Mapping between HTTP/3 field sections and `http` types, with the message checks of RFC 9114 §4.3:
//! pseudo-headers first, once each, only the ones defined for the direction; lowercase names; no
//! connection-specific fields; an authority wherever the request needs one (§4.3.1, RFC 9220 §3);
//! at most one `Content-Length` value (§4.1.2). A violation is a malformed message (H3_MESSAGE_ERROR).

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use quiver::quiche::h3::{Header, NameValue};

use crate::error::Error;
pub use crate::error::Malformed;

fn malformed(reason: impl Into<std::borrow::Cow<'static, str>>) -> Malformed {
    Malformed::new(reason)
}

/// The `:protocol` of an extended CONNECT request (RFC 9220), kept in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol(pub String);

const CONNECTION_SPECIFIC: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];

fn regular_field(name: &[u8], value: &[u8], into: &mut HeaderMap) -> Result<(), Malformed> {
    if name.iter().any(u8::is_ascii_uppercase) {
        return Err(malformed("uppercase field name"));
    }
    let name = HeaderName::from_bytes(name).map_err(|_| malformed("invalid field name"))?;
    if CONNECTION_SPECIFIC.contains(&name.as_str()) {
        return Err(malformed(format!("connection-specific field {name}")));
    }
    if name == http::header::TE && value != b"trailers" {
        return Err(malformed("TE other than \"trailers\""));
    }
    let value = HeaderValue::from_bytes(value).map_err(|_| malformed(format!("invalid value for {name}")))?;
    into.append(name, value);
    Ok(())
}

/// The message's declared content length (RFC 9110 §8.6): `Ok(None)` without `Content-Length`.
///
/// Several values that differ, or a value that is not a non-negative decimal integer, make the message
/// malformed (RFC 9114 §4.1.2): a front end that took one value while a back end took another is
/// how requests get smuggled. Identical values count as one.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Malformed> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        // A recipient may see "42, 42" (RFC 9110 §8.6): every item counts as a value.
        for item in value.as_bytes().split(|byte| *byte == b',') {
            let item = item.trim_ascii();
            // Digits only: `u64::from_str` would also take a leading '+'.
            let digits = !item.is_empty() && item.iter().all(u8::is_ascii_digit);
            let parsed = std::str::from_utf8(item).ok().filter(|_| digits).and_then(|item| item.parse::<u64>().ok());
            let parsed = parsed.ok_or_else(|| malformed("invalid Content-Length"))?;
            if length.replace(parsed).is_some_and(|earlier| earlier != parsed) {
                return Err(malformed("several different Content-Length values"));
            }
        }
    }
    Ok(length)
}

/// Checks `Content-Length` and folds repeated identical values into one field, so whoever reads the
/// head later sees one plain number.
fn fold_content_length(headers: &mut HeaderMap) -> Result<(), Malformed> {
    if let Some(length) = content_length(headers)? {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(())
}

/// Builds a request head from a request field section.
pub fn parse_request(fields: &[Header]) -> Result<Request<()>, Malformed> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut protocol = None;
    let mut headers = HeaderMap::new();
    let mut regular_seen = false;
    for field in fields {
        let (name, value) = (field.name(), field.value());
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular_seen {
                return Err(malformed("pseudo-header after regular field"));
            }
            let slot = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"authority" => &mut authority,
                b"path" => &mut path,
                b"protocol" => &mut protocol,
                _ => return Err(malformed(format!("unknown pseudo-header :{}", String::from_utf8_lossy(pseudo)))),
            };
            if slot.replace(value).is_some() {
                return Err(malformed("duplicate pseudo-header"));
            }
        } else {
            regular_seen = true;
            regular_field(name, value, &mut headers)?;
        }
    }
    let method = Method::from_bytes(method.ok_or_else(|| malformed("missing :method"))?)
        .map_err(|_| malformed("invalid :method"))?;
    let is_connect = method == Method::CONNECT;
    // RFC 9114 §4.3.1: when both are present they name the same authority; otherwise a proxy or router
    // that reads one could be steered somewhere else than the handler that reads the other.
    if let (Some(authority), Some(host)) = (authority, headers.get(http::header::HOST))
        && authority != host.as_bytes()
    {
        return Err(malformed(":authority and Host differ"));
    }
    let authority_or_host = authority.or_else(|| headers.get(http::header::HOST).map(HeaderValue::as_bytes));
    let uri = if is_connect && protocol.is_none() {
        // Plain CONNECT: only :authority (RFC 9114 §4.4).
        if scheme.is_some() || path.is_some() {
            return Err(malformed("CONNECT with :scheme or :path"));
        }
        let authority = authority.ok_or_else(|| malformed("CONNECT without :authority"))?;
        Uri::builder().authority(authority).build().map_err(|_| malformed("invalid :authority"))?
    } else {
        if protocol.is_some() && !is_connect {
            return Err(malformed(":protocol on a method other than CONNECT"));
        }
        let scheme = scheme.ok_or_else(|| malformed("missing :scheme"))?;
        let path = path.ok_or_else(|| malformed("missing :path"))?;
        if path.is_empty() {
            return Err(malformed("empty :path"));
        }
        // RFC 9220 §3 (and RFC 9298 §3.4): an extended CONNECT names its authority in :authority.
        if protocol.is_some() && authority.is_none() {
            return Err(malformed("extended CONNECT without :authority"));
        }
        // RFC 9114 §4.3.1: http and https requests carry :authority or Host; without either, which
        // host the request is for is up to each hop's guess.
        if matches!(scheme, b"http" | b"https") && authority_or_host.is_none() {
            return Err(malformed("http(s) request without :authority or Host"));
        }
        let mut uri = Uri::builder().scheme(scheme).path_and_query(path);
        if let Some(authority) = authority_or_host {
            uri = uri.authority(authority);
        }
        uri.build().map_err(|_| malformed("invalid :scheme, :authority or :path"))?
    };
    let mut request = Request::builder().method(method).uri(uri).version(http::Version::HTTP_3);
    if let Some(protocol) = protocol {
        let protocol = String::from_utf8(protocol.to_vec()).map_err(|_| malformed("invalid :protocol"))?;
        request = request.extension(Protocol(protocol));
    }
    let mut request = request.body(()).map_err(|err| malformed(err.to_string()))?;
    fold_content_length(&mut headers)?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Builds a response head from a response field section.
pub fn parse_response(fields: &[Header]) -> Result<Response<()>, Malformed> {
    let mut status = None;
    let mut headers = HeaderMap::new();
    let mut regular_seen = false;
    for field in fields {
        let (name, value) = (field.name(), field.value());
        if name.first() == Some(&b':') {
            if regular_seen || name != b":status" || status.replace(value).is_some() {
                return Err(malformed("invalid or repeated pseudo-header in response"));
            }
        } else {
            regular_seen = true;
            regular_field(name, value, &mut headers)?;
        }
    }
    let status = StatusCode::from_bytes(status.ok_or_else(|| malformed("missing :status"))?)
        .map_err(|_| malformed("invalid :status"))?;
    fold_content_length(&mut headers)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = http::Version::HTTP_3;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Builds a trailer map; trailers may not carry pseudo-headers.
pub fn parse_trailers(fields: &[Header]) -> Result<HeaderMap, Malformed> {
    let mut trailers = HeaderMap::new();
    for field in fields {
        if field.name().first() == Some(&b':') {
            return Err(malformed("pseudo-header in trailers"));
        }
        regular_field(field.name(), field.value(), &mut trailers)?;
    }
    Ok(trailers)
}

fn push_regular(fields: &mut Vec<Header>, headers: &HeaderMap) {
    for (name, value) in headers {
        if CONNECTION_SPECIFIC.contains(&name.as_str()) || *name == http::header::HOST {
            continue;
        }
        fields.push(Header::new(name.as_str().as_bytes(), value.as_bytes()));
    }
}

/// The field section for a request head.
///
/// # Errors
/// [`Error::MissingAuthority`] when neither the URI nor a `Host` header names the authority.
pub fn request_fields<B>(request: &Request<B>) -> Result<Vec<Header>, Error> {
    let uri = request.uri();
    let authority = uri
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| request.headers().get(http::header::HOST).and_then(|host| host.to_str().ok()).map(str::to_owned))
        .ok_or(Error::MissingAuthority)?;
    let mut fields = vec![Header::new(b":method", request.method().as_str().as_bytes())];
    let protocol = request.extensions().get::<Protocol>();
    if request.method() != Method::CONNECT || protocol.is_some() {
        let path = uri.path_and_query().map_or("/", |path| path.as_str());
        fields.push(Header::new(b":scheme", uri.scheme_str().unwrap_or("https").as_bytes()));
        fields.push(Header::new(b":path", path.as_bytes()));
    }
    fields.push(Header::new(b":authority", authority.as_bytes()));
    if let Some(Protocol(protocol)) = protocol {
        fields.push(Header::new(b":protocol", protocol.as_bytes()));
    }
    push_regular(&mut fields, request.headers());
    Ok(fields)
}

/// The field section for a response head.
pub fn response_fields(status: StatusCode, headers: &HeaderMap) -> Vec<Header> {
    let mut fields = Vec::with_capacity(headers.len() + 1);
    fields.push(Header::new(b":status", status.as_str().as_bytes()));
    push_regular(&mut fields, headers);
    fields
}

/// The field section for trailers.
pub fn trailer_fields(trailers: &HeaderMap) -> Vec<Header> {
    let mut fields = Vec::with_capacity(trailers.len());
    push_regular(&mut fields, trailers);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs.iter().map(|(name, value)| Header::new(name.as_bytes(), value.as_bytes())).collect()
    }

    #[test]
    fn parses_a_get() {
        let request = parse_request(&fields(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "example.com:4433"),
            (":path", "/a?b=c"),
            ("accept", "*/*"),
        ]))
        .unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "https://example.com:4433/a?b=c");
        assert_eq!(request.headers()["accept"], "*/*");
    }

    #[test]
    fn rejects_malformed_requests() {
        let cases: &[&[(&str, &str)]] = &[
            &[(":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), (":scheme", "https")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), (":path", "/x")],
            &[(":method", "GET"), ("accept", "x"), (":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), (":bogus", "1")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("Accept", "x")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("connection", "close")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("te", "gzip")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), (":protocol", "x")],
            &[(":method", "CONNECT"), (":scheme", "https"), (":authority", "a:1")],
            &[(":method", "G E T"), (":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), (":scheme", "https"), (":authority", "a:1"), (":path", "/"), ("host", "b:1")],
            &[(":method", "CONNECT"), (":authority", "a:1"), ("host", "b:1")],
        ];
        for case in cases {
            assert!(parse_request(&fields(case)).is_err(), "accepted {case:?}");
        }
    }

    #[test]
    fn requests_name_their_authority() {
        let no_authority = [(":method", "GET"), (":scheme", "https"), (":path", "/")];
        assert_eq!(
            parse_request(&fields(&no_authority)).unwrap_err(),
            malformed("http(s) request without :authority or Host")
        );
        let plain_http = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        assert!(parse_request(&fields(&plain_http)).is_err());
        let extended_with_host = [
            (":method", "CONNECT"),
            (":protocol", "connect-udp"),
            (":scheme", "https"),
            (":path", "/.well-known/masque/udp/a/53/"),
            ("host", "proxy:443"),
        ];
        assert_eq!(
            parse_request(&fields(&extended_with_host)).unwrap_err(),
            malformed("extended CONNECT without :authority"),
            "Host does not stand in for :authority in extended CONNECT"
        );
    }

    #[test]
    fn content_length_has_one_valid_value() {
        let request = |lengths: &[&'static str]| {
            let mut pairs = vec![(":method", "POST"), (":scheme", "https"), (":authority", "h"), (":path", "/")];
            pairs.extend(lengths.iter().map(|length| ("content-length", *length)));
            parse_request(&fields(&pairs))
        };
        let folded = request(&["5", "5", "5, 5"]).expect("identical values are one value");
        assert_eq!(folded.headers().get_all("content-length").iter().collect::<Vec<_>>(), ["5"]);
        assert_eq!(request(&["18446744073709551615"]).unwrap().headers()["content-length"], "18446744073709551615");
        for bad in [&["5", "6"][..], &["5, 6"], &["-1"], &["+5"], &["0x10"], &[""], &["5,"], &["18446744073709551616"]]
        {
            assert!(request(bad).is_err(), "accepted Content-Length {bad:?}");
        }
        let response = |lengths: &[&'static str]| {
            let mut pairs = vec![(":status", "200")];
            pairs.extend(lengths.iter().map(|length| ("content-length", *length)));
            parse_response(&fields(&pairs))
        };
        assert_eq!(response(&["3", "4"]).unwrap_err(), malformed("several different Content-Length values"));
        assert!(response(&["abc"]).is_err());
        assert!(response(&["7", "7"]).is_ok());
    }

    #[test]
    fn host_must_agree_with_authority() {
        let request =
            parse_request(&fields(&[(":method", "GET"), (":scheme", "https"), (":path", "/"), ("host", "h:1")]))
                .unwrap();
        assert_eq!(request.uri(), "https://h:1/", "Host stands in for a missing :authority");
        let both = [(":method", "GET"), (":scheme", "https"), (":authority", "h:1"), (":path", "/"), ("host", "h:1")];
        assert!(parse_request(&fields(&both)).is_ok(), "the same value in both is fine");
        let differ =
            [(":method", "GET"), (":scheme", "https"), (":authority", "h:1"), (":path", "/"), ("host", "evil:1")];
        assert_eq!(parse_request(&fields(&differ)).unwrap_err(), malformed(":authority and Host differ"));
    }

    #[test]
    fn extended_connect_keeps_protocol() {
        let request = parse_request(&fields(&[
            (":method", "CONNECT"),
            (":protocol", "connect-udp"),
            (":scheme", "https"),
            (":authority", "proxy:443"),
            (":path", "/.well-known/masque/udp/a/53/"),
        ]))
        .unwrap();
        assert_eq!(request.extensions().get::<Protocol>(), Some(&Protocol("connect-udp".into())));
        let encoded = request_fields(&request).unwrap();
        assert!(encoded.iter().any(|field| field.name() == b":protocol" && field.value() == b"connect-udp"));
    }

    #[test]
    fn request_round_trips() {
        let request = Request::post("https://h:1/p?q").header("x-a", "1").body(()).unwrap();
        let parsed = parse_request(&request_fields(&request).unwrap()).unwrap();
        assert_eq!(parsed.uri(), request.uri());
        assert_eq!(parsed.method(), Method::POST);
        assert_eq!(parsed.headers()["x-a"], "1");
    }

    #[test]
    fn responses_need_a_valid_status() {
        assert!(parse_response(&fields(&[(":status", "204")])).is_ok());
        assert!(parse_response(&fields(&[("a", "b")])).is_err());
        assert!(parse_response(&fields(&[(":status", "2000")])).is_err());
        assert!(parse_response(&fields(&[(":status", "200"), (":path", "/")])).is_err());
        assert!(parse_trailers(&fields(&[(":status", "200")])).is_err());
    }
}
