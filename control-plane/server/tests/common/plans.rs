//! The index checks of the event queries, on SQLite (`tests/events.rs`) and PostgreSQL
//! (`tests/pg.rs`): a few thousand events of several tenants through the real insert path,
//! then each query the store runs for `GET /v1/events` (and the purge's reads) must be
//! answered from its index, never by a scan of `events` or `event_tags`. Dropping or changing
//! an index fails these.

use petrel_control::store::events::{
    bind_all, insert_batch, list_query, ArgValue, EventFilter, Scope, PURGE_PICK_SQL,
    PURGE_PICK_UNTENANTED_SQL, PURGE_PLAN_SQL,
};
use petrel_policy::event::{Event, EventType};

use super::events::event;

/// Tenants in the loaded data (the queries read the first): many, so that one tenant is a
/// small share of the table, fewer rows than a page, where reading any other index and
/// filtering by tenant would read the whole table (a tenant with a large share may be paged
/// through `seq` alone, which PostgreSQL rightly prefers then).
const PLAN_TENANTS: usize = 100;
/// Messages per tenant, each with 3 recipients and 2 events per recipient.
const PLAN_MESSAGES_PER_TENANT: usize = 10;

/// Events without a tenant.
const PLAN_UNTENANTED: usize = 300;

/// The tenant the checked queries read.
pub const PLAN_TENANT: &str = "ten_plan0";

/// Loads 6,300 events (accepted, then delivered, deferred or bounced; tags and all), the
/// tenants' messages interleaved as they arrive in production.
pub async fn load(pool: &sqlx::AnyPool) {
    let t0 = petrel_control::now_unix_ms() - 86_400_000;
    let mut all: Vec<Event> = Vec::new();
    for m in 0..PLAN_MESSAGES_PER_TENANT {
        for t in 0..PLAN_TENANTS {
            let tenant = format!("ten_plan{t}");
            let message = format!("plan-{t}-{m}");
            let ts = t0 + i64::try_from(m).unwrap_or(0) * 1_000;
            for rcpt in 0..3u32 {
                let rcpt_no = u32::try_from(m).unwrap_or(0) * 3 + rcpt;
                all.push(event(
                    &tenant,
                    &message,
                    rcpt_no,
                    0,
                    EventType::Accepted,
                    ts,
                ));
                let outcome = match m % 10 {
                    0 => EventType::Bounced,
                    1 => EventType::Deferred,
                    _ => EventType::Delivered,
                };
                all.push(event(&tenant, &message, rcpt_no, 1, outcome, ts + 500));
            }
        }
    }
    // Refusals before AUTH carry no tenant; the purge reads them by their own range.
    for i in 0..PLAN_UNTENANTED {
        let mut e = event("", &format!("plan-none-{i}"), 0, 0, EventType::Rejected, t0);
        e.tenant_id = None;
        e.timestamp_ms = t0 + i64::try_from(i).unwrap_or(0) * 100;
        all.push(e);
    }
    let mut tx = pool.begin().await.expect("begin");
    for batch in all.chunks(1_000) {
        insert_batch(&mut tx, "engine-plan", batch, t0)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");
}

/// Each `GET /v1/events` filter of [`PLAN_TENANT`] with the index that must answer it.
pub fn cases() -> Vec<(&'static str, EventFilter, &'static str)> {
    let base = EventFilter {
        scope: Scope::Tenant(PLAN_TENANT.into()),
        kind: None,
        recipient: None,
        message_id: None,
        tag: None,
        since_ms: None,
        until_ms: None,
        before_seq: None,
    };
    let with = |f: fn(&mut EventFilter)| {
        let mut filter = base.clone();
        f(&mut filter);
        filter
    };
    vec![
        ("first page", base.clone(), "events_tenant_seq"),
        (
            "next page",
            with(|f| f.before_seq = Some(3_000)),
            "events_tenant_seq",
        ),
        (
            "recipient",
            with(|f| f.recipient = Some("rcpt7@dest.test".into())),
            "events_tenant_recipient",
        ),
        (
            "message_id",
            with(|f| f.message_id = Some("plan-0-7".into())),
            "events_tenant_message",
        ),
        (
            "type",
            with(|f| f.kind = Some("bounced".into())),
            "events_tenant_type",
        ),
        (
            "common tag",
            with(|f| f.tag = Some("newsletter".into())),
            "event_tags_lookup",
        ),
        (
            "rare tag",
            with(|f| f.tag = Some("m-plan-0-7".into())),
            "event_tags_lookup",
        ),
        (
            "tag and type, next page",
            with(|f| {
                f.tag = Some("newsletter".into());
                f.kind = Some("delivered".into());
                f.before_seq = Some(3_000);
            }),
            "event_tags_lookup",
        ),
    ]
}

/// One plan to check: its name, SQL and arguments, and the index it must use.
pub struct PlanCase {
    pub name: &'static str,
    pub sql: String,
    pub args: Args,
    pub index: &'static str,
}

/// The arguments of a [`PlanCase`]: the store's own (list queries) or plain values.
pub enum Args {
    Store(Vec<ArgValue>),
    Plain(Vec<Arg>),
}

/// A plain argument.
pub enum Arg {
    Text(String),
    Int(i64),
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds `args` in order.
pub fn bind(q: AnyQuery<'_>, args: Args) -> AnyQuery<'_> {
    match args {
        Args::Store(a) => bind_all(q, a),
        Args::Plain(a) => a.into_iter().fold(q, |q, a| match a {
            Arg::Text(t) => q.bind(t),
            Arg::Int(i) => q.bind(i),
        }),
    }
}

/// The purge's reads: the plan (a loose index scan) and the picks of expired events.
pub fn purge_cases() -> Vec<PlanCase> {
    // A few expired events per tenant (see `load`), as a purge usually finds.
    let cutoff = petrel_control::now_unix_ms() - 86_400_000 + 2_000;
    vec![
        PlanCase {
            name: "purge plan",
            sql: PURGE_PLAN_SQL.into(),
            args: Args::Plain(vec![Arg::Int(cutoff), Arg::Int(30), Arg::Int(86_400_000)]),
            index: "events_tenant_",
        },
        PlanCase {
            name: "purge pick",
            sql: PURGE_PICK_SQL.into(),
            args: Args::Plain(vec![
                Arg::Text(PLAN_TENANT.into()),
                Arg::Int(cutoff),
                Arg::Int(5_000),
            ]),
            index: "events_tenant_time",
        },
        PlanCase {
            name: "purge pick, no tenant",
            sql: PURGE_PICK_UNTENANTED_SQL.into(),
            args: Args::Plain(vec![Arg::Int(cutoff), Arg::Int(5_000)]),
            index: "events_tenant_time",
        },
    ]
}

/// Runs `explain` (which prefixes the SQL and returns the plan text) on every list case and
/// every purge case, and checks each plan names its index and scans neither table.
/// `full_scan` tells whether a plan line is a full scan of `events` or `event_tags`.
///
/// `any_tenant_index_pages`: the unfiltered pages may be read from any index leading with the
/// tenant. PostgreSQL's planner, with statistics, reads a tenant of a few dozen rows through
/// whichever such index and sorts them (as cheap); SQLite's always takes `events_tenant_seq`,
/// which is checked exactly there.
pub async fn check<E, F>(explain: E, full_scan: fn(&str) -> bool, any_tenant_index_pages: bool)
where
    E: Fn(String, Args) -> F,
    F: std::future::Future<Output = String>,
{
    let mut all: Vec<PlanCase> = cases()
        .into_iter()
        .map(|(name, filter, index)| {
            let (sql, args) = list_query(&filter, 101);
            let index = if any_tenant_index_pages && index == "events_tenant_seq" {
                "events_tenant_"
            } else {
                index
            };
            PlanCase {
                name,
                sql,
                args: Args::Store(args),
                index,
            }
        })
        .collect();
    all.extend(purge_cases());
    all.push(PlanCase {
        name: "a report's message by Message-ID",
        sql: petrel_control::store::events::attribute::MESSAGE_ID_SQL.into(),
        args: Args::Plain(vec![Arg::Text("m1@mail.test".into()), Arg::Int(1_001)]),
        index: "events_rfc822_accepted",
    });
    for case in all {
        let plan = explain(case.sql.clone(), case.args).await;
        assert!(
            plan.contains(case.index),
            "{}: plan does not use {}:\n{plan}\n{}",
            case.name,
            case.index,
            case.sql
        );
        assert!(
            !plan.lines().any(full_scan),
            "{}: plan scans a whole table:\n{plan}\n{}",
            case.name,
            case.sql
        );
    }
}
