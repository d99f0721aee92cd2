//! One DoQ connection on the server side, as an [`ApplicationOverQuic`].
//!
//! Each client-initiated bidirectional stream carries one query. The connection reads it (deferring
//! until FIN, as RFC 9250 §4.2 allows, so a second message on the stream is caught), checks it, and
//! spawns a task that resolves it; the task hands the answer back through a bounded channel that
//! [`wait_for_data`](ApplicationOverQuic::wait_for_data) awaits, and `process_writes` sends it with
//! FIN. Queries past the per-connection limit stay unread in quiche until one finishes. A query that
//! does not arrive whole within the read timeout has its stream reset (DOQ_PROTOCOL_ERROR), so a
//! slow sender cannot keep partial messages in memory.
//!
//! On a graceful shutdown ([`ApplicationOverQuic::on_drain`]) the connection takes no new query
//! streams (each is reset with DOQ_NO_ERROR), answers the queries it has, and closes with
//! DOQ_NO_ERROR once the last answer is acknowledged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::RecordType;
use quiver::quiche;
use quiver::{ApplicationError, ApplicationOverQuic, ConnectionError, QuicConnection};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{ServerShared, count};
use crate::dns::{HEADER_BYTES, error_answer, format_error_for, has_tcp_keepalive, message_id, wants_padding};
use crate::framing::{MessageReader, Outbound, READ_CHUNK_BYTES, StreamRead, WriteFailure, read_message};
use crate::{DOQ_INTERNAL_ERROR, DOQ_NO_ERROR, DOQ_PROTOCOL_ERROR, DOQ_REQUEST_CANCELLED, is_client_bidi};

/// A query still arriving.
struct PartialQuery {
    reader: MessageReader,
    /// When the stream is reset if the query is not whole by then.
    deadline: Instant,
}

/// Server side of one DoQ connection.
pub(crate) struct ServerConnection {
    shared: Arc<ServerShared>,
    /// The client's address, for its per-source share of the upstream slots.
    source: IpAddr,
    /// This connection's share of the upstream slots.
    upstream_share: Arc<Semaphore>,
    /// Streams whose query has not fully arrived.
    reading: HashMap<u64, PartialQuery>,
    /// Streams whose query is being resolved.
    resolving: HashMap<u64, AbortHandle>,
    /// Streams whose answer is being written.
    sending: HashMap<u64, Outbound>,
    /// Streams whose answer is written, until the client has acknowledged it (quiche then forgets the
    /// stream): a draining server must not close the connection under an answer still in flight.
    unacknowledged: Vec<u64>,
    /// The endpoint is shutting down: no new queries; close once the last one is answered.
    draining: bool,
    answers_tx: mpsc::Sender<(u64, Vec<u8>)>,
    /// Holds one answer per resolving query at most: every task sends exactly one, and resolving
    /// queries are capped at `max_queries_per_connection`, so a send never waits.
    answers_rx: mpsc::Receiver<(u64, Vec<u8>)>,
    arrived: Vec<(u64, Vec<u8>)>,
    scratch: Vec<u8>,
}

impl ServerConnection {
    pub(crate) fn new(shared: Arc<ServerShared>, source: IpAddr) -> Self {
        let (answers_tx, answers_rx) = mpsc::channel(shared.max_queries_per_connection);
        Self {
            source,
            upstream_share: Arc::new(Semaphore::new(shared.max_upstream_per_connection)),
            shared,
            reading: HashMap::new(),
            resolving: HashMap::new(),
            sending: HashMap::new(),
            unacknowledged: Vec::new(),
            draining: false,
            answers_tx,
            answers_rx,
            arrived: Vec::new(),
            scratch: vec![0; READ_CHUNK_BYTES],
        }
    }

    /// Queries this connection is serving in any phase.
    fn live_queries(&self) -> usize {
        self.reading.len() + self.resolving.len() + self.sending.len() + self.unacknowledged.len()
    }

    fn protocol_error(&self, reason: &str) -> ApplicationError {
        count(&self.shared.counters.protocol_errors);
        tracing::debug!(reason, "closing DoQ connection with DOQ_PROTOCOL_ERROR");
        ApplicationError::new(DOQ_PROTOCOL_ERROR, reason)
    }

    /// The client gave up on `stream`: stop whatever we were doing for it.
    fn cancel(&mut self, conn: &mut QuicConnection, stream: u64) {
        let was_live = self.reading.remove(&stream).is_some()
            | self.resolving.remove(&stream).map(|task| task.abort()).is_some()
            | self.sending.remove(&stream).is_some();
        if was_live {
            count(&self.shared.counters.cancelled);
        }
        let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, DOQ_REQUEST_CANCELLED);
    }

    /// Checks a complete query and starts answering it.
    fn dispatch(&mut self, conn: &mut QuicConnection, stream: u64, query: Vec<u8>) -> Result<(), ApplicationError> {
        let counters = &self.shared.counters;
        count(&counters.queries);
        if query.len() < HEADER_BYTES {
            count(&counters.format_errors);
            self.respond(conn, stream, format_error_for(&query));
            return Ok(());
        }
        if message_id(&query) != Some(0) {
            return Err(self.protocol_error("DNS message ID must be 0 on DoQ (RFC 9250 section 4.2.1)"));
        }
        let Ok(parsed) = Message::from_vec(&query) else {
            count(&counters.format_errors);
            self.respond(conn, stream, format_error_for(&query));
            return Ok(());
        };
        if has_tcp_keepalive(&parsed) {
            return Err(self.protocol_error("edns-tcp-keepalive is not allowed on DoQ (RFC 9250 section 5.5.2)"));
        }
        let padded = wants_padding(&parsed);
        if parsed.metadata.message_type != MessageType::Query || parsed.queries.len() != 1 {
            count(&counters.format_errors);
            let answer = self.shared.pad_if(error_answer(&parsed, ResponseCode::FormErr), padded);
            self.respond(conn, stream, answer);
            return Ok(());
        }
        // Other opcodes are not a forwarder's to relay; zone transfers need a multi-message exchange
        // with a primary that one UDP/TCP query cannot carry.
        let transfer = matches!(parsed.queries[0].query_type, RecordType::AXFR | RecordType::IXFR);
        if parsed.metadata.op_code != OpCode::Query || transfer {
            count(&counters.not_implemented);
            let answer = self.shared.pad_if(error_answer(&parsed, ResponseCode::NotImp), padded);
            self.respond(conn, stream, answer);
            return Ok(());
        }
        // 0-RTT (RFC 9250 §4.5): what reaches the upstream from here on is exactly what
        // `is_replay_safe` admits (one question, opcode QUERY, no zone transfer), so queries that
        // arrive in early data need no other gate; everything else was answered locally above, and a
        // replay of it only repeats that answer.
        debug_assert!(crate::is_replay_safe(&parsed));
        if conn.is_in_early_data() {
            tracing::trace!(stream, "replay-safe query in 0-RTT");
        }
        let shared = self.shared.clone();
        let answers = self.answers_tx.clone();
        let (upstream_share, source) = (self.upstream_share.clone(), self.source);
        let task = tokio::spawn(async move {
            let answer = shared.resolve(query, parsed, &upstream_share, source).await;
            let _ = answers.send((stream, answer)).await;
        });
        self.resolving.insert(stream, task.abort_handle());
        Ok(())
    }

    /// Queues `answer` for `stream`. An answer too large for the 2-octet length (none built or
    /// forwarded here is: upstream answers are read into 65535 bytes, padding stays under the limit)
    /// resets the stream with DOQ_INTERNAL_ERROR (RFC 9250 §4.3.2) rather than leaving it silent.
    fn respond(&mut self, conn: &mut QuicConnection, stream: u64, answer: Vec<u8>) {
        match Outbound::new(&answer) {
            Some(outbound) => {
                self.shared.rcodes.count(&answer);
                self.sending.insert(stream, outbound);
            }
            None => {
                count(&self.shared.counters.internal_errors);
                tracing::warn!(stream, bytes = answer.len(), "answer too large for DoQ; resetting the stream");
                let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, DOQ_INTERNAL_ERROR);
            }
        }
    }

    /// Resets the streams whose query did not arrive whole in time.
    fn expire_slow_reads(&mut self, conn: &mut QuicConnection) {
        let now = Instant::now();
        let overdue: Vec<u64> =
            self.reading.iter().filter(|(_, partial)| partial.deadline <= now).map(|(stream, _)| *stream).collect();
        for stream in overdue {
            self.reading.remove(&stream);
            count(&self.shared.counters.read_timeouts);
            tracing::debug!(stream, "query not complete within the read timeout; resetting its stream");
            let _ = conn.stream_shutdown(stream, quiche::Shutdown::Read, DOQ_PROTOCOL_ERROR);
            let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, DOQ_PROTOCOL_ERROR);
        }
    }
}

impl ApplicationOverQuic for ServerConnection {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    /// Returns when an answer arrived or a partial query's read deadline passed.
    ///
    /// # Cancel safety
    /// Cancel safe: an answer is only taken from the channel when it is stored in `arrived`.
    async fn wait_for_data(&mut self) -> Result<(), ApplicationError> {
        let next_deadline = self.reading.values().map(|partial| partial.deadline).min();
        let deadline = async {
            match next_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            answer = self.answers_rx.recv() => match answer {
                Some(answer) => self.arrived.push(answer),
                // Cannot happen (we hold a sender), but must not spin if it did.
                None => std::future::pending::<()>().await,
            },
            // `process_writes` resets the overdue streams.
            () = deadline => return Ok(()),
        }
        while let Ok(answer) = self.answers_rx.try_recv() {
            self.arrived.push(answer);
        }
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        for stream in conn.readable() {
            if !is_client_bidi(stream) {
                return Err(self.protocol_error("DoQ uses client-initiated bidirectional streams only"));
            }
            if self.resolving.contains_key(&stream) || self.sending.contains_key(&stream) {
                // The query is complete; what is left to read is a reset (cancellation).
                if let Err(quiche::Error::StreamReset(_)) = conn.stream_recv(stream, &mut self.scratch) {
                    self.cancel(conn, stream);
                }
                continue;
            }
            if !self.reading.contains_key(&stream) && self.draining {
                refuse_while_draining(conn, stream);
                continue;
            }
            if !self.reading.contains_key(&stream) && self.live_queries() >= self.shared.max_queries_per_connection {
                continue; // left in quiche until a query finishes
            }
            let read_timeout = self.shared.query_read_timeout;
            let partial = self.reading.entry(stream).or_insert_with(|| PartialQuery {
                reader: MessageReader::default(),
                deadline: Instant::now() + read_timeout,
            });
            match read_message(conn, stream, &mut partial.reader, &mut self.scratch) {
                Err(framing) => return Err(self.protocol_error(&framing.to_string())),
                Ok(StreamRead::Pending) => {}
                Ok(StreamRead::Message(query)) => {
                    self.reading.remove(&stream);
                    self.dispatch(conn, stream, query)?;
                }
                Ok(StreamRead::Reset(_)) => self.cancel(conn, stream),
                Ok(StreamRead::Gone) => {
                    self.reading.remove(&stream);
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        for (stream, answer) in std::mem::take(&mut self.arrived) {
            // A query cancelled meanwhile has no entry any more: its answer is dropped.
            if self.resolving.remove(&stream).is_some() {
                self.respond(conn, stream, answer);
            }
        }
        self.expire_slow_reads(conn);
        // STOP_SENDING from the client cancels a query still being resolved (RFC 9250 §4.3.1).
        let stopped: Vec<u64> = self
            .resolving
            .keys()
            .copied()
            .filter(|stream| matches!(conn.stream_capacity(*stream), Err(quiche::Error::StreamStopped(_))))
            .collect();
        for stream in stopped {
            self.cancel(conn, stream);
        }
        let mut finished = Vec::new();
        let mut written = Vec::new();
        for (stream, outbound) in &mut self.sending {
            match outbound.write(conn, *stream) {
                Ok(true) => written.push(*stream),
                Ok(false) => {}
                Err(WriteFailure::Stopped(_)) => {
                    count(&self.shared.counters.cancelled);
                    finished.push(*stream);
                }
                Err(WriteFailure::Gone) => finished.push(*stream),
            }
        }
        for stream in finished {
            self.sending.remove(&stream);
        }
        for stream in written {
            if self.sending.remove(&stream).is_some() {
                self.unacknowledged.push(stream);
            }
        }
        // quiche forgets a stream once both directions are done and our side is acknowledged.
        self.unacknowledged
            .retain(|stream| !matches!(conn.stream_capacity(*stream), Err(quiche::Error::InvalidStreamState(_))));
        self.close_if_drained(conn);
        Ok(())
    }

    /// Takes no new queries from here on, and closes once those in flight are answered.
    fn on_drain(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        tracing::debug!(queries = self.live_queries(), "draining: answering the queries in flight, then closing");
        self.draining = true;
        self.close_if_drained(conn);
        Ok(())
    }

    fn on_conn_close(&mut self, _conn: &mut QuicConnection, reason: &ConnectionError) {
        tracing::debug!(%reason, resolving = self.resolving.len(), "DoQ connection closed");
        for (_, task) in self.resolving.drain() {
            task.abort();
        }
    }
}

impl ServerConnection {
    /// While draining, closes the connection (DOQ_NO_ERROR) once no query is left in any phase.
    fn close_if_drained(&self, conn: &mut QuicConnection) {
        if self.draining && self.live_queries() == 0 {
            let _ = conn.close(true, DOQ_NO_ERROR, b"server shutting down");
        }
    }
}

/// A query stream opened after the drain began: reset both ways with DOQ_NO_ERROR (RFC 9250 §4.3:
/// closing with no error to signal), so the client retries it on another connection.
fn refuse_while_draining(conn: &mut QuicConnection, stream: u64) {
    let _ = conn.stream_shutdown(stream, quiche::Shutdown::Read, DOQ_NO_ERROR);
    let _ = conn.stream_shutdown(stream, quiche::Shutdown::Write, DOQ_NO_ERROR);
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        for (_, task) in self.resolving.drain() {
            task.abort();
        }
    }
}
