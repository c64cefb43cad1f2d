//! The `domain_checks` table: each sending domain's last DNS authentication check (DKIM, SPF,
//! DMARC) and its verdict. One row per domain, replaced by every check; the snapshot reads the
//! failing ones (`failing_check` set), which is why only a change of verdict is a policy change.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::StoreResult;

/// One `domain_checks` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCheck {
    pub domain_id: String,
    pub tenant_id: String,
    pub checked_unix_ms: i64,
    /// None: the domain passes. Else `dkim`, `spf` or `dmarc`.
    pub failing_check: Option<String>,
    /// What the failing check found (`missing`, `mismatch`).
    pub failure_detail: Option<String>,
    /// When the verdict last changed (pass to fail or back); the first check's time at first.
    pub changed_unix_ms: i64,
    /// Every record's state, as JSON text (`Vec<dns::RecordCheck>`).
    pub checks_json: String,
}

fn decode(r: &AnyRow) -> StoreResult<DomainCheck> {
    Ok(DomainCheck {
        domain_id: r.try_get("domain_id")?,
        tenant_id: r.try_get("tenant_id")?,
        checked_unix_ms: r.try_get("checked_unix_ms")?,
        failing_check: r.try_get("failing_check")?,
        failure_detail: r.try_get("failure_detail")?,
        changed_unix_ms: r.try_get("changed_unix_ms")?,
        checks_json: r.try_get("checks_json")?,
    })
}

/// The last check of domain `domain_id` of tenant `tenant_id`, if it was ever checked.
pub async fn get(
    conn: &mut AnyConnection,
    tenant_id: &str,
    domain_id: &str,
) -> StoreResult<Option<DomainCheck>> {
    sqlx::query("SELECT * FROM domain_checks WHERE domain_id = $1 AND tenant_id = $2")
        .bind(domain_id.to_string())
        .bind(tenant_id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Stores a check, replacing the domain's previous one.
pub async fn upsert(conn: &mut AnyConnection, c: &DomainCheck) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO domain_checks (domain_id, tenant_id, checked_unix_ms, failing_check, \
         failure_detail, changed_unix_ms, checks_json) VALUES ($1,$2,$3,$4,$5,$6,$7) \
         ON CONFLICT (domain_id) DO UPDATE SET tenant_id = excluded.tenant_id, \
         checked_unix_ms = excluded.checked_unix_ms, failing_check = excluded.failing_check, \
         failure_detail = excluded.failure_detail, changed_unix_ms = excluded.changed_unix_ms, \
         checks_json = excluded.checks_json",
    )
    .bind(c.domain_id.clone())
    .bind(c.tenant_id.clone())
    .bind(c.checked_unix_ms)
    .bind(c.failing_check.clone())
    .bind(c.failure_detail.clone())
    .bind(c.changed_unix_ms)
    .bind(c.checks_json.clone())
    .execute(conn)
    .await?;
    Ok(())
}

/// Every failing domain's check (the snapshot), whatever its tenant.
pub async fn failing_all(conn: &mut AnyConnection) -> StoreResult<Vec<DomainCheck>> {
    sqlx::query("SELECT * FROM domain_checks WHERE failing_check IS NOT NULL")
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Forgets a deleted domain's check.
pub async fn delete(conn: &mut AnyConnection, tenant_id: &str, domain_id: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM domain_checks WHERE domain_id = $1 AND tenant_id = $2")
        .bind(domain_id.to_string())
        .bind(tenant_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
