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
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::rc::Rc;

use hashbrown::HashTable;

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

/// Slots the table of queues grows by at least (it grows by a quarter).
pub const SLOTS_GROWTH_MIN: usize = 64;

/// Entries a full schedule grows by at least (see [`DomainQueue::schedule`]).
pub const SCHEDULE_GROWTH_MIN: usize = 4;

#[path = "queue_domain.rs"]
mod domain;
pub use domain::DomainQueue;

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
    /// The destination domain; shared by the domain's lanes.
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
    /// Each domain's lanes, found by the domain's name (hashed with `names`; the name is the
    /// lanes' slots'): 16 bytes an entry, where a map keyed by the name took twice that. Never
    /// empty. A domain is suspended when its lanes are: they are suspended and resumed
    /// together, and a suspended lane is never removed, so a suspended domain keeps at least one.
    by_name: HashTable<LaneMap>,
    names: RandomState,
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
            by_name: HashTable::new(),
            names: RandomState::new(),
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
        let t = self.tenant_index_of(tenant);
        self.queue_id_at(domain, t, source)
    }

    /// [`Queues::queue_id`] with the tenant's index ([`Queues::tenant_index_of`]).
    pub fn queue_id_at(&mut self, domain: &str, t: u32, source: u16) -> DomainId {
        let lanes = self.lanes_of(domain);
        if let Some(id) = lanes.and_then(|d| d.get(&(t, source))) {
            return *id;
        }
        let (name, suspended) = match lanes {
            Some(d) => (
                d.first()
                    .and_then(|id| self.slot(id))
                    .map_or_else(|| Rc::from(domain), |s| Rc::clone(&s.name)),
                self.lanes_suspended(d),
            ),
            None => (Rc::from(domain), false),
        };
        let mut queue = DomainQueue::new(self.ready_max);
        if suspended {
            queue.suspend();
        }
        let slot = Slot {
            armed: u64::MAX,
            name,
            lane: (t, source),
            queue,
        };
        let id = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                DomainId(i)
            }
            None => {
                // By a quarter, not double: a slot is 72 bytes and a shard may hold a hundred
                // thousand domains (issue 17).
                let len = self.slots.len();
                if len == self.slots.capacity() {
                    self.slots.reserve_exact((len / 4).max(SLOTS_GROWTH_MIN));
                }
                let i = u32::try_from(len).unwrap_or(u32::MAX);
                self.slots.push(Some(slot));
                DomainId(i)
            }
        };
        let hash = self.names.hash_one(domain);
        let (slots, names) = (&self.slots, &self.names);
        match self
            .by_name
            .find_mut(hash, |d| lanes_name(slots, d) == Some(domain))
        {
            Some(d) => d.insert((t, source), id),
            None => {
                let mut lanes = LaneMap::default();
                lanes.insert((t, source), id);
                self.by_name.insert_unique(hash, lanes, |d| {
                    names.hash_one(lanes_name(slots, d).unwrap_or_default())
                });
            }
        }
        id
    }

    /// The lanes of `domain`, when it has any.
    fn lanes_of(&self, domain: &str) -> Option<&LaneMap> {
        let hash = self.names.hash_one(domain);
        self.by_name
            .find(hash, |d| lanes_name(&self.slots, d) == Some(domain))
    }

    /// The domain of these lanes is suspended (its lanes are, together).
    fn lanes_suspended(&self, lanes: &LaneMap) -> bool {
        lanes
            .first()
            .and_then(|id| self.slot(id))
            .is_some_and(|s| s.queue.is_suspended())
    }

    /// The index of `tenant` ("" for none: 0) among the shard's tenants, given on first use;
    /// messages keep it instead of the name (tenants are few and never forgotten).
    pub fn tenant_index_of(&mut self, tenant: &str) -> u32 {
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
        self.lanes_of(domain)
            .map(LaneMap::values)
            .unwrap_or_default()
    }

    /// Heap bytes of every domain queue: the slots, their names (once per domain: its lanes
    /// share it), schedules and ready sets, the lookup table, the wake-ups and the ready set
    /// (estimated from capacities; see `crate::memory`). O(domains): for gauges.
    pub fn memory_bytes(&self) -> usize {
        use crate::memory::{alloc_bytes, rc_alloc_bytes, table_bytes};
        let slots: usize = self
            .slots
            .iter()
            .flatten()
            .map(|s| {
                // A name shared by several lanes is counted by one of them.
                let name = if Rc::strong_count(&s.name) == 1 || self.owns_name(s) {
                    rc_alloc_bytes(s.name.len())
                } else {
                    0
                };
                name + s.queue.memory_bytes()
            })
            .sum();
        slots
            + alloc_bytes(self.slots.capacity() * std::mem::size_of::<Option<Slot>>())
            + alloc_bytes(self.free.capacity() * std::mem::size_of::<u32>())
            + table_bytes(self.by_name.capacity(), std::mem::size_of::<LaneMap>())
            + self
                .by_name
                .iter()
                .map(|d| match d.capacity() {
                    0 => 0,
                    cap => table_bytes(cap, std::mem::size_of::<(Lane, DomainId)>()),
                })
                .sum::<usize>()
            + alloc_bytes(self.wakeups.capacity() * std::mem::size_of::<(u64, DomainId)>())
            + self.ready_domains.len() * 2 * std::mem::size_of::<DomainId>()
    }

    /// One wake-up per queue with a schedule, at its earliest due time (what each queue's
    /// `armed` then says); `scheduled` of them.
    fn rebuild_wakeups(&mut self, scheduled: usize) {
        let mut wakeups = Vec::with_capacity(scheduled);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            slot.armed = u64::MAX;
            if let Some(due) = slot.queue.next_due() {
                slot.armed = due;
                wakeups.push(Reverse((
                    due,
                    DomainId(u32::try_from(i).unwrap_or(u32::MAX)),
                )));
            }
        }
        self.wakeups = BinaryHeap::from(wakeups);
    }

    /// Whether `slot` is its domain's first lane (the one that counts the shared name).
    fn owns_name(&self, slot: &Slot) -> bool {
        self.lanes_of(&slot.name)
            .and_then(LaneMap::first)
            .and_then(|id| self.slot(id))
            .is_some_and(|first| std::ptr::eq(first, slot))
    }

    /// Gives back capacity a burst left behind: each domain's schedule beyond a quarter over
    /// its length (a waiting one's to its length), the wake-up heap and the lookup table once
    /// at most a quarter used; and rebuilds the wake-ups with one per queue when stale ones
    /// pile up. The shard calls it with its gauges (every few seconds); O(domains).
    pub fn trim_memory(&mut self) {
        let mut scheduled = 0usize;
        for slot in self.slots.iter_mut().flatten() {
            slot.queue.trim();
            scheduled += usize::from(slot.queue.next_due().is_some());
        }
        // A queue's earliest wake-up fires, and its next due time is armed again while the
        // one pushed for it earlier still waits in the heap: a deferred backlog filled over
        // time holds one per arrival (five per domain in issue 17's benchmark), not one.
        if self.wakeups.len() > scheduled + scheduled / 4 + WAKEUPS_CAPACITY_KEPT {
            self.rebuild_wakeups(scheduled);
        }
        let (len, cap) = (self.wakeups.len(), self.wakeups.capacity());
        if cap > WAKEUPS_CAPACITY_KEPT && len * 4 < cap {
            self.wakeups.shrink_to((len * 2).max(WAKEUPS_CAPACITY_KEPT));
        }
        if self.by_name.len() * 4 < self.by_name.capacity() {
            let (slots, names) = (&self.slots, &self.names);
            self.by_name.shrink_to(self.by_name.len() * 2, |d| {
                names.hash_one(lanes_name(slots, d).unwrap_or_default())
            });
        }
        if self.free.len() * 4 < self.free.capacity() {
            self.free.shrink_to(self.free.len() * 2);
        }
    }

    /// One queue of `domain`, when the domain has any.
    pub fn lookup(&self, domain: &str) -> Option<DomainId> {
        self.lanes_of(domain).and_then(LaneMap::first)
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

    /// The tenant of index `t` ("" for none).
    pub fn tenant_name(&self, t: u32) -> &str {
        self.tenants.get(t as usize).map_or("", |t| &**t)
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

    /// The earliest due time in a queue's schedule.
    pub fn next_due(&self, id: DomainId) -> Option<u64> {
        self.slot(id).and_then(|s| s.queue.next_due())
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
        if self.lanes_of(domain).is_none() {
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
        if self.lanes_of(domain).is_none() {
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
        if self.lanes_of(domain).is_none() {
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
            // Out of its domain's lanes first: the table finds a domain by its lanes' names.
            if let Some(slot) = self.slot(id) {
                let (name, lane) = (Rc::clone(&slot.name), slot.lane);
                let hash = self.names.hash_one(&*name);
                let slots = &self.slots;
                if let Ok(mut d) = self
                    .by_name
                    .find_entry(hash, |d| lanes_name(slots, d) == Some(&*name))
                {
                    d.get_mut().remove(&lane);
                    if d.get().is_empty() {
                        d.remove();
                    }
                }
            }
            self.slots[id.0 as usize] = None;
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
            .map(|d| {
                let ids = d.values();
                let lanes = || ids.iter().filter_map(|id| self.slot(*id));
                let oldest = lanes()
                    .filter_map(|s| s.queue.oldest_received_unix_secs())
                    .min();
                DomainStats {
                    domain: lanes_name(&self.slots, d).unwrap_or_default().to_string(),
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

/// The domain name of `lanes` (any lane's slot's: they share it).
fn lanes_name<'a>(slots: &'a [Option<Slot>], lanes: &LaneMap) -> Option<&'a str> {
    let id = lanes.first()?;
    slots.get(id.0 as usize)?.as_ref().map(|s| &*s.name)
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
