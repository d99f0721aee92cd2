//! Checks that need the endpoints' TLS secrets: the relay's pcaps are dissected by tshark with the
//! combined key log. When tshark is missing, a check is skipped, or failed when `CI=true` (CI must not
//! pass a case whose property was never looked at).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::checks::CheckResult;

/// Where the decrypted checks find their inputs.
#[derive(Clone, Debug)]
pub struct Captures {
    /// Client-side leg pcap.
    pub client_pcap: PathBuf,
    /// Server-side leg pcap.
    pub server_pcap: PathBuf,
    /// Client and server key logs concatenated.
    pub keylog: PathBuf,
    /// The relay's client-facing port (the server's port as the client sees it).
    pub relay_port: u16,
    /// The server's port.
    pub server_port: u16,
}

/// Whether `tshark` runs here.
pub async fn available() -> bool {
    Command::new("tshark").arg("-v").output().await.is_ok_and(|out| out.status.success())
}

/// The result for a decrypted check when tshark is missing.
pub fn missing(name: &'static str) -> CheckResult {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci {
        CheckResult::from_bool(
            name,
            false,
            "tshark is missing and CI=true: install tshark (wireshark) to run this check",
        )
    } else {
        CheckResult::skipped(name, "tshark missing")
    }
}

/// Rows of `fields` for the packets of `pcap` matching `filter`; each field's occurrences split on ','.
async fn fields(captures: &Captures, pcap: &Path, filter: &str, fields: &[&str]) -> Result<Vec<Vec<Vec<String>>>> {
    let mut command = Command::new("tshark");
    command
        .arg("-n")
        .arg("-r")
        .arg(pcap)
        .arg("-o")
        .arg(format!("tls.keylog_file:{}", captures.keylog.display()))
        .arg("-d")
        .arg(format!("udp.port=={},quic", captures.relay_port))
        .arg("-d")
        .arg(format!("udp.port=={},quic", captures.server_port))
        .arg("-Y")
        .arg(filter)
        .arg("-T")
        .arg("fields")
        .arg("-E")
        .arg("separator=|")
        .arg("-E")
        .arg("occurrence=a")
        .arg("-E")
        .arg("aggregator=,");
    for field in fields {
        command.arg("-e").arg(field);
    }
    let output = command.output().await.context("cannot run tshark")?;
    if !output.status.success() {
        bail!("tshark failed on {}: {}", pcap.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            line.split('|')
                .map(|cell| cell.split(',').filter(|v| !v.is_empty()).map(|v| v.replace(':', "")).collect())
                .collect()
        })
        .collect())
}

fn is_set(value: &str) -> bool {
    matches!(value, "1" | "True" | "true")
}

fn failed_to_run(name: &'static str, error: anyhow::Error) -> CheckResult {
    CheckResult::from_bool(name, false, format!("{error:#}"))
}

/// Both sides sent 1-RTT packets with key phase 1 (the client as seen on the client leg, the server on
/// the server leg).
pub async fn key_update(captures: &Captures) -> CheckResult {
    let run = async {
        let client = fields(
            captures,
            &captures.client_pcap,
            &format!("udp.dstport=={} && quic.key_phase", captures.relay_port),
            &["quic.key_phase"],
        )
        .await?;
        let server = fields(
            captures,
            &captures.server_pcap,
            &format!("udp.srcport=={} && quic.key_phase", captures.server_port),
            &["quic.key_phase"],
        )
        .await?;
        let count = |rows: &Vec<Vec<Vec<String>>>| {
            let all: Vec<&String> = rows.iter().flat_map(|r| r.iter().flatten()).collect();
            (all.iter().filter(|v| !is_set(v)).count(), all.iter().filter(|v| is_set(v)).count())
        };
        Ok::<_, anyhow::Error>((count(&client), count(&server)))
    };
    match run.await {
        Err(e) => failed_to_run("keyupdate", e),
        Ok(((c0, c1), (s0, s1))) => CheckResult::from_bool(
            "keyupdate",
            c1 > 0 && s1 > 0,
            format!("client key phase 0/1: {c0}/{c1} packets, server: {s0}/{s1}"),
        ),
    }
}

/// The server's first handshake carried a Certificate, its second (resumed) one did not.
/// `scids` are the server's Initial SCIDs in order (from the cleartext record), hex without colons.
pub async fn resumption(captures: &Captures, scids: &[String]) -> CheckResult {
    let name = "resumption";
    if scids.len() != 2 {
        return CheckResult::from_bool(name, false, format!("{} handshake(s), need 2", scids.len()));
    }
    let rows = match fields(
        captures,
        &captures.client_pcap,
        &format!("udp.srcport=={} && tls.handshake.type==11", captures.relay_port),
        &["quic.scid"],
    )
    .await
    {
        Ok(rows) => rows,
        Err(e) => return failed_to_run(name, e),
    };
    let with_cert: BTreeSet<String> = rows.into_iter().flatten().flatten().collect();
    let first = with_cert.contains(&scids[0]);
    let second = with_cert.contains(&scids[1]);
    CheckResult::from_bool(
        name,
        first && !second,
        format!("Certificate in first handshake: {first}, in second: {second}"),
    )
}

/// Only TLS_CHACHA20_POLY1305_SHA256 was offered and chosen.
pub async fn chacha20(captures: &Captures) -> CheckResult {
    let name = "chacha20";
    let rows = match fields(
        captures,
        &captures.client_pcap,
        "tls.handshake.ciphersuite",
        &["tls.handshake.ciphersuite"],
    )
    .await
    {
        Ok(rows) => rows,
        Err(e) => return failed_to_run(name, e),
    };
    let suites: BTreeSet<String> = rows.into_iter().flatten().flatten().collect();
    let ok = !suites.is_empty() && suites.iter().all(|s| s == "0x1303" || s == "4867");
    CheckResult::from_bool(name, ok, format!("cipher suites seen: {suites:?}"))
}

/// The server's initial_max_streams_bidi is at most 1000 (multiplexing).
pub async fn stream_limit(captures: &Captures) -> CheckResult {
    let name = "stream_limit";
    let field = "tls.quic.parameter.initial_max_streams_bidi";
    let rows = match fields(
        captures,
        &captures.client_pcap,
        &format!("udp.srcport=={} && {field}", captures.relay_port),
        &[field],
    )
    .await
    {
        Ok(rows) => rows,
        Err(e) => return failed_to_run(name, e),
    };
    let limits: Vec<u64> = rows.into_iter().flatten().flatten().filter_map(|v| v.parse().ok()).collect();
    let ok = !limits.is_empty() && limits.iter().all(|l| *l <= 1000);
    CheckResult::from_bool(name, ok, format!("server initial_max_streams_bidi: {limits:?}"))
}

/// The first server packet on each new path carried a PATH_CHALLENGE, and the client answered each.
pub async fn path_validation(captures: &Captures) -> CheckResult {
    let name = "path_challenge";
    let run = async {
        let server_rows = fields(
            captures,
            &captures.server_pcap,
            &format!("udp.srcport=={} && quic", captures.server_port),
            &["ip.dst", "ipv6.dst", "udp.dstport", "quic.path_challenge.data"],
        )
        .await?;
        let client_rows = fields(
            captures,
            &captures.client_pcap,
            &format!("udp.dstport=={} && quic.path_response.data", captures.relay_port),
            &["quic.path_response.data"],
        )
        .await?;
        Ok::<_, anyhow::Error>((server_rows, client_rows))
    };
    let (server_rows, client_rows) = match run.await {
        Ok(rows) => rows,
        Err(e) => return failed_to_run(name, e),
    };
    let mut last: Option<String> = None;
    let mut paths: BTreeSet<String> = BTreeSet::new();
    let mut challenges: BTreeSet<String> = BTreeSet::new();
    for row in &server_rows {
        let ip = row.first().and_then(|v| v.first()).or_else(|| row.get(1).and_then(|v| v.first()));
        let port = row.get(2).and_then(|v| v.first());
        let path = format!("{}:{}", ip.map_or("?", |s| s.as_str()), port.map_or("?", |s| s.as_str()));
        match &last {
            None => last = Some(path),
            Some(previous) if *previous != path && !paths.contains(&path) => {
                paths.insert(previous.clone());
                last = Some(path.clone());
                match row.get(3).filter(|v| !v.is_empty()) {
                    Some(data) => challenges.extend(data.iter().cloned()),
                    None => {
                        return CheckResult::from_bool(
                            name,
                            false,
                            format!("first server packet on new path {path} had no PATH_CHALLENGE"),
                        );
                    }
                }
            }
            Some(_) => {}
        }
    }
    if let Some(last) = last {
        paths.insert(last);
    }
    let responses: BTreeSet<String> = client_rows.into_iter().flatten().flatten().collect();
    let unanswered: Vec<&String> = challenges.iter().filter(|c| !responses.contains(*c)).collect();
    let ok = paths.len() > 1 && unanswered.is_empty();
    CheckResult::from_bool(
        name,
        ok,
        format!("server used {} path(s), {} challenge(s), unanswered: {unanswered:?}", paths.len(), challenges.len()),
    )
}

/// Stream bytes the client sent in 1-RTT packets: small when its requests went in 0-RTT (the runner's
/// zerortt check bounds the client's 1-RTT payload by half the length of all file names).
pub async fn one_rtt_client_stream_bytes(captures: &Captures, at_most: usize) -> CheckResult {
    let name = "zerortt_1rtt";
    let filter = format!("udp.dstport=={} && quic.header_form==0 && quic.stream_data", captures.relay_port);
    let rows = match fields(captures, &captures.client_pcap, &filter, &["quic.stream_data"]).await {
        Ok(rows) => rows,
        Err(e) => return failed_to_run(name, e),
    };
    let bytes: usize = rows.iter().flatten().flatten().map(|hex| hex.len() / 2).sum();
    CheckResult::from_bool(
        name,
        bytes <= at_most,
        format!("client sent {bytes} B of stream data in 1-RTT packets (at most {at_most}: requests must go in 0-RTT)"),
    )
}
