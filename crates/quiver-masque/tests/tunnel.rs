//! CONNECT-UDP end to end on loopback, Quiver on both sides: relaying, limits, refusals, idle timeout.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use quiver_h3::{DatagramFlow, Protocol};
use quiver_masque::{ProxyConfig, Target, TargetPolicy, TunnelError};
use quiver_test_support::tool::{Tool, unavailable};
use support::{echo_exchange, guarded, loopback_config, start_proxy, udp_echo};

fn target(addr: std::net::SocketAddr) -> Target {
    addr.to_string().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_datagrams_of_mixed_sizes_echo_byte_exact() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let run = async {
        let mut tunnel = proxy.client(true).open(&target(echo)).await.unwrap();
        assert!(tunnel.uses_quic_datagrams());
        let max = tunnel.max_payload();
        assert!(max > 1000, "max payload {max}");
        // The empty datagram is a datagram too.
        tunnel.send(b"").unwrap();
        assert_eq!(tunnel.recv().await.unwrap(), Bytes::new());
        let resent = echo_exchange(&mut tunnel, 10_000, 32, |index| 4 + (index as usize * 7919) % (max - 3)).await;
        // The largest size that fits, exactly.
        let largest = support::payload(u32::MAX, max);
        tunnel.send(&largest).unwrap();
        assert_eq!(tunnel.recv().await.unwrap(), largest);
        assert!(matches!(tunnel.send(&vec![0; max + 1]), Err(TunnelError::TooLarge { .. })));
        let stats = proxy.proxy.stats();
        assert!(stats.datagrams_to_target >= 10_002, "{stats:?}");
        // A resent datagram's first copy may still be on its way back: only then may echoes trail.
        if resent == 0 {
            assert_eq!(stats.datagrams_from_target, stats.datagrams_to_target, "{stats:?}");
        } else {
            assert!(stats.datagrams_from_target <= stats.datagrams_to_target, "{stats:?}");
        }
        eprintln!("10k echo: {resent} resent; proxy {stats:?}; endpoint {:?}", proxy.endpoint.stats());
    };
    guarded("the test's exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsules_carry_the_tunnel_without_quic_datagrams() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let run = async {
        let mut tunnel = proxy.client(false).open(&target(echo)).await.unwrap();
        assert!(!tunnel.uses_quic_datagrams());
        assert_eq!(tunnel.max_payload(), quiver_masque::MAX_UDP_PAYLOAD);
        // Sizes far beyond one QUIC packet: the stream carries whole UDP datagrams. Four in flight: the
        // capsule queue holds four of the largest payloads and refuses a fifth (QueueFull).
        let sizes = [4usize, 1200, 5000, 20_000, 60_000, 65_000];
        echo_exchange(&mut tunnel, 300, 4, |index| sizes[index as usize % sizes.len()]).await;
        // Over IPv4 the target socket refuses more than 65507 bytes: dropped and counted, not cut.
        tunnel.send(&vec![1u8; 65_527]).unwrap();
        tunnel.send(b"\0\0\0\x01x").unwrap();
        assert_eq!(&tunnel.recv().await.unwrap()[..], b"\0\0\0\x01x");
        assert_eq!(proxy.proxy.stats().dropped_send_failed, 1);
    };
    guarded("the test's exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_tunnels_share_one_connection() {
    const TUNNELS: usize = 100;
    let proxy = start_proxy(loopback_config());
    let client = proxy.client(true);
    let all_open = Arc::new(tokio::sync::Barrier::new(TUNNELS));
    let mut tasks = tokio::task::JoinSet::new();
    for tunnel_index in 0..TUNNELS {
        let (client, all_open) = (client.clone(), all_open.clone());
        tasks.spawn(async move {
            // One echo socket per tunnel: a single socket's default receive buffer holds only about a
            // hundred datagrams, and 800 arrive at once.
            let echo = udp_echo().await;
            let mut tunnel = client.open(&target(echo)).await.unwrap();
            all_open.wait().await;
            echo_exchange(&mut tunnel, 50, 8, |index| 4 + (index as usize * 13 + tunnel_index) % 1100).await;
            tunnel
        });
    }
    let run = async {
        let mut tunnels = Vec::new();
        while let Some(tunnel) = tasks.join_next().await {
            match tunnel {
                Ok(tunnel) => tunnels.push(tunnel),
                Err(err) => panic!("{err}: proxy {:?}; endpoint {:?}", proxy.proxy.stats(), proxy.endpoint.stats()),
            }
        }
        let stats = proxy.proxy.stats();
        eprintln!("100 tunnels: proxy {stats:?}; endpoint {:?}", proxy.endpoint.stats());
        assert_eq!((stats.tunnels_opened, stats.tunnels_active), (TUNNELS as u64, TUNNELS as u64), "{stats:?}");
        assert_eq!(proxy.endpoint.stats().connections_accepted, 1, "one connection for every tunnel");
        // Closing tunnels frees their sockets on the proxy: each close returns once the proxy is done.
        let mut closing = tokio::task::JoinSet::new();
        for tunnel in tunnels {
            closing.spawn(tunnel.close());
        }
        while closing.join_next().await.transpose().unwrap().is_some() {}
        assert_eq!(proxy.proxy.stats().tunnels_active, 0);
    };
    guarded("the test's exchange", run).await;
}

/// Asserts that opening a tunnel was refused with `expected`; returns the `Proxy-Status` (or "").
fn refused(outcome: Result<quiver_masque::UdpTunnel, TunnelError>, expected: StatusCode) -> String {
    match outcome {
        Err(TunnelError::Refused { status, proxy_status, .. }) if status == expected => {
            proxy_status.unwrap_or_default()
        }
        other => panic!("expected {expected}, got {other:?}"),
    }
}

/// Sends a hand-made request and returns the status and `Proxy-Status`.
async fn raw_request(
    proxy: &support::TestProxy,
    request: Request<http_body_util::Empty<Bytes>>,
) -> (StatusCode, String) {
    let response = proxy.h3_client().send_request(request).await.unwrap();
    let proxy_status = response.headers().get("proxy-status").map(|value| value.to_str().unwrap().to_owned());
    (response.status(), proxy_status.unwrap_or_default())
}

fn connect_udp(url: &str, path: &str) -> http::request::Builder {
    Request::builder().method(Method::CONNECT).uri(format!("{url}{path}")).extension(Protocol("connect-udp".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_status_codes_and_proxy_status() {
    let config = ProxyConfig::builder()
        .policy(TargetPolicy::parse(&["127.0.0.1/32:1000-2000", "*:53"]).unwrap())
        .max_tunnels_per_connection(1);
    let proxy = start_proxy(config);
    let echo = udp_echo().await;
    let url = proxy.url();
    let client = proxy.client(true);
    let run = async {
        // The echo port is outside 1000-2000: the port check refuses it before anything else.
        let status = refused(client.open(&target(echo)).await, StatusCode::FORBIDDEN);
        assert!(status.contains("error=http_request_denied"), "{status}");
        // An allowed port on a loopback address no CIDR rule covers ("*" never opens loopback).
        let status = refused(client.open(&"127.0.0.2:53".parse().unwrap()).await, StatusCode::FORBIDDEN);
        assert!(status.contains("error=destination_ip_prohibited"), "{status}");
        let bad_host = connect_udp(&url, "/.well-known/masque/udp/bad%20host/53/").header("capsule-protocol", "?1");
        let (status, proxy_status) = raw_request(&proxy, bad_host.body(Default::default()).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(proxy_status.contains("error=http_request_error"), "{proxy_status}");
        let not_ours = connect_udp(&url, "/elsewhere/127.0.0.1/1500/").header("capsule-protocol", "?1");
        assert_eq!(raw_request(&proxy, not_ours.body(Default::default()).unwrap()).await.0, StatusCode::NOT_FOUND);
        let no_capsules = connect_udp(&url, "/.well-known/masque/udp/127.0.0.1/1500/");
        assert_eq!(raw_request(&proxy, no_capsules.body(Default::default()).unwrap()).await.0, StatusCode::BAD_REQUEST);
        let get = Request::get(format!("{url}/.well-known/masque/udp/127.0.0.1/1500/"));
        assert_eq!(raw_request(&proxy, get.body(Default::default()).unwrap()).await.0, StatusCode::BAD_REQUEST);

        // One tunnel per connection: the second is refused with 429 while the first is open.
        let first = client.open(&"127.0.0.1:1500".parse().unwrap()).await.unwrap();
        refused(client.open(&"127.0.0.1:1501".parse().unwrap()).await, StatusCode::TOO_MANY_REQUESTS);
        drop(first);
        let stats = proxy.proxy.stats();
        assert_eq!((stats.refused_policy, stats.refused_malformed, stats.refused_not_found), (2, 3, 1), "{stats:?}");
        assert_eq!(stats.refused_limit, 1, "{stats:?}");
    };
    guarded("the test's exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_keeps_loopback_closed_and_names_resolve() {
    let proxy = start_proxy(ProxyConfig::builder());
    let run = async {
        refused(proxy.client(true).open(&"127.0.0.1:53".parse().unwrap()).await, StatusCode::FORBIDDEN);
        // A name that resolves to loopback is refused too: the addresses are checked, not the name;
        // the answer is a failed lookup's, so it does not tell that the name exists.
        let status = refused(proxy.client(true).open(&"localhost:53".parse().unwrap()).await, StatusCode::BAD_GATEWAY);
        assert!(status.contains("dns_error"), "{status}");
    };
    guarded("the test's exchange", run).await;

    let allowed = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let run = async {
        let mut tunnel =
            allowed.client(true).open(&format!("localhost:{}", echo.port()).parse().unwrap()).await.unwrap();
        tunnel.send(b"\0\0\0\0by name").unwrap();
        assert_eq!(&tunnel.recv().await.unwrap()[..], b"\0\0\0\0by name");
    };
    guarded("the test's exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_configured() {
    let proxy = start_proxy(loopback_config().bearer_token("s3cret"));
    let echo = udp_echo().await;
    let run = async {
        for client in [proxy.client(true), proxy.client(true).with_bearer_token("wrong")] {
            refused(client.open(&target(echo)).await, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        }
        let mut tunnel = proxy.client(true).with_bearer_token("s3cret").open(&target(echo)).await.unwrap();
        tunnel.send(b"\0\0\0\0ok").unwrap();
        assert_eq!(&tunnel.recv().await.unwrap()[..], b"\0\0\0\0ok");
        assert_eq!(proxy.proxy.stats().refused_unauthorized, 2);
    };
    guarded("the test's exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_close_and_free_their_socket() {
    let proxy = start_proxy(loopback_config().idle_timeout(Duration::from_millis(300)));
    // A target that only reports where datagrams come from: the proxy's socket for this tunnel.
    let target = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let run = async {
        let mut tunnel = proxy.client(true).open(&target_addr.to_string().parse().unwrap()).await.unwrap();
        tunnel.send(b"where from").unwrap();
        let mut buffer = [0u8; 64];
        let (_, proxy_socket) = target.recv_from(&mut buffer).await.unwrap();
        // Nothing more either way: the proxy finishes the stream after the idle timeout.
        assert!(matches!(tunnel.recv().await, Err(TunnelError::Closed)));
        let stats = proxy.proxy.stats();
        assert_eq!((stats.tunnels_idle_closed, stats.tunnels_active), (1, 0), "{stats:?}");
        // The socket is closed before the stream is finished: its port can be bound again.
        std::net::UdpSocket::bind(("0.0.0.0", proxy_socket.port())).expect("the tunnel's socket was freed");
    };
    guarded("the test's exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_contexts_and_oversized_payloads_are_dropped_and_counted() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let run = async {
        // A hand-made tunnel, to send context IDs the client library never sends.
        let path = format!("/.well-known/masque/udp/127.0.0.1/{}/", echo.port());
        let body = OpenBody;
        let request = connect_udp(&proxy.url(), &path).header("capsule-protocol", "?1").body(body).unwrap();
        let h3_client = proxy.h3_client();
        let response = h3_client.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["capsule-protocol"], "?1");
        let mut flow = DatagramFlow::take_from(response.extensions()).unwrap();
        flow.send(b"\x01context one").unwrap();
        flow.send(b"\x40\x00two-byte zero").unwrap();
        flow.send(b"").unwrap();
        // The target answers "big" with 4000 bytes (no QUIC datagram carries it), then "after".
        flow.send(b"\x00big").unwrap();
        assert_eq!(&flow.recv().await.unwrap()[..], b"\x00two-byte zero");
        assert_eq!(&flow.recv().await.unwrap()[..], b"\x00after");
        let stats = proxy.proxy.stats();
        assert_eq!(
            (stats.dropped_unknown_context, stats.dropped_malformed, stats.dropped_too_large),
            (1, 1, 1),
            "{stats:?}"
        );
        drop(response);
    };
    guarded("the test's exchange", run).await;
}

/// A request body that stays open and sends nothing: the tunnel's stream without capsules.
struct OpenBody;

impl http_body::Body for OpenBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_shutdown_ends_tunnels_with_the_reason() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let run = async {
        let client = proxy.client(true);
        let mut tunnel = client.open(&target(echo)).await.unwrap();
        tunnel.send(b"\0\0\0\0x").unwrap();
        assert_eq!(&tunnel.recv().await.unwrap()[..], b"\0\0\0\0x");
        proxy.endpoint.close();
        match tunnel.recv().await {
            Err(err @ TunnelError::ConnectionLost(_)) => {
                assert!(err.to_string().contains("connection to the proxy lost: closed by peer"), "{err}");
            }
            other => panic!("expected the connection's end, got {other:?}"),
        }
    };
    guarded("the test's exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_literal_targets_travel_percent_encoded() {
    let echo_socket = match tokio::net::UdpSocket::bind("[::1]:0").await {
        Ok(socket) => socket,
        Err(err) => return unavailable(Tool::Ipv6Loopback, &err.to_string()),
    };
    let echo = echo_socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 2048];
        while let Ok((length, peer)) = echo_socket.recv_from(&mut buffer).await {
            let _ = echo_socket.send_to(&buffer[..length], peer).await;
        }
    });
    let proxy = start_proxy(ProxyConfig::builder().policy(TargetPolicy::parse(&["[::1/128]:*"]).unwrap()));
    let run = async {
        // The client expands "[::1]:PORT" to /.well-known/masque/udp/%3A%3A1/PORT/; the proxy decodes it.
        let mut tunnel = proxy.client(true).open(&format!("[::1]:{}", echo.port()).parse().unwrap()).await.unwrap();
        tunnel.send(b"\0\0\0\0six").unwrap();
        assert_eq!(&tunnel.recv().await.unwrap()[..], b"\0\0\0\0six");
    };
    guarded("the test's exchange", run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_capsule_resets_only_its_tunnel() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let run = async {
        // Both tunnels on one connection (one h3 client): the reset must hit only the bad stream.
        let h3_client = proxy.h3_client();
        let path = format!("/.well-known/masque/udp/127.0.0.1/{}/", echo.port());
        let request = connect_udp(&proxy.url(), &path).header("capsule-protocol", "?1").body(OpenBody).unwrap();
        let healthy = h3_client.send_request(request).await.unwrap();
        assert_eq!(healthy.status(), StatusCode::OK);
        let mut flow = DatagramFlow::take_from(healthy.extensions()).unwrap();
        // A hand-made tunnel whose stream announces a 1 MiB capsule: more than any UDP payload.
        let mut header = Vec::new();
        quiver_h3::datagram::put_varint(&mut header, quiver_h3::datagram::CAPSULE_DATAGRAM);
        quiver_h3::datagram::put_varint(&mut header, 1 << 20);
        let body = http_body_util::Full::new(Bytes::from(header));
        let request = connect_udp(&proxy.url(), &path).header("capsule-protocol", "?1").body(body).unwrap();
        expect_reset(&h3_client, request).await;
        assert_eq!(proxy.endpoint.stats().connections_accepted, 1, "both tunnels share the connection");
        assert_eq!(proxy.proxy.stats().tunnels_active, 1, "only the healthy tunnel is left");
        // The other tunnel, on the same connection, never noticed.
        flow.send(b"\x00still here").unwrap();
        assert_eq!(&flow.recv().await.unwrap()[..], b"\x00still here");
        drop(healthy);
    };
    guarded("the test's exchange", run).await;
}

/// Sends `request` and asserts that the proxy reset its stream: before the response head or after
/// (RESET_STREAM discards what was not sent yet, so the reset may overtake the head).
async fn expect_reset(h3_client: &quiver_h3::Client, request: Request<http_body_util::Full<Bytes>>) {
    match h3_client.send_request(request).await {
        Err(quiver_h3::Error::StreamReset(_)) => {}
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::OK);
            let ended = http_body_util::BodyExt::collect(response.into_body()).await;
            assert!(matches!(ended, Err(quiver_h3::BodyError::Reset(_))), "{ended:?}");
        }
        Err(other) => panic!("expected a reset, got {other}"),
    }
}

/// Targets that only an explicit rule may open, however the request spells them: the default policy
/// (`*:*`) must refuse each address with 403 `destination_ip_prohibited` (a name with a failed
/// lookup's 502 `dns_error`), and say nothing about addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_targets_are_refused_however_they_are_written() {
    let proxy = start_proxy(ProxyConfig::builder());
    let run = async {
        for host in ["%3A%3Affff%3A127.0.0.1", "%31%32%37.0.0.1", "0.0.0.0", "%3A%3A1", "localhost"] {
            let path = format!("/.well-known/masque/udp/{host}/53/");
            let request = connect_udp(&proxy.url(), &path).header("capsule-protocol", "?1");
            let (status, proxy_status) = raw_request(&proxy, request.body(Default::default()).unwrap()).await;
            let expected = if host == "localhost" {
                (StatusCode::BAD_GATEWAY, "error=dns_error")
            } else {
                (StatusCode::FORBIDDEN, "error=destination_ip_prohibited")
            };
            assert_eq!(status, expected.0, "{host}: {proxy_status}");
            assert!(proxy_status.contains(expected.1), "{host}: {proxy_status}");
            // What the target resolved to is the proxy's business (kept in its log).
            assert!(!proxy_status.contains("127.0.0.1") && !proxy_status.contains("::1"), "{host}: {proxy_status}");
        }
        assert_eq!(proxy.proxy.stats().refused_policy, 5);
    };
    guarded("the test's exchange", run).await;
}

/// A stream that ends (FIN) inside a capsule is malformed (RFC 9297 §3.3): the proxy resets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_cut_short_by_fin_resets_the_tunnel() {
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let run = async {
        let path = format!("/.well-known/masque/udp/127.0.0.1/{}/", echo.port());
        let capsule = quiver_h3::datagram::encode_capsule(quiver_h3::datagram::CAPSULE_DATAGRAM, b"\x00cut short");
        let body = http_body_util::Full::new(capsule.slice(..capsule.len() - 3));
        let request = connect_udp(&proxy.url(), &path).header("capsule-protocol", "?1").body(body).unwrap();
        expect_reset(&proxy.h3_client(), request).await;
        assert_eq!(proxy.proxy.stats().datagrams_to_target, 0);
    };
    guarded("the test's exchange", run).await;
}

/// The proxy's own listening socket is never a target, even when the operator opens loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_socket_is_never_a_target() {
    let proxy = start_proxy(loopback_config());
    let own = proxy.endpoint.local_addr();
    let run = async {
        let status = refused(proxy.client(true).open(&target(own)).await, StatusCode::FORBIDDEN);
        assert!(status.contains("destination_ip_prohibited") && status.contains("listening socket"), "{status}");
        assert_eq!(proxy.proxy.stats().refused_policy, 1);
    };
    guarded("the test's exchange", run).await;
}

/// A name no rule allows gets what a name that does not exist gets (502 `dns_error`), without a
/// lookup; so does a name whose addresses the policy denies. Neither tells the client the name
/// exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_names_look_like_names_that_do_not_exist() {
    let proxy =
        start_proxy(ProxyConfig::builder().policy(TargetPolicy::parse(&["allowed.test:53", "*:5353"]).unwrap()));
    let run = async {
        for name in ["localhost:53", "localhost:5353"] {
            let status = refused(proxy.client(true).open(&name.parse().unwrap()).await, StatusCode::BAD_GATEWAY);
            assert_eq!(status, r#"quiver; error=dns_error; details="cannot resolve the target""#, "{name}");
        }
        let stats = proxy.proxy.stats();
        assert_eq!((stats.refused_policy, stats.refused_resolve), (2, 0), "{stats:?}");
    };
    guarded("the test's exchange", run).await;
}

/// Datagrams the proxy drops do not keep a tunnel open: it still closes when idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_datagrams_do_not_keep_a_tunnel_open() {
    let proxy = start_proxy(loopback_config().idle_timeout(Duration::from_millis(300)));
    let echo = udp_echo().await;
    let run = async {
        let path = format!("/.well-known/masque/udp/127.0.0.1/{}/", echo.port());
        let request = connect_udp(&proxy.url(), &path).header("capsule-protocol", "?1").body(OpenBody).unwrap();
        let h3_client = proxy.h3_client();
        let response = h3_client.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let flow = DatagramFlow::take_from(response.extensions()).unwrap();
        let mut body = response.into_body();
        // Junk (an unknown context ID) faster than the idle timeout, until the proxy ends the tunnel.
        let mut junk = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = junk.tick() => { let _ = flow.send(b"\x01junk"); }
                frame = http_body_util::BodyExt::frame(&mut body) => {
                    assert!(frame.is_none(), "the tunnel ends with FIN, not {frame:?}");
                    break;
                }
            }
        }
        let stats = proxy.proxy.stats();
        assert_eq!(stats.tunnels_idle_closed, 1, "{stats:?}");
        assert!(stats.dropped_unknown_context > 0, "{stats:?}");
    };
    guarded("the test's exchange", run).await;
}

/// Two connections from one address hold no more tunnels together than the address's share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_tunnels() {
    let proxy = start_proxy(loopback_config().max_tunnels_per_connection(2).max_tunnels_per_source(3));
    let echo = udp_echo().await;
    let run = async {
        let (first, second) = (proxy.client(true), proxy.client(true));
        let _held = [first.open(&target(echo)).await.unwrap(), first.open(&target(echo)).await.unwrap()];
        let _third = second.open(&target(echo)).await.unwrap();
        refused(second.open(&target(echo)).await, StatusCode::TOO_MANY_REQUESTS);
        let stats = proxy.proxy.stats();
        assert_eq!((stats.refused_source_limit, stats.refused_limit), (1, 0), "{stats:?}");
    };
    guarded("the test's exchange", run).await;
}
