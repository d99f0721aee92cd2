//! Logs to standard error through a buffer: a busy server logs one access line per request, and a
//! `write(2)` per line would cost more than serving a small request. Lines are written in order, at
//! the latest [`FLUSH_INTERVAL`] after they were logged; warnings and errors go out at once, and the
//! guard [`init`] returns flushes the rest when the command ends.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log lines held before they are written out whatever the time: a few hundred access lines,
/// one system call for all of them.
const LOG_BUFFER_BYTES: usize = 64 * 1024;
/// Longest a line waits in the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Installs the global subscriber: `filter` (`RUST_LOG` syntax) on standard error, buffered.
pub fn init(filter: tracing_subscriber::EnvFilter) -> FlushOnDrop {
    let writer = BufferedStderr::default();
    // Colours only for a person watching: escape codes in a log file get in everyone's way.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer.clone()).init();
    let flusher = writer.clone();
    // A plain thread: logging must keep flushing whatever the async runtime is doing.
    let _ = std::thread::Builder::new().name("log-flush".into()).spawn(move || {
        loop {
            std::thread::sleep(FLUSH_INTERVAL);
            flusher.flush();
        }
    });
    FlushOnDrop(writer)
}

/// Writes out what is still buffered when dropped (at the end of `main`).
pub struct FlushOnDrop(BufferedStderr);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.0.flush();
    }
}

#[derive(Clone, Default)]
struct BufferedStderr {
    pending: Arc<Mutex<Vec<u8>>>,
}

impl BufferedStderr {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn flush(&self) {
        write_out(&mut self.lock());
    }
}

/// Writes the buffer to standard error and empties it. Errors are dropped: there is nowhere left to
/// report them, and a closed standard error must not stop the server.
fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        let _ = std::io::stderr().lock().write_all(pending);
        pending.clear();
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine { target: self, urgent: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LogLine { target: self, urgent: *meta.level() <= Level::WARN }
    }
}

/// One event's output (the formatter writes it in one piece).
pub struct LogLine<'a> {
    target: &'a BufferedStderr,
    urgent: bool,
}

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.target.lock();
        pending.extend_from_slice(buf);
        if self.urgent || pending.len() >= LOG_BUFFER_BYTES {
            write_out(&mut pending);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_until_the_buffer_fills_and_warnings_do_not() {
        let writer = BufferedStderr::default();
        let mut line = LogLine { target: &writer, urgent: false };
        line.write_all(b"access line\n").unwrap();
        assert_eq!(writer.lock().as_slice(), b"access line\n");
        let mut warning = LogLine { target: &writer, urgent: true };
        warning.write_all(b"warning\n").unwrap();
        assert!(writer.lock().is_empty(), "a warning writes out everything before it, in order");
        let big = vec![b'x'; LOG_BUFFER_BYTES];
        LogLine { target: &writer, urgent: false }.write_all(&big).unwrap();
        assert!(writer.lock().is_empty(), "a full buffer is written out");
    }
}
