//! Client options: which certificates to trust (system roots, CA files, pinned DER certificates, or
//! none at all), the handshake deadline and session resumption; [`ClientConfigBuilder`] holds them,
//! is also the TOML file form, and [`ClientConfigBuilder::build`] checks them into a [`ClientConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::invalid;
use super::quic::{KeyLog, new_quiche_config, open_keylog, validate_alpn};
use super::tls::TrustAnchors;
use super::toml_file::{self, millis};
use super::transport::TransportConfig;
use crate::error::ConfigError;

/// Default handshake deadline, for both roles: how long a client waits for its handshake to complete,
/// and how long a server gives a client to complete one before it drops the connection.
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

    /// Loads a client configuration from a TOML file (the keys are [`ClientConfigBuilder`]'s; see the
    /// example there) and builds it.
    ///
    /// # Errors
    /// As [`ServerConfig::from_toml_file`](crate::ServerConfig::from_toml_file).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        ClientConfigBuilder::from_toml_file(path)?.build()
    }

    pub(crate) fn quiche_config(&self) -> Result<quiche::Config, ConfigError> {
        let mut config = new_quiche_config(&self.transport, &self.alpn, |ssl| self.trust.install(ssl))?;
        config.verify_peer(self.verify_peer);
        Ok(config)
    }
}

/// Builds a [`ClientConfig`]. Setters only record; [`build`](Self::build) reads the CA files and
/// reports every problem as a [`ConfigError`].
///
/// The builder is also the TOML form ([`from_toml_file`](Self::from_toml_file)):
#[doc = concat!("```toml\n", include_str!("client.example.toml"), "```")]
///
/// ```
/// use quiver::ClientConfig;
/// let config = ClientConfig::builder().alpn(["echo"]).build()?;
/// # Ok::<(), quiver::ConfigError>(())
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfigBuilder {
    #[serde(deserialize_with = "toml_file::alpn")]
    alpn: Vec<Vec<u8>>,
    #[serde(rename = "ca")]
    trust_pem_files: Vec<PathBuf>,
    #[serde(skip)]
    trust_ders: Vec<Vec<u8>>,
    system_roots: bool,
    insecure: bool,
    #[serde(rename = "handshake_timeout_ms", with = "millis")]
    handshake_timeout: Duration,
    session_resumption: bool,
    transport: TransportConfig,
}

impl Default for ClientConfigBuilder {
    fn default() -> Self {
        Self {
            alpn: Vec::new(),
            trust_pem_files: Vec::new(),
            trust_ders: Vec::new(),
            system_roots: true,
            insecure: false,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            session_resumption: true,
            transport: TransportConfig::default(),
        }
    }
}

super::transport_setters!(ClientConfigBuilder);

crate::builder_setters!(ClientConfigBuilder {
    /// How long [`Endpoint::connect`](crate::Endpoint::connect) waits for the handshake (> 0).
    handshake_timeout: Duration,
    /// Whether the endpoint keeps servers' session tickets and resumes its next connection to the same
    /// server with one (on by default; 0-RTT also needs [`early_data`](Self::early_data)). Turn it off
    /// to make every handshake a full one, e.g. to measure a server's full-handshake cost.
    session_resumption: bool,
});

impl ClientConfigBuilder {
    /// Reads a TOML file into a builder (keys as in the example above; all optional except that
    /// `build` needs `alpn`). Call setters afterwards to override what the file says.
    ///
    /// # Errors
    /// [`ConfigError::ReadFile`] or [`ConfigError::Toml`] (with line, column and key).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        toml_file::load(path)
    }

    /// Trusts the certificates in this PEM file (CA bundle) in addition to the system roots.
    pub fn trust_pem_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust_pem_files.push(path.into());
        self
    }

    /// Trusts this DER certificate (for example a development server's self-signed certificate).
    pub fn trust_certificate_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.trust_ders.push(der.into());
        self
    }

    /// Does not load the system's root certificates; only explicitly trusted ones count.
    pub fn without_system_roots(mut self) -> Self {
        self.system_roots = false;
        self
    }

    /// Disables server certificate verification. Anyone on the path can then impersonate the server:
    /// use only against development servers.
    pub fn insecure_skip_verification(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// Validates the settings and loads trust anchors.
    ///
    /// # Errors
    /// Any [`ConfigError`]: missing ALPN, unreadable or invalid CA files, an unopenable keylog file, a
    /// zero handshake timeout, verification without any trusted certificate, a transport value that
    /// cannot work ([`ConfigError::InvalidOption`] names it).
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        validate_alpn(&self.alpn)?;
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake_timeout_ms", "must be > 0, or every connection attempt fails at once"));
        }
        let trusts_nothing = !self.system_roots && self.trust_pem_files.is_empty() && self.trust_ders.is_empty();
        if trusts_nothing && !self.insecure {
            return Err(invalid(
                "system_roots",
                "is off and no certificate is trusted instead, so no server could be verified: add `ca` files (trust_pem_file / trust_certificate_der) or keep the system roots",
            ));
        }
        self.transport.validate()?;
        self.transport.check_qlog_dir()?;
        let mut trust = TrustAnchors { extra: Vec::new(), use_system_roots: self.system_roots };
        for path in &self.trust_pem_files {
            trust.add_pem_file(path)?;
        }
        for der in &self.trust_ders {
            trust.add_der(der)?;
        }
        let keylog = open_keylog(self.transport.keylog_path.as_deref())?;
        let config = ClientConfig {
            transport: self.transport,
            alpn: self.alpn,
            verify_peer: !self.insecure,
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
    fn client_verifies_by_default() {
        let config = ClientConfig::builder().alpn(["echo"]).build().unwrap();
        assert!(config.verify_peer);
        let insecure = ClientConfig::builder().alpn(["echo"]).insecure_skip_verification().build().unwrap();
        assert!(!insecure.verify_peer);
    }

    #[test]
    fn a_client_that_trusts_nothing_is_refused_unless_it_does_not_verify() {
        let err = ClientConfig::builder().alpn(["echo"]).without_system_roots().build().unwrap_err();
        assert!(err.to_string().starts_with("system_roots is off and no certificate is trusted"), "{err}");
        let identity = crate::TlsIdentity::self_signed(&["localhost"]).unwrap();
        let pinned = ClientConfig::builder().alpn(["echo"]).without_system_roots();
        pinned.clone().trust_certificate_der(identity.certificate_der()).build().unwrap();
        pinned.insecure_skip_verification().build().unwrap();
    }

    #[test]
    fn a_zero_handshake_timeout_is_refused() {
        let err = ClientConfig::builder().alpn(["echo"]).handshake_timeout(Duration::ZERO).build().unwrap_err();
        assert!(err.to_string().starts_with("handshake_timeout_ms must be > 0"), "{err}");
    }

    #[test]
    fn file_values_land_in_the_built_config() {
        let text = "alpn = [\"echo\"]\ninsecure = true\nsystem_roots = false\nhandshake_timeout_ms = 250\n\
                    session_resumption = false\n";
        let config = toml_file::parse::<ClientConfigBuilder>("client.toml", text).unwrap().build().unwrap();
        assert!(!config.verify_peer && !config.session_resumption && !config.trust.use_system_roots);
        assert_eq!(config.handshake_timeout, Duration::from_millis(250));
        let err = toml_file::parse::<ClientConfigBuilder>(
            "client.toml",
            "alpn = [\"echo\"]\nca = [\"/nonexistent/ca.pem\"]\n",
        )
        .unwrap()
        .build()
        .unwrap_err();
        assert!(err.to_string().contains("cannot read CA bundle /nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn client_key_exchange_groups_are_checked() {
        let client = ClientConfig::builder().alpn(["echo"]).key_exchange_groups(["X25519MLKEM768"]).build();
        assert!(client.is_ok());
    }

    #[test]
    fn client_tls13_ciphers_are_checked() {
        let client = ClientConfig::builder().alpn(["echo"]).tls13_ciphers(["TLS_CHACHA20_POLY1305_SHA256"]).build();
        assert!(client.is_ok());
        let err = ClientConfig::builder().alpn(["echo"]).tls13_ciphers(["chacha"]).build().unwrap_err();
        assert!(err.to_string().contains("transport.tls13_ciphers"), "{err}");
    }
}
