//! The same scenarios on PostgreSQL, against a server the caller runs (`PETREL_TEST_PG_URL`,
//! e.g. `postgres://postgres@127.0.0.1:5433/postgres`). Each test creates its own database.
//! Without the variable every test prints "SKIPPED: PETREL_TEST_PG_URL not set" and passes.
//! `ops/test.sh` starts a throwaway cluster and runs these.

mod common;

use std::time::{Duration, Instant};

use common::scenarios::{self, eventually};
use serde_json::json;
use sqlx::Row;

fn pg_url() -> Option<String> {
    match std::env::var("PETREL_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            // Straight to the stderr handle: the test harness captures `println!`/`eprintln!`
            // output of passing tests, and this line must show.
            petrel_testkit::peer_missing("PETREL_TEST_PG_URL not set");
            None
        }
    }
}

/// `base` with its database name replaced by `db`.
fn with_database(base: &str, db: &str) -> String {
    let (main, query) = match base.split_once('?') {
        Some((m, q)) => (m, format!("?{q}")),
        None => (base, String::new()),
    };
    let authority_start = main.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match main[authority_start..].find('/') {
        Some(i) => &main[..authority_start + i],
        None => main,
    };
    format!("{root}/{db}{query}")
}

/// A fresh, empty database on the test server.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create(base: &str) -> TestDb {
        sqlx::any::install_default_drivers();
        let name = format!("petrel_test_{}", hex::encode(rand::random::<[u8; 6]>()));
        let pool = sqlx::AnyPool::connect(base)
            .await
            .expect("connect to PETREL_TEST_PG_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .expect("create database");
        pool.close().await;
        TestDb {
            admin_url: base.to_string(),
            url: with_database(base, &name),
            name,
        }
    }

    async fn drop_db(self) {
        if let Ok(pool) = sqlx::AnyPool::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&pool)
            .await;
            pool.close().await;
        }
    }
}

#[test]
fn url_rewriting() {
    assert_eq!(
        with_database("postgres://u:p@h:1/postgres", "x"),
        "postgres://u:p@h:1/x"
    );
    assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    assert_eq!(
        with_database("postgres://h/db?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
}

#[tokio::test]
async fn pg_api_scenarios() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        scenarios::errors(&h).await;
        scenarios::domains(&h).await;
        scenarios::credentials(&h).await;
        scenarios::limits(&h).await;
        let url = db.url.clone();
        let tamper = async move {
            let pool = sqlx::AnyPool::connect(&url).await.expect("open db");
            let n = sqlx::query("UPDATE audit_log SET after_json = '{}' WHERE seq = 3")
                .execute(&pool)
                .await
                .expect("tamper")
                .rows_affected();
            assert_eq!(n, 1);
            pool.close().await;
        };
        scenarios::audit(&h, tamper).await;
    }
    db.drop_db().await;
}

#[tokio::test]
async fn pg_events() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        common::events::events(&h).await;
    }
    db.drop_db().await;
}

#[tokio::test]
async fn pg_report_attribution() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        common::attribution::reports(&h).await;
    }
    db.drop_db().await;
}

#[tokio::test]
async fn pg_guardrails() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::guardrails::harness(Some(db.url.clone())).await;
        common::guardrails::scenario(&h).await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_webhooks() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h, clock, pki) =
            common::webhooks::loopback_harness(Some(db.url.clone()), dir.path()).await;
        common::webhooks::delivery(&h, &clock, &pki, dir.path()).await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_two_nodes_share_webhook_dispatch() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (node1, clock, pki) =
            common::webhooks::loopback_harness(Some(db.url.clone()), dir.path()).await;
        let node2 = common::webhooks::loopback_node(Some(db.url.clone()), &pki, clock, true).await;
        common::webhooks::two_nodes(&node1, &node2, &pki, dir.path()).await;
    }
    db.drop_db().await;
}

/// PostgreSQL's plan for each `/v1/events` filter query (and the purge's reads) uses its index
/// and no sequential scan of `events` or `event_tags`, after `ANALYZE` of a few thousand
/// events (the SQLite twin is in `events.rs`).
#[tokio::test]
async fn pg_each_filter_query_uses_its_index() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let _h = common::start_with(Some(db.url.clone())).await;
        let pool = sqlx::AnyPool::connect(&db.url).await.expect("open db");
        common::plans::load(&pool).await;
        sqlx::query("ANALYZE")
            .execute(&pool)
            .await
            .expect("analyze");
        let explain = |sql: String, args: common::plans::Args| {
            let pool = pool.clone();
            async move {
                let explain = format!("EXPLAIN {sql}");
                common::plans::bind(sqlx::query(&explain), args)
                    .fetch_all(&pool)
                    .await
                    .expect("explain")
                    .iter()
                    .map(|r| r.try_get::<String, _>(0).expect("plan line"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        };
        let full_scan = |line: &str| {
            line.contains("Seq Scan on events") || line.contains("Seq Scan on event_tags")
        };
        common::plans::check(explain, full_scan, true).await;
        pool.close().await;
    }
    db.drop_db().await;
}

#[tokio::test]
async fn pg_two_nodes_share_one_database() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let node1 = common::start_with(Some(db.url.clone())).await;
        // A second node on the same database: no new bootstrap key, same data.
        let cfg = petrel_control::ControlConfig {
            data_dir: node1.dir.path().join("control2"),
            database_url: Some(db.url.clone()),
            api_listen: "127.0.0.1:0".parse().expect("addr"),
            push_listen: "127.0.0.1:0".parse().expect("addr"),
            push_token: common::PUSH_TOKEN.into(),
            dns_nameservers: vec!["127.0.0.1:9".parse().expect("addr")],
            webhooks_allow_loopback: false,
            webhooks_ca_file: None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Node 2 polls the stored version only every ten minutes: a change made through node 1
        // can reach node 2's engine within the test only through PostgreSQL's NOTIFY.
        let options = petrel_control::ServeOptions {
            version_poll_ms: 600_000,
            ..common::test_options()
        };
        let node2_task = tokio::spawn(petrel_control::serve_with(cfg, options, Some(tx)));
        let node2 = rx.await.expect("node 2 ready");
        assert!(node2.bootstrap_key.is_none());

        // An engine on node 2 sees a change made through node 1 (LISTEN/NOTIFY).
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store =
            std::sync::Arc::new(petrel_policy::PolicyStore::load_or_empty(store_dir.path()));
        let link_cfg = petrel_policy::LinkConfig::new(
            &node2.push_addr.to_string(),
            "localhost",
            petrel_policy::LinkTrust::CaPem(node2.push_cert_pem.as_bytes().to_vec()),
            common::PUSH_TOKEN,
            "engine-pg",
        );
        let link = tokio::spawn(petrel_policy::run_link(link_cfg, store.clone(), |_| {}));
        let v0 = node2.app.db.policy_version().await.expect("version");
        eventually("initial snapshot", || async { store.version() >= v0 }).await;
        let started = Instant::now();
        let (tenant, _) = scenarios::new_tenant(&node1, "via-node-1").await;
        eventually("change from node 1 on node 2's engine", || async {
            store.current().tenant(&tenant).is_some()
        })
        .await;
        let elapsed = started.elapsed();
        println!("node1 -> node2 engine: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        let r = common::http(
            node2.api_addr,
            "GET",
            &format!("/v1/tenants/{tenant}"),
            Some(&node1.owner_key),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        // Concurrent mutations on both nodes keep the audit chain intact.
        let mut joins = Vec::new();
        for i in 0..6 {
            let addr = if i % 2 == 0 {
                node1.info.api_addr
            } else {
                node2.api_addr
            };
            let key = node1.owner_key.clone();
            joins.push(tokio::spawn(async move {
                let body = json!({"name": format!("par-{i}")}).to_string();
                common::http(addr, "POST", "/v1/tenants", Some(&key), Some(&body))
                    .await
                    .status
            }));
        }
        for j in joins {
            assert_eq!(j.await.expect("join"), 201);
        }
        let r = node1.owner("GET", "/v1/audit-log/verify", None).await;
        assert_eq!(r.body["ok"], true, "{:?}", r.body);
        link.abort();
        node2_task.abort();
    }
    db.drop_db().await;
}

/// An ingest that stores new events announces them on PostgreSQL when it commits (every node's
/// listener wakes its webhook dispatcher with it); a batch that stores nothing new does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_ingest_announces_new_events_to_every_node() {
    use petrel_control::store::{Notice, VersionListener};
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        let (tenant, _key) = scenarios::new_tenant(&h, "announce-co").await;
        let mut listener = VersionListener::connect(&db.url).await.expect("listen");
        let mut conn = common::events::connect(&h, "engine-announce").await;
        let events = common::webhooks::batch(&tenant, "announce", 5);
        assert_eq!(common::events::send(&mut conn, 1, events.clone()).await, 1);
        assert_eq!(next_notice(&mut listener).await, Notice::Events);
        // The same events again under a new seq: stored before, so no announcement; the
        // mutation after it is the next notice.
        assert_eq!(common::events::send(&mut conn, 2, events).await, 2);
        let r = h
            .call(
                "POST",
                "/v1/tenants",
                Some(&h.owner_key),
                Some(json!({"name": "after-co"})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert!(matches!(
            next_notice(&mut listener).await,
            Notice::Version(_)
        ));
    }
    db.drop_db().await;
}

async fn next_notice(
    listener: &mut petrel_control::store::VersionListener,
) -> petrel_control::store::Notice {
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notice in time")
        .expect("a notice")
}

#[tokio::test]
async fn pg_suppression_push() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        common::suppression_push::follow(&h).await;
    }
    db.drop_db().await;
}

/// Retention windows on PostgreSQL (the SQLite twin is `retention.rs`).
#[tokio::test]
async fn pg_retention() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let (h, clock) = common::retention::harness(Some(db.url.clone())).await;
        let raw = common::retention::raw(&h, Some(&db.url)).await;
        common::retention::scenario(&h, &clock, &raw).await;
    }
    db.drop_db().await;
}

/// Tenant deletion on PostgreSQL (the SQLite twin is `deletion.rs`).
#[tokio::test]
async fn pg_deletion() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        let raw = common::retention::raw(&h, Some(&db.url)).await;
        common::deletion::scenario(&h, &raw).await;
    }
    db.drop_db().await;
}

/// The tenant export on PostgreSQL (the SQLite twin is `export.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_export() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        let store = common::suppressions::db(&h, Some(&db.url)).await;
        common::export::round_trip(&h, &store).await;
        common::export::conflicts_failures_and_purge(&h, &store).await;
    }
    db.drop_db().await;
}

#[tokio::test]
async fn pg_suppressions() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        let store = common::suppressions::db(&h, Some(&db.url)).await;
        common::suppressions::store(&store).await;
        common::suppressions_api::api(&h).await;
    }
    db.drop_db().await;
}

/// Bytes of padding per import line: 1,000,000 lines of about 240 bytes, a body of about 230
/// MiB, against a peak RSS growth bound of [`IMPORT_RSS_GROWTH_MAX_MIB`].
const IMPORT_LINE_PADDING_BYTES: usize = 200;
/// What the import may add to this process's peak RSS (client and control plane together;
/// PostgreSQL's memory is its own process's).
const IMPORT_RSS_GROWTH_MAX_MIB: u64 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_million_lines_import_in_bounded_memory() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        common::suppressions_api::million(
            &h,
            IMPORT_LINE_PADDING_BYTES,
            Some(IMPORT_RSS_GROWTH_MAX_MIB),
        )
        .await;
    }
    db.drop_db().await;
}

/// PostgreSQL's twin of `suppressions.rs`'s plan test: with sequential scans and sorts priced
/// out of the planner's reach (`enable_seqscan`, `enable_sort` off), every read and purge of
/// the lists plans without a `Seq Scan` or a `Sort` of `suppressions` or `suppression_changes`,
/// and with its condition inside an index (`Index Cond`; or, for a full load's first page, a
/// walk of an index in its order under a `Limit`): an index range, as it must be at 10 million
/// entries.
#[tokio::test]
async fn pg_each_suppression_query_uses_its_index() {
    use common::plans::{Arg, Arg::Int, Arg::Text, Args};
    use petrel_control::store::suppressions::{self as ss, Search};
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let _h = common::start_with(Some(db.url.clone())).await;
        let pool = sqlx::AnyPool::connect(&db.url).await.expect("open db");
        let mut conn = pool.acquire().await.expect("a connection");
        for set in ["SET enable_seqscan = off", "SET enable_sort = off"] {
            sqlx::query(set).execute(&mut *conn).await.expect(set);
        }
        let mut checks: Vec<(String, String, Vec<Arg>)> = Vec::new();
        for search in [
            Search::All,
            Search::Exact("a@x.test".into()),
            Search::Prefix("ab".into()),
            Search::Domain("x.test".into()),
        ] {
            for after in [None, Some("m@x.test")] {
                let (sql, args) = ss::list_query(&search, after);
                // In placeholder order: scope, now, the texts, the limit.
                let mut binds = vec![Text("ten_x".into()), Int(0)];
                binds.extend(args.into_iter().map(Text));
                binds.push(Int(10));
                checks.push((format!("list {search:?} {after:?}"), sql, binds));
            }
        }
        let texts = |v: &[&str]| v.iter().map(|t| Text(t.to_string())).collect::<Vec<_>>();
        checks.push((
            "changes".into(),
            ss::CHANGES_SINCE_SQL.into(),
            vec![Int(5), Int(10)],
        ));
        checks.push((
            "load".into(),
            ss::LOAD_PAGE_SQL.into(),
            vec![Int(0), Int(10)],
        ));
        let mut after = vec![Int(0)];
        after.extend(texts(&["a", "b"]));
        after.push(Int(10));
        checks.push(("load after".into(), ss::LOAD_PAGE_AFTER_SQL.into(), after));
        checks.push((
            "expired pick".into(),
            ss::EXPIRED_PICK_SQL.into(),
            vec![Int(0), Int(10)],
        ));
        checks.push(("cutoff".into(), ss::CHANGES_CUTOFF_SQL.into(), vec![Int(0)]));
        checks.push((
            "expired delete".into(),
            ss::expired_delete_sql(2),
            texts(&["a", "b", "c", "d"]),
        ));
        // The control: a filter no index serves must fail the check.
        checks.push((
            "control".into(),
            "SELECT address FROM suppressions WHERE length(address) = $1".into(),
            vec![Int(7)],
        ));
        for (what, sql, binds) in checks {
            let explain = format!("EXPLAIN {sql}");
            let plan = common::plans::bind(sqlx::query(&explain), Args::Plain(binds))
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{what}: explain: {e}"))
                .iter()
                .map(|r| r.try_get::<String, _>(0).expect("plan line"))
                .collect::<Vec<_>>()
                .join("\n");
            // With sequential scans priced out, a filter no index serves shows up as a whole
            // index read instead: an index node without an `Index Cond`. Only a walk of an
            // index in its order under a `Limit` (a full load's first page) may have none.
            let seq_or_sort = plan.lines().any(|l| {
                l.contains("Seq Scan on suppression")
                    || l.trim_start()
                        .trim_start_matches("->  ")
                        .starts_with("Sort")
            });
            let conditioned = plan.contains("Index Cond");
            let walk = plan.starts_with("Limit") && !plan.contains("Bitmap");
            let bad = seq_or_sort || !(conditioned || walk);
            if what == "control" {
                assert!(bad, "the check sees a filter no index serves:\n{plan}");
                continue;
            }
            assert!(!bad, "{what}:\n{plan}");
            assert!(plan.contains("Index"), "{what}:\n{plan}");
        }
        drop(conn);
        pool.close().await;
    }
    db.drop_db().await;
}

/// Issue 14's control-plane parts on PostgreSQL: the tenant setting, one-click unsubscribe,
/// the DMARC summary, and its query served by the partial index `events_dmarc`.
#[tokio::test]
async fn pg_unsubscribe_and_dmarc() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        common::unsubscribe::tenant_setting(&h).await;
        common::unsubscribe::one_click(&h, Some(&db.url)).await;
        common::unsubscribe::dmarc(&h, Some(&db.url)).await;
        let pool = sqlx::AnyPool::connect(&db.url).await.expect("open db");
        common::plans::load(&pool).await;
        sqlx::query("ANALYZE")
            .execute(&pool)
            .await
            .expect("analyze");
        let plan: Vec<String> = sqlx::query(&format!(
            "EXPLAIN {}",
            petrel_control::store::dmarc::DMARC_SQL
        ))
        .bind(common::plans::PLAN_TENANT)
        .bind("a.example.test")
        .bind(0i64)
        .bind(i64::MAX)
        .bind(1000i64)
        .fetch_all(&pool)
        .await
        .expect("explain")
        .iter()
        .map(|r| r.try_get::<String, _>(0).expect("plan line"))
        .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("events_dmarc"), "{plan}");
        assert!(!plan.contains("Seq Scan on events"), "{plan}");
        pool.close().await;
    }
    db.drop_db().await;
}

/// A tenant's delivery settings on PostgreSQL (the SQLite twin is `tenant_delivery.rs`).
#[tokio::test]
async fn pg_tenant_delivery() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        common::tenant_delivery::settings(&h).await;
    }
    db.drop_db().await;
}

/// The provider shaping overlay on PostgreSQL (the SQLite twin is `shaping.rs`).
#[tokio::test]
async fn pg_shaping_overlay() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        common::shaping::overlay(&h).await;
    }
    db.drop_db().await;
}

#[tokio::test]
async fn pg_domain_auth() {
    let Some(base) = pg_url() else { return };
    let db = TestDb::create(&base).await;
    {
        let h = common::start_with(Some(db.url.clone())).await;
        common::domain_auth::domain_checks(&h).await;
        common::domain_auth::scheduled_round(&h).await;
    }
    db.drop_db().await;
}
