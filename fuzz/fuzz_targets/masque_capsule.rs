//! Capsules (RFC 9297 §3.2) as a tunnel's stream body delivers them: the decoder splits the bytes,
//! then each capsule is read the way MASQUE reads it (DATAGRAM capsules: context ID and payload, an IP
//! packet's header for CONNECT-IP; ADDRESS_ASSIGN, ADDRESS_REQUEST and ROUTE_ADVERTISEMENT: RFC 9484).
//!
//! Input: the first byte picks the piece size the body arrives in (0 = all at once), the rest is the
//! body. Properties: the capsules do not depend on how the body was split; no capsule over the limit is
//! ever buffered whole; every IP capsule that decodes encodes back to an equal one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_h3::datagram::{CAPSULE_DATAGRAM, Capsule, CapsuleDecoder, CapsuleTooLarge};
use quiver_masque::ip::{IpCapsule, packet};
use quiver_masque::{MAX_UDP_PAYLOAD, split_context};

/// The limit MASQUE decodes with: a whole UDP payload and its context ID.
const MAX_CAPSULE_BYTES: usize = MAX_UDP_PAYLOAD + 8;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, body)) = data.split_first() else { return };
    let whole = decode(body, body.len().max(1));
    let split = decode(body, usize::from(piece).max(1));
    assert_eq!(whole, split, "capsules depend on how the body was split");
    let (capsules, _) = whole;
    for capsule in &capsules {
        assert!(capsule.value.len() <= MAX_CAPSULE_BYTES);
        if capsule.capsule_type == CAPSULE_DATAGRAM {
            if let Some((_context, payload)) = split_context(&capsule.value) {
                let _ = packet::inspect(payload);
            }
            continue;
        }
        let Ok(Some(ip)) = IpCapsule::decode(capsule.capsule_type, &capsule.value) else { continue };
        let encoded = ip.encode();
        let mut decoder = CapsuleDecoder::new(usize::MAX);
        decoder.push(&encoded);
        let again = decoder.next_capsule().expect("no limit").expect("an encoded capsule is complete");
        assert_eq!(again.capsule_type, capsule.capsule_type);
        assert_eq!(IpCapsule::decode(again.capsule_type, &again.value), Ok(Some(ip)));
    }
});

/// Every capsule in `body` delivered `piece` bytes at a time, and how decoding stopped.
fn decode(body: &[u8], piece: usize) -> (Vec<Capsule>, Option<CapsuleTooLarge>) {
    let mut decoder = CapsuleDecoder::new(MAX_CAPSULE_BYTES);
    let mut capsules = Vec::new();
    for chunk in body.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_capsule() {
                Ok(Some(capsule)) => capsules.push(capsule),
                Ok(None) => break,
                Err(too_large) => return (capsules, Some(too_large)),
            }
        }
    }
    (capsules, None)
}
