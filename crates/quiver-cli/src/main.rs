//! `quiver`: QUIC and HTTP/3 servers and clients from the shell.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage.

/// Prints a line to standard output, ignoring errors: a server must not die because whoever started
/// it closed its output (`println!` panics on a closed pipe).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod admission;
mod bench;
mod doq;
mod get;
mod identity;
mod logging;
mod masque;
mod observe;
mod serve;

use std::process::ExitCode;

use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Load-test an HTTP/3 server (h2load-style); checks every status and body length.
    Bench(bench::BenchArgs),
    /// DNS over QUIC (RFC 9250): `doq serve` forwards to a resolver, `doq query` asks like dig.
    #[command(subcommand)]
    Doq(doq::DoqCommand),
    /// MASQUE CONNECT-UDP (RFC 9298): `masque proxy`, `masque client` (forwards a local UDP port), `masque bench`.
    Masque(masque::MasqueArgs),
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
    let logs = logging::init(filter);
    let result = match cli.command {
        // The load generator sizes its own runtime (-t).
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => with_runtime_on_workers(serve::run(args)),
        Command::Get(args) => with_runtime(get::run(args)),
        Command::Masque(args) => with_runtime(masque::run(args)),
        Command::Doq(command) => with_runtime(doq::run(command)),
        Command::Version => {
            println!(
                "quiver {} (QUIC version 0x{:08x}, HTTP/3)",
                env!("CARGO_PKG_VERSION"),
                quiver::quiche::PROTOCOL_VERSION
            );
            Ok(())
        }
    };
    // Buffered log lines first, then the error that ended the command.
    drop(logs);
    exit_code(result)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().map_err(|err| anyhow::anyhow!("cannot start the async runtime: {err}"))
}

fn with_runtime(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    runtime()?.block_on(work)
}

/// Like [`with_runtime`], but the work runs as a task on the runtime's worker threads instead of on
/// the main thread. A server's accept loop then shares a core's worker with the connections it starts:
/// on one core, a new connection no longer wakes a second thread to be started.
fn with_runtime_on_workers(
    work: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match tokio::spawn(work).await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(anyhow::anyhow!("the server task ended unexpectedly: {err}")),
        }
    })
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap's own consistency checks (duplicate flags, bad defaults) over every subcommand: they would
    /// otherwise surface only when a user runs the command.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
