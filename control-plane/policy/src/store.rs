//! The engine's current policy: an atomically swapped `Arc<CompiledPolicy>`, persisted so an
//! engine restarts on its last snapshot while the control plane is away.
//!
//! Readers (`current()`) never block and never see a half-applied policy. Writers (`apply`)
//! are serialized: validate, compile (DKIM keys load, CIDRs parse), write
//! `<dir>/snapshot.rkyv` atomically (temp file, fsync, rename, fsync of the directory), then
//! swap. Versions only move forward; re-applying the current version is a no-op.
//!
//! **Sealed at rest** (issue 16). With a keyring ([`AtRest`]) the file is sealed under the
//! operator's data key (magic `PTRLSNS1`, then one `petrel_seal` frame), so its DKIM keys,
//! tenant names and password hashes are never on disk in the clear; and before a snapshot is
//! put in force, every tenant it names gets a data key (rotated past its period), so a shard
//! never writes the keyring while storing that tenant's mail.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::checkpoint::CheckpointKeeper;
use crate::compiled::{CompiledPolicy, Shared};
use crate::error::PolicyError;
use crate::snapshot::{self, PolicySnapshot};
use crate::suppression::{SuppressionKeyer, SuppressionSet};
use petrel_seal::Keyring;

/// File name of the persisted snapshot inside the policy directory.
pub const SNAPSHOT_FILE: &str = "snapshot.rkyv";
const SNAPSHOT_TEMP_FILE: &str = "snapshot.rkyv.tmp";
/// First bytes of a sealed snapshot file.
const SEALED_SNAPSHOT_MAGIC: &[u8; 8] = b"PTRLSNS1";
/// Associated data of the sealed snapshot frame.
const SNAPSHOT_AAD: &[u8] = b"petrel-policy-snapshot";

/// Sealing at rest: the keyring, and how old a data key may get before new data goes under a
/// new one.
#[derive(Debug, Clone)]
pub struct AtRest {
    pub keys: Arc<Keyring>,
    pub data_key_rotate_after_ms: u64,
}

/// Send + Sync; share as `Arc<PolicyStore>` between shards and the link task.
pub struct PolicyStore {
    /// `<data>/policy`.
    dir: PathBuf,
    current: ArcSwap<CompiledPolicy>,
    /// Serializes `apply` (compile + persist + swap); readers never take it.
    apply_lock: Mutex<()>,
    /// Rate buckets and AUTH cache, carried from one compiled policy to the next.
    shared: Arc<Shared>,
    /// The suppression list the link follows (issue 14): swapped whole after each applied
    /// delta, read by every shard at RCPT. Starts from `<dir>/suppressions.bin` when it is
    /// there and sound, else empty at version 0 (the link asks for a full load).
    suppressions: ArcSwap<SuppressionSet>,
    /// The secret that keys the set's hashes (random at the first start, then the saved set's).
    keyer: SuppressionKeyer,
    /// Sealing at rest; `None` keeps the file in the clear (unit tests, benchmarks' A/B).
    at_rest: Option<AtRest>,
    /// The control plane's latest signed audit checkpoint, kept in
    /// `<dir>/audit-checkpoint.json` (issue 16; the link feeds it).
    audit_checkpoint: CheckpointKeeper,
    /// True while the link to the control plane has a session (set by `run_link` at the first
    /// frame the control plane sends that is not an `Error`, cleared when the session ends);
    /// read by the engine's `petrel_control_link_up` gauge.
    link_up: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("dir", &self.dir)
            .field("version", &self.version())
            .finish()
    }
}

impl PolicyStore {
    /// Start from `<dir>/snapshot.rkyv` if it is there and sound, else from the empty policy
    /// (version 0). A corrupt file is logged and left in place for inspection; the next
    /// successful `apply` replaces it.
    pub fn load_or_empty(dir: &Path) -> PolicyStore {
        Self::open(dir, None)
    }

    /// [`PolicyStore::load_or_empty`], sealing the file with `at_rest` (and opening a sealed one).
    pub fn open(dir: &Path, at_rest: Option<AtRest>) -> PolicyStore {
        let shared = Shared::new();
        let path = dir.join(SNAPSHOT_FILE);
        let read = std::fs::read(&path).and_then(|bytes| {
            unseal(&bytes, at_rest.as_ref()).map_err(|e| std::io::Error::other(e.to_string()))
        });
        let compiled = match read {
            Ok(bytes) => match snapshot::decode(&bytes)
                .and_then(|s| CompiledPolicy::compile_with(s, shared.clone()))
            {
                Ok(c) => {
                    tracing::info!(version = c.version(), path = %path.display(), "policy loaded");
                    c
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "stored policy unusable; starting empty");
                    CompiledPolicy::empty()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CompiledPolicy::empty(),
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "stored policy unreadable; starting empty");
                CompiledPolicy::empty()
            }
        };
        let shared = compiled.shared().clone();
        let suppressions = match crate::suppression::persist::load(dir) {
            Ok(Some(set)) => {
                tracing::info!(
                    version = set.version(),
                    entries = set.len(),
                    "suppression list loaded from disk"
                );
                set
            }
            Ok(None) => SuppressionSet::new(SuppressionKeyer::random()),
            Err(e) => {
                tracing::error!(error = %e, "saved suppression list unusable; starting empty");
                SuppressionSet::new(SuppressionKeyer::random())
            }
        };
        PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(compiled),
            apply_lock: Mutex::new(()),
            shared,
            keyer: suppressions.keyer().clone(),
            suppressions: ArcSwap::from_pointee(suppressions),
            at_rest,
            audit_checkpoint: CheckpointKeeper::open(dir),
            link_up: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The control plane's latest signed audit checkpoint this engine keeps.
    pub fn audit_checkpoint(&self) -> &CheckpointKeeper {
        &self.audit_checkpoint
    }

    /// The keyring the spool seals with, when sealing at rest is on.
    pub fn keys(&self) -> Option<&Arc<Keyring>> {
        self.at_rest.as_ref().map(|a| &a.keys)
    }

    /// Gives the operator and every tenant of `s` a data key younger than the rotation period.
    /// Returns how many keys were made. Blocking (a keyring write when any is due).
    fn ensure_data_keys(&self, s: &PolicySnapshot) -> Result<usize, PolicyError> {
        let Some(at_rest) = &self.at_rest else {
            return Ok(0);
        };
        let owners: Vec<petrel_seal::Owner> = std::iter::once(None)
            .chain(s.tenants.iter().map(|t| Some(t.id.clone())))
            .collect();
        let made = at_rest.keys.ensure(
            &owners,
            petrel_seal::unix_now_ms(),
            Some(at_rest.data_key_rotate_after_ms),
        )?;
        if !made.is_empty() {
            tracing::info!(
                keys = made.len(),
                "data keys made for new or rotated owners"
            );
        }
        Ok(made.len())
    }

    /// Rotates the data keys of the policy in force that are past their period (called on a
    /// timer; a new snapshot does it too). Blocking.
    pub fn rotate_data_keys(&self) -> Result<usize, PolicyError> {
        let current = self.current();
        self.ensure_data_keys(current.snapshot())
    }

    /// The suppression set for one RCPT check (an arc-swap guard: no reference count touched;
    /// do not hold it across an await).
    pub fn suppressions(&self) -> arc_swap::Guard<Arc<SuppressionSet>> {
        self.suppressions.load()
    }

    /// The suppression set, to build the next version from (a clone shares its parts).
    pub fn suppressions_full(&self) -> Arc<SuppressionSet> {
        self.suppressions.load_full()
    }

    /// The keyer a full load must build with, so lookups hash alike.
    pub fn suppression_keyer(&self) -> &SuppressionKeyer {
        &self.keyer
    }

    /// Puts `set` in force for every shard's next RCPT check.
    pub fn publish_suppressions(&self, set: SuppressionSet) {
        self.suppressions.store(Arc::new(set));
    }

    /// The policy in force. Hold the `Arc` for one decision, then drop it.
    pub fn current(&self) -> Arc<CompiledPolicy> {
        self.current.load_full()
    }

    /// The current policy for a short look on a hot path: no reference count is touched (an
    /// arc-swap guard), so shards reading it at once do not contend on one cache line. Do not
    /// hold it across an await.
    pub fn peek(&self) -> arc_swap::Guard<Arc<CompiledPolicy>> {
        self.current.load()
    }

    /// Counts admissions on the fleet's counters from now on (the engine attaches them once,
    /// at start-up, when `[cluster] redis_url` is set; a second call changes nothing).
    pub fn attach_cluster_quotas(&self, quotas: std::sync::Arc<crate::quota::ClusterQuotas>) {
        let n = self.engines_live();
        if n > 0 {
            quotas.set_engines_live(n);
        }
        let _ = self.shared.cluster.set(quotas);
    }

    pub fn cluster_quotas(&self) -> Option<&std::sync::Arc<crate::quota::ClusterQuotas>> {
        self.shared.cluster.get()
    }

    /// The control plane reported `n` live engines (the link's `Fleet` frame).
    pub fn set_engines_live(&self, n: u32) {
        self.shared
            .engines_live
            .store(n, std::sync::atomic::Ordering::Relaxed);
        if let Some(quotas) = self.shared.cluster.get() {
            quotas.set_engines_live(n);
        }
    }

    /// Records whether the link to the control plane has a session (the link sets it).
    pub fn set_link_up(&self, up: bool) {
        self.link_up.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    /// True while the link to the control plane has a session; false before the first one,
    /// between sessions, and when no control plane is configured.
    pub fn link_up(&self) -> bool {
        self.link_up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Live engines of the fleet as last reported; 0 before the first report.
    pub fn engines_live(&self) -> u32 {
        self.shared
            .engines_live
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn version(&self) -> u64 {
        self.current.load().version()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Make `s` the policy in force. Errors: `Stale` (older than the current version; nothing
    /// changes), `Invalid`/`Key`/`TooLarge` (nothing changes), `Persist` (nothing changes: an
    /// engine that cannot write its policy keeps the previous one and the link retries).
    pub fn apply(&self, s: PolicySnapshot) -> Result<(), PolicyError> {
        let _guard = self
            .apply_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.version();
        if s.version < current {
            return Err(PolicyError::Stale {
                current,
                offered: s.version,
            });
        }
        if s.version == current && current != 0 {
            return Ok(());
        }
        let bytes = snapshot::encode(&s)?;
        let compiled = CompiledPolicy::compile_with(s, self.shared.clone())?;
        self.ensure_data_keys(compiled.snapshot())?;
        let bytes = match &self.at_rest {
            Some(a) => seal(&a.keys, &bytes)?,
            None => bytes,
        };
        self.persist(&bytes)?;
        let version = compiled.version();
        self.current.store(Arc::new(compiled));
        tracing::info!(version, "policy applied");
        Ok(())
    }

    fn persist(&self, bytes: &[u8]) -> Result<(), PolicyError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PolicyError::Persist { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let temp = self.dir.join(SNAPSHOT_TEMP_FILE);
        let path = self.dir.join(SNAPSHOT_FILE);
        // The snapshot holds DKIM private keys and password hashes: owner-only.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(err(&temp))?;
        file.write_all(bytes).map_err(err(&temp))?;
        file.sync_all().map_err(err(&temp))?;
        drop(file);
        std::fs::rename(&temp, &path).map_err(err(&path))?;
        // Make the rename itself durable.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err(&self.dir))?;
        Ok(())
    }
}

/// Seals snapshot bytes under the operator's data key.
fn seal(keys: &Keyring, bytes: &[u8]) -> Result<Vec<u8>, PolicyError> {
    let key = keys.current_or_create(None)?;
    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.extend_from_slice(SEALED_SNAPSHOT_MAGIC);
    key.seal_append(SNAPSHOT_AAD, &[bytes], &mut out);
    Ok(out)
}

/// The snapshot bytes of a file, opened when sealed. A sealed file without a keyring, or whose
/// key is gone, is an error (the engine then starts empty and the link brings the policy).
fn unseal(bytes: &[u8], at_rest: Option<&AtRest>) -> Result<Vec<u8>, PolicyError> {
    let Some(frame) = bytes.strip_prefix(SEALED_SNAPSHOT_MAGIC) else {
        return Ok(bytes.to_vec());
    };
    let keys = &at_rest
        .ok_or(PolicyError::Corrupt {
            reason: "the snapshot file is sealed and no keyring was given".into(),
        })?
        .keys;
    let id = petrel_seal::frame_key_id(frame)?;
    let key = keys.get(id).ok_or(petrel_seal::SealError::UnknownKey(id))?;
    Ok(key.open(SNAPSHOT_AAD, frame)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Credential, CredentialKind, SendingDomain, Tenant};

    fn snap(version: u64) -> PolicySnapshot {
        PolicySnapshot {
            version,
            generated_unix_ms: 1,
            tenants: vec![Tenant {
                id: "t1".into(),
                name: "Acme".into(),
                suspended: false,
                messages_per_second_max: None,
                messages_per_day_max: None,
                allow_unverified_domains: false,
                new_tenant_cap: None,
                sending_disabled: None,
                reputation_warning: None,
                list_unsubscribe: false,
                arc_seal: false,
                egress_pool: None,
                delivery_weight: 1,
            }],
            domains: vec![SendingDomain {
                tenant_id: "t1".into(),
                name: format!("v{version}.example"),
                verified: true,
                messages_per_second_max: None,
                dkim_keys: vec![],
                sending_disabled: None,
                reputation_warning: None,
                auth_failure: None,
            }],
            credentials: vec![Credential {
                id: "c1".into(),
                tenant_id: "t1".into(),
                kind: CredentialKind::Api,
                username: String::new(),
                prefix: "pk_12345".into(),
                argon2_phc: "x".into(),
                scopes: vec![],
                allowed_sender_domains: vec![],
                ip_allowlist: vec![],
                revoked: false,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn empty_then_persisted_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("policy");
        let store = PolicyStore::load_or_empty(&pdir);
        assert_eq!(store.version(), 0);
        assert!(store.current().find_domain("v3.example").is_none());

        store.apply(snap(3)).unwrap();
        assert_eq!(store.version(), 3);
        assert!(pdir.join(SNAPSHOT_FILE).exists());
        assert!(!pdir.join(SNAPSHOT_TEMP_FILE).exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pdir.join(SNAPSHOT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "snapshot readable by others: {mode:o}");

        let reloaded = PolicyStore::load_or_empty(&pdir);
        assert_eq!(reloaded.version(), 3);
        assert_eq!(reloaded.current().snapshot(), &snap(3));
    }

    #[test]
    fn a_sealed_snapshot_file_holds_nothing_readable_and_reloads_with_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Arc::new(petrel_seal::KekFile::generate(&dir.path().join("kek")).unwrap());
        let at_rest = |kek: &Arc<petrel_seal::KekFile>| AtRest {
            keys: Arc::new(Keyring::open(&dir.path().join("keys"), kek.clone()).unwrap()),
            data_key_rotate_after_ms: 1_000_000,
        };
        let pdir = dir.path().join("policy");
        let store = PolicyStore::open(&pdir, Some(at_rest(&kek)));
        let mut s = snap(4);
        s.tenants[0].name = "MARKER-tenant-name".into();
        store.apply(s.clone()).unwrap();
        let keys = store.keys().unwrap();
        // The operator and the tenant got data keys before the snapshot went in force.
        assert!(keys.current(None).is_some() && keys.current(Some("t1")).is_some());
        let raw = std::fs::read(pdir.join(SNAPSHOT_FILE)).unwrap();
        assert!(raw.starts_with(SEALED_SNAPSHOT_MAGIC));
        assert!(!raw.windows(6).any(|w| w == b"MARKER"));
        let reloaded = PolicyStore::open(&pdir, Some(at_rest(&kek)));
        assert_eq!(reloaded.current().snapshot(), &s);
        // Without the keyring the sealed file is unusable: start empty, the link brings it.
        assert_eq!(PolicyStore::load_or_empty(&pdir).version(), 0);
        // A file written in the clear (before sealing was on) still loads.
        PolicyStore::load_or_empty(&dir.path().join("clear"))
            .apply(snap(2))
            .unwrap();
        let clear = PolicyStore::open(&dir.path().join("clear"), Some(at_rest(&kek)));
        assert_eq!(clear.version(), 2);
    }

    #[test]
    fn versions_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::load_or_empty(dir.path());
        store.apply(snap(5)).unwrap();
        let before = store.current();
        assert!(matches!(
            store.apply(snap(4)),
            Err(PolicyError::Stale {
                current: 5,
                offered: 4
            })
        ));
        store.apply(snap(5)).unwrap(); // same version: no-op
        assert!(Arc::ptr_eq(&before, &store.current()));
        store.apply(snap(6)).unwrap();
        assert_eq!(store.version(), 6);
        assert_eq!(PolicyStore::load_or_empty(dir.path()).version(), 6);
    }

    #[test]
    fn invalid_snapshot_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::load_or_empty(dir.path());
        store.apply(snap(1)).unwrap();
        let mut bad = snap(2);
        bad.domains[0].tenant_id = "ghost".into();
        assert!(store.apply(bad).is_err());
        assert_eq!(store.version(), 1);
        assert_eq!(PolicyStore::load_or_empty(dir.path()).version(), 1);
    }

    #[test]
    fn corrupt_file_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::load_or_empty(dir.path());
        store.apply(snap(9)).unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(PolicyStore::load_or_empty(dir.path()).version(), 0);
    }

    #[test]
    fn persist_failure_keeps_the_previous_policy() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let store = PolicyStore::load_or_empty(&blocker.join("policy"));
        let err = store.apply(snap(1)).unwrap_err();
        assert!(matches!(err, PolicyError::Persist { .. }), "{err}");
        assert!(err.is_transient());
        assert_eq!(store.version(), 0);
    }
}
