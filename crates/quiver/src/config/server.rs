//! Server options: the TLS identity to present, address validation (Retry), the admission limits
//! (backlog, connections, handshakes, per-source caps and rates), the server secret and stateless
//! resets; [`ServerConfigBuilder`] holds them all, is also the TOML file form, and
//! [`ServerConfigBuilder::build`] checks them into a [`ServerConfig`].
//!
//! The admission limits are only *configured* here; `crate::limits` enforces them.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::invalid;
use super::quic::{KeyLog, new_quiche_config, open_keylog, validate_alpn};
use super::tls::{TlsIdentity, read_file};
use super::toml_file::{self, millis};
use super::transport::TransportConfig;
use crate::error::ConfigError;
use crate::limits::RateLimit;
use crate::ticket::TicketClock;
use crate::token::ServerSecret;

/// Default number of established connections waiting in [`Endpoint::accept`](crate::Endpoint::accept)'s
/// queue. Past it, new connections are refused (CONNECTION_REFUSED) and counted rather than buffered.
pub const DEFAULT_ACCEPT_BACKLOG: usize = 1024;

/// Default cap on connections one endpoint holds at once (handshaking or established).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// When a server makes clients prove their address with a Retry round trip (RFC 9000 §8.1) before it
/// spends a handshake on them. A client that cannot receive packets at its source address (a spoofed
/// flood) never gets past the Retry, which costs the server one small packet and no state.
///
/// In TOML: `address_validation = "always"`, `"never"`, or
/// `address_validation = { under_load = { handshakes_in_flight = 256 } }`. Parsed from text
/// (`"always"`, `"never"` or a number N for `UnderLoad`) with [`FromStr`], as command lines give it.
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

impl FromStr for AddressValidation {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            number => {
                number.parse().map(|handshakes_in_flight| Self::UnderLoad { handshakes_in_flight }).map_err(|_| {
                    invalid(
                        "address_validation",
                        format!("`{number}` is not `always`, `never` or a number of handshakes"),
                    )
                })
            }
        }
    }
}

/// Default [`AddressValidation`]: Retry once 256 handshakes are in flight, far above what a busy server
/// sees from real clients at once and far below what costs it noticeable memory (~50 KB each).
pub const DEFAULT_ADDRESS_VALIDATION: AddressValidation = AddressValidation::UnderLoad { handshakes_in_flight: 256 };

/// Default cap on handshakes in flight; past it new clients are refused (CONNECTION_REFUSED) even
/// with a valid Retry token. 4096 handshakes hold about 200 MB.
pub const DEFAULT_MAX_HANDSHAKES_IN_FLIGHT: usize = 4096;

/// By default one source (an IPv4 address, an IPv6 /64) may hold this fraction of
/// [`max_handshakes_in_flight`](ServerConfigBuilder::max_handshakes_in_flight), and at least one
/// handshake: it takes 16 hosts to fill every slot, while a NAT with many clients handshaking at the
/// same instant still fits (256 at once with the default 4096).
pub const DEFAULT_HANDSHAKE_SHARE_DIVISOR: usize = 16;

/// The ceiling for stateless resets this endpoint sends: each answers a packet for a connection it does
/// not know (a restarted server's old clients). Resets are always smaller than what triggered them, so
/// they cannot amplify; the rate keeps them from becoming a reflector.
pub const STATELESS_RESET_RATE: RateLimit = RateLimit { per_second: 1000.0, burst: 100.0 };

/// Bytes of a server secret file that are used (the HMAC-SHA256 key [`ServerSecret`] derives from).
const SERVER_SECRET_BYTES: usize = 32;

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
    /// Resolved: the configured value or the default share of `max_handshakes_in_flight`.
    pub(crate) max_handshakes_per_source: usize,
    pub(crate) handshake_timeout: Duration,
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

    /// Loads a server configuration from a TOML file (the keys are [`ServerConfigBuilder`]'s; see the
    /// example there) and builds it.
    ///
    /// # Errors
    /// [`ConfigError::Toml`] with line and column for syntax errors and unknown keys; the errors of
    /// [`ServerConfigBuilder::build`] otherwise.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        ServerConfigBuilder::from_toml_file(path)?.build()
    }

    pub(crate) fn quiche_config(&self) -> Result<quiche::Config, ConfigError> {
        self.quiche_config_with(TicketClock::System)
    }

    /// The quiche configuration, with session-ticket key periods from `clock`.
    pub(crate) fn quiche_config_with(&self, clock: TicketClock) -> Result<quiche::Config, ConfigError> {
        new_quiche_config(&self.transport, &self.alpn, |ssl| {
            self.identity.install(ssl)?;
            // Every router of the endpoint (and every server sharing the secret) derives the same
            // rotating ticket keys, so a client resumes wherever its next connection lands.
            crate::ticket::install(ssl, &self.secret, clock);
            Ok(())
        })
    }
}

/// Builds a [`ServerConfig`]. Setters only record; [`build`](Self::build) reads files, generates what
/// is missing and reports every problem as a [`ConfigError`].
///
/// The builder is also the TOML form: [`from_toml_file`](Self::from_toml_file) fills the same fields,
/// so a file can be loaded and then overridden by code (or command-line flags):
#[doc = concat!("```toml\n", include_str!("server.example.toml"), "```")]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfigBuilder {
    #[serde(deserialize_with = "toml_file::alpn")]
    alpn: Vec<Vec<u8>>,
    /// PEM certificate chain, with `key`; one of three identity sources (see `identity_source`).
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    self_signed: Option<Vec<String>>,
    #[serde(skip)]
    identity: Option<TlsIdentity>,
    accept_backlog: usize,
    max_connections: usize,
    secret_file: Option<PathBuf>,
    #[serde(skip)]
    secret: Option<ServerSecret>,
    address_validation: AddressValidation,
    max_handshakes_in_flight: usize,
    max_handshakes_per_source: Option<usize>,
    #[serde(rename = "handshake_timeout_ms", with = "millis")]
    handshake_timeout: Duration,
    max_connections_per_source: Option<usize>,
    handshake_rate_per_source: Option<RateLimit>,
    stateless_reset: bool,
    transport: TransportConfig,
}

impl Default for ServerConfigBuilder {
    fn default() -> Self {
        Self {
            alpn: Vec::new(),
            cert: None,
            key: None,
            self_signed: None,
            identity: None,
            accept_backlog: DEFAULT_ACCEPT_BACKLOG,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            secret_file: None,
            secret: None,
            address_validation: DEFAULT_ADDRESS_VALIDATION,
            max_handshakes_in_flight: DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
            max_handshakes_per_source: None,
            handshake_timeout: super::DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections_per_source: None,
            handshake_rate_per_source: None,
            stateless_reset: true,
            transport: TransportConfig::default(),
        }
    }
}

super::transport_setters!(ServerConfigBuilder);

crate::builder_setters!(ServerConfigBuilder {
    /// Established connections waiting for [`Endpoint::accept`](crate::Endpoint::accept); more are
    /// refused. At least 1.
    accept_backlog: usize,
    /// Connections (handshaking or established) this endpoint holds at once; Initials beyond are
    /// dropped. At least 1.
    max_connections: usize,
    /// When clients must validate their address with a Retry (default
    /// [`DEFAULT_ADDRESS_VALIDATION`]). An `UnderLoad` threshold must be below
    /// [`max_handshakes_in_flight`](Self::max_handshakes_in_flight).
    address_validation: AddressValidation,
    /// Handshakes that may be in flight at once; new clients past it are refused with
    /// CONNECTION_REFUSED (default [`DEFAULT_MAX_HANDSHAKES_IN_FLIGHT`]). At least 1.
    max_handshakes_in_flight: usize,
    /// Handshakes one source IP address (IPv6: one /64) may have in flight at once; past it its new
    /// clients get a Retry (if address validation is not [`AddressValidation::Never`] and they have
    /// no token) or are refused with CONNECTION_REFUSED. Defaults to
    /// `max_handshakes_in_flight / DEFAULT_HANDSHAKE_SHARE_DIVISOR` (at least 1), so that one host
    /// cannot take every handshake slot. At least 1.
    max_handshakes_per_source: usize => Some,
    /// How long a client has to complete its handshake (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT)). Past it the connection is
    /// dropped and its handshake slot freed, whatever the client keeps sending (each of its packets
    /// would otherwise restart quiche's idle timer). Counted in
    /// [`EndpointStats::handshake_timeouts`](crate::EndpointStats::handshake_timeouts). > 0.
    handshake_timeout: Duration,
    /// Connections one source IP address (IPv6: one /64, which one host usually holds) may hold at
    /// once; past it its new connections are refused with CONNECTION_REFUSED. Unlimited by default
    /// (many clients can share one NAT address). At least 1.
    max_connections_per_source: usize => Some,
    /// New handshakes per second one source IP address may start. Past it, a client without a Retry
    /// token gets a Retry (if address validation is not [`AddressValidation::Never`]) and one with a
    /// token is refused. Unlimited by default. Rate and burst must be positive.
    handshake_rate_per_source: RateLimit => Some,
    /// Whether to answer packets for unknown connections with a stateless reset (RFC 9000 §10.3), at
    /// most [`STATELESS_RESET_RATE`]. On by default.
    stateless_reset: bool,
});

impl ServerConfigBuilder {
    /// Reads a TOML file into a builder (keys as in the example above; all optional except that
    /// `build` needs `alpn` and an identity). Call setters afterwards to override what the file says.
    ///
    /// # Errors
    /// [`ConfigError::ReadFile`] or [`ConfigError::Toml`] (with line, column and key).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        toml_file::load(path)
    }

    /// Uses an already loaded identity (replaces any certificate files or self-signed names).
    pub fn identity(mut self, identity: TlsIdentity) -> Self {
        self.clear_identity();
        self.identity = Some(identity);
        self
    }

    /// Loads the certificate chain and key from PEM files at build time (replaces any other identity).
    pub fn certificate_pem_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.clear_identity();
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Generates a self-signed certificate for these names at build time (development only; replaces
    /// any other identity).
    pub fn self_signed<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.clear_identity();
        self.self_signed = Some(names.into_iter().map(Into::into).collect());
        self
    }

    fn clear_identity(&mut self) {
        self.identity = None;
        self.cert = None;
        self.key = None;
        self.self_signed = None;
    }

    /// The secret Retry tokens and stateless-reset tokens derive from (see [`ServerSecret`]). Give
    /// every server behind one address the same secret, and keep it across restarts, so that any of
    /// them validates the others' Retry tokens and resets their stale connections. Without it, a
    /// random secret is made at build time. Replaces a [`secret_file`](Self::secret_file).
    pub fn secret(mut self, secret: ServerSecret) -> Self {
        self.secret_file = None;
        self.secret = Some(secret);
        self
    }

    /// Reads the server secret from the first 32 bytes of this file at build time (create one with
    /// `head -c 32 /dev/urandom > FILE`). Replaces a [`secret`](Self::secret).
    pub fn secret_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.secret = None;
        self.secret_file = Some(path.into());
        self
    }

    /// Validates the settings, loads or generates the identity and checks quiche accepts the result.
    ///
    /// # Errors
    /// Any [`ConfigError`]: missing ALPN or certificate, `cert` without `key`, two identity sources,
    /// unreadable or invalid PEM, a key that does not match, a short secret file, an unopenable keylog
    /// file, a limit of 0, an `UnderLoad` threshold at or above `max_handshakes_in_flight`, a
    /// transport value that cannot work ([`ConfigError::InvalidOption`] names it).
    pub fn build(self) -> Result<ServerConfig, ConfigError> {
        validate_alpn(&self.alpn)?;
        self.validate_limits()?;
        self.transport.validate()?;
        self.transport.check_qlog_dir()?;
        let secret = match (self.secret, &self.secret_file) {
            (Some(secret), _) => secret,
            (None, Some(path)) => read_secret_file(path)?,
            (None, None) => ServerSecret::random(),
        };
        let identity = identity_from(self.identity, self.cert, self.key, self.self_signed)?;
        let keylog = open_keylog(self.transport.keylog_path.as_deref())?;
        let config = ServerConfig {
            transport: self.transport,
            alpn: self.alpn,
            identity,
            accept_backlog: self.accept_backlog,
            max_connections: self.max_connections,
            keylog,
            secret,
            address_validation: self.address_validation,
            max_handshakes_in_flight: self.max_handshakes_in_flight,
            max_handshakes_per_source: self
                .max_handshakes_per_source
                .unwrap_or((self.max_handshakes_in_flight / DEFAULT_HANDSHAKE_SHARE_DIVISOR).max(1)),
            handshake_timeout: self.handshake_timeout,
            max_connections_per_source: self.max_connections_per_source,
            handshake_rate_per_source: self.handshake_rate_per_source,
            stateless_reset: self.stateless_reset,
        };
        config.quiche_config()?;
        Ok(config)
    }

    /// The admission limits, alone and together.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("accept_backlog", self.accept_backlog),
            ("max_connections", self.max_connections),
            ("max_handshakes_in_flight", self.max_handshakes_in_flight),
            ("max_connections_per_source", self.max_connections_per_source.unwrap_or(1)),
            ("max_handshakes_per_source", self.max_handshakes_per_source.unwrap_or(1)),
        ];
        if let Some(&(option, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(option, "must be at least 1 (0 would refuse every connection)"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake_timeout_ms", "must be > 0, or every handshake is dropped at once"));
        }
        if let Some(limit) = self.handshake_rate_per_source {
            let positive = |value: f64| value.is_finite() && value > 0.0;
            if !positive(limit.per_second) || !positive(limit.burst) || limit.burst < 1.0 {
                return Err(invalid(
                    "handshake_rate_per_source",
                    format!(
                        "needs a finite per_second > 0 and burst >= 1 (got per_second {}, burst {}), or no source could ever start a handshake",
                        limit.per_second, limit.burst
                    ),
                ));
            }
        }
        if let AddressValidation::UnderLoad { handshakes_in_flight } = self.address_validation
            && handshakes_in_flight >= self.max_handshakes_in_flight
        {
            return Err(invalid(
                "address_validation",
                format!(
                    "asks for a Retry above {handshakes_in_flight} handshakes in flight, but max_handshakes_in_flight ({}) refuses clients before that: lower the threshold or raise the maximum",
                    self.max_handshakes_in_flight
                ),
            ));
        }
        Ok(())
    }
}

/// The one identity among an in-memory one, PEM files and self-signed names; exactly one must be set.
fn identity_from(
    ready: Option<TlsIdentity>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    self_signed: Option<Vec<String>>,
) -> Result<TlsIdentity, ConfigError> {
    match (ready, cert, key, self_signed) {
        (Some(identity), None, None, None) => Ok(identity),
        (None, Some(cert), Some(key), None) => TlsIdentity::from_pem_files(cert, key),
        (None, None, None, Some(names)) if names.is_empty() => {
            Err(invalid("self_signed", "names no host: give at least one name (e.g. \"localhost\")"))
        }
        (None, None, None, Some(names)) => TlsIdentity::self_signed(&names),
        (None, None, None, None) => Err(ConfigError::MissingCertificate),
        (None, Some(_), None, None) => Err(invalid("cert", "is set without `key`: give both")),
        (None, None, Some(_), None) => Err(invalid("key", "is set without `cert`: give both")),
        _ => Err(invalid("cert", "and `self_signed` are both set: use either `cert` and `key`, or `self_signed`")),
    }
}

/// A server secret from the first [`SERVER_SECRET_BYTES`] of a file.
fn read_secret_file(path: &Path) -> Result<ServerSecret, ConfigError> {
    let material = read_file("server secret", path)?;
    let Some(material) =
        material.get(..SERVER_SECRET_BYTES).and_then(|bytes| <&[u8; SERVER_SECRET_BYTES]>::try_from(bytes).ok())
    else {
        return Err(invalid(
            "secret_file",
            format!(
                "{} holds {} bytes, fewer than {SERVER_SECRET_BYTES} (create one with `head -c 32 /dev/urandom > FILE`)",
                path.display(),
                material.len()
            ),
        ));
    };
    Ok(ServerSecret::from_bytes(material))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::config::CongestionControl;

    fn base() -> ServerConfigBuilder {
        ServerConfig::builder().alpn(["echo"]).self_signed(["localhost"])
    }

    #[test]
    fn server_requires_alpn_and_certificate() {
        assert!(matches!(ServerConfig::builder().self_signed(["localhost"]).build(), Err(ConfigError::MissingAlpn)));
        assert!(matches!(ServerConfig::builder().alpn(["x"]).build(), Err(ConfigError::MissingCertificate)));
        let too_long = "x".repeat(256);
        assert!(matches!(base().alpn([too_long.as_str()]).build(), Err(ConfigError::InvalidAlpn(_))));
    }

    #[test]
    fn zero_limits_are_refused_by_name() {
        for (builder, option) in [
            (base().accept_backlog(0), "accept_backlog"),
            (base().max_connections(0), "max_connections"),
            (base().max_handshakes_in_flight(0), "max_handshakes_in_flight"),
            (base().max_connections_per_source(0), "max_connections_per_source"),
            (base().max_handshakes_per_source(0), "max_handshakes_per_source"),
        ] {
            let err = builder.build().unwrap_err();
            assert!(err.to_string().starts_with(&format!("{option} must be at least 1")), "{err}");
        }
        let err = base().handshake_rate_per_source(RateLimit { per_second: 0.0, burst: 5.0 }).build().unwrap_err();
        assert!(err.to_string().starts_with("handshake_rate_per_source needs"), "{err}");
        let err = base().handshake_timeout(Duration::ZERO).build().unwrap_err();
        assert!(err.to_string().starts_with("handshake_timeout_ms must be > 0"), "{err}");
    }

    #[test]
    fn handshakes_have_a_deadline_and_a_per_source_share_by_default() {
        let config = base().build().unwrap();
        assert_eq!(config.handshake_timeout, crate::DEFAULT_HANDSHAKE_TIMEOUT);
        let share = DEFAULT_MAX_HANDSHAKES_IN_FLIGHT / DEFAULT_HANDSHAKE_SHARE_DIVISOR;
        assert_eq!(config.max_handshakes_per_source, share);
        let small = base().max_handshakes_in_flight(4).address_validation(AddressValidation::Always).build().unwrap();
        assert_eq!(small.max_handshakes_per_source, 1, "never below one");
        let text = "alpn = [\"echo\"]\nself_signed = [\"localhost\"]\nhandshake_timeout_ms = 2500\n\
                    max_handshakes_per_source = 9\n";
        let config = toml_file::parse::<ServerConfigBuilder>("server.toml", text).unwrap().build().unwrap();
        assert_eq!((config.handshake_timeout, config.max_handshakes_per_source), (Duration::from_millis(2500), 9));
    }

    #[test]
    fn a_retry_threshold_above_the_handshake_cap_is_refused() {
        let under_load = |handshakes_in_flight| AddressValidation::UnderLoad { handshakes_in_flight };
        base().address_validation(under_load(16)).max_handshakes_in_flight(64).build().unwrap();
        let err = base().address_validation(under_load(64)).max_handshakes_in_flight(64).build().unwrap_err();
        assert!(err.to_string().contains("max_handshakes_in_flight (64) refuses clients before that"), "{err}");
        base().address_validation(AddressValidation::Always).max_handshakes_in_flight(1).build().unwrap();
    }

    #[test]
    fn identity_sources_are_exclusive_and_complete() {
        let from_file = |text: &str| toml_file::parse::<ServerConfigBuilder>("server.toml", text).unwrap().build();
        let err = from_file("alpn = [\"echo\"]\ncert = \"/x/cert.pem\"\n").unwrap_err();
        assert!(err.to_string().contains("cert is set without `key`"), "{err}");
        let err = from_file("alpn = [\"echo\"]\ncert = \"/x/c.pem\"\nkey = \"/x/k.pem\"\nself_signed = [\"a\"]\n")
            .unwrap_err();
        assert!(err.to_string().contains("use either `cert` and `key`, or `self_signed`"), "{err}");
        let err = from_file("alpn = [\"echo\"]\nself_signed = []\n").unwrap_err();
        assert!(err.to_string().starts_with("self_signed names no host"), "{err}");
        let err = from_file("alpn = [\"echo\"]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/x/k.pem\"\n").unwrap_err();
        assert!(err.to_string().contains("cannot read certificate /nonexistent/cert.pem"), "{err}");
        // In code, the last identity given wins.
        let identity = TlsIdentity::self_signed(&["localhost"]).unwrap();
        let config = base().certificate_pem_files("/x/c.pem", "/x/k.pem").identity(identity.clone()).build().unwrap();
        assert_eq!(config.identity().spki_sha256_base64(), identity.spki_sha256_base64());
    }

    #[test]
    fn a_short_secret_file_says_how_to_make_one() {
        let path = std::env::temp_dir().join(format!("quiver-short-secret-{}", std::process::id()));
        std::fs::write(&path, [7u8; 31]).unwrap();
        let err = base().secret_file(&path).build().unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(err.to_string().contains("holds 31 bytes, fewer than 32 (create one with"), "{err}");
    }

    #[test]
    fn address_validation_parses_from_text() {
        assert_eq!("always".parse::<AddressValidation>().unwrap(), AddressValidation::Always);
        assert_eq!("never".parse::<AddressValidation>().unwrap(), AddressValidation::Never);
        assert_eq!(
            "64".parse::<AddressValidation>().unwrap(),
            AddressValidation::UnderLoad { handshakes_in_flight: 64 }
        );
        assert!("sometimes".parse::<AddressValidation>().unwrap_err().to_string().contains("`sometimes`"));
    }

    #[test]
    fn key_exchange_groups_are_validated_when_building() {
        assert!(base().key_exchange_groups(["X25519", "P-256"]).build().is_ok());
        let err = base().key_exchange_groups(["X25519", "no-such-group"]).build().unwrap_err();
        assert!(err.to_string().contains("no-such-group"), "{err}");
    }

    #[test]
    fn tls13_ciphers_are_checked_when_building() {
        assert!(base().tls13_ciphers(["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"]).build().is_ok());
        let err = base().tls13_ciphers(["TLS_CHACHA20_POLY1305_SHA256", "TLS_RC4"]).build().unwrap_err();
        assert!(matches!(err, ConfigError::InvalidOption { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("transport.tls13_ciphers") && message.contains("TLS_RC4"), "{message}");
        let text = "alpn = [\"echo\"]\nself_signed = [\"localhost\"]\n[transport]\n\
                    tls13_ciphers = [\"TLS_CHACHA20_POLY1305_SHA256\"]\n";
        let config = toml_file::parse::<ServerConfigBuilder>("server.toml", text).unwrap().build().unwrap();
        assert_eq!(config.transport.tls13_ciphers, ["TLS_CHACHA20_POLY1305_SHA256"]);
    }

    #[test]
    fn file_values_land_in_the_built_config() {
        let text = "alpn = [\"echo\"]\nself_signed = [\"localhost\"]\naccept_backlog = 7\n\
                    address_validation = \"always\"\n[transport]\nidle_timeout_ms = 1500\ncongestion_control = \"reno\"\n";
        let config = toml_file::parse::<ServerConfigBuilder>("server.toml", text).unwrap().build().unwrap();
        assert_eq!(config.accept_backlog, 7);
        assert_eq!(config.address_validation, AddressValidation::Always);
        assert_eq!(config.transport.idle_timeout, Duration::from_millis(1500));
        assert_eq!(config.transport.congestion_control, CongestionControl::Reno);
    }
}
