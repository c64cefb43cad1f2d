//! The anchored audit chain (issue 16). The hash chain (`audit.rs`) catches a row changed,
//! removed or inserted, but not someone who rewrites the database and recomputes every hash.
//! So at a fixed interval (`audit_checkpoint_interval_secs`, 300) and on demand
//! (`POST /v1/audit-log/checkpoint`), the control plane signs the chain head (seq, hash, time)
//! with an Ed25519 key held outside the database and appends the signed checkpoint, one JSON
//! line, to a file outside it. `GET /v1/audit-log/verify` and `petrel control audit-verify`
//! then check every checkpoint: its signature under the trusted public key, and that the row at
//! its seq still has its hash. A recomputed chain changes those hashes; a forged checkpoint
//! needs the key.
//!
//! The key: `--audit-key-file` (PKCS#8, owner-only), else the systemd credential
//! `petrel-audit-key`, else `<control dir>/keys/audit-ed25519.key`, made at first start. The
//! checkpoints: `--audit-checkpoint-file`, else `<control dir>/audit-checkpoints.jsonl`; each
//! node of a shared database writes its own.
//!
//! Engines keep a copy (issue 16): each checkpoint a node makes ([`checkpoint`]) is published
//! on `AppState::checkpoints`, and the node's push sessions send the newest to their engines
//! (`push/checkpoint.rs`), which verify it and keep the latest. A node starts from the last
//! line of its checkpoint file, and at each timer tick also publishes that last line: so when
//! nodes of a PostgreSQL control plane share one file, a checkpoint made on another node
//! reaches this node's engines within an interval. With a file per node, each node's own timer
//! covers the shared head within the same interval.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use petrel_policy::checkpoint::AuditCheckpoint;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::api::App;
use crate::store::{Db, StoreResult};
use crate::ControlError;

/// The systemd credential holding the audit signing key.
pub const AUDIT_KEY_CREDENTIAL: &str = "petrel-audit-key";
/// The signing key's file name under `<control dir>/keys/`, when made there.
pub const AUDIT_KEY_FILE: &str = "audit-ed25519.key";
/// The checkpoint file's name under the control directory.
pub const CHECKPOINT_FILE: &str = "audit-checkpoints.jsonl";
/// Default seconds between scheduled checkpoints.
pub const CHECKPOINT_INTERVAL_SECS_DEFAULT: u64 = 300;
/// Largest checkpoint file read (about two million checkpoints).
pub const CHECKPOINT_FILE_BYTES_MAX: u64 = 512 << 20;
/// Largest key file read.
const KEY_FILE_BYTES_MAX: u64 = 4096;
/// Bytes read from the end of the checkpoint file for its last line (a line is about 350).
pub const CHECKPOINT_TAIL_BYTES: u64 = 4096;
const _: () = assert!(
    petrel_policy::checkpoint::CHECKPOINT_JSON_MAX_BYTES as u64 * 2 <= CHECKPOINT_TAIL_BYTES
);

/// One signed checkpoint of the chain head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Checkpoint {
    /// The head's seq (0: the chain was empty).
    pub seq: i64,
    /// The head row's hash.
    pub hash: String,
    pub at_unix_ms: i64,
    /// Hex of the Ed25519 public key that signed it.
    pub public_key: String,
    /// Hex of the signature over `petrel-audit-checkpoint/1 \n seq \n hash \n at_unix_ms`.
    pub signature: String,
}

impl Checkpoint {
    /// As the push link carries it; None for a negative seq (which no checkpoint has).
    pub fn to_wire(&self) -> Option<AuditCheckpoint> {
        Some(AuditCheckpoint {
            seq: u64::try_from(self.seq).ok()?,
            hash: self.hash.clone(),
            at_unix_ms: self.at_unix_ms,
            public_key: self.public_key.clone(),
            signature: self.signature.clone(),
        })
    }
}

/// The message a signature covers ([`petrel_policy::checkpoint::signed_bytes`], the format
/// engines verify); None for a negative seq.
fn signed_bytes(seq: i64, hash: &str, at_unix_ms: i64) -> Option<Vec<u8>> {
    let seq = u64::try_from(seq).ok()?;
    Some(petrel_policy::checkpoint::signed_bytes(
        seq, hash, at_unix_ms,
    ))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the signing key (owner-only), making it first when `generate` and it is missing.
pub fn load_key(path: &Path, generate: bool) -> Result<Ed25519KeyPair, ControlError> {
    if generate && !path.exists() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| ControlError::Config("cannot generate the audit signing key".into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        petrel_seal::kek::write_atomic(path, doc.as_ref())?;
        tracing::warn!(path = %path.display(), "generated the audit signing key in the data directory; production keeps it elsewhere (--audit-key-file, or the systemd credential petrel-audit-key)");
    }
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.mode() & 0o7777;
    if mode & petrel_seal::secret_file::SECRET_FILE_FORBIDDEN_MODE != 0 {
        return Err(ControlError::Config(format!(
            "the audit signing key {} has mode {mode:04o}: group and others must have no access",
            path.display()
        )));
    }
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(ControlError::Config(format!(
            "{} is too large for an Ed25519 key",
            path.display()
        )));
    }
    let der = std::fs::read(path).map_err(io(path))?;
    Ed25519KeyPair::from_pkcs8(&der).map_err(|e| {
        ControlError::Config(format!(
            "{} is not an Ed25519 PKCS#8 key: {e}",
            path.display()
        ))
    })
}

/// Where the signing key is: `configured`, else the credential, else `<control dir>/keys/`.
pub fn key_path(control_dir: &Path, configured: Option<&Path>) -> (PathBuf, bool) {
    if let Some(p) = configured {
        return (p.to_path_buf(), false);
    }
    if let Some(p) = petrel_seal::secret_file::credential(AUDIT_KEY_CREDENTIAL) {
        return (p, false);
    }
    (control_dir.join("keys").join(AUDIT_KEY_FILE), true)
}

/// The signer and its checkpoint file.
pub struct Anchor {
    key: Ed25519KeyPair,
    public_key: String,
    file: PathBuf,
    /// The last checkpoint written by this process (one writer at a time).
    last: tokio::sync::Mutex<Option<Checkpoint>>,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor")
            .field("public_key", &self.public_key)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Anchor {
    pub fn new(key: Ed25519KeyPair, file: PathBuf) -> Anchor {
        let public_key = hex::encode(key.public_key().as_ref());
        Anchor {
            key,
            public_key,
            file,
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub fn public_key_hex(&self) -> &str {
        &self.public_key
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Signs the current head and appends it (synced) to the file, unless this process's
    /// last checkpoint already covers it. Returns the checkpoint covering the head.
    pub async fn checkpoint(&self, db: &Db, now_unix_ms: i64) -> Result<Checkpoint, ControlError> {
        let mut last = self.last.lock().await;
        let (seq, hash) = crate::store::audit::head(&mut *db.conn().await?).await?;
        if let Some(cp) = last.as_ref().filter(|cp| cp.seq == seq && cp.hash == hash) {
            return Ok(cp.clone());
        }
        let message = signed_bytes(seq, &hash, now_unix_ms)
            .ok_or_else(|| ControlError::Config(format!("audit head seq {seq} is negative")))?;
        let signature = self.key.sign(&message);
        let cp = Checkpoint {
            seq,
            hash,
            at_unix_ms: now_unix_ms,
            public_key: self.public_key.clone(),
            signature: hex::encode(signature.as_ref()),
        };
        let mut line = serde_json::to_vec(&cp).map_err(|e| ControlError::Config(e.to_string()))?;
        line.push(b'\n');
        let path = self.file.clone();
        tokio::task::spawn_blocking(move || append(&path, &line))
            .await
            .map_err(|e| ControlError::Config(format!("checkpoint writer: {e}")))??;
        *last = Some(cp.clone());
        Ok(cp)
    }
}

fn append(path: &Path, line: &[u8]) -> Result<(), ControlError> {
    // A node on PostgreSQL with its keys given elsewhere may never have made its control
    // directory: make the file's own directory (owner-only) before the first checkpoint.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(line)
        .and_then(|()| f.sync_data())
        .map_err(io(path))
}

/// Every checkpoint in `path` (none when it does not exist yet).
pub fn read_checkpoints(path: &Path) -> Result<Vec<Checkpoint>, ControlError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    if meta.len() > CHECKPOINT_FILE_BYTES_MAX {
        return Err(ControlError::Config(format!(
            "{} is over CHECKPOINT_FILE_BYTES_MAX",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                ControlError::Config(format!("{} line {}: {e}", path.display(), i + 1))
            })
        })
        .collect()
}

/// The last checkpoint in `path` (None when it has none), reading at most
/// [`CHECKPOINT_TAIL_BYTES`] from its end.
pub fn latest_checkpoint(path: &Path) -> Result<Option<Checkpoint>, ControlError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let len = f.metadata().map_err(io(path))?.len();
    let start = len.saturating_sub(CHECKPOINT_TAIL_BYTES);
    f.seek(SeekFrom::Start(start)).map_err(io(path))?;
    let mut tail = Vec::new();
    f.take(CHECKPOINT_TAIL_BYTES)
        .read_to_end(&mut tail)
        .map_err(io(path))?;
    // The last complete, non-empty line (the first one of a cut tail may be partial).
    let text = String::from_utf8_lossy(&tail);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(last) = lines.next_back() else {
        return Ok(None);
    };
    serde_json::from_str(last)
        .map(Some)
        .map_err(|e| ControlError::Config(format!("{} last line: {e}", path.display())))
}

/// Hands `cp` to this node's push sessions when it is newer (a higher seq) than the one they
/// have.
pub fn publish(app: &App, cp: &Checkpoint) {
    let Some(wire) = cp.to_wire() else { return };
    app.checkpoints.send_if_modified(|latest| {
        if latest.as_ref().is_none_or(|l| wire.seq > l.seq) {
            *latest = Some(wire);
            true
        } else {
            false
        }
    });
}

/// Signs the chain head ([`Anchor::checkpoint`]) and sends it to this node's engines: what the
/// timer, the API and the retention pruning call.
pub async fn checkpoint(app: &App, now_unix_ms: i64) -> Result<Checkpoint, ControlError> {
    let cp = app.anchor.checkpoint(&app.db, now_unix_ms).await?;
    publish(app, &cp);
    Ok(cp)
}

/// What the checkpoint check found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AnchorReport {
    pub ok: bool,
    pub checkpoints_checked: u64,
    /// The seq of the first checkpoint that does not hold.
    pub first_bad_checkpoint_seq: Option<i64>,
    pub reason: Option<String>,
}

/// Checks every checkpoint: signed by `trusted_public_key`, in order, and the row at its seq
/// still hashes to what was signed (the empty chain's checkpoint, seq 0, names no row).
pub async fn verify_checkpoints(
    conn: &mut AnyConnection,
    checkpoints: &[Checkpoint],
    trusted_public_key: &[u8],
) -> StoreResult<AnchorReport> {
    let key = UnparsedPublicKey::new(&ED25519, trusted_public_key);
    let mut checked = 0u64;
    let mut prev_seq = 0i64;
    for cp in checkpoints {
        let bad = |reason: &str| AnchorReport {
            ok: false,
            checkpoints_checked: checked,
            first_bad_checkpoint_seq: Some(cp.seq),
            reason: Some(reason.to_string()),
        };
        let signature = hex::decode(&cp.signature).unwrap_or_default();
        let message = signed_bytes(cp.seq, &cp.hash, cp.at_unix_ms).unwrap_or_default();
        if key.verify(&message, &signature).is_err() {
            return Ok(bad(
                "the checkpoint's signature does not verify under the audit key",
            ));
        }
        if cp.seq < prev_seq {
            return Ok(bad("checkpoints go back in seq"));
        }
        prev_seq = cp.seq;
        if cp.seq > 0 {
            match crate::store::audit::hash_at(conn, cp.seq).await? {
                None => return Ok(bad("the checkpointed row is gone")),
                Some(h) if h != cp.hash => {
                    return Ok(bad(
                        "the row's hash differs from the signed checkpoint: the log was rewritten",
                    ))
                }
                Some(_) => {}
            }
        }
        checked += 1;
    }
    Ok(AnchorReport {
        ok: true,
        checkpoints_checked: checked,
        first_bad_checkpoint_seq: None,
        reason: None,
    })
}

/// The chain walk ([`crate::audit::verify`]) and then every checkpoint in `file` under
/// `trusted_public_key`: what the API's verify and `petrel control audit-verify` answer.
pub async fn verify_all(
    conn: &mut AnyConnection,
    file: &Path,
    trusted_public_key: &[u8],
) -> Result<crate::audit::VerifyReport, ControlError> {
    let mut report = crate::audit::verify(conn).await?;
    let checkpoints = read_checkpoints(file)?;
    let anchored = verify_checkpoints(conn, &checkpoints, trusted_public_key).await?;
    if !anchored.ok {
        report.ok = false;
        if report.reason.is_none() {
            report.reason = anchored.reason.clone();
            report.first_broken_seq = anchored.first_bad_checkpoint_seq;
        }
    }
    report.checkpoints = Some(anchored);
    Ok(report)
}

/// Checkpoints on a timer, each sent to this node's engines, then the file's last line too
/// (another node's, when nodes share the file).
pub async fn task(app: App, interval_secs: u64) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(interval_secs.max(1)));
    loop {
        tick.tick().await;
        if let Err(e) = checkpoint(&app, app.now_ms()).await {
            tracing::error!(error = %e, "audit checkpoint failed; retrying at the next interval");
        }
        let path = app.anchor.file().to_path_buf();
        match tokio::task::spawn_blocking(move || latest_checkpoint(&path)).await {
            Ok(Ok(Some(cp))) => publish(&app, &cp),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the last audit checkpoint failed"),
            Err(e) => tracing::warn!(error = %e, "checkpoint reader task failed"),
        }
    }
}
