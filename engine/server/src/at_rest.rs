//! Sealing at rest, wired (issue 16): where the key-encryption key comes from, and the keyring
//! every shard's spool and the policy snapshot file seal with.
//!
//! The key comes from `encryption.key_file` (`--key-file`), else the systemd credential
//! `petrel-kek` (`LoadCredential=petrel-kek:/path`), else `<data_dir>/keys/kek`, made at the
//! first start with a warning: a key beside the data it protects guards against a stolen disk
//! image of the spool alone, not of the whole data directory. Never an environment variable or
//! a command-line value. The keyring is `<data_dir>/keys/keyring.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use petrel_seal::{KekFile, Keyring, KEK_CREDENTIAL};

use crate::config::EngineConfig;
use crate::error::EngineError;

/// The keyring's directory under the data directory.
pub const KEYS_DIR: &str = "keys";
/// The development key file's name in [`KEYS_DIR`].
pub const DEFAULT_KEY_FILE: &str = "kek";
/// Milliseconds in a day.
const DAY_MS: u64 = 24 * 3600 * 1000;

/// Where the key-encryption key is, and whether it is the development default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// `encryption.key_file` or `--key-file`.
    Configured(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/petrel-kek`.
    Credential(PathBuf),
    /// `<data_dir>/keys/kek`.
    DataDir(PathBuf),
}

impl KeyLocation {
    pub fn path(&self) -> &Path {
        match self {
            KeyLocation::Configured(p) | KeyLocation::Credential(p) | KeyLocation::DataDir(p) => p,
        }
    }
}

/// Where this configuration's key-encryption key is.
pub fn key_location(cfg: &EngineConfig) -> KeyLocation {
    if let Some(p) = &cfg.encryption.key_file {
        return KeyLocation::Configured(p.clone());
    }
    if let Some(p) = petrel_seal::secret_file::credential(KEK_CREDENTIAL) {
        return KeyLocation::Credential(p);
    }
    KeyLocation::DataDir(cfg.server.data_dir.join(KEYS_DIR).join(DEFAULT_KEY_FILE))
}

/// Opens the keyring for a running engine: `None` when `encryption.at_rest` is off. Makes the
/// development key file when the data directory's is the one in use and it is not there yet.
pub fn open(cfg: &EngineConfig) -> Result<Option<petrel_policy::AtRest>, EngineError> {
    if !cfg.encryption.at_rest {
        tracing::warn!(
            "encryption.at_rest is off: the spool and the policy file are written in the clear"
        );
        return Ok(None);
    }
    let location = key_location(cfg);
    let kek = match &location {
        KeyLocation::DataDir(p) => {
            let (kek, created) = KekFile::load_or_generate(p)?;
            if created {
                tracing::warn!(path = %p.display(), "generated a key-encryption key in the data directory; production keeps it elsewhere (encryption.key_file, --key-file, or the systemd credential petrel-kek)");
            }
            kek
        }
        KeyLocation::Configured(p) | KeyLocation::Credential(p) => KekFile::load(p)?,
    };
    let keys = Keyring::open(&cfg.server.data_dir.join(KEYS_DIR), Arc::new(kek))?;
    tracing::info!(key_file = %location.path().display(), data_keys = keys.len(), "encryption at rest on");
    Ok(Some(petrel_policy::AtRest {
        keys: Arc::new(keys),
        data_key_rotate_after_ms: u64::from(cfg.encryption.data_key_rotate_after_days) * DAY_MS,
    }))
}

/// Opens the keyring for an offline tool (`petrel spool ls`): never makes a key file, and
/// `None` when there is no keyring at all (a spool written in the clear).
pub fn open_existing(cfg: &EngineConfig) -> Result<Option<Keyring>, EngineError> {
    let dir = cfg.server.data_dir.join(KEYS_DIR);
    if !dir.join(petrel_seal::keyring::KEYRING_FILE).exists() {
        return Ok(None);
    }
    let kek = KekFile::load(key_location(cfg).path())?;
    Ok(Some(Keyring::open(&dir, Arc::new(kek))?))
}
