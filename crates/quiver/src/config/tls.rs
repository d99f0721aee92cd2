//! TLS identities (certificate chain + private key) and trust anchors, held in memory.
//!
//! Everything is parsed up front so a bad file fails at configuration time with the file's name, never
//! during a handshake.

use std::path::{Path, PathBuf};

use boring::pkey::{PKey, Private};
use boring::x509::X509;

use crate::error::ConfigError;

/// A certificate chain and its private key, for the server side of TLS.
///
/// Cheap to clone: the parsed certificates and key are reference counted.
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.chain.len())
            .field("spki_sha256", &self.spki_sha256_base64())
            .finish_non_exhaustive()
    }
}

pub(crate) fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::ReadFile { what, path: path.to_path_buf(), source })
}

fn parse_certificates(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<X509>, ConfigError> {
    let certs = X509::stack_from_pem(pem).map_err(|err| ConfigError::InvalidPem {
        what,
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    if certs.is_empty() {
        return Err(ConfigError::InvalidPem {
            what,
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

impl TlsIdentity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, RSA or EC).
    ///
    /// # Errors
    /// [`ConfigError::ReadFile`] naming the file that could not be read, [`ConfigError::InvalidPem`] for
    /// content that does not parse, [`ConfigError::KeyMismatch`] when the key is not the leaf's.
    pub fn from_pem_files(cert_path: impl AsRef<Path>, key_path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let cert_path = cert_path.as_ref();
        let key_path = key_path.as_ref();
        let cert_pem = read_file("certificate", cert_path)?;
        let key_pem = read_file("private key", key_path)?;
        Self::parse(&cert_pem, cert_path, &key_pem, key_path)
    }

    /// Parses a PEM certificate chain and PEM private key held in memory.
    ///
    /// # Errors
    /// As [`TlsIdentity::from_pem_files`], with `<memory>` as the path.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, ConfigError> {
        let memory = Path::new("<memory>");
        Self::parse(cert_pem, memory, key_pem, memory)
    }

    fn parse(cert_pem: &[u8], cert_path: &Path, key_pem: &[u8], key_path: &Path) -> Result<Self, ConfigError> {
        let chain = parse_certificates("certificate", cert_path, cert_pem)?;
        let key = PKey::private_key_from_pem(key_pem).map_err(|err| ConfigError::InvalidPem {
            what: "private key",
            path: key_path.to_path_buf(),
            reason: err.to_string(),
        })?;
        let identity = Self { chain, key };
        identity.check_key_matches()?;
        Ok(identity)
    }

    /// Generates a self-signed certificate (ECDSA P-256) for the given DNS names and IP addresses.
    ///
    /// Meant for development and tests: clients must either trust this exact certificate
    /// ([`ClientConfigBuilder::trust_certificate_der`](crate::ClientConfigBuilder::trust_certificate_der)),
    /// pin its public key ([`TlsIdentity::spki_sha256_base64`]) or skip verification.
    ///
    /// # Errors
    /// [`ConfigError::SelfSigned`] if generation fails (for example an empty name).
    pub fn self_signed<S: AsRef<str>>(names: &[S]) -> Result<Self, ConfigError> {
        let names: Vec<String> = names.iter().map(|name| name.as_ref().to_owned()).collect();
        let certified =
            rcgen::generate_simple_self_signed(names).map_err(|err| ConfigError::SelfSigned(err.to_string()))?;
        Self::from_pem(certified.cert.pem().as_bytes(), certified.signing_key.serialize_pem().as_bytes())
    }

    fn check_key_matches(&self) -> Result<(), ConfigError> {
        let leaf_key = self.chain[0].public_key().map_err(|err| ConfigError::Tls(err.to_string()))?;
        if leaf_key.public_eq(&self.key) { Ok(()) } else { Err(ConfigError::KeyMismatch) }
    }

    /// The leaf certificate in DER form.
    pub fn certificate_der(&self) -> Vec<u8> {
        self.chain[0].to_der().unwrap_or_default()
    }

    /// The whole chain, leaf first, in PEM form.
    pub fn certificate_chain_pem(&self) -> String {
        self.chain
            .iter()
            .filter_map(|cert| cert.to_pem().ok())
            .map(|pem| String::from_utf8_lossy(&pem).into_owned())
            .collect()
    }

    /// Base64 of the SHA-256 of the leaf's SubjectPublicKeyInfo: the value Chromium's
    /// `--ignore-certificate-errors-spki-list` and HPKP-style pinning expect.
    pub fn spki_sha256_base64(&self) -> String {
        let spki = self.chain[0].public_key().and_then(|key| key.public_key_to_der()).unwrap_or_default();
        let digest = boring::hash::hash(boring::hash::MessageDigest::sha256(), &spki)
            .map(|digest| digest.to_vec())
            .unwrap_or_default();
        boring::base64::encode_block(&digest)
    }

    pub(crate) fn install(&self, ssl: &mut boring::ssl::SslContextBuilder) -> Result<(), ConfigError> {
        let tls = |err: boring::error::ErrorStack| ConfigError::Tls(err.to_string());
        ssl.set_certificate(&self.chain[0]).map_err(tls)?;
        for intermediate in &self.chain[1..] {
            ssl.add_extra_chain_cert(intermediate.clone()).map_err(tls)?;
        }
        ssl.set_private_key(&self.key).map_err(tls)?;
        ssl.check_private_key().map_err(|_| ConfigError::KeyMismatch)
    }
}

/// Certificates a client trusts in addition to (or instead of) the system's roots.
#[derive(Clone, Default)]
pub(crate) struct TrustAnchors {
    pub(crate) extra: Vec<X509>,
    pub(crate) use_system_roots: bool,
}

impl TrustAnchors {
    pub(crate) fn add_pem_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let pem = read_file("CA bundle", path)?;
        self.extra.extend(parse_certificates("CA bundle", path, &pem)?);
        Ok(())
    }

    pub(crate) fn add_der(&mut self, der: &[u8]) -> Result<(), ConfigError> {
        let cert = X509::from_der(der).map_err(|err| ConfigError::InvalidPem {
            what: "trusted certificate",
            path: PathBuf::from("<memory>"),
            reason: err.to_string(),
        })?;
        self.extra.push(cert);
        Ok(())
    }

    pub(crate) fn install(&self, ssl: &mut boring::ssl::SslContextBuilder) -> Result<(), ConfigError> {
        let tls = |err: boring::error::ErrorStack| ConfigError::Tls(err.to_string());
        if self.use_system_roots {
            ssl.set_default_verify_paths().map_err(tls)?;
        }
        for cert in &self.extra {
            ssl.cert_store_mut().add_cert(cert.clone()).map_err(tls)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_identity_round_trips_through_pem() {
        let identity = TlsIdentity::self_signed(&["localhost"]).expect("generate");
        let pin = identity.spki_sha256_base64();
        assert_eq!(pin.len(), 44, "base64 of 32 bytes");
        let again = TlsIdentity::from_pem(
            identity.certificate_chain_pem().as_bytes(),
            &identity.key.private_key_to_pem_pkcs8().unwrap(),
        )
        .expect("parse back");
        assert_eq!(again.spki_sha256_base64(), pin);
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = TlsIdentity::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("cannot read certificate /nonexistent/cert.pem"), "{message}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let first = TlsIdentity::self_signed(&["a.example"]).unwrap();
        let second = TlsIdentity::self_signed(&["b.example"]).unwrap();
        let err = TlsIdentity::from_pem(
            first.certificate_chain_pem().as_bytes(),
            &second.key.private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::KeyMismatch), "{err}");
    }

    #[test]
    fn garbage_pem_is_rejected_with_reason() {
        let err = TlsIdentity::from_pem(b"not a pem", b"nope").unwrap_err();
        assert!(matches!(err, ConfigError::InvalidPem { what: "certificate", .. }), "{err}");
    }
}
