//! DoQ framing and the server's message checks (RFC 9250 §4.2): a stream's bytes, delivered in
//! arbitrary pieces, go through the length-prefix reader; a complete message then goes through every
//! check and answer the server builds from peer bytes (FORMERR for garbage, error answers, padding).
//!
//! Input: the first byte picks the piece size the stream is delivered in (0 = all at once), the rest
//! is the stream, FIN with its last piece.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_doq::internals::{
    FramingError, HEADER_BYTES, MessageReader, error_answer, format_error_for, has_tcp_keepalive, header_and_questions,
    message_id, pad, wants_padding,
};
use quiver_doq::proto::op::{Message, ResponseCode};
use quiver_doq::{MAX_MESSAGE_BYTES, PADDING_BLOCK_BYTES, is_replay_safe};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else { return };
    let piece = if piece == 0 { stream.len().max(1) } else { usize::from(piece) };
    let mut reader = MessageReader::default();
    let mut fed = 0;
    let mut pieces = stream.chunks(piece).peekable();
    let outcome = loop {
        let chunk = pieces.next().unwrap_or_default();
        let fin = pieces.peek().is_none();
        fed += chunk.len();
        match reader.push(chunk, fin) {
            Ok(None) if !fin => continue,
            Ok(None) => panic!("FIN without a message or an error"),
            other => break other,
        }
    };
    let announced = stream.get(..2).map(|prefix| usize::from(u16::from_be_bytes([prefix[0], prefix[1]])));
    match outcome {
        Ok(Some(message)) => {
            assert_eq!(Some(message.len()), announced);
            assert_eq!(stream.len(), 2 + message.len(), "accepted a stream with extra or missing bytes");
            assert_eq!(message, stream[2..]);
            check_message(&message);
        }
        Err(FramingError::TrailingData) => {
            assert!(announced.is_some_and(|len| fed > 2 + len) || fed > 2 + MAX_MESSAGE_BYTES);
        }
        Err(FramingError::Truncated) => assert!(announced.is_none_or(|len| stream.len() < 2 + len)),
        Ok(None) => unreachable!("the loop only ends on a message or an error"),
    }
});

/// What the server does with a complete message, in the order it does it.
fn check_message(query: &[u8]) {
    if query.len() < HEADER_BYTES {
        assert_formerr(&format_error_for(query));
        return;
    }
    let _ = message_id(query);
    let Ok(parsed) = Message::from_vec(query) else {
        assert_formerr(&format_error_for(query));
        return;
    };
    let _ = has_tcp_keepalive(&parsed);
    let _ = is_replay_safe(&parsed);
    let (header, questions) = header_and_questions(query).expect("a message that parses has a header and questions");
    assert_eq!(header.counts.queries as usize, parsed.queries.len());
    assert_eq!(questions, parsed.queries);
    for code in [ResponseCode::FormErr, ResponseCode::NotImp, ResponseCode::ServFail] {
        let answer = error_answer(&parsed, code);
        let decoded = Message::from_vec(&answer).expect("error answers always decode");
        assert_eq!(decoded.metadata.id, 0);
        assert_eq!(decoded.metadata.response_code, code);
        if wants_padding(&parsed) {
            // The server pads the answers of padded queries; padding never breaks the 65535 limit.
            if let Some(padded) = pad(&answer, PADDING_BLOCK_BYTES) {
                assert_eq!(padded.len() % PADDING_BLOCK_BYTES, 0);
                assert!(padded.len() <= MAX_MESSAGE_BYTES);
                Message::from_vec(&padded).expect("padded answers decode");
            }
        }
    }
}

fn assert_formerr(answer: &[u8]) {
    let decoded = Message::from_vec(answer).expect("FORMERR answers always decode");
    assert_eq!(decoded.metadata.id, 0);
    assert_eq!(decoded.metadata.response_code, ResponseCode::FormErr);
}
