//! The `tenants` table. A tenant's scope is its own id, so the tenant-scoped reads below key on
//! the caller's tenant id.
//!
//! The name is sealed under the tenant's data key (`sealed.rs`), and found and kept unique by
//! its blind index `name_index`; the reads below open it.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::sealed::{aad, Sealer};
use super::{clamp_i64, conflict_on_unique, get_bool, get_opt_u64, StoreError, StoreResult};

/// What a tenant's name reads as once its data keys are destroyed.
pub const NAME_REDACTED: &str = "(deleted)";

fn name_aad(id: &str) -> String {
    aad("tenants", "name", id)
}

/// Opens the sealed names of `tenants` in place.
async fn open_names(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    tenants: &mut [Tenant],
) -> StoreResult<()> {
    for t in tenants {
        t.name = sealer
            .open_text(conn, &name_aad(&t.id), &t.name)
            .await?
            .unwrap_or_else(|| NAME_REDACTED.to_string());
    }
    Ok(())
}

async fn one(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    row: Option<AnyRow>,
) -> StoreResult<Option<Tenant>> {
    let Some(row) = row else { return Ok(None) };
    let mut t = [decode(&row)?];
    open_names(conn, sealer, &mut t).await?;
    let [t] = t;
    Ok(Some(t))
}

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
    /// The tenant forwards mail it received elsewhere: the engine verifies the authentication
    /// the message arrived with and adds an ARC set (RFC 8617) signed with the tenant's
    /// sending domain's DKIM key (migration 17; off by default).
    #[serde(default)]
    pub arc_seal: bool,
    /// The egress pool (a named set of source addresses in the engines' `[[delivery.pools]]`)
    /// the tenant's mail leaves from; None: the engines' default (migration 18).
    #[serde(default)]
    #[schema(pattern = r"^[a-z0-9_-]{1,64}$")]
    pub egress_pool: Option<String>,
    /// The tenant's share of a site's deliveries when tenants contend for it, relative to the
    /// others' (migration 18; 1 by default: all alike).
    #[serde(default = "default_delivery_weight")]
    #[schema(minimum = 1, maximum = 100)]
    pub delivery_weight: u32,
}

fn default_delivery_weight() -> u32 {
    petrel_policy::snapshot::DELIVERY_WEIGHT_DEFAULT
}

fn get_delivery_weight(r: &AnyRow) -> StoreResult<u32> {
    use petrel_policy::snapshot::{DELIVERY_WEIGHT_MAX, DELIVERY_WEIGHT_MIN};
    let v: i64 = r.try_get("delivery_weight")?;
    u32::try_from(v)
        .ok()
        .filter(|w| (DELIVERY_WEIGHT_MIN..=DELIVERY_WEIGHT_MAX).contains(w))
        .ok_or_else(|| StoreError::Corrupt {
            column: "delivery_weight",
            reason: format!("{v} is outside {DELIVERY_WEIGHT_MIN}..={DELIVERY_WEIGHT_MAX}"),
        })
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
        arc_seal: get_bool(r, "arc_seal")?,
        egress_pool: r.try_get("egress_pool")?,
        delivery_weight: get_delivery_weight(r)?,
    })
}

/// Any tenant by id (operator-owner reads and mutations of tenant records).
pub async fn get(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    id: &str,
) -> StoreResult<Option<Tenant>> {
    let row = sqlx::query("SELECT * FROM tenants WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    one(conn, sealer, row).await
}

/// A tenant by name (through its blind index).
pub async fn get_by_name(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    name: &str,
) -> StoreResult<Option<Tenant>> {
    let index = sealer.name_index(conn, name).await?;
    let row = sqlx::query("SELECT * FROM tenants WHERE name_index = $1")
        .bind(index)
        .fetch_optional(&mut *conn)
        .await?;
    one(conn, sealer, row).await
}

/// Moves a tenant's message-metadata scrub watermark back to `ts_ms` - 1 if it is past it (a
/// late event; `retention.rs`).
pub async fn lower_scrub_watermark(
    conn: &mut AnyConnection,
    id: &str,
    ts_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE tenants SET messages_scrubbed_ms = $1 WHERE id = $2 AND messages_scrubbed_ms > $1",
    )
    .bind(ts_ms - 1)
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// True when a tenant with this id exists.
pub async fn exists(conn: &mut AnyConnection, id: &str) -> StoreResult<bool> {
    Ok(sqlx::query("SELECT id FROM tenants WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// True once the operator tenant exists.
pub async fn operator_exists(conn: &mut AnyConnection) -> StoreResult<bool> {
    Ok(sqlx::query("SELECT id FROM tenants WHERE is_operator = 1")
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// Every tenant, oldest first.
pub async fn list(conn: &mut AnyConnection, sealer: &Sealer) -> StoreResult<Vec<Tenant>> {
    let mut all = sqlx::query("SELECT * FROM tenants ORDER BY created_unix_ms, id")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(decode)
        .collect::<StoreResult<Vec<_>>>()?;
    open_names(conn, sealer, &mut all).await?;
    Ok(all)
}

/// Inserts a tenant row, its name sealed under its own data key (make that key first with
/// [`Sealer::prepare`], outside the transaction).
pub async fn insert(conn: &mut AnyConnection, sealer: &Sealer, t: &Tenant) -> StoreResult<()> {
    let index = sealer.name_index(conn, &t.name).await?;
    let name = sealer
        .seal_text(conn, Some(&t.id), &name_aad(&t.id), &t.name)
        .await?;
    sqlx::query(
        "INSERT INTO tenants (id, name, is_operator, suspended, messages_per_second_max, \
         messages_per_day_max, allow_unverified_domains, created_unix_ms, list_unsubscribe, \
         name_index, arc_seal, egress_pool, delivery_weight) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
    )
    .bind(t.id.clone())
    .bind(name)
    .bind(i64::from(t.is_operator))
    .bind(i64::from(t.suspended))
    .bind(t.messages_per_second_max.map(clamp_i64))
    .bind(t.messages_per_day_max.map(clamp_i64))
    .bind(i64::from(t.allow_unverified_domains))
    .bind(t.created_unix_ms)
    .bind(i64::from(t.list_unsubscribe))
    .bind(index)
    .bind(i64::from(t.arc_seal))
    .bind(t.egress_pool.clone())
    .bind(i64::from(t.delivery_weight))
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

/// Turns ARC sealing of the tenant's forwarded mail on or off.
pub async fn set_arc_seal(conn: &mut AnyConnection, id: &str, on: bool) -> StoreResult<()> {
    sqlx::query("UPDATE tenants SET arc_seal = $1 WHERE id = $2")
        .bind(i64::from(on))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets the egress pool the tenant's mail leaves from (None: the engines' default). The caller
/// has checked the name (`petrel_policy::snapshot::is_egress_pool_name`).
pub async fn set_egress_pool(
    conn: &mut AnyConnection,
    id: &str,
    pool: Option<&str>,
) -> StoreResult<()> {
    sqlx::query("UPDATE tenants SET egress_pool = $1 WHERE id = $2")
        .bind(pool.map(str::to_string))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets the tenant's delivery weight (the caller has checked its range).
pub async fn set_delivery_weight(
    conn: &mut AnyConnection,
    id: &str,
    weight: u32,
) -> StoreResult<()> {
    sqlx::query("UPDATE tenants SET delivery_weight = $1 WHERE id = $2")
        .bind(i64::from(weight))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Tenant `id` as seen from inside tenant `scope`: a tenant sees only itself, so the query reads
/// the scope's own row and any other id is indistinguishable from a missing one.
pub async fn get_scoped(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    scope: &str,
    id: &str,
) -> StoreResult<Option<Tenant>> {
    let own = get(conn, sealer, scope).await?;
    Ok(own.filter(|t| t.id == id))
}

/// A tenant's retention windows, days: events, message metadata, audit rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionDays {
    pub events: i64,
    pub messages: i64,
    pub audit: i64,
}

/// A tenant's retention windows (None: no such tenant).
pub async fn retention(conn: &mut AnyConnection, id: &str) -> StoreResult<Option<RetentionDays>> {
    let row = sqlx::query(
        "SELECT events_retention_days, messages_retention_days, audit_retention_days \
         FROM tenants WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    Ok(row
        .map(|r| -> Result<RetentionDays, sqlx::Error> {
            Ok(RetentionDays {
                events: r.try_get("events_retention_days")?,
                messages: r.try_get("messages_retention_days")?,
                audit: r.try_get("audit_retention_days")?,
            })
        })
        .transpose()?)
}

/// Sets a tenant's retention windows.
pub async fn set_retention(
    conn: &mut AnyConnection,
    id: &str,
    days: RetentionDays,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE tenants SET events_retention_days = $1, messages_retention_days = $2, \
         audit_retention_days = $3 WHERE id = $4",
    )
    .bind(days.events)
    .bind(days.messages)
    .bind(days.audit)
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Seals the names of rows written before sealing (or without a blind index). Returns how many.
pub(super) async fn seal_existing(conn: &mut AnyConnection, sealer: &Sealer) -> StoreResult<u64> {
    let rows = sqlx::query("SELECT id, name FROM tenants WHERE name_index IS NULL")
        .fetch_all(&mut *conn)
        .await?;
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        let stored: String = r.try_get("name")?;
        let Some(name) = sealer.open_text(conn, &name_aad(&id), &stored).await? else {
            continue;
        };
        sealer.prepare(Some(&id)).await?;
        let index = sealer.name_index(conn, &name).await?;
        let sealed = sealer
            .seal_text(conn, Some(&id), &name_aad(&id), &name)
            .await?;
        sqlx::query("UPDATE tenants SET name = $1, name_index = $2 WHERE id = $3")
            .bind(sealed)
            .bind(index)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        n += 1;
    }
    Ok(n)
}
