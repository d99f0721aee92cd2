//! Which targets the proxy may reach: an explicit allow-list of hosts or networks and ports.
//!
//! Rules are written `HOST:PORTS`:
//! - `HOST` is `*` (any public address), a DNS name (`dns.example`), an IP address (`192.0.2.1`,
//!   `[2001:db8::1]`) or a network in CIDR form (`10.0.0.0/8`, `[fd00::/8]`);
//! - `PORTS` is `*` or a comma-separated list of ports and ranges (`53`, `53,443`, `8000-9000`).
//!
//! Loopback, private, link-local, multicast and other special-purpose addresses are denied unless an
//! IP or CIDR rule covers them explicitly: neither `*` nor a DNS name rule ever opens them, so a name
//! that resolves (or is re-pointed) to `127.0.0.1` cannot reach the proxy's own host. Every resolved
//! address is checked, not the name. CONNECT-IP packets are checked against the same rules
//! ([`TargetPolicy::check_packet`]).
//!
//! The proxy adds what only it knows: every address of its own host (all local interfaces, public
//! ones too) is closed like a special-purpose address, and its own listening sockets are closed
//! always, even to an IP or CIDR rule that covers them. A name is checked against the name rules
//! before it is resolved ([`TargetPolicy::allows_name`]): a name no rule could allow is never looked
//! up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::network::{IpNetwork, max_prefix};
use crate::target::{TargetHost, parse_port};
use crate::this_host::ThisHost;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Any address outside the special-purpose ranges.
    AnyPublic,
    /// An exact DNS name (lowercase); its addresses must be public.
    Name(String),
    /// A network; may open special-purpose ranges.
    Network(IpNetwork),
}

/// One `HOST:PORTS` allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    host: HostPattern,
    ports: Vec<RangeInclusive<u16>>,
    source: String,
}

/// Why a rule string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --allow rule {rule:?}: {reason} (expected HOST:PORTS, e.g. 127.0.0.1/32:1-65535, *:53,443 or dns.example:53)"
)]
pub struct RuleError {
    /// The rule as given.
    pub rule: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for AllowRule {
    type Err = RuleError;

    fn from_str(rule: &str) -> Result<Self, RuleError> {
        let error = |reason: &str| RuleError { rule: rule.to_owned(), reason: reason.to_owned() };
        let (host, ports) = rule.rsplit_once(':').ok_or_else(|| error("no ':PORTS'"))?;
        let ports = parse_ports(ports).map_err(|reason| error(&reason))?;
        let host = host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')).unwrap_or(host);
        let host = if host == "*" {
            HostPattern::AnyPublic
        } else if let Some((address, prefix)) = host.split_once('/') {
            let base: IpAddr = address.parse().map_err(|_| error("the network address is not an IP address"))?;
            let max = max_prefix(base);
            let prefix = prefix.parse::<u8>().ok().filter(|prefix| *prefix <= max);
            let prefix = prefix.ok_or_else(|| error(&format!("the prefix length must be 0 to {max}")))?;
            // `::ffff:a.b.c.d/N` is the IPv4 network a.b.c.d/(N - 96): addresses are compared canonically.
            let canonical = base.to_canonical();
            let (base, prefix) =
                if canonical != base && prefix >= 96 { (canonical, prefix - 96) } else { (base, prefix) };
            HostPattern::Network(IpNetwork::containing(base, prefix).ok_or_else(|| error("bad prefix length"))?)
        } else {
            match TargetHost::parse(host)
                .map_err(|_| error("the host is not *, a DNS name, an IP address or a CIDR"))?
            {
                TargetHost::Ip(ip) => HostPattern::Network(IpNetwork::host(ip.to_canonical())),
                TargetHost::Name(name) => HostPattern::Name(name),
            }
        };
        Ok(Self { host, ports, source: rule.to_owned() })
    }
}

fn parse_ports(text: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    if text == "*" {
        return Ok(vec![1..=u16::MAX]);
    }
    text.split(',')
        .map(|item| {
            let (low, high) = item.split_once('-').unwrap_or((item, item));
            let (low, high) = (parse_port(low), parse_port(high));
            match (low, high) {
                (Ok(low), Ok(high)) if low <= high => Ok(low..=high),
                _ => Err(format!("{item:?} is not a port or a range of ports from 1 to 65535")),
            }
        })
        .collect()
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why the policy refused a target address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// No rule allows this host and port.
    #[error("not in the allow-list")]
    NotAllowed,
    /// A loopback, private or other special-purpose address that no IP or CIDR rule covers.
    #[error("a special-purpose (loopback, private, link-local, ...) address that no IP/CIDR rule allows")]
    SpecialPurpose,
    /// An address of the proxy's own host (a local interface's) that no IP or CIDR rule covers.
    #[error("an address of the proxy's own host that no IP/CIDR rule allows")]
    ThisHost,
    /// The proxy's own listening socket: never a target, whatever the rules say.
    #[error("the proxy's own listening socket")]
    ProxyListener,
}

/// The proxy's target policy: an allow-list of [`AllowRule`]s; anything they do not allow is denied.
///
/// ```
/// use quiver_masque::{Denied, TargetPolicy};
///
/// let policy = TargetPolicy::parse(&["*:53", "127.0.0.1/32:5353"])?;
/// assert_eq!(policy.check(None, "9.9.9.9".parse()?, 53), Ok(()));
/// // `*` never opens loopback: that takes an IP or CIDR rule.
/// assert_eq!(policy.check(None, "127.0.0.1".parse()?, 53), Err(Denied::SpecialPurpose));
/// assert_eq!(policy.check(None, "127.0.0.1".parse()?, 5353), Ok(()));
/// assert_eq!(policy.check(None, "9.9.9.9".parse()?, 443), Err(Denied::NotAllowed));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPolicy {
    rules: Vec<AllowRule>,
}

impl Default for TargetPolicy {
    /// Any public address on any port (`*:*`); special-purpose ranges stay closed.
    fn default() -> Self {
        Self::new(vec![AllowRule { host: HostPattern::AnyPublic, ports: vec![1..=u16::MAX], source: "*:*".into() }])
    }
}

impl TargetPolicy {
    /// A policy that allows exactly what `rules` allow (nothing, if empty).
    pub fn new(rules: Vec<AllowRule>) -> Self {
        Self { rules }
    }

    /// Parses each rule.
    ///
    /// # Errors
    /// The first [`RuleError`].
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self, RuleError> {
        rules.iter().map(|rule| rule.as_ref().parse()).collect::<Result<_, _>>().map(Self::new)
    }

    /// The rules, for display.
    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    /// Whether any rule allows `port` at all: checked before resolving a name, so a denied port costs
    /// no DNS lookup.
    pub fn allows_port(&self, port: u16) -> bool {
        self.rules.iter().any(|rule| rule.ports.iter().any(|range| range.contains(&port)))
    }

    /// Whether any rule could allow the name `name` on `port`: `*`, a rule for this very name, or
    /// an IP or CIDR rule (the name may resolve into its network). Checked before the name is
    /// resolved, so a name no rule allows costs no DNS query, and its refusal cannot tell the
    /// client whether the name exists.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        self.rules.iter().filter(|rule| rule.ports.iter().any(|range| range.contains(&port))).any(|rule| {
            match &rule.host {
                HostPattern::AnyPublic | HostPattern::Network(_) => true,
                HostPattern::Name(allowed) => name.trim_end_matches('.').eq_ignore_ascii_case(allowed),
            }
        })
    }

    /// Whether the tunnel may go to `address`:`port`; `name` is the DNS name it was resolved from.
    /// The rules alone: the proxy also refuses its own host's addresses and listening sockets, which
    /// only it knows.
    ///
    /// # Errors
    /// [`Denied`] says why not.
    pub fn check(&self, name: Option<&str>, address: IpAddr, port: u16) -> Result<(), Denied> {
        self.check_address(name, address, Some(port), false, false)
    }

    /// [`check`](Self::check) for a proxy on `host`: its listening sockets are never a target, and
    /// its other addresses only through an IP or CIDR rule.
    pub(crate) fn check_target(
        &self,
        host: &ThisHost,
        name: Option<&str>,
        address: IpAddr,
        port: u16,
    ) -> Result<(), Denied> {
        if host.is_listener(address, port) {
            return Err(Denied::ProxyListener);
        }
        self.check_address(name, address, Some(port), false, host.is_local(address))
    }

    /// [`check_packet`](Self::check_packet) for a proxy on `host`, as [`check_target`](Self::check_target).
    pub(crate) fn check_packet_on(&self, host: &ThisHost, address: IpAddr, port: Option<u16>) -> Result<(), Denied> {
        if port.is_some_and(|port| host.is_listener(address, port)) {
            return Err(Denied::ProxyListener);
        }
        self.check_address(None, address, port, false, host.is_local(address))
    }

    /// Whether an IP packet (CONNECT-IP) may go to `address`. `port` is the destination port of a
    /// TCP, UDP or SCTP packet (0 when it cannot be read: only a rule for every port allows that);
    /// without one (ICMP, other protocols) any rule covering the address allows it, whatever its
    /// ports.
    ///
    /// # Errors
    /// [`Denied`] says why not.
    pub fn check_packet(&self, address: IpAddr, port: Option<u16>) -> Result<(), Denied> {
        self.check_address(None, address, port, false, false)
    }

    /// Whether an IP or CIDR rule names `address` (and `port`, if given) explicitly: `*` and name
    /// rules do not count. Used for addresses that are never reachable by default, such as the
    /// CONNECT-IP gateway's own.
    ///
    /// # Errors
    /// [`Denied::NotAllowed`] when no such rule exists.
    pub fn check_explicit(&self, address: IpAddr, port: Option<u16>) -> Result<(), Denied> {
        self.check_address(None, address, port, true, false)
    }

    /// `local`: the address is the proxy host's own, closed like a special-purpose one.
    fn check_address(
        &self,
        name: Option<&str>,
        address: IpAddr,
        port: Option<u16>,
        explicit_only: bool,
        local: bool,
    ) -> Result<(), Denied> {
        let address = address.to_canonical();
        let special = is_special_purpose(address) || local;
        let mut blocked_by_special = false;
        // Port 0 stands for "a port that cannot be read" (a later IP fragment): only rules for every
        // port cover it.
        let port_matches = |rule: &&AllowRule| match port {
            None => true,
            Some(0) => rule.ports.contains(&(1..=u16::MAX)),
            Some(port) => rule.ports.iter().any(|range| range.contains(&port)),
        };
        for rule in self.rules.iter().filter(port_matches) {
            let matches = match &rule.host {
                HostPattern::Network(network) => {
                    if network.contains(address) {
                        return Ok(());
                    }
                    false
                }
                _ if explicit_only => false,
                HostPattern::AnyPublic => true,
                HostPattern::Name(allowed) => name.is_some_and(|name| name.eq_ignore_ascii_case(allowed)),
            };
            if matches && !special {
                return Ok(());
            }
            blocked_by_special |= matches;
        }
        Err(match (blocked_by_special, is_special_purpose(address)) {
            (false, _) => Denied::NotAllowed,
            (true, true) => Denied::SpecialPurpose,
            (true, false) => Denied::ThisHost,
        })
    }
}

/// Addresses a proxy must not reach unless told to: this host, private networks, link-local,
/// multicast, broadcast, documentation and other special-purpose ranges (RFC 6890 and successors).
/// Addresses that embed an IPv4 address (NAT64's `64:ff9b::/96`, 6to4's `2002::/16`) are judged by
/// the IPv4 address they lead to, so `64:ff9b::127.0.0.1` is as closed as `127.0.0.1`.
pub fn is_special_purpose(address: IpAddr) -> bool {
    const V4: [(Ipv4Addr, u8); 14] = [
        (Ipv4Addr::new(0, 0, 0, 0), 8),
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(100, 64, 0, 0), 10),
        (Ipv4Addr::new(127, 0, 0, 0), 8),
        (Ipv4Addr::new(169, 254, 0, 0), 16),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 0, 0, 0), 24),
        (Ipv4Addr::new(192, 0, 2, 0), 24),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
        (Ipv4Addr::new(198, 51, 100, 0), 24),
        (Ipv4Addr::new(203, 0, 113, 0), 24),
        (Ipv4Addr::new(224, 0, 0, 0), 4),
        (Ipv4Addr::new(240, 0, 0, 0), 4),
    ];
    const V6: [(Ipv6Addr, u8); 9] = [
        // IPv4-compatible addresses (RFC 4291 §2.5.5.1, deprecated), including :: and ::1.
        (Ipv6Addr::UNSPECIFIED, 96),
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        // Site-local (RFC 3879 deprecated them; routers may still treat them as private).
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    ];
    let listed = |list: &[(IpAddr, u8)], address: IpAddr| {
        list.iter().any(|(base, prefix)| IpNetwork { address: *base, prefix: *prefix }.contains(address))
    };
    match address.to_canonical() {
        IpAddr::V4(v4) => listed(&V4.map(|(base, prefix)| (IpAddr::V4(base), prefix)), v4.into()),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => is_special_purpose(v4.into()),
            None => listed(&V6.map(|(base, prefix)| (IpAddr::V6(base), prefix)), v6.into()),
        },
    }
}

/// The IPv4 address a NAT64 (`64:ff9b::/96`, RFC 6052) or 6to4 (`2002::/16`, RFC 3056) address
/// leads to.
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(address);
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_policy_allows_public_addresses_only() {
        let policy = TargetPolicy::default();
        assert_eq!(policy.check(None, ip("8.8.8.8"), 53), Ok(()));
        assert_eq!(policy.check(None, ip("2606:4700::1111"), 443), Ok(()));
        for special in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.31.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            "fec0::1",
            "feff::1",
        ] {
            assert_eq!(policy.check(None, ip(special), 53), Err(Denied::SpecialPurpose), "{special}");
        }
    }

    #[test]
    fn addresses_embedding_public_ipv4_are_public() {
        let policy = TargetPolicy::default();
        for public in ["64:ff9b::8.8.8.8", "2002:808:808::1", "2003::1"] {
            assert_eq!(policy.check(None, ip(public), 53), Ok(()), "{public}");
        }
        assert_eq!(embedded_ipv4("64:ff9b::c000:201".parse().unwrap()), Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(embedded_ipv4("2002:c000:201:ffff::1".parse().unwrap()), Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(embedded_ipv4("64:ff9b:0:1::1".parse().unwrap()), None, "outside the /96");
    }

    #[test]
    fn packets_and_explicit_rules() {
        let policy = TargetPolicy::parse(&["*:53", "10.89.0.1/32:80", "198.51.100.0/24:*"]).unwrap();
        // ICMP has no port: any rule covering the address allows it.
        assert_eq!(policy.check_packet(ip("9.9.9.9"), None), Ok(()));
        assert_eq!(policy.check_packet(ip("9.9.9.9"), Some(443)), Err(Denied::NotAllowed));
        assert_eq!(policy.check_packet(ip("10.89.0.1"), None), Ok(()));
        assert_eq!(policy.check_packet(ip("10.89.0.1"), Some(22)), Err(Denied::NotAllowed));
        // Only IP/CIDR rules are explicit: `*` does not name 9.9.9.9.
        assert_eq!(policy.check_explicit(ip("9.9.9.9"), None), Err(Denied::NotAllowed));
        assert_eq!(policy.check_explicit(ip("10.89.0.1"), Some(80)), Ok(()));
        assert_eq!(policy.check_explicit(ip("198.51.100.7"), None), Ok(()));
        // An unreadable port (0) passes only a rule for every port.
        assert_eq!(policy.check_packet(ip("198.51.100.7"), Some(0)), Ok(()));
        assert_eq!(policy.check_packet(ip("10.89.0.1"), Some(0)), Err(Denied::NotAllowed));
    }

    #[test]
    fn cidr_rules_open_special_ranges_explicitly() {
        let policy = TargetPolicy::parse(&["127.0.0.1/32:1-65535", "[fd00::/8]:53", "10.0.0.0/8:53,5353"]).unwrap();
        assert_eq!(policy.check(None, ip("127.0.0.1"), 9), Ok(()));
        assert_eq!(policy.check(None, ip("::ffff:127.0.0.1"), 9), Ok(()), "mapped IPv4");
        assert_eq!(policy.check(None, ip("127.0.0.2"), 9), Err(Denied::NotAllowed));
        assert_eq!(policy.check(None, ip("fd12::1"), 53), Ok(()));
        assert_eq!(policy.check(None, ip("fd12::1"), 54), Err(Denied::NotAllowed));
        assert_eq!(policy.check(None, ip("10.9.9.9"), 5353), Ok(()));
        assert_eq!(policy.check(None, ip("8.8.8.8"), 53), Err(Denied::NotAllowed), "only what is listed");
        assert!(policy.allows_port(65535));
    }

    #[test]
    fn name_rules_match_the_name_and_never_open_special_addresses() {
        let policy = TargetPolicy::parse(&["dns.example:53"]).unwrap();
        assert_eq!(policy.check(Some("DNS.example"), ip("192.0.2.53").to_canonical(), 53), Err(Denied::SpecialPurpose));
        assert_eq!(policy.check(Some("dns.example"), ip("9.9.9.9"), 53), Ok(()));
        assert_eq!(policy.check(Some("other.example"), ip("9.9.9.9"), 53), Err(Denied::NotAllowed));
        assert_eq!(policy.check(None, ip("9.9.9.9"), 53), Err(Denied::NotAllowed));
        assert!(!policy.allows_port(54));
    }

    /// A public address of the proxy's own host is closed like loopback: `*` and name rules do not
    /// open it, an IP/CIDR rule does; the listening socket stays closed even to that.
    #[test]
    fn the_proxy_host_and_its_listener_are_closed() {
        let host = ThisHost::with_reader(|| vec!["9.9.9.9".parse().unwrap()]);
        host.add_listener("0.0.0.0:443".parse().unwrap());
        let open = TargetPolicy::default();
        assert_eq!(open.check(None, ip("9.9.9.9"), 53), Ok(()), "the rules alone know no host");
        assert_eq!(open.check_target(&host, None, ip("9.9.9.9"), 53), Err(Denied::ThisHost));
        assert_eq!(open.check_target(&host, None, ip("::ffff:9.9.9.9"), 53), Err(Denied::ThisHost));
        assert_eq!(open.check_target(&host, None, ip("127.0.0.1"), 53), Err(Denied::SpecialPurpose));
        assert_eq!(open.check_target(&host, None, ip("8.8.8.8"), 53), Ok(()));
        assert_eq!(open.check_packet_on(&host, ip("9.9.9.9"), None), Err(Denied::ThisHost));
        let explicit = TargetPolicy::parse(&["9.9.9.9/32:*", "127.0.0.0/8:*"]).unwrap();
        assert_eq!(explicit.check_target(&host, None, ip("9.9.9.9"), 53), Ok(()));
        for own in ["9.9.9.9", "127.0.0.1", "127.0.0.53"] {
            assert_eq!(explicit.check_target(&host, None, ip(own), 443), Err(Denied::ProxyListener), "{own}");
        }
        assert_eq!(explicit.check_packet_on(&host, ip("127.0.0.1"), Some(443)), Err(Denied::ProxyListener));
    }

    #[test]
    fn names_no_rule_allows_are_refused_before_resolving() {
        let named = TargetPolicy::parse(&["dns.example:53"]).unwrap();
        assert!(named.allows_name("dns.example", 53) && named.allows_name("DNS.example.", 53));
        assert!(!named.allows_name("internal.example", 53));
        assert!(!named.allows_name("dns.example", 54));
        // `*` and IP/CIDR rules may match whatever a name resolves to: those names are resolved.
        assert!(TargetPolicy::default().allows_name("anything.example", 1));
        assert!(TargetPolicy::parse(&["10.0.0.0/8:53"]).unwrap().allows_name("internal.example", 53));
    }

    #[test]
    fn rules_parse_or_say_why_not() {
        for good in [
            "*:*",
            "*:53",
            "1.2.3.4:1-10,20",
            "[::1]:53",
            "::1:53",
            "2001:db8::/32:443",
            "0.0.0.0/0:1-65535",
            "a.example:7",
        ] {
            assert!(good.parse::<AllowRule>().is_ok(), "refused {good:?}");
        }
        for bad in [
            "",
            "*",
            "1.2.3.4",
            "1.2.3.4:0",
            "1.2.3.4:10-1",
            "1.2.3.4:x",
            "1.2.3.0/33:53",
            "::/129:53",
            "a b:53",
            "1.2.3.4/x:5",
        ] {
            let err = bad.parse::<AllowRule>().expect_err(bad);
            assert!(err.to_string().contains("expected HOST:PORTS"), "{err}");
        }
        assert!(TargetPolicy::parse(&Vec::<String>::new()).unwrap().check(None, ip("8.8.8.8"), 53).is_err());
    }

    #[test]
    fn prefix_zero_and_mapped_networks() {
        let everything = TargetPolicy::parse(&["0.0.0.0/0:*"]).unwrap();
        assert_eq!(everything.check(None, ip("127.0.0.1"), 1), Ok(()));
        assert_eq!(everything.check(None, ip("::1"), 1), Err(Denied::NotAllowed), "v4 network, v6 address");
        let mapped = TargetPolicy::parse(&["[::ffff:127.0.0.0/104]:*"]).unwrap();
        assert_eq!(mapped.check(None, ip("127.1.2.3"), 1), Ok(()));
    }
}
