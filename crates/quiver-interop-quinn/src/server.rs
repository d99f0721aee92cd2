//! The server role: serves `WWW` over hq-interop (HTTP/0.9) or h3, whichever ALPN the client picked.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use quinn::VarInt;

use crate::{ALPN_H3, ALPN_HQ, Settings, TestCase, tls};

/// Bidirectional streams a client may open at once: the runner's multiplexing case opens hundreds.
const MAX_CONCURRENT_STREAMS: u32 = 1000;
/// An HTTP/0.9 request is one short line; anything longer is not one.
const MAX_REQUEST_BYTES: usize = 4096;
/// Responses are written in pieces this big, so a key update can start early in the first one.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;
/// HTTP/0.9 has no error codes; this one resets a stream whose file does not exist.
const HQ_FILE_NOT_FOUND: u32 = 0x10;

/// What every connection of the server shares.
struct Shared {
    testcase: TestCase,
    www: PathBuf,
}

/// Binds `LISTEN`, prints `LISTENING <addr>`, and serves until the process is killed.
pub(crate) async fn run(settings: &Settings) -> anyhow::Result<()> {
    let crypto = tls::server_config(settings.testcase, &settings.certs)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into());
    config.transport_config(Arc::new(transport));
    let endpoint =
        quinn::Endpoint::server(config, settings.listen).with_context(|| format!("cannot bind {}", settings.listen))?;
    let local = endpoint.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "LISTENING {local}")?;
        stdout.flush()?;
    }
    eprintln!("quinn-interop: server {:?} on {local}", settings.testcase);

    let shared = Arc::new(Shared { testcase: settings.testcase, www: settings.www.clone() });
    while let Some(incoming) = endpoint.accept().await {
        if shared.testcase == TestCase::Retry && !incoming.remote_address_validated() {
            match incoming.retry() {
                Ok(()) => eprintln!("quinn-interop: sent a Retry"),
                Err(error) => {
                    // Only an Initial that already carried a token cannot be retried; serve it.
                    eprintln!("quinn-interop: cannot send a Retry ({error}); accepting");
                    tokio::spawn(serve_connection(error.into_incoming(), shared.clone()));
                }
            }
            continue;
        }
        tokio::spawn(serve_connection(incoming, shared.clone()));
    }
    Ok(())
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    if let Err(error) = try_serve_connection(incoming, shared).await {
        eprintln!("quinn-interop: connection from {remote}: {error:#}");
    }
}

async fn try_serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut connecting = incoming.accept()?;
    // The ALPN is known once the whole ClientHello is in; it can span several Initial packets (a
    // post-quantum key share does), so wait for it rather than read it off the first one.
    let alpn = connecting
        .handshake_data()
        .await
        .context("handshake")?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()
        .and_then(|data| data.protocol)
        .context("no ALPN negotiated")?;
    // On a server into_0rtt always succeeds: it lets requests sent as 0-RTT be answered right away.
    let (connection, handshake_done) = match connecting.into_0rtt() {
        Ok(pair) => pair,
        Err(_) => bail!("0.5-RTT conversion refused"),
    };
    let remote = connection.remote_address();
    tokio::spawn(async move {
        // On a server this only says the handshake finished (quinn reports true whatever the client sent).
        handshake_done.await;
        eprintln!("quinn-interop: handshake with {remote} complete");
    });
    let key_update = KeyUpdateOnce::new(shared.testcase == TestCase::KeyUpdate);
    if alpn == ALPN_HQ {
        serve_hq(connection, shared, key_update).await
    } else if alpn == ALPN_H3 {
        serve_h3(connection, shared, key_update).await
    } else {
        bail!("unexpected ALPN {:?}", String::from_utf8_lossy(&alpn))
    }
}

/// The keyupdate case's server side: one key update per connection, started after the first chunk of
/// the first response was handed to quinn.
#[derive(Clone)]
struct KeyUpdateOnce(Option<Arc<AtomicBool>>);

impl KeyUpdateOnce {
    fn new(enabled: bool) -> Self {
        Self(enabled.then(|| Arc::new(AtomicBool::new(false))))
    }

    fn after_first_chunk(&self, connection: &quinn::Connection) {
        if let Some(done) = &self.0
            && !done.swap(true, Ordering::SeqCst)
        {
            connection.force_key_update();
            eprintln!("quinn-interop: initiated a key update");
        }
    }
}

async fn serve_hq(connection: quinn::Connection, shared: Arc<Shared>, key_update: KeyUpdateOnce) -> anyhow::Result<()> {
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let (connection, shared, key_update) = (connection.clone(), shared.clone(), key_update.clone());
        tokio::spawn(async move {
            if let Err(error) = serve_hq_stream(&connection, send, recv, &shared, &key_update).await {
                eprintln!("quinn-interop: hq stream: {error:#}");
            }
        });
    }
}

async fn serve_hq_stream(
    connection: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Shared,
    key_update: &KeyUpdateOnce,
) -> anyhow::Result<()> {
    let request = recv.read_to_end(MAX_REQUEST_BYTES).await.context("reading the request")?;
    let request = String::from_utf8_lossy(&request);
    let Some(path) = request.trim_end().strip_prefix("GET ") else {
        send.reset(VarInt::from_u32(HQ_FILE_NOT_FOUND))?;
        bail!("not an HTTP/0.9 GET: {request:?}");
    };
    let Some(body) = read_file(&shared.www, path.trim()).await else {
        send.reset(VarInt::from_u32(HQ_FILE_NOT_FOUND))?;
        bail!("no file for {path:?}");
    };
    for chunk in chunks(body) {
        send.write_all(&chunk).await?;
        key_update.after_first_chunk(connection);
    }
    send.finish()?;
    // Keep the stream until the peer has everything, so its end is never cut short by a close.
    let _ = send.stopped().await;
    Ok(())
}

async fn serve_h3(connection: quinn::Connection, shared: Arc<Shared>, key_update: KeyUpdateOnce) -> anyhow::Result<()> {
    let mut h3_connection =
        h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(connection.clone())).await?;
    loop {
        let resolver = match h3_connection.accept().await {
            Ok(Some(resolver)) => resolver,
            Ok(None) => return Ok(()),
            Err(error) if error.is_h3_no_error() => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let (connection, shared, key_update) = (connection.clone(), shared.clone(), key_update.clone());
        tokio::spawn(async move {
            let outcome = async {
                let (request, mut stream) = resolver.resolve_request().await?;
                let Some(body) = read_file(&shared.www, request.uri().path()).await else {
                    stream.send_response(http::Response::builder().status(404).body(())?).await?;
                    stream.finish().await?;
                    return Ok(());
                };
                stream.send_response(http::Response::builder().status(200).body(())?).await?;
                for chunk in chunks(body) {
                    stream.send_data(chunk).await?;
                    key_update.after_first_chunk(&connection);
                }
                stream.finish().await?;
                anyhow::Ok(())
            };
            if let Err(error) = outcome.await {
                eprintln!("quinn-interop: h3 request: {error:#}");
            }
        });
    }
}

fn chunks(body: Bytes) -> impl Iterator<Item = Bytes> {
    let len = body.len();
    (0..len.div_ceil(WRITE_CHUNK_BYTES).max(1))
        .map(move |index| body.slice(index * WRITE_CHUNK_BYTES..len.min((index + 1) * WRITE_CHUNK_BYTES)))
}

/// The file under `www` that a request path names, or `None` when the path leaves `www` or there is no such file.
async fn read_file(www: &Path, request_path: &str) -> Option<Bytes> {
    let path = file_path(www, request_path)?;
    tokio::fs::read(path).await.ok().map(Bytes::from)
}

fn file_path(www: &Path, request_path: &str) -> Option<PathBuf> {
    let relative = Path::new(request_path.trim_start_matches('/'));
    let only_names = relative.components().all(|component| matches!(component, Component::Normal(_)));
    (only_names && !relative.as_os_str().is_empty()).then(|| www.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_stay_inside_www() {
        let www = Path::new("/www");
        assert_eq!(file_path(www, "/a/b.bin"), Some(PathBuf::from("/www/a/b.bin")));
        assert_eq!(file_path(www, "/../etc/passwd"), None);
        assert_eq!(file_path(www, "/"), None);
    }

    #[test]
    fn chunks_cover_the_body() {
        let body = Bytes::from(vec![7u8; WRITE_CHUNK_BYTES * 2 + 5]);
        let lens: Vec<usize> = chunks(body).map(|chunk| chunk.len()).collect();
        assert_eq!(lens, [WRITE_CHUNK_BYTES, WRITE_CHUNK_BYTES, 5]);
        assert_eq!(chunks(Bytes::new()).count(), 1);
    }
}
