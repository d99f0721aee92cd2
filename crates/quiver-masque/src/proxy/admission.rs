//! Request admission: each tunnel request is checked in a fixed order, each failure with its own
//! status and `Proxy-Status` (RFC 9209): authentication (407), extended CONNECT with `connect-udp`
//! and `Capsule-Protocol: ?1` (400), the template (404 when the path is not ours, 400 when its
//! values are bad), the port policy (403), the tunnel limits (429 per connection, 503 overall), name
//! resolution (502 `dns_error`, 504 `dns_timeout`), the address policy (403
//! `destination_ip_prohibited`), the socket (502 `destination_ip_unroutable`). Then 200 and a relay
//! ([`super::relay`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode};
use quiver_h3::{PeerAddr, Protocol, RecvBody};
use tokio::sync::Semaphore;

use super::ip_tunnel;
use super::refusal::{Refusal, require_capsule_protocol};
use super::relay::{self, FarEnd, TunnelPermits};
use super::shared::ProxyShared;
use crate::CONNECT_UDP;
use crate::body::ChannelBody;
use crate::policy::Denied;
use crate::resolve::{LookupError, MAX_LOOKUPS_IN_FLIGHT};
use crate::target::{Target, TargetHost};
use crate::template::MatchError;

/// Compares without an early exit, so response timing does not reveal how much of a guess was right.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

fn bearer_token(request: &Request<RecvBody>) -> Option<&[u8]> {
    let value = request.headers().get(http::header::PROXY_AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|byte| *byte == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
}

/// Answers one tunnel request: a relay's 200, or the refusal's status (counted and logged).
pub(crate) async fn open_tunnel(
    proxy: Arc<ProxyShared>,
    request: Request<RecvBody>,
    connection_tunnels: Arc<Semaphore>,
) -> Response<ChannelBody> {
    let peer = request.extensions().get::<PeerAddr>().map(|peer| peer.0);
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str()).to_owned();
    match try_open(proxy.clone(), request, connection_tunnels).await {
        Ok(response) => response,
        Err(refusal) => {
            (refusal.counter)(&proxy.counters).fetch_add(1, Ordering::Relaxed);
            let logged = refusal.log_details.as_deref().unwrap_or(&refusal.details);
            tracing::debug!(?peer, %path, status = %refusal.status, details = %logged, "tunnel refused");
            refusal.into_response()
        }
    }
}

async fn try_open(
    proxy: Arc<ProxyShared>,
    request: Request<RecvBody>,
    connection_tunnels: Arc<Semaphore>,
) -> Result<Response<ChannelBody>, Refusal> {
    let config = &proxy.config;
    if let Some(expected) = &config.bearer_token
        && !bearer_token(&request).is_some_and(|token| constant_time_eq(token, expected.as_bytes()))
    {
        let details = "a valid Proxy-Authorization: Bearer token is required";
        return Err(Refusal::new(StatusCode::PROXY_AUTHENTICATION_REQUIRED, None, details, |c| {
            &c.refused_unauthorized
        }));
    }
    let protocol = request.extensions().get::<Protocol>().map(|protocol| protocol.0.as_str());
    if request.method() == Method::CONNECT && protocol == Some(crate::ip::CONNECT_IP) {
        ip_tunnel::check_ip_request(config, &request)?;
        require_capsule_protocol(&request)?;
        let permits = tunnel_permits(&proxy, connection_tunnels)?;
        let lease = ip_tunnel::lease_address(config)?;
        tracing::debug!(address = %lease.address, "IP tunnel open");
        return Ok(relay::start(proxy.clone(), request, FarEnd::Ip(lease), permits));
    }
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str());
    let target = match config.template.match_path(path) {
        Ok(target) => target,
        Err(MatchError::NoMatch) => {
            let details = format!("{path} is not a CONNECT-UDP path of this proxy ({})", config.template);
            return Err(Refusal::new(StatusCode::NOT_FOUND, None, details, |c| &c.refused_not_found));
        }
        Err(bad) => {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, Some("http_request_error"), bad.to_string(), |c| {
                &c.refused_malformed
            }));
        }
    };
    if request.method() != Method::CONNECT || protocol != Some(CONNECT_UDP) {
        let details = "CONNECT-UDP needs extended CONNECT with :protocol connect-udp";
        return Err(Refusal::new(StatusCode::BAD_REQUEST, Some("http_request_error"), details, |c| {
            &c.refused_malformed
        }));
    }
    require_capsule_protocol(&request)?;
    if !config.policy.allows_port(target.port) {
        let details = format!("port {} is not allowed", target.port);
        return Err(Refusal::new(StatusCode::FORBIDDEN, Some("http_request_denied"), details, |c| &c.refused_policy));
    }
    let permits = tunnel_permits(&proxy, connection_tunnels)?;
    let address = resolve(&proxy, &target).await?;
    let socket = relay::connect_udp(address).await.map_err(|err| {
        let details = format!("cannot open a UDP socket to {address}: {err}");
        Refusal::new(StatusCode::BAD_GATEWAY, Some("destination_ip_unroutable"), details, |c| &c.refused_unreachable)
    })?;
    tracing::debug!(%target, %address, "UDP tunnel open");
    Ok(relay::start(proxy.clone(), request, FarEnd::Udp(socket), permits))
}

/// One permit of the connection's tunnel limit and one of the proxy's.
fn tunnel_permits(proxy: &ProxyShared, connection_tunnels: Arc<Semaphore>) -> Result<TunnelPermits, Refusal> {
    let config = &proxy.config;
    let connection_permit = connection_tunnels.try_acquire_owned().map_err(|_| {
        let details = format!("this connection already has {} tunnels open", config.max_tunnels_per_connection);
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, Some("connection_limit_reached"), details, |c| &c.refused_limit)
    })?;
    let proxy_permit = proxy.tunnels.clone().try_acquire_owned().map_err(|_| {
        let details = format!("the proxy already has {} tunnels open", config.max_tunnels);
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, Some("connection_limit_reached"), details, |c| &c.refused_limit)
    })?;
    Ok((connection_permit, proxy_permit))
}

/// The first address of `target` the policy allows.
async fn resolve(proxy: &ProxyShared, target: &Target) -> Result<SocketAddr, Refusal> {
    let (name, addresses) = match &target.host {
        TargetHost::Ip(ip) => (None, vec![SocketAddr::new(*ip, target.port)]),
        TargetHost::Name(name) => {
            let timeout = proxy.config.dns_timeout;
            // What went wrong stays in the log: resolver error texts describe the proxy's network.
            let addresses = match proxy.resolver.resolve(name, target.port, timeout).await {
                Err(LookupError::Busy) => {
                    let details = "too many name lookups in flight; try again later";
                    let refusal = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, Some("dns_error"), details, |c| {
                        &c.refused_dns_busy
                    });
                    return Err(refusal
                        .with_log_details(format!("all {MAX_LOOKUPS_IN_FLIGHT} lookup slots taken resolving {name}")));
                }
                Err(LookupError::TimedOut) => {
                    let details = format!("resolving the target took longer than {timeout:?}");
                    return Err(Refusal::new(StatusCode::GATEWAY_TIMEOUT, Some("dns_timeout"), details, |c| {
                        &c.refused_resolve
                    }));
                }
                Err(LookupError::Failed(err)) => {
                    let refusal =
                        Refusal::new(StatusCode::BAD_GATEWAY, Some("dns_error"), "cannot resolve the target", |c| {
                            &c.refused_resolve
                        });
                    return Err(refusal.with_log_details(format!("cannot resolve {name}: {err}")));
                }
                Ok(addresses) => addresses,
            };
            if addresses.is_empty() {
                let details = "the target name has no addresses";
                return Err(Refusal::new(StatusCode::BAD_GATEWAY, Some("dns_error"), details, |c| &c.refused_resolve));
            }
            (Some(name.as_str()), addresses)
        }
    };
    let mut denied = Denied::NotAllowed;
    for address in &addresses {
        match proxy.config.policy.check(name, address.ip(), address.port()) {
            Ok(()) => return Ok(*address),
            Err(reason) => denied = reason,
        }
    }
    // The resolved address is for the log only: it would tell the client about the proxy's network.
    let refusal = Refusal::new(StatusCode::FORBIDDEN, Some("destination_ip_prohibited"), denied.to_string(), |c| {
        &c.refused_policy
    });
    Err(refusal.with_log_details(format!("{target} ({}) is denied: {denied}", addresses[0].ip())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
