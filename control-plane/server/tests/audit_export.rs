//! The audit log exported whole (issue 16): streamed as JSON lines or CSV past the list's
//! 1,000-row cap, oldest first, payloads opened; a tenant's admin gets its own rows only; the
//! export is itself an audit row.

mod common;

use common::scenarios::new_tenant;
use common::suppressions_api::raw;

/// More rows than one list answer holds.
const BULK_ROWS: usize = 1_100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_log_streams_as_json_lines_and_csv_scoped_and_audited() {
    let h = common::start().await;
    let (tenant_a, a_key) = new_tenant(&h, "export-a-co").await;
    let (tenant_b, _b_key) = new_tenant(&h, "export-b-co").await;
    let db = common::suppressions::db(&h, None).await;
    for i in 0..BULK_ROWS {
        let m = db.begin_data_mutation().await.expect("mutation");
        m.commit(petrel_control::audit::AuditEntry {
            tenant_id: None,
            actor: "system:test".into(),
            remote_addr: "local".into(),
            action: "test.bulk".into(),
            target: format!("row-{i}"),
            at_unix_ms: 1,
            before: None,
            after: Some(serde_json::json!({"i": i, "note": "a, \"quoted\" value"})),
        })
        .await
        .expect("append");
    }
    let r = raw(&h, "GET", "/v1/audit-log/export", &h.owner_key, "", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let rows: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(rows.len() > BULK_ROWS, "{}", rows.len());
    let seqs: Vec<i64> = rows
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every row, in order"
    );
    assert_eq!(seqs[0], 1);
    let last = rows
        .iter()
        .rev()
        .find(|r| r["action"] == "test.bulk")
        .expect("row");
    assert_eq!(last["after"]["i"], BULK_ROWS - 1);
    // The export recorded itself before streaming.
    assert_eq!(rows.last().expect("row")["action"], "audit.export");

    let r = raw(
        &h,
        "GET",
        "/v1/audit-log/export?format=csv",
        &h.owner_key,
        "",
        b"",
    )
    .await;
    assert_eq!(r.header("content-type"), Some("text/csv"));
    let text = r.text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "seq,at_unix_ms,tenant_id,actor,remote_addr,action,target,before,after,prev_hash,hash"
        )
    );
    assert!(
        text.contains(r#","{""i"":0,""note"":""a, \""quoted\"" value""}","#),
        "{}",
        &text[..2000]
    );
    assert!(lines.count() > BULK_ROWS);

    // A tenant's admin: its own rows only.
    let r = raw(&h, "GET", "/v1/audit-log/export", &a_key, "", b"").await;
    let own: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!own.is_empty());
    assert!(
        own.iter().all(|r| r["tenant_id"] == tenant_a.as_str()),
        "{own:?}"
    );
    assert!(!r.text().contains(&tenant_b));
    let r = raw(
        &h,
        "GET",
        "/v1/audit-log/export?format=xml",
        &a_key,
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
}
