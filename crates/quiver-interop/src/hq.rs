//! hq-interop: HTTP/0.9 over QUIC, the interop runner's file protocol. The client opens one
//! bidirectional stream per file and sends `GET /path\r\n` with FIN; the server answers with the
//! file's bytes and FIN, or resets the stream when it has no such file.
//!
//! Both sides are [`ApplicationOverQuic`]s on quiver's raw QUIC API; they read and write files
//! synchronously on the connection task, which is fine for an interop endpoint that serves a
//! handful of files from local disk (and keeps each side one small state machine).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quiver::{ApplicationError, ApplicationOverQuic, ConnectionError, QuicConnection, quiche};
use tokio::sync::{oneshot, watch};

use crate::files::resolve_under;
use crate::wire;

/// The ALPN identifier of hq-interop.
pub const ALPN: &[u8] = b"hq-interop";

/// Longest request a server reads before giving up on the stream: `GET ` and a path; the runner's
/// paths are a few dozen bytes, so this only stops a peer from growing the buffer forever.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// The stream error code a server resets a request's stream with when it cannot serve it (no such
/// file, a malformed request, a path outside `WWW`). hq-interop defines no codes; this one is ours.
pub const HQ_REQUEST_REFUSED: u64 = 0x10;

/// How much of a file a server reads ahead per stream: enough for a few congestion windows' worth of
/// packets per wake-up, bounded so 100 concurrent streams hold at most ~6 MB.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Bytes sent (server) or received (client) after which the keyupdate case starts its key update:
/// early in the transfer (the runner asks for one within the first MB), after the handshake is surely
/// confirmed on any realistic path.
pub const KEY_UPDATE_AFTER_BYTES: u64 = 100_000;

/// BoringSSL's `ssl_early_data_accepted` in `quiche::Connection::early_data_reason`.
const EARLY_DATA_ACCEPTED: u32 = 2;

/// An hq-interop request that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not `GET <path>` (another method, no path, extra words, not UTF-8).
    #[error("malformed hq-interop request {0:?}")]
    Malformed(String),
    /// Longer than [`MAX_REQUEST_BYTES`] without a line end.
    #[error("hq-interop request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
}

/// The complete request in `received`, if it is complete: up to its line end, or everything once the
/// stream's FIN arrived.
pub fn complete_request(received: &[u8], fin: bool) -> Option<&[u8]> {
    match received.iter().position(|&byte| byte == b'\n') {
        Some(end) => Some(&received[..end]),
        None => fin.then_some(received),
    }
}

/// The path of an hq-interop request line (`GET /path`, with or without `\r`).
///
/// # Errors
/// [`RequestError::Malformed`] for anything but `GET` followed by one path.
pub fn parse_request(line: &[u8]) -> Result<&str, RequestError> {
    let malformed = || RequestError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let mut words = text.trim_end_matches(['\r', '\n']).split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("GET"), Some(path), None) if !path.is_empty() => Ok(path),
        _ => Err(malformed()),
    }
}

/// Starts one key update once enough bytes went by, and retries on later turns while quiche refuses
/// (before the handshake is confirmed).
#[derive(Debug)]
pub(crate) struct KeyUpdater {
    /// `None` when this connection does not update its keys.
    after_bytes: Option<u64>,
    counted: u64,
    done: bool,
}

impl KeyUpdater {
    /// Updates the keys once `after_bytes` have gone by, if `Some`.
    pub(crate) fn new(after_bytes: Option<u64>) -> Self {
        Self { after_bytes, counted: 0, done: false }
    }

    /// Counts `bytes` more and starts the key update when they reach the threshold.
    fn count(&mut self, conn: &mut QuicConnection, bytes: u64) {
        let Some(after_bytes) = self.after_bytes else { return };
        self.counted += bytes;
        if self.done || self.counted < after_bytes {
            return;
        }
        match wire::initiate_key_update(conn) {
            Ok(()) => {
                self.done = true;
                tracing::info!(after_bytes = self.counted, "key update initiated");
            }
            Err(quiche::Error::Done) => {
                // The keys of the current phase are not confirmed yet (RFC 9001 §6.1): one of our
                // packets in it must be acknowledged first. A side that only receives sends nothing
                // the peer acknowledges, so make the next packet ack-eliciting (a PING at most per
                // turn) and try again then.
                let _ = conn.send_ack_eliciting();
                tracing::debug!("key update refused until a packet in the current phase is acknowledged");
            }
            Err(err) => tracing::debug!(%err, "key update refused for now; trying again on the next turn"),
        }
    }

    fn done(&self) -> bool {
        self.done
    }
}

/// Logs, once, how the handshake ended: resumed or not, early data accepted or not.
#[derive(Debug, Default)]
struct HandshakeNotes {
    noted: bool,
    resumed: bool,
    early_data_accepted: bool,
}

impl HandshakeNotes {
    fn note(&mut self, conn: &QuicConnection, role: &'static str) {
        if self.noted || !conn.is_established() {
            return;
        }
        self.noted = true;
        self.resumed = conn.is_resumed();
        self.early_data_accepted = conn.early_data_reason() == EARLY_DATA_ACCEPTED;
        tracing::info!(role, resumed = self.resumed, early_data_accepted = self.early_data_accepted, "handshake done");
    }
}

/// One request's stream on the server.
enum ServedStream {
    /// Reading the request.
    Requested(Vec<u8>),
    /// Sending the file.
    Answering(FileSender),
}

/// A file being sent on one stream.
struct FileSender {
    file: File,
    chunk: Vec<u8>,
    chunk_sent: usize,
    end_of_file: bool,
}

/// What one send attempt came to.
enum SendProgress {
    /// Everything sent, FIN included.
    Finished,
    /// Flow control or congestion stopped it; more on a later turn.
    Blocked,
}

impl FileSender {
    /// Sends as much as quiche takes; returns the bytes sent and whether the stream is done.
    fn send(&mut self, conn: &mut QuicConnection, stream: u64, sent: &mut u64) -> Result<SendProgress, String> {
        loop {
            if self.chunk_sent == self.chunk.len() && !self.end_of_file {
                self.chunk.resize(READ_AHEAD_BYTES, 0);
                let read = self.file.read(&mut self.chunk).map_err(|err| format!("reading the file: {err}"))?;
                self.chunk.truncate(read);
                self.chunk_sent = 0;
                self.end_of_file = read == 0;
            }
            let rest = &self.chunk[self.chunk_sent..];
            let fin = self.end_of_file;
            match conn.stream_send(stream, rest, fin) {
                Ok(written) => {
                    self.chunk_sent += written;
                    *sent += written as u64;
                    if fin && written == rest.len() {
                        return Ok(SendProgress::Finished);
                    }
                    if written < rest.len() {
                        return Ok(SendProgress::Blocked);
                    }
                }
                Err(quiche::Error::Done) => return Ok(SendProgress::Blocked),
                Err(err) => return Err(format!("sending: {err}")),
            }
        }
    }
}

/// The hq-interop server: answers each request stream with a file under `WWW`.
pub struct HqServer {
    www: Arc<Path>,
    streams: HashMap<u64, ServedStream>,
    key_update: KeyUpdater,
    handshake: HandshakeNotes,
}

impl HqServer {
    /// Serves the files under `www`; with `key_update_after` set, starts a key update once that many
    /// bytes were sent (the keyupdate case).
    pub fn new(www: Arc<Path>, key_update_after: Option<u64>) -> Self {
        Self {
            www,
            streams: HashMap::new(),
            key_update: KeyUpdater::new(key_update_after),
            handshake: HandshakeNotes::default(),
        }
    }

    /// Opens the file `line` asks for, or says why not.
    fn open(www: &Path, line: &[u8]) -> Result<(String, File), String> {
        let path = parse_request(line).map_err(|err| err.to_string())?;
        let file_path = resolve_under(www, path).map_err(|err| err.to_string())?;
        let file = File::open(&file_path).map_err(|err| format!("{path}: {err}"))?;
        if !file.metadata().is_ok_and(|metadata| metadata.is_file()) {
            return Err(format!("{path}: not a file"));
        }
        Ok((path.to_owned(), file))
    }

    fn refuse(conn: &mut QuicConnection, stream: u64) {
        let _ = conn.stream_shutdown(stream, quiche::Shutdown::Read, HQ_REQUEST_REFUSED);
        let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, HQ_REQUEST_REFUSED);
    }

    fn read_stream(&mut self, conn: &mut QuicConnection, stream: u64, scratch: &mut [u8]) {
        loop {
            let (read, fin) = match conn.stream_recv(stream, scratch) {
                Ok(received) => received,
                Err(quiche::Error::Done) => return,
                Err(err) => {
                    tracing::debug!(stream, %err, "request stream failed");
                    self.streams.remove(&stream);
                    return;
                }
            };
            let state = self.streams.entry(stream).or_insert_with(|| ServedStream::Requested(Vec::new()));
            let ServedStream::Requested(received) = state else {
                continue; // Anything after the request is ignored.
            };
            received.extend_from_slice(&scratch[..read]);
            let Some(line) = complete_request(received, fin) else {
                if received.len() > MAX_REQUEST_BYTES {
                    tracing::info!(stream, "{}", RequestError::TooLong);
                    self.streams.remove(&stream);
                    Self::refuse(conn, stream);
                    return;
                }
                continue;
            };
            match Self::open(&self.www, line) {
                Ok((path, file)) => {
                    tracing::debug!(stream, path, "serving");
                    let sender = FileSender { file, chunk: Vec::new(), chunk_sent: 0, end_of_file: false };
                    self.streams.insert(stream, ServedStream::Answering(sender));
                }
                Err(reason) => {
                    tracing::info!(stream, reason, "refusing request");
                    self.streams.remove(&stream);
                    Self::refuse(conn, stream);
                    return;
                }
            }
        }
    }
}

impl ApplicationOverQuic for HqServer {
    fn on_conn_established(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        tracing::info!(early_data = conn.is_in_early_data(), "hq-interop connection usable");
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        self.handshake.note(conn, "server");
        let mut scratch = vec![0; 16 * 1024];
        for stream in conn.readable() {
            self.read_stream(conn, stream, &mut scratch);
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        let mut sent = 0;
        let mut finished = Vec::new();
        for (&stream, state) in &mut self.streams {
            let ServedStream::Answering(sender) = state else { continue };
            match sender.send(conn, stream, &mut sent) {
                Ok(SendProgress::Blocked) => {}
                Ok(SendProgress::Finished) => finished.push(stream),
                Err(reason) => {
                    tracing::info!(stream, reason, "response stream failed");
                    finished.push(stream);
                }
            }
        }
        for stream in finished {
            self.streams.remove(&stream);
        }
        self.key_update.count(conn, sent);
        Ok(())
    }

    fn on_conn_close(&mut self, _conn: &mut QuicConnection, reason: &ConnectionError) {
        tracing::info!(%reason, key_update_done = self.key_update.done(), "hq-interop connection closed");
    }
}

/// What a client connection did, for the logs and the test cases that check it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientReport {
    /// The requests went out before the handshake completed (0-RTT).
    pub sent_in_early_data: bool,
    /// The server accepted the early data.
    pub early_data_accepted: bool,
    /// The session was resumed.
    pub resumed: bool,
    /// A key update was initiated.
    pub key_updated: bool,
    /// Bytes of file content received.
    pub received_bytes: u64,
}

/// One file the client fetches.
#[derive(Debug)]
pub struct Download {
    request: Vec<u8>,
    target: PathBuf,
}

impl Download {
    /// Fetches `url_path` (`/name`) into `target`.
    pub fn new(url_path: &str, target: PathBuf) -> Self {
        Self { request: format!("GET {url_path}\r\n").into_bytes(), target }
    }
}

/// A download whose stream is open.
struct ActiveDownload {
    download: Download,
    request_sent: usize,
    file: BufWriter<File>,
}

/// The hq-interop client: fetches its downloads on one connection, all at once as far as the server's
/// stream limit allows, and reports when every file is complete.
pub struct HqClient {
    waiting: VecDeque<Download>,
    active: HashMap<u64, ActiveDownload>,
    next_stream: u64,
    key_update: KeyUpdater,
    handshake: HandshakeNotes,
    report: ClientReport,
    progress: watch::Sender<u64>,
    finished: Option<oneshot::Sender<Result<ClientReport, String>>>,
}

impl HqClient {
    /// A client for `downloads`; with `key_update_after` set, starts a key update once that many bytes
    /// arrived. Returns the application, the received byte count as it grows, and the outcome.
    pub fn new(
        downloads: Vec<Download>,
        key_update_after: Option<u64>,
    ) -> (Self, watch::Receiver<u64>, oneshot::Receiver<Result<ClientReport, String>>) {
        let (progress, progress_rx) = watch::channel(0);
        let (finished, finished_rx) = oneshot::channel();
        let client = Self {
            waiting: downloads.into(),
            active: HashMap::new(),
            next_stream: 0,
            key_update: KeyUpdater::new(key_update_after),
            handshake: HandshakeNotes::default(),
            report: ClientReport::default(),
            progress,
            finished: Some(finished),
        };
        (client, progress_rx, finished_rx)
    }

    fn finish(&mut self, conn: &mut QuicConnection, outcome: Result<(), String>) {
        if let Some(finished) = self.finished.take() {
            self.report.key_updated = self.key_update.done();
            self.report.resumed = self.handshake.resumed;
            self.report.early_data_accepted = self.handshake.early_data_accepted;
            // A failure ends the connection at once; success leaves the close to the caller, which
            // may still inspect the connection.
            if outcome.is_err() {
                let _ = conn.close(true, HQ_REQUEST_REFUSED, b"download failed");
            }
            let _ = finished.send(outcome.map(|()| self.report));
        }
    }

    /// Opens streams for waiting downloads while the server allows more.
    fn open_streams(&mut self, conn: &mut QuicConnection) -> Result<(), String> {
        while conn.peer_streams_left_bidi() > 0 {
            let Some(download) = self.waiting.pop_front() else { break };
            let file = File::create(&download.target)
                .map_err(|err| format!("cannot create {}: {err}", download.target.display()))?;
            let stream = self.next_stream;
            self.next_stream += 4;
            self.active.insert(stream, ActiveDownload { download, request_sent: 0, file: BufWriter::new(file) });
        }
        for (&stream, active) in &mut self.active {
            let request = &active.download.request;
            if active.request_sent == request.len() {
                continue;
            }
            match conn.stream_send(stream, &request[active.request_sent..], true) {
                Ok(written) => active.request_sent += written,
                Err(quiche::Error::Done | quiche::Error::StreamLimit) => {}
                Err(err) => return Err(format!("cannot send the request on stream {stream}: {err}")),
            }
        }
        Ok(())
    }

    /// Reads what arrived on `stream`; true when its file is complete.
    fn read_stream(&mut self, conn: &mut QuicConnection, stream: u64, scratch: &mut [u8]) -> Result<bool, String> {
        let Some(active) = self.active.get_mut(&stream) else {
            // Not ours (a server-opened stream): drain and ignore it.
            while let Ok((_, false)) = conn.stream_recv(stream, scratch) {}
            return Ok(false);
        };
        let target = || active_target(&active.download);
        loop {
            match conn.stream_recv(stream, scratch) {
                Ok((read, fin)) => {
                    active.file.write_all(&scratch[..read]).map_err(|err| format!("writing {}: {err}", target()))?;
                    self.report.received_bytes += read as u64;
                    self.key_update.count(conn, read as u64);
                    if fin {
                        active.file.flush().map_err(|err| format!("writing {}: {err}", target()))?;
                        return Ok(true);
                    }
                }
                Err(quiche::Error::Done) => return Ok(false),
                Err(quiche::Error::StreamReset(code)) => {
                    return Err(format!("the server reset the stream for {} (code {code:#x})", target()));
                }
                Err(err) => return Err(format!("receiving {}: {err}", target())),
            }
        }
    }
}

fn active_target(download: &Download) -> String {
    download.target.display().to_string()
}

impl ApplicationOverQuic for HqClient {
    fn on_conn_established(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        self.report.sent_in_early_data = conn.is_in_early_data();
        if let Err(reason) = self.open_streams(conn) {
            self.finish(conn, Err(reason));
        }
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        if self.finished.is_none() {
            return Ok(());
        }
        self.handshake.note(conn, "client");
        let mut scratch = vec![0; 64 * 1024];
        for stream in conn.readable() {
            match self.read_stream(conn, stream, &mut scratch) {
                Ok(true) => {
                    self.active.remove(&stream);
                }
                Ok(false) => {}
                Err(reason) => {
                    self.finish(conn, Err(reason));
                    return Ok(());
                }
            }
        }
        self.progress.send_replace(self.report.received_bytes);
        if self.waiting.is_empty() && self.active.is_empty() {
            self.finish(conn, Ok(()));
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        if self.finished.is_some()
            && let Err(reason) = self.open_streams(conn)
        {
            self.finish(conn, Err(reason));
        }
        Ok(())
    }

    fn on_conn_close(&mut self, conn: &mut QuicConnection, reason: &ConnectionError) {
        tracing::info!(%reason, key_update_done = self.key_update.done(), "hq-interop connection closed");
        self.finish(conn, Err(format!("the connection closed before every file arrived: {reason}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_complete_at_its_line_end_or_fin() {
        assert_eq!(complete_request(b"GET /a\r\n", false), Some(&b"GET /a\r"[..]));
        assert_eq!(complete_request(b"GET /a\nrest", false), Some(&b"GET /a"[..]));
        assert_eq!(complete_request(b"GET /a", false), None);
        assert_eq!(complete_request(b"GET /a", true), Some(&b"GET /a"[..]));
    }

    #[test]
    fn parses_get_requests() {
        assert_eq!(parse_request(b"GET /file.bin\r"), Ok("/file.bin"));
        assert_eq!(parse_request(b"GET /file.bin\r\n"), Ok("/file.bin"));
        assert_eq!(parse_request(b"GET /dir/x?y"), Ok("/dir/x?y"));
    }

    #[test]
    fn refuses_anything_else() {
        for line in [&b"POST /a"[..], b"GET", b"GET ", b"GET /a HTTP/1.1", b"get /a", b"GET  /a", b"GET /\xff"] {
            assert!(matches!(parse_request(line), Err(RequestError::Malformed(_))), "{line:?}");
        }
    }

    #[test]
    fn a_request_line_is_what_the_client_sends() {
        let download = Download::new("/x", PathBuf::from("/tmp/x"));
        let line = complete_request(&download.request, true).unwrap();
        assert_eq!(parse_request(line), Ok("/x"));
    }
}
