//! `tls_rpt_event_ids`, `tls_rpt_counts` and `tls_rpt_reports` (migration 16): the engines'
//! TLS-RPT session counts summed per day, and each day's report per policy domain
//! (`crate::tls_rpt`).

use sqlx::{AnyConnection, Row};

use super::{StoreError, StoreResult};
use crate::tls_rpt::report::DayRow;
use crate::tls_rpt::CountRow;

/// Takes an engine's counts event once: false when its id was taken before (a resent batch).
pub async fn claim_event(
    conn: &mut AnyConnection,
    event_id: &str,
    at_unix_ms: i64,
) -> StoreResult<bool> {
    Ok(sqlx::query(
        "INSERT INTO tls_rpt_event_ids (event_id, at_unix_ms) VALUES ($1, $2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id.to_string())
    .bind(at_unix_ms)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Adds one row's sessions to its day's sums (one upsert per result).
pub async fn add(conn: &mut AnyConnection, row: &CountRow) -> StoreResult<()> {
    let policy_json = serde_json::json!({
        "strings": row.policy_strings,
        "mx": row.mx_patterns,
    })
    .to_string();
    let results = std::iter::once(("success", row.success))
        .chain(row.failures.iter().map(|(k, v)| (k.as_str(), *v)))
        .filter(|(_, n)| *n > 0);
    for (result, sessions) in results {
        sqlx::query(
            "INSERT INTO tls_rpt_counts (day, policy_domain, policy_type, policy_hash, \
             policy_json, mx_host, receiving_ip, result, sessions) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (day, policy_domain, policy_type, policy_hash, mx_host, receiving_ip, \
             result) DO UPDATE SET sessions = tls_rpt_counts.sessions + excluded.sessions",
        )
        .bind(i64::from(row.day))
        .bind(row.domain.clone())
        .bind(row.policy_type.clone())
        .bind(row.policy_hash())
        .bind(policy_json.clone())
        .bind(row.mx_host.clone())
        .bind(row.ip.clone().unwrap_or_default())
        .bind(result.to_string())
        .bind(i64::try_from(sessions).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The policy domains with counts on `day`.
pub async fn domains_of_day(conn: &mut AnyConnection, day: i64) -> StoreResult<Vec<String>> {
    let rows = sqlx::query(
        "SELECT DISTINCT policy_domain FROM tls_rpt_counts WHERE day = $1 ORDER BY policy_domain",
    )
    .bind(day)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            r.try_get::<String, _>("policy_domain")
                .map_err(StoreError::from)
        })
        .collect()
}

/// Every summed row of `domain` on `day`.
pub async fn day_rows(
    conn: &mut AnyConnection,
    day: i64,
    domain: &str,
) -> StoreResult<Vec<DayRow>> {
    let rows = sqlx::query(
        "SELECT policy_type, policy_json, mx_host, receiving_ip, result, sessions \
         FROM tls_rpt_counts WHERE day = $1 AND policy_domain = $2 \
         ORDER BY policy_type, policy_hash, mx_host, receiving_ip, result",
    )
    .bind(day)
    .bind(domain.to_string())
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let policy: serde_json::Value =
            serde_json::from_str(&r.try_get::<String, _>("policy_json")?).map_err(|e| {
                StoreError::Corrupt {
                    column: "tls_rpt_counts.policy_json",
                    reason: e.to_string(),
                }
            })?;
        let strings = |k: &str| -> Vec<String> {
            policy[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        out.push(DayRow {
            policy_type: r.try_get("policy_type")?,
            policy_strings: strings("strings"),
            mx_patterns: strings("mx"),
            mx_host: r.try_get("mx_host")?,
            receiving_ip: r.try_get("receiving_ip")?,
            result: r.try_get("result")?,
            sessions: r.try_get("sessions")?,
        });
    }
    Ok(out)
}

/// Where a day's report of one domain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub day: i64,
    pub policy_domain: String,
    pub report_id: String,
    /// `pending`, `sent`, `no_rua` or `failed` ([`crate::tls_rpt::ReportState`]).
    pub state: String,
    pub attempts: i64,
    /// The report URIs it reached already.
    pub done_uris: Vec<String>,
    pub last_error: Option<String>,
    pub next_attempt_unix_ms: i64,
}

/// The report row of (`day`, `domain`), if any.
pub async fn report(
    conn: &mut AnyConnection,
    day: i64,
    domain: &str,
) -> StoreResult<Option<ReportRow>> {
    let row = sqlx::query(
        "SELECT day, policy_domain, report_id, state, attempts, done_uris, last_error, \
         next_attempt_unix_ms FROM tls_rpt_reports WHERE day = $1 AND policy_domain = $2",
    )
    .bind(day)
    .bind(domain.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(|r| report_row(&r)).transpose()
}

/// The reports of `day`, by domain.
pub async fn reports_of_day(conn: &mut AnyConnection, day: i64) -> StoreResult<Vec<ReportRow>> {
    let rows = sqlx::query(
        "SELECT day, policy_domain, report_id, state, attempts, done_uris, last_error, \
         next_attempt_unix_ms FROM tls_rpt_reports WHERE day = $1 ORDER BY policy_domain",
    )
    .bind(day)
    .fetch_all(conn)
    .await?;
    rows.iter().map(report_row).collect()
}

fn report_row(r: &sqlx::any::AnyRow) -> StoreResult<ReportRow> {
    let done: String = r.try_get("done_uris")?;
    Ok(ReportRow {
        day: r.try_get("day")?,
        policy_domain: r.try_get("policy_domain")?,
        report_id: r.try_get("report_id")?,
        state: r.try_get("state")?,
        attempts: r.try_get("attempts")?,
        done_uris: serde_json::from_str(&done).map_err(|e| StoreError::Corrupt {
            column: "tls_rpt_reports.done_uris",
            reason: e.to_string(),
        })?,
        last_error: r.try_get("last_error")?,
        next_attempt_unix_ms: r.try_get("next_attempt_unix_ms")?,
    })
}

/// Writes a report's state (insert or replace).
pub async fn save_report(
    conn: &mut AnyConnection,
    r: &ReportRow,
    now_unix_ms: i64,
) -> StoreResult<()> {
    let done = serde_json::to_string(&r.done_uris).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO tls_rpt_reports (day, policy_domain, report_id, state, attempts, done_uris, \
         last_error, next_attempt_unix_ms, updated_unix_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (day, policy_domain) DO UPDATE SET report_id = excluded.report_id, \
         state = excluded.state, attempts = excluded.attempts, done_uris = excluded.done_uris, \
         last_error = excluded.last_error, next_attempt_unix_ms = excluded.next_attempt_unix_ms, \
         updated_unix_ms = excluded.updated_unix_ms",
    )
    .bind(r.day)
    .bind(r.policy_domain.clone())
    .bind(r.report_id.clone())
    .bind(r.state.clone())
    .bind(r.attempts)
    .bind(done)
    .bind(r.last_error.clone())
    .bind(r.next_attempt_unix_ms)
    .bind(now_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes counts and reports of days before `before_day`, and event ids older than
/// `ids_before_unix_ms`. Returns the rows deleted.
pub async fn purge(
    conn: &mut AnyConnection,
    before_day: i64,
    ids_before_unix_ms: i64,
) -> StoreResult<u64> {
    let mut n = 0;
    for sql in [
        "DELETE FROM tls_rpt_counts WHERE day < $1",
        "DELETE FROM tls_rpt_reports WHERE day < $1",
    ] {
        n += sqlx::query(sql)
            .bind(before_day)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    n += sqlx::query("DELETE FROM tls_rpt_event_ids WHERE at_unix_ms < $1")
        .bind(ids_before_unix_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(n)
}
