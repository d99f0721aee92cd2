//! The certificate options the commands share: a server's own certificate (`--cert`, `--key`, and
//! the self-signed fallback with its SPKI pin), and how a client verifies its peer's (`-k`,
//! `--cacert`).

use std::path::PathBuf;

use quiver::TlsIdentity;

/// Names a generated self-signed certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// `--cert` / `--key`; flatten into a server command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentityArgs {
    /// PEM certificate chain (with --key); without both, a self-signed certificate is generated.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key (with --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

/// `-k` / `--cacert`; flatten into a client command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientTlsArgs {
    /// Do not verify the server's (or proxy's) certificate (development servers only).
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// Trust the certificates in this PEM file (for example a development server's own certificate).
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// Applies the options to a client configuration.
    pub fn apply(&self, mut config: quiver::ClientConfigBuilder) -> quiver::ClientConfigBuilder {
        if self.insecure {
            config = config.insecure_skip_verification();
        }
        if let Some(cacert) = &self.cacert {
            config = config.trust_pem_file(cacert);
        }
        config
    }
}

/// What to add to a connection error when the handshake failed on the certificate: how to trust a
/// development server. Empty for other errors.
pub fn tls_hint(error: &quiver::ConnectError) -> &'static str {
    match error {
        quiver::ConnectError::HandshakeFailed(quiver::ConnectionError::LocallyClosed(close))
            if close.tls_alert().is_some() =>
        {
            "\n  (for a development server: --cacert CERT.pem to trust its certificate, or -k to skip verification)"
        }
        _ => "",
    }
}

/// A server's certificate: loaded from the given files, or generated.
pub struct ServerIdentity {
    pub identity: TlsIdentity,
    /// True when the certificate was generated (nobody trusts it without its pin).
    pub self_signed: bool,
}

impl IdentityArgs {
    /// Loads `--cert`/`--key`, or generates a self-signed certificate for [`SELF_SIGNED_NAMES`].
    ///
    /// # Errors
    /// The files cannot be read or do not hold a matching certificate and key.
    pub fn load(&self) -> anyhow::Result<ServerIdentity> {
        Ok(match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                ServerIdentity { identity: TlsIdentity::from_pem_files(cert, key)?, self_signed: false }
            }
            _ => ServerIdentity { identity: TlsIdentity::self_signed(&SELF_SIGNED_NAMES)?, self_signed: true },
        })
    }
}

impl ServerIdentity {
    /// The line that tells a user what a generated certificate is and how clients can pin it; `None`
    /// for a certificate loaded from files.
    pub fn self_signed_notice(&self) -> Option<String> {
        self.self_signed.then(|| {
            format!(
                "self-signed certificate for {}; SPKI SHA-256 pin: {}",
                SELF_SIGNED_NAMES.join(", "),
                self.identity.spki_sha256_base64()
            )
        })
    }
}
