//! Address-validation (Retry) tokens and stateless-reset tokens, both derived from one server secret.
//!
//! Every key here is derived from the [`ServerSecret`] with HMAC-SHA256, so servers that share the
//! secret (a fleet behind one address, or a process that restarted) validate each other's Retry tokens
//! and can reset each other's connections. Retry-token keys rotate every [`RETRY_KEY_ROTATION`]: a
//! token is checked with the key of the period it was issued in, and expires after
//! [`RETRY_TOKEN_LIFETIME`] whatever the key.
//!
//! A Retry token binds the client's address (IP and port), the connection ID the client chose first
//! (the original DCID) and the connection ID we told it to use next (the Retry's SCID), with the time it
//! was issued. Forging one needs the secret; replaying one from another address or after its lifetime
//! fails.
//!
//! Which tokens are ours (RFC 9000 §8.1.3): a token is recognisably one of our Retry tokens when it
//! has their layout: the kind byte, a connection-ID length of at most 20 and exactly the length that
//! implies. Anything else (a NEW_TOKEN token of another server or deployment, garbage) is
//! [`TokenError::Foreign`], and the server goes on as if the Initial carried no token. A token of our
//! layout that fails its checks (expired, forged, made with another secret, presented from another
//! address or for another connection ID) is an invalid Retry token: the client will not accept a
//! second Retry (RFC 9000 §17.2.5.2), so the server closes with INVALID_TOKEN rather than leave it
//! waiting for a timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

/// How long a client has to come back with a Retry token: a round trip plus slack for a slow client.
pub const RETRY_TOKEN_LIFETIME: Duration = Duration::from_secs(10);

/// How often Retry-token keys change. Tokens issued under the previous key stay valid for their
/// lifetime, so rotation never rejects a client that is mid-handshake.
pub const RETRY_KEY_ROTATION: Duration = Duration::from_secs(3600);

/// First byte of every token we mint; other values (another server's tokens, NEW_TOKEN tokens of an
/// earlier deployment) are not ours.
const RETRY_TOKEN_KIND: u8 = b'R';
/// Bytes of HMAC tag kept in a token: 128 bits is far beyond forging range.
const TAG_BYTES: usize = 16;
/// Longest connection ID QUIC v1 allows.
const MAX_CID_BYTES: usize = 20;
/// A token issued this far in the future (clock steps between fleet members) is still accepted.
const CLOCK_SKEW: Duration = Duration::from_secs(2);

/// The secret a server derives its Retry-token keys, stateless-reset tokens and session-ticket keys
/// from.
///
/// Generate one per deployment and give it to every server that shares an address; without one, each
/// endpoint picks a random secret (then a restarted server can neither validate the old one's tokens
/// nor reset its connections).
#[derive(Clone)]
pub struct ServerSecret(hmac::Key);

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(..)")
    }
}

impl ServerSecret {
    /// A secret from at least 32 bytes of key material.
    pub fn from_bytes(material: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, material))
    }

    /// A fresh random secret.
    pub fn random() -> Self {
        let mut material = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut material);
        Self::from_bytes(&material)
    }

    /// A key for one purpose, so that no token of one kind is ever valid as another (the session-ticket
    /// keys of `crate::ticket` derive from it too).
    pub(crate) fn derive(&self, label: &[u8], context: &[u8]) -> hmac::Key {
        let mut signer = hmac::Context::with_key(&self.0);
        signer.update(label);
        signer.update(context);
        hmac::Key::new(hmac::HMAC_SHA256, signer.sign().as_ref())
    }
}

/// Derives stateless-reset tokens (RFC 9000 §10.3) from connection IDs.
#[derive(Clone, Debug)]
pub(crate) struct ResetTokens {
    key: ResetKey,
}

#[derive(Clone)]
struct ResetKey(hmac::Key);

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(..)")
    }
}

impl ResetTokens {
    pub(crate) fn new(secret: &ServerSecret) -> Self {
        Self { key: ResetKey(secret.derive(b"quiver stateless reset", b"")) }
    }

    /// The token for `cid`: the same on every server that shares the secret, unguessable without it.
    pub(crate) fn token(&self, cid: &[u8]) -> u128 {
        let tag = hmac::sign(&self.key.0, cid);
        let mut token = [0u8; 16];
        token.copy_from_slice(&tag.as_ref()[..16]);
        u128::from_be_bytes(token)
    }
}

/// Mints and checks Retry tokens.
#[derive(Clone)]
pub(crate) struct RetryTokens {
    secret: ServerSecret,
}

impl std::fmt::Debug for RetryTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryTokens(..)")
    }
}

/// Why a Retry token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not of our Retry tokens' layout (another server's NEW_TOKEN token, garbage, a truncated token):
    /// handled as no token at all.
    Foreign,
    /// Issued longer ago than [`RETRY_TOKEN_LIFETIME`] (or in the future).
    Expired,
    /// The tag does not match: forged, altered, or presented from another address or connection ID.
    Invalid,
}

/// What a valid token tells the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValidatedToken {
    /// The connection ID the client first chose, which the handshake must echo back.
    pub(crate) original_dcid: Vec<u8>,
}

impl RetryTokens {
    pub(crate) fn new(secret: ServerSecret) -> Self {
        Self { secret }
    }

    fn period_key(&self, issued_at_secs: u64) -> hmac::Key {
        let period = issued_at_secs / RETRY_KEY_ROTATION.as_secs();
        self.secret.derive(b"quiver retry token", &period.to_be_bytes())
    }

    /// A token for a client at `client` whose first Initial named `original_dcid`, told by our Retry to
    /// use `retry_scid` next.
    pub(crate) fn mint(&self, client: SocketAddr, original_dcid: &[u8], retry_scid: &[u8], now: SystemTime) -> Vec<u8> {
        let issued_at = unix_secs(now);
        let original_dcid = &original_dcid[..original_dcid.len().min(MAX_CID_BYTES)];
        let mut token = Vec::with_capacity(1 + 8 + 1 + original_dcid.len() + TAG_BYTES);
        token.push(RETRY_TOKEN_KIND);
        token.extend_from_slice(&issued_at.to_be_bytes());
        token.push(original_dcid.len() as u8);
        token.extend_from_slice(original_dcid);
        let tag = self.tag(&token, client, retry_scid, issued_at);
        token.extend_from_slice(&tag.as_ref()[..TAG_BYTES]);
        token
    }

    /// Checks a token presented by `client` in an Initial addressed to `dcid` (our Retry's SCID).
    pub(crate) fn validate(
        &self,
        token: &[u8],
        client: SocketAddr,
        dcid: &[u8],
        now: SystemTime,
    ) -> Result<ValidatedToken, TokenError> {
        let (&kind, rest) = token.split_first().ok_or(TokenError::Foreign)?;
        if kind != RETRY_TOKEN_KIND {
            return Err(TokenError::Foreign);
        }
        let issued_at =
            u64::from_be_bytes(rest.get(..8).ok_or(TokenError::Foreign)?.try_into().map_err(|_| TokenError::Foreign)?);
        let odcid_len = usize::from(*rest.get(8).ok_or(TokenError::Foreign)?);
        if odcid_len > MAX_CID_BYTES {
            return Err(TokenError::Foreign);
        }
        let body_len = 1 + 8 + 1 + odcid_len;
        if token.len() != body_len + TAG_BYTES {
            return Err(TokenError::Foreign);
        }
        let now_secs = unix_secs(now);
        let lifetime = RETRY_TOKEN_LIFETIME.as_secs();
        if issued_at > now_secs + CLOCK_SKEW.as_secs() || now_secs.saturating_sub(issued_at) > lifetime {
            return Err(TokenError::Expired);
        }
        let (body, tag) = token.split_at(body_len);
        let expected = self.tag(body, client, dcid, issued_at);
        // Every byte is compared whatever the first difference, so timing reveals nothing.
        let difference = expected.as_ref()[..TAG_BYTES].iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(TokenError::Invalid);
        }
        Ok(ValidatedToken { original_dcid: body[10..].to_vec() })
    }

    fn tag(&self, body: &[u8], client: SocketAddr, retry_scid: &[u8], issued_at: u64) -> hmac::Tag {
        let mut signer = hmac::Context::with_key(&self.period_key(issued_at));
        signer.update(body);
        let ip = match client.ip() {
            IpAddr::V4(ip) => ip.to_ipv6_mapped(),
            IpAddr::V6(ip) => ip,
        };
        signer.update(&ip.octets());
        signer.update(&client.port().to_be_bytes());
        signer.update(&[retry_scid.len() as u8]);
        signer.update(retry_scid);
        signer.sign()
    }
}

pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A token minted now for 192.0.2.1:4433, original DCID `original`, Retry SCID `retry-scid`.
    fn minted() -> (RetryTokens, SocketAddr, SystemTime, Vec<u8>) {
        let tokens = RetryTokens::new(ServerSecret::from_bytes(&[7; 32]));
        let client = addr("192.0.2.1:4433");
        let now = SystemTime::now();
        let token = tokens.mint(client, b"original", b"retry-scid", now);
        (tokens, client, now, token)
    }

    #[test]
    fn a_token_validates_only_for_its_client_connection_ids_and_lifetime() {
        let (tokens, client, now, token) = minted();
        assert_eq!(
            tokens.validate(&token, client, b"retry-scid", now),
            Ok(ValidatedToken { original_dcid: b"original".to_vec() })
        );
        // Another port, another address, another DCID: all refused.
        assert_eq!(tokens.validate(&token, addr("192.0.2.1:4434"), b"retry-scid", now), Err(TokenError::Invalid));
        assert_eq!(tokens.validate(&token, addr("192.0.2.2:4433"), b"retry-scid", now), Err(TokenError::Invalid));
        assert_eq!(tokens.validate(&token, client, b"other-scid", now), Err(TokenError::Invalid));
        // Expired, and from the future.
        let later = now + RETRY_TOKEN_LIFETIME + Duration::from_secs(2);
        assert_eq!(tokens.validate(&token, client, b"retry-scid", later), Err(TokenError::Expired));
        let earlier = now - Duration::from_secs(60);
        assert_eq!(tokens.validate(&token, client, b"retry-scid", earlier), Err(TokenError::Expired));
    }

    #[test]
    fn forged_altered_and_foreign_tokens_are_refused() {
        let tokens = RetryTokens::new(ServerSecret::from_bytes(&[7; 32]));
        let client = addr("[2001:db8::1]:443");
        let now = SystemTime::now();
        let token = tokens.mint(client, b"odcid-123", b"scid", now);
        for at in 0..token.len() {
            let mut altered = token.clone();
            altered[at] ^= 0x01;
            assert!(tokens.validate(&altered, client, b"scid", now).is_err(), "bit flip at {at} accepted");
        }
        let other_secret = RetryTokens::new(ServerSecret::from_bytes(&[8; 32]));
        assert_eq!(other_secret.validate(&token, client, b"scid", now), Err(TokenError::Invalid));
        for len in 0..token.len() {
            assert!(tokens.validate(&token[..len], client, b"scid", now).is_err(), "truncation to {len} accepted");
        }
        assert_eq!(tokens.validate(b"\x00garbage", client, b"scid", now), Err(TokenError::Foreign));
    }

    #[test]
    fn only_tokens_of_our_layout_count_as_retry_tokens() {
        let (tokens, client, now, token) = minted();
        // Ours in form, failing a check: an invalid Retry token (INVALID_TOKEN).
        let mut forged = token.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(tokens.validate(&forged, client, b"retry-scid", now), Err(TokenError::Invalid));
        let later = now + RETRY_TOKEN_LIFETIME + Duration::from_secs(5);
        assert_eq!(tokens.validate(&token, client, b"retry-scid", later), Err(TokenError::Expired));
        // Not ours in form: as if there were no token.
        let mut other_kind = token.clone();
        other_kind[0] = b'N';
        assert_eq!(tokens.validate(&other_kind, client, b"retry-scid", now), Err(TokenError::Foreign));
        let mut longer = token.clone();
        longer.push(0);
        assert_eq!(tokens.validate(&longer, client, b"retry-scid", now), Err(TokenError::Foreign));
        assert_eq!(tokens.validate(&token[..token.len() - 1], client, b"retry-scid", now), Err(TokenError::Foreign));
    }

    #[test]
    fn servers_sharing_a_secret_accept_each_others_tokens_across_a_key_rotation() {
        let secret = ServerSecret::from_bytes(&[9; 32]);
        let (first, second) = (RetryTokens::new(secret.clone()), RetryTokens::new(secret));
        let client = addr("198.51.100.7:5000");
        // Issued one second before a rotation boundary, checked just after it.
        let boundary = UNIX_EPOCH + RETRY_KEY_ROTATION * 500_000;
        let token = first.mint(client, b"od", b"sc", boundary - Duration::from_secs(1));
        assert!(second.validate(&token, client, b"sc", boundary + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn reset_tokens_are_stable_per_secret_and_cid() {
        let a = ResetTokens::new(&ServerSecret::from_bytes(&[1; 32]));
        let b = ResetTokens::new(&ServerSecret::from_bytes(&[1; 32]));
        let c = ResetTokens::new(&ServerSecret::from_bytes(&[2; 32]));
        assert_eq!(a.token(b"cid-1"), b.token(b"cid-1"));
        assert_ne!(a.token(b"cid-1"), a.token(b"cid-2"));
        assert_ne!(a.token(b"cid-1"), c.token(b"cid-1"));
    }
}
