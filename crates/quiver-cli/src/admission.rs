//! The address-validation and admission options of the server commands: `--retry`, `--secret-file`
//! (all of them) and `--max-connections-per-source` (`serve` and `masque proxy`; `doq serve` has its
//! own flag with a default).

use std::num::NonZeroUsize;
use std::path::PathBuf;

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
        let config = config.address_validation(self.retry);
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
