//! `petrel keys`: the keys that seal data at rest (issue 16).
//!
//! - `petrel keys rotate --data-dir DIR [--key-file FILE] [--keep-old]`: adds a new
//!   key-encryption key version to the key file, re-wraps every data key of the keyring under
//!   it (no sealed data is rewritten), then drops the versions no entry uses any more unless
//!   `--keep-old`. Safe while the engine runs: both change the keyring under its lock, and the
//!   engine re-reads the key file before it wraps a new data key. A systemd credential is
//!   read-only: rotate the file it is loaded from, then restart the service.
//!   The control plane's data keys (its `data_keys` table: `<data-dir>/control/petrel.db`, or
//!   `--database-url`) are re-wrapped in the same run when the key file is theirs too (as
//!   `petrel up` has it); a version still in use anywhere is kept.
//! - `petrel keys status --data-dir DIR [--key-file FILE]`: the key file's versions and the
//!   keyring's data keys per version.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use petrel_seal::{KekFile, KeySource, Keyring};

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// New key-encryption key; re-wrap the data keys under it.
    Rotate {
        #[command(flatten)]
        at: KeysAt,
        /// Keep the old key versions in the key file.
        #[arg(long)]
        keep_old: bool,
    },
    /// Key versions and data keys.
    Status {
        #[command(flatten)]
        at: KeysAt,
    },
}

#[derive(clap::Args)]
pub struct KeysAt {
    /// The engine's data directory (its keyring is `<data-dir>/keys`).
    #[arg(long, default_value = "./petrel-data")]
    data_dir: PathBuf,
    /// The key-encryption key file (default: the engine's, see `petrel engine --key-file`).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The control plane's database, when not SQLite under `<data-dir>/control`.
    #[arg(long)]
    database_url: Option<String>,
    /// File holding the database password (mode 0600).
    #[arg(long)]
    database_password_file: Option<PathBuf>,
}

impl KeysAt {
    fn open(&self) -> anyhow::Result<(Arc<KekFile>, Keyring)> {
        let mut cfg = petrel_engine::EngineConfig::default();
        cfg.server.data_dir = self.data_dir.clone();
        cfg.encryption.key_file = self.key_file.clone();
        let location = petrel_engine::at_rest::key_location(&cfg);
        let kek = Arc::new(
            KekFile::load(location.path())
                .with_context(|| format!("key file {}", location.path().display()))?,
        );
        let keys = Keyring::open(
            &self.data_dir.join(petrel_engine::at_rest::KEYS_DIR),
            kek.clone(),
        )?;
        Ok((kek, keys))
    }

    /// The control plane's store, when there is one here, opened with the same key file.
    fn control_db(
        &self,
        rt: &tokio::runtime::Runtime,
        kek: &KekFile,
    ) -> anyhow::Result<Option<petrel_control::store::Db>> {
        let dir = self.data_dir.join("control");
        if self.database_url.is_none() && !dir.join("petrel.db").exists() {
            return Ok(None);
        }
        let url = petrel_control::database_url_with_password(
            self.database_url.clone(),
            self.database_password_file.as_deref(),
        )?;
        let db = rt.block_on(petrel_control::store::Db::open_keyed(
            &dir,
            url.as_deref(),
            Some(kek.path()),
        ))?;
        Ok(Some(db))
    }
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<i32> {
    match cmd {
        KeysCommand::Rotate { at, keep_old } => {
            let (kek, keys) = at.open()?;
            let rt = crate::slow_runtime()?;
            let control = at.control_db(&rt, &kek)?;
            let before = kek.versions();
            let version = kek.add_version()?;
            let mut rewrapped = keys.rewrap()? as u64;
            let mut in_use = keys.kek_versions_in_use()?;
            if let Some(db) = &control {
                rewrapped += rt.block_on(petrel_control::store::sealed::rewrap_all(db))?;
                in_use.extend(rt.block_on(petrel_control::store::sealed::kek_versions_in_use(db))?);
            }
            let mut retired = Vec::new();
            if !keep_old {
                let keep: Vec<u32> = kek
                    .versions()
                    .into_iter()
                    .filter(|v| *v == version || in_use.contains(v))
                    .collect();
                retired = before.into_iter().filter(|v| !keep.contains(v)).collect();
                kek.retain_versions(&keep)?;
            }
            println!(
                "key-encryption key: version {version} in {}; {rewrapped} data keys re-wrapped{}; retired versions {retired:?}",
                kek.path().display(),
                if control.is_some() { " (engine keyring and control plane)" } else { "" },
            );
            Ok(0)
        }
        KeysCommand::Status { at } => {
            let (kek, keys) = at.open()?;
            let in_use = keys.kek_versions_in_use()?;
            println!(
                "key file {}: versions {:?} (current {})",
                kek.path().display(),
                kek.versions(),
                kek.current_version()
            );
            println!(
                "keyring {}: {} data keys, {} tenants, wrapped under versions {:?}",
                keys.dir().display(),
                keys.len(),
                keys.tenants().len(),
                in_use
            );
            Ok(0)
        }
    }
}
