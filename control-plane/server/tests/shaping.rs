//! The provider shaping overlay (issue 15) on SQLite; the same scenario runs on PostgreSQL in
//! `pg.rs`: set, listed, replaced, refused out of bounds, operator-only, deleted, audited and
//! pushed in the snapshot.

mod common;

#[tokio::test]
async fn shaping_overlay() {
    let h = common::start().await;
    common::shaping::overlay(&h).await;
}
