//! `suppressions`, `suppression_changes`, `suppression_seq`: the suppression lists (one per
//! tenant plus the operator-wide one) and the change log engines follow.
//!
//! **Scope.** A row's `scope` is its tenant's id, or [`OPERATOR_SCOPE`] (`*`) for the
//! operator-wide list. A column that is never NULL rather than `tenant_id NULL`, because both
//! backends treat NULLs as distinct in a UNIQUE key: `(NULL, 'a@x')` twice would not conflict,
//! so the operator-wide list could not use the same `ON CONFLICT (scope, address)` upsert as the
//! tenants' lists. `*` can never be a tenant id. There is no foreign key to `tenants` for the
//! same reason (and events may name tenants that do not exist; see `store::events`).
//!
//! **Address.** Stored normalized (`petrel_policy::suppression::normalize_address`: the whole
//! address lower-cased, see there why), with its domain in a column of its own for the domain
//! search. Addresses compare byte-wise on both backends (the migration declares them `COLLATE
//! "C"` on PostgreSQL), so pages ordered by address, cursors and prefix ranges agree everywhere.
//!
//! **Re-adding** an address never weakens its entry: a `manual` add keeps an automatic reason
//! (and its source event) already there, an automatic reason replaces any; the expiry becomes
//! the later of the two (none = never). An entry whose expiry has passed counts as absent: a
//! re-add starts it afresh. To shorten an expiry, delete and add again.
//!
//! **Change log.** Every add, re-add and removal (through the API, from events, or by expiry)
//! appends a row to `suppression_changes` with the next `seq` from `suppression_seq`, in the
//! same transaction. Engines ask [`changes_since`] their version and apply the delta; the log is
//! purged after [`CHANGES_RETENTION_DAYS`], and an engine that is further behind gets
//! [`ChangesSince::Resync`] and reloads through [`load_page`]. Reserving the seqs is each
//! transaction's first write to `suppression_seq`, which serialises writers until commit, so a
//! higher seq is never visible before a lower one and a reader following the log never skips.

pub mod changes;

pub use changes::{
    changes_since, current_version, expired_delete_sql, load_page, purge_changes, purge_expired,
    ChangesSince, CHANGES_CUTOFF_SQL, CHANGES_PAGE_MAX, CHANGES_RETENTION_DAYS, CHANGES_SINCE_SQL,
    EXPIRED_PICK_SQL, EXPIRED_PURGE_ROWS_MAX, LOAD_PAGE_AFTER_SQL, LOAD_PAGE_SQL,
};

use std::collections::HashMap;

use petrel_policy::event::{BounceClass, Event, EventType};
pub use petrel_policy::suppression::{
    address_domain, normalize_address, ChangeOp, SuppressionChange, SuppressionReason,
    OPERATOR_SCOPE,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::events::{by_statement, values_sql, Placeholders, PARAMS_PER_STATEMENT};
use super::{StoreError, StoreResult};

/// Bounce categories (`petrel_bounce::Category` names) that say the *address* is bad, so a
/// hard bounce of one of them suppresses it. The classifier's advice: a 5xx `spam_block`,
/// `policy_block` or `content_block` is about the message or the sender, and suppressing the
/// recipient for it would lose a good address.
pub const SUPPRESSING_BOUNCE_CATEGORIES: [&str; 3] =
    ["invalid_recipient", "bad_domain", "inactive_mailbox"];
/// Event types (sent by the intake of the reputation work) that suppress their recipient.
pub const COMPLAINED_EVENT: &str = "complained";
pub const UNSUBSCRIBED_EVENT: &str = "unsubscribed";

/// Columns of one `suppressions` row, in [`UPSERT_PREFIX`] order.
const ENTRY_COLUMNS: usize = 8;
const UPSERT_PREFIX: &str = "INSERT INTO suppressions (scope, address, domain, reason, \
     source_event_id, created_unix_ms, updated_unix_ms, expires_unix_ms)";
/// An expired row counts as absent (`suppressions` is the stored row, `excluded` the new one).
const EXPIRED: &str = "(suppressions.expires_unix_ms IS NOT NULL AND \
     suppressions.expires_unix_ms <= excluded.updated_unix_ms)";
/// A manual re-add over a live automatic entry keeps the automatic reason.
const KEEP_REASON: &str = "(excluded.reason = 'manual' AND suppressions.reason <> 'manual')";
/// Columns of one `suppression_changes` row, in [`CHANGE_INSERT`] order.
pub(super) const CHANGE_COLUMNS: usize = 6;
pub(super) const CHANGE_INSERT: &str =
    "INSERT INTO suppression_changes (seq, scope, address, op, reason, at_unix_ms)";

const _: () = assert!(PARAMS_PER_STATEMENT >= ENTRY_COLUMNS);

/// The upsert's `ON CONFLICT` clause (see the module doc for the rules), returning what each
/// row holds afterwards, so the change log records the reason engines must show.
fn upsert_suffix() -> String {
    format!(
        " ON CONFLICT (scope, address) DO UPDATE SET \
         reason = CASE WHEN {KEEP_REASON} AND NOT {EXPIRED} THEN suppressions.reason \
             ELSE excluded.reason END, \
         source_event_id = CASE WHEN {KEEP_REASON} AND NOT {EXPIRED} \
             THEN suppressions.source_event_id ELSE excluded.source_event_id END, \
         created_unix_ms = CASE WHEN {EXPIRED} THEN excluded.created_unix_ms \
             ELSE suppressions.created_unix_ms END, \
         expires_unix_ms = CASE WHEN {EXPIRED} THEN excluded.expires_unix_ms \
             WHEN suppressions.expires_unix_ms IS NULL OR excluded.expires_unix_ms IS NULL \
             THEN NULL \
             WHEN excluded.expires_unix_ms > suppressions.expires_unix_ms \
             THEN excluded.expires_unix_ms ELSE suppressions.expires_unix_ms END, \
         updated_unix_ms = excluded.updated_unix_ms \
         RETURNING scope, address, reason"
    )
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionRow {
    /// A tenant id or [`OPERATOR_SCOPE`].
    pub scope: String,
    /// Normalized.
    pub address: String,
    pub reason: SuppressionReason,
    /// The event that caused it (automatic adds).
    pub source_event_id: Option<String>,
    pub created_unix_ms: i64,
    /// The last add or re-add.
    pub updated_unix_ms: i64,
    /// None: never expires.
    pub expires_unix_ms: Option<i64>,
}

/// An entry to add (see [`upsert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSuppression {
    pub scope: String,
    /// Normalized (the caller ran `normalize_address`).
    pub address: String,
    pub reason: SuppressionReason,
    pub source_event_id: Option<String>,
    pub expires_unix_ms: Option<i64>,
}

fn decode(r: &AnyRow) -> StoreResult<SuppressionRow> {
    Ok(SuppressionRow {
        scope: r.try_get("scope")?,
        address: r.try_get("address")?,
        reason: reason_col(r, "reason")?,
        source_event_id: r.try_get("source_event_id")?,
        created_unix_ms: r.try_get("created_unix_ms")?,
        updated_unix_ms: r.try_get("updated_unix_ms")?,
        expires_unix_ms: r.try_get("expires_unix_ms")?,
    })
}

pub(super) fn reason_col(r: &AnyRow, col: &'static str) -> StoreResult<SuppressionReason> {
    let name: String = r.try_get(col)?;
    SuppressionReason::parse(&name).ok_or(StoreError::Corrupt {
        column: col,
        reason: name,
    })
}

/// Adds or re-adds `entries` in the caller's transaction, with their change-log rows: one
/// multi-row upsert and one multi-row insert per [`PARAMS_PER_STATEMENT`]. An address listed
/// twice counts once (the last one). Returns the change-log seq of the last change (0 when
/// `entries` is empty).
pub async fn upsert(
    conn: &mut AnyConnection,
    entries: &[NewSuppression],
    now_unix_ms: i64,
) -> StoreResult<u64> {
    // PostgreSQL refuses a statement whose ON CONFLICT DO UPDATE meets one key twice.
    let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        last.insert((e.scope.as_str(), e.address.as_str()), i);
    }
    let unique: Vec<&NewSuppression> = entries
        .iter()
        .enumerate()
        .filter(|(i, e)| last.get(&(e.scope.as_str(), e.address.as_str())) == Some(i))
        .map(|(_, e)| e)
        .collect();
    if unique.is_empty() {
        return Ok(0);
    }
    let first_seq = reserve_seqs(conn, unique.len()).await?;
    let style = Placeholders::of(conn);
    let suffix = upsert_suffix();
    let mut effective: HashMap<(String, String), SuppressionReason> =
        HashMap::with_capacity(unique.len());
    for rows in by_statement(&unique, PARAMS_PER_STATEMENT / ENTRY_COLUMNS) {
        let sql = values_sql(style, UPSERT_PREFIX, ENTRY_COLUMNS, rows.len(), &suffix);
        let mut q = sqlx::query(&sql);
        for e in rows {
            q = q
                .bind(e.scope.clone())
                .bind(e.address.clone())
                .bind(address_domain(&e.address).to_string())
                .bind(e.reason.as_str().to_string())
                .bind(e.source_event_id.clone())
                .bind(now_unix_ms)
                .bind(now_unix_ms)
                .bind(e.expires_unix_ms);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let key = (r.try_get("scope")?, r.try_get("address")?);
            effective.insert(key, reason_col(&r, "reason")?);
        }
    }
    let changes: Vec<SuppressionChange> = unique
        .iter()
        .zip(first_seq..)
        .map(|(e, seq)| {
            let key = (e.scope.clone(), e.address.clone());
            let reason = effective.get(&key).copied().unwrap_or(e.reason);
            SuppressionChange {
                seq,
                scope: e.scope.clone(),
                address: e.address.clone(),
                op: ChangeOp::Add(reason),
            }
        })
        .collect();
    log_changes(conn, &changes, now_unix_ms).await?;
    Ok(first_seq + u64::try_from(unique.len()).unwrap_or(0) - 1)
}

/// Reserves `n` change-log seqs; returns the first. Takes the change log's lock (see the
/// module doc).
pub(super) async fn reserve_seqs(conn: &mut AnyConnection, n: usize) -> StoreResult<u64> {
    let count = i64::try_from(n).unwrap_or(i64::MAX);
    let last: i64 = sqlx::query(
        "UPDATE suppression_seq SET last_seq = last_seq + $1 WHERE id = 1 RETURNING last_seq",
    )
    .bind(count)
    .fetch_one(&mut *conn)
    .await?
    .try_get("last_seq")?;
    Ok(u64::try_from(last - count + 1).unwrap_or(0))
}

/// Appends change-log rows (their seqs reserved by [`reserve_seqs`]).
pub(super) async fn log_changes(
    conn: &mut AnyConnection,
    changes: &[SuppressionChange],
    now_unix_ms: i64,
) -> StoreResult<()> {
    let style = Placeholders::of(conn);
    for rows in by_statement(changes, PARAMS_PER_STATEMENT / CHANGE_COLUMNS) {
        let sql = values_sql(style, CHANGE_INSERT, CHANGE_COLUMNS, rows.len(), "");
        let mut q = sqlx::query(&sql);
        for c in rows {
            let (op, reason) = match c.op {
                ChangeOp::Add(r) => ("add", Some(r.as_str().to_string())),
                ChangeOp::Remove => ("remove", None),
            };
            q = q
                .bind(i64::try_from(c.seq).unwrap_or(i64::MAX))
                .bind(c.scope.clone())
                .bind(c.address.clone())
                .bind(op)
                .bind(reason)
                .bind(now_unix_ms);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes one entry (also an expired one not yet purged) and logs its removal. Returns the
/// row as it was; `NotFound` when there was none.
pub async fn remove(
    conn: &mut AnyConnection,
    scope: &str,
    address: &str,
    now_unix_ms: i64,
) -> StoreResult<SuppressionRow> {
    let row = sqlx::query("SELECT * FROM suppressions WHERE scope = $1 AND address = $2")
        .bind(scope.to_string())
        .bind(address.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("suppression"))?;
    let row = decode(&row)?;
    sqlx::query("DELETE FROM suppressions WHERE scope = $1 AND address = $2")
        .bind(scope.to_string())
        .bind(address.to_string())
        .execute(&mut *conn)
        .await?;
    let seq = reserve_seqs(conn, 1).await?;
    let change = SuppressionChange {
        seq,
        scope: scope.to_string(),
        address: address.to_string(),
        op: ChangeOp::Remove,
    };
    log_changes(conn, &[change], now_unix_ms).await?;
    Ok(row)
}

/// What [`list`] looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    All,
    /// One normalized address.
    Exact(String),
    /// Addresses starting with this (lower-cased) text.
    Prefix(String),
    /// Addresses at this (lower-cased) domain.
    Domain(String),
}

/// The smallest string above every string that starts with `prefix` (byte order): its last
/// character plus one. None when no such bound exists (empty, or only `char::MAX`).
fn prefix_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The `SELECT` of [`list`] and its text arguments: `$1` the scope, `$2` now, then the
/// arguments in order, then the limit (also what the plan checks explain). Each search is one
/// range of the primary key (`scope, address`) or of `suppressions_domain (scope, domain,
/// address)`, read in page order.
pub fn list_query(search: &Search, after: Option<&str>) -> (String, Vec<String>) {
    let mut sql = String::from(
        "SELECT * FROM suppressions WHERE scope = $1 \
         AND (expires_unix_ms IS NULL OR expires_unix_ms > $2)",
    );
    let mut args: Vec<String> = Vec::new();
    let mut push = |clause: &str, arg: String| {
        args.push(arg);
        sql.push_str(&clause.replace('?', &format!("${}", args.len() + 2)));
    };
    match search {
        Search::All => {}
        Search::Exact(a) => push(" AND address = ?", a.clone()),
        Search::Prefix(p) => {
            push(" AND address >= ?", p.clone());
            if let Some(bound) = prefix_bound(p) {
                push(" AND address < ?", bound);
            }
        }
        Search::Domain(d) => push(" AND domain = ?", d.clone()),
    }
    if let Some(a) = after {
        push(" AND address > ?", a.to_string());
    }
    sql.push_str(&format!(" ORDER BY address LIMIT ${}", args.len() + 3));
    (sql, args)
}

/// Live (unexpired at `now_unix_ms`) entries of `scope` matching `search`, by address, after
/// the address `after` (the cursor), at most `limit` ([`list_query`]).
pub async fn list(
    conn: &mut AnyConnection,
    scope: &str,
    search: &Search,
    after: Option<&str>,
    limit: i64,
    now_unix_ms: i64,
) -> StoreResult<Vec<SuppressionRow>> {
    let (sql, args) = list_query(search, after);
    let mut q = sqlx::query(&sql).bind(scope.to_string()).bind(now_unix_ms);
    for a in args {
        q = q.bind(a);
    }
    q.bind(limit)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Which suppression an event asks for, if any (see [`SUPPRESSING_BOUNCE_CATEGORIES`]).
pub fn reason_of(e: &Event) -> Option<SuppressionReason> {
    match &e.kind {
        EventType::Bounced => e
            .bounce
            .as_ref()
            .filter(|b| {
                b.class == BounceClass::Hard
                    && SUPPRESSING_BOUNCE_CATEGORIES.contains(&b.category.as_str())
            })
            .map(|_| SuppressionReason::HardBounce),
        EventType::Other(t) if t == COMPLAINED_EVENT => Some(SuppressionReason::Complaint),
        EventType::Other(t) if t == UNSUBSCRIBED_EVENT => Some(SuppressionReason::Unsubscribe),
        _ => None,
    }
}

/// The automatic adds of an ingest: every event (of a tenant, with a recipient that is an
/// address) that [`reason_of`] says suppresses, as one [`upsert`] in the caller's transaction.
/// Costs nothing but a scan of the batch when no event qualifies. Returns the entries added.
pub async fn add_from_events<'e>(
    conn: &mut AnyConnection,
    events: impl IntoIterator<Item = &'e Event>,
    now_unix_ms: i64,
) -> StoreResult<usize> {
    let entries: Vec<NewSuppression> = events
        .into_iter()
        .filter_map(|e| {
            let reason = reason_of(e)?;
            let scope = e.tenant_id.clone()?;
            let address = normalize_address(e.recipient.as_deref()?).ok()?;
            Some(NewSuppression {
                scope,
                address,
                reason,
                source_event_id: Some(e.id.clone()),
                expires_unix_ms: None,
            })
        })
        .collect();
    if entries.is_empty() {
        return Ok(0);
    }
    upsert(conn, &entries, now_unix_ms).await?;
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds_are_the_next_string_in_byte_order() {
        assert_eq!(prefix_bound("jo").as_deref(), Some("jp"));
        assert_eq!(prefix_bound("a@b.c").as_deref(), Some("a@b.d"));
        assert_eq!(prefix_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_bound("x\u{10FFFF}").as_deref(), Some("y"));
        assert_eq!(prefix_bound(""), None);
        for (p, inside, outside) in [("jo", "jo\u{10FFFE}x", "jp"), ("é", "éa", "ê")] {
            let b = prefix_bound(p).expect("bound");
            assert!(inside.as_bytes() < b.as_bytes() && inside.starts_with(p));
            assert!(outside.as_bytes() >= b.as_bytes());
        }
    }

    #[test]
    fn only_address_bounces_complaints_and_unsubscribes_suppress() {
        let mut e = Event {
            id: "e1".into(),
            kind: EventType::Bounced,
            timestamp_ms: 1,
            tenant_id: Some("ten_a".into()),
            message_id: None,
            rfc822_message_id: None,
            sender: "s@x.com".into(),
            from_domain: None,
            recipient: Some("R@x.com".into()),
            tags: Vec::new(),
            metadata: None,
            attempt: 1,
            remote: None,
            reply: None,
            bounce: Some(petrel_policy::Bounce {
                class: BounceClass::Hard,
                category: "invalid_recipient".into(),
            }),
            is_async: false,
            details: None,
        };
        assert_eq!(reason_of(&e), Some(SuppressionReason::HardBounce));
        e.bounce = Some(petrel_policy::Bounce {
            class: BounceClass::Hard,
            category: "spam_block".into(),
        });
        assert_eq!(reason_of(&e), None, "about the message, not the address");
        e.bounce = Some(petrel_policy::Bounce {
            class: BounceClass::Soft,
            category: "invalid_recipient".into(),
        });
        assert_eq!(reason_of(&e), None);
        e.bounce = None;
        assert_eq!(reason_of(&e), None, "unclassified");
        e.kind = EventType::parse("complained");
        assert_eq!(reason_of(&e), Some(SuppressionReason::Complaint));
        e.kind = EventType::parse("unsubscribed");
        assert_eq!(reason_of(&e), Some(SuppressionReason::Unsubscribe));
        e.kind = EventType::Delivered;
        assert_eq!(reason_of(&e), None);
    }
}
