//! Shared by the `quiver` binary's tests: starting it, with the process harness of
//! `quiver_test_support::process` (output lines on channels, killed on drop).

#![allow(dead_code)] // each test file uses part of it

use std::process::{Command, Output};

#[allow(unused_imports)] // each test file uses part of it
pub use quiver_test_support::process::{Running, address_after, temp_dir};

/// The binary under test, built by cargo for these tests.
pub const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");

/// Starts `quiver ARGS` in the background.
pub fn start(args: &[&str]) -> Running {
    Running::spawn(Command::new(QUIVER).args(args))
}

/// Runs `quiver ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(QUIVER).args(args).output().expect("run quiver")
}

/// A running server and the address its banner announced.
pub struct Served {
    pub process: Running,
    pub addr: std::net::SocketAddr,
}

/// Starts `quiver ARGS` and waits for its banner: the first standard output line containing
/// `banner`, with the address that follows `prefix` in it ("https://", "on ").
pub fn serve(args: &[&str], banner: &str, prefix: &str) -> Served {
    let process = start(args);
    let line = process.wait_stdout(banner);
    let addr = address_after(&line, prefix);
    Served { process, addr }
}
