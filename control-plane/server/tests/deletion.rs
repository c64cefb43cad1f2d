//! Tenant deletion through the control plane, on SQLite (PostgreSQL: `pg.rs`; the engine's
//! side, end to end: `tests/tenant_delete.rs` at the repository root).

mod common;

#[tokio::test]
async fn deleting_a_tenant_removes_its_rows_keys_and_policy_and_keeps_its_audit_redacted() {
    let h = common::start().await;
    let raw = common::retention::raw(&h, None).await;
    common::deletion::scenario(&h, &raw).await;
}
