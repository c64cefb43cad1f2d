//! Secrets come from files, never from the environment or the command line (issue 16): both
//! are visible to other users of the machine (`/proc/<pid>/cmdline`, `/proc/<pid>/environ` of
//! children, shell history, process listings). A secret file must be readable by its owner
//! only (mode 0600 or 0400), as systemd's credentials are
//! (`LoadCredential=`, found under `$CREDENTIALS_DIRECTORY`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Largest secret file read, in bytes (a token or a password, not a document).
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Permission bits a secret file must not have: any access for the group or others.
pub const SECRET_FILE_FORBIDDEN_MODE: u32 = 0o077;

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secret file {path} is empty")]
    Empty { path: PathBuf },
    #[error("the secret file {path} is {len} bytes (at most {SECRET_FILE_BYTES_MAX})")]
    TooLarge { path: PathBuf, len: u64 },
    #[error(
        "the secret file {path} has mode {mode:04o}: group and others must have no access \
         (chmod 600)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "{what} on the command line or in the environment is refused: secrets go in a file \
         (mode 0600); use {instead}"
    )]
    NotInFile {
        what: &'static str,
        instead: &'static str,
    },
}

/// The secret in `path`, surrounding whitespace trimmed; the file must be the owner's alone.
pub fn read(path: &Path) -> Result<String, SecretError> {
    let err = |source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let mode = meta.mode() & 0o7777;
    if mode & SECRET_FILE_FORBIDDEN_MODE != 0 {
        return Err(SecretError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(SecretError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

/// The systemd credential `name` (`$CREDENTIALS_DIRECTORY/<name>`), when the service has one.
pub fn credential(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = Path::new(&dir).join(name);
    path.is_file().then_some(path)
}

/// Refuses a secret that came on the command line or in the environment variable `env`.
pub fn refuse_inline(
    flag_value: Option<&str>,
    env: &str,
    what: &'static str,
    instead: &'static str,
) -> Result<(), SecretError> {
    if flag_value.is_some() || std::env::var_os(env).is_some() {
        return Err(SecretError::NotInFile { what, instead });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_secret_file_is_the_owners_alone_and_not_empty() {
        let d = tempfile::tempdir().unwrap();
        let ok = file(d.path(), "ok", "  s3cret\n", 0o600);
        assert_eq!(read(&ok).unwrap(), "s3cret");
        let ro = file(d.path(), "ro", "s3cret", 0o400);
        assert_eq!(read(&ro).unwrap(), "s3cret");
        let shared = file(d.path(), "shared", "s3cret", 0o640);
        let e = read(&shared).unwrap_err();
        assert!(matches!(e, SecretError::Exposed { mode: 0o640, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let empty = file(d.path(), "empty", " \n", 0o600);
        assert!(matches!(read(&empty), Err(SecretError::Empty { .. })));
        assert!(matches!(
            read(&d.path().join("missing")),
            Err(SecretError::Read { .. })
        ));
        let big = file(
            d.path(),
            "big",
            &"x".repeat(SECRET_FILE_BYTES_MAX as usize + 1),
            0o600,
        );
        assert!(matches!(read(&big), Err(SecretError::TooLarge { .. })));
    }

    #[test]
    fn an_inline_secret_is_refused_with_what_to_use_instead() {
        let e =
            refuse_inline(Some("t"), "PETREL_TEST_UNSET_VARIABLE", "--x", "--x-file").unwrap_err();
        assert!(e.to_string().contains("use --x-file"), "{e}");
        assert!(refuse_inline(None, "PETREL_TEST_UNSET_VARIABLE", "--x", "--x-file").is_ok());
    }
}
