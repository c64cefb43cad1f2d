//! The control plane's secret columns at rest (issue 16): tenant names, DKIM private keys,
//! webhook secrets, token keys and audit payloads are stored sealed and read back through the
//! API; a row written in the clear before sealing is sealed at the next start; destroying a
//! tenant's data keys redacts its names and audit payloads while the audit chain still verifies.
//! A tenant's data key past the rotation period takes no new values: they go under a new one,
//! and the old values still open.

mod common;

use common::scenarios::new_tenant;
use petrel_control::store::sealed::{SEALED_BYTES_PREFIX, SEALED_TEXT_PREFIX};
use serde_json::json;
use sqlx::Row;

const NAME: &str = "Sealed Name Co";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_columns_are_sealed_opened_resealed_and_shredded() {
    let h = common::start().await;
    let (tenant, key) = new_tenant(&h, NAME).await;
    let r = h
        .call(
            "POST",
            "/v1/domains",
            Some(&key),
            Some(json!({"name": "sealed.example.test", "algorithm": "ed25519"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // A public address (never contacted: no event is ingested here).
    h.dns.upsert(petrel_testkit::dns::a(
        "hooks.example.test",
        60,
        "93.184.216.34",
    ));
    let r = h
        .call(
            "POST",
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": "https://hooks.example.test/", "events": ["delivered"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let webhook_secret = r.body["secret"].as_str().expect("secret").to_string();

    let db = common::suppressions::db(&h, None).await;
    let mut conn = db.conn().await.expect("conn");
    let stored: String = sqlx::query("SELECT name FROM tenants WHERE id = $1")
        .bind(tenant.clone())
        .fetch_one(&mut *conn)
        .await
        .expect("tenant row")
        .get("name");
    assert!(stored.starts_with(SEALED_TEXT_PREFIX), "{stored}");
    let der: Vec<u8> = sqlx::query("SELECT private_key FROM dkim_keys WHERE tenant_id = $1")
        .bind(tenant.clone())
        .fetch_one(&mut *conn)
        .await
        .expect("key row")
        .get("private_key");
    assert!(der.starts_with(SEALED_BYTES_PREFIX));
    let secret: String = sqlx::query("SELECT secret FROM webhooks WHERE tenant_id = $1")
        .bind(tenant.clone())
        .fetch_one(&mut *conn)
        .await
        .expect("webhook row")
        .get("secret");
    assert!(secret.starts_with(SEALED_TEXT_PREFIX) && !secret.contains(&webhook_secret));
    let token: Vec<u8> = sqlx::query("SELECT secret FROM token_keys")
        .fetch_one(&mut *conn)
        .await
        .expect("token key")
        .get("secret");
    assert!(token.starts_with(SEALED_BYTES_PREFIX));
    let audit: Vec<Option<String>> =
        sqlx::query("SELECT after_json FROM audit_log WHERE tenant_id = $1")
            .bind(tenant.clone())
            .fetch_all(&mut *conn)
            .await
            .expect("audit rows")
            .iter()
            .map(|r| r.get("after_json"))
            .collect();
    assert!(audit.len() >= 3);
    assert!(audit
        .iter()
        .flatten()
        .all(|a| a.starts_with(SEALED_TEXT_PREFIX)));

    // The API reads through the seal; the name stays unique through its blind index.
    let r = h.owner("GET", &format!("/v1/tenants/{tenant}"), None).await;
    assert_eq!(r.body["name"], NAME);
    let r = h
        .owner("POST", "/v1/tenants", Some(json!({"name": NAME})))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    let r = h.owner("GET", "/v1/audit-log", None).await;
    let created = r
        .body
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| row["action"] == "tenant.create" && row["tenant_id"] == tenant.as_str());
    assert_eq!(created.expect("row")["after"]["name"], NAME);

    // A name written in the clear (before sealing existed) is sealed at the next open.
    sqlx::query("UPDATE tenants SET name = 'Clear Co', name_index = NULL WHERE id = $1")
        .bind(tenant.clone())
        .execute(&mut *conn)
        .await
        .expect("clear the name");
    drop(conn);
    let db = common::suppressions::db(&h, None).await;
    let mut conn = db.conn().await.expect("conn");
    let stored: String = sqlx::query("SELECT name FROM tenants WHERE id = $1")
        .bind(tenant.clone())
        .fetch_one(&mut *conn)
        .await
        .expect("tenant row")
        .get("name");
    assert!(stored.starts_with(SEALED_TEXT_PREFIX), "{stored}");
    let r = h.owner("GET", &format!("/v1/tenants/{tenant}"), None).await;
    assert_eq!(r.body["name"], "Clear Co");

    // Crypto-shredding: once the tenant's keys are destroyed its sealed values are unreadable,
    // and the audit chain, which hashes what is stored, still verifies.
    let n = db
        .sealer()
        .destroy_owner(&mut conn, &tenant)
        .await
        .expect("destroy");
    assert!(n >= 1);
    drop(conn);
    // The server's own cache still holds the key; a fresh handle reads what a restart would.
    let db = common::suppressions::db(&h, None).await;
    let mut conn = db.conn().await.expect("conn");
    let t = petrel_control::store::tenants::get(&mut conn, db.sealer(), &tenant)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(t.name, petrel_control::store::tenants::NAME_REDACTED);
    let filter = petrel_control::audit::AuditFilter {
        tenant_id: Some(tenant.clone()),
        ..Default::default()
    };
    let rows = petrel_control::audit::list(&mut conn, db.sealer(), &filter, None)
        .await
        .expect("audit");
    let created = rows
        .iter()
        .find(|r| r.action == "tenant.create")
        .expect("row");
    assert_eq!(created.after, Some(json!(petrel_control::audit::REDACTED)));
    let report = petrel_control::audit::verify(&mut conn)
        .await
        .expect("verify");
    assert!(report.ok, "{report:?}");
}

/// The data key id of a sealed text value.
fn key_id(stored: &str) -> u32 {
    use base64::Engine as _;
    let b64 = stored.strip_prefix(SEALED_TEXT_PREFIX).expect("sealed");
    let frame = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .expect("base64");
    petrel_seal::frame_key_id(&frame).expect("frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_past_its_period_takes_no_new_values_and_old_ones_still_open() {
    const DAY_MS: i64 = 86_400_000;
    let (h, clock) = common::retention::harness(None).await;
    let raw = common::retention::raw(&h, None).await;
    let (tenant, _key) = new_tenant(&h, "Rotating Co").await;
    let keys_of = |tenant: String| {
        let raw = raw.clone();
        async move {
            sqlx::query("SELECT id FROM data_keys WHERE owner = $1")
                .bind(tenant)
                .fetch_all(&raw)
                .await
                .expect("data keys")
                .len()
        }
    };
    assert_eq!(keys_of(tenant.clone()).await, 1);
    let after_of = |action: &'static str| {
        let (raw, tenant) = (raw.clone(), tenant.clone());
        async move {
            let r = sqlx::query(
                "SELECT after_json FROM audit_log WHERE tenant_id = $1 AND action = $2 \
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(tenant)
            .bind(action)
            .fetch_one(&raw)
            .await
            .expect("audit row");
            r.get::<String, _>("after_json")
        }
    };
    let first = key_id(&after_of("tenant.create").await);

    // Within the period: the same key.
    clock.advance(29 * DAY_MS);
    let path = format!("/v1/tenants/{tenant}");
    let r = h
        .owner("PATCH", &path, Some(json!({"list_unsubscribe": true})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(key_id(&after_of("tenant.update").await), first);
    assert_eq!(keys_of(tenant.clone()).await, 1);

    // Past it (the node's cached key too): a new key for the new value.
    clock.advance(2 * DAY_MS);
    let r = h
        .owner("PATCH", &path, Some(json!({"list_unsubscribe": false})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let second = key_id(&after_of("tenant.update").await);
    assert_ne!(second, first, "sealed under a new key");
    assert_eq!(keys_of(tenant.clone()).await, 2);
    // And the next value goes under the new key, not a third.
    let r = h
        .owner("PATCH", &path, Some(json!({"list_unsubscribe": true})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(key_id(&after_of("tenant.update").await), second);
    assert_eq!(keys_of(tenant.clone()).await, 2);

    // Both keys' values open through the API: the name (first key), every audit payload.
    let r = h.owner("GET", &path, None).await;
    assert_eq!(r.body["name"], "Rotating Co", "{:?}", r.body);
    let r = h.owner("GET", "/v1/audit-log?limit=1000", None).await;
    let rows: Vec<&serde_json::Value> = r
        .body
        .as_array()
        .expect("rows")
        .iter()
        .filter(|row| row["tenant_id"] == tenant.as_str())
        .collect();
    let created = rows
        .iter()
        .find(|row| row["action"] == "tenant.create")
        .expect("create row");
    assert_eq!(created["after"]["name"], "Rotating Co", "{created:?}");
    let updates: Vec<_> = rows
        .iter()
        .filter(|row| row["action"] == "tenant.update")
        .map(|row| row["after"]["list_unsubscribe"].clone())
        .collect();
    assert_eq!(updates.len(), 3, "{rows:?}");
    assert!(updates.iter().all(|v| v.is_boolean()), "{updates:?}");
}
