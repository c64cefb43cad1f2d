//! The guardrails scenario, run on SQLite (`tests/guardrails.rs`) and PostgreSQL (`pg.rs`).

use petrel_control::guardrails::{self, GuardSettings};
use petrel_policy::{Event, EventType};
use serde_json::{json, Value};

use super::events::{connect, event, send};
use super::scenarios::{eventually, new_tenant};
use super::{start_custom, Harness, Tweaks};

/// The test's minimum volume (the default, 100, would need more events for nothing).
const MIN_VOLUME: u64 = 20;
const DOMAIN: &str = "a.example.test";

/// A control plane whose guardrails count from 20 messages.
pub async fn harness(database_url: Option<String>) -> Harness {
    let tweaks = Tweaks {
        guardrails: Some(GuardSettings {
            min_volume: MIN_VOLUME,
            ..Default::default()
        }),
        ..Tweaks::default()
    };
    start_custom(database_url, tweaks).await
}

async fn events_of(h: &Harness, key: &str, kind: &str) -> Vec<Value> {
    let r = h
        .call(
            "GET",
            &format!("/v1/events?type={kind}&limit=100"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["events"].as_array().cloned().unwrap_or_default()
}

fn batch(
    tenant: &str,
    prefix: &str,
    kind: EventType,
    n: u32,
    from_domain: Option<&str>,
) -> Vec<Event> {
    let now = petrel_control::now_unix_ms();
    (0..n)
        .map(|i| {
            let mut e = event(tenant, &format!("{prefix}{i}"), i, 0, kind.clone(), now);
            e.from_domain = from_domain.map(str::to_string);
            if e.kind.as_str() == "complained" {
                e.reply = None;
                e.remote = None;
            }
            e
        })
        .collect()
}

async fn snapshot(h: &Harness) -> petrel_policy::PolicySnapshot {
    let app = &h.info.app;
    petrel_control::snapshot::build(&app.db, app.now_ms(), &app.settings)
        .await
        .expect("snapshot")
}

pub async fn scenario(h: &Harness) {
    let app = &h.info.app;
    let (t1, key1) = new_tenant(h, "bouncy").await;
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&key1),
            Some(json!({"name": DOMAIN, "algorithm": "ed25519"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // A new tenant is capped in the snapshot until an operator lifts it.
    let cap = snapshot(h)
        .await
        .tenants
        .into_iter()
        .find(|t| t.id == t1)
        .expect("t1")
        .new_tenant_cap;
    let cap = cap.expect("a new tenant's cap");
    assert_eq!((cap.messages_max, cap.window_ms), (10, 86_400_000));

    // 30 sent, 5 hard bounces (16.7 %) from the domain: the ingest wakes the guardrails.
    let v0 = app.db.policy_version().await.expect("version");
    let mut conn = connect(h, "engine-g").await;
    send(
        &mut conn,
        1,
        batch(&t1, "s", EventType::Accepted, 30, Some(DOMAIN)),
    )
    .await;
    send(
        &mut conn,
        2,
        batch(&t1, "s", EventType::Bounced, 5, Some(DOMAIN)),
    )
    .await;
    eventually("sending_disabled event", || async {
        events_of(h, &key1, "sending_disabled").await.len() == 1
    })
    .await;
    let e = &events_of(h, &key1, "sending_disabled").await[0];
    assert_eq!(e["from_domain"], DOMAIN, "{e}");
    assert_eq!(e["details"]["metric"], "bounce_rate", "{e}");
    assert_eq!(e["details"]["volume"], 30, "{e}");
    assert_eq!(e["details"]["threshold"], 0.1, "{e}");
    let reason = "bounce rate of a.example.test 16.7% over 10.0% in 24 h (30 sent)";
    assert_eq!(e["details"]["reason"], reason, "{e}");
    // The snapshot carries it (a new version), for the domain only.
    assert!(app.db.policy_version().await.expect("version") > v0);
    let s = snapshot(h).await;
    let d = s.domains.iter().find(|d| d.name == DOMAIN).expect("domain");
    assert_eq!(d.sending_disabled.as_deref(), Some(reason));
    let t = s.tenants.iter().find(|t| t.id == t1).expect("t1");
    assert_eq!(t.sending_disabled, None);
    // Audited as the guardrails' action; the tenant's answers carry the reason.
    let audit = h
        .owner("GET", "/v1/audit-log?action=guard.sending_disabled", None)
        .await;
    assert_eq!(audit.status, 200);
    assert!(
        audit.body.to_string().contains("system:guardrails"),
        "{:?}",
        audit.body
    );
    let r = h
        .call("GET", &format!("/v1/tenants/{t1}"), Some(&key1), None)
        .await;
    let header = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-petrel-warning"));
    assert_eq!(
        header.map(|h| h.1.as_str()),
        Some(format!("sending disabled: {reason}").as_str())
    );
    // Evaluating again changes nothing (one event per crossing).
    let again = guardrails::evaluate(app, None).await.expect("evaluate");
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(events_of(h, &key1, "sending_disabled").await.len(), 1);

    // A complaint rate at 0.25 % (warning at 80 % of 0.3 %) for a tenant without domains.
    let (t2, key2) = new_tenant(h, "complained").await;
    send(
        &mut conn,
        3,
        batch(&t2, "c", EventType::Accepted, 1_000, None),
    )
    .await;
    send(
        &mut conn,
        4,
        batch(&t2, "d", EventType::Accepted, 1_000, None),
    )
    .await;
    send(
        &mut conn,
        5,
        batch(&t2, "c", EventType::Other("complained".into()), 5, None),
    )
    .await;
    eventually("reputation_warning event", || async {
        events_of(h, &key2, "reputation_warning").await.len() == 1
    })
    .await;
    let warning = "complaint rate 0.25% nears 0.30%";
    let s = snapshot(h).await;
    let t = s.tenants.iter().find(|t| t.id == t2).expect("t2");
    assert_eq!(t.reputation_warning.as_deref(), Some(warning));
    let r = h
        .call("GET", &format!("/v1/tenants/{t2}"), Some(&key2), None)
        .await;
    let header = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-petrel-warning"));
    assert_eq!(header.map(|h| h.1.as_str()), Some(warning));
    assert!(guardrails::evaluate(app, None)
        .await
        .expect("evaluate")
        .is_empty());
    assert_eq!(events_of(h, &key2, "reputation_warning").await.len(), 1);
    // Complaints are counted in the hourly aggregates.
    let mut c = app.db.conn().await.expect("conn");
    let stats = petrel_control::store::events::stats(&mut c, &t2, None, 0, i64::MAX)
        .await
        .expect("stats");
    drop(c);
    assert_eq!(stats[0].1.complained, 5, "{stats:?}");

    // Only an operator re-enables; then the mail that disabled it no longer counts.
    let path = format!("/v1/tenants/{t1}/guardrails/enable");
    let body = json!({"domain": DOMAIN});
    let r = h.call("POST", &path, Some(&key1), Some(body.clone())).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = h.owner("POST", &path, Some(body.clone())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["levels"], json!([]), "{:?}", r.body);
    let r = h.owner("POST", &path, Some(body)).await;
    assert_eq!(r.status, 200, "idempotent: {:?}", r.body);
    let enabled = events_of(h, &key1, "sending_enabled").await;
    assert_eq!(enabled.len(), 1, "{enabled:?}");
    assert_eq!(enabled[0]["details"]["reason"], reason);
    let s = snapshot(h).await;
    let d = s.domains.iter().find(|d| d.name == DOMAIN).expect("domain");
    assert_eq!(d.sending_disabled, None);
    send(
        &mut conn,
        6,
        batch(&t1, "n", EventType::Accepted, 30, Some(DOMAIN)),
    )
    .await;
    guardrails::evaluate(app, None).await.expect("evaluate");
    assert_eq!(events_of(h, &key1, "sending_disabled").await.len(), 1);
    let s = snapshot(h).await;
    let d = s.domains.iter().find(|d| d.name == DOMAIN).expect("domain");
    assert_eq!(
        d.sending_disabled, None,
        "the baseline forgives the mail before the re-enable"
    );

    // The operator lifts the new tenant's cap.
    let lift = format!("/v1/tenants/{t1}/guardrails/lift-cap");
    assert_eq!(h.call("POST", &lift, Some(&key1), None).await.status, 403);
    let r = h.owner("POST", &lift, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["cap_lifted"], true);
    let s = snapshot(h).await;
    assert_eq!(
        s.tenants
            .iter()
            .find(|t| t.id == t1)
            .expect("t1")
            .new_tenant_cap,
        None
    );
    let r = h
        .call(
            "GET",
            &format!("/v1/tenants/{t1}/guardrails"),
            Some(&key1),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["new_tenant_cap"]["active"], false, "{:?}", r.body);
    // Another tenant's guardrails are not visible.
    let r = h
        .call(
            "GET",
            &format!("/v1/tenants/{t1}/guardrails"),
            Some(&key2),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}
