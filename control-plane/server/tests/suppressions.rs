//! Suppression lists on SQLite (the same scenarios run on PostgreSQL in `pg.rs`): the store's
//! rules and change log, the API, and a streamed import and export of a million lines.

mod common;

#[tokio::test]
async fn store_rules_change_log_and_automatic_adds() {
    let h = common::start().await;
    let db = common::suppressions::db(&h, None).await;
    common::suppressions::store(&db).await;
}

#[tokio::test]
async fn api_scoping_import_and_export() {
    let h = common::start().await;
    common::suppressions_api::api(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_lines_import_and_export_streamed() {
    let h = common::start().await;
    common::suppressions_api::million(&h, 0, None).await;
}
