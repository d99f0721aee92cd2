//! Checks computed from the relay's record in cleartext: they need no key and trust no endpoint.
//!
//! Each mirrors a check of the interop runner's `testcases_quic.py` as far as cleartext allows; the ones
//! that need decryption live in [`crate::tshark`].

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::quic::{PacketKind, parse_datagram};
use crate::record::{Leg, Record};
use crate::relay::Direction;

/// Outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// The property holds.
    Passed,
    /// The property does not hold.
    Failed,
    /// The check could not run (tool missing); the reason is in the detail.
    Skipped,
}

/// One check's outcome with what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Short name, e.g. `handshakes`.
    pub name: &'static str,
    /// Outcome.
    pub status: CheckStatus,
    /// What was seen, for the report.
    pub detail: String,
}

impl CheckResult {
    /// A result that passes when `ok`.
    pub fn from_bool(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        let status = if ok { CheckStatus::Passed } else { CheckStatus::Failed };
        CheckResult { name, status, detail: detail.into() }
    }

    /// A skipped check.
    pub fn skipped(name: &'static str, why: impl Into<String>) -> Self {
        CheckResult { name, status: CheckStatus::Skipped, detail: why.into() }
    }
}

/// Distinct source connection IDs of the Initial packets the server sent, in order of first appearance
/// (the runner counts handshakes this way).
pub fn server_initial_scids(record: &Record) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    for datagram in record.leg(Leg::ServerSide).filter(|d| d.direction == Direction::ToClient) {
        for packet in parse_datagram(&datagram.payload) {
            if packet.kind == PacketKind::Initial && !seen.contains(&packet.scid) {
                seen.push(packet.scid);
            }
        }
    }
    seen
}

/// Passes when the server started exactly `expected` handshakes.
pub fn handshakes(record: &Record, expected: usize) -> CheckResult {
    let count = server_initial_scids(record).len();
    CheckResult::from_bool("handshakes", count == expected, format!("{count} handshake(s), expected {expected}"))
}

/// A Retry reached the client and a later client Initial carries its token.
pub fn retry(record: &Record) -> CheckResult {
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut used = false;
    for datagram in record.leg(Leg::ClientSide) {
        for packet in parse_datagram(&datagram.payload) {
            match (datagram.direction, packet.kind) {
                (Direction::ToClient, PacketKind::Retry) => tokens.push(packet.token),
                (Direction::ToServer, PacketKind::Initial) if !packet.token.is_empty() => {
                    used |= tokens.contains(&packet.token);
                }
                _ => {}
            }
        }
    }
    let detail = format!("{} Retry packet(s), token used by a client Initial: {used}", tokens.len());
    CheckResult::from_bool("retry", !tokens.is_empty() && used, detail)
}

/// The client sent 0-RTT packets (how much of its requests went there is [`crate::tshark`]'s part).
pub fn zero_rtt_sent(record: &Record) -> CheckResult {
    let (mut zero_rtt_bytes, mut one_rtt_bytes) = (0usize, 0usize);
    for datagram in record.leg(Leg::ClientSide).filter(|d| d.direction == Direction::ToServer) {
        for packet in parse_datagram(&datagram.payload) {
            match packet.kind {
                PacketKind::ZeroRtt => zero_rtt_bytes += packet.payload_bytes,
                PacketKind::OneRtt => one_rtt_bytes += packet.payload_bytes,
                _ => {}
            }
        }
    }
    let detail = format!("client 0-RTT payload {zero_rtt_bytes} B, 1-RTT packets {one_rtt_bytes} B (ACKs included)");
    CheckResult::from_bool("zerortt", zero_rtt_bytes > 0, detail)
}

/// Before the first client Handshake packet reached the server, each server datagram stayed within what
/// three times the client's Initials allowed (the runner lets 3x..4x pass with a note).
pub fn amplification(record: &Record) -> CheckResult {
    let (mut allowed, mut allowed_tolerant) = (0i64, 0i64);
    let (mut client_bytes, mut server_bytes) = (0i64, 0i64);
    let mut over_three = false;
    for datagram in record.leg(Leg::ServerSide) {
        let packets = parse_datagram(&datagram.payload);
        let size = datagram.payload.len() as i64;
        match datagram.direction {
            Direction::ToServer => {
                if packets.iter().any(|p| p.kind == PacketKind::Handshake) {
                    let note = if over_three { " (between 3x and 4x at some point)" } else { "" };
                    return CheckResult::from_bool(
                        "amplification",
                        true,
                        format!(
                            "server sent {server_bytes} B for {client_bytes} B of client Initials before validation{note}"
                        ),
                    );
                }
                if packets.first().is_some_and(|p| p.kind == PacketKind::Initial) {
                    client_bytes += size;
                    allowed += 3 * size;
                    allowed_tolerant += 4 * size;
                }
            }
            Direction::ToClient => {
                server_bytes += size;
                if size >= allowed_tolerant {
                    return CheckResult::from_bool(
                        "amplification",
                        false,
                        format!("server sent {server_bytes} B after {client_bytes} B of client Initials: more than 3x"),
                    );
                }
                over_three |= size > allowed;
                allowed -= size;
                allowed_tolerant -= size;
            }
        }
    }
    CheckResult::from_bool("amplification", false, "the server never received a client Handshake packet")
}

/// Handshake payload bytes the server sent on its first connection: with the 9-certificate chain it must
/// be well above 7500 (the runner checks the CRYPTO offset, which needs keys; this is its cleartext bound).
pub fn server_handshake_bytes(record: &Record, at_least: usize) -> CheckResult {
    let first_scid = server_initial_scids(record).into_iter().next();
    let mut bytes = 0;
    for datagram in record.leg(Leg::ServerSide).filter(|d| d.direction == Direction::ToClient) {
        for packet in parse_datagram(&datagram.payload) {
            if packet.kind == PacketKind::Handshake && Some(&packet.scid) == first_scid.as_ref() {
                bytes += packet.payload_bytes;
            }
        }
    }
    CheckResult::from_bool(
        "cert_chain",
        bytes >= at_least,
        format!("server sent {bytes} B of Handshake payload (needs >= {at_least} to carry the chain)"),
    )
}

/// Client addresses the server saw (server leg, datagrams given to the server).
pub fn server_seen_paths(record: &Record) -> BTreeSet<SocketAddr> {
    record.leg(Leg::ServerSide).filter(|d| d.direction == Direction::ToServer).map(|d| d.src).collect()
}

/// Addresses the client sent from (client leg).
pub fn client_paths(record: &Record) -> BTreeSet<SocketAddr> {
    record.leg(Leg::ClientSide).filter(|d| d.direction == Direction::ToServer).map(|d| d.src).collect()
}

/// The server saw more than one client path (and, for `addresses`, more than one client IP).
pub fn server_saw_new_paths(record: &Record, addresses: bool) -> CheckResult {
    let paths = server_seen_paths(record);
    let ips: BTreeSet<IpAddr> = paths.iter().map(|p| p.ip()).collect();
    let ok = paths.len() > 1 && (!addresses || ips.len() > 1);
    let list = paths.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ");
    CheckResult::from_bool(
        "server_paths",
        ok,
        format!("server saw {} path(s), {} address(es): {list}", paths.len(), ips.len()),
    )
}

/// The client sent from more than one local address (it migrated actively).
pub fn client_migrated(record: &Record) -> CheckResult {
    let paths = client_paths(record);
    let list = paths.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ");
    CheckResult::from_bool(
        "client_paths",
        paths.len() > 1,
        format!("client sent from {} address(es): {list}", paths.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::tests::long_packet;
    use crate::record::Datagram;
    use std::time::{Duration, SystemTime};

    fn push(record: &mut Record, leg: Leg, direction: Direction, src: &str, payload: Vec<u8>) {
        record.push(Datagram {
            leg,
            direction,
            at: Duration::ZERO,
            src: src.parse().unwrap(),
            dst: "127.0.0.1:443".parse().unwrap(),
            payload,
        });
    }

    #[test]
    fn amplification_passes_within_three_times_and_fails_beyond() {
        let client_initial = long_packet(0, &[1; 8], &[2; 8], Some(b""), 1180);
        let server_flight = long_packet(2, &[2; 8], &[3; 8], None, 1180);
        let client_handshake = long_packet(2, &[3; 8], &[2; 8], None, 40);
        let mut ok = Record::new(SystemTime::now());
        push(&mut ok, Leg::ServerSide, Direction::ToServer, "127.0.0.1:1", client_initial.clone());
        for _ in 0..2 {
            push(&mut ok, Leg::ServerSide, Direction::ToClient, "127.0.0.1:443", server_flight.clone());
        }
        push(&mut ok, Leg::ServerSide, Direction::ToServer, "127.0.0.1:1", client_handshake.clone());
        assert_eq!(amplification(&ok).status, CheckStatus::Passed);

        let mut bad = Record::new(SystemTime::now());
        push(&mut bad, Leg::ServerSide, Direction::ToServer, "127.0.0.1:1", client_initial);
        for _ in 0..5 {
            push(&mut bad, Leg::ServerSide, Direction::ToClient, "127.0.0.1:443", server_flight.clone());
        }
        push(&mut bad, Leg::ServerSide, Direction::ToServer, "127.0.0.1:1", client_handshake);
        assert_eq!(amplification(&bad).status, CheckStatus::Failed);
    }

    #[test]
    fn handshakes_retry_and_paths_from_cleartext() {
        let mut record = Record::new(SystemTime::now());
        let mut retry_packet = vec![0xf0, 0, 0, 0, 1, 4, 9, 9, 9, 9, 4, 8, 8, 8, 8];
        retry_packet.extend_from_slice(b"TOKEN");
        retry_packet.extend_from_slice(&[0; 16]);
        push(&mut record, Leg::ClientSide, Direction::ToClient, "127.0.0.1:9", retry_packet);
        push(
            &mut record,
            Leg::ClientSide,
            Direction::ToServer,
            "127.0.0.1:1",
            long_packet(0, &[8; 4], &[1; 4], Some(b"TOKEN"), 10),
        );
        for (src, scid) in [("127.0.0.1:5", 7u8), ("127.0.0.2:6", 7), ("127.0.0.2:6", 9)] {
            push(&mut record, Leg::ServerSide, Direction::ToServer, src, vec![0x40, 1]);
            push(
                &mut record,
                Leg::ServerSide,
                Direction::ToClient,
                "127.0.0.1:443",
                long_packet(0, &[1; 4], &[scid; 4], Some(b""), 10),
            );
        }
        assert_eq!(retry(&record).status, CheckStatus::Passed);
        assert_eq!(handshakes(&record, 2).status, CheckStatus::Passed);
        assert_eq!(handshakes(&record, 1).status, CheckStatus::Failed);
        assert_eq!(server_saw_new_paths(&record, true).status, CheckStatus::Passed);
        assert_eq!(client_migrated(&record).status, CheckStatus::Failed);
    }
}
