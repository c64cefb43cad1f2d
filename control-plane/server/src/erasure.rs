//! Tenant deletion (issue 16): `DELETE /v1/tenants/{id}` removes the tenant and everything the
//! engines act on in one mutation ([`delete_policy_rows`]); the committed policy no longer has
//! the tenant and lists it as deleted, so every engine drops or bounces its queued mail and
//! destroys its data keys. The control plane destroys its own keys for the tenant at once
//! (its sealed values — DKIM keys, webhook secrets, its name, its audit payloads — become
//! unreadable, here and in every backup), then [`erase`] deletes the bulk rows (events,
//! suppressions, webhook history, exports) in short chunks in the background, resumed after a
//! crash from the `deleted_tenants` row.
//!
//! The audit chain keeps every row: a deleted tenant's rows keep their hashes, and their
//! payloads, targets and addresses, sealed under its destroyed keys, read as redacted.

use std::time::Duration;

use sqlx::AnyConnection;

use crate::api::App;
use crate::store::deleted_tenants::{self, Deletion};
use crate::store::{StoreError, StoreResult};

/// Rows deleted per statement (one short write transaction each).
pub const ERASE_CHUNK_ROWS: i64 = 5_000;
/// How often unfinished erasures are looked for (a deletion also starts one at once).
pub const ERASURE_INTERVAL_MS: u64 = 60_000;
/// Unfinished erasures taken per round.
pub const ERASURES_PER_ROUND_MAX: i64 = 100;

/// What [`delete_policy_rows`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Removed {
    pub domains: u64,
    pub dkim_keys: u64,
    pub credentials: u64,
    pub webhooks: u64,
}

async fn exec(conn: &mut AnyConnection, sql: &str, id: &str) -> StoreResult<u64> {
    Ok(sqlx::query(sql)
        .bind(id.to_string())
        .execute(conn)
        .await?
        .rows_affected())
}

/// Deletes the tenant's row and every row the policy is built from, and records the deletion.
/// Run inside the deleting mutation.
pub async fn delete_policy_rows(conn: &mut AnyConnection, d: &Deletion) -> StoreResult<Removed> {
    let id = d.tenant_id.as_str();
    deleted_tenants::insert(conn, d).await?;
    let dkim_keys = exec(conn, "DELETE FROM dkim_keys WHERE tenant_id = $1", id).await?;
    exec(conn, "DELETE FROM domain_checks WHERE tenant_id = $1", id).await?;
    let domains = exec(conn, "DELETE FROM domains WHERE tenant_id = $1", id).await?;
    let credentials = exec(conn, "DELETE FROM credentials WHERE tenant_id = $1", id).await?;
    let webhooks = exec(conn, "DELETE FROM webhooks WHERE tenant_id = $1", id).await?;
    for sql in [
        "DELETE FROM guard_states WHERE tenant_id = $1",
        "DELETE FROM guard_baselines WHERE tenant_id = $1",
        "DELETE FROM guard_cap_lifts WHERE tenant_id = $1",
    ] {
        exec(conn, sql, id).await?;
    }
    if exec(conn, "DELETE FROM tenants WHERE id = $1", id).await? == 0 {
        return Err(StoreError::NotFound("tenant"));
    }
    Ok(Removed {
        domains,
        dkim_keys,
        credentials,
        webhooks,
    })
}

/// Chunked deletes of one tenant's bulk rows, in order: each statement removes at most
/// [`ERASE_CHUNK_ROWS`] rows and is repeated until it removes fewer. A child table's rows are
/// picked by their own key through the parent (not as the children of some parents: past one
/// chunk of parents, a pick of parents whose children are gone removes nothing, and the loop
/// would stop with the other parents' children left).
const ERASE_STATEMENTS: &[&str] = &[
    "DELETE FROM event_tags WHERE event_seq IN \
     (SELECT event_seq FROM event_tags WHERE tenant_id = $1 LIMIT $2)",
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE tenant_id = $1 LIMIT $2)",
    "DELETE FROM event_stats WHERE (tenant_id, from_domain, bucket_start_ms) IN \
     (SELECT tenant_id, from_domain, bucket_start_ms FROM event_stats WHERE tenant_id = $1 LIMIT $2)",
    "DELETE FROM webhook_attempts WHERE (delivery_id, attempt) IN \
     (SELECT a.delivery_id, a.attempt FROM webhook_attempts a \
      JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.tenant_id = $1 LIMIT $2)",
    "DELETE FROM webhook_deliveries WHERE id IN \
     (SELECT id FROM webhook_deliveries WHERE tenant_id = $1 LIMIT $2)",
    "DELETE FROM export_chunks WHERE (export_id, n) IN \
     (SELECT c.export_id, c.n FROM export_chunks c \
      JOIN exports e ON e.id = c.export_id WHERE e.tenant_id = $1 LIMIT $2)",
    "DELETE FROM exports WHERE id IN (SELECT id FROM exports WHERE tenant_id = $1 LIMIT $2)",
];

/// Erases what is left of one deleted tenant: its data keys, then its bulk rows, then marks
/// the deletion erased. Idempotent; returns the rows deleted.
pub async fn erase(app: &App, id: &str) -> StoreResult<u64> {
    {
        let mut conn = app.db.conn().await?;
        app.db.sealer().destroy_owner(&mut conn, id).await?;
    }
    let chunk = u64::try_from(ERASE_CHUNK_ROWS).unwrap_or(0);
    let mut total = 0;
    for sql in ERASE_STATEMENTS {
        loop {
            let mut tx = app.db.begin_write().await?;
            let n = sqlx::query(sql)
                .bind(id.to_string())
                .bind(ERASE_CHUNK_ROWS)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            total += n;
            if n < chunk {
                break;
            }
        }
    }
    // The suppression list, each removal logged so the engines drop it too.
    loop {
        let mut tx = app.db.begin_write().await?;
        let n = crate::store::suppressions::changes::purge_scope(&mut tx, id, app.now_ms()).await?;
        tx.commit().await?;
        total += n;
        if n == 0 {
            break;
        }
        app.suppressions.wake();
    }
    let mut tx = app.db.begin_write().await?;
    deleted_tenants::set_erased(&mut tx, id, app.now_ms()).await?;
    tx.commit().await?;
    Ok(total)
}

/// Erases every deletion not yet erased (one round).
pub async fn erase_pending(app: &App) -> StoreResult<usize> {
    let pending = {
        let mut conn = app.db.conn().await?;
        deleted_tenants::unerased(&mut conn, ERASURES_PER_ROUND_MAX).await?
    };
    for d in &pending {
        // One tenant's failure does not hold up the others' (it is retried next round).
        match erase(app, &d.tenant_id).await {
            Ok(n) => tracing::info!(tenant = %d.tenant_id, rows = n, "deleted tenant erased"),
            Err(e) => {
                tracing::warn!(tenant = %d.tenant_id, error = %e, "erasing a deleted tenant failed; retrying")
            }
        }
    }
    Ok(pending.len())
}

/// Runs [`erase_pending`] every [`ERASURE_INTERVAL_MS`], and at once when a deletion wakes it.
pub async fn task(app: App) {
    loop {
        if let Err(e) = erase_pending(&app).await {
            tracing::warn!(error = %e, "tenant erasure failed; retrying");
        }
        tokio::select! {
            _ = app.erasure_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(ERASURE_INTERVAL_MS)) => {}
        }
    }
}
