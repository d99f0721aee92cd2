//! Request admission: each tunnel request is checked in a fixed order, each failure with its own
//! status and `Proxy-Status` (RFC 9209): authentication (407), extended CONNECT with `connect-udp`
//! and `Capsule-Protocol: ?1` (400), the template (404 when the path is not ours, 400 when its
//! values are bad), the port policy (403), the tunnel limits (429 per connection or per client
//! address, 503 overall), the name rules, checked before resolving, and name resolution (502
//! `dns_error`, 504 `dns_timeout`, 503 when the client's or the proxy's lookup slots are taken),
//! the address policy (403 `destination_ip_prohibited`), the socket (502
//! `destination_ip_unroutable`). Then 200 and a relay ([`super::relay`]).
//!
//! A named target the policy refuses, before or after resolving it, gets the very answer a name
//! that does not exist gets (502 `dns_error`, "cannot resolve the target"), so a client cannot
//! probe which internal names exist; the log says what happened.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::ip_tunnel;
use super::refusal::{Refusal, require_capsule_protocol};
use super::relay::{self, FarEnd, TunnelPermits};
use super::shared::{ConnectionShares, ProxyShared};
use crate::CONNECT_UDP;
use crate::body::ChannelBody;
use crate::policy::Denied;
use crate::resolve::{LookupError, MAX_LOOKUPS_IN_FLIGHT};
use crate::target::{Target, TargetHost};
use crate::template::MatchError;
use http::{Method, Request, Response, StatusCode};
use quiver_h3::{PeerAddr, Protocol, RecvBody};

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
    connection: ConnectionShares,
) -> Response<ChannelBody> {
    let peer = request.extensions().get::<PeerAddr>().map(|peer| peer.0);
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str()).to_owned();
    match try_open(proxy.clone(), request, connection).await {
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
    connection: ConnectionShares,
) -> Result<Response<ChannelBody>, Refusal> {
    let config = &proxy.config;
    // Always set by the HTTP/3 driver; a request without one is counted as one unknown source.
    let source = request.extensions().get::<PeerAddr>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| peer.0.ip());
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
        let permits = tunnel_permits(&proxy, &connection, source)?;
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
    let permits = tunnel_permits(&proxy, &connection, source)?;
    let address = resolve(&proxy, &target, &connection, source).await?;
    let socket = relay::connect_udp(address).await.map_err(|err| {
        let details = format!("cannot open a UDP socket to {address}: {err}");
        Refusal::new(StatusCode::BAD_GATEWAY, Some("destination_ip_unroutable"), details, |c| &c.refused_unreachable)
    })?;
    tracing::debug!(%target, %address, "UDP tunnel open");
    Ok(relay::start(proxy.clone(), request, FarEnd::Udp(socket), permits))
}

/// One permit of the connection's tunnel limit, one of its address's share and one of the proxy's.
/// The connection's comes first, so the per-address map only ever holds tunnels that fit their
/// connections' limits.
fn tunnel_permits(
    proxy: &ProxyShared,
    connection: &ConnectionShares,
    source: IpAddr,
) -> Result<TunnelPermits, Refusal> {
    let config = &proxy.config;
    let connection_permit = connection.tunnels.clone().try_acquire_owned().map_err(|_| {
        let details = format!("this connection already has {} tunnels open", config.max_tunnels_per_connection);
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, Some("connection_limit_reached"), details, |c| &c.refused_limit)
    })?;
    let source_share = proxy.source_tunnels.try_take(source).ok_or_else(|| {
        let details = format!("this client address already has {} tunnels open", config.max_tunnels_per_source);
        Refusal::new(StatusCode::TOO_MANY_REQUESTS, Some("connection_limit_reached"), details, |c| {
            &c.refused_source_limit
        })
    })?;
    let proxy_permit = proxy.tunnels.clone().try_acquire_owned().map_err(|_| {
        let details = format!("the proxy already has {} tunnels open", config.max_tunnels);
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, Some("connection_limit_reached"), details, |c| &c.refused_limit)
    })?;
    Ok((connection_permit, source_share, proxy_permit))
}

/// What a named target the policy refuses is told: exactly what a name that does not resolve is
/// told, so refusals do not reveal which names exist. `log` says what really happened.
fn unresolvable(log: String) -> Refusal {
    Refusal::new(StatusCode::BAD_GATEWAY, Some("dns_error"), "cannot resolve the target", |c| &c.refused_resolve)
        .with_log_details(log)
}

/// 503 `dns_error` when a lookup slot (the client's share, or the proxy's) is not free.
fn lookups_busy(log: String, counter: fn(&super::stats::Counters) -> &std::sync::atomic::AtomicU64) -> Refusal {
    let details = "too many name lookups in flight; try again later";
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, Some("dns_error"), details, counter).with_log_details(log)
}

/// The first address of `target` the policy allows. A name is checked against the name rules
/// before it is resolved (no lookup for a name no rule allows), and it is looked up within the
/// client's shares of the lookup slots (its connection's and its address's).
async fn resolve(
    proxy: &ProxyShared,
    target: &Target,
    connection: &ConnectionShares,
    source: IpAddr,
) -> Result<SocketAddr, Refusal> {
    let policy = &proxy.config.policy;
    let (name, addresses) = match &target.host {
        TargetHost::Ip(ip) => (None, vec![SocketAddr::new(*ip, target.port)]),
        TargetHost::Name(name) => {
            if !policy.allows_name(name, target.port) {
                return Err(unresolvable(format!("{target}: no rule allows this name")).counted(|c| &c.refused_policy));
            }
            let config = &proxy.config;
            let connection_share = connection.lookups.clone().try_acquire_owned().map_err(|_| {
                let log = format!(
                    "connection has its {} lookups in flight resolving {name}",
                    config.max_lookups_per_connection
                );
                lookups_busy(log, |c| &c.refused_dns_share)
            })?;
            let source_share = proxy.source_lookups.try_take(source).ok_or_else(|| {
                let log =
                    format!("{source} has its {} lookups in flight resolving {name}", config.max_lookups_per_source);
                lookups_busy(log, |c| &c.refused_dns_share)
            })?;
            let timeout = config.dns_timeout;
            // What went wrong stays in the log: resolver error texts describe the proxy's network.
            let lookup = proxy.resolver.resolve(name, target.port, timeout, (connection_share, source_share));
            let addresses = match lookup.await {
                Err(LookupError::Busy) => {
                    let log = format!("all {MAX_LOOKUPS_IN_FLIGHT} lookup slots taken resolving {name}");
                    return Err(lookups_busy(log, |c| &c.refused_dns_busy));
                }
                Err(LookupError::TimedOut) => {
                    let details = format!("resolving the target took longer than {timeout:?}");
                    return Err(Refusal::new(StatusCode::GATEWAY_TIMEOUT, Some("dns_timeout"), details, |c| {
                        &c.refused_resolve
                    }));
                }
                Err(LookupError::Failed(err)) => return Err(unresolvable(format!("cannot resolve {name}: {err}"))),
                Ok(addresses) if addresses.is_empty() => {
                    return Err(unresolvable(format!("{name} has no addresses")));
                }
                Ok(addresses) => addresses,
            };
            (Some(name.as_str()), addresses)
        }
    };
    // A tunnel request sees this host's addresses as they are now, not as they were a moment ago.
    proxy.this_host.refresh();
    let mut denied = Denied::NotAllowed;
    for address in &addresses {
        match policy.check_target(&proxy.this_host, name, address.ip(), address.port()) {
            Ok(()) => return Ok(*address),
            Err(reason) => denied = reason,
        }
    }
    // The resolved address is for the log only: it would tell the client about the proxy's network.
    let log = format!("{target} ({}) is denied: {denied}", addresses[0].ip());
    if name.is_some() {
        return Err(unresolvable(log).counted(|c| &c.refused_policy));
    }
    let refusal = Refusal::new(StatusCode::FORBIDDEN, Some("destination_ip_prohibited"), denied.to_string(), |c| {
        &c.refused_policy
    });
    Err(refusal.with_log_details(log))
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::ProxyConfig;
    use crate::resolve::Resolver;

    /// Holds lookups of `hung.test` until opened, like a resolver that never answers for one zone.
    static GATE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

    fn lookup(name: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        if name == "hung.test" {
            let mut open = GATE.0.lock().unwrap();
            while !*open {
                open = GATE.1.wait(open).unwrap();
            }
        }
        Ok(vec![SocketAddr::from(([9, 9, 9, 9], port))])
    }

    /// Opens the gate when dropped, also when the test fails: the runtime waits for blocking tasks
    /// when it shuts down, and a failed test must not hang on its own hung lookups.
    struct OpenGateOnDrop;

    impl Drop for OpenGateOnDrop {
        fn drop(&mut self) {
            *GATE.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
            GATE.1.notify_all();
        }
    }

    fn connection(proxy: &ProxyShared) -> ConnectionShares {
        ConnectionShares {
            tunnels: Arc::new(Semaphore::new(proxy.config.max_tunnels_per_connection)),
            lookups: Arc::new(Semaphore::new(proxy.config.max_lookups_per_connection)),
        }
    }

    /// One client whose lookups hang fills its shares of the lookup slots (per connection, then per
    /// address over a second connection) and is refused past them, while another client's lookups
    /// still run. Before the shares, the first client could hold every one of the proxy's slots.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_whose_lookups_hang_holds_only_its_share() {
        let config = ProxyConfig::builder().max_lookups_per_connection(2).max_lookups_per_source(3).build().unwrap();
        let proxy = Arc::new(ProxyShared::with_resolver(config, Resolver::with_lookup(8, Arc::new(lookup))));
        let hung: Target = "hung.test:53".parse().unwrap();
        let gate = OpenGateOnDrop;
        let (greedy, greedy_again) = (connection(&proxy), connection(&proxy));
        let greedy_source: IpAddr = "2001:db8::1".parse().unwrap();
        let mut waiting = Vec::new();
        for shares in [&greedy, &greedy, &greedy_again] {
            let (proxy, hung, shares) = (proxy.clone(), hung.clone(), shares.clone());
            waiting.push(tokio::spawn(async move { resolve(&proxy, &hung, &shares, greedy_source).await.is_ok() }));
        }
        quiver_test_support::wait_until("three lookups hold their shares", || {
            greedy.lookups.available_permits() == 0 && greedy_again.lookups.available_permits() == 1
        })
        .await;
        // Over its connection's share, then over its address's share (another /64 address of it).
        let refused = resolve(&proxy, &hung, &greedy, greedy_source).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        let refused = resolve(&proxy, &hung, &greedy_again, "2001:db8::2".parse().unwrap()).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        // Another client still resolves (the proxy has slots left: 8 in all).
        let (other_target, other_connection): (Target, _) = ("other.test:53".parse().unwrap(), connection(&proxy));
        let other = resolve(&proxy, &other_target, &other_connection, "2001:db8:1::1".parse().unwrap());
        let served =
            tokio::time::timeout(Duration::from_secs(60), other).await.expect("not stuck behind the hung ones");
        assert_eq!(served.unwrap_or_else(|refusal| panic!("refused: {}", refusal.details)).port(), 53);
        drop(gate);
        for task in waiting {
            assert!(task.await.unwrap(), "the hung lookups finish once the resolver answers");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
