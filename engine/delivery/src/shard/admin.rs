//! The queue admin commands (`petrel queue ...`) applied to a shard's state.

use super::{purge, AdminCommand, AdminReply, DomainState, DomainStatus, State, ADMIN_BOUNCES_MAX};

pub(super) fn apply(st: &mut State, cmd: AdminCommand, now: u64) -> AdminReply {
    let done = |domain: String, recipients: u64| AdminReply::Done { domain, recipients };
    let depth = |st: &State, d: &str| {
        st.queues
            .stats(now)
            .into_iter()
            .find(|s| s.domain == d)
            .map_or(0, |s| s.depth)
    };
    match cmd {
        AdminCommand::Ls => AdminReply::Domains(
            st.queues
                .stats(now)
                .into_iter()
                .map(|s| DomainStatus {
                    domain: s.domain,
                    depth: s.depth,
                    oldest_age_secs: s.oldest_age_secs,
                    state: if s.suspended {
                        DomainState::Suspended
                    } else {
                        DomainState::Active
                    },
                })
                .collect(),
        ),
        AdminCommand::Suspend(d) => {
            let d = d.to_ascii_lowercase();
            st.queues.suspend(&d);
            let n = depth(st, &d);
            done(d, n)
        }
        AdminCommand::Resume(d) => {
            let d = d.to_ascii_lowercase();
            if !st.queues.resume(&d, now) {
                return AdminReply::UnknownDomain(d);
            }
            let n = depth(st, &d);
            done(d, n)
        }
        AdminCommand::Retry(d) => {
            let d = d.to_ascii_lowercase();
            if !st.queues.retry_now(&d, now) {
                return AdminReply::UnknownDomain(d);
            }
            let n = depth(st, &d);
            done(d, n)
        }
        AdminCommand::Bounce(d) => {
            let d = d.to_ascii_lowercase();
            if st.queues.lookup(&d).is_none() {
                return AdminReply::UnknownDomain(d);
            }
            // Over the bound, the rest stays queued for a later Bounce.
            let room = ADMIN_BOUNCES_MAX.saturating_sub(st.admin_bounces.len());
            let drained = st.queues.drain_up_to(&d, room);
            let n = drained.len() as u64;
            st.admin_bounces.extend(drained);
            done(d, n)
        }
        AdminCommand::PurgeTenants(purges) => purge::purge_tenants(st, &purges),
    }
}
