//! `petrel backup` and `petrel restore`: flags, and the same secret rules as `petrel control
//! serve` (the database URL from `--database-url` or `PETREL_DATABASE_URL`, never with a
//! password in it; the password and every key from owner-only files).

use std::path::PathBuf;

use super::format::PartKind;
use super::material::KeyPaths;
use super::{BackupOptions, RestoreOptions};

/// Where the database is, shared by both commands.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Petrel's data directory; the control plane uses `<data-dir>/control`.
    #[arg(long, default_value = "./petrel-data")]
    pub data_dir: PathBuf,
    /// `postgres://...` (no password in it) for a shared database; default: SQLite under the
    /// data directory.
    #[arg(long, env = "PETREL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the database password (mode 0600; default: the systemd credential
    /// `petrel-database-password`, if any).
    #[arg(long)]
    pub database_password_file: Option<PathBuf>,
    /// Where `pg_dump` and `pg_restore` are (default: `PATH`, then the newest
    /// `/usr/lib/postgresql/*/bin`).
    #[arg(long)]
    pub pg_bin_dir: Option<PathBuf>,
}

/// The key material's files; each defaults to where `petrel control serve` reads it.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyPathArgs {
    /// The control plane's key-encryption key (its `serve --key-file`; default: the credential
    /// `petrel-kek`, else `<data-dir>/control/keys/kek`).
    #[arg(long)]
    pub kek_file: Option<PathBuf>,
    /// The audit signing key (`serve --audit-key-file`).
    #[arg(long)]
    pub audit_key_file: Option<PathBuf>,
    /// The signed audit checkpoints (`serve --audit-checkpoint-file`).
    #[arg(long)]
    pub audit_checkpoint_file: Option<PathBuf>,
    /// The push token (`serve --push-token-file`).
    #[arg(long)]
    pub push_token_file: Option<PathBuf>,
    /// The push listener's TLS pair (`serve --push-tls-cert/--push-tls-key`).
    #[arg(long, requires = "push_tls_key")]
    pub push_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "push_tls_cert")]
    pub push_tls_key: Option<PathBuf>,
    /// The admin API's TLS pair (`serve --api-tls-cert/--api-tls-key`); included only when
    /// named.
    #[arg(long, requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
}

impl From<KeyPathArgs> for KeyPaths {
    fn from(a: KeyPathArgs) -> KeyPaths {
        KeyPaths {
            kek_file: a.kek_file,
            audit_key_file: a.audit_key_file,
            audit_checkpoint_file: a.audit_checkpoint_file,
            push_token_file: a.push_token_file,
            push_tls_cert: a.push_tls_cert,
            push_tls_key: a.push_tls_key,
            api_tls_cert: a.api_tls_cert,
            api_tls_key: a.api_tls_key,
        }
    }
}

/// `petrel backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The backup file to write (mode 0600, replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// The backup key: 64 hex digits in a file of mode 0600 (`openssl rand -hex 32`). Keep it
    /// apart from the backups.
    #[arg(long)]
    pub key_file: PathBuf,
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub keys: KeyPathArgs,
}

/// `petrel restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// The backup key it was sealed under.
    #[arg(long)]
    pub key_file: PathBuf,
    /// Replace a non-empty target database, and key files that differ from the backup's.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub keys: KeyPathArgs,
}

fn database_url(a: &DatabaseArgs) -> anyhow::Result<Option<String>> {
    crate::cli::database_url_with_password(
        a.database_url.clone(),
        a.database_password_file.as_deref(),
    )
}

/// Runs `petrel backup`.
pub async fn run_backup(a: BackupArgs) -> anyhow::Result<()> {
    let opts = BackupOptions {
        control_dir: a.db.data_dir.join("control"),
        database_url: database_url(&a.db)?,
        key_file: a.key_file,
        out: a.out,
        paths: a.keys.into(),
        pg_bin_dir: a.db.pg_bin_dir,
        now_unix_ms: crate::now_unix_ms(),
    };
    let report = super::backup(&opts).await?;
    println!(
        "backup of the {} control plane written to {} ({} bytes):",
        report.kind,
        report.out.display(),
        report.bytes
    );
    for (kind, len, from) in &report.parts {
        println!(
            "  {:<22} {:>12} bytes  from {}",
            kind.name(),
            len,
            from.display()
        );
    }
    for kind in PartKind::ALL {
        if !report.parts.iter().any(|(k, _, _)| *k == kind) {
            println!("  {:<22} not found, not included", kind.name());
        }
    }
    Ok(())
}

/// Runs `petrel restore`.
pub async fn run_restore(a: RestoreArgs) -> anyhow::Result<()> {
    let opts = RestoreOptions {
        from: a.from,
        key_file: a.key_file,
        control_dir: a.db.data_dir.join("control"),
        database_url: database_url(&a.db)?,
        paths: a.keys.into(),
        pg_bin_dir: a.db.pg_bin_dir,
        force: a.force,
    };
    let report = super::restore(&opts).await?;
    println!(
        "restored the {} control plane backed up at {} (Unix ms):",
        report.kind, report.created_unix_ms
    );
    for (kind, to, unchanged) in &report.parts {
        let note = if *unchanged { " (identical, kept)" } else { "" };
        println!("  {:<22} -> {to}{note}", kind.name());
    }
    println!(
        "start the control plane with these files (--key-file for the key-encryption key), \
         then run `petrel control audit-verify`"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    enum Cli {
        Backup(BackupArgs),
        Restore(RestoreArgs),
    }

    #[test]
    fn flags_parse() {
        let Cli::Backup(b) = Cli::try_parse_from([
            "petrel",
            "backup",
            "--out",
            "/b/x.petrel-backup",
            "--key-file",
            "/k",
            "--kek-file",
            "/kek",
            "--data-dir",
            "/d",
        ])
        .expect("parses") else {
            panic!("backup expected")
        };
        assert_eq!(b.out, PathBuf::from("/b/x.petrel-backup"));
        assert_eq!(b.keys.kek_file, Some(PathBuf::from("/kek")));
        let Cli::Restore(r) = Cli::try_parse_from([
            "petrel",
            "restore",
            "--from",
            "/b/x",
            "--key-file",
            "/k",
            "--force",
        ])
        .expect("parses") else {
            panic!("restore expected")
        };
        assert!(r.force);
        assert!(Cli::try_parse_from(["petrel", "restore", "--from", "/b/x"]).is_err());
        assert!(Cli::try_parse_from([
            "petrel",
            "backup",
            "--out",
            "/o",
            "--key-file",
            "/k",
            "--api-tls-cert",
            "/c"
        ])
        .is_err());
    }

    #[test]
    fn a_password_in_the_url_is_refused() {
        let a = DatabaseArgs {
            data_dir: PathBuf::from("/d"),
            database_url: Some("postgres://u:secret@127.0.0.1/db".into()),
            database_password_file: None,
            pg_bin_dir: None,
        };
        let e = database_url(&a).unwrap_err();
        assert!(e.to_string().contains("--database-password-file"), "{e}");
    }
}
