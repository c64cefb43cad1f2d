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

pub mod audit;
pub mod credentials;
pub mod deleted_tenants;
pub mod dmarc;
pub mod domain_checks;
pub mod domains;
pub mod engine_identities;
pub mod engines;
pub mod events;
pub mod exports;
pub mod guardrails;
pub mod limits;
mod migrations;
pub mod sealed;
pub mod shaping;
pub mod suppressions;
pub mod tenants;
pub mod tls_rpt;
pub mod token_keys;
pub mod webhooks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Row};

use crate::audit::AuditEntry;
use crate::ControlError;
use migrations::MIGRATIONS;

/// What a store call can fail with. Mapped to an HTTP answer in exactly one place
/// (`From<StoreError> for ApiError`), so handlers only `?` it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row does not exist, or belongs to another tenant (indistinguishable on purpose).
    /// The field names the kind of object (`tenant`, `domain`...).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The change conflicts with stored state (a name, prefix or selector already taken). The
    /// field is the message the API answers.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database failed or refused a statement. Usually transient (connection, lock); a
    /// unique violation is a conflict (see [`StoreError::is_unique_violation`]).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value breaks an invariant (bad JSON column, unknown enum name).
    #[error("corrupt stored data in {column}: {reason}")]
    Corrupt {
        column: &'static str,
        reason: String,
    },
}

impl StoreError {
    /// True when a UNIQUE constraint refused the statement (a name already taken, or another
    /// node won a race).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
    }
}

/// Every store call returns this.
pub type StoreResult<T> = Result<T, StoreError>;

/// Set on every SQLite connection: a 64 MiB page cache (`cache_size` in KiB when negative),
/// temporary b-trees in memory, reads through a 256 MiB memory map (no copy per page read),
/// and a checkpoint every 8,192 WAL pages (32 MiB) instead of 1,000: the event indexes' hot
/// pages are rewritten by every ingest commit, and a longer interval copies each one back to
/// the database file once instead of many times.
const SQLITE_CONNECTION_PRAGMAS: &str = "PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY; \
     PRAGMA mmap_size=268435456; PRAGMA wal_autocheckpoint=8192;";
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
    /// Private: every statement goes through this module's functions.
    pool: AnyPool,
    pub dialect: Dialect,
    /// SQLite only: whose turn it is to write. SQLite has one writer at a time, and a writer
    /// that finds the lock taken sleeps in its busy handler (1 ms, then longer steps up to
    /// 100 ms) and checks again: under a steady ingest a waiting writer (the webhook
    /// dispatcher) kept missing the lock between two ingest batches and waited seconds. Every
    /// writer of this process queues here first (first come, first served), so the database
    /// lock is free when its turn comes.
    write_turn: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Seals the secret columns (`sealed.rs`).
    sealer: Arc<sealed::Sealer>,
}

/// The systemd credential holding the control plane's key-encryption key.
pub const KEK_CREDENTIAL: &str = petrel_seal::KEK_CREDENTIAL;

/// The key-encryption key: `key_file`, else the credential `petrel-kek`, else
/// `<data_dir>/keys/kek`, made at the first start with a warning. Every node sharing a database
/// must be given the same key.
fn key_source(
    data_dir: &Path,
    key_file: Option<&Path>,
) -> Result<Arc<dyn petrel_seal::KeySource>, ControlError> {
    let configured = key_file
        .map(Path::to_path_buf)
        .or_else(|| petrel_seal::secret_file::credential(KEK_CREDENTIAL));
    let kek = match configured {
        Some(p) => petrel_seal::KekFile::load(&p)?,
        None => {
            let p = data_dir.join("keys").join("kek");
            let (kek, created) = petrel_seal::KekFile::load_or_generate(&p)?;
            if created {
                tracing::warn!(path = %p.display(), "generated the control plane's key-encryption key in its data directory; production keeps it elsewhere (--key-file, or the systemd credential petrel-kek), the same on every node");
            }
            kek
        }
    };
    Ok(Arc::new(kek))
}

/// The embedded default: `<control dir>/petrel.db`.
pub fn default_sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("petrel.db").display())
}

impl Db {
    /// Connects (creating the SQLite file and its directory when needed) and migrates, with
    /// the default key-encryption key (see [`Db::open_keyed`]).
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Db, ControlError> {
        Self::open_keyed(data_dir, database_url, None).await
    }

    /// [`Db::open`] with the key-encryption key in `key_file` (None: the credential
    /// `petrel-kek`, else `<data_dir>/keys/kek`, made at first start).
    pub async fn open_keyed(
        data_dir: &Path,
        database_url: Option<&str>,
        key_file: Option<&Path>,
    ) -> Result<Db, ControlError> {
        Self::open_rotating(
            data_dir,
            database_url,
            key_file,
            sealed::Rotation::default(),
        )
        .await
    }

    /// [`Db::open_keyed`] whose data keys rotate by `rotation` (the server's clock and
    /// `--data-key-rotate-after-days`).
    pub async fn open_rotating(
        data_dir: &Path,
        database_url: Option<&str>,
        key_file: Option<&Path>,
        rotation: sealed::Rotation,
    ) -> Result<Db, ControlError> {
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
        let sqlite = dialect == Dialect::Sqlite;
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if sqlite {
                        // Per connection: a page cache that holds the hot index pages of the
                        // event tables, and sort/temp b-trees in memory (measured: event ingest
                        // 12.6k -> 14.9k events/s, CPU per event -22 %).
                        sqlx::Executor::execute(&mut *conn, SQLITE_CONNECTION_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if sqlite {
            // Persistent in the file: readers never block the writer.
            sqlx::query("PRAGMA journal_mode=WAL")
                .fetch_all(&pool)
                .await?;
        }
        let sealer = Arc::new(sealed::Sealer::new(
            key_source(data_dir, key_file)?,
            pool.clone(),
            rotation,
        ));
        let db = Db {
            pool,
            dialect,
            write_turn: sqlite.then(|| Arc::new(tokio::sync::Mutex::new(()))),
            sealer,
        };
        db.migrate().await?;
        sealed::seal_existing(&db).await?;
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
            let (blob, ctext) = match self.dialect {
                Dialect::Sqlite => ("BLOB", "TEXT"),
                Dialect::Postgres => ("BYTEA", "TEXT COLLATE \"C\""),
            };
            let sql = sql.replace("{blob}", blob).replace("{ctext}", ctext);
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

    /// Seals and opens the secret columns.
    pub fn sealer(&self) -> &Arc<sealed::Sealer> {
        &self.sealer
    }

    /// A pooled connection for reads outside a mutation.
    pub async fn conn(&self) -> StoreResult<PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// The current policy version (0 before the first mutation).
    pub async fn policy_version(&self) -> StoreResult<u64> {
        policy_version(&mut *self.conn().await?).await
    }

    /// A read-only transaction that sees one consistent state (the snapshot reads every table
    /// in it, so its version matches its content). SQLite transactions are serialisable
    /// already; PostgreSQL needs REPEATABLE READ for that.
    pub async fn begin_consistent_read(&self) -> StoreResult<sqlx::Transaction<'static, Any>> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// A plain write transaction for data that is not policy (delivery events): no version
    /// bump, no audit entry. On SQLite it takes the write lock at `BEGIN` (`IMMEDIATE`, waiting
    /// up to the busy timeout): a transaction that reads first and writes later fails with
    /// "database is locked", without waiting, when another writer committed in between.
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        let turn = self.write_turn().await;
        let tx = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Waits for this process's write turn (SQLite; nothing to wait for on PostgreSQL).
    async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_turn {
            Some(m) => Some(m.clone().lock_owned().await),
            None => None,
        }
    }

    /// Starts a mutation: bumps the version (taking the write lock) inside a new transaction.
    pub async fn begin_mutation(&self) -> StoreResult<Mutation> {
        let turn = self.write_turn().await;
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
            announce: true,
            sealer: self.sealer.clone(),
            _turn: turn,
        })
    }

    /// Starts an audited change of data that is not in the policy snapshot (suppression
    /// entries): the same lock and audit entry as [`Db::begin_mutation`], but the policy
    /// version stays as it is, so no engine is sent a new snapshot for it (such data reaches
    /// engines as deltas of its own). On SQLite the write lock is taken at `BEGIN`.
    pub async fn begin_data_mutation(&self) -> StoreResult<Mutation> {
        let WriteTx { mut tx, _turn } = self.begin_write().await?;
        // A no-op update of the row every mutation locks first: the audit chain's lock.
        let version: i64 = sqlx::query(
            "UPDATE petrel_meta SET policy_version = policy_version WHERE id = 1 \
             RETURNING policy_version",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get("policy_version")?;
        Ok(Mutation {
            tx,
            version,
            dialect: self.dialect,
            announce: false,
            sealer: self.sealer.clone(),
            _turn,
        })
    }
}

/// The policy version stored in `petrel_meta` (0 before the first mutation).
pub async fn policy_version(conn: &mut AnyConnection) -> StoreResult<u64> {
    let v: i64 = sqlx::query("SELECT policy_version FROM petrel_meta WHERE id = 1")
        .fetch_one(conn)
        .await?
        .try_get("policy_version")?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// An open mutation transaction. Finish it with [`Mutation::commit`], which appends the audit
/// row: there is no way to commit a change without its audit entry.
pub struct Mutation {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// The policy version this mutation produces (a data mutation: the current one).
    pub version: i64,
    dialect: Dialect,
    /// Whether commit announces the version on [`POLICY_CHANNEL`] (policy mutations only).
    announce: bool,
    sealer: Arc<sealed::Sealer>,
    /// Held until the transaction is dropped (declared after it, so dropped after it).
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// A plain write transaction ([`Db::begin_write`]): the connection of the transaction, and on
/// SQLite this process's write turn, held until it commits or is dropped.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, Any>,
    /// Declared after `tx`: released only once the transaction is gone.
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

impl WriteTx {
    pub async fn commit(self) -> StoreResult<()> {
        let WriteTx { tx, _turn } = self;
        tx.commit().await?;
        Ok(())
    }
}

/// The PostgreSQL channel on which a committed mutation announces its policy version, so every
/// control plane node pushes it at once (the version poll stays as the fallback).
pub const POLICY_CHANNEL: &str = "petrel_policy";

impl Mutation {
    /// The transaction's connection, for the store calls that make up the change.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// The sealer, with the connection (for a store call that seals or opens).
    pub fn sealed(&mut self) -> (&mut AnyConnection, &sealed::Sealer) {
        (&mut self.tx, &self.sealer)
    }

    /// Appends the audit row and commits. Returns the new policy version.
    pub async fn commit(mut self, entry: AuditEntry) -> StoreResult<u64> {
        crate::audit::append(&mut self.tx, &self.sealer, &entry).await?;
        if self.dialect == Dialect::Postgres && self.announce {
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

/// The PostgreSQL channel on which an ingest that stored new events says so when it commits,
/// so the webhook dispatcher of every node wakes at once (the dispatcher's poll stays as the
/// fallback).
pub const EVENTS_CHANNEL: &str = "petrel_events";

/// What a [`VersionListener`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A mutation committed this policy version.
    Version(u64),
    /// An ingest committed new events.
    Events,
    /// A payload that is not one of ours (logged by the caller).
    Unknown,
}

/// A PostgreSQL connection that hears the versions committed mutations announce on
/// [`POLICY_CHANNEL`], and the new events ingests announce on [`EVENTS_CHANNEL`] (by any
/// control plane node).
pub struct VersionListener(sqlx::postgres::PgListener);

impl VersionListener {
    pub async fn connect(database_url: &str) -> StoreResult<VersionListener> {
        let mut listener = sqlx::postgres::PgListener::connect(database_url).await?;
        listener
            .listen_all([POLICY_CHANNEL, EVENTS_CHANNEL])
            .await?;
        Ok(VersionListener(listener))
    }

    /// The next notice.
    pub async fn recv(&mut self) -> StoreResult<Notice> {
        let notification = self.0.recv().await?;
        Ok(match notification.channel() {
            EVENTS_CHANNEL => Notice::Events,
            _ => match notification.payload().parse::<u64>() {
                Ok(v) => Notice::Version(v),
                Err(_) => Notice::Unknown,
            },
        })
    }
}

/// Within a write transaction that stored new events: announces them on [`EVENTS_CHANNEL`]
/// when (and only if) it commits. Nothing to do on SQLite (one node per database).
pub async fn announce_events(conn: &mut AnyConnection, dialect: Dialect) -> StoreResult<()> {
    if dialect == Dialect::Postgres {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(EVENTS_CHANNEL)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// A UNIQUE violation as [`StoreError::Conflict`] (a name, prefix or selector already taken);
/// other failures unchanged.
fn conflict_on_unique(e: sqlx::Error) -> StoreError {
    let e = StoreError::Database(e);
    if e.is_unique_violation() {
        StoreError::Conflict("a resource with that name already exists")
    } else {
        e
    }
}

/// Reads a 0/1 column as a bool.
fn get_bool(row: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

/// Reads a JSON text column holding a list of strings.
fn get_list(row: &AnyRow, col: &'static str) -> StoreResult<Vec<String>> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        column: col,
        reason: e.to_string(),
    })
}

/// A list of strings as its JSON text column.
fn list_json(v: &[String]) -> String {
    serde_json::Value::from(v.to_vec()).to_string()
}

/// Reads an optional non-negative integer column.
fn get_opt_u64(row: &AnyRow, col: &str) -> Result<Option<u64>, sqlx::Error> {
    Ok(row
        .try_get::<Option<i64>, _>(col)?
        .and_then(|v| u64::try_from(v).ok()))
}

/// A non-negative integer as a `BIGINT` (saturating: limits above `i64::MAX` mean "no limit").
fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
