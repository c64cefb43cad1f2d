//! The guardrails' tables (migration 6): `guard_states` (a tenant's or sending domain's
//! reputation level per metric, only while it is not `ok`), `guard_baselines` (what an
//! operator's re-enable leaves out of the window), `guard_cap_lifts` (new tenants whose cap an
//! operator lifted), and the window read of `event_stats` they are computed from.
//!
//! The window read takes the hourly buckets (`event_stats`) from the window's first bucket on:
//! by tenant through the primary key `(tenant_id, from_domain, bucket_start_ms)` when the
//! evaluation names its tenants (after an ingest), by `event_stats (bucket_start_ms)` for the
//! periodic pass over every tenant.

use std::collections::HashSet;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::StoreResult;

/// Tenants named in one `IN (..)` list.
pub const TENANTS_PER_QUERY_MAX: usize = 500;

/// One hourly bucket of one tenant and From domain, the counters the guardrails read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub tenant_id: String,
    /// The events' From domain ("" when they had none).
    pub from_domain: String,
    pub bucket_start_ms: i64,
    pub sent: i64,
    pub bounced_hard: i64,
    pub complained: i64,
}

/// One `guard_states` row: a scope's level for one metric (rows exist only while not `ok`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    pub tenant_id: String,
    /// A sending domain's name, or "" for the tenant as a whole.
    pub scope_domain: String,
    /// `bounce_rate` or `complaint_rate`.
    pub metric: String,
    /// `warned` or `disabled`.
    pub level: String,
    /// The warning or the disable reason, as engines show it.
    pub note: String,
    /// The rate that set the level, parts per million.
    pub rate_ppm: i64,
    /// Messages sent in the window then.
    pub volume: i64,
    pub changed_unix_ms: i64,
}

/// One `guard_baselines` row: an operator re-enabled the scope at `set_unix_ms`; buckets
/// before `bucket_start_ms` no longer count, and that bucket counts minus these counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineRow {
    pub tenant_id: String,
    pub scope_domain: String,
    pub bucket_start_ms: i64,
    pub sent: i64,
    pub bounced_hard: i64,
    pub complained: i64,
    pub set_unix_ms: i64,
}

/// `$first, ..` numbered placeholders for `n` values.
fn list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `sql_all` (no tenant filter) when `tenants` is None, else `sql_in` with `{in}`
/// replaced by the tenants' placeholders from `$first`, in chunks, binding `lead` first.
async fn by_tenants<T>(
    conn: &mut AnyConnection,
    sql_all: &str,
    sql_in: &str,
    lead: Option<i64>,
    tenants: Option<&[String]>,
    decode: fn(&AnyRow) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let first = 1 + usize::from(lead.is_some());
    let chunks: Vec<Option<&[String]>> = match tenants {
        None => vec![None],
        Some(t) => t.chunks(TENANTS_PER_QUERY_MAX).map(Some).collect(),
    };
    let mut out = Vec::new();
    for chunk in chunks {
        let sql = match chunk {
            None => sql_all.to_string(),
            Some(c) => sql_in.replace("{in}", &list(first, c.len())),
        };
        let mut q = sqlx::query(&sql);
        if let Some(v) = lead {
            q = q.bind(v);
        }
        for t in chunk.unwrap_or_default() {
            q = q.bind(t.clone());
        }
        for r in q.fetch_all(&mut *conn).await? {
            out.push(decode(&r)?);
        }
    }
    Ok(out)
}

fn decode_bucket(r: &AnyRow) -> StoreResult<BucketRow> {
    Ok(BucketRow {
        tenant_id: r.try_get("tenant_id")?,
        from_domain: r.try_get("from_domain")?,
        bucket_start_ms: r.try_get("bucket_start_ms")?,
        sent: r.try_get("sent")?,
        bounced_hard: r.try_get("bounced_hard")?,
        complained: r.try_get("complained")?,
    })
}

/// The buckets from `since_bucket_ms` on, of `tenants` (None: of every tenant with an id).
pub async fn window_buckets(
    conn: &mut AnyConnection,
    since_bucket_ms: i64,
    tenants: Option<&[String]>,
) -> StoreResult<Vec<BucketRow>> {
    const COLS: &str = "tenant_id, from_domain, bucket_start_ms, sent, bounced_hard, complained";
    by_tenants(
        conn,
        &format!("SELECT {COLS} FROM event_stats WHERE bucket_start_ms >= $1 AND tenant_id <> ''"),
        &format!(
            "SELECT {COLS} FROM event_stats WHERE tenant_id IN ({{in}}) AND bucket_start_ms >= $1"
        ),
        Some(since_bucket_ms),
        tenants,
        decode_bucket,
    )
    .await
}

fn decode_state(r: &AnyRow) -> StoreResult<StateRow> {
    Ok(StateRow {
        tenant_id: r.try_get("tenant_id")?,
        scope_domain: r.try_get("scope_domain")?,
        metric: r.try_get("metric")?,
        level: r.try_get("level")?,
        note: r.try_get("note")?,
        rate_ppm: r.try_get("rate_ppm")?,
        volume: r.try_get("volume")?,
        changed_unix_ms: r.try_get("changed_unix_ms")?,
    })
}

/// The levels of `tenants` (None: of every tenant), tenant then scope then metric.
pub async fn states(
    conn: &mut AnyConnection,
    tenants: Option<&[String]>,
) -> StoreResult<Vec<StateRow>> {
    by_tenants(
        conn,
        "SELECT * FROM guard_states ORDER BY tenant_id, scope_domain, metric",
        "SELECT * FROM guard_states WHERE tenant_id IN ({in}) \
         ORDER BY tenant_id, scope_domain, metric",
        None,
        tenants,
        decode_state,
    )
    .await
}

/// Stores a scope's level for one metric (replacing the one before).
pub async fn set_state(conn: &mut AnyConnection, s: &StateRow) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO guard_states (tenant_id, scope_domain, metric, level, note, rate_ppm, \
         volume, changed_unix_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) \
         ON CONFLICT (tenant_id, scope_domain, metric) DO UPDATE SET level = excluded.level, \
         note = excluded.note, rate_ppm = excluded.rate_ppm, volume = excluded.volume, \
         changed_unix_ms = excluded.changed_unix_ms",
    )
    .bind(s.tenant_id.clone())
    .bind(s.scope_domain.clone())
    .bind(s.metric.clone())
    .bind(s.level.clone())
    .bind(s.note.clone())
    .bind(s.rate_ppm)
    .bind(s.volume)
    .bind(s.changed_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Back to `ok`: the row goes. `metric` None: every metric of the scope.
pub async fn clear_state(
    conn: &mut AnyConnection,
    tenant_id: &str,
    scope_domain: &str,
    metric: Option<&str>,
) -> StoreResult<u64> {
    let mut q = sqlx::query(if metric.is_some() {
        "DELETE FROM guard_states WHERE tenant_id = $1 AND scope_domain = $2 AND metric = $3"
    } else {
        "DELETE FROM guard_states WHERE tenant_id = $1 AND scope_domain = $2"
    })
    .bind(tenant_id.to_string())
    .bind(scope_domain.to_string());
    if let Some(m) = metric {
        q = q.bind(m.to_string());
    }
    Ok(q.execute(conn).await?.rows_affected())
}

fn decode_baseline(r: &AnyRow) -> StoreResult<BaselineRow> {
    Ok(BaselineRow {
        tenant_id: r.try_get("tenant_id")?,
        scope_domain: r.try_get("scope_domain")?,
        bucket_start_ms: r.try_get("bucket_start_ms")?,
        sent: r.try_get("sent")?,
        bounced_hard: r.try_get("bounced_hard")?,
        complained: r.try_get("complained")?,
        set_unix_ms: r.try_get("set_unix_ms")?,
    })
}

/// The re-enable baselines of `tenants` (None: every one).
pub async fn baselines(
    conn: &mut AnyConnection,
    tenants: Option<&[String]>,
) -> StoreResult<Vec<BaselineRow>> {
    by_tenants(
        conn,
        "SELECT * FROM guard_baselines",
        "SELECT * FROM guard_baselines WHERE tenant_id IN ({in})",
        None,
        tenants,
        decode_baseline,
    )
    .await
}

/// Stores a scope's baseline (replacing the one before).
pub async fn set_baseline(conn: &mut AnyConnection, b: &BaselineRow) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO guard_baselines (tenant_id, scope_domain, bucket_start_ms, sent, \
         bounced_hard, complained, set_unix_ms) VALUES ($1,$2,$3,$4,$5,$6,$7) \
         ON CONFLICT (tenant_id, scope_domain) DO UPDATE SET \
         bucket_start_ms = excluded.bucket_start_ms, sent = excluded.sent, \
         bounced_hard = excluded.bounced_hard, complained = excluded.complained, \
         set_unix_ms = excluded.set_unix_ms",
    )
    .bind(b.tenant_id.clone())
    .bind(b.scope_domain.clone())
    .bind(b.bucket_start_ms)
    .bind(b.sent)
    .bind(b.bounced_hard)
    .bind(b.complained)
    .bind(b.set_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes baselines whose bucket has left every window (`before_bucket_ms`).
pub async fn purge_baselines(conn: &mut AnyConnection, before_bucket_ms: i64) -> StoreResult<u64> {
    Ok(
        sqlx::query("DELETE FROM guard_baselines WHERE bucket_start_ms < $1")
            .bind(before_bucket_ms)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// The sending domains of `tenants` (None: every one), as (tenant id, name).
pub async fn domains(
    conn: &mut AnyConnection,
    tenants: Option<&[String]>,
) -> StoreResult<Vec<(String, String)>> {
    fn decode(r: &AnyRow) -> StoreResult<(String, String)> {
        Ok((r.try_get("tenant_id")?, r.try_get("name")?))
    }
    by_tenants(
        conn,
        "SELECT tenant_id, name FROM domains",
        "SELECT tenant_id, name FROM domains WHERE tenant_id IN ({in})",
        None,
        tenants,
        decode,
    )
    .await
}

/// Records that an operator lifted `tenant_id`'s new-tenant cap (idempotent; the first lift
/// is kept).
pub async fn lift_cap(
    conn: &mut AnyConnection,
    tenant_id: &str,
    by: &str,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO guard_cap_lifts (tenant_id, lifted_by, lifted_unix_ms) VALUES ($1,$2,$3) \
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(tenant_id.to_string())
    .bind(by.to_string())
    .bind(now_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Tenants whose cap was lifted.
pub async fn cap_lifts(conn: &mut AnyConnection) -> StoreResult<HashSet<String>> {
    sqlx::query("SELECT tenant_id FROM guard_cap_lifts")
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("tenant_id")?))
        .collect()
}
