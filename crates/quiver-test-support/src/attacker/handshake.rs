//! Handshakes that never finish (partial) or finish as slowly as the server lets them (slow).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::peer::{CONNECTION_REFUSED, PeerSettings, QuicPeer, new_scid, quic_error};

/// How the server answered a batch of [`partial_handshakes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialOutcome {
    /// Handshakes the server started (it answered with its own flight): each holds server state.
    pub answered: usize,
    /// Handshakes the server refused with CONNECTION_REFUSED.
    pub refused: usize,
    /// Retry packets followed on the way (address validation under load).
    pub retried: usize,
    /// Handshakes that got no answer within `patience`, or another close.
    pub silent: usize,
}

/// Starts `count` handshakes from `socket`, one after another, and abandons each half way.
///
/// Each sends a real ClientHello, follows a Retry if the server asks for one (an attacker at its
/// own address can), and goes silent as soon as the server has answered with its handshake
/// flight: the server has then spent a key exchange and a signature and keeps the connection's
/// state until some deadline frees it. The attacker keeps nothing, so the attack's cost to the
/// attacker is one socket for any `count`. Replies to earlier handshakes of the batch (the
/// server's retransmissions) are read and thrown away.
///
/// # Errors
/// The socket fails or quiche cannot create a connection.
///
/// # Cancel safety
/// Cancel-safe: dropping the future abandons the handshake in progress like the others.
pub async fn partial_handshakes(
    settings: &PeerSettings,
    socket: &UdpSocket,
    server: SocketAddr,
    count: usize,
    patience: Duration,
) -> io::Result<PartialOutcome> {
    let mut config = settings.quiche_config()?;
    let local = socket.local_addr()?;
    let mut out = vec![0u8; 1350];
    let mut inbuf = vec![0u8; 65_535];
    let mut outcome = PartialOutcome::default();
    for _ in 0..count {
        let scid = new_scid();
        let mut conn =
            quiche::connect(Some(&settings.server_name), &scid, local, server, &mut config).map_err(quic_error)?;
        send_all(&mut conn, socket, &mut out).await?;
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(received) = tokio::time::timeout(left, socket.recv_from(&mut inbuf)).await else {
                outcome.silent += 1;
                break;
            };
            let (len, from) = received?;
            let Ok(header) = quiche::Header::from_slice(&mut inbuf[..len], quiche::MAX_CONN_ID_LEN) else { continue };
            if header.dcid.as_ref() != scid.as_ref() {
                continue; // a retransmission for an earlier handshake of the batch
            }
            let retry = header.ty == quiche::Type::Retry;
            let _ = conn.recv(&mut inbuf[..len], quiche::RecvInfo { from, to: local });
            if conn.is_closed() || conn.peer_error().is_some() {
                match conn.peer_error() {
                    Some(err) if !err.is_app && err.error_code == CONNECTION_REFUSED => outcome.refused += 1,
                    _ => outcome.silent += 1,
                }
                break;
            }
            if retry {
                outcome.retried += 1;
                send_all(&mut conn, socket, &mut out).await?; // the ClientHello again, with the token
                continue;
            }
            outcome.answered += 1;
            break;
        }
    }
    Ok(outcome)
}

async fn send_all(conn: &mut quiche::Connection, socket: &UdpSocket, out: &mut [u8]) -> io::Result<()> {
    loop {
        match conn.send(out) {
            Ok((len, info)) => {
                socket.send_to(&out[..len], info.to).await?;
            }
            Err(quiche::Error::Done) => return Ok(()),
            Err(err) => return Err(quic_error(err)),
        }
    }
}

/// Completes one handshake from a socket of its own on `bind`, holding each of its datagrams back
/// for `delay` first: a client on a terrible path, or one that wants to hold a handshake slot as
/// long as the server lets it while still looking alive. Returns the established connection.
///
/// # Errors
/// The server closed the connection (a handshake deadline, a refusal) or the socket failed.
///
/// # Cancel safety
/// Cancel-safe: dropping the future abandons the handshake.
pub async fn slow_handshake(
    settings: &PeerSettings,
    bind: SocketAddr,
    server: SocketAddr,
    delay: Duration,
) -> io::Result<QuicPeer> {
    let mut config = settings.quiche_config()?;
    let mut peer = QuicPeer::connect(&mut config, settings, bind, server).await?;
    peer.set_send_delay(delay);
    peer.establish().await?;
    peer.set_send_delay(Duration::ZERO);
    peer.start_h3()?;
    peer.flush().await?;
    Ok(peer)
}
