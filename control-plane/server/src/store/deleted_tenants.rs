//! The `deleted_tenants` table (issue 16): one row per deleted tenant. Its policy rows are gone
//! with the deletion; the row lists it to the engines (which drop or bounce its queued mail,
//! then destroy its data keys) and drives the background erasure of its bulk rows
//! (`crate::erasure`), which sets `erased_unix_ms` when done.

use sqlx::{AnyConnection, Row};

use super::StoreResult;

/// One deletion.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Deletion {
    pub tenant_id: String,
    /// True: queued mail bounced to its senders; false: dropped.
    pub bounce_queued: bool,
    pub deleted_unix_ms: i64,
    /// When the background erasure of the tenant's events, suppressions and history finished
    /// (absent while it runs).
    pub erased_unix_ms: Option<i64>,
}

fn decode(r: &sqlx::any::AnyRow) -> StoreResult<Deletion> {
    Ok(Deletion {
        tenant_id: r.try_get("id")?,
        bounce_queued: r.try_get::<i64, _>("bounce_queued")? != 0,
        deleted_unix_ms: r.try_get("deleted_unix_ms")?,
        erased_unix_ms: r.try_get("erased_unix_ms")?,
    })
}

/// Records a deletion (in the deleting mutation).
pub async fn insert(conn: &mut AnyConnection, d: &Deletion) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO deleted_tenants (id, bounce_queued, deleted_unix_ms, erased_unix_ms) \
         VALUES ($1, $2, $3, NULL)",
    )
    .bind(d.tenant_id.clone())
    .bind(i64::from(d.bounce_queued))
    .bind(d.deleted_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// The deletion of `id`, if it was deleted.
pub async fn get(conn: &mut AnyConnection, id: &str) -> StoreResult<Option<Deletion>> {
    sqlx::query("SELECT * FROM deleted_tenants WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Deletions since `since_unix_ms`, newest first, at most `rows_max` (the snapshot's list).
pub async fn since(
    conn: &mut AnyConnection,
    since_unix_ms: i64,
    rows_max: i64,
) -> StoreResult<Vec<Deletion>> {
    sqlx::query(
        "SELECT * FROM deleted_tenants WHERE deleted_unix_ms >= $1 \
         ORDER BY deleted_unix_ms DESC LIMIT $2",
    )
    .bind(since_unix_ms)
    .bind(rows_max)
    .fetch_all(conn)
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// Deletions whose erasure has not finished, oldest first.
pub async fn unerased(conn: &mut AnyConnection, rows_max: i64) -> StoreResult<Vec<Deletion>> {
    sqlx::query(
        "SELECT * FROM deleted_tenants WHERE erased_unix_ms IS NULL \
         ORDER BY deleted_unix_ms LIMIT $1",
    )
    .bind(rows_max)
    .fetch_all(conn)
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// Marks the erasure of `id` finished.
pub async fn set_erased(conn: &mut AnyConnection, id: &str, at_unix_ms: i64) -> StoreResult<()> {
    sqlx::query("UPDATE deleted_tenants SET erased_unix_ms = $1 WHERE id = $2")
        .bind(at_unix_ms)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Which of `ids` are deleted tenants (events the engines still send for them are dropped).
pub async fn which_deleted(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> StoreResult<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for id in ids {
        let hit = sqlx::query("SELECT id FROM deleted_tenants WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        if hit.is_some() {
            out.insert((*id).to_string());
        }
    }
    Ok(out)
}
