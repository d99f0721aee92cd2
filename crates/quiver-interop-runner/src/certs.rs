//! Certificate chains for the server, built like the interop runner's `certs.sh`: a root CA (not sent),
//! `length - 1` intermediates and a leaf; `cert.pem` holds leaf first, then the intermediates, and
//! `priv.key` the leaf's key. Chains longer than one give the leaf 20 extra 250-character DNS names, so the
//! amplificationlimit case's chain is large enough to exceed the server's 3x budget.

use std::path::Path;

use anyhow::{Context, Result};
use rand::Rng;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Names the leaf is valid for (the runner's, plus loopback).
const LEAF_NAMES: &[&str] = &["server", "server4", "server6", "server46", "localhost"];

/// Writes `cert.pem` and `priv.key` for a chain of `length` certificates (leaf included) into `dir`.
pub fn write_chain(dir: &Path, length: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let length = length.max(1);
    let root_key = KeyPair::generate()?;
    let mut root_params = CertificateParams::new(Vec::<String>::new())?;
    root_params.distinguished_name.push(DnType::OrganizationName, "quiver interop runner root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root_cert = root_params.self_signed(&root_key)?;
    std::fs::write(dir.join("ca.pem"), root_cert.pem())?;
    let mut issuer = Issuer::new(root_params, root_key);
    let mut chain_pems = Vec::new();
    for index in 1..=length {
        let key = KeyPair::generate()?;
        let leaf = index == length;
        let mut names: Vec<String> = Vec::new();
        if leaf {
            names.extend(LEAF_NAMES.iter().map(|n| n.to_string()));
            if length > 1 {
                let mut rng = rand::rng();
                names.extend(
                    (0..20).map(|_| (0..250).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect::<String>()),
                );
            }
        }
        let mut params = CertificateParams::new(names)?;
        if leaf {
            params.distinguished_name.push(DnType::OrganizationName, "quiver interop runner leaf");
            params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
            params.subject_alt_names.push(rcgen::SanType::IpAddress("::1".parse()?));
        } else {
            params
                .distinguished_name
                .push(DnType::OrganizationName, format!("quiver interop runner intermediate {index}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = params.signed_by(&key, &issuer)?;
        chain_pems.push(cert.pem());
        if leaf {
            std::fs::write(dir.join("priv.key"), key.serialize_pem())?;
        } else {
            issuer = Issuer::new(params, key);
        }
    }
    chain_pems.reverse();
    std::fs::write(dir.join("cert.pem"), chain_pems.concat())
        .with_context(|| format!("cannot write {}", dir.join("cert.pem").display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_has_the_asked_length_and_a_key() {
        let dir = std::env::temp_dir().join(format!("quiver-certs-test-{}", std::process::id()));
        write_chain(&dir, 9).unwrap();
        let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 9);
        let key = std::fs::read_to_string(dir.join("priv.key")).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        // 9 certificates and the long names: well over the 7500 B the amplification check needs.
        assert!(pem.len() > 10_000, "{}", pem.len());
        write_chain(&dir, 1).unwrap();
        let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
