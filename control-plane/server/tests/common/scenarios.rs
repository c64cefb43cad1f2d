//! Scenarios run against both stores (SQLite here, PostgreSQL in `pg.rs`).

use std::time::Duration;

use serde_json::{json, Value};

use super::{Harness, Resp};

fn ok(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {:?}", r.body);
}

/// Creates a tenant and returns (tenant id, its admin key).
pub async fn new_tenant(h: &Harness, name: &str) -> (String, String) {
    let r = h
        .owner("POST", "/v1/tenants", Some(json!({"name": name})))
        .await;
    ok(&r, 201, "create tenant");
    let id = r.body["tenant"]["id"]
        .as_str()
        .expect("tenant id")
        .to_string();
    let key = r.body["admin_key"]["secret"]
        .as_str()
        .expect("admin key")
        .to_string();
    (id, key)
}

/// Domains: add, DNS records, verify (missing, then found), rotate (pending, then active with
/// the old key listed as retired), limits, delete.
pub async fn domains(h: &Harness) {
    let (tenant, key) = new_tenant(h, "domains-co").await;
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&key),
            Some(json!({"name": "Mail.Example.test", "algorithm": "ed25519"})),
        )
        .await;
    ok(&r, 201, "create domain");
    let d = r.body.clone();
    assert_eq!(d["name"], "mail.example.test");
    assert_eq!(d["tenant_id"], tenant.as_str());
    assert_eq!(d["verified"], false);
    let id = d["id"].as_str().expect("id").to_string();
    let records = d["dns_records"].as_array().expect("records").clone();
    assert_eq!(records.len(), 3);
    let dkim = records
        .iter()
        .find(|r| r["purpose"] == "dkim")
        .expect("dkim record");
    let selector = d["keys"][0]["selector"]
        .as_str()
        .expect("selector")
        .to_string();
    assert_eq!(
        dkim["name"],
        format!("{selector}._domainkey.mail.example.test")
    );
    assert!(dkim["value"]
        .as_str()
        .expect("value")
        .starts_with("v=DKIM1; k=ed25519; p="));
    let spf = records
        .iter()
        .find(|r| r["purpose"] == "spf")
        .expect("spf record");
    assert_eq!(spf["value"], "v=spf1 include:spf.petrel.test ~all");
    assert!(records
        .iter()
        .any(|r| r["purpose"] == "dmarc" && r["name"] == "_dmarc.mail.example.test"));

    // Nothing published yet.
    let r = h
        .call(
            "POST",
            &format!("/v1/domains/{id}/verify"),
            Some(&key),
            None,
        )
        .await;
    ok(&r, 200, "verify");
    assert_eq!(r.body["verified"], false);
    let states: Vec<(String, String)> = r.body["last_check"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["purpose"].as_str().unwrap_or("").into(),
                c["state"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert!(
        states.contains(&("dkim".into(), "missing".into())),
        "{states:?}"
    );

    // Publish DKIM only: still not verified.
    h.set_txt(
        dkim["name"].as_str().expect("name"),
        &[dkim["value"].as_str().expect("v")],
    );
    let r = h
        .call(
            "POST",
            &format!("/v1/domains/{id}/verify"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.body["verified"], false, "{:?}", r.body);
    // SPF with another include: mismatch.
    h.set_txt("mail.example.test", &["v=spf1 include:other.test -all"]);
    let r = h
        .call(
            "POST",
            &format!("/v1/domains/{id}/verify"),
            Some(&key),
            None,
        )
        .await;
    let spf_state = r.body["last_check"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["purpose"] == "spf")
        .expect("spf")["state"]
        .clone();
    assert_eq!(spf_state, "mismatch");
    // Both published: verified.
    h.set_txt(
        "mail.example.test",
        &["v=spf1 include:spf.petrel.test ~all"],
    );
    let r = h
        .call(
            "POST",
            &format!("/v1/domains/{id}/verify"),
            Some(&key),
            None,
        )
        .await;
    ok(&r, 200, "verify");
    assert_eq!(r.body["verified"], true, "{:?}", r.body);

    // Rotate: a pending key; the old one still active.
    let r = h
        .call(
            "POST",
            &format!("/v1/domains/{id}/rotate"),
            Some(&key),
            Some(json!({"algorithm": "ed25519"})),
        )
        .await;
    ok(&r, 200, "rotate");
    let keys = r.body["keys"].as_array().expect("keys").clone();
    assert_eq!(keys.len(), 2);
    assert!(keys[0]["activated_unix_ms"].is_i64() && keys[0]["retired_unix_ms"].is_null());
    assert!(keys[1]["activated_unix_ms"].is_null(), "new key pending");
    let new_sel = keys[1]["selector"].as_str().expect("sel").to_string();
    assert_ne!(new_sel, selector);
    let new_dkim = r.body["dns_records"]
        .as_array()
        .expect("recs")
        .iter()
        .find(|r| r["purpose"] == "dkim")
        .expect("dkim")
        .clone();
    assert_eq!(
        new_dkim["name"],
        format!("{new_sel}._domainkey.mail.example.test")
    );
    h.set_txt(
        new_dkim["name"].as_str().expect("n"),
        &[new_dkim["value"].as_str().expect("v")],
    );
    let r = h
        .call(
            "POST",
            &format!("/v1/domains/{id}/verify"),
            Some(&key),
            None,
        )
        .await;
    let keys = r.body["keys"].as_array().expect("keys").clone();
    assert_eq!(
        keys.len(),
        2,
        "old key stays listed during the grace period"
    );
    assert!(
        keys[0]["retired_unix_ms"].is_i64(),
        "old key retired: {keys:?}"
    );
    assert!(keys[0]["listed_until_unix_ms"].as_i64() > keys[0]["retired_unix_ms"].as_i64());
    assert!(keys[1]["activated_unix_ms"].is_i64(), "new key active");
    assert_eq!(r.body["verified"], true);

    // RSA-2048 by choice.
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&key),
            Some(json!({"name": "rsa.example.test", "algorithm": "rsa2048"})),
        )
        .await;
    ok(&r, 201, "rsa domain");
    assert!(r.body["keys"][0]["dns_txt"]
        .as_str()
        .expect("txt")
        .starts_with("v=DKIM1; k=rsa; p="));
    assert_eq!(r.body["keys"][0]["algorithm"], "rsa2048");

    // Duplicate name: 409; bad algorithm: 422.
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&key),
            Some(json!({"name": "mail.example.test"})),
        )
        .await;
    ok(&r, 409, "duplicate domain");
    assert_eq!(r.code(), "conflict");
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&key),
            Some(json!({"name": "x.test", "algorithm": "dsa"})),
        )
        .await;
    ok(&r, 422, "bad algorithm");

    // Limits, list, delete.
    let r = h
        .call(
            "PUT",
            &format!("/v1/domains/{id}/limits"),
            Some(&key),
            Some(json!({"messages_per_second_max": 50})),
        )
        .await;
    ok(&r, 200, "domain limits");
    let r = h.call("GET", "/v1/limits", Some(&key), None).await;
    ok(&r, 200, "limits");
    assert!(r.body["domains"]
        .as_array()
        .expect("d")
        .iter()
        .any(|d| d["messages_per_second_max"] == 50));
    let r = h.call("GET", "/v1/domains", Some(&key), None).await;
    assert_eq!(r.body.as_array().expect("list").len(), 2);
    let r = h
        .call("DELETE", &format!("/v1/domains/{id}"), Some(&key), None)
        .await;
    ok(&r, 204, "delete");
    let r = h
        .call("GET", &format!("/v1/domains/{id}"), Some(&key), None)
        .await;
    ok(&r, 404, "deleted domain");
    assert_eq!(r.code(), "not_found");
}

/// Credentials: API key and SMTP credential creation (secret once), revoke, rotate.
pub async fn credentials(h: &Harness) {
    let (_tenant, admin) = new_tenant(h, "creds-co").await;
    let r = h
        .call("POST", "/v1/credentials", Some(&admin), Some(json!({"kind": "api", "name": "ci", "role": "developer", "ip_allowlist": ["127.0.0.0/8"]})))
        .await;
    ok(&r, 201, "create api key");
    let dev_key = r.body["secret"].as_str().expect("secret").to_string();
    let dev_id = r.body["credential"]["id"].as_str().expect("id").to_string();
    assert_eq!(dev_key.len(), 40);
    assert_eq!(r.body["credential"]["prefix"], &dev_key[..8]);
    assert_eq!(r.body["credential"]["scopes"], json!(["read", "admin"]));
    let r = h.call("GET", "/v1/domains", Some(&dev_key), None).await;
    ok(&r, 200, "developer reads");

    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&admin),
            Some(
                json!({"kind": "smtp", "name": "app", "allowed_sender_domains": ["Example.test"]}),
            ),
        )
        .await;
    ok(&r, 201, "create smtp");
    let smtp = r.body["credential"].clone();
    assert!(smtp["username"]
        .as_str()
        .expect("username")
        .starts_with("smtp-"));
    assert_eq!(smtp["scopes"], json!(["send"]));
    assert_eq!(smtp["allowed_sender_domains"], json!(["example.test"]));
    // The listing never shows secrets or hashes.
    let r = h.call("GET", "/v1/credentials", Some(&admin), None).await;
    let text = r.body.to_string();
    assert!(
        !text.contains("argon2") && !text.contains(&dev_key) && !text.contains("secret"),
        "{text}"
    );

    // A developer may not mint an admin key.
    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&dev_key),
            Some(json!({"kind": "api", "name": "x", "role": "admin"})),
        )
        .await;
    ok(&r, 403, "escalation");
    // Bad inputs.
    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&admin),
            Some(json!({"kind": "api", "name": "x", "ip_allowlist": ["nope"]})),
        )
        .await;
    ok(&r, 422, "bad cidr");
    let r = h
        .call(
            "POST",
            "/v1/credentials",
            Some(&admin),
            Some(json!({"kind": "api", "name": "x", "scopes": ["root"]})),
        )
        .await;
    ok(&r, 422, "bad scope");

    // Rotate: old secret dead at once (even though it is cached), new one works.
    let r = h
        .call(
            "POST",
            &format!("/v1/credentials/{dev_id}/rotate"),
            Some(&admin),
            None,
        )
        .await;
    ok(&r, 200, "rotate");
    let rotated = r.body["secret"].as_str().expect("secret").to_string();
    assert_ne!(rotated, dev_key);
    ok(
        &h.call("GET", "/v1/domains", Some(&dev_key), None).await,
        401,
        "old secret",
    );
    ok(
        &h.call("GET", "/v1/domains", Some(&rotated), None).await,
        200,
        "new secret",
    );
    // Revoke: 401 at once.
    let r = h
        .call(
            "POST",
            &format!("/v1/credentials/{dev_id}/revoke"),
            Some(&admin),
            None,
        )
        .await;
    ok(&r, 200, "revoke");
    assert_eq!(r.body["revoked"], true);
    let r = h.call("GET", "/v1/domains", Some(&rotated), None).await;
    ok(&r, 401, "revoked key");
    assert_eq!(r.code(), "unauthorized");
}

/// Error bodies: 401, 400, 422, 404, 409, 405 are JSON `{"error":{code,message}}`.
pub async fn errors(h: &Harness) {
    let r = h.call("GET", "/v1/tenants", None, None).await;
    ok(&r, 401, "no key");
    assert_eq!(r.code(), "unauthorized");
    assert!(r.body["error"]["message"].is_string());
    let r = h.call("GET", "/v1/tenants", Some("short"), None).await;
    ok(&r, 401, "malformed key");
    let r = super::http(
        h.info.api_addr,
        "POST",
        "/v1/tenants",
        Some(&h.owner_key),
        Some("{not json"),
    )
    .await;
    ok(&r, 400, "bad json");
    assert!(r.body["error"]["code"].is_string());
    let r = h
        .owner("POST", "/v1/tenants", Some(json!({"name": 5})))
        .await;
    ok(&r, 422, "wrong shape");
    let r = h
        .owner(
            "POST",
            "/v1/tenants",
            Some(json!({"name": "x", "bogus": 1})),
        )
        .await;
    ok(&r, 422, "unknown field");
    let r = h.owner("GET", "/v1/tenants/ten_doesnotexist", None).await;
    ok(&r, 404, "unknown id");
    assert_eq!(r.code(), "not_found");
    new_tenant(h, "dup").await;
    let r = h
        .owner("POST", "/v1/tenants", Some(json!({"name": "dup"})))
        .await;
    ok(&r, 409, "duplicate");
    let r = h.owner("GET", "/v1/nothing-here", None).await;
    ok(&r, 404, "unknown route");
    assert_eq!(r.code(), "not_found");
    let r = h.owner("PATCH", "/v1/tenants", None).await;
    ok(&r, 405, "method");
    assert!(r.body["error"]["code"].is_string());
    let r = h.owner("GET", "/v1/audit-log?limit=abc", None).await;
    ok(&r, 400, "bad query");
}

/// Audit: every mutation logged with actor and address; filters; tampering detected.
pub async fn audit(h: &Harness, tamper: impl std::future::Future<Output = ()>) {
    let (tenant, admin) = new_tenant(h, "audit-co").await;
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&admin),
            Some(json!({"name": "audit.example.test"})),
        )
        .await;
    ok(&r, 201, "domain");
    let r = h
        .owner("POST", &format!("/v1/tenants/{tenant}/suspend"), None)
        .await;
    ok(&r, 200, "suspend");
    assert_eq!(r.body["suspended"], true);
    let r = h.call("GET", "/v1/domains", Some(&admin), None).await;
    ok(&r, 403, "suspended tenant");
    let r = h
        .owner("POST", &format!("/v1/tenants/{tenant}/unsuspend"), None)
        .await;
    ok(&r, 200, "unsuspend");

    // The tenant admin sees its own rows only.
    let r = h.call("GET", "/v1/audit-log", Some(&admin), None).await;
    ok(&r, 200, "audit list");
    let rows = r.body.as_array().expect("rows").clone();
    assert!(
        rows.iter().all(|row| row["tenant_id"] == tenant.as_str()),
        "{rows:?}"
    );
    let domain_row = rows
        .iter()
        .find(|row| row["action"] == "domain.create")
        .expect("domain.create row");
    assert_eq!(domain_row["actor"], format!("key:{}", &admin[..8]));
    assert_eq!(domain_row["remote_addr"], "127.0.0.1");
    assert!(domain_row["before"].is_null() && domain_row["after"]["name"] == "audit.example.test");
    let suspend = rows
        .iter()
        .find(|row| row["action"] == "tenant.suspend")
        .expect("suspend row");
    assert_eq!(suspend["before"]["suspended"], false);
    assert_eq!(suspend["after"]["suspended"], true);

    // Filters.
    let r = h
        .owner("GET", "/v1/audit-log?action=tenant.suspend", None)
        .await;
    let rows = r.body.as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    let at = rows[0]["at_unix_ms"].as_i64().expect("at");
    let r = h
        .owner(
            "GET",
            &format!("/v1/audit-log?actor=key:{}&limit=2", &h.owner_key[..8]),
            None,
        )
        .await;
    assert_eq!(r.body.as_array().expect("rows").len(), 2);
    let r = h
        .owner(
            "GET",
            &format!(
                "/v1/audit-log?since={}&until={}",
                at + 1_000_000,
                at + 2_000_000
            ),
            None,
        )
        .await;
    assert!(r.body.as_array().expect("rows").is_empty());

    let r = h.owner("GET", "/v1/audit-log/verify", None).await;
    ok(&r, 200, "verify");
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
    assert!(r.body["rows_checked"].as_u64() >= Some(5));

    tamper.await;
    let r = h.owner("GET", "/v1/audit-log/verify", None).await;
    assert_eq!(r.body["ok"], false, "{:?}", r.body);
    assert_eq!(r.body["first_broken_seq"], 3, "{:?}", r.body);
}

/// Defaults and destination limits (owner only), then the snapshot carries them.
pub async fn limits(h: &Harness) {
    let r = h
        .owner(
            "PUT",
            "/v1/limits/defaults",
            Some(json!({"tenant_messages_per_second_max": 100, "destination_connections_max": 20})),
        )
        .await;
    ok(&r, 200, "defaults");
    let r = h
        .owner(
            "PUT",
            "/v1/limits/destinations/Gmail.com",
            Some(
                json!({"connections_max": 5, "messages_per_second_max": 10, "tls_required": true}),
            ),
        )
        .await;
    ok(&r, 200, "destination");
    assert_eq!(r.body["domain"], "gmail.com");
    let r = h.owner("GET", "/v1/limits", None).await;
    assert_eq!(r.body["defaults"]["tenant_messages_per_second_max"], 100);
    assert_eq!(r.body["destinations"][0]["tls_required"], true);
    let (tenant, _) = new_tenant(h, "quota-co").await;
    let r = h
        .owner(
            "PUT",
            &format!("/v1/tenants/{tenant}/limits"),
            Some(json!({"messages_per_second_max": 7, "messages_per_day_max": 1000})),
        )
        .await;
    ok(&r, 200, "tenant quota");
    assert_eq!(r.body["messages_per_day_max"], 1000);
    let r = h
        .owner("DELETE", "/v1/limits/destinations/gmail.com", None)
        .await;
    ok(&r, 204, "delete destination");
    let r = h
        .owner("DELETE", "/v1/limits/destinations/gmail.com", None)
        .await;
    ok(&r, 404, "gone");
}

/// Waits until `f` holds (bounded).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn ids(v: &Value, field: &str) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x[field].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
