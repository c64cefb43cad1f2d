//! Deleted tenants on this engine (issue 16). The policy lists the tenants deleted lately
//! (`PolicySnapshot::deleted_tenants`); for each one not yet handled in this process, every
//! shard takes its queued mail out of the queues (bounced with DSNs or dropped, as the deleting
//! owner chose) until no message of it is left on the shard (in-flight attempts finish first),
//! then its data keys are destroyed: whatever it left in spool segments or backups is
//! unreadable, and the keyring refuses to make it a new one (a message that arrives late is
//! refused with 451, not sealed). A restart handles the list again: purging a tenant with
//! nothing queued is a scan of each shard's message table, and recovery already dropped
//! (shredded) the messages whose keys were destroyed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_delivery::{AdminCommand, AdminReply, TenantPurge};

use crate::admin::{AdminRequest, SHARD_ANSWER_TIMEOUT};

/// How often the policy's deleted tenants are looked at.
pub const ERASURE_CHECK_MS: u64 = 1_000;
/// Longest wait for a deleted tenant's in-flight messages before its keys are destroyed
/// anyway (an attempt that still runs then fails to update its sealed record, and recovery
/// drops the message).
pub const ERASURE_WAIT_MAX_SECS: u64 = 600;

/// Asks every shard to purge `purges`; returns the tenants some shard still holds mail of
/// (every tenant when a shard does not answer).
async fn purge_round(
    shards: &[async_channel::Sender<AdminRequest>],
    purges: &[TenantPurge],
) -> (u64, HashSet<String>) {
    let everyone = || purges.iter().map(|p| p.tenant_id.clone()).collect();
    let mut taken = 0;
    let mut remaining = HashSet::new();
    for tx in shards {
        let (reply_tx, reply_rx) = async_channel::bounded(1);
        let req = AdminRequest {
            command: AdminCommand::PurgeTenants(purges.to_vec()),
            reply: reply_tx,
        };
        if tx.send(req).await.is_err() {
            return (taken, everyone());
        }
        match tokio::time::timeout(SHARD_ANSWER_TIMEOUT, reply_rx.recv()).await {
            // Delivery off on this shard: it holds no queues.
            Ok(Ok(None)) => {}
            Ok(Ok(Some(AdminReply::Purged {
                recipients,
                remaining: r,
            }))) => {
                taken += recipients;
                remaining.extend(r);
            }
            _ => return (taken, everyone()),
        }
    }
    (taken, remaining)
}

/// Runs until the process ends (see the module doc).
pub async fn run(
    policy: Arc<petrel_policy::PolicyStore>,
    shards: Vec<async_channel::Sender<AdminRequest>>,
) {
    let mut handled: HashSet<String> = HashSet::new();
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(ERASURE_CHECK_MS));
    loop {
        tick.tick().await;
        let purges: Vec<TenantPurge> = policy
            .peek()
            .snapshot()
            .deleted_tenants
            .iter()
            .filter(|d| !handled.contains(&d.id))
            .map(|d| TenantPurge {
                tenant_id: d.id.clone(),
                bounce: d.bounce_queued,
            })
            .collect();
        if purges.is_empty() {
            continue;
        }
        let now = Instant::now();
        for p in &purges {
            first_seen.entry(p.tenant_id.clone()).or_insert(now);
        }
        let (taken, remaining) = purge_round(&shards, &purges).await;
        if taken > 0 {
            tracing::info!(recipients = taken, "deleted tenants' queued mail taken");
        }
        for p in purges {
            let waited = first_seen
                .get(&p.tenant_id)
                .map_or(Duration::ZERO, |t| now.duration_since(*t));
            let overdue = waited >= Duration::from_secs(ERASURE_WAIT_MAX_SECS);
            if remaining.contains(&p.tenant_id) && !overdue {
                continue;
            }
            if overdue {
                tracing::warn!(tenant = %p.tenant_id, "deleted tenant still has mail in flight; destroying its keys anyway");
            }
            if destroy_keys(&policy, &p.tenant_id).await {
                first_seen.remove(&p.tenant_id);
                handled.insert(p.tenant_id);
            }
        }
    }
}

/// Destroys the tenant's data keys (none to destroy without sealing at rest). False when it
/// failed (tried again next round).
async fn destroy_keys(policy: &Arc<petrel_policy::PolicyStore>, tenant: &str) -> bool {
    let Some(keys) = policy.keys().cloned() else {
        return true;
    };
    // Handled by an earlier run: destroy_owner finds nothing to do (no rewrite), and says so
    // in silence.
    let earlier = keys.is_destroyed(tenant);
    let t = tenant.to_string();
    match tokio::task::spawn_blocking(move || keys.destroy_owner(&t)).await {
        Ok(Ok(n)) => {
            if n > 0 || !earlier {
                tracing::info!(tenant, keys = n, "deleted tenant's data keys destroyed");
                metrics::counter!(crate::metrics::TENANTS_ERASED).increment(1);
            }
            true
        }
        Ok(Err(e)) => {
            tracing::error!(tenant, error = %e, "destroying a deleted tenant's keys failed");
            false
        }
        Err(e) => {
            tracing::error!(tenant, error = %e, "key destruction task failed");
            false
        }
    }
}
