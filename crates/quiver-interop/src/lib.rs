//! # quiver-interop
//!
//! The QUIC interop runner's endpoint (github quic-interop/quic-interop-runner) on quiver: one binary,
//! `quiver-interop`, that is the server or the client of a test case as its environment says
//! (`ROLE`, `TESTCASE`, `REQUESTS`, `WWW`, `DOWNLOADS`, `CERTS`, `LISTEN`, `SSLKEYLOGFILE`,
//! `QLOGDIR`; `interop/README.md` has the whole contract).
//!
//! - [`settings`]: the environment, read and checked; which cases run and which exit 127.
//! - [`hq`]: hq-interop (HTTP/0.9) server and client applications on quiver's raw QUIC API.
//! - [`server`] / [`client`]: the two roles; HTTP/3 comes from `quiver-h3`.
//! - [`url`], [`files`]: the client's URLs and the server's safe file lookup.
//! - [`wire`]: the two hooks waiting on other work (key update, cipher choice).
//!
//! Exit codes: 0 when the role did its job, 1 on any failure, 127 for a test case it does not run.

#![deny(missing_docs)]

pub mod client;
pub mod files;
pub mod hq;
pub mod server;
pub mod settings;
pub mod url;
pub mod wire;

use std::path::PathBuf;

use crate::settings::{Role, Settings, SettingsError};

/// Exit code: the role did its job.
pub const EXIT_OK: i32 = 0;
/// Exit code: something failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: the test case is not supported (the runner's convention).
pub const EXIT_UNSUPPORTED: i32 = 127;

/// Reads the environment, runs the role, and returns the process's exit code. Logs go to stderr.
pub fn main_exit_code() -> i32 {
    init_logging();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(SettingsError::Unsupported(unsupported)) => {
            eprintln!("quiver-interop: {unsupported}");
            return EXIT_UNSUPPORTED;
        }
        Err(err) => {
            eprintln!("quiver-interop: {err}");
            return EXIT_FAILED;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("quiver-interop: cannot start the runtime: {err}");
            return EXIT_FAILED;
        }
    };
    let outcome = runtime.block_on(async {
        match settings.role {
            Role::Server => server::run(&settings).await,
            Role::Client => client::run(&settings).await,
        }
    });
    match outcome {
        Ok(()) => {
            tracing::info!(test_case = ?settings.test_case, "done");
            EXIT_OK
        }
        Err(reason) => {
            eprintln!("quiver-interop: {reason}");
            EXIT_FAILED
        }
    }
}

/// `QLOGDIR`, created if missing (the runner mounts it; a local run may not have made it).
fn qlog_dir(settings: &Settings) -> Result<Option<PathBuf>, String> {
    let Some(dir) = &settings.qlog_dir else { return Ok(None) };
    std::fs::create_dir_all(dir).map_err(|err| format!("cannot create QLOGDIR {}: {err}", dir.display()))?;
    Ok(Some(dir.clone()))
}

/// Logs how a connection's handshake went now, and why it ended when it does.
pub(crate) fn log_connection(role: &'static str, handle: &quiver::ConnectionHandle) {
    let handshake = handle.handshake();
    tracing::info!(
        role,
        peer = %handle.peer_addr(),
        alpn = %String::from_utf8_lossy(handle.alpn()),
        cipher = handshake.cipher.unwrap_or("unknown (0-RTT)"),
        group = handshake.key_exchange_group.unwrap_or("unknown"),
        resumed = handshake.resumed,
        early_data = handle.started_in_early_data(),
        "connection established"
    );
    let handle = handle.clone();
    tokio::spawn(async move {
        let reason = handle.closed().await;
        tracing::info!(role, peer = %handle.peer_addr(), %reason, "connection ended");
    });
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}
