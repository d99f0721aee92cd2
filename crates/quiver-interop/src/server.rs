//! The server role: serves `WWW` over hq-interop and HTTP/3 on one endpoint until killed, choosing the
//! application by each connection's negotiated ALPN.

use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use quiver::{AddressValidation, Endpoint, IncomingConnection, ServerConfig};
use quiver_h3::RecvBody;

use crate::files::resolve_under;
use crate::hq::{self, HqServer, KEY_UPDATE_AFTER_BYTES};
use crate::settings::{Settings, TestCase};
use crate::wire;

/// Runs the server until the process is killed.
///
/// # Errors
/// A description of what kept it from starting: unreadable certificates, an address it cannot bind.
pub async fn run(settings: &Settings) -> Result<(), String> {
    let endpoint = Endpoint::server(settings.listen, server_config(settings)?)
        .map_err(|err| format!("cannot listen on {}: {err}", settings.listen))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "LISTENING {}", endpoint.local_addr())
        .and_then(|()| stdout.flush())
        .map_err(|err| err.to_string())?;
    drop(stdout);
    tracing::info!(addr = %endpoint.local_addr(), test_case = ?settings.test_case, "serving {}", settings.www.display());

    let www: Arc<Path> = settings.www.clone().into();
    let h3 = {
        let www = www.clone();
        quiver_h3::Server::new(tower::service_fn(move |request| serve_file(www.clone(), request)))
    };
    let key_update_after = (settings.test_case == TestCase::Keyupdate).then_some(KEY_UPDATE_AFTER_BYTES);
    let accept = |incoming: IncomingConnection| {
        let peer = incoming.peer_addr();
        let handle = match incoming.alpn() {
            hq::ALPN => incoming.start(HqServer::new(www.clone(), key_update_after)),
            quiver_h3::ALPN => incoming.start(h3.application()),
            other => {
                tracing::info!(%peer, alpn = %String::from_utf8_lossy(other), "refusing a connection with an unknown ALPN");
                return;
            }
        };
        crate::log_connection("server", &handle);
        tracing::info!(retries_sent = endpoint.stats().retries_sent, "endpoint counters");
    };
    quiver::serve(&endpoint, accept, std::future::pending(), Duration::ZERO).await;
    Ok(())
}

/// The server's handshake deadline: the interop runner allows a case minutes, not seconds.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn server_config(settings: &Settings) -> Result<ServerConfig, String> {
    let validation =
        if settings.test_case == TestCase::Retry { AddressValidation::Always } else { AddressValidation::Never };
    let mut builder = ServerConfig::builder()
        .alpn([hq::ALPN, quiver_h3::ALPN])
        .certificate_pem_files(settings.certs.join("cert.pem"), settings.certs.join("priv.key"))
        .address_validation(validation)
        // Always on: the zerortt case's client decides whether to use it, and a server that refuses
        // early data in other cases gains nothing.
        .early_data(true)
        // The handshakeloss and handshakecorruption cases lose 30 % of packets in bursts: a client's
        // backed-off retransmissions can honestly take longer than the 10 s production default.
        .handshake_timeout(HANDSHAKE_TIMEOUT);
    if settings.test_case == TestCase::Chacha20 {
        builder = wire::chacha20_only_server(builder);
    }
    if let Some(path) = &settings.keylog {
        builder = builder.keylog_path(path);
    }
    if let Some(dir) = crate::qlog_dir(settings)? {
        builder = builder.qlog_dir(dir);
    }
    builder.build().map_err(|err| format!("server configuration: {err}"))
}

/// The file a request asks for: 200 with its bytes, 404 when there is none, 400 for a path that would
/// leave `WWW`.
async fn serve_file(www: Arc<Path>, request: Request<RecvBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let (status, body) = match resolve_under(&www, path) {
        Ok(file) => match tokio::fs::read(&file).await {
            Ok(bytes) => (StatusCode::OK, Bytes::from(bytes)),
            Err(err) => {
                tracing::info!(path, %err, "no such file");
                (StatusCode::NOT_FOUND, Bytes::new())
            }
        },
        Err(err) => {
            tracing::info!(%err, "refusing request");
            (StatusCode::BAD_REQUEST, Bytes::new())
        }
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    Ok(response)
}
