//! One test run again inside a network namespace of its own (`unshare --net`), so that it may create
//! TUN devices, add addresses and routes, and bind them without touching the host's network.
//!
//! The test binary re-executes itself with `--exact TEST_NAME` under `unshare --net`; an environment
//! variable tells the inner run that it is inside. Call [`run_inside`] first thing in the test:
//!
//! ```ignore
//! #[test]
//! fn tun_device_test() {
//!     if !quiver_test_support::netns::run_inside("tun_device_test") {
//!         return; // the outer run: the inner one ran (and passed) or the test was skipped
//!     }
//!     // inside the namespace, loopback up
//! }
//! ```

use std::process::Command;

use crate::tool::{Tool, require, unavailable};

/// Set in the re-executed test's environment: it is inside the namespace.
const INSIDE_VARIABLE: &str = "QUIVER_TEST_IN_NETNS";

/// True when the caller runs inside its own network namespace (with loopback up) and should do the
/// test's work. False in the outer run, after it re-ran `test_name` (a test of the current binary)
/// inside a new namespace and asserted that it passed; false also when no namespace or no `ip`
/// command can be had, reported through [`unavailable`] (a failure under `CI=true`).
pub fn run_inside(test_name: &str) -> bool {
    if std::env::var_os(INSIDE_VARIABLE).is_some() {
        // A fresh namespace has only `lo`, and it is down.
        if !require(Tool::Iproute2) {
            return false;
        }
        assert!(ip(&["link", "set", "lo", "up"]), "ip link set lo up failed inside the namespace");
        return true;
    }
    if !require(Tool::NetworkNamespace) {
        return false;
    }
    let executable = std::env::current_exe().expect("the test binary's path");
    let output = Command::new("unshare")
        .args(["--net", "--"])
        .arg(executable)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(INSIDE_VARIABLE, "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test_name} inside the network namespace:\n{stdout}\n{stderr}"
    );
    // The inner run may have skipped itself (no TUN device, no `ip`; never under CI=true, where that
    // fails it): say so rather than claim a pass.
    match stderr.lines().find(|line| line.starts_with("skipped:")) {
        Some(skipped) => eprintln!("{skipped} (inside the network namespace)"),
        None => eprintln!("{stderr}"),
    }
    false
}

/// Runs `ip ARGS` (iproute2); true when it succeeded.
pub fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().is_ok_and(|status| status.success())
}

/// Reports that a TUN device could not be created inside the namespace (see [`unavailable`]).
pub fn no_tun_device(error: &dyn std::fmt::Display) {
    unavailable(Tool::TunDevice, &error.to_string());
}
