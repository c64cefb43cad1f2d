//! The append-only, hash-chained audit log.
//!
//! Each row stores `hash = sha256(prev_hash || canonical(row))` where `prev_hash` is the previous
//! row's hash (64 zeros for the first row) and `canonical(row)` is the JSON of the row's fields
//! in a fixed order, with `before`/`after` as their stored text. Changing, deleting or inserting a
//! row breaks the chain at that row; [`verify`] walks the chain and reports the first broken link.
//! The head (last seq and hash) is also kept in `petrel_meta`, so cutting rows off the end is
//! caught too.
//! Rows are appended only inside a [`crate::store::Mutation`], which holds the write lock.
//!
//! `before`, `after`, `target` and `remote_addr` are sealed under the row's tenant's data key
//! (the operator's for a row without one; `store/sealed.rs`), and the chain hashes them as stored: destroying a deleted
//! tenant's keys leaves its rows unreadable (their personal data redacted) while every link
//! still verifies. Rows written before sealing keep their clear text, which their hashes cover.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

pub use crate::store::audit::AuditFilter;
use crate::store::audit::AuditRecord;
use crate::store::sealed::{aad, Sealer};
use crate::store::{StoreError, StoreResult};

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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    pub seq: i64,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub remote_addr: String,
    pub action: String,
    pub target: String,
    pub at_unix_ms: i64,
    /// The object before the change (any JSON value).
    pub before: Option<serde_json::Value>,
    /// The object after the change (any JSON value).
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

impl<'a> Canonical<'a> {
    fn of(r: &'a AuditRecord) -> Canonical<'a> {
        Canonical {
            seq: r.seq,
            tenant_id: r.tenant_id.as_deref(),
            actor: &r.actor,
            remote_addr: &r.remote_addr,
            action: &r.action,
            target: &r.target,
            at_unix_ms: r.at_unix_ms,
            before: r.before_json.as_deref(),
            after: r.after_json.as_deref(),
        }
    }
}

fn chain_hash(prev_hash: &str, c: &Canonical<'_>) -> StoreResult<String> {
    let body = serde_json::to_vec(c).map_err(|e| StoreError::Corrupt {
        column: "audit_log",
        reason: e.to_string(),
    })?;
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(&body);
    Ok(hex::encode(h.finalize()))
}

/// What a reader sees of a payload whose tenant's keys were destroyed.
pub const REDACTED: &str = "redacted: the tenant's data keys were destroyed";
/// What a reader sees of such a row's target and address.
pub const REDACTED_FIELD: &str = "(redacted)";

fn payload_aad(seq: i64, which: &str) -> String {
    aad("audit_log", which, &seq.to_string())
}

/// Appends one row. The caller holds the mutation lock (see the module doc).
pub async fn append(conn: &mut AnyConnection, sealer: &Sealer, e: &AuditEntry) -> StoreResult<()> {
    let (seq, prev_hash) = match crate::store::audit::last(&mut *conn).await? {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS_HASH.to_string()),
    };
    let owner = e.tenant_id.as_deref();
    let mut sealed = [None, None];
    for (slot, (which, value)) in sealed
        .iter_mut()
        .zip([("before", &e.before), ("after", &e.after)])
    {
        if let Some(v) = value {
            let aad = payload_aad(seq, which);
            *slot = Some(sealer.seal_text(conn, owner, &aad, &v.to_string()).await?);
        }
    }
    let [before_json, after_json] = sealed;
    // The target (an address, a name) and the caller's address are personal data too; a
    // pruning record's target (seq ranges) stays clear for the chain walk.
    let target = if e.action == crate::retention::AUDIT_PRUNED_ACTION {
        e.target.clone()
    } else {
        sealer
            .seal_text(conn, owner, &payload_aad(seq, "target"), &e.target)
            .await?
    };
    let remote_addr = sealer
        .seal_text(
            conn,
            owner,
            &payload_aad(seq, "remote_addr"),
            &e.remote_addr,
        )
        .await?;
    let mut record = AuditRecord {
        seq,
        tenant_id: e.tenant_id.clone(),
        actor: e.actor.clone(),
        remote_addr,
        action: e.action.clone(),
        target,
        at_unix_ms: e.at_unix_ms,
        before_json,
        after_json,
        prev_hash,
        hash: String::new(),
        pruned: false,
    };
    record.hash = chain_hash(&record.prev_hash, &Canonical::of(&record))?;
    crate::store::audit::insert(conn, &record).await
}

/// Newest first; `limit` defaults to [`LIST_LIMIT_DEFAULT`], clamped to 1..=[`LIST_LIMIT_MAX`].
pub async fn list(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    f: &AuditFilter,
    limit: Option<i64>,
) -> StoreResult<Vec<AuditRow>> {
    let limit = limit.unwrap_or(LIST_LIMIT_DEFAULT).clamp(1, LIST_LIMIT_MAX);
    let rows = crate::store::audit::list(&mut *conn, f, limit).await?;
    opened(conn, sealer, rows).await
}

/// Matching rows after `after_seq`, oldest first, at most `rows_max`, opened (the export).
pub async fn page(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    f: &AuditFilter,
    after_seq: i64,
    rows_max: i64,
) -> StoreResult<Vec<AuditRow>> {
    let rows = crate::store::audit::page_filtered(&mut *conn, f, after_seq, rows_max).await?;
    opened(conn, sealer, rows).await
}

/// Rows as the API shows them: payloads opened, or [`REDACTED`].
async fn opened(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    rows: Vec<AuditRecord>,
) -> StoreResult<Vec<AuditRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for mut r in rows {
        for (which, text) in [
            ("target", &mut r.target),
            ("remote_addr", &mut r.remote_addr),
        ] {
            let aad = payload_aad(r.seq, which);
            *text = sealer
                .open_text(conn, &aad, text)
                .await?
                .unwrap_or_else(|| REDACTED_FIELD.to_string());
        }
        for (which, text) in [("before", &mut r.before_json), ("after", &mut r.after_json)] {
            if let Some(stored) = text.take() {
                let aad = payload_aad(r.seq, which);
                let opened = sealer.open_text(conn, &aad, &stored).await?;
                *text = Some(
                    opened
                        .unwrap_or_else(|| serde_json::Value::String(REDACTED.into()).to_string()),
                );
            }
        }
        out.push(view(r));
    }
    Ok(out)
}

fn parse_json(text: Option<String>) -> Option<serde_json::Value> {
    text.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)))
}

fn view(r: AuditRecord) -> AuditRow {
    AuditRow {
        seq: r.seq,
        tenant_id: r.tenant_id,
        actor: r.actor,
        remote_addr: r.remote_addr,
        action: r.action,
        target: r.target,
        at_unix_ms: r.at_unix_ms,
        before: parse_json(r.before_json),
        after: parse_json(r.after_json),
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

/// The outcome of a chain walk.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    pub rows_checked: u64,
    /// The first row whose link does not hold.
    pub first_broken_seq: Option<i64>,
    pub reason: Option<String>,
    /// The signed checkpoints (`audit_anchor.rs`), when they were checked too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<crate::audit_anchor::AnchorReport>,
}

/// The chain ended at `last_seq`/`last_hash`: it must be the head recorded in `petrel_meta`.
async fn verify_head(
    conn: &mut AnyConnection,
    last_seq: i64,
    last_hash: &str,
    checked: u64,
) -> StoreResult<VerifyReport> {
    let (head_seq, head_hash) = crate::store::audit::head(conn).await?;
    if head_seq == last_seq && head_hash == last_hash {
        return Ok(VerifyReport {
            ok: true,
            rows_checked: checked,
            first_broken_seq: None,
            reason: None,
            checkpoints: None,
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
        checkpoints: None,
    })
}

/// Walks the whole chain in `seq` order, then checks it ends at the recorded head. A pruned
/// row (past its retention, `crate::retention`) keeps its hashes: its link is checked, and it
/// must be listed by a later pruning record (whose own content the chain covers), so blanking
/// a row is caught like editing it.
pub async fn verify(conn: &mut AnyConnection) -> StoreResult<VerifyReport> {
    // Every pruned range with the record that lists it, sorted by start: ranges never overlap
    // (a row is pruned once), so the one that could hold a seq is found by binary search.
    let mut pruned_by = Vec::new();
    for (record_seq, target) in crate::store::audit::pruning_records(&mut *conn).await? {
        for (a, b) in crate::retention::parse_ranges(&target) {
            pruned_by.push((a, b, record_seq));
        }
    }
    pruned_by.sort_unstable();
    let covered = |seq: i64| {
        let i = pruned_by.partition_point(|&(a, _, _)| a <= seq);
        i > 0 && {
            let (_, b, rec) = pruned_by[i - 1];
            seq <= b && rec > seq
        }
    };
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut expected_seq = 1i64;
    let mut checked = 0u64;
    loop {
        let rows = crate::store::audit::page(&mut *conn, expected_seq, VERIFY_PAGE_ROWS).await?;
        if rows.is_empty() {
            return verify_head(conn, expected_seq - 1, &prev_hash, checked).await;
        }
        for r in &rows {
            let broken = |reason: &str| VerifyReport {
                ok: false,
                rows_checked: checked,
                first_broken_seq: Some(r.seq),
                reason: Some(reason.to_string()),
                checkpoints: None,
            };
            if r.seq != expected_seq {
                return Ok(broken("sequence gap (a row was deleted)"));
            }
            if r.prev_hash != prev_hash {
                return Ok(broken("prev_hash does not match the previous row's hash"));
            }
            if r.pruned {
                if !covered(r.seq) {
                    return Ok(broken(
                        "row emptied without a pruning record (its content was removed)",
                    ));
                }
            } else if chain_hash(&prev_hash, &Canonical::of(r))? != r.hash {
                return Ok(broken("row content does not match its hash"));
            }
            prev_hash = r.hash.clone();
            expected_seq += 1;
            checked += 1;
        }
    }
}
