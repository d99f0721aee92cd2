//! Per-connection qlog files (`TransportConfig::qlog_dir`): one JSON-SEQ file per connection, named by
//! its trace ID and role, written by quiche's qlog streamer.

// Without the feature only the gate is used (and never opened): the writer is compiled but idle.
#![cfg_attr(not(feature = "qlog"), allow(dead_code))]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Buffer in front of each qlog file: quiche serialises an event in many small writes, so without one
/// every event would cost several system calls. 64 KiB holds a few hundred events.
const QLOG_BUFFER_BYTES: usize = 64 * 1024;

/// Events held in memory before a server connection's first packet is known to be good: the header and
/// one Initial's events take a few KiB; anything past this is dropped from the file.
const MAX_EARLY_QLOG_BYTES: usize = 64 * 1024;

/// The file a connection's qlog goes to: `<dir>/<trace ID>-<server|client>.sqlog`.
pub(crate) fn file_path(dir: &Path, trace_id: &str, is_server: bool) -> PathBuf {
    let role = if is_server { "server" } else { "client" };
    dir.join(format!("{trace_id}-{role}.sqlog"))
}

/// Starts `conn`'s qlog, to be written into `dir` once the returned [`QlogGate`] is opened. Until then
/// events wait in memory, and if the gate is dropped unopened (the first packet was junk), no file is
/// ever created: otherwise anyone could fill the disk with one-packet "connections".
#[cfg(feature = "qlog")]
pub(crate) fn attach(conn: &mut quiche::Connection, dir: &Path) -> QlogGate {
    let path = file_path(dir, conn.trace_id(), conn.is_server());
    let gate = QlogGate(Arc::new(AtomicBool::new(false)));
    let writer = DeferredFile { path, open: gate.0.clone(), state: DeferredState::Waiting(Vec::new()) };
    let role = if conn.is_server() { "server" } else { "client" };
    let title = format!("quiver {role} connection {}", conn.trace_id());
    conn.set_qlog(Box::new(writer), title, format!("quiver {}", env!("CARGO_PKG_VERSION")));
    gate
}

/// Without the `qlog` feature the configuration refuses a qlog directory, so this is never reached
/// with one.
#[cfg(not(feature = "qlog"))]
pub(crate) fn attach(_conn: &mut quiche::Connection, _dir: &Path) -> QlogGate {
    QlogGate(Arc::new(AtomicBool::new(false)))
}

/// Lets a connection's qlog reach its file.
#[derive(Debug)]
pub(crate) struct QlogGate(Arc<AtomicBool>);

impl QlogGate {
    /// The connection is real: write its qlog (the file is created at the next event).
    pub(crate) fn open(self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A qlog file created only once its gate is open.
struct DeferredFile {
    path: PathBuf,
    open: Arc<AtomicBool>,
    state: DeferredState,
}

enum DeferredState {
    /// Events so far (the header and the first packet's: a few KiB).
    Waiting(Vec<u8>),
    Writing(BufWriter<File>),
    /// The file could not be created (logged once); events are discarded.
    Failed,
}

impl DeferredFile {
    fn file(&mut self) -> Option<&mut BufWriter<File>> {
        if let DeferredState::Waiting(early) = &mut self.state
            && self.open.load(Ordering::Relaxed)
        {
            let early = std::mem::take(early);
            self.state = match File::create(&self.path) {
                Ok(file) => {
                    let mut writer = BufWriter::with_capacity(QLOG_BUFFER_BYTES, file);
                    match writer.write_all(&early) {
                        Ok(()) => DeferredState::Writing(writer),
                        Err(err) => self.failed(&err),
                    }
                }
                Err(err) => self.failed(&err),
            };
        }
        match &mut self.state {
            DeferredState::Writing(writer) => Some(writer),
            _ => None,
        }
    }

    fn failed(&self, err: &std::io::Error) -> DeferredState {
        tracing::warn!(path = %self.path.display(), error = %err, "cannot write qlog file; no qlog for this connection");
        DeferredState::Failed
    }
}

impl Write for DeferredFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(file) = self.file() {
            if file.write_all(buf).is_err() {
                // Disk full or the like: stop writing rather than fail every event again.
                self.state = DeferredState::Failed;
            }
        } else if let DeferredState::Waiting(early) = &mut self.state
            && early.len() + buf.len() <= MAX_EARLY_QLOG_BYTES
        {
            early.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_by_trace_id_and_role() {
        let dir = Path::new("/var/log/qlog");
        assert_eq!(file_path(dir, "ab12", true), Path::new("/var/log/qlog/ab12-server.sqlog"));
        assert_eq!(file_path(dir, "ab12", false), Path::new("/var/log/qlog/ab12-client.sqlog"));
    }
}
