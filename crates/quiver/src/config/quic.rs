//! The one place a `quiche::Config` is made: the TLS context (with the role's identity or trust
//! anchors installed by the caller), the ALPN list, the transport options and the key-log file.
//!
//! Server and client configurations both come through [`new_quiche_config`]; nothing else in the
//! crate calls `quiche::Config::new`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::invalid;
use super::transport::TransportConfig;
use crate::error::ConfigError;

/// Longest ALPN identifier TLS can carry (its length is one byte, RFC 7301 §3.1).
const MAX_ALPN_BYTES: usize = 255;

/// The TLS 1.3 cipher suites BoringSSL implements: IANA name and code point (RFC 8446 §B.4).
pub(crate) const TLS13_CIPHERS: [(&str, u16); 3] =
    [("TLS_AES_128_GCM_SHA256", 0x1301), ("TLS_AES_256_GCM_SHA384", 0x1302), ("TLS_CHACHA20_POLY1305_SHA256", 0x1303)];

/// Restricts the TLS 1.3 cipher suites of `ssl` to `names`, in that order of preference; empty keeps
/// BoringSSL's default list.
fn set_tls13_ciphers(ssl: &mut boring::ssl::SslContextBuilder, names: &[String]) -> Result<(), ConfigError> {
    if names.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let Some(&(_, id)) = TLS13_CIPHERS.iter().find(|(known, _)| known.eq_ignore_ascii_case(name)) else {
            let known: Vec<&str> = TLS13_CIPHERS.iter().map(|(known, _)| *known).collect();
            return Err(invalid(
                "transport.tls13_ciphers",
                format!("names an unknown TLS 1.3 cipher suite {name:?} (known: {})", known.join(", ")),
            ));
        };
        if ids.contains(&id) {
            return Err(invalid("transport.tls13_ciphers", format!("names {name:?} twice")));
        }
        ids.push(id);
    }
    // `boring` does not wrap this call. SAFETY: the context pointer is valid for the builder's
    // lifetime; BoringSSL copies `ids` (`ids.len()` code points) and reads no flags (null).
    let accepted =
        unsafe { boring_sys::SSL_CTX_set1_tls13_ciphers(ssl.as_ptr(), ids.as_ptr(), std::ptr::null(), ids.len()) };
    if accepted != 1 {
        return Err(invalid("transport.tls13_ciphers", format!("was refused by BoringSSL: {names:?}")));
    }
    Ok(())
}

/// Checks that at least one ALPN identifier is set and each fits in TLS.
pub(super) fn validate_alpn(alpn: &[Vec<u8>]) -> Result<(), ConfigError> {
    if alpn.is_empty() {
        return Err(ConfigError::MissingAlpn);
    }
    match alpn.iter().find(|id| id.is_empty() || id.len() > MAX_ALPN_BYTES) {
        Some(bad) => Err(ConfigError::InvalidAlpn(String::from_utf8_lossy(bad).into_owned())),
        None => Ok(()),
    }
}

/// A quiche configuration with TLS set up by `install_tls` (the server's identity or the client's
/// trust anchors), then the shared pieces: handshake recording, key-exchange groups, ALPN, transport.
pub(super) fn new_quiche_config(
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
        ssl.set_curves_list(&list).map_err(|err| {
            invalid("transport.key_exchange_groups", format!("names an unsupported group in {list:?}: {err}"))
        })?;
    }
    set_tls13_ciphers(&mut ssl, &transport.tls13_ciphers)?;
    let mut config = quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, ssl)?;
    let protocols: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
    config.set_application_protos(&protocols)?;
    transport.apply(&mut config);
    if transport.keylog_path.is_some() {
        config.log_keys();
    }
    Ok(config)
}

/// Opens the key-log file named by the transport options, if any, for appending.
pub(super) fn open_keylog(path: Option<&Path>) -> Result<Option<KeyLog>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ConfigError::Keylog { path: path.to_path_buf(), source })?;
    Ok(Some(KeyLog(Arc::new(Mutex::new(file)))))
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
