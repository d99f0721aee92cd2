//! DNS message rules DoQ adds (RFC 9250) and the answers the server builds itself: message IDs,
//! SERVFAIL/FORMERR/NOTIMP, EDNS(0) padding (RFC 7830, RFC 8467 block policy), and which queries are
//! safe in 0-RTT. Parsing and encoding is `hickory-proto`'s.

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// Size of a DNS header: anything shorter is not a DNS message.
pub const HEADER_BYTES: usize = 12;

/// Responses to padded queries are padded to a multiple of this many bytes: RFC 8467 §4.1's
/// recommended block-length policy for responses. (Queries [`DoqClient`](crate::DoqClient) sends are
/// padded to 128-byte blocks, its policy for queries.)
pub const PADDING_BLOCK_BYTES: usize = 468;

/// RFC 8467 §4.1's recommended block length for queries.
pub(crate) const QUERY_PADDING_BLOCK_BYTES: usize = 128;

/// The message ID, if `message` is long enough to have one.
pub fn message_id(message: &[u8]) -> Option<u16> {
    match message {
        [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// Overwrites the message ID in place (does nothing to a message shorter than two bytes).
pub(crate) fn set_message_id(message: &mut [u8], id: u16) {
    if let Some(prefix) = message.get_mut(..2) {
        prefix.copy_from_slice(&id.to_be_bytes());
    }
}

/// The header and question section of a wire message, without parsing the records behind them (an
/// upstream answer we only forward must not fail on a record type the parser does not know).
pub fn header_and_questions(message: &[u8]) -> Option<(Header, Vec<Query>)> {
    let mut decoder = BinDecoder::new(message);
    let header = Header::read(&mut decoder).ok()?;
    let questions = Message::read_queries(&mut decoder, usize::from(header.counts.queries)).ok()?;
    Some((header, questions))
}

/// An error answer with ID 0 for `query`: same opcode, question, RD and CD bits.
pub fn error_answer(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut answer = Message::error_msg(0, query.metadata.op_code, code);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.checking_disabled = query.metadata.checking_disabled;
    answer.metadata.recursion_available = true;
    answer.queries = query.queries.clone();
    if query.edns.is_some() {
        answer.edns = Some(Edns::new());
    }
    encode_or_bare(&answer, code)
}

/// FORMERR with ID 0 for bytes that do not parse as a query: opcode and RD are copied from the
/// header when there is one (RFC 1035 §4.1.1 lets a server answer FORMERR without a question).
pub fn format_error_for(bytes: &[u8]) -> Vec<u8> {
    let mut answer = Message::error_msg(0, OpCode::Query, ResponseCode::FormErr);
    if bytes.len() >= HEADER_BYTES {
        answer.metadata.op_code = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
        answer.metadata.recursion_desired = bytes[2] & 0x01 != 0;
    }
    encode_or_bare(&answer, ResponseCode::FormErr)
}

/// Encodes `message`; should hickory refuse (it does not for the messages built here), a bare
/// 12-byte header with the response code still tells the client what happened.
fn encode_or_bare(message: &Message, code: ResponseCode) -> Vec<u8> {
    message.to_vec().unwrap_or_else(|_| {
        let mut bare = vec![0u8; HEADER_BYTES];
        bare[2] = 0x80; // QR
        bare[3] = 0x80 | (u16::from(code) & 0x0f) as u8; // RA + RCODE
        bare
    })
}

/// Whether the query carries an EDNS(0) padding option, asking for a padded answer (RFC 7830 §4;
/// RFC 9250 §5.4).
pub fn wants_padding(query: &Message) -> bool {
    query.edns.as_ref().is_some_and(|edns| edns.option(EdnsCode::Padding).is_some())
}

/// Whether the query carries edns-tcp-keepalive, which RFC 9250 §5.5.2 forbids on DoQ.
pub fn has_tcp_keepalive(query: &Message) -> bool {
    query.edns.as_ref().is_some_and(|edns| edns.option(EdnsCode::Keepalive).is_some())
}

/// The EDNS(0) UDP payload size the forwarder advertises upstream at most: 1232 bytes fits the IPv6
/// minimum MTU without fragmentation (the DNS Flag Day 2020 value). A client's larger size is for
/// its own path to us (over QUIC, irrelevant upstream), not for the UDP path to the resolver.
pub(crate) const MAX_UPSTREAM_UDP_PAYLOAD: u16 = 1232;

/// The query as the forwarder sends it upstream: EDNS padding removed (it protects the client's
/// encrypted hop only, and would just cost bytes in clear text) and the advertised UDP size capped at
/// [`MAX_UPSTREAM_UDP_PAYLOAD`]. Queries needing neither change go as they came, byte for byte.
pub(crate) fn for_upstream(query: &Message, bytes: Vec<u8>) -> Vec<u8> {
    let Some(edns) = &query.edns else { return bytes };
    if edns.max_payload() <= MAX_UPSTREAM_UDP_PAYLOAD && edns.option(EdnsCode::Padding).is_none() {
        return bytes;
    }
    let mut rewritten = query.clone();
    if let Some(edns) = rewritten.edns.as_mut() {
        edns.set_max_payload(edns.max_payload().min(MAX_UPSTREAM_UDP_PAYLOAD));
        edns.options_mut().remove(EdnsCode::Padding);
    }
    rewritten.to_vec().unwrap_or(bytes)
}

/// Pads `message` to a multiple of `block` bytes with an EDNS(0) padding option (RFC 7830),
/// replacing any padding it had and adding an OPT record if it had none. Returns `None` when the
/// message does not parse or padding would push it past the 65535-byte limit; the caller then sends
/// it unpadded.
pub fn pad(message: &[u8], block: usize) -> Option<Vec<u8>> {
    let mut parsed = Message::from_vec(message).ok()?;
    pad_message(&mut parsed, block)
}

/// [`pad`] for a parsed message.
pub(crate) fn pad_message(message: &mut Message, block: usize) -> Option<Vec<u8>> {
    let edns = message.edns.get_or_insert_with(Edns::new);
    edns.options_mut().remove(EdnsCode::Padding);
    edns.options_mut().insert(EdnsOption::Unknown(u16::from(EdnsCode::Padding), Vec::new()));
    let unpadded = message.to_vec().ok()?.len();
    let padding = (block - unpadded % block) % block;
    if unpadded + padding > crate::framing::MAX_MESSAGE_BYTES {
        return None;
    }
    let edns = message.edns.as_mut()?;
    edns.options_mut().remove(EdnsCode::Padding);
    edns.options_mut().insert(EdnsOption::Unknown(u16::from(EdnsCode::Padding), vec![0; padding]));
    let padded = message.to_vec().ok()?;
    debug_assert_eq!(padded.len() % block, 0);
    Some(padded)
}

/// Whether a query may be answered when it arrives in 0-RTT data (RFC 9250 §4.5).
///
/// 0-RTT data can be replayed by an attacker, so only transactions whose repetition changes nothing
/// qualify. RFC 9250 admits opcodes QUERY and NOTIFY; this server is stricter, as §4.5 lets it be:
///
/// * opcode QUERY only: never UPDATE (changes a zone), never NOTIFY (each replay makes secondaries
///   poll their primary; a forwarder has no business relaying it anyway), never unknown opcodes;
/// * never zone transfers (AXFR, IXFR): large answers an attacker could multiply by replaying;
/// * exactly one question, and a query, not a response.
///
/// The server forwards upstream only queries that pass this check, whether or not they arrived in
/// 0-RTT; the rest are answered locally (FORMERR, NOTIMP), which a replay can only repeat. So a server
/// with early data on (`server_config().early_data(true)`, `quiver doq serve --early-data`) never
/// acts on a non-replayable transaction sent early.
///
/// ```
/// use quiver_doq::{Message, Name, RecordType, is_replay_safe};
/// use hickory_proto::op::Query;
///
/// let mut query = Message::query();
/// query.add_query(Query::query(Name::from_ascii("example.com.")?, RecordType::A));
/// assert!(is_replay_safe(&query));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn is_replay_safe(query: &Message) -> bool {
    query.metadata.message_type == MessageType::Query
        && query.metadata.op_code == OpCode::Query
        && query.queries.len() == 1
        && !matches!(query.queries[0].query_type, RecordType::AXFR | RecordType::IXFR)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::MessageType;
    use hickory_proto::rr::Name;

    use super::*;

    fn query(name: &str, record_type: RecordType) -> Message {
        let mut message = Message::new(0, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        message.metadata.recursion_desired = true;
        message
    }

    #[test]
    fn message_ids_read_and_written_in_place() {
        let mut bytes = query("example.com.", RecordType::A).to_vec().unwrap();
        assert_eq!(message_id(&bytes), Some(0));
        set_message_id(&mut bytes, 0xbeef);
        assert_eq!(message_id(&bytes), Some(0xbeef));
        assert_eq!(Message::from_vec(&bytes).unwrap().metadata.id, 0xbeef);
        assert_eq!(message_id(&[1]), None);
        set_message_id(&mut [1], 7); // too short: no panic
    }

    #[test]
    fn error_answers_keep_question_and_id_zero() {
        let mut asked = query("example.com.", RecordType::AAAA);
        asked.metadata.checking_disabled = true;
        let answer = Message::from_vec(&error_answer(&asked, ResponseCode::ServFail)).unwrap();
        assert_eq!(answer.metadata.id, 0);
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(answer.queries, asked.queries);
        assert!(answer.metadata.recursion_desired && answer.metadata.checking_disabled);
    }

    #[test]
    fn format_error_for_garbage_and_short_input() {
        for bytes in [&b""[..], b"\x00\x00\x29", &[0x00, 0x00, 0x01, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 9, 9]] {
            let answer = Message::from_vec(&format_error_for(bytes)).unwrap();
            assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
            assert_eq!(answer.metadata.id, 0);
        }
        let update = [0x00, 0x00, 0x28, 0x00, 0, 5, 0, 0, 0, 0, 0, 0];
        let answer = Message::from_vec(&format_error_for(&update)).unwrap();
        assert_eq!(answer.metadata.op_code, OpCode::Update);
    }

    #[test]
    fn padding_reaches_the_block_and_replaces_old_padding() {
        let mut asked = query("example.com.", RecordType::A);
        assert!(!wants_padding(&asked));
        let padded = pad_message(&mut asked, QUERY_PADDING_BLOCK_BYTES).unwrap();
        assert_eq!(padded.len() % QUERY_PADDING_BLOCK_BYTES, 0);
        let parsed = Message::from_vec(&padded).unwrap();
        assert!(wants_padding(&parsed));
        // Padding an already padded message gives the same size, with one padding option.
        let again = pad(&padded, QUERY_PADDING_BLOCK_BYTES).unwrap();
        assert_eq!(again.len(), padded.len());
        let options = Message::from_vec(&again).unwrap().edns.unwrap();
        assert_eq!(options.options().get_all(EdnsCode::Padding).len(), 1);
        let response = pad(&padded, PADDING_BLOCK_BYTES).unwrap();
        assert_eq!(response.len(), PADDING_BLOCK_BYTES);
    }

    #[test]
    fn padding_that_would_exceed_the_limit_is_skipped() {
        let mut big = query("example.com.", RecordType::TXT);
        for _ in 0..200 {
            let txt = hickory_proto::rr::rdata::TXT::new(vec!["x".repeat(200)]);
            big.add_answer(hickory_proto::rr::Record::from_rdata(
                Name::from_ascii("example.com.").unwrap(),
                60,
                hickory_proto::rr::RData::TXT(txt),
            ));
        }
        let bytes = big.to_vec().unwrap();
        assert!(bytes.len() > 40_000 && bytes.len() < 50_000, "{}", bytes.len());
        // The next multiple of 40000 is 80000: over the limit, so no padding.
        assert!(pad(&bytes, 40_000).is_none());
        assert_eq!(pad(&bytes, 25_000).map(|padded| padded.len()), Some(50_000));
    }

    #[test]
    fn upstream_queries_lose_padding_and_large_udp_sizes() {
        let mut asked = query("example.com.", RecordType::A);
        let plain = asked.to_vec().unwrap();
        assert_eq!(for_upstream(&asked, plain.clone()), plain, "no EDNS: byte for byte");
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        asked.edns = Some(edns);
        let padded = pad_message(&mut asked, QUERY_PADDING_BLOCK_BYTES).unwrap();
        let parsed = Message::from_vec(&padded).unwrap();
        let forwarded = Message::from_vec(&for_upstream(&parsed, padded.clone())).unwrap();
        let edns = forwarded.edns.as_ref().unwrap();
        assert_eq!(edns.max_payload(), MAX_UPSTREAM_UDP_PAYLOAD);
        assert!(edns.option(EdnsCode::Padding).is_none());
        assert_eq!((forwarded.metadata.id, &forwarded.queries), (0, &parsed.queries));
        // Already small and unpadded: unchanged.
        let mut small = query("example.com.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(1200);
        small.edns = Some(edns);
        let bytes = small.to_vec().unwrap();
        assert_eq!(for_upstream(&Message::from_vec(&bytes).unwrap(), bytes.clone()), bytes);
    }

    #[test]
    fn keepalive_option_is_detected() {
        let mut asked = query("example.com.", RecordType::A);
        let mut edns = Edns::new();
        edns.options_mut().insert(EdnsOption::Unknown(u16::from(EdnsCode::Keepalive), Vec::new()));
        asked.edns = Some(edns);
        let parsed = Message::from_vec(&asked.to_vec().unwrap()).unwrap();
        assert!(has_tcp_keepalive(&parsed));
        assert!(!has_tcp_keepalive(&query("example.com.", RecordType::A)));
    }

    #[test]
    fn replay_safety_follows_rfc_9250_section_4_5() {
        assert!(is_replay_safe(&query("example.com.", RecordType::A)));
        assert!(is_replay_safe(&query("example.com.", RecordType::TXT)));
        assert!(!is_replay_safe(&query("example.com.", RecordType::AXFR)));
        assert!(!is_replay_safe(&query("example.com.", RecordType::IXFR)));
        for op_code in [OpCode::Update, OpCode::Notify, OpCode::Status, OpCode::Unknown(9)] {
            let mut other = query("example.com.", RecordType::SOA);
            other.metadata.op_code = op_code;
            assert!(!is_replay_safe(&other), "{op_code:?}");
        }
        let mut two = query("example.com.", RecordType::A);
        two.add_query(Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::A));
        assert!(!is_replay_safe(&two));
        let mut response = query("example.com.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert!(!is_replay_safe(&response));
        assert!(!is_replay_safe(&Message::new(0, MessageType::Query, OpCode::Query)));
    }

    #[test]
    fn header_and_questions_ignore_unparsed_records() {
        let mut answer = query("example.com.", RecordType::A);
        answer.metadata.message_type = MessageType::Response;
        let mut bytes = answer.to_vec().unwrap();
        // Claim one answer record that is not there: the question is still readable.
        bytes[7] = 1;
        let (header, questions) = header_and_questions(&bytes).unwrap();
        assert_eq!(header.metadata.message_type, MessageType::Response);
        assert_eq!(questions, answer.queries);
        assert!(header_and_questions(&bytes[..5]).is_none());
    }
}
