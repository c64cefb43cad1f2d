//! Retention windows with a controlled clock, on SQLite (PostgreSQL: `pg.rs`).

mod common;

#[tokio::test]
async fn windows_scrub_metadata_purge_events_and_prune_the_audit_chain() {
    let (h, clock) = common::retention::harness(None).await;
    let raw = common::retention::raw(&h, None).await;
    common::retention::scenario(&h, &clock, &raw).await;
}
