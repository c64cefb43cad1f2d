//! The control plane's secret columns, sealed (issue 16): DKIM private keys, webhook secrets,
//! token keys, tenant names and audit payloads are stored as AES-256-GCM frames under a data
//! key of their tenant (the operator's for what has none), never in the clear.
//!
//! - Data keys live in `data_keys` (migration 11), wrapped by the key-encryption key, so every
//!   node of a PostgreSQL control plane shares them; the key-encryption key stays outside the
//!   database (`--key-file`, the credential `petrel-kek`, else `<data>/keys/kek` made with a
//!   warning), and every node must be given the same one.
//! - A text column holds `sealed:1:<base64 frame>`, a binary one `PSL1` then the frame. A value
//!   without the prefix is a row written before sealing: it reads as it is, and
//!   [`seal_existing`] seals such rows at start.
//! - The associated data names the table, column and row, so a sealed value copied to another
//!   row fails to open.
//! - Destroying a tenant's keys ([`Sealer::destroy_owner`]) leaves its sealed values unreadable:
//!   crypto-shredding, also of audit payloads, whose chain hashes what is stored.
//! - Tenant names stay unique through a blind index: `name_index` is an HMAC of the name under
//!   a key kept for that purpose (owner `#name-index`).
//! - Keys rotate by age, as the engines' do: once an owner's current key is older than the
//!   period (`--data-key-rotate-after-days`, 30), its new values are sealed under a new key;
//!   the old ones stay for reading what they sealed. The age is read on the app's clock at each
//!   seal, so a long-running node drops its cached key when it passes the period. Two nodes
//!   that rotate at once each add a key: both are valid, and every node then seals under the
//!   newest. The name index's key never rotates (equal names must keep equal indexes).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use petrel_seal::{DataKey, KeySource, Owner, SealError};
use sqlx::{AnyConnection, Row};

use super::{StoreError, StoreResult};

/// Prefix of a sealed text column.
pub const SEALED_TEXT_PREFIX: &str = "sealed:1:";
/// Prefix of a sealed binary column.
pub const SEALED_BYTES_PREFIX: &[u8; 4] = b"PSL1";
/// The owner of the key that makes tenant names' blind index.
pub const NAME_INDEX_OWNER: &str = "#name-index";
/// Attempts at a free random key id.
const KEY_ID_ATTEMPTS: usize = 8;
/// Default age, in days, past which an owner's new values go under a new data key (as the
/// engines' `encryption.data_key_rotate_after_days`).
pub const DATA_KEY_ROTATE_AFTER_DAYS_DEFAULT: u32 = 30;
/// Largest rotation period accepted, in days (ten years, as the engines').
pub const DATA_KEY_ROTATE_AFTER_DAYS_MAX: u32 = 3_650;
const DAY_MS: u64 = 86_400_000;

/// When keys rotate: the clock their age is read on, and the period.
#[derive(Clone)]
pub struct Rotation {
    /// The app's clock (tests move it).
    pub clock: Arc<dyn crate::Clock>,
    /// Age, in ms, past which an owner's current key takes no new values; > 0.
    pub rotate_after_ms: u64,
}

impl Rotation {
    /// Every `days` (1..=[`DATA_KEY_ROTATE_AFTER_DAYS_MAX`]) on `clock`.
    pub fn every_days(
        clock: Arc<dyn crate::Clock>,
        days: u32,
    ) -> Result<Rotation, crate::ControlError> {
        if days == 0 || days > DATA_KEY_ROTATE_AFTER_DAYS_MAX {
            return Err(crate::ControlError::Config(format!(
                "the data key rotation period is {days} days (1..={DATA_KEY_ROTATE_AFTER_DAYS_MAX})"
            )));
        }
        Ok(Rotation {
            clock,
            rotate_after_ms: u64::from(days) * DAY_MS,
        })
    }
}

impl Default for Rotation {
    /// The system clock, every [`DATA_KEY_ROTATE_AFTER_DAYS_DEFAULT`] days.
    fn default() -> Rotation {
        Rotation {
            clock: Arc::new(crate::SystemClock),
            rotate_after_ms: u64::from(DATA_KEY_ROTATE_AFTER_DAYS_DEFAULT) * DAY_MS,
        }
    }
}

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation")
            .field("rotate_after_ms", &self.rotate_after_ms)
            .finish_non_exhaustive()
    }
}

/// Seals and opens column values; one per [`super::Db`], shared by its clones.
///
/// Only keys known to be committed are remembered as an owner's current key: those made by
/// [`Sealer::prepare`] in a statement of their own, or read outside a transaction. A key made
/// inside a caller's transaction serves that transaction only (it may roll back). A current
/// key past the rotation period is forgotten as current (not for reading) when next asked for.
pub struct Sealer {
    source: Arc<dyn KeySource>,
    pool: sqlx::AnyPool,
    cache: RwLock<Cache>,
    rotation: Rotation,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    by_id: HashMap<u32, Arc<DataKey>>,
    current: HashMap<Owner, Arc<DataKey>>,
}

fn seal_err(e: SealError) -> StoreError {
    StoreError::Corrupt {
        column: "data_keys",
        reason: e.to_string(),
    }
}

impl Sealer {
    pub fn new(source: Arc<dyn KeySource>, pool: sqlx::AnyPool, rotation: Rotation) -> Sealer {
        Sealer {
            source,
            pool,
            cache: RwLock::new(Cache::default()),
            rotation,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.rotation.clock.now_unix_ms()).unwrap_or(0)
    }

    /// Whether new values may still be sealed under `key`: younger than the rotation period.
    /// The name index's key never rotates: equal names must keep equal indexes.
    fn fresh(&self, key: &DataKey) -> bool {
        key.owner() == Some(NAME_INDEX_OWNER)
            || self.now_ms().saturating_sub(key.created_unix_ms()) < self.rotation.rotate_after_ms
    }

    /// Makes sure `owner` has a committed key, made in a statement of its own: call it before
    /// a transaction that seals the owner's first values (a new tenant), so SQLite's one
    /// writer is not asked for twice.
    pub async fn prepare(&self, owner: Option<&str>) -> StoreResult<Arc<DataKey>> {
        if let Some(k) = self.cached(owner) {
            return Ok(k);
        }
        let mut conn = self.pool.acquire().await?;
        let current = self.load_current(&mut conn, owner).await?;
        let key = match current.filter(|k| self.fresh(k)) {
            Some(k) => k,
            None => self.create(&mut conn, owner).await?,
        };
        self.remember(key.clone(), true);
        Ok(key)
    }

    /// The owner's cached current key while it is fresh; one past the period is forgotten as
    /// current (it stays cached for reading).
    fn cached(&self, owner: Option<&str>) -> Option<Arc<DataKey>> {
        let owner = owner.map(str::to_string);
        let key = {
            let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
            c.current.get(&owner).cloned()?
        };
        if self.fresh(&key) {
            return Some(key);
        }
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if c.current.get(&owner).is_some_and(|k| k.id() == key.id()) {
            c.current.remove(&owner);
        }
        None
    }

    fn remember(&self, key: Arc<DataKey>, current: bool) {
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if current {
            c.current
                .insert(key.owner().map(str::to_string), key.clone());
        }
        c.by_id.insert(key.id(), key);
    }

    /// The key new values of `owner` are sealed under: its newest in `data_keys`, made now in
    /// `conn`'s transaction when it has none or the newest is past the rotation period.
    pub async fn key(
        &self,
        conn: &mut AnyConnection,
        owner: Option<&str>,
    ) -> StoreResult<Arc<DataKey>> {
        if let Some(k) = self.cached(owner) {
            return Ok(k);
        }
        // A committed key, read on a connection of its own (a read: it never waits for the
        // caller's write lock), is remembered.
        let committed = {
            let mut own = self.pool.acquire().await?;
            self.load_current(&mut own, owner).await?
        };
        if let Some(k) = committed.filter(|k| self.fresh(k)) {
            self.remember(k.clone(), true);
            return Ok(k);
        }
        // None committed, or past its period: one this transaction made, else a new one.
        match self
            .load_current(conn, owner)
            .await?
            .filter(|k| self.fresh(k))
        {
            Some(k) => Ok(k),
            None => self.create(conn, owner).await,
        }
    }

    async fn load_current(
        &self,
        conn: &mut AnyConnection,
        owner: Option<&str>,
    ) -> StoreResult<Option<Arc<DataKey>>> {
        let owner_col = owner.unwrap_or("");
        let row = sqlx::query(
            "SELECT id, created_unix_ms, kek_version, wrapped FROM data_keys WHERE owner = $1 \
             ORDER BY created_unix_ms DESC, id DESC LIMIT 1",
        )
        .bind(owner_col.to_string())
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|r| self.unwrap_row(&r, owner).map(Arc::new))
            .transpose()
    }

    async fn create(
        &self,
        conn: &mut AnyConnection,
        owner: Option<&str>,
    ) -> StoreResult<Arc<DataKey>> {
        let owner_col = owner.unwrap_or("");
        // A deleted tenant's keys are destroyed for good: nothing is sealed for it again.
        if let Some(t) = owner {
            if super::deleted_tenants::get(conn, t).await?.is_some() {
                return Err(StoreError::NotFound("tenant"));
            }
        }
        // `petrel keys rotate` may have added a version (and retired the old one) meanwhile.
        self.source.refresh().map_err(seal_err)?;
        for _ in 0..KEY_ID_ATTEMPTS {
            let mut id_bytes = [0u8; 4];
            petrel_seal::aead::random_bytes(&mut id_bytes).map_err(seal_err)?;
            let id = u32::from_le_bytes(id_bytes) & 0x7fff_ffff;
            if id == 0 {
                continue;
            }
            let created = self.now_ms();
            let key =
                DataKey::generate(id, owner.map(str::to_string), created).map_err(seal_err)?;
            let (version, wrapped) =
                petrel_seal::wrap_key(self.source.as_ref(), &key).map_err(seal_err)?;
            let inserted = sqlx::query(
                "INSERT INTO data_keys (id, owner, created_unix_ms, kek_version, wrapped) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(i64::from(id))
            .bind(owner_col.to_string())
            .bind(created as i64)
            .bind(i64::from(version))
            .bind(wrapped)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(Arc::new(key));
            }
        }
        Err(StoreError::Corrupt {
            column: "data_keys",
            reason: "no free key id after KEY_ID_ATTEMPTS tries".into(),
        })
    }

    fn unwrap_row(&self, r: &sqlx::any::AnyRow, owner: Option<&str>) -> StoreResult<DataKey> {
        let id: i64 = r.try_get("id")?;
        let created: i64 = r.try_get("created_unix_ms")?;
        let version: i64 = r.try_get("kek_version")?;
        let wrapped: Vec<u8> = r.try_get("wrapped")?;
        petrel_seal::unwrap_key(
            self.source.as_ref(),
            id as u32,
            owner.map(str::to_string),
            created.max(0) as u64,
            version as u32,
            &wrapped,
        )
        .map_err(seal_err)
    }

    /// The key with `id`, from the cache or `data_keys`; None once destroyed.
    async fn by_id(&self, conn: &mut AnyConnection, id: u32) -> StoreResult<Option<Arc<DataKey>>> {
        if let Some(k) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(&id)
        {
            return Ok(Some(k.clone()));
        }
        let row = sqlx::query(
            "SELECT id, owner, created_unix_ms, kek_version, wrapped FROM data_keys WHERE id = $1",
        )
        .bind(i64::from(id))
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let owner: String = r.try_get("owner")?;
        let owner = (!owner.is_empty()).then_some(owner);
        let key = Arc::new(self.unwrap_row(&r, owner.as_deref())?);
        self.remember(key.clone(), false);
        Ok(Some(key))
    }

    /// Seals a text value of `owner` bound to `aad` (table, column, row).
    pub async fn seal_text(
        &self,
        conn: &mut AnyConnection,
        owner: Option<&str>,
        aad: &str,
        plain: &str,
    ) -> StoreResult<String> {
        let key = self.key(conn, owner).await?;
        let mut frame = Vec::with_capacity(plain.len() + petrel_seal::SEALED_OVERHEAD_BYTES);
        key.seal_append(aad.as_bytes(), &[plain.as_bytes()], &mut frame);
        Ok(format!(
            "{SEALED_TEXT_PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(frame)
        ))
    }

    /// Seals a binary value.
    pub async fn seal_bytes(
        &self,
        conn: &mut AnyConnection,
        owner: Option<&str>,
        aad: &str,
        plain: &[u8],
    ) -> StoreResult<Vec<u8>> {
        let key = self.key(conn, owner).await?;
        let mut out = SEALED_BYTES_PREFIX.to_vec();
        key.seal_append(aad.as_bytes(), &[plain], &mut out);
        Ok(out)
    }

    /// Opens a text value (one stored before sealing reads as it is). `Ok(None)`: its key was
    /// destroyed (the tenant was deleted).
    pub async fn open_text(
        &self,
        conn: &mut AnyConnection,
        aad: &str,
        stored: &str,
    ) -> StoreResult<Option<String>> {
        let Some(b64) = stored.strip_prefix(SEALED_TEXT_PREFIX) else {
            return Ok(Some(stored.to_string()));
        };
        let frame = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .map_err(|e| corrupt(aad, e.to_string()))?;
        let Some(plain) = self.open_frame(conn, aad, &frame).await? else {
            return Ok(None);
        };
        String::from_utf8(plain)
            .map(Some)
            .map_err(|e| corrupt(aad, e.to_string()))
    }

    /// Opens a binary value, as [`Sealer::open_text`].
    pub async fn open_bytes(
        &self,
        conn: &mut AnyConnection,
        aad: &str,
        stored: &[u8],
    ) -> StoreResult<Option<Vec<u8>>> {
        match stored.strip_prefix(SEALED_BYTES_PREFIX.as_slice()) {
            Some(frame) => self.open_frame(conn, aad, frame).await,
            None => Ok(Some(stored.to_vec())),
        }
    }

    async fn open_frame(
        &self,
        conn: &mut AnyConnection,
        aad: &str,
        frame: &[u8],
    ) -> StoreResult<Option<Vec<u8>>> {
        let id = petrel_seal::frame_key_id(frame).map_err(|e| corrupt(aad, e.to_string()))?;
        let Some(key) = self.by_id(conn, id).await? else {
            return Ok(None);
        };
        key.open(aad.as_bytes(), frame)
            .map(Some)
            .map_err(|e| corrupt(aad, e.to_string()))
    }

    /// The blind index of a tenant name: equal names, equal indexes; nothing else learnt.
    pub async fn name_index(&self, conn: &mut AnyConnection, name: &str) -> StoreResult<String> {
        let key = self.key(conn, Some(NAME_INDEX_OWNER)).await?;
        Ok(hex::encode(key.mac(b"tenants.name", name.as_bytes())))
    }

    /// Forgets the cached keys of `owners` (deleted on another node of a PostgreSQL control
    /// plane: their rows are gone, and this node must not open their values either).
    pub fn forget_owners(&self, owners: &[String]) {
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        for o in owners {
            c.current.remove(&Some(o.clone()));
            c.by_id.retain(|_, k| k.owner() != Some(o.as_str()));
        }
    }

    /// Destroys every data key of tenant `owner`: its sealed values can no longer be read.
    pub async fn destroy_owner(&self, conn: &mut AnyConnection, owner: &str) -> StoreResult<u64> {
        let n = sqlx::query("DELETE FROM data_keys WHERE owner = $1")
            .bind(owner.to_string())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        c.current.remove(&Some(owner.to_string()));
        c.by_id.retain(|_, k| k.owner() != Some(owner));
        Ok(n)
    }
}

/// A value that fails to open: damaged, moved to another row, or the wrong key file.
fn corrupt(aad: &str, reason: String) -> StoreError {
    StoreError::Corrupt {
        column: "sealed value",
        reason: format!("{aad}: {reason}"),
    }
}

/// The associated data of a sealed column value.
pub fn aad(table: &str, column: &str, row: &str) -> String {
    format!("{table}.{column}|{row}")
}

/// At start: the operator's and the name index's keys made (in statements of their own), then
/// every secret column value written before sealing sealed. When any was, SQLite's file is
/// vacuumed and its log truncated so the old clear pages are gone; a PostgreSQL operator runs
/// `VACUUM FULL` (the log says so).
pub async fn seal_existing(db: &super::Db) -> StoreResult<()> {
    let sealer = db.sealer();
    sealer.prepare(None).await?;
    sealer.prepare(Some(NAME_INDEX_OWNER)).await?;
    let mut conn = db.conn().await?;
    let n = super::tenants::seal_existing(&mut conn, sealer).await?
        + super::domains::seal_existing(&mut conn, sealer).await?
        + super::webhooks::seal_existing(&mut conn, sealer).await?
        + super::token_keys::seal_existing(&mut conn, sealer).await?;
    if n == 0 {
        return Ok(());
    }
    match db.dialect {
        super::Dialect::Sqlite => {
            sqlx::query("VACUUM").execute(&mut *conn).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_all(&mut *conn)
                .await?;
            tracing::info!(values = n, "sealed the secret columns written before encryption at rest; the database was vacuumed");
        }
        super::Dialect::Postgres => tracing::warn!(
            values = n,
            "sealed the secret columns written before encryption at rest; run VACUUM FULL so their old versions leave the table files"
        ),
    }
    Ok(())
}

/// Re-wraps every data key not wrapped under the key source's current version (after
/// `petrel keys rotate` added one). Values sealed under the data keys are untouched. Returns
/// how many were re-wrapped.
pub async fn rewrap_all(db: &super::Db) -> StoreResult<u64> {
    let sealer = db.sealer();
    sealer.source.refresh().map_err(seal_err)?;
    let current = sealer.source.current_version();
    let mut conn = db.conn().await?;
    let rows = sqlx::query(
        "SELECT id, owner, created_unix_ms, kek_version, wrapped FROM data_keys \
         WHERE kek_version <> $1",
    )
    .bind(i64::from(current))
    .fetch_all(&mut *conn)
    .await?;
    let mut n = 0;
    for r in rows {
        let owner: String = r.try_get("owner")?;
        let owner = (!owner.is_empty()).then_some(owner);
        let key = sealer.unwrap_row(&r, owner.as_deref())?;
        let (version, wrapped) =
            petrel_seal::wrap_key(sealer.source.as_ref(), &key).map_err(seal_err)?;
        sqlx::query("UPDATE data_keys SET kek_version = $1, wrapped = $2 WHERE id = $3")
            .bind(i64::from(version))
            .bind(wrapped)
            .bind(i64::from(key.id()))
            .execute(&mut *conn)
            .await?;
        n += 1;
    }
    Ok(n)
}

/// Key-encryption key versions the data keys are wrapped under.
pub async fn kek_versions_in_use(db: &super::Db) -> StoreResult<std::collections::BTreeSet<u32>> {
    let rows = sqlx::query("SELECT DISTINCT kek_version FROM data_keys")
        .fetch_all(&mut *db.conn().await?)
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<i64, _>("kek_version")? as u32))
        .collect()
}
