//! The `tenants` table. A tenant's scope is its own id, so the tenant-scoped reads below key on
//! the caller's tenant id.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{clamp_i64, conflict_on_unique, get_bool, get_opt_u64, StoreResult};

/// One `tenants` row (also the API's view of a tenant: nothing in it is secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub is_operator: bool,
    pub suspended: bool,
    /// None: the default limit.
    pub messages_per_second_max: Option<u64>,
    pub messages_per_day_max: Option<u64>,
    pub allow_unverified_domains: bool,
    pub created_unix_ms: i64,
    /// The engine adds `List-Unsubscribe` and `List-Unsubscribe-Post` to this tenant's
    /// one-recipient messages (migration 8; off by default).
    #[serde(default)]
    pub list_unsubscribe: bool,
}

fn decode(r: &AnyRow) -> StoreResult<Tenant> {
    Ok(Tenant {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        is_operator: get_bool(r, "is_operator")?,
        suspended: get_bool(r, "suspended")?,
        messages_per_second_max: get_opt_u64(r, "messages_per_second_max")?,
        messages_per_day_max: get_opt_u64(r, "messages_per_day_max")?,
        allow_unverified_domains: get_bool(r, "allow_unverified_domains")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        list_unsubscribe: get_bool(r, "list_unsubscribe")?,
    })
}

/// Any tenant by id (operator-owner reads and mutations of tenant records).
pub async fn get(conn: &mut AnyConnection, id: &str) -> StoreResult<Option<Tenant>> {
    let row = sqlx::query("SELECT * FROM tenants WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(decode).transpose()
}

/// A tenant by name.
pub async fn get_by_name(conn: &mut AnyConnection, name: &str) -> StoreResult<Option<Tenant>> {
    let row = sqlx::query("SELECT * FROM tenants WHERE name = $1")
        .bind(name.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(decode).transpose()
}

/// True once the operator tenant exists.
pub async fn operator_exists(conn: &mut AnyConnection) -> StoreResult<bool> {
    Ok(sqlx::query("SELECT id FROM tenants WHERE is_operator = 1")
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// Every tenant, oldest first.
pub async fn list(conn: &mut AnyConnection) -> StoreResult<Vec<Tenant>> {
    sqlx::query("SELECT * FROM tenants ORDER BY created_unix_ms, id")
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Inserts a tenant row.
pub async fn insert(conn: &mut AnyConnection, t: &Tenant) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO tenants (id, name, is_operator, suspended, messages_per_second_max, \
         messages_per_day_max, allow_unverified_domains, created_unix_ms, list_unsubscribe) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
    )
    .bind(t.id.clone())
    .bind(t.name.clone())
    .bind(i64::from(t.is_operator))
    .bind(i64::from(t.suspended))
    .bind(t.messages_per_second_max.map(clamp_i64))
    .bind(t.messages_per_day_max.map(clamp_i64))
    .bind(i64::from(t.allow_unverified_domains))
    .bind(t.created_unix_ms)
    .bind(i64::from(t.list_unsubscribe))
    .execute(conn)
    .await
    .map_err(conflict_on_unique)?;
    Ok(())
}

/// Sets or lifts a suspension.
pub async fn set_suspended(conn: &mut AnyConnection, id: &str, suspended: bool) -> StoreResult<()> {
    sqlx::query("UPDATE tenants SET suspended = $1 WHERE id = $2")
        .bind(i64::from(suspended))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets a tenant's quota (None: the default).
pub async fn set_limits(
    conn: &mut AnyConnection,
    id: &str,
    messages_per_second_max: Option<u64>,
    messages_per_day_max: Option<u64>,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE tenants SET messages_per_second_max = $1, messages_per_day_max = $2 WHERE id = $3",
    )
    .bind(messages_per_second_max.map(clamp_i64))
    .bind(messages_per_day_max.map(clamp_i64))
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Turns the engine's List-Unsubscribe headers on or off for a tenant.
pub async fn set_list_unsubscribe(conn: &mut AnyConnection, id: &str, on: bool) -> StoreResult<()> {
    sqlx::query("UPDATE tenants SET list_unsubscribe = $1 WHERE id = $2")
        .bind(i64::from(on))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Tenant `id` as seen from inside tenant `scope`: a tenant sees only itself, so the query reads
/// the scope's own row and any other id is indistinguishable from a missing one.
pub async fn get_scoped(
    conn: &mut AnyConnection,
    scope: &str,
    id: &str,
) -> StoreResult<Option<Tenant>> {
    let own = get(conn, scope).await?;
    Ok(own.filter(|t| t.id == id))
}

/// A tenant's event retention window, days (None: no such tenant).
pub async fn events_retention_days(conn: &mut AnyConnection, id: &str) -> StoreResult<Option<i64>> {
    let row = sqlx::query("SELECT events_retention_days FROM tenants WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64, _>("events_retention_days"))
        .transpose()?)
}

/// Sets a tenant's event retention window, days.
pub async fn set_events_retention_days(
    conn: &mut AnyConnection,
    id: &str,
    days: i64,
) -> StoreResult<()> {
    sqlx::query("UPDATE tenants SET events_retention_days = $1 WHERE id = $2")
        .bind(days)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
