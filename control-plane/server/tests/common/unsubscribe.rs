//! Issue 14 scenarios run against both stores (SQLite in `unsubscribe.rs`, PostgreSQL in
//! `pg.rs`): the tenant's `list_unsubscribe` setting, one-click unsubscribe (`/u/{token}`),
//! and the DMARC summary of a domain.

use std::time::{Duration, Instant};

use petrel_control::store::{events, token_keys, Db};
use petrel_policy::event::{Event, EventType};
use petrel_reports::{RecipientRef, TokenData, VerpKey, VerpKeys};
use petrel_testkit::http::{Request, Response};
use serde_json::{json, Value};

use super::scenarios::new_tenant;
use super::suppressions::db;
use super::Harness;

/// How long the unsubscribed event and its suppression may take to show.
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);
const RECIPIENT: &str = "Reader@Dest.Example";

/// A plain HTTP request without credentials (what a mailbox provider sends).
async fn public(h: &Harness, req: Request) -> Response {
    let tcp = tokio::net::TcpStream::connect(h.info.api_addr)
        .await
        .expect("connect api");
    req.send_over(tcp, &h.info.api_addr.to_string())
        .await
        .expect("answer")
}

async fn post(h: &Harness, path: &str, body: &str) -> Response {
    let req = Request::new("POST", path)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.as_bytes().to_vec());
    public(h, req).await
}

/// The deployment's keys, as the engine builds them from the snapshot.
async fn keys(db: &Db) -> VerpKeys {
    let rows = token_keys::active(&mut db.conn().await.expect("conn"), db.sealer())
        .await
        .expect("keys");
    let current = rows.last().expect("a key exists from the first start");
    VerpKeys::new(
        VerpKey::new(current.id, &current.secret).expect("key"),
        vec![],
    )
    .expect("keys")
}

/// `PATCH /v1/tenants/{id}` turns `list_unsubscribe` on and off, audited; only owners may.
pub async fn tenant_setting(h: &Harness) {
    let (tenant, key) = new_tenant(h, "lu-setting").await;
    let path = format!("/v1/tenants/{tenant}");
    let r = h.owner("GET", &path, None).await;
    assert_eq!(r.body["list_unsubscribe"], false, "off by default");
    let r = h
        .owner("PATCH", &path, Some(json!({"list_unsubscribe": true})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["list_unsubscribe"], true);
    assert_eq!(
        h.owner("GET", &path, None).await.body["list_unsubscribe"],
        true
    );
    // An empty patch changes nothing; an unknown field is refused.
    let r = h.owner("PATCH", &path, Some(json!({}))).await;
    assert_eq!(r.body["list_unsubscribe"], true);
    let r = h.owner("PATCH", &path, Some(json!({"bogus": 1}))).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    // A tenant's own admin key is not an owner's.
    let r = h
        .call(
            "PATCH",
            &path,
            Some(&key),
            Some(json!({"list_unsubscribe": false})),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = h
        .owner("PATCH", "/v1/tenants/ten_0000000000000000", Some(json!({})))
        .await;
    assert_eq!(r.status, 404);
    let audit = h.owner("GET", "/v1/audit-log?limit=1000", None).await;
    let text = audit.body.to_string();
    assert!(text.contains("tenant.update"), "{text}");
}

/// The one-click flow: GET shows a page and changes nothing; POST stores one `unsubscribed`
/// event and the suppression, repeats are no-ops; forged tokens and wrong bodies are refused
/// with JSON errors; too many forgeries from one address answer 429.
pub async fn one_click(h: &Harness, database_url: Option<&str>) {
    let db = db(h, database_url).await;
    let (tenant, key) = new_tenant(h, "lu-click").await;
    let keys = keys(&db).await;
    let data = TokenData {
        tenant_id: tenant.clone(),
        message_id: 0x0100_0000_0000_0007,
        recipient: RecipientRef::Address(RECIPIENT.into()),
    };
    let token = keys.one_click_token(&data).expect("token");
    let path = format!("/u/{token}");

    let page = public(h, Request::get(&path)).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(page.header("set-cookie").is_none());
    let html = page.text();
    assert!(html.contains("<form method=\"post\">"), "{html}");
    assert!(html.contains("name=\"List-Unsubscribe\" value=\"One-Click\""));
    let events_path = "/v1/events?type=unsubscribed";
    let r = h.call("GET", events_path, Some(&key), None).await;
    assert_eq!(
        r.body["events"].as_array().map(Vec::len),
        Some(0),
        "GET has no effect"
    );

    let r = post(h, &path, "List-Unsubscribe=One-Click").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["unsubscribed"], true);
    assert!(r.header("set-cookie").is_none());
    // The event and the suppression are there at once (same transaction); poll anyway.
    let deadline = Instant::now() + VISIBLE_WITHIN;
    let event = loop {
        let r = h.call("GET", events_path, Some(&key), None).await;
        if let Some(e) = r.body["events"].as_array().and_then(|a| a.first()) {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no unsubscribed event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["recipient"], RECIPIENT);
    assert_eq!(event["message_id"], "0100000000000007");
    assert_eq!(event["details"]["method"], "one_click");
    let s = h.call("GET", "/v1/suppressions", Some(&key), None).await;
    let text = s.body.to_string().to_lowercase();
    assert!(text.contains("reader@dest.example"), "{text}");
    assert!(text.contains("unsubscribe"), "{text}");

    // Repeats (same token, upper case, the POST from the page) are no-ops.
    for p in [path.clone(), format!("/u/{}", token.to_uppercase())] {
        let r = post(h, &p, "List-Unsubscribe=One-Click").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = h.call("GET", events_path, Some(&key), None).await;
    assert_eq!(r.body["events"].as_array().map(Vec::len), Some(1));

    // A wrong body, an oversized one.
    let r = post(h, &path, "unsubscribe=yes").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "bad_request");
    let big = format!("List-Unsubscribe=One-Click&x={}", "a".repeat(2000));
    assert_eq!(post(h, &path, &big).await.status, 413);

    // Forged: another key, an altered tag, a bounce token, an index token, garbage.
    let other = VerpKeys::new(VerpKey::new(1, &[5; 32]).expect("k"), vec![]).expect("keys");
    let by_index = TokenData {
        recipient: RecipientRef::Index(0),
        ..data.clone()
    };
    let mut altered = token.clone().into_bytes();
    let i = altered.len() - 2;
    altered[i] = if altered[i] == b'a' { b'b' } else { b'a' };
    let forged = [
        other.one_click_token(&data).expect("token"),
        String::from_utf8(altered).expect("ascii"),
        keys.encode_token(petrel_reports::Purpose::Bounce, &data)
            .expect("token"),
        keys.one_click_token(&by_index).expect("token"),
        "not-base32!".to_string(),
    ];
    for f in &forged {
        let r = post(h, &format!("/u/{f}"), "List-Unsubscribe=One-Click").await;
        assert_eq!(r.status, 404, "{f}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "not_found");
        let r = public(h, Request::get(&format!("/u/{f}"))).await;
        assert_eq!(r.status, 404);
    }
    let r = h.call("GET", events_path, Some(&key), None).await;
    assert_eq!(r.body["events"].as_array().map(Vec::len), Some(1));
    // 10 forgeries so far (POST and GET each); the limit is per window.
    let limit = petrel_control::api::unsubscribe::ONE_CLICK_FAILURES_PER_WINDOW_MAX;
    let mut statuses = Vec::new();
    for _ in 0..limit {
        statuses.push(
            post(h, "/u/aaaa", "List-Unsubscribe=One-Click")
                .await
                .status,
        );
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // While locked out, even a valid token waits (the address is guessing).
    assert_eq!(
        post(h, &path, "List-Unsubscribe=One-Click").await.status,
        429
    );
    // The admin API is not locked out by it.
    assert_eq!(
        h.call("GET", events_path, Some(&key), None).await.status,
        200
    );
}

fn dmarc_event(tenant: &str, domain: &str, n: u32, ts: i64, details: Value) -> Event {
    let kind = EventType::Other("dmarc_report".into());
    Event {
        id: Event::stable_id("engine-dmarc", &format!("{tenant}-{domain}"), n, 0, &kind),
        kind,
        timestamp_ms: ts,
        tenant_id: Some(tenant.into()),
        message_id: None,
        rfc822_message_id: None,
        sender: String::new(),
        from_domain: Some(domain.into()),
        recipient: None,
        tags: vec![],
        metadata: None,
        attempt: 0,
        remote: None,
        reply: None,
        bounce: None,
        is_async: false,
        details: details.as_object().cloned(),
    }
}

fn row(ip: &str, count: u64, disposition: &str, dkim: &str, spf: &str, dmarc: &str) -> Value {
    json!({"report_id": "r1", "org_name": "receiver.example", "begin": 1, "end": 2,
        "source_ip": ip, "count": count, "disposition": disposition,
        "dkim": dkim, "spf": spf, "dmarc": dmarc})
}

/// `GET /v1/domains/{id}/dmarc`: the stored report rows of one domain of the caller's tenant,
/// summed by source IP and disposition, in a time range.
pub async fn dmarc(h: &Harness, database_url: Option<&str>) {
    let db = db(h, database_url).await;
    let (tenant, key) = new_tenant(h, "dmarc-co").await;
    let (other_tenant, other_key) = new_tenant(h, "dmarc-other").await;
    let mut ids = Vec::new();
    for (k, name) in [
        (&key, "dmarc.example.test"),
        (&other_key, "other.example.test"),
    ] {
        let r = h
            .call(
                "POST",
                "/v1/domains",
                Some(k),
                Some(json!({"name": name, "algorithm": "ed25519"})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        ids.push(r.body["id"].as_str().expect("id").to_string());
    }
    let t0 = petrel_control::now_unix_ms() - 3_600_000;
    let d = "dmarc.example.test";
    let batch = vec![
        dmarc_event(
            &tenant,
            d,
            1,
            t0,
            row("192.0.2.1", 10, "none", "pass", "pass", "pass"),
        ),
        dmarc_event(
            &tenant,
            d,
            2,
            t0 + 1,
            row("192.0.2.1", 5, "none", "fail", "pass", "pass"),
        ),
        dmarc_event(
            &tenant,
            d,
            3,
            t0 + 2,
            row("192.0.2.1", 2, "reject", "fail", "fail", "fail"),
        ),
        dmarc_event(
            &tenant,
            d,
            4,
            t0 + 3,
            row("198.51.100.9", 7, "quarantine", "fail", "fail", "fail"),
        ),
        // Outside a narrow range, another domain of the tenant, another tenant's same name.
        dmarc_event(
            &tenant,
            d,
            5,
            t0 + 600_000,
            row("203.0.113.5", 100, "none", "pass", "pass", "pass"),
        ),
        dmarc_event(
            &tenant,
            "elsewhere.test",
            6,
            t0,
            row("192.0.2.1", 1000, "none", "pass", "pass", "pass"),
        ),
        dmarc_event(
            &other_tenant,
            d,
            7,
            t0,
            row("192.0.2.1", 1000, "none", "pass", "pass", "pass"),
        ),
        // A row without the facts is skipped, not an error.
        dmarc_event(&tenant, d, 8, t0 + 4, json!({"note": "x"})),
    ];
    let mut tx = db.begin_write().await.expect("begin");
    events::insert_batch(&mut tx, "engine-dmarc", &batch, t0)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");

    let path = format!("/v1/domains/{}/dmarc", ids[0]);
    let narrow = format!("{path}?since={t0}&until={}", t0 + 10);
    let r = h.call("GET", &narrow, Some(&key), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let s = &r.body;
    assert_eq!(s["domain"], d);
    assert_eq!(
        (s["rows"].as_u64(), s["messages"].as_u64()),
        (Some(5), Some(24))
    );
    assert_eq!(
        (s["pass"].as_u64(), s["fail"].as_u64()),
        (Some(15), Some(9))
    );
    assert_eq!(s["truncated"], false);
    let sources = s["sources"].as_array().expect("sources");
    let got: Vec<(String, String, u64, u64, u64, u64)> = sources
        .iter()
        .map(|x| {
            (
                x["source_ip"].as_str().unwrap_or("").to_string(),
                x["disposition"].as_str().unwrap_or("").to_string(),
                x["pass"].as_u64().unwrap_or(0),
                x["fail"].as_u64().unwrap_or(0),
                x["dkim_pass"].as_u64().unwrap_or(0),
                x["spf_pass"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("192.0.2.1".into(), "none".into(), 15, 0, 10, 15),
            ("192.0.2.1".into(), "reject".into(), 0, 2, 0, 0),
            ("198.51.100.9".into(), "quarantine".into(), 0, 7, 0, 0),
        ]
    );
    // The default range (30 days to now) takes the later row too.
    let r = h.call("GET", &path, Some(&key), None).await;
    assert_eq!(r.body["messages"].as_u64(), Some(124), "{:?}", r.body);
    // Another tenant's domain id is a 404; a reversed range a 400; the other tenant's own
    // domain has no rows.
    let r = h.call("GET", &path, Some(&other_key), None).await;
    assert_eq!(r.status, 404);
    let r = h
        .call("GET", &format!("{path}?since=10&until=5"), Some(&key), None)
        .await;
    assert_eq!(r.status, 400);
    let r = h
        .call(
            "GET",
            &format!("/v1/domains/{}/dmarc", ids[1]),
            Some(&other_key),
            None,
        )
        .await;
    assert_eq!(r.body["rows"].as_u64(), Some(0), "{:?}", r.body);
}
