//! `quiver`: QUIC servers and clients from the shell.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage.

use clap::Parser;

/// QUIC and HTTP/3 on Tokio, from the shell.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
struct Cli {
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `quiver=debug`.
    #[arg(long, global = true, default_value = "info", env = "RUST_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the QUIC versions and library versions this build speaks.
    Version,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .init();
    match cli.command {
        Command::Version => {
            println!("quiver {} (QUIC version 0x{:08x})", env!("CARGO_PKG_VERSION"), quiver::quiche::PROTOCOL_VERSION);
        }
    }
}
