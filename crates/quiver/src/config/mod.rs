//! Typed configuration: [`TransportConfig`] (QUIC knobs both roles share), [`ServerConfig`] and
//! [`ClientConfig`], built by builders that validate, and their TOML files.
//!
//! # The idiom (every configurable type in the workspace follows it)
//! 1. One builder struct holds every option; it derives `Deserialize` with
//!    `#[serde(default, deny_unknown_fields)]`, so its fields *are* the file keys and `Default` holds
//!    the defaults. An option is declared once; there is no separate file struct to keep in step.
//! 2. Setters only record a value (no IO, no clamping); options that cannot come from a file (an
//!    in-memory certificate, a secret) are `#[serde(skip)]` fields beside their file form.
//! 3. `build(self) -> Result<Config, ConfigError>` does all checking and IO: values that cannot work,
//!    combinations that contradict, files to read. Errors name the option and say what to do
//!    ([`ConfigError::InvalidOption`]: `transport.idle_timeout_ms must be > 0: ...`).
//! 4. Files load with [`toml_file::load`] into the builder (`Builder::from_toml_file`); code or
//!    command-line flags then override with setters, and `build()` checks the result once.
//! 5. A crate that wraps these configurations nests the builder as a field (a `[quic]` table), never
//!    re-declares its options; durations are `_ms` integers ([`toml_file::millis`]).
//!
//! # Files
//! A server file (this exact text is parsed and built by a unit test):
#![doc = concat!("```toml\n", include_str!("server.example.toml"), "```")]
//! A client file:
#![doc = concat!("```toml\n", include_str!("client.example.toml"), "```")]
//!
//! # Layout (dependencies point down; no cycles)
//! - `server.rs`: server options, address validation and admission limits ([`ServerConfigBuilder`]).
//! - `client.rs`: client options and trust ([`ClientConfigBuilder`]).
//! - `quic.rs`: the one conversion into a `quiche::Config` (TLS context, ALPN, key log).
//! - `transport.rs`: [`TransportConfig`], its checks, and how it is written onto quiche.
//! - `tls.rs`: certificates and keys in memory ([`TlsIdentity`], trust anchors).
//! - `toml_file.rs`: reading TOML and the serde helpers for human-friendly values.
//!
//! Limits are configured here and enforced in `crate::limits`; nothing here runs per packet.

mod client;
mod quic;
mod server;
mod tls;
pub mod toml_file;
mod transport;

pub use self::client::{ClientConfig, ClientConfigBuilder, DEFAULT_HANDSHAKE_TIMEOUT};
pub use self::server::{
    AddressValidation, DEFAULT_ACCEPT_BACKLOG, DEFAULT_ADDRESS_VALIDATION, DEFAULT_HANDSHAKE_SHARE_DIVISOR,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES_IN_FLIGHT, STATELESS_RESET_RATE, ServerConfig, ServerConfigBuilder,
};
pub use self::tls::TlsIdentity;
pub(crate) use self::transport::MAX_RECV_UDP_PAYLOAD_BYTES;
pub use self::transport::{CongestionControl, DEFAULT_CONNECTION_QUEUE_DATAGRAMS, TransportConfig};
use crate::error::ConfigError;
pub use crate::limits::RateLimit;
pub use crate::token::ServerSecret;

/// An [`ConfigError::InvalidOption`]: `option` (its file key) and what is wrong with it, said so that
/// the reader knows what to change.
pub(crate) fn invalid(option: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::InvalidOption { option, problem: problem.into() }
}

/// Setters that only record a value (rule 2 of the idiom above), one per builder field of the same
/// name: `field: Type` stores the value, `field: Type => Some` stores `Some(value)` (an option that is
/// off until set). Each setter carries the doc comment written before it. Protocol crates use it for
/// their builders too, so a setter is never written out by hand.
///
/// ```
/// #[derive(Default)]
/// pub struct PoolBuilder {
///     size: usize,
///     name: Option<String>,
/// }
/// quiver::builder_setters!(PoolBuilder {
///     /// Connections in the pool.
///     size: usize,
///     /// A name for logs (none by default).
///     name: String => Some,
/// });
/// let pool = PoolBuilder::default().size(4).name("main".to_owned());
/// # assert_eq!((pool.size, pool.name.as_deref()), (4, Some("main")));
/// ```
#[macro_export]
macro_rules! builder_setters {
    ($builder:ty { $( $(#[$doc:meta])* $field:ident : $value:ty $(=> $wrap:ident)? ),* $(,)? }) => {
        impl $builder {
            $(
                $(#[$doc])*
                pub fn $field(mut self, value: $value) -> Self {
                    self.$field = $($wrap)?(value);
                    self
                }
            )*
        }
    };
}

/// The setters both builders share: ALPN and the transport options, written into the builder's
/// `alpn` and `transport` fields.
macro_rules! transport_setters {
    ($builder:ty) => {
        impl $builder {
            /// Replaces all transport settings.
            pub fn transport(mut self, transport: $crate::TransportConfig) -> Self {
                self.transport = transport;
                self
            }

            /// Changes transport settings in place.
            pub fn with_transport(mut self, change: impl FnOnce(&mut $crate::TransportConfig)) -> Self {
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

            /// See [`TransportConfig::idle_timeout`](crate::TransportConfig::idle_timeout).
            pub fn idle_timeout(mut self, timeout: std::time::Duration) -> Self {
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

            /// See [`TransportConfig::congestion_control`](crate::TransportConfig::congestion_control).
            pub fn congestion_control(mut self, algorithm: $crate::CongestionControl) -> Self {
                self.transport.congestion_control = algorithm;
                self
            }

            /// Enables or disables QUIC DATAGRAM frames.
            pub fn datagrams(mut self, enabled: bool) -> Self {
                self.transport.datagrams = enabled;
                self
            }

            /// See [`TransportConfig::early_data`](crate::TransportConfig::early_data).
            pub fn early_data(mut self, enabled: bool) -> Self {
                self.transport.early_data = enabled;
                self
            }

            /// See [`TransportConfig::key_exchange_groups`](crate::TransportConfig::key_exchange_groups).
            pub fn key_exchange_groups<I, S>(mut self, groups: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                self.transport.key_exchange_groups = Some(groups.into_iter().map(Into::into).collect());
                self
            }

            /// See [`TransportConfig::tls13_ciphers`](crate::TransportConfig::tls13_ciphers).
            pub fn tls13_ciphers<I, S>(mut self, ciphers: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                self.transport.tls13_ciphers = ciphers.into_iter().map(Into::into).collect();
                self
            }

            /// Appends TLS secrets to this file in NSS key-log format (for Wireshark).
            pub fn keylog_path(mut self, path: impl Into<std::path::PathBuf>) -> Self {
                self.transport.keylog_path = Some(path.into());
                self
            }

            /// See [`TransportConfig::qlog_dir`](crate::TransportConfig::qlog_dir).
            pub fn qlog_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
                self.transport.qlog_dir = Some(dir.into());
                self
            }
        }
    };
}
use transport_setters;

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples in the module docs and on the builders are these files: they must parse, with no
    /// unknown key, and build.
    #[test]
    fn the_documented_examples_parse_and_build() {
        let server: ServerConfigBuilder =
            toml_file::parse("server.example.toml", include_str!("server.example.toml")).unwrap();
        let server = server.build().unwrap();
        assert_eq!(server.alpn, [b"echo".to_vec()]);
        assert_eq!(server.max_connections_per_source, Some(64));
        assert_eq!(server.handshake_rate_per_source, Some(RateLimit { per_second: 10.0, burst: 20.0 }));
        assert_eq!(server.transport, TransportConfig::default(), "the example's transport values are the defaults");

        let client: ClientConfigBuilder =
            toml_file::parse("client.example.toml", include_str!("client.example.toml")).unwrap();
        let client = client.build().unwrap();
        assert!(client.verify_peer && client.session_resumption);
        assert_eq!(client.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
    }

    #[test]
    fn toml_files_load_and_reject_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("quiver-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "alpn = [\"echo\"]\nself_signed = [\"localhost\"]\n[transport]\nidle_timeout_ms = 1500\n",
        )
        .unwrap();
        let config = ServerConfig::from_toml_file(&good).unwrap();
        assert_eq!(config.transport.idle_timeout, std::time::Duration::from_millis(1500));
        // A file is a starting point that code can override before building.
        let overridden = ServerConfigBuilder::from_toml_file(&good).unwrap().accept_backlog(3).build().unwrap();
        assert_eq!(overridden.accept_backlog, 3);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "alpn = [\"echo\"]\nself_signed = [\"localhost\"]\n[transport]\nidle_timeot_ms = 1\n")
            .unwrap();
        let message = ServerConfig::from_toml_file(&bad).unwrap_err().to_string();
        assert!(message.contains("bad.toml") && message.contains("idle_timeot_ms"), "{message}");
        let client = dir.join("client.toml");
        std::fs::write(&client, "alpn = [\"echo\"]\nverify = false\n").unwrap();
        let message = ClientConfig::from_toml_file(&client).unwrap_err().to_string();
        assert!(message.contains("client.toml") && message.contains("verify"), "{message}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
