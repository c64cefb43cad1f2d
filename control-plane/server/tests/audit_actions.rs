//! Each audit action issue 16 adds appears (SQLite; the API's failed authentications and the
//! export's rows have their own tests): a role change and a scope change of a credential; bulk
//! reads of event data, aggregated per caller and window; the engines' signals (failed SMTP
//! AUTHs of an address in a window, a queue admin call) as audit rows and not as events; and
//! blocked sends, aggregated per tenant and window from the engines' `rejected` events.

mod common;

use std::time::Duration;

use common::events::{connect, event, send};
use common::scenarios::new_tenant;
use petrel_policy::event::{QUEUE_ADMIN, SMTP_AUTH_FAILED};
use petrel_policy::{Event, EventType, Reply};
use serde_json::{json, Value};

/// Rows with `action`, waiting (bounded) for at least one: aggregates land when their window
/// (1 s in tests) ends.
async fn rows(h: &common::Harness, action: &str) -> Vec<Value> {
    for _ in 0..100 {
        let r = h
            .owner(
                "GET",
                &format!("/v1/audit-log?action={action}&limit=100"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let rows = r.body.as_array().cloned().unwrap_or_default();
        if !rows.is_empty() {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {action} row");
}

fn signal(kind: &str, subject: &str, details: Value) -> Event {
    let kind = EventType::Other(kind.into());
    Event {
        details: details.as_object().cloned(),
        ..Event::bare(
            Event::stable_id("audit", subject, 0, 0, &kind),
            kind,
            petrel_control::now_unix_ms(),
        )
    }
}

#[tokio::test]
async fn every_new_audit_action_appears() {
    let h = common::start().await;
    let (tenant, admin) = new_tenant(&h, "audited").await;

    // Role and scope changes.
    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&admin),
            Some(json!({"kind": "api", "name": "dev", "role": "developer"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let dev_id = r.body["credential"]["id"].as_str().unwrap().to_string();
    let dev_key = r.body["secret"].as_str().unwrap().to_string();
    let path = format!("/v1/credentials/{dev_id}");
    let r = h
        .call(
            "PATCH",
            &path,
            Some(&dev_key),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, 403, "no role above one's own: {:?}", r.body);
    let r = h.call("PATCH", &path, Some(&admin), Some(json!({}))).await;
    assert_eq!(r.status, 422);
    let r = h
        .call(
            "PATCH",
            &path,
            Some(&admin),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["role"], "viewer");
    // The demoted key is a viewer at once.
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&dev_key),
            Some(json!({"name": "x.example.test"})),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = h
        .call(
            "PATCH",
            &path,
            Some(&admin),
            Some(json!({"scopes": ["read"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let changed = rows(&h, "credential.role.change").await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["target"], dev_id.as_str());
    assert_eq!(changed[0]["before"]["role"], "developer");
    assert_eq!(changed[0]["after"]["role"], "viewer");
    assert_eq!(changed[0]["tenant_id"], tenant.as_str());
    let updated = rows(&h, "credential.update").await;
    assert_eq!(updated[0]["after"]["scopes"], json!(["read"]));

    // Bulk reads of event data: two requests of the tenant's admin, one row for the window.
    let mut conn = connect(&h, "engine-audit").await;
    let now = petrel_control::now_unix_ms();
    let batch: Vec<Event> = (0..3)
        .map(|i| {
            event(
                &tenant,
                &format!("m{i}"),
                0,
                1,
                EventType::Delivered,
                now + i,
            )
        })
        .collect();
    assert_eq!(send(&mut conn, 1, batch).await, 1);
    for _ in 0..2 {
        let r = h
            .call("GET", "/v1/events?limit=10", Some(&admin), None)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["events"].as_array().map(Vec::len), Some(3));
    }
    let reads = rows(&h, "events.read").await;
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["tenant_id"], tenant.as_str());
    assert_eq!(reads[0]["after"]["requests"], 2);
    assert_eq!(reads[0]["after"]["items"], 6);
    assert!(reads[0]["actor"].as_str().unwrap().starts_with("key:"));
    // An owner's read naming a tenant that does not exist: the operator's row, the id its
    // target (no key is made for a made-up tenant, and the window's other rows still land).
    let r = h
        .owner("GET", "/v1/events?tenant=ten_nobody&limit=5", None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = rows(&h, "events.read").await;
        if let Some(r) = all.iter().find(|r| r["target"] == "ten_nobody") {
            assert!(r["tenant_id"].is_null(), "{r}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The engine's signals become audit rows, not events.
    let signals = vec![
        signal(
            SMTP_AUTH_FAILED,
            "a",
            json!({"address": "192.0.2.7", "failures": 12, "locked_out": 2,
                   "first_unix_ms": now, "last_unix_ms": now + 5, "usernames": ["alice"]}),
        ),
        signal(
            QUEUE_ADMIN,
            "b",
            json!({"peer": "127.0.0.1:5555", "method": "POST", "path": "/v1/queue/x.test/bounce",
                   "status": 200, "at_unix_ms": now}),
        ),
    ];
    // A send the guardrails blocked.
    let mut blocked = event(&tenant, "blocked", 0, 0, EventType::Rejected, now);
    blocked.reply = Some(Reply {
        code: 550,
        enhanced_code: Some("5.7.1".into()),
        text: "sending disabled: bounce rate 12.0% over 10.0%".into(),
    });
    blocked.bounce = None;
    let mut batch = signals;
    batch.push(blocked);
    assert_eq!(send(&mut conn, 2, batch).await, 2);
    let auth = rows(&h, "smtp.auth_failed").await;
    assert_eq!(auth[0]["actor"], "engine:engine-audit");
    assert_eq!(auth[0]["target"], "192.0.2.7");
    assert_eq!(auth[0]["after"]["failures"], 12);
    let admin_calls = rows(&h, "engine.queue_admin").await;
    assert_eq!(admin_calls[0]["target"], "/v1/queue/x.test/bounce");
    assert_eq!(admin_calls[0]["remote_addr"], "127.0.0.1:5555");
    let sends = rows(&h, "send.blocked").await;
    assert_eq!(sends[0]["tenant_id"], tenant.as_str());
    assert_eq!(sends[0]["after"]["kinds"]["sending_disabled"], 1);
    let r = h
        .owner(
            "GET",
            "/v1/events?tenant=*&type=smtp_auth_failed&limit=10",
            None,
        )
        .await;
    assert_eq!(
        r.body["events"].as_array().map(Vec::len),
        Some(0),
        "{:?}",
        r.body
    );
    let r = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
}
