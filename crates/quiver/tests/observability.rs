//! What operators see of a connection: qlog files (JSON-SEQ, one per connection, none for junk),
//! the handshake's negotiated parameters, and statistics read while the connection runs.

mod support;

use std::path::{Path, PathBuf};

use quiver::{DropReason, Endpoint};
use rand::RngCore;
use support::echo::{EchoClient, EchoServer};
use support::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quiver-observability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    files
}

/// Splits a JSON-SEQ file (RFC 7464: each record is RS, a JSON text, LF) into parsed records.
fn json_seq_records(path: &Path) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.first(), Some(&0x1e), "{} does not start with a record separator", path.display());
    bytes
        .split(|byte| *byte == 0x1e)
        .skip(1)
        .map(|record| {
            assert_eq!(record.last(), Some(&b'\n'), "a record of {} does not end with LF", path.display());
            serde_json::from_slice(record).unwrap_or_else(|err| panic!("{}: bad JSON record: {err}", path.display()))
        })
        .collect()
}

fn event_names(records: &[serde_json::Value]) -> Vec<String> {
    records[1..].iter().map(|event| event["name"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qlog_files_parse_as_json_seq_with_the_connection_events() {
    let identity = identity();
    let (server_dir, client_dir) = (temp_dir("qlog-server"), temp_dir("qlog-client"));
    let server = spawn_echo_server(server_builder(&identity).qlog_dir(&server_dir).build().unwrap());
    let client =
        Endpoint::client(loopback(), client_builder(&identity).qlog_dir(&client_dir).build().unwrap()).unwrap();
    let sent = payload(20_000, 7);
    let (app, results) = EchoClient::new(vec![sent.clone()]);
    let connection = guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
    assert_eq!(guarded("echo", results).await.unwrap(), vec![sent]);
    guarded("close", connection.closed()).await;
    // A connection's qlog is complete once its task has ended (quiche flushes it on drop).
    guarded("client idle", client.wait_idle()).await;
    guarded("server idle", server.wait_idle()).await;

    let client_files = files_in(&client_dir);
    assert_eq!(client_files, vec![client_dir.join(format!("{}-client.sqlog", connection.trace_id()))]);
    let server_files = files_in(&server_dir);
    assert_eq!(server_files.len(), 1, "{server_files:?}");
    assert!(server_files[0].to_string_lossy().ends_with("-server.sqlog"), "{server_files:?}");

    for (path, vantage) in [(&client_files[0], "client"), (&server_files[0], "server")] {
        let records = json_seq_records(path);
        let header = &records[0];
        assert_eq!(header["serialization_format"], "JSON-SEQ", "{header}");
        assert_eq!(header["trace"]["vantage_point"]["type"], vantage, "{header}");
        let names = event_names(&records);
        for expected in ["parameters_set", "packet_sent", "packet_received"] {
            assert!(
                names.iter().any(|name| name.ends_with(expected)),
                "{}: no {expected} in {names:?}",
                path.display()
            );
        }
        // The echo's stream data is in there: STREAM frames were sent by both sides.
        let stream_frames = records[1..]
            .iter()
            .filter(|event| event["name"].as_str().is_some_and(|name| name.ends_with("packet_sent")))
            .flat_map(|event| event["data"]["frames"].as_array().cloned().unwrap_or_default())
            .filter(|frame| frame["frame_type"] == "stream")
            .count();
        assert!(stream_frames > 0, "{}: no STREAM frame sent", path.display());
    }
    std::fs::remove_dir_all(&server_dir).ok();
    std::fs::remove_dir_all(&client_dir).ok();
}

/// A forged Initial (valid header, garbage payload) costs the server a failed decryption, never a file.
#[tokio::test]
async fn a_junk_initial_leaves_no_qlog_file() {
    let dir = temp_dir("qlog-junk");
    let server = spawn_echo_server(server_builder(&identity()).qlog_dir(&dir).build().unwrap());
    let mut rng = rand::rng();
    let mut forged = vec![0xc3, 0x00, 0x00, 0x00, 0x01, 8];
    forged.extend((0..8).map(|_| rng.next_u32() as u8));
    forged.extend_from_slice(&[0, 0x00, 0x44, 0xd0]);
    forged.resize(1200, 0);
    rng.fill_bytes(&mut forged[20..]);
    let socket = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    socket.send_to(&forged, server.local_addr()).await.unwrap();
    wait_until("the forged Initial is counted", || server.stats().dropped(DropReason::InvalidInitial) == 1).await;
    assert_eq!(files_in(&dir), Vec::<PathBuf>::new());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_missing_qlog_directory_fails_the_build() {
    let err = server_builder(&identity()).qlog_dir("/nonexistent/quiver-qlog").build().unwrap_err();
    assert!(err.to_string().contains("/nonexistent/quiver-qlog"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_info_and_live_stats_on_both_ends() {
    let identity = identity();
    let server = Endpoint::server(loopback(), server_builder(&identity).build().unwrap()).unwrap();
    let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
    let (app, results) = EchoClient::new(vec![payload(50_000, 3)]);
    let (connected, incoming) =
        tokio::join!(client.connect(server.local_addr(), "localhost", app.keep_open()), server.accept());
    let client_side = connected.unwrap();
    let server_side = incoming.expect("incoming").start(EchoServer::new());

    for (side, handle) in [("client", &client_side), ("server", &server_side)] {
        let handshake = handle.handshake();
        assert_eq!(handshake.quic_version, 1, "{side}");
        assert_eq!(handshake.tls_version, Some("TLSv1.3"), "{side}");
        let cipher = handshake.cipher.unwrap_or_else(|| panic!("{side}: no cipher"));
        assert!(cipher.starts_with("TLS_"), "{side}: {cipher}");
        assert!(handshake.key_exchange_group.is_some(), "{side}: no key exchange group");
        assert!(!handshake.resumed, "{side}");
        assert!(handshake.duration > std::time::Duration::ZERO && handshake.duration < GUARD, "{side}");
    }
    assert_eq!(client_side.handshake().cipher, server_side.handshake().cipher);

    // Statistics while the connection runs (it stays open after the echo).
    guarded("echo", results).await.unwrap();
    let stats = guarded("stats", client_side.stats()).await.expect("live stats");
    assert!(stats.bytes_received >= 50_000, "{stats:?}");
    assert!(stats.packets_sent > 0 && stats.packets_received > 0, "{stats:?}");
    assert!(stats.rtt > std::time::Duration::ZERO && stats.cwnd_bytes > 0, "{stats:?}");
    let server_stats = guarded("stats", server_side.stats()).await.expect("live server stats");
    assert!(server_stats.bytes_sent >= 50_000, "{server_stats:?}");

    client_side.close(0, "done");
    guarded("close", server_side.closed()).await;
    assert!(server_side.stats().await.is_none(), "no stats once closed");
}

/// A log writer that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn connection_spans_name_the_scid_peer_and_alpn() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("quiver=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime under a thread-local subscriber: every task logs here.
    let trace_id = tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let identity = identity();
            let server = spawn_echo_server(server_builder(&identity).build().unwrap());
            let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
            let (app, results) = EchoClient::new(vec![b"hello".to_vec()]);
            let connection = guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
            guarded("echo", results).await.unwrap();
            guarded("close", connection.closed()).await;
            guarded("client idle", client.wait_idle()).await;
            connection.trace_id().to_owned()
        })
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let closed = logs
        .lines()
        .find(|line| line.contains("connection closed") && line.contains(&trace_id))
        .unwrap_or_else(|| panic!("no close line for {trace_id} in\n{logs}"));
    let expected = format!("conn{{scid={trace_id} peer=127.0.0.1:");
    assert!(closed.contains(&expected) && closed.contains("alpn=\"echo\"}"), "{closed}");
}
