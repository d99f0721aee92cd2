//! Typed configuration: [`TransportConfig`] (QUIC knobs shared by both roles), [`ServerConfig`] and
//! [`ClientConfig`] (built with builders that validate), and their TOML forms.
//!
//! This module is the only place that turns our settings into a `quiche::Config`.

mod tls;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

pub use self::tls::TlsIdentity;
use self::tls::TrustAnchors;
use crate::error::ConfigError;
pub use crate::limits::RateLimit;
pub use crate::token::ServerSecret;

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

/// QUIC transport settings shared by servers and clients. Defaults are safe for the open Internet and
/// fast on a LAN.
///
/// In TOML, durations are integer milliseconds with an `_ms` suffix:
/// ```toml
/// [transport]
/// idle_timeout_ms = 30000
/// initial_max_streams_bidi = 100
/// congestion_control = "cubic"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Close the connection after this long without a packet from the peer (also bounds the handshake).
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
    /// Received and unsent DATAGRAM frames buffered per connection, each way.
    pub datagram_queue_len: usize,
    /// Largest UDP payload this side sends, in bytes (1350 fits every common path MTU).
    pub max_send_udp_payload_bytes: usize,
    /// Connection IDs the peer may hand us at once (`active_connection_id_limit`).
    pub active_connection_id_limit: u64,
    /// Inbound datagrams queued per connection before the router drops more.
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
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

impl TransportConfig {
    fn apply(&self, config: &mut quiche::Config) {
        config.set_max_idle_timeout(duration_millis(self.idle_timeout));
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

    fn open_keylog(&self) -> Result<Option<KeyLog>, ConfigError> {
        let Some(path) = &self.keylog_path else { return Ok(None) };
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ConfigError::Keylog { path: path.clone(), source })?;
        Ok(Some(KeyLog(Arc::new(Mutex::new(file)))))
    }

    /// Checks the qlog directory once, at build time, so a typo fails there rather than per connection.
    fn check_qlog_dir(&self) -> Result<(), ConfigError> {
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
}

/// Largest UDP payload we accept. Peers may send up to this after PMTU discovery; 1500-byte Ethernet
/// minus IP/UDP headers covers every common link.
pub(crate) const MAX_RECV_UDP_PAYLOAD_BYTES: usize = 1472;

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A shared key-log file; every connection appends its secrets to it.
#[derive(Clone, Debug)]
pub(crate) struct KeyLog(Arc<Mutex<File>>);

impl KeyLog {
    /// A writer for one connection; lines from different connections never interleave mid-line because
    /// quiche writes each secret line in one call.
    pub(crate) fn writer(&self) -> Box<dyn Write + Send + Sync> {
        Box::new(KeyLogWriter(self.0.clone()))
    }
}

struct KeyLogWriter(Arc<Mutex<File>>);

impl Write for KeyLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).flush()
    }
}

fn validate_alpn(alpn: &[Vec<u8>]) -> Result<(), ConfigError> {
    if alpn.is_empty() {
        return Err(ConfigError::MissingAlpn);
    }
    match alpn.iter().find(|id| id.is_empty() || id.len() > 255) {
        Some(bad) => Err(ConfigError::InvalidAlpn(String::from_utf8_lossy(bad).into_owned())),
        None => Ok(()),
    }
}

fn new_quiche_config(
    transport: &TransportConfig,
    alpn: &[Vec<u8>],
    install_tls: impl FnOnce(&mut boring::ssl::SslContextBuilder) -> Result<(), ConfigError>,
) -> Result<quiche::Config, ConfigError> {
    let mut ssl = boring::ssl::SslContextBuilder::new(boring::ssl::SslMethod::tls())
        .map_err(|err| ConfigError::Tls(err.to_string()))?;
    install_tls(&mut ssl)?;
    crate::handshake::install(&mut ssl);
    if let Some(groups) = &transport.key_exchange_groups {
        let list = groups.join(":");
        ssl.set_curves_list(&list)
            .map_err(|err| ConfigError::Tls(format!("unsupported key exchange groups {list:?}: {err}")))?;
    }
    let mut config = quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, ssl)?;
    let protocols: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
    config.set_application_protos(&protocols)?;
    transport.apply(&mut config);
    if transport.keylog_path.is_some() {
        config.log_keys();
    }
    Ok(config)
}

/// Default number of established connections waiting in [`Endpoint::accept`](crate::Endpoint::accept)'s
/// queue. Past it, new connections are refused (CONNECTION_REFUSED) and counted rather than buffered.
pub const DEFAULT_ACCEPT_BACKLOG: usize = 1024;

/// Default cap on connections one endpoint holds at once (handshaking or established).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// When a server makes clients prove their address with a Retry round trip (RFC 9000 §8.1) before it
/// spends a handshake on them. A client that cannot receive packets at its source address (a spoofed
/// flood) never gets past the Retry, which costs the server one small packet and no state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AddressValidation {
    /// Every new connection pays one extra round trip.
    Always,
    /// Never (tests, or behind a load balancer that validates addresses itself).
    Never,
    /// Only while more than this many handshakes are in flight: no cost normally, flood-proof under
    /// attack.
    UnderLoad {
        /// Handshakes in flight above which new clients get a Retry.
        handshakes_in_flight: usize,
    },
}

/// Default [`AddressValidation`]: Retry once 256 handshakes are in flight, far above what a busy server
/// sees from real clients at once and far below what costs it noticeable memory (~50 KB each).
pub const DEFAULT_ADDRESS_VALIDATION: AddressValidation = AddressValidation::UnderLoad { handshakes_in_flight: 256 };

/// Default cap on handshakes in flight; past it new clients are refused (CONNECTION_REFUSED) even
/// with a valid Retry token. 4096 handshakes hold about 200 MB.
pub const DEFAULT_MAX_HANDSHAKES_IN_FLIGHT: usize = 4096;

/// The ceiling for stateless resets this endpoint sends: each answers a packet for a connection it does
/// not know (a restarted server's old clients). Resets are always smaller than what triggered them, so
/// they cannot amplify; the rate keeps them from becoming a reflector.
pub const STATELESS_RESET_RATE: RateLimit = RateLimit { per_second: 1000.0, burst: 100.0 };

/// A validated server configuration. Build it with [`ServerConfig::builder`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) transport: TransportConfig,
    pub(crate) alpn: Vec<Vec<u8>>,
    pub(crate) identity: TlsIdentity,
    pub(crate) accept_backlog: usize,
    pub(crate) max_connections: usize,
    pub(crate) keylog: Option<KeyLog>,
    pub(crate) secret: ServerSecret,
    pub(crate) address_validation: AddressValidation,
    pub(crate) max_handshakes_in_flight: usize,
    pub(crate) max_connections_per_source: Option<usize>,
    pub(crate) handshake_rate_per_source: Option<RateLimit>,
    pub(crate) stateless_reset: bool,
}

impl ServerConfig {
    /// Starts a builder with safe defaults.
    pub fn builder() -> ServerConfigBuilder {
        ServerConfigBuilder::default()
    }

    /// The TLS identity the server presents.
    pub fn identity(&self) -> &TlsIdentity {
        &self.identity
    }

    /// The transport settings.
    pub fn transport(&self) -> &TransportConfig {
        &self.transport
    }

    /// Loads a server configuration from a TOML file.
    ///
    /// ```toml
    /// alpn = ["echo"]
    /// cert = "/etc/quiver/cert.pem"   # or: self_signed = ["localhost", "127.0.0.1"]
    /// key = "/etc/quiver/key.pem"
    /// accept_backlog = 1024
    /// max_connections = 100000
    ///
    /// [transport]
    /// idle_timeout_ms = 30000
    /// ```
    ///
    /// # Errors
    /// [`ConfigError::Toml`] with line and column for syntax errors and unknown keys; the errors of
    /// [`ServerConfigBuilder::build`] otherwise.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = read_file_string(path)?;
        let file: ServerConfigFile = parse_toml(path, &text)?;
        let mut builder = Self::builder().transport(file.transport).alpn(file.alpn);
        match (file.cert, file.key, file.self_signed) {
            (Some(cert), Some(key), None) => builder = builder.certificate_pem_files(cert, key),
            (None, None, Some(names)) => builder = builder.self_signed(names),
            _ => {
                return Err(ConfigError::Toml {
                    path: path.to_path_buf(),
                    message: "set either both `cert` and `key`, or `self_signed`".into(),
                });
            }
        }
        if let Some(backlog) = file.accept_backlog {
            builder = builder.accept_backlog(backlog);
        }
        if let Some(max) = file.max_connections {
            builder = builder.max_connections(max);
        }
        if let Some(secret_file) = &file.secret_file {
            let material = tls::read_file("server secret", secret_file)?;
            let Some(material) = material.get(..32).and_then(|bytes| <&[u8; 32]>::try_from(bytes).ok()) else {
                return Err(ConfigError::Toml {
                    path: path.to_path_buf(),
                    message: format!("secret_file {} holds fewer than 32 bytes", secret_file.display()),
                });
            };
            builder = builder.secret(ServerSecret::from_bytes(material));
        }
        if let Some(policy) = file.address_validation {
            builder = builder.address_validation(policy);
        }
        if let Some(max) = file.max_handshakes_in_flight {
            builder = builder.max_handshakes_in_flight(max);
        }
        if let Some(max) = file.max_connections_per_source {
            builder = builder.max_connections_per_source(max);
        }
        if let Some(limit) = file.handshake_rate_per_source {
            builder = builder.handshake_rate_per_source(limit);
        }
        if let Some(enabled) = file.stateless_reset {
            builder = builder.stateless_reset(enabled);
        }
        builder.build()
    }

    pub(crate) fn quiche_config(&self) -> Result<quiche::Config, ConfigError> {
        let mut config = new_quiche_config(&self.transport, &self.alpn, |ssl| self.identity.install(ssl))?;
        // Every router of the endpoint (and every server sharing the secret) encrypts session tickets
        // with the same key, so a client resumes wherever its next connection lands.
        config
            .set_ticket_key(&self.secret.ticket_key())
            .map_err(|err| ConfigError::Tls(format!("cannot set the session ticket key: {err}")))?;
        Ok(config)
    }
}

fn read_file_string(path: &Path) -> Result<String, ConfigError> {
    let bytes = tls::read_file("configuration", path)?;
    String::from_utf8(bytes).map_err(|_| ConfigError::Toml { path: path.to_path_buf(), message: "not UTF-8".into() })
}

fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|err| ConfigError::Toml { path: path.to_path_buf(), message: err.to_string() })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerConfigFile {
    alpn: Vec<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    self_signed: Option<Vec<String>>,
    accept_backlog: Option<usize>,
    max_connections: Option<usize>,
    /// A file whose first 32 bytes are the server secret.
    secret_file: Option<PathBuf>,
    address_validation: Option<AddressValidation>,
    max_handshakes_in_flight: Option<usize>,
    max_connections_per_source: Option<usize>,
    handshake_rate_per_source: Option<RateLimit>,
    stateless_reset: Option<bool>,
    #[serde(default)]
    transport: TransportConfig,
}

enum IdentitySource {
    Ready(TlsIdentity),
    PemFiles(PathBuf, PathBuf),
    SelfSigned(Vec<String>),
}

/// Builds a [`ServerConfig`]. Nothing is read or generated until [`build`](Self::build), which reports
/// every problem as a [`ConfigError`].
///
/// ```
/// use quiver::ServerConfig;
/// let config = ServerConfig::builder()
///     .alpn(["echo"])
///     .self_signed(["localhost", "127.0.0.1"])
///     .idle_timeout(std::time::Duration::from_secs(10))
///     .build()?;
/// # Ok::<(), quiver::ConfigError>(())
/// ```
pub struct ServerConfigBuilder {
    transport: TransportConfig,
    alpn: Vec<Vec<u8>>,
    identity: Option<IdentitySource>,
    accept_backlog: usize,
    max_connections: usize,
    secret: Option<ServerSecret>,
    address_validation: AddressValidation,
    max_handshakes_in_flight: usize,
    max_connections_per_source: Option<usize>,
    handshake_rate_per_source: Option<RateLimit>,
    stateless_reset: bool,
}

impl Default for ServerConfigBuilder {
    fn default() -> Self {
        Self {
            transport: TransportConfig::default(),
            alpn: Vec::new(),
            identity: None,
            accept_backlog: DEFAULT_ACCEPT_BACKLOG,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            secret: None,
            address_validation: DEFAULT_ADDRESS_VALIDATION,
            max_handshakes_in_flight: DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
            max_connections_per_source: None,
            handshake_rate_per_source: None,
            stateless_reset: true,
        }
    }
}

macro_rules! transport_setters {
    ($builder:ty) => {
        impl $builder {
            /// Replaces all transport settings.
            pub fn transport(mut self, transport: TransportConfig) -> Self {
                self.transport = transport;
                self
            }

            /// Changes transport settings in place.
            pub fn with_transport(mut self, change: impl FnOnce(&mut TransportConfig)) -> Self {
                change(&mut self.transport);
                self
            }

            /// Application protocols offered in ALPN, most preferred first (at least one is required).
            pub fn alpn<I, P>(mut self, protocols: I) -> Self
            where
                I: IntoIterator<Item = P>,
                P: AsRef<[u8]>,
            {
                self.alpn = protocols.into_iter().map(|protocol| protocol.as_ref().to_vec()).collect();
                self
            }

            /// See [`TransportConfig::idle_timeout`].
            pub fn idle_timeout(mut self, timeout: Duration) -> Self {
                self.transport.idle_timeout = timeout;
                self
            }

            /// Sets the connection window and every stream window to the given sizes.
            pub fn flow_control(mut self, connection_window: u64, stream_window: u64) -> Self {
                self.transport.initial_max_data = connection_window;
                self.transport.initial_max_stream_data_bidi_local = stream_window;
                self.transport.initial_max_stream_data_bidi_remote = stream_window;
                self.transport.initial_max_stream_data_uni = stream_window;
                self
            }

            /// Streams the peer may open at once, bidirectional and unidirectional.
            pub fn max_streams(mut self, bidi: u64, uni: u64) -> Self {
                self.transport.initial_max_streams_bidi = bidi;
                self.transport.initial_max_streams_uni = uni;
                self
            }

            /// See [`TransportConfig::congestion_control`].
            pub fn congestion_control(mut self, algorithm: CongestionControl) -> Self {
                self.transport.congestion_control = algorithm;
                self
            }

            /// Enables or disables QUIC DATAGRAM frames.
            pub fn datagrams(mut self, enabled: bool) -> Self {
                self.transport.datagrams = enabled;
                self
            }

            /// See [`TransportConfig::early_data`].
            pub fn early_data(mut self, enabled: bool) -> Self {
                self.transport.early_data = enabled;
                self
            }

            /// See [`TransportConfig::key_exchange_groups`].
            pub fn key_exchange_groups<I, S>(mut self, groups: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                self.transport.key_exchange_groups = Some(groups.into_iter().map(Into::into).collect());
                self
            }

            /// Appends TLS secrets to this file in NSS key-log format (for Wireshark).
            pub fn keylog_path(mut self, path: impl Into<PathBuf>) -> Self {
                self.transport.keylog_path = Some(path.into());
                self
            }

            /// See [`TransportConfig::qlog_dir`].
            pub fn qlog_dir(mut self, dir: impl Into<PathBuf>) -> Self {
                self.transport.qlog_dir = Some(dir.into());
                self
            }
        }
    };
}

transport_setters!(ServerConfigBuilder);
transport_setters!(ClientConfigBuilder);

impl ServerConfigBuilder {
    /// Uses an already loaded identity.
    pub fn identity(mut self, identity: TlsIdentity) -> Self {
        self.identity = Some(IdentitySource::Ready(identity));
        self
    }

    /// Loads the certificate chain and key from PEM files at build time.
    pub fn certificate_pem_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some(IdentitySource::PemFiles(cert.into(), key.into()));
        self
    }

    /// Generates a self-signed certificate for these names at build time (development only).
    pub fn self_signed<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.identity = Some(IdentitySource::SelfSigned(names.into_iter().map(Into::into).collect()));
        self
    }

    /// Established connections waiting for [`Endpoint::accept`](crate::Endpoint::accept); more are refused.
    pub fn accept_backlog(mut self, backlog: usize) -> Self {
        self.accept_backlog = backlog.max(1);
        self
    }

    /// Connections (handshaking or established) this endpoint holds at once; Initials beyond are dropped.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// The secret Retry tokens and stateless-reset tokens derive from (see [`ServerSecret`]). Give
    /// every server behind one address the same secret, and keep it across restarts, so that any of
    /// them validates the others' Retry tokens and resets their stale connections. Without it, a
    /// random secret is made at build time.
    pub fn secret(mut self, secret: ServerSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// When clients must validate their address with a Retry (default
    /// [`DEFAULT_ADDRESS_VALIDATION`]).
    pub fn address_validation(mut self, policy: AddressValidation) -> Self {
        self.address_validation = policy;
        self
    }

    /// Handshakes that may be in flight at once; new clients past it are refused with
    /// CONNECTION_REFUSED (default [`DEFAULT_MAX_HANDSHAKES_IN_FLIGHT`]).
    pub fn max_handshakes_in_flight(mut self, max: usize) -> Self {
        self.max_handshakes_in_flight = max;
        self
    }

    /// Connections one source IP address may hold at once; past it its new connections are refused
    /// with CONNECTION_REFUSED. Unlimited by default (many clients can share one NAT address).
    pub fn max_connections_per_source(mut self, max: usize) -> Self {
        self.max_connections_per_source = Some(max);
        self
    }

    /// New handshakes per second one source IP address may start. Past it, a client without a Retry
    /// token gets a Retry (if address validation is not [`AddressValidation::Never`]) and one with a
    /// token is refused. Unlimited by default.
    pub fn handshake_rate_per_source(mut self, limit: RateLimit) -> Self {
        self.handshake_rate_per_source = Some(limit);
        self
    }

    /// Whether to answer packets for unknown connections with a stateless reset (RFC 9000 §10.3), at
    /// most [`STATELESS_RESET_RATE`]. On by default.
    pub fn stateless_reset(mut self, enabled: bool) -> Self {
        self.stateless_reset = enabled;
        self
    }

    /// Validates the settings, loads or generates the identity and checks quiche accepts the result.
    ///
    /// # Errors
    /// Any [`ConfigError`]: missing ALPN or certificate, unreadable or invalid PEM, a key that does not
    /// match, an unopenable keylog file.
    pub fn build(self) -> Result<ServerConfig, ConfigError> {
        validate_alpn(&self.alpn)?;
        let identity = match self.identity.ok_or(ConfigError::MissingCertificate)? {
            IdentitySource::Ready(identity) => identity,
            IdentitySource::PemFiles(cert, key) => TlsIdentity::from_pem_files(cert, key)?,
            IdentitySource::SelfSigned(names) => TlsIdentity::self_signed(&names)?,
        };
        let keylog = self.transport.open_keylog()?;
        self.transport.check_qlog_dir()?;
        let config = ServerConfig {
            transport: self.transport,
            alpn: self.alpn,
            identity,
            accept_backlog: self.accept_backlog,
            max_connections: self.max_connections,
            keylog,
            secret: self.secret.unwrap_or_else(ServerSecret::random),
            address_validation: self.address_validation,
            max_handshakes_in_flight: self.max_handshakes_in_flight.max(1),
            max_connections_per_source: self.max_connections_per_source,
            handshake_rate_per_source: self.handshake_rate_per_source,
            stateless_reset: self.stateless_reset,
        };
        config.quiche_config()?;
        Ok(config)
    }
}

/// Default time a client waits for the handshake to complete.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated client configuration. Build it with [`ClientConfig::builder`].
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) transport: TransportConfig,
    pub(crate) alpn: Vec<Vec<u8>>,
    pub(crate) verify_peer: bool,
    pub(crate) trust: TrustAnchors,
    pub(crate) handshake_timeout: Duration,
    pub(crate) keylog: Option<KeyLog>,
    pub(crate) session_resumption: bool,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("transport", &self.transport)
            .field("alpn", &self.alpn)
            .field("verify_peer", &self.verify_peer)
            .field("extra_trust_anchors", &self.trust.extra.len())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("session_resumption", &self.session_resumption)
            .finish()
    }
}

impl ClientConfig {
    /// Starts a builder: certificate verification on, system roots trusted.
    pub fn builder() -> ClientConfigBuilder {
        ClientConfigBuilder::default()
    }

    /// The transport settings.
    pub fn transport(&self) -> &TransportConfig {
        &self.transport
    }

    /// Loads a client configuration from a TOML file.
    ///
    /// ```toml
    /// alpn = ["echo"]
    /// ca = ["/etc/quiver/ca.pem"]   # optional extra roots
    /// insecure = false              # true disables certificate verification
    /// handshake_timeout_ms = 10000
    /// ```
    ///
    /// # Errors
    /// As [`ServerConfig::from_toml_file`].
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = read_file_string(path)?;
        let file: ClientConfigFile = parse_toml(path, &text)?;
        let mut builder = Self::builder().transport(file.transport).alpn(file.alpn);
        for ca in file.ca {
            builder = builder.trust_pem_file(ca);
        }
        if file.insecure {
            builder = builder.insecure_skip_verification();
        }
        if let Some(ms) = file.handshake_timeout_ms {
            builder = builder.handshake_timeout(Duration::from_millis(ms));
        }
        if let Some(enabled) = file.session_resumption {
            builder = builder.session_resumption(enabled);
        }
        builder.build()
    }

    pub(crate) fn quiche_config(&self) -> Result<quiche::Config, ConfigError> {
        let mut config = new_quiche_config(&self.transport, &self.alpn, |ssl| self.trust.install(ssl))?;
        config.verify_peer(self.verify_peer);
        Ok(config)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfigFile {
    alpn: Vec<String>,
    #[serde(default)]
    ca: Vec<PathBuf>,
    #[serde(default)]
    insecure: bool,
    handshake_timeout_ms: Option<u64>,
    session_resumption: Option<bool>,
    #[serde(default)]
    transport: TransportConfig,
}

enum TrustSource {
    PemFile(PathBuf),
    Der(Vec<u8>),
}

/// Builds a [`ClientConfig`].
///
/// ```
/// use quiver::ClientConfig;
/// let config = ClientConfig::builder().alpn(["echo"]).build()?;
/// # Ok::<(), quiver::ConfigError>(())
/// ```
pub struct ClientConfigBuilder {
    transport: TransportConfig,
    alpn: Vec<Vec<u8>>,
    verify_peer: bool,
    use_system_roots: bool,
    trust: Vec<TrustSource>,
    handshake_timeout: Duration,
    session_resumption: bool,
}

impl Default for ClientConfigBuilder {
    fn default() -> Self {
        Self {
            transport: TransportConfig::default(),
            alpn: Vec::new(),
            verify_peer: true,
            use_system_roots: true,
            trust: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            session_resumption: true,
        }
    }
}

impl ClientConfigBuilder {
    /// Trusts the certificates in this PEM file (CA bundle) in addition to the system roots.
    pub fn trust_pem_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust.push(TrustSource::PemFile(path.into()));
        self
    }

    /// Trusts this DER certificate (for example a development server's self-signed certificate).
    pub fn trust_certificate_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.trust.push(TrustSource::Der(der.into()));
        self
    }

    /// Does not load the system's root certificates; only explicitly trusted ones count.
    pub fn without_system_roots(mut self) -> Self {
        self.use_system_roots = false;
        self
    }

    /// Disables server certificate verification. Anyone on the path can then impersonate the server:
    /// use only against development servers.
    pub fn insecure_skip_verification(mut self) -> Self {
        self.verify_peer = false;
        self
    }

    /// How long [`Endpoint::connect`](crate::Endpoint::connect) waits for the handshake.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether the endpoint keeps servers' session tickets and resumes its next connection to the same
    /// server with one (on by default; 0-RTT also needs [`early_data`](Self::early_data)). Turn it off
    /// to make every handshake a full one, e.g. to measure a server's full-handshake cost.
    pub fn session_resumption(mut self, enabled: bool) -> Self {
        self.session_resumption = enabled;
        self
    }

    /// Validates the settings and loads trust anchors.
    ///
    /// # Errors
    /// Any [`ConfigError`]: missing ALPN, unreadable or invalid CA files, an unopenable keylog file.
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        validate_alpn(&self.alpn)?;
        let mut trust = TrustAnchors { extra: Vec::new(), use_system_roots: self.use_system_roots };
        for source in &self.trust {
            match source {
                TrustSource::PemFile(path) => trust.add_pem_file(path)?,
                TrustSource::Der(der) => trust.add_der(der)?,
            }
        }
        let keylog = self.transport.open_keylog()?;
        self.transport.check_qlog_dir()?;
        let config = ClientConfig {
            transport: self.transport,
            alpn: self.alpn,
            verify_peer: self.verify_peer,
            trust,
            handshake_timeout: self.handshake_timeout,
            keylog,
            session_resumption: self.session_resumption,
        };
        config.quiche_config()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_requires_alpn_and_certificate() {
        assert!(matches!(ServerConfig::builder().self_signed(["localhost"]).build(), Err(ConfigError::MissingAlpn)));
        assert!(matches!(ServerConfig::builder().alpn(["x"]).build(), Err(ConfigError::MissingCertificate)));
        let too_long = "x".repeat(256);
        assert!(matches!(
            ServerConfig::builder().alpn([too_long.as_str()]).self_signed(["localhost"]).build(),
            Err(ConfigError::InvalidAlpn(_))
        ));
    }

    #[test]
    fn client_verifies_by_default() {
        let config = ClientConfig::builder().alpn(["echo"]).build().unwrap();
        assert!(config.verify_peer);
        let insecure = ClientConfig::builder().alpn(["echo"]).insecure_skip_verification().build().unwrap();
        assert!(!insecure.verify_peer);
    }

    #[test]
    fn toml_server_config_loads_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("quiver-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "alpn = [\"echo\"]\nself_signed = [\"localhost\"]\n[transport]\nidle_timeout_ms = 1500\ncongestion_control = \"reno\"\n",
        )
        .unwrap();
        let config = ServerConfig::from_toml_file(&good).unwrap();
        assert_eq!(config.transport.idle_timeout, Duration::from_millis(1500));
        assert_eq!(config.transport.congestion_control, CongestionControl::Reno);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "alpn = [\"echo\"]\nself_signed = [\"localhost\"]\n[transport]\nidle_timeot_ms = 1\n")
            .unwrap();
        let err = ServerConfig::from_toml_file(&bad).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("bad.toml") && message.contains("idle_timeot_ms"), "{message}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn key_exchange_groups_are_validated_when_building() {
        let base = || ServerConfig::builder().alpn(["echo"]).self_signed(["localhost"]);
        assert!(base().key_exchange_groups(["X25519", "P-256"]).build().is_ok());
        let err = base().key_exchange_groups(["X25519", "no-such-group"]).build().unwrap_err();
        assert!(err.to_string().contains("no-such-group"), "{err}");
        let client = ClientConfig::builder().alpn(["echo"]).key_exchange_groups(["X25519MLKEM768"]).build();
        assert!(client.is_ok());
    }

    #[test]
    fn congestion_control_names_parse() {
        assert_eq!("CUBIC".parse::<CongestionControl>().unwrap(), CongestionControl::Cubic);
        assert!("vegas".parse::<CongestionControl>().is_err());
    }
}
