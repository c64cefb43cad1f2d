//! A compact map from 64-bit ids to values, for ids handed out nearly in sequence.
//!
//! The spool gives every message a sequence number, and both its index (where a message is) and
//! the delivery shard's table (what is left to do for it) are keyed by that id. A `HashMap`
//! spends a whole bucket per entry and doubles its table, so at a million entries it holds
//! between 1.15 and 2.3 buckets per entry, each the size of the key plus the value: 80 to 190
//! bytes for a 72-byte value. Here, ids are grouped into chunks of 64 consecutive ids; a chunk
//! has a presence bitmap and its values packed in id order, so a value costs its own size and a
//! share of its chunk (40 bytes of table and the vector's slack), a few bytes when ids are
//! dense. A lookup is a hash probe for the chunk and a popcount; an insert or removal moves at
//! most 63 values.
//!
//! Ids far apart cost a chunk each (about 100 bytes): the map suits keys where live ids
//! cluster, as a spool's do (messages stored together are mostly delivered together, and the
//! ones left behind share chunks with others left behind in the same burst).
//!
//! Pure: no I/O, no clock, no unsafe code.

#![forbid(unsafe_code)]

use std::collections::HashMap;

/// Ids per chunk: one bit each in [`Chunk::present`].
pub const CHUNK_IDS: u64 = 64;

/// A chunk's vector is shrunk once it is at most a quarter full (and holds more than this).
const CHUNK_SHRINK_CAPACITY_MIN: usize = 8;

/// One run of [`CHUNK_IDS`] consecutive ids.
#[derive(Debug, Clone)]
struct Chunk<V> {
    /// Bit `i` set: id `base + i` is present, and its value is `values[rank(i)]`.
    present: u64,
    /// The present ids' values, in id order.
    values: Vec<V>,
}

impl<V> Chunk<V> {
    /// Position in `values` of the id at `bit` (whether or not it is present).
    fn rank(&self, bit: u32) -> usize {
        (self.present & ((1u64 << bit) - 1)).count_ones() as usize
    }
}

/// See the crate docs.
#[derive(Debug, Clone)]
pub struct IdMap<V> {
    chunks: HashMap<u64, Chunk<V>>,
    len: usize,
    /// Sum of the chunks' vector capacities, kept as they change (for [`IdMap::memory_bytes`]).
    values_capacity: usize,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            chunks: HashMap::new(),
            len: 0,
            values_capacity: 0,
        }
    }
}

fn split(id: u64) -> (u64, u32) {
    (id / CHUNK_IDS, (id % CHUNK_IDS) as u32)
}

impl<V> IdMap<V> {
    pub fn new() -> IdMap<V> {
        IdMap::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains_key(&self, id: u64) -> bool {
        let (base, bit) = split(id);
        self.chunks
            .get(&base)
            .is_some_and(|c| c.present & (1u64 << bit) != 0)
    }

    pub fn get(&self, id: u64) -> Option<&V> {
        let (base, bit) = split(id);
        let c = self.chunks.get(&base)?;
        if c.present & (1u64 << bit) == 0 {
            return None;
        }
        c.values.get(c.rank(bit))
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        let (base, bit) = split(id);
        let c = self.chunks.get_mut(&base)?;
        if c.present & (1u64 << bit) == 0 {
            return None;
        }
        let r = c.rank(bit);
        c.values.get_mut(r)
    }

    /// Inserts `value` for `id`; returns the value it replaces, if any.
    pub fn insert(&mut self, id: u64, value: V) -> Option<V> {
        let (base, bit) = split(id);
        let c = self.chunks.entry(base).or_insert_with(|| Chunk {
            present: 0,
            values: Vec::new(),
        });
        let r = c.rank(bit);
        if c.present & (1u64 << bit) != 0 {
            return Some(std::mem::replace(&mut c.values[r], value));
        }
        let before = c.values.capacity();
        c.values.insert(r, value);
        c.present |= 1u64 << bit;
        self.values_capacity = self.values_capacity - before + c.values.capacity();
        self.len += 1;
        None
    }

    /// Removes `id`; returns its value if it was present.
    pub fn remove(&mut self, id: u64) -> Option<V> {
        let (base, bit) = split(id);
        let c = self.chunks.get_mut(&base)?;
        if c.present & (1u64 << bit) == 0 {
            return None;
        }
        let r = c.rank(bit);
        let before = c.values.capacity();
        let value = c.values.remove(r);
        c.present &= !(1u64 << bit);
        self.len -= 1;
        if c.present == 0 {
            self.values_capacity -= before;
            self.chunks.remove(&base);
            return Some(value);
        }
        if before > CHUNK_SHRINK_CAPACITY_MIN && c.values.len() * 4 <= before {
            c.values.shrink_to(c.values.len() * 2);
        }
        self.values_capacity = self.values_capacity - before + c.values.capacity();
        Some(value)
    }

    /// The entry with the smallest id: O(chunks), a 64th of the entries or fewer.
    pub fn first(&self) -> Option<(u64, &V)> {
        let (&base, c) = self.chunks.iter().min_by_key(|(base, _)| **base)?;
        let bit = c.present.trailing_zeros();
        Some((base * CHUNK_IDS + u64::from(bit), c.values.first()?))
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.chunks.iter().flat_map(|(&base, c)| {
            let mut bits = c.present;
            c.values.iter().map(move |v| {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                (base * CHUNK_IDS + u64::from(bit), v)
            })
        })
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.chunks.values().flat_map(|c| c.values.iter())
    }

    /// Every value, mutably, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.chunks.values_mut().flat_map(|c| c.values.iter_mut())
    }

    /// Heap bytes the map itself holds: its chunk table and the chunks' value vectors (not what
    /// the values own on the heap; callers add that). Computed from capacities, in O(1).
    pub fn memory_bytes(&self) -> usize {
        let cap = self.chunks.capacity();
        // hashbrown keeps 7/8 of a power-of-two bucket count usable (all but one below 8).
        let buckets = match cap {
            0 => 0,
            c if c < 7 => c + 1,
            c => c / 7 * 8,
        };
        let bucket = std::mem::size_of::<(u64, Chunk<V>)>() + 1;
        buckets * bucket + self.values_capacity * std::mem::size_of::<V>()
    }

    /// Number of chunks (for tests and diagnostics).
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn dense_ids_cost_little_more_than_the_values() {
        let mut m = IdMap::new();
        for id in 0..100_000u64 {
            m.insert(1 << 56 | id, [0u8; 48]);
        }
        let per = m.memory_bytes() as f64 / m.len() as f64;
        assert!(per < 48.0 + 4.0, "{per} bytes per entry");
        for id in 0..100_000u64 {
            assert!(m.remove(1 << 56 | id).is_some());
        }
        assert_eq!(m.len(), 0);
        assert_eq!(m.chunk_count(), 0);
        assert_eq!(m.values_capacity, 0);
    }

    #[test]
    fn a_thinned_chunk_gives_its_space_back() {
        let mut m = IdMap::new();
        for id in 0..64u64 {
            m.insert(id, 7u64);
        }
        let full = m.memory_bytes();
        for id in 1..64u64 {
            m.remove(id);
        }
        assert!(m.memory_bytes() < full);
        assert_eq!(m.get(0), Some(&7));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Ids from a few clustered ranges, so chunks fill, empty and share.
        let id = prop_oneof![0u64..300, 10_000u64..10_200, (u64::MAX - 200)..=u64::MAX];
        prop_oneof![
            (id.clone(), any::<u32>()).prop_map(|(i, v)| Op::Insert(i, v)),
            id.prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn behaves_as_a_btreemap(ops in proptest::collection::vec(op(), 0..600)) {
            let mut m = IdMap::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(id, v) => prop_assert_eq!(m.insert(id, v), model.insert(id, v)),
                    Op::Remove(id) => prop_assert_eq!(m.remove(id), model.remove(&id)),
                }
                prop_assert_eq!(m.len(), model.len());
            }
            for (id, v) in &model {
                prop_assert_eq!(m.get(*id), Some(v));
                prop_assert!(m.contains_key(*id));
            }
            prop_assert_eq!(m.first(), model.iter().next().map(|(k, v)| (*k, v)));
            let mut got: Vec<(u64, u32)> = m.iter().map(|(k, v)| (k, *v)).collect();
            got.sort_unstable();
            let want: Vec<(u64, u32)> = model.into_iter().collect();
            prop_assert_eq!(got, want);
            let cap: usize = m.chunks.values().map(|c| c.values.capacity()).sum();
            prop_assert_eq!(cap, m.values_capacity);
        }
    }
}
