//! The echo protocol (ALPN `echo`): the server writes back every byte of every client-initiated
//! bidirectional stream, then finishes the stream when the client does.
//!
//! Both sides respect flow control: the server reads a stream only when it has sent everything it read
//! before, so a client that does not read stalls its own streams instead of growing server memory.

use std::collections::HashMap;

use quiver::quiche;
use quiver::{ApplicationError, ApplicationOverQuic, QuicConnection};
use tokio::sync::oneshot;

/// The ALPN identifier of the echo protocol.
pub const ALPN: &[u8] = b"echo";

/// Bytes read from one stream before they must be written back: bounds server memory per stream.
const CHUNK_BYTES: usize = 16 * 1024;

/// Echo error code for a stream we could not serve.
const ECHO_STREAM_ERROR: u64 = 0x1;

/// Bytes read but not yet written back on one stream.
#[derive(Default)]
struct Unsent {
    data: Vec<u8>,
    written: usize,
    fin: bool,
}

/// Server side of the echo protocol.
#[derive(Default)]
pub struct EchoServer {
    unsent: HashMap<u64, Unsent>,
    scratch: Vec<u8>,
}

impl EchoServer {
    /// A server application for one connection.
    pub fn new() -> Self {
        Self { unsent: HashMap::new(), scratch: vec![0; CHUNK_BYTES] }
    }

    /// Writes back what is pending on `stream`, then reads and writes more until blocked.
    fn pump(&mut self, conn: &mut QuicConnection, stream: u64) {
        loop {
            if let Some(unsent) = self.unsent.get_mut(&stream) {
                match conn.stream_send(stream, &unsent.data[unsent.written..], unsent.fin) {
                    Ok(written) => unsent.written += written,
                    Err(quiche::Error::Done) => return,
                    Err(_) => {
                        // The peer stopped or reset the stream: nothing more to echo.
                        self.unsent.remove(&stream);
                        return;
                    }
                }
                if unsent.written < unsent.data.len() {
                    return;
                }
                let finished = unsent.fin;
                self.unsent.remove(&stream);
                if finished {
                    return;
                }
            }
            match conn.stream_recv(stream, &mut self.scratch) {
                Ok((read, fin)) => {
                    let data = self.scratch[..read].to_vec();
                    self.unsent.insert(stream, Unsent { data, written: 0, fin });
                }
                Err(quiche::Error::Done) => return,
                Err(quiche::Error::StreamReset(_)) => {
                    let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, ECHO_STREAM_ERROR);
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl ApplicationOverQuic for EchoServer {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        for stream in conn.readable() {
            // Only client-initiated bidirectional streams carry echo requests.
            if stream % 4 == 0 {
                self.pump(conn, stream);
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        let blocked: Vec<u64> = self.unsent.keys().copied().collect();
        for stream in blocked {
            self.pump(conn, stream);
        }
        Ok(())
    }
}

/// One stream of an [`EchoClient`].
struct Exchange {
    stream: u64,
    payload: Vec<u8>,
    sent: usize,
    fin_sent: bool,
    received: Vec<u8>,
    done: bool,
}

/// Client side: sends each payload on its own stream and collects what comes back.
pub struct EchoClient {
    exchanges: Vec<Exchange>,
    scratch: Vec<u8>,
    results: Option<oneshot::Sender<Vec<Vec<u8>>>>,
    close_when_done: bool,
}

impl EchoClient {
    /// A client that echoes `payloads` (one stream each); the receiver yields the echoed bytes in the
    /// same order once every stream has finished.
    pub fn new(payloads: Vec<Vec<u8>>) -> (Self, oneshot::Receiver<Vec<Vec<u8>>>) {
        let (results_tx, results_rx) = oneshot::channel();
        let exchanges = payloads
            .into_iter()
            .enumerate()
            .map(|(index, payload)| Exchange {
                stream: 4 * index as u64,
                payload,
                sent: 0,
                fin_sent: false,
                received: Vec::new(),
                done: false,
            })
            .collect();
        let client = Self { exchanges, scratch: vec![0; 64 * 1024], results: Some(results_tx), close_when_done: true };
        (client, results_rx)
    }

    /// Keeps the connection open after the last stream (for tests of timeouts and closing).
    pub fn keep_open(mut self) -> Self {
        self.close_when_done = false;
        self
    }
}

impl ApplicationOverQuic for EchoClient {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        for stream in conn.readable() {
            let Some(exchange) = self.exchanges.iter_mut().find(|exchange| exchange.stream == stream) else {
                continue;
            };
            loop {
                match conn.stream_recv(stream, &mut self.scratch) {
                    Ok((read, fin)) => {
                        exchange.received.extend_from_slice(&self.scratch[..read]);
                        if fin {
                            exchange.done = true;
                            break;
                        }
                    }
                    Err(quiche::Error::Done) => break,
                    Err(err) => {
                        return Err(ApplicationError::new(ECHO_STREAM_ERROR, format!("stream {stream}: {err}")));
                    }
                }
            }
        }
        if self.exchanges.iter().all(|exchange| exchange.done)
            && let Some(results) = self.results.take()
        {
            let echoed = self.exchanges.iter_mut().map(|exchange| std::mem::take(&mut exchange.received)).collect();
            let _ = results.send(echoed);
            if self.close_when_done {
                let _ = conn.close(true, 0, b"done");
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        for exchange in self.exchanges.iter_mut().filter(|exchange| !exchange.fin_sent) {
            match conn.stream_send(exchange.stream, &exchange.payload[exchange.sent..], true) {
                Ok(written) => {
                    exchange.sent += written;
                    exchange.fin_sent = exchange.sent == exchange.payload.len();
                }
                // Blocked by flow control or the stream limit: try again on the next wake-up.
                Err(quiche::Error::Done | quiche::Error::StreamLimit) => {}
                Err(err) => {
                    return Err(ApplicationError::new(ECHO_STREAM_ERROR, format!("stream {}: {err}", exchange.stream)));
                }
            }
        }
        Ok(())
    }
}
