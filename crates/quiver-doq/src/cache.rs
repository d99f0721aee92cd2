//! A small positive answer cache for the forwarder, honouring TTLs.
//!
//! Keyed by the query's exact wire bytes (ID 0): two queries share an entry only if they ask the
//! very same thing with the very same flags and EDNS options, so the cache never answers a question
//! it was not asked. Only NOERROR answers with records are kept, for their smallest TTL (capped at
//! [`MAX_CACHE_TTL_SECONDS`]); a hit is served with every TTL reduced by the time spent in the cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

/// Longest time an answer stays cached, whatever its TTL says: a day, as common resolvers cap it,
/// so a mistaken huge TTL upstream cannot pin an answer for weeks.
pub(crate) const MAX_CACHE_TTL_SECONDS: u32 = 86_400;

/// A parsed answer ready to be cached or served. Parsing ([`CachedAnswer::parse`]) and encoding
/// ([`CachedAnswer::render`]) happen outside the cache's lock; the lock covers only map updates.
pub(crate) struct CachedAnswer {
    answer: Message,
    stored: Instant,
    expires: Instant,
}

impl CachedAnswer {
    /// `answer` as stored at `now`, if it is a positive answer with a TTL worth keeping.
    pub(crate) fn parse(answer: &[u8], now: Instant) -> Option<Self> {
        let parsed = Message::from_vec(answer).ok()?;
        if parsed.metadata.response_code != ResponseCode::NoError
            || parsed.metadata.truncation
            || parsed.answers.is_empty()
        {
            return None;
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
        (ttl > 0).then(|| Self { answer: parsed, stored: now, expires: now + Duration::from_secs(u64::from(ttl)) })
    }

    /// The answer's wire form at `now`, every TTL reduced by the time spent in the cache, ID 0.
    pub(crate) fn render(&self, now: Instant) -> Option<Vec<u8>> {
        let age = u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX);
        let mut answer = self.answer.clone();
        for record in answer.answers.iter_mut().chain(&mut answer.authorities).chain(&mut answer.additionals) {
            record.ttl = record.ttl.saturating_sub(age);
        }
        answer.to_vec().ok()
    }
}

struct Slot {
    answer: Arc<CachedAnswer>,
    /// This entry's key in `by_expiry`.
    expiry: (Instant, u64),
}

/// A bounded map from query bytes to answers. When full, the entry closest to expiry (expired ones
/// first) makes room, found in O(log n) through an index ordered by expiry.
pub(crate) struct AnswerCache {
    entries: HashMap<Vec<u8>, Slot>,
    by_expiry: BTreeMap<(Instant, u64), Vec<u8>>,
    next_sequence: u64,
    capacity: usize,
}

impl AnswerCache {
    /// A cache holding at most `capacity` answers.
    pub(crate) fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), by_expiry: BTreeMap::new(), next_sequence: 0, capacity }
    }

    /// The cached answer for `query` if it has not expired at `now` (an expired one is removed).
    pub(crate) fn get(&mut self, query: &[u8], now: Instant) -> Option<Arc<CachedAnswer>> {
        let slot = self.entries.get(query)?;
        if slot.answer.expires <= now {
            self.remove(query);
            return None;
        }
        Some(slot.answer.clone())
    }

    /// Keeps `answer` for `query`, replacing what was there; makes room first when full.
    pub(crate) fn insert(&mut self, query: &[u8], answer: CachedAnswer) {
        if self.capacity == 0 {
            return;
        }
        self.remove(query);
        while self.entries.len() >= self.capacity {
            let Some((_, soonest)) = self.by_expiry.pop_first() else { break };
            self.entries.remove(&soonest);
        }
        let expiry = (answer.expires, self.next_sequence);
        self.next_sequence += 1;
        self.by_expiry.insert(expiry, query.to_vec());
        self.entries.insert(query.to_vec(), Slot { answer: Arc::new(answer), expiry });
    }

    fn remove(&mut self, query: &[u8]) {
        if let Some(slot) = self.entries.remove(query) {
            self.by_expiry.remove(&slot.expiry);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.entries.len(), self.by_expiry.len());
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

    /// Parses and stores like the server does.
    fn store(cache: &mut AnswerCache, query: &[u8], answer: &[u8], now: Instant) {
        if let Some(parsed) = CachedAnswer::parse(answer, now) {
            cache.insert(query, parsed);
        }
    }

    fn rendered(cache: &mut AnswerCache, query: &[u8], now: Instant) -> Option<Vec<u8>> {
        cache.get(query, now).and_then(|answer| answer.render(now))
    }

    #[test]
    fn hit_ages_ttls_and_expires() {
        let mut cache = AnswerCache::new(10);
        let (query, answer) = exchange("example.com.", 300, ResponseCode::NoError);
        let start = Instant::now();
        store(&mut cache, &query, &answer, start);
        let hit = rendered(&mut cache, &query, start + Duration::from_secs(100)).unwrap();
        assert_eq!(Message::from_vec(&hit).unwrap().answers[0].ttl, 200);
        assert!(cache.get(&query, start + Duration::from_secs(300)).is_none());
        // Stored again, it replaces nothing twice: one entry, one index entry.
        store(&mut cache, &query, &answer, start);
        store(&mut cache, &query, &answer, start);
        assert_eq!(cache.len(), 1);
        cache.remove(&query);
        assert_eq!(cache.len(), 0, "expired entry removed");
    }

    #[test]
    fn negative_and_zero_ttl_answers_are_not_cached() {
        let mut cache = AnswerCache::new(10);
        let now = Instant::now();
        let (query, answer) = exchange("nx.example.", 300, ResponseCode::NXDomain);
        store(&mut cache, &query, &answer, now);
        let (query, answer) = exchange("zero.example.", 0, ResponseCode::NoError);
        store(&mut cache, &query, &answer, now);
        store(&mut cache, b"query", b"not dns", now);
        assert_eq!(cache.len(), 0);
        let (query, answer) = exchange("example.com.", 300, ResponseCode::NoError);
        let mut disabled = AnswerCache::new(0);
        store(&mut disabled, &query, &answer, now);
        assert!(disabled.get(&query, now).is_none());
    }

    #[test]
    fn full_cache_evicts_the_soonest_expiry() {
        let mut cache = AnswerCache::new(2);
        let now = Instant::now();
        let (short_query, short_answer) = exchange("short.example.", 10, ResponseCode::NoError);
        let (long_query, long_answer) = exchange("long.example.", 1000, ResponseCode::NoError);
        let (new_query, new_answer) = exchange("new.example.", 500, ResponseCode::NoError);
        store(&mut cache, &short_query, &short_answer, now);
        store(&mut cache, &long_query, &long_answer, now);
        store(&mut cache, &new_query, &new_answer, now);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&short_query, now).is_none());
        assert!(cache.get(&long_query, now).is_some() && cache.get(&new_query, now).is_some());
    }

    #[test]
    fn ttl_is_capped() {
        let mut cache = AnswerCache::new(1);
        let now = Instant::now();
        let (query, answer) = exchange("example.com.", u32::MAX / 2, ResponseCode::NoError);
        store(&mut cache, &query, &answer, now);
        let later = now + Duration::from_secs(u64::from(MAX_CACHE_TTL_SECONDS));
        assert!(cache.get(&query, later).is_none());
    }
}
