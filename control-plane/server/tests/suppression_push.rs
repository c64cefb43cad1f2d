//! The suppression list pushed to an engine's link by full load and deltas (SQLite; the
//! PostgreSQL run is in pg.rs).

mod common;

#[tokio::test]
async fn engine_follows_the_suppression_list() {
    let h = common::start().await;
    common::suppression_push::follow(&h).await;
}
