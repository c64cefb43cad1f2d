//! The queue of one destination domain (one lane): a schedule by due time and a bounded
//! ready set (see `queue.rs`). Pure.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::{Entry, ENTRY_SIZE_BYTES, SCHEDULE_GROWTH_MIN};

/// The queue of one destination domain.
#[derive(Debug)]
pub struct DomainQueue {
    /// Entries not yet due or not yet admitted to `ready` (min-heap by due time).
    schedule: BinaryHeap<Reverse<Entry>>,
    /// Due entries waiting for a delivery session; at most `ready_max`. None while empty (a
    /// domain waiting for its next retry keeps no ready set: 8 bytes, not 32 plus capacity).
    #[allow(clippy::box_collection)] // on purpose: 8 bytes per waiting domain instead of 32
    ready: Option<Box<VecDeque<Entry>>>,
    /// Bound of `ready`; at least 1.
    ready_max: u32,
    /// While true, nothing is promoted to or taken from `ready`.
    suspended: bool,
}
const _: () = assert!(std::mem::size_of::<DomainQueue>() <= 40);

impl DomainQueue {
    /// An empty queue whose ready set holds at most `ready_max` (at least 1) entries.
    pub fn new(ready_max: usize) -> DomainQueue {
        DomainQueue {
            schedule: BinaryHeap::new(),
            ready: None,
            ready_max: u32::try_from(ready_max).unwrap_or(u32::MAX).max(1),
            suspended: false,
        }
    }

    /// Adds an entry to the schedule. A full schedule grows by a quarter (at least
    /// [`SCHEDULE_GROWTH_MIN`]), not double: still amortised O(1), with at most a quarter of
    /// it unused where a deferred backlog sits for hours.
    pub fn schedule(&mut self, entry: Entry) {
        let len = self.schedule.len();
        if len == self.schedule.capacity() {
            self.schedule
                .reserve_exact((len / 4).max(SCHEDULE_GROWTH_MIN));
        }
        self.schedule.push(Reverse(entry));
    }

    /// Admits an entry to the ready set, or hands it back when the set is full.
    pub fn push_ready(&mut self, entry: Entry) -> Result<(), Entry> {
        if self.ready_len() >= self.ready_max as usize {
            return Err(entry);
        }
        self.ready.get_or_insert_with(Box::default).push_back(entry);
        Ok(())
    }

    /// Moves due entries (due <= `now_unix_ms`) from the schedule to the ready set while there
    /// is room. Returns how many moved; none while suspended.
    pub fn promote_due(&mut self, now_unix_ms: u64) -> usize {
        if self.suspended {
            return 0;
        }
        let mut moved = 0;
        while let Some(Reverse(top)) = self.schedule.peek() {
            if top.due_unix_ms > now_unix_ms {
                break;
            }
            let entry = *top;
            match self.push_ready(entry) {
                Ok(()) => {
                    self.schedule.pop();
                    moved += 1;
                }
                Err(_) => break, // full: it stays scheduled
            }
        }
        self.release_if_empty();
        moved
    }

    /// Takes the next ready entry; none while suspended.
    pub fn pop_ready(&mut self) -> Option<Entry> {
        if self.suspended {
            return None;
        }
        let e = self.ready.as_mut().and_then(|r| r.pop_front());
        self.release_if_empty();
        e
    }

    /// An emptied ready set or schedule gives its memory back: a domain waiting for its next
    /// retry holds its entries once, not a ready set's worth of capacity too (issue 17).
    fn release_if_empty(&mut self) {
        if self.ready.as_ref().is_some_and(|r| r.is_empty()) {
            self.ready = None;
        }
        if self.schedule.is_empty() && self.schedule.capacity() > 0 {
            self.schedule = BinaryHeap::new();
        }
    }

    /// Takes up to `max` ready entries of the same message as the first one, into `out`.
    pub fn pop_batch(&mut self, max: usize, out: &mut Vec<Entry>) {
        let Some(first) = self.pop_ready() else {
            return;
        };
        out.push(first);
        while out.len() < max {
            match self.ready.as_mut().and_then(|r| r.front().copied()) {
                Some(e) if e.message_id == first.message_id => {
                    out.push(e);
                    self.ready.as_mut().and_then(|r| r.pop_front());
                }
                _ => break,
            }
        }
        self.release_if_empty();
    }

    /// Moves every ready entry back to the schedule, due at `due_unix_ms`.
    pub fn unready_all(&mut self, due_unix_ms: u64) {
        while let Some(mut e) = self.ready.as_mut().and_then(|r| r.pop_front()) {
            e.due_unix_ms = due_unix_ms;
            self.schedule.push(Reverse(e));
        }
        self.release_if_empty();
    }

    /// The earliest due time in the schedule.
    pub fn next_due(&self) -> Option<u64> {
        self.schedule.peek().map(|Reverse(e)| e.due_unix_ms)
    }

    pub fn suspend(&mut self) {
        self.suspended = true;
    }

    pub fn resume(&mut self) {
        self.suspended = false;
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// Makes every scheduled entry due at `now_unix_ms` (O(n)).
    pub fn retry_now(&mut self, now_unix_ms: u64) {
        let entries = std::mem::take(&mut self.schedule).into_vec();
        self.schedule = entries
            .into_iter()
            .map(|Reverse(mut e)| {
                e.due_unix_ms = e.due_unix_ms.min(now_unix_ms);
                Reverse(e)
            })
            .collect();
    }

    /// Removes and returns every entry, ready ones first.
    pub fn drain_all(&mut self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self
            .ready
            .take()
            .map_or_else(Vec::new, |r| r.into_iter().collect());
        all.extend(std::mem::take(&mut self.schedule).into_iter().map(|r| r.0));
        all
    }

    /// Removes and returns the entries of the messages in `ids` (a deleted tenant's).
    pub fn extract(&mut self, ids: &std::collections::HashSet<u64>) -> Vec<Entry> {
        let mut out = Vec::new();
        if let Some(ready) = self.ready.as_mut() {
            ready.retain(|e| {
                let take = ids.contains(&e.message_id);
                if take {
                    out.push(*e);
                }
                !take
            });
        }
        let before = self.schedule.len();
        let mut kept = Vec::with_capacity(before);
        for Reverse(e) in std::mem::take(&mut self.schedule).into_vec() {
            if ids.contains(&e.message_id) {
                out.push(e);
            } else {
                kept.push(Reverse(e));
            }
        }
        self.schedule = BinaryHeap::from(kept);
        self.release_if_empty();
        out
    }

    /// Queued entries, scheduled and ready.
    pub fn depth(&self) -> usize {
        self.schedule.len() + self.ready_len()
    }

    pub fn ready_len(&self) -> usize {
        self.ready.as_ref().map_or(0, |r| r.len())
    }

    /// Shrinks the schedule of a waiting queue (no ready set: its entries wait for retries,
    /// often for hours) to its length, and any other's to its length plus an eighth when more
    /// than a quarter of it, and [`SCHEDULE_GROWTH_MIN`] entries, are unused.
    pub(super) fn trim(&mut self) {
        let (len, cap) = (self.schedule.len(), self.schedule.capacity());
        if self.ready.is_none() {
            if cap > len {
                self.schedule.shrink_to_fit();
            }
        } else if cap > len + len / 4 + SCHEDULE_GROWTH_MIN {
            self.schedule.shrink_to(len + len / 8);
        }
    }

    /// Heap bytes: the schedule's capacity, the ready set's box and capacity.
    pub fn memory_bytes(&self) -> usize {
        use crate::memory::alloc_bytes;
        alloc_bytes(self.schedule.capacity() * ENTRY_SIZE_BYTES)
            + self.ready.as_ref().map_or(0, |r| {
                alloc_bytes(std::mem::size_of::<VecDeque<Entry>>())
                    + alloc_bytes(r.capacity() * ENTRY_SIZE_BYTES)
            })
    }

    /// The arrival time of the oldest queued message, unix seconds (O(n) scan: for statistics).
    pub fn oldest_received_unix_secs(&self) -> Option<u32> {
        let scheduled = self.schedule.iter().map(|r| r.0.received_unix_secs);
        let ready = self
            .ready
            .iter()
            .flat_map(|r| r.iter())
            .map(|e| e.received_unix_secs);
        scheduled.chain(ready).min()
    }
}
