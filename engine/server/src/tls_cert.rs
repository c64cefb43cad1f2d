//! The SMTP server's certificate material: a PEM pair read (bounded) and checked (the key must
//! be the certificate's), the certificate's validity read from its DER, and the self-signed pair
//! the engine makes for itself when none is configured.
//!
//! A generated certificate is valid for [`SELF_SIGNED_VALIDITY_DAYS`] and made again once fewer
//! than [`SELF_SIGNED_RENEW_BEFORE_DAYS`] remain: clients (and testssl.sh) distrust certificates
//! valid for longer than 398 days, and one that never expires is never replaced. Nothing here
//! holds state; `tls.rs` decides when to call it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate or key file larger than this is refused unread: a chain is a few KiB.
pub const CERT_FILE_BYTES_MAX: u64 = 1 << 20;
/// How long a generated self-signed certificate is valid, counted from its `notBefore`.
pub const SELF_SIGNED_VALIDITY_DAYS: u64 = 365;
/// A generated certificate with fewer days than this left is made again.
pub const SELF_SIGNED_RENEW_BEFORE_DAYS: u64 = 30;
/// A generated certificate's `notBefore` is this far in the past, for clients whose clock is
/// behind ours.
pub const SELF_SIGNED_BACKDATE_SECS: u64 = 3_600;
/// A generated certificate valid for longer than this (one made by an older Petrel, valid for
/// centuries) is made again too.
pub const SELF_SIGNED_SPAN_MAX_DAYS: u64 = SELF_SIGNED_VALIDITY_DAYS + 1;
const SECS_PER_DAY: u64 = 86_400;

/// File names of the generated pair under `<data_dir>/tls/`.
pub const SELF_SIGNED_CERT_FILE: &str = "cert.pem";
pub const SELF_SIGNED_KEY_FILE: &str = "key.pem";

/// Why certificate material was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {max_bytes} bytes")]
    TooLarge { path: PathBuf, max_bytes: u64 },
    #[error("{path}: not PEM: {source}")]
    Pem {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key in the file")]
    NoKey { path: PathBuf },
    /// The key cannot be used, or it is not the certificate's key.
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    /// The certificate's DER has no readable validity.
    #[error("{path}: unreadable certificate validity: {source}")]
    Validity {
        path: PathBuf,
        source: yasna::ASN1Error,
    },
    #[error("{dir}: cannot generate a self-signed certificate: {source}")]
    Generate { dir: PathBuf, source: rcgen::Error },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// rustls refused the protocol versions for the provider (a build without TLS 1.2).
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
}

/// A certificate's validity, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_unix: i64,
    /// `notAfter`: the certificate is good through this second.
    pub not_after_unix: i64,
}

impl Validity {
    /// A generated certificate must be made again: too few days left, or valid for too long.
    pub fn needs_renewal(&self, now_unix: i64) -> bool {
        let left = self.not_after_unix.saturating_sub(now_unix);
        let span = self.not_after_unix.saturating_sub(self.not_before_unix);
        left < days(SELF_SIGNED_RENEW_BEFORE_DAYS) || span > days(SELF_SIGNED_SPAN_MAX_DAYS)
    }
}

fn days(n: u64) -> i64 {
    i64::try_from(n * SECS_PER_DAY).unwrap_or(i64::MAX)
}

/// A pair read and checked: what rustls serves, and the leaf's validity.
#[derive(Debug, Clone)]
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    pub validity: Validity,
}

/// Reads a PEM chain and its key, checks that the key is the leaf's, and reads the leaf's
/// validity.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedPair, TlsError> {
    let cert_pem = read_bounded(cert_path)?;
    let key_pem = read_bounded(key_path)?;
    parse_pair(&cert_pem, cert_path, &key_pem, key_path, provider)
}

/// [`load_pair`] of PEM already in memory; the paths name the files in errors.
pub fn parse_pair(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<LoadedPair, TlsError> {
    let certs = parse_certs(cert_pem, cert_path)?;
    let key = parse_key(key_pem, key_path)?;
    let validity = certificate_validity(&certs[0]).map_err(|source| TlsError::Validity {
        path: cert_path.to_path_buf(),
        source,
    })?;
    let key = CertifiedKey::from_der(certs, key, provider).map_err(|source| TlsError::Key {
        path: key_path.to_path_buf(),
        source,
    })?;
    Ok(LoadedPair {
        key: Arc::new(key),
        validity,
    })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(CERT_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > CERT_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
            max_bytes: CERT_FILE_BYTES_MAX,
        });
    }
    Ok(bytes)
}

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &pem[..]).collect();
    let certs = certs.map_err(|source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

/// `tbsCertificate.validity` of an X.509 certificate (RFC 5280 §4.1): the fields before it are
/// skipped whole, the ones after it too.
pub fn certificate_validity(der: &[u8]) -> yasna::ASN1Result<Validity> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|cert| {
            let validity = cert.next().read_sequence(|tbs| {
                if tbs.next().lookahead_tag()? == yasna::Tag::context(0) {
                    tbs.next().read_der()?; // version
                }
                tbs.next().read_der()?; // serialNumber
                tbs.next().read_der()?; // signature
                tbs.next().read_der()?; // issuer
                let validity = tbs.next().read_sequence(|v| {
                    Ok(Validity {
                        not_before_unix: read_time(v.next())?,
                        not_after_unix: read_time(v.next())?,
                    })
                })?;
                // subject, subjectPublicKeyInfo, then the optional ids and extensions.
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(validity)
            })?;
            cert.next().read_der()?; // signatureAlgorithm
            cert.next().read_der()?; // signatureValue
            Ok(validity)
        })
    })
}

/// `Time ::= CHOICE { utcTime UTCTime, generalTime GeneralizedTime }`, in Unix seconds.
fn read_time(r: yasna::BERReader<'_, '_>) -> yasna::ASN1Result<i64> {
    if r.lookahead_tag()? == yasna::tags::TAG_UTCTIME {
        Ok(r.read_utctime()?.datetime().unix_timestamp())
    } else {
        Ok(r.read_generalized_time()?.datetime().unix_timestamp())
    }
}

/// Makes a self-signed pair for `hostname` (and `localhost`) in `dir`, valid from
/// [`SELF_SIGNED_BACKDATE_SECS`] before `now_unix` for [`SELF_SIGNED_VALIDITY_DAYS`]. Each file
/// is written whole under a temporary name and renamed, so a reader never sees half of one; the
/// key is owner-only from the start.
pub fn generate_self_signed(dir: &Path, hostname: &str, now_unix: i64) -> Result<(), TlsError> {
    let gen_err = |source| TlsError::Generate {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let names = vec![hostname.to_string(), "localhost".to_string()];
    let mut params = rcgen::CertificateParams::new(names).map_err(gen_err)?;
    let not_before = u64::try_from(now_unix)
        .unwrap_or(0)
        .saturating_sub(SELF_SIGNED_BACKDATE_SECS);
    // rcgen names its dates in the `time` crate: built from the Unix epoch, so the engine
    // needs no dependency on it.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + std::time::Duration::from_secs(not_before);
    params.not_after = epoch
        + std::time::Duration::from_secs(not_before + SELF_SIGNED_VALIDITY_DAYS * SECS_PER_DAY);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    write_atomic(
        &dir.join(SELF_SIGNED_KEY_FILE),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_atomic(
        &dir.join(SELF_SIGNED_CERT_FILE),
        cert.pem().as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory (created with
/// `mode`, synced, renamed over `path`).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(write_err)?;
    f.write_all(bytes).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
    }
    Ok(())
}
