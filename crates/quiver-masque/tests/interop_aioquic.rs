//! A second independent CONNECT-UDP client, on aioquic (Python; QUIC, TLS, QPACK and HTTP Datagrams
//! of its own): several tunnels on one connection through our proxy, then a denied target. The client
//! is `aioquic_connect_udp.py` beside this file. Skipped where aioquic is not installed (`.ci/run`
//! installs it).

mod support;

use std::process::Stdio;

use support::{GUARD, loopback_config, start_proxy, udp_echo};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aioquic_connect_udp.py");

fn aioquic_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import aioquic"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_client_tunnels_udp_through_the_proxy() {
    if !aioquic_available() {
        eprintln!("skipped: python3 with aioquic is not installed (pip install aioquic)");
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
    let output = tokio::time::timeout(GUARD, run).await.expect("aioquic client timed out").unwrap();
    std::fs::remove_file(&cafile).ok();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "aioquic client failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("ok 3 tunnels") && stdout.contains("ok 300 datagrams"), "{stdout}");
    let stats = proxy.proxy.stats();
    assert_eq!((stats.tunnels_opened, stats.refused_policy), (3, 1), "{stats:?}");
    assert!(stats.datagrams_from_target >= 300, "{stats:?}");
}
