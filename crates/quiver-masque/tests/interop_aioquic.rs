//! A second independent CONNECT-UDP client, on aioquic (Python; QUIC, TLS, QPACK and HTTP Datagrams
//! of its own): several tunnels on one connection through our proxy, then a denied target. The client
//! is `aioquic_connect_udp.py` beside this file. Needs python3 with aioquic (`./scripts/test`
//! installs it): without it the test fails under `CI=true` and is skipped elsewhere.

mod support;

use quiver_test_support::{Tool, require};
use support::{guarded, loopback_config, start_proxy, udp_echo};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aioquic_connect_udp.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_client_tunnels_udp_through_the_proxy() {
    if !require(Tool::Aioquic) {
        return;
    }
    let proxy = start_proxy(loopback_config());
    let echo = udp_echo().await;
    let cafile = std::env::temp_dir().join(format!("quiver-masque-aioquic-{}.pem", std::process::id()));
    std::fs::write(&cafile, proxy.identity.certificate_chain_pem()).unwrap();
    let run = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .args(["--port", &proxy.endpoint.local_addr().port().to_string()])
        .args(["--target-port", &echo.port().to_string()])
        .arg("--cafile")
        .arg(&cafile)
        .kill_on_drop(true)
        .output();
    let output = guarded("the aioquic client", run).await.unwrap();
    std::fs::remove_file(&cafile).ok();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "aioquic client failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("ok 3 tunnels") && stdout.contains("ok 300 datagrams"), "{stdout}");
    let stats = proxy.proxy.stats();
    assert_eq!((stats.tunnels_opened, stats.refused_policy), (3, 1), "{stats:?}");
    assert!(stats.datagrams_from_target >= 300, "{stats:?}");
}
