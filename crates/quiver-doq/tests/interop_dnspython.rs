//! An independent DoQ client — dnspython over aioquic, from PyPI — querying our forwarder with
//! certificate verification. Needs python3 with dnspython and aioquic (`./scripts/test` installs
//! them): without them it fails under `CI=true` and is skipped elsewhere (`quiver_test_support::tool`).

mod support;

use quiver_test_support::{Tool, require};
use support::{forwarder, guarded};

#[tokio::test]
async fn dnspython_queries_our_server() {
    if !require(Tool::Dnspython) {
        return;
    }
    let forwarder = forwarder(|server| server).await;
    let dir = std::env::temp_dir().join(format!("quiver-doq-dnspython-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &forwarder.certificate_pem).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dnspython_query.py");
    let port = forwarder.addr.port().to_string();
    let ca_path = ca.to_str().unwrap().to_owned();
    let output = guarded(
        "dnspython's queries",
        tokio::process::Command::new("python3")
            .args([script, &port, &ca_path, "www.test.:A", "www.test.:AAAA", "www.test.:TXT", "nowhere.example.:A"])
            .output(),
    )
    .await
    .expect("run python3");
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "dnspython failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "www.test. A NOERROR 0 192.0.2.7");
    assert_eq!(lines[1], "www.test. AAAA NOERROR 0 2001:db8::7");
    assert_eq!(lines[2], "www.test. TXT NOERROR 0 \"quiver test zone\" \"www.test.\"");
    assert_eq!(lines[3], "nowhere.example. A NXDOMAIN 0 ");
    // dnspython opens a connection per query.
    assert_eq!(forwarder.server.stats().answered_upstream, 4);
}
