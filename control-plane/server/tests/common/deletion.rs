//! Tenant deletion (issue 16), run on SQLite (`tests/deletion.rs`) and PostgreSQL
//! (`tests/pg.rs`): two tenants with every kind of data, one deleted. The refusals first; then
//! the 202 and its counts, the 410 for owners (404 for anyone else), its keys refused, the
//! policy snapshot listing it as deleted; after the background erasure no row of it left (more
//! webhook history than one erasure chunk included), each suppression logged as removed, the
//! kept tenant's rows and API untouched; its late events acknowledged and dropped; its audit
//! rows kept, redacted, the chain verifying; nothing sealed for it again.

use std::time::{Duration, Instant};

use petrel_policy::EventType;
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};

use super::events::{connect, event, send};
use super::export::wait_ready;
use super::scenarios::{ids, new_tenant};
use super::{Harness, Resp};

/// Events each tenant has before the deletion.
const EVENTS_BEFORE: u32 = 4;
/// Suppressions each tenant has.
const SUPPRESSIONS: u32 = 3;
/// How long the test waits for the dispatcher's deliveries and for the erasure.
const WAIT: Duration = Duration::from_secs(30);
/// Between two polls.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Rows per bulk `INSERT` of the extra webhook history.
const BULK_INSERT_ROWS: usize = 500;
/// The engine the test speaks as.
const ENGINE: &str = "engine-deletion";

/// Rows keyed by tenant: (table, column). Every one holds rows of both tenants before the
/// deletion.
const TENANT_ROWS: &[(&str, &str)] = &[
    ("events", "tenant_id"),
    ("event_tags", "tenant_id"),
    ("event_stats", "tenant_id"),
    ("webhooks", "tenant_id"),
    ("webhook_deliveries", "tenant_id"),
    ("domains", "tenant_id"),
    ("dkim_keys", "tenant_id"),
    ("credentials", "tenant_id"),
    ("exports", "tenant_id"),
    ("suppressions", "scope"),
    ("data_keys", "owner"),
];
/// Rows keyed by tenant that may be empty before the deletion, and must be after it.
const TENANT_ROWS_MAYBE: &[(&str, &str)] = &[
    ("domain_checks", "tenant_id"),
    ("guard_states", "tenant_id"),
    ("guard_baselines", "tenant_id"),
    ("guard_cap_lifts", "tenant_id"),
];

/// One tenant of the scenario and what it made.
struct Made {
    id: String,
    /// Its admin key.
    key: String,
    /// A developer key beside it.
    extra_key: String,
    domain_id: String,
    domain: String,
    suppressed: Vec<String>,
    export_id: String,
    /// The export's archive as downloaded before the deletion.
    archive: Vec<u8>,
}

/// `raw` is a pool on the harness's database (`retention::raw`).
pub async fn scenario(h: &Harness, raw: &AnyPool) {
    let mut a = populate(h, "a").await;
    let mut b = populate(h, "b").await;
    let mut conn = connect(h, ENGINE).await;
    let now = h.info.app.now_ms();
    let batch: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|t| tenant_events(&t.id, "before", EVENTS_BEFORE, now))
        .collect();
    assert_eq!(send(&mut conn, 1, batch).await, 1);
    export(h, &mut a).await;
    export(h, &mut b).await;
    for t in [&a, &b] {
        let id = t.id.clone();
        wait_until("the dispatcher's deliveries", || async {
            count(raw, "webhook_deliveries", "tenant_id", &id).await > 0
        })
        .await;
    }
    let bulk = bulk_webhook_history(raw, &a.id, h.info.app.now_ms()).await;

    refusals(h, &a, &b).await;
    let a_rows = counts(raw, &a.id, TENANT_ROWS).await;
    let b_rows = counts(raw, &b.id, TENANT_ROWS).await;
    for (table, n) in a_rows.iter().chain(&b_rows) {
        assert!(*n > 0, "{table}: no rows before the deletion");
    }
    let a_audit = count(raw, "audit_log", "tenant_id", &a.id).await;
    assert!(a_audit > 0);

    delete(h, raw, &a).await;
    after_delete(h, &a, &b).await;
    snapshot(h, &a, &b).await;
    wait_erased(h, &a.id).await;
    erased(raw, &a, &bulk).await;
    assert_eq!(counts(raw, &b.id, TENANT_ROWS).await, b_rows, "B's rows");
    b_reads(h, &b).await;
    late_events(h, raw, &mut conn, &a, &b).await;
    audit(h, raw, &a, &b, a_audit).await;
    let sealer = h.info.app.db.sealer();
    assert!(
        sealer.prepare(Some(&a.id)).await.is_err(),
        "nothing is sealed for a deleted tenant"
    );
    sealer.prepare(Some(&b.id)).await.expect("B still seals");
}

fn ok(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {:?}", r.body);
}

async fn post(h: &Harness, key: &str, path: &str, body: Value, status: u16) -> Value {
    let r = h.call("POST", path, Some(key), Some(body)).await;
    ok(&r, status, &format!("POST {path}"));
    r.body
}

/// A tenant with a domain, a developer key, an SMTP credential, a webhook and suppressions.
async fn populate(h: &Harness, label: &str) -> Made {
    let (id, key) = new_tenant(h, &format!("deletion-{label}")).await;
    let domain = format!("{label}.deletion.test");
    let d = post(h, &key, "/v1/domains", json!({ "name": domain }), 201).await;
    let domain_id = d["id"].as_str().expect("domain id").to_string();
    let body = json!({"kind": "api", "name": "extra", "role": "developer"});
    let c = post(h, &key, "/v1/credentials", body, 201).await;
    let extra_key = c["secret"].as_str().expect("secret").to_string();
    let body = json!({"kind": "smtp", "name": "smtp"});
    post(h, &key, "/v1/credentials", body, 201).await;
    // An address literal (no DNS): its deliveries are made whether or not anything answers.
    let body = json!({"url": format!("https://93.184.216.34/{label}"), "events": ["delivered"]});
    post(h, &key, "/v1/webhooks", body, 201).await;
    let suppressed: Vec<String> = (0..SUPPRESSIONS)
        .map(|i| format!("{label}-gone{i}@dest.test"))
        .collect();
    let body: Vec<Value> = suppressed.iter().map(|a| json!({"address": a})).collect();
    post(h, &key, "/v1/suppressions", Value::from(body), 200).await;
    let r = h.call("GET", "/v1/domains", Some(&extra_key), None).await;
    ok(&r, 200, "the developer key reads");
    Made {
        id,
        key,
        extra_key,
        domain_id,
        domain,
        suppressed,
        export_id: String::new(),
        archive: Vec::new(),
    }
}

/// `n` delivered events of `tenant` (two tags each), messages named after `label`.
fn tenant_events(tenant: &str, label: &str, n: u32, now: i64) -> Vec<petrel_policy::Event> {
    (0..n)
        .map(|i| {
            let message = format!("{tenant}-{label}-{i}");
            event(
                tenant,
                &message,
                0,
                1,
                EventType::Delivered,
                now + i64::from(i),
            )
        })
        .collect()
}

/// Exports the tenant and keeps the archive.
async fn export(h: &Harness, t: &mut Made) {
    let path = format!("/v1/tenants/{}/export", t.id);
    let r = h.call("POST", &path, Some(&t.key), None).await;
    ok(&r, 202, "export");
    t.export_id = r.body["id"].as_str().expect("export id").to_string();
    let got = wait_ready(h, &t.key, &t.id).await;
    assert!(!got.body.is_empty());
    t.archive = got.body;
}

/// More webhook history than one erasure chunk: deliveries made `now` (not pending: the
/// dispatcher leaves them alone; recent: the history purge too) with an attempt each, written
/// under the API. Returns their ids' prefix.
async fn bulk_webhook_history(raw: &AnyPool, tenant: &str, now: i64) -> String {
    let prefix = format!("dlvbulk-{tenant}-");
    let hook: String = sqlx::query("SELECT id FROM webhooks WHERE tenant_id = $1")
        .bind(tenant.to_string())
        .fetch_one(raw)
        .await
        .expect("A's webhook")
        .get("id");
    let rows = usize::try_from(petrel_control::erasure::ERASE_CHUNK_ROWS).expect("rows") + 1;
    let ids: Vec<usize> = (0..rows).collect();
    for chunk in ids.chunks(BULK_INSERT_ROWS) {
        // Literal values made here (ids, numbers); negative seqs stay clear of the counter's.
        let deliveries: Vec<String> = chunk
            .iter()
            .map(|i| {
                let seq = -1 - i64::try_from(*i).expect("seq");
                format!(
                    "('{prefix}{i}', {seq}, '{hook}', '{tenant}', 'test', 'failed', \
                     NULL, NULL, 0, 1, {now}, NULL)"
                )
            })
            .collect();
        let attempts: Vec<String> = chunk
            .iter()
            .map(|i| format!("('{prefix}{i}', 1, {now}, 0, 503, 'busy', 1)"))
            .collect();
        for sql in [
            format!(
                "INSERT INTO webhook_deliveries (id, seq, webhook_id, tenant_id, kind, state, \
                 first_seq, last_seq, event_count, attempts, created_unix_ms, delivered_unix_ms) \
                 VALUES {}",
                deliveries.join(",")
            ),
            format!(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at_unix_ms, ok, \
                 status_code, error, duration_ms) VALUES {}",
                attempts.join(",")
            ),
        ] {
            sqlx::query(&sql).execute(raw).await.expect("bulk history");
        }
    }
    prefix
}

async fn count(raw: &AnyPool, table: &str, column: &str, value: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = $1");
    sqlx::query(&sql)
        .bind(value.to_string())
        .fetch_one(raw)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get("n")
}

async fn counts(raw: &AnyPool, tenant: &str, tables: &[(&str, &str)]) -> Vec<(String, i64)> {
    let mut out = Vec::with_capacity(tables.len());
    for (table, column) in tables {
        out.push((table.to_string(), count(raw, table, column, tenant).await));
    }
    out
}

/// Polls `f` until it holds (bounded by [`WAIT`]).
async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn body(confirm: &str) -> Option<Value> {
    Some(json!({"confirm": confirm, "queued": "drop"}))
}

/// Refused deletions; none of them deletes anything.
async fn refusals(h: &Harness, a: &Made, b: &Made) {
    let path = format!("/v1/tenants/{}", a.id);
    let r = h.call("DELETE", &path, Some(&b.key), body(&a.id)).await;
    ok(&r, 403, "another tenant's admin");
    let op_admin = json!({"kind": "api", "name": "ops admin", "role": "admin"});
    let c = post(h, &h.owner_key, "/v1/credentials", op_admin, 201).await;
    let op_admin = c["secret"].as_str().expect("secret");
    let r = h.call("DELETE", &path, Some(op_admin), body(&a.id)).await;
    ok(&r, 403, "the operator's admin (not an owner)");
    let r = h.owner("DELETE", &path, body(&b.id)).await;
    ok(&r, 422, "confirm names another tenant");
    assert!(r.body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("confirm"));
    let r = h.owner("GET", "/v1/tenants", None).await;
    let operator = r
        .body
        .as_array()
        .expect("tenants")
        .iter()
        .find(|t| t["is_operator"] == true);
    let operator = operator.expect("the operator tenant")["id"]
        .as_str()
        .expect("id");
    let r = h
        .owner("DELETE", &format!("/v1/tenants/{operator}"), body(operator))
        .await;
    ok(&r, 409, "the operator tenant");
    for (what, bad) in [
        (
            "unknown field",
            json!({"confirm": a.id, "queued": "drop", "force": true}),
        ),
        ("missing queued", json!({"confirm": a.id})),
        ("bad queued", json!({"confirm": a.id, "queued": "keep"})),
    ] {
        let r = h.owner("DELETE", &path, Some(bad)).await;
        ok(&r, 422, what);
        assert!(r.body["error"]["code"].is_string(), "{what}: {:?}", r.body);
    }
    let r = h
        .owner("DELETE", "/v1/tenants/ten_nobody", body("ten_nobody"))
        .await;
    ok(&r, 404, "no such tenant");
    let r = h.owner("GET", &path, None).await;
    ok(&r, 200, "A still there");
}

/// The deletion: 202 with what it removed, counted beforehand under the API.
async fn delete(h: &Harness, raw: &AnyPool, a: &Made) {
    let mut want = serde_json::Map::new();
    for table in ["domains", "dkim_keys", "credentials", "webhooks"] {
        want.insert(
            table.into(),
            json!(count(raw, table, "tenant_id", &a.id).await),
        );
    }
    // Its admin key, the developer key, the SMTP credential; one domain, one webhook.
    assert_eq!(want["credentials"], 3);
    assert_eq!(want["domains"], 1);
    assert_eq!(want["webhooks"], 1);
    let r = h
        .owner("DELETE", &format!("/v1/tenants/{}", a.id), body(&a.id))
        .await;
    ok(&r, 202, "delete");
    assert_eq!(r.body["tenant_id"], a.id.as_str());
    assert_eq!(r.body["queued"], "drop");
    assert!(r.body["deleted_unix_ms"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(r.body["removed"], Value::Object(want), "{:?}", r.body);
}

/// The API right after the deletion.
async fn after_delete(h: &Harness, a: &Made, b: &Made) {
    let path = format!("/v1/tenants/{}", a.id);
    let r = h.owner("GET", &path, None).await;
    ok(&r, 410, "owners learn of the deletion");
    assert_eq!(r.body["error"]["details"]["tenant_id"], a.id.as_str());
    assert_eq!(r.body["error"]["details"]["queued"], "drop");
    assert!(r.body["error"]["details"].get("removed").is_none());
    let r = h.call("GET", &path, Some(&b.key), None).await;
    ok(&r, 404, "anyone else: no such tenant");
    for key in [&a.key, &a.extra_key] {
        let r = h.call("GET", "/v1/domains", Some(key), None).await;
        ok(&r, 401, "a deleted tenant's key");
    }
    let r = h.owner("GET", "/v1/tenants", None).await;
    let listed = ids(&r.body, "id");
    assert!(!listed.contains(&a.id), "{listed:?}");
    assert!(listed.contains(&b.id), "{listed:?}");
    let r = h.owner("DELETE", &path, body(&a.id)).await;
    ok(&r, 404, "deleted already");
}

/// The policy the engines get: A listed as deleted (drop), none of its rows; B's all there.
async fn snapshot(h: &Harness, a: &Made, b: &Made) {
    let app = &h.info.app;
    let snap = petrel_control::snapshot::build(&app.db, app.now_ms(), &app.settings)
        .await
        .expect("snapshot");
    let listed: Vec<_> = snap
        .deleted_tenants
        .iter()
        .filter(|d| d.id == a.id)
        .collect();
    assert_eq!(listed.len(), 1, "{:?}", snap.deleted_tenants);
    assert!(!listed[0].bounce_queued);
    assert!(snap.deleted_tenants.iter().all(|d| d.id != b.id));
    assert!(snap.tenants.iter().all(|t| t.id != a.id));
    assert!(snap.tenants.iter().any(|t| t.id == b.id));
    assert!(snap.domains.iter().all(|d| d.tenant_id != a.id));
    assert!(snap
        .domains
        .iter()
        .any(|d| d.name == b.domain && d.tenant_id == b.id));
    assert!(snap.credentials.iter().all(|c| c.tenant_id != a.id));
    let b_creds = snap
        .credentials
        .iter()
        .filter(|c| c.tenant_id == b.id)
        .count();
    assert_eq!(b_creds, 3, "B's admin, developer and SMTP credentials");
}

/// Waits until `GET /v1/tenants/{id}` reports the erasure finished.
async fn wait_erased(h: &Harness, id: &str) {
    let path = format!("/v1/tenants/{id}");
    wait_until("the erasure", || async {
        let r = h.owner("GET", &path, None).await;
        ok(&r, 410, "deleted");
        r.body["error"]["details"]["erased_unix_ms"].is_i64()
    })
    .await;
}

/// No row of A left anywhere, each of its suppressions logged as removed.
async fn erased(raw: &AnyPool, a: &Made, bulk: &str) {
    for (table, n) in counts(raw, &a.id, TENANT_ROWS).await {
        assert_eq!(n, 0, "{table}: A's rows left");
    }
    for (table, n) in counts(raw, &a.id, TENANT_ROWS_MAYBE).await {
        assert_eq!(n, 0, "{table}: A's rows left");
    }
    assert_eq!(
        count(raw, "export_chunks", "export_id", &a.export_id).await,
        0
    );
    let left: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM webhook_attempts WHERE delivery_id LIKE $1")
            .bind(format!("{bulk}%"))
            .fetch_one(raw)
            .await
            .expect("attempts")
            .get("n");
    assert_eq!(left, 0, "A's webhook attempts left");
    let log: Vec<(String, String)> =
        sqlx::query("SELECT address, op FROM suppression_changes WHERE scope = $1 ORDER BY seq")
            .bind(a.id.clone())
            .fetch_all(raw)
            .await
            .expect("suppression log")
            .iter()
            .map(|r| (r.get("address"), r.get("op")))
            .collect();
    for address in &a.suppressed {
        let last = log.iter().rev().find(|(a, _)| a == address);
        assert_eq!(
            last.map(|(_, op)| op.as_str()),
            Some("remove"),
            "{address}: {log:?}"
        );
    }
}

/// B's API reads what it had.
async fn b_reads(h: &Harness, b: &Made) {
    let r = h.call("GET", "/v1/domains", Some(&b.key), None).await;
    ok(&r, 200, "B's domains");
    assert_eq!(ids(&r.body, "id"), vec![b.domain_id.clone()]);
    let r = h
        .call("GET", "/v1/events?limit=100", Some(&b.key), None)
        .await;
    ok(&r, 200, "B's events");
    let n = r.body["events"].as_array().expect("events").len();
    assert_eq!(n, EVENTS_BEFORE as usize);
    let r = h
        .call("GET", "/v1/suppressions?limit=100", Some(&b.key), None)
        .await;
    ok(&r, 200, "B's suppressions");
    let mut got = ids(&r.body["suppressions"], "address");
    got.sort();
    assert_eq!(got, b.suppressed);
    let got = wait_ready(h, &b.key, &b.id).await;
    assert_eq!(got.body, b.archive, "B's export downloads as before");
}

/// Events for A after the deletion: acknowledged, not stored; B's in the same batch stored.
async fn late_events(
    h: &Harness,
    raw: &AnyPool,
    conn: &mut super::events::Conn,
    a: &Made,
    b: &Made,
) {
    let now = h.info.app.now_ms();
    let b_before = count(raw, "events", "tenant_id", &b.id).await;
    let mut batch = tenant_events(&a.id, "late", 3, now);
    batch.extend(tenant_events(&b.id, "late", 1, now));
    assert_eq!(send(conn, 2, batch).await, 2, "acknowledged");
    assert_eq!(count(raw, "events", "tenant_id", &a.id).await, 0);
    assert_eq!(count(raw, "event_tags", "tenant_id", &a.id).await, 0);
    assert_eq!(count(raw, "event_stats", "tenant_id", &a.id).await, 0);
    assert_eq!(count(raw, "events", "tenant_id", &b.id).await, b_before + 1);
}

/// A's audit rows kept and redacted, one `tenant.delete` row, the chain verifying.
async fn audit(h: &Harness, raw: &AnyPool, a: &Made, b: &Made, a_rows: i64) {
    use petrel_control::audit::{REDACTED, REDACTED_FIELD};
    assert_eq!(count(raw, "audit_log", "tenant_id", &a.id).await, a_rows);
    let r = h.owner("GET", "/v1/audit-log?limit=1000", None).await;
    ok(&r, 200, "audit log");
    let rows = r.body.as_array().expect("rows");
    let of_a = rows_of(rows, &a.id);
    assert_eq!(of_a.len() as i64, a_rows);
    for row in &of_a {
        assert_eq!(row["target"], REDACTED_FIELD, "{row}");
        assert_eq!(row["remote_addr"], REDACTED_FIELD, "{row}");
        for payload in [&row["before"], &row["after"]] {
            assert!(payload.is_null() || *payload == REDACTED, "{row}");
        }
    }
    assert!(
        of_a.iter().any(|r| r["after"] == REDACTED),
        "payloads were there"
    );
    let of_b = rows_of(rows, &b.id);
    assert!(!of_b.is_empty());
    assert!(
        of_b.iter().all(|r| r["target"] != REDACTED_FIELD),
        "B's rows read"
    );
    let r = h
        .owner("GET", "/v1/audit-log?action=tenant.delete&limit=100", None)
        .await;
    ok(&r, 200, "tenant.delete rows");
    let deletes: Vec<&Value> = r
        .body
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["target"] == a.id.as_str())
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0]["tenant_id"].is_null(), "{:?}", deletes[0]);
    assert_eq!(deletes[0]["after"]["tenant_id"], a.id.as_str());
    let r = h.owner("GET", "/v1/audit-log/verify", None).await;
    ok(&r, 200, "verify");
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
}

fn rows_of<'a>(rows: &'a [Value], tenant: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["tenant_id"] == tenant).collect()
}
