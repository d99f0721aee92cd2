//! What an operator sees of the `quiver` servers: Prometheus metrics scraped after loopback runs of
//! `serve`, `doq serve` and `masque proxy`; qlog files; `get -v`; and a tshark capture of a request
//! decrypted with the SSLKEYLOGFILE the client and the server wrote.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use quiver_doq::test_util::TestUpstream;
use quiver_test_support::tool::{Tool, require, unavailable};
use quiver_test_support::{GUARD, guarded};
use support::{QUIVER, Running, address_after, run, start, temp_dir};

/// A server command started with `--metrics 127.0.0.1:0`: the process and its metrics address.
fn start_with_metrics(args: &[&str], banner: &str) -> (Running, String, SocketAddr) {
    let running = start(&[args, &["--metrics", "127.0.0.1:0"]].concat());
    let banner = running.wait_stdout(banner);
    let metrics = running.wait_stdout("metrics on http://");
    let metrics = address_after(&metrics, "http://");
    (running, banner, metrics)
}

/// Scrapes `GET /metrics` and returns every sample as "name{labels}" -> value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: quiver\r\nconnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            (name.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")))
        })
        .collect()
}

/// Scrapes until `ready` holds, for counters updated just after the event the test saw.
fn scrape_until(addr: SocketAddr, ready: impl Fn(&HashMap<String, f64>) -> bool) -> HashMap<String, f64> {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let samples = scrape(addr);
        if ready(&samples) || std::time::Instant::now() > deadline {
            return samples;
        }
        std::thread::yield_now();
    }
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples.get(name).unwrap_or_else(|| {
        let mut names: Vec<&String> = samples.keys().collect();
        names.sort();
        panic!("no sample {name} among {names:#?}")
    })
}

fn file_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn serve_counts_requests_by_status_and_writes_a_qlog_per_connection() {
    let qlogs = temp_dir("serve-qlog");
    let (served, banner, metrics) =
        start_with_metrics(&["serve", "--listen", "127.0.0.1:0", "--qlog-dir", qlogs.to_str().unwrap()], "serving");
    let base = format!("https://{}", address_after(&banner, "https://"));
    for path in ["/bytes/100", "/bytes/100", "/bytes/100", "/nope", "/nope"] {
        let fetched = run(&["get", "-k", "-o", "/dev/null", &format!("{base}{path}")]);
        assert!(fetched.status.success(), "{fetched:?}");
    }
    let samples = scrape(metrics);
    assert_eq!(sample(&samples, r#"quiver_http_requests_total{status="200"}"#), 3.0);
    assert_eq!(sample(&samples, r#"quiver_http_requests_total{status="404"}"#), 2.0);
    assert_eq!(sample(&samples, "quiver_http_request_duration_seconds_count"), 5.0);
    assert_eq!(sample(&samples, r#"quiver_http_request_duration_seconds_bucket{le="+Inf"}"#), 5.0);
    assert_eq!(sample(&samples, "quiver_connections_accepted_total"), 5.0);
    assert_eq!(sample(&samples, "quiver_handshake_duration_seconds_count"), 5.0);
    assert_eq!(sample(&samples, r#"quiver_connections_rejected_total{reason="backlog_full"}"#), 0.0);
    assert_eq!(sample(&samples, r#"quiver_datagrams_dropped_total{reason="queue_full"}"#), 0.0);
    assert!(sample(&samples, "quiver_datagrams_received_total") >= 10.0);
    assert!(sample(&samples, "quiver_received_bytes_total") >= 5.0 * 1200.0, "five Initials at least");
    assert!(sample(&samples, "quiver_sent_bytes_total") > 0.0);
    assert_eq!(file_count(&qlogs), 5, "one qlog per connection");
    // One access line per request, on standard error within the log buffer's flush interval:
    // "2026-11-25T14:05:10Z 127.0.0.1:50190 \"GET /nope HTTP/3\" 404 10 0.012ms".
    let access = served.wait_stderr("\"GET /nope HTTP/3\" 404 10 ");
    let fields: Vec<&str> = access.split(' ').collect();
    assert_eq!(fields.len(), 8, "{access}");
    assert!(fields[0].len() == 20 && fields[0].ends_with('Z') && fields[0].as_bytes()[10] == b'T', "{access}");
    assert!(fields[1].starts_with("127.0.0.1:"), "{access}");
    assert!(fields[7].ends_with("ms") && fields[7].contains('.'), "{access}");
    drop(served);
    std::fs::remove_dir_all(&qlogs).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn doq_serve_counts_answers_by_rcode() {
    let upstream = TestUpstream::start().await.expect("upstream");
    let upstream_addr = upstream.addr().to_string();
    let (served, banner, metrics) = start_with_metrics(
        &["doq", "serve", "--listen", "127.0.0.1:0", "--upstream", &upstream_addr],
        "serving DNS over QUIC",
    );
    let server = format!("@{}", address_after(&banner, "on "));
    for name in ["www.test.", "mail.test.", "nowhere.example."] {
        let asked = tokio::process::Command::new(QUIVER).args(["doq", "query", "-k", &server, name]).output();
        let asked = guarded("quiver doq query", asked).await.expect("run query");
        assert!(asked.status.success(), "{asked:?}");
    }
    let samples = scrape(metrics);
    assert_eq!(sample(&samples, r#"quiver_doq_queries_total{rcode="NOERROR"}"#), 2.0);
    assert_eq!(sample(&samples, r#"quiver_doq_queries_total{rcode="NXDOMAIN"}"#), 1.0);
    assert_eq!(sample(&samples, r#"quiver_doq_queries_total{rcode="SERVFAIL"}"#), 0.0);
    assert_eq!(sample(&samples, r#"quiver_doq_answers_total{source="upstream"}"#), 3.0);
    assert_eq!(sample(&samples, "quiver_doq_connections_accepted_total"), 3.0);
    assert_eq!(sample(&samples, "quiver_connections_accepted_total"), 3.0);
    drop(served);
}

#[test]
fn masque_proxy_counts_tunnels_datagrams_and_bytes() {
    let echo = quiver_test_support::udp::spawn_echo();
    let (proxy, banner, metrics) = start_with_metrics(
        &["masque", "proxy", "--listen", "127.0.0.1:0", "--allow", "127.0.0.1/32:1-65535"],
        "quiver masque proxy on",
    );
    let proxy_addr = address_after(&banner, "https://");
    let client = start(&[
        "masque",
        "client",
        "--proxy",
        &format!("https://{proxy_addr}"),
        "-k",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &echo.to_string(),
    ]);
    let local = address_after(&client.wait_stdout("forwarding udp://"), "udp://");
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.set_read_timeout(Some(GUARD)).unwrap();
    let mut buffer = [0u8; 64];
    for index in 0..3u8 {
        let payload = [index; 10];
        socket.send_to(&payload, local).unwrap();
        let (length, _) = socket.recv_from(&mut buffer).expect("the echo through the tunnel");
        assert_eq!(&buffer[..length], &payload);
    }
    // The proxy counts a payload for the client after handing it on, so the last echo can arrive
    // a moment before its count: scrape until it is there.
    let from_target = r#"quiver_masque_datagrams_total{direction="from_target"}"#;
    let samples = scrape_until(metrics, |samples| samples.get(from_target) == Some(&3.0));
    assert_eq!(sample(&samples, "quiver_masque_tunnels_opened_total"), 1.0);
    assert_eq!(sample(&samples, "quiver_masque_tunnels_active"), 1.0);
    assert_eq!(sample(&samples, r#"quiver_masque_datagrams_total{direction="to_target"}"#), 3.0);
    assert_eq!(sample(&samples, r#"quiver_masque_datagrams_total{direction="from_target"}"#), 3.0);
    assert_eq!(sample(&samples, r#"quiver_masque_bytes_total{direction="to_target"}"#), 30.0);
    assert_eq!(sample(&samples, r#"quiver_masque_bytes_total{direction="from_target"}"#), 30.0);
    assert_eq!(sample(&samples, r#"quiver_masque_tunnels_refused_total{reason="policy"}"#), 0.0);
    drop((client, proxy));
}

#[test]
fn get_verbose_prints_the_handshake_and_transfer_statistics() {
    let served = start(&["serve", "--listen", "127.0.0.1:0"]);
    let base = format!("https://{}", address_after(&served.wait_stdout("serving"), "https://"));
    let fetched = run(&["get", "-k", "-v", "-o", "/dev/null", &format!("{base}/bytes/30000")]);
    assert!(fetched.status.success(), "{fetched:?}");
    let verbose = String::from_utf8_lossy(&fetched.stderr);
    for expected in [
        "(QUIC handshake ",
        "* QUIC version 0x00000001, ALPN h3, TLSv1.3 TLS_",
        ", key exchange ",
        "* received 30000 bytes in ",
        "* rtt ",
        "* packets sent ",
        ", retransmitted ",
    ] {
        assert!(verbose.contains(expected), "missing {expected:?} in\n{verbose}");
    }
    assert!(!verbose.contains("unknown"), "every handshake detail is known:\n{verbose}");
}

/// tshark, when it can capture here; `None` otherwise, reported through `unavailable` (a failure
/// under `CI=true`).
fn tshark_capture(port: u16, sentinel_port: u16, file: &Path) -> Option<Running> {
    if !require(Tool::Tshark) {
        return None;
    }
    let filter = format!("udp port {port} or udp port {sentinel_port}");
    let capture =
        Running::spawn(Command::new("tshark").args(["-i", "lo", "-f", &filter, "-w"]).arg(file).args(["-P", "-l"]));
    // tshark says "Capturing on 'Loopback: lo'" once it captures, or exits with the reason it cannot.
    if capture.stderr_line("Capturing on").is_none() {
        unavailable(Tool::Tshark, "it cannot capture on the loopback interface here (no permission?)");
        return None;
    }
    Some(capture)
}

/// How many packets of `capture` match the display `filter` when dissected with `keylog` (if any).
fn matching_packets(capture: &Path, keylog: Option<&Path>, filter: &str) -> usize {
    let mut tshark = Command::new("tshark");
    tshark.arg("-r").arg(capture);
    if let Some(keylog) = keylog {
        tshark.arg("-o").arg(format!("tls.keylog_file:{}", keylog.display()));
    }
    let output = tshark.args(["-Y", filter]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// Sends `payload` to the sentinel socket (from itself) until tshark reports a datagram of that
/// length to its port; sent again on each silence, in case the capture missed one.
fn wait_for_sentinel(capture: &Running, sentinel: &UdpSocket, payload: &[u8]) {
    let addr = sentinel.local_addr().unwrap();
    let marker = format!("→ {} Len={}", addr.port(), payload.len());
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        assert!(std::time::Instant::now() < deadline, "tshark never saw {marker:?}");
        sentinel.send_to(payload, addr).unwrap();
        match capture.stdout().recv_timeout(Duration::from_millis(500)) {
            Ok(line) if line.contains(&marker) => return,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("tshark stopped capturing"),
        }
    }
}

#[test]
fn sslkeylogfile_lets_tshark_decrypt_a_loopback_request() {
    let dir = temp_dir("keylog");
    let (server_keys, client_keys, capture_file) =
        (dir.join("server-keys.txt"), dir.join("client-keys.txt"), dir.join("capture.pcapng"));
    let served = Running::spawn(
        Command::new(QUIVER).args(["serve", "--listen", "127.0.0.1:0"]).env("SSLKEYLOGFILE", &server_keys),
    );
    let server = address_after(&served.wait_stdout("serving"), "https://");
    let sentinel = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let sentinel_addr = sentinel.local_addr().unwrap();
    let Some(capture) = tshark_capture(server.port(), sentinel_addr.port(), &capture_file) else { return };
    // tshark announces itself before its filter is in place: wait until it has seen a datagram.
    wait_for_sentinel(&capture, &sentinel, b"capture is on");

    let fetched = Command::new(QUIVER)
        .args(["get", "-k", "-o", "/dev/null", &format!("https://{server}/bytes/100")])
        .env("SSLKEYLOGFILE", &client_keys)
        .output()
        .unwrap();
    assert!(fetched.status.success(), "{fetched:?}");
    // Packets are captured in order: once tshark has seen a datagram sent after the request, it has
    // every packet of the request.
    wait_for_sentinel(&capture, &sentinel, b"the request is over");
    // SIGINT: tshark finishes the capture file and exits.
    capture.interrupt();
    let mut capture = capture;
    capture.wait();

    // 1-RTT packets carry only encrypted frames: without the secrets tshark sees none of them, with
    // either side's key log it reads the client's HTTP/3 request and frames the server sent. (tshark
    // 4.0 fails the tag check on a few of quiche's 1-RTT packets, so not every packet is required.)
    let port = server.port();
    let request = format!("http3.frame_type == 0x01 && udp.dstport == {port}");
    let from_server = format!("quic.header_form == 0 && quic.frame && udp.srcport == {port}");
    assert_eq!(matching_packets(&capture_file, None, &request), 0, "a request readable without keys?");
    assert_eq!(matching_packets(&capture_file, None, &from_server), 0, "1-RTT frames readable without keys?");
    for keys in [&client_keys, &server_keys] {
        let text = std::fs::read_to_string(keys).unwrap();
        assert!(text.contains("CLIENT_TRAFFIC_SECRET_0 "), "{}: {text}", keys.display());
        assert_eq!(matching_packets(&capture_file, Some(keys), &request), 1, "{}: the request", keys.display());
        assert!(matching_packets(&capture_file, Some(keys), &from_server) > 0, "{}: server frames", keys.display());
    }
    drop(served);
    std::fs::remove_dir_all(&dir).ok();
}
