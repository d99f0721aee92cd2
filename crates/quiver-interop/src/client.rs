//! The client role: downloads every URL of `REQUESTS` into `DOWNLOADS` the way the test case asks
//! (one connection or several, hq-interop or HTTP/3, resumed, in 0-RTT, migrating), and checks that
//! what the case is about happened.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use quiver::{ClientConfig, Endpoint};
use quiver_h3::H3Connection;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::hq::{ClientReport, Download, HqClient, KEY_UPDATE_AFTER_BYTES};
use crate::settings::{Settings, TestCase};
use crate::url::RequestUrl;
use crate::wire;

/// The transfer case's initial flow-control windows: small, so the server must wait for window updates
/// (quiche's auto-tuning grows them from here).
const TRANSFER_CONNECTION_WINDOW_BYTES: u64 = 64 * 1024;
/// Per-stream initial window in the transfer case.
const TRANSFER_STREAM_WINDOW_BYTES: u64 = 16 * 1024;

/// Bytes received before the connectionmigration case moves to its second socket: early in the
/// runner's multi-megabyte file (hq-interop has no length header, so "a third of the transfer" is
/// approximated by a fixed amount).
pub const MIGRATE_AFTER_BYTES: u64 = 200_000;

/// The name the client puts in SNI when a URL's host is an IP address (an IP literal is not a valid
/// server name, and the certificate is not verified anyway).
const SERVER_NAME_FOR_IP: &str = "localhost";

/// Downloads every URL.
///
/// # Errors
/// What failed: the name lookup, the handshake, a download, or the case's own check (a connection
/// that should have resumed did not).
pub async fn run(settings: &Settings) -> Result<(), String> {
    let first = &settings.requests[0];
    if let Some(other) = settings.requests.iter().find(|url| url.authority() != first.authority()) {
        return Err(format!("every URL must name the same server: {first} and {other} do not"));
    }
    let server = resolve(first).await?;
    let server_name = if first.host.parse::<IpAddr>().is_ok() { SERVER_NAME_FOR_IP } else { first.host.as_str() };
    std::fs::create_dir_all(&settings.downloads)
        .map_err(|err| format!("cannot create {}: {err}", settings.downloads.display()))?;
    let case = settings.test_case;
    let local = unspecified_like(server);
    let mut builder = Endpoint::builder().bind(local);
    if case == TestCase::Connectionmigration {
        builder = builder.bind(local);
    }
    let endpoint = builder
        .client(client_config(settings)?)
        .build()
        .map_err(|err| format!("cannot open a client socket on {local}: {err}"))?;
    let session = Session { endpoint: &endpoint, server, server_name, downloads: &settings.downloads };
    let urls = &settings.requests;
    match case {
        TestCase::Http3 => session.fetch_h3(urls).await,
        TestCase::Multiconnect => {
            for url in urls {
                session.fetch_hq(std::slice::from_ref(url), Extras::default()).await?;
            }
            Ok(())
        }
        TestCase::Resumption | TestCase::Zerortt => {
            let first = session.fetch_hq(&urls[..1], Extras::default()).await?;
            if urls.len() == 1 {
                tracing::warn!("only one URL: there is no second connection to resume");
                return Ok(());
            }
            let second = session.fetch_hq(&urls[1..], Extras::default()).await?;
            check_resumption(case, &first, &second)
        }
        TestCase::Keyupdate => {
            let extras = Extras { key_update_after: Some(KEY_UPDATE_AFTER_BYTES), ..Extras::default() };
            let report = session.fetch_hq(urls, extras).await?;
            if report.key_updated { Ok(()) } else { Err("no key update happened during the transfer".into()) }
        }
        TestCase::Connectionmigration => {
            let second_socket = endpoint.local_addrs()[1];
            session.fetch_hq(urls, Extras { migrate_to: Some(second_socket), ..Extras::default() }).await.map(drop)
        }
        TestCase::Handshake | TestCase::Transfer | TestCase::Chacha20 | TestCase::Retry => {
            session.fetch_hq(urls, Extras::default()).await.map(drop)
        }
    }
}

/// What the resumption and zerortt cases are about, checked on the client's side.
fn check_resumption(case: TestCase, first: &ClientReport, second: &ClientReport) -> Result<(), String> {
    if first.resumed {
        return Err("the first connection claims to be resumed".into());
    }
    if !second.resumed {
        return Err("the second connection did not resume the first one's session".into());
    }
    if case == TestCase::Zerortt && !(second.sent_in_early_data && second.early_data_accepted) {
        return Err(format!(
            "the second connection's requests were not accepted as 0-RTT (sent early: {}, accepted: {})",
            second.sent_in_early_data, second.early_data_accepted
        ));
    }
    if case == TestCase::Resumption && second.sent_in_early_data {
        return Err("the resumption case must not use 0-RTT".into());
    }
    Ok(())
}

fn client_config(settings: &Settings) -> Result<ClientConfig, String> {
    let case = settings.test_case;
    let mut builder = ClientConfig::builder()
        .alpn([case.client_alpn()])
        // The runner's certificates are self-signed for its own names.
        .insecure_skip_verification()
        .without_system_roots()
        // Every case but these two makes full handshakes, as the runner counts them.
        .session_resumption(matches!(case, TestCase::Resumption | TestCase::Zerortt))
        .early_data(case == TestCase::Zerortt);
    if case == TestCase::Transfer {
        builder = builder.flow_control(TRANSFER_CONNECTION_WINDOW_BYTES, TRANSFER_STREAM_WINDOW_BYTES);
    }
    if case == TestCase::Chacha20 {
        builder = wire::chacha20_only_client(builder);
    }
    if let Some(path) = &settings.keylog {
        builder = builder.keylog_path(path);
    }
    if let Some(dir) = crate::qlog_dir(settings)? {
        builder = builder.qlog_dir(dir);
    }
    builder.build().map_err(|err| format!("client configuration: {err}"))
}

async fn resolve(url: &RequestUrl) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|err| format!("cannot resolve {}: {err}", url.host))?;
    addrs.next().ok_or_else(|| format!("{} has no address", url.host))
}

/// Port 0 on every address of `server`'s family.
fn unspecified_like(server: SocketAddr) -> SocketAddr {
    let ip = if server.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    SocketAddr::new(ip, 0)
}

/// What one hq-interop connection does besides downloading.
#[derive(Debug, Default, Clone, Copy)]
struct Extras {
    key_update_after: Option<u64>,
    migrate_to: Option<SocketAddr>,
}

/// Where the client connects to and saves to.
struct Session<'a> {
    endpoint: &'a Endpoint,
    server: SocketAddr,
    server_name: &'a str,
    downloads: &'a Path,
}

impl Session<'_> {
    fn target(&self, url: &RequestUrl) -> PathBuf {
        // `RequestUrl::parse` refused URLs without a usable file name.
        self.downloads.join(url.file_name().unwrap_or("index"))
    }

    /// Downloads `urls` on one new hq-interop connection, all at once.
    async fn fetch_hq(&self, urls: &[RequestUrl], extras: Extras) -> Result<ClientReport, String> {
        let downloads = urls.iter().map(|url| Download::new(&url.path, self.target(url))).collect();
        let (app, mut progress, finished) = HqClient::new(downloads, extras.key_update_after);
        let connection = self
            .endpoint
            .connect(self.server, self.server_name, app)
            .await
            .map_err(|err| format!("cannot connect to {}: {err}", self.server))?;
        crate::log_connection("client", &connection);
        if let Some(second_socket) = extras.migrate_to {
            if progress.wait_for(|received| *received >= MIGRATE_AFTER_BYTES).await.is_err() {
                tracing::warn!("the transfer ended before {MIGRATE_AFTER_BYTES} bytes; migrating anyway");
            }
            self.endpoint
                .migrate(&connection, second_socket)
                .await
                .map_err(|err| format!("cannot migrate to {second_socket}: {err}"))?;
            tracing::info!(to = %second_socket, received = *progress.borrow(), "migration done");
        }
        let outcome = finished.await.unwrap_or_else(|_| Err("the connection task ended without a word".into()));
        connection.close(0, "done");
        // Wait for the close to go out (and, with resumption, for the session ticket to be stored).
        connection.closed().await;
        let report = outcome?;
        tracing::info!(?report, "downloads complete");
        Ok(report)
    }

    /// Downloads `urls` on one HTTP/3 connection, all at once.
    async fn fetch_h3(&self, urls: &[RequestUrl]) -> Result<(), String> {
        let connection = H3Connection::connect(self.endpoint, self.server, self.server_name)
            .await
            .map_err(|err| format!("cannot connect to {}: {err}", self.server))?;
        crate::log_connection("client", connection.quic());
        let mut requests = JoinSet::new();
        for url in urls {
            let connection = connection.clone();
            let target = self.target(url);
            let url = url.clone();
            requests.spawn(async move { fetch_one_h3(&connection, &url, &target).await });
        }
        let mut outcome = Ok(());
        while let Some(result) = requests.join_next().await {
            let result = result.map_err(|err| format!("a request task failed: {err}")).and_then(|result| result);
            if outcome.is_ok() {
                outcome = result;
            }
        }
        connection.quic().close(0, "done");
        connection.quic().closed().await;
        outcome
    }
}

async fn fetch_one_h3(connection: &H3Connection, url: &RequestUrl, target: &Path) -> Result<(), String> {
    let request =
        http::Request::get(url.to_string()).body(Full::new(Bytes::new())).map_err(|err| format!("{url}: {err}"))?;
    let response = connection.send_request(request).await.map_err(|err| format!("{url}: {err}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("{url}: status {}", response.status()));
    }
    let mut file =
        tokio::fs::File::create(target).await.map_err(|err| format!("cannot create {}: {err}", target.display()))?;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| format!("{url}: {err}"))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(|err| format!("writing {}: {err}", target.display()))?;
        }
    }
    file.flush().await.map_err(|err| format!("writing {}: {err}", target.display()))
}
