//! The engine's current policy: an atomically swapped `Arc<CompiledPolicy>`, persisted so an
//! engine restarts on its last snapshot while the control plane is away.
//!
//! Readers (`current()`) never block and never see a half-applied policy. Writers (`apply`)
//! are serialized: validate, compile (DKIM keys load, CIDRs parse), write
//! `<dir>/snapshot.rkyv` atomically (temp file, fsync, rename, fsync of the directory), then
//! swap. Versions only move forward; re-applying the current version is a no-op.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::compiled::{CompiledPolicy, Shared};
use crate::error::PolicyError;
use crate::snapshot::{self, PolicySnapshot};
use crate::suppression::{SuppressionKeyer, SuppressionSet};

/// File name of the persisted snapshot inside the policy directory.
pub const SNAPSHOT_FILE: &str = "snapshot.rkyv";
const SNAPSHOT_TEMP_FILE: &str = "snapshot.rkyv.tmp";

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
        let shared = Shared::new();
        let path = dir.join(SNAPSHOT_FILE);
        let compiled = match std::fs::read(&path) {
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
        }
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
