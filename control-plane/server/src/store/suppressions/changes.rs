//! The change log's readers and the purges: [`changes_since`] (the deltas engines apply),
//! [`load_page`] (a full load), [`purge_expired`] (expiry as removals) and [`purge_changes`]
//! (the log's retention).
//!
//! A full load needs no consistent snapshot: read [`current_version`] first, then page through
//! [`load_page`], then follow [`changes_since`] that version. A change that lands during the
//! load is seen by the load or not, and is applied again from the log either way; applying the
//! log in order over any state between the version and now ends in the current state.

use petrel_policy::suppression::{ChangeOp, SuppressionChange, SuppressionReason};
use sqlx::{AnyConnection, Row};

use super::{log_changes, reason_col, reserve_seqs};
use crate::store::events::DAY_MS;
use crate::store::{StoreError, StoreResult};

/// Change-log rows are kept this long; an engine further behind reloads the list whole.
pub const CHANGES_RETENTION_DAYS: i64 = 7;
/// Most changes one [`changes_since`] returns (and most entries one [`load_page`]).
pub const CHANGES_PAGE_MAX: i64 = 10_000;
/// Expired entries removed per [`purge_expired`] call (one short write transaction each).
pub const EXPIRED_PURGE_ROWS_MAX: i64 = 5_000;
/// (scope, address) pairs per purge `DELETE` (two bind parameters each).
const PURGE_PAIRS_PER_STATEMENT: usize = 500;

/// [`changes_since`]'s read: `$1` the version, `$2` the limit.
pub const CHANGES_SINCE_SQL: &str = "SELECT seq, scope, address, op, reason \
     FROM suppression_changes WHERE seq > $1 ORDER BY seq LIMIT $2";
/// [`load_page`]'s first page: `$1` now, `$2` the limit.
pub const LOAD_PAGE_SQL: &str = "SELECT scope, address, reason FROM suppressions \
     WHERE (expires_unix_ms IS NULL OR expires_unix_ms > $1) ORDER BY scope, address LIMIT $2";
/// [`load_page`]'s next pages: `$1` now, `$2`, `$3` the last (scope, address), `$4` the limit.
/// A row-value comparison: one range of the primary key on both backends (an `OR` of the two
/// columns' conditions is a scan on SQLite).
pub const LOAD_PAGE_AFTER_SQL: &str = "SELECT scope, address, reason FROM suppressions \
     WHERE (expires_unix_ms IS NULL OR expires_unix_ms > $1) AND (scope, address) > ($2, $3) \
     ORDER BY scope, address LIMIT $4";
/// [`purge_expired`]'s pick: `$1` now, `$2` the limit.
pub const EXPIRED_PICK_SQL: &str = "SELECT scope, address FROM suppressions \
     WHERE expires_unix_ms IS NOT NULL AND expires_unix_ms <= $1 ORDER BY expires_unix_ms LIMIT $2";
/// [`purge_changes`]' cutoff: the newest row older than `$1`, by the time index (a `MAX(seq)
/// .. WHERE at_unix_ms <` walks the key back through every newer row). Seqs and times rise
/// together, so every older seq is past the cutoff too (give or take a clock step, which only
/// purges a row a little early).
pub const CHANGES_CUTOFF_SQL: &str = "SELECT seq FROM suppression_changes \
     WHERE at_unix_ms < $1 ORDER BY at_unix_ms DESC LIMIT 1";

/// [`purge_expired`]'s delete of `pairs` (scope, address) pairs, `$1`, `$2`, .. in order.
/// `IN (SELECT .. FROM (VALUES ..))`, not `IN (VALUES ..)`: SQLite searches the key for the
/// former and scans the table for the latter.
pub fn expired_delete_sql(pairs: usize) -> String {
    let values = (0..pairs)
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "DELETE FROM suppressions WHERE (scope, address) IN \
         (SELECT v.column1, v.column2 FROM (VALUES {values}) AS v)"
    )
}

/// What an engine at some version should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesSince {
    /// The changes after the asked version, in `seq` order (at most the limit asked; ask again
    /// from `version` while a full page comes back). `version` is the last change's seq, or
    /// the asked version when there is none.
    Changes {
        changes: Vec<SuppressionChange>,
        version: u64,
    },
    /// Changes after the asked version were purged (it is older than
    /// [`CHANGES_RETENTION_DAYS`]): reload the list ([`load_page`]) from `version` on.
    Resync { version: u64 },
}

/// The seq of the last committed change (0: none yet).
pub async fn current_version(conn: &mut AnyConnection) -> StoreResult<u64> {
    let v: i64 = sqlx::query("SELECT last_seq FROM suppression_seq WHERE id = 1")
        .fetch_one(conn)
        .await?
        .try_get("last_seq")?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// The changes after `version` (at most `limit`, clamped to 1..=[`CHANGES_PAGE_MAX`]), or
/// [`ChangesSince::Resync`] when the log no longer reaches back to it. One range read of the
/// log's primary key.
pub async fn changes_since(
    conn: &mut AnyConnection,
    version: u64,
    limit: i64,
) -> StoreResult<ChangesSince> {
    let row = sqlx::query("SELECT last_seq, purged_through_seq FROM suppression_seq WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    let purged: i64 = row.try_get("purged_through_seq")?;
    if i64::try_from(version).unwrap_or(i64::MAX) < purged {
        let last: i64 = row.try_get("last_seq")?;
        return Ok(ChangesSince::Resync {
            version: u64::try_from(last).unwrap_or(0),
        });
    }
    let rows = sqlx::query(CHANGES_SINCE_SQL)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(limit.clamp(1, CHANGES_PAGE_MAX))
        .fetch_all(&mut *conn)
        .await?;
    let mut changes = Vec::with_capacity(rows.len());
    for r in &rows {
        let op: String = r.try_get("op")?;
        let op = match op.as_str() {
            "add" => ChangeOp::Add(reason_col(r, "reason")?),
            "remove" => ChangeOp::Remove,
            other => {
                return Err(StoreError::Corrupt {
                    column: "suppression_changes.op",
                    reason: other.to_string(),
                })
            }
        };
        let seq: i64 = r.try_get("seq")?;
        changes.push(SuppressionChange {
            seq: u64::try_from(seq).unwrap_or(0),
            scope: r.try_get("scope")?,
            address: r.try_get("address")?,
            op,
        });
    }
    let version = changes.last().map_or(version, |c| c.seq);
    Ok(ChangesSince::Changes { changes, version })
}

/// One page of a full load: live entries (unexpired at `now_unix_ms`) after `(scope, address)`
/// `after`, in primary-key order, at most `limit` (clamped to 1..=[`CHANGES_PAGE_MAX`]).
pub async fn load_page(
    conn: &mut AnyConnection,
    after: Option<(&str, &str)>,
    limit: i64,
    now_unix_ms: i64,
) -> StoreResult<Vec<(String, String, SuppressionReason)>> {
    let limit = limit.clamp(1, CHANGES_PAGE_MAX);
    let (sql, after) = match after {
        Some((scope, address)) => (
            LOAD_PAGE_AFTER_SQL,
            Some((scope.to_string(), address.to_string())),
        ),
        None => (LOAD_PAGE_SQL, None),
    };
    let mut query = sqlx::query(sql).bind(now_unix_ms);
    if let Some((s, a)) = after {
        query = query.bind(s).bind(a);
    }
    query
        .bind(limit)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("scope")?,
                r.try_get("address")?,
                reason_col(r, "reason")?,
            ))
        })
        .collect()
}

/// Removes up to [`EXPIRED_PURGE_ROWS_MAX`] entries whose expiry is at or before
/// `now_unix_ms`, logging each as a removal (so engines drop them). Run in a write
/// transaction; returns how many were removed (call again while it returns the maximum).
pub async fn purge_expired(conn: &mut AnyConnection, now_unix_ms: i64) -> StoreResult<u64> {
    // The log's lock first: a concurrent re-add of a picked entry waits, then sees it gone.
    reserve_seqs(conn, 0).await?;
    let picked: Vec<(String, String)> = sqlx::query(EXPIRED_PICK_SQL)
        .bind(now_unix_ms)
        .bind(EXPIRED_PURGE_ROWS_MAX)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("scope")?, r.try_get("address")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    remove_picked(conn, picked, now_unix_ms).await
}

/// Deletes the picked entries and logs each as a removal.
async fn remove_picked(
    conn: &mut AnyConnection,
    picked: Vec<(String, String)>,
    now_unix_ms: i64,
) -> StoreResult<u64> {
    if picked.is_empty() {
        return Ok(0);
    }
    for chunk in picked.chunks(PURGE_PAIRS_PER_STATEMENT) {
        let sql = expired_delete_sql(chunk.len());
        let mut q = sqlx::query(&sql);
        for (s, a) in chunk {
            q = q.bind(s.clone()).bind(a.clone());
        }
        q.execute(&mut *conn).await?;
    }
    let first = reserve_seqs(conn, picked.len()).await?;
    let changes: Vec<SuppressionChange> = picked
        .into_iter()
        .zip(first..)
        .map(|((scope, address), seq)| SuppressionChange {
            seq,
            scope,
            address,
            op: ChangeOp::Remove,
        })
        .collect();
    log_changes(conn, &changes, now_unix_ms).await?;
    Ok(u64::try_from(changes.len()).unwrap_or(0))
}

/// [`purge_scope`]'s pick: `$1` the scope, `$2` the limit.
pub const SCOPE_PICK_SQL: &str = "SELECT scope, address FROM suppressions \
     WHERE scope = $1 ORDER BY address LIMIT $2";

/// Removes up to [`EXPIRED_PURGE_ROWS_MAX`] entries of one scope (a deleted tenant's list),
/// logging each as a removal. Run in a write transaction; returns how many were removed (call
/// again until it returns 0).
pub async fn purge_scope(
    conn: &mut AnyConnection,
    scope: &str,
    now_unix_ms: i64,
) -> StoreResult<u64> {
    reserve_seqs(conn, 0).await?;
    let picked: Vec<(String, String)> = sqlx::query(SCOPE_PICK_SQL)
        .bind(scope.to_string())
        .bind(EXPIRED_PURGE_ROWS_MAX)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("scope")?, r.try_get("address")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    remove_picked(conn, picked, now_unix_ms).await
}

/// Deletes change-log rows older than [`CHANGES_RETENTION_DAYS`] at `now_unix_ms`, at most
/// `rows_max` seqs' worth, and records how far the log is purged (so [`changes_since`] tells an
/// engine behind that point to reload). Run in a write transaction; returns the rows deleted.
pub async fn purge_changes(
    conn: &mut AnyConnection,
    now_unix_ms: i64,
    rows_max: i64,
) -> StoreResult<u64> {
    let cutoff = now_unix_ms - CHANGES_RETENTION_DAYS * DAY_MS;
    let old: Option<i64> = sqlx::query(CHANGES_CUTOFF_SQL)
        .bind(cutoff)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get("seq"))
        .transpose()?;
    let Some(old) = old else { return Ok(0) };
    let oldest: i64 = sqlx::query("SELECT MIN(seq) AS s FROM suppression_changes")
        .fetch_one(&mut *conn)
        .await?
        .try_get::<Option<i64>, _>("s")?
        .unwrap_or(old);
    let through = old.min(oldest.saturating_add(rows_max.max(1) - 1));
    let deleted = sqlx::query("DELETE FROM suppression_changes WHERE seq <= $1")
        .bind(through)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(
        "UPDATE suppression_seq SET purged_through_seq = $1 \
         WHERE id = 1 AND purged_through_seq < $1",
    )
    .bind(through)
    .execute(&mut *conn)
    .await?;
    Ok(deleted)
}
