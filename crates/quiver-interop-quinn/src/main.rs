//! `quinn-interop`: a QUIC interop endpoint on quinn + rustls + h3, independent of Quiver.
//!
//! It follows the interop runner's endpoint contract (see `interop/` and the runner's `quic.md`) so that
//! Quiver's local runner can test Quiver against a second, unrelated QUIC stack in both roles:
//! `ROLE=server|client`, `TESTCASE`, `REQUESTS`, `WWW`, `DOWNLOADS`, `CERTS`, `LISTEN`, `SSLKEYLOGFILE`.
//! Exit codes: 0 success, 1 failure, 127 unsupported test case.

mod client;
mod server;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// Exit code the runner reads as "this endpoint does not implement the test case".
const EXIT_UNSUPPORTED: u8 = 127;

/// ALPN of HTTP/0.9 over QUIC, used by every case except http3.
pub(crate) const ALPN_HQ: &[u8] = b"hq-interop";
/// ALPN of HTTP/3, used by the http3 case.
pub(crate) const ALPN_H3: &[u8] = b"h3";

/// The test cases this endpoint implements, named as the runner passes them in `TESTCASE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TestCase {
    Handshake,
    Transfer,
    Multiconnect,
    Chacha20,
    Retry,
    Resumption,
    ZeroRtt,
    Http3,
    KeyUpdate,
    ConnectionMigration,
}

impl TestCase {
    /// `None` for names this endpoint does not implement (v2, ecn, versionnegotiation, anything unknown).
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "handshake" => Self::Handshake,
            "transfer" => Self::Transfer,
            "multiconnect" => Self::Multiconnect,
            "chacha20" => Self::Chacha20,
            "retry" => Self::Retry,
            "resumption" => Self::Resumption,
            "zerortt" => Self::ZeroRtt,
            "http3" => Self::Http3,
            "keyupdate" => Self::KeyUpdate,
            "connectionmigration" => Self::ConnectionMigration,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// Everything the environment tells the endpoint.
#[derive(Debug)]
pub(crate) struct Settings {
    pub testcase: TestCase,
    /// Client: the URLs to download.
    pub requests: Vec<String>,
    /// Server: the directory whose files are served.
    pub www: PathBuf,
    /// Client: where each download is saved under its URL path's basename.
    pub downloads: PathBuf,
    /// Holds `cert.pem` (chain) and `priv.key`.
    pub certs: PathBuf,
    /// Server: the address to bind.
    pub listen: SocketAddr,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let role = match std::env::var("ROLE").as_deref() {
        Ok("server") => Role::Server,
        Ok("client") => Role::Client,
        other => {
            eprintln!("quinn-interop: ROLE must be server or client, got {other:?}");
            return ExitCode::from(1);
        }
    };
    let testcase_name = env_or("TESTCASE", "");
    let Some(testcase) = TestCase::parse(&testcase_name) else {
        eprintln!("quinn-interop: test case {testcase_name:?} is not supported");
        return ExitCode::from(EXIT_UNSUPPORTED);
    };
    let settings = match settings(testcase) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("quinn-interop: {error:#}");
            return ExitCode::from(1);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("quinn-interop: cannot start the tokio runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        match role {
            Role::Server => server::run(&settings).await,
            Role::Client => client::run(&settings).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quinn-interop: {role:?} {testcase_name} failed: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn settings(testcase: TestCase) -> anyhow::Result<Settings> {
    let listen = env_or("LISTEN", "[::]:443");
    let listen = listen.parse().with_context(|| format!("LISTEN={listen:?} is not a socket address"))?;
    let requests = env_or("REQUESTS", "").split_whitespace().map(str::to_owned).collect();
    Ok(Settings {
        testcase,
        requests,
        www: env_or("WWW", "/www").into(),
        downloads: env_or("DOWNLOADS", "/downloads").into(),
        certs: env_or("CERTS", "/certs").into(),
        listen,
    })
}

/// A request URL split into what the client needs: `https://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host as written (brackets removed for IPv6): the TLS server name.
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("https://") else { bail!("{url}: only https:// URLs are supported") };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else { bail!("{url}: unclosed [ in host") };
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port.parse().with_context(|| format!("{url}: bad port"))?,
            None => 443,
        };
        if host.is_empty() {
            bail!("{url}: empty host");
        }
        Ok(Self { host: host.to_owned(), port, path: path.to_owned() })
    }

    /// The file name a download is saved under: the last path segment.
    pub(crate) fn file_name(&self) -> anyhow::Result<&str> {
        match self.path.rsplit('/').next() {
            Some(name) if !name.is_empty() && name != "." && name != ".." => Ok(name),
            _ => bail!("{}: the URL path has no file name", self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let target = Target::parse("https://127.0.0.1:4433/abc").unwrap();
        assert_eq!((target.host.as_str(), target.port, target.path.as_str()), ("127.0.0.1", 4433, "/abc"));
        let target = Target::parse("https://[::1]:443/dir/file.bin").unwrap();
        assert_eq!((target.host.as_str(), target.port, target.file_name().unwrap()), ("::1", 443, "file.bin"));
        let target = Target::parse("https://server4").unwrap();
        assert_eq!((target.port, target.path.as_str()), (443, "/"));
        assert!(target.file_name().is_err());
        assert!(Target::parse("http://x/y").is_err());
    }

    #[test]
    fn unknown_cases_are_unsupported() {
        assert_eq!(TestCase::parse("zerortt"), Some(TestCase::ZeroRtt));
        for name in ["v2", "ecn", "versionnegotiation", "", "nonsense"] {
            assert_eq!(TestCase::parse(name), None);
        }
    }
}
