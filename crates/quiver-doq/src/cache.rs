//! A small positive answer cache for the forwarder, honouring TTLs.
//!
//! Keyed by the query's exact wire bytes (ID 0): two queries share an entry only if they ask the
//! very same thing with the very same flags and EDNS options, so the cache never answers a question
//! it was not asked. Only NOERROR answers with records are kept, for their smallest TTL (capped at
//! [`MAX_CACHE_TTL_SECONDS`]); a hit is served with every TTL reduced by the time spent in the cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

/// Longest time an answer stays cached, whatever its TTL says: a day, as common resolvers cap it,
/// so a mistaken huge TTL upstream cannot pin an answer for weeks.
pub(crate) const MAX_CACHE_TTL_SECONDS: u32 = 86_400;

struct Entry {
    answer: Message,
    stored: Instant,
    expires: Instant,
}

/// A bounded map from query bytes to answers.
pub(crate) struct AnswerCache {
    entries: HashMap<Vec<u8>, Entry>,
    capacity: usize,
}

impl AnswerCache {
    /// A cache holding at most `capacity` answers.
    pub(crate) fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), capacity }
    }

    /// The cached answer for `query` at `now`, TTLs aged, with ID 0.
    pub(crate) fn get(&mut self, query: &[u8], now: Instant) -> Option<Vec<u8>> {
        let entry = self.entries.get(query)?;
        if entry.expires <= now {
            self.entries.remove(query);
            return None;
        }
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let mut answer = entry.answer.clone();
        for record in answer.answers.iter_mut().chain(&mut answer.authorities).chain(&mut answer.additionals) {
            record.ttl = record.ttl.saturating_sub(age);
        }
        answer.to_vec().ok()
    }

    /// Keeps `answer` for `query` if it is a positive answer with a TTL. When full, expired entries
    /// go first, then the one closest to expiry.
    pub(crate) fn insert(&mut self, query: &[u8], answer: &[u8], now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let Ok(parsed) = Message::from_vec(answer) else { return };
        if parsed.metadata.response_code != ResponseCode::NoError
            || parsed.metadata.truncation
            || parsed.answers.is_empty()
        {
            return;
        }
        let ttl = parsed
            .answers
            .iter()
            .chain(&parsed.authorities)
            .chain(&parsed.additionals)
            .filter(|record| record.record_type() != RecordType::OPT)
            .map(|record| record.ttl)
            .min()
            .unwrap_or(0)
            .min(MAX_CACHE_TTL_SECONDS);
        if ttl == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(query) {
            self.entries.retain(|_, entry| entry.expires > now);
            if self.entries.len() >= self.capacity
                && let Some(soonest) =
                    self.entries.iter().min_by_key(|(_, entry)| entry.expires).map(|(key, _)| key.clone())
            {
                self.entries.remove(&soonest);
            }
        }
        let expires = now + Duration::from_secs(u64::from(ttl));
        self.entries.insert(query.to_vec(), Entry { answer: parsed, stored: now, expires });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record};

    use super::*;

    fn exchange(name: &str, ttl: u32, rcode: ResponseCode) -> (Vec<u8>, Vec<u8>) {
        let question = Query::query(Name::from_ascii(name).unwrap(), RecordType::A);
        let mut query = Message::new(0, MessageType::Query, OpCode::Query);
        query.add_query(question.clone());
        let mut answer = Message::new(0, MessageType::Response, OpCode::Query);
        answer.metadata.response_code = rcode;
        answer.add_query(question);
        if rcode == ResponseCode::NoError {
            answer.add_answer(Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::A(A::new(192, 0, 2, 1))));
        }
        (query.to_vec().unwrap(), answer.to_vec().unwrap())
    }

    #[test]
    fn hit_ages_ttls_and_expires() {
        let mut cache = AnswerCache::new(10);
        let (query, answer) = exchange("example.com.", 300, ResponseCode::NoError);
        let start = Instant::now();
        cache.insert(&query, &answer, start);
        let hit = cache.get(&query, start + Duration::from_secs(100)).unwrap();
        assert_eq!(Message::from_vec(&hit).unwrap().answers[0].ttl, 200);
        assert!(cache.get(&query, start + Duration::from_secs(300)).is_none());
        assert_eq!(cache.len(), 0, "expired entry removed");
    }

    #[test]
    fn negative_and_zero_ttl_answers_are_not_cached() {
        let mut cache = AnswerCache::new(10);
        let now = Instant::now();
        let (query, answer) = exchange("nx.example.", 300, ResponseCode::NXDomain);
        cache.insert(&query, &answer, now);
        let (query, answer) = exchange("zero.example.", 0, ResponseCode::NoError);
        cache.insert(&query, &answer, now);
        cache.insert(b"query", b"not dns", now);
        assert_eq!(cache.len(), 0);
        assert_eq!(AnswerCache::new(0).get(&query, now), None);
    }

    #[test]
    fn full_cache_evicts_the_soonest_expiry() {
        let mut cache = AnswerCache::new(2);
        let now = Instant::now();
        let (short_query, short_answer) = exchange("short.example.", 10, ResponseCode::NoError);
        let (long_query, long_answer) = exchange("long.example.", 1000, ResponseCode::NoError);
        let (new_query, new_answer) = exchange("new.example.", 500, ResponseCode::NoError);
        cache.insert(&short_query, &short_answer, now);
        cache.insert(&long_query, &long_answer, now);
        cache.insert(&new_query, &new_answer, now);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&short_query, now).is_none());
        assert!(cache.get(&long_query, now).is_some() && cache.get(&new_query, now).is_some());
    }

    #[test]
    fn ttl_is_capped() {
        let mut cache = AnswerCache::new(1);
        let now = Instant::now();
        let (query, answer) = exchange("example.com.", u32::MAX / 2, ResponseCode::NoError);
        cache.insert(&query, &answer, now);
        let later = now + Duration::from_secs(u64::from(MAX_CACHE_TTL_SECONDS));
        assert!(cache.get(&query, later).is_none());
    }
}
