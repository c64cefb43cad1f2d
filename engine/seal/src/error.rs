//! `SealError`: every way sealing, opening or key handling fails, each with what an operator
//! needs to act on it.

use std::path::PathBuf;

/// Why a seal, an open or a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key file {path} is not a Petrel key file: {reason}")]
    KeyFileFormat { path: PathBuf, reason: String },
    #[error(
        "the key file {path} has mode {mode:04o}: group and others must have no access (chmod 600)"
    )]
    KeyFileExposed { path: PathBuf, mode: u32 },
    #[error("the key file {path} already exists; it is never overwritten")]
    KeyFileExists { path: PathBuf },
    #[error("key-encryption key version {version} is not in the key file (it has {have:?})")]
    KekMissing { version: u32, have: Vec<u32> },
    #[error("the keyring {path} is unreadable: {reason}")]
    KeyringFormat { path: PathBuf, reason: String },
    #[error("data key {id} does not unwrap under key-encryption key version {version}: wrong key file, or the keyring was altered")]
    Unwrap { id: u32, version: u32 },
    #[error("no data key with id {0} (destroyed, or never made here)")]
    UnknownKey(u32),
    #[error(
        "the sealed data failed authentication (damaged, altered, or sealed under another key)"
    )]
    Open,
    #[error("sealed data is {len} bytes, shorter than the {min}-byte frame")]
    Truncated { len: usize, min: usize },
    #[error("the system random source failed")]
    Random,
    #[error("the keyring holds {0} data keys, the most it takes")]
    KeyringFull(usize),
    #[error("tenant {0} was deleted: its data keys are destroyed and no new one is made")]
    OwnerDestroyed(String),
}

impl SealError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        SealError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
