//! TLS for STARTTLS: rustls, TLS 1.3 and 1.2 only, the server's own order of suites, and a
//! certificate that can change while the engine runs.
//!
//! rustls only implements AEAD suites with ephemeral (EC)DHE key exchange, so "modern suites
//! only" holds by construction; [`CIPHER_SUITES`] still names them in the order the server
//! picks them (`ignore_client_order`): whatever a client lists first, it gets AES-256-GCM or
//! ChaCha20-Poly1305 before AES-128-GCM, and TLS 1.3 whenever it offers it.
//!
//! The certificate is served by [`CertResolver`], an `ArcSwap` every handshake reads: a reload
//! swaps in a new pair for the handshakes after it, while connections already up keep the one
//! they were made with. [`ServerTls::check`] reloads when the files change (device, inode, size
//! or mtime; [`watch`] looks every [`TLS_RELOAD_CHECK_MS`]) or unconditionally on SIGHUP
//! (`engine.rs`'s signal thread). A new pair that does not load (unparsable, or a key that is
//! not the certificate's) is refused with an error in the log, and the pair in use stays.
//!
//! With no certificate configured, a self-signed pair is generated in `<data_dir>/tls/` and
//! reused; it is valid for a year and made again, through the same swap, once fewer than 30 days
//! remain (at start and at each check; `tls_cert.rs`).
//!
//! With `[acme]`, the watched files are ACME's ([`ServerTls::load_acme`]); the self-signed pair
//! is served only until its first certificate, which `acme.rs` puts in use with
//! [`ServerTls::install`] (written and swapped under the same lock as the checks).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs::cipher_suite as suite;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SupportedCipherSuite;

use crate::clock::now_ms;
pub use crate::tls_cert::TlsError;
use crate::tls_cert::{LoadedPair, Validity};

/// How often the certificate files are checked for a change, and a generated certificate for
/// its expiry.
pub const TLS_RELOAD_CHECK_MS: u64 = 5_000;
/// `notAfter` of the certificate in use, Unix seconds.
pub const METRIC_CERT_EXPIRY: &str = "petrel_tls_certificate_expiry_timestamp_seconds";

/// The suites the server accepts, in the order it picks them: TLS 1.3 first (a client offering
/// 1.3 gets it), 256-bit AES and ChaCha20 before 128-bit AES, and for TLS 1.2 only ECDHE with an
/// AEAD (the ECDSA suites serve an ECDSA certificate, the RSA ones an RSA certificate).
pub static CIPHER_SUITES: &[SupportedCipherSuite] = &[
    suite::TLS13_AES_256_GCM_SHA384,
    suite::TLS13_CHACHA20_POLY1305_SHA256,
    suite::TLS13_AES_128_GCM_SHA256,
    suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
];

/// Where the certificate came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Configured(PathBuf),
    /// Generated now: none existed, or the one there was near its end (or unreadable).
    GeneratedSelfSigned(PathBuf),
    ExistingSelfSigned(PathBuf),
    /// ACME's pair (`[acme]`), from its state directory.
    Acme(PathBuf),
    /// ACME has no usable pair yet: the generated self-signed one (this path) is served until
    /// its first order succeeds.
    AcmePending(PathBuf),
}

/// What made a check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// The periodic check: reload only when the files changed.
    Timer,
    /// SIGHUP: reload whether or not the files look changed.
    Signal,
}

impl ReloadTrigger {
    fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Timer => "file change",
            ReloadTrigger::Signal => "SIGHUP",
        }
    }
}

/// The certificate every new handshake gets; swapped whole on reload.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    fn new(key: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: ArcSwap::new(key),
        }
    }

    /// The pair in use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    fn swap(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The crypto provider of the server: aws-lc-rs (as every rustls config of the workspace) with
/// [`CIPHER_SUITES`] in their order.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// The files a server's pair is read from, and whether the engine makes them itself.
#[derive(Debug, Clone)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    /// The hostname a generated certificate names; `None` for configured files.
    generate_for: Option<String>,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// The stamps of the certificate and key files; `None` for a file that is not there.
type PairStamp = (Option<FileStamp>, Option<FileStamp>);

/// What the checks remember between runs.
#[derive(Debug)]
struct WatchState {
    /// The stamps of the files last tried, loaded or refused: a refused pair is logged once, not
    /// at every check.
    seen: PairStamp,
    /// The validity of the certificate in use.
    validity: Validity,
}

/// The server's TLS: the config every shard's acceptor shares, and what reloads it.
#[derive(Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    resolver: Arc<CertResolver>,
    provider: Arc<CryptoProvider>,
    files: CertFiles,
    source: CertSource,
    /// One check at a time (the timer and SIGHUP may meet).
    state: Mutex<WatchState>,
}

impl ServerTls {
    /// Loads the configured pair, or the generated one (made now if missing or near its end).
    /// With only one of the two paths set, the generated pair is used (the configuration
    /// checks refuse that case first).
    pub fn load(
        data_dir: &Path,
        hostname: &str,
        cert_path: Option<&Path>,
        key_path: Option<&Path>,
    ) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(provider());
        // The stamps are taken before the files are read: a change while they are read is seen
        // by the next check.
        let (files, source, pair, seen) = match (cert_path, key_path) {
            (Some(c), Some(k)) => {
                let files = CertFiles {
                    cert: c.to_path_buf(),
                    key: k.to_path_buf(),
                    generate_for: None,
                };
                let seen = (stamp(c), stamp(k));
                let pair = crate::tls_cert::load_pair(c, k, &provider)?;
                (files, CertSource::Configured(c.to_path_buf()), pair, seen)
            }
            _ => {
                let dir = data_dir.join("tls");
                let files = CertFiles {
                    cert: dir.join(crate::tls_cert::SELF_SIGNED_CERT_FILE),
                    key: dir.join(crate::tls_cert::SELF_SIGNED_KEY_FILE),
                    generate_for: Some(hostname.to_string()),
                };
                let mut seen = (stamp(&files.cert), stamp(&files.key));
                let (source, pair) = self_signed_at_start(&files, &provider)?;
                if source != CertSource::ExistingSelfSigned(files.cert.clone()) {
                    // Made now: its stamps are not those taken above.
                    seen = (stamp(&files.cert), stamp(&files.key));
                }
                (files, source, pair, seen)
            }
        };
        Self::assemble(provider, files, source, pair, seen)
    }

    /// Loads ACME's pair from `cert_path` and `key_path`, or, while it has none that loads, the
    /// generated self-signed pair (made now if missing or near its end). Either way the ACME
    /// files are the ones watched: [`Self::install`] writes them, and the file check and SIGHUP
    /// reload them.
    pub fn load_acme(
        data_dir: &Path,
        hostname: &str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(provider());
        let files = CertFiles {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            generate_for: None,
        };
        let seen = (stamp(cert_path), stamp(key_path));
        let (source, pair) = match crate::tls_cert::load_pair(cert_path, key_path, &provider) {
            Ok(pair) => (CertSource::Acme(cert_path.to_path_buf()), pair),
            Err(e) => {
                if seen != (None, None) {
                    tracing::warn!(error = %e, "the ACME certificate does not load: ordering a new one");
                }
                let dir = data_dir.join("tls");
                let placeholder = CertFiles {
                    cert: dir.join(crate::tls_cert::SELF_SIGNED_CERT_FILE),
                    key: dir.join(crate::tls_cert::SELF_SIGNED_KEY_FILE),
                    generate_for: Some(hostname.to_string()),
                };
                let (_, pair) = self_signed_at_start(&placeholder, &provider)?;
                (CertSource::AcmePending(placeholder.cert), pair)
            }
        };
        Self::assemble(provider, files, source, pair, seen)
    }

    fn assemble(
        provider: Arc<CryptoProvider>,
        files: CertFiles,
        source: CertSource,
        pair: LoadedPair,
        seen: PairStamp,
    ) -> Result<ServerTls, TlsError> {
        let resolver = Arc::new(CertResolver::new(pair.key));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.ignore_client_order = true;
        set_expiry_gauge(&pair.validity);
        Ok(ServerTls {
            config: Arc::new(config),
            resolver,
            provider,
            files,
            source,
            state: Mutex::new(WatchState {
                seen,
                validity: pair.validity,
            }),
        })
    }

    /// The config every acceptor shares; its certificate follows reloads.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }

    pub fn source(&self) -> &CertSource {
        &self.source
    }

    /// The leaf certificate in use now (DER).
    pub fn current_leaf(&self) -> Option<Vec<u8>> {
        self.resolver
            .current()
            .cert
            .first()
            .map(|c| c.as_ref().to_vec())
    }

    /// The validity of the certificate in use.
    pub fn validity(&self) -> Validity {
        self.lock().validity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        // A panic mid-check leaves nothing half-done that matters: the swap is one store.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews a generated certificate near its end, then reloads the pair if its files changed
    /// (or always, for [`ReloadTrigger::Signal`]). `Ok(Some(validity))`: a new pair is in use;
    /// `Ok(None)`: nothing to do; `Err`: the new pair was refused and the old one stays.
    pub fn check(
        &self,
        trigger: ReloadTrigger,
        now_unix: i64,
    ) -> Result<Option<Validity>, TlsError> {
        let mut state = self.lock();
        if let Some(hostname) = &self.files.generate_for {
            if state.validity.needs_renewal(now_unix) {
                let dir = self.files.cert.parent().unwrap_or(Path::new("."));
                crate::tls_cert::generate_self_signed(dir, hostname, now_unix)?;
                tracing::info!(
                    path = %self.files.cert.display(),
                    not_after = state.validity.not_after_unix,
                    "the generated TLS certificate is near its end: made a new one"
                );
            }
        }
        let now_seen = (stamp(&self.files.cert), stamp(&self.files.key));
        if trigger == ReloadTrigger::Timer && now_seen == state.seen {
            return Ok(None);
        }
        state.seen = now_seen;
        let LoadedPair { key, validity } =
            crate::tls_cert::load_pair(&self.files.cert, &self.files.key, &self.provider)?;
        self.resolver.swap(key);
        state.validity = validity;
        set_expiry_gauge(&validity);
        Ok(Some(validity))
    }

    /// Puts a new pair in use (ACME's): checked in memory first (a refused pair writes
    /// nothing), then written over the watched files (key, then chain; each atomically, owner-only
    /// for the key) and swapped in, all under the lock the file check and SIGHUP take, so
    /// neither sees half a pair.
    pub fn install(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Validity, TlsError> {
        let mut state = self.lock();
        let (cert, key) = (&self.files.cert, &self.files.key);
        let pair = crate::tls_cert::parse_pair(cert_pem, cert, key_pem, key, &self.provider)?;
        crate::tls_cert::write_atomic(key, key_pem, 0o600)?;
        crate::tls_cert::write_atomic(cert, cert_pem, 0o644)?;
        state.seen = (stamp(cert), stamp(key));
        self.resolver.swap(pair.key);
        state.validity = pair.validity;
        set_expiry_gauge(&pair.validity);
        Ok(pair.validity)
    }

    /// [`Self::check`] with its outcome logged: a line for each reload, an error for a refused
    /// pair.
    pub fn check_logged(&self, trigger: ReloadTrigger) {
        let now_unix = i64::try_from(now_ms() / 1_000).unwrap_or(i64::MAX);
        match self.check(trigger, now_unix) {
            Ok(None) => {}
            Ok(Some(v)) => tracing::info!(
                path = %self.files.cert.display(),
                trigger = trigger.as_str(),
                not_after = v.not_after_unix,
                "TLS certificate reloaded: new connections get it, open ones keep theirs"
            ),
            Err(e) => tracing::error!(
                error = %e,
                trigger = trigger.as_str(),
                "TLS certificate not reloaded: keeping the one in use"
            ),
        }
    }
}

/// The generated pair at start: the one in `files` if it loads and is not near its end, else a
/// new one.
fn self_signed_at_start(
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<(CertSource, LoadedPair), TlsError> {
    let now_unix = i64::try_from(now_ms() / 1_000).unwrap_or(i64::MAX);
    let hostname = files.generate_for.as_deref().unwrap_or("localhost");
    if files.cert.exists() && files.key.exists() {
        match crate::tls_cert::load_pair(&files.cert, &files.key, provider) {
            Ok(pair) if !pair.validity.needs_renewal(now_unix) => {
                return Ok((CertSource::ExistingSelfSigned(files.cert.clone()), pair));
            }
            Ok(pair) => tracing::warn!(
                path = %files.cert.display(),
                not_after = pair.validity.not_after_unix,
                "the generated TLS certificate is near its end (or valid for too long): making a new one"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "the generated TLS certificate does not load: making a new one"
            ),
        }
    }
    let dir = files.cert.parent().unwrap_or(Path::new("."));
    crate::tls_cert::generate_self_signed(dir, hostname, now_unix)?;
    let pair = crate::tls_cert::load_pair(&files.cert, &files.key, provider)?;
    Ok((CertSource::GeneratedSelfSigned(files.cert.clone()), pair))
}

fn set_expiry_gauge(v: &Validity) {
    metrics::gauge!(METRIC_CERT_EXPIRY).set(v.not_after_unix as f64);
}

/// Checks the certificate every [`TLS_RELOAD_CHECK_MS`] on the slow-path runtime (the check
/// reads files and may make a key, so it runs on the blocking pool).
pub async fn watch(tls: Arc<ServerTls>) {
    let period = std::time::Duration::from_millis(TLS_RELOAD_CHECK_MS);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = Arc::clone(&tls);
        if let Err(e) =
            tokio::task::spawn_blocking(move || t.check_logged(ReloadTrigger::Timer)).await
        {
            tracing::error!(error = %e, "TLS certificate check failed");
        }
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
