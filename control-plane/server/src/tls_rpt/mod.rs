//! TLS-RPT (RFC 8460, issue 18): the engines' TLS session counts summed per day, and each
//! day's aggregate report sent to every policy domain that asks for one.
//!
//! - **Counts** arrive as events of type `petrel_policy::event::TLS_RPT_COUNTS` (the engine's
//!   `petrel_delivery::tls_rpt`), on the events link; the ingest ([`ingest`], inside the batch's
//!   transaction) takes each such event once by its id and adds its rows to
//!   `tls_rpt_counts` (`store/tls_rpt.rs`, migration 16) instead of the event table.
//! - **Reports**: once a day, from [`TlsRptSettings::send_hour_utc`], [`task`] sends the days
//!   before today that are not done ([`send_day`]): per policy domain, the RFC 8460 §4 JSON
//!   ([`report`]), gzipped, to each URI of the domain's `_smtp._tls` record ([`rua`]): an
//!   `https:` URI gets a POST (`application/tlsrpt+gzip`, through the webhooks' client: web
//!   PKI plus `--webhooks-ca-file`, the address guard, a bounded time, no redirects), a
//!   `mailto:` URI a mail submitted over SMTP to an engine listener
//!   ([`TlsRptSettings::submit_to`]) from [`TlsRptSettings::from`], whose domain's DKIM key the
//!   engine signs it with like any tenant's mail ([`send`]). Each report's state is stored
//!   (`tls_rpt_reports`: the URIs done, attempts, the next attempt): a day is sent once per
//!   domain and URI (at least once: a crash between a send and its record sends it again), a
//!   failed URI is tried again with backoff up to [`REPORT_ATTEMPTS_MAX`] times.
//!   `POST /v1/tls-rpt/send` sends a given day now (`api/tls_rpt.rs`).
//!
//! Two control plane nodes on one database may both send a day at once (the reports carry the
//! same `report-id`, so a receiver can drop the second).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use petrel_policy::event::{DOMAIN_MAX_BYTES, TLS_RPT_COUNTS, TLS_RPT_FAILURE_TYPES};
use petrel_policy::{Event, EventType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::App;
use crate::store::{tls_rpt as db, StoreError};

pub mod args;
pub mod report;
pub mod rua;
pub mod send;

/// How often the daily task looks for days to send, ms.
pub const TASK_TICK_MS: u64 = 60_000;
/// Days before today the task still sends (a control plane down over a weekend catches up).
pub const SEND_DAYS_BACK: i64 = 3;
/// Counts, reports and event ids are kept this many days.
pub const RETENTION_DAYS: i64 = 30;
/// Attempts per report before it is given up (`failed`).
pub const REPORT_ATTEMPTS_MAX: i64 = 8;
/// The first retry's delay, ms; doubled per attempt up to [`RETRY_DELAY_MS_MAX`].
pub const RETRY_DELAY_MS_FIRST: i64 = 300_000;
pub const RETRY_DELAY_MS_MAX: i64 = 6 * 3_600_000;
/// Rows per counts event accepted, at most (an event's details are 4 KiB; this bounds a forged
/// one).
pub const ROWS_PER_EVENT_MAX: usize = 256;
/// Longest policy string or MX pattern kept, bytes.
pub const POLICY_FIELD_MAX_BYTES: usize = 1_024;
/// Policy strings (or MX patterns) per row, at most.
pub const POLICY_FIELDS_MAX: usize = 64;
const DAY_MS: i64 = 86_400_000;

/// The `[tls_rpt]` settings (`petrel control serve --tls-rpt-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptSettings {
    /// Send reports (counts are stored either way).
    pub enabled: bool,
    /// The report's `organization-name`.
    pub organization: String,
    /// The report's `contact-info` (an address or URL).
    pub contact: String,
    /// The submitter's domain (`TLS-Report-Submitter`, part of the report's id and file name).
    pub submitter: String,
    /// The reports' From address; its domain needs a DKIM key, so the engine signs them.
    pub from: String,
    /// The engine listener mail reports are submitted to (it must relay for this control
    /// plane's address and sign for the From domain); `None`: `mailto:` URIs are skipped.
    pub submit_to: Option<SocketAddr>,
    /// The UTC hour (0..=23) from which the previous days are sent (default 1).
    pub send_hour_utc: u8,
}

/// The default of [`TlsRptSettings::send_hour_utc`].
pub const SEND_HOUR_UTC_DEFAULT: u8 = 1;

/// A report's state in `tls_rpt_reports.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportState {
    /// Some URI still to reach; tried again at `next_attempt_unix_ms`.
    Pending,
    /// Every URI reached.
    Sent,
    /// The domain publishes no usable TLS-RPT record: nothing to send.
    NoRua,
    /// Given up after [`REPORT_ATTEMPTS_MAX`] attempts.
    Failed,
}

impl ReportState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportState::Pending => "pending",
            ReportState::Sent => "sent",
            ReportState::NoRua => "no_rua",
            ReportState::Failed => "failed",
        }
    }

    /// Done: the day is not sent again for this domain.
    pub fn is_final(s: &str) -> bool {
        s != ReportState::Pending.as_str()
    }
}

/// The largest session count one row of one flush may carry: a minute of one shard's
/// connections is far below it, and sums of such rows stay far from `i64::MAX` in SQL.
pub const ROW_COUNT_MAX: u64 = 1_000_000_000;

/// An ASCII host name (letters, digits, `-`, `.`): domains go into report headers.
fn is_host_name(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// One row of a counts event (see `petrel_delivery::tls_rpt::flush`), checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CountRow {
    pub day: u32,
    pub domain: String,
    pub policy_type: String,
    #[serde(default)]
    pub policy_strings: Vec<String>,
    #[serde(default)]
    pub mx_patterns: Vec<String>,
    #[serde(default)]
    pub mx_host: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub success: u64,
    #[serde(default)]
    pub failures: BTreeMap<String, u64>,
}

impl CountRow {
    /// Whether every field is within its bound and names what the RFC names.
    fn is_valid(&self) -> bool {
        let fields = |v: &[String]| {
            v.len() <= POLICY_FIELDS_MAX && v.iter().all(|s| s.len() <= POLICY_FIELD_MAX_BYTES)
        };
        !self.domain.is_empty()
            && self.domain.len() <= DOMAIN_MAX_BYTES
            && is_host_name(&self.domain)
            && self.mx_host.len() <= DOMAIN_MAX_BYTES
            && is_host_name(&self.mx_host)
            && self.success <= ROW_COUNT_MAX
            && self.failures.values().all(|n| *n <= ROW_COUNT_MAX)
            && matches!(
                self.policy_type.as_str(),
                "sts" | "tlsa" | "no-policy-found"
            )
            && fields(&self.policy_strings)
            && fields(&self.mx_patterns)
            && self
                .ip
                .as_deref()
                .is_none_or(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            && self
                .failures
                .keys()
                .all(|k| TLS_RPT_FAILURE_TYPES.contains(&k.as_str()))
    }

    /// Identifies the policy among the day's rows of its domain.
    pub fn policy_hash(&self) -> String {
        let mut h = Sha256::new();
        for s in self
            .policy_strings
            .iter()
            .chain([&String::new()])
            .chain(&self.mx_patterns)
        {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// Whether `e` carries TLS-RPT counts (it goes to [`ingest`], not the event table).
pub fn is_counts(e: &Event) -> bool {
    matches!(&e.kind, EventType::Other(k) if k == TLS_RPT_COUNTS)
}

/// The valid rows of a counts event; the others are dropped (logged).
pub fn rows(e: &Event) -> Vec<CountRow> {
    let Some(rows) = e.details.as_ref().and_then(|d| d.get("rows")) else {
        return Vec::new();
    };
    let parsed: Vec<CountRow> = match serde_json::from_value::<Vec<serde_json::Value>>(rows.clone())
    {
        Ok(v) => v
            .into_iter()
            .take(ROWS_PER_EVENT_MAX)
            .filter_map(|r| serde_json::from_value::<CountRow>(r).ok())
            .filter(CountRow::is_valid)
            .map(|mut r| {
                r.domain = r.domain.to_ascii_lowercase();
                r
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let overflow = e.details.as_ref().and_then(|d| d.get("overflow"));
    if let Some(n) = overflow
        .and_then(serde_json::Value::as_u64)
        .filter(|n| *n > 0)
    {
        tracing::warn!(
            sessions = n,
            "an engine counted TLS-RPT sessions past its key bound"
        );
    }
    parsed
}

/// Adds the counts events among `events` (those not taken before) to the day sums, in the
/// caller's transaction. Returns the rows added.
pub async fn ingest(
    conn: &mut sqlx::AnyConnection,
    events: &[&Event],
    now_unix_ms: i64,
) -> Result<usize, StoreError> {
    let mut added = 0;
    for e in events.iter().filter(|e| is_counts(e)) {
        if !db::claim_event(conn, &e.id, now_unix_ms).await? {
            continue;
        }
        for row in rows(e) {
            db::add(conn, &row).await?;
            added += 1;
        }
    }
    Ok(added)
}

/// The delay before attempt `attempts + 1`, ms.
pub fn retry_delay_ms(attempts: i64) -> i64 {
    let shift = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    RETRY_DELAY_MS_FIRST
        .saturating_mul(1i64 << shift)
        .min(RETRY_DELAY_MS_MAX)
}

/// Sends `day`'s reports (see the module docs): every policy domain with counts that is not
/// done, each URI not reached yet; `force` ignores the retry delay. Returns every domain's
/// state afterwards.
pub async fn send_day(
    app: &App,
    settings: &TlsRptSettings,
    day: i64,
    force: bool,
) -> Result<Vec<db::ReportRow>, StoreError> {
    let domains = db::domains_of_day(&mut *app.db.conn().await?, day).await?;
    for domain in &domains {
        let now = app.now_ms();
        let existing = db::report(&mut *app.db.conn().await?, day, domain).await?;
        if let Some(r) = &existing {
            if ReportState::is_final(&r.state) || (!force && r.next_attempt_unix_ms > now) {
                continue;
            }
        }
        let mut state = existing.unwrap_or_else(|| db::ReportRow {
            day,
            policy_domain: domain.clone(),
            report_id: report::report_id(day, domain, &settings.submitter),
            state: ReportState::Pending.as_str().into(),
            attempts: 0,
            done_uris: Vec::new(),
            last_error: None,
            next_attempt_unix_ms: 0,
        });
        let rows = db::day_rows(&mut *app.db.conn().await?, day, domain).await?;
        send::deliver(app, settings, &mut state, &rows).await;
        let mut tx = app.db.begin_write().await?;
        db::save_report(&mut tx, &state, app.now_ms()).await?;
        tx.commit().await?;
    }
    db::reports_of_day(&mut *app.db.conn().await?, day).await
}

/// Sends the days before today from the configured hour on, and purges old counts, every
/// [`TASK_TICK_MS`] (runs until dropped; nothing without settings or when disabled).
pub async fn task(app: App) {
    let Some(settings) = app.settings.tls_rpt.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(TASK_TICK_MS));
    loop {
        tick.tick().await;
        let now = app.now_ms();
        let today = now.div_euclid(DAY_MS);
        let hour = now.rem_euclid(DAY_MS) / 3_600_000;
        if settings.enabled && hour >= i64::from(settings.send_hour_utc) {
            for day in (today - SEND_DAYS_BACK)..today {
                if let Err(e) = send_day(&app, &settings, day, false).await {
                    tracing::warn!(error = %e, day, "TLS-RPT reports not sent");
                }
            }
        }
        let purged = async {
            let mut tx = app.db.begin_write().await?;
            let n = db::purge(
                &mut tx,
                today - RETENTION_DAYS,
                now - RETENTION_DAYS * DAY_MS,
            )
            .await?;
            tx.commit().await?;
            Ok::<u64, StoreError>(n)
        };
        if let Err(e) = purged.await {
            tracing::warn!(error = %e, "TLS-RPT purge failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts_event(rows: serde_json::Value) -> Event {
        Event {
            details: serde_json::json!({ "rows": rows }).as_object().cloned(),
            ..Event::bare("ev_1".into(), EventType::Other(TLS_RPT_COUNTS.into()), 1)
        }
    }

    #[test]
    fn valid_rows_are_read_and_bad_ones_dropped() {
        let e = counts_event(serde_json::json!([
            {"day": 20792, "domain": "A.test", "policy_type": "sts",
             "policy_strings": ["version: STSv1"], "mx_patterns": ["mx.a.test"],
             "mx_host": "mx.a.test", "ip": "192.0.2.1", "success": 2,
             "failures": {"certificate-expired": 1}},
            {"day": 20792, "domain": "b.test", "policy_type": "dane", "success": 1},
            {"day": 20792, "domain": "c.test", "policy_type": "sts", "ip": "nope"},
            {"day": 20792, "domain": "d.test", "policy_type": "sts",
             "failures": {"made-up": 1}},
            {"day": 20792, "domain": "e.test", "policy_type": "sts",
             "success": ROW_COUNT_MAX + 1},
            {"day": 20792, "domain": "f.test", "policy_type": "sts",
             "failures": {"certificate-expired": u64::MAX}},
            {"day": 20792, "domain": "g\r\nBcc: x.test", "policy_type": "sts", "success": 1},
            {"day": 20792, "domain": "caf\u{e9}.test", "policy_type": "sts", "success": 1},
            "not a row"
        ]));
        assert!(is_counts(&e));
        let got = rows(&e);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].domain, "a.test");
        assert_eq!(got[0].failures["certificate-expired"], 1);
        let mut other = got[0].clone();
        assert_eq!(other.policy_hash(), got[0].policy_hash());
        other.mx_patterns.clear();
        assert_ne!(other.policy_hash(), got[0].policy_hash());
    }

    #[test]
    fn retries_back_off_to_a_bound() {
        assert_eq!(retry_delay_ms(0), RETRY_DELAY_MS_FIRST);
        assert_eq!(retry_delay_ms(1), 2 * RETRY_DELAY_MS_FIRST);
        assert_eq!(retry_delay_ms(60), RETRY_DELAY_MS_MAX);
    }
}
