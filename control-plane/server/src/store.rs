//! The SQL store: one code path over SQLite (embedded default) and PostgreSQL (several control
//! plane nodes), chosen by the database URL and driven through sqlx's `Any` driver.
//!
//! Portability rules the queries follow: `$n` placeholders (SQLite reads them as numbered
//! parameters), integers are `BIGINT` (booleans are 0/1), times are Unix milliseconds, binary is
//! `BLOB`/`BYTEA` (the one type the migrations spell per dialect), and upserts use
//! `ON CONFLICT .. DO UPDATE` which both accept.
//!
//! Every mutation runs in a [`Mutation`]: its first statement bumps the policy version row, which
//! takes the write lock (SQLite) or the row lock (PostgreSQL). That serialises mutations across
//! processes, so the audit chain's "read the last hash, append the next row" is race-free, and
//! the version moves in the same transaction as the change it announces.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::audit::{self, AuditEntry};
use crate::ControlError;

/// Pool size for SQLite: one writer at a time anyway; a few readers.
pub const SQLITE_CONNECTIONS_MAX: u32 = 4;
/// Pool size for PostgreSQL.
pub const POSTGRES_CONNECTIONS_MAX: u32 = 8;
/// How long a request waits for a pooled connection.
pub const POOL_ACQUIRE_TIMEOUT_MS: u64 = 10_000;

/// Which SQL dialect the URL selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A handle to the store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

/// The embedded default: `<control dir>/petrel.db`.
pub fn default_sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("petrel.db").display())
}

impl Db {
    /// Connects (creating the SQLite file and its directory when needed) and migrates.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Db, ControlError> {
        sqlx::any::install_default_drivers();
        let url = match database_url {
            Some(u) => u.to_string(),
            None => {
                let dir = data_dir.to_path_buf();
                // The database holds DKIM private keys: owner-only directory.
                let io = |source| ControlError::Io {
                    path: dir.clone(),
                    source,
                };
                std::fs::create_dir_all(&dir).map_err(io)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(
                    |source| ControlError::Io {
                        path: dir.clone(),
                        source,
                    },
                )?;
                default_sqlite_url(data_dir)
            }
        };
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(ControlError::Config(
                "database URL must start with sqlite: or postgres:".into(),
            ));
        };
        let max = match dialect {
            Dialect::Sqlite => SQLITE_CONNECTIONS_MAX,
            Dialect::Postgres => POSTGRES_CONNECTIONS_MAX,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
            .connect(&url)
            .await?;
        if dialect == Dialect::Sqlite {
            // Persistent in the file: readers never block the writer.
            sqlx::query("PRAGMA journal_mode=WAL")
                .fetch_all(&pool)
                .await?;
        }
        let db = Db { pool, dialect };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), ControlError> {
        // Through the `Executor` trait: `RawSql::execute` is an `async fn` whose future is not
        // `Send` for every lifetime, which `tokio::spawn` needs.
        sqlx::Executor::execute(
            &self.pool,
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS petrel_schema (version BIGINT PRIMARY KEY, \
                 applied_unix_ms BIGINT NOT NULL)",
            ),
        )
        .await?;
        let applied: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM petrel_schema")
            .fetch_one(&self.pool)
            .await?
            .try_get("v")?;
        for (version, sql) in MIGRATIONS {
            if *version <= applied {
                continue;
            }
            let blob = match self.dialect {
                Dialect::Sqlite => "BLOB",
                Dialect::Postgres => "BYTEA",
            };
            let sql = sql.replace("{blob}", blob);
            let mig = |source| ControlError::Migration {
                version: *version,
                source,
            };
            let mut tx = self.pool.begin().await.map_err(mig)?;
            sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(&sql))
                .await
                .map_err(mig)?;
            sqlx::query("INSERT INTO petrel_schema (version, applied_unix_ms) VALUES ($1, $2)")
                .bind(*version)
                .bind(crate::now_unix_ms())
                .execute(&mut *tx)
                .await
                .map_err(mig)?;
            tx.commit().await.map_err(mig)?;
        }
        Ok(())
    }

    /// The current policy version (0 before the first mutation).
    pub async fn policy_version(&self) -> Result<u64, ControlError> {
        let v: i64 = sqlx::query("SELECT policy_version FROM petrel_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("policy_version")?;
        Ok(u64::try_from(v).unwrap_or(0))
    }

    /// Starts a mutation: bumps the version (taking the write lock) inside a new transaction.
    pub async fn begin_mutation(&self) -> Result<Mutation, ControlError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 = sqlx::query(
            "UPDATE petrel_meta SET policy_version = policy_version + 1 WHERE id = 1 \
             RETURNING policy_version",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get("policy_version")?;
        Ok(Mutation {
            tx,
            version,
            dialect: self.dialect,
        })
    }
}

/// An open mutation transaction. Finish it with [`Mutation::commit`], which appends the audit
/// row: there is no way to commit a change without its audit entry.
pub struct Mutation {
    pub tx: sqlx::Transaction<'static, sqlx::Any>,
    /// The policy version this mutation produces.
    pub version: i64,
    dialect: Dialect,
}

/// The PostgreSQL channel on which a committed mutation announces its policy version, so every
/// control plane node pushes it at once (the version poll stays as the fallback).
pub const POLICY_CHANNEL: &str = "petrel_policy";

impl Mutation {
    /// Appends the audit row and commits. Returns the new policy version.
    pub async fn commit(mut self, entry: AuditEntry) -> Result<u64, ControlError> {
        audit::append(&mut self.tx, &entry).await?;
        if self.dialect == Dialect::Postgres {
            // Delivered to the listeners when (and only if) the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(POLICY_CHANNEL)
                .bind(self.version.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(u64::try_from(self.version).unwrap_or(0))
    }
}

/// Reads a 0/1 column as a bool.
pub fn get_bool(row: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

/// Reads a JSON text column holding a list of strings.
pub fn get_list(row: &AnyRow, col: &str) -> Result<Vec<String>, ControlError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| ControlError::Corrupt(format!("{col}: {e}")))
}

/// Reads an optional non-negative integer column.
pub fn get_opt_u64(row: &AnyRow, col: &str) -> Result<Option<u64>, sqlx::Error> {
    Ok(row
        .try_get::<Option<i64>, _>(col)?
        .and_then(|v| u64::try_from(v).ok()))
}

/// Schema versions, applied in order, each in its own transaction. `{blob}` is the dialect's
/// binary type. Never edit a released entry: append a new one.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
CREATE TABLE petrel_meta (
    id BIGINT PRIMARY KEY,
    policy_version BIGINT NOT NULL,
    defaults_json TEXT NOT NULL,
    audit_head_seq BIGINT NOT NULL,
    audit_head_hash TEXT NOT NULL
);
INSERT INTO petrel_meta (id, policy_version, defaults_json, audit_head_seq, audit_head_hash)
VALUES (1, 0, '{}', 0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    is_operator BIGINT NOT NULL,
    suspended BIGINT NOT NULL,
    messages_per_second_max BIGINT,
    messages_per_day_max BIGINT,
    allow_unverified_domains BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL
);
CREATE TABLE domains (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL UNIQUE,
    verified BIGINT NOT NULL,
    verified_loopback BIGINT NOT NULL,
    verified_unix_ms BIGINT,
    messages_per_second_max BIGINT,
    last_check_json TEXT,
    created_unix_ms BIGINT NOT NULL
);
CREATE INDEX domains_tenant ON domains (tenant_id);
CREATE TABLE dkim_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    domain_id TEXT NOT NULL REFERENCES domains(id),
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    private_key {blob} NOT NULL,
    dns_txt TEXT NOT NULL,
    activated_unix_ms BIGINT,
    created_unix_ms BIGINT NOT NULL,
    retired_unix_ms BIGINT,
    UNIQUE (domain_id, selector)
);
CREATE INDEX dkim_keys_tenant ON dkim_keys (tenant_id, domain_id);
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    username TEXT UNIQUE,
    prefix TEXT NOT NULL UNIQUE,
    phc TEXT NOT NULL,
    role TEXT,
    scopes TEXT NOT NULL,
    allowed_sender_domains TEXT NOT NULL,
    ip_allowlist TEXT NOT NULL,
    revoked BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    revoked_unix_ms BIGINT,
    rotated_unix_ms BIGINT
);
CREATE INDEX credentials_tenant ON credentials (tenant_id);
CREATE TABLE destination_limits (
    domain TEXT PRIMARY KEY,
    connections_max BIGINT,
    messages_per_second_max BIGINT,
    tls_required BIGINT NOT NULL,
    updated_unix_ms BIGINT NOT NULL
);
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    tenant_id TEXT,
    actor TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    at_unix_ms BIGINT NOT NULL,
    before_json TEXT,
    after_json TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq);
CREATE TABLE engines (
    id TEXT PRIMARY KEY,
    remote_addr TEXT NOT NULL,
    connected BIGINT NOT NULL,
    connected_unix_ms BIGINT NOT NULL,
    last_contact_unix_ms BIGINT NOT NULL,
    sent_version BIGINT NOT NULL,
    applied_version BIGINT NOT NULL
);
"#,
)];
