//! The keyring: every data key of one engine (or one control plane), wrapped by the
//! key-encryption key, in `<dir>/keyring.json`.
//!
//! - A tenant gets its own data keys; the operator's key (owner `null`) seals what has no
//!   tenant. New data uses the owner's newest key; a key older than the rotation period is
//!   followed by a new one ([`Keyring::ensure`]). Old keys stay while data may need them.
//! - Destroying a tenant's keys ([`Keyring::destroy_owner`]) makes whatever they sealed
//!   unreadable, in live files and in backups alike (crypto-shredding). A backup of the keyring
//!   itself stays readable under the key-encryption key that wrapped it until that key is
//!   rotated away, so deletion is followed by `petrel keys rotate`.
//! - Rotating the key-encryption key re-wraps the entries ([`Keyring::rewrap`]); no sealed data
//!   is rewritten.
//! - Every change is a read-modify-write of the file under an exclusive lock
//!   (`keyring.lock`), with the key source re-read first, so `petrel keys rotate` and a running
//!   engine never undo each other. The file is replaced atomically and synced before the new
//!   key seals anything.
//! - Each entry's associated data names its id and owner: an entry edited to belong to someone
//!   else fails to unwrap.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::aead::{DataKey, Owner};
use crate::error::SealError;
use crate::kek::{write_atomic, KeySource};

/// File name of the keyring in its directory.
pub const KEYRING_FILE: &str = "keyring.json";
/// File the keyring's writers lock.
pub const KEYRING_LOCK_FILE: &str = "keyring.lock";
/// Most data keys a keyring holds (a tenant gets about twelve a year at the default period).
pub const DATA_KEYS_MAX: usize = 1_000_000;
/// Largest keyring file read.
pub const KEYRING_FILE_BYTES_MAX: u64 = 512 << 20;
/// Default age after which an owner's next data goes under a new data key: 30 days.
pub const DATA_KEY_ROTATE_AFTER_MS_DEFAULT: u64 = 30 * 24 * 3600 * 1000;
/// Most deleted tenants remembered (their ids refuse new keys); the oldest are forgotten first.
pub const DESTROYED_OWNERS_MAX: usize = 100_000;
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct KeyringFile {
    format: u32,
    next_id: u32,
    keys: Vec<Entry>,
    /// Tenants whose keys were destroyed, oldest first: none is ever made for them again (a
    /// message of a deleted tenant that arrives late is refused, not sealed under a new key).
    #[serde(default)]
    destroyed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: u32,
    owner: Owner,
    created_unix_ms: u64,
    kek_version: u32,
    /// Hex of the wrapped key.
    wrapped: String,
}

#[derive(Debug, Default)]
struct Ring {
    by_id: HashMap<u32, Arc<DataKey>>,
    tenants: HashMap<String, Arc<DataKey>>,
    operator: Option<Arc<DataKey>>,
    destroyed: std::collections::HashSet<String>,
}

impl Ring {
    fn insert(&mut self, key: Arc<DataKey>) {
        let newer = |cur: &Option<&Arc<DataKey>>| cur.is_none_or(|c| c.id() < key.id());
        match key.owner() {
            Some(t) => {
                if newer(&self.tenants.get(t)) {
                    self.tenants.insert(t.to_string(), key.clone());
                }
            }
            None => {
                if newer(&self.operator.as_ref()) {
                    self.operator = Some(key.clone());
                }
            }
        }
        self.by_id.insert(key.id(), key);
    }

    fn current(&self, owner: Option<&str>) -> Option<&Arc<DataKey>> {
        match owner {
            Some(t) => self.tenants.get(t),
            None => self.operator.as_ref(),
        }
    }
}

/// Send + Sync: one per process, shared by every shard as `Arc<Keyring>`.
#[derive(Debug)]
pub struct Keyring {
    dir: PathBuf,
    source: Arc<dyn KeySource>,
    ring: RwLock<Ring>,
    /// Serializes this process's writers (the file lock serializes processes).
    write: Mutex<()>,
}

fn aad(id: u32, owner: Option<&str>) -> Vec<u8> {
    let mut a = b"petrel-data-key\0".to_vec();
    a.extend_from_slice(&id.to_le_bytes());
    match owner {
        Some(t) => {
            a.push(1);
            a.extend_from_slice(t.as_bytes());
        }
        None => a.push(0),
    }
    a
}

/// Wraps `key` under `source`'s current version, bound to its id and owner: (version,
/// wrapped bytes). For a keyring kept elsewhere (the control plane keeps its own in its
/// database, shared by every node).
pub fn wrap_key(source: &dyn KeySource, key: &DataKey) -> Result<(u32, Vec<u8>), SealError> {
    source.wrap(&aad(key.id(), key.owner()), key.raw())
}

/// Unwraps what [`wrap_key`] wrapped.
pub fn unwrap_key(
    source: &dyn KeySource,
    id: u32,
    owner: Owner,
    created_unix_ms: u64,
    kek_version: u32,
    wrapped: &[u8],
) -> Result<DataKey, SealError> {
    let raw = unwrap_raw(source, id, owner.as_deref(), kek_version, wrapped)?;
    DataKey::from_raw(id, owner, created_unix_ms, raw)
}

/// A wrapped key's bytes; a failed open is reported as the entry that did not unwrap.
fn unwrap_raw(
    source: &dyn KeySource,
    id: u32,
    owner: Option<&str>,
    kek_version: u32,
    wrapped: &[u8],
) -> Result<zeroize::Zeroizing<[u8; 32]>, SealError> {
    source
        .unwrap(kek_version, &aad(id, owner), wrapped)
        .map_err(|err| match err {
            SealError::Open => SealError::Unwrap {
                id,
                version: kek_version,
            },
            other => other,
        })
}

/// Wall-clock Unix milliseconds: a new key's creation time.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Keyring {
    /// Opens `<dir>/keyring.json` (creating the directory; no file means no keys yet) and
    /// unwraps every key. Fails when a key does not unwrap: the wrong key file.
    pub fn open(dir: &Path, source: Arc<dyn KeySource>) -> Result<Keyring, SealError> {
        std::fs::create_dir_all(dir).map_err(|e| SealError::io("create", dir, e))?;
        let keyring = Keyring {
            dir: dir.to_path_buf(),
            source,
            ring: RwLock::new(Ring::default()),
            write: Mutex::new(()),
        };
        let file = keyring.locked(|_| Ok(None))?;
        let mut ring = Ring::default();
        for e in &file.keys {
            ring.insert(Arc::new(keyring.unwrap_entry(e)?));
        }
        ring.destroyed = file.destroyed.iter().cloned().collect();
        *keyring.ring_mut() = ring;
        Ok(keyring)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key new data of `owner` goes under (None: the operator's), if it has one.
    pub fn current(&self, owner: Option<&str>) -> Option<Arc<DataKey>> {
        self.ring().current(owner).cloned()
    }

    /// The key with `id`, to open what it sealed.
    pub fn get(&self, id: u32) -> Option<Arc<DataKey>> {
        self.ring().by_id.get(&id).cloned()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.ring().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes sure every owner in `owners` has a key younger than `rotate_after_ms` (None:
    /// any key will do). Returns the ids made; the file is durable before they are used.
    pub fn ensure(
        &self,
        owners: &[Owner],
        now_unix_ms: u64,
        rotate_after_ms: Option<u64>,
    ) -> Result<Vec<u32>, SealError> {
        let due = |ring: &Ring, o: &Owner| match ring.current(o.as_deref()) {
            None => true,
            Some(k) => rotate_after_ms
                .is_some_and(|r| k.created_unix_ms().saturating_add(r) <= now_unix_ms),
        };
        let alive = |ring: &Ring, o: &Owner| o.as_ref().is_none_or(|t| !ring.destroyed.contains(t));
        let mut needed: Vec<Owner> = {
            let ring = self.ring();
            owners
                .iter()
                .filter(|o| alive(&ring, o) && due(&ring, o))
                .cloned()
                .collect()
        };
        needed.sort();
        needed.dedup();
        if needed.is_empty() {
            return Ok(Vec::new());
        }
        let _w = self.write_lock();
        // Another thread may have made them while this one waited.
        needed.retain(|o| due(&self.ring(), o));
        let mut made = Vec::new();
        self.locked(|file| {
            // Another process may have destroyed one of them meanwhile.
            needed.retain(|o| o.as_ref().is_none_or(|t| !file.destroyed.contains(t)));
            if file.keys.len() + needed.len() > DATA_KEYS_MAX {
                return Err(SealError::KeyringFull(file.keys.len()));
            }
            for owner in &needed {
                let id = file.next_id.max(1);
                file.next_id = id + 1;
                let key = DataKey::generate(id, owner.clone(), now_unix_ms)?;
                let (kek_version, wrapped) =
                    self.source.wrap(&aad(id, owner.as_deref()), key.raw())?;
                file.keys.push(Entry {
                    id,
                    owner: owner.clone(),
                    created_unix_ms: now_unix_ms,
                    kek_version,
                    wrapped: hex::encode(wrapped),
                });
                made.push(Arc::new(key));
            }
            Ok(Some(()))
        })?;
        let mut ring = self.ring_mut();
        let ids = made.iter().map(|k| k.id()).collect();
        for k in made {
            ring.insert(k);
        }
        Ok(ids)
    }

    /// The owner's current key, made now if it has none (the clock is read only then: this
    /// runs for every message a shard stores).
    pub fn current_or_create(&self, owner: Option<&str>) -> Result<Arc<DataKey>, SealError> {
        if let Some(k) = self.current(owner) {
            return Ok(k);
        }
        if let Some(t) = owner.filter(|t| self.ring().destroyed.contains(*t)) {
            return Err(SealError::OwnerDestroyed(t.to_string()));
        }
        let ids = self.ensure(&[owner.map(str::to_string)], unix_now_ms(), None)?;
        self.current(owner)
            .ok_or(SealError::UnknownKey(ids.first().copied().unwrap_or(0)))
    }

    /// Destroys every key of tenant `owner`: what they sealed can no longer be read, here or
    /// in any copy, and no new key is made for it. Returns how many were destroyed.
    pub fn destroy_owner(&self, owner: &str) -> Result<usize, SealError> {
        let done_here = {
            let ring = self.ring();
            ring.destroyed.contains(owner) && !ring.tenants.contains_key(owner)
        };
        if done_here {
            // Nothing to change: no rewrite of the file (a restart handles every deleted tenant
            // the policy lists again).
            return Ok(0);
        }
        let _w = self.write_lock();
        let mut destroyed = Vec::new();
        self.locked(|file| {
            file.keys.retain(|e| {
                let mine = e.owner.as_deref() == Some(owner);
                if mine {
                    destroyed.push(e.id);
                }
                !mine
            });
            let listed = file.destroyed.iter().any(|t| t == owner);
            if !listed {
                file.destroyed.push(owner.to_string());
                let over = file.destroyed.len().saturating_sub(DESTROYED_OWNERS_MAX);
                file.destroyed.drain(..over);
            }
            Ok((!destroyed.is_empty() || !listed).then_some(()))
        })?;
        let mut ring = self.ring_mut();
        ring.destroyed.insert(owner.to_string());
        ring.tenants.remove(owner);
        for id in &destroyed {
            ring.by_id.remove(id);
        }
        Ok(destroyed.len())
    }

    /// True once `owner`'s keys were destroyed here.
    pub fn is_destroyed(&self, owner: &str) -> bool {
        self.ring().destroyed.contains(owner)
    }

    /// Tenants that have keys here.
    pub fn tenants(&self) -> BTreeSet<String> {
        self.ring()
            .by_id
            .values()
            .filter_map(|k| k.owner().map(str::to_string))
            .collect()
    }

    /// Re-wraps every entry not wrapped under the key source's current version. Returns how
    /// many were re-wrapped. Sealed data is untouched: the data keys stay the same.
    pub fn rewrap(&self) -> Result<usize, SealError> {
        let _w = self.write_lock();
        let mut n = 0;
        self.locked(|file| {
            let current = self.source.current_version();
            for e in file.keys.iter_mut().filter(|e| e.kek_version != current) {
                let raw = self.unwrap_raw(e)?;
                let (v, wrapped) = self.source.wrap(&aad(e.id, e.owner.as_deref()), &raw)?;
                e.kek_version = v;
                e.wrapped = hex::encode(wrapped);
                n += 1;
            }
            Ok(Some(()))
        })?;
        Ok(n)
    }

    /// Key-encryption key versions the file's entries are wrapped under.
    pub fn kek_versions_in_use(&self) -> Result<BTreeSet<u32>, SealError> {
        let file = self.locked(|_| Ok(None))?;
        Ok(file.keys.iter().map(|e| e.kek_version).collect())
    }

    fn unwrap_raw(&self, e: &Entry) -> Result<zeroize::Zeroizing<[u8; 32]>, SealError> {
        let wrapped = hex::decode(&e.wrapped).map_err(|_| SealError::Unwrap {
            id: e.id,
            version: e.kek_version,
        })?;
        unwrap_raw(
            self.source.as_ref(),
            e.id,
            e.owner.as_deref(),
            e.kek_version,
            &wrapped,
        )
    }

    fn unwrap_entry(&self, e: &Entry) -> Result<DataKey, SealError> {
        DataKey::from_raw(
            e.id,
            e.owner.clone(),
            e.created_unix_ms,
            self.unwrap_raw(e)?,
        )
    }

    /// Runs `f` on the file's contents under the file lock, the key source re-read first;
    /// writes the file back when `f` returns `Some`. Returns the contents as left.
    fn locked(
        &self,
        f: impl FnOnce(&mut KeyringFile) -> Result<Option<()>, SealError>,
    ) -> Result<KeyringFile, SealError> {
        let lock_path = self.dir.join(KEYRING_LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SealError::io("open", &lock_path, e))?;
        lock.lock()
            .map_err(|e| SealError::io("lock", &lock_path, e))?;
        self.source.refresh()?;
        let path = self.dir.join(KEYRING_FILE);
        let mut file = read_file(&path)?;
        if f(&mut file)?.is_some() {
            file.format = FORMAT;
            let bytes = serde_json::to_vec_pretty(&file).map_err(|e| SealError::KeyringFormat {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            write_atomic(&path, &bytes)?;
        }
        drop(lock);
        Ok(file)
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ring_mut(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn read_file(path: &Path) -> Result<KeyringFile, SealError> {
    let bad = |reason: String| SealError::KeyringFormat {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(KeyringFile {
                format: FORMAT,
                next_id: 1,
                keys: Vec::new(),
                destroyed: Vec::new(),
            })
        }
        Err(e) => return Err(SealError::io("read", path, e)),
    };
    if bytes.len() as u64 > KEYRING_FILE_BYTES_MAX {
        return Err(bad("larger than KEYRING_FILE_BYTES_MAX".into()));
    }
    let file: KeyringFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if file.format != FORMAT {
        return Err(bad(format!(
            "format {} (this build reads {FORMAT})",
            file.format
        )));
    }
    if file.keys.iter().any(|e| e.id == 0 || e.id >= file.next_id) {
        return Err(bad("a key id is 0 or not below next_id".into()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kek::KekFile;

    fn setup() -> (tempfile::TempDir, Arc<KekFile>) {
        let dir = tempfile::tempdir().unwrap();
        let kek = Arc::new(KekFile::generate(&dir.path().join("kek")).unwrap());
        (dir, kek)
    }

    #[test]
    fn keys_are_made_per_owner_persisted_and_reopened() {
        let (dir, kek) = setup();
        let ring = Keyring::open(&dir.path().join("keys"), kek.clone()).unwrap();
        assert!(ring.current(Some("t1")).is_none());
        let made = ring
            .ensure(&[Some("t1".into()), None, Some("t1".into())], 1_000, None)
            .unwrap();
        assert_eq!(made.len(), 2);
        let t1 = ring.current(Some("t1")).unwrap();
        let op = ring.current(None).unwrap();
        assert_ne!(t1.id(), op.id());
        let mut frame = Vec::new();
        t1.seal_append(b"m", &[b"secret"], &mut frame);
        // Nothing new when every owner has a key and no rotation is asked for.
        assert!(ring
            .ensure(&[Some("t1".into())], 2_000, None)
            .unwrap()
            .is_empty());
        drop(ring);
        let again = Keyring::open(&dir.path().join("keys"), kek.clone()).unwrap();
        assert_eq!(again.len(), 2);
        let k = again.get(t1.id()).unwrap();
        assert_eq!(k.open(b"m", &frame).unwrap(), b"secret");
        let text = std::fs::read_to_string(dir.path().join("keys").join(KEYRING_FILE)).unwrap();
        assert!(text.contains("\"t1\""));
    }

    #[test]
    fn a_key_past_its_period_is_followed_by_a_new_one_and_the_old_one_still_opens() {
        let (dir, kek) = setup();
        let ring = Keyring::open(dir.path(), kek).unwrap();
        ring.ensure(&[Some("t1".into())], 1_000, None).unwrap();
        let first = ring.current(Some("t1")).unwrap();
        let mut frame = Vec::new();
        first.seal_append(b"", &[b"old"], &mut frame);
        assert!(ring
            .ensure(&[Some("t1".into())], 1_999, Some(1_000))
            .unwrap()
            .is_empty());
        let made = ring
            .ensure(&[Some("t1".into())], 2_000, Some(1_000))
            .unwrap();
        assert_eq!(made.len(), 1);
        let second = ring.current(Some("t1")).unwrap();
        assert!(second.id() > first.id());
        assert_eq!(
            ring.get(first.id()).unwrap().open(b"", &frame).unwrap(),
            b"old"
        );
    }

    #[test]
    fn destroying_a_tenant_leaves_its_data_unreadable_and_others_untouched() {
        let (dir, kek) = setup();
        let ring = Keyring::open(dir.path(), kek.clone()).unwrap();
        ring.ensure(&[Some("gone".into()), Some("kept".into())], 1, None)
            .unwrap();
        let gone = ring.current(Some("gone")).unwrap().id();
        let kept = ring.current(Some("kept")).unwrap().id();
        assert_eq!(ring.destroy_owner("gone").unwrap(), 1);
        assert!(ring.get(gone).is_none() && ring.current(Some("gone")).is_none());
        let reopened = Keyring::open(dir.path(), kek).unwrap();
        assert!(reopened.get(gone).is_none());
        assert!(reopened.get(kept).is_some());
        assert_eq!(
            reopened.tenants().into_iter().collect::<Vec<_>>(),
            vec!["kept".to_string()]
        );
        // No new key for a deleted tenant, in this process or the next.
        for r in [&ring, &reopened] {
            assert!(r.is_destroyed("gone"));
            assert!(matches!(
                r.current_or_create(Some("gone")),
                Err(SealError::OwnerDestroyed(t)) if t == "gone"
            ));
            assert!(r
                .ensure(&[Some("gone".into())], 2, None)
                .unwrap()
                .is_empty());
        }
        assert!(reopened.current_or_create(Some("kept")).is_ok());
    }

    #[test]
    fn rotation_rewraps_without_changing_the_data_keys() {
        let (dir, kek) = setup();
        let ring = Keyring::open(&dir.path().join("keys"), kek.clone()).unwrap();
        let k = ring.current_or_create(Some("t1")).unwrap();
        let mut frame = Vec::new();
        k.seal_append(b"", &[b"before"], &mut frame);
        let v2 = kek.add_version().unwrap();
        assert_eq!(ring.rewrap().unwrap(), 1);
        assert_eq!(ring.kek_versions_in_use().unwrap(), BTreeSet::from([v2]));
        kek.retain_versions(&[v2]).unwrap();
        let reopened = Keyring::open(&dir.path().join("keys"), kek).unwrap();
        assert_eq!(
            reopened.get(k.id()).unwrap().open(b"", &frame).unwrap(),
            b"before"
        );
    }

    #[test]
    fn the_wrong_key_file_or_an_edited_owner_is_refused() {
        let (dir, kek) = setup();
        let ring = Keyring::open(&dir.path().join("keys"), kek).unwrap();
        ring.ensure(&[Some("t1".into())], 1, None).unwrap();
        let other = Arc::new(KekFile::generate(&dir.path().join("other")).unwrap());
        assert!(matches!(
            Keyring::open(&dir.path().join("keys"), other),
            Err(SealError::Unwrap { .. })
        ));
        let path = dir.path().join("keys").join(KEYRING_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"t1\"", "\"t2\"");
        std::fs::write(&path, text).unwrap();
        let kek = Arc::new(KekFile::load(&dir.path().join("kek")).unwrap());
        assert!(matches!(
            Keyring::open(&dir.path().join("keys"), kek),
            Err(SealError::Unwrap { .. })
        ));
    }
}
