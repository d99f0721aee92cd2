//! `quiver doq` end to end: `doq serve` on 127.0.0.1 port 0 in front of a scripted resolver,
//! `doq query` against it and against an independent DoQ server (hickory-net's, on quinn + rustls).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;

use hickory_net::quic::QuicServer;
use quiver_doq::Message;
use quiver_doq::test_util::TestUpstream;
use quiver_test_support::guarded;
use support::{QUIVER, Served};

fn serve(upstream: SocketAddr, extra: &[&str]) -> Served {
    let upstream = upstream.to_string();
    let args = [&["doq", "serve", "--listen", "127.0.0.1:0", "--upstream", &upstream], extra].concat();
    // "quiver doq serving DNS over QUIC on 127.0.0.1:PORT, forwarding to ..."
    support::serve(&args, "serving DNS over QUIC", "on ")
}

async fn query(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(QUIVER).args(["doq", "query"]).args(args).output();
    guarded("quiver doq query", run).await.expect("run quiver doq query")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_and_query_with_dig_like_output() {
    let upstream = TestUpstream::start().await.expect("upstream");
    let served = serve(upstream.addr(), &["--cache-bytes", "65536"]);
    let server = format!("@{}", served.addr);

    let a = query(&["-k", &server, "www.test.", "A"]).await;
    assert!(a.status.success(), "{a:?}");
    let text = stdout(&a);
    for expected in [
        ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 0",
        ";; flags: qr rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1",
        ";; QUESTION SECTION:\n;www.test.\t\t\tIN\tA",
        ";; ANSWER SECTION:\nwww.test.\t\t300\tIN\tA\t192.0.2.7",
        "; PAD: (",
        ";; Query time: ",
        &format!(";; SERVER: 127.0.0.1#{}(127.0.0.1) (QUIC)", served.addr.port()),
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    let aaaa = query(&["-k", &server, "www.test", "aaaa", "--no-padding"]).await;
    assert!(stdout(&aaaa).contains("www.test.\t\t300\tIN\tAAAA\t2001:db8::7"), "{}", stdout(&aaaa));
    assert!(!stdout(&aaaa).contains("PAD"), "unpadded query, unpadded answer");
    let txt = query(&["-k", "www.test.", "TXT", &server]).await;
    assert!(stdout(&txt).contains("\"quiver test zone\""), "{}", stdout(&txt));
    let missing = query(&["-k", &server, "nowhere.example."]).await;
    assert!(missing.status.success());
    assert!(stdout(&missing).contains("status: NXDOMAIN"), "{}", stdout(&missing));
    let truncated = query(&["-k", &server, "truncated.test."]).await;
    assert!(stdout(&truncated).contains("truncated.test.\t\t300\tIN\tA\t192.0.2.7"), "{}", stdout(&truncated));
    assert_eq!(upstream.tcp_queries(), 1, "the truncated answer was fetched again over TCP");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_upstream_answers_servfail() {
    let upstream = TestUpstream::start().await.expect("upstream");
    let served = serve(upstream.addr(), &["--upstream-timeout-ms", "100"]);
    let output = query(&["-k", &format!("@{}", served.addr), "silent.test."]).await;
    assert!(output.status.success(), "{output:?}");
    assert!(stdout(&output).contains("status: SERVFAIL, id: 0"), "{}", stdout(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_usage_exits_2_and_failures_exit_1() {
    for args in [
        &["www.test.", "NOTATYPE"][..],
        &["a..b"],
        &["www.test.", "A", "extra"],
        &["@127.0.0.1:notaport", "www.test."],
        &["--timeout", "0", "www.test."],
    ] {
        let output = query(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
    let refused = Command::new(QUIVER)
        .args(["doq", "serve", "--listen", "127.0.0.1:53", "--upstream", "127.0.0.1:5353"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "port 53 is not for DoQ");
    for share in ["--max-upstream-per-connection", "--max-upstream-per-source"] {
        let zero = Command::new(QUIVER)
            .args(["doq", "serve", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:5353", share, "0"])
            .output()
            .unwrap();
        assert_eq!(zero.status.code(), Some(2), "{share} 0: {zero:?}");
    }

    // Nobody listens: the query times out.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    let output = query(&["-k", "--timeout", "0.3", &format!("@{dead}"), "www.test."]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("query to"), "{output:?}");
    drop(closed);

    // A self-signed certificate is refused without -k, with a hint.
    let upstream = TestUpstream::start().await.expect("upstream");
    let served = serve(upstream.addr(), &[]);
    let untrusted = query(&["--tls-name", "localhost", &format!("@{}", served.addr), "www.test."]).await;
    assert_eq!(untrusted.status.code(), Some(1), "{untrusted:?}");
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("-k"), "{untrusted:?}");
}

/// An independent DoQ server: hickory-net's `QuicServer` (quinn + rustls), answering from the same
/// scripted zone as the test upstream, one response then FIN per stream.
async fn hickory_server() -> (SocketAddr, String, tokio::task::JoinHandle<()>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let certified_key = rustls::sign::CertifiedKey::from_der(
        vec![certified.cert.der().clone()],
        key,
        &rustls::crypto::ring::default_provider(),
    )
    .unwrap();
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified_key));
    let mut server = QuicServer::new("127.0.0.1:0".parse().unwrap(), resolver).await.expect("hickory QuicServer");
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok(Some((mut connection, _))) = server.next().await {
            tokio::spawn(async move {
                while let Some(Ok(mut stream)) = connection.next().await {
                    tokio::spawn(async move {
                        let Ok(bytes) = stream.receive_bytes().await else { return };
                        let Ok(query) = Message::from_vec(&bytes) else { return };
                        let Some(answer) = TestUpstream::answer(&query, false) else { return };
                        if stream.send(answer).await.is_ok() {
                            let _ = stream.finish().await;
                        }
                    });
                }
            });
        }
    });
    (addr, pem, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn query_works_against_hickory_doq_server() {
    let (addr, pem, server) = hickory_server().await;
    let output = query(&["-k", &format!("@{addr}"), "www.test.", "AAAA"]).await;
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("status: NOERROR, id: 0"), "{text}");
    assert!(text.contains("www.test.\t\t300\tIN\tAAAA\t2001:db8::7"), "{text}");

    // With the server's certificate trusted instead of -k.
    let dir = std::env::temp_dir().join(format!("quiver-cli-doq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let verified =
        query(&["--cacert", ca.to_str().unwrap(), "--tls-name", "localhost", &format!("@{addr}"), "www.test.", "TXT"])
            .await;
    assert!(verified.status.success(), "{verified:?}");
    assert!(stdout(&verified).contains("\"quiver test zone\""), "{}", stdout(&verified));
    std::fs::remove_dir_all(dir).ok();
    server.abort();
}
