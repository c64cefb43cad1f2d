//! What a shard keeps of a queued message between its attempts (issue 17: every byte here is
//! multiplied by the queue's depth).
//!
//! A [`MessageState`] is 48 bytes: the arrival time, its recipients (one inline: the common
//! case), the interned sender's id, the tenant's index (the one part of the attribution that
//! scheduling needs: lanes, egress pools, purges), the egress source, and where its
//! attribution is. The attribution itself (credential, From domain, Message-ID, tags,
//! metadata) is held in [`HeldAttributions`] only while it is about to be used: from intake
//! until the first attempt, and during an attempt. A message waiting for a later attempt lets
//! go of it, as KumoMTA does with its metadata, and the next attempt reads it back from the
//! spool record in the same read as the body (`SpoolAccess::read_body_attributed`); an event
//! about it without an attempt (an administrator's bounce, a route failure) reads it back
//! alone. Recovery builds the same form: it never holds the attributions it found.

use std::sync::Arc;

use petrel_idmap::IdMap;

use super::RcptState;
use crate::attribution::Attribution;
use crate::memory::{alloc_bytes, str_heap_bytes};

/// One recipient of a queued message. Invariant: 24 bytes (the address is on the heap).
#[derive(Debug)]
pub(super) struct RcptSlot {
    pub address: Box<str>,
    /// Index in the envelope.
    pub index: u32,
    /// Attempts made so far; saturates at `u16::MAX` (a retry schedule ends long before).
    pub attempts: u16,
    pub state: RcptState,
}
const _: () = assert!(std::mem::size_of::<RcptSlot>() == 24);

impl RcptSlot {
    pub fn new(index: u32, address: String, attempts: u32) -> RcptSlot {
        RcptSlot {
            index,
            attempts: u16::try_from(attempts).unwrap_or(u16::MAX),
            address: address.into_boxed_str(),
            state: RcptState::Pending,
        }
    }

    /// Counts one more attempt and returns the count.
    pub fn attempted(&mut self) -> u32 {
        self.attempts = self.attempts.saturating_add(1);
        u32::from(self.attempts)
    }
}

/// The recipients of a message with several, and how many are still pending.
#[derive(Debug)]
pub(super) struct ManyRcpts {
    pending: u32,
    /// Sorted by `index`.
    slots: Box<[RcptSlot]>,
}

/// A message's recipient slots: the common single recipient inline, more behind one box. 24
/// bytes either way (the one slot's state gives the enum its tag).
#[derive(Debug)]
pub(super) enum Rcpts {
    One(RcptSlot),
    Many(Box<ManyRcpts>),
}
const _: () = assert!(std::mem::size_of::<Rcpts>() == 24);

impl Rcpts {
    fn new(mut rcpts: Vec<RcptSlot>) -> Rcpts {
        if rcpts.len() == 1 {
            if let Some(one) = rcpts.pop() {
                return Rcpts::One(one);
            }
        }
        rcpts.sort_by_key(|r| r.index);
        Rcpts::Many(Box::new(ManyRcpts {
            pending: u32::try_from(rcpts.len()).unwrap_or(u32::MAX),
            slots: rcpts.into(),
        }))
    }

    pub fn as_slice(&self) -> &[RcptSlot] {
        match self {
            Rcpts::One(r) => std::slice::from_ref(r),
            Rcpts::Many(m) => &m.slots,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [RcptSlot] {
        match self {
            Rcpts::One(r) => std::slice::from_mut(r),
            Rcpts::Many(m) => &mut m.slots,
        }
    }

    /// Heap bytes beyond the inline 24: the box of several, every address.
    pub fn heap_bytes(&self) -> usize {
        let slots = match self {
            Rcpts::One(_) => 0,
            Rcpts::Many(m) => {
                alloc_bytes(std::mem::size_of::<ManyRcpts>())
                    + alloc_bytes(m.slots.len() * std::mem::size_of::<RcptSlot>())
            }
        };
        slots
            + self
                .as_slice()
                .iter()
                .map(|r| str_heap_bytes(&r.address))
                .sum::<usize>()
    }
}

/// Where a queued message's attribution is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttributionAt {
    /// It has none (and Petrel's own DSNs).
    Nowhere,
    /// In [`HeldAttributions`].
    Held,
    /// In its spool record only: read back when an attempt or an event needs it.
    Spool,
}

/// A message with pending recipients. Invariant: 48 bytes plus its recipients' addresses (and
/// their box when more than one); its sender is the shard's interner's, its attribution (when
/// held) in [`HeldAttributions`].
#[derive(Debug)]
pub(super) struct MessageState {
    pub received_unix_ms: u64,
    pub rcpts: Rcpts,
    /// The interned sender's id (`crate::memory::Interner`, "" for the null reverse-path).
    pub sender: u32,
    /// The tenant's index among the shard's queues' tenants (`Queues::tenant_index_of`; 0:
    /// none): its lanes, its egress pool.
    pub tenant: u32,
    /// The egress source it leaves from (its queues' lane; `crate::queue`).
    pub source: u16,
    pub is_dsn: bool,
    pub attribution: AttributionAt,
}
const _: () = assert!(std::mem::size_of::<MessageState>() <= 48);

impl MessageState {
    pub fn new(
        (sender, tenant, source): (u32, u32, u16),
        received_unix_ms: u64,
        is_dsn: bool,
        rcpts: Vec<RcptSlot>,
        attribution: AttributionAt,
    ) -> Self {
        MessageState {
            received_unix_ms,
            rcpts: Rcpts::new(rcpts),
            sender,
            tenant,
            source,
            is_dsn,
            attribution,
        }
    }

    /// Recipients still pending.
    pub fn pending(&self) -> u32 {
        match &self.rcpts {
            Rcpts::One(r) => u32::from(r.state == RcptState::Pending),
            Rcpts::Many(m) => m.pending,
        }
    }

    /// `newly_final` recipients became final (their slots' states are set already).
    pub fn settle(&mut self, newly_final: u32) {
        if let Rcpts::Many(m) = &mut self.rcpts {
            m.pending = m.pending.saturating_sub(newly_final);
        }
    }

    /// Heap bytes of its recipients (see [`Rcpts::heap_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        self.rcpts.heap_bytes()
    }

    pub fn slot(&self, index: u32) -> Option<&RcptSlot> {
        let rcpts = self.rcpts.as_slice();
        let i = rcpts.binary_search_by_key(&index, |r| r.index).ok()?;
        rcpts.get(i)
    }

    pub fn slot_mut(&mut self, index: u32) -> Option<&mut RcptSlot> {
        let rcpts = self.rcpts.as_mut_slice();
        let i = rcpts.binary_search_by_key(&index, |r| r.index).ok()?;
        rcpts.get_mut(i)
    }
}

/// The attributions held in memory, by message id (see the module docs), with the heap bytes
/// they own kept as they come and go.
#[derive(Debug, Default)]
pub(super) struct HeldAttributions {
    map: IdMap<Arc<Attribution>>,
    /// Sum of `Attribution::own_heap_bytes` of the held values.
    own_bytes: usize,
}

impl HeldAttributions {
    pub fn get(&self, id: u64) -> Option<&Arc<Attribution>> {
        self.map.get(id)
    }

    pub fn insert(&mut self, id: u64, a: Arc<Attribution>) {
        self.own_bytes += a.own_heap_bytes();
        if let Some(old) = self.map.insert(id, a) {
            self.own_bytes = self.own_bytes.saturating_sub(old.own_heap_bytes());
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<Arc<Attribution>> {
        let a = self.map.remove(id)?;
        self.own_bytes = self.own_bytes.saturating_sub(a.own_heap_bytes());
        Some(a)
    }

    /// Heap bytes: the table and what the values own (their keys are shared, counted once by
    /// whoever interns them).
    pub fn memory_bytes(&self) -> usize {
        self.map.memory_bytes() + self.own_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::AttributionParts;

    fn slot(index: u32, address: &str) -> RcptSlot {
        RcptSlot::new(index, address.into(), 0)
    }

    #[test]
    fn pending_counts_one_and_many() {
        let mut one = MessageState::new(
            (0, 0, 0),
            1,
            false,
            vec![slot(0, "a@d.test")],
            AttributionAt::Nowhere,
        );
        assert_eq!(one.pending(), 1);
        one.slot_mut(0).expect("slot").state = RcptState::Delivered;
        one.settle(1);
        assert_eq!(one.pending(), 0);
        let mut many = MessageState::new(
            (0, 0, 0),
            1,
            false,
            vec![
                slot(2, "c@d.test"),
                slot(0, "a@d.test"),
                slot(1, "b@d.test"),
            ],
            AttributionAt::Spool,
        );
        assert_eq!(many.pending(), 3);
        assert_eq!(many.slot(2).map(|s| &*s.address), Some("c@d.test"));
        many.slot_mut(1).expect("slot").state = RcptState::Bounced;
        many.settle(1);
        assert_eq!(many.pending(), 2);
    }

    #[test]
    fn attempts_saturate() {
        let mut s = RcptSlot::new(0, "a@d.test".into(), u32::MAX);
        assert_eq!(s.attempts, u16::MAX);
        assert_eq!(s.attempted(), u32::from(u16::MAX));
    }

    #[test]
    fn held_attributions_count_their_bytes() {
        let mut held = HeldAttributions::default();
        let a = Arc::new(Attribution::from(AttributionParts {
            tenant_id: Some("t".into()),
            rfc822_message_id: Some("m@x.test".into()),
            ..AttributionParts::default()
        }));
        held.insert(7, Arc::clone(&a));
        assert!(held.get(7).is_some());
        assert!(held.memory_bytes() >= a.own_heap_bytes());
        assert!(held.remove(7).is_some());
        assert_eq!(held.own_bytes, 0);
        assert!(held.get(7).is_none());
    }
}
