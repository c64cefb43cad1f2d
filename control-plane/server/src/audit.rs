//! The append-only, hash-chained audit log.
//!
//! Each row stores `hash = sha256(prev_hash || canonical(row))` where `prev_hash` is the previous
//! row's hash (64 zeros for the first row) and `canonical(row)` is the JSON of the row's fields
//! in a fixed order, with `before`/`after` as their stored text. Changing, deleting or inserting a
//! row breaks the chain at that row; [`verify`] walks the chain and reports the first broken link.
//! The head (last seq and hash) is also kept in `petrel_meta`, so cutting rows off the end is
//! caught too.
//! Rows are appended only inside a [`crate::store::Mutation`], which holds the write lock.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::ControlError;

/// The `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Rows read per query while verifying the chain.
pub const VERIFY_PAGE_ROWS: i64 = 1_000;
/// Most rows one `GET /v1/audit-log` answers.
pub const LIST_LIMIT_MAX: i64 = 1_000;
/// Rows answered when the request gives no limit.
pub const LIST_LIMIT_DEFAULT: i64 = 100;

/// What a mutation records.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// The tenant whose data changed (None: global settings).
    pub tenant_id: Option<String>,
    /// Who: `key:<prefix>` for API keys, `system:<what>` for internal actions.
    pub actor: String,
    /// From which address (the TCP peer of the API call).
    pub remote_addr: String,
    /// What: `tenant.create`, `domain.rotate`, ...
    pub action: String,
    /// The id (or name) of the changed object.
    pub target: String,
    pub at_unix_ms: i64,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// One stored row, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub remote_addr: String,
    pub action: String,
    pub target: String,
    pub at_unix_ms: i64,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub prev_hash: String,
    pub hash: String,
}

/// The fields hashed, in this order.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    tenant_id: Option<&'a str>,
    actor: &'a str,
    remote_addr: &'a str,
    action: &'a str,
    target: &'a str,
    at_unix_ms: i64,
    before: Option<&'a str>,
    after: Option<&'a str>,
}

fn chain_hash(prev_hash: &str, c: &Canonical<'_>) -> Result<String, ControlError> {
    let body = serde_json::to_vec(c).map_err(|e| ControlError::Corrupt(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(&body);
    Ok(hex::encode(h.finalize()))
}

/// Appends one row. The caller holds the mutation lock (see the module doc).
pub async fn append(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    e: &AuditEntry,
) -> Result<(), ControlError> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (seq, prev_hash) = match last {
        Some(r) => (
            r.try_get::<i64, _>("seq")? + 1,
            r.try_get::<String, _>("hash")?,
        ),
        None => (1, GENESIS_HASH.to_string()),
    };
    let before = e.before.as_ref().map(|v| v.to_string());
    let after = e.after.as_ref().map(|v| v.to_string());
    let hash = chain_hash(
        &prev_hash,
        &Canonical {
            seq,
            tenant_id: e.tenant_id.as_deref(),
            actor: &e.actor,
            remote_addr: &e.remote_addr,
            action: &e.action,
            target: &e.target,
            at_unix_ms: e.at_unix_ms,
            before: before.as_deref(),
            after: after.as_deref(),
        },
    )?;
    sqlx::query(
        "INSERT INTO audit_log (seq, tenant_id, actor, remote_addr, action, target, at_unix_ms, \
         before_json, after_json, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
    )
    .bind(seq)
    .bind(e.tenant_id.clone())
    .bind(e.actor.clone())
    .bind(e.remote_addr.clone())
    .bind(e.action.clone())
    .bind(e.target.clone())
    .bind(e.at_unix_ms)
    .bind(before)
    .bind(after)
    .bind(prev_hash)
    .bind(hash.clone())
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE petrel_meta SET audit_head_seq = $1, audit_head_hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Filters for [`list`]. `tenant_id: None` lists every tenant's rows (operator owners only).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant_id: Option<String>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub since_unix_ms: Option<i64>,
    pub until_unix_ms: Option<i64>,
    pub limit: Option<i64>,
}

/// Newest first.
pub async fn list(pool: &sqlx::AnyPool, f: &AuditFilter) -> Result<Vec<AuditRow>, ControlError> {
    // Fixed SQL with "no filter" sentinels keeps the query prepared and injection-free.
    let limit = f
        .limit
        .unwrap_or(LIST_LIMIT_DEFAULT)
        .clamp(1, LIST_LIMIT_MAX);
    let rows = sqlx::query(
        "SELECT * FROM audit_log WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR action = $2) \
         AND ($3 = '' OR actor = $3) AND at_unix_ms >= $4 AND at_unix_ms <= $5 \
         ORDER BY seq DESC LIMIT $6",
    )
    .bind(f.tenant_id.clone().unwrap_or_default())
    .bind(f.action.clone().unwrap_or_default())
    .bind(f.actor.clone().unwrap_or_default())
    .bind(f.since_unix_ms.unwrap_or(0))
    .bind(f.until_unix_ms.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(row_from).collect()
}

fn parse_json(text: Option<String>) -> Option<serde_json::Value> {
    text.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)))
}

fn row_from(r: &AnyRow) -> Result<AuditRow, ControlError> {
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        tenant_id: r.try_get("tenant_id")?,
        actor: r.try_get("actor")?,
        remote_addr: r.try_get("remote_addr")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        at_unix_ms: r.try_get("at_unix_ms")?,
        before: parse_json(r.try_get("before_json")?),
        after: parse_json(r.try_get("after_json")?),
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// The outcome of a chain walk.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    pub rows_checked: u64,
    /// The first row whose link does not hold.
    pub first_broken_seq: Option<i64>,
    pub reason: Option<String>,
}

/// The chain ended at `last_seq`/`last_hash`: it must be the head recorded in `petrel_meta`.
async fn verify_head(
    pool: &sqlx::AnyPool,
    last_seq: i64,
    last_hash: &str,
    checked: u64,
) -> Result<VerifyReport, ControlError> {
    let meta = sqlx::query("SELECT audit_head_seq, audit_head_hash FROM petrel_meta WHERE id = 1")
        .fetch_one(pool)
        .await?;
    let head_seq: i64 = meta.try_get("audit_head_seq")?;
    let head_hash: String = meta.try_get("audit_head_hash")?;
    if head_seq == last_seq && head_hash == last_hash {
        return Ok(VerifyReport {
            ok: true,
            rows_checked: checked,
            first_broken_seq: None,
            reason: None,
        });
    }
    Ok(VerifyReport {
        ok: false,
        rows_checked: checked,
        first_broken_seq: Some(last_seq + 1),
        reason: Some(format!(
            "the chain ends at seq {last_seq} but the recorded head is seq {head_seq} \
             (rows were removed from the end, or the head was altered)"
        )),
    })
}

/// Walks the whole chain in `seq` order, then checks it ends at the recorded head.
pub async fn verify(pool: &sqlx::AnyPool) -> Result<VerifyReport, ControlError> {
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut expected_seq = 1i64;
    let mut checked = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT seq, tenant_id, actor, remote_addr, action, target, at_unix_ms, before_json, \
             after_json, prev_hash, hash FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(expected_seq)
        .bind(VERIFY_PAGE_ROWS)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return verify_head(pool, expected_seq - 1, &prev_hash, checked).await;
        }
        for r in &rows {
            let seq: i64 = r.try_get("seq")?;
            let broken = |reason: &str| VerifyReport {
                ok: false,
                rows_checked: checked,
                first_broken_seq: Some(seq),
                reason: Some(reason.to_string()),
            };
            if seq != expected_seq {
                return Ok(broken("sequence gap (a row was deleted)"));
            }
            let stored_prev: String = r.try_get("prev_hash")?;
            if stored_prev != prev_hash {
                return Ok(broken("prev_hash does not match the previous row's hash"));
            }
            let tenant_id: Option<String> = r.try_get("tenant_id")?;
            let before: Option<String> = r.try_get("before_json")?;
            let after: Option<String> = r.try_get("after_json")?;
            let actor: String = r.try_get("actor")?;
            let remote_addr: String = r.try_get("remote_addr")?;
            let action: String = r.try_get("action")?;
            let target: String = r.try_get("target")?;
            let computed = chain_hash(
                &prev_hash,
                &Canonical {
                    seq,
                    tenant_id: tenant_id.as_deref(),
                    actor: &actor,
                    remote_addr: &remote_addr,
                    action: &action,
                    target: &target,
                    at_unix_ms: r.try_get("at_unix_ms")?,
                    before: before.as_deref(),
                    after: after.as_deref(),
                },
            )?;
            let stored: String = r.try_get("hash")?;
            if computed != stored {
                return Ok(broken("row content does not match its hash"));
            }
            prev_hash = stored;
            expected_seq += 1;
            checked += 1;
        }
    }
}
