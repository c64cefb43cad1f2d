//! `petrel backup` and `petrel restore` (issue 19): a control plane populated through its admin
//! API and its push link, backed up, restored into a fresh place, and every table compared row
//! by row (the tables listed from the schema, so a new one cannot be forgotten), on SQLite and
//! on PostgreSQL (`PETREL_TEST_PG_URL`, as in `pg.rs`). The restored control plane then starts
//! and serves the data, and its audit chain verifies against the restored checkpoints. A wrong
//! key, a tampered file, a non-empty target and a key file in the way each fail precisely.
//!
//! The control plane runs on a runtime of its own, dropped before the comparison: that stops
//! it and all its background tasks (webhook retries, timers), so the source holds still.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::scenarios::{self, new_tenant};
use common::{Harness, Tweaks};
use petrel_control::backup::material::KeyPaths;
use petrel_control::backup::{self, BackupError, BackupOptions, RestoreOptions};
use petrel_policy::event::EventType;
use serde_json::{json, Value};
use sqlx::{Connection, Row};

const BACKUP_KEY: &str = "6b0e3c1f9a2d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdde";
const OTHER_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

/// Tables the population must have filled (the comparison covers every table either way).
const FILLED: &[&str] = &[
    "tenants",
    "domains",
    "dkim_keys",
    "credentials",
    "suppressions",
    "webhooks",
    "events",
    "audit_log",
    "data_keys",
    "token_keys",
    "engines",
    "destination_limits",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn key_file(dir: &Path, name: &str, hex: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{hex}\n")).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

fn pg_url() -> Option<String> {
    match std::env::var("PETREL_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            petrel_testkit::peer_missing("PETREL_TEST_PG_URL not set");
            None
        }
    }
}

/// `base` with its database replaced by `db`.
fn with_database(base: &str, db: &str) -> String {
    let mut u = url::Url::parse(base).expect("url");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

async fn create_database(base: &str) -> (String, String) {
    let name = format!("petrel_backup_{}", hex::encode(rand::random::<[u8; 6]>()));
    let mut c = sqlx::PgConnection::connect(base).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .expect("create database");
    (name.clone(), with_database(base, &name))
}

async fn drop_database(base: &str, name: &str) {
    if let Ok(mut c) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
}

fn ok(r: &common::Resp, what: &str) {
    assert!(
        (200..300).contains(&r.status),
        "{what}: {} {:?}",
        r.status,
        r.body
    );
}

/// Fills every kind of row through the admin API and the push link; returns the harness and
/// the tenants as the owner sees them.
async fn populate(database_url: Option<String>) -> (Harness, Value) {
    let tweaks = Tweaks {
        webhooks_allow_loopback: true,
        ..Tweaks::default()
    };
    let h = common::start_custom(database_url, tweaks).await;
    scenarios::domains(&h).await;
    scenarios::credentials(&h).await;
    scenarios::limits(&h).await;
    let body = json!({"connections_max": 5, "messages_per_second_max": 10, "tls_required": true});
    let r = h
        .owner("PUT", "/v1/limits/destinations/example.net", Some(body))
        .await;
    ok(&r, "destination limit");
    let (tenant, key) = new_tenant(&h, "backup-co").await;
    let body = json!({"name": "mail.backup.test", "algorithm": "ed25519"});
    ok(
        &h.call("POST", "/v1/domains", Some(&key), Some(body)).await,
        "domain",
    );
    let body =
        json!({"kind": "smtp", "name": "app", "allowed_sender_domains": ["mail.backup.test"]});
    ok(
        &h.call("POST", "/v1/credentials", Some(&key), Some(body))
            .await,
        "credential",
    );
    let body = json!({"address": "gone@dest.test", "reason": "unsubscribe"});
    ok(
        &h.call("POST", "/v1/suppressions", Some(&key), Some(body))
            .await,
        "suppression",
    );
    let body = json!({"url": "http://127.0.0.1:9/hook", "events": ["delivered", "bounced"]});
    ok(
        &h.call("POST", "/v1/webhooks", Some(&key), Some(body)).await,
        "webhook",
    );
    let mut conn = common::events::connect(&h, "engine-backup").await;
    let now = petrel_control::now_unix_ms();
    let events = vec![
        common::events::event(&tenant, "m1", 0, 1, EventType::Delivered, now),
        common::events::event(&tenant, "m1", 1, 1, EventType::Bounced, now + 1),
    ];
    assert_eq!(common::events::send(&mut conn, 1, events).await, 1);
    ok(
        &h.owner("POST", "/v1/audit-log/checkpoint", None).await,
        "checkpoint",
    );
    let tenants = h.owner("GET", "/v1/tenants", None).await;
    ok(&tenants, "tenants");
    (h, tenants.body)
}

fn backup_options(h: &Harness, url: Option<&str>, key: &Path, out: &Path) -> BackupOptions {
    BackupOptions {
        control_dir: h.dir.path().join("control"),
        database_url: url.map(str::to_string),
        key_file: key.to_path_buf(),
        out: out.to_path_buf(),
        paths: KeyPaths {
            kek_file: Some(common::shared_key_file()),
            ..KeyPaths::default()
        },
        pg_bin_dir: None,
        now_unix_ms: petrel_control::now_unix_ms(),
    }
}

fn restore_options(
    from: &Path,
    key: &Path,
    control_dir: &Path,
    url: Option<&str>,
) -> RestoreOptions {
    RestoreOptions {
        from: from.to_path_buf(),
        key_file: key.to_path_buf(),
        control_dir: control_dir.to_path_buf(),
        database_url: url.map(str::to_string),
        paths: KeyPaths::default(),
        pg_bin_dir: None,
        force: false,
    }
}

/// Every table of a database, each as its rows rendered to text and sorted.
type Tables = std::collections::BTreeMap<String, Vec<String>>;

async fn sqlite_tables(path: &Path) -> Tables {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let mut c = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .expect("open");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut c)
    .await
    .expect("tables");
    let mut out = Tables::new();
    for t in names {
        let cols: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
            .bind(&t)
            .fetch_all(&mut c)
            .await
            .expect("columns");
        let expr = cols
            .iter()
            .map(|c| format!("quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let mut rows: Vec<String> = sqlx::query(&format!("SELECT {expr} AS r FROM \"{t}\""))
            .fetch_all(&mut c)
            .await
            .expect("rows")
            .iter()
            .map(|r| r.get::<String, _>("r"))
            .collect();
        rows.sort();
        out.insert(t, rows);
    }
    out
}

async fn postgres_tables(url: &str) -> Tables {
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut c)
    .await
    .expect("tables");
    let mut out = Tables::new();
    for t in names {
        let mut rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT CAST(row_to_json(t) AS TEXT) FROM \"{t}\" t"
        ))
        .fetch_all(&mut c)
        .await
        .expect("rows");
        rows.sort();
        out.insert(t, rows);
    }
    out
}

fn assert_same(source: &Tables, restored: &Tables) {
    assert_eq!(
        source.keys().collect::<Vec<_>>(),
        restored.keys().collect::<Vec<_>>(),
        "the same tables"
    );
    for (t, rows) in source {
        assert_eq!(rows, &restored[t], "table {t}, row by row");
    }
    for t in FILLED {
        assert!(!source[*t].is_empty(), "the population filled {t}");
    }
}

/// Starts a control plane on the restored place and checks it serves the data: the owner key
/// still works, the tenants are the same, the audit chain and its checkpoints verify.
async fn serves(control_dir: &Path, url: Option<&str>, owner_key: &str, tenants: &Value) {
    let dns = petrel_testkit::dns::DnsServer::start(Vec::new());
    let cfg = petrel_control::ControlConfig {
        data_dir: control_dir.to_path_buf(),
        database_url: url.map(str::to_string),
        api_listen: "127.0.0.1:0".parse().expect("addr"),
        push_listen: "127.0.0.1:0".parse().expect("addr"),
        push_token: common::PUSH_TOKEN.into(),
        dns_nameservers: vec![dns.addr],
        webhooks_allow_loopback: true,
        webhooks_ca_file: None,
    };
    let opts = petrel_control::ServeOptions {
        key_file: Some(control_dir.join("keys").join("kek")),
        ..common::test_options()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        if let Err(e) = petrel_control::serve_with(cfg, opts, Some(tx)).await {
            eprintln!("restored control plane stopped: {e}");
        }
    });
    let info = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("started in time")
        .expect("the restored control plane starts");
    assert!(
        info.bootstrap_key.is_none(),
        "the restored operator is there"
    );
    let r = common::http(info.api_addr, "GET", "/v1/tenants", Some(owner_key), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(&r.body, tenants);
    let r = common::http(
        info.api_addr,
        "GET",
        "/v1/audit-log/verify",
        Some(owner_key),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
    assert!(
        r.body["checkpoints"]["checkpoints_checked"].as_u64() >= Some(1),
        "{:?}",
        r.body
    );
    task.abort();
}

/// A wrong key and a tampered file fail before anything is written.
async fn refusals(file: &Path, key: &Path, work: &Path) {
    let target = work.join("refused/control");
    let wrong = key_file(work, "other.key", OTHER_KEY);
    let e = backup::restore(&restore_options(file, &wrong, &target, None))
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::WrongKey), "{e}");
    assert!(e.to_string().contains("wrong --key-file"), "{e}");

    let mut bytes = std::fs::read(file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let tampered = work.join("tampered.petrel-backup");
    std::fs::write(&tampered, &bytes).expect("write");
    let e = backup::restore(&restore_options(&tampered, key, &target, None))
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::Tampered { .. }), "{e}");
    assert!(e.to_string().contains("altered or damaged"), "{e}");
    let e = backup::restore(&restore_options(
        &tampered,
        key,
        &target,
        Some("sqlite:///x.db"),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(e, BackupError::Tampered { .. }),
        "verified before the target: {e}"
    );
    assert!(!target.exists(), "nothing written");
}

#[test]
fn sqlite_round_trip_compares_every_table() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let key = key_file(work, "backup.key", BACKUP_KEY);
    let rt = runtime();
    let (h, tenants) = rt.block_on(populate(None));
    // Online: a backup taken while the control plane runs opens whole.
    let online = work.join("online.petrel-backup");
    rt.block_on(backup::backup(&backup_options(&h, None, &key, &online)))
        .expect("online backup");
    backup::verify(&backup::read_key(&key).expect("key"), &online).expect("online backup opens");
    drop(rt);

    let rt = runtime();
    rt.block_on(async {
        let file = work.join("cp.petrel-backup");
        let report = backup::backup(&backup_options(&h, None, &key, &file))
            .await
            .expect("backup");
        assert_eq!(report.kind, backup::format::SourceKind::Sqlite);
        let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(&file).expect("file").len(), report.bytes);
        refusals(&file, &key, work).await;

        let target = work.join("restored/control");
        let restored = backup::restore(&restore_options(&file, &key, &target, None))
            .await
            .expect("restore");
        let kinds: Vec<_> = restored.parts.iter().map(|p| p.0.name()).collect();
        for k in [
            "database",
            "key-encryption key",
            "audit signing key",
            "audit checkpoints",
        ] {
            assert!(kinds.contains(&k), "{k} restored: {kinds:?}");
        }
        let source = sqlite_tables(&h.dir.path().join("control/petrel.db")).await;
        assert_same(&source, &sqlite_tables(&target.join("petrel.db")).await);

        // The target is not empty any more: refused, precisely, unless --force.
        let e = backup::restore(&restore_options(&file, &key, &target, None))
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::TargetNotEmpty { .. }), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        let forced = RestoreOptions {
            force: true,
            ..restore_options(&file, &key, &target, None)
        };
        let again = backup::restore(&forced).await.expect("forced restore");
        assert!(again.parts.iter().any(|p| p.2), "identical key files kept");
        assert_same(&source, &sqlite_tables(&target.join("petrel.db")).await);

        // Another key-encryption key where the backup's would go.
        let other = work.join("other/control");
        petrel_seal::KekFile::generate(&other.join("keys/kek")).expect("kek");
        let e = backup::restore(&restore_options(&file, &key, &other, None))
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::DestinationExists { .. }), "{e}");

        serves(&target, None, &h.owner_key, &tenants).await;
    });
}

#[test]
fn postgres_round_trip_compares_every_table() {
    let Some(base) = pg_url() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let key = key_file(work, "backup.key", BACKUP_KEY);
    let rt = runtime();
    let (source_name, source_url) = rt.block_on(create_database(&base));
    let (target_name, target_url) = rt.block_on(create_database(&base));
    let (h, tenants) = rt.block_on(populate(Some(source_url.clone())));
    drop(rt);

    let rt = runtime();
    rt.block_on(async {
        // The password goes to pg_dump in a private password file (the test server trusts
        // loopback and ignores it).
        let mut with_password = url::Url::parse(&source_url).expect("url");
        with_password
            .set_password(Some("p:w@rd"))
            .expect("password");
        let file = work.join("cp.petrel-backup");
        let report = backup::backup(&backup_options(
            &h,
            Some(with_password.as_str()),
            &key,
            &file,
        ))
        .await
        .expect("backup");
        assert_eq!(report.kind, backup::format::SourceKind::Postgres);
        // A PostgreSQL backup restores to PostgreSQL only.
        let e = backup::restore(&restore_options(&file, &key, &work.join("x/control"), None))
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::KindMismatch { .. }), "{e}");

        let target = work.join("restored/control");
        backup::restore(&restore_options(&file, &key, &target, Some(&target_url)))
            .await
            .expect("restore");
        let source = postgres_tables(&source_url).await;
        assert_same(&source, &postgres_tables(&target_url).await);
        let e = backup::restore(&restore_options(&file, &key, &target, Some(&target_url)))
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::TargetNotEmpty { .. }), "{e}");

        serves(&target, Some(&target_url), &h.owner_key, &tenants).await;
    });
    drop(rt);
    let rt = runtime();
    rt.block_on(async {
        drop_database(&base, &source_name).await;
        drop_database(&base, &target_name).await;
    });
}
