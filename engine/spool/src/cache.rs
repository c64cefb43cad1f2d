//! Bodies of recently stored messages, kept in memory for their first delivery attempt.
//!
//! Most messages are delivered within moments of being stored; reading each body back from the
//! segment costs an io_uring round trip (and, for buffered files, sometimes a kernel worker
//! thread). The cache is first-in first-out under a byte budget: a body leaves when the message
//! is removed, or when newer bodies push it out. It is an optimisation only; the segment on disk
//! stays the truth, and a miss reads it from there.

use std::collections::{HashMap, VecDeque};

/// Most bodies tracked at once, whatever their size (bounds the FIFO of ids as well).
pub const BODY_CACHE_ENTRIES_MAX: usize = 1 << 16;

/// A FIFO byte-bounded map from message id to body.
#[derive(Debug, Default)]
pub struct BodyCache {
    bytes_max: usize,
    bytes: usize,
    bodies: HashMap<u64, Box<[u8]>>,
    /// Insertion order; may hold ids already removed (skipped when reached).
    order: VecDeque<u64>,
}

impl BodyCache {
    pub fn new(bytes_max: usize) -> BodyCache {
        BodyCache {
            bytes_max,
            ..BodyCache::default()
        }
    }

    /// Keeps `body` for `id` unless it alone is over the budget; evicts the oldest to make room.
    pub fn insert(&mut self, id: u64, body: &[u8]) {
        if body.len() > self.bytes_max / 4 || self.bytes_max == 0 {
            return;
        }
        while self.bytes + body.len() > self.bytes_max || self.order.len() >= BODY_CACHE_ENTRIES_MAX
        {
            if !self.evict_oldest() {
                break;
            }
        }
        if let Some(old) = self.bodies.insert(id, body.into()) {
            self.bytes -= old.len();
        } else {
            self.order.push_back(id);
        }
        self.bytes += body.len();
    }

    /// A copy of the body, if still cached.
    pub fn get(&self, id: u64) -> Option<Vec<u8>> {
        self.bodies.get(&id).map(|b| b.to_vec())
    }

    /// Forgets `id` (the message is done).
    pub fn remove(&mut self, id: u64) {
        if let Some(old) = self.bodies.remove(&id) {
            self.bytes -= old.len();
        }
        // The id stays in `order` until reached; compact when stale ids dominate.
        if self.order.len() > 2 * self.bodies.len() + 1024 {
            let bodies = &self.bodies;
            self.order.retain(|id| bodies.contains_key(id));
        }
    }

    /// Bytes of bodies held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(id) = self.order.pop_front() else {
            return false;
        };
        if let Some(old) = self.bodies.remove(&id) {
            self.bytes -= old.len();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_within_the_budget_and_evicts_oldest_first() {
        let mut c = BodyCache::new(4000);
        for id in 0..5u64 {
            c.insert(id, &[id as u8; 1000]);
        }
        assert!(c.bytes() <= 4000);
        assert_eq!(c.get(0), None, "the oldest body was evicted");
        assert_eq!(c.get(4), Some(vec![4u8; 1000]));
        assert_eq!(c.len(), 4);
        c.remove(4);
        assert_eq!(c.get(4), None);
        assert_eq!(c.bytes(), 3000);
    }

    #[test]
    fn refuses_bodies_too_large_and_a_zero_budget() {
        let mut c = BodyCache::new(4000);
        c.insert(1, &[0u8; 1001]);
        assert!(c.is_empty());
        let mut off = BodyCache::new(0);
        off.insert(1, b"x");
        assert!(off.is_empty());
    }

    #[test]
    fn removed_ids_do_not_grow_the_fifo_without_bound() {
        let mut c = BodyCache::new(1 << 20);
        for id in 0..100_000u64 {
            c.insert(id, b"body");
            c.remove(id);
        }
        assert!(c.is_empty());
        assert!(c.order.len() <= 1024 + 1, "fifo len {}", c.order.len());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn entry_count_is_bounded_for_tiny_bodies() {
        let mut c = BodyCache::new(usize::MAX / 2);
        for id in 0..(BODY_CACHE_ENTRIES_MAX as u64 + 10) {
            c.insert(id, b"b");
        }
        assert_eq!(c.len(), BODY_CACHE_ENTRIES_MAX);
        assert_eq!(c.get(0), None);
    }
}
