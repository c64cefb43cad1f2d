//! Issue 14 on SQLite (the same scenarios run on PostgreSQL in `pg.rs`): the tenant's
//! `list_unsubscribe` setting, one-click unsubscribe, the DMARC summary and its index.

mod common;

use sqlx::Row;

#[tokio::test]
async fn tenant_list_unsubscribe_setting() {
    let h = common::start().await;
    common::unsubscribe::tenant_setting(&h).await;
}

#[tokio::test]
async fn one_click_unsubscribe() {
    let h = common::start().await;
    common::unsubscribe::one_click(&h, None).await;
}

#[tokio::test]
async fn dmarc_summary() {
    let h = common::start().await;
    common::unsubscribe::dmarc(&h, None).await;
}

/// The summary's query is answered from the partial index `events_dmarc`, never a scan.
#[tokio::test]
async fn dmarc_query_uses_its_index() {
    let h = common::start().await;
    let db = h.dir.path().join("control").join("petrel.db");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the store");
    common::plans::load(&pool).await;
    for analyze in [false, true] {
        if analyze {
            sqlx::query("ANALYZE")
                .execute(&pool)
                .await
                .expect("analyze");
        }
        let sql = format!(
            "EXPLAIN QUERY PLAN {}",
            petrel_control::store::dmarc::DMARC_SQL
        );
        let plan: Vec<String> = sqlx::query(&sql)
            .bind(common::plans::PLAN_TENANT)
            .bind("a.example.test")
            .bind(0i64)
            .bind(i64::MAX)
            .bind(1000i64)
            .fetch_all(&pool)
            .await
            .expect("explain")
            .iter()
            .map(|r| r.try_get::<String, _>("detail").expect("detail"))
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("events_dmarc"), "{plan}");
        assert!(
            !plan.lines().any(|l| l.trim().starts_with("SCAN")),
            "{plan}"
        );
    }
    pool.close().await;
}
