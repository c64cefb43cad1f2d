//! Key-encryption keys: what wraps the data keys. [`KeySource`] is the seam a KMS or a Vault
//! transit backend plugs into (they wrap and unwrap remotely, and never hand out the key);
//! [`KekFile`] is the one shipped: versioned AES-256 keys in an owner-only file, or a systemd
//! credential (`$CREDENTIALS_DIRECTORY/petrel-kek`), never the environment or the command line.
//!
//! ```text
//! # Petrel key-encryption keys, newest first. ...
//! v2 <64 hex digits>
//! v1 <64 hex digits>
//! ```
//!
//! A wrapped key is `nonce (12, random) | ciphertext (32) | tag (16)`; the keyring passes
//! associated data naming the key's id and owner, so a wrapped key moved to another entry fails.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::aead::{random_bytes, KEY_BYTES, NONCE_BYTES, TAG_BYTES};
use crate::error::SealError;
use crate::secret_file::{SECRET_FILE_BYTES_MAX, SECRET_FILE_FORBIDDEN_MODE};

/// The systemd credential name of the key-encryption key.
pub const KEK_CREDENTIAL: &str = "petrel-kek";
/// Bytes of a wrapped data key.
pub const WRAPPED_KEY_BYTES: usize = NONCE_BYTES + KEY_BYTES + TAG_BYTES;
/// Most versions a key file holds (rotation adds one, retiring drops the old ones).
pub const KEK_VERSIONS_MAX: usize = 64;

const HEADER: &str = "# Petrel key-encryption keys, newest first. Keep this file away from the \
data it protects (a systemd credential, or a separate volume); `petrel keys rotate` adds a version.\n";

/// What wraps and unwraps data keys.
pub trait KeySource: Send + Sync + std::fmt::Debug {
    /// The version new wraps use.
    fn current_version(&self) -> u32;
    /// Wraps `key` under the current version: (version, wrapped bytes).
    fn wrap(&self, aad: &[u8], key: &[u8; KEY_BYTES]) -> Result<(u32, Vec<u8>), SealError>;
    /// Unwraps a key wrapped under `version`.
    fn unwrap(
        &self,
        version: u32,
        aad: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_BYTES]>, SealError>;
    /// Re-reads the source (another process may have rotated it). Default: nothing to do.
    fn refresh(&self) -> Result<(), SealError> {
        Ok(())
    }
}

/// Versioned key-encryption keys read from an owner-only file.
pub struct KekFile {
    path: PathBuf,
    /// Newest first.
    keys: RwLock<Vec<(u32, LessSafeKey)>>,
}

impl std::fmt::Debug for KekFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KekFile")
            .field("path", &self.path)
            .field("versions", &self.versions())
            .finish()
    }
}

impl KekFile {
    /// Loads `path` (owner-only, or refused).
    pub fn load(path: &Path) -> Result<KekFile, SealError> {
        let keys = read_keys(path)?;
        Ok(KekFile {
            path: path.to_path_buf(),
            keys: RwLock::new(keys),
        })
    }

    /// Creates `path` (mode 0600, its directory too) with one random key, version 1. Never
    /// overwrites a file.
    pub fn generate(path: &Path) -> Result<KekFile, SealError> {
        if path.exists() {
            return Err(SealError::KeyFileExists {
                path: path.to_path_buf(),
            });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| SealError::io("create", dir, e))?;
        }
        let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
        random_bytes(raw.as_mut())?;
        write_file(path, &[(1, raw)])?;
        KekFile::load(path)
    }

    /// Loads `path`, creating it first when it is not there. Returns whether it was created.
    pub fn load_or_generate(path: &Path) -> Result<(KekFile, bool), SealError> {
        if path.exists() {
            return Ok((KekFile::load(path)?, false));
        }
        Ok((KekFile::generate(path)?, true))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Versions held, newest first.
    pub fn versions(&self) -> Vec<u32> {
        self.read().iter().map(|(v, _)| *v).collect()
    }

    /// Adds a new random version in front (the file is rewritten atomically) and returns it.
    pub fn add_version(&self) -> Result<u32, SealError> {
        let mut lines = read_raw(&self.path)?;
        let version = lines.first().map_or(1, |(v, _)| v + 1);
        let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
        random_bytes(raw.as_mut())?;
        lines.insert(0, (version, raw));
        lines.truncate(KEK_VERSIONS_MAX);
        write_file(&self.path, &lines)?;
        self.refresh()?;
        Ok(version)
    }

    /// Drops every version but those in `keep` (the file is rewritten atomically).
    pub fn retain_versions(&self, keep: &[u32]) -> Result<(), SealError> {
        let lines: Vec<_> = read_raw(&self.path)?
            .into_iter()
            .filter(|(v, _)| keep.contains(v))
            .collect();
        write_file(&self.path, &lines)?;
        self.refresh()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(u32, LessSafeKey)>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl KeySource for KekFile {
    fn current_version(&self) -> u32 {
        self.read().first().map_or(0, |(v, _)| *v)
    }

    fn wrap(&self, aad: &[u8], key: &[u8; KEY_BYTES]) -> Result<(u32, Vec<u8>), SealError> {
        let keys = self.read();
        let (version, kek) = keys.first().ok_or(SealError::KekMissing {
            version: 0,
            have: Vec::new(),
        })?;
        let mut nonce = [0u8; NONCE_BYTES];
        random_bytes(&mut nonce)?;
        let mut out = Vec::with_capacity(WRAPPED_KEY_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(key);
        let tag = kek
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_BYTES..],
            )
            .map_err(|_| SealError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok((*version, out))
    }

    fn unwrap(
        &self,
        version: u32,
        aad: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_BYTES]>, SealError> {
        let keys = self.read();
        let kek = keys
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, k)| k)
            .ok_or_else(|| SealError::KekMissing {
                version,
                have: keys.iter().map(|(v, _)| *v).collect(),
            })?;
        if wrapped.len() != WRAPPED_KEY_BYTES {
            return Err(SealError::Open);
        }
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&wrapped[..NONCE_BYTES]);
        let mut buf = Zeroizing::new(wrapped[NONCE_BYTES..].to_vec());
        let plain = kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SealError::Open)?;
        let mut out = Zeroizing::new([0u8; KEY_BYTES]);
        out.copy_from_slice(plain);
        Ok(out)
    }

    fn refresh(&self) -> Result<(), SealError> {
        let keys = read_keys(&self.path)?;
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(())
    }
}

fn read_keys(path: &Path) -> Result<Vec<(u32, LessSafeKey)>, SealError> {
    read_raw(path)?
        .into_iter()
        .map(|(v, raw)| {
            let key = UnboundKey::new(&AES_256_GCM, raw.as_ref()).map_err(|_| {
                SealError::KeyFileFormat {
                    path: path.to_path_buf(),
                    reason: "a key is not 32 bytes".into(),
                }
            })?;
            Ok((v, LessSafeKey::new(key)))
        })
        .collect()
}

/// The file's versions and key bytes, newest first; checks the mode and the format.
/// A key file's versions with their key bytes.
type RawKeys = Vec<(u32, Zeroizing<[u8; KEY_BYTES]>)>;

fn read_raw(path: &Path) -> Result<RawKeys, SealError> {
    let format = |reason: &str| SealError::KeyFileFormat {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| SealError::io("read", path, e))?;
    let mode = meta.mode() & 0o7777;
    if mode & SECRET_FILE_FORBIDDEN_MODE != 0 {
        return Err(SealError::KeyFileExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(format("larger than a key file can be"));
    }
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| SealError::io("read", path, e))?);
    let mut out: RawKeys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (v, hex_key) = line
            .split_once(' ')
            .ok_or_else(|| format("a line is not `v<N> <hex>`"))?;
        let version: u32 = v
            .strip_prefix('v')
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format("a version is not `v<N>` with N ≥ 1"))?;
        let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
        hex::decode_to_slice(hex_key.trim(), raw.as_mut())
            .map_err(|_| format("a key is not 64 hex digits"))?;
        if out.iter().any(|(o, _)| *o == version) {
            return Err(format("a version appears twice"));
        }
        out.push((version, raw));
    }
    if out.is_empty() {
        return Err(format("it holds no key"));
    }
    if out.len() > KEK_VERSIONS_MAX {
        return Err(format("it holds more versions than KEK_VERSIONS_MAX"));
    }
    out.sort_by_key(|k| std::cmp::Reverse(k.0));
    Ok(out)
}

/// Writes the key file atomically: temp file (0600), fsync, rename, directory fsync.
fn write_file(path: &Path, keys: &[(u32, Zeroizing<[u8; KEY_BYTES]>)]) -> Result<(), SealError> {
    let mut text = Zeroizing::new(String::from(HEADER));
    for (v, raw) in keys {
        text.push_str(&format!("v{v} {}\n", hex::encode(raw.as_ref())));
    }
    write_atomic(path, text.as_bytes())
}

/// Replaces `path` with `bytes` atomically and durably, owner-only.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SealError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| SealError::io("create", &temp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| SealError::io("write", &temp, e))?;
    drop(f);
    std::fs::rename(&temp, path).map_err(|e| SealError::io("rename", path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SealError::io("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_is_made_owner_only_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let (kek, created) = KekFile::load_or_generate(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(kek.versions(), vec![1]);
        assert!(matches!(
            KekFile::generate(&path),
            Err(SealError::KeyFileExists { .. })
        ));
        let (again, created) = KekFile::load_or_generate(&path).unwrap();
        assert!(!created);
        let (v, wrapped) = kek.wrap(b"id", &[9; 32]).unwrap();
        assert_eq!((v, wrapped.len()), (1, WRAPPED_KEY_BYTES));
        assert_eq!(*again.unwrap(1, b"id", &wrapped).unwrap(), [9; 32]);
        assert!(matches!(
            again.unwrap(1, b"other", &wrapped),
            Err(SealError::Open)
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            KekFile::load(&path),
            Err(SealError::KeyFileExposed { mode: 0o640, .. })
        ));
    }

    #[test]
    fn versions_are_added_in_front_and_old_ones_unwrap_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let kek = KekFile::generate(&path).unwrap();
        let (v1, w1) = kek.wrap(b"a", &[1; 32]).unwrap();
        assert_eq!(kek.add_version().unwrap(), 2);
        assert_eq!(kek.current_version(), 2);
        let (v2, w2) = kek.wrap(b"a", &[2; 32]).unwrap();
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(*kek.unwrap(1, b"a", &w1).unwrap(), [1; 32]);
        kek.retain_versions(&[2]).unwrap();
        assert!(matches!(
            kek.unwrap(1, b"a", &w1),
            Err(SealError::KekMissing { version: 1, .. })
        ));
        assert_eq!(
            *KekFile::load(&path).unwrap().unwrap(2, b"a", &w2).unwrap(),
            [2; 32]
        );
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (i, text) in ["", "# only a comment\n", "v1 abcd\n", "x1 00\n", "v0 00\n"]
            .iter()
            .enumerate()
        {
            let path = dir.path().join(format!("k{i}"));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(
                matches!(KekFile::load(&path), Err(SealError::KeyFileFormat { .. })),
                "{text:?}"
            );
        }
    }
}
