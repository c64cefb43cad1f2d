//! Delivery events on SQLite (the same scenario runs on PostgreSQL in `pg.rs`): a test engine
//! on the real TLS push link sends batches; the API filters, pages, isolates tenants, counts
//! and purges. Plus the index check: each filter query is answered from its index.

mod common;

use sqlx::Row;

#[tokio::test]
async fn events_ingest_query_stats_retention() {
    let h = common::start().await;
    common::events::events(&h).await;
}

#[tokio::test]
async fn reports_are_attributed_to_the_recipient_their_message_went_to() {
    let h = common::start().await;
    common::attribution::reports(&h).await;
}

/// `GET /v1/events` must stay an index search at 10 million events: SQLite's plan for each
/// filter query the store runs (and for the purge's reads) names its index and scans no table,
/// with a few thousand events loaded, before and after `ANALYZE` (the planner without and with
/// statistics).
#[tokio::test]
async fn each_filter_query_uses_its_index() {
    let h = common::start().await;
    let db = h.dir.path().join("control").join("petrel.db");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the store");
    common::plans::load(&pool).await;
    let explain = |sql: String, args: common::plans::Args| {
        let pool = pool.clone();
        async move {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            common::plans::bind(sqlx::query(&explain), args)
                .fetch_all(&pool)
                .await
                .expect("explain")
                .iter()
                .map(|r| r.try_get::<String, _>("detail").expect("detail"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    // `SCAN e` / `SCAN t` (the aliases of events and event_tags) or a bare table name: every
    // row read; `SEARCH`: an index range.
    let full_scan = |line: &str| {
        let line = line.trim();
        ["SCAN e", "SCAN t", "SCAN event"]
            .iter()
            .any(|p| line == *p || line.starts_with(&format!("{p} ")))
    };
    common::plans::check(explain, full_scan, false).await;
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .expect("analyze");
    common::plans::check(explain, full_scan, false).await;
    pool.close().await;
}

/// The document names the query parameters as the API reads them (`type`, not `kind`).
#[test]
fn the_document_names_the_event_filters() {
    let doc = petrel_control::api::openapi::build().expect("document");
    let names: Vec<&str> = doc["paths"]["/v1/events"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    for want in [
        "type",
        "recipient",
        "message_id",
        "tag",
        "since",
        "until",
        "limit",
        "cursor",
        "tenant",
    ] {
        assert!(names.contains(&want), "{want} missing in {names:?}");
    }
    assert!(!names.contains(&"kind"));
    for path in [
        "/v1/messages/{id}",
        "/v1/stats",
        "/v1/tenants/{id}/retention",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}
