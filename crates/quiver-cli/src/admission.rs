//! The address-validation and admission options of the server commands: `--retry`, `--secret-file`,
//! `--handshake-timeout-ms`, `--max-handshakes-per-source` (all of them) and `--max-connections-per-source` (`serve` and `masque proxy`; `doq serve` has its
//! own flag with a default).

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use quiver::{AddressValidation, ServerConfigBuilder};

/// Flatten into a server command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionArgs {
    /// When clients must prove their address with a Retry round trip before a handshake: `always`,
    /// `never`, or a number N (only while more than N handshakes are in flight).
    #[arg(long, value_name = "always|never|N", default_value = "256")]
    pub retry: AddressValidation,
    /// File whose first 32 bytes are the server secret (Retry tokens, stateless resets, session
    /// tickets). Share it across restarts and across a fleet: a restarted server then resets its old
    /// clients at once and accepts their session tickets. Default: a fresh random secret per process.
    /// Create one with `head -c 32 /dev/urandom > secret.key`.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// How long a client may take to complete its handshake before the server drops it and frees its
    /// slot. Default: 10000 (10 s).
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: Option<NonZeroU64>,
    /// Handshakes one client address (IPv6: one /64) may have in flight at once; more get a Retry or
    /// are refused. Default: 1/16 of the handshakes the server allows in flight (256).
    #[arg(long, value_name = "N")]
    pub max_handshakes_per_source: Option<NonZeroUsize>,
}

/// `--max-connections-per-source` at the QUIC level, unlimited unless given (`quiver doq serve` sets
/// the same limit through its own flag, which has a default).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceLimitArgs {
    /// Connections one client address (IPv6: one /64) may hold at once; more are refused with
    /// CONNECTION_REFUSED.
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<NonZeroUsize>,
}

impl SourceLimitArgs {
    /// Applies the limit, if given, to a server configuration.
    pub fn apply(&self, config: ServerConfigBuilder) -> ServerConfigBuilder {
        match self.max_connections_per_source {
            Some(max) => config.max_connections_per_source(max.get()),
            None => config,
        }
    }
}

impl AdmissionArgs {
    /// Applies the options to a server configuration; the library reads and checks the secret file
    /// when the configuration is built.
    pub fn apply(&self, config: ServerConfigBuilder) -> ServerConfigBuilder {
        let mut config = config.address_validation(self.retry);
        if let Some(ms) = self.handshake_timeout_ms {
            config = config.handshake_timeout(Duration::from_millis(ms.get()));
        }
        if let Some(max) = self.max_handshakes_per_source {
            config = config.max_handshakes_per_source(max.get());
        }
        match &self.secret_file {
            Some(path) => config.secret_file(path),
            None => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policies_parse() {
        use clap::Parser as _;

        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            admission: AdmissionArgs,
        }
        let parse =
            |args: &[&str]| Command::try_parse_from([&["quiver"][..], args].concat()).map(|cmd| cmd.admission.retry);
        assert_eq!(parse(&[]).unwrap(), AddressValidation::UnderLoad { handshakes_in_flight: 256 });
        assert_eq!(parse(&["--retry", "always"]).unwrap(), AddressValidation::Always);
        assert_eq!(parse(&["--retry", "never"]).unwrap(), AddressValidation::Never);
        assert_eq!(parse(&["--retry", "64"]).unwrap(), AddressValidation::UnderLoad { handshakes_in_flight: 64 });
        assert!(parse(&["--retry", "sometimes"]).unwrap_err().to_string().contains("sometimes"));
    }
}
