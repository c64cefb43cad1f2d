//! `petrel backup` and `petrel restore`: the control plane's database and its key material in
//! one sealed file, and back.
//!
//! A backup holds everything a control plane needs to come back on another machine: the
//! database (SQLite copied online with `VACUUM INTO`, a consistent snapshot taken while the
//! control plane runs; PostgreSQL through `pg_dump`, one REPEATABLE READ snapshot), the
//! key-encryption key that unwraps the database's data keys (without it the sealed columns are
//! noise), the audit signing key and its checkpoints (without them `audit-verify` cannot tell
//! a restored chain from a rewritten one), the push token and the TLS pairs. The whole is
//! sealed with AES-256-GCM (`petrel_seal`'s frames, no crypto of our own) under a backup key
//! from an owner-only file, so the backup can sit on storage that is not trusted with the keys
//! it carries; the backup key itself must live elsewhere.
//!
//! - [`format`]: the file (header, sealed chunks, the archive of parts), pure.
//! - [`material`]: where each key file is read from and restored to, the same places
//!   `petrel control serve` reads them.
//! - [`database`]: the dump and the restore of each database kind, and the empty-target check.
//! - [`cli`]: the `petrel backup` and `petrel restore` flags.
//!
//! A restore reads the file twice: first it opens every chunk and checks the checksum and the
//! archive without writing anything, then it checks the target (an empty database, no other
//! key file in the way, unless `--force`), then it writes every part next to its destination
//! and only then moves them into place.

pub mod cli;
pub mod database;
pub mod format;
pub mod material;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use format::{BackupKey, Header, PartKind, SourceKind};
use material::{KeyPaths, Manifest, PartInfo, Stager};

pub use cli::{BackupArgs, RestoreArgs};

/// Everything a backup or a restore can fail with, each saying what to do about it. A wrapped
/// cause is its `source`, not repeated in the message (`petrel` prints the chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the backup failed")]
    Read(#[source] std::io::Error),
    #[error("writing the backup failed")]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Secret(#[from] petrel_seal::secret_file::SecretError),
    #[error("the backup key file must hold 64 hex digits (32 bytes): make one with `openssl rand -hex 32 > FILE && chmod 600 FILE`")]
    KeyFormat,
    #[error(
        "the backup key does not match the key this backup was sealed under (wrong --key-file)"
    )]
    WrongKey,
    #[error("not a Petrel backup (no PTRLBKUP header)")]
    NotABackup,
    #[error("backup format version {version} is not supported (this build reads {supported})")]
    UnsupportedVersion { version: u16, supported: u16 },
    #[error("the backup failed authentication at chunk {chunk}: the file was altered or damaged")]
    Tampered { chunk: u64 },
    #[error("the backup is cut short: the file was truncated or damaged")]
    Truncated,
    #[error("the backup's content does not match its SHA-256: the file was altered or damaged")]
    ChecksumMismatch,
    #[error("the backup is malformed: {0}")]
    Malformed(String),
    #[error("{what} is {len} bytes, more than the {max} a backup holds")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("no {what} at {path}: {hint}")]
    MissingSource {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("the target database {target} is not empty ({tables} tables); restore into an empty one, or pass --force to replace its content")]
    TargetNotEmpty { target: String, tables: u64 },
    #[error("{path} exists and differs from the backup's {what}; move it away, or pass --force to replace it")]
    DestinationExists { what: &'static str, path: PathBuf },
    #[error("the backup holds a {backup} database; the target is {target} (a backup restores to the same kind)")]
    KindMismatch {
        backup: SourceKind,
        target: SourceKind,
    },
    #[error("{tool} not found (looked in {looked}); install PostgreSQL's client programs or pass --pg-bin-dir")]
    ToolMissing { tool: &'static str, looked: String },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("the database URL: {0}")]
    DatabaseUrl(String),
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("sealing")]
    Seal(#[from] petrel_seal::SealError),
}

impl BackupError {
    pub(crate) fn read(e: std::io::Error) -> BackupError {
        BackupError::Read(e)
    }

    pub(crate) fn write(e: std::io::Error) -> BackupError {
        BackupError::Write(e)
    }

    pub(crate) fn io(op: &'static str, path: &Path) -> impl Fn(std::io::Error) -> BackupError {
        let path = path.to_path_buf();
        move |source| BackupError::Io {
            op,
            path: path.clone(),
            source,
        }
    }
}

/// What `petrel backup` is given.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The control plane's directory (`<data>/control`).
    pub control_dir: PathBuf,
    /// None: SQLite at `<control_dir>/petrel.db`; else `sqlite:...` or `postgres://...` (with
    /// its password, from the password file).
    pub database_url: Option<String>,
    /// The backup key (64 hex digits, owner-only).
    pub key_file: PathBuf,
    /// The backup file to write.
    pub out: PathBuf,
    /// The key material's locations (None: where `petrel control serve` looks).
    pub paths: KeyPaths,
    /// Where `pg_dump` is; None: `PATH`, then the newest `/usr/lib/postgresql/*/bin`.
    pub pg_bin_dir: Option<PathBuf>,
    /// The time written in the header.
    pub now_unix_ms: i64,
}

/// What a backup wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub kind: SourceKind,
    pub out: PathBuf,
    /// Bytes of the file.
    pub bytes: u64,
    /// Each part and where it came from.
    pub parts: Vec<(PartKind, u64, PathBuf)>,
}

/// Makes a backup: the database dumped, the key material read, the whole sealed into `out`
/// (mode 0600, written to a temporary file, synced, renamed).
pub async fn backup(opts: &BackupOptions) -> Result<BackupReport, BackupError> {
    let key = read_key(&opts.key_file)?;
    let kind = database::kind_of(opts.database_url.as_deref())?;
    let dir = opts.out.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let scratch = material::Scratch::create(dir)?;
    // Checkpoints before the database: each names a row the snapshot then holds, so the
    // restored chain verifies against every checkpoint in the backup.
    let mut parts = material::read_before_database(&opts.control_dir, &opts.paths)?;
    let dump = scratch.path().join("database");
    let source = database::dump(
        &opts.control_dir,
        opts.database_url.as_deref(),
        opts.pg_bin_dir.as_deref(),
        &dump,
        scratch.path(),
    )
    .await?;
    let dump_len = std::fs::metadata(&dump)
        .map_err(BackupError::io("read", &dump))?
        .len();
    if dump_len > format::DATABASE_BYTES_MAX {
        return Err(BackupError::TooLarge {
            what: "the database",
            len: dump_len,
            max: format::DATABASE_BYTES_MAX,
        });
    }
    // The key-encryption key after the database: `petrel keys rotate` only adds a version and
    // then re-wraps, so a key file read later still holds every version the dump's data keys
    // were wrapped under.
    parts.extend(material::read_after_database(
        &opts.control_dir,
        &opts.paths,
    )?);
    parts.insert(
        0,
        material::SourcePart {
            kind: PartKind::Database,
            from: source,
            data: material::PartData::File(dump.clone(), dump_len),
        },
    );
    let (plaintext_len, plaintext_sha256) = hash_plaintext(&parts)?;
    let header = Header {
        kind,
        created_unix_ms: opts.now_unix_ms,
        key_fingerprint: key.fingerprint(),
        plaintext_len,
        plaintext_sha256,
    };
    let mut reader = material::plaintext_reader(&parts)?;
    material::write_atomic_with(&opts.out, |f| {
        let mut w = std::io::BufWriter::new(f);
        format::seal(&key, &header, &mut reader, &mut w)?;
        w.flush().map_err(BackupError::write)
    })?;
    drop(scratch);
    Ok(BackupReport {
        kind,
        out: opts.out.clone(),
        bytes: header.file_len(),
        parts: parts
            .iter()
            .map(|p| (p.kind, p.data.len(), p.from.clone()))
            .collect(),
    })
}

/// The plaintext's length and SHA-256, read once before it is sealed (the header carries them,
/// and every chunk's associated data carries the header).
fn hash_plaintext(parts: &[material::SourcePart]) -> Result<(u64, [u8; 32]), BackupError> {
    let mut reader = material::plaintext_reader(parts)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; format::CHUNK_PLAIN_BYTES];
    let mut len = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(BackupError::read)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        len += n as u64;
    }
    if len > format::PLAINTEXT_BYTES_MAX {
        return Err(BackupError::TooLarge {
            what: "the backup's content",
            len,
            max: format::PLAINTEXT_BYTES_MAX,
        });
    }
    Ok((len, sha.finalize().into()))
}

/// What `petrel restore` is given.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup file.
    pub from: PathBuf,
    /// The backup key it was sealed under.
    pub key_file: PathBuf,
    /// The control plane's directory to restore into (`<data>/control`).
    pub control_dir: PathBuf,
    /// The target database: None: SQLite at `<control_dir>/petrel.db`. A PostgreSQL target
    /// must exist (`createdb`) and be empty.
    pub database_url: Option<String>,
    /// Where the key material goes (None: where `petrel control serve` reads it by default).
    pub paths: KeyPaths,
    pub pg_bin_dir: Option<PathBuf>,
    /// Replace a non-empty target database and differing key files.
    pub force: bool,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub kind: SourceKind,
    pub created_unix_ms: i64,
    /// Each part, where it went, and whether an identical file was there already.
    pub parts: Vec<(PartKind, String, bool)>,
}

/// Restores a backup: verify all of it first, then check the target, then write.
pub async fn restore(opts: &RestoreOptions) -> Result<RestoreReport, BackupError> {
    let key = read_key(&opts.key_file)?;
    let (header, manifest) = verify(&key, &opts.from)?;
    let target_kind = database::kind_of(opts.database_url.as_deref())?;
    if target_kind != header.kind {
        return Err(BackupError::KindMismatch {
            backup: header.kind,
            target: target_kind,
        });
    }
    let target = database::Target::new(&opts.control_dir, opts.database_url.as_deref())?;
    if !opts.force {
        target.ensure_empty().await?;
    }
    let plan = material::plan(
        &opts.control_dir,
        &opts.paths,
        &target,
        &manifest,
        opts.force,
    )?;
    let mut stager = Stager::new(&plan)?;
    {
        let mut file = open_backup(&opts.from)?;
        let again = format::open_header(&key, &mut file)?;
        if again != header {
            return Err(BackupError::Malformed(
                "the file changed while it was restored".into(),
            ));
        }
        let mut parser = format::ArchiveParser::new(&mut stager);
        format::open_chunks(&key, &header, &mut file, &mut parser)?;
    }
    if stager.written() != manifest.parts {
        return Err(BackupError::Malformed(
            "the file changed while it was restored".into(),
        ));
    }
    let staged = stager.finish();
    target
        .commit(&staged, opts.pg_bin_dir.as_deref(), opts.force)
        .await?;
    staged.commit_files()?;
    Ok(RestoreReport {
        kind: header.kind,
        created_unix_ms: header.created_unix_ms,
        parts: plan
            .iter()
            .map(|d| (d.kind, d.shown.clone(), d.unchanged))
            .collect(),
    })
}

/// Opens every chunk of `path` and checks it whole, writing nothing: the header, the parts
/// found (kind, length, SHA-256 of each).
pub fn verify(key: &BackupKey, path: &Path) -> Result<(Header, Manifest), BackupError> {
    let mut file = open_backup(path)?;
    let header = format::open_header(key, &mut file)?;
    let len = std::fs::metadata(path)
        .map_err(BackupError::io("read", path))?
        .len();
    if len < header.file_len() {
        return Err(BackupError::Truncated);
    }
    let mut manifest = Manifest::default();
    let mut parser = format::ArchiveParser::new(&mut manifest);
    format::open_chunks(key, &header, &mut file, &mut parser)?;
    Ok((header, manifest))
}

fn open_backup(path: &Path) -> Result<impl Read, BackupError> {
    let f = std::fs::File::open(path).map_err(BackupError::io("open", path))?;
    Ok(std::io::BufReader::with_capacity(
        format::CHUNK_PLAIN_BYTES,
        f,
    ))
}

/// The backup key from its owner-only file (never a flag or a variable).
pub fn read_key(path: &Path) -> Result<BackupKey, BackupError> {
    let text = zeroize::Zeroizing::new(petrel_seal::secret_file::read(path)?);
    BackupKey::from_hex(&text)
}

/// A part's manifest entry, for tests and reports.
pub fn part_info(kind: PartKind, bytes: &[u8]) -> PartInfo {
    PartInfo {
        kind,
        len: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
    }
}
