//! The client role: downloads every URL of `REQUESTS` into `DOWNLOADS` the way the test case asks.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::tls::{self, TicketStore};
use crate::{ALPN_H3, ALPN_HQ, Settings, Target, TestCase};

/// transfer: per-stream and per-connection receive windows small enough that the server runs into flow
/// control and needs the client's MAX_STREAM_DATA / MAX_DATA updates (quinn's windows are fixed, so they
/// stay this size for the whole connection: small, not tiny, so a delayed path still moves megabytes).
const TRANSFER_STREAM_WINDOW_BYTES: u32 = 64 * 1024;
const TRANSFER_CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;
/// resumption/zerortt: how long the first connection waits for a session ticket before giving up. A
/// ticket normally arrives with the server's first flight after the handshake; this only bounds failure.
const TICKET_WAIT: Duration = Duration::from_secs(5);
/// hq-interop's application close code for a clean end.
const CLOSE_NO_ERROR: u32 = 0;
/// connectionmigration: the application error the client closes with when it could not move.
const MIGRATION_FAILED: u32 = 1;
/// HTTP/3 closes with H3_NO_ERROR (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;

pub(crate) async fn run(settings: &Settings) -> anyhow::Result<()> {
    let targets = settings.requests.iter().map(|url| Target::parse(url)).collect::<anyhow::Result<Vec<_>>>()?;
    let Some(first) = targets.first() else { bail!("REQUESTS is empty") };
    let remote = tokio::net::lookup_host((first.host.as_str(), first.port))
        .await
        .with_context(|| format!("cannot resolve {}", first.host))?
        .next()
        .with_context(|| format!("{} has no address", first.host))?;
    let local: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };

    let tickets = TicketStore::new();
    let alpn = if settings.testcase == TestCase::Http3 { ALPN_H3 } else { ALPN_HQ };
    let crypto = tls::client_config(settings.testcase, alpn, tickets.clone())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    if settings.testcase == TestCase::Transfer {
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(TRANSFER_STREAM_WINDOW_BYTES.into());
        transport.receive_window(TRANSFER_CONNECTION_WINDOW_BYTES.into());
        config.transport_config(Arc::new(transport));
    }
    let mut endpoint = quinn::Endpoint::client(local).with_context(|| format!("cannot bind {local}"))?;
    endpoint.set_default_client_config(config);
    tokio::fs::create_dir_all(&settings.downloads)
        .await
        .with_context(|| format!("cannot create {}", settings.downloads.display()))?;

    let client = Client {
        endpoint: endpoint.clone(),
        remote,
        server_name: first.host.clone(),
        downloads: settings.downloads.clone(),
        testcase: settings.testcase,
    };
    let outcome = match settings.testcase {
        TestCase::Multiconnect => {
            for target in &targets {
                let connection = client.connect().await?;
                client.fetch_all_hq(&connection, std::slice::from_ref(target)).await?;
                connection.close(CLOSE_NO_ERROR.into(), b"done");
            }
            Ok(())
        }
        TestCase::Resumption | TestCase::ZeroRtt => client.resume(&targets, &tickets).await,
        TestCase::Http3 => client.fetch_all_h3(&settings.requests, &targets).await,
        _ => {
            let connection = client.connect().await?;
            let outcome = client.fetch_all_hq(&connection, &targets).await;
            connection.close(CLOSE_NO_ERROR.into(), b"done");
            outcome
        }
    };
    // Let the CONNECTION_CLOSE frames go out before the process exits.
    endpoint.wait_idle().await;
    outcome
}

struct Client {
    endpoint: quinn::Endpoint,
    remote: SocketAddr,
    server_name: String,
    downloads: PathBuf,
    testcase: TestCase,
}

impl Client {
    async fn connect(&self) -> anyhow::Result<quinn::Connection> {
        let connection = self.endpoint.connect(self.remote, &self.server_name)?.await?;
        eprintln!("quinn-interop: connected to {}", self.remote);
        Ok(connection)
    }

    /// resumption and zerortt: the first URL on one connection, the rest on a second one that resumes
    /// the first's session (zerortt: sending its requests as 0-RTT).
    async fn resume(&self, targets: &[Target], tickets: &TicketStore) -> anyhow::Result<()> {
        let Some((first, rest)) = targets.split_first() else { return Ok(()) };
        let connection = self.connect().await?;
        self.fetch_all_hq(&connection, std::slice::from_ref(first)).await?;
        tokio::time::timeout(TICKET_WAIT, tickets.wait_for_ticket())
            .await
            .context("the server sent no session ticket on the first connection")?;
        connection.close(CLOSE_NO_ERROR.into(), b"done");
        if rest.is_empty() {
            return Ok(());
        }

        let connecting = self.endpoint.connect(self.remote, &self.server_name)?;
        if self.testcase == TestCase::Resumption {
            let connection = connecting.await?;
            if tickets.offered() == 0 {
                bail!("the second connection did not offer the session ticket");
            }
            let outcome = self.fetch_all_hq(&connection, rest).await;
            connection.close(CLOSE_NO_ERROR.into(), b"done");
            return outcome;
        }
        let (connection, accepted) = match connecting.into_0rtt() {
            Ok(pair) => pair,
            Err(_) => bail!("no 0-RTT possible on the second connection (no usable ticket)"),
        };
        eprintln!("quinn-interop: sending {} request(s) as 0-RTT", rest.len());
        let (outcome, accepted) = tokio::join!(self.fetch_all_hq(&connection, rest), accepted);
        let outcome = if accepted {
            eprintln!("quinn-interop: 0-RTT accepted");
            outcome
        } else {
            // Rejected 0-RTT streams fail with ZeroRttRejected; the connection itself carries on in 1-RTT.
            eprintln!("quinn-interop: 0-RTT rejected by the server; requesting again in 1-RTT");
            self.fetch_all_hq(&connection, rest).await
        };
        connection.close(CLOSE_NO_ERROR.into(), b"done");
        outcome
    }

    /// Downloads every target over hq-interop on `connection`, one stream each, all at once.
    async fn fetch_all_hq(&self, connection: &quinn::Connection, targets: &[Target]) -> anyhow::Result<()> {
        let mid_transfer = Arc::new(MidTransfer::new(self.testcase, &self.endpoint, connection));
        let mut fetches = JoinSet::new();
        for target in targets {
            let file = self.downloads.join(target.file_name()?);
            let (connection, path, mid_transfer) = (connection.clone(), target.path.clone(), mid_transfer.clone());
            fetches.spawn(async move {
                fetch_hq(&connection, &path, file, &mid_transfer).await.with_context(|| format!("GET {path}"))
            });
        }
        while let Some(outcome) = fetches.join_next().await {
            outcome??;
        }
        Ok(())
    }

    /// http3: every URL as an HTTP/3 GET on one connection, all at once.
    async fn fetch_all_h3(&self, urls: &[String], targets: &[Target]) -> anyhow::Result<()> {
        let connection = self.connect().await?;
        let (mut driver, send_request) =
            h3::client::builder().build::<_, _, Bytes>(h3_quinn::Connection::new(connection.clone())).await?;
        let driver = tokio::spawn(async move { std::future::poll_fn(|context| driver.poll_close(context)).await });
        let mut fetches = JoinSet::new();
        for (url, target) in urls.iter().zip(targets) {
            let file = self.downloads.join(target.file_name()?);
            let (mut send_request, url) = (send_request.clone(), url.clone());
            fetches.spawn(async move {
                let outcome = async {
                    let mut stream = send_request.send_request(http::Request::get(&url).body(())?).await?;
                    stream.finish().await?;
                    let response = stream.recv_response().await?;
                    if response.status() != http::StatusCode::OK {
                        bail!("status {}", response.status());
                    }
                    let mut output = tokio::fs::File::create(&file).await?;
                    while let Some(mut chunk) = stream.recv_data().await? {
                        output.write_all(&chunk.copy_to_bytes(chunk.remaining())).await?;
                    }
                    output.flush().await?;
                    Ok(())
                };
                outcome.await.with_context(|| format!("GET {url}"))
            });
        }
        let mut outcome = Ok(());
        while let Some(fetched) = fetches.join_next().await {
            if let Err(error) = fetched.map_err(anyhow::Error::from).and_then(|fetched| fetched) {
                outcome = Err(error);
                break;
            }
        }
        drop(send_request);
        connection.close(H3_NO_ERROR.into(), b"");
        driver.abort();
        outcome
    }
}

async fn fetch_hq(
    connection: &quinn::Connection,
    path: &str,
    file: PathBuf,
    mid_transfer: &MidTransfer,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(format!("GET {path}\r\n").as_bytes()).await?;
    send.finish()?;
    let mut output =
        tokio::fs::File::create(&file).await.with_context(|| format!("cannot create {}", file.display()))?;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        output.write_all(&chunk.bytes).await?;
        mid_transfer.after_data();
    }
    output.flush().await?;
    Ok(())
}

/// What keyupdate and connectionmigration do once, when the first response bytes have arrived (the
/// transfer is under way, and for a multi-megabyte download far from over).
struct MidTransfer {
    action: Option<MidTransferAction>,
    done: AtomicBool,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

#[derive(Clone, Copy)]
enum MidTransferAction {
    KeyUpdate,
    Migrate,
}

impl MidTransfer {
    fn new(testcase: TestCase, endpoint: &quinn::Endpoint, connection: &quinn::Connection) -> Self {
        let action = match testcase {
            TestCase::KeyUpdate => Some(MidTransferAction::KeyUpdate),
            TestCase::ConnectionMigration => Some(MidTransferAction::Migrate),
            _ => None,
        };
        Self { action, done: AtomicBool::new(false), endpoint: endpoint.clone(), connection: connection.clone() }
    }

    fn after_data(&self) {
        let Some(action) = self.action else { return };
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        match action {
            MidTransferAction::KeyUpdate => {
                self.connection.force_key_update();
                eprintln!("quinn-interop: initiated a key update");
            }
            MidTransferAction::Migrate => match self.migrate() {
                Ok(local) => eprintln!("quinn-interop: migrated to local address {local}"),
                Err(error) => {
                    // The case is about the migration: without it the run must fail, not pass quietly.
                    eprintln!("quinn-interop: migration failed: {error:#}");
                    self.connection.close(MIGRATION_FAILED.into(), b"migration failed");
                }
            },
        }
    }

    /// Moves the endpoint to a fresh UDP socket (new local port); quinn then switches the connection to
    /// an unused connection ID and probes the new path.
    fn migrate(&self) -> anyhow::Result<SocketAddr> {
        let current = self.endpoint.local_addr()?;
        let socket = std::net::UdpSocket::bind((current.ip(), 0))?;
        let local = socket.local_addr()?;
        self.endpoint.rebind(socket)?;
        Ok(local)
    }
}
