//! The runner end to end with a stub endpoint: this test binary re-runs itself as the endpoint (the
//! `stub_endpoint` test below acts as one when the contract's ROLE is set). The stub is not QUIC: it moves
//! files over a stop-and-wait UDP protocol through the relay, which is enough to check the plumbing
//! (environment, LISTENING, REQUESTS, downloads, byte-exact file check, exit code 127, missing endpoints,
//! the matrix and the runner's exit code).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const CHUNK: usize = 1000;
const FLAG_MORE: u8 = 0;
const FLAG_LAST: u8 = 1;
const FLAG_MISSING: u8 = 2;

fn stub_server() -> i32 {
    let listen = std::env::var("LISTEN").unwrap();
    let www = PathBuf::from(std::env::var("WWW").unwrap());
    let socket = UdpSocket::bind(&listen).unwrap();
    // libtest has already written "test stub_endpoint ... " without a newline: start a fresh line.
    println!("\nLISTENING {}", socket.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let mut buf = vec![0u8; 2000];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
        let request = String::from_utf8_lossy(&buf[..len]).to_string();
        let mut parts = request.splitn(3, ' ');
        let (Some("GET"), Some(offset), Some(name)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let offset: usize = offset.parse().unwrap_or(0);
        let mut reply = (offset as u64).to_be_bytes().to_vec();
        match std::fs::read(www.join(name)) {
            Err(_) => reply.push(FLAG_MISSING),
            Ok(file) => {
                let end = (offset + CHUNK).min(file.len());
                reply.push(if end >= file.len() { FLAG_LAST } else { FLAG_MORE });
                reply.extend_from_slice(&file[offset.min(end)..end]);
            }
        }
        let _ = socket.send_to(&reply, from);
    }
}

fn stub_client(corrupt: bool) -> i32 {
    let downloads = PathBuf::from(std::env::var("DOWNLOADS").unwrap());
    let requests = std::env::var("REQUESTS").unwrap();
    for url in requests.split_whitespace() {
        let rest = url.strip_prefix("https://").unwrap();
        let (authority, name) = rest.split_once('/').unwrap();
        let server: SocketAddr = authority.parse().unwrap();
        let bind = if server.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" };
        let socket = UdpSocket::bind(bind).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut file = Vec::new();
        let mut buf = vec![0u8; 2000];
        'chunks: loop {
            for _attempt in 0..50 {
                socket.send_to(format!("GET {} {name}", file.len()).as_bytes(), server).unwrap();
                let Ok((len, _)) = socket.recv_from(&mut buf) else { continue };
                if len < 9 || u64::from_be_bytes(buf[..8].try_into().unwrap()) != file.len() as u64 {
                    continue;
                }
                match buf[8] {
                    FLAG_MISSING => return 1,
                    flag => {
                        file.extend_from_slice(&buf[9..len]);
                        if flag == FLAG_LAST {
                            break 'chunks;
                        }
                        continue 'chunks;
                    }
                }
            }
            return 1;
        }
        if corrupt && !file.is_empty() {
            file[0] ^= 0xff;
        }
        std::fs::write(downloads.join(name), file).unwrap();
    }
    0
}

/// Not a test of its own: the endpoint the runner starts (only when ROLE is set, as the runner does).
#[test]
fn stub_endpoint() {
    let Ok(role) = std::env::var("ROLE") else { return };
    let testcase = std::env::var("TESTCASE").unwrap_or_default();
    let corrupt = std::env::args().any(|a| a == "stub_corrupt");
    let code = if testcase == "retry" {
        127
    } else if role == "server" {
        stub_server()
    } else {
        stub_client(corrupt)
    };
    std::process::exit(code);
}

fn stub_command(extra: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    format!("{} stub_endpoint {extra} --exact --nocapture --test-threads=1", exe.display())
}

fn runner(args: &[&str], keep: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_quiver-interop-run"))
        .args(args)
        .arg("--endpoint")
        .arg(format!("stub={}", stub_command("")))
        .arg("--endpoint")
        .arg(format!("badclient={}", stub_command("stub_corrupt")))
        .arg("--keep")
        .arg(keep)
        .arg("--quiver-bin")
        .arg("/nonexistent/quiver-interop")
        .arg("--seed")
        .arg("7")
        .env_remove("ROLE")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quiver-interop-runner-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn stub_pair_passes_files_only_cases_and_127_is_unsupported() {
    let keep = temp_dir("pass");
    let (code, stdout, stderr) = runner(
        &["--server", "stub", "--client", "stub", "--cases", "handshake,ipv6,resumption,retry", "--files-only"],
        &keep,
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("| case | stub / stub |"), "{stdout}");
    assert!(stdout.contains("| handshake | ok |"), "{stdout}");
    assert!(stdout.contains("| ipv6 | ok |"), "{stdout}");
    assert!(stdout.contains("| resumption | ok |"), "{stdout}");
    assert!(stdout.contains("| retry | unsupported |"), "{stdout}");
    assert!(stdout.contains("check files: ok: 2 file(s) byte-exact"), "{stdout}");
    assert!(stdout.contains("seed 7"), "{stdout}");
    // The relay's counters are reported, and the kept directory has both pcaps.
    assert!(stdout.contains("relay: to_server[received="), "{stdout}");
    let cell = keep.join("handshake--stub-stub");
    for file in ["client-side.pcap", "server-side.pcap", "logs/server.stdout"] {
        assert!(cell.join(file).is_file(), "{file} missing in {}", cell.display());
    }
    std::fs::remove_dir_all(&keep).unwrap();
}

#[test]
fn corrupted_download_fails_missing_endpoint_is_skipped_and_quic_checks_apply() {
    let keep = temp_dir("fail");
    let (code, stdout, stderr) =
        runner(&["--server", "stub,quiver", "--client", "stub,badclient", "--cases", "handshake"], &keep);
    assert_eq!(code, 1, "a failed cell fails the run\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("| handshake | **FAIL** | **FAIL** | skipped | skipped |"), "{stdout}");
    // Stub and stub: files fine, but no QUIC handshake on the wire.
    assert!(stdout.contains("client stub: FAIL(handshakes: 0 handshake(s), expected 1)"), "{stdout}");
    // The corrupting client: the byte-exact check catches it.
    assert!(stdout.contains("client badclient: FAIL(files: 1 of 1 file(s) wrong"), "{stdout}");
    assert!(stdout.contains("(content differs)"), "{stdout}");
    assert!(stdout.contains("server quiver / client stub: skipped(/nonexistent/quiver-interop not found)"), "{stdout}");
    std::fs::remove_dir_all(&keep).unwrap();
}
