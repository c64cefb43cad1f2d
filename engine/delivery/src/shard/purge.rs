//! Deleted tenants' queued mail (issue 16): the shard's half of [`super::AdminCommand::PurgeTenants`].

use std::collections::{HashMap, HashSet};

use super::{AdminReply, State, TenantPurge};

/// Takes the queued recipients of deleted tenants' messages (see [`super::AdminCommand::PurgeTenants`]).
/// In-flight recipients finish their attempt; a retry puts them back in a queue, where the
/// next call takes them.
pub(super) fn purge_tenants(st: &mut State, purges: &[TenantPurge]) -> AdminReply {
    let mode: HashMap<&str, bool> = purges
        .iter()
        .map(|p| (p.tenant_id.as_str(), p.bounce))
        .collect();
    let mut bounce_ids = HashSet::new();
    let mut drop_ids = HashSet::new();
    let mut remaining = HashSet::new();
    for (id, m) in st.messages.iter() {
        let t = st.queues.tenant_name(m.tenant);
        if t.is_empty() {
            continue;
        }
        if let Some(bounce) = mode.get(t) {
            remaining.insert(t.to_string());
            if *bounce {
                bounce_ids.insert(id);
            } else {
                drop_ids.insert(id);
            }
        }
    }
    let bounced = st.queues.extract_messages(&bounce_ids);
    let dropped = st.queues.extract_messages(&drop_ids);
    let recipients = (bounced.len() + dropped.len()) as u64;
    st.admin_bounces.extend(bounced);
    st.admin_drops.extend(dropped);
    let mut remaining: Vec<String> = remaining.into_iter().collect();
    remaining.sort();
    AdminReply::Purged {
        recipients,
        remaining,
    }
}
