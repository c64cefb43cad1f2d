//! What the sites hold per domain, kept small (issue 17): a lane that waits long for its
//! retries lets go of its routing state, and the tables give back what a burst left.

use super::{DomainInfo, Routing, Site, SiteId, SiteKey, Sites};
use crate::queue::DomainId;
use crate::shard::{Inner, SpoolAccess, State};

impl Sites {
    /// Gives back the domains table's capacity once at most a quarter of it is used (a
    /// deferred backlog's lanes let go of their routing state). With the gauges.
    pub fn trim_memory(&mut self) {
        if self.domains.len() * 4 < self.domains.capacity() {
            self.domains.shrink_to(self.domains.len() * 2);
        }
    }

    /// Heap bytes of the domains' routing state and the sites' tables (not what a site holds
    /// beyond its entry: sites are few), estimated as `crate::memory` does.
    pub fn memory_bytes(&self) -> usize {
        use crate::memory::table_bytes;
        table_bytes(
            self.domains.capacity(),
            std::mem::size_of::<(DomainId, DomainInfo)>(),
        ) + table_bytes(self.sites.capacity(), std::mem::size_of::<(SiteId, Site)>())
            + table_bytes(
                self.by_key.capacity(),
                std::mem::size_of::<(SiteKey, SiteId)>(),
            )
    }
}

impl<S: SpoolAccess + 'static> Inner<S> {
    /// A lane with nothing ready whose next entry is due after `route_recheck_ms` would be
    /// routed again by then anyway: it keeps no routing state while it waits (issue 17: a
    /// deferred backlog to a hundred thousand domains held a `DomainInfo` for each).
    pub(super) fn forget_routing_if_waiting(&self, st: &mut State, id: DomainId, now: u64) {
        let idle =
            st.sites.domains.get(&id).is_some_and(|i| {
                !i.in_rotation && i.inflight == 0 && i.routing != Routing::Pending
            });
        if !idle || st.queues.ready_len(id) > 0 {
            return;
        }
        let far = st
            .queues
            .next_due(id)
            .is_some_and(|due| due >= now.saturating_add(self.cfg.route_recheck_ms));
        if !far {
            return;
        }
        if let Some(DomainInfo {
            routing: Routing::Routed { site, .. },
            ..
        }) = st.sites.domains.remove(&id)
        {
            st.sites.unmap(site);
        }
    }
}
