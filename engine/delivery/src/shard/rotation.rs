//! A site's ready queue ([`Rotation`]): tenants take turns, and within a tenant's turns its
//! lanes (one per destination domain and source) take theirs. A tenant with a backlog to a
//! thousand domains at a site therefore gets the same turns as a tenant sending to one, not a
//! thousand times as many. Pure.

use std::collections::{HashMap, VecDeque};

use crate::queue::DomainId;

/// The ready lanes of one site, by tenant (a tenant's index in the shard's queues).
#[derive(Debug, Default)]
pub(super) struct Rotation {
    /// Tenants with lanes here, in turn order; each once.
    tenants: VecDeque<u32>,
    /// Each tenant's lanes, in turn order; each lane once, never empty.
    lanes: HashMap<u32, VecDeque<DomainId>>,
    len: usize,
}

impl Rotation {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds lane `id` of `tenant` after the tenant's other lanes (a new tenant's turn comes
    /// after the others').
    pub fn push_back(&mut self, tenant: u32, id: DomainId) {
        let q = self.lanes.entry(tenant).or_default();
        if q.is_empty() {
            self.tenants.push_back(tenant);
        }
        q.push_back(id);
        self.len += 1;
    }

    /// The next lane: the first of the tenant whose turn it is, taken off; that tenant's turn
    /// passes (it goes to the back while it has lanes left).
    pub fn pop_front(&mut self) -> Option<(u32, DomainId)> {
        let tenant = self.tenants.pop_front()?;
        let q = self.lanes.get_mut(&tenant)?;
        let id = q.pop_front()?;
        if q.is_empty() {
            self.lanes.remove(&tenant);
        } else {
            self.tenants.push_back(tenant);
        }
        self.len -= 1;
        Some((tenant, id))
    }

    /// Puts lane `id` of `tenant` back first, and the tenant's turn first again (a weighted
    /// turn going on).
    pub fn push_front(&mut self, tenant: u32, id: DomainId) {
        let q = self.lanes.entry(tenant).or_default();
        let was_empty = q.is_empty();
        q.push_front(id);
        self.len += 1;
        if !was_empty {
            // `pop_front` sent the tenant to the back: it is there, or further up.
            if let Some(at) = self.tenants.iter().rposition(|t| *t == tenant) {
                self.tenants.remove(at);
            }
        }
        self.tenants.push_front(tenant);
    }

    /// Takes lane `id` of `tenant` out, wherever it is.
    pub fn remove(&mut self, tenant: u32, id: DomainId) {
        let Some(q) = self.lanes.get_mut(&tenant) else {
            return;
        };
        let before = q.len();
        q.retain(|d| *d != id);
        self.len -= before - q.len();
        if q.is_empty() {
            self.lanes.remove(&tenant);
            self.tenants.retain(|t| *t != tenant);
        }
    }

    /// The lane whose turn is next.
    pub fn front(&self) -> Option<DomainId> {
        let tenant = self.tenants.front()?;
        self.lanes.get(tenant)?.front().copied()
    }

    /// Every lane, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = DomainId> + '_ {
        self.lanes.values().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Rotation) -> Vec<(u32, u32)> {
        std::iter::from_fn(|| r.pop_front().map(|(t, d)| (t, d.0))).collect()
    }

    #[test]
    fn tenants_take_turns_and_their_lanes_take_theirs() {
        let mut r = Rotation::default();
        for d in 0..4 {
            r.push_back(1, DomainId(d)); // tenant 1: four domains
        }
        r.push_back(2, DomainId(10)); // tenant 2: one
        assert_eq!(r.front(), Some(DomainId(0)));
        assert_eq!(
            drain(&mut r),
            [(1, 0), (2, 10), (1, 1), (1, 2), (1, 3)],
            "tenant 2 does not wait behind tenant 1's four"
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_lane_put_back_keeps_its_tenants_turn_and_remove_takes_it_out() {
        let mut r = Rotation::default();
        r.push_back(1, DomainId(0));
        r.push_back(1, DomainId(1));
        r.push_back(2, DomainId(10));
        let (t, d) = r.pop_front().unwrap();
        r.push_front(t, d); // a weighted turn goes on
        assert_eq!(r.front(), Some(DomainId(0)));
        r.remove(1, DomainId(0));
        assert_eq!(r.iter().count(), 2);
        assert_eq!(drain(&mut r), [(1, 1), (2, 10)]);
        r.push_back(3, DomainId(5));
        r.remove(3, DomainId(5));
        assert!(r.is_empty());
        assert_eq!(r.pop_front(), None);
    }
}
