//! [`QuicPeer`]: one quiche client connection on a UDP socket of its own, driven step by step so an
//! attack can stop, delay or skip anything a real client would do.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quiche::h3::NameValue;
use tokio::net::UdpSocket;

/// Largest UDP payload the attacker sends or accepts: a size every loopback and Ethernet path carries.
const MAX_DATAGRAM_BYTES: usize = 1350;

/// Receive (and body-read) buffer: room for the largest UDP payload, so nothing is truncated.
const RECV_BUFFER_BYTES: usize = 65_535;

/// How much of each response body [`StreamState::body`] keeps; the rest is only counted. Enough
/// for the short texts test handlers answer with, and bounded whatever a server sends.
const KEPT_BODY_BYTES: usize = 64 * 1024;

/// The QUIC transport error code of CONNECTION_REFUSED (RFC 9000 §20.1).
pub(super) const CONNECTION_REFUSED: u64 = 0x2;

/// The longest one [`QuicPeer::turn`] waits for a datagram when the caller has no other deadline.
const TURN_WAIT: Duration = Duration::from_millis(100);

/// How the attacker's QUIC side presents itself. The defaults are an ordinary client's; attacks
/// change what they need (a large initial congestion window to send a huge header section in one
/// flight, small windows to make a flow-control stall cost the attacker nothing).
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// SNI sent in the ClientHello (the certificate is not verified).
    pub server_name: String,
    /// The idle timeout the attacker offers; the smaller of both sides' applies.
    pub idle_timeout: Duration,
    /// Connection-level flow-control window offered to the server, in bytes.
    pub max_data: u64,
    /// Per-stream flow-control window offered to the server, in bytes.
    pub max_stream_data: u64,
    /// quiche's initial congestion window, in packets.
    pub initial_congestion_window_packets: usize,
}

impl Default for PeerSettings {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            idle_timeout: Duration::from_secs(30),
            max_data: 16 * 1024 * 1024,
            max_stream_data: 1024 * 1024,
            initial_congestion_window_packets: 10,
        }
    }
}

impl PeerSettings {
    /// The quiche configuration for these settings (ALPN `h3`, no certificate verification). One
    /// configuration serves any number of connections.
    ///
    /// # Errors
    /// quiche (BoringSSL) cannot create a TLS context.
    pub fn quiche_config(&self) -> io::Result<quiche::Config> {
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(quic_error)?;
        config.set_application_protos(&[super::ALPN]).map_err(quic_error)?;
        config.verify_peer(false);
        config.set_max_idle_timeout(u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX));
        config.set_max_recv_udp_payload_size(MAX_DATAGRAM_BYTES);
        config.set_max_send_udp_payload_size(MAX_DATAGRAM_BYTES);
        config.set_initial_max_data(self.max_data);
        config.set_initial_max_stream_data_bidi_local(self.max_stream_data);
        config.set_initial_max_stream_data_bidi_remote(self.max_stream_data);
        config.set_initial_max_stream_data_uni(self.max_stream_data);
        config.set_initial_max_streams_bidi(100);
        config.set_initial_max_streams_uni(100);
        config.set_initial_congestion_window_packets(self.initial_congestion_window_packets);
        config.set_disable_active_migration(true);
        Ok(config)
    }
}

/// What the attacker saw of one request stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The response's `:status`, once its header section arrived.
    pub status: Option<u16>,
    /// Response body bytes read so far.
    pub body_bytes: u64,
    /// The first 64 KiB of the body.
    pub body: Vec<u8>,
    /// The response ended cleanly (FIN).
    pub finished: bool,
    /// The server reset the stream with this HTTP/3 error code.
    pub reset: Option<u64>,
}

impl StreamState {
    /// Whether nothing more will arrive on the stream.
    pub fn is_over(&self) -> bool {
        self.finished || self.reset.is_some()
    }
}

/// One attacker connection: a quiche client connection, its HTTP/3 layer once started, and a UDP
/// socket of its own. Nothing happens unless the attack calls [`turn`](Self::turn) (or a method that
/// does): an attack that wants the connection to go silent just stops calling it.
pub struct QuicPeer {
    conn: quiche::Connection,
    h3: Option<quiche::h3::Connection>,
    socket: UdpSocket,
    local: SocketAddr,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    streams: HashMap<u64, StreamState>,
    h3_error: Option<quiche::h3::Error>,
    send_delay: Duration,
    idle_timeout: Duration,
}

/// A fresh random source connection ID.
pub(super) fn new_scid() -> quiche::ConnectionId<'static> {
    let mut id = [0u8; quiche::MAX_CONN_ID_LEN];
    rand::fill(&mut id);
    quiche::ConnectionId::from_vec(id.to_vec())
}

/// quiche errors as I/O errors: the attacks report what the server did, their own failures are rare.
pub(super) fn quic_error(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("quiche: {err}"))
}

/// The header section of a request for `path` on `authority`.
pub fn request_headers(method: &str, authority: &str, path: &str) -> Vec<quiche::h3::Header> {
    vec![
        quiche::h3::Header::new(b":method", method.as_bytes()),
        quiche::h3::Header::new(b":scheme", b"https"),
        quiche::h3::Header::new(b":authority", authority.as_bytes()),
        quiche::h3::Header::new(b":path", path.as_bytes()),
    ]
}

impl QuicPeer {
    /// Binds a UDP socket on `bind` and creates a client connection to `server`; sends nothing yet
    /// (the first [`turn`](Self::turn) sends the ClientHello).
    ///
    /// # Errors
    /// The socket cannot be bound, or quiche refuses the configuration.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing has been sent yet.
    pub async fn connect(
        config: &mut quiche::Config,
        settings: &PeerSettings,
        bind: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(bind).await?;
        let local = socket.local_addr()?;
        let conn =
            quiche::connect(Some(&settings.server_name), &new_scid(), local, server, config).map_err(quic_error)?;
        Ok(Self {
            conn,
            h3: None,
            socket,
            local,
            out: vec![0; MAX_DATAGRAM_BYTES],
            inbuf: vec![0; RECV_BUFFER_BYTES],
            streams: HashMap::new(),
            h3_error: None,
            send_delay: Duration::ZERO,
            idle_timeout: settings.idle_timeout,
        })
    }

    /// Connects, completes the handshake and starts HTTP/3: an ordinary client, ready for requests.
    ///
    /// # Errors
    /// As [`connect`](Self::connect) and [`establish`](Self::establish).
    ///
    /// # Cancel safety
    /// Cancel-safe: the connection is dropped (it idles out on the server).
    pub async fn connect_h3(
        config: &mut quiche::Config,
        settings: &PeerSettings,
        bind: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<Self> {
        let mut peer = Self::connect(config, settings, bind, server).await?;
        peer.establish().await?;
        peer.start_h3()?;
        peer.flush().await?;
        Ok(peer)
    }

    /// The quiche connection, for what the attacks do not wrap.
    pub fn conn(&self) -> &quiche::Connection {
        &self.conn
    }

    /// The quiche connection, mutable (to write raw stream bytes, for example).
    pub fn conn_mut(&mut self) -> &mut quiche::Connection {
        &mut self.conn
    }

    /// The address the attacker's socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Holds every datagram this long before sending it (a slow client).
    pub fn set_send_delay(&mut self, delay: Duration) {
        self.send_delay = delay;
    }

    /// The CONNECTION_CLOSE the server sent, as (application error?, code).
    pub fn peer_error(&self) -> Option<(bool, u64)> {
        self.conn.peer_error().map(|err| (err.is_app, err.error_code))
    }

    /// Whether the connection is over (closed by either side, or timed out).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// The HTTP/3 error that ended the attacker's HTTP/3 layer, if any.
    pub fn h3_error(&self) -> Option<&quiche::h3::Error> {
        self.h3_error.as_ref()
    }

    /// What the attacker saw of request stream `stream_id`.
    pub fn stream(&self, stream_id: u64) -> Option<&StreamState> {
        self.streams.get(&stream_id)
    }

    /// Sends everything quiche has to send (ignoring pacing: an attacker sends at full speed).
    ///
    /// # Errors
    /// The socket fails.
    ///
    /// # Cancel safety
    /// Not cancel-safe for the datagram being sent: quiche counts it as sent, so a cancelled flush
    /// loses it (QUIC then recovers it as a lost packet).
    pub async fn flush(&mut self) -> io::Result<()> {
        loop {
            let (len, info) = match self.conn.send(&mut self.out) {
                Ok(sent) => sent,
                Err(quiche::Error::Done) => return Ok(()),
                Err(err) => return Err(quic_error(err)),
            };
            if !self.send_delay.is_zero() {
                tokio::time::sleep(self.send_delay).await;
            }
            self.socket.send_to(&self.out[..len], info.to).await?;
        }
    }

    /// One turn of the connection: send what is due, wait up to `wait` (or quiche's next timer) for
    /// datagrams, feed every one that arrived to quiche, run its timers, send again.
    ///
    /// # Errors
    /// The socket fails.
    ///
    /// # Cancel safety
    /// As [`flush`](Self::flush); a datagram already read is fed to quiche before the next await.
    pub async fn turn(&mut self, wait: Duration) -> io::Result<()> {
        self.flush().await?;
        let wait = self.conn.timeout().map_or(wait, |timer| timer.min(wait));
        if let Ok(received) = tokio::time::timeout(wait, self.socket.recv_from(&mut self.inbuf)).await {
            let (len, from) = received?;
            self.feed(len, from);
            loop {
                match self.socket.try_recv_from(&mut self.inbuf) {
                    Ok((len, from)) => self.feed(len, from),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => return Err(err),
                }
            }
        }
        if self.conn.timeout().is_some_and(|timer| timer.is_zero()) {
            self.conn.on_timeout();
        }
        self.flush().await
    }

    fn feed(&mut self, len: usize, from: SocketAddr) {
        // A hostile client does not care why quiche rejected a packet; quiche closes the
        // connection itself when the error is fatal.
        let _ = self.conn.recv(&mut self.inbuf[..len], quiche::RecvInfo { from, to: self.local });
    }

    /// Turns the connection until the handshake completes.
    ///
    /// # Errors
    /// The connection closed first (the error says who closed it and with what code), or the socket
    /// failed. quiche's own handshake and idle timers bound the wait.
    ///
    /// # Cancel safety
    /// Cancel-safe: the handshake stays where it is and can be resumed by calling again.
    pub async fn establish(&mut self) -> io::Result<()> {
        while !self.conn.is_established() {
            if self.conn.is_closed() {
                return Err(self.closed_error("the handshake"));
            }
            self.turn(TURN_WAIT).await?;
        }
        Ok(())
    }

    /// Why the connection is over, as an error naming what was going on.
    pub fn closed_error(&self, during: &str) -> io::Error {
        let reason = match (self.conn.peer_error(), self.conn.local_error()) {
            (Some(err), _) => format!("the server closed it (application {}, code {:#x})", err.is_app, err.error_code),
            (None, Some(err)) => {
                format!("the attacker closed it (application {}, code {:#x})", err.is_app, err.error_code)
            }
            (None, None) if self.conn.is_timed_out() => "it timed out".to_owned(),
            (None, None) => "it closed".to_owned(),
        };
        io::Error::other(format!("connection over during {during}: {reason}"))
    }

    /// Starts the HTTP/3 layer (control stream, SETTINGS) on an established connection.
    ///
    /// # Errors
    /// quiche refuses (the connection is not established, or closed).
    pub fn start_h3(&mut self) -> io::Result<()> {
        let config = quiche::h3::Config::new().map_err(quic_error)?;
        self.h3 = Some(quiche::h3::Connection::with_transport(&mut self.conn, &config).map_err(quic_error)?);
        Ok(())
    }

    fn h3(&mut self) -> Result<(&mut quiche::Connection, &mut quiche::h3::Connection), quiche::h3::Error> {
        match self.h3.as_mut() {
            Some(h3) => Ok((&mut self.conn, h3)),
            None => Err(quiche::h3::Error::InternalError),
        }
    }

    /// Sends a request's header section (quiche's QPACK encoder, no size check of ours).
    ///
    /// # Errors
    /// quiche's: `StreamBlocked` when the stream cannot take the whole section now,
    /// `TransportError(StreamLimit)` when the server allows no more streams.
    pub fn send_request(&mut self, headers: &[quiche::h3::Header], fin: bool) -> Result<u64, quiche::h3::Error> {
        let (conn, h3) = self.h3()?;
        h3.send_request(conn, headers, fin)
    }

    /// Sends one DATA frame carrying `body` (as much of it as fits) on `stream_id`.
    ///
    /// # Errors
    /// quiche's: `Done` when there is no room now.
    pub fn send_body(&mut self, stream_id: u64, body: &[u8], fin: bool) -> Result<usize, quiche::h3::Error> {
        let (conn, h3) = self.h3()?;
        h3.send_body(conn, stream_id, body, fin)
    }

    /// Sends a request until quiche takes it, turning the connection while the stream is blocked.
    ///
    /// # Errors
    /// Any other quiche error, or the connection closed.
    ///
    /// # Cancel safety
    /// Cancel-safe: the request is either sent (and lost to the caller) or not sent.
    pub async fn send_request_when_ready(&mut self, headers: &[quiche::h3::Header], fin: bool) -> io::Result<u64> {
        loop {
            match self.send_request(headers, fin) {
                Ok(stream_id) => return Ok(stream_id),
                Err(quiche::h3::Error::StreamBlocked) if !self.conn.is_closed() => self.turn(TURN_WAIT).await?,
                Err(_) if self.conn.is_closed() => return Err(self.closed_error("sending a request")),
                Err(err) => return Err(quic_error(err)),
            }
        }
    }

    /// Reads every HTTP/3 event quiche has: response heads, bodies (read in full, so flow control
    /// reopens), ends and resets, into [`stream`](Self::stream).
    pub fn read_responses(&mut self) {
        let Self { conn, h3, streams, inbuf, h3_error, .. } = self;
        let Some(h3) = h3.as_mut() else { return };
        loop {
            match h3.poll(conn) {
                Ok((stream_id, quiche::h3::Event::Headers { list, .. })) => {
                    let state = streams.entry(stream_id).or_default();
                    if state.status.is_none() {
                        state.status = list
                            .iter()
                            .find(|field| field.name() == b":status")
                            .and_then(|field| std::str::from_utf8(field.value()).ok()?.parse().ok());
                    }
                }
                Ok((stream_id, quiche::h3::Event::Data)) => {
                    let state = streams.entry(stream_id).or_default();
                    while let Ok(read) = h3.recv_body(conn, stream_id, inbuf) {
                        state.body_bytes += read as u64;
                        let keep = read.min(KEPT_BODY_BYTES.saturating_sub(state.body.len()));
                        state.body.extend_from_slice(&inbuf[..keep]);
                    }
                }
                Ok((stream_id, quiche::h3::Event::Finished)) => streams.entry(stream_id).or_default().finished = true,
                Ok((stream_id, quiche::h3::Event::Reset(code))) => {
                    streams.entry(stream_id).or_default().reset = Some(code);
                }
                Ok(_) => {}
                Err(quiche::h3::Error::Done) => return,
                Err(err) => {
                    *h3_error = Some(err);
                    return;
                }
            }
        }
    }

    /// Turns the connection and reads responses until `stream_id`'s response is over.
    ///
    /// # Errors
    /// The connection closed first, or the socket failed.
    ///
    /// # Cancel safety
    /// Cancel-safe: what arrived stays in [`stream`](Self::stream)'s state until the next call.
    pub async fn await_response(&mut self, stream_id: u64) -> io::Result<StreamState> {
        loop {
            self.read_responses();
            if self.streams.get(&stream_id).is_some_and(StreamState::is_over) {
                return Ok(self.streams.remove(&stream_id).unwrap_or_default());
            }
            if self.conn.is_closed() {
                return Err(self.closed_error("a response"));
            }
            self.turn(TURN_WAIT).await?;
        }
    }

    /// An ordinary GET of `path`: what an honest client does.
    ///
    /// # Errors
    /// As [`await_response`](Self::await_response).
    ///
    /// # Cancel safety
    /// As [`send_request_when_ready`](Self::send_request_when_ready) and [`await_response`](Self::await_response).
    pub async fn get(&mut self, authority: &str, path: &str) -> io::Result<StreamState> {
        let stream_id = self.send_request_when_ready(&request_headers("GET", authority, path), true).await?;
        self.await_response(stream_id).await
    }

    /// Keeps the connection alive until it closes: acknowledges what arrives and sends a PING
    /// before the idle timeout would fire. Reads responses only if `read` is set (a client that
    /// never reads leaves the server's data in quiche's buffers, so flow control stays closed).
    ///
    /// # Errors
    /// The socket fails.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future only stops the keep-alive (the connection then idles out).
    pub async fn keep_alive(&mut self, read: bool) -> io::Result<()> {
        let ping_every = self.idle_timeout / 3;
        let mut last_ping = Instant::now();
        while !self.conn.is_closed() {
            if read {
                self.read_responses();
            }
            if last_ping.elapsed() >= ping_every {
                // Only fails on a closed connection, which the loop checks.
                let _ = self.conn.send_ack_eliciting();
                last_ping = Instant::now();
            }
            self.turn(ping_every.min(TURN_WAIT * 10)).await?;
        }
        Ok(())
    }

    /// Closes the connection with an application NO_ERROR and sends the CONNECTION_CLOSE.
    ///
    /// # Errors
    /// The socket fails.
    ///
    /// # Cancel safety
    /// As [`flush`](Self::flush).
    pub async fn close(&mut self) -> io::Result<()> {
        let _ = self.conn.close(true, 0x100, b"done");
        self.flush().await
    }
}
