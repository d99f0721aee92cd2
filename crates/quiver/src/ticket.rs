//! Session-ticket keys that rotate: a server encrypts the TLS session tickets it issues (for resumption
//! and 0-RTT) with a key derived from its [`ServerSecret`] and the current period of
//! [`TICKET_KEY_ROTATION`], and accepts tickets of the current and the previous period only. A ticket
//! key that leaks therefore opens the recorded 0-RTT flights of two periods, not of every connection
//! ever made under the secret; servers that share the secret (a fleet, a restart) still accept each
//! other's tickets.
//!
//! BoringSSL asks a callback for the key of each ticket it seals or opens
//! (`SSL_CTX_set_tlsext_ticket_key_cb`); the key's 16-byte name says which deployment and period it
//! belongs to, so opening never has to try several keys. A ticket sealed in the previous period is
//! accepted and renewed (the client gets a new ticket under the current key).

use std::time::{Duration, SystemTime};

use boring::hash::MessageDigest;
use boring::ssl::{SslContextBuilder, TicketKeyCallbackResult};
use boring::symm::Cipher;
use ring::hmac;

use crate::token::{ServerSecret, unix_secs};

/// How often session-ticket keys change. A ticket resumes for one to two periods after it was issued
/// (BoringSSL also ends a session's life after its own timeout, two hours by default for TLS 1.3
/// resumption without a new key exchange).
pub const TICKET_KEY_ROTATION: Duration = Duration::from_secs(3600);

/// Bytes of a key name that identify the deployment (derived from the secret); the other 8 are the
/// period number.
const NAME_PREFIX_BYTES: usize = 8;

/// Where the current period comes from.
#[derive(Clone, Debug)]
pub(crate) enum TicketClock {
    /// The wall clock: the period is Unix time divided by [`TICKET_KEY_ROTATION`].
    System,
    /// A period set by hand (tests).
    #[cfg(test)]
    Manual(std::sync::Arc<std::sync::atomic::AtomicU64>),
}

impl TicketClock {
    fn period(&self) -> u64 {
        match self {
            TicketClock::System => unix_secs(SystemTime::now()) / TICKET_KEY_ROTATION.as_secs(),
            #[cfg(test)]
            TicketClock::Manual(period) => period.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The keys of one period: its name, the AES-128-CBC key that encrypts tickets and the HMAC-SHA256 key
/// that authenticates them (the algorithms BoringSSL's own ticket keys use).
struct PeriodKey {
    name: [u8; 16],
    aes: [u8; 16],
    hmac: [u8; 32],
}

/// Derives the ticket keys of any period from one secret.
struct TicketKeys {
    secret: ServerSecret,
    name_prefix: [u8; NAME_PREFIX_BYTES],
    clock: TicketClock,
}

impl TicketKeys {
    fn new(secret: &ServerSecret, clock: TicketClock) -> Self {
        let prefix = hmac::sign(&secret.derive(b"quiver session ticket name", b""), b"");
        let mut name_prefix = [0u8; NAME_PREFIX_BYTES];
        name_prefix.copy_from_slice(&prefix.as_ref()[..NAME_PREFIX_BYTES]);
        Self { secret: secret.clone(), name_prefix, clock }
    }

    fn key(&self, period: u64) -> PeriodKey {
        let period_key = self.secret.derive(b"quiver session ticket key", &period.to_be_bytes());
        let mut key = PeriodKey { name: [0; 16], aes: [0; 16], hmac: [0; 32] };
        key.name[..NAME_PREFIX_BYTES].copy_from_slice(&self.name_prefix);
        key.name[NAME_PREFIX_BYTES..].copy_from_slice(&period.to_be_bytes());
        key.aes.copy_from_slice(&hmac::sign(&period_key, b"aes").as_ref()[..16]);
        key.hmac.copy_from_slice(hmac::sign(&period_key, b"hmac").as_ref());
        key
    }

    /// The period a key name belongs to, if it is one of ours.
    fn period_of(&self, name: &[u8; 16]) -> Option<u64> {
        let (prefix, period) = name.split_at(NAME_PREFIX_BYTES);
        (prefix == self.name_prefix).then(|| u64::from_be_bytes(period.try_into().unwrap_or_default()))
    }

    /// What to do with a ticket whose key is named `name`, presented now.
    fn accept(&self, name: &[u8; 16]) -> Option<(PeriodKey, TicketKeyCallbackResult)> {
        let current = self.clock.period();
        let period = self.period_of(name)?;
        if period == current {
            Some((self.key(period), TicketKeyCallbackResult::Success))
        } else if period.checked_add(1) == Some(current) {
            Some((self.key(period), TicketKeyCallbackResult::DecryptSuccessRenew))
        } else {
            None
        }
    }
}

/// Has the server context seal and open session tickets with the rotating keys of `secret`.
pub(crate) fn install(ssl: &mut SslContextBuilder, secret: &ServerSecret, clock: TicketClock) {
    let keys = TicketKeys::new(secret, clock);
    let callback = move |_: &boring::ssl::SslRef,
                         name: &mut [u8; 16],
                         iv: &mut [u8; 16],
                         cipher: &mut boring::symm::CipherCtxRef,
                         mac: &mut boring::hmac::HmacCtxRef,
                         encrypt: bool| {
        let (key, result) = if encrypt {
            let key = keys.key(keys.clock.period());
            *name = key.name;
            if boring::rand::rand_bytes(iv).is_err() {
                return TicketKeyCallbackResult::Error;
            }
            (key, TicketKeyCallbackResult::Success)
        } else {
            match keys.accept(name) {
                Some(accepted) => accepted,
                // Another deployment's, or too old: a full handshake.
                None => return TicketKeyCallbackResult::Noop,
            }
        };
        let initialised = if encrypt {
            cipher.init_encrypt(&Cipher::aes_128_cbc(), &key.aes, iv)
        } else {
            cipher.init_decrypt(&Cipher::aes_128_cbc(), &key.aes, iv)
        };
        if initialised.is_err() || mac.init(&key.hmac, &MessageDigest::sha256()).is_err() {
            return TicketKeyCallbackResult::Error;
        }
        result
    };
    // SAFETY: `SSL_CTX_set_tlsext_ticket_key_cb` requires that, on success, the callback has set the
    // key name and IV (when sealing) and initialised the cipher and HMAC contexts with a matching key.
    // Every path above that returns `Success` or `DecryptSuccessRenew` has done all of that; every
    // other path returns `Error` (sealing failed) or `Noop` (unknown key: full handshake), for which
    // BoringSSL reads nothing the callback wrote.
    unsafe { ssl.set_ticket_key_callback(callback) };
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::ServerConfig;

    const PERIOD: u64 = 490_000;

    fn server(secret: &ServerSecret, period: &Arc<AtomicU64>) -> quiche::Config {
        let config = ServerConfig::builder()
            .alpn(["ticket-test"])
            .self_signed(["localhost"])
            .secret(secret.clone())
            .build()
            .expect("server config");
        config.quiche_config_with(TicketClock::Manual(period.clone())).expect("quiche config")
    }

    fn client() -> quiche::Config {
        let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("client config");
        config.set_application_protos(&[b"ticket-test"]).expect("alpn");
        config.verify_peer(false);
        config.set_initial_max_data(10_000);
        config
    }

    /// One handshake over memory, offering `session`: whether it resumed, and the ticket it left.
    fn handshake(server_config: &mut quiche::Config, session: Option<&[u8]>) -> (bool, Vec<u8>) {
        let (client_addr, server_addr): (SocketAddr, SocketAddr) =
            ("192.0.2.1:4000".parse().unwrap(), "192.0.2.2:443".parse().unwrap());
        let mut client_config = client();
        let client_cid = quiche::ConnectionId::from_ref(&[1; 16]);
        let server_cid = quiche::ConnectionId::from_ref(&[2; 16]);
        let mut client = quiche::connect(Some("localhost"), &client_cid, client_addr, server_addr, &mut client_config)
            .expect("client connection");
        if let Some(session) = session {
            client.set_session(session).expect("session");
        }
        let mut server = quiche::accept(&server_cid, None, server_addr, client_addr, server_config).expect("accept");
        let mut buffer = vec![0u8; 65_535];
        for _ in 0..32 {
            let mut moved = false;
            while let Ok((len, _)) = client.send(&mut buffer) {
                let _ = server.recv(&mut buffer[..len], quiche::RecvInfo { from: client_addr, to: server_addr });
                moved = true;
            }
            while let Ok((len, _)) = server.send(&mut buffer) {
                let _ = client.recv(&mut buffer[..len], quiche::RecvInfo { from: server_addr, to: client_addr });
                moved = true;
            }
            if !moved {
                break;
            }
        }
        assert!(client.is_established() && server.is_established(), "handshake completed");
        (client.is_resumed(), client.session().expect("a session ticket").to_vec())
    }

    #[test]
    fn a_ticket_resumes_in_its_period_and_the_next_but_not_after() {
        let secret = ServerSecret::from_bytes(&[5; 32]);
        let period = Arc::new(AtomicU64::new(PERIOD));
        let mut config = server(&secret, &period);
        let (resumed, ticket) = handshake(&mut config, None);
        assert!(!resumed);
        assert!(handshake(&mut config, Some(&ticket)).0, "same period");
        period.store(PERIOD + 1, Ordering::Relaxed);
        let (resumed, renewed) = handshake(&mut config, Some(&ticket));
        assert!(resumed, "the previous period's key is still accepted");
        period.store(PERIOD + 2, Ordering::Relaxed);
        assert!(!handshake(&mut config, Some(&ticket)).0, "two periods on, the ticket's key is gone");
        assert!(handshake(&mut config, Some(&renewed)).0, "the ticket renewed in the previous period resumes");
    }

    #[test]
    fn servers_sharing_a_secret_accept_each_others_tickets_and_no_one_elses() {
        let secret = ServerSecret::from_bytes(&[6; 32]);
        let period = Arc::new(AtomicU64::new(PERIOD));
        let (_, ticket) = handshake(&mut server(&secret, &period), None);
        assert!(handshake(&mut server(&secret, &period), Some(&ticket)).0, "another server, same secret");
        let stranger = ServerSecret::from_bytes(&[7; 32]);
        assert!(!handshake(&mut server(&stranger, &period), Some(&ticket)).0, "another secret");
    }
}
