//! The key material: where a backup reads each file and where a restore writes it back, and
//! the staging of parts beside their destinations so that nothing is moved into place before
//! the whole backup has opened.
//!
//! The places are `petrel control serve`'s: a flag, else (on the backup side) the systemd
//! credential, else the default under the control directory. A restore never writes into a
//! credentials directory (systemd's is read-only): without a flag a part goes to the default
//! path, and the report says where, so an operator can load it as a credential again.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::database::Target;
use super::format::{self, PartKind, PartSink};
use super::BackupError;
use crate::audit_anchor;

/// Suffix of a part written beside its destination before it is moved into place.
const STAGING_SUFFIX: &str = ".restore-tmp";

/// Where each file of the key material is; None: where `petrel control serve` looks.
#[derive(Debug, Clone, Default)]
pub struct KeyPaths {
    pub kek_file: Option<PathBuf>,
    pub audit_key_file: Option<PathBuf>,
    pub audit_checkpoint_file: Option<PathBuf>,
    pub push_token_file: Option<PathBuf>,
    pub push_tls_cert: Option<PathBuf>,
    pub push_tls_key: Option<PathBuf>,
    /// The admin API's TLS pair has no default: backed up and restored only when named.
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
}

impl KeyPaths {
    fn flag(&self, kind: PartKind) -> Option<&Path> {
        match kind {
            PartKind::Database => None,
            PartKind::Kek => self.kek_file.as_deref(),
            PartKind::AuditKey => self.audit_key_file.as_deref(),
            PartKind::AuditCheckpoints => self.audit_checkpoint_file.as_deref(),
            PartKind::PushToken => self.push_token_file.as_deref(),
            PartKind::PushTlsCert => self.push_tls_cert.as_deref(),
            PartKind::PushTlsKey => self.push_tls_key.as_deref(),
            PartKind::ApiTlsCert => self.api_tls_cert.as_deref(),
            PartKind::ApiTlsKey => self.api_tls_key.as_deref(),
        }
    }

    /// The systemd credential `serve` reads for `kind`, if any.
    fn credential(kind: PartKind) -> Option<&'static str> {
        match kind {
            PartKind::Kek => Some(crate::store::KEK_CREDENTIAL),
            PartKind::AuditKey => Some(audit_anchor::AUDIT_KEY_CREDENTIAL),
            PartKind::PushToken => Some("petrel-push-token"),
            _ => None,
        }
    }

    /// `serve`'s default path for `kind` under the control directory (None: no default).
    fn default_path(control_dir: &Path, kind: PartKind) -> Option<PathBuf> {
        Some(match kind {
            PartKind::Database | PartKind::ApiTlsCert | PartKind::ApiTlsKey => return None,
            PartKind::Kek => control_dir.join("keys").join("kek"),
            PartKind::AuditKey => control_dir.join("keys").join(audit_anchor::AUDIT_KEY_FILE),
            PartKind::AuditCheckpoints => control_dir.join(audit_anchor::CHECKPOINT_FILE),
            PartKind::PushToken => control_dir.join("push.token"),
            PartKind::PushTlsCert => control_dir.join("push-cert.pem"),
            PartKind::PushTlsKey => control_dir.join("push-key.pem"),
        })
    }

    /// Where the control plane reads `kind`, and whether it was named (a named file must
    /// exist; a default one may be missing, as on a control plane that never made it).
    pub fn source(&self, control_dir: &Path, kind: PartKind) -> Option<(PathBuf, bool)> {
        if let Some(p) = self.flag(kind) {
            return Some((p.to_path_buf(), true));
        }
        if let Some(p) = Self::credential(kind).and_then(petrel_seal::secret_file::credential) {
            return Some((p, true));
        }
        Self::default_path(control_dir, kind).map(|p| (p, false))
    }

    /// Where a restore writes `kind`: the flag, else the default path (never a credentials
    /// directory). The API TLS pair without flags goes beside the database.
    pub fn destination(&self, control_dir: &Path, kind: PartKind) -> PathBuf {
        if let Some(p) = self.flag(kind) {
            return p.to_path_buf();
        }
        Self::default_path(control_dir, kind).unwrap_or_else(|| match kind {
            PartKind::ApiTlsCert => control_dir.join("api-cert.pem"),
            PartKind::ApiTlsKey => control_dir.join("api-key.pem"),
            _ => control_dir.join("petrel.db"),
        })
    }
}

/// A part's bytes on the backup side: small files are read whole; the database dump is
/// streamed from its scratch file.
#[derive(Debug)]
pub enum PartData {
    Bytes(Vec<u8>),
    File(PathBuf, u64),
}

impl PartData {
    pub fn len(&self) -> u64 {
        match self {
            PartData::Bytes(b) => b.len() as u64,
            PartData::File(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One part to back up and where it came from.
#[derive(Debug)]
pub struct SourcePart {
    pub kind: PartKind,
    pub from: PathBuf,
    pub data: PartData,
}

/// The parts read before the database is dumped: the audit checkpoints (see `backup`).
pub fn read_before_database(
    control_dir: &Path,
    paths: &KeyPaths,
) -> Result<Vec<SourcePart>, BackupError> {
    let mut out = Vec::new();
    if let Some(mut part) = read_part(control_dir, paths, PartKind::AuditCheckpoints)? {
        // A line being appended right now is left out: every kept line is whole.
        if let PartData::Bytes(b) = &mut part.data {
            let whole = b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
            b.truncate(whole);
        }
        out.push(part);
    }
    Ok(out)
}

/// The parts read after the dump: the key-encryption key (required, and loaded once to be
/// sure it is one) and the rest of the key material.
pub fn read_after_database(
    control_dir: &Path,
    paths: &KeyPaths,
) -> Result<Vec<SourcePart>, BackupError> {
    let mut out = Vec::new();
    for kind in PartKind::ALL {
        if matches!(kind, PartKind::Database | PartKind::AuditCheckpoints) {
            continue;
        }
        match read_part(control_dir, paths, kind)? {
            Some(part) => {
                if kind == PartKind::Kek {
                    petrel_seal::KekFile::load(&part.from)?;
                }
                out.push(part);
            }
            None if kind == PartKind::Kek => {
                let (path, _) = paths
                    .source(control_dir, kind)
                    .unwrap_or_else(|| (control_dir.join("keys").join("kek"), false));
                return Err(BackupError::MissingSource {
                    what: "key-encryption key",
                    path,
                    hint: "pass the control plane's --key-file as --kek-file",
                });
            }
            None => {}
        }
    }
    Ok(out)
}

/// Reads one part's file, bounded; None when a default path holds nothing.
fn read_part(
    control_dir: &Path,
    paths: &KeyPaths,
    kind: PartKind,
) -> Result<Option<SourcePart>, BackupError> {
    let Some((path, named)) = paths.source(control_dir, kind) else {
        return Ok(None);
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(None),
        Err(e) => return Err(BackupError::io("read", &path)(e)),
    };
    if meta.len() > kind.bytes_max() {
        return Err(BackupError::TooLarge {
            what: kind.name(),
            len: meta.len(),
            max: kind.bytes_max(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(&path)
        .and_then(|f| f.take(kind.bytes_max()).read_to_end(&mut bytes))
        .map_err(BackupError::io("read", &path))?;
    Ok(Some(SourcePart {
        kind,
        from: path,
        data: PartData::Bytes(bytes),
    }))
}

/// The archive's plaintext: each part's framing and bytes, then the end mark.
pub fn plaintext_reader(parts: &[SourcePart]) -> Result<Box<dyn Read + '_>, BackupError> {
    let mut r: Box<dyn Read> = Box::new(std::io::empty());
    for p in parts {
        let prefix = std::io::Cursor::new(format::part_prefix(p.kind, p.data.len()));
        r = Box::new(r.chain(prefix));
        r = match &p.data {
            PartData::Bytes(b) => Box::new(r.chain(b.as_slice())),
            PartData::File(path, len) => {
                let f = std::fs::File::open(path).map_err(BackupError::io("read", path))?;
                Box::new(r.chain(f.take(*len)))
            }
        };
    }
    Ok(Box::new(
        r.chain(std::io::Cursor::new([format::ARCHIVE_END])),
    ))
}

/// A private scratch directory (mode 0700) beside the output, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn create(parent: &Path) -> Result<Scratch, BackupError> {
        let path = parent.join(format!(
            ".petrel-backup-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(BackupError::io("create", &path))?;
        Ok(Scratch(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `path` through `fill` atomically: a temporary file (mode 0600) beside it, synced,
/// renamed over it, the directory synced. On failure the temporary file is removed.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let temp = with_suffix(path, ".tmp");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(BackupError::io("create", &temp))?;
        fill(&mut f)?;
        f.sync_all().map_err(BackupError::io("sync", &temp))?;
        drop(f);
        std::fs::rename(&temp, path).map_err(BackupError::io("rename", path))?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Syncs the directory holding `path`, so a rename in it is durable.
pub fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io("sync", dir))
}

/// One part as a restore found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub kind: PartKind,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// The first pass of a restore: every part's length and SHA-256, nothing written.
#[derive(Debug, Default)]
pub struct Manifest {
    pub parts: Vec<PartInfo>,
    current: Option<(PartKind, u64, Sha256)>,
}

impl PartSink for Manifest {
    fn begin(&mut self, kind: PartKind, len: u64) -> Result<(), BackupError> {
        self.current = Some((kind, len, Sha256::new()));
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        if let Some((_, _, sha)) = &mut self.current {
            sha.update(bytes);
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), BackupError> {
        if let Some((kind, len, sha)) = self.current.take() {
            self.parts.push(PartInfo {
                kind,
                len,
                sha256: sha.finalize().into(),
            });
        }
        Ok(())
    }
}

/// Where one part of a restore goes.
#[derive(Debug, Clone)]
pub struct Destination {
    pub kind: PartKind,
    /// Written first (mode 0600, beside `path` so the rename stays on one file system).
    pub staging: PathBuf,
    /// Where it ends; None for the database (the target moves or loads it).
    pub path: Option<PathBuf>,
    /// For the report.
    pub shown: String,
    /// An identical file is there already: nothing is written.
    pub unchanged: bool,
}

/// Decides every part's destination, and refuses a key file in the way unless `force`.
pub fn plan(
    control_dir: &Path,
    paths: &KeyPaths,
    target: &Target,
    manifest: &super::Manifest,
    force: bool,
) -> Result<Vec<Destination>, BackupError> {
    let mut out = Vec::new();
    for part in &manifest.parts {
        if part.kind == PartKind::Database {
            out.push(Destination {
                kind: part.kind,
                staging: target.staging(),
                path: None,
                shown: target.shown(),
                unchanged: false,
            });
            continue;
        }
        let path = paths.destination(control_dir, part.kind);
        let unchanged = match std::fs::read(&path) {
            Ok(existing) => {
                let same = <[u8; 32]>::from(Sha256::digest(&existing)) == part.sha256;
                if !same && !force {
                    return Err(BackupError::DestinationExists {
                        what: part.kind.name(),
                        path,
                    });
                }
                same
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(BackupError::io("read", &path)(e)),
        };
        out.push(Destination {
            kind: part.kind,
            staging: with_suffix(&path, STAGING_SUFFIX),
            shown: path.display().to_string(),
            path: Some(path),
            unchanged,
        });
    }
    Ok(out)
}

/// The second pass of a restore: each part written to its staging file and hashed again.
pub struct Stager {
    plan: Vec<Destination>,
    written: Vec<PartInfo>,
    current: Option<(
        PartKind,
        u64,
        Sha256,
        Option<std::io::BufWriter<std::fs::File>>,
    )>,
    staged: Staged,
}

impl Stager {
    pub fn new(plan: &[Destination]) -> Result<Stager, BackupError> {
        for d in plan {
            let dir = d.staging.parent().unwrap_or(Path::new("."));
            if !dir.as_os_str().is_empty() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(BackupError::io("create", dir))?;
            }
        }
        Ok(Stager {
            plan: plan.to_vec(),
            written: Vec::new(),
            current: None,
            staged: Staged::default(),
        })
    }

    /// What the second pass found, to compare with the first.
    pub fn written(&self) -> Vec<PartInfo> {
        self.written.clone()
    }

    pub fn finish(self) -> Staged {
        self.staged
    }
}

impl PartSink for Stager {
    fn begin(&mut self, kind: PartKind, len: u64) -> Result<(), BackupError> {
        let dest = self.plan.iter().find(|d| d.kind == kind).ok_or_else(|| {
            BackupError::Malformed("the file changed while it was restored".into())
        })?;
        let file = if dest.unchanged {
            None
        } else {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&dest.staging)
                .map_err(BackupError::io("create", &dest.staging))?;
            self.staged
                .files
                .push((dest.staging.clone(), dest.path.clone()));
            Some(std::io::BufWriter::with_capacity(
                format::CHUNK_PLAIN_BYTES,
                f,
            ))
        };
        self.current = Some((kind, len, Sha256::new(), file));
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        if let Some((kind, _, sha, file)) = &mut self.current {
            sha.update(bytes);
            if let Some(f) = file {
                f.write_all(bytes).map_err(|e| BackupError::Io {
                    op: "write",
                    path: PathBuf::from(kind.name()),
                    source: e,
                })?;
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), BackupError> {
        if let Some((kind, len, sha, file)) = self.current.take() {
            if let Some(f) = file {
                let f = f
                    .into_inner()
                    .map_err(|e| BackupError::Write(e.into_error()))?;
                f.sync_all().map_err(BackupError::write)?;
            }
            self.written.push(PartInfo {
                kind,
                len,
                sha256: sha.finalize().into(),
            });
        }
        Ok(())
    }
}

/// Staging files written and not yet moved; removed when dropped uncommitted.
#[derive(Debug, Default)]
pub struct Staged {
    /// (staging file, destination; None: the database, which the target takes).
    files: Vec<(PathBuf, Option<PathBuf>)>,
}

impl Staged {
    /// The database's staging file.
    pub fn database(&self) -> Option<&Path> {
        self.files
            .iter()
            .find(|(_, dest)| dest.is_none())
            .map(|(s, _)| s.as_path())
    }

    /// Moves every key file into place (each rename synced).
    pub fn commit_files(mut self) -> Result<(), BackupError> {
        let files = std::mem::take(&mut self.files);
        for (i, (staging, dest)) in files.iter().enumerate() {
            let Some(dest) = dest else { continue };
            if let Err(e) = std::fs::rename(staging, dest) {
                self.files = files[i..].to_vec();
                return Err(BackupError::io("rename", dest)(e));
            }
            sync_parent(dest)?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (staging, _) in &self.files {
            let _ = std::fs::remove_file(staging);
        }
    }
}
