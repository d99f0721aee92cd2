//! A small positive answer cache for the forwarder, honouring TTLs, bounded in bytes.
//!
//! Keyed by the query's exact wire bytes (ID 0): two queries share an entry only if they ask the
//! very same thing with the very same flags and EDNS options, so the cache never answers a question
//! it was not asked. Only NOERROR answers with records are kept, for their smallest TTL (capped at
//! [`MAX_CACHE_TTL_SECONDS`]); a hit is served with every TTL reduced by the time spent in the cache.
//!
//! The budget is in bytes, not entries: answers range from 50 bytes to 64 KiB, so an entry limit
//! sized for typical answers would let a client that asks for large ones (its own zone's TXT
//! records) hold a thousand times the memory. Answers are stored in their wire form, which is what
//! the budget counts: a parsed message can be many times larger than its compressed wire form, so
//! counting wire bytes of a parsed message would not bound memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

/// Longest time an answer stays cached, whatever its TTL says: a day, as common resolvers cap it,
/// so a mistaken huge TTL upstream cannot pin an answer for weeks.
pub(crate) const MAX_CACHE_TTL_SECONDS: u32 = 86_400;

/// What one entry costs beyond its query and answer bytes: the hash map's slot, the expiry index's
/// node, the shared answer's reference counts and the vectors' headers (about 150 bytes on 64-bit
/// targets), rounded up so the budget errs on the side of less memory.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 192;

/// One entry may take at most this fraction of the budget (1/16): a single large answer must not
/// flush a cache full of small ones. Larger answers are served but not stored.
const MAX_ENTRY_SHARE_OF_BUDGET: usize = 16;

/// A positive answer ready to be cached or served, in wire form. Checking ([`CachedAnswer::parse`])
/// and encoding ([`CachedAnswer::render`]) happen outside the cache's lock; the lock covers only
/// map updates.
pub(crate) struct CachedAnswer {
    wire: Vec<u8>,
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
        (ttl > 0).then(|| Self {
            wire: answer.to_vec(),
            stored: now,
            expires: now + Duration::from_secs(u64::from(ttl)),
        })
    }

    /// The answer's wire form at `now`, every TTL reduced by the time spent in the cache, ID 0.
    pub(crate) fn render(&self, now: Instant) -> Option<Vec<u8>> {
        let age = u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX);
        let mut answer = Message::from_vec(&self.wire).ok()?;
        for record in answer.answers.iter_mut().chain(&mut answer.authorities).chain(&mut answer.additionals) {
            record.ttl = record.ttl.saturating_sub(age);
        }
        answer.to_vec().ok()
    }
}

/// What [`AnswerCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Kept, after evicting this many entries to make room.
    Kept {
        /// Entries removed (closest to expiry first) to fit the budget.
        evicted: usize,
    },
    /// Larger than one entry may be ([`MAX_ENTRY_SHARE_OF_BUDGET`] of the budget): not kept.
    TooLarge,
}

struct Slot {
    answer: Arc<CachedAnswer>,
    /// This entry's key in `by_expiry`.
    expiry: (Instant, u64),
    /// What it counts against the budget.
    cost: usize,
}

/// A map from query bytes to answers, bounded by a byte budget. When full, the entries closest to
/// expiry (expired ones first) make room, found in O(log n) through an index ordered by expiry.
pub(crate) struct AnswerCache {
    entries: HashMap<Arc<[u8]>, Slot>,
    by_expiry: BTreeMap<(Instant, u64), Arc<[u8]>>,
    next_sequence: u64,
    budget_bytes: usize,
    used_bytes: usize,
}

impl AnswerCache {
    /// A cache holding at most `budget_bytes` of queries, answers and bookkeeping.
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self { entries: HashMap::new(), by_expiry: BTreeMap::new(), next_sequence: 0, budget_bytes, used_bytes: 0 }
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

    /// Keeps `answer` for `query`, replacing what was there; evicts first when over the budget.
    pub(crate) fn insert(&mut self, query: &[u8], answer: CachedAnswer) -> Stored {
        let cost = entry_cost(query, &answer);
        self.remove(query);
        if cost > self.budget_bytes / MAX_ENTRY_SHARE_OF_BUDGET {
            return Stored::TooLarge;
        }
        let mut evicted = 0;
        while self.used_bytes + cost > self.budget_bytes {
            let Some((_, soonest)) = self.by_expiry.pop_first() else { break };
            if let Some(slot) = self.entries.remove(&soonest) {
                self.used_bytes -= slot.cost;
                evicted += 1;
            }
        }
        let expiry = (answer.expires, self.next_sequence);
        self.next_sequence += 1;
        let key: Arc<[u8]> = query.into();
        self.by_expiry.insert(expiry, key.clone());
        self.entries.insert(key, Slot { answer: Arc::new(answer), expiry, cost });
        self.used_bytes += cost;
        Stored::Kept { evicted }
    }

    fn remove(&mut self, query: &[u8]) {
        if let Some(slot) = self.entries.remove(query) {
            self.by_expiry.remove(&slot.expiry);
            self.used_bytes -= slot.cost;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.entries.len(), self.by_expiry.len());
        debug_assert_eq!(self.used_bytes, self.entries.values().map(|slot| slot.cost).sum::<usize>());
        self.entries.len()
    }
}

/// What an entry counts against the budget: the key is held once (both maps share it), the answer
/// once, plus the bookkeeping.
fn entry_cost(query: &[u8], answer: &CachedAnswer) -> usize {
    query.len() + answer.wire.len() + ENTRY_OVERHEAD_BYTES
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

    /// A positive answer for `name` with `records` A records, each with a distinct long owner name
    /// (so compression cannot shrink it much).
    fn exchange_with(name: &str, ttl: u32, records: u8) -> (Vec<u8>, Vec<u8>) {
        let (query, answer) = exchange(name, ttl, ResponseCode::NoError);
        let mut answer = Message::from_vec(&answer).unwrap();
        for index in 1..records {
            let owner = Name::from_ascii(format!("record-{index:03}-with-a-long-label.{name}")).unwrap();
            answer.add_answer(Record::from_rdata(owner, ttl, RData::A(A::new(192, 0, 2, index))));
        }
        (query, answer.to_vec().unwrap())
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

    /// A budget for `entries` entries like `exchange(name, ..)`'s (names of the same length cost the same).
    fn budget_for(entries: usize, name: &str) -> usize {
        let (query, answer) = exchange(name, 300, ResponseCode::NoError);
        entries * entry_cost(&query, &CachedAnswer::parse(&answer, Instant::now()).unwrap())
    }

    const ROOMY: usize = 1 << 20;

    #[test]
    fn hit_ages_ttls_and_expires() {
        let mut cache = AnswerCache::new(ROOMY);
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
        let mut cache = AnswerCache::new(ROOMY);
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
    fn full_cache_evicts_the_soonest_expiry_and_counts_it() {
        // Room for exactly 16 entries of this size (the most one entry may take is 1/16 of it).
        let mut cache = AnswerCache::new(budget_for(16, "n00.example."));
        let now = Instant::now();
        let (short_query, short_answer) = exchange("s00.example.", 10, ResponseCode::NoError);
        store(&mut cache, &short_query, &short_answer, now);
        for index in 1..16 {
            let (query, answer) = exchange(&format!("n{index:02}.example."), 1000, ResponseCode::NoError);
            store(&mut cache, &query, &answer, now);
        }
        assert_eq!(cache.len(), 16);
        let (new_query, new_answer) = exchange("new.example.", 500, ResponseCode::NoError);
        let outcome = cache.insert(&new_query, CachedAnswer::parse(&new_answer, now).unwrap());
        assert_eq!(outcome, Stored::Kept { evicted: 1 });
        assert_eq!(cache.len(), 16);
        assert!(cache.get(&short_query, now).is_none(), "the soonest expiry made room");
        assert!(cache.get(&new_query, now).is_some());
    }

    /// Many small answers and a few large ones: what the cache holds never exceeds its byte budget,
    /// however the answers' sizes mix (an entry limit would have let the large ones take 64 KiB each).
    #[test]
    fn memory_stays_within_the_byte_budget() {
        const BUDGET: usize = 64 * 1024;
        let mut cache = AnswerCache::new(BUDGET);
        let now = Instant::now();
        let mut evicted_total = 0;
        for index in 0..2000u32 {
            let name = format!("host{index}.example.");
            // Every tenth answer carries 40 records: about 1 KB on the wire.
            let records = if index % 10 == 0 { 40 } else { 1 };
            let (query, answer) = exchange_with(&name, 300 + index, records);
            if let Stored::Kept { evicted } = cache.insert(&query, CachedAnswer::parse(&answer, now).unwrap()) {
                evicted_total += evicted;
            }
            assert!(cache.used_bytes <= BUDGET, "{} bytes after {index} answers", cache.used_bytes);
        }
        assert!(evicted_total > 1000, "evictions made room: {evicted_total}");
        assert!(cache.len() > 100, "small answers still fit many at a time: {}", cache.len());
    }

    #[test]
    fn oversized_answers_are_served_but_not_stored() {
        let mut cache = AnswerCache::new(16 * 1024);
        let now = Instant::now();
        let (small_query, small_answer) = exchange("small.example.", 300, ResponseCode::NoError);
        store(&mut cache, &small_query, &small_answer, now);
        // 40 A records with uncompressed names: well over 1 KiB, 1/16 of the budget.
        let (query, answer) = exchange_with("big.example.", 300, 40);
        assert!(answer.len() > 1024);
        assert_eq!(cache.insert(&query, CachedAnswer::parse(&answer, now).unwrap()), Stored::TooLarge);
        assert!(cache.get(&query, now).is_none());
        assert!(cache.get(&small_query, now).is_some(), "nothing was evicted for it");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn ttl_is_capped() {
        let mut cache = AnswerCache::new(ROOMY);
        let now = Instant::now();
        let (query, answer) = exchange("example.com.", u32::MAX / 2, ResponseCode::NoError);
        store(&mut cache, &query, &answer, now);
        let later = now + Duration::from_secs(u64::from(MAX_CACHE_TTL_SECONDS));
        assert!(cache.get(&query, later).is_none());
    }
}
