//! Admission: what the router does with a datagram that names no known connection.
//!
//! A pure function of what the router parsed from the packet and the endpoint's load, so every
//! decision (accept, Retry, refuse, drop, Version Negotiation, stateless reset) is unit-tested
//! without a socket. The router executes the decision (see `accept.rs` and `stateless.rs`).

use crate::config::{AddressValidation, ServerConfig};
use crate::stats::DropReason;

/// Smallest UDP payload that may carry a client Initial (RFC 9000 §14.1).
pub(crate) const MIN_INITIAL_DATAGRAM_BYTES: usize = 1200;

/// A stateless reset must look like a short-header packet: at least 21 bytes (RFC 9000 §10.3), and we
/// only answer packets longer than that so ours can be shorter than theirs.
pub(crate) const MIN_STATELESS_RESET_BYTES: usize = 21;

/// What kind of packet names no known connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// A long header of a QUIC version quiche does not speak.
    UnsupportedVersion,
    /// A client Initial of a supported version.
    Initial(InitialFacts),
    /// Another long-header packet (Handshake, 0-RTT) of a connection we do not have.
    OtherLong,
    /// A short-header packet of a connection we do not have.
    Short,
}

/// What the router parsed from a client Initial. `header` is `None` when the datagram was too short
/// to be worth parsing or the header did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InitialFacts {
    pub(crate) header: Option<InitialHeader>,
}

/// The parts of an Initial's header admission looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InitialHeader {
    pub(crate) dcid_bytes: usize,
    pub(crate) token: Token,
}

/// The token an Initial carried (we only ever issue Retry tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    /// No token, or one that is not of our Retry tokens' layout (RFC 9000 §8.1.3: handled as none).
    Absent,
    /// One of our Retry tokens, for this address and connection ID: the address is validated.
    Valid,
    /// Of our layout but expired, forged or presented from elsewhere: the client will not take a second
    /// Retry, so it is closed with INVALID_TOKEN.
    Invalid,
}

/// The server's settings admission applies, copied out of its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) address_validation: AddressValidation,
    pub(crate) max_handshakes_in_flight: usize,
    pub(crate) max_connections: u64,
    pub(crate) stateless_reset: bool,
}

impl Policy {
    pub(crate) fn of(config: &ServerConfig) -> Self {
        Self {
            address_validation: config.address_validation,
            max_handshakes_in_flight: config.max_handshakes_in_flight,
            max_connections: config.max_connections as u64,
            stateless_reset: config.stateless_reset,
        }
    }
}

/// The endpoint's load when an Initial arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Load {
    /// A graceful shutdown has begun.
    pub(crate) draining: bool,
    pub(crate) handshakes_in_flight: usize,
    pub(crate) active_connections: u64,
    /// The client's address is within its handshake rate (always true without a per-source rate).
    pub(crate) source_rate_ok: bool,
    /// The client's address already has its maximum of handshakes in flight.
    pub(crate) source_handshakes_full: bool,
}

/// What to do with a datagram for no known connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Start a connection (the router still reserves the per-source connection slot, and refuses
    /// with [`DropReason::SourceConnectionLimit`] if there is none).
    Accept,
    /// Answer with a Retry: the client must prove its address first.
    Retry,
    /// Close at once, and count why: with INVALID_TOKEN for [`DropReason::InvalidToken`], with
    /// CONNECTION_REFUSED otherwise.
    Refuse(DropReason),
    /// Ignore, and count why.
    Drop(DropReason),
    /// Answer with Version Negotiation (counted as [`DropReason::UnsupportedVersion`]).
    VersionNegotiation,
    /// Answer with a stateless reset (counted as [`DropReason::UnknownConnection`]).
    StatelessReset,
}

/// Decides what to do with a datagram of `datagram_bytes` that names no connection of ours.
/// `policy` is `None` for an endpoint without a server role. `load` is read only for an Initial that
/// passed the header checks: reading it spends the source's handshake-rate budget.
pub(crate) fn admit(
    packet: Unknown,
    datagram_bytes: usize,
    policy: Option<&Policy>,
    load: impl FnOnce() -> Load,
) -> Admission {
    match packet {
        // Only datagrams large enough to be a client's first flight get an answer, so the (smaller)
        // answer can never amplify.
        Unknown::UnsupportedVersion if policy.is_some() && datagram_bytes >= MIN_INITIAL_DATAGRAM_BYTES => {
            Admission::VersionNegotiation
        }
        Unknown::UnsupportedVersion => Admission::Drop(DropReason::UnsupportedVersion),
        Unknown::OtherLong => Admission::Drop(DropReason::UnknownConnection),
        Unknown::Short => match policy {
            Some(policy) if policy.stateless_reset && datagram_bytes > MIN_STATELESS_RESET_BYTES => {
                Admission::StatelessReset
            }
            _ => Admission::Drop(DropReason::UnknownConnection),
        },
        Unknown::Initial(facts) => {
            let Some(policy) = policy else { return Admission::Drop(DropReason::NotAServer) };
            admit_initial(facts, datagram_bytes, policy, load)
        }
    }
}

fn admit_initial(
    facts: InitialFacts,
    datagram_bytes: usize,
    policy: &Policy,
    load: impl FnOnce() -> Load,
) -> Admission {
    if datagram_bytes < MIN_INITIAL_DATAGRAM_BYTES {
        return Admission::Drop(DropReason::InitialTooShort);
    }
    let Some(header) = facts.header else { return Admission::Drop(DropReason::Unparseable) };
    if header.dcid_bytes < crate::cid::MIN_INITIAL_DCID_LEN {
        return Admission::Drop(DropReason::InvalidInitialCid);
    }
    if header.token == Token::Invalid {
        return Admission::Refuse(DropReason::InvalidToken);
    }
    let load = load();
    let connections_full = load.active_connections >= policy.max_connections;
    let handshakes_full = load.handshakes_in_flight >= policy.max_handshakes_in_flight;
    if header.token == Token::Absent && policy.address_validation != AddressValidation::Never {
        let loaded = match policy.address_validation {
            AddressValidation::Always => true,
            AddressValidation::Never => false,
            AddressValidation::UnderLoad { handshakes_in_flight } => load.handshakes_in_flight >= handshakes_in_flight,
        };
        // Past a hard limit a client must prove its address before we spend anything on refusing it.
        if loaded || !load.source_rate_ok || load.source_handshakes_full || connections_full || handshakes_full {
            return Admission::Retry;
        }
    }
    if load.draining {
        Admission::Refuse(DropReason::ShuttingDown)
    } else if !load.source_rate_ok {
        Admission::Refuse(DropReason::SourceRateLimit)
    } else if load.source_handshakes_full {
        Admission::Refuse(DropReason::SourceHandshakeLimit)
    } else if connections_full {
        Admission::Refuse(DropReason::ConnectionLimit)
    } else if handshakes_full {
        Admission::Refuse(DropReason::HandshakeLimit)
    } else {
        Admission::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        address_validation: AddressValidation::Never,
        max_handshakes_in_flight: 10,
        max_connections: 100,
        stateless_reset: true,
    };
    const IDLE: Load = Load {
        draining: false,
        handshakes_in_flight: 0,
        active_connections: 0,
        source_rate_ok: true,
        source_handshakes_full: false,
    };
    const FACTS: InitialFacts = InitialFacts { header: Some(InitialHeader { dcid_bytes: 8, token: Token::Absent }) };

    fn initial(facts: InitialFacts, policy: &Policy, load: Load) -> Admission {
        admit(Unknown::Initial(facts), MIN_INITIAL_DATAGRAM_BYTES, Some(policy), || load)
    }

    fn with_token(token: Token) -> InitialFacts {
        InitialFacts { header: Some(InitialHeader { dcid_bytes: 8, token }) }
    }

    #[test]
    fn an_initial_on_an_idle_server_is_accepted() {
        assert_eq!(initial(FACTS, &POLICY, IDLE), Admission::Accept);
    }

    #[test]
    fn malformed_initials_are_dropped_before_the_load_is_read() {
        let unread = || -> Load { panic!("load read for a malformed Initial") };
        let short = admit(Unknown::Initial(FACTS), MIN_INITIAL_DATAGRAM_BYTES - 1, Some(&POLICY), unread);
        assert_eq!(short, Admission::Drop(DropReason::InitialTooShort));
        let unparsed = admit(Unknown::Initial(InitialFacts { header: None }), 1200, Some(&POLICY), unread);
        assert_eq!(unparsed, Admission::Drop(DropReason::Unparseable));
        let tiny_cid = InitialFacts { header: Some(InitialHeader { dcid_bytes: 7, token: Token::Absent }) };
        assert_eq!(
            admit(Unknown::Initial(tiny_cid), 1200, Some(&POLICY), unread),
            Admission::Drop(DropReason::InvalidInitialCid)
        );
        let forged = admit(Unknown::Initial(with_token(Token::Invalid)), 1200, Some(&POLICY), unread);
        assert_eq!(forged, Admission::Refuse(DropReason::InvalidToken), "closed with INVALID_TOKEN");
    }

    #[test]
    fn a_client_endpoint_drops_initials() {
        assert_eq!(admit(Unknown::Initial(FACTS), 1200, None, || IDLE), Admission::Drop(DropReason::NotAServer));
    }

    #[test]
    fn retry_when_configured_always_or_under_load() {
        let always = Policy { address_validation: AddressValidation::Always, ..POLICY };
        assert_eq!(initial(FACTS, &always, IDLE), Admission::Retry);
        assert_eq!(initial(with_token(Token::Valid), &always, IDLE), Admission::Accept);
        let under_load =
            Policy { address_validation: AddressValidation::UnderLoad { handshakes_in_flight: 3 }, ..POLICY };
        assert_eq!(initial(FACTS, &under_load, IDLE), Admission::Accept);
        let busy = Load { handshakes_in_flight: 3, ..IDLE };
        assert_eq!(initial(FACTS, &under_load, busy), Admission::Retry);
    }

    #[test]
    fn over_a_limit_an_unvalidated_client_gets_a_retry_and_a_validated_one_a_refusal() {
        let validating =
            Policy { address_validation: AddressValidation::UnderLoad { handshakes_in_flight: 1000 }, ..POLICY };
        let full = Load { active_connections: 100, ..IDLE };
        assert_eq!(initial(FACTS, &validating, full), Admission::Retry);
        let busy_source = Load { source_handshakes_full: true, ..IDLE };
        assert_eq!(initial(FACTS, &validating, busy_source), Admission::Retry);
        assert_eq!(
            initial(with_token(Token::Valid), &validating, busy_source),
            Admission::Refuse(DropReason::SourceHandshakeLimit)
        );
        assert_eq!(
            initial(with_token(Token::Valid), &validating, full),
            Admission::Refuse(DropReason::ConnectionLimit)
        );
    }

    #[test]
    fn refusals_name_the_limit() {
        let cases = [
            (Load { draining: true, ..IDLE }, DropReason::ShuttingDown),
            (Load { source_rate_ok: false, ..IDLE }, DropReason::SourceRateLimit),
            (Load { active_connections: 100, ..IDLE }, DropReason::ConnectionLimit),
            (Load { handshakes_in_flight: 10, ..IDLE }, DropReason::HandshakeLimit),
            (Load { source_handshakes_full: true, ..IDLE }, DropReason::SourceHandshakeLimit),
        ];
        for (load, reason) in cases {
            assert_eq!(initial(FACTS, &POLICY, load), Admission::Refuse(reason), "{load:?}");
        }
    }

    #[test]
    fn unknown_versions_get_negotiation_only_from_a_server_and_only_for_full_size_datagrams() {
        assert_eq!(admit(Unknown::UnsupportedVersion, 1200, Some(&POLICY), || IDLE), Admission::VersionNegotiation);
        assert_eq!(
            admit(Unknown::UnsupportedVersion, 1199, Some(&POLICY), || IDLE),
            Admission::Drop(DropReason::UnsupportedVersion)
        );
        assert_eq!(
            admit(Unknown::UnsupportedVersion, 1200, None, || IDLE),
            Admission::Drop(DropReason::UnsupportedVersion)
        );
    }

    #[test]
    fn unknown_short_headers_get_a_reset_when_enabled_and_long_enough() {
        let bytes = MIN_STATELESS_RESET_BYTES + 1;
        assert_eq!(admit(Unknown::Short, bytes, Some(&POLICY), || IDLE), Admission::StatelessReset);
        assert_eq!(
            admit(Unknown::Short, bytes - 1, Some(&POLICY), || IDLE),
            Admission::Drop(DropReason::UnknownConnection)
        );
        let quiet = Policy { stateless_reset: false, ..POLICY };
        assert_eq!(admit(Unknown::Short, bytes, Some(&quiet), || IDLE), Admission::Drop(DropReason::UnknownConnection));
        assert_eq!(admit(Unknown::Short, bytes, None, || IDLE), Admission::Drop(DropReason::UnknownConnection));
        assert_eq!(
            admit(Unknown::OtherLong, 1200, Some(&POLICY), || IDLE),
            Admission::Drop(DropReason::UnknownConnection)
        );
    }
}
