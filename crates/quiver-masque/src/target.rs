//! Where a tunnel goes: a host (DNS name or IP literal) and a UDP port, validated once so the rest of
//! the crate never sees an unchecked host string.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Longest DNS name we accept (RFC 1035: 255 octets on the wire, 253 as text).
const MAX_NAME_BYTES: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_BYTES: usize = 63;

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, lowercased, without a trailing dot.
    Name(String),
}

impl TargetHost {
    /// Parses an IP literal (IPv6 with or without brackets) or a DNS name.
    ///
    /// # Errors
    /// [`TargetError::InvalidHost`] for anything else (empty, bad characters, over-long labels, IPv6
    /// zone identifiers).
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let unbracketed = text.strip_prefix('[').and_then(|rest| rest.strip_suffix(']'));
        if let Some(inner) = unbracketed {
            return inner
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| Self::Ip(IpAddr::V6(ip)))
                .map_err(|_| TargetError::InvalidHost(text.to_owned()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let name = text.strip_suffix('.').unwrap_or(text);
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_BYTES
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        // A name of digits and dots only would be an IPv4 literal if it were valid: refuse "1.2.3.999".
        let looks_numeric = name.bytes().all(|byte| byte.is_ascii_digit() || byte == b'.');
        if name.is_empty() || name.len() > MAX_NAME_BYTES || looks_numeric || !name.split('.').all(valid_label) {
            return Err(TargetError::InvalidHost(text.to_owned()));
        }
        Ok(Self::Name(name.to_ascii_lowercase()))
    }
}

impl fmt::Display for TargetHost {
    /// IPv6 literals in brackets, so `host:port` stays unambiguous.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A tunnel's destination: host and UDP port (never 0).
///
/// ```
/// use quiver_masque::{Target, TargetHost};
///
/// let target: Target = "[2001:db8::1]:443".parse()?;
/// assert_eq!(target.host, TargetHost::Ip("2001:db8::1".parse()?));
/// assert_eq!(target.to_string(), "[2001:db8::1]:443");
/// assert!("example.com".parse::<Target>().is_err(), "the port is required");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host.
    pub host: TargetHost,
    /// The UDP port, 1 to 65535.
    pub port: u16,
}

impl Target {
    /// A target from a host string (see [`TargetHost::parse`]) and a port.
    ///
    /// # Errors
    /// [`TargetError`] when the host is invalid or the port is 0.
    pub fn new(host: &str, port: u16) -> Result<Self, TargetError> {
        if port == 0 {
            return Err(TargetError::InvalidPort("0".into()));
        }
        Ok(Self { host: TargetHost::parse(host)?, port })
    }

    /// The host as it goes into the URI template before percent-encoding: IPv6 without brackets
    /// (RFC 9298 §3: `2001:db8::1`, which expansion turns into `2001%3Adb8%3A%3A1`).
    pub fn host_for_template(&self) -> String {
        match &self.host {
            TargetHost::Ip(ip) => ip.to_string(),
            TargetHost::Name(name) => name.clone(),
        }
    }
}

/// Parses a port the way templates and the command line carry it: decimal digits only, 1 to 65535.
///
/// # Errors
/// [`TargetError::InvalidPort`].
pub fn parse_port(text: &str) -> Result<u16, TargetError> {
    let invalid = || TargetError::InvalidPort(text.to_owned());
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(port) => Ok(port),
    }
}

impl FromStr for Target {
    type Err = TargetError;

    /// `HOST:PORT`, with IPv6 literals in brackets: `dns.example:53`, `192.0.2.1:53`, `[2001:db8::1]:53`.
    fn from_str(text: &str) -> Result<Self, TargetError> {
        let (host, port) = text.rsplit_once(':').ok_or_else(|| TargetError::MissingPort(text.to_owned()))?;
        if host.contains(':') && !host.starts_with('[') {
            return Err(TargetError::InvalidHost(format!("{host} (put IPv6 literals in brackets: [{host}]:{port})")));
        }
        let port = parse_port(port)?;
        Ok(Self { host: TargetHost::parse(host)?, port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A host or port that cannot be a tunnel target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Not a DNS name, IPv4 literal or IPv6 literal.
    #[error("invalid target host {0:?}: need a DNS name, an IPv4 address or an IPv6 address")]
    InvalidHost(String),
    /// Not a decimal port from 1 to 65535.
    #[error("invalid target port {0:?}: need a number from 1 to 65535")]
    InvalidPort(String),
    /// `HOST:PORT` without the port.
    #[error("invalid target {0:?}: need HOST:PORT")]
    MissingPort(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_as_ip_or_name() {
        assert_eq!(TargetHost::parse("192.0.2.1").unwrap(), TargetHost::Ip("192.0.2.1".parse().unwrap()));
        assert_eq!(TargetHost::parse("2001:db8::1").unwrap(), TargetHost::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(TargetHost::parse("[::1]").unwrap(), TargetHost::Ip("::1".parse().unwrap()));
        assert_eq!(TargetHost::parse("DNS.Example.").unwrap(), TargetHost::Name("dns.example".into()));
        assert_eq!(TargetHost::parse("_srv.a-b.c").unwrap(), TargetHost::Name("_srv.a-b.c".into()));
        for bad in ["", ".", "a..b", "-a.b", "a-.b", "a b", "1.2.3.999", "fe80::1%eth0", "[1.2.3.4]", "ä.example"] {
            assert!(TargetHost::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(TargetHost::parse(&"a".repeat(64)).is_err());
        assert!(TargetHost::parse(&["a"; 128].join(".")).is_err(), "over 253 bytes");
    }

    #[test]
    fn targets_parse_and_print() {
        let target: Target = "[2001:db8::1]:53".parse().unwrap();
        assert_eq!(target.port, 53);
        assert_eq!(target.to_string(), "[2001:db8::1]:53");
        assert_eq!(target.host_for_template(), "2001:db8::1");
        assert_eq!("localhost:8053".parse::<Target>().unwrap().to_string(), "localhost:8053");
        for bad in ["localhost", "localhost:0", "localhost:65536", "::1:53", "a:+5", "a:", ":53"] {
            assert!(bad.parse::<Target>().is_err(), "accepted {bad:?}");
        }
        assert!(Target::new("example.com", 0).is_err());
    }

    #[test]
    fn ports_are_strict_decimals() {
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port("053"), Ok(53));
        for bad in ["", "0", "65536", "-1", "+1", "1e3", " 53"] {
            assert!(parse_port(bad).is_err(), "accepted {bad:?}");
        }
    }
}
