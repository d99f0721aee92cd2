//! The seam between transport and protocol: [`ApplicationOverQuic`].
//!
//! HTTP/3, DNS over QUIC and user protocols implement this trait; none of them touches sockets, timers
//! or connection IDs. The connection task (one per connection) owns both the `quiche::Connection` and
//! the application, and calls the hooks below in a fixed order.

use std::future::Future;

use crate::error::{ApplicationError, ConnectionError};

/// The quiche connection an application reads from and writes to.
pub type QuicConnection = quiche::Connection;

/// A protocol running over one QUIC connection.
///
/// # Call order
/// All hooks run on the connection's own task, never concurrently:
///
/// 1. [`on_conn_established`](Self::on_conn_established) once, when the connection can carry
///    application data: the handshake has completed, or, with 0-RTT, a resumed connection is in early
///    data (`conn.is_in_early_data()`; such data can be replayed by an attacker, so act only on what is
///    safe to repeat until the handshake completes). For a server: when the accepted connection is
///    started with an application.
/// 2. Then, each time the task wakes (packets arrived, a timer fired, or `wait_for_data` completed),
///    after every queued datagram has been fed to quiche:
///    [`process_reads`](Self::process_reads) then [`process_writes`](Self::process_writes), if
///    [`should_act`](Self::should_act) says so. Packets quiche produces are sent right after.
/// 3. Between wake-ups, the task awaits [`wait_for_data`](Self::wait_for_data) together with the
///    network and the connection's timer.
/// 4. [`on_conn_close`](Self::on_conn_close) once, when the connection is closed for whatever reason,
///    then the application is dropped.
///
/// A hook that returns [`ApplicationError`] makes the task close the connection with that application
/// error code. A hook that panics closes the connection with INTERNAL_ERROR; the endpoint keeps running.
///
/// # Example: a protocol that answers every stream with "hi"
/// ```
/// use quiver::{ApplicationError, ApplicationOverQuic, QuicConnection};
///
/// struct SayHi;
///
/// impl ApplicationOverQuic for SayHi {
///     fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
///         Ok(())
///     }
///     fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
///         let mut scratch = [0u8; 4096];
///         for stream in conn.readable() {
///             while let Ok((_, fin)) = conn.stream_recv(stream, &mut scratch) {
///                 if fin {
///                     let _ = conn.stream_send(stream, b"hi", true);
///                     break;
///                 }
///             }
///         }
///         Ok(())
///     }
///     fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
///         Ok(())
///     }
/// }
/// ```
pub trait ApplicationOverQuic: Send + 'static {
    /// The connection can carry application data (handshake complete, or 0-RTT early data); the
    /// application may open streams and send data.
    ///
    /// # Errors
    /// An error closes the connection with its application code.
    fn on_conn_established(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError>;

    /// Whether to call `process_reads`/`process_writes` on this wake-up. The default always acts; an
    /// application with nothing to do can return `false` to skip the calls.
    fn should_act(&self) -> bool {
        true
    }

    /// Resolves when the application has something to do that did not come from the network (a user
    /// request to send, a timer of its own). The default never resolves.
    ///
    /// # Cancel safety
    /// Must be cancel safe: the task drops this future whenever a packet or timer wins the race, and
    /// calls `wait_for_data` again on its next wait. Do not lose state across that drop (await channel
    /// receivers, not futures holding taken items).
    ///
    /// # Errors
    /// An error closes the connection with its application code.
    fn wait_for_data(&mut self) -> impl Future<Output = Result<(), ApplicationError>> + Send {
        std::future::pending()
    }

    /// Read what the peer sent: streams (`conn.readable()`), datagrams.
    ///
    /// # Errors
    /// An error closes the connection with its application code.
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError>;

    /// Write what is pending while flow control allows (`conn.writable()`); keep the rest for the next
    /// call rather than buffering without limit.
    ///
    /// # Errors
    /// An error closes the connection with its application code.
    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError>;

    /// The endpoint is shutting down gracefully ([`Endpoint::shutdown`](crate::Endpoint::shutdown)):
    /// finish what is in flight, then close. Called once. The default closes at once (application code
    /// 0); protocols with requests in flight do better (HTTP/3 sends GOAWAY and closes when its last
    /// response is acknowledged). Whatever is still open at the shutdown deadline is closed anyway.
    ///
    /// # Errors
    /// An error closes the connection with its application code.
    fn on_drain(&mut self, conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        let _ = conn.close(true, 0, b"endpoint shutting down");
        Ok(())
    }

    /// The connection is closed; `reason` says why. Statistics are still readable from `conn`.
    fn on_conn_close(&mut self, conn: &mut QuicConnection, reason: &ConnectionError) {
        let _ = (conn, reason);
    }
}
