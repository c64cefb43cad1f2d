//! Tenant export scenarios run against both stores (SQLite in `export.rs`, PostgreSQL in
//! `pg.rs`): a round trip where every row is accounted for, the archive's digest, no secret and
//! no other tenant's row in it, sealed chunks, the job's conflicts and failures, the audit rows,
//! and the purge.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use petrel_control::store::sealed::SEALED_BYTES_PREFIX;
use petrel_control::store::Db;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::scenarios::{ids, new_tenant};
use super::suppressions_api::raw;
use super::Harness;

/// The exported tenant's name: in the archive (its `tenant.create` audit row), sealed
/// everywhere in the database.
pub const MARKER_NAME: &str = "Export Marker 7f3a9c";
/// Events of the exported tenant: more than two pages of the job's reads, several chunks.
const EVENTS: u32 = 1_200;
/// How long a test waits for an export to be ready.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Between two polls.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What the round trip found, for the caller's own checks.
pub struct RoundTrip {
    pub tenant: String,
    pub export_id: String,
    /// The archive as downloaded.
    pub archive: Vec<u8>,
}

/// Polls `GET /v1/tenants/{tenant}/export` until the archive comes (bounded).
pub async fn wait_ready(h: &Harness, key: &str, tenant: &str) -> petrel_testkit::http::Response {
    let path = format!("/v1/tenants/{tenant}/export");
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let r = raw(h, "GET", &path, key, "", b"").await;
        match r.status {
            200 => return r,
            202 => assert_eq!(r.json()["status"], "running", "{}", r.text()),
            other => panic!("GET {path}: {other} {}", r.text()),
        }
        assert!(
            Instant::now() < deadline,
            "the export was not ready in time"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn count(db: &Db, sql: &str, tenant: &str) -> usize {
    let mut conn = db.conn().await.expect("conn");
    let n: i64 = sqlx::query(sql)
        .bind(tenant.to_string())
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0);
    usize::try_from(n).expect("a count")
}

async fn strings(db: &Db, sql: &str, tenant: &str) -> BTreeSet<String> {
    let mut conn = db.conn().await.expect("conn");
    sqlx::query(sql)
        .bind(tenant.to_string())
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
}

/// The `data` of every record of `kind`.
fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"] == kind)
        .map(|r| &r["data"])
        .collect()
}

fn field_set(records: &[&Value], field: &str) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| match &r[field] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Makes a tenant with every kind of data and another tenant beside it, exports the first and
/// checks the archive row by row against the database. `db` is a second handle on the
/// harness's database.
pub async fn round_trip(h: &Harness, db: &Db) -> RoundTrip {
    let (tenant, key) = new_tenant(h, MARKER_NAME).await;
    let (other, other_key) = new_tenant(h, "export-other-co").await;
    let secrets = populate(h, &tenant, &key).await;
    populate_other(h, &other, &other_key).await;

    let path = format!("/v1/tenants/{tenant}/export");
    // Another tenant's key: like a missing tenant.
    for method in ["POST", "GET"] {
        let r = h.call(method, &path, Some(&other_key), None).await;
        assert_eq!(r.status, 404, "{method}: {:?}", r.body);
    }
    let r = h.call("GET", &path, Some(&key), None).await;
    assert_eq!(r.status, 404, "no export yet: {:?}", r.body);
    let r = h.call("POST", &path, Some(&key), None).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["status"], "running");
    assert_eq!(r.body["tenant_id"], tenant.as_str());
    let export_id = r.body["id"].as_str().expect("export id").to_string();
    let got = wait_ready(h, &key, &tenant).await;
    assert_eq!(got.header("content-type"), Some("application/x-ndjson"));
    let archive = got.body.clone();

    let records = check_framing(&archive, &tenant, &export_id);
    check_every_row(db, &tenant, &records).await;
    check_nothing_secret(db, &tenant, &archive, &secrets).await;
    let text = String::from_utf8_lossy(&archive);
    assert!(text.contains(MARKER_NAME), "the tenant's name is exported");
    for foreign in [other.as_str(), "other.example.test", "b-only@other.test"] {
        assert!(
            !text.contains(foreign),
            "another tenant's {foreign} exported"
        );
    }
    assert!(
        !text.contains("@other-dest.test"),
        "another tenant's events"
    );
    check_chunks(db, &export_id, &archive).await;

    // The operator's owner may fetch it too; both downloads and the start are audited.
    let r = raw(h, "GET", &path, &h.owner_key, "", b"").await;
    assert_eq!((r.status, r.body.len()), (200, archive.len()));
    let r = h.owner("GET", "/v1/audit-log?limit=1000", None).await;
    let rows = r.body.as_array().expect("rows");
    let with = |action: &str| {
        rows.iter()
            .filter(|row| row["action"] == action && row["target"] == export_id.as_str())
            .inspect(|row| assert_eq!(row["tenant_id"], tenant.as_str()))
            .count()
    };
    assert_eq!(with("tenant.export.start"), 1);
    assert_eq!(with("tenant.export.download"), 2);
    RoundTrip {
        tenant,
        export_id,
        archive,
    }
}

/// What [`populate`] made that must never be exported.
struct Secrets {
    texts: Vec<String>,
}

async fn post(h: &Harness, key: &str, path: &str, body: Value, status: u16) -> Value {
    let r = h.call("POST", path, Some(key), Some(body)).await;
    assert_eq!(r.status, status, "POST {path}: {:?}", r.body);
    r.body
}

/// The exported tenant's delivery settings (issue 15).
const EXPORT_POOL: &str = "export-pool";
const EXPORT_WEIGHT: u32 = 9;

/// Delivery settings, domains (one rotated: three keys), credentials, suppressions, webhooks, events, and the
/// audit rows all of it wrote.
async fn populate(h: &Harness, tenant: &str, key: &str) -> Secrets {
    let mut texts = vec![key.to_string()];
    let settings = json!({"egress_pool": EXPORT_POOL, "delivery_weight": EXPORT_WEIGHT});
    let r = h
        .owner("PATCH", &format!("/v1/tenants/{tenant}"), Some(settings))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for name in ["a.export.test", "b.export.test"] {
        post(h, key, "/v1/domains", json!({ "name": name }), 201).await;
    }
    let r = h.call("GET", "/v1/domains", Some(key), None).await;
    let first = ids(&r.body, "id")[0].clone();
    post(
        h,
        key,
        &format!("/v1/domains/{first}/rotate"),
        json!({}),
        200,
    )
    .await;
    for body in [
        json!({"kind": "smtp", "name": "export smtp"}),
        json!({"kind": "api", "name": "export api", "role": "viewer"}),
    ] {
        let b = post(h, key, "/v1/credentials", body, 201).await;
        texts.push(b["secret"].as_str().expect("secret").to_string());
    }
    let addresses: Vec<Value> = (0..3)
        .map(|i| json!({"address": format!("gone{i}@dest.test")}))
        .collect();
    post(h, key, "/v1/suppressions", Value::from(addresses), 200).await;
    let b = post(
        h,
        key,
        "/v1/webhooks",
        json!({"url": "https://93.184.216.34/export", "events": ["delivered"]}),
        201,
    )
    .await;
    texts.push(b["secret"].as_str().expect("webhook secret").to_string());
    let mut conn = super::events::connect(h, "engine-export").await;
    // Deliveries only: bounces would move the tenant's guardrails, whose own events arrive
    // on their schedule (the archive is not a snapshot, the counts below are exact).
    let now = petrel_control::now_unix_ms();
    let events: Vec<_> = (0..EVENTS)
        .map(|i| {
            let kind = petrel_policy::event::EventType::Delivered;
            super::events::event(tenant, "export-msg", i, 1, kind, now + i64::from(i))
        })
        .collect();
    for (i, batch) in events.chunks(500).enumerate() {
        let seq = u64::try_from(i + 1).expect("seq");
        assert_eq!(
            super::events::send(&mut conn, seq, batch.to_vec()).await,
            seq
        );
    }
    Secrets { texts }
}

/// Another tenant's domain, suppression and events (none of which may be exported).
async fn populate_other(h: &Harness, tenant: &str, key: &str) {
    post(
        h,
        key,
        "/v1/domains",
        json!({"name": "other.example.test"}),
        201,
    )
    .await;
    post(
        h,
        key,
        "/v1/suppressions",
        json!({"address": "b-only@other.test"}),
        200,
    )
    .await;
    let mut conn = super::events::connect(h, "engine-export-other").await;
    let now = petrel_control::now_unix_ms();
    let kind = petrel_policy::event::EventType::Delivered;
    let mut events: Vec<_> = (0..10)
        .map(|i| super::events::event(tenant, "other-msg", i, 1, kind.clone(), now))
        .collect();
    for e in &mut events {
        e.recipient = e
            .recipient
            .as_ref()
            .map(|r| r.replace("@dest", "@other-dest"));
    }
    assert_eq!(super::events::send(&mut conn, 1, events).await, 1);
}

/// The header, the records, the end line's counts and digest; returns the records.
fn check_framing(archive: &[u8], tenant: &str, export_id: &str) -> Vec<Value> {
    assert_eq!(archive.last(), Some(&b'\n'), "ends with a whole line");
    let body = &archive[..archive.len() - 1];
    let end_at = body.iter().rposition(|b| *b == b'\n').expect("lines") + 1;
    let end: Value = serde_json::from_slice(&archive[end_at..]).expect("end line");
    assert_eq!(end["kind"], "end");
    assert_eq!(
        end["sha256"],
        hex::encode(Sha256::digest(&archive[..end_at])),
        "the digest of every byte before the end line"
    );
    let lines: Vec<Value> = archive[..end_at]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("a JSON line"))
        .collect();
    let header = &lines[0];
    assert_eq!(header["kind"], "header");
    assert_eq!(header["format"], 1);
    assert_eq!(header["tenant_id"], tenant);
    assert_eq!(header["export_id"], export_id);
    assert!(header["created_unix_ms"].as_i64().is_some());
    let records = lines[1..].to_vec();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        let kind = r["kind"].as_str().expect("kind").to_string();
        assert!(r["data"].is_object(), "{r}");
        *counted.entry(kind).or_default() += 1;
    }
    let kinds = [
        "tenant",
        "domain",
        "dkim_key",
        "credential",
        "suppression",
        "event",
        "webhook",
        "audit",
    ];
    for kind in kinds {
        assert_eq!(
            end["counts"][kind].as_u64(),
            Some(counted.get(kind).copied().unwrap_or(0)),
            "{kind}: {end}"
        );
    }
    assert_eq!(counted.len(), kinds.len(), "only known kinds: {counted:?}");
    records
}

/// Every row of the tenant in the database is in the archive, and nothing else.
async fn check_every_row(db: &Db, tenant: &str, records: &[Value]) {
    // The tenant itself, first, with the delivery settings `populate` gave it.
    assert_eq!(records[0]["kind"], "tenant");
    let own = of_kind(records, "tenant");
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["id"], tenant);
    assert_eq!(own[0]["name"], MARKER_NAME);
    assert_eq!(
        (&own[0]["egress_pool"], &own[0]["delivery_weight"]),
        (&json!(EXPORT_POOL), &json!(EXPORT_WEIGHT))
    );
    let domains = of_kind(records, "domain");
    let want = strings(db, "SELECT id FROM domains WHERE tenant_id = $1", tenant).await;
    assert_eq!((field_set(&domains, "id"), want.len()), (want, 2));
    let keys = of_kind(records, "dkim_key");
    let want = strings(db, "SELECT id FROM dkim_keys WHERE tenant_id = $1", tenant).await;
    assert_eq!((field_set(&keys, "id"), want.len()), (want, 3));
    assert!(keys.iter().all(|k| k["dns_txt"].is_string()));
    let creds = of_kind(records, "credential");
    let want = strings(
        db,
        "SELECT id FROM credentials WHERE tenant_id = $1",
        tenant,
    )
    .await;
    assert_eq!((field_set(&creds, "id"), want.len()), (want, 3));
    let supp = of_kind(records, "suppression");
    let sql = "SELECT address FROM suppressions WHERE scope = $1";
    let want = strings(db, sql, tenant).await;
    assert_eq!((field_set(&supp, "address"), want.len()), (want, 3));
    let events = of_kind(records, "event");
    let want = strings(db, "SELECT id FROM events WHERE tenant_id = $1", tenant).await;
    let got = field_set(&events, "id");
    assert_eq!(
        (got.len(), events.len()),
        (want.len(), want.len()),
        "no repeats"
    );
    assert_eq!((got, want.len()), (want, EVENTS as usize));
    let hooks = of_kind(records, "webhook");
    let want = strings(db, "SELECT id FROM webhooks WHERE tenant_id = $1", tenant).await;
    assert_eq!((field_set(&hooks, "id"), want.len()), (want, 1));
    // Audit rows: the tenant's, up to the export's own start (downloads come later).
    let audit = of_kind(records, "audit");
    let got = field_set(&audit, "seq");
    let sql = "SELECT CAST(seq AS TEXT) FROM audit_log WHERE tenant_id = $1 \
               AND action <> 'tenant.export.download'";
    let want = strings(db, sql, tenant).await;
    assert_eq!(got, want);
    assert!(audit.iter().any(|a| a["action"] == "tenant.export.start"));
    assert!(audit.iter().any(|a| a["action"] == "tenant.create"));
    let sql = "SELECT COUNT(*) FROM audit_log WHERE tenant_id = $1";
    assert!(count(db, sql, tenant).await > audit.len());
}

/// No key, password, hash or webhook secret of the tenant is in the archive.
async fn check_nothing_secret(db: &Db, tenant: &str, archive: &[u8], secrets: &Secrets) {
    let text = String::from_utf8_lossy(archive);
    for s in &secrets.texts {
        assert!(!text.contains(s.as_str()), "a secret is exported");
    }
    for needle in ["$argon2", "PRIVATE KEY", "whsec_", "private_key"] {
        assert!(!text.contains(needle), "{needle} is exported");
    }
    let mut conn = db.conn().await.expect("conn");
    let domains = strings(db, "SELECT id FROM domains WHERE tenant_id = $1", tenant).await;
    let mut keys = 0;
    for d in domains {
        let rows =
            petrel_control::store::domains::listed_keys(&mut conn, db.sealer(), tenant, &d, 0)
                .await
                .expect("keys");
        for k in rows {
            keys += 1;
            let der = &k.private_key_pkcs8_der;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            // The Ed25519 seed: the OCTET STRING inside the private key OCTET STRING (PKCS#8
            // v2 appends the public key, which the DNS record publishes, after it).
            let at = der
                .windows(4)
                .position(|w| w == [0x04, 0x22, 0x04, 0x20])
                .expect("an Ed25519 PKCS#8 document")
                + 4;
            let seed = &der[at..at + 32];
            let seed_b64 = base64::engine::general_purpose::STANDARD.encode(seed);
            for needle in [b64, hex::encode(seed), seed_b64] {
                assert!(!text.contains(&needle), "a DKIM private key is exported");
            }
        }
    }
    assert_eq!(keys, 3);
}

/// The stored chunks are sealed (no line of the archive in them) and make up the archive.
async fn check_chunks(db: &Db, export_id: &str, archive: &[u8]) {
    let mut conn = db.conn().await.expect("conn");
    let chunks: Vec<Vec<u8>> =
        sqlx::query("SELECT data FROM export_chunks WHERE export_id = $1 ORDER BY n")
            .bind(export_id.to_string())
            .fetch_all(&mut *conn)
            .await
            .expect("chunks")
            .iter()
            .map(|r| r.get("data"))
            .collect();
    let chunk_bytes = petrel_control::export::EXPORT_CHUNK_BYTES;
    assert_eq!(chunks.len(), archive.len().div_ceil(chunk_bytes));
    assert!(chunks.len() > 1, "several chunks");
    for c in &chunks {
        assert!(c.starts_with(SEALED_BYTES_PREFIX));
        for needle in [&b"\"kind\""[..], MARKER_NAME.as_bytes(), b"@dest.test"] {
            assert!(!c.windows(needle.len()).any(|w| w == needle), "clear text");
        }
    }
}

/// A second start while one runs is a conflict; a job left running by a dead node is failed
/// by the purge once stale (GET then answers 409 `export_failed`), and a new start replaces it;
/// an expired archive is purged with its chunks.
pub async fn conflicts_failures_and_purge(h: &Harness, db: &Db) {
    use petrel_control::export::{self, EXPORT_STALE_MS, EXPORT_TTL_MS};
    let (tenant, key) = new_tenant(h, "export-jobs-co").await;
    let path = format!("/v1/tenants/{tenant}/export");
    let now = petrel_control::now_unix_ms();
    // A job a dead node left running, long ago.
    {
        let mut conn = db.conn().await.expect("conn");
        sqlx::query(
            "INSERT INTO exports (id, tenant_id, status, created_unix_ms) \
             VALUES ('exp_dead', $1, 'running', $2)",
        )
        .bind(tenant.clone())
        .bind(now - EXPORT_STALE_MS - 1)
        .execute(&mut *conn)
        .await
        .expect("insert a running job");
    }
    let r = h.call("GET", &path, Some(&key), None).await;
    assert_eq!((r.status, &r.body["status"]), (202, &json!("running")));
    let r = h.call("POST", &path, Some(&key), None).await;
    assert_eq!((r.status, r.code()), (409, "conflict"), "{:?}", r.body);
    export::purge(db, now).await.expect("purge");
    let r = h.call("GET", &path, Some(&key), None).await;
    assert_eq!((r.status, r.code()), (409, "export_failed"), "{:?}", r.body);
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("exp_dead") && message.contains("interrupted"));

    let r = h.call("POST", &path, Some(&key), None).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let got = wait_ready(h, &key, &tenant).await;
    let text = got.text();
    assert!(text.contains(&id) && text.contains("\"kind\":\"end\""));
    let chunks = |id: String| async move {
        let mut conn = db.conn().await.expect("conn");
        sqlx::query("SELECT COUNT(*) FROM export_chunks WHERE export_id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .expect("count")
            .get::<i64, _>(0)
    };
    assert!(chunks(id.clone()).await >= 1);
    // The ready archive outlives a purge now (the failed job it replaced does not); after its
    // time the archive and its chunks are gone.
    export::purge(db, petrel_control::now_unix_ms())
        .await
        .expect("purge");
    assert!(chunks(id.clone()).await >= 1);
    assert_eq!(h.call("GET", &path, Some(&key), None).await.status, 200);
    let later = petrel_control::now_unix_ms() + EXPORT_TTL_MS + 1;
    assert!(export::purge(db, later).await.expect("purge") >= 1);
    assert_eq!(chunks(id).await, 0);
    let mut conn = db.conn().await.expect("conn");
    let left: i64 = sqlx::query("SELECT COUNT(*) FROM exports WHERE tenant_id = $1")
        .bind(tenant.clone())
        .fetch_one(&mut *conn)
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
    let r = h.call("GET", &path, Some(&key), None).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
}
