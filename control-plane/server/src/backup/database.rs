//! The database half: a consistent dump of the source, the empty-target check, and the
//! restore of the dump.
//!
//! - SQLite: `VACUUM INTO` a scratch file. It reads inside one transaction, so the copy is a
//!   consistent snapshot taken while the control plane keeps writing (WAL readers never block
//!   the writer), and it is a plain database file a restore moves into place as it is.
//! - PostgreSQL: `pg_dump --format=custom` (one REPEATABLE READ snapshot), restored with
//!   `pg_restore --single-transaction --exit-on-error`, so a failed restore leaves the target as
//!   it was. Neither tool ever sees the password on its command line or in a variable: the URL
//!   they get has none, and the password goes in a private `PGPASSFILE` (mode 0600) that is
//!   removed with the scratch directory.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;

use sqlx::Connection;
use tokio::io::AsyncReadExt;

use super::format::SourceKind;
use super::material::{self, Staged};
use super::BackupError;

/// Most bytes of a tool's standard error kept for the error message (the rest is drained).
pub const TOOL_STDERR_BYTES_MAX: u64 = 8 * 1024;
/// Where Debian installs each PostgreSQL version's programs (`<root>/<version>/bin`).
pub const PG_LIB_ROOT: &str = "/usr/lib/postgresql";

/// Which kind a database URL names (None: the embedded SQLite).
pub fn kind_of(url: Option<&str>) -> Result<SourceKind, BackupError> {
    match url {
        None => Ok(SourceKind::Sqlite),
        Some(u) if u.starts_with("sqlite:") => Ok(SourceKind::Sqlite),
        Some(u) if u.starts_with("postgres:") || u.starts_with("postgresql:") => {
            Ok(SourceKind::Postgres)
        }
        Some(_) => Err(BackupError::DatabaseUrl(
            "it must start with sqlite: or postgres:".into(),
        )),
    }
}

/// The SQLite file a URL (or the default) names.
fn sqlite_path(control_dir: &Path, url: Option<&str>) -> Result<PathBuf, BackupError> {
    let Some(url) = url else {
        return Ok(control_dir.join("petrel.db"));
    };
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = opts.get_filename();
    if url.contains(":memory:") || url.contains("mode=memory") || path.as_os_str().is_empty() {
        return Err(BackupError::DatabaseUrl(
            "an in-memory SQLite database has nothing to back up or restore into".into(),
        ));
    }
    Ok(path.to_path_buf())
}

/// The URL without its password, and the password (percent-decoded).
fn split_password(url: &str) -> Result<(String, Option<String>), BackupError> {
    let mut parsed = url::Url::parse(url).map_err(|e| BackupError::DatabaseUrl(e.to_string()))?;
    let password = parsed.password().map(percent_decode);
    parsed
        .set_password(None)
        .map_err(|()| BackupError::DatabaseUrl("it has no host".into()))?;
    Ok((parsed.to_string(), password))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Dumps the source database into `out`; returns where it came from (for the report).
pub async fn dump(
    control_dir: &Path,
    url: Option<&str>,
    pg_bin_dir: Option<&Path>,
    out: &Path,
    scratch: &Path,
) -> Result<PathBuf, BackupError> {
    match kind_of(url)? {
        SourceKind::Sqlite => {
            let path = sqlite_path(control_dir, url)?;
            if !path.is_file() {
                return Err(BackupError::MissingSource {
                    what: "control-plane database",
                    path,
                    hint: "pass --data-dir (the control plane uses <data-dir>/control/petrel.db) or --database-url",
                });
            }
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(false);
            let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
            let target = out
                .to_str()
                .ok_or_else(|| BackupError::DatabaseUrl("the output path is not UTF-8".into()))?;
            sqlx::query("VACUUM INTO $1")
                .bind(target)
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            Ok(path)
        }
        SourceKind::Postgres => {
            let url = url.unwrap_or_default();
            let (bare, password) = split_password(url)?;
            let mut cmd = pg_command("pg_dump", pg_bin_dir, password.as_deref(), scratch)?;
            cmd.arg("--format=custom")
                .arg("--no-owner")
                .arg("--no-privileges")
                .arg("--file")
                .arg(out)
                .arg("--dbname")
                .arg(&bare);
            run_tool("pg_dump", cmd).await?;
            Ok(PathBuf::from(bare))
        }
    }
}

/// A PostgreSQL client program, its password (if any) in a private password file.
fn pg_command(
    tool: &'static str,
    pg_bin_dir: Option<&Path>,
    password: Option<&str>,
    scratch: &Path,
) -> Result<tokio::process::Command, BackupError> {
    let mut cmd = tokio::process::Command::new(find_tool(tool, pg_bin_dir)?);
    // Secrets never come from the environment: a PGPASSWORD the caller has is not passed on.
    cmd.env_remove("PGPASSWORD");
    if let Some(pw) = password {
        let passfile = scratch.join("pgpass");
        let escaped = pw.replace('\\', "\\\\").replace(':', "\\:");
        let line = zeroize::Zeroizing::new(format!("*:*:*:*:{escaped}\n"));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&passfile)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
            .map_err(BackupError::io("write", &passfile))?;
        cmd.env("PGPASSFILE", &passfile);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd)
}

/// `tool` in `dir`, else on `PATH`, else in the newest `PG_LIB_ROOT/<version>/bin`.
fn find_tool(tool: &'static str, dir: Option<&Path>) -> Result<PathBuf, BackupError> {
    if let Some(d) = dir {
        let p = d.join(tool);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(BackupError::ToolMissing {
                tool,
                looked: d.display().to_string(),
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    if let Some(p) = std::env::split_paths(&path_var)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
    {
        return Ok(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_LIB_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(tool);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| BackupError::ToolMissing {
            tool,
            looked: format!("PATH and {PG_LIB_ROOT}/*/bin"),
        })
}

/// Runs a tool to its end; its exit status and the start of its standard error on failure.
async fn run_tool(tool: &'static str, mut cmd: tokio::process::Command) -> Result<(), BackupError> {
    let mut child = cmd.spawn().map_err(|e| BackupError::Tool {
        tool,
        status: "did not start".into(),
        stderr: e.to_string(),
    })?;
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = (&mut pipe)
            .take(TOOL_STDERR_BYTES_MAX)
            .read_to_end(&mut stderr)
            .await;
        let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
    }
    let status = child.wait().await.map_err(|e| BackupError::Tool {
        tool,
        status: "lost".into(),
        stderr: e.to_string(),
    })?;
    if status.success() {
        return Ok(());
    }
    Err(BackupError::Tool {
        tool,
        status: status.to_string(),
        stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
    })
}

/// The database a restore writes into.
#[derive(Debug)]
pub enum Target {
    /// The SQLite file; the restored file is staged beside it and renamed over it.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database that exists (empty); the dump is staged in the control directory
    /// and loaded with `pg_restore`.
    Postgres {
        url: String,
        bare: String,
        staging: PathBuf,
    },
}

impl Target {
    pub fn new(control_dir: &Path, url: Option<&str>) -> Result<Target, BackupError> {
        Ok(match kind_of(url)? {
            SourceKind::Sqlite => Target::Sqlite {
                path: sqlite_path(control_dir, url)?,
            },
            SourceKind::Postgres => {
                let url = url.unwrap_or_default().to_string();
                let (bare, _) = split_password(&url)?;
                Target::Postgres {
                    url,
                    bare,
                    staging: control_dir.join(format!(
                        ".petrel-restore-{}.pgdump",
                        hex::encode(rand::random::<[u8; 6]>())
                    )),
                }
            }
        })
    }

    /// Where the database part is written before it is taken.
    pub fn staging(&self) -> PathBuf {
        match self {
            Target::Sqlite { path } => material::with_suffix(path, ".restore-tmp"),
            Target::Postgres { staging, .. } => staging.clone(),
        }
    }

    /// The target as the report shows it (no password).
    pub fn shown(&self) -> String {
        match self {
            Target::Sqlite { path } => path.display().to_string(),
            Target::Postgres { bare, .. } => bare.clone(),
        }
    }

    /// Refuses a target that holds any table.
    pub async fn ensure_empty(&self) -> Result<(), BackupError> {
        let tables = self.tables().await?;
        if tables > 0 {
            return Err(BackupError::TargetNotEmpty {
                target: self.shown(),
                tables,
            });
        }
        Ok(())
    }

    /// Tables in the target (0 for an SQLite file that does not exist yet).
    async fn tables(&self) -> Result<u64, BackupError> {
        let n: i64 = match self {
            Target::Sqlite { path } => {
                if !path.exists() {
                    return Ok(0);
                }
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
                let n =
                    sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
                        .fetch_one(&mut conn)
                        .await?;
                conn.close().await?;
                n
            }
            Target::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                let n = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM information_schema.tables \
                     WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
                )
                .fetch_one(&mut conn)
                .await?;
                conn.close().await?;
                n
            }
        };
        Ok(n.max(0) as u64)
    }

    /// Puts the staged database in place: SQLite renames it over the target (its old `-wal`
    /// and `-shm` removed first, or SQLite would replay the old log onto the new file);
    /// PostgreSQL loads it in one transaction (`--clean` first when forced).
    pub async fn commit(
        &self,
        staged: &Staged,
        pg_bin_dir: Option<&Path>,
        force: bool,
    ) -> Result<(), BackupError> {
        let Some(file) = staged.database() else {
            return Err(BackupError::Malformed("the archive has no database".into()));
        };
        match self {
            Target::Sqlite { path } => {
                for suffix in ["-wal", "-shm", "-journal"] {
                    let p = material::with_suffix(path, suffix);
                    match std::fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(BackupError::io("remove", &p)(e)),
                    }
                }
                std::fs::rename(file, path).map_err(BackupError::io("rename", path))?;
                material::sync_parent(path)
            }
            Target::Postgres { url, bare, .. } => {
                let (_, password) = split_password(url)?;
                let scratch = material::Scratch::create(file.parent().unwrap_or(Path::new(".")))?;
                let mut cmd = pg_command(
                    "pg_restore",
                    pg_bin_dir,
                    password.as_deref(),
                    scratch.path(),
                )?;
                cmd.arg("--no-owner")
                    .arg("--no-privileges")
                    .arg("--single-transaction")
                    .arg("--exit-on-error");
                if force {
                    cmd.arg("--clean").arg("--if-exists");
                }
                cmd.arg("--dbname").arg(bare).arg(file);
                let result = run_tool("pg_restore", cmd).await;
                let _ = std::fs::remove_file(file);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_taken_out_of_the_url() {
        let (bare, pw) = split_password("postgres://u:p%3Aw%40rd@127.0.0.1:5432/db").unwrap();
        assert_eq!(bare, "postgres://u@127.0.0.1:5432/db");
        assert_eq!(pw.as_deref(), Some("p:w@rd"));
        let (bare, pw) = split_password("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(bare, "postgres://u@h/db?sslmode=require");
        assert_eq!(pw, None);
    }

    #[test]
    fn kinds_and_sqlite_paths() {
        assert_eq!(kind_of(None).unwrap(), SourceKind::Sqlite);
        assert_eq!(
            kind_of(Some("postgresql://h/db")).unwrap(),
            SourceKind::Postgres
        );
        assert!(kind_of(Some("mysql://h/db")).is_err());
        let dir = Path::new("/d/control");
        assert_eq!(sqlite_path(dir, None).unwrap(), dir.join("petrel.db"));
        assert_eq!(
            sqlite_path(dir, Some("sqlite:///x/y.db?mode=rwc")).unwrap(),
            Path::new("/x/y.db")
        );
        assert!(sqlite_path(dir, Some("sqlite::memory:")).is_err());
    }
}
