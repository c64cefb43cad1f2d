//! The `engines` table: which engines connected, what they were sent and applied. Kept in the
//! database so any control plane node can answer `GET /v1/engines`.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{get_bool, StoreResult};

/// One `engines` row (also the API's view).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EngineRow {
    pub id: String,
    pub remote_addr: String,
    pub connected: bool,
    pub connected_unix_ms: i64,
    pub last_contact_unix_ms: i64,
    /// Newest snapshot version sent.
    pub sent_version: i64,
    /// Newest snapshot version the engine acknowledged as applied.
    pub applied_version: i64,
    /// Newest events batch (`batch_seq`) committed and acknowledged.
    pub events_acked_seq: i64,
    /// The suppression change-log seq the engine says its set reflects.
    pub suppression_version: i64,
}

fn decode(r: &AnyRow) -> StoreResult<EngineRow> {
    Ok(EngineRow {
        id: r.try_get("id")?,
        remote_addr: r.try_get("remote_addr")?,
        connected: get_bool(r, "connected")?,
        connected_unix_ms: r.try_get("connected_unix_ms")?,
        last_contact_unix_ms: r.try_get("last_contact_unix_ms")?,
        sent_version: r.try_get("sent_version")?,
        applied_version: r.try_get("applied_version")?,
        events_acked_seq: r.try_get("events_acked_seq")?,
        suppression_version: r.try_get("suppression_version")?,
    })
}

/// Engines by id, at most `rows_max`.
pub async fn list(conn: &mut AnyConnection, rows_max: i64) -> StoreResult<Vec<EngineRow>> {
    sqlx::query("SELECT * FROM engines ORDER BY id LIMIT $1")
        .bind(rows_max)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Records a (re)connected engine and the version it says it applied.
pub async fn register(
    conn: &mut AnyConnection,
    id: &str,
    remote_addr: &str,
    applied_version: i64,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO engines (id, remote_addr, connected, connected_unix_ms, last_contact_unix_ms, \
         sent_version, applied_version) VALUES ($1,$2,1,$3,$3,0,$4) ON CONFLICT (id) DO UPDATE \
         SET remote_addr = excluded.remote_addr, connected = 1, \
         connected_unix_ms = excluded.connected_unix_ms, \
         last_contact_unix_ms = excluded.last_contact_unix_ms, \
         applied_version = excluded.applied_version",
    )
    .bind(id.to_string())
    .bind(remote_addr.to_string())
    .bind(now_unix_ms)
    .bind(applied_version)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks an engine disconnected.
pub async fn disconnect(conn: &mut AnyConnection, id: &str) -> StoreResult<()> {
    sqlx::query("UPDATE engines SET connected = 0 WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Engines connected to some node and heard from since `since_unix_ms`.
pub async fn live_count(conn: &mut AnyConnection, since_unix_ms: i64) -> StoreResult<u32> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM engines WHERE connected = 1 AND last_contact_unix_ms >= $1",
    )
    .bind(since_unix_ms)
    .fetch_one(conn)
    .await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// What to record about an engine besides the contact time.
#[derive(Debug, Clone, Copy)]
pub enum Touch {
    Contact,
    Sent(i64),
    Applied(i64),
    /// The engine's suppression set reflects the change log up to this seq.
    Suppressions(i64),
}

/// Records contact with an engine (and a version sent or applied).
pub async fn touch(
    conn: &mut AnyConnection,
    id: &str,
    what: Touch,
    now_unix_ms: i64,
) -> StoreResult<()> {
    let (sql, version) = match what {
        Touch::Contact => (
            "UPDATE engines SET last_contact_unix_ms = $1 WHERE id = $2",
            None,
        ),
        Touch::Sent(x) => (
            "UPDATE engines SET last_contact_unix_ms = $1, sent_version = $3 WHERE id = $2",
            Some(x),
        ),
        Touch::Applied(x) => (
            "UPDATE engines SET last_contact_unix_ms = $1, applied_version = $3 WHERE id = $2",
            Some(x),
        ),
        Touch::Suppressions(x) => (
            "UPDATE engines SET last_contact_unix_ms = $1, suppression_version = $3 WHERE id = $2",
            Some(x),
        ),
    };
    let mut q = sqlx::query(sql).bind(now_unix_ms).bind(id.to_string());
    if let Some(x) = version {
        q = q.bind(x);
    }
    q.execute(conn).await?;
    Ok(())
}

/// The newest events batch committed for engine `id` (0: none yet, or no such engine).
pub async fn events_acked_seq(conn: &mut AnyConnection, id: &str) -> StoreResult<u64> {
    let row = sqlx::query("SELECT events_acked_seq FROM engines WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    let seq = row
        .map(|r| r.try_get::<i64, _>("events_acked_seq"))
        .transpose()?
        .unwrap_or(0);
    Ok(u64::try_from(seq).unwrap_or(0))
}

/// Records that engine `id`'s batches up to `seq` are committed (in the batch's transaction).
pub async fn set_events_acked_seq(
    conn: &mut AnyConnection,
    id: &str,
    seq: u64,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        // Never backwards, even if two sessions of one engine race.
        "UPDATE engines SET events_acked_seq = $1, last_contact_unix_ms = $2 \
         WHERE id = $3 AND events_acked_seq < $1",
    )
    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
    .bind(now_unix_ms)
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}
