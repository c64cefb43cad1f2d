//! Ingest of one batch ([`insert_batch`]) in few round trips, the same statements on SQLite and
//! PostgreSQL:
//!
//! 1. `UPDATE event_seq .. RETURNING` reserves one `seq` per event. It is the first write, so
//!    it takes the lock (SQLite's write lock is already held from `BEGIN IMMEDIATE`; on
//!    PostgreSQL the row lock) that serialises batches until commit: seq order is commit order,
//!    and the next statement sees every event committed before.
//! 2. One `SELECT id .. WHERE id IN (..)` finds the events stored before (a re-sent batch).
//! 3. Multi-row `INSERT`s of the new events, their tags, and the batch's aggregates, summed in
//!    memory first (one upsert per tenant, domain and hour, not one per event).
//! 4. The suppressions the new events ask for (`store::suppressions::add_from_events`): one
//!    multi-row upsert and one change-log insert, only when the batch holds such an event.
//!
//! Re-sent events keep their first `seq`; the reserved numbers they leave unused are gaps,
//! which cursors do not mind. A plain `INSERT` (no `ON CONFLICT`) makes a broken serialisation
//! fail the batch, which the engine then re-sends, instead of counting an event twice.
//!
//! Statement sizes: a multi-row statement binds `rows × columns` parameters, bounded by both
//! backends' limits ([`SQLITE_BIND_PARAMS_MAX`], [`POSTGRES_BIND_PARAMS_MAX`]). Row counts come
//! ([`PARAMS_PER_STATEMENT`]: a full batch is one statement per table); the rest of a batch goes
//! out in powers of two, so each table has few statement texts in the connections'
//! prepared-statement caches. The statements are the same on both backends but for how they
//! write parameters ([`Placeholders`]).
//! Measured on this project's 2-core bench machine (see `benches/bench-events-store.sh`).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};

use petrel_policy::Event;
use sqlx::{AnyConnection, Row};

use super::{bucket_start, json_text, Counts, COUNT_COLUMNS};
use crate::store::StoreResult;

/// Bind parameters one SQLite statement takes (`SQLITE_MAX_VARIABLE_NUMBER` of the bundled
/// SQLite, 3.32 and later).
pub const SQLITE_BIND_PARAMS_MAX: usize = 32_766;
/// Bind parameters one PostgreSQL statement takes (the protocol's 16-bit count).
pub const POSTGRES_BIND_PARAMS_MAX: usize = 65_535;
/// What the shared code path binds at most per statement: the smaller limit.
pub const BIND_PARAMS_MAX: usize = if SQLITE_BIND_PARAMS_MAX < POSTGRES_BIND_PARAMS_MAX {
    SQLITE_BIND_PARAMS_MAX
} else {
    POSTGRES_BIND_PARAMS_MAX
};
/// Parameters bound per multi-row statement, on both backends: a whole 1,000-event batch in
/// one `events` insert (21,000), since every statement is a round trip (to the SQLite worker
/// thread, or over the network to PostgreSQL).
pub const PARAMS_PER_STATEMENT: usize = 21_000;
/// Ids per existing-id check statement (a whole batch). The `IN` list is padded to a power of
/// two (repeating the last id) so there are few statement texts.
pub const IDS_PER_CHECK_MAX: usize = 1_024;

/// Columns of one `events` row, in [`EVENT_INSERT`] order.
const EVENT_COLUMNS: usize = 21;
const EVENT_INSERT: &str = "INSERT INTO events (id, seq, tenant_id, type, timestamp_ms, \
     message_id, rfc822_message_id, sender, from_domain, recipient, tags, metadata, attempt, \
     remote, reply, bounce_class, bounce_category, engine_id, received_unix_ms, is_async, \
     details)";
const TAG_COLUMNS: usize = 3;
const TAG_INSERT: &str = "INSERT INTO event_tags (event_seq, tenant_id, tag)";
/// `tenant_id`, `from_domain`, `bucket_start_ms`, then the counters.
const STATS_COLUMNS: usize = 3 + COUNT_COLUMNS.len();

const _: () = assert!(PARAMS_PER_STATEMENT <= BIND_PARAMS_MAX);
const _: () = assert!(PARAMS_PER_STATEMENT >= EVENT_COLUMNS);
const _: () = assert!(IDS_PER_CHECK_MAX <= BIND_PARAMS_MAX);
const _: () = assert!(IDS_PER_CHECK_MAX >= petrel_policy::event::EVENTS_PER_BATCH_MAX);

/// How a statement writes its parameters. PostgreSQL reads only numbered ones (`$n`). On SQLite
/// the multi-row statements use anonymous ones (`?`, bound in order): sqlx binds a named `$n`
/// there by looking up each parameter's name (`sqlite3_bind_parameter_name`, a linear scan of
/// the statement's names), so a statement of `p` numbered parameters costs `p²/2` steps to
/// bind. Measured with 1,000-event batches: 0.2 s per batch at 19,000 parameters, still a fifth
/// of the ingest CPU at 256; nothing with `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholders {
    Numbered,
    Anonymous,
}

impl Placeholders {
    pub(crate) fn of(conn: &AnyConnection) -> Placeholders {
        if conn.backend_name().eq_ignore_ascii_case("sqlite") {
            Placeholders::Anonymous
        } else {
            Placeholders::Numbered
        }
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Stores a validated batch in the caller's transaction. Returns how many events were new
/// (the others were stored before: same id).
pub async fn insert_batch<E: Borrow<Event>>(
    conn: &mut AnyConnection,
    engine_id: &str,
    events: &[E],
    now_unix_ms: i64,
) -> StoreResult<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let last: i64 = sqlx::query(
        "UPDATE event_seq SET last_seq = last_seq + $1 WHERE id = 1 RETURNING last_seq",
    )
    .bind(count)
    .fetch_one(&mut *conn)
    .await?
    .try_get("last_seq")?;
    let style = Placeholders::of(conn);
    let stored = existing_ids(conn, events, style).await?;
    let mut seq = last - count;
    let mut new: Vec<(i64, &Event)> = Vec::with_capacity(events.len());
    for e in events {
        let e = e.borrow();
        if !stored.contains(e.id.as_str()) {
            seq += 1;
            new.push((seq, e));
        }
    }
    insert_events(conn, engine_id, &new, now_unix_ms, style).await?;
    insert_tags(conn, &new, style).await?;
    upsert_stats(conn, &new, style).await?;
    // Hard bounces, complaints and unsubscribes suppress their recipient in the same
    // transaction (one multi-row upsert, none for a batch without any): the entry exists as
    // soon as the event does, and a re-sent event (not new) adds nothing twice.
    crate::store::suppressions::add_from_events(conn, new.iter().map(|(_, e)| *e), now_unix_ms)
        .await?;
    Ok(new.len())
}

/// The ids of `events` already stored, with one statement per [`IDS_PER_CHECK_MAX`] events.
async fn existing_ids<E: Borrow<Event>>(
    conn: &mut AnyConnection,
    events: &[E],
    style: Placeholders,
) -> StoreResult<HashSet<String>> {
    let mut stored = HashSet::new();
    for chunk in events.chunks(IDS_PER_CHECK_MAX) {
        let padded = chunk.len().next_power_of_two();
        let sql = format!(
            "SELECT id FROM events WHERE id IN ({})",
            placeholders(style, 1, padded)
        );
        let mut q = sqlx::query(&sql);
        for i in 0..padded {
            let e: &Event = chunk[i.min(chunk.len() - 1)].borrow();
            q = q.bind(e.id.clone());
        }
        for r in q.fetch_all(&mut *conn).await? {
            stored.insert(r.try_get::<String, _>("id")?);
        }
    }
    Ok(stored)
}

async fn insert_events(
    conn: &mut AnyConnection,
    engine_id: &str,
    new: &[(i64, &Event)],
    now_unix_ms: i64,
    style: Placeholders,
) -> StoreResult<()> {
    for rows in by_statement(new, PARAMS_PER_STATEMENT / EVENT_COLUMNS) {
        let sql = values_sql(style, EVENT_INSERT, EVENT_COLUMNS, rows.len(), "");
        let mut q = sqlx::query(&sql);
        for (seq, e) in rows {
            q = bind_event(q, *seq, e, engine_id, now_unix_ms)?;
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

fn bind_event<'q>(
    q: AnyQuery<'q>,
    seq: i64,
    e: &Event,
    engine_id: &str,
    now_unix_ms: i64,
) -> StoreResult<AnyQuery<'q>> {
    Ok(q.bind(e.id.clone())
        .bind(seq)
        .bind(e.tenant_id.clone())
        .bind(e.kind.as_str().to_string())
        .bind(e.timestamp_ms)
        .bind(e.message_id.clone())
        .bind(e.rfc822_message_id.clone())
        .bind(e.sender.clone())
        .bind(e.from_domain.clone())
        .bind(e.recipient.clone())
        .bind(json_text(&e.tags)?)
        .bind(e.metadata.as_ref().map(json_text).transpose()?)
        .bind(i64::from(e.attempt))
        .bind(e.remote.as_ref().map(json_text).transpose()?)
        .bind(e.reply.as_ref().map(json_text).transpose()?)
        .bind(e.bounce.as_ref().map(|b| b.class.as_str().to_string()))
        .bind(e.bounce.as_ref().map(|b| b.category.clone()))
        .bind(engine_id.to_string())
        .bind(now_unix_ms)
        .bind(i64::from(e.is_async))
        .bind(e.details.as_ref().map(json_text).transpose()?))
}

async fn insert_tags(
    conn: &mut AnyConnection,
    new: &[(i64, &Event)],
    style: Placeholders,
) -> StoreResult<()> {
    // Each distinct tag of an event once (the event's `tags` column keeps them as sent), so
    // the tag query's join yields an event once.
    let mut tags: Vec<(i64, &Option<String>, &String)> = Vec::new();
    for (seq, e) in new {
        for (i, t) in e.tags.iter().enumerate() {
            if !e.tags[..i].contains(t) {
                tags.push((*seq, &e.tenant_id, t));
            }
        }
    }
    for rows in by_statement(&tags, PARAMS_PER_STATEMENT / TAG_COLUMNS) {
        let sql = values_sql(style, TAG_INSERT, TAG_COLUMNS, rows.len(), "");
        let mut q = sqlx::query(&sql);
        for (seq, tenant, tag) in rows {
            q = q.bind(*seq).bind((*tenant).clone()).bind((*tag).clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Adds the batch's counts to their hourly buckets: summed per (tenant, sending domain,
/// bucket) in memory, then one multi-row upsert (each key once per statement, as PostgreSQL
/// requires of `ON CONFLICT DO UPDATE`).
async fn upsert_stats(
    conn: &mut AnyConnection,
    new: &[(i64, &Event)],
    style: Placeholders,
) -> StoreResult<()> {
    let mut stats: BTreeMap<(String, String, i64), Counts> = BTreeMap::new();
    for (_, e) in new {
        let key = (
            e.tenant_id.clone().unwrap_or_default(),
            e.from_domain.clone().unwrap_or_default(),
            bucket_start(e.timestamp_ms),
        );
        let mut c = stats.get(&key).copied().unwrap_or_default();
        if c.add(e) {
            stats.insert(key, c);
        }
    }
    let stats: Vec<_> = stats.into_iter().collect();
    let names = COUNT_COLUMNS.join(", ");
    let updates = COUNT_COLUMNS
        .iter()
        .map(|c| format!("{c} = event_stats.{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let prefix =
        format!("INSERT INTO event_stats (tenant_id, from_domain, bucket_start_ms, {names})");
    let suffix =
        format!(" ON CONFLICT (tenant_id, from_domain, bucket_start_ms) DO UPDATE SET {updates}");
    for rows in by_statement(&stats, PARAMS_PER_STATEMENT / STATS_COLUMNS) {
        let sql = values_sql(style, &prefix, STATS_COLUMNS, rows.len(), &suffix);
        let mut q = sqlx::query(&sql);
        for ((tenant, domain, bucket), c) in rows {
            q = q.bind(tenant.clone()).bind(domain.clone()).bind(*bucket);
            for v in c.values() {
                q = q.bind(v);
            }
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `rows` cut into statements of `rows_max` rows (at least 1), then the rest in powers of two,
/// largest first: at most `2 + log2(rows_max)` statement texts per table.
pub(crate) fn by_statement<T>(mut rows: &[T], rows_max: usize) -> Vec<&[T]> {
    let rows_max = rows_max.max(1);
    let mut out = Vec::new();
    while rows.len() >= rows_max {
        let (head, tail) = rows.split_at(rows_max);
        out.push(head);
        rows = tail;
    }
    while !rows.is_empty() {
        let size = 1 << rows.len().ilog2();
        let (head, tail) = rows.split_at(size);
        out.push(head);
        rows = tail;
    }
    out
}

/// `$first, .., $(first + n - 1)`, or `n` times `?`.
fn placeholders(style: Placeholders, first: usize, n: usize) -> String {
    let mut s = String::with_capacity(n * 6);
    for i in first..first + n {
        if i > first {
            s.push(',');
        }
        match style {
            Placeholders::Numbered => {
                s.push('$');
                s.push_str(&i.to_string());
            }
            Placeholders::Anonymous => s.push('?'),
        }
    }
    s
}

/// `prefix VALUES ($1,..,$c),($c+1,..),.. suffix` for `rows` rows of `columns` parameters.
pub(crate) fn values_sql(
    style: Placeholders,
    prefix: &str,
    columns: usize,
    rows: usize,
    suffix: &str,
) -> String {
    let mut sql = String::with_capacity(prefix.len() + suffix.len() + rows * columns * 7);
    sql.push_str(prefix);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        sql.push_str(&placeholders(style, 1 + r * columns, columns));
        sql.push(')');
    }
    sql.push_str(suffix);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_the_ladder_sizes() {
        let rows: Vec<u32> = (0..2_345).collect();
        let sizes: Vec<usize> = by_statement(&rows, 1_000).iter().map(|s| s.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 256, 64, 16, 8, 1]);
        let flat: Vec<u32> = by_statement(&rows, 1_000).concat();
        assert_eq!(flat, rows, "every row once, in order");
        let sizes: Vec<usize> = by_statement(&rows[..30], 13)
            .iter()
            .map(|s| s.len())
            .collect();
        assert_eq!(sizes, [13, 13, 4]);
        assert_eq!(
            by_statement(&rows[..3], 0).len(),
            3,
            "at least one row each"
        );
        assert!(by_statement::<u32>(&[], 8).is_empty());
    }

    #[test]
    fn values_are_numbered_row_after_row() {
        let numbered = Placeholders::Numbered;
        assert_eq!(
            values_sql(
                numbered,
                "INSERT INTO t (a, b)",
                2,
                2,
                " ON CONFLICT DO NOTHING"
            ),
            "INSERT INTO t (a, b) VALUES ($1,$2),($3,$4) ON CONFLICT DO NOTHING"
        );
        assert_eq!(placeholders(numbered, 3, 3), "$3,$4,$5");
        let anonymous = Placeholders::Anonymous;
        assert_eq!(
            values_sql(anonymous, "INSERT INTO t (a)", 1, 3, ""),
            "INSERT INTO t (a) VALUES (?),(?),(?)"
        );
    }
}
