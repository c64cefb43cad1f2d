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

/// Every read and purge of the lists stays a key range at 10 million entries: SQLite's plan of
/// each statement names an index, scans no table and sorts nothing.
#[tokio::test]
async fn each_list_query_uses_its_index() {
    use petrel_control::store::suppressions::{self as ss, Search};
    use sqlx::Row;
    let h = common::start().await;
    let db = h.dir.path().join("control").join("petrel.db");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the store");
    let plan = |sql: String, texts: Vec<String>, ints: Vec<i64>| {
        let pool = pool.clone();
        async move {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut q = sqlx::query(&explain);
            for t in texts {
                q = q.bind(t);
            }
            for i in ints {
                q = q.bind(i);
            }
            q.fetch_all(&pool)
                .await
                .expect("explain")
                .iter()
                .map(|r| r.try_get::<String, _>("detail").expect("detail"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let mut checks = Vec::new();
    for search in [
        Search::All,
        Search::Exact("a@x.test".into()),
        Search::Prefix("ab".into()),
        Search::Domain("x.test".into()),
    ] {
        for after in [None, Some("m@x.test")] {
            let (sql, args) = ss::list_query(&search, after);
            // Bound in placeholder order: scope, now, the texts, the limit. `$n` names let the
            // integers follow the texts here.
            let mut texts = vec!["ten_x".to_string()];
            texts.extend(args);
            let sql = sql
                .replace("$2", "0")
                .replace(&format!("${}", texts.len() + 2), "10");
            checks.push((
                format!("list {search:?} {after:?}"),
                plan(sql, texts, vec![]).await,
            ));
        }
    }
    let numbered = |sql: &str| sql.to_string();
    checks.push((
        "changes".into(),
        plan(numbered(ss::CHANGES_SINCE_SQL), vec![], vec![5, 10]).await,
    ));
    checks.push((
        "load".into(),
        plan(numbered(ss::LOAD_PAGE_SQL), vec![], vec![0, 10]).await,
    ));
    let after = ss::LOAD_PAGE_AFTER_SQL
        .replace("$1", "0")
        .replace("$4", "10");
    checks.push((
        "load after".into(),
        plan(after, vec!["a".into(), "b".into()], vec![]).await,
    ));
    checks.push((
        "expired pick".into(),
        plan(numbered(ss::EXPIRED_PICK_SQL), vec![], vec![0, 10]).await,
    ));
    checks.push((
        "cutoff".into(),
        plan(numbered(ss::CHANGES_CUTOFF_SQL), vec![], vec![0]).await,
    ));
    let delete = ss::expired_delete_sql(2);
    let texts = ["a", "b", "c", "d"].map(String::from).to_vec();
    checks.push(("expired delete".into(), plan(delete, texts, vec![]).await));
    for (what, detail) in &checks {
        // A walk of an index in its order (the first page of a full load) is fine; a table
        // scan or a sort is not.
        let table_scan = detail.lines().any(|l| {
            (l.starts_with("SCAN suppressions") || l.starts_with("SCAN suppression_changes"))
                && !l.contains("USING")
        });
        assert!(
            !table_scan && !detail.contains("TEMP B-TREE"),
            "{what}: {detail}"
        );
        assert!(detail.contains("INDEX"), "{what}: {detail}");
    }
}
