//! What a connection's handshake settled on ([`HandshakeInfo`]), and how the TLS half of it is learnt.
//!
//! quiche does not expose the negotiated cipher or key-exchange group. BoringSSL tells an info callback
//! when a handshake completes, with the `SSL` in hand but nothing that names our connection (quiche
//! does not expose its `SSL` either). quiche drives TLS synchronously inside `Connection::recv`, on the
//! thread that calls it. So the callback leaves the details in a thread-local slot, and the connection
//! task empties the slot right before each of its own `recv` calls and takes what is there right after,
//! with no await in between, into the connection's own state: what it keeps was put there by its own
//! `recv`. A handshake whose details nobody took (another connection that closed in the same `recv`)
//! can therefore never be attributed to a later connection, such as one that became usable in 0-RTT
//! before its own handshake completed.

use std::cell::Cell;
use std::time::Duration;

use boring::ssl::{SslContextBuilder, SslInfoCallbackMode, SslRef};

/// What the handshake of one connection negotiated, and how long it took. From
/// [`ConnectionHandle::handshake`](crate::ConnectionHandle::handshake).
///
/// ```no_run
/// # async fn demo(endpoint: quiver::Endpoint, app: impl quiver::ApplicationOverQuic) -> Result<(), Box<dyn std::error::Error>> {
/// let connection = endpoint.connect("192.0.2.1:443".parse()?, "example.com", app).await?;
/// let handshake = connection.handshake();
/// println!(
///     "QUIC 0x{:08x}, {}, {} in {:?}",
///     handshake.quic_version,
///     handshake.cipher.unwrap_or("unknown cipher"),
///     handshake.key_exchange_group.unwrap_or("unknown group"),
///     handshake.duration
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeInfo {
    /// From the connection's creation (a client's first Initial, or the server accepting the client's
    /// first Initial) to the handshake's completion.
    pub duration: Duration,
    /// The QUIC version in use. quiche 0.30 speaks QUIC version 1 only (0x00000001).
    pub quic_version: u32,
    /// The TLS version, as BoringSSL names it (`TLSv1.3`). The TLS details are `None` for a connection
    /// that became usable in 0-RTT, before its handshake completed.
    pub tls_version: Option<&'static str>,
    /// The TLS cipher suite by its IANA name (`TLS_AES_128_GCM_SHA256`).
    pub cipher: Option<&'static str>,
    /// The key-exchange group (`X25519MLKEM768`, `X25519`, ...).
    pub key_exchange_group: Option<&'static str>,
    /// Whether the session was resumed from an earlier one.
    pub resumed: bool,
}

/// The TLS details BoringSSL reported for the handshake that last completed on this thread.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TlsDetails {
    tls_version: Option<&'static str>,
    cipher: Option<&'static str>,
    key_exchange_group: Option<&'static str>,
}

thread_local! {
    static COMPLETED: Cell<Option<TlsDetails>> = const { Cell::new(None) };
}

/// Has BoringSSL report every completed handshake of connections made from this context.
pub(crate) fn install(ssl: &mut SslContextBuilder) {
    ssl.set_info_callback(|ssl: &SslRef, mode, _value| {
        if mode == SslInfoCallbackMode::HANDSHAKE_DONE {
            let details = TlsDetails {
                tls_version: Some(ssl.version_str()),
                cipher: ssl.current_cipher().and_then(|cipher| cipher.standard_name()),
                key_exchange_group: ssl.curve_name(),
            };
            // `try_with`: the slot may already be gone while a thread shuts down; never panic inside
            // BoringSSL.
            let _ = COMPLETED.try_with(|slot| slot.set(Some(details)));
        }
    });
}

/// Takes what the last handshake completed on this thread left, if anything (see the module docs for
/// when that is the caller's own).
pub(crate) fn take_completed() -> Option<TlsDetails> {
    COMPLETED.try_with(Cell::take).ok().flatten()
}

/// Leaves details in this thread's slot, as a handshake whose connection never took them would.
#[cfg(test)]
pub(crate) fn leave_behind(cipher: &'static str) {
    let details = TlsDetails { tls_version: Some("TLSv1.3"), cipher: Some(cipher), key_exchange_group: None };
    COMPLETED.with(|slot| slot.set(Some(details)));
}

impl HandshakeInfo {
    pub(crate) fn new(duration: Duration, tls: TlsDetails, conn: &quiche::Connection) -> Self {
        Self {
            duration,
            quic_version: quiche::PROTOCOL_VERSION,
            tls_version: tls.tls_version,
            cipher: tls.cipher,
            key_exchange_group: tls.key_exchange_group,
            resumed: conn.is_resumed(),
        }
    }
}
