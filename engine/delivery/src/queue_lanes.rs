//! The lanes of a domain's queues (`queue.rs`): one queue per tenant and egress source.

use std::collections::HashMap;

use super::DomainId;

/// A queue's lane within its domain: tenant index and egress source.
pub(super) type Lane = (u32, u16);

/// A domain's queues by lane. Most domains have one lane (one tenant, one source), so that
/// one is held inline: a table per domain would cost more than the domain's queued entries.
#[derive(Debug, Default)]
pub(super) enum LaneMap {
    #[default]
    Empty,
    One(Lane, DomainId),
    // Boxed on purpose: inline, the table's 48 bytes would be paid by every one-lane domain.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Lane, DomainId>>),
}

impl LaneMap {
    pub fn get(&self, lane: &Lane) -> Option<&DomainId> {
        match self {
            LaneMap::Empty => None,
            LaneMap::One(l, id) => (l == lane).then_some(id),
            LaneMap::Many(m) => m.get(lane),
        }
    }

    pub fn insert(&mut self, lane: Lane, id: DomainId) {
        match self {
            LaneMap::Empty => *self = LaneMap::One(lane, id),
            LaneMap::One(l, i) if *l == lane => *i = id,
            LaneMap::One(l, i) => {
                *self = LaneMap::Many(Box::new(HashMap::from([(*l, *i), (lane, id)])))
            }
            LaneMap::Many(m) => {
                m.insert(lane, id);
            }
        }
    }

    pub fn remove(&mut self, lane: &Lane) {
        match self {
            LaneMap::One(l, _) if l == lane => *self = LaneMap::Empty,
            LaneMap::Many(m) => {
                m.remove(lane);
                if m.is_empty() {
                    *self = LaneMap::Empty;
                }
            }
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, LaneMap::Empty)
    }

    /// One lane's queue (any: they share the domain).
    pub fn first(&self) -> Option<DomainId> {
        match self {
            LaneMap::Empty => None,
            LaneMap::One(_, id) => Some(*id),
            LaneMap::Many(m) => m.values().next().copied(),
        }
    }

    pub fn values(&self) -> Vec<DomainId> {
        match self {
            LaneMap::Empty => Vec::new(),
            LaneMap::One(_, id) => vec![*id],
            LaneMap::Many(m) => m.values().copied().collect(),
        }
    }

    /// Heap capacity in entries (0 inline).
    pub fn capacity(&self) -> usize {
        match self {
            LaneMap::Many(m) => m.capacity(),
            _ => 0,
        }
    }
}
