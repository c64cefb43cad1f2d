//! Abuse guardrails on SQLite (the same scenario runs on PostgreSQL in `pg.rs`): rates from
//! ingested events disable a sending domain (event, audit entry, snapshot, `X-Petrel-Warning`),
//! a complaint rate near its threshold warns once, an operator re-enables and lifts the
//! new-tenant cap.

mod common;

#[tokio::test]
async fn rates_warn_disable_and_an_operator_re_enables() {
    let h = common::guardrails::harness(None).await;
    common::guardrails::scenario(&h).await;
}
