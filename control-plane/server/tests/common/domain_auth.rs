//! Sending-domain authentication against the loopback DNS server, on either store: the
//! on-demand check, the scheduled round, the verdict in the snapshot, the audit entries and
//! the policy version (bumped by a change of verdict only).

use serde_json::{json, Value};

use super::scenarios::new_tenant;
use super::{Harness, Resp};

fn ok(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {:?}", r.body);
}

async fn version(h: &Harness) -> u64 {
    h.info
        .app
        .db
        .policy_version()
        .await
        .expect("policy version")
}

/// The domain's failure as the snapshot pushed to engines carries it.
async fn snapshot_failure(h: &Harness, name: &str) -> Option<petrel_policy::AuthFailure> {
    let app = &h.info.app;
    let snap = petrel_control::snapshot::build(&app.db, app.now_ms(), &app.settings)
        .await
        .expect("snapshot");
    snap.domains
        .into_iter()
        .find(|d| d.name == name)
        .expect("domain in snapshot")
        .auth_failure
}

async fn audit_actions(h: &Harness, key: &str, action: &str) -> Vec<Value> {
    let r = h
        .call(
            "GET",
            &format!("/v1/audit-log?action={action}"),
            Some(key),
            None,
        )
        .await;
    ok(&r, 200, "audit list");
    r.body.as_array().expect("rows").clone()
}

/// Creates and verifies `name` for a new tenant with every record published. Returns
/// (domain id, tenant admin key).
pub async fn verified_domain(h: &Harness, tenant: &str, name: &str) -> (String, String) {
    let (_, key) = new_tenant(h, tenant).await;
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&key),
            Some(json!({"name": name})),
        )
        .await;
    ok(&r, 201, "create domain");
    let id = r.body["id"].as_str().expect("id").to_string();
    for rec in r.body["dns_records"].as_array().expect("records") {
        let value = rec["value"].as_str().expect("value");
        h.set_txt(rec["name"].as_str().expect("name"), &[value]);
    }
    let r = h
        .call(
            "POST",
            &format!("/v1/domains/{id}/verify"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.body["verified"], true, "{:?}", r.body);
    (id, key)
}

/// On demand: pass, DMARC removed (blocked, version and audit), unchanged (no version), other
/// record broken (another verdict), restored (passes again).
pub async fn domain_checks(h: &Harness) {
    let name = "auth.example.test";
    let (id, key) = verified_domain(h, "auth-co", name).await;
    let path = format!("/v1/domains/{id}/check");

    let v0 = version(h).await;
    let r = h.call("POST", &path, Some(&key), None).await;
    ok(&r, 200, "check");
    assert_eq!(r.body["passing"], true, "{:?}", r.body);
    assert_eq!(r.body["checks"].as_array().map(Vec::len), Some(3));
    assert_eq!(version(h).await, v0, "a first pass changes no policy");
    assert_eq!(snapshot_failure(h, name).await, None);

    // DMARC removed: blocked, a new policy version, an audit entry naming the caller's key.
    h.set_txt(&format!("_dmarc.{name}"), &[]);
    let r = h.call("POST", &path, Some(&key), None).await;
    ok(&r, 200, "check");
    assert_eq!(
        (
            &r.body["passing"],
            &r.body["failing_check"],
            &r.body["failure_detail"]
        ),
        (&json!(false), &json!("dmarc"), &json!("missing")),
        "{:?}",
        r.body
    );
    let v1 = version(h).await;
    assert_eq!(v1, v0 + 1);
    let failure = snapshot_failure(h, name)
        .await
        .expect("blocked in the snapshot");
    assert_eq!(
        (failure.check.as_str(), failure.detail.as_str()),
        ("dmarc", "missing")
    );
    let rows = audit_actions(h, &key, "domain.auth_failed").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["target"], id.as_str());
    assert!(rows[0]["actor"].as_str().unwrap_or("").starts_with("key:"));
    assert_eq!(rows[0]["after"]["failing_check"], "dmarc");

    // The same answer again: stored (a later checked time), no new version, no new entry.
    let r = h.call("POST", &path, Some(&key), None).await;
    assert_eq!(r.body["failing_check"], "dmarc");
    assert_eq!(version(h).await, v1);
    assert_eq!(audit_actions(h, &key, "domain.auth_failed").await.len(), 1);

    // The domain's view shows the check.
    let r = h
        .call("GET", &format!("/v1/domains/{id}"), Some(&key), None)
        .await;
    ok(&r, 200, "show");
    assert_eq!(r.body["auth"]["failing_check"], "dmarc", "{:?}", r.body);

    // SPF now points elsewhere too: SPF is named first (another verdict, another version).
    h.set_txt(name, &["v=spf1 include:other.test -all"]);
    let r = h.call("POST", &path, Some(&key), None).await;
    assert_eq!(
        (&r.body["failing_check"], &r.body["failure_detail"]),
        (&json!("spf"), &json!("mismatch"))
    );
    assert_eq!(version(h).await, v1 + 1);

    // Restored: passes, a new version, a `domain.auth_passed` entry.
    h.set_txt(name, &["v=spf1 include:spf.petrel.test ~all"]);
    h.set_txt(&format!("_dmarc.{name}"), &["v=DMARC1; p=quarantine"]);
    let r = h.call("POST", &path, Some(&key), None).await;
    assert_eq!(r.body["passing"], true, "{:?}", r.body);
    assert_eq!(version(h).await, v1 + 2);
    assert_eq!(snapshot_failure(h, name).await, None);
    let rows = audit_actions(h, &key, "domain.auth_passed").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["before"]["failing_check"], "spf");

    // Another tenant cannot check it.
    let (_, other) = new_tenant(h, "auth-other").await;
    let r = h.call("POST", &path, Some(&other), None).await;
    ok(&r, 404, "other tenant");
}

/// The scheduled round (`check_all`, what the task runs): only verified domains are looked up,
/// and the round's verdict changes are audited as the scheduler.
pub async fn scheduled_round(h: &Harness) {
    let name = "sched.example.test";
    let (id, key) = verified_domain(h, "sched-co", name).await;
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&key),
            Some(json!({"name": "unverified.example.test"})),
        )
        .await;
    ok(&r, 201, "create unverified domain");
    let unverified = r.body["id"].as_str().expect("id").to_string();

    let app = &h.info.app;
    let n = petrel_control::domain_auth::check_all(app)
        .await
        .expect("round");
    assert!(n >= 1, "the verified domain was checked");
    h.set_txt(&format!("_dmarc.{name}"), &[]);
    petrel_control::domain_auth::check_all(app)
        .await
        .expect("round");
    let r = h
        .call("GET", &format!("/v1/domains/{id}"), Some(&key), None)
        .await;
    assert_eq!(r.body["auth"]["failing_check"], "dmarc", "{:?}", r.body);
    let rows = audit_actions(h, &key, "domain.auth_failed").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0]["actor"],
        petrel_control::domain_auth::SCHEDULER_ACTOR
    );
    let r = h
        .call(
            "GET",
            &format!("/v1/domains/{unverified}"),
            Some(&key),
            None,
        )
        .await;
    assert!(
        r.body["auth"].is_null(),
        "unverified domains are not re-checked"
    );
}
