//! Limits shared by every tenant: the defaults (`petrel_meta.defaults_json`) and the
//! `destination_limits` table. Tenant and sending-domain limits are columns of their own rows
//! (see [`super::tenants`] and [`super::domains`]).

use petrel_policy::DefaultLimits;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{clamp_i64, get_bool, get_opt_u64, StoreError, StoreResult};

/// One `destination_limits` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRow {
    pub domain: String,
    pub connections_max: Option<u64>,
    pub messages_per_second_max: Option<u64>,
    pub tls_required: bool,
}

fn decode(r: &AnyRow) -> StoreResult<DestinationRow> {
    Ok(DestinationRow {
        domain: r.try_get("domain")?,
        connections_max: get_opt_u64(r, "connections_max")?,
        messages_per_second_max: get_opt_u64(r, "messages_per_second_max")?,
        tls_required: get_bool(r, "tls_required")?,
    })
}

/// The default limits.
pub async fn defaults(conn: &mut AnyConnection) -> StoreResult<DefaultLimits> {
    let text: String = sqlx::query("SELECT defaults_json FROM petrel_meta WHERE id = 1")
        .fetch_one(conn)
        .await?
        .try_get("defaults_json")?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        column: "petrel_meta.defaults_json",
        reason: e.to_string(),
    })
}

/// Replaces the default limits.
pub async fn set_defaults(conn: &mut AnyConnection, d: &DefaultLimits) -> StoreResult<()> {
    let text = serde_json::to_string(d).map_err(|e| StoreError::Corrupt {
        column: "petrel_meta.defaults_json",
        reason: e.to_string(),
    })?;
    sqlx::query("UPDATE petrel_meta SET defaults_json = $1 WHERE id = 1")
        .bind(text)
        .execute(conn)
        .await?;
    Ok(())
}

/// Destination limits by domain; at most `rows_max` when given.
pub async fn destinations(
    conn: &mut AnyConnection,
    rows_max: Option<i64>,
) -> StoreResult<Vec<DestinationRow>> {
    let rows = match rows_max {
        Some(n) => {
            sqlx::query("SELECT * FROM destination_limits ORDER BY domain LIMIT $1")
                .bind(n)
                .fetch_all(conn)
                .await?
        }
        None => {
            sqlx::query("SELECT * FROM destination_limits ORDER BY domain")
                .fetch_all(conn)
                .await?
        }
    };
    rows.iter().map(decode).collect()
}

/// One destination's limits.
pub async fn destination(
    conn: &mut AnyConnection,
    domain: &str,
) -> StoreResult<Option<DestinationRow>> {
    let row = sqlx::query("SELECT * FROM destination_limits WHERE domain = $1")
        .bind(domain.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(decode).transpose()
}

/// Inserts or replaces one destination's limits.
pub async fn upsert_destination(
    conn: &mut AnyConnection,
    d: &DestinationRow,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO destination_limits (domain, connections_max, messages_per_second_max, \
         tls_required, updated_unix_ms) VALUES ($1,$2,$3,$4,$5) ON CONFLICT (domain) DO UPDATE \
         SET connections_max = excluded.connections_max, \
         messages_per_second_max = excluded.messages_per_second_max, \
         tls_required = excluded.tls_required, updated_unix_ms = excluded.updated_unix_ms",
    )
    .bind(d.domain.clone())
    .bind(d.connections_max.map(clamp_i64))
    .bind(d.messages_per_second_max.map(clamp_i64))
    .bind(i64::from(d.tls_required))
    .bind(now_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes one destination's limits.
pub async fn delete_destination(conn: &mut AnyConnection, domain: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM destination_limits WHERE domain = $1")
        .bind(domain.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
