//! `shaping_providers` (migration 19): the provider shaping limits the operator pushes to every
//! engine (`api/shaping.rs`), one row per provider name of the engines' shaping files (or
//! `default`). The handlers validate with `petrel_policy::snapshot`'s rules before writing, so
//! a row always holds what a snapshot may carry.

use petrel_policy::snapshot::ShapingLimits;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, StoreResult};

/// One `shaping_providers` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapingRow {
    /// `limits.provider` is the row's key.
    pub limits: ShapingLimits,
    pub updated_unix_ms: i64,
}

/// A `BIGINT` limit column as the `u32` it was written from.
fn get_limit(r: &AnyRow, column: &'static str) -> StoreResult<Option<u32>> {
    let Some(v) = r.try_get::<Option<i64>, _>(column)? else {
        return Ok(None);
    };
    u32::try_from(v).map(Some).map_err(|_| StoreError::Corrupt {
        column,
        reason: format!("{v} is not a limit"),
    })
}

fn decode(r: &AnyRow) -> StoreResult<ShapingRow> {
    Ok(ShapingRow {
        limits: ShapingLimits {
            provider: r.try_get("name")?,
            connections_max: get_limit(r, "connections_max")?,
            messages_per_connection_max: get_limit(r, "messages_per_connection_max")?,
            messages_per_minute_max: get_limit(r, "messages_per_minute_max")?,
            messages_per_hour_max: get_limit(r, "messages_per_hour_max")?,
            recipients_per_transaction_max: get_limit(r, "recipients_per_transaction_max")?,
        },
        updated_unix_ms: r.try_get("updated_unix_ms")?,
    })
}

/// Every row, by name (at most `petrel_policy::snapshot::SHAPING_PROVIDERS_MAX`: the handler
/// refuses a new name past it).
pub async fn list(conn: &mut AnyConnection) -> StoreResult<Vec<ShapingRow>> {
    let rows = sqlx::query("SELECT * FROM shaping_providers ORDER BY name")
        .fetch_all(conn)
        .await?;
    rows.iter().map(decode).collect()
}

/// How many providers have limits.
pub async fn count(conn: &mut AnyConnection) -> StoreResult<u64> {
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM shaping_providers")
        .fetch_one(conn)
        .await?
        .try_get("n")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One provider's row.
pub async fn get(conn: &mut AnyConnection, name: &str) -> StoreResult<Option<ShapingRow>> {
    let row = sqlx::query("SELECT * FROM shaping_providers WHERE name = $1")
        .bind(name.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(decode).transpose()
}

/// Inserts or replaces one provider's limits (every column: a PUT replaces the whole entry).
pub async fn upsert(conn: &mut AnyConnection, row: &ShapingRow) -> StoreResult<()> {
    let l = &row.limits;
    sqlx::query(
        "INSERT INTO shaping_providers (name, connections_max, messages_per_connection_max, \
         messages_per_minute_max, messages_per_hour_max, recipients_per_transaction_max, \
         updated_unix_ms) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (name) DO UPDATE SET \
         connections_max = excluded.connections_max, \
         messages_per_connection_max = excluded.messages_per_connection_max, \
         messages_per_minute_max = excluded.messages_per_minute_max, \
         messages_per_hour_max = excluded.messages_per_hour_max, \
         recipients_per_transaction_max = excluded.recipients_per_transaction_max, \
         updated_unix_ms = excluded.updated_unix_ms",
    )
    .bind(l.provider.clone())
    .bind(l.connections_max.map(i64::from))
    .bind(l.messages_per_connection_max.map(i64::from))
    .bind(l.messages_per_minute_max.map(i64::from))
    .bind(l.messages_per_hour_max.map(i64::from))
    .bind(l.recipients_per_transaction_max.map(i64::from))
    .bind(row.updated_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes one provider's limits.
pub async fn delete(conn: &mut AnyConnection, name: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM shaping_providers WHERE name = $1")
        .bind(name.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
