//! Delivery events on SQLite (the same scenario runs on PostgreSQL in `pg.rs`): a test engine
//! on the real TLS push link sends batches; the API filters, pages, isolates tenants, counts
//! and purges. Plus the index check: the recipient query is answered from its index.

mod common;

use petrel_control::store::events::{bind_all, list_query, EventFilter, Scope};
use sqlx::Row;

#[tokio::test]
async fn events_ingest_query_stats_retention() {
    let h = common::start().await;
    common::events::events(&h).await;
}

/// `GET /v1/events?recipient=..` must stay an index search at 10 million events: SQLite's
/// plan for the query the store runs names `events_tenant_recipient`, and the tag, type and
/// message filters use theirs.
#[tokio::test]
async fn recipient_and_tag_queries_use_their_indexes() {
    let h = common::start().await;
    let db = h.dir.path().join("control").join("petrel.db");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the store");
    let base = EventFilter {
        scope: Scope::Tenant("ten_x".into()),
        kind: None,
        recipient: None,
        message_id: None,
        tag: None,
        since_ms: None,
        until_ms: None,
        before_seq: Some(1_000),
    };
    let plan = |f: EventFilter| {
        let pool = pool.clone();
        async move {
            let (sql, args) = list_query(&f, 101);
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            bind_all(sqlx::query(&explain), args)
                .fetch_all(&pool)
                .await
                .expect("explain")
                .iter()
                .map(|r| r.try_get::<String, _>("detail").expect("detail"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let recipient = plan(EventFilter {
        recipient: Some("r@dest.test".into()),
        ..base.clone()
    })
    .await;
    assert!(
        recipient.contains("events_tenant_recipient"),
        "recipient plan: {recipient}"
    );
    let tag = plan(EventFilter {
        tag: Some("welcome".into()),
        ..base.clone()
    })
    .await;
    assert!(tag.contains("event_tags_lookup"), "tag plan: {tag}");
    let kind = plan(EventFilter {
        kind: Some("bounced".into()),
        ..base.clone()
    })
    .await;
    assert!(kind.contains("events_tenant_type"), "type plan: {kind}");
    let message = plan(EventFilter {
        message_id: Some("m1".into()),
        ..base
    })
    .await;
    assert!(
        message.contains("events_tenant_message"),
        "message plan: {message}"
    );
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
