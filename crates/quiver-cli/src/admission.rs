//! The address-validation and admission options of the server commands: `--retry`, `--secret-file`
//! (all of them) and `--max-connections-per-source` (those without a protocol-level cap).

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context as _;
use quiver::{AddressValidation, ServerConfigBuilder, ServerSecret};

/// Flatten into a server command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionArgs {
    /// When clients must prove their address with a Retry round trip before a handshake: `always`,
    /// `never`, or a number N (only while more than N handshakes are in flight).
    #[arg(long, value_name = "always|never|N", default_value = "256")]
    pub retry: RetryPolicy,
    /// File whose first 32 bytes are the server secret (Retry tokens, stateless resets, session
    /// tickets). Share it across restarts and across a fleet: a restarted server then resets its old
    /// clients at once and accepts their session tickets. Default: a fresh random secret per process.
    /// Create one with `head -c 32 /dev/urandom > secret.key`.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

/// `--max-connections-per-source` at the QUIC level, for the commands that have no protocol-level cap
/// of their own (`quiver doq serve` has one, answered with DOQ_EXCESSIVE_LOAD).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceLimitArgs {
    /// Connections one client address may hold at once (IPv6: per /64); more are refused with
    /// CONNECTION_REFUSED.
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<usize>,
}

impl SourceLimitArgs {
    /// Applies the limit, if given, to a server configuration.
    pub fn apply(&self, config: ServerConfigBuilder) -> ServerConfigBuilder {
        match self.max_connections_per_source {
            Some(max) => config.max_connections_per_source(max.max(1)),
            None => config,
        }
    }
}

/// `--retry`'s value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy(pub AddressValidation);

impl FromStr for RetryPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(Self(AddressValidation::Always)),
            "never" => Ok(Self(AddressValidation::Never)),
            number => number
                .parse::<usize>()
                .map(|handshakes_in_flight| Self(AddressValidation::UnderLoad { handshakes_in_flight }))
                .map_err(|_| format!("`{number}` is not `always`, `never` or a number of handshakes")),
        }
    }
}

impl AdmissionArgs {
    /// Applies the options to a server configuration.
    ///
    /// # Errors
    /// The secret file cannot be read or holds fewer than 32 bytes.
    pub fn apply(&self, mut config: ServerConfigBuilder) -> anyhow::Result<ServerConfigBuilder> {
        config = config.address_validation(self.retry.0);
        if let Some(path) = &self.secret_file {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read the secret file {}", path.display()))?;
            let Some(material) = bytes.get(..32).and_then(|bytes| <&[u8; 32]>::try_from(bytes).ok()) else {
                anyhow::bail!(
                    "the secret file {} holds {} bytes, fewer than 32 (create one with `head -c 32 /dev/urandom > FILE`)",
                    path.display(),
                    bytes.len()
                );
            };
            config = config.secret(ServerSecret::from_bytes(material));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policies_parse() {
        assert_eq!("always".parse(), Ok(RetryPolicy(AddressValidation::Always)));
        assert_eq!("never".parse(), Ok(RetryPolicy(AddressValidation::Never)));
        assert_eq!("64".parse(), Ok(RetryPolicy(AddressValidation::UnderLoad { handshakes_in_flight: 64 })));
        assert!("sometimes".parse::<RetryPolicy>().unwrap_err().contains("sometimes"));
    }
}
