//! Sealing at rest (issue 16).
//!
//! - [`aead`]: a data key (AES-256-GCM via aws-lc-rs) and the frame it seals: key id, nonce,
//!   ciphertext, tag. Nonces count from a random start, so they never repeat under a key.
//! - [`kek`]: key-encryption keys. [`KeySource`] is the seam for a KMS or Vault transit;
//!   [`KekFile`] reads versioned keys from an owner-only file or a systemd credential.
//! - [`keyring`]: every data key of one process, wrapped, in one file changed under a lock:
//!   per-tenant keys and the operator's, rotation of data keys by age, re-wrapping when the
//!   key-encryption key rotates, and destruction of a tenant's keys (crypto-shredding).
//! - [`secret_file`]: secrets (tokens, passwords) read from owner-only files, never from the
//!   environment or the command line.
//!
//! Pure of any runtime: the spool calls [`DataKey::seal_append`] on its shard, key files are
//! read with `std::fs` at start-up and on rare changes.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod aead;
mod error;
pub mod kek;
pub mod keyring;
pub mod secret_file;

pub use aead::{frame_key_id, DataKey, Owner, SEALED_OVERHEAD_BYTES};
pub use error::SealError;
pub use kek::{KekFile, KeySource, KEK_CREDENTIAL};
pub use keyring::{unix_now_ms, unwrap_key, wrap_key, Keyring, DATA_KEY_ROTATE_AFTER_MS_DEFAULT};
