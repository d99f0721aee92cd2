//! The two independent interop peers against themselves, through the endpoint contract only (processes,
//! environment variables, directories): quinn-interop server vs quinn-interop client, and the aioquic
//! endpoint (interop/peers/aioquic_endpoint.py) server vs client. Every downloaded file must be byte-exact.
//!
//! The aioquic tests need python3 with aioquic; without it they print a notice and pass, except with
//! CI=true, where a missing peer is a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Guards a hung peer only: a healthy run of any case here takes well under a second.
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);
/// Files every case downloads: a small one and one large enough to need flow-control updates.
const FILES: [(&str, usize); 3] = [("first.txt", 1_000), ("second.bin", 300_000), ("third.bin", 50_000)];

/// A peer as a command line.
#[derive(Clone, Copy, Debug)]
enum Peer {
    Quinn,
    Aioquic,
}

impl Peer {
    fn command(self) -> Command {
        match self {
            Peer::Quinn => Command::new(env!("CARGO_BIN_EXE_quinn-interop")),
            Peer::Aioquic => {
                let mut command = Command::new("python3");
                command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/peers/aioquic_endpoint.py"));
                command
            }
        }
    }

    /// False (after a notice) when the peer cannot run here; panics instead under CI=true.
    fn available(self) -> bool {
        let Peer::Aioquic = self else { return true };
        let found = Command::new("python3")
            .args(["-c", "import aioquic"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "python3 with aioquic is required under CI (python3 -m pip install aioquic)"
            );
            eprintln!("NOTICE: python3 with aioquic not found; skipping the aioquic endpoint test");
        }
        found
    }
}

/// A directory tree for one run: certs/, www/, downloads/, removed on drop.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "quinn-interop-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        for directory in ["certs", "www", "downloads"] {
            std::fs::create_dir_all(root.join(directory)).unwrap();
        }
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(root.join("certs/cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(root.join("certs/priv.key"), certified.signing_key.serialize_pem()).unwrap();
        for (name, len) in FILES {
            let content: Vec<u8> = (0..len).map(|index| (index * 7 % 253) as u8).collect();
            std::fs::write(root.join("www").join(name), content).unwrap();
        }
        Self { root }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A running server, killed on drop.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(peer: Peer, testcase: &str, scratch: &Scratch) -> Server {
    let mut child = peer
        .command()
        .env("ROLE", "server")
        .env("TESTCASE", testcase)
        .env("WWW", scratch.dir("www"))
        .env("CERTS", scratch.dir("certs"))
        .env("LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(scratch.dir("server.stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let Some(address) = line.trim().strip_prefix("LISTENING ") else {
        let _ = child.kill();
        panic!("{peer:?} server printed {line:?} instead of LISTENING <address>");
    };
    Server { address: address.to_owned(), child }
}

/// Runs the client to completion; returns its exit status and stderr.
fn run_client(peer: Peer, testcase: &str, server: &Server, scratch: &Scratch) -> (ExitStatus, String) {
    let requests: Vec<String> = FILES.iter().map(|(name, _)| format!("https://{}/{name}", server.address)).collect();
    let stderr_path = scratch.dir("client.stderr");
    let mut child = peer
        .command()
        .env("ROLE", "client")
        .env("TESTCASE", testcase)
        .env("REQUESTS", requests.join(" "))
        .env("DOWNLOADS", scratch.dir("downloads"))
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PROCESS_DEADLINE {
            let _ = child.kill();
            panic!("{peer:?} client {testcase} still running after {PROCESS_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(stderr_path).unwrap_or_default())
}

/// Server of one peer, client of another, one case: the client exits 0 and every file is byte-exact.
/// Returns the client's stderr for case-specific checks.
fn run_case(server_peer: Peer, client_peer: Peer, testcase: &str) -> String {
    let scratch = Scratch::new();
    let server = start_server(server_peer, testcase, &scratch);
    let (status, stderr) = run_client(client_peer, testcase, &server, &scratch);
    if !status.success() {
        drop(server);
        let server_stderr = std::fs::read_to_string(scratch.dir("server.stderr")).unwrap_or_default();
        panic!(
            "{client_peer:?} client vs {server_peer:?} server, {testcase}: {status}\n{stderr}\nserver:\n{server_stderr}"
        );
    }
    for (name, _) in FILES {
        let sent = std::fs::read(scratch.dir("www").join(name)).unwrap();
        let received = std::fs::read(scratch.dir("downloads").join(name)).unwrap_or_default();
        assert!(sent == received, "{testcase}: {name} differs ({} of {} bytes)", received.len(), sent.len());
    }
    stderr
}

fn unsupported_case_exits_127(peer: Peer) {
    for role in ["server", "client"] {
        let status = peer.command().env("ROLE", role).env("TESTCASE", "v2").stderr(Stdio::null()).status().unwrap();
        assert_eq!(status.code(), Some(127), "{peer:?} {role} with an unknown case");
    }
}

#[test]
fn quinn_handshake_and_http3() {
    run_case(Peer::Quinn, Peer::Quinn, "handshake");
    run_case(Peer::Quinn, Peer::Quinn, "http3");
    unsupported_case_exits_127(Peer::Quinn);
}

#[test]
fn quinn_resumption_and_zerortt() {
    run_case(Peer::Quinn, Peer::Quinn, "resumption");
    let stderr = run_case(Peer::Quinn, Peer::Quinn, "zerortt");
    assert!(stderr.contains("0-RTT accepted"), "{stderr}");
}

#[test]
fn aioquic_handshake_and_http3() {
    if !Peer::Aioquic.available() {
        return;
    }
    run_case(Peer::Aioquic, Peer::Aioquic, "handshake");
    run_case(Peer::Aioquic, Peer::Aioquic, "http3");
    unsupported_case_exits_127(Peer::Aioquic);
}

#[test]
fn aioquic_resumption_and_zerortt() {
    if !Peer::Aioquic.available() {
        return;
    }
    // The aioquic client itself fails unless the server resumed (and, for zerortt, took the 0-RTT data).
    let stderr = run_case(Peer::Aioquic, Peer::Aioquic, "resumption");
    assert!(stderr.contains("resumed=True early_data_accepted=False"), "{stderr}");
    let stderr = run_case(Peer::Aioquic, Peer::Aioquic, "zerortt");
    assert!(stderr.contains("resumed=True early_data_accepted=True"), "{stderr}");
}

/// The two peers against each other, both ways: each is then a checked reference for the other.
#[test]
fn quinn_and_aioquic_against_each_other() {
    if !Peer::Aioquic.available() {
        return;
    }
    for (server, client) in [(Peer::Aioquic, Peer::Quinn), (Peer::Quinn, Peer::Aioquic)] {
        for testcase in ["handshake", "http3", "zerortt"] {
            run_case(server, client, testcase);
        }
    }
}
