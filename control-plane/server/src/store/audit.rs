//! The `audit_log` table and the chain head in `petrel_meta`. The hash chain itself (what is
//! hashed, how a walk decides) is [`crate::audit`]'s; this module only reads and writes rows.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::StoreResult;

/// One `audit_log` row, `before`/`after` as their stored JSON text (which is what is hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub remote_addr: String,
    pub action: String,
    pub target: String,
    pub at_unix_ms: i64,
    pub before_json: Option<String>,
    pub after_json: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    /// Past its retention: its content is gone, its hashes stay (see `crate::retention`).
    pub pruned: bool,
}

fn decode(r: &AnyRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        seq: r.try_get("seq")?,
        tenant_id: r.try_get("tenant_id")?,
        actor: r.try_get("actor")?,
        remote_addr: r.try_get("remote_addr")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        at_unix_ms: r.try_get("at_unix_ms")?,
        before_json: r.try_get("before_json")?,
        after_json: r.try_get("after_json")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        pruned: super::get_bool(r, "pruned")?,
    })
}

/// The newest row's seq and hash, if any.
pub async fn last(conn: &mut AnyConnection) -> StoreResult<Option<(i64, String)>> {
    let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("seq")?, r.try_get("hash")?)),
        None => None,
    })
}

/// Appends a row and moves the recorded head to it. The caller holds the mutation lock.
pub async fn insert(conn: &mut AnyConnection, r: &AuditRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit_log (seq, tenant_id, actor, remote_addr, action, target, at_unix_ms, \
         before_json, after_json, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
    )
    .bind(r.seq)
    .bind(r.tenant_id.clone())
    .bind(r.actor.clone())
    .bind(r.remote_addr.clone())
    .bind(r.action.clone())
    .bind(r.target.clone())
    .bind(r.at_unix_ms)
    .bind(r.before_json.clone())
    .bind(r.after_json.clone())
    .bind(r.prev_hash.clone())
    .bind(r.hash.clone())
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE petrel_meta SET audit_head_seq = $1, audit_head_hash = $2 WHERE id = 1")
        .bind(r.seq)
        .bind(r.hash.clone())
        .execute(conn)
        .await?;
    Ok(())
}

/// The recorded head: last seq and hash.
pub async fn head(conn: &mut AnyConnection) -> StoreResult<(i64, String)> {
    let meta = sqlx::query("SELECT audit_head_seq, audit_head_hash FROM petrel_meta WHERE id = 1")
        .fetch_one(conn)
        .await?;
    Ok((
        meta.try_get("audit_head_seq")?,
        meta.try_get("audit_head_hash")?,
    ))
}

/// Up to `rows_max` rows from `from_seq` on, in seq order.
pub async fn page(
    conn: &mut AnyConnection,
    from_seq: i64,
    rows_max: i64,
) -> StoreResult<Vec<AuditRecord>> {
    sqlx::query("SELECT * FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2")
        .bind(from_seq)
        .bind(rows_max)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Row filters; `None` means "any". `tenant_id: None` lists every tenant's rows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant_id: Option<String>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub since_unix_ms: Option<i64>,
    pub until_unix_ms: Option<i64>,
}

/// The filter of [`list`] and [`page_filtered`], `$1`..`$5`: fixed SQL with "no filter"
/// sentinels keeps the queries prepared and injection-free.
macro_rules! filter_sql {
    () => {
        "($1 = '' OR tenant_id = $1) AND ($2 = '' OR action = $2) AND ($3 = '' OR actor = $3) \
         AND at_unix_ms >= $4 AND at_unix_ms <= $5 AND pruned = 0"
    };
}

/// `sql` with the filter's five arguments bound.
fn filtered<'q>(
    sql: &'q str,
    f: &AuditFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(f.tenant_id.clone().unwrap_or_default())
        .bind(f.action.clone().unwrap_or_default())
        .bind(f.actor.clone().unwrap_or_default())
        .bind(f.since_unix_ms.unwrap_or(0))
        .bind(f.until_unix_ms.unwrap_or(i64::MAX))
}

/// Matching rows, newest first, at most `rows_max`.
pub async fn list(
    conn: &mut AnyConnection,
    f: &AuditFilter,
    rows_max: i64,
) -> StoreResult<Vec<AuditRecord>> {
    const SQL: &str = concat!(
        "SELECT * FROM audit_log WHERE ",
        filter_sql!(),
        " ORDER BY seq DESC LIMIT $6"
    );
    filtered(SQL, f)
        .bind(rows_max)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// The stored hash of row `seq`, if it exists.
pub async fn hash_at(conn: &mut AnyConnection, seq: i64) -> StoreResult<Option<String>> {
    let row = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(seq)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("hash")?),
        None => None,
    })
}

/// Matching rows after `after_seq`, oldest first, at most `rows_max` (the streamed export).
pub async fn page_filtered(
    conn: &mut AnyConnection,
    f: &AuditFilter,
    after_seq: i64,
    rows_max: i64,
) -> StoreResult<Vec<AuditRecord>> {
    const SQL: &str = concat!(
        "SELECT * FROM audit_log WHERE ",
        filter_sql!(),
        " AND seq > $6 ORDER BY seq LIMIT $7"
    );
    filtered(SQL, f)
        .bind(after_seq)
        .bind(rows_max)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Up to `rows_max` seqs of one owner's rows (None: rows without a tenant) older than
/// `cutoff_ms` and not yet pruned, oldest first; never the pruning records themselves.
pub async fn prunable(
    conn: &mut AnyConnection,
    tenant_id: Option<&str>,
    cutoff_ms: i64,
    rows_max: i64,
) -> StoreResult<Vec<i64>> {
    let sql = if tenant_id.is_some() {
        "SELECT seq FROM audit_log WHERE tenant_id = $1 AND pruned = 0 AND at_unix_ms < $2 \
         AND action <> $3 ORDER BY at_unix_ms LIMIT $4"
    } else {
        "SELECT seq FROM audit_log WHERE tenant_id IS NULL AND pruned = 0 AND at_unix_ms < $2 \
         AND action <> $3 AND $1 = '' ORDER BY at_unix_ms LIMIT $4"
    };
    sqlx::query(sql)
        .bind(tenant_id.unwrap_or_default().to_string())
        .bind(cutoff_ms)
        .bind(crate::retention::AUDIT_PRUNED_ACTION)
        .bind(rows_max)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| Ok(r.try_get::<i64, _>("seq")?))
        .collect()
}

/// Empties the rows `seqs` of everything but their place in the chain (seq, owner, time,
/// hashes) and marks them pruned.
pub async fn prune(conn: &mut AnyConnection, seqs: &[i64]) -> StoreResult<()> {
    for chunk in seqs.chunks(PRUNE_SEQS_PER_STATEMENT) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "UPDATE audit_log SET actor = '', remote_addr = '', action = '', target = '', \
             before_json = NULL, after_json = NULL, pruned = 1 WHERE seq IN ({list})"
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q.bind(*s);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Seqs bound in one [`prune`] statement.
const PRUNE_SEQS_PER_STATEMENT: usize = 500;

/// The targets of every pruning record (their seq ranges), in seq order.
pub async fn pruning_records(conn: &mut AnyConnection) -> StoreResult<Vec<(i64, String)>> {
    sqlx::query("SELECT seq, target FROM audit_log WHERE action = $1 ORDER BY seq")
        .bind(crate::retention::AUDIT_PRUNED_ACTION)
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("seq")?, r.try_get("target")?)))
        .collect()
}

/// Claims an engine signal's event id for the audit log: true the first time, false when a
/// resent batch brings it again (run in the mutation that appends its row).
pub async fn claim_signal(
    conn: &mut AnyConnection,
    event_id: &str,
    at_unix_ms: i64,
) -> StoreResult<bool> {
    Ok(sqlx::query(
        "INSERT INTO audit_signal_ids (event_id, at_unix_ms) VALUES ($1, $2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id.to_string())
    .bind(at_unix_ms)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Forgets signal ids older than `before_unix_ms` (an engine resends a batch for minutes or
/// days, not for a month). Returns how many.
pub async fn purge_signal_ids(conn: &mut AnyConnection, before_unix_ms: i64) -> StoreResult<u64> {
    Ok(
        sqlx::query("DELETE FROM audit_signal_ids WHERE at_unix_ms < $1")
            .bind(before_unix_ms)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}
