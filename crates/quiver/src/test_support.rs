//! Unit-test helpers: a server and a client endpoint on one in-memory network, and applications
//! that report their hooks as events. Tests wait on events, with [`GUARD`] only against hangs.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::memory::MemoryNetwork;
use crate::{
    ApplicationError, ApplicationOverQuic, ClientConfig, ClientConfigBuilder, Endpoint, QuicConnection, ServerConfig,
    ServerConfigBuilder, TlsIdentity,
};

/// Upper bound for any single wait: a guard against hangs, never a correctness condition.
pub(crate) const GUARD: Duration = Duration::from_secs(20);

const ALPN: &str = "quiver-test";

/// Awaits `future`, panicking with `what` if it takes longer than [`GUARD`].
pub(crate) async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, future).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub(crate) fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// One certificate for every server of a test, trusted by its clients.
pub(crate) struct Pki {
    identity: TlsIdentity,
}

impl Pki {
    pub(crate) fn new() -> Self {
        Self { identity: TlsIdentity::self_signed(&["localhost"]).expect("self-signed certificate") }
    }

    pub(crate) fn server(&self) -> ServerConfigBuilder {
        ServerConfig::builder().alpn([ALPN]).identity(self.identity.clone())
    }

    pub(crate) fn client(&self) -> ClientConfigBuilder {
        ClientConfig::builder()
            .alpn([ALPN])
            .without_system_roots()
            .trust_certificate_der(self.identity.certificate_der())
    }
}

pub(crate) fn server_on(network: &MemoryNetwork, config: ServerConfigBuilder) -> Endpoint {
    Endpoint::builder()
        .memory(network)
        .bind(any_addr())
        .server(config.build().expect("server config"))
        .build()
        .expect("server")
}

pub(crate) fn client_on(network: &MemoryNetwork, config: ClientConfigBuilder) -> Endpoint {
    Endpoint::builder()
        .memory(network)
        .bind(any_addr())
        .client(config.build().expect("client config"))
        .build()
        .expect("client")
}

/// A server and a client endpoint on `network`, and one connection between them: the client's
/// handle (or error) and the server's not yet started `IncomingConnection`.
pub(crate) async fn connect_pair(
    network: &MemoryNetwork,
    server: ServerConfigBuilder,
    client: ClientConfigBuilder,
) -> (Endpoint, Endpoint, Result<crate::ConnectionHandle, crate::ConnectError>, Option<crate::IncomingConnection>) {
    let (server, client) = (server_on(network, server), client_on(network, client));
    let (connected, incoming) =
        tokio::join!(client.connect(server.local_addr(), "localhost", Probe::new().0), server.accept());
    (server, client, connected, incoming)
}

/// What a [`Probe`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Established,
    Closed(crate::ConnectionError),
}

/// An application that does nothing but report its established and close hooks.
pub(crate) struct Probe {
    events: mpsc::UnboundedSender<Event>,
}

impl Probe {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, receiver) = mpsc::unbounded_channel();
        (Self { events }, receiver)
    }
}

impl ApplicationOverQuic for Probe {
    fn on_conn_established(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        let _ = self.events.send(Event::Established);
        Ok(())
    }

    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), ApplicationError> {
        Ok(())
    }

    fn on_conn_close(&mut self, _conn: &mut QuicConnection, reason: &crate::ConnectionError) {
        let _ = self.events.send(Event::Closed(reason.clone()));
    }
}
