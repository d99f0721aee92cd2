//! Running one cell (case x server x client): files, certificates, server process, relay, client
//! process, then the checks on what the relay recorded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::cases::{Case, Check};
use crate::checks::{self, CheckResult, CheckStatus};
use crate::endpoints::{Endpoint, EndpointTable};
use crate::record::Leg;
use crate::relay::{Relay, RelayConfig, RelayCounters};
use crate::tshark::{self, Captures};
use crate::{certs, pcap};

/// How long a server may take to print `LISTENING`.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server gets to exit after SIGTERM before SIGKILL.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(2);
/// Exit code of an endpoint that does not support a test case.
const EXIT_UNSUPPORTED: i32 = 127;

/// Options shared by every cell of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Smaller files where the case allows.
    pub quick: bool,
    /// Seed of the relay's impairments and of the files.
    pub seed: u64,
    /// Directory for every cell's files, logs and pcaps; kept after the run. `None`: a temporary one,
    /// removed after each cell.
    pub keep: Option<PathBuf>,
    /// Check files and exit codes only, not QUIC properties (for non-QUIC stub endpoints in tests).
    pub files_only: bool,
    /// Where endpoints are found.
    pub endpoints: EndpointTable,
}

/// Outcome of one cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Files and every check passed (some checks may be skipped; see the checks).
    Ok,
    /// Something failed, with the first reason.
    Fail(String),
    /// An endpoint exited 127.
    Unsupported(String),
    /// An endpoint is not available here.
    Skipped(String),
}

/// Everything a cell produced, for the report.
#[derive(Clone, Debug)]
pub struct CellResult {
    /// Case name.
    pub case: String,
    /// Server endpoint name.
    pub server: String,
    /// Client endpoint name.
    pub client: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Checks run (files first).
    pub checks: Vec<CheckResult>,
    /// Relay counters, if the relay ran.
    pub counters: Option<RelayCounters>,
    /// The relay's impairments.
    pub scenario: String,
    /// Set when `--quick` shrank the case.
    pub size_note: Option<String>,
    /// Wall time of the cell.
    pub elapsed: Duration,
    /// Kept directory of the cell.
    pub kept_dir: Option<PathBuf>,
}

impl CellResult {
    /// Names of checks that were skipped.
    pub fn skipped_checks(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|c| c.status == CheckStatus::Skipped).map(|c| c.name).collect()
    }
}

/// Runs `case` with `server` and `client`.
pub async fn run_cell(case: &Case, server: &str, client: &str, options: &RunOptions) -> CellResult {
    let started = Instant::now();
    let mut result = CellResult {
        case: case.name.to_string(),
        server: server.to_string(),
        client: client.to_string(),
        outcome: Outcome::Ok,
        checks: Vec::new(),
        counters: None,
        scenario: case.impairments.describe(),
        size_note: case.size_note.clone(),
        elapsed: Duration::ZERO,
        kept_dir: None,
    };
    let root = match &options.keep {
        Some(keep) => keep.clone(),
        None => std::env::temp_dir().join(format!("quiver-interop-{}", std::process::id())),
    };
    let dir = root.join(format!("{}--{}-{}", case.name, server, client));
    match run_in(case, server, client, options, &dir, &mut result).await {
        Ok(()) => {}
        Err(error) => {
            if result.outcome == Outcome::Ok {
                result.outcome = Outcome::Fail(format!("{error:#}"));
            }
        }
    }
    if options.keep.is_some() {
        result.kept_dir = Some(dir);
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result.elapsed = started.elapsed();
    result
}

struct CellDirs {
    www: PathBuf,
    downloads: PathBuf,
    certs: PathBuf,
    logs: PathBuf,
    server_keylog: PathBuf,
    client_keylog: PathBuf,
}

fn prepare_dirs(dir: &Path) -> Result<CellDirs> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let dirs = CellDirs {
        www: dir.join("www"),
        downloads: dir.join("downloads"),
        certs: dir.join("certs"),
        logs: dir.join("logs"),
        server_keylog: dir.join("logs/server.keylog"),
        client_keylog: dir.join("logs/client.keylog"),
    };
    for d in [&dirs.www, &dirs.downloads, &dirs.certs, &dirs.logs, &dir.join("qlog/server"), &dir.join("qlog/client")] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    Ok(dirs)
}

fn write_files(case: &Case, www: &Path, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17) ^ 0x5eed_f11e);
    for file in &case.files {
        let mut bytes = vec![0u8; file.size];
        rng.fill_bytes(&mut bytes);
        std::fs::write(www.join(&file.name), bytes).with_context(|| format!("cannot write {}", file.name))?;
    }
    Ok(())
}

fn command_for(endpoint: &[String]) -> Command {
    let mut command = Command::new(&endpoint[0]);
    command.args(&endpoint[1..]);
    command.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    command
}

fn exit_code_of(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".into(),
    }
}

async fn run_in(
    case: &Case,
    server: &str,
    client: &str,
    options: &RunOptions,
    dir: &Path,
    result: &mut CellResult,
) -> Result<()> {
    let (server_cmd, client_cmd) = match (options.endpoints.resolve(server)?, options.endpoints.resolve(client)?) {
        (Endpoint::Command(s), Endpoint::Command(c)) => (s, c),
        (Endpoint::Missing(why), _) | (_, Endpoint::Missing(why)) => {
            result.outcome = Outcome::Skipped(why);
            return Ok(());
        }
    };
    let dirs = prepare_dirs(dir)?;
    write_files(case, &dirs.www, options.seed)?;
    certs::write_chain(&dirs.certs, case.cert_chain)?;

    let loopback = if case.ipv6 { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
    let mut server_command = command_for(&server_cmd);
    server_command
        .env("ROLE", "server")
        .env("TESTCASE", case.server_testcase)
        .env("WWW", &dirs.www)
        .env("DOWNLOADS", dir.join("server-downloads"))
        .env("CERTS", &dirs.certs)
        .env("LISTEN", SocketAddr::new(loopback, 0).to_string())
        .env("SSLKEYLOGFILE", &dirs.server_keylog)
        .env("QLOGDIR", dir.join("qlog/server"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dirs.logs.join("server.stderr"))?);
    let mut server_child = server_command.spawn().with_context(|| format!("cannot start server {server_cmd:?}"))?;
    let server_addr = match wait_listening(&mut server_child, &dirs.logs.join("server.stdout")).await {
        Ok(addr) => addr,
        Err(error) => {
            let status = tokio::time::timeout(SERVER_STOP_GRACE, server_child.wait()).await;
            if let Ok(Ok(status)) = status {
                if status.code() == Some(EXIT_UNSUPPORTED) {
                    result.outcome =
                        Outcome::Unsupported(format!("server exited 127 for TESTCASE={}", case.server_testcase));
                    return Ok(());
                }
                bail!("server {}: {error:#}", exit_code_of(status));
            }
            stop_process(&mut server_child).await;
            return Err(error.context("server did not start"));
        }
    };
    // A server bound to the unspecified address is reached over loopback.
    let server_addr =
        if server_addr.ip().is_unspecified() { SocketAddr::new(loopback, server_addr.port()) } else { server_addr };

    let relay = Relay::start(RelayConfig {
        listen: SocketAddr::new(loopback, 0),
        server: server_addr,
        impairments: case.impairments.clone(),
        seed: options.seed,
    })
    .await?;
    let relay_addr = relay.local_addr();
    let requests: Vec<String> = case.files.iter().map(|f| format!("https://{relay_addr}/{}", f.name)).collect();

    let mut client_command = command_for(&client_cmd);
    client_command
        .env("ROLE", "client")
        .env("TESTCASE", case.client_testcase)
        .env("REQUESTS", requests.join(" "))
        .env("WWW", dir.join("client-www"))
        .env("DOWNLOADS", &dirs.downloads)
        .env("CERTS", &dirs.certs)
        .env("SSLKEYLOGFILE", &dirs.client_keylog)
        .env("QLOGDIR", dir.join("qlog/client"))
        .stdout(std::fs::File::create(dirs.logs.join("client.stdout"))?)
        .stderr(std::fs::File::create(dirs.logs.join("client.stderr"))?);
    let client_outcome = match client_command.spawn() {
        Err(error) => Err(anyhow!("cannot start client {client_cmd:?}: {error}")),
        Ok(mut child) => match tokio::time::timeout(case.timeout, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                stop_process(&mut child).await;
                Err(anyhow!("client timed out after {}s", case.timeout.as_secs()))
            }
        },
    };
    let server_status = server_child.try_wait().ok().flatten();
    stop_process(&mut server_child).await;
    let outcome = relay.stop().await?;
    result.counters = Some(outcome.counters);

    // Leave the evidence behind before judging.
    let client_pcap = dir.join("client-side.pcap");
    let server_pcap = dir.join("server-side.pcap");
    for (leg, path) in [(Leg::ClientSide, &client_pcap), (Leg::ServerSide, &server_pcap)] {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        pcap::write_leg(&outcome.record, leg, &mut out)?;
    }
    let keylog = dir.join("logs/combined.keylog");
    let mut combined = tokio::fs::File::create(&keylog).await?;
    for part in [&dirs.server_keylog, &dirs.client_keylog] {
        if let Ok(bytes) = tokio::fs::read(part).await {
            combined.write_all(&bytes).await?;
        }
    }
    combined.flush().await?;

    if let Some(status) = server_status
        && status.code() == Some(EXIT_UNSUPPORTED)
    {
        result.outcome = Outcome::Unsupported(format!("server exited 127 for TESTCASE={}", case.server_testcase));
        return Ok(());
    }
    match client_outcome {
        Err(error) => {
            result.outcome = Outcome::Fail(format!("{error:#}"));
            return Ok(());
        }
        Ok(status) if status.code() == Some(EXIT_UNSUPPORTED) => {
            result.outcome = Outcome::Unsupported(format!("client exited 127 for TESTCASE={}", case.client_testcase));
            return Ok(());
        }
        Ok(status) if !status.success() => {
            result.outcome = Outcome::Fail(format!("client {}", exit_code_of(status)));
        }
        Ok(_) => {}
    }
    if let Some(status) = server_status {
        result.checks.push(CheckResult::from_bool(
            "server_alive",
            false,
            format!("server ended during the run: {}", exit_code_of(status)),
        ));
    }

    result.checks.push(check_files(case, &dirs.www, &dirs.downloads));
    if !options.files_only {
        let captures = Captures {
            client_pcap,
            server_pcap,
            keylog,
            relay_port: relay_addr.port(),
            server_port: server_addr.port(),
        };
        let have_tshark = tshark::available().await;
        for check in &case.checks {
            result.checks.push(run_check(*check, &outcome.record, &captures, have_tshark).await);
        }
    }
    if result.outcome == Outcome::Ok
        && let Some(failed) = result.checks.iter().find(|c| c.status == CheckStatus::Failed)
    {
        result.outcome = Outcome::Fail(format!("{}: {}", failed.name, failed.detail));
    }
    Ok(())
}

async fn run_check(
    check: Check,
    record: &crate::record::Record,
    captures: &Captures,
    have_tshark: bool,
) -> CheckResult {
    let decrypted = |name: &'static str| (!have_tshark).then(|| tshark::missing(name));
    match check {
        Check::Handshakes(n) => checks::handshakes(record, n),
        Check::Retry => checks::retry(record),
        Check::ZeroRtt { max_one_rtt_bytes } => {
            let sent = checks::zero_rtt_sent(record);
            if sent.status != CheckStatus::Passed {
                return sent;
            }
            let one_rtt = match decrypted("zerortt_1rtt") {
                Some(skipped) => skipped,
                None => tshark::one_rtt_client_stream_bytes(captures, max_one_rtt_bytes).await,
            };
            CheckResult { name: "zerortt", detail: format!("{}; {}", sent.detail, one_rtt.detail), ..one_rtt }
        }
        Check::Amplification => {
            let amplification = checks::amplification(record);
            if amplification.status != CheckStatus::Passed {
                return amplification;
            }
            let chain = checks::server_handshake_bytes(record, 7500);
            CheckResult {
                name: "amplification",
                detail: format!("{}; {}", amplification.detail, chain.detail),
                ..chain
            }
        }
        Check::ClientMigrated => checks::client_migrated(record),
        Check::ServerPaths { addresses } => {
            let paths = checks::server_saw_new_paths(record, addresses);
            if paths.status != CheckStatus::Passed {
                return paths;
            }
            match decrypted("path_challenge") {
                Some(skipped) => {
                    CheckResult { name: "paths", detail: format!("{}; {}", paths.detail, skipped.detail), ..skipped }
                }
                None => {
                    let validation = tshark::path_validation(captures).await;
                    CheckResult {
                        name: "paths",
                        detail: format!("{}; {}", paths.detail, validation.detail),
                        ..validation
                    }
                }
            }
        }
        Check::Resumption => match decrypted("resumption") {
            Some(skipped) => skipped,
            None => {
                let scids: Vec<String> = checks::server_initial_scids(record)
                    .iter()
                    .map(|scid| scid.iter().map(|b| format!("{b:02x}")).collect())
                    .collect();
                tshark::resumption(captures, &scids).await
            }
        },
        Check::KeyUpdate => match decrypted("keyupdate") {
            Some(skipped) => skipped,
            None => tshark::key_update(captures).await,
        },
        Check::ChaCha20 => match decrypted("chacha20") {
            Some(skipped) => skipped,
            None => tshark::chacha20(captures).await,
        },
        Check::StreamLimit => match decrypted("stream_limit") {
            Some(skipped) => skipped,
            None => tshark::stream_limit(captures).await,
        },
    }
}

/// Every served file is in the downloads, byte-exact.
pub fn check_files(case: &Case, www: &Path, downloads: &Path) -> CheckResult {
    let mut problems = Vec::new();
    for file in &case.files {
        let short: String = file.name.chars().take(16).collect();
        match (std::fs::read(www.join(&file.name)), std::fs::read(downloads.join(&file.name))) {
            (Ok(expected), Ok(got)) if expected == got => {}
            (Ok(expected), Ok(got)) => problems.push(format!(
                "{short}: {} B, expected {} B{}",
                got.len(),
                expected.len(),
                if got.len() == expected.len() { " (content differs)" } else { "" }
            )),
            (_, Err(_)) => problems.push(format!("{short}: missing")),
            (Err(e), _) => problems.push(format!("{short}: cannot read the served file: {e}")),
        }
    }
    let total = case.files.len();
    let detail = if problems.is_empty() {
        format!("{total} file(s) byte-exact")
    } else {
        let shown: Vec<&String> = problems.iter().take(3).collect();
        format!("{} of {total} file(s) wrong: {shown:?}", problems.len())
    };
    CheckResult::from_bool("files", problems.is_empty(), detail)
}

/// Reads the server's stdout until `LISTENING <addr>`, copying it to `log`; the rest of its stdout keeps
/// being copied in the background.
async fn wait_listening(child: &mut Child, log: &Path) -> Result<SocketAddr> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("server stdout not captured"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut log_file = tokio::fs::File::create(log).await?;
    let found = tokio::time::timeout(SERVER_START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            log_file.write_all(line.as_bytes()).await?;
            log_file.write_all(b"\n").await?;
            if let Some(addr) = line.trim().strip_prefix("LISTENING ") {
                return addr.trim().parse::<SocketAddr>().with_context(|| format!("bad LISTENING line {line:?}"));
            }
        }
        bail!("server closed stdout without printing LISTENING")
    })
    .await
    .map_err(|_| anyhow!("no LISTENING line within {}s", SERVER_START_TIMEOUT.as_secs()))??;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if log_file.write_all(line.as_bytes()).await.is_err() || log_file.write_all(b"\n").await.is_err() {
                return;
            }
        }
    });
    Ok(found)
}

/// SIGTERM to the endpoint's process group (so key logs get flushed), SIGKILL after a grace period.
async fn stop_process(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a negative pid signals the process group we created for this child
        // (process_group(0)); it touches no memory of ours.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGTERM);
        }
    }
    if tokio::time::timeout(SERVER_STOP_GRACE, child.wait()).await.is_err() {
        if let Some(pid) = child.id() {
            // SAFETY: as above.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        let _ = child.kill().await;
    }
}
