//! CONNECT-IP (RFC 9484) end to end through a real TUN device. The test runs itself again inside a
//! fresh network namespace (`unshare --net`), so the TUN device, its addresses and every packet stay
//! there: the proxy's gateway is 10.89.0.1 on `qmasque0` (and fd00:89::1 on `qmasque6`) in that
//! namespace, and the kernel answers the client's ICMP echo, UDP and ICMPv6 echo packets. Needs root,
//! a TUN device and iproute2 (`quiver_test_support::netns`): without them it fails under `CI=true`
//! and is skipped elsewhere.

mod support;

use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};

use quiver_masque::ip::packet::{inspect, internet_checksum};
use quiver_masque::ip::{IpGateway, IpGatewayConfig, IpTunnel, TunDevice};
use quiver_masque::{ProxyConfig, TargetPolicy, TunnelError};
use quiver_test_support::netns::{ip, no_tun_device, run_inside};
use support::{GUARD, guarded, start_proxy};

const TEST_NAME: &str = "connect_ip_through_a_tun_device_in_a_network_namespace";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// The one port of the gateway the proxy's policy opens (besides ICMP, which has no port).
const GATEWAY_PORT: u16 = 5353;

#[test]
fn connect_ip_through_a_tun_device_in_a_network_namespace() {
    if !run_inside(TEST_NAME) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let tun = match TunDevice::create("qmasque0") {
            Ok(tun) => tun,
            Err(err) => return no_tun_device(&err),
        };
        assert!(ip(&["addr", "add", "10.89.0.1/24", "dev", "qmasque0"]) && ip(&["link", "set", "qmasque0", "up"]));
        let config =
            IpGatewayConfig { pool: "10.89.0.0/24".parse().unwrap(), routes: vec!["10.89.0.0/24".parse().unwrap()] };
        let gateway = IpGateway::start(tun, config).unwrap();
        assert_eq!(gateway.gateway_address(), GATEWAY);
        // The gateway's own address is this host: only an explicit rule opens it (here one UDP port,
        // and ICMP).
        let policy = TargetPolicy::parse(&["*:*", &format!("{GATEWAY}/32:{GATEWAY_PORT}")]).unwrap();
        let proxy = start_proxy(ProxyConfig::builder().ip_gateway(gateway.clone()).policy(policy));
        guarded("the IPv4 exchange", exchange(&proxy, &gateway)).await;

        // The same over IPv6, on a second device and proxy (one address family per gateway).
        let tun = TunDevice::create("qmasque6").unwrap();
        // nodad: the address is usable at once instead of after duplicate address detection.
        assert!(
            ip(&["-6", "addr", "add", "fd00:89::1/64", "dev", "qmasque6", "nodad"])
                && ip(&["link", "set", "qmasque6", "up"])
        );
        let config =
            IpGatewayConfig { pool: "fd00:89::/64".parse().unwrap(), routes: vec!["fd00:89::/64".parse().unwrap()] };
        let gateway = IpGateway::start(tun, config).unwrap();
        let policy = TargetPolicy::parse(&["*:*", "[fd00:89::1/128]:*"]).unwrap();
        let proxy = start_proxy(ProxyConfig::builder().ip_gateway(gateway).policy(policy));
        guarded("the IPv6 exchange", exchange_v6(&proxy)).await;
    });
}

async fn exchange_v6(proxy: &support::TestProxy) {
    let mut tunnel = proxy.client(true).open_ip().await.unwrap();
    let source: Ipv6Addr = "fd00:89::2".parse().unwrap();
    let gateway: Ipv6Addr = "fd00:89::1".parse().unwrap();
    assert_eq!(tunnel.assigned()[0].to_string(), "fd00:89::2/128");
    for sequence in 0..10u16 {
        tunnel.send(&icmpv6_echo_request(source, gateway, 0x6d51, sequence, b"six")).unwrap();
        let reply = next_packet(&mut tunnel, 58).await;
        let header = inspect(&reply).unwrap();
        assert_eq!((header.source, header.destination), (gateway.into(), source.into()));
        let icmp = &reply[40..];
        assert_eq!(icmp[0], 129, "echo reply");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), sequence);
        assert_eq!(&icmp[8..], b"six");
    }
}

/// An ICMPv6 echo request; its checksum covers the IPv6 pseudo-header (RFC 8200 §8.1).
fn icmpv6_echo_request(source: Ipv6Addr, destination: Ipv6Addr, id: u16, sequence: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![128, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&sequence.to_be_bytes());
    icmp.extend_from_slice(data);
    let length = u16::try_from(icmp.len()).unwrap();
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&destination.octets());
    pseudo.extend_from_slice(&u32::from(length).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let checksum = internet_checksum(&pseudo);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&length.to_be_bytes());
    packet.extend_from_slice(&[58, 64]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    packet.extend_from_slice(&icmp);
    packet
}

async fn exchange(proxy: &support::TestProxy, gateway: &IpGateway) {
    for datagrams in [true, false] {
        let client = proxy.client(datagrams);
        let mut tunnel = client.open_ip().await.unwrap();
        assert_eq!(tunnel.uses_quic_datagrams(), datagrams);
        let address = match tunnel.assigned() {
            [network] if network.prefix == 32 => network.address,
            other => panic!("assigned {other:?}"),
        };
        assert_eq!(address, Ipv4Addr::new(10, 89, 0, 2), "the first free address (the last tunnel's came back)");
        assert_eq!(tunnel.routes().len(), 1);
        assert!(tunnel.routes()[0].allows(GATEWAY.into(), 1));
        let std::net::IpAddr::V4(source) = address else { unreachable!() };

        // ICMP echo to the gateway: the kernel in the namespace answers.
        for sequence in 0..20u16 {
            tunnel.send(&icmp_echo_request(source, GATEWAY, 0x4d51, sequence, b"through the tunnel")).unwrap();
            let reply = next_packet(&mut tunnel, 1).await;
            let header = inspect(&reply).unwrap();
            assert_eq!((header.source, header.destination), (GATEWAY.into(), address));
            let icmp = &reply[20..];
            assert_eq!(icmp[0], 0, "echo reply");
            assert_eq!(u16::from_be_bytes([icmp[4], icmp[5]]), 0x4d51);
            assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), sequence);
            assert_eq!(&icmp[8..], b"through the tunnel");
        }

        // UDP to a socket on the gateway address, and its answer back through the TUN device. Sent
        // before it, in the same order on the tunnel: a forged source, a destination outside the
        // routes, a gateway port the policy does not open, and the pool's network and broadcast
        // addresses (they reach this host; `*:*` must not open them); each is dropped and counted,
        // so the socket's first datagram is the question.
        let server = UdpSocket::bind((GATEWAY, GATEWAY_PORT)).unwrap();
        server.set_read_timeout(Some(GUARD)).unwrap();
        let before = proxy.proxy.stats();
        tunnel.send(&icmp_echo_request(Ipv4Addr::new(10, 89, 0, 99), GATEWAY, 1, 1, b"forged")).unwrap();
        tunnel.send(&icmp_echo_request(source, Ipv4Addr::new(192, 0, 2, 1), 1, 1, b"elsewhere")).unwrap();
        tunnel.send(&udp_packet(source, 40_000, GATEWAY, GATEWAY_PORT + 1, b"denied")).unwrap();
        for reserved in [Ipv4Addr::new(10, 89, 0, 0), Ipv4Addr::new(10, 89, 0, 255)] {
            tunnel.send(&udp_packet(source, 40_000, reserved, GATEWAY_PORT, b"to the whole link")).unwrap();
        }
        tunnel.send(&udp_packet(source, 40_000, GATEWAY, GATEWAY_PORT, b"question")).unwrap();
        let server = tokio::task::spawn_blocking(move || {
            let mut buffer = [0u8; 64];
            let (length, peer) = server.recv_from(&mut buffer).unwrap();
            assert_eq!(&buffer[..length], b"question");
            assert_eq!(peer, (source, 40_000).into());
            server.send_to(b"answer", peer).unwrap();
        });
        let answer = next_packet(&mut tunnel, 17).await;
        server.await.unwrap();
        assert_eq!(&answer[28..], b"answer");
        let after = proxy.proxy.stats();
        assert_eq!(after.dropped_not_routed, before.dropped_not_routed + 2, "{after:?}");
        assert_eq!(after.dropped_policy, before.dropped_policy + 3, "{after:?}");

        // Closing waits for the proxy: then the address is back in the pool.
        tunnel.close().await;
        assert_eq!(proxy.proxy.stats().tunnels_active, 0);
    }
    let stats = gateway.stats();
    assert_eq!(stats.dropped_malformed, 0, "{stats:?}");
}

/// The next packet of `protocol` from the tunnel (the kernel may send others, such as IPv6 router
/// solicitations; this namespace has no IPv6 on the TUN device, but stay tolerant).
async fn next_packet(tunnel: &mut IpTunnel, protocol: u8) -> Vec<u8> {
    loop {
        let packet = match tunnel.recv().await {
            Ok(packet) => packet,
            Err(err @ TunnelError::Closed) => panic!("tunnel closed: {err}"),
            Err(err) => panic!("{err}"),
        };
        if inspect(&packet).is_ok_and(|header| header.protocol == protocol) {
            return packet.to_vec();
        }
    }
}

fn ipv4_header(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, payload_length: usize) -> Vec<u8> {
    let total = u16::try_from(20 + payload_length).unwrap();
    let mut header = vec![0x45, 0];
    header.extend_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    header.extend_from_slice(&source.octets());
    header.extend_from_slice(&destination.octets());
    let checksum = internet_checksum(&header);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    header
}

fn icmp_echo_request(source: Ipv4Addr, destination: Ipv4Addr, id: u16, sequence: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&sequence.to_be_bytes());
    icmp.extend_from_slice(data);
    let checksum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut packet = ipv4_header(source, destination, 1, icmp.len());
    packet.extend_from_slice(&icmp);
    packet
}

/// A UDP packet without a UDP checksum (0 means none over IPv4).
fn udp_packet(source: Ipv4Addr, source_port: u16, destination: Ipv4Addr, port: u16, data: &[u8]) -> Vec<u8> {
    let length = u16::try_from(8 + data.len()).unwrap();
    let mut packet = ipv4_header(source, destination, 17, usize::from(length));
    packet.extend_from_slice(&source_port.to_be_bytes());
    packet.extend_from_slice(&port.to_be_bytes());
    packet.extend_from_slice(&length.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(data);
    packet
}
