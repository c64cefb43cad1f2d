//! Per-destination queues of one shard: a schedule by due time plus a bounded ready set.
//!
//! Pure: no I/O, no glommio, time passed in as unix milliseconds.
//!
//! Each destination domain has a [`DomainQueue`]: a min-heap of [`Entry`] ordered by due time
//! (the *schedule*) and a FIFO of entries that are due and wait for a connection (the *ready
//! set*, bounded by `ready_max`). A full ready set refuses an entry and hands it back
//! ([`DomainQueue::push_ready`], KumoMTA style), so it simply stays scheduled: memory for
//! waiting work is the 24-byte entry, whatever the backlog. Heap operations are O(log n), so a
//! million queued entries cost 24 MB and a few hundred nanoseconds per push or pop.
//!
//! [`Queues`] holds every queue of a shard by [`DomainId`] (a reusable slot) and a lazy
//! min-heap of wake-ups `(due, queue)`, so the driver finds the due queues without scanning
//! them all: a wake-up is pushed when a queue's earliest due time moves earlier, and stale ones
//! are skipped when popped.
//!
//! A destination domain has one queue per **lane**: a tenant and an egress source (issue 15).
//! Each lane is routed and takes turns in its site's rotation on its own, so one tenant's
//! backlog to a domain never stands in front of another tenant's mail to it, and each lane's
//! connections leave from its source. Admin commands (suspend, resume, retry, drain, stats)
//! act on a domain: all its lanes, and a suspended domain's new lanes start suspended.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

/// One queued recipient: which message, which recipient, when it is due.
///
/// Invariant: 24 bytes (checked below), so a million queued recipients take 24 MB in the
/// schedule. Ordered by due time first (the heap order), then message and recipient, so the
/// recipients of one message due together leave the heap together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// When the next attempt is due, unix ms.
    pub due_unix_ms: u64,
    /// The spool's message id.
    pub message_id: u64,
    /// The recipient's index in the message envelope.
    pub rcpt_index: u32,
    /// When the message arrived, unix seconds (u32 lasts until 2106); for oldest-age statistics.
    pub received_unix_secs: u32,
}

/// Bytes per queued recipient in the schedule and in the ready set.
pub const ENTRY_SIZE_BYTES: usize = 24;
const _: () = assert!(std::mem::size_of::<Entry>() == ENTRY_SIZE_BYTES);

/// Wake-up capacity [`Queues::trim_memory`] never shrinks below.
pub const WAKEUPS_CAPACITY_KEPT: usize = 256;

/// Entries a full schedule grows by at least (see [`DomainQueue::schedule`]).
pub const SCHEDULE_GROWTH_MIN: usize = 4;

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

    /// Shrinks the schedule to its length (plus an eighth) when more than a quarter of it,
    /// and [`SCHEDULE_GROWTH_MIN`] entries, are unused.
    fn trim(&mut self) {
        let (len, cap) = (self.schedule.len(), self.schedule.capacity());
        if cap > len + len / 4 + SCHEDULE_GROWTH_MIN {
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

/// Index of a queue's slot in [`Queues`] (one domain, one lane); valid until it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u32);

/// Statistics of one domain queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStats {
    pub domain: String,
    /// Queued recipients (scheduled + ready).
    pub depth: u64,
    /// Ready recipients.
    pub ready: u64,
    /// Age of the oldest queued message in seconds, 0 when empty.
    pub oldest_age_secs: u64,
    pub suspended: bool,
}

#[derive(Debug)]
struct Slot {
    /// The destination domain; shared with the `by_name` key.
    name: Rc<str>,
    /// The lane: the tenant's index in `Queues::tenants` (0: none) and the egress source.
    lane: Lane,
    /// Due time of the earliest wake-up pending for this domain (`u64::MAX`: none): one is
    /// pushed only when it would fire earlier, so a deferred backlog holds one per domain,
    /// not one per promotion.
    armed: u64,
    queue: DomainQueue,
}

#[path = "queue_lanes.rs"]
mod lanes;
use lanes::{Lane, LaneMap};

/// All domain queues of one shard.
#[derive(Debug)]
pub struct Queues {
    /// Queue slots; `None` = free (listed in `free`).
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// A domain is suspended when its lanes are: they are suspended and resumed together, and
    /// a suspended lane is never removed, so a suspended domain keeps at least one.
    by_name: HashMap<Rc<str>, LaneMap>,
    /// Tenant ids by index (0 is "", no tenant); tenants are few and never forgotten.
    tenants: Vec<Rc<str>>,
    tenant_index: HashMap<Rc<str>, u32>,
    /// Lazy wake-ups `(due unix ms, domain)`; may hold stale or duplicate items, never misses
    /// a domain's earliest due time.
    wakeups: BinaryHeap<Reverse<(u64, DomainId)>>,
    /// Domains with a non-empty ready set and not suspended.
    ready_domains: BTreeSet<DomainId>,
    /// Sum of all depths.
    total: u64,
    /// Bound of each domain's ready set.
    ready_max: usize,
}

impl Queues {
    pub fn new(ready_max: usize) -> Queues {
        Queues {
            slots: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            tenants: vec![Rc::from("")],
            tenant_index: HashMap::from([(Rc::from(""), 0)]),
            wakeups: BinaryHeap::new(),
            ready_domains: BTreeSet::new(),
            total: 0,
            ready_max,
        }
    }

    /// The id of `domain`'s (lowercase) queue without a tenant, from the default source.
    pub fn domain_id(&mut self, domain: &str) -> DomainId {
        self.queue_id(domain, "", 0)
    }

    /// The id of `domain`'s (lowercase) queue for `tenant` ("" for none) and egress `source`,
    /// creating it when needed.
    pub fn queue_id(&mut self, domain: &str, tenant: &str, source: u16) -> DomainId {
        let t = self.tenant_idx(tenant);
        if let Some(id) = self.by_name.get(domain).and_then(|d| d.get(&(t, source))) {
            return *id;
        }
        let (name, suspended) = match self.by_name.get_key_value(domain) {
            Some((k, d)) => (Rc::clone(k), self.lanes_suspended(d)),
            None => (Rc::from(domain), false),
        };
        let mut queue = DomainQueue::new(self.ready_max);
        if suspended {
            queue.suspend();
        }
        let slot = Slot {
            armed: u64::MAX,
            name: Rc::clone(&name),
            lane: (t, source),
            queue,
        };
        let id = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                DomainId(i)
            }
            None => {
                let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some(slot));
                DomainId(i)
            }
        };
        self.by_name
            .entry(name)
            .or_default()
            .insert((t, source), id);
        id
    }

    /// The domain of these lanes is suspended (its lanes are, together).
    fn lanes_suspended(&self, lanes: &LaneMap) -> bool {
        lanes
            .values()
            .first()
            .and_then(|id| self.slot(*id))
            .is_some_and(|s| s.queue.is_suspended())
    }

    fn tenant_idx(&mut self, tenant: &str) -> u32 {
        if tenant.is_empty() {
            return 0;
        }
        if let Some(i) = self.tenant_index.get(tenant) {
            return *i;
        }
        let i = u32::try_from(self.tenants.len()).unwrap_or(u32::MAX);
        let t: Rc<str> = Rc::from(tenant);
        self.tenants.push(Rc::clone(&t));
        self.tenant_index.insert(t, i);
        i
    }

    /// The queues of `domain`, one per lane.
    fn lanes(&self, domain: &str) -> Vec<DomainId> {
        self.by_name
            .get(domain)
            .map(LaneMap::values)
            .unwrap_or_default()
    }

    /// Heap bytes of every domain queue: the slots, their names (twice: slot and lookup
    /// table), schedules and ready sets, the lookup table, the wake-ups and the ready set
    /// (estimated from capacities; see `crate::memory`). O(domains): for gauges.
    pub fn memory_bytes(&self) -> usize {
        use crate::memory::alloc_bytes;
        let table = |cap: usize, bucket: usize| {
            let buckets = if cap < 7 {
                cap + usize::from(cap > 0)
            } else {
                cap / 7 * 8
            };
            buckets * (bucket + 1)
        };
        let slots: usize = self
            .slots
            .iter()
            .flatten()
            .map(|s| alloc_bytes(16 + s.name.len()) + s.queue.memory_bytes())
            .sum();
        slots
            + alloc_bytes(self.slots.capacity() * std::mem::size_of::<Option<Slot>>())
            + alloc_bytes(self.free.capacity() * 4)
            + table(
                self.by_name.capacity(),
                std::mem::size_of::<(Rc<str>, LaneMap)>(),
            )
            + self
                .by_name
                .values()
                .map(|d| match d.capacity() {
                    0 => 0,
                    cap => table(cap, std::mem::size_of::<(Lane, DomainId)>()),
                })
                .sum::<usize>()
            + alloc_bytes(self.wakeups.capacity() * std::mem::size_of::<(u64, DomainId)>())
            + self.ready_domains.len() * 2 * std::mem::size_of::<DomainId>()
    }

    /// Gives back capacity a burst left behind: each domain's schedule beyond a quarter over
    /// its length, the wake-up heap and the lookup table once at most a quarter used. The
    /// shard calls it with its gauges (every few seconds); O(domains).
    pub fn trim_memory(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            slot.queue.trim();
        }
        let (len, cap) = (self.wakeups.len(), self.wakeups.capacity());
        if cap > WAKEUPS_CAPACITY_KEPT && len * 4 < cap {
            self.wakeups.shrink_to((len * 2).max(WAKEUPS_CAPACITY_KEPT));
        }
        if self.by_name.len() * 4 < self.by_name.capacity() {
            self.by_name.shrink_to(self.by_name.len() * 2);
        }
        if self.free.len() * 4 < self.free.capacity() {
            self.free.shrink_to(self.free.len() * 2);
        }
    }

    /// One queue of `domain`, when the domain has any.
    pub fn lookup(&self, domain: &str) -> Option<DomainId> {
        self.by_name
            .get(domain)
            .and_then(|d| d.values().first().copied())
    }

    /// The destination domain of a queue.
    pub fn name(&self, id: DomainId) -> Option<&str> {
        self.slot(id).map(|s| &*s.name)
    }

    /// The tenant of a queue ("" for none).
    pub fn tenant(&self, id: DomainId) -> Option<&str> {
        let slot = self.slot(id)?;
        self.tenants.get(slot.lane.0 as usize).map(|t| &**t)
    }

    /// The index of a queue's tenant among the shard's tenants (0: none).
    pub fn tenant_index(&self, id: DomainId) -> Option<u32> {
        self.slot(id).map(|s| s.lane.0)
    }

    /// The egress source of a queue.
    pub fn source(&self, id: DomainId) -> Option<u16> {
        self.slot(id).map(|s| s.lane.1)
    }

    fn slot(&self, id: DomainId) -> Option<&Slot> {
        self.slots.get(id.0 as usize).and_then(|s| s.as_ref())
    }

    fn slot_mut(&mut self, id: DomainId) -> Option<&mut Slot> {
        self.slots.get_mut(id.0 as usize).and_then(|s| s.as_mut())
    }

    /// Makes sure a wake-up fires for `id` at `due` or earlier.
    fn arm(&mut self, id: DomainId, due: u64) {
        if let Some(slot) = self.slot_mut(id) {
            if due < slot.armed {
                slot.armed = due;
                self.wakeups.push(Reverse((due, id)));
            }
        }
    }

    /// Schedules an entry in a domain's queue. Returns false if the domain does not exist.
    pub fn schedule(&mut self, id: DomainId, entry: Entry) -> bool {
        let Some(slot) = self.slot_mut(id) else {
            return false;
        };
        let earlier = slot.queue.next_due().is_none_or(|d| entry.due_unix_ms < d);
        slot.queue.schedule(entry);
        if earlier {
            self.arm(id, entry.due_unix_ms);
        }
        self.total += 1;
        true
    }

    /// Promotes the due entries of every domain whose wake-up has come.
    pub fn promote_due(&mut self, now_unix_ms: u64) {
        while let Some(Reverse((due, id))) = self.wakeups.peek().copied() {
            if due > now_unix_ms {
                break;
            }
            self.wakeups.pop();
            if let Some(slot) = self.slot_mut(id) {
                if slot.armed <= due {
                    slot.armed = u64::MAX; // this was the earliest: none is pending now
                }
            }
            self.promote_domain(id, now_unix_ms);
        }
    }

    /// Promotes one domain's due entries and re-arms
    /// its wake-up.
    fn promote_domain(&mut self, id: DomainId, now_unix_ms: u64) {
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        slot.queue.promote_due(now_unix_ms);
        let has_ready = slot.queue.ready_len() > 0 && !slot.queue.is_suspended();
        let next = slot.queue.next_due();
        if has_ready {
            self.ready_domains.insert(id);
        }
        // Due entries left behind (ready set full or suspended) are re-promoted on the next
        // pop or on resume, so only a future due time needs a wake-up.
        if let Some(next) = next.filter(|n| *n > now_unix_ms) {
            self.arm(id, next);
        }
    }

    /// The earliest pending wake-up, unix ms.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.wakeups.peek().map(|Reverse((due, _))| *due)
    }

    /// Domains with ready entries (and not suspended).
    pub fn ready_domains(&self) -> impl Iterator<Item = DomainId> + '_ {
        self.ready_domains.iter().copied()
    }

    /// The domain has ready entries and is not suspended.
    pub fn is_ready(&self, id: DomainId) -> bool {
        self.ready_domains.contains(&id)
    }

    pub fn ready_len(&self, id: DomainId) -> usize {
        self.slot(id).map_or(0, |s| s.queue.ready_len())
    }

    /// Takes a batch (same message, at most `max`) from a domain's ready set, then refills the
    /// ready set from the domain's due entries.
    pub fn pop_batch(&mut self, id: DomainId, max: usize, now_unix_ms: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let Some(slot) = self.slot_mut(id) else {
            return out;
        };
        slot.queue.pop_batch(max, &mut out);
        slot.queue.promote_due(now_unix_ms);
        let empty = slot.queue.ready_len() == 0 || slot.queue.is_suspended();
        if empty {
            self.ready_domains.remove(&id);
        }
        self.total = self.total.saturating_sub(out.len() as u64);
        out
    }

    /// Moves a domain's ready entries back to the schedule, due at `due_unix_ms`.
    pub fn unready(&mut self, id: DomainId, due_unix_ms: u64) {
        if let Some(slot) = self.slot_mut(id) {
            slot.queue.unready_all(due_unix_ms);
            self.ready_domains.remove(&id);
            self.arm(id, due_unix_ms);
        }
    }

    /// Suspends a domain: nothing of it is handed out until [`Queues::resume`].
    pub fn suspend(&mut self, domain: &str) -> bool {
        if !self.by_name.contains_key(domain) {
            self.domain_id(domain);
        }
        for id in self.lanes(domain) {
            if let Some(slot) = self.slot_mut(id) {
                slot.queue.suspend();
            }
            self.ready_domains.remove(&id);
        }
        true
    }

    pub fn resume(&mut self, domain: &str, now_unix_ms: u64) -> bool {
        if !self.by_name.contains_key(domain) {
            return false;
        }
        for id in self.lanes(domain) {
            if let Some(slot) = self.slot_mut(id) {
                slot.queue.resume();
            }
            self.promote_domain(id, now_unix_ms);
        }
        true
    }

    /// Makes every queued entry of a domain due now.
    pub fn retry_now(&mut self, domain: &str, now_unix_ms: u64) -> bool {
        if !self.by_name.contains_key(domain) {
            return false;
        }
        for id in self.lanes(domain) {
            if let Some(slot) = self.slot_mut(id) {
                slot.queue.retry_now(now_unix_ms);
            }
            self.promote_domain(id, now_unix_ms);
        }
        true
    }

    /// Removes and returns every entry of a domain (to bounce them).
    pub fn drain(&mut self, domain: &str) -> Vec<Entry> {
        self.drain_up_to(domain, usize::MAX)
    }

    /// Removes and returns up to `max` entries of a domain, whole lanes first (the rest stay).
    pub fn drain_up_to(&mut self, domain: &str, max: usize) -> Vec<Entry> {
        let mut all = Vec::new();
        for id in self.lanes(domain) {
            let room = max.saturating_sub(all.len());
            if room == 0 {
                break;
            }
            let Some(slot) = self.slot_mut(id) else {
                continue;
            };
            let mut taken = slot.queue.drain_all();
            if taken.len() > room {
                for e in taken.split_off(room) {
                    slot.queue.schedule(e);
                }
                let next = slot.queue.next_due();
                if let Some(due) = next {
                    self.arm(id, due);
                }
            } else {
                self.ready_domains.remove(&id);
            }
            all.extend(taken);
        }
        self.total = self.total.saturating_sub(all.len() as u64);
        all
    }

    /// Removes and returns every queued entry of the messages in `ids`, in every domain.
    pub fn extract_messages(&mut self, ids: &std::collections::HashSet<u64>) -> Vec<Entry> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let taken = slot.queue.extract(ids);
            if taken.is_empty() {
                continue;
            }
            if slot.queue.ready_len() == 0 {
                self.ready_domains
                    .remove(&DomainId(u32::try_from(i).unwrap_or(u32::MAX)));
            }
            out.extend(taken);
        }
        self.total = self.total.saturating_sub(out.len() as u64);
        out
    }

    /// Removes a domain whose queue is empty and not suspended (the caller knows no session
    /// uses it). Returns whether it was removed.
    pub fn remove_if_idle(&mut self, id: DomainId) -> bool {
        let removable = self
            .slot(id)
            .is_some_and(|s| s.queue.depth() == 0 && !s.queue.is_suspended());
        if removable {
            if let Some(slot) = self.slots[id.0 as usize].take() {
                if let Some(d) = self.by_name.get_mut(&slot.name) {
                    d.remove(&slot.lane);
                    if d.is_empty() {
                        self.by_name.remove(&slot.name);
                    }
                }
            }
            self.free.push(id.0);
            self.ready_domains.remove(&id);
        }
        removable
    }

    /// Queued recipients on this shard.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Domains currently held.
    pub fn domains(&self) -> usize {
        self.by_name.len()
    }

    /// Statistics of every domain (its lanes together), sorted by name (O(entries): for admin
    /// and metrics).
    pub fn stats(&self, now_unix_ms: u64) -> Vec<DomainStats> {
        let now_secs = now_unix_ms / 1000;
        let mut out: Vec<DomainStats> = self
            .by_name
            .iter()
            .map(|(name, d)| {
                let ids = d.values();
                let lanes = || ids.iter().filter_map(|id| self.slot(*id));
                let oldest = lanes()
                    .filter_map(|s| s.queue.oldest_received_unix_secs())
                    .min();
                DomainStats {
                    domain: name.to_string(),
                    depth: lanes().map(|s| s.queue.depth() as u64).sum(),
                    ready: lanes().map(|s| s.queue.ready_len() as u64).sum(),
                    oldest_age_secs: oldest.map_or(0, |r| now_secs.saturating_sub(u64::from(r))),
                    suspended: self.lanes_suspended(d),
                }
            })
            .collect();
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        out
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
