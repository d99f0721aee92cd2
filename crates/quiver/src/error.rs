//! Error types at the crate's API boundary.
//!
//! Each operation has its own enum so callers can tell a timeout from a refusal from a bad file without
//! parsing strings. Messages say what failed and, where it helps, what to do about it.

use std::io;
use std::path::PathBuf;

/// A configuration could not be turned into a working QUIC/TLS setup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A PEM file could not be read from disk.
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        /// What the file was supposed to hold ("certificate", "private key", "CA bundle").
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// A PEM file was read but its content is not usable.
    #[error("invalid {what} in {path}: {reason}")]
    InvalidPem {
        /// What the file was supposed to hold.
        what: &'static str,
        /// The path (or `<memory>` for in-memory PEM).
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The private key does not belong to the first certificate of the chain.
    #[error("private key does not match the certificate")]
    KeyMismatch,
    /// No ALPN protocol was configured; QUIC requires at least one.
    #[error("no ALPN protocol configured: set at least one with `.alpn(...)`")]
    MissingAlpn,
    /// An ALPN identifier was empty or longer than 255 bytes.
    #[error("invalid ALPN identifier {0:?}: must be 1 to 255 bytes")]
    InvalidAlpn(String),
    /// A server configuration has no certificate.
    #[error("no TLS certificate configured: use `.certificate_pem_files(...)` or `.self_signed(...)`")]
    MissingCertificate,
    /// Generating a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
    /// The TLS library refused a setting.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// quiche refused a transport setting.
    #[error("QUIC setup failed: {0}")]
    Quic(QuicError),
    /// An unknown congestion control algorithm name.
    #[error("unknown congestion control {0:?}: use \"cubic\", \"reno\" or \"bbr2\"")]
    UnknownCongestionControl(String),
    /// A TOML configuration could not be parsed.
    #[error("invalid configuration {path}: {message}")]
    Toml {
        /// The file the configuration came from.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// The keylog file could not be opened for appending.
    #[error("cannot open keylog file {path}: {source}")]
    Keylog {
        /// The path as given.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// The qlog directory is unusable.
    #[error("cannot write qlog files into {path}: {reason}")]
    Qlog {
        /// The directory as given.
        path: PathBuf,
        /// Why not (missing, not a directory, no qlog support compiled in).
        reason: String,
    },
    /// An option's value cannot work, alone or together with another option: found by a builder's
    /// `build()`.
    #[error("{option} {problem}")]
    InvalidOption {
        /// The option, by its TOML key (`transport.idle_timeout_ms`, `max_connections`).
        option: &'static str,
        /// What is wrong and what to do, e.g. "must be > 0".
        problem: String,
    },
}

/// Creating an [`Endpoint`](crate::Endpoint) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// A socket could not be bound.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// The builder was asked for no socket.
    #[error("an endpoint needs at least one socket: call `.bind(addr)`")]
    NoSocket,
    /// The endpoint has neither a server nor a client configuration.
    #[error("an endpoint needs a server or a client configuration (or both)")]
    NoRole,
    /// A configuration was not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `Endpoint` must be built inside a Tokio runtime.
    #[error("an endpoint must be created inside a Tokio runtime")]
    NoRuntime,
}

/// Why a connection ended. Returned by [`ConnectionHandle::closed`](crate::ConnectionHandle::closed)
/// and given to [`ApplicationOverQuic::on_conn_close`](crate::ApplicationOverQuic::on_conn_close).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// No packet was received for the negotiated idle timeout.
    #[error("connection timed out: no packet from the peer within the idle timeout")]
    IdleTimeout,
    /// The handshake did not complete in time.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// The peer closed the connection.
    #[error("closed by peer: {0}")]
    PeerClosed(CloseReason),
    /// This side closed the connection (the application or a handle asked for it, or a protocol error).
    #[error("closed locally: {0}")]
    LocallyClosed(CloseReason),
    /// The peer sent a stateless reset: it no longer knows this connection (it restarted, or lost
    /// its state). Nothing more will arrive on it.
    #[error("reset by the peer: it no longer knows this connection (stateless reset)")]
    StatelessReset,
    /// The endpoint shut down and took the connection with it.
    #[error("endpoint shut down")]
    EndpointShutdown,
    /// The application's task ended without closing (it panicked or was dropped).
    #[error("the connection task ended unexpectedly")]
    Aborted,
}

/// Why [`Endpoint::migrate`](crate::Endpoint::migrate) could not move a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Only a client may move its connection to another address (RFC 9000 §9).
    #[error("only client connections can migrate")]
    NotAClient,
    /// The endpoint has no socket bound to this address; bind one with
    /// [`EndpointBuilder::bind`](crate::EndpointBuilder::bind).
    #[error("this endpoint has no socket bound to {0}")]
    UnknownLocalAddress(std::net::SocketAddr),
    /// The connection is not established yet, or already closed.
    #[error("the connection is not established (or already closed)")]
    NotEstablished,
    /// QUIC refused, or the new path never answered.
    #[error("migration refused: {0}")]
    Refused(MigrateRefusal),
}

/// Why a migration was refused ([`MigrateError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateRefusal {
    /// The peer has not given us a spare connection ID for a new path yet; try again shortly.
    #[error("the peer has not issued a spare connection ID yet")]
    NoSpareConnectionId,
    /// The peer disabled active migration in its transport parameters.
    #[error("the peer disabled active migration")]
    MigrationDisabled,
    /// Another migration of the same connection started before this one completed.
    #[error("superseded by another migration")]
    Superseded,
    /// The peer never answered the PATH_CHALLENGEs on the new path.
    #[error("the peer did not answer on the new path")]
    NoAnswer,
    /// QUIC rejected the new path for another reason.
    #[error("QUIC rejected the new path")]
    PathRejected,
}

impl ConnectionError {
    /// Whether the connection ended because a deadline passed: the idle timeout or the handshake
    /// timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::IdleTimeout | Self::HandshakeTimeout(_))
    }

    /// Whether the connection was closed on purpose: a CONNECTION_CLOSE from either side, a stateless
    /// reset, or the endpoint's shutdown (not a timeout, not an aborted task).
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::PeerClosed(_) | Self::LocallyClosed(_) | Self::StatelessReset | Self::EndpointShutdown)
    }

    /// Whether a new connection may well succeed where this one ended: a timeout, a stateless reset
    /// (the peer restarted), or the peer refusing with CONNECTION_REFUSED (it was busy).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::IdleTimeout | Self::HandshakeTimeout(_) | Self::StatelessReset => true,
            Self::PeerClosed(close) => close.kind() == CloseKind::Transport && close.code == CONNECTION_REFUSED,
            _ => false,
        }
    }

    /// The CONNECTION_CLOSE that ended the connection, from whichever side sent it.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match self {
            Self::PeerClosed(close) | Self::LocallyClosed(close) => Some(close),
            _ => None,
        }
    }

    /// The application error code, when an application (not the transport) closed the connection.
    pub fn application_code(&self) -> Option<u64> {
        self.close_reason().filter(|close| close.kind() == CloseKind::Application).map(|close| close.code)
    }
}

/// Transport error code CONNECTION_REFUSED (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x2;

/// Who a CONNECTION_CLOSE speaks for: the application protocol or the QUIC transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseKind {
    /// An application close (frame type 0x1d): the code is the application protocol's (for example
    /// an HTTP/3 error code).
    Application,
    /// A transport close (frame type 0x1c): the code is a QUIC transport error (RFC 9000 §20.1), or a
    /// TLS alert (0x100 + alert).
    Transport,
}

/// An error from the QUIC engine, kept opaque so public error types do not expose quiche's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuicError(quiche::Error);

impl From<quiche::Error> for ConfigError {
    fn from(err: quiche::Error) -> Self {
        Self::Quic(QuicError(err))
    }
}

impl From<quiche::Error> for ConnectError {
    fn from(err: quiche::Error) -> Self {
        Self::Quic(QuicError(err))
    }
}

/// The content of a CONNECTION_CLOSE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// `true` for an application close (frame type 0x1d), `false` for a transport error (0x1c).
    pub is_application: bool,
    /// The error code.
    pub code: u64,
    /// The reason phrase, lossily decoded as UTF-8.
    pub reason: String,
}

impl CloseReason {
    /// Whether the application or the transport closed.
    pub fn kind(&self) -> CloseKind {
        if self.is_application { CloseKind::Application } else { CloseKind::Transport }
    }

    /// Whether this close reports no error: application code 0 or transport NO_ERROR.
    pub fn is_no_error(&self) -> bool {
        self.code == 0
    }

    pub(crate) fn from_quiche(err: &quiche::ConnectionError) -> Self {
        Self {
            is_application: err.is_app,
            code: err.error_code,
            reason: String::from_utf8_lossy(&err.reason).into_owned(),
        }
    }
}

/// Transport error codes 0x100-0x1ff carry a TLS alert (RFC 9001 §4.8).
const CRYPTO_ERROR_BASE: u64 = 0x100;

fn tls_alert_name(alert: u64) -> &'static str {
    match alert {
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "unknown CA: the certificate is not trusted",
        51 => "decrypt error",
        70 => "protocol version",
        80 => "internal error",
        109 => "missing extension",
        112 => "unrecognized name",
        116 => "certificate required",
        120 => "no application protocol: ALPN mismatch",
        _ => "TLS alert",
    }
}

impl CloseReason {
    /// The TLS alert number, when this is a transport close caused by TLS.
    pub fn tls_alert(&self) -> Option<u8> {
        if self.is_application || !(CRYPTO_ERROR_BASE..CRYPTO_ERROR_BASE + 0x100).contains(&self.code) {
            return None;
        }
        u8::try_from(self.code - CRYPTO_ERROR_BASE).ok()
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(alert) = self.tls_alert() {
            write!(f, "TLS alert {alert} ({})", tls_alert_name(u64::from(alert)))?;
            if !self.reason.is_empty() {
                write!(f, " ({})", self.reason)?;
            }
            return Ok(());
        }
        let kind = if self.is_application { "application" } else { "transport" };
        write!(f, "{kind} error 0x{:x}", self.code)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// [`Endpoint::connect`](crate::Endpoint::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint has no client configuration.
    #[error("this endpoint has no client configuration")]
    NotAClient,
    /// The server name is not valid for TLS SNI.
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    /// The remote address family does not match the local socket (IPv4 socket, IPv6 server or vice versa).
    #[error("cannot reach {remote} from a socket bound to {local}")]
    AddressFamily {
        /// The local socket address.
        local: std::net::SocketAddr,
        /// The requested remote address.
        remote: std::net::SocketAddr,
    },
    /// quiche refused to create the connection.
    #[error("cannot create connection: {0}")]
    Quic(QuicError),
    /// No answer from the server within the handshake timeout or idle timeout.
    #[error("timed out connecting: no handshake completed within {0:?}")]
    TimedOut(std::time::Duration),
    /// The connection closed before the handshake completed (e.g. TLS or ALPN failure, refusal).
    #[error("connection failed during the handshake: {0}")]
    HandshakeFailed(ConnectionError),
    /// The endpoint is shutting down.
    #[error("endpoint is shut down")]
    EndpointClosed,
}

impl ConnectError {
    /// Whether the handshake did not complete in time (the server never answered).
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::TimedOut(_) => true,
            Self::HandshakeFailed(reason) => reason.is_timeout(),
            _ => false,
        }
    }

    /// Whether the attempt ended because a side closed: the server refused or TLS failed
    /// ([`ConnectionError::is_closed`]), or this endpoint is shut down.
    pub fn is_closed(&self) -> bool {
        match self {
            Self::EndpointClosed => true,
            Self::HandshakeFailed(reason) => reason.is_closed(),
            _ => false,
        }
    }

    /// Whether trying again later may succeed: a timeout, or a server that was busy
    /// ([`ConnectionError::is_retryable`]). Bad names, address families or configurations are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::TimedOut(_) => true,
            Self::HandshakeFailed(reason) => reason.is_retryable(),
            _ => false,
        }
    }
}

/// An [`ApplicationOverQuic`](crate::ApplicationOverQuic) hook asks the runtime to close the connection.
///
/// The runtime sends CONNECTION_CLOSE with this application error code and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("application error 0x{code:x}: {reason}")]
pub struct ApplicationError {
    /// Application protocol error code (for example H3_INTERNAL_ERROR).
    pub code: u64,
    /// A short, human-readable reason sent to the peer.
    pub reason: String,
}

impl ApplicationError {
    /// Builds an error with the given code and reason.
    pub fn new(code: u64, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alerts_are_named() {
        let close = CloseReason { is_application: false, code: 0x130, reason: String::new() };
        assert_eq!(close.tls_alert(), Some(48));
        assert_eq!(close.to_string(), "TLS alert 48 (unknown CA: the certificate is not trusted)");
        let app = CloseReason { is_application: true, code: 0x130, reason: "x".into() };
        assert_eq!(app.tls_alert(), None);
        assert_eq!(app.to_string(), "application error 0x130 (x)");
    }

    #[test]
    fn queries_tell_timeouts_closes_and_refusals_apart() {
        let refused =
            ConnectionError::PeerClosed(CloseReason { is_application: false, code: 0x2, reason: String::new() });
        assert!(refused.is_closed() && refused.is_retryable() && !refused.is_timeout());
        assert_eq!(refused.application_code(), None);
        let app = ConnectionError::PeerClosed(CloseReason { is_application: true, code: 0x2, reason: String::new() });
        assert!(!app.is_retryable(), "an application code 0x2 is not CONNECTION_REFUSED");
        assert_eq!(app.application_code(), Some(0x2));
        assert!(ConnectionError::IdleTimeout.is_timeout() && !ConnectionError::IdleTimeout.is_closed());
        assert!(ConnectError::TimedOut(std::time::Duration::from_secs(1)).is_retryable());
        assert!(ConnectError::HandshakeFailed(refused).is_retryable());
        assert!(!ConnectError::InvalidServerName(String::new()).is_retryable());
        assert!(ConnectError::EndpointClosed.is_closed());
    }
}
