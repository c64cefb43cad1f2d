//! The suppression feed end to end on one backend: petrel-policy's real engine-side link
//! follows the control plane's list (a full load of several pages, then deltas from the API, from
//! an event ingest and from a removal), reconnects from where it stood, and an engine behind
//! the change log's retention gets a full reload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_control::store::suppressions::{self as ss, NewSuppression, SuppressionReason};
use petrel_policy::link::{LinkConfig, LinkTrust};
use petrel_policy::{write_frame, Bounce, BounceClass, EventType, Frame, PolicyStore};
use serde_json::json;

use super::events::{connect, event, next_reply};
use super::scenarios::eventually;
use super::Harness;

/// Entries loaded before the engine connects: three pages of the full load.
const PRELOADED: usize = 2 * petrel_policy::SUPPRESSION_FRAME_ENTRIES_MAX + 7;

fn link(h: &Harness, store: &Arc<PolicyStore>) -> tokio::task::JoinHandle<()> {
    let mut cfg = LinkConfig::new(
        &h.info.push_addr.to_string(),
        "localhost",
        LinkTrust::CaPem(h.info.push_cert_pem.as_bytes().to_vec()),
        super::PUSH_TOKEN,
        "engine-supp",
    );
    cfg.reconnect_delay_ms_min = 50;
    tokio::spawn(petrel_policy::run_link(cfg, store.clone(), |_| {}))
}

async fn current_version(h: &Harness) -> u64 {
    let mut conn = h.info.app.db.conn().await.expect("conn");
    ss::current_version(&mut conn).await.expect("version")
}

/// Waits (bounded) until the engine's set says `want` for `address` in `tenant`'s lists and
/// returns how long that took.
async fn until_engine_says(
    store: &PolicyStore,
    tenant: &str,
    address: &str,
    want: Option<SuppressionReason>,
) -> Duration {
    let started = Instant::now();
    eventually(&format!("engine sees {address} as {want:?}"), || async {
        store
            .suppressions()
            .check(tenant, address)
            .map(|h| h.reason)
            == want
    })
    .await;
    started.elapsed()
}

pub async fn follow(h: &Harness) {
    let now = h.info.app.now_ms();
    let entries: Vec<NewSuppression> = (0..PRELOADED)
        .map(|i| NewSuppression {
            scope: "ten_preloaded".into(),
            address: format!("user{i}@bulk.example"),
            reason: SuppressionReason::Manual,
            source_event_id: None,
            expires_unix_ms: None,
        })
        .collect();
    let mut tx = h.info.app.db.begin_write().await.expect("tx");
    for chunk in entries.chunks(1_000) {
        ss::upsert(&mut tx, chunk, now).await.expect("upsert");
    }
    tx.commit().await.expect("commit");

    // A new engine gets the whole list, in pages, then follows.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(PolicyStore::load_or_empty(dir.path()));
    let task = link(h, &store);
    let loaded = current_version(h).await;
    eventually("the full load", || async {
        store.suppressions().len() == PRELOADED && store.suppressions().version() == loaded
    })
    .await;
    let set = store.suppressions();
    assert!(set.check("ten_preloaded", "USER17@bulk.example").is_some());
    assert!(set.check("ten_other", "user17@bulk.example").is_none());
    drop(set);
    eventually("the engine's acknowledged version", || async {
        let r = h.owner("GET", "/v1/engines", None).await;
        r.body.as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["id"] == "engine-supp" && e["suppression_version"] == json!(loaded as i64)
            })
        })
    })
    .await;

    // An API add to the operator-wide list: refused for every tenant.
    let r = h
        .owner(
            "POST",
            "/v1/suppressions?tenant=*",
            Some(json!({"address": "Blocked@Everyone.example"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let took = until_engine_says(
        &store,
        "ten_any",
        "blocked@everyone.example",
        Some(SuppressionReason::Manual),
    )
    .await;
    eprintln!("API add to engine set: {took:?}");
    assert!(store
        .suppressions()
        .check("ten_any", "blocked@everyone.example")
        .is_some_and(|hit| hit.operator_wide));

    // A hard bounce ingested from an engine suppresses its recipient for its tenant.
    let mut bounce = event(
        "ten_bouncer",
        "00000000000000aa",
        0,
        1,
        EventType::Bounced,
        now,
    );
    bounce.bounce = Some(Bounce {
        class: BounceClass::Hard,
        category: "invalid_recipient".into(),
    });
    petrel_control::events::ingest(&h.info.app, "engine-x", 1, &[bounce])
        .await
        .expect("ingest");
    let took = until_engine_says(
        &store,
        "ten_bouncer",
        "rcpt0@dest.test",
        Some(SuppressionReason::HardBounce),
    )
    .await;
    eprintln!("ingested hard bounce to engine set: {took:?}");

    // A removal through the API lifts it.
    let r = h
        .owner(
            "DELETE",
            "/v1/suppressions/blocked@everyone.example?tenant=*",
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    until_engine_says(&store, "ten_any", "blocked@everyone.example", None).await;

    // A reconnecting engine asks from where it stands and gets only what it missed.
    task.abort();
    let before = store.suppressions().version();
    let r = h
        .owner(
            "POST",
            "/v1/suppressions?tenant=*",
            Some(json!({"address": "later@everyone.example", "reason": "complaint"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let task = link(h, &store);
    until_engine_says(
        &store,
        "ten_any",
        "later@everyone.example",
        Some(SuppressionReason::Complaint),
    )
    .await;
    assert!(store.suppressions().version() > before);
    assert_eq!(store.suppressions().len(), PRELOADED + 2);
    task.abort();

    // An engine older than the change log's retention gets a full reload.
    let far = now + (ss::CHANGES_RETENTION_DAYS + 1) * 86_400_000;
    let mut tx = h.info.app.db.begin_write().await.expect("tx");
    while ss::purge_changes(&mut tx, far, 50_000)
        .await
        .expect("purge")
        > 0
    {}
    tx.commit().await.expect("commit");
    let mut conn = connect(h, "engine-behind").await;
    write_frame(&mut conn, &Frame::SuppressionsSince { version: 1 })
        .await
        .expect("since");
    let mut pages = 0;
    let mut total = 0;
    loop {
        match next_reply(&mut conn).await {
            Some(Frame::SuppressionLoad(page)) => {
                assert_eq!(page.first, pages == 0);
                pages += 1;
                total += page.entries.len();
                if page.last {
                    break;
                }
            }
            other => panic!("expected a full load, got {other:?}"),
        }
    }
    assert_eq!(total, PRELOADED + 2);
    assert_eq!(pages, 3);
}
