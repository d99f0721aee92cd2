//! The one server lifecycle every protocol crate runs: accept connections until told to stop, then
//! drain gracefully with a deadline.
//!
//! The protocol decides only what to run on each accepted connection (the acceptor); how accepting
//! stops, how connections are asked to finish ([`ApplicationOverQuic::on_drain`]), how late
//! arrivals are refused and when the rest is closed is decided here, once, on top of the public
//! [`Endpoint`] API.
//!
//! [`ApplicationOverQuic::on_drain`]: crate::ApplicationOverQuic::on_drain

use std::future::Future;
use std::time::Duration;

use crate::connection::IncomingConnection;
use crate::endpoint::Endpoint;

/// How a [`serve`] lifecycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServeEnd {
    /// The endpoint was closed ([`Endpoint::close`]) while accepting: there was no drain, every
    /// connection got CONNECTION_CLOSE at once.
    EndpointClosed,
    /// The shutdown signal came, and every connection finished on its own before the deadline.
    Drained,
    /// The shutdown signal came, and some connections were still open at the deadline: they were
    /// closed (CONNECTION_CLOSE with NO_ERROR).
    DeadlinePassed,
}

impl ServeEnd {
    /// Whether every connection finished its work before the endpoint closed it (`Drained`).
    pub fn drained(self) -> bool {
        self == Self::Drained
    }
}

/// Serves `endpoint`: hands every accepted connection to `acceptor` until `shutdown` resolves (or the
/// endpoint is closed), then shuts down gracefully within `drain_deadline`. Returns when every
/// connection has ended.
///
/// `acceptor` decides each connection's fate: call [`IncomingConnection::start`] with the
/// application for its ALPN, or drop the [`IncomingConnection`] to refuse it (CONNECTION_REFUSED).
/// It runs on the accept loop, so it should only pick and start the application, not wait.
///
/// Once `shutdown` resolves this runs [`Endpoint::shutdown`]: new connections are refused, every
/// running application gets [`ApplicationOverQuic::on_drain`] (HTTP/3 sends GOAWAY and finishes the
/// requests it has; DoQ answers the queries in flight), and whatever is still open after
/// `drain_deadline` is closed. Connections that complete their handshake during the drain are
/// refused here rather than left waiting in the accept queue until the deadline.
///
/// # Cancel safety
/// Dropping the future while it accepts stops accepting; connections already started keep running
/// and the endpoint stays open. Dropping it during the drain stops the waiting, not the drain: new
/// connections stay refused and running applications have been told to finish, but nothing closes
/// the stragglers at the deadline any more (call [`Endpoint::close`] for that).
///
/// ```no_run
/// use std::time::Duration;
/// use quiver::{ApplicationError, ApplicationOverQuic, Endpoint, QuicConnection, ServerConfig};
///
/// /// Closes every connection at once (a protocol would do its work here).
/// struct Hello;
///
/// impl ApplicationOverQuic for Hello {
///     fn on_conn_established(&mut self, _: &mut QuicConnection) -> Result<(), ApplicationError> { Ok(()) }
///     fn process_reads(&mut self, _: &mut QuicConnection) -> Result<(), ApplicationError> { Ok(()) }
///     fn process_writes(&mut self, _: &mut QuicConnection) -> Result<(), ApplicationError> { Ok(()) }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ServerConfig::builder().alpn(["hello"]).self_signed(["localhost"]).build()?;
/// let endpoint = Endpoint::server("127.0.0.1:4433".parse()?, config)?;
/// let ctrl_c = async {
///     let _ = tokio::signal::ctrl_c().await;
/// };
/// let end = quiver::serve(
///     &endpoint,
///     |incoming| {
///         // Refuse (drop) anything that did not negotiate our protocol.
///         if incoming.alpn() == b"hello" {
///             incoming.start(Hello);
///         }
///     },
///     ctrl_c,
///     Duration::from_secs(10),
/// )
/// .await;
/// println!("served until {end:?}");
/// # Ok(()) }
/// ```
///
/// [`ApplicationOverQuic::on_drain`]: crate::ApplicationOverQuic::on_drain
pub async fn serve<A, S>(endpoint: &Endpoint, mut acceptor: A, shutdown: S, drain_deadline: Duration) -> ServeEnd
where
    A: FnMut(IncomingConnection),
    S: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = &mut shutdown => break,
        };
        match incoming {
            Some(incoming) => acceptor(incoming),
            None => {
                endpoint.wait_idle().await;
                return ServeEnd::EndpointClosed;
            }
        }
    }
    tracing::info!(
        connections = endpoint.stats().active_connections,
        deadline = ?drain_deadline,
        "shutting down: refusing new connections, draining the rest"
    );
    drain(endpoint, drain_deadline).await
}

/// Runs [`Endpoint::shutdown`] while refusing every connection that still reaches the accept queue,
/// and tells whether everything ended before the deadline.
async fn drain(endpoint: &Endpoint, deadline: Duration) -> ServeEnd {
    // Polled first, so the drain flag is set before `in_time` starts waiting.
    let shutdown = endpoint.shutdown(deadline);
    let in_time = async { tokio::time::timeout(deadline, endpoint.wait_idle()).await.is_ok() };
    let refuse_late_arrivals = async {
        // `accept` returns `None` once the shutdown closes the endpoint at the end.
        while let Some(incoming) = endpoint.accept().await {
            tracing::debug!(peer = %incoming.peer_addr(), "refusing a connection that arrived while draining");
            drop(incoming);
        }
    };
    let ((), in_time, ()) = tokio::join!(shutdown, in_time, refuse_late_arrivals);
    if in_time { ServeEnd::Drained } else { ServeEnd::DeadlinePassed }
}
