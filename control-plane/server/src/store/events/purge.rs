//! The retention purge, as index range reads only (it runs every ten minutes over a table of
//! millions of rows, usually finding little or nothing to delete):
//!
//! 1. [`purge_plan`], one read: the tenant ids present in `events` by a loose index scan of
//!    `events_tenant_time` (a recursive `MIN(tenant_id) .. WHERE tenant_id > previous`, one
//!    index probe per tenant, on SQLite and PostgreSQL alike), each with its oldest event (one
//!    more probe) and its retention (default for no or an unknown tenant). Only the tenants
//!    whose oldest event is past their window come out, with their cutoff.
//! 2. [`purge_tenant_chunk`] per such tenant, one write transaction per chunk: the oldest
//!    expired seqs of that tenant, a range of `events_tenant_time`, then their tags (by
//!    `event_tags_event`) and the events (by `seq`).

use sqlx::{AnyConnection, Row};

use super::{DAY_MS, EVENTS_RETENTION_DAYS_DEFAULT, STATS_RETENTION_DAYS};
use crate::store::StoreResult;

/// Sequence numbers bound in one purge `DELETE` (far below either backend's bind limit).
pub const PURGE_ARGS_PER_STATEMENT: usize = 500;

/// [`purge_plan`]'s read of the tenants: `$1` now, `$2` the default retention in days, `$3` a
/// day in ms. Public for the index checks in the tests.
pub const PURGE_PLAN_SQL: &str = "WITH RECURSIVE present(id) AS ( \
         SELECT MIN(tenant_id) FROM events \
         UNION ALL \
         SELECT (SELECT MIN(e.tenant_id) FROM events e WHERE e.tenant_id > present.id) \
         FROM present WHERE present.id IS NOT NULL) \
     SELECT present.id AS tenant_id, \
         (SELECT MIN(e.timestamp_ms) FROM events e WHERE e.tenant_id = present.id) AS oldest_ms, \
         $1 - COALESCE(tn.events_retention_days, $2) * $3 AS cutoff_ms \
     FROM present LEFT JOIN tenants tn ON tn.id = present.id \
     WHERE present.id IS NOT NULL";

/// [`purge_tenant_chunk`]'s pick of one tenant's oldest expired events: `$1` the tenant, `$2`
/// the cutoff, `$3` the chunk size.
pub const PURGE_PICK_SQL: &str = "SELECT seq FROM events WHERE tenant_id = $1 \
     AND timestamp_ms < $2 ORDER BY timestamp_ms LIMIT $3";
/// The same for events without a tenant: `$1` the cutoff, `$2` the chunk size.
pub const PURGE_PICK_UNTENANTED_SQL: &str = "SELECT seq FROM events WHERE tenant_id IS NULL \
     AND timestamp_ms < $1 ORDER BY timestamp_ms LIMIT $2";

/// Events of one tenant (None: events without a tenant) older than `cutoff_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeTarget {
    pub tenant_id: Option<String>,
    /// Events with `timestamp_ms` below this are past the tenant's window.
    pub cutoff_ms: i64,
}

/// The tenants with at least one event past their retention window at `now_unix_ms`.
pub async fn purge_plan(
    conn: &mut AnyConnection,
    now_unix_ms: i64,
) -> StoreResult<Vec<PurgeTarget>> {
    let default_cutoff = now_unix_ms - EVENTS_RETENTION_DAYS_DEFAULT * DAY_MS;
    let mut out = Vec::new();
    let oldest_untenanted: Option<i64> =
        sqlx::query("SELECT MIN(timestamp_ms) AS t FROM events WHERE tenant_id IS NULL")
            .fetch_one(&mut *conn)
            .await?
            .try_get("t")?;
    if oldest_untenanted.is_some_and(|t| t < default_cutoff) {
        out.push(PurgeTarget {
            tenant_id: None,
            cutoff_ms: default_cutoff,
        });
    }
    let rows = sqlx::query(PURGE_PLAN_SQL)
        .bind(now_unix_ms)
        .bind(EVENTS_RETENTION_DAYS_DEFAULT)
        .bind(DAY_MS)
        .fetch_all(&mut *conn)
        .await?;
    for r in rows {
        let oldest: Option<i64> = r.try_get("oldest_ms")?;
        let cutoff_ms: i64 = r.try_get("cutoff_ms")?;
        if oldest.is_some_and(|t| t < cutoff_ms) {
            out.push(PurgeTarget {
                tenant_id: Some(r.try_get("tenant_id")?),
                cutoff_ms,
            });
        }
    }
    Ok(out)
}

/// Deletes at most `rows_max` of `target`'s expired events (with their tags), oldest first.
/// Returns the number deleted: the caller runs it again while it returns `rows_max`.
pub async fn purge_tenant_chunk(
    conn: &mut AnyConnection,
    target: &PurgeTarget,
    rows_max: i64,
) -> StoreResult<u64> {
    let pick = match &target.tenant_id {
        Some(_) => PURGE_PICK_SQL,
        None => PURGE_PICK_UNTENANTED_SQL,
    };
    let mut q = sqlx::query(pick);
    if let Some(t) = &target.tenant_id {
        q = q.bind(t.clone());
    }
    let seqs: Vec<i64> = q
        .bind(target.cutoff_ms)
        .bind(rows_max)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("seq"))
        .collect::<Result<_, _>>()?;
    let mut deleted = 0;
    for chunk in seqs.chunks(PURGE_ARGS_PER_STATEMENT) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(",");
        let sql_tags = format!("DELETE FROM event_tags WHERE event_seq IN ({list})");
        let mut del_tags = sqlx::query(&sql_tags);
        let sql_events = format!("DELETE FROM events WHERE seq IN ({list})");
        let mut del_events = sqlx::query(&sql_events);
        for s in chunk {
            del_tags = del_tags.bind(*s);
            del_events = del_events.bind(*s);
        }
        del_tags.execute(&mut *conn).await?;
        deleted += del_events.execute(&mut *conn).await?.rows_affected();
    }
    if deleted > 0 {
        tracing::debug!(tenant = ?target.tenant_id, deleted, "purged events");
    }
    Ok(deleted)
}

/// Deletes the aggregate buckets older than [`STATS_RETENTION_DAYS`] (a range of
/// `event_stats_time`).
pub async fn purge_stats(conn: &mut AnyConnection, now_unix_ms: i64) -> StoreResult<u64> {
    Ok(
        sqlx::query("DELETE FROM event_stats WHERE bucket_start_ms < $1")
            .bind(now_unix_ms - STATS_RETENTION_DAYS * DAY_MS)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}
