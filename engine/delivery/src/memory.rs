//! What a shard's queued mail costs in memory: an interner for values many messages repeat,
//! and the byte estimates behind the `petrel_queue_memory_bytes` gauge (issue 17).
//!
//! Estimates are of heap bytes, from lengths and capacities: an allocation of `n` bytes is
//! counted as `n` rounded up to the allocator's 8-byte granule, which is what mimalloc's small
//! size classes come to within a few percent. They are cheap enough to keep as running sums,
//! so the gauge costs nothing per message.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use crate::attribution::AttributionKey;

/// Bytes an allocation of `len` bytes takes (see the module docs); 0 for none.
pub fn alloc_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len + 7) & !7
    }
}

/// Bytes of an `Rc`'s or `Arc`'s header ahead of its value: the strong and weak counts.
pub const RC_HEADER_BYTES: usize = 16;

/// Bytes an `Rc` or `Arc` allocation holding `payload` bytes takes.
pub fn rc_alloc_bytes(payload: usize) -> usize {
    alloc_bytes(RC_HEADER_BYTES + payload)
}

/// Heap bytes of a boxed or owned string.
pub fn str_heap_bytes(s: &str) -> usize {
    alloc_bytes(s.len())
}

/// Strings many queued messages share (envelope senders): one allocation each, named by a
/// 4-byte id that the messages hold (a pointer would take 16), counted per holder. A value
/// leaves when its last holder does ([`Interner::release`]), and its id is used again.
#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<Rc<str>, u32>,
    /// By id: the value and how many hold it; `None` = free (listed in `free`).
    values: Vec<Option<(Rc<str>, u32)>>,
    free: Vec<u32>,
    /// Sum of the interned strings' allocations (counters included).
    bytes: usize,
}

impl Interner {
    /// The id of `s`, made on first use; the caller holds it until [`Interner::release`].
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            if let Some(Some((_, holders))) = self.values.get_mut(id as usize) {
                *holders += 1;
            }
            return id;
        }
        let v: Rc<str> = Rc::from(s);
        self.bytes += rc_alloc_bytes(s.len());
        let id = match self.free.pop() {
            Some(id) => {
                self.values[id as usize] = Some((Rc::clone(&v), 1));
                id
            }
            None => {
                self.values.push(Some((Rc::clone(&v), 1)));
                u32::try_from(self.values.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.ids.insert(v, id);
        id
    }

    /// The value of `id` ("" for an id not held).
    pub fn get(&self, id: u32) -> &str {
        match self.values.get(id as usize) {
            Some(Some((v, _))) => v,
            _ => "",
        }
    }

    /// Gives back one holder's id; the value leaves with its last holder.
    pub fn release(&mut self, id: u32) {
        let Some(entry) = self.values.get_mut(id as usize) else {
            return;
        };
        let last = match entry {
            Some((_, holders)) => {
                *holders = holders.saturating_sub(1);
                *holders == 0
            }
            None => false,
        };
        if !last {
            return;
        }
        if let Some((v, _)) = entry.take() {
            self.ids.remove(&*v);
            self.bytes = self.bytes.saturating_sub(rc_alloc_bytes(v.len()));
            self.free.push(id);
        }
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Heap bytes: the lookup table, the values by id and the values.
    pub fn memory_bytes(&self) -> usize {
        table_bytes(self.ids.capacity(), std::mem::size_of::<(Rc<str>, u32)>())
            + alloc_bytes(self.values.capacity() * std::mem::size_of::<Option<(Rc<str>, u32)>>())
            + alloc_bytes(self.free.capacity() * std::mem::size_of::<u32>())
            + self.bytes
    }
}

/// Heap bytes of a std `HashMap`/`HashSet` of `capacity` whose entries take `entry` bytes:
/// hashbrown's buckets (a power of two, 7/8 of them usable) and a control byte each.
pub fn table_bytes(capacity: usize, entry: usize) -> usize {
    let buckets = if capacity == 0 {
        0
    } else if capacity < 4 {
        4
    } else if capacity < 8 {
        8
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (entry + 1)
}

/// What many messages' attributions repeat (tenant, credential, From domain: an
/// [`AttributionKey`]), shared across threads with their events. The engine keeps one per
/// shard. Keys no message holds any more leave at the next sweep, which runs once the set has
/// doubled since the last one.
#[derive(Debug, Default)]
pub struct SharedInterner {
    set: HashSet<Arc<AttributionKey>>,
    /// Size of the set after the last sweep.
    swept_len: usize,
}

/// A sweep never runs below this many values.
const SHARED_INTERNER_SWEEP_MIN: usize = 1024;

impl SharedInterner {
    /// The shared copy of `key`; None for an empty one.
    pub fn intern(&mut self, key: AttributionKey) -> Option<Arc<AttributionKey>> {
        if key.is_empty() {
            return None;
        }
        if let Some(v) = self.set.get(&key) {
            return Some(v.clone());
        }
        if self.set.len() >= SHARED_INTERNER_SWEEP_MIN.max(2 * self.swept_len) {
            self.set.retain(|v| Arc::strong_count(v) > 1);
            self.swept_len = self.set.len();
        }
        let v = Arc::new(key);
        self.set.insert(v.clone());
        Some(v)
    }

    /// Distinct values held (some may be unused until the next sweep).
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shared_and_leaves_with_its_last_holder() {
        let mut i = Interner::default();
        let a = i.intern("bounce@example.com");
        let b = i.intern("bounce@example.com");
        assert_eq!(a, b);
        assert_eq!(i.get(a), "bounce@example.com");
        assert_eq!(i.len(), 1);
        i.release(a);
        assert_eq!(i.len(), 1, "b still holds it");
        i.release(b);
        assert!(i.is_empty());
        assert_eq!(i.bytes, 0);
        assert_eq!(i.get(a), "");
        // The id is used again, for another value.
        let c = i.intern("other@example.com");
        assert_eq!(c, a);
        assert_eq!(i.get(c), "other@example.com");
    }

    fn key(tenant: &str) -> AttributionKey {
        AttributionKey {
            tenant_id: Some(tenant.into()),
            ..AttributionKey::default()
        }
    }

    #[test]
    fn shared_values_are_swept_once_unused() {
        let mut i = SharedInterner::default();
        let kept = i.intern(key("tenant-kept")).unwrap();
        assert!(Arc::ptr_eq(&kept, &i.intern(key("tenant-kept")).unwrap()));
        assert!(i.intern(AttributionKey::default()).is_none());
        for n in 0..SHARED_INTERNER_SWEEP_MIN {
            drop(i.intern(key(&format!("t{n}"))));
        }
        // The set reached the sweep size once: the unused values went, the held one stayed
        // (with the value whose arrival swept).
        assert_eq!(i.len(), 2, "only the held values remain");
        assert!(Arc::ptr_eq(&kept, &i.intern(key("tenant-kept")).unwrap()));
    }

    #[test]
    fn allocations_round_to_the_granule() {
        assert_eq!(alloc_bytes(0), 0);
        assert_eq!(alloc_bytes(1), 8);
        assert_eq!(alloc_bytes(8), 8);
        assert_eq!(alloc_bytes(25), 32);
    }
}
