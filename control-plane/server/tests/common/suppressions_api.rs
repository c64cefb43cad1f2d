//! Suppression API scenarios run against both stores (SQLite in `suppressions.rs`, PostgreSQL
//! in `pg.rs`): scoping, roles of the list, import with bad lines, export in both formats, and a
//! million lines streamed in and out.

use petrel_testkit::http::{Request, Response};
use serde_json::{json, Value};

use super::scenarios::new_tenant;
use super::{Harness, Resp};

fn ok(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {:?}", r.body);
}

/// A request with a raw body and content type.
pub async fn raw(
    h: &Harness,
    method: &str,
    path: &str,
    key: &str,
    ct: &str,
    body: &[u8],
) -> Response {
    let tcp = tokio::net::TcpStream::connect(h.info.api_addr)
        .await
        .expect("connect");
    let mut req = Request::new(method, path).bearer(key).body(body.to_vec());
    if !ct.is_empty() {
        req = req.header("Content-Type", ct);
    }
    req.send_over(tcp, &h.info.api_addr.to_string())
        .await
        .expect("answer")
}

fn addresses(page: &Value) -> Vec<String> {
    page["suppressions"]
        .as_array()
        .expect("suppressions")
        .iter()
        .map(|s| s["address"].as_str().expect("address").to_string())
        .collect()
}

/// The API: add, search, delete, tenant isolation, the operator-wide list, audit rows, import
/// with bad lines, export in both formats and back.
pub async fn api(h: &Harness) {
    let (a, a_key) = new_tenant(h, "supp-a").await;
    let (b, b_key) = new_tenant(h, "supp-b").await;
    let r = h
        .call(
            "POST",
            "/v1/suppressions",
            Some(&a_key),
            Some(json!({"address": " Ann@Example.test "})),
        )
        .await;
    ok(&r, 200, "add one");
    assert_eq!(r.body["suppressions"][0]["address"], "ann@example.test");
    assert_eq!(r.body["suppressions"][0]["reason"], "manual");
    assert_eq!(r.body["suppressions"][0]["scope"], a.as_str());
    let r = h
        .call(
            "POST",
            "/v1/suppressions",
            Some(&a_key),
            Some(json!([
                {"address": "bob@example.test", "reason": "unsubscribe"},
                {"address": "cy@other.test", "reason": "complaint", "expires_unix_ms": 1_893_456_000_000i64}
            ])),
        )
        .await;
    ok(&r, 200, "add a list");
    assert_eq!(addresses(&r.body).len(), 2);
    for (body, why) in [
        (json!({"address": "not-an-address"}), "bad address"),
        (
            json!({"address": "x@y.test", "reason": "bounce"}),
            "bad reason",
        ),
        (
            json!({"address": "x@y.test", "expires_unix_ms": 1}),
            "past expiry",
        ),
        (json!([]), "empty list"),
        (
            Value::Array(
                (0..101)
                    .map(|i| json!({"address": format!("u{i}@x.test")}))
                    .collect(),
            ),
            "too many",
        ),
    ] {
        let r = h
            .call("POST", "/v1/suppressions", Some(&a_key), Some(body))
            .await;
        assert_eq!(r.status, 422, "{why}: {:?}", r.body);
    }
    // Search.
    let get = |q: String, key: String| async move {
        h.call("GET", &format!("/v1/suppressions{q}"), Some(&key), None)
            .await
    };
    let r = get("?domain=Example.test".into(), a_key.clone()).await;
    assert_eq!(addresses(&r.body), ["ann@example.test", "bob@example.test"]);
    let r = get("?address=BOB@example.test".into(), a_key.clone()).await;
    assert_eq!(addresses(&r.body), ["bob@example.test"]);
    let r = get("?prefix=c".into(), a_key.clone()).await;
    assert_eq!(addresses(&r.body), ["cy@other.test"]);
    let r = get("?limit=2".into(), a_key.clone()).await;
    let cursor = r.body["next_cursor"].as_str().expect("cursor").to_string();
    let r = get(format!("?limit=2&cursor={cursor}"), a_key.clone()).await;
    assert_eq!(addresses(&r.body), ["cy@other.test"]);
    assert!(r.body.get("next_cursor").is_none());
    ok(
        &get("?prefix=a&domain=x.test".into(), a_key.clone()).await,
        400,
        "two searches",
    );
    ok(
        &get("?cursor=bm9wZQ".into(), a_key.clone()).await,
        400,
        "bad cursor",
    );
    // Isolation: B sees none of A's, cannot name A, cannot delete A's entry.
    let r = get(String::new(), b_key.clone()).await;
    assert_eq!(addresses(&r.body), Vec::<String>::new());
    ok(
        &get(format!("?tenant={a}"), b_key.clone()).await,
        404,
        "B names A",
    );
    ok(
        &get("?tenant=*".into(), b_key.clone()).await,
        404,
        "B names the operator list",
    );
    let r = h
        .call(
            "DELETE",
            "/v1/suppressions/ann@example.test",
            Some(&b_key),
            None,
        )
        .await;
    ok(&r, 404, "B deletes A's");
    // The owner manages any tenant's list and the operator-wide one.
    let r = h
        .owner("GET", &format!("/v1/suppressions?tenant={a}"), None)
        .await;
    assert_eq!(addresses(&r.body).len(), 3);
    let r = h
        .owner(
            "POST",
            "/v1/suppressions?tenant=*",
            Some(json!({"address": "all@example.test"})),
        )
        .await;
    ok(&r, 200, "operator-wide add");
    assert_eq!(r.body["suppressions"][0]["scope"], "*");
    let r = h
        .owner(
            "POST",
            "/v1/suppressions?tenant=ten_nobody",
            Some(json!({"address": "x@y.test"})),
        )
        .await;
    ok(&r, 404, "unknown tenant");
    let r = get(String::new(), a_key.clone()).await;
    assert_eq!(
        addresses(&r.body).len(),
        3,
        "the operator list is not the tenant's"
    );
    // Delete, in any case; then it is gone.
    let r = h
        .call(
            "DELETE",
            "/v1/suppressions/ANN@example.test",
            Some(&a_key),
            None,
        )
        .await;
    ok(&r, 204, "delete");
    let r = h
        .call(
            "DELETE",
            "/v1/suppressions/ann@example.test",
            Some(&a_key),
            None,
        )
        .await;
    ok(&r, 404, "deleted already");
    // Audit rows for each change, in the tenant's log (the operator list's in the owner's).
    let r = h.call("GET", "/v1/audit-log", Some(&a_key), None).await;
    let actions: Vec<&str> = r
        .body
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for want in ["suppression.add", "suppression.delete"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    // Import: CSV with bad lines, then JSON lines; export both ways and import back into B.
    let csv = "address,reason,expires_at\n\
               one@imp.test,hard_bounce,\n\
               nobody,manual,\n\
               two@imp.test,,2031-01-01T00:00:00Z\n\
               three@imp.test,bounce,\n\
               \n\
               four@imp.test,manual,1\n\
               five@imp.test,complaint\n\
               Six@Imp.test,unsubscribe,\n";
    let r = raw(
        h,
        "POST",
        "/v1/suppressions/import",
        &a_key,
        "text/csv",
        csv.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["lines"], 8);
    assert_eq!(report["imported"], 3);
    assert_eq!(report["failed"], 4);
    assert_eq!(report["complete"], true);
    let bad: Vec<u64> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["line"].as_u64().expect("n"))
        .collect();
    assert_eq!(bad, [3, 5, 7, 8]);
    let ndjson = "{\"address\": \"seven@imp.test\", \"reason\": \"complaint\"}\n{\"address\": 7}\n";
    let r = raw(
        h,
        "POST",
        "/v1/suppressions/import",
        &a_key,
        "application/x-ndjson",
        ndjson.as_bytes(),
    )
    .await;
    let report = r.json();
    assert_eq!(
        (report["imported"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let r = raw(
        h,
        "POST",
        "/v1/suppressions/import",
        &a_key,
        "application/json",
        b"{}",
    )
    .await;
    assert_eq!(r.status, 415);
    let r = raw(
        h,
        "POST",
        "/v1/suppressions/import",
        &a_key,
        "text/csv",
        b"reason\nmanual\n",
    )
    .await;
    assert_eq!(r.status, 400, "no address column");
    let r = raw(h, "GET", "/v1/suppressions/export", &a_key, "", b"").await;
    assert_eq!(r.header("content-type"), Some("text/csv"));
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "address,reason,expires_at,created_at,source_event_id"
    );
    assert_eq!(lines.len(), 1 + 2 + 4, "bob, cy and four imported: {text}");
    assert!(text.contains("six@imp.test,unsubscribe,"));
    assert!(text.contains("two@imp.test,manual,2031-01-01T00:00:00Z,"));
    let r = raw(
        h,
        "POST",
        "/v1/suppressions/import",
        &b_key,
        "text/csv",
        text.as_bytes(),
    )
    .await;
    assert_eq!(
        (r.json()["imported"].as_u64(), r.json()["failed"].as_u64()),
        (Some(6), Some(0))
    );
    let r = raw(
        h,
        "GET",
        "/v1/suppressions/export?format=ndjson",
        &b_key,
        "",
        b"",
    )
    .await;
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    // The export is data access: audited (issue 16).
    let audit = h
        .call(
            "GET",
            "/v1/audit-log?action=suppressions.export",
            Some(&b_key),
            None,
        )
        .await;
    assert_eq!(
        audit.body.as_array().map(Vec::len),
        Some(1),
        "{:?}",
        audit.body
    );
    assert_eq!(audit.body[0]["after"]["format"], "ndjson");
    let exported: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(exported.len(), 6);
    let cy = exported
        .iter()
        .find(|e| e["address"] == "cy@other.test")
        .expect("cy");
    assert_eq!(cy["reason"], "complaint");
    assert_eq!(cy["expires_at"], "2030-01-01T00:00:00Z");
    let r = raw(
        h,
        "POST",
        "/v1/suppressions/import",
        &a_key,
        "application/x-ndjson",
        r.text().as_bytes(),
    )
    .await;
    assert_eq!(r.json()["failed"], 0, "the ndjson export imports back");
    let r = raw(
        h,
        "GET",
        "/v1/suppressions/export?format=xml",
        &b_key,
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    // The purge task's work: an expired entry becomes a removal, old log rows go.
    let now = petrel_control::now_unix_ms();
    let r = h
        .call(
            "POST",
            "/v1/suppressions",
            Some(&b_key),
            Some(json!({"address": "brief@x.test", "expires_unix_ms": now + 60_000})),
        )
        .await;
    ok(&r, 200, "add with an expiry");
    let app = &h.info.app;
    let p = petrel_control::suppressions::purge(app, now + 120_000)
        .await
        .expect("purge");
    assert_eq!((p.expired, p.changes), (1, 0));
    let week = petrel_control::store::suppressions::CHANGES_RETENTION_DAYS * 86_400_000;
    let p = petrel_control::suppressions::purge(app, now + week + 240_000)
        .await
        .expect("purge");
    assert!(p.changes > 0, "{p:?}");
    let r = h
        .call(
            "DELETE",
            "/v1/suppressions/brief@x.test",
            Some(&b_key),
            None,
        )
        .await;
    ok(&r, 404, "purged");
    let _ = b;
}

/// Lines of the million-line import.
pub const MILLION: u64 = 1_000_000;
/// Lines written per chunk of the streamed request body.
const LINES_PER_CHUNK: u64 = 1_000;

/// A `/proc/self/status` value in KiB.
fn proc_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Imports [`MILLION`] CSV lines (every 1000th bad) as a chunked body written as it is
/// generated, then exports them streamed and counts them. With `padding` each line carries that
/// many bytes in the ignored `source_event_id` column, and with `rss_growth_max_mib` the
/// process's peak RSS (this test's client and the control plane in it) may grow by at most that
/// while the import runs: a body several times larger shows the import holds none of it (run
/// it against PostgreSQL, whose page cache is in another process).
pub async fn million(h: &Harness, padding: usize, rss_growth_max_mib: Option<u64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, key) = new_tenant(h, "million").await;
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // resets the peak (VmHWM)
    let rss_before = proc_kib("VmRSS:");
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(h.info.api_addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/suppressions/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: text/csv\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let pad = "p".repeat(padding);
    let mut body_bytes = 0u64;
    let mut line = 0u64;
    while line < MILLION {
        let mut chunk = String::with_capacity(64 * LINES_PER_CHUNK as usize);
        if line == 0 {
            chunk.push_str("address,reason,source_event_id\n");
        }
        for _ in 0..LINES_PER_CHUNK {
            line += 1;
            if line.is_multiple_of(1_000) {
                chunk.push_str(&format!("bad{line},manual,{pad}\n"));
            } else {
                chunk.push_str(&format!("u{line}@m{}.test,hard_bounce,{pad}\n", line % 997));
            }
        }
        body_bytes += chunk.len() as u64;
        s.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .expect("chunk");
    }
    s.write_all(b"0\r\n\r\n").await.expect("end");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("answer");
    let import_secs = started.elapsed().as_secs_f64();
    let peak_growth_mib = proc_kib("VmHWM:").saturating_sub(rss_before) / 1024;
    let r = Response::parse(&raw).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["lines"], MILLION);
    assert_eq!(report["imported"], MILLION - MILLION / 1_000);
    assert_eq!(report["failed"], MILLION / 1_000);
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(100),
        "the report is bounded"
    );
    assert_eq!(report["errors"][0]["line"], 1_001);
    eprintln!(
        "import: {MILLION} lines, {} MiB of body in {import_secs:.1} s; peak RSS +{peak_growth_mib} MiB",
        body_bytes >> 20
    );
    if let Some(max) = rss_growth_max_mib {
        assert!(body_bytes >> 20 > 2 * max, "the body must dwarf the bound");
        assert!(
            peak_growth_mib <= max,
            "peak RSS grew {peak_growth_mib} MiB > {max}"
        );
    }
    // Export, streamed: count the entries as they come (each holds one '@').
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(h.info.api_addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /v1/suppressions/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request");
    let mut buf = vec![0u8; 64 << 10];
    let (mut ats, mut total, mut tail) = (0u64, 0u64, Vec::new());
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
        ats += buf[..n].iter().filter(|b| **b == b'@').count() as u64;
        tail = buf[n.saturating_sub(5)..n].to_vec();
    }
    assert_eq!(ats, MILLION - MILLION / 1_000, "every entry exported once");
    assert_eq!(tail, b"0\r\n\r\n", "the chunked body ends cleanly");
    eprintln!(
        "export: {} MiB in {:.1} s",
        total >> 20,
        started.elapsed().as_secs_f64()
    );
}
