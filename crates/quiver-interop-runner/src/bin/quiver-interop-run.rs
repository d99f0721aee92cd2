//! `quiver-interop-run`: runs interop cases between endpoints through the impairing relay and prints a
//! markdown matrix. Exit 0 when no cell failed (unsupported and skipped are not failures), 1 otherwise,
//! 2 on bad usage.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

use quiver_interop_runner::cases::{self, ALL_CASES};
use quiver_interop_runner::endpoints::EndpointTable;
use quiver_interop_runner::report;
use quiver_interop_runner::run::{Outcome, RunOptions, run_cell};

#[derive(Parser, Debug)]
#[command(
    name = "quiver-interop-run",
    about = "Run QUIC interop cases between endpoint processes through an impairing UDP relay"
)]
struct Cli {
    /// Server endpoint(s), comma separated: quiver, aioquic, quinn, or a name given with --endpoint.
    #[arg(long, value_delimiter = ',', default_value = "quiver")]
    server: Vec<String>,
    /// Client endpoint(s), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "quiver")]
    client: Vec<String>,
    /// Quiver as server against every peer as client, and quiver as client against every peer as server.
    #[arg(long)]
    matrix: bool,
    /// Peers for --matrix.
    #[arg(long, value_delimiter = ',', default_value = "aioquic,quinn")]
    peers: Vec<String>,
    /// Cases: all, or a comma separated list.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    cases: Vec<String>,
    /// Smaller files and fewer connections where a case allows (said in the report).
    #[arg(long)]
    quick: bool,
    /// Seed of the impairments and files (printed; pass it again to replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep every cell's files, logs, key logs and pcaps under this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Path of the quiver-interop binary (default: target dir, release then debug).
    #[arg(long)]
    quiver_bin: Option<PathBuf>,
    /// Path of the quinn-interop binary (default: target dir, release then debug).
    #[arg(long)]
    quinn_bin: Option<PathBuf>,
    /// Repository root (for interop/peers/aioquic_endpoint.py); default: the current directory.
    #[arg(long)]
    repo_root: Option<PathBuf>,
    /// Cargo target dir; default: $CARGO_TARGET_DIR, else <repo root>/target.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Extra endpoint NAME=COMMAND (command split on spaces); repeatable.
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// Check files and exit codes only, no QUIC properties (for non-QUIC stub endpoints).
    #[arg(long)]
    files_only: bool,
    /// Also write the report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("quiver-interop-run: {error:#}");
            std::process::exit(2);
        }
    }
}

async fn run(cli: Cli) -> Result<bool> {
    let seed = cli.seed.unwrap_or_else(rand::random);
    eprintln!("quiver-interop-run: seed {seed} (replay with --seed {seed})");
    let case_names: Vec<String> = if cli.cases.iter().any(|c| c == "all") {
        ALL_CASES.iter().map(|c| c.to_string()).collect()
    } else {
        for name in &cli.cases {
            if !ALL_CASES.contains(&name.as_str()) {
                bail!("unknown case {name:?}; cases are: {}", ALL_CASES.join(","));
            }
        }
        cli.cases.clone()
    };
    let pairs: Vec<(String, String)> = if cli.matrix {
        let mut pairs: Vec<(String, String)> = cli.peers.iter().map(|p| ("quiver".to_string(), p.clone())).collect();
        pairs.extend(cli.peers.iter().map(|p| (p.clone(), "quiver".to_string())));
        pairs
    } else {
        cli.server.iter().flat_map(|s| cli.client.iter().map(move |c| (s.clone(), c.clone()))).collect()
    };
    let repo_root = match cli.repo_root {
        Some(root) => root,
        None => std::env::current_dir()?,
    };
    let target_dir = cli
        .target_dir
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| repo_root.join("target"));
    let mut custom = Vec::new();
    for spec in &cli.endpoints {
        let (name, command) = spec.split_once('=').context("--endpoint wants NAME=COMMAND")?;
        let command: Vec<String> = command.split_whitespace().map(String::from).collect();
        if command.is_empty() {
            bail!("--endpoint {name}= has an empty command");
        }
        custom.push((name.to_string(), command));
    }
    let endpoints =
        EndpointTable { repo_root, target_dir, quiver_bin: cli.quiver_bin, quinn_bin: cli.quinn_bin, custom };
    for (server, client) in &pairs {
        endpoints.resolve(server)?;
        endpoints.resolve(client)?;
    }
    if let Some(keep) = &cli.keep {
        std::fs::create_dir_all(keep).with_context(|| format!("cannot create {}", keep.display()))?;
    }
    let options = RunOptions { quick: cli.quick, seed, keep: cli.keep.clone(), files_only: cli.files_only, endpoints };

    let mut cells = Vec::new();
    for (index, name) in case_names.iter().enumerate() {
        // Same files for every pair of a case, different per case.
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(index as u64));
        let case = cases::case(name, cli.quick, &mut rng).context("case table out of sync")?;
        for (server, client) in &pairs {
            let cell = run_cell(&case, server, client, &options).await;
            eprintln!(
                "{name} / server {server} / client {client}: {} ({:.1}s)",
                report::reason(&cell),
                cell.elapsed.as_secs_f64()
            );
            cells.push(cell);
        }
    }
    let text = report::markdown(&case_names, &pairs, &cells, seed, cli.quick);
    print!("{text}");
    if let Some(path) = &cli.report {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(!cells.iter().any(|c| matches!(c.outcome, Outcome::Fail(_))))
}
