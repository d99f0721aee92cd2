//! A child process for end-to-end tests of a binary: its output lines arrive on channels the test
//! waits on (with [`GUARD`]), and it is killed when the test lets go of it, pass or panic.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use crate::guard::GUARD;

/// A running child process; killed (and reaped) on drop.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `command` with its standard output and error piped into line channels (read by
    /// threads of their own, so the child never blocks on a full pipe).
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let stdout = line_channel(child.stdout.take().expect("piped stdout"));
        let stderr = line_channel(child.stderr.take().expect("piped stderr"));
        Self { child, stdout, stderr }
    }

    /// The next standard output line containing `marker` (earlier lines are consumed); panics if
    /// the stream ends or none comes within [`GUARD`].
    pub fn wait_stdout(&self, marker: &str) -> String {
        line_with(&self.stdout, marker).unwrap_or_else(|| panic!("standard output ended without {marker:?}"))
    }

    /// As [`Running::wait_stdout`], on standard error.
    pub fn wait_stderr(&self, marker: &str) -> String {
        line_with(&self.stderr, marker).unwrap_or_else(|| panic!("standard error ended without {marker:?}"))
    }

    /// The next standard output line containing `marker`, or `None` if the stream ends first (the
    /// process exited); panics after [`GUARD`].
    pub fn stdout_line(&self, marker: &str) -> Option<String> {
        line_with(&self.stdout, marker)
    }

    /// As [`Running::stdout_line`], on standard error.
    pub fn stderr_line(&self, marker: &str) -> Option<String> {
        line_with(&self.stderr, marker)
    }

    /// Standard output's lines as they come, for a test that waits on its own terms.
    pub fn stdout(&self) -> &mpsc::Receiver<String> {
        &self.stdout
    }

    /// Sends SIGINT (as Ctrl-C does), for a graceful stop; [`Running::wait`] then reaps the child.
    pub fn interrupt(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().is_ok_and(|status| status.success());
        assert!(sent, "kill -INT {pid} failed");
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for the child")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line_channel(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    lines_rx
}

fn line_with(lines: &mpsc::Receiver<String>, marker: &str) -> Option<String> {
    loop {
        match lines.recv_timeout(GUARD) {
            Ok(line) if line.contains(marker) => return Some(line),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no line with {marker:?} within {GUARD:?}"),
        }
    }
}

/// The socket address right after `prefix` in `line` ("... https://127.0.0.1:PORT/ ..." with
/// `prefix` "https://"); panics if there is none.
pub fn address_after(line: &str, prefix: &str) -> SocketAddr {
    let start = line.find(prefix).unwrap_or_else(|| panic!("no {prefix:?} in {line:?}")) + prefix.len();
    let address: String = line[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
    address.parse().unwrap_or_else(|_| panic!("no address after {prefix:?} in {line:?}"))
}

/// A fresh, empty directory under the system's temporary directory, named after `name` and this
/// process (tests of one binary run in one process, so `name` must be unique among them).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quiver-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_marked_lines_and_sees_the_end() {
        let running = Running::spawn(
            Command::new("sh").args(["-c", "echo one; echo 'on https://127.0.0.1:4433/ now'; echo err >&2"]),
        );
        let line = running.wait_stdout("https://");
        assert_eq!(address_after(&line, "https://"), "127.0.0.1:4433".parse().unwrap());
        assert_eq!(running.wait_stderr("err"), "err");
        assert_eq!(running.stdout_line("never"), None);
    }

    #[test]
    fn temp_dirs_start_empty() {
        let dir = temp_dir("support-self-test");
        std::fs::write(dir.join("file"), b"x").unwrap();
        assert_eq!(std::fs::read_dir(temp_dir("support-self-test")).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
