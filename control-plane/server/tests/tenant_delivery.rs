//! A tenant's delivery settings (issue 15) on SQLite; the same scenario runs on PostgreSQL in
//! `pg.rs`: `egress_pool` and `delivery_weight` set, read, refused out of bounds, audited and
//! pushed in the snapshot.

mod common;

#[tokio::test]
async fn tenant_delivery_settings() {
    let h = common::start().await;
    common::tenant_delivery::settings(&h).await;
}
