//! A tenant's delivery settings (issue 15), run against both stores (SQLite in
//! `tenant_delivery.rs`, PostgreSQL in `pg.rs`): `egress_pool` and `delivery_weight` set on
//! create and through `PATCH /v1/tenants/{id}`, read back, refused with a JSON error when out of
//! their bounds, audited, and carried by the snapshot an engine is pushed. (The export's tenant
//! record is checked by the export round trip.)

use std::time::{Duration, Instant};

use petrel_policy::{read_frame, Frame, PolicySnapshot};
use serde_json::{json, Value};

use super::events::connect;
use super::scenarios::new_tenant;
use super::{Harness, Resp};

/// How long a change may take to reach the pushed snapshot.
const PUSHED_WITHIN: Duration = Duration::from_secs(10);

fn assert_refused(r: &Resp, what: &str) {
    assert!(
        r.status == 422 || r.status == 400,
        "{what}: {} {:?}",
        r.status,
        r.body
    );
    assert!(r.body["error"]["code"].is_string(), "{what}: {:?}", r.body);
}

/// Create, read, change, refuse, audit, push.
pub async fn settings(h: &Harness) {
    // The defaults: no pool of its own, weight 1.
    let (plain, _) = new_tenant(h, "td-plain").await;
    let r = h.owner("GET", &format!("/v1/tenants/{plain}"), None).await;
    assert_eq!(
        (&r.body["egress_pool"], &r.body["delivery_weight"]),
        (&Value::Null, &json!(1)),
        "{:?}",
        r.body
    );

    // Given on create.
    let body = json!({"name": "td-created", "egress_pool": "warm_1", "delivery_weight": 5});
    let r = h.owner("POST", "/v1/tenants", Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["tenant"]["egress_pool"], "warm_1");
    assert_eq!(r.body["tenant"]["delivery_weight"], 5);
    let created = r.body["tenant"]["id"].as_str().expect("id").to_string();
    let r = h
        .owner("GET", &format!("/v1/tenants/{created}"), None)
        .await;
    assert_eq!(
        (&r.body["egress_pool"], &r.body["delivery_weight"]),
        (&json!("warm_1"), &json!(5))
    );

    // Refused on create: nothing is made.
    let before = h.owner("GET", "/v1/tenants", None).await.body;
    for (field, value) in bad_values() {
        let r = h
            .owner(
                "POST",
                "/v1/tenants",
                Some(json!({"name": "td-bad", field: value})),
            )
            .await;
        assert_refused(&r, &format!("create with {field} {value}"));
    }
    assert_eq!(h.owner("GET", "/v1/tenants", None).await.body, before);

    // Changed one at a time, the other kept; read back by the owner and by the tenant.
    let (tenant, key) = new_tenant(h, "td-patched").await;
    let path = format!("/v1/tenants/{tenant}");
    let patch = |body: Value| {
        let path = path.clone();
        async move { h.owner("PATCH", &path, Some(body)).await }
    };
    let r = patch(json!({"egress_pool": "pool-a"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (&r.body["egress_pool"], &r.body["delivery_weight"]),
        (&json!("pool-a"), &json!(1))
    );
    let r = patch(json!({"delivery_weight": 100})).await;
    assert_eq!(
        (&r.body["egress_pool"], &r.body["delivery_weight"]),
        (&json!("pool-a"), &json!(100))
    );
    let r = h.call("GET", &path, Some(&key), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (&r.body["egress_pool"], &r.body["delivery_weight"]),
        (&json!("pool-a"), &json!(100))
    );
    // An empty patch keeps both; the tenant's own admin key may not change them.
    let r = patch(json!({})).await;
    assert_eq!(
        (&r.body["egress_pool"], &r.body["delivery_weight"]),
        (&json!("pool-a"), &json!(100))
    );
    let r = h
        .call(
            "PATCH",
            &path,
            Some(&key),
            Some(json!({"egress_pool": "mine"})),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);

    // Refused on change: the row stays as it was.
    for (field, value) in bad_values() {
        let r = patch(json!({ field: value })).await;
        assert_refused(&r, &format!("patch {field} {value}"));
    }
    let r = h.owner("GET", &path, None).await;
    assert_eq!(
        (&r.body["egress_pool"], &r.body["delivery_weight"]),
        (&json!("pool-a"), &json!(100))
    );

    // `null` returns the tenant to the default pool.
    let r = patch(json!({"egress_pool": null, "delivery_weight": 3})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (&r.body["egress_pool"], &r.body["delivery_weight"]),
        (&Value::Null, &json!(3))
    );

    // Every change is audited with the row before and after.
    let rows = h.owner("GET", "/v1/audit-log?limit=1000", None).await.body;
    let changes: Vec<(Value, Value)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter(|row| row["action"] == "tenant.update" && row["target"] == tenant.as_str())
        .map(|row| (row["before"].clone(), row["after"].clone()))
        .collect();
    let pools: Vec<(&Value, &Value)> = changes
        .iter()
        .map(|(b, a)| (&b["egress_pool"], &a["egress_pool"]))
        .collect();
    assert!(
        pools.contains(&(&Value::Null, &json!("pool-a"))),
        "{changes:?}"
    );
    assert!(
        pools.contains(&(&json!("pool-a"), &Value::Null)),
        "{changes:?}"
    );
    let weights: Vec<(&Value, &Value)> = changes
        .iter()
        .map(|(b, a)| (&b["delivery_weight"], &a["delivery_weight"]))
        .collect();
    assert!(weights.contains(&(&json!(1), &json!(100))), "{changes:?}");
    assert!(weights.contains(&(&json!(100), &json!(3))), "{changes:?}");

    // The pushed snapshot carries both, for every tenant.
    let snap = pushed_until(h, |s| {
        s.tenants
            .iter()
            .any(|t| t.id == tenant && t.egress_pool.is_none() && t.delivery_weight == 3)
    })
    .await;
    let of = |id: &str| {
        snap.tenants
            .iter()
            .find(|t| t.id == id)
            .map(|t| (t.egress_pool.clone(), t.delivery_weight))
    };
    assert_eq!(of(&created), Some((Some("warm_1".to_string()), 5)));
    assert_eq!(of(&plain), Some((None, 1)));
}

/// Values each field must refuse.
fn bad_values() -> Vec<(&'static str, Value)> {
    vec![
        ("egress_pool", json!("Warm")),
        ("egress_pool", json!("pool one")),
        ("egress_pool", json!("pool.1")),
        ("egress_pool", json!("")),
        ("egress_pool", json!("p".repeat(65))),
        ("egress_pool", json!(7)),
        ("delivery_weight", json!(0)),
        ("delivery_weight", json!(101)),
        ("delivery_weight", json!(-1)),
        ("delivery_weight", json!(1u64 << 40)),
        ("delivery_weight", json!("5")),
    ]
}

/// Reads the pushed snapshots of a test engine until one satisfies `done` (bounded).
async fn pushed_until(h: &Harness, done: impl Fn(&PolicySnapshot) -> bool) -> PolicySnapshot {
    let mut conn = connect(h, "engine-tenant-delivery").await;
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
