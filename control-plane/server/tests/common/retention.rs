//! Retention with a controlled clock (issue 16): a tenant's windows set within the operator's
//! bounds; message metadata removed from its events after `messages_days`, the events deleted
//! after `events_days`, its audit rows pruned after `audit_days` with the chain (and every
//! checkpoint) still verifying, and a row emptied behind the retention's back caught.

use std::sync::Arc;

use petrel_policy::EventType;
use serde_json::json;

use super::events::{connect, event, send};
use super::webhooks::TestClock;
use super::{Harness, Tweaks};

const DAY_MS: i64 = 86_400_000;

/// A control plane whose clock the test moves.
pub async fn harness(database_url: Option<String>) -> (Harness, Arc<TestClock>) {
    let clock = Arc::new(TestClock::default());
    let h = super::start_custom(
        database_url,
        Tweaks {
            clock: Some(clock.clone()),
            ..Tweaks::default()
        },
    )
    .await;
    (h, clock)
}

/// A pool on the harness's database, to look under the API and to tamper.
pub async fn raw(h: &Harness, database_url: Option<&str>) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = match database_url {
        Some(u) => u.to_string(),
        None => format!(
            "sqlite://{}",
            h.dir.path().join("control").join("petrel.db").display()
        ),
    };
    sqlx::AnyPool::connect(&url).await.expect("open the store")
}

fn now(c: &TestClock) -> i64 {
    petrel_control::Clock::now_unix_ms(c)
}

async fn events_of(h: &Harness, tenant: &str, query: &str) -> Vec<serde_json::Value> {
    let r = h
        .owner(
            "GET",
            &format!("/v1/events?tenant={tenant}&limit=1000{query}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["events"].as_array().cloned().unwrap_or_default()
}

async fn audit_rows(h: &Harness, tenant: &str) -> Vec<serde_json::Value> {
    let r = h.owner("GET", "/v1/audit-log?limit=1000", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["tenant_id"] == tenant)
        .collect()
}

async fn verify(h: &Harness) -> serde_json::Value {
    let r = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

pub async fn scenario(h: &Harness, clock: &TestClock, raw: &sqlx::AnyPool) {
    let (tenant, key) = super::scenarios::new_tenant(h, "retained").await;
    let path = format!("/v1/tenants/{tenant}/retention");
    // Within the operator's bounds only (audit: 30 days at least by default).
    let r = h.owner("PUT", &path, Some(json!({"audit_days": 5}))).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("30 to 3650"));
    let r = h.owner("PUT", &path, Some(json!({}))).await;
    assert_eq!(r.status, 422);
    let r = h
        .call("PUT", &path, Some(&key), Some(json!({"events_days": 9})))
        .await;
    assert_eq!(r.status, 403, "only the operator's owners set windows");
    let r = h
        .owner(
            "PUT",
            &path,
            Some(json!({"events_days": 10, "messages_days": 2, "audit_days": 30})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"tenant_id": tenant, "events_days": 10, "messages_days": 2, "audit_days": 30})
    );
    // Its audit rows so far: tenant.create and tenant.retention.set. Events with tags and
    // metadata:
    let start = now(clock);
    let mut conn = connect(h, "engine-retention").await;
    let batch: Vec<_> = (0..6)
        .map(|i| {
            event(
                &tenant,
                &format!("msg{i}"),
                0,
                1,
                EventType::Delivered,
                start + i,
            )
        })
        .collect();
    assert_eq!(send(&mut conn, 1, batch).await, 1);
    let app = &h.info.app;
    assert_eq!(events_of(h, &tenant, "&tag=newsletter").await.len(), 6);

    // Day 3: past messages_days, not events_days: the metadata goes, the events stay.
    clock.advance(3 * DAY_MS);
    let done = petrel_control::retention::enforce(app, now(clock))
        .await
        .unwrap();
    assert_eq!(done.events_scrubbed, 6, "{done:?}");
    let evs = events_of(h, &tenant, "").await;
    assert_eq!(evs.len(), 6);
    for e in &evs {
        assert_eq!(e["tags"], json!([]), "{e}");
        assert!(e.get("metadata").is_none_or(|m| m.is_null()), "{e}");
        assert!(
            e.get("rfc822_message_id").is_none_or(|m| m.is_null()),
            "{e}"
        );
        assert!(e["recipient"].is_string());
    }
    assert!(events_of(h, &tenant, "&tag=newsletter").await.is_empty());
    // A second round finds nothing left to do (the watermark moved).
    let again = petrel_control::retention::enforce(app, now(clock))
        .await
        .unwrap();
    assert_eq!(again.events_scrubbed, 0);

    // Day 11: past events_days: the events are gone.
    clock.advance(8 * DAY_MS);
    petrel_control::events::purge(app, now(clock))
        .await
        .unwrap();
    assert!(events_of(h, &tenant, "").await.is_empty());

    // Day 31: past audit_days. Checkpoint first: it must still verify after the pruning.
    let r = h.owner("POST", "/v1/audit-log/checkpoint", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let before = audit_rows(h, &tenant).await;
    assert!(before.len() >= 2, "{before:?}");
    clock.advance(20 * DAY_MS);
    let done = petrel_control::retention::enforce(app, now(clock))
        .await
        .unwrap();
    assert!(done.audit_rows_pruned >= before.len() as u64, "{done:?}");
    assert!(
        audit_rows(h, &tenant).await.is_empty(),
        "pruned rows are not listed"
    );
    let v = verify(h).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoints"]["ok"], true, "{v}");
    use sqlx::Row;
    let pruned: Vec<(i64, String, String)> =
        sqlx::query("SELECT seq, actor, target FROM audit_log WHERE tenant_id = $1 ORDER BY seq")
            .bind(tenant.clone())
            .fetch_all(raw)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("seq"), r.get("actor"), r.get("target")))
            .collect();
    assert_eq!(
        pruned.len(),
        before.len(),
        "the rows keep their place in the chain"
    );
    assert!(
        pruned.iter().all(|(_, a, t)| a.is_empty() && t.is_empty()),
        "{pruned:?}"
    );
    let r = h
        .owner("GET", "/v1/audit-log?action=audit.pruned&limit=10", None)
        .await;
    let records = r.body.as_array().cloned().unwrap_or_default();
    assert!(
        records
            .iter()
            .any(|r| r["after"]["owners"][tenant.as_str()].is_u64()),
        "{records:?}"
    );

    // Emptying a row outside the retention (no pruning record lists it) is caught.
    let victim: i64 = sqlx::query("SELECT MIN(seq) AS s FROM audit_log WHERE pruned = 0")
        .fetch_one(raw)
        .await
        .unwrap()
        .get("s");
    sqlx::query(
        "UPDATE audit_log SET actor = '', remote_addr = '', action = '', target = '', \
         before_json = NULL, after_json = NULL, pruned = 1 WHERE seq = $1",
    )
    .bind(victim)
    .execute(raw)
    .await
    .unwrap();
    let v = verify(h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken_seq"], victim, "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("pruning record"),
        "{v}"
    );
}
