//! Retention (issue 16): per-tenant windows for events, message metadata and audit rows,
//! within bounds the operator sets (`--retention-bounds`), enforced by [`task`].
//!
//! - **Events** past `events_days` are deleted by `crate::events::purge` (whole rows).
//! - **Message metadata** past `messages_days`: the `X-Petrel-Metadata` object, the
//!   `X-Petrel-Tag` tags (and their index rows) and the RFC 5322 Message-ID are removed from
//!   the tenant's events, which keep the outcome, recipient and reply until their own window
//!   ends (a tenant may keep delivery history for a year and what it tagged it with for 30
//!   days). A watermark per tenant (`tenants.messages_scrubbed_ms`) keeps each round to the
//!   rows that crossed the line since the last.
//! - **Audit rows** past `audit_days` (the operator tenant's window for rows without a tenant,
//!   the default for a deleted tenant's) are pruned: everything but their place in the chain
//!   (seq, owner, time, `prev_hash`, `hash`) is removed, and a pruning record
//!   ([`AUDIT_PRUNED_ACTION`], its target the pruned seq ranges in clear) is appended. The
//!   chain walk checks a pruned row's link and that a later pruning record lists it, so the
//!   chain still verifies end to end, every earlier checkpoint still matches (hashes are
//!   unchanged), and emptying a row any other way is caught. Each pruning round is followed by
//!   a new signed checkpoint (the re-anchored head).

use std::str::FromStr;
use std::time::Duration;

use sqlx::{AnyConnection, Row};

use crate::api::App;
use crate::store::events::DAY_MS;
use crate::store::{StoreError, StoreResult};

/// The action of a pruning record.
pub const AUDIT_PRUNED_ACTION: &str = "audit.pruned";
/// How often the windows are enforced.
pub const RETENTION_INTERVAL_MS: u64 = 600_000;
/// Audit rows pruned under one pruning record (one short write transaction).
pub const AUDIT_PRUNE_ROWS_MAX: i64 = 5_000;
/// Events whose metadata one statement removes (one short write transaction).
pub const MESSAGES_SCRUB_CHUNK_ROWS: i64 = 5_000;
/// A tenant's windows when it set none, days (the schema's defaults).
pub const EVENTS_RETENTION_DAYS_DEFAULT: i64 = crate::store::events::EVENTS_RETENTION_DAYS_DEFAULT;
pub const MESSAGES_RETENTION_DAYS_DEFAULT: i64 = 30;
pub const AUDIT_RETENTION_DAYS_DEFAULT: i64 = 90;

/// The windows tenants may choose, days, inclusive (`--retention-bounds
/// events=1..3650,messages=1..3650,audit=30..3650`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionBounds {
    pub events: (i64, i64),
    pub messages: (i64, i64),
    pub audit: (i64, i64),
}

impl Default for RetentionBounds {
    fn default() -> Self {
        RetentionBounds {
            events: (1, 3_650),
            messages: (1, 3_650),
            audit: (30, 3_650),
        }
    }
}

impl FromStr for RetentionBounds {
    type Err = String;

    /// `kind=MIN..MAX` pairs, comma-separated; kinds not named keep their defaults.
    fn from_str(s: &str) -> Result<RetentionBounds, String> {
        let mut b = RetentionBounds::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, range) = part
                .split_once('=')
                .ok_or_else(|| format!("{part}: expected kind=MIN..MAX"))?;
            let (min, max) = range
                .split_once("..")
                .ok_or_else(|| format!("{part}: expected MIN..MAX"))?;
            let parse = |v: &str| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{part}: {v} is not a number of days"))
            };
            let (min, max) = (parse(min)?, parse(max)?);
            if !(1..=36_500).contains(&min) || min > max || max > 36_500 {
                return Err(format!("{part}: needs 1 <= MIN <= MAX <= 36500"));
            }
            match kind.trim() {
                "events" => b.events = (min, max),
                "messages" => b.messages = (min, max),
                "audit" => b.audit = (min, max),
                other => return Err(format!("{other}: not events, messages or audit")),
            }
        }
        for (name, (min, max), default) in [
            ("events", b.events, EVENTS_RETENTION_DAYS_DEFAULT),
            ("messages", b.messages, MESSAGES_RETENTION_DAYS_DEFAULT),
            ("audit", b.audit, AUDIT_RETENTION_DAYS_DEFAULT),
        ] {
            if !(min..=max).contains(&default) {
                return Err(format!(
                    "{name}: the bounds must hold the default window of {default} days"
                ));
            }
        }
        Ok(b)
    }
}

/// Sorted seqs as ranges: `3-5,9-9`.
pub fn ranges(seqs: &[i64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = seqs.iter().copied();
    let Some(mut start) = iter.next() else {
        return String::new();
    };
    let mut end = start;
    for s in iter {
        if s == end + 1 {
            end = s;
        } else {
            out.push(format!("{start}-{end}"));
            start = s;
            end = s;
        }
    }
    out.push(format!("{start}-{end}"));
    out.join(",")
}

/// [`ranges`] read back (malformed parts are skipped: they cover nothing).
pub fn parse_ranges(s: &str) -> Vec<(i64, i64)> {
    s.split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// One tenant's windows as stored.
#[derive(Debug, Clone)]
struct Windows {
    id: String,
    is_operator: bool,
    messages_days: i64,
    audit_days: i64,
    messages_scrubbed_ms: i64,
}

async fn windows(conn: &mut AnyConnection) -> StoreResult<Vec<Windows>> {
    sqlx::query(
        "SELECT id, is_operator, messages_retention_days, audit_retention_days, \
         messages_scrubbed_ms FROM tenants ORDER BY id",
    )
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(Windows {
            id: r.try_get("id")?,
            is_operator: r.try_get::<i64, _>("is_operator")? != 0,
            messages_days: r.try_get("messages_retention_days")?,
            audit_days: r.try_get("audit_retention_days")?,
            messages_scrubbed_ms: r.try_get("messages_scrubbed_ms")?,
        })
    })
    .collect()
}

/// Brings stored windows inside the operator's bounds (they may have narrowed since).
pub async fn clamp_to_bounds(app: &App) -> StoreResult<u64> {
    let b = app.settings.retention;
    let mut changed = 0;
    let mut tx = app.db.begin_write().await?;
    for (col, (min, max)) in [
        ("events_retention_days", b.events),
        ("messages_retention_days", b.messages),
        ("audit_retention_days", b.audit),
    ] {
        for (op, v) in [("<", min), (">", max)] {
            changed += sqlx::query(&format!(
                "UPDATE tenants SET {col} = $1 WHERE {col} {op} $1"
            ))
            .bind(v)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
    }
    tx.commit().await?;
    Ok(changed)
}

/// Removes message metadata from one tenant's events older than its window; returns the
/// events changed.
async fn scrub_messages(app: &App, w: &Windows, now: i64) -> StoreResult<u64> {
    let cutoff = now - w.messages_days * DAY_MS;
    if w.messages_scrubbed_ms >= cutoff {
        return Ok(0);
    }
    let mut cursor = (w.messages_scrubbed_ms, i64::MIN);
    let mut total = 0;
    loop {
        let mut tx = app.db.begin_write().await?;
        let picked: Vec<(i64, i64)> = sqlx::query(
            "SELECT seq, timestamp_ms FROM events WHERE tenant_id = $1 \
             AND (timestamp_ms, seq) > ($2, $3) AND timestamp_ms < $4 \
             ORDER BY timestamp_ms, seq LIMIT $5",
        )
        .bind(w.id.clone())
        .bind(cursor.0)
        .bind(cursor.1)
        .bind(cutoff)
        .bind(MESSAGES_SCRUB_CHUNK_ROWS)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("seq")?, r.try_get("timestamp_ms")?)))
        .collect::<Result<_, sqlx::Error>>()?;
        let full = picked.len() as i64 >= MESSAGES_SCRUB_CHUNK_ROWS;
        for chunk in picked.chunks(crate::store::events::PURGE_ARGS_PER_STATEMENT) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(",");
            for (sql, counted) in [
                (
                    format!(
                        "UPDATE events SET metadata = NULL, tags = '[]', \
                         rfc822_message_id = NULL WHERE seq IN ({list})"
                    ),
                    true,
                ),
                (
                    format!("DELETE FROM event_tags WHERE event_seq IN ({list})"),
                    false,
                ),
            ] {
                let mut q = sqlx::query(&sql);
                for (seq, _) in chunk {
                    q = q.bind(*seq);
                }
                let n = q.execute(&mut *tx).await?.rows_affected();
                if counted {
                    total += n;
                }
            }
        }
        if let Some(&(seq, ts)) = picked.last() {
            cursor = (ts, seq);
        }
        // The watermark moves to the cutoff once everything before it is done; until then to
        // just below the last time seen (rows sharing it are done again, harmlessly).
        let mark = if full { cursor.0 - 1 } else { cutoff };
        sqlx::query(
            "UPDATE tenants SET messages_scrubbed_ms = $1 WHERE id = $2 \
             AND messages_scrubbed_ms < $1",
        )
        .bind(mark)
        .bind(w.id.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if !full {
            return Ok(total);
        }
    }
}

/// Prunes the audit rows of every owner past its cutoff (`None`: rows without a tenant), under
/// one pruning record per [`AUDIT_PRUNE_ROWS_MAX`] rows (so a round adds one record, not one
/// per owner); returns how many.
async fn prune_audit(app: &App, owners: &[(Option<String>, i64)]) -> StoreResult<u64> {
    let mut total = 0;
    loop {
        let mut m = app.db.begin_data_mutation().await?;
        let mut seqs = Vec::new();
        let mut per_owner = serde_json::Map::new();
        for (owner, cutoff) in owners {
            let room = AUDIT_PRUNE_ROWS_MAX - seqs.len() as i64;
            if room <= 0 {
                break;
            }
            let found =
                crate::store::audit::prunable(m.conn(), owner.as_deref(), *cutoff, room).await?;
            if !found.is_empty() {
                let key = owner.clone().unwrap_or_else(|| "*".into());
                per_owner.insert(key, serde_json::json!(found.len()));
                seqs.extend(found);
            }
        }
        if seqs.is_empty() {
            return Ok(total);
        }
        seqs.sort_unstable();
        crate::store::audit::prune(m.conn(), &seqs).await?;
        let n = seqs.len() as u64;
        let entry = crate::audit::AuditEntry {
            tenant_id: None,
            actor: "system:retention".into(),
            remote_addr: String::new(),
            action: AUDIT_PRUNED_ACTION.into(),
            target: ranges(&seqs),
            at_unix_ms: app.now_ms(),
            before: None,
            after: Some(serde_json::json!({ "rows": n, "owners": per_owner })),
        };
        m.commit(entry).await?;
        total += n;
        if (n as i64) < AUDIT_PRUNE_ROWS_MAX {
            return Ok(total);
        }
    }
}

/// Signal ids (`audit_signal_ids`) are kept this long.
pub const AUDIT_SIGNAL_IDS_KEPT_DAYS: i64 = 30;

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforced {
    pub events_scrubbed: u64,
    pub audit_rows_pruned: u64,
}

/// One round over every tenant's message and audit windows at `now` (the events' own window is
/// `crate::events::purge`'s).
pub async fn enforce(app: &App, now: i64) -> Result<Enforced, StoreError> {
    let tenants = windows(&mut *app.db.conn().await?).await?;
    let mut done = Enforced::default();
    let mut owners = Vec::with_capacity(tenants.len() + 1);
    let mut operator_audit_days = AUDIT_RETENTION_DAYS_DEFAULT;
    for w in &tenants {
        // One tenant's failure does not hold up the others'.
        match scrub_messages(app, w, now).await {
            Ok(n) => done.events_scrubbed += n,
            Err(e) => {
                tracing::warn!(tenant = %w.id, error = %e, "message metadata retention failed")
            }
        }
        owners.push((Some(w.id.clone()), now - w.audit_days * DAY_MS));
        if w.is_operator {
            operator_audit_days = w.audit_days;
        }
    }
    owners.push((None, now - operator_audit_days * DAY_MS));
    let deleted =
        crate::store::deleted_tenants::since(&mut *app.db.conn().await?, 0, i64::MAX).await?;
    let window = AUDIT_RETENTION_DAYS_DEFAULT.clamp(
        app.settings.retention.audit.0,
        app.settings.retention.audit.1,
    );
    owners.extend(
        deleted
            .into_iter()
            .map(|d| (Some(d.tenant_id), now - window * DAY_MS)),
    );
    done.audit_rows_pruned = prune_audit(app, &owners).await?;
    if done.audit_rows_pruned > 0 {
        // The head after pruning, signed: the chain is anchored again.
        if let Err(e) = crate::audit_anchor::checkpoint(app, now).await {
            tracing::warn!(error = %e, "checkpoint after audit pruning failed");
        }
    }
    let mut tx = app.db.begin_write().await?;
    crate::store::audit::purge_signal_ids(&mut tx, now - AUDIT_SIGNAL_IDS_KEPT_DAYS * DAY_MS)
        .await?;
    tx.commit().await?;
    Ok(done)
}

/// Clamps the stored windows into the bounds once, then runs [`enforce`] every
/// [`RETENTION_INTERVAL_MS`].
pub async fn task(app: App) {
    match clamp_to_bounds(&app).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            windows = n,
            "retention windows moved inside the operator's bounds"
        ),
        Err(e) => tracing::warn!(error = %e, "clamping retention windows failed"),
    }
    let mut tick = tokio::time::interval(Duration::from_millis(RETENTION_INTERVAL_MS));
    loop {
        tick.tick().await;
        match enforce(&app, app.now_ms()).await {
            Ok(d) if d == Enforced::default() => {}
            Ok(d) => tracing::info!(
                events_scrubbed = d.events_scrubbed,
                audit_rows_pruned = d.audit_rows_pruned,
                "retention enforced"
            ),
            Err(e) => tracing::warn!(error = %e, "retention round failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        assert_eq!(ranges(&[3, 4, 5, 9, 11, 12]), "3-5,9-9,11-12");
        assert_eq!(
            parse_ranges("3-5,9-9,11-12"),
            vec![(3, 5), (9, 9), (11, 12)]
        );
        assert_eq!(ranges(&[]), "");
        assert!(parse_ranges("x-1,2").is_empty());
    }

    #[test]
    fn bounds_parse_and_must_hold_the_defaults() {
        let b: RetentionBounds = "audit=60..400, events=7..90".parse().unwrap();
        assert_eq!(b.audit, (60, 400));
        assert_eq!(b.events, (7, 90));
        assert_eq!(b.messages, RetentionBounds::default().messages);
        assert!("audit=100..400".parse::<RetentionBounds>().is_err());
        assert!("events=9..2".parse::<RetentionBounds>().is_err());
        assert!("logs=1..2".parse::<RetentionBounds>().is_err());
        assert!("events=1-2".parse::<RetentionBounds>().is_err());
    }
}
