//! The real `quiver-interop` binary, started through `interop/run_endpoint.sh` the way the runner
//! starts it (environment variables and directories only), in both roles against itself on loopback:
//! every file arrives byte-exact, and what each case is about shows in the endpoints' logs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use quiver_test_support::guard::GUARD;
use quiver_test_support::process::{Running, address_after, temp_dir};
use quiver_test_support::relay::lossy::{Impairment, LossyRelay, RelayConfig};

/// The test's directories: `www` with the files to serve, `certs`, `downloads`.
struct Fixture {
    root: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

impl Fixture {
    /// Files named `name-<i>` with the given sizes, and a fresh self-signed certificate.
    fn new(name: &str, sizes: &[usize]) -> Self {
        let root = temp_dir(&format!("interop-{name}"));
        for dir in ["www", "certs", "downloads"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let certified = rcgen::generate_simple_self_signed(vec!["server".to_owned(), "localhost".to_owned()]).unwrap();
        std::fs::write(root.join("certs/cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(root.join("certs/priv.key"), certified.signing_key.serialize_pem()).unwrap();
        let files = sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                let name = format!("{name}-{index}.bin");
                let content = pseudo_random(size, index as u64 + 1);
                std::fs::write(root.join("www").join(&name), &content).unwrap();
                (name, content)
            })
            .collect();
        Self { root, files }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `run_endpoint.sh` with the runner's variables for `role` and `case`.
    fn endpoint(&self, role: &str, case: &str) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/run_endpoint.sh");
        let mut command = Command::new("bash");
        command
            .arg(script)
            .env("QUIVER_INTEROP_BIN", env!("CARGO_BIN_EXE_quiver-interop"))
            .env("ROLE", role)
            .env("TESTCASE", case)
            .env("WWW", self.dir("www"))
            .env("DOWNLOADS", self.dir("downloads"))
            .env("CERTS", self.dir("certs"))
            .env("SSLKEYLOGFILE", self.dir("keys.log"))
            .env("LISTEN", "127.0.0.1:0")
            .env_remove("QLOGDIR")
            .env_remove("RUST_LOG");
        command
    }

    /// Starts the server role; returns it and the address it printed.
    fn server(&self, case: &str) -> (Running, SocketAddr) {
        let server = Running::spawn(&mut self.endpoint("server", case));
        let line = server.wait_stdout("LISTENING ");
        let addr = address_after(&line, "LISTENING ");
        (server, addr)
    }

    /// Runs the client role for every file against `server` to its end.
    fn client(&self, case: &str, server: SocketAddr) -> Output {
        let requests: Vec<String> = self.files.iter().map(|(name, _)| format!("https://{server}/{name}")).collect();
        let mut command = self.endpoint("client", case);
        command.env("REQUESTS", requests.join(" "));
        finish(command)
    }

    /// Every served file is in `downloads`, byte for byte.
    fn assert_downloaded(&self) {
        for (name, content) in &self.files {
            let downloaded = std::fs::read(self.dir("downloads").join(name))
                .unwrap_or_else(|err| panic!("{name} was not downloaded: {err}"));
            assert!(
                downloaded == *content,
                "{name}: {} bytes downloaded, {} served, or different bytes",
                downloaded.len(),
                content.len()
            );
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `command` to its end within the guard, with its output.
fn finish(mut command: Command) -> Output {
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(command.output().expect("start the endpoint"));
    });
    done.recv_timeout(GUARD).expect("the client did not exit within the guard")
}

/// `size` bytes that differ between `seed`s and show any reordering.
fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Runs `case` in both roles, asserts the client succeeded and got every file, and returns the
/// server (to read its logs) and the client's standard error.
fn run_case(name: &str, case: &str, sizes: &[usize]) -> (Running, String) {
    run_case_against(name, case, case, sizes)
}

/// As [`run_case`], with the server told `server_case` (for client-only cases).
fn run_case_against(name: &str, server_case: &str, case: &str, sizes: &[usize]) -> (Running, String) {
    let fixture = Fixture::new(name, sizes);
    let (server, addr) = fixture.server(server_case);
    let output = fixture.client(case, addr);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "client for {case} failed ({:?}):\n{stderr}", output.status);
    fixture.assert_downloaded();
    assert!(std::fs::metadata(fixture.dir("keys.log")).is_ok_and(|keys| keys.len() > 0), "no TLS secrets logged");
    (server, stderr)
}

#[test]
fn handshake() {
    let (_server, client) = run_case("handshake", "handshake", &[1000, 20_000]);
    assert!(client.contains("resumed=false"), "{client}");
}

#[test]
fn transfer_fetches_several_files_at_once_through_small_windows() {
    run_case("transfer", "transfer", &[2_000_000, 1_000_000, 300_000]);
}

#[test]
fn http3() {
    let (_server, client) = run_case("http3", "http3", &[1_000_000, 50_000, 0]);
    assert!(client.contains("alpn=h3"), "{client}");
}

#[test]
fn retry() {
    let (server, _client) = run_case("retry", "retry", &[100_000]);
    // One Retry per Initial datagram of the client's first flight (a post-quantum key share makes
    // the ClientHello span two), and none after.
    let counters = server.wait_stderr("retries_sent=");
    assert!(!counters.ends_with("retries_sent=0"), "{counters}");
}

#[test]
fn multiconnect_opens_one_connection_per_file() {
    let (server, _client) = run_case("multiconnect", "multiconnect", &[10_000, 20_000, 30_000]);
    for _ in 0..3 {
        server.wait_stderr("handshake done role=\"server\"");
    }
}

#[test]
fn resumption_resumes_the_second_connection_without_early_data() {
    // The client itself fails unless its second connection resumed without 0-RTT.
    let (server, _client) = run_case("resumption", "resumption", &[30_000, 40_000, 50_000]);
    server.wait_stderr("resumed=false");
    server.wait_stderr("resumed=true early_data_accepted=false");
}

#[test]
fn zerortt_sends_the_second_connections_requests_in_early_data() {
    // The client itself fails unless its second connection's requests went out in accepted 0-RTT.
    //
    // Through a relay that gives the path a 10 ms round trip, as any real network has: straight on
    // loopback the server's answer can arrive while quiver's client task is still sending its first
    // flight, and quiver then completes the handshake before it lets the application send anything, so
    // the requests leave in 1-RTT (about one run in fifteen; a quiver connection-task ordering issue,
    // see the helper's report).
    let fixture = Fixture::new("zerortt", &[30_000, 40_000, 50_000]);
    let (server, addr) = fixture.server("zerortt");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let delay = Impairment { delay: Duration::from_millis(5), ..Impairment::NONE };
    let relay = runtime.block_on(LossyRelay::start(addr, RelayConfig::symmetric(delay, 1))).unwrap();
    let output = fixture.client("zerortt", relay.addr());
    assert!(output.status.success(), "client failed:\n{}", String::from_utf8_lossy(&output.stderr));
    fixture.assert_downloaded();
    server.wait_stderr("resumed=true early_data_accepted=true");
}

#[test]
fn a_refused_file_fails_the_client() {
    let fixture = Fixture::new("missing", &[1000]);
    let (_server, addr) = fixture.server("transfer");
    let mut command = fixture.endpoint("client", "transfer");
    command.env("REQUESTS", format!("https://{addr}/no-such-file https://{addr}/../certs/priv.key"));
    let output = finish(command);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn unsupported_cases_exit_127_in_both_roles() {
    let fixture = Fixture::new("unsupported", &[]);
    for (role, case) in
        [("server", "no-such-case"), ("client", "no-such-case"), ("client", "v2"), ("server", "connectionmigration")]
    {
        let mut command = fixture.endpoint(role, case);
        command.env("REQUESTS", "https://127.0.0.1:4433/x");
        let output = finish(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(127), "{role} {case}: {stderr}");
        assert!(stderr.contains("not supported"), "{role} {case}: {stderr}");
    }
}

/// Ignored in the suite for the reason `crates/quiver/tests/multi_socket.rs` gives for its
/// mid-transfer migration test: about one run in twenty stalls when quiche does not re-challenge after
/// a lost PATH_RESPONSE. Run it with `cargo test -p quiver-interop --test endpoint -- --ignored`.
#[test]
#[ignore = "stalls about once in twenty runs: quiche does not re-challenge after a lost PATH_RESPONSE"]
fn connectionmigration_moves_the_client_in_the_middle_of_the_transfer() {
    // Large enough that the move (after 200 KB) happens while most of the file is still to come.
    let (_server, client) = run_case_against("migration", "transfer", "connectionmigration", &[20_000_000]);
    assert!(client.contains("migration done"), "{client}");
}

/// Runs `case`, which needs a feature `available` says this build has; without it, both roles must
/// exit 127. Returns the server and the client's standard error when it ran.
fn run_wired_case(name: &str, case: &str, available: bool, sizes: &[usize]) -> Option<(Running, String)> {
    if available {
        return Some(run_case(name, case, sizes));
    }
    let fixture = Fixture::new(name, sizes);
    for role in ["server", "client"] {
        let mut command = fixture.endpoint(role, case);
        command.env("REQUESTS", "https://127.0.0.1:4433/x");
        let output = finish(command);
        assert_eq!(output.status.code(), Some(127), "{role} {case}: {}", String::from_utf8_lossy(&output.stderr));
    }
    None
}

#[test]
fn keyupdate_updates_the_keys_early_on_both_sides() {
    let Some((server, client)) =
        run_wired_case("keyupdate", "keyupdate", quiver_interop::wire::KEY_UPDATE_AVAILABLE, &[1_000_000])
    else {
        return;
    };
    // The client fails by itself unless it updated its keys; the server (local extension) too.
    assert!(client.contains("key update initiated"), "{client}");
    server.wait_stderr("key update initiated");
}

#[test]
fn chacha20_is_the_only_cipher() {
    let Some((_server, client)) =
        run_wired_case("chacha20", "chacha20", quiver_interop::wire::CIPHER_CHOICE_AVAILABLE, &[100_000])
    else {
        return;
    };
    assert!(client.contains("cipher=\"TLS_CHACHA20_POLY1305_SHA256\""), "{client}");
}
