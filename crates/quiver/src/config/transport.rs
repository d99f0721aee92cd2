//! QUIC transport options both roles share ([`TransportConfig`], [`CongestionControl`]): their
//! defaults, their file form (the `[transport]` table), their checks, and how they are written onto a
//! `quiche::Config`.
//!
//! Owns nothing else: TLS and the quiche config itself are made in `quic.rs`, which calls
//! [`TransportConfig::apply`] here.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::invalid;
use super::toml_file::millis;
use crate::error::ConfigError;

/// Congestion control algorithms quiche offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// CUBIC (RFC 9438), the default: robust on most paths.
    #[default]
    Cubic,
    /// NewReno (RFC 9002).
    Reno,
    /// BBRv2 (quiche's gcongestion implementation).
    Bbr2,
}

impl std::str::FromStr for CongestionControl {
    type Err = ConfigError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Self::Cubic),
            "reno" => Ok(Self::Reno),
            "bbr2" | "bbr" => Ok(Self::Bbr2),
            _ => Err(ConfigError::UnknownCongestionControl(name.to_owned())),
        }
    }
}

/// Datagrams a connection's inbound queue holds before the router drops (and counts) more.
///
/// 256 full-size datagrams is ~350 KB: enough to absorb a burst of a full congestion window on a fast
/// path while the connection's task is busy, small enough that 10k idle connections cost nothing (the
/// queue only allocates what is in it).
pub const DEFAULT_CONNECTION_QUEUE_DATAGRAMS: usize = 256;

/// Largest UDP payload we accept. Peers may send up to this after PMTU discovery; 1500-byte Ethernet
/// minus IP/UDP headers covers every common link.
pub(crate) const MAX_RECV_UDP_PAYLOAD_BYTES: usize = 1472;

/// The smallest UDP payload QUIC allows a sender to use (RFC 9000 §14: every path must carry 1200).
const MIN_UDP_PAYLOAD_BYTES: usize = 1200;

/// The largest UDP payload that fits one IPv4/IPv6 datagram (65535 minus the IPv4 and UDP headers).
const MAX_UDP_PAYLOAD_BYTES: usize = 65_507;

/// QUIC transport settings shared by servers and clients. Defaults are safe for the open Internet and
/// fast on a LAN.
///
/// In TOML (the `[transport]` table of a server or client file), durations are integer milliseconds
/// with an `_ms` suffix:
/// ```toml
/// [transport]
/// idle_timeout_ms = 30000
/// initial_max_streams_bidi = 100
/// congestion_control = "cubic"
/// ```
/// The values are checked when the server or client configuration is built.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Close the connection after this long without a packet from the peer (also bounds the handshake).
    /// Must be > 0.
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Duration,
    /// Connection-level flow-control window offered to the peer at the start, in bytes.
    pub initial_max_data: u64,
    /// Stream window for bidirectional streams this side opens, in bytes.
    pub initial_max_stream_data_bidi_local: u64,
    /// Stream window for bidirectional streams the peer opens, in bytes.
    pub initial_max_stream_data_bidi_remote: u64,
    /// Stream window for unidirectional streams the peer opens, in bytes.
    pub initial_max_stream_data_uni: u64,
    /// Upper bound for quiche's connection window auto-tuning, in bytes.
    pub max_connection_window: u64,
    /// Upper bound for quiche's per-stream window auto-tuning, in bytes.
    pub max_stream_window: u64,
    /// Bidirectional streams the peer may have open at once.
    pub initial_max_streams_bidi: u64,
    /// Unidirectional streams the peer may have open at once.
    pub initial_max_streams_uni: u64,
    /// Congestion control algorithm.
    pub congestion_control: CongestionControl,
    /// Pace packets out according to the congestion controller.
    pub pacing: bool,
    /// Enable QUIC DATAGRAM frames (RFC 9221).
    pub datagrams: bool,
    /// Received and unsent DATAGRAM frames buffered per connection, each way (> 0 when `datagrams`).
    pub datagram_queue_len: usize,
    /// Largest UDP payload this side sends, in bytes (1350 fits every common path MTU; 1200 to 65507).
    pub max_send_udp_payload_bytes: usize,
    /// Connection IDs the peer may hand us at once (`active_connection_id_limit`, at least 2).
    pub active_connection_id_limit: u64,
    /// Inbound datagrams queued per connection before the router drops more (> 0).
    pub connection_queue_datagrams: usize,
    /// Append TLS secrets in NSS key-log format to this file (for Wireshark). Off by default.
    pub keylog_path: Option<PathBuf>,
    /// Write a qlog (JSON-SEQ) of every connection into this directory, one file per connection named
    /// `<trace ID>-<server|client>.sqlog`. Off by default; needs the crate's `qlog` feature (default).
    pub qlog_dir: Option<PathBuf>,
    /// 0-RTT (TLS early data): a server accepts it, a client attempts it when it resumes a session.
    /// Early data can be replayed by an attacker: applications must only act on early data that is
    /// safe to repeat (HTTP/3 marks such requests with `quiver_h3::EarlyData`). Off by default.
    pub early_data: bool,
    /// TLS key-exchange groups to offer (client) or accept (server), most preferred first, by their
    /// BoringSSL names (`X25519MLKEM768`, `X25519`, `P-256`, ...). `None` keeps BoringSSL's defaults,
    /// which include the post-quantum hybrid.
    pub key_exchange_groups: Option<Vec<String>>,
    /// TLS 1.3 cipher suites to offer (client) or accept (server), most preferred first, by their
    /// IANA names: `TLS_AES_128_GCM_SHA256`, `TLS_AES_256_GCM_SHA384`, `TLS_CHACHA20_POLY1305_SHA256`.
    /// Empty (the default) keeps BoringSSL's choice. An unknown name fails the build of the
    /// configuration.
    pub tls13_ciphers: Vec<String>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            initial_max_data: 16 * 1024 * 1024,
            initial_max_stream_data_bidi_local: 2 * 1024 * 1024,
            initial_max_stream_data_bidi_remote: 2 * 1024 * 1024,
            initial_max_stream_data_uni: 1024 * 1024,
            max_connection_window: 24 * 1024 * 1024,
            max_stream_window: 16 * 1024 * 1024,
            initial_max_streams_bidi: 100,
            initial_max_streams_uni: 100,
            congestion_control: CongestionControl::Cubic,
            pacing: true,
            datagrams: false,
            datagram_queue_len: 1024,
            max_send_udp_payload_bytes: 1350,
            active_connection_id_limit: 4,
            connection_queue_datagrams: DEFAULT_CONNECTION_QUEUE_DATAGRAMS,
            keylog_path: None,
            qlog_dir: None,
            early_data: false,
            key_exchange_groups: None,
            tls13_ciphers: Vec::new(),
        }
    }
}

impl TransportConfig {
    /// Checks every value that quiche would accept but that cannot work, and says which and why.
    /// Files (keylog, qlog directory) are checked separately, when the configuration is built.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.idle_timeout.is_zero() {
            return Err(invalid(
                "transport.idle_timeout_ms",
                "must be > 0: it also bounds the handshake, and 0 would let a silent peer hold a connection forever",
            ));
        }
        if !(MIN_UDP_PAYLOAD_BYTES..=MAX_UDP_PAYLOAD_BYTES).contains(&self.max_send_udp_payload_bytes) {
            return Err(invalid(
                "transport.max_send_udp_payload_bytes",
                format!(
                    "is {}; it must be {MIN_UDP_PAYLOAD_BYTES} to {MAX_UDP_PAYLOAD_BYTES} (QUIC needs 1200; 1350 fits common paths)",
                    self.max_send_udp_payload_bytes
                ),
            ));
        }
        if self.active_connection_id_limit < 2 {
            return Err(invalid(
                "transport.active_connection_id_limit",
                "must be at least 2 (RFC 9000 §18.2), or the peer cannot migrate or rotate IDs",
            ));
        }
        if self.connection_queue_datagrams == 0 {
            return Err(invalid("transport.connection_queue_datagrams", "must be > 0, or every packet is dropped"));
        }
        if self.datagrams && self.datagram_queue_len == 0 {
            return Err(invalid(
                "transport.datagram_queue_len",
                "must be > 0 when `datagrams` is on (or turn datagrams off)",
            ));
        }
        if self.key_exchange_groups.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                "transport.key_exchange_groups",
                "is empty: name at least one group, or leave it out to keep BoringSSL's defaults",
            ));
        }
        Ok(())
    }

    /// Checks the qlog directory once, at build time, so a typo fails there rather than per connection.
    pub(super) fn check_qlog_dir(&self) -> Result<(), ConfigError> {
        let Some(dir) = &self.qlog_dir else { return Ok(()) };
        if !cfg!(feature = "qlog") {
            return Err(ConfigError::Qlog {
                path: dir.clone(),
                reason: "quiver was built without its `qlog` feature".into(),
            });
        }
        match std::fs::metadata(dir) {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => Err(ConfigError::Qlog { path: dir.clone(), reason: "not a directory".into() }),
            Err(err) => Err(ConfigError::Qlog { path: dir.clone(), reason: err.to_string() }),
        }
    }

    /// Writes the transport parameters and algorithms onto a quiche configuration.
    pub(super) fn apply(&self, config: &mut quiche::Config) {
        config.set_max_idle_timeout(u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX));
        config.set_initial_max_data(self.initial_max_data);
        config.set_initial_max_stream_data_bidi_local(self.initial_max_stream_data_bidi_local);
        config.set_initial_max_stream_data_bidi_remote(self.initial_max_stream_data_bidi_remote);
        config.set_initial_max_stream_data_uni(self.initial_max_stream_data_uni);
        config.set_max_connection_window(self.max_connection_window);
        config.set_max_stream_window(self.max_stream_window);
        config.set_initial_max_streams_bidi(self.initial_max_streams_bidi);
        config.set_initial_max_streams_uni(self.initial_max_streams_uni);
        config.set_cc_algorithm(match self.congestion_control {
            CongestionControl::Cubic => quiche::CongestionControlAlgorithm::CUBIC,
            CongestionControl::Reno => quiche::CongestionControlAlgorithm::Reno,
            CongestionControl::Bbr2 => quiche::CongestionControlAlgorithm::Bbr2Gcongestion,
        });
        config.enable_pacing(self.pacing);
        if self.datagrams {
            config.enable_dgram(true, self.datagram_queue_len, self.datagram_queue_len);
        }
        config.set_max_send_udp_payload_size(self.max_send_udp_payload_bytes);
        config.set_max_recv_udp_payload_size(MAX_RECV_UDP_PAYLOAD_BYTES);
        config.set_active_connection_id_limit(self.active_connection_id_limit);
        if self.early_data {
            config.enable_early_data();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        TransportConfig::default().validate().unwrap();
    }

    #[test]
    fn values_that_cannot_work_are_named() {
        type Change = fn(&mut TransportConfig);
        let cases: [(Change, &str); 6] = [
            (|t| t.idle_timeout = Duration::ZERO, "transport.idle_timeout_ms must be > 0"),
            (|t| t.max_send_udp_payload_bytes = 1000, "transport.max_send_udp_payload_bytes is 1000"),
            (|t| t.active_connection_id_limit = 1, "transport.active_connection_id_limit must be at least 2"),
            (|t| t.connection_queue_datagrams = 0, "transport.connection_queue_datagrams must be > 0"),
            (
                |t| {
                    t.datagrams = true;
                    t.datagram_queue_len = 0;
                },
                "transport.datagram_queue_len must be > 0 when `datagrams` is on",
            ),
            (|t| t.key_exchange_groups = Some(Vec::new()), "transport.key_exchange_groups is empty"),
        ];
        for (change, expected) in cases {
            let mut transport = TransportConfig::default();
            change(&mut transport);
            let err = transport.validate().unwrap_err();
            assert!(matches!(err, ConfigError::InvalidOption { .. }), "{err:?}");
            assert!(err.to_string().contains(expected), "{err} should say {expected:?}");
        }
    }

    #[test]
    fn datagram_queue_length_only_matters_with_datagrams() {
        let transport = TransportConfig { datagram_queue_len: 0, ..TransportConfig::default() };
        transport.validate().unwrap();
    }

    #[test]
    fn congestion_control_names_parse() {
        assert_eq!("CUBIC".parse::<CongestionControl>().unwrap(), CongestionControl::Cubic);
        assert_eq!("bbr".parse::<CongestionControl>().unwrap(), CongestionControl::Bbr2);
        assert!("vegas".parse::<CongestionControl>().is_err());
    }
}
