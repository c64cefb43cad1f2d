//! TLS for STARTTLS: rustls with TLS 1.3 preferred, TLS 1.2 allowed, nothing older.
//!
//! rustls only implements AEAD cipher suites with forward secrecy, so "modern suites only" holds
//! by construction. When no certificate is configured, a self-signed one is generated in
//! `<data_dir>/tls/` once and reused, so STARTTLS is always offered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::EngineError;

/// Where the certificate came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Configured(PathBuf),
    GeneratedSelfSigned(PathBuf),
    ExistingSelfSigned(PathBuf),
}

/// Builds the server config from configured paths, or generates a self-signed pair.
pub fn server_config(
    data_dir: &Path,
    hostname: &str,
    cert_path: Option<&Path>,
    key_path: Option<&Path>,
) -> Result<(Arc<rustls::ServerConfig>, CertSource), EngineError> {
    let (cert_path, key_path, source) = match (cert_path, key_path) {
        (Some(c), Some(k)) => (
            c.to_path_buf(),
            k.to_path_buf(),
            CertSource::Configured(c.to_path_buf()),
        ),
        _ => {
            let dir = data_dir.join("tls");
            let c = dir.join("cert.pem");
            let k = dir.join("key.pem");
            if c.exists() && k.exists() {
                (c.clone(), k, CertSource::ExistingSelfSigned(c))
            } else {
                generate_self_signed(&dir, hostname)?;
                (c.clone(), k, CertSource::GeneratedSelfSigned(c))
            }
        }
    };
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_err(&cert_path, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&cert_path, e))?;
    Ok((Arc::new(config), source))
}

fn tls_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Tls {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn generate_self_signed(dir: &Path, hostname: &str) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir)?;
    let names = vec![hostname.to_string(), "localhost".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| tls_err(dir, e))?;
    write_private(&dir.join("key.pem"), ck.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(dir.join("cert.pem"), ck.cert.pem())?;
    Ok(())
}

/// Writes a secret with mode 0600 from the start.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, EngineError> {
    let pem = std::fs::read(path).map_err(|e| tls_err(path, e))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no certificate in file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, EngineError> {
    let pem = std::fs::read(path).map_err(|e| tls_err(path, e))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| tls_err(path, e))?
        .ok_or_else(|| tls_err(path, "no private key in file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let (_, s1) = server_config(dir.path(), "mx.test", None, None).unwrap();
        assert!(matches!(s1, CertSource::GeneratedSelfSigned(_)));
        let (_, s2) = server_config(dir.path(), "mx.test", None, None).unwrap();
        assert!(matches!(s2, CertSource::ExistingSelfSigned(_)));
        let mode = std::fs::metadata(dir.path().join("tls/key.pem"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn missing_configured_cert_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = server_config(
            dir.path(),
            "mx.test",
            Some(&dir.path().join("nope.pem")),
            Some(&dir.path().join("nope.key")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope.pem"));
    }
}
