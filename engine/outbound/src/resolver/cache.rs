//! The bounded route cache: answers (positive and negative) keyed by domain until they expire.

use std::collections::HashMap;

use super::Answer;

/// When the cache is full after sweeping expired entries, arbitrary entries are evicted until
/// it is at most this percentage full, so the O(n) sweep runs rarely.
const EVICT_TO_PERCENT: usize = 90;

struct Entry {
    answer: Answer,
    /// Monotonic milliseconds (see `Clock`) after which the entry is stale.
    expires_ms: u64,
}

/// Domain -> answer, at most `entries_max` entries.
pub(super) struct RouteCache {
    map: HashMap<String, Entry>,
    /// Invariant: `map.len() <= entries_max` and `entries_max >= 1`.
    entries_max: usize,
}

impl RouteCache {
    pub(super) fn new(entries_max: usize) -> RouteCache {
        let entries_max = entries_max.max(1);
        RouteCache {
            map: HashMap::with_capacity(entries_max.min(1024)),
            entries_max,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// A fresh answer, if any; a stale one is removed.
    pub(super) fn get(&mut self, domain: &str, now_ms: u64) -> Option<Answer> {
        let entry = self.map.get(domain)?;
        if now_ms < entry.expires_ms {
            return Some(entry.answer.clone());
        }
        self.map.remove(domain);
        None
    }

    pub(super) fn insert(&mut self, domain: &str, answer: Answer, expires_ms: u64, now_ms: u64) {
        if self.map.len() >= self.entries_max && !self.map.contains_key(domain) {
            self.make_room(now_ms);
        }
        self.map
            .insert(domain.to_string(), Entry { answer, expires_ms });
    }

    fn make_room(&mut self, now_ms: u64) {
        self.map.retain(|_, e| now_ms < e.expires_ms);
        let target = (self.entries_max * EVICT_TO_PERCENT / 100).min(self.entries_max - 1);
        if self.map.len() > target {
            let excess = self.map.len() - target;
            let victims: Vec<String> = self.map.keys().take(excess).cloned().collect();
            for k in victims {
                self.map.remove(&k);
            }
        }
    }
}
