//! The provider shaping overlay (issue 15), run against both stores (SQLite in `shaping.rs`,
//! PostgreSQL in `pg.rs`): `PUT /v1/shaping/providers/{name}` sets a provider's limits, `GET`
//! lists them, `DELETE` removes them; out-of-range values and bad names get a JSON 422 and
//! change nothing; a tenant's keys get 403; every change is audited; the pushed snapshot
//! carries exactly the stored entries.

use std::time::{Duration, Instant};

use petrel_policy::snapshot::{
    ShapingLimits, SHAPING_CONNECTIONS_MAX, SHAPING_MESSAGES_PER_HOUR_MAX,
    SHAPING_RECIPIENTS_PER_TRANSACTION_MAX,
};
use petrel_policy::{read_frame, Frame, PolicySnapshot};
use serde_json::{json, Value};

use super::events::connect;
use super::scenarios::new_tenant;
use super::{Harness, Resp};

/// How long a change may take to reach the pushed snapshot.
const PUSHED_WITHIN: Duration = Duration::from_secs(10);

fn assert_refused(r: &Resp, what: &str) {
    assert_eq!(r.status, 422, "{what}: {:?}", r.body);
    assert_eq!(r.code(), "invalid_request", "{what}: {:?}", r.body);
}

/// Set, list, replace, refuse, delete, audit, push.
pub async fn overlay(h: &Harness) {
    let r = h.owner("GET", "/v1/shaping/providers", None).await;
    assert_eq!((r.status, &r.body), (200, &json!([])), "nothing at first");

    // Set two: a shipped provider's name and the default section.
    let google = json!({"connections_max": 12, "messages_per_connection_max": 40,
                        "messages_per_minute_max": 0, "recipients_per_transaction_max": 50});
    let r = h
        .owner("PUT", "/v1/shaping/providers/google", Some(google))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["name"], "google");
    assert_eq!(r.body["connections_max"], 12);
    assert_eq!(r.body["messages_per_minute_max"], 0, "0 is unlimited");
    assert_eq!(r.body["messages_per_hour_max"], Value::Null);
    let r = h
        .owner(
            "PUT",
            "/v1/shaping/providers/default",
            Some(json!({"messages_per_hour_max": 20000})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A name no shipped file has is accepted: the engines' files are theirs to know.
    let r = h
        .owner(
            "PUT",
            "/v1/shaping/providers/acme-relay",
            Some(json!({"connections_max": SHAPING_CONNECTIONS_MAX})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let r = h.owner("GET", "/v1/shaping/providers", None).await;
    let names: Vec<&str> = r
        .body
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["acme-relay", "default", "google"], "by name");

    // A PUT replaces the whole entry: what it leaves out is unset again.
    let r = h
        .owner(
            "PUT",
            "/v1/shaping/providers/acme-relay",
            Some(json!({"messages_per_hour_max": SHAPING_MESSAGES_PER_HOUR_MAX})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["connections_max"], Value::Null);

    // Refused: nothing changes.
    let before = h.owner("GET", "/v1/shaping/providers", None).await.body;
    for (field, value) in bad_values() {
        let r = h
            .owner(
                "PUT",
                "/v1/shaping/providers/google",
                Some(json!({ field: value })),
            )
            .await;
        assert_refused(&r, &format!("{field} {value}"));
    }
    for name in ["Google", "mail.com", &"p".repeat(65)] {
        let r = h
            .owner(
                "PUT",
                &format!("/v1/shaping/providers/{name}"),
                Some(json!({"connections_max": 1})),
            )
            .await;
        assert_refused(&r, name);
    }
    let r = h
        .owner(
            "PUT",
            "/v1/shaping/providers/google",
            Some(json!({"mx": []})),
        )
        .await;
    assert_refused(&r, "an unknown field");
    assert_eq!(
        h.owner("GET", "/v1/shaping/providers", None).await.body,
        before
    );

    // Operator only: a tenant's admin may neither read nor change it.
    let (_, tenant_admin) = new_tenant(h, "shaping-tenant").await;
    for (method, body) in [
        ("GET", None),
        ("PUT", Some(json!({"connections_max": 1}))),
        ("DELETE", None),
    ] {
        let path = if method == "GET" {
            "/v1/shaping/providers"
        } else {
            "/v1/shaping/providers/google"
        };
        let r = h.call(method, path, Some(&tenant_admin), body).await;
        assert_eq!(r.status, 403, "{method}: {:?}", r.body);
        assert_eq!(r.code(), "forbidden");
    }
    assert_eq!(
        h.owner("GET", "/v1/shaping/providers", None).await.body,
        before
    );

    // Delete one; a second delete finds nothing.
    let r = h
        .owner("DELETE", "/v1/shaping/providers/acme-relay", None)
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = h
        .owner("DELETE", "/v1/shaping/providers/acme-relay", None)
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "{:?}", r.body);

    // Every change is audited, with the entry before and after.
    let set = audit(h, "shaping.provider.set").await;
    assert_eq!(set.len(), 4, "{set:?}");
    let replaced = set
        .iter()
        .find(|row| row["target"] == "acme-relay" && !row["before"].is_null())
        .expect("the replacement");
    assert_eq!(
        replaced["before"]["connections_max"],
        SHAPING_CONNECTIONS_MAX
    );
    assert_eq!(replaced["after"]["connections_max"], Value::Null);
    let deleted = audit(h, "shaping.provider.delete").await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["target"], "acme-relay");
    assert_eq!(
        deleted[0]["before"]["messages_per_hour_max"],
        SHAPING_MESSAGES_PER_HOUR_MAX
    );
    assert!(deleted[0]["after"].is_null());

    // The pushed snapshot carries the stored entries, by name.
    let snap = pushed_until(h, |s| s.shaping.len() == 2).await;
    assert_eq!(
        snap.shaping,
        [
            ShapingLimits {
                provider: "default".into(),
                connections_max: None,
                messages_per_connection_max: None,
                messages_per_minute_max: None,
                messages_per_hour_max: Some(20_000),
                recipients_per_transaction_max: None,
            },
            ShapingLimits {
                provider: "google".into(),
                connections_max: Some(12),
                messages_per_connection_max: Some(40),
                messages_per_minute_max: Some(0),
                messages_per_hour_max: None,
                recipients_per_transaction_max: Some(50),
            },
        ]
    );
}

/// The owner's audit rows with `action`.
async fn audit(h: &Harness, action: &str) -> Vec<Value> {
    let r = h
        .owner(
            "GET",
            &format!("/v1/audit-log?action={action}&limit=100"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body.as_array().cloned().unwrap_or_default()
}

/// Values the PUT must refuse.
fn bad_values() -> Vec<(&'static str, Value)> {
    vec![
        ("connections_max", json!(0)),
        ("connections_max", json!(SHAPING_CONNECTIONS_MAX + 1)),
        ("messages_per_connection_max", json!(0)),
        ("recipients_per_transaction_max", json!(0)),
        (
            "recipients_per_transaction_max",
            json!(SHAPING_RECIPIENTS_PER_TRANSACTION_MAX + 1),
        ),
        (
            "messages_per_hour_max",
            json!(SHAPING_MESSAGES_PER_HOUR_MAX + 1),
        ),
        ("messages_per_minute_max", json!(1u64 << 40)),
        ("messages_per_minute_max", json!(-1)),
        ("connections_max", json!("5")),
    ]
}

/// Reads the pushed snapshots of a test engine until one satisfies `done` (bounded).
async fn pushed_until(h: &Harness, done: impl Fn(&PolicySnapshot) -> bool) -> PolicySnapshot {
    let mut conn = connect(h, "engine-shaping").await;
    let deadline = Instant::now() + PUSHED_WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, read_frame(&mut conn))
            .await
            .expect("the change was pushed in time")
            .expect("frame")
            .expect("not closed");
        if let Frame::Snapshot { bytes, .. } = frame {
            let snap = petrel_policy::decode(&bytes).expect("a valid snapshot");
            if done(&snap) {
                return snap;
            }
        }
    }
}
