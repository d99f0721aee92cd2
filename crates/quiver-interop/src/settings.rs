//! What the runner asks for, read from the environment: the role, the test case and where files are.
//!
//! Nothing here touches the network; [`Settings::from_vars`] takes a lookup function so the parsing is
//! tested without changing the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::url::{RequestUrl, UrlError};
use crate::wire;

/// Where the runner mounts the files to serve when `WWW` is not set.
pub const DEFAULT_WWW: &str = "/www";
/// Where the runner expects downloads when `DOWNLOADS` is not set.
pub const DEFAULT_DOWNLOADS: &str = "/downloads";
/// Where the runner mounts `cert.pem` and `priv.key` when `CERTS` is not set.
pub const DEFAULT_CERTS: &str = "/certs";
/// The address a server binds when `LISTEN` is not set: every address, HTTPS's port.
pub const DEFAULT_LISTEN: &str = "[::]:443";

/// Which side of the connection this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves files from `WWW` to any client, until killed.
    Server,
    /// Downloads `REQUESTS` into `DOWNLOADS`, then exits.
    Client,
}

/// A test case this endpoint knows (the runner's names, as `TESTCASE` gives them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestCase {
    /// One connection, every URL on it.
    Handshake,
    /// One connection, every URL on it at once, with small initial flow-control windows (client).
    Transfer,
    /// One connection per URL, one after another (client).
    Multiconnect,
    /// Only TLS_CHACHA20_POLY1305_SHA256 offered and accepted.
    Chacha20,
    /// The server sends a Retry to every new connection.
    Retry,
    /// The client's second connection resumes the first one's session, without 0-RTT.
    Resumption,
    /// As resumption, with the second connection's requests sent in 0-RTT.
    Zerortt,
    /// HTTP/3 (ALPN h3), every URL at once on one connection.
    Http3,
    /// The endpoint under test initiates a key update early in the transfer.
    Keyupdate,
    /// The client moves its connection to a new local socket in the middle of the transfer.
    Connectionmigration,
}

impl TestCase {
    /// The test case named `name`, or why this endpoint cannot run it (exit code 127).
    pub fn parse(name: &str) -> Result<Self, Unsupported> {
        Ok(match name {
            "handshake" => Self::Handshake,
            "transfer" => Self::Transfer,
            "multiconnect" => Self::Multiconnect,
            "chacha20" => Self::Chacha20,
            "retry" => Self::Retry,
            "resumption" => Self::Resumption,
            "zerortt" => Self::Zerortt,
            "http3" => Self::Http3,
            "keyupdate" => Self::Keyupdate,
            "connectionmigration" => Self::Connectionmigration,
            "v2" => return Err(Unsupported::new(name, "quiche 0.30 speaks QUIC version 1 only")),
            "ecn" => {
                return Err(Unsupported::new(name, "quiche 0.30 neither marks nor reports ECN on its packets"));
            }
            "versionnegotiation" => {
                return Err(Unsupported::new(name, "quiche 0.30 cannot offer a client a version it does not support"));
            }
            other => return Err(Unsupported::new(other, "not a test case this endpoint knows")),
        })
    }

    /// The ALPN this case's client uses.
    pub fn client_alpn(self) -> &'static [u8] {
        if self == Self::Http3 { quiver_h3::ALPN } else { crate::hq::ALPN }
    }

    /// Why `role` cannot run this case with this build, if it cannot.
    pub fn unsupported_in(self, role: Role) -> Option<Unsupported> {
        match (self, role) {
            (Self::Keyupdate, _) if !wire::KEY_UPDATE_AVAILABLE => {
                Some(Unsupported::new("keyupdate", "this build's quiche cannot initiate a key update"))
            }
            (Self::Chacha20, _) if !wire::CIPHER_CHOICE_AVAILABLE => {
                Some(Unsupported::new("chacha20", "this build's quiver cannot restrict the TLS 1.3 cipher suites"))
            }
            (Self::Connectionmigration, Role::Server) => Some(Unsupported::new(
                "connectionmigration",
                "quiche 0.30 cannot offer a preferred address, which the server side of this case needs",
            )),
            _ => None,
        }
    }
}

/// A test case this endpoint does not run, and why (printed on stderr; the process exits 127).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("test case `{name}` is not supported: {reason}")]
pub struct Unsupported {
    /// The case as `TESTCASE` named it.
    pub name: String,
    /// Why not.
    pub reason: &'static str,
}

impl Unsupported {
    fn new(name: &str, reason: &'static str) -> Self {
        Self { name: name.to_owned(), reason }
    }
}

/// The environment could not be understood (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `ROLE` is missing or not `server`/`client`.
    #[error("ROLE must be `server` or `client`, not {0:?}")]
    Role(Option<String>),
    /// `TESTCASE` is missing.
    #[error("TESTCASE is not set")]
    MissingTestCase,
    /// The case cannot run here (exit code 127, not 1).
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// `LISTEN` is not a socket address.
    #[error("LISTEN={0:?} is not a socket address such as [::]:443 or 127.0.0.1:0")]
    Listen(String),
    /// A client without `REQUESTS`.
    #[error("REQUESTS is empty: the client needs at least one URL")]
    NoRequests,
    /// One of `REQUESTS` is not a URL the client can fetch.
    #[error("REQUESTS: {0}")]
    Url(#[from] UrlError),
}

/// Everything the endpoint needs from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server or client.
    pub role: Role,
    /// The case to run.
    pub test_case: TestCase,
    /// The URLs to download (client; empty for a server).
    pub requests: Vec<RequestUrl>,
    /// Files to serve (`WWW`).
    pub www: PathBuf,
    /// Where downloads go (`DOWNLOADS`).
    pub downloads: PathBuf,
    /// `cert.pem` and `priv.key` (`CERTS`).
    pub certs: PathBuf,
    /// The server's socket address (`LISTEN`).
    pub listen: SocketAddr,
    /// The TLS key log (`SSLKEYLOGFILE`), if asked for.
    pub keylog: Option<PathBuf>,
    /// The qlog directory (`QLOGDIR`), if asked for.
    pub qlog_dir: Option<PathBuf>,
}

impl Settings {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    /// See [`Settings::from_vars`].
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `var` (a variable's value, `None` when unset). Empty values count as
    /// unset, as the runner's scripts pass every variable whether used or not.
    ///
    /// # Errors
    /// [`SettingsError::Unsupported`] for a case this endpoint cannot run in this role (exit 127); the
    /// other variants for an environment that does not make sense (exit 1).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let role = match var("ROLE").as_deref() {
            Some("server") => Role::Server,
            Some("client") => Role::Client,
            other => return Err(SettingsError::Role(other.map(str::to_owned))),
        };
        let test_case = TestCase::parse(var("TESTCASE").ok_or(SettingsError::MissingTestCase)?.trim())?;
        if let Some(unsupported) = test_case.unsupported_in(role) {
            return Err(unsupported.into());
        }
        let requests = match role {
            Role::Server => Vec::new(),
            Role::Client => {
                let requests = var("REQUESTS")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(RequestUrl::parse)
                    .collect::<Result<Vec<_>, _>>()?;
                if requests.is_empty() {
                    return Err(SettingsError::NoRequests);
                }
                requests
            }
        };
        let listen = var("LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen.trim().parse().map_err(|_| SettingsError::Listen(listen.clone()))?;
        let dir = |name: &str, default: &str| PathBuf::from(var(name).unwrap_or_else(|| default.to_owned()));
        Ok(Self {
            role,
            test_case,
            requests,
            www: dir("WWW", DEFAULT_WWW),
            downloads: dir("DOWNLOADS", DEFAULT_DOWNLOADS),
            certs: dir("CERTS", DEFAULT_CERTS),
            listen,
            keylog: var("SSLKEYLOGFILE").map(PathBuf::from),
            qlog_dir: var("QLOGDIR").map(PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn a_server_gets_the_runner_defaults() {
        let server = settings(&[("ROLE", "server"), ("TESTCASE", "handshake")]).unwrap();
        assert_eq!((server.role, server.test_case), (Role::Server, TestCase::Handshake));
        assert_eq!(server.www, PathBuf::from("/www"));
        assert_eq!(server.certs, PathBuf::from("/certs"));
        assert_eq!(server.listen, "[::]:443".parse().unwrap());
        assert!(server.requests.is_empty() && server.keylog.is_none() && server.qlog_dir.is_none());
    }

    #[test]
    fn a_client_reads_its_urls_and_overrides() {
        let client = settings(&[
            ("ROLE", "client"),
            ("TESTCASE", "transfer"),
            ("REQUESTS", " https://127.0.0.1:4433/a  https://127.0.0.1:4433/b\n"),
            ("DOWNLOADS", "/tmp/d"),
            ("SSLKEYLOGFILE", "/tmp/keys"),
            ("QLOGDIR", ""),
        ])
        .unwrap();
        let paths: Vec<&str> = client.requests.iter().map(|url| url.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/b"]);
        assert_eq!(client.downloads, PathBuf::from("/tmp/d"));
        assert_eq!(client.keylog, Some(PathBuf::from("/tmp/keys")));
        assert_eq!(client.qlog_dir, None, "empty means unset");
    }

    #[test]
    fn unknown_and_impossible_cases_are_unsupported() {
        for case in ["v2", "ecn", "versionnegotiation", "no-such-case"] {
            for role in ["server", "client"] {
                let result = settings(&[("ROLE", role), ("TESTCASE", case), ("REQUESTS", "https://a/b")]);
                assert!(matches!(result, Err(SettingsError::Unsupported(_))), "{case} as {role}");
            }
        }
        let server_migration = settings(&[("ROLE", "server"), ("TESTCASE", "connectionmigration")]);
        assert!(matches!(server_migration, Err(SettingsError::Unsupported(_))));
        let client_migration =
            settings(&[("ROLE", "client"), ("TESTCASE", "connectionmigration"), ("REQUESTS", "https://a/b")]);
        assert!(client_migration.is_ok());
    }

    #[test]
    fn a_bad_environment_is_an_error_not_unsupported() {
        assert!(matches!(settings(&[("TESTCASE", "handshake")]), Err(SettingsError::Role(None))));
        assert!(matches!(settings(&[("ROLE", "server")]), Err(SettingsError::MissingTestCase)));
        assert!(matches!(
            settings(&[("ROLE", "server"), ("TESTCASE", "handshake"), ("LISTEN", "nowhere")]),
            Err(SettingsError::Listen(_))
        ));
        assert!(matches!(settings(&[("ROLE", "client"), ("TESTCASE", "handshake")]), Err(SettingsError::NoRequests)));
        assert!(matches!(
            settings(&[("ROLE", "client"), ("TESTCASE", "handshake"), ("REQUESTS", "ftp://a/b")]),
            Err(SettingsError::Url(_))
        ));
    }
}
