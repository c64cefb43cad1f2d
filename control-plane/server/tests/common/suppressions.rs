//! Suppression scenarios run against both stores (SQLite in `suppressions.rs`, PostgreSQL in
//! `pg.rs`): the store's rules and change log (the API's in `suppressions_api.rs`).

use super::Harness;
use petrel_control::store::suppressions::{
    self as ss, ChangeOp, ChangesSince, NewSuppression, Search, SuppressionReason,
    CHANGES_RETENTION_DAYS, OPERATOR_SCOPE,
};
use petrel_control::store::{events, Db};
use petrel_policy::event::{Bounce, BounceClass, Event, EventType};

const DAY_MS: i64 = 86_400_000;

/// A second handle on the harness's database (migrated already).
pub async fn db(h: &Harness, database_url: Option<&str>) -> Db {
    let key = super::shared_key_file();
    Db::open_keyed(&h.dir.path().join("control"), database_url, Some(&key))
        .await
        .expect("open the store")
}

fn new(
    scope: &str,
    address: &str,
    reason: SuppressionReason,
    expires: Option<i64>,
) -> NewSuppression {
    NewSuppression {
        scope: scope.into(),
        address: address.into(),
        reason,
        source_event_id: None,
        expires_unix_ms: expires,
    }
}

async fn upsert(db: &Db, entries: &[NewSuppression], now: i64) -> u64 {
    let mut tx = db.begin_write().await.expect("begin");
    let seq = ss::upsert(&mut tx, entries, now).await.expect("upsert");
    tx.commit().await.expect("commit");
    seq
}

async fn find(db: &Db, scope: &str, address: &str, now: i64) -> Option<ss::SuppressionRow> {
    let mut conn = db.conn().await.expect("conn");
    let rows = ss::list(
        &mut conn,
        scope,
        &Search::Exact(address.into()),
        None,
        1,
        now,
    )
    .await
    .expect("list");
    rows.into_iter().next()
}

async fn changes(db: &Db, since: u64) -> ChangesSince {
    ss::changes_since(&mut db.conn().await.expect("conn"), since, 10_000)
        .await
        .expect("changes")
}

fn bounce(id: &str, tenant: &str, rcpt: &str, category: &str, class: BounceClass) -> Event {
    Event {
        id: id.into(),
        kind: EventType::Bounced,
        timestamp_ms: 1,
        tenant_id: Some(tenant.into()),
        message_id: Some("m1".into()),
        rfc822_message_id: None,
        sender: "s@sender.test".into(),
        from_domain: Some("sender.test".into()),
        recipient: Some(rcpt.into()),
        tags: Vec::new(),
        metadata: None,
        attempt: 1,
        remote: None,
        reply: None,
        bounce: Some(Bounce {
            class,
            category: category.into(),
        }),
        is_async: false,
        details: None,
    }
}

/// The store: re-add rules, expiry, search and paging, the change log and its purge, and the
/// automatic adds of an event ingest.
pub async fn store(db: &Db) {
    let t0 = 1_800_000_000_000;
    let v0 = ss::current_version(&mut db.conn().await.expect("conn"))
        .await
        .expect("version");
    // A manual add, then a hard bounce: the automatic reason wins, and re-adding manually
    // keeps it; the expiry only grows (none = never).
    let s1 = upsert(
        db,
        &[new(
            "ten_s",
            "a@x.test",
            SuppressionReason::Manual,
            Some(t0 + DAY_MS),
        )],
        t0,
    )
    .await;
    assert_eq!(s1, v0 + 1);
    upsert(
        db,
        &[new(
            "ten_s",
            "a@x.test",
            SuppressionReason::HardBounce,
            Some(t0 + 2 * DAY_MS),
        )],
        t0 + 1,
    )
    .await;
    upsert(
        db,
        &[new(
            "ten_s",
            "a@x.test",
            SuppressionReason::Manual,
            Some(t0 + DAY_MS),
        )],
        t0 + 2,
    )
    .await;
    let a = find(db, "ten_s", "a@x.test", t0 + 3).await.expect("a");
    assert_eq!(
        a.reason,
        SuppressionReason::HardBounce,
        "manual keeps the automatic reason"
    );
    assert_eq!(a.expires_unix_ms, Some(t0 + 2 * DAY_MS), "the later expiry");
    assert_eq!((a.created_unix_ms, a.updated_unix_ms), (t0, t0 + 2));
    upsert(
        db,
        &[new("ten_s", "a@x.test", SuppressionReason::Complaint, None)],
        t0 + 3,
    )
    .await;
    let a = find(db, "ten_s", "a@x.test", t0 + 4).await.expect("a");
    assert_eq!(
        (a.reason, a.expires_unix_ms),
        (SuppressionReason::Complaint, None)
    );
    // Expired entries count as absent; a re-add starts afresh.
    upsert(
        db,
        &[new(
            "ten_s",
            "old@x.test",
            SuppressionReason::Complaint,
            Some(t0 + 10),
        )],
        t0,
    )
    .await;
    assert!(find(db, "ten_s", "old@x.test", t0 + 10).await.is_none());
    upsert(
        db,
        &[new(
            "ten_s",
            "old@x.test",
            SuppressionReason::Manual,
            Some(t0 + DAY_MS),
        )],
        t0 + 20,
    )
    .await;
    let old = find(db, "ten_s", "old@x.test", t0 + 21)
        .await
        .expect("re-added");
    assert_eq!(
        (old.reason, old.created_unix_ms, old.expires_unix_ms),
        (SuppressionReason::Manual, t0 + 20, Some(t0 + DAY_MS))
    );
    // Scopes are separate lists; the same address twice in one call counts once.
    let batch: Vec<NewSuppression> = (0..30)
        .map(|i| {
            new(
                "ten_s",
                &format!("p{i:02}@d{}.test", i % 3),
                SuppressionReason::Manual,
                None,
            )
        })
        .chain([
            new("ten_s", "p00@d0.test", SuppressionReason::Unsubscribe, None),
            new(OPERATOR_SCOPE, "a@x.test", SuppressionReason::Manual, None),
            new("ten_other", "a@x.test", SuppressionReason::Manual, None),
        ])
        .collect();
    upsert(db, &batch, t0 + 30).await;
    assert_eq!(
        find(db, "ten_s", "p00@d0.test", t0 + 31)
            .await
            .map(|r| r.reason),
        Some(SuppressionReason::Unsubscribe),
        "the last of a duplicate wins"
    );
    let mut c = db.conn().await.expect("conn");
    let addrs =
        |rows: Vec<ss::SuppressionRow>| rows.into_iter().map(|r| r.address).collect::<Vec<_>>();
    let d1 = addrs(
        ss::list(
            &mut c,
            "ten_s",
            &Search::Domain("d1.test".into()),
            None,
            100,
            t0 + 31,
        )
        .await
        .expect("domain"),
    );
    assert_eq!(d1.len(), 10);
    assert!(d1.iter().all(|a| a.ends_with("@d1.test")) && d1.windows(2).all(|w| w[0] < w[1]));
    let p1 = addrs(
        ss::list(
            &mut c,
            "ten_s",
            &Search::Prefix("p1".into()),
            None,
            100,
            t0 + 31,
        )
        .await
        .expect("prefix"),
    );
    assert_eq!(
        p1,
        (10..20)
            .map(|i| format!("p{i}@d{}.test", i % 3))
            .collect::<Vec<_>>()
    );
    // Paging by address: every entry once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = addrs(
            ss::list(&mut c, "ten_s", &Search::All, after.as_deref(), 7, t0 + 31)
                .await
                .expect("page"),
        );
        after = page.last().cloned();
        seen.extend(page.iter().cloned());
        if page.len() < 7 {
            break;
        }
    }
    assert_eq!(seen.len(), 32, "30 + a@ + old@: {seen:?}");
    drop(c);
    // The change log: everything after a version, in order, with the effective reason.
    let ChangesSince::Changes {
        changes: log,
        version,
    } = changes(db, v0).await
    else {
        panic!("no resync expected")
    };
    assert_eq!(log.first().map(|c| c.seq), Some(v0 + 1));
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    let third = &log[2];
    assert_eq!(
        (third.address.as_str(), third.op),
        ("a@x.test", ChangeOp::Add(SuppressionReason::HardBounce)),
        "the manual re-add logs the reason kept"
    );
    assert_eq!(log.len(), 6 + 30 + 2);
    // Removal, and expiry as removals.
    let mut tx = db.begin_write().await.expect("begin");
    let gone = ss::remove(&mut tx, "ten_s", "p05@d2.test", t0 + 40)
        .await
        .expect("remove");
    assert_eq!(gone.reason, SuppressionReason::Manual);
    assert!(
        ss::remove(&mut tx, "ten_s", "p05@d2.test", t0 + 40)
            .await
            .is_err(),
        "twice"
    );
    tx.commit().await.expect("commit");
    let mut tx = db.begin_write().await.expect("begin");
    assert_eq!(
        ss::purge_expired(&mut tx, t0 + DAY_MS)
            .await
            .expect("purge"),
        1,
        "old@ expired"
    );
    tx.commit().await.expect("commit");
    let ChangesSince::Changes {
        changes: tail,
        version: v2,
    } = changes(db, version).await
    else {
        panic!("no resync expected")
    };
    let removed: Vec<_> = tail.iter().map(|c| (c.address.as_str(), c.op)).collect();
    assert_eq!(
        removed,
        [
            ("p05@d2.test", ChangeOp::Remove),
            ("old@x.test", ChangeOp::Remove)
        ]
    );
    // Automatic adds from an ingest: only address-level hard bounces, once per event.
    let batch = vec![
        bounce(
            "ev_hard",
            "ten_s",
            "Bounced@Y.test",
            "invalid_recipient",
            BounceClass::Hard,
        ),
        bounce(
            "ev_spam",
            "ten_s",
            "spam@y.test",
            "spam_block",
            BounceClass::Hard,
        ),
        bounce(
            "ev_soft",
            "ten_s",
            "soft@y.test",
            "invalid_recipient",
            BounceClass::Soft,
        ),
        Event {
            kind: EventType::parse("complained"),
            ..bounce("ev_fbl", "ten_s", "fbl@y.test", "", BounceClass::Hard)
        },
    ];
    for _ in 0..2 {
        let mut tx = db.begin_write().await.expect("begin");
        events::insert_batch(&mut tx, "engine-s", &batch, t0 + 50)
            .await
            .expect("ingest");
        tx.commit().await.expect("commit");
    }
    let hard = find(db, "ten_s", "bounced@y.test", t0 + 51)
        .await
        .expect("suppressed");
    assert_eq!(
        (hard.reason, hard.source_event_id.as_deref()),
        (SuppressionReason::HardBounce, Some("ev_hard"))
    );
    let fbl = find(db, "ten_s", "fbl@y.test", t0 + 51)
        .await
        .expect("complaint");
    assert_eq!(fbl.reason, SuppressionReason::Complaint);
    assert!(find(db, "ten_s", "spam@y.test", t0 + 51).await.is_none());
    assert!(find(db, "ten_s", "soft@y.test", t0 + 51).await.is_none());
    let ChangesSince::Changes { changes: auto, .. } = changes(db, v2).await else {
        panic!("no resync expected")
    };
    assert_eq!(auto.len(), 2, "the re-sent batch adds nothing: {auto:?}");
    // The log's retention: an engine behind the purged point reloads.
    let later = t0 + (CHANGES_RETENTION_DAYS + 1) * DAY_MS;
    let mut tx = db.begin_write().await.expect("begin");
    let purged = ss::purge_changes(&mut tx, later, 10)
        .await
        .expect("purge log");
    tx.commit().await.expect("commit");
    assert_eq!(purged, 10, "at most the chunk asked");
    assert!(matches!(changes(db, v0).await, ChangesSince::Resync { .. }));
    let mut tx = db.begin_write().await.expect("begin");
    while ss::purge_changes(&mut tx, later, 1_000)
        .await
        .expect("purge log")
        > 0
    {}
    tx.commit().await.expect("commit");
    let last = ss::current_version(&mut db.conn().await.expect("conn"))
        .await
        .expect("v");
    match changes(db, last).await {
        ChangesSince::Changes { changes, version } => {
            assert!(changes.is_empty() && version == last)
        }
        other => panic!("an engine at the head needs nothing: {other:?}"),
    }
    // A full load: every live entry once, in key order.
    let mut c = db.conn().await.expect("conn");
    let mut loaded = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = ss::load_page(
            &mut c,
            after.as_ref().map(|(s, a)| (s.as_str(), a.as_str())),
            9,
            t0 + 60,
        )
        .await
        .expect("load");
        after = page.last().map(|(s, a, _)| (s.clone(), a.clone()));
        let n = page.len();
        loaded.extend(page);
        if n < 9 {
            break;
        }
    }
    let ours = loaded.iter().filter(|(s, _, _)| s == "ten_s").count();
    assert_eq!(
        ours,
        31 + 2 - 1,
        "30 + a@ + 2 automatic, less the removed p05@"
    );
    assert!(loaded
        .iter()
        .any(|(s, a, _)| s == OPERATOR_SCOPE && a == "a@x.test"));
}
