//! The DMARC summary of one sending domain (`GET /v1/domains/{id}/dmarc`): the stored
//! `dmarc_report` events of the domain (one per summary row of a received aggregate report,
//! written by the intake), summed by source IP and disposition.
//!
//! The rows are read through the partial index `events_dmarc` (migration 8: tenant, domain,
//! time, only `dmarc_report` rows, so the other event types cost it nothing on insert) and
//! streamed: memory holds the groups, never the rows. The sums are made here rather than in
//! SQL because the facts sit in the `details` JSON, which the two backends read differently.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

use super::StoreResult;

/// The query, with `type` written as a literal so both planners can use the partial index.
pub const DMARC_SQL: &str = "SELECT details FROM events \
     WHERE tenant_id = $1 AND type = 'dmarc_report' AND from_domain = $2 \
     AND timestamp_ms >= $3 AND timestamp_ms <= $4 ORDER BY timestamp_ms LIMIT $5";

/// Events read per summary at most (≤ 4 KiB of details each, streamed); past it the
/// summary says `truncated` and the caller narrows `since`/`until`.
pub const DMARC_EVENTS_SCANNED_MAX: i64 = 200_000;
/// Distinct (source IP, disposition) groups kept; rows of further groups are counted in the
/// totals only, and the summary says `truncated`.
pub const DMARC_GROUPS_MAX: usize = 10_000;
/// Longest source IP or disposition text taken from a stored event, bytes.
const DMARC_FIELD_BYTES_MAX: usize = 64;

/// Messages from one source IP with one disposition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DmarcSource {
    pub source_ip: String,
    /// `none`, `quarantine` or `reject`: what the receiver did.
    pub disposition: String,
    /// Messages (sum of the reports' row counts).
    pub messages: u64,
    /// Messages that passed DMARC.
    pub pass: u64,
    /// Messages that failed DMARC.
    pub fail: u64,
    /// Messages whose aligned DKIM result was `pass`.
    pub dkim_pass: u64,
    /// Messages whose aligned SPF result was `pass`.
    pub spf_pass: u64,
}

/// The summary over a time range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DmarcSummary {
    /// Report rows (`dmarc_report` events) read.
    pub rows: u64,
    pub messages: u64,
    pub pass: u64,
    pub fail: u64,
    /// By source IP, then disposition.
    pub sources: Vec<DmarcSource>,
    /// More than [`DMARC_EVENTS_SCANNED_MAX`] rows or [`DMARC_GROUPS_MAX`] groups: narrow the
    /// range for the rest.
    pub truncated: bool,
}

/// Sums the `dmarc_report` events of `domain` (of `tenant_id`) with `timestamp_ms` in
/// `[since_ms, until_ms]`.
pub async fn summary(
    conn: &mut AnyConnection,
    tenant_id: &str,
    domain: &str,
    since_ms: i64,
    until_ms: i64,
) -> StoreResult<DmarcSummary> {
    let mut out = DmarcSummary::default();
    let mut groups: BTreeMap<(String, String), DmarcSource> = BTreeMap::new();
    let mut rows = sqlx::query(DMARC_SQL)
        .bind(tenant_id.to_string())
        .bind(domain.to_string())
        .bind(since_ms)
        .bind(until_ms)
        .bind(DMARC_EVENTS_SCANNED_MAX + 1)
        .fetch(conn);
    while let Some(row) = rows.try_next().await? {
        if out.rows >= DMARC_EVENTS_SCANNED_MAX.unsigned_abs() {
            out.truncated = true;
            break;
        }
        out.rows += 1;
        let details: Option<String> = row.try_get("details")?;
        let Some(fact) = details.as_deref().and_then(Fact::parse) else {
            continue;
        };
        out.messages = out.messages.saturating_add(fact.count);
        if fact.dmarc_pass {
            out.pass = out.pass.saturating_add(fact.count);
        } else {
            out.fail = out.fail.saturating_add(fact.count);
        }
        let key = (fact.source_ip, fact.disposition);
        if !groups.contains_key(&key) && groups.len() >= DMARC_GROUPS_MAX {
            out.truncated = true;
            continue;
        }
        let g = groups.entry(key).or_insert_with_key(|(ip, d)| DmarcSource {
            source_ip: ip.clone(),
            disposition: d.clone(),
            ..DmarcSource::default()
        });
        g.messages = g.messages.saturating_add(fact.count);
        if fact.dmarc_pass {
            g.pass = g.pass.saturating_add(fact.count);
        } else {
            g.fail = g.fail.saturating_add(fact.count);
        }
        if fact.dkim_pass {
            g.dkim_pass = g.dkim_pass.saturating_add(fact.count);
        }
        if fact.spf_pass {
            g.spf_pass = g.spf_pass.saturating_add(fact.count);
        }
    }
    out.sources = groups.into_values().collect();
    Ok(out)
}

/// What one event's details say (the intake's contract; anything else is skipped).
struct Fact {
    source_ip: String,
    disposition: String,
    count: u64,
    dmarc_pass: bool,
    dkim_pass: bool,
    spf_pass: bool,
}

impl Fact {
    fn parse(details: &str) -> Option<Fact> {
        let v: serde_json::Value = serde_json::from_str(details).ok()?;
        let text = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .filter(|s| s.len() <= DMARC_FIELD_BYTES_MAX)
        };
        Some(Fact {
            source_ip: text("source_ip")?.to_string(),
            disposition: text("disposition").unwrap_or("none").to_string(),
            count: v.get("count").and_then(|c| c.as_u64())?,
            dmarc_pass: text("dmarc") == Some("pass"),
            dkim_pass: text("dkim") == Some("pass"),
            spf_pass: text("spf") == Some("pass"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Fact;

    #[test]
    fn details_are_read_leniently_and_bounded() {
        let f = Fact::parse(
            r#"{"source_ip":"192.0.2.1","count":3,"disposition":"reject","dkim":"fail","spf":"pass","dmarc":"fail"}"#,
        )
        .expect("a fact");
        assert_eq!((f.source_ip.as_str(), f.count), ("192.0.2.1", 3));
        assert!(!f.dmarc_pass && !f.dkim_pass && f.spf_pass);
        assert!(Fact::parse(r#"{"count":3}"#).is_none());
        assert!(Fact::parse("not json").is_none());
        let long = format!(r#"{{"source_ip":"{}","count":1}}"#, "1".repeat(65));
        assert!(Fact::parse(&long).is_none());
    }
}
