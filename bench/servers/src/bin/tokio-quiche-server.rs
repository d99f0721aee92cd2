//! A minimal `/bytes/N` HTTP/3 server on tokio-quiche 0.20, for the side-by-side benchmark.
//! Usage: `tokio-quiche-server [IP:PORT]`.

use futures_util::{SinkExt, StreamExt};
use quiver_bench_servers::{chunks, listen_addr, requested_bytes, self_signed};
use tokio_quiche::http3::driver::{H3Event, IncomingH3Headers, OutboundFrame, ServerH3Event};
use tokio_quiche::http3::settings::Http3Settings;
use tokio_quiche::metrics::DefaultMetrics;
use tokio_quiche::quiche::h3::{Header, NameValue};
use tokio_quiche::settings::{CertificateKind, Hooks, QuicSettings, TlsCertificatePaths};
use tokio_quiche::{ConnectionParams, ServerH3Driver};

#[tokio::main]
async fn main() {
    let addr = listen_addr();
    // tokio-quiche loads certificates from files.
    let dir = std::env::temp_dir().join(format!("tokio-quiche-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (_, _, cert_pem, key_pem) = self_signed();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert_pem).expect("write cert");
    std::fs::write(&key_path, key_pem).expect("write key");
    let socket = tokio::net::UdpSocket::bind(addr).await.expect("bind");
    let params = ConnectionParams::new_server(
        QuicSettings::default(),
        TlsCertificatePaths {
            cert: cert_path.to_str().expect("utf-8 path"),
            private_key: key_path.to_str().expect("utf-8 path"),
            kind: CertificateKind::X509,
        },
        Hooks::default(),
    );
    let mut listeners = tokio_quiche::listen([socket], params, DefaultMetrics).expect("listen");
    println!("tokio-quiche server on https://{addr}/");
    let connections = &mut listeners[0];
    while let Some(connection) = connections.next().await {
        let Ok(connection) = connection else { continue };
        let (driver, mut controller) = ServerH3Driver::new(Http3Settings::default());
        connection.start(driver);
        tokio::spawn(async move {
            while let Some(event) = controller.event_receiver_mut().recv().await {
                match event {
                    ServerH3Event::Headers { incoming_headers, .. } => {
                        tokio::spawn(respond(incoming_headers));
                    }
                    ServerH3Event::Core(H3Event::ConnectionShutdown(_) | H3Event::ConnectionError(_)) => break,
                    ServerH3Event::Core(_) => {}
                }
            }
        });
    }
}

async fn respond(request: IncomingH3Headers) {
    let path = request.headers.iter().find(|field| field.name() == b":path").map(|field| field.value().to_vec());
    let mut send = request.send;
    let Some(len) = path.as_deref().and_then(requested_bytes) else {
        let head = vec![Header::new(b":status", b"404"), Header::new(b"content-length", b"0")];
        let _ = send.send(OutboundFrame::Headers(head, None)).await;
        let _ = send.send(OutboundFrame::Body(Default::default(), true)).await;
        return;
    };
    let head = vec![Header::new(b":status", b"200"), Header::new(b"content-length", len.to_string().as_bytes())];
    if send.send(OutboundFrame::Headers(head, None)).await.is_err() {
        return;
    }
    if len == 0 {
        let _ = send.send(OutboundFrame::Body(Default::default(), true)).await;
        return;
    }
    let mut remaining = len;
    for chunk in chunks(len) {
        remaining -= chunk.len() as u64;
        if send.send(OutboundFrame::Body(chunk, remaining == 0)).await.is_err() {
            return;
        }
    }
}
