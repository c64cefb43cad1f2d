//! Signed audit checkpoints, as the control plane pushes them and engines keep them (issue 16).
//!
//! The control plane signs its audit chain head (seq, hash, time) with an Ed25519 key held
//! outside its database and appends the checkpoint to a file outside it. It also pushes the
//! newest one to every engine (`AuditCheckpoint` frames, see [`crate::wire`]), and each engine
//! keeps the latest in `<policy dir>/audit-checkpoint.json` and every one it took, newest
//! [`CHECKPOINT_HISTORY_MAX`], in `<policy dir>/audit-checkpoints.jsonl`: copies on other
//! machines, so someone who rewrites the control plane's database *and* its checkpoint file
//! still leaves signed heads behind that the rewritten log must match (`petrel control
//! audit-verify --audit-checkpoint-file <the engine's history> --audit-public-key HEX` checks
//! each one against the database; the lines have the control plane's field names).
//!
//! The engine checks the signature under the public key the checkpoint carries (a checkpoint
//! damaged in transit or on disk is refused), pins that key at the first checkpoint (a
//! checkpoint signed by another key is refused and logged: an operator who rotates the audit
//! key removes the kept files), refuses one whose seq is lower than the one it keeps (the kept
//! head never moves back), and refuses one for the kept seq with another hash (two signed heads
//! for one seq: proof the log was rewritten, logged as such).
//!
//! [`CheckpointKeeper`] does blocking file I/O (a write and two fsyncs per new checkpoint,
//! one every few minutes): call it off the reactor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

/// The kept checkpoint's file name inside the policy directory.
pub const CHECKPOINT_FILE: &str = "audit-checkpoint.json";
/// The history's file name inside the policy directory.
pub const CHECKPOINT_HISTORY_FILE: &str = "audit-checkpoints.jsonl";
/// Checkpoints the history keeps (about ten days at one per five minutes); past twice that
/// the file is rewritten with the newest this many.
pub const CHECKPOINT_HISTORY_MAX: usize = 3_000;
const CHECKPOINT_TEMP_FILE: &str = "audit-checkpoint.json.tmp";
/// What the signature's message starts with (its format's version).
pub const SIGNED_CONTEXT: &str = "petrel-audit-checkpoint/1";
/// Longest chain hash accepted, in bytes (the chain's hashes are hex SHA-256: 64).
pub const CHECKPOINT_HASH_MAX_BYTES: usize = 128;
/// An Ed25519 public key, in bytes (hex: twice that).
pub const ED25519_PUBLIC_KEY_BYTES: usize = 32;
/// An Ed25519 signature, in bytes (hex: twice that).
pub const ED25519_SIGNATURE_BYTES: usize = 64;
/// Largest checkpoint as JSON, in bytes: on the wire and on disk (one is about 350).
pub const CHECKPOINT_JSON_MAX_BYTES: usize = 1024;

// The largest well-formed checkpoint fits the bound: hash, two hex fields, two i64s and the
// field names.
const _: () = assert!(
    CHECKPOINT_HASH_MAX_BYTES
        + 2 * (ED25519_PUBLIC_KEY_BYTES + ED25519_SIGNATURE_BYTES)
        + 2 * 20
        + 80
        <= CHECKPOINT_JSON_MAX_BYTES
);

/// One signed checkpoint of the control plane's audit chain head (the control plane's
/// `audit_anchor::Checkpoint`, field for field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The head's seq (0: the chain was empty).
    pub seq: u64,
    /// The head row's hash (hex), at most [`CHECKPOINT_HASH_MAX_BYTES`].
    pub hash: String,
    /// When it was signed, Unix ms.
    pub at_unix_ms: i64,
    /// Hex of the Ed25519 public key that signed it ([`ED25519_PUBLIC_KEY_BYTES`]).
    pub public_key: String,
    /// Hex of the signature over [`signed_bytes`] ([`ED25519_SIGNATURE_BYTES`]).
    pub signature: String,
}

/// Why a checkpoint is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A field is missing, too long, or not hex of the right length; or the JSON is bad.
    #[error("malformed audit checkpoint: {reason}")]
    Malformed { reason: String },
    /// The signature does not verify under the key the checkpoint carries.
    #[error("audit checkpoint at seq {seq}: the signature does not verify")]
    BadSignature { seq: u64 },
    /// The kept head never moves back.
    #[error("audit checkpoint at seq {offered} is older than the kept seq {kept}")]
    Stale { kept: u64, offered: u64 },
    /// Signed by another key than the one pinned at the first checkpoint.
    #[error("audit checkpoint at seq {seq} is signed by key {offered}, not the pinned {pinned}")]
    KeyChanged {
        seq: u64,
        pinned: String,
        offered: String,
    },
    /// Two signed heads for one seq: the audit log was rewritten.
    #[error("audit checkpoint at seq {seq} has hash {offered}, the kept one {kept}: the audit log was rewritten")]
    Conflict {
        seq: u64,
        kept: String,
        offered: String,
    },
}

fn malformed(reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed {
        reason: reason.into(),
    }
}

/// The message a checkpoint's signature covers: `petrel-audit-checkpoint/1 \n seq \n hash \n
/// at_unix_ms`. The one definition, used by the control plane to sign and by engines to verify.
pub fn signed_bytes(seq: u64, hash: &str, at_unix_ms: i64) -> Vec<u8> {
    format!("{SIGNED_CONTEXT}\n{seq}\n{hash}\n{at_unix_ms}").into_bytes()
}

fn hex_field(value: &str, bytes: usize, what: &str) -> Result<Vec<u8>, CheckpointError> {
    if value.len() != 2 * bytes {
        return Err(malformed(format!(
            "{what} is {} hex digits, not {}",
            value.len(),
            2 * bytes
        )));
    }
    hex::decode(value).map_err(|_| malformed(format!("{what} is not hex")))
}

impl AuditCheckpoint {
    /// Sizes and encodings: what the wire decoder checks before anything is kept.
    pub fn check_shape(&self) -> Result<(), CheckpointError> {
        if self.hash.is_empty() || self.hash.len() > CHECKPOINT_HASH_MAX_BYTES {
            return Err(malformed(format!(
                "hash of {} bytes (1..={CHECKPOINT_HASH_MAX_BYTES})",
                self.hash.len()
            )));
        }
        if !self.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("hash is not hex"));
        }
        hex_field(&self.public_key, ED25519_PUBLIC_KEY_BYTES, "public_key")?;
        hex_field(&self.signature, ED25519_SIGNATURE_BYTES, "signature")?;
        Ok(())
    }

    /// The shape, then the Ed25519 signature under the public key the checkpoint carries.
    pub fn verify(&self) -> Result<(), CheckpointError> {
        self.check_shape()?;
        let key = hex_field(&self.public_key, ED25519_PUBLIC_KEY_BYTES, "public_key")?;
        let signature = hex_field(&self.signature, ED25519_SIGNATURE_BYTES, "signature")?;
        UnparsedPublicKey::new(&ED25519, &key)
            .verify(
                &signed_bytes(self.seq, &self.hash, self.at_unix_ms),
                &signature,
            )
            .map_err(|_| CheckpointError::BadSignature { seq: self.seq })
    }

    /// As JSON, within [`CHECKPOINT_JSON_MAX_BYTES`] (the wire payload and the kept file).
    pub fn to_json(&self) -> Result<Vec<u8>, CheckpointError> {
        self.check_shape()?;
        let json = serde_json::to_vec(self).map_err(|e| malformed(e.to_string()))?;
        if json.len() > CHECKPOINT_JSON_MAX_BYTES {
            return Err(malformed(format!(
                "{} bytes of JSON exceed {CHECKPOINT_JSON_MAX_BYTES}",
                json.len()
            )));
        }
        Ok(json)
    }

    /// Parses and checks the shape (not the signature), refusing more than
    /// [`CHECKPOINT_JSON_MAX_BYTES`] before parsing.
    pub fn from_json(json: &[u8]) -> Result<AuditCheckpoint, CheckpointError> {
        if json.len() > CHECKPOINT_JSON_MAX_BYTES {
            return Err(malformed(format!(
                "{} bytes of JSON exceed {CHECKPOINT_JSON_MAX_BYTES}",
                json.len()
            )));
        }
        let cp: AuditCheckpoint =
            serde_json::from_slice(json).map_err(|e| malformed(e.to_string()))?;
        cp.check_shape()?;
        Ok(cp)
    }
}

/// What [`CheckpointKeeper::keep`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Written to disk: it is the kept checkpoint now.
    New,
    /// The kept checkpoint already (nothing written).
    Unchanged,
}

/// The engine's latest audit checkpoint, in memory and in `<dir>/audit-checkpoint.json`.
#[derive(Debug)]
pub struct CheckpointKeeper {
    /// `<policy dir>/audit-checkpoint.json`.
    path: PathBuf,
    /// What the file holds (None: no file, or one that failed its checks at start). Also
    /// serializes writers.
    kept: Mutex<Option<AuditCheckpoint>>,
    /// [`CHECKPOINT_HISTORY_MAX`] (smaller in tests).
    history_max: usize,
}

impl CheckpointKeeper {
    /// Starts from `<dir>/audit-checkpoint.json` when it is there and verifies; a bad file is
    /// logged and left in place (the next checkpoint replaces it).
    pub fn open(dir: &Path) -> CheckpointKeeper {
        let path = dir.join(CHECKPOINT_FILE);
        let kept = match read_bounded(&path) {
            Ok(None) => None,
            Ok(Some(bytes)) => {
                match AuditCheckpoint::from_json(&bytes).and_then(|cp| cp.verify().map(|()| cp)) {
                    Ok(cp) => Some(cp),
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "kept audit checkpoint unusable; waiting for the next one");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "kept audit checkpoint unreadable; waiting for the next one");
                None
            }
        };
        CheckpointKeeper {
            path,
            kept: Mutex::new(kept),
            history_max: CHECKPOINT_HISTORY_MAX,
        }
    }

    /// [`CheckpointKeeper::open`] with a history of at most `history_max` (tests).
    pub fn open_with_history(dir: &Path, history_max: usize) -> CheckpointKeeper {
        CheckpointKeeper {
            history_max: history_max.max(1),
            ..CheckpointKeeper::open(dir)
        }
    }

    /// The kept checkpoint.
    pub fn latest(&self) -> Option<AuditCheckpoint> {
        self.lock().clone()
    }

    /// The kept checkpoint's seq (the engine's `petrel_audit_checkpoint_seq` gauge).
    pub fn seq(&self) -> Option<u64> {
        self.lock().as_ref().map(|cp| cp.seq)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<AuditCheckpoint>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `cp` when its signature verifies and its seq is not below the kept one (an equal
    /// seq with other contents, another node's signature of the same head, replaces it):
    /// written to a temporary file, synced, renamed over the kept one, the directory synced.
    /// Blocking.
    pub fn keep(&self, cp: AuditCheckpoint) -> Result<Kept, PolicyError> {
        cp.verify()?;
        let mut kept = self.lock();
        match kept.as_ref() {
            Some(k) if cp.public_key != k.public_key => {
                return Err(CheckpointError::KeyChanged {
                    seq: cp.seq,
                    pinned: k.public_key.clone(),
                    offered: cp.public_key,
                }
                .into())
            }
            Some(k) if cp.seq < k.seq => {
                return Err(CheckpointError::Stale {
                    kept: k.seq,
                    offered: cp.seq,
                }
                .into())
            }
            Some(k) if cp.seq == k.seq && cp.hash != k.hash => {
                return Err(CheckpointError::Conflict {
                    seq: cp.seq,
                    kept: k.hash.clone(),
                    offered: cp.hash,
                }
                .into())
            }
            Some(k) if *k == cp => return Ok(Kept::Unchanged),
            _ => {}
        }
        let json = cp.to_json()?;
        self.append_history(&json)?;
        self.persist(&json)?;
        *kept = Some(cp);
        Ok(Kept::New)
    }

    /// Appends one line to the history (synced), rewriting it with the newest
    /// [`CHECKPOINT_HISTORY_MAX`] once it holds twice that.
    fn append_history(&self, json: &[u8]) -> Result<(), PolicyError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let path = dir.join(CHECKPOINT_HISTORY_FILE);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PolicyError::Persist { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err(&path))?;
        let mut line = json.to_vec();
        line.push(b'\n');
        file.write_all(&line).map_err(err(&path))?;
        file.sync_all().map_err(err(&path))?;
        drop(file);
        let max = self.history_max;
        let bound = (2 * max * (CHECKPOINT_JSON_MAX_BYTES + 1)) as u64;
        let text = match std::fs::metadata(&path) {
            Ok(m) if m.len() <= bound => std::fs::read_to_string(&path).map_err(err(&path))?,
            // Far past the bound (damage): keep only what this checkpoint adds.
            Ok(_) => String::from_utf8_lossy(&line).into_owned(),
            Err(e) => return Err(err(&path)(e)),
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > 2 * max || text.len() as u64 > bound {
            let keep = &lines[lines.len().saturating_sub(max)..];
            let temp = dir.join(CHECKPOINT_TEMP_FILE);
            let mut out = std::fs::File::create(&temp).map_err(err(&temp))?;
            out.write_all((keep.join("\n") + "\n").as_bytes())
                .map_err(err(&temp))?;
            out.sync_all().map_err(err(&temp))?;
            std::fs::rename(&temp, &path).map_err(err(&path))?;
        }
        Ok(())
    }

    fn persist(&self, json: &[u8]) -> Result<(), PolicyError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PolicyError::Persist { path, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let temp = dir.join(CHECKPOINT_TEMP_FILE);
        let mut file = std::fs::File::create(&temp).map_err(err(&temp))?;
        file.write_all(json).map_err(err(&temp))?;
        file.sync_all().map_err(err(&temp))?;
        drop(file);
        std::fs::rename(&temp, &self.path).map_err(err(&self.path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err(dir))
    }
}

/// The file's bytes (None when it does not exist), refusing one over the bound unread.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, std::io::Error> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > CHECKPOINT_JSON_MAX_BYTES as u64 {
        return Err(std::io::Error::other(format!(
            "{len} bytes exceed CHECKPOINT_JSON_MAX_BYTES"
        )));
    }
    std::fs::read(path).map(Some)
}

#[cfg(test)]
pub(crate) mod tests;
