//! The policy cache on disk, so cached policies survive a restart (RFC 8461 §10: the cache is
//! what protects the first delivery after a restart from a downgrade).
//!
//! One JSON file, [`MTA_STS_CACHE_FILE`] under the engine's data directory, rewritten whole and
//! atomically (temporary file, fsync, rename, fsync of the directory). Policies are stored in
//! their canonical text form and parsed again on load, so what comes back from disk passes the
//! same checks as what came from the network; an entry that does not is skipped, and a file
//! that cannot be read at all leaves the cache empty (the policies are fetched again).
//!
//! The trade-off: a rewrite costs O(entries), but writes are batched by the service (at most
//! one per flush interval) and policies change about once a day per domain.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cache::{CachedPolicy, PolicyCache};
use super::policy::{Policy, StsRecord};

/// The cache file's name in the data directory.
pub const MTA_STS_CACHE_FILE: &str = "mta-sts-policies.json";
/// The file format's version; another version is ignored (the cache starts empty).
pub const MTA_STS_CACHE_FORMAT: u32 = 1;
/// Largest cache file read: bounded entries of bounded size (64 mx patterns of at most 255
/// bytes each) fit easily; anything larger is not ours.
pub const MTA_STS_CACHE_FILE_BYTES_MAX: u64 = 512 * 1024 * 1024;

/// Why the cache file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {bytes} bytes, more than {MTA_STS_CACHE_FILE_BYTES_MAX}")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct FileV1 {
    format: u32,
    entries: Vec<EntryV1>,
}

#[derive(Serialize, Deserialize)]
struct EntryV1 {
    domain: String,
    id: String,
    /// Canonical policy text ([`Policy::to_text`]).
    policy: String,
    fetched_at: u64,
    expires_at: u64,
    refresh_at: u64,
}

/// Where the cache of `data_dir` lives.
pub fn cache_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MTA_STS_CACHE_FILE)
}

/// Fills `cache` from `path`; a missing file is an empty cache. Returns the entries restored.
pub fn load(path: &Path, cache: &mut PolicyCache, now: u64) -> Result<usize, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = match std::fs::metadata(path) {
        Ok(m) if m.len() > MTA_STS_CACHE_FILE_BYTES_MAX => {
            return Err(StoreError::TooLarge {
                path: path.to_path_buf(),
                bytes: m.len(),
            })
        }
        Ok(_) => std::fs::read(path).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let file: FileV1 = serde_json::from_slice(&bytes).map_err(|e| StoreError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if file.format != MTA_STS_CACHE_FORMAT {
        return Err(StoreError::Format {
            path: path.to_path_buf(),
            reason: format!("format {}, expected {MTA_STS_CACHE_FORMAT}", file.format),
        });
    }
    let mut restored = 0;
    for e in file.entries {
        if let Some((domain, entry)) = validate(e) {
            cache.restore(&domain, entry, now);
            restored += 1;
        }
    }
    let _ = cache.take_dirty(); // what was just read is what is on disk
    Ok(restored)
}

/// An entry read back, checked as if it came from the network; `None` if it fails.
fn validate(e: EntryV1) -> Option<(String, CachedPolicy)> {
    let policy = Policy::parse(e.policy.as_bytes()).ok()?;
    StsRecord::parse(format!("v=STSv1; id={}", e.id).as_bytes()).ok()?;
    let domain = super::normalise(&e.domain)?;
    let consistent = e.fetched_at <= e.refresh_at
        && e.refresh_at <= e.expires_at
        && e.expires_at - e.fetched_at <= u64::from(policy.max_age_secs);
    consistent.then(|| {
        let entry = CachedPolicy {
            policy: Arc::new(policy),
            id: e.id,
            fetched_at: e.fetched_at,
            expires_at: e.expires_at,
            refresh_at: e.refresh_at,
        };
        (domain, entry)
    })
}

/// The cache's entries as file bytes (taken under the cache's lock, written outside it).
pub fn serialize(cache: &PolicyCache) -> Vec<u8> {
    let mut entries: Vec<EntryV1> = cache
        .entries()
        .map(|(domain, e)| EntryV1 {
            domain: domain.clone(),
            id: e.id.clone(),
            policy: e.policy.to_text(),
            fetched_at: e.fetched_at,
            expires_at: e.expires_at,
            refresh_at: e.refresh_at,
        })
        .collect();
    entries.sort_by(|a, b| a.domain.cmp(&b.domain));
    let file = FileV1 {
        format: MTA_STS_CACHE_FORMAT,
        entries,
    };
    // Serialising plain strings and integers cannot fail.
    serde_json::to_vec(&file).unwrap_or_default()
}

/// Replaces `path` with `bytes` atomically: a crash leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename is durable once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_age_secs: u32) -> Arc<Policy> {
        let text = format!(
            "version: STSv1\nmode: testing\nmx: mx.a.test\nmx: *.b.test\nmax_age: {max_age_secs}\n"
        );
        Arc::new(Policy::parse(text.as_bytes()).unwrap())
    }

    #[test]
    fn round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = cache_path(dir.path());
        let mut c = PolicyCache::new(10);
        c.insert("a.test", "id1", policy(3600), 100);
        c.insert("b.test", "id2", policy(60), 100);
        write_atomically(&path, &serialize(&c)).unwrap();
        assert!(!path.with_extension("json.tmp").exists());
        let mut back = PolicyCache::new(10);
        assert_eq!(load(&path, &mut back, 150).unwrap(), 2);
        assert_eq!(back.get("a.test", 150), c.get("a.test", 150));
        assert!(!back.take_dirty());
        // Later, the short policy has expired and is not restored.
        let mut later = PolicyCache::new(10);
        load(&path, &mut later, 200).unwrap();
        assert_eq!(later.len(), 1);
    }

    #[test]
    fn missing_bad_and_tampered_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = cache_path(dir.path());
        let mut c = PolicyCache::new(10);
        assert_eq!(load(&path, &mut c, 0).unwrap(), 0);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            load(&path, &mut c, 0),
            Err(StoreError::Format { .. })
        ));
        std::fs::write(&path, br#"{"format":2,"entries":[]}"#).unwrap();
        assert!(matches!(
            load(&path, &mut c, 0),
            Err(StoreError::Format { .. })
        ));
        // Entries that fail the network's checks are skipped, the others kept.
        let good = r#"{"domain":"ok.test","id":"a","policy":"version: STSv1\nmode: none\nmax_age: 100\n","fetched_at":0,"expires_at":100,"refresh_at":50}"#;
        let bad_policy = r#"{"domain":"p.test","id":"a","policy":"mode: x","fetched_at":0,"expires_at":100,"refresh_at":50}"#;
        let bad_id = r#"{"domain":"i.test","id":"a-b","policy":"version: STSv1\nmode: none\nmax_age: 100\n","fetched_at":0,"expires_at":100,"refresh_at":50}"#;
        let too_long = r#"{"domain":"l.test","id":"a","policy":"version: STSv1\nmode: none\nmax_age: 100\n","fetched_at":0,"expires_at":999,"refresh_at":50}"#;
        let text = format!(r#"{{"format":1,"entries":[{good},{bad_policy},{bad_id},{too_long}]}}"#);
        std::fs::write(&path, text).unwrap();
        assert_eq!(load(&path, &mut c, 10).unwrap(), 1);
        assert!(c.get("ok.test", 10).is_some());
    }
}
