//! `exports` and `export_chunks` (migration 13): tenant export jobs and their archives
//! (`crate::export`), and the paged reads of a tenant's tables that the job makes.
//!
//! An archive is stored in the database, not on a node's disk, so whichever node of a
//! PostgreSQL control plane answers the download has it. It is cut into chunks of at most
//! `crate::export::EXPORT_CHUNK_BYTES`, numbered from 0, each sealed under the tenant's data key
//! and bound to its export and number (`export_chunks.data|<id>:<n>`), so a chunk moved to
//! another export or place fails to open. A tenant has at most one running export (the partial
//! unique index `exports_running`); starting one retires the tenant's previous archive (its
//! expiry set to now, so the purge removes it).

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::sealed::{aad, Sealer};
use super::{StoreError, StoreResult};

/// Where an export job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportStatus {
    /// The job is writing the archive.
    Running,
    /// The archive is complete and can be fetched until it expires.
    Ready,
    /// The job stopped; `error` says why. Nothing of the archive is kept.
    Failed,
}

impl ExportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportStatus::Running => "running",
            ExportStatus::Ready => "ready",
            ExportStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> StoreResult<ExportStatus> {
        match s {
            "running" => Ok(ExportStatus::Running),
            "ready" => Ok(ExportStatus::Ready),
            "failed" => Ok(ExportStatus::Failed),
            other => Err(StoreError::Corrupt {
                column: "exports.status",
                reason: format!("unknown status {other:?}"),
            }),
        }
    }
}

/// One `exports` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    pub id: String,
    pub tenant_id: String,
    pub status: ExportStatus,
    pub created_unix_ms: i64,
    /// When the job ended (ready or failed); None while running.
    pub finished_unix_ms: Option<i64>,
    /// Archive bytes in chunks so far (running), or in all (ready).
    pub bytes: Option<i64>,
    /// Records (lines other than the header and the end) so far, or in all.
    pub rows_total: Option<i64>,
    /// Why a failed job failed (shown to the caller: no internals).
    pub error: Option<String>,
    /// After this instant the purge removes the row and its chunks; None while running.
    pub expires_unix_ms: Option<i64>,
}

impl ExportRow {
    /// A new running job.
    pub fn running(id: String, tenant_id: String, now_unix_ms: i64) -> ExportRow {
        ExportRow {
            id,
            tenant_id,
            status: ExportStatus::Running,
            created_unix_ms: now_unix_ms,
            finished_unix_ms: None,
            bytes: None,
            rows_total: None,
            error: None,
            expires_unix_ms: None,
        }
    }
}

fn decode(r: &AnyRow) -> StoreResult<ExportRow> {
    let status: String = r.try_get("status")?;
    Ok(ExportRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        status: ExportStatus::parse(&status)?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        finished_unix_ms: r.try_get("finished_unix_ms")?,
        bytes: r.try_get("bytes")?,
        rows_total: r.try_get("rows_total")?,
        error: r.try_get("error")?,
        expires_unix_ms: r.try_get("expires_unix_ms")?,
    })
}

/// The tenant's running export, if any.
pub async fn running(conn: &mut AnyConnection, tenant_id: &str) -> StoreResult<Option<ExportRow>> {
    sqlx::query("SELECT * FROM exports WHERE tenant_id = $1 AND status = 'running'")
        .bind(tenant_id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Inserts a new running job and retires the tenant's earlier exports (their expiry set to
/// `now_unix_ms`). A running one already there is a conflict.
pub async fn insert(conn: &mut AnyConnection, e: &ExportRow, now_unix_ms: i64) -> StoreResult<()> {
    sqlx::query(
        "UPDATE exports SET expires_unix_ms = $2 WHERE tenant_id = $1 AND status <> 'running' \
         AND (expires_unix_ms IS NULL OR expires_unix_ms > $2)",
    )
    .bind(e.tenant_id.clone())
    .bind(now_unix_ms)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO exports (id, tenant_id, status, created_unix_ms, finished_unix_ms, bytes, \
         rows_total, error, expires_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(e.id.clone())
    .bind(e.tenant_id.clone())
    .bind(e.status.as_str())
    .bind(e.created_unix_ms)
    .bind(e.finished_unix_ms)
    .bind(e.bytes)
    .bind(e.rows_total)
    .bind(e.error.clone())
    .bind(e.expires_unix_ms)
    .execute(conn)
    .await
    .map_err(|e| match StoreError::Database(e) {
        e if e.is_unique_violation() => StoreError::Conflict(RUNNING_CONFLICT),
        e => e,
    })?;
    Ok(())
}

/// What a second export of a tenant while one runs answers (409).
pub const RUNNING_CONFLICT: &str = "an export of this tenant is already running";

/// The tenant's current export: the newest one not expired at `now_unix_ms` (there is at most
/// one, see [`insert`]).
pub async fn current(
    conn: &mut AnyConnection,
    tenant_id: &str,
    now_unix_ms: i64,
) -> StoreResult<Option<ExportRow>> {
    sqlx::query(
        "SELECT * FROM exports WHERE tenant_id = $1 \
         AND (expires_unix_ms IS NULL OR expires_unix_ms > $2) \
         ORDER BY created_unix_ms DESC, id DESC LIMIT 1",
    )
    .bind(tenant_id.to_string())
    .bind(now_unix_ms)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(decode)
    .transpose()
}

/// The associated data of chunk `n` of export `id`.
fn chunk_aad(id: &str, n: i64) -> String {
    aad("export_chunks", "data", &format!("{id}:{n}"))
}

/// Seals chunk `n` of `tenant_id`'s export `id` and stores it, and records the job's progress
/// (`bytes`, `rows_total`) in the same transaction. False (nothing to commit) when the export
/// is no longer running: marked failed by another node, or purged.
pub async fn append_chunk(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    tenant_id: &str,
    id: &str,
    n: i64,
    plain: &[u8],
    progress: (i64, i64),
) -> StoreResult<bool> {
    let (bytes, rows) = progress;
    let moved = sqlx::query(
        "UPDATE exports SET bytes = $2, rows_total = $3 WHERE id = $1 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(bytes)
    .bind(rows)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if moved == 0 {
        return Ok(false);
    }
    let data = sealer
        .seal_bytes(conn, Some(tenant_id), &chunk_aad(id, n), plain)
        .await?;
    sqlx::query("INSERT INTO export_chunks (export_id, n, data) VALUES ($1, $2, $3)")
        .bind(id.to_string())
        .bind(n)
        .bind(data)
        .execute(conn)
        .await?;
    Ok(true)
}

/// Chunk `n` of export `id`, opened; None past the last one.
pub async fn chunk(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    id: &str,
    n: i64,
) -> StoreResult<Option<Vec<u8>>> {
    let row = sqlx::query("SELECT data FROM export_chunks WHERE export_id = $1 AND n = $2")
        .bind(id.to_string())
        .bind(n)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let stored: Vec<u8> = row.try_get("data")?;
    let opened = sealer.open_bytes(conn, &chunk_aad(id, n), &stored).await?;
    opened.map(Some).ok_or(StoreError::Corrupt {
        column: "export_chunks.data",
        reason: "the tenant's data key is gone".into(),
    })
}

/// Marks a running export ready with its totals, to expire at `expires_unix_ms`. False when it
/// was no longer running.
pub async fn finish(
    conn: &mut AnyConnection,
    id: &str,
    totals: (i64, i64),
    now_unix_ms: i64,
    expires_unix_ms: i64,
) -> StoreResult<bool> {
    let n = sqlx::query(
        "UPDATE exports SET status = 'ready', bytes = $2, rows_total = $3, finished_unix_ms = $4, \
         expires_unix_ms = $5 WHERE id = $1 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(totals.0)
    .bind(totals.1)
    .bind(now_unix_ms)
    .bind(expires_unix_ms)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Marks a running export failed with `error`, to expire at `expires_unix_ms`.
pub async fn fail(
    conn: &mut AnyConnection,
    id: &str,
    error: &str,
    now_unix_ms: i64,
    expires_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE exports SET status = 'failed', error = $2, finished_unix_ms = $3, \
         expires_unix_ms = $4 WHERE id = $1 AND status = 'running'",
    )
    .bind(id.to_string())
    .bind(error.to_string())
    .bind(now_unix_ms)
    .bind(expires_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks every export still running that was created before `created_before_unix_ms` failed
/// with `error`; returns their ids (their chunks are for the caller to delete).
pub async fn fail_running_before(
    conn: &mut AnyConnection,
    created_before_unix_ms: i64,
    error: &str,
    now_unix_ms: i64,
    expires_unix_ms: i64,
) -> StoreResult<Vec<String>> {
    let ids: Vec<String> = sqlx::query(
        "SELECT id FROM exports WHERE status = 'running' AND created_unix_ms < $1 ORDER BY id",
    )
    .bind(created_before_unix_ms)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.try_get("id"))
    .collect::<Result<_, _>>()?;
    for id in &ids {
        fail(&mut *conn, id, error, now_unix_ms, expires_unix_ms).await?;
    }
    Ok(ids)
}

/// At most `limit` exports expired at `now_unix_ms`.
pub async fn expired(
    conn: &mut AnyConnection,
    now_unix_ms: i64,
    limit: i64,
) -> StoreResult<Vec<String>> {
    sqlx::query("SELECT id FROM exports WHERE expires_unix_ms <= $1 ORDER BY id LIMIT $2")
        .bind(now_unix_ms)
        .bind(limit)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("id")?))
        .collect()
}

/// Deletes the lowest-numbered `rows_max` chunks of export `id`; returns how many it deleted.
pub async fn delete_chunks(conn: &mut AnyConnection, id: &str, rows_max: i64) -> StoreResult<u64> {
    Ok(sqlx::query(
        "DELETE FROM export_chunks WHERE export_id = $1 AND n < $2 + \
         (SELECT COALESCE(MIN(n), 0) FROM export_chunks WHERE export_id = $1)",
    )
    .bind(id.to_string())
    .bind(rows_max)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Deletes the row of export `id` (its chunks first, with [`delete_chunks`]).
pub async fn delete(conn: &mut AnyConnection, id: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM exports WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// The tables whose rows the export reads page by page, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTable {
    Domains,
    Credentials,
    Webhooks,
}

/// At most `limit` ids of `tenant_id`'s rows of `table` after `after` (by id; "" for the
/// first page).
pub async fn ids_page(
    conn: &mut AnyConnection,
    table: IdTable,
    tenant_id: &str,
    after: &str,
    limit: i64,
) -> StoreResult<Vec<String>> {
    let sql = match table {
        IdTable::Domains => {
            "SELECT id FROM domains WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        }
        IdTable::Credentials => {
            "SELECT id FROM credentials WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        }
        IdTable::Webhooks => {
            "SELECT id FROM webhooks WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        }
    };
    sqlx::query(sql)
        .bind(tenant_id.to_string())
        .bind(after.to_string())
        .bind(limit)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("id")?))
        .collect()
}

/// A DKIM key without its private half (never read by the export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyRow {
    pub id: String,
    pub domain_id: String,
    pub selector: String,
    pub algorithm: String,
    pub dns_txt: String,
    pub created_unix_ms: i64,
    pub activated_unix_ms: Option<i64>,
    pub retired_unix_ms: Option<i64>,
}

/// At most `limit` of `tenant_id`'s DKIM keys after id `after` (every key, also those past
/// their listing), without the private key column.
pub async fn public_keys_page(
    conn: &mut AnyConnection,
    tenant_id: &str,
    after: &str,
    limit: i64,
) -> StoreResult<Vec<PublicKeyRow>> {
    sqlx::query(
        "SELECT id, domain_id, selector, algorithm, dns_txt, created_unix_ms, activated_unix_ms, \
         retired_unix_ms FROM dkim_keys WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(tenant_id.to_string())
    .bind(after.to_string())
    .bind(limit)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(PublicKeyRow {
            id: r.try_get("id")?,
            domain_id: r.try_get("domain_id")?,
            selector: r.try_get("selector")?,
            algorithm: r.try_get("algorithm")?,
            dns_txt: r.try_get("dns_txt")?,
            created_unix_ms: r.try_get("created_unix_ms")?,
            activated_unix_ms: r.try_get("activated_unix_ms")?,
            retired_unix_ms: r.try_get("retired_unix_ms")?,
        })
    })
    .collect()
}
