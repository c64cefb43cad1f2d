//! Failed API authentications reach the audit log aggregated (issue 16): one row per address
//! per window, with the count and the reasons; a request without a key is not a guess and is
//! not counted.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_are_audited_once_per_address_and_window() {
    let h = common::start().await;
    for _ in 0..3 {
        let r = h
            .call("GET", "/v1/domains", Some(&"x".repeat(40)), None)
            .await;
        assert_eq!(r.status, 401);
    }
    let r = h.call("GET", "/v1/domains", None, None).await;
    assert_eq!(r.status, 401);
    // Three failures, counted in the window(s) they fell in (a window may end between them).
    let failures = |rows: &[serde_json::Value]| -> u64 {
        rows.iter()
            .map(|r| r["after"]["failures"].as_u64().unwrap_or(0))
            .sum()
    };
    let mut rows = Vec::new();
    for _ in 0..100 {
        let r = h
            .owner("GET", "/v1/audit-log?action=api.auth_failed", None)
            .await;
        rows = r.body.as_array().cloned().unwrap_or_default();
        if failures(&rows) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failures(&rows), 3, "{rows:?}");
    assert!(rows.len() <= 3, "one row per window at most: {rows:?}");
    for row in &rows {
        assert_eq!(row["remote_addr"], "127.0.0.1");
        assert_eq!(row["actor"], "system:api-auth");
        assert_eq!(
            row["after"]["reasons"]["invalid key"], row["after"]["failures"],
            "{row}"
        );
    }
    // Windows without failures add no row.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let r = h
        .owner("GET", "/v1/audit-log?action=api.auth_failed", None)
        .await;
    assert_eq!(
        r.body.as_array().map(Vec::len),
        Some(rows.len()),
        "{:?}",
        r.body
    );
}
