//! What a test needs from outside the repository, and what it means when that is missing.
//!
//! Interop and system tests drive programs and kernel features that `cargo` cannot provide. Where one
//! is missing the test cannot test anything, and passing silently would report green while testing
//! nothing. So one function decides, [`unavailable`]: under `CI=true` the test fails with a message
//! that names the tool and how to install it; on a developer's machine (no `CI`) it prints a
//! `skipped:` notice and the test returns early. `./scripts/test` installs every tool listed here
//! (scripts/test-tools), so a normal run, local or CI, runs them all.

use std::process::{Command, Stdio};

/// An outside tool (or system feature) that some test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// A Chromium browser on PATH (`chromium`, `chromium-browser` or `google-chrome`).
    Chromium,
    /// Wireshark's command-line capture and dissector, able to capture on loopback.
    Tshark,
    /// python3 with aioquic (an independent QUIC + HTTP/3 stack).
    Aioquic,
    /// python3 with dnspython's DNS-over-QUIC client (which runs on aioquic).
    Dnspython,
    /// The `ip` command (iproute2).
    Iproute2,
    /// `unshare --net`: a network namespace of the test's own (needs root).
    NetworkNamespace,
    /// A TUN device (`/dev/net/tun`, and the right to create one).
    TunDevice,
    /// An IPv6 loopback address (`::1`) to bind.
    Ipv6Loopback,
}

/// Names a Chromium browser goes by on PATH, in the order tried.
pub const CHROMIUM_PROGRAMS: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

impl Tool {
    /// What a person would call it, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chromium => "Chromium",
            Self::Tshark => "tshark",
            Self::Aioquic => "python3 with aioquic",
            Self::Dnspython => "python3 with dnspython and aioquic",
            Self::Iproute2 => "the ip command (iproute2)",
            Self::NetworkNamespace => "a network namespace (unshare --net)",
            Self::TunDevice => "a TUN device",
            Self::Ipv6Loopback => "an IPv6 loopback address",
        }
    }

    /// How to get it; `./scripts/test` does this itself for everything it can install.
    pub fn install_hint(self) -> &'static str {
        match self {
            Self::Chromium => "apt-get install chromium",
            Self::Tshark => "apt-get install tshark, and capture rights on lo (run as root)",
            Self::Aioquic => "python3 -m pip install aioquic",
            Self::Dnspython => "python3 -m pip install dnspython aioquic",
            Self::Iproute2 => "apt-get install iproute2",
            Self::NetworkNamespace => "run the tests as root, with util-linux's unshare",
            Self::TunDevice => "run as root where /dev/net/tun exists (a container needs --device /dev/net/tun)",
            Self::Ipv6Loopback => "enable IPv6 on lo (sysctl net.ipv6.conf.lo.disable_ipv6=0)",
        }
    }

    /// Probes for the tool now. Tools that can only be judged by trying ([`Tool::TunDevice`],
    /// [`Tool::Ipv6Loopback`], tshark's capture rights) are reported by the test through
    /// [`unavailable`] when the attempt fails; for them this only checks what can be checked up front.
    pub fn is_available(self) -> bool {
        match self {
            Self::Chromium => chromium_program().is_some(),
            Self::Tshark => runs("tshark", &["--version"]),
            Self::Aioquic => runs("python3", &["-c", "import aioquic"]),
            Self::Dnspython => runs("python3", &["-c", "import dns.query, dns.quic, aioquic"]),
            Self::Iproute2 => runs("ip", &["-V"]),
            Self::NetworkNamespace => runs("unshare", &["--net", "true"]),
            Self::TunDevice => std::path::Path::new("/dev/net/tun").exists(),
            Self::Ipv6Loopback => std::net::UdpSocket::bind("[::1]:0").is_ok(),
        }
    }
}

/// Whether this run is a CI run (`CI=true`, as `.ci/run` and most CI services set it), where a
/// missing tool is a failure.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value.eq_ignore_ascii_case("true") || value == "1")
}

/// True when `tool` is there. Otherwise reports it through [`unavailable`] and returns false, so a
/// test starts with `if !require(Tool::Aioquic) { return; }`.
pub fn require(tool: Tool) -> bool {
    if tool.is_available() {
        return true;
    }
    unavailable(tool, "not found");
    false
}

/// Reports that `tool` cannot be used (`reason` says why): panics under `CI=true`, naming the tool
/// and how to install it; otherwise prints a `skipped:` notice, and the caller returns.
pub fn unavailable(tool: Tool, reason: &str) {
    let message = format!("{} is not available ({reason}); install: {}", tool.name(), tool.install_hint());
    assert!(!on_ci(), "{message}. CI=true: a test that needs it must run, not skip (./scripts/test installs it)");
    eprintln!("skipped: {message}");
}

/// The first of [`CHROMIUM_PROGRAMS`] that runs.
pub fn chromium_program() -> Option<&'static str> {
    CHROMIUM_PROGRAMS.into_iter().find(|program| runs(program, &["--version"]))
}

/// Whether `program args` runs and exits successfully (its output discarded).
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_does_not_run() {
        assert!(!runs("quiver-test-support-no-such-program", &[]));
        assert!(runs("true", &[]));
    }

    #[test]
    fn every_tool_says_what_it_is_and_how_to_get_it() {
        for tool in [
            Tool::Chromium,
            Tool::Tshark,
            Tool::Aioquic,
            Tool::Dnspython,
            Tool::Iproute2,
            Tool::NetworkNamespace,
            Tool::TunDevice,
            Tool::Ipv6Loopback,
        ] {
            assert!(!tool.name().is_empty() && !tool.install_hint().is_empty(), "{tool:?}");
        }
    }
}
