//! `events`, `event_tags`, `event_stats`: the delivery events engines send, their tags, and
//! hourly aggregates per tenant and sending domain.
//!
//! Ingest ([`insert_batch`], in `events/insert.rs`) runs in one transaction: it reserves
//! insertion sequence numbers from the `event_seq` row (which also serialises concurrent
//! batches, so a higher `seq` is never committed before a lower one and cursors never skip a
//! row), skips the ids stored before (one `SELECT .. IN` per batch), and writes the new events,
//! their tags and the batch's summed aggregates with multi-row `INSERT`s, so a re-sent event
//! changes nothing and a batch costs a handful of statements, not three per event.
//!
//! Events keep the `tenant_id` the engine gave (NULL when it had none). A tenant's key sees
//! only rows with its own id; an event naming a tenant that does not exist is still kept and
//! only operator owners, who may name any tenant id, can read it. Such rows expire with the
//! default retention.
//!
//! Indexes (migration 2) all lead with the tenant and end with `seq`, so each filter is one
//! index range read in page order: `(tenant_id, recipient, seq)`, `(tenant_id, message_id,
//! seq)` (also `GET /v1/messages/{id}`), `(tenant_id, type, seq)`, `(tenant_id, seq)` (no
//! filter), tags through `event_tags (tenant_id, tag, event_seq)` read backwards and joined
//! by `seq` (the `UNIQUE` on `seq`), and `(tenant_id, timestamp_ms)` for the purge (and
//! `since`/`until`); `event_tags (event_seq)` and `event_stats (bucket_start_ms)` serve the
//! purge too. `tests/events.rs` (SQLite) and `tests/pg.rs` (PostgreSQL) check each filter's
//! plan; `benches/bench-events-store.sh` times them at 10 million events.
//!
//! Cursors are the insertion `seq`: listing is newest first by `seq` (the order the control
//! plane received them), and `since`/`until` filter on the event's own `timestamp_ms`.

pub mod attribute;
mod insert;
mod purge;

pub(crate) use insert::{by_statement, values_sql, Placeholders};
pub use insert::{
    insert_batch, BIND_PARAMS_MAX, IDS_PER_CHECK_MAX, PARAMS_PER_STATEMENT,
    POSTGRES_BIND_PARAMS_MAX, SQLITE_BIND_PARAMS_MAX,
};
pub use purge::{
    purge_plan, purge_stats, purge_tenant_chunk, PurgeTarget, PURGE_ARGS_PER_STATEMENT,
    PURGE_PICK_SQL, PURGE_PICK_UNTENANTED_SQL, PURGE_PLAN_SQL,
};

use petrel_policy::{BounceClass, Event, EventType};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{StoreError, StoreResult};

/// Width of one aggregate bucket, ms (one hour).
pub const STATS_BUCKET_MS: i64 = 3_600_000;
/// A tenant's event retention when it set none, days.
pub const EVENTS_RETENTION_DAYS_DEFAULT: i64 = 30;
/// Aggregate buckets are kept this long (they are small: one row per tenant, domain and hour).
pub const STATS_RETENTION_DAYS: i64 = 400;
/// One day, ms.
pub const DAY_MS: i64 = 86_400_000;
/// Events of one message listed by `GET /v1/messages/{id}`.
pub const MESSAGE_EVENTS_MAX: i64 = 1_000;

/// The event type counted in `complained` (an open type: `EventType::Other`).
pub const COMPLAINED: &str = "complained";

/// The counter columns of `event_stats`, in [`Counts`] order.
const COUNT_COLUMNS: [&str; 8] = [
    "sent",
    "delivered",
    "bounced_hard",
    "bounced_soft",
    "deferred",
    "expired",
    "rejected",
    "complained",
];

/// Counters of one bucket (or of a sum of buckets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// `accepted` events: recipients taken for delivery.
    pub sent: i64,
    pub delivered: i64,
    pub bounced_hard: i64,
    pub bounced_soft: i64,
    /// `deferred` events (one per failed attempt, so it can exceed `sent`).
    pub deferred: i64,
    pub expired: i64,
    pub rejected: i64,
    /// `complained` events (ARF feedback reports at the return-path intake).
    pub complained: i64,
}

impl Counts {
    /// Adds one event; false for types the aggregates do not count.
    fn add(&mut self, e: &Event) -> bool {
        let hard = e
            .bounce
            .as_ref()
            .is_none_or(|b| b.class == BounceClass::Hard);
        match &e.kind {
            EventType::Accepted => self.sent += 1,
            EventType::Delivered => self.delivered += 1,
            EventType::Bounced if hard => self.bounced_hard += 1,
            EventType::Bounced => self.bounced_soft += 1,
            EventType::Deferred => self.deferred += 1,
            EventType::Expired => self.expired += 1,
            EventType::Rejected => self.rejected += 1,
            EventType::Other(t) if t.as_str() == COMPLAINED => self.complained += 1,
            EventType::Other(_) => return false,
        }
        true
    }

    /// The counters in [`COUNT_COLUMNS`] order.
    fn values(&self) -> [i64; 8] {
        [
            self.sent,
            self.delivered,
            self.bounced_hard,
            self.bounced_soft,
            self.deferred,
            self.expired,
            self.rejected,
            self.complained,
        ]
    }

    fn decode(r: &AnyRow) -> StoreResult<Counts> {
        Ok(Counts {
            sent: r.try_get("sent")?,
            delivered: r.try_get("delivered")?,
            bounced_hard: r.try_get("bounced_hard")?,
            bounced_soft: r.try_get("bounced_soft")?,
            deferred: r.try_get("deferred")?,
            expired: r.try_get("expired")?,
            rejected: r.try_get("rejected")?,
            complained: r.try_get("complained")?,
        })
    }
}

/// The start of the bucket holding `ms` (saturating at the ends of the range: a query may
/// name any instant).
pub fn bucket_start(ms: i64) -> i64 {
    ms.saturating_sub(ms.rem_euclid(STATS_BUCKET_MS))
}

fn json_text<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
        column: "events",
        reason: e.to_string(),
    })
}

/// One stored event with its insertion sequence (the cursor).
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: Event,
}

fn json_col<T: serde::de::DeserializeOwned>(
    r: &AnyRow,
    col: &'static str,
) -> StoreResult<Option<T>> {
    let text: Option<String> = r.try_get(col)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt {
            column: col,
            reason: e.to_string(),
        })
    })
    .transpose()
}

pub(crate) fn decode(r: &AnyRow) -> StoreResult<StoredEvent> {
    let class: Option<String> = r.try_get("bounce_class")?;
    let category: Option<String> = r.try_get("bounce_category")?;
    let bounce = match (class.as_deref(), category) {
        (Some(c), Some(category)) => Some(petrel_policy::Bounce {
            class: match c {
                "hard" => BounceClass::Hard,
                "soft" => BounceClass::Soft,
                other => {
                    return Err(StoreError::Corrupt {
                        column: "bounce_class",
                        reason: other.to_string(),
                    })
                }
            },
            category,
        }),
        _ => None,
    };
    let kind: String = r.try_get("type")?;
    let attempt: i64 = r.try_get("attempt")?;
    Ok(StoredEvent {
        seq: r.try_get("seq")?,
        event: Event {
            id: r.try_get("id")?,
            kind: EventType::parse(&kind),
            timestamp_ms: r.try_get("timestamp_ms")?,
            tenant_id: r.try_get("tenant_id")?,
            message_id: r.try_get("message_id")?,
            rfc822_message_id: r.try_get("rfc822_message_id")?,
            sender: r.try_get("sender")?,
            from_domain: r.try_get("from_domain")?,
            recipient: r.try_get("recipient")?,
            tags: json_col(r, "tags")?.unwrap_or_default(),
            metadata: json_col(r, "metadata")?,
            attempt: u32::try_from(attempt).unwrap_or(0),
            remote: json_col(r, "remote")?,
            reply: json_col(r, "reply")?,
            bounce,
            is_async: r.try_get::<i64, _>("is_async")? != 0,
            details: json_col(r, "details")?,
        },
    })
}

/// Which tenant's rows a read sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Rows with this tenant id.
    Tenant(String),
    /// Every row (operator owners only).
    All,
}

/// `GET /v1/events` filters; None: no filter.
#[derive(Debug, Clone)]
pub struct EventFilter {
    pub scope: Scope,
    pub kind: Option<String>,
    pub recipient: Option<String>,
    pub message_id: Option<String>,
    pub tag: Option<String>,
    /// Inclusive, on `timestamp_ms`.
    pub since_ms: Option<i64>,
    /// Inclusive, on `timestamp_ms`.
    pub until_ms: Option<i64>,
    /// Only rows with a smaller `seq` (the cursor).
    pub before_seq: Option<i64>,
}

enum Arg {
    Text(String),
    Int(i64),
}

/// The `WHERE` clause and its arguments for `f` (numbered from `$1`), on `events e` joined,
/// when `f` names a tag, to `event_tags t` (see [`list_query`]).
fn where_clause(f: &EventFilter) -> (String, Vec<Arg>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut push = |clause: &str, arg: Arg| {
        args.push(arg);
        clauses.push(clause.replace('?', &format!("${}", args.len())));
    };
    match (&f.scope, &f.tag) {
        // The tag rows carry their event's tenant: the tag index's range is the tenant's.
        (Scope::Tenant(t), Some(_)) => push("t.tenant_id = ?", Arg::Text(t.clone())),
        (Scope::Tenant(t), None) => push("e.tenant_id = ?", Arg::Text(t.clone())),
        (Scope::All, _) => {}
    }
    if let Some(tag) = &f.tag {
        push("t.tag = ?", Arg::Text(tag.clone()));
    }
    if let Some(v) = &f.kind {
        push("e.type = ?", Arg::Text(v.clone()));
    }
    if let Some(v) = &f.recipient {
        push("e.recipient = ?", Arg::Text(v.clone()));
    }
    if let Some(v) = &f.message_id {
        push("e.message_id = ?", Arg::Text(v.clone()));
    }
    if let Some(v) = f.since_ms {
        push("e.timestamp_ms >= ?", Arg::Int(v));
    }
    if let Some(v) = f.until_ms {
        push("e.timestamp_ms <= ?", Arg::Int(v));
    }
    if let Some(v) = f.before_seq {
        push(&format!("{} < ?", order_column(f)), Arg::Int(v));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, args)
}

/// The column pages are ordered by: the event's `seq`, or with a tag the same value as the
/// tag index holds it, so both backends read that index backwards and stop after one page
/// instead of collecting every event of a common tag first.
fn order_column(f: &EventFilter) -> &'static str {
    if f.tag.is_some() {
        "t.event_seq"
    } else {
        "e.seq"
    }
}

/// The `SELECT` for [`list`] with its arguments (also what the index checks explain). Each
/// filter is answered from one index in page order (see the module doc); with a tag the read
/// starts at `event_tags (tenant_id, tag, event_seq)` and joins each row to its event by `seq`.
pub fn list_query(f: &EventFilter, limit: i64) -> (String, Vec<ArgValue>) {
    let (w, args) = where_clause(f);
    let n = args.len() + 1;
    let from = if f.tag.is_some() {
        "event_tags t JOIN events e ON e.seq = t.event_seq"
    } else {
        "events e"
    };
    let order = order_column(f);
    let sql = format!("SELECT e.* FROM {from}{w} ORDER BY {order} DESC LIMIT ${n}");
    let mut args: Vec<ArgValue> = args.into_iter().map(ArgValue).collect();
    args.push(ArgValue(Arg::Int(limit)));
    (sql, args)
}

/// An argument of [`list_query`] (opaque: bind it with [`bind_all`]).
pub struct ArgValue(Arg);

/// Binds [`list_query`]'s arguments in order.
pub fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: Vec<ArgValue>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for ArgValue(a) in args {
        q = match a {
            Arg::Text(t) => q.bind(t),
            Arg::Int(i) => q.bind(i),
        };
    }
    q
}

/// At most `limit` events matching `f`, newest (highest `seq`) first.
pub async fn list(
    conn: &mut AnyConnection,
    f: &EventFilter,
    limit: i64,
) -> StoreResult<Vec<StoredEvent>> {
    let (sql, args) = list_query(f, limit);
    bind_all(sqlx::query(&sql), args)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// The events of one message in time order (at most [`MESSAGE_EVENTS_MAX`]).
pub async fn message(
    conn: &mut AnyConnection,
    scope: &Scope,
    message_id: &str,
) -> StoreResult<Vec<StoredEvent>> {
    let (sql, q) = match scope {
        Scope::Tenant(t) => (
            "SELECT * FROM events WHERE tenant_id = $1 AND message_id = $2 \
             ORDER BY timestamp_ms, seq LIMIT $3",
            Some(t.clone()),
        ),
        Scope::All => (
            "SELECT * FROM events WHERE message_id = $1 ORDER BY timestamp_ms, seq LIMIT $2",
            None,
        ),
    };
    let mut query = sqlx::query(sql);
    if let Some(t) = q {
        query = query.bind(t);
    }
    query
        .bind(message_id.to_string())
        .bind(MESSAGE_EVENTS_MAX)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Sums of the buckets of one tenant in `[since_ms, until_ms]` (bucket starts), per sending
/// domain ("" for events without one), by domain name.
pub async fn stats(
    conn: &mut AnyConnection,
    tenant_id: &str,
    from_domain: Option<&str>,
    since_ms: i64,
    until_ms: i64,
) -> StoreResult<Vec<(String, Counts)>> {
    // SUM of BIGINT is NUMERIC on PostgreSQL: cast back so both dialects decode an i64.
    let sums = COUNT_COLUMNS
        .iter()
        .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "SELECT from_domain, {sums} FROM event_stats WHERE tenant_id = $1 \
         AND bucket_start_ms >= $2 AND bucket_start_ms <= $3"
    );
    if from_domain.is_some() {
        sql.push_str(" AND from_domain = $4");
    }
    sql.push_str(" GROUP BY from_domain ORDER BY from_domain");
    let mut q = sqlx::query(&sql)
        .bind(tenant_id.to_string())
        .bind(bucket_start(since_ms))
        .bind(until_ms);
    if let Some(d) = from_domain {
        q = q.bind(d.to_string());
    }
    q.fetch_all(conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("from_domain")?, Counts::decode(r)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_default_is_the_named_retention() {
        let (_, sql) = super::super::migrations::MIGRATIONS
            .iter()
            .find(|(v, _)| *v == 2)
            .expect("migration 2");
        let column = format!(
            "events_retention_days BIGINT NOT NULL DEFAULT {EVENTS_RETENTION_DAYS_DEFAULT};"
        );
        assert!(sql.contains(&column), "{sql}");
    }

    #[test]
    fn buckets_are_hours_and_saturate() {
        assert_eq!(bucket_start(0), 0);
        assert_eq!(bucket_start(STATS_BUCKET_MS - 1), 0);
        assert_eq!(bucket_start(STATS_BUCKET_MS), STATS_BUCKET_MS);
        assert_eq!(bucket_start(-1), -STATS_BUCKET_MS);
        assert!(bucket_start(i64::MIN) <= i64::MIN + STATS_BUCKET_MS);
        assert_eq!(bucket_start(i64::MAX) % STATS_BUCKET_MS, 0);
    }

    #[test]
    fn the_where_clause_numbers_its_arguments() {
        let f = EventFilter {
            scope: Scope::Tenant("t".into()),
            kind: Some("bounced".into()),
            recipient: None,
            message_id: None,
            tag: Some("x".into()),
            since_ms: Some(1),
            until_ms: None,
            before_seq: Some(9),
        };
        let (sql, args) = list_query(&f, 10);
        assert_eq!(
            sql,
            "SELECT e.* FROM event_tags t JOIN events e ON e.seq = t.event_seq WHERE \
             t.tenant_id = $1 AND t.tag = $2 AND e.type = $3 AND e.timestamp_ms >= $4 AND \
             t.event_seq < $5 ORDER BY t.event_seq DESC LIMIT $6"
        );
        assert_eq!(args.len(), 6);
        let all = EventFilter {
            scope: Scope::All,
            tag: None,
            kind: None,
            since_ms: None,
            before_seq: None,
            ..f
        };
        let (sql, args) = list_query(&all, 10);
        assert_eq!(sql, "SELECT e.* FROM events e ORDER BY e.seq DESC LIMIT $1");
        assert_eq!(args.len(), 1);
    }
}
