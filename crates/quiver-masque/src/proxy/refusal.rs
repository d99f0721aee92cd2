//! A refused tunnel request: its status, `Proxy-Status` (RFC 9209) and the counter it ends in.

use std::sync::atomic::AtomicU64;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use quiver_h3::RecvBody;

use super::stats::Counters;
use crate::body::ChannelBody;
use crate::capsule_protocol_enabled;

/// The name this proxy gives itself in `Proxy-Status`.
const PROXY_STATUS_NAME: &str = "quiver";

/// A refused request: its status, RFC 9209 error type, and what to say about it.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    error: Option<&'static str>,
    /// Sent to the client in `Proxy-Status`.
    pub(crate) details: String,
    /// Logged only: what the client must not learn (resolved addresses, resolver errors).
    pub(crate) log_details: Option<String>,
    pub(crate) counter: fn(&Counters) -> &AtomicU64,
}

impl Refusal {
    pub(crate) fn new(
        status: StatusCode,
        error: Option<&'static str>,
        details: impl Into<String>,
        counter: fn(&Counters) -> &AtomicU64,
    ) -> Self {
        Self { status, error, details: details.into(), log_details: None, counter }
    }

    /// The same answer, counted in `counter` instead (a policy refusal that looks like a failed lookup).
    pub(crate) fn counted(mut self, counter: fn(&Counters) -> &AtomicU64) -> Self {
        self.counter = counter;
        self
    }

    pub(crate) fn with_log_details(mut self, log_details: String) -> Self {
        self.log_details = Some(log_details);
        self
    }

    pub(crate) fn into_response(self) -> Response<ChannelBody> {
        let mut response = Response::new(ChannelBody::empty());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        if self.status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            headers.insert(http::header::PROXY_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(error) = self.error
            && let Ok(value) = HeaderValue::try_from(proxy_status(error, &self.details))
        {
            headers.insert(HeaderName::from_static("proxy-status"), value);
        }
        response
    }
}

/// A `Proxy-Status` value (RFC 9209): `quiver; error=<type>; details="<text>"`, the details reduced to
/// what an sf-string may hold.
fn proxy_status(error: &str, details: &str) -> String {
    let mut value = format!("{PROXY_STATUS_NAME}; error={error}");
    if !details.is_empty() {
        value.push_str("; details=\"");
        for character in details.chars() {
            match character {
                '"' | '\\' => {
                    value.push('\\');
                    value.push(character);
                }
                ' '..='~' => value.push(character),
                _ => value.push('?'),
            }
        }
        value.push('"');
    }
    value
}

/// Refuses a tunnel request without `Capsule-Protocol: ?1` (RFC 9297 §3.4): 400.
pub(crate) fn require_capsule_protocol(request: &Request<RecvBody>) -> Result<(), Refusal> {
    let capsules =
        request.headers().get("capsule-protocol").is_some_and(|value| capsule_protocol_enabled(value.as_bytes()));
    if capsules {
        return Ok(());
    }
    let details = "a tunnel request needs Capsule-Protocol: ?1";
    Err(Refusal::new(StatusCode::BAD_REQUEST, Some("http_request_error"), details, |c| &c.refused_malformed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_status_values_are_structured_fields() {
        assert_eq!(proxy_status("dns_error", ""), "quiver; error=dns_error");
        assert_eq!(
            proxy_status("dns_error", "cannot resolve \"x\\y\": é"),
            "quiver; error=dns_error; details=\"cannot resolve \\\"x\\\\y\\\": ?\""
        );
    }

    #[test]
    fn refusals_carry_status_and_proxy_status() {
        let response = Refusal::new(StatusCode::BAD_GATEWAY, Some("dns_error"), "no such host", |c| &c.refused_resolve)
            .into_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()["proxy-status"], "quiver; error=dns_error; details=\"no such host\"");
        let auth = Refusal::new(StatusCode::PROXY_AUTHENTICATION_REQUIRED, None, "", |c| &c.refused_unauthorized)
            .into_response();
        assert_eq!(auth.headers()["proxy-authenticate"], "Bearer");
        assert!(auth.headers().get("proxy-status").is_none());
    }
}
