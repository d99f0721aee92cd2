//! An in-memory pipe between two `quiche::Connection`s (client and server, no sockets), with an HTTP/3
//! driver on each side whose hooks the tests call directly, in the order the connection task would.
//!
//! Packets go from one side's `send` straight into the other's `recv` until neither has anything left
//! to send. Nothing here reads the clock or sleeps: a test runs the same way every time, in
//! milliseconds. Tests of every module of the crate can use it.

use std::net::SocketAddr;

use quiver::quiche;
use quiver::{ApplicationOverQuic, QuicConnection};

use crate::driver::H3Driver;

/// Largest UDP payload either side sends in the pipe.
const MAX_DATAGRAM_BYTES: usize = 1350;
/// Rounds of packet exchange after which a test that has not settled is broken (a livelock), not slow.
const MAX_EXCHANGE_ROUNDS: usize = 10_000;

/// Transport windows of the pipe's connections, so tests can make flow control bite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Windows {
    /// Per-stream receive window, both sides.
    pub(crate) stream_bytes: u64,
    /// Connection receive window, both sides.
    pub(crate) connection_bytes: u64,
}

impl Default for Windows {
    fn default() -> Self {
        Self { stream_bytes: 1 << 20, connection_bytes: 16 << 20 }
    }
}

fn quiche_config(windows: Windows, server: bool) -> quiche::Config {
    let mut config = if server {
        let built = crate::server_config().self_signed(["localhost"]).build().expect("server config");
        quiver::internals::server_quiche_config(&built).expect("quiche server config")
    } else {
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("quiche config");
        config.set_application_protos(&[crate::ALPN]).expect("ALPN");
        config.verify_peer(false);
        config
    };
    config.set_initial_max_data(windows.connection_bytes);
    config.set_initial_max_stream_data_bidi_local(windows.stream_bytes);
    config.set_initial_max_stream_data_bidi_remote(windows.stream_bytes);
    config.set_initial_max_stream_data_uni(windows.stream_bytes);
    // No auto-tuning: a window that grew behind the test's back would hide a stalled reader.
    config.set_max_stream_window(windows.stream_bytes);
    config.set_max_connection_window(windows.connection_bytes);
    config.set_initial_max_streams_bidi(100);
    config.set_initial_max_streams_uni(100);
    config.enable_dgram(true, 64, 64);
    config.set_max_send_udp_payload_size(MAX_DATAGRAM_BYTES);
    config
}

/// One side: its quiche connection, its driver, and whether `on_conn_established` ran.
pub(crate) struct Side {
    pub(crate) conn: QuicConnection,
    pub(crate) driver: H3Driver,
    established: bool,
}

impl Side {
    /// One wake-up of the connection task: reads, then writes.
    pub(crate) fn act(&mut self) {
        if !self.established && (self.conn.is_established() || self.conn.is_in_early_data()) {
            self.driver.on_conn_established(&mut self.conn).expect("on_conn_established");
            self.established = true;
        }
        if self.established {
            self.driver.process_reads(&mut self.conn).expect("process_reads");
            self.driver.process_writes(&mut self.conn).expect("process_writes");
        }
    }
}

/// A client and a server connected in memory.
pub(crate) struct Pipe {
    pub(crate) client: Side,
    pub(crate) server: Side,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
}

impl Pipe {
    /// Connects `client` to `server` with these transport windows and completes the handshake (and
    /// the exchange of SETTINGS).
    pub(crate) fn with_windows(client: H3Driver, server: H3Driver, windows: Windows) -> Self {
        let client_addr: SocketAddr = "127.0.0.1:4000".parse().expect("address");
        let server_addr: SocketAddr = "127.0.0.1:443".parse().expect("address");
        let client_scid = quiche::ConnectionId::from_ref(&[0xc1; 16]);
        let server_scid = quiche::ConnectionId::from_ref(&[0x5e; 16]);
        let mut client_config = quiche_config(windows, false);
        let mut server_config = quiche_config(windows, true);
        let client_conn =
            quiche::connect(Some("localhost"), &client_scid, client_addr, server_addr, &mut client_config)
                .expect("connect");
        let server_conn =
            quiche::accept(&server_scid, None, server_addr, client_addr, &mut server_config).expect("accept");
        let mut pipe = Self {
            client: Side { conn: client_conn, driver: client, established: false },
            server: Side { conn: server_conn, driver: server, established: false },
            client_addr,
            server_addr,
        };
        pipe.run();
        assert!(pipe.client.established && pipe.server.established, "handshake did not complete");
        pipe
    }

    /// Moves every packet either side has to send to the other, once; true if any moved.
    fn exchange(&mut self) -> bool {
        let to_server = flush(&mut self.client.conn, &mut self.server.conn, self.client_addr, self.server_addr);
        let to_client = flush(&mut self.server.conn, &mut self.client.conn, self.server_addr, self.client_addr);
        to_server || to_client
    }

    /// Runs both sides (hooks and packets) until neither has anything more to send.
    pub(crate) fn run(&mut self) {
        for _ in 0..MAX_EXCHANGE_ROUNDS {
            self.client.act();
            self.server.act();
            if !self.exchange() {
                // One more turn: hooks may react to what the last packets carried.
                self.client.act();
                self.server.act();
                if !self.exchange() {
                    return;
                }
            }
        }
        panic!("the pipe did not settle within {MAX_EXCHANGE_ROUNDS} rounds");
    }
}

/// Sends everything `from` has into `to`; true if anything was sent.
fn flush(from: &mut QuicConnection, to: &mut QuicConnection, from_addr: SocketAddr, to_addr: SocketAddr) -> bool {
    let mut buffer = [0u8; MAX_DATAGRAM_BYTES];
    let mut sent = false;
    loop {
        let (len, _) = match from.send(&mut buffer) {
            Ok(written) => written,
            Err(quiche::Error::Done) => return sent,
            Err(err) => panic!("send failed: {err}"),
        };
        sent = true;
        let info = quiche::RecvInfo { from: from_addr, to: to_addr };
        // A packet the receiver refuses (for example after it closed) is dropped, as on a network.
        let _ = to.recv(&mut buffer[..len], info);
    }
}
