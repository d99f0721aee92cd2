//! `quiver`: QUIC and HTTP/3 servers and clients from the shell.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage.

mod get;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// QUIC and HTTP/3 on Tokio, from the shell.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
struct Cli {
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `quiver=debug`. Logs go to standard error.
    #[arg(long, global = true, env = "RUST_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve HTTP/3: a directory of files, or the embedded demo site (with /bytes/N).
    Serve(serve::ServeArgs),
    /// Fetch a URL over HTTP/3 and write the body to standard output.
    Get(get::GetArgs),
    /// Print the version of quiver and of the QUIC protocol it speaks.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    let filter = cli.log.as_deref().unwrap_or(default_level);
    let filter = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("quiver: invalid --log filter {filter:?}: {err}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("quiver: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::Version => {
                println!(
                    "quiver {} (QUIC version 0x{:08x}, HTTP/3)",
                    env!("CARGO_PKG_VERSION"),
                    quiver::quiche::PROTOCOL_VERSION
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<get::UsageError>() => {
            eprintln!("quiver: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("quiver: {err:#}");
            ExitCode::from(1)
        }
    }
}
