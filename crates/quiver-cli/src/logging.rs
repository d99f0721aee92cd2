//! Logs to standard error through a buffer: a busy server logs one access line per request, and a
//! `write(2)` per line would cost more than serving a small request. Lines are written in order, at
//! the latest [`FLUSH_INTERVAL`] after they were logged; warnings and errors go out at once, and the
//! guard [`init`] returns flushes the rest when the command ends.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let _ = OUTPUT.set(writer.clone());
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

/// The log output, for lines written without going through `tracing`'s formatter.
static OUTPUT: OnceLock<BufferedStderr> = OnceLock::new();

/// Appends one access-log line: `<UTC time> <fields>\n`, where `fields` writes the rest.
///
/// `quiver serve` writes a line per request. Through `tracing`'s formatter (timestamp with
/// microseconds, span context, field formatting) a line cost about as much as serving the request;
/// written here, with the timestamp text reused within each second, it costs a small fraction. The
/// caller still asks `tracing` whether the `access` target is enabled, so `--log` controls it.
pub fn access_line(fields: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
    thread_local! {
        static LINE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else { return };
        let (second, text) = &mut *line;
        // The first 21 bytes ("2026-11-25T14:05:10Z ") change once a second.
        if *second != now {
            *second = now;
            text.clear();
            let _ = write_utc(text, now);
        }
        text.truncate(UTC_PREFIX_BYTES);
        if fields(text).is_ok() {
            text.push(b'\n');
            match OUTPUT.get() {
                Some(output) => LogLine { target: output, urgent: false }.write_all(text).unwrap_or(()),
                None => std::io::stderr().write_all(text).unwrap_or(()),
            }
        }
    });
}

/// Bytes of `2026-11-25T14:05:10Z ` (the time and one space).
const UTC_PREFIX_BYTES: usize = 21;

/// Writes `unix_seconds` as `YYYY-MM-DDTHH:MM:SSZ ` (proleptic Gregorian, UTC).
fn write_utc(out: &mut Vec<u8>, unix_seconds: u64) -> std::io::Result<()> {
    let days = i64::try_from(unix_seconds / 86_400).unwrap_or(0);
    let seconds_of_day = unix_seconds % 86_400;
    // Days to civil date (H. Hinnant's algorithm), valid for every date a clock will show.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z ",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
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
    fn utc_timestamps_match_known_dates() {
        let text = |seconds| {
            let mut out = Vec::new();
            write_utc(&mut out, seconds).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(0), "1970-01-01T00:00:00Z ");
        assert_eq!(text(951_782_400), "2000-02-29T00:00:00Z ");
        assert_eq!(text(1_795_617_910), "2026-11-25T14:45:10Z ");
        assert_eq!(text(4_107_542_399), "2100-02-28T23:59:59Z ");
        assert_eq!(text(0).len(), UTC_PREFIX_BYTES);
    }

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
