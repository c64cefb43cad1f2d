//! The SMTP certificate obtained and renewed by ACME (RFC 8555) with instant-acme, on a thread
//! of its own (`petrel-acme`, a current-thread tokio runtime): the HTTP-01 responder and the
//! renewal loop. Key generation, the CA's HTTPS and the file syncs stay off the slow-path
//! thread (metrics, admin, DNS, the control link) and off the shards.
//!
//! Files, under `acme.state_dir` (`<data_dir>/acme`, mode 0700):
//! - `account-<hash of the directory URL>.json`: the account's key and URL, owner-only, never
//!   logged; one per CA, so moving from staging to production keeps both;
//! - `cert.pem` (the chain) and `key.pem` (owner-only): what the TLS resolver serves.
//!
//! A new pair is checked in memory (the key must be the leaf's), written (temporary file,
//! fsync, rename: key, then chain) and swapped into the resolver in one step under the
//! resolver's lock ([`ServerTls::install`]): new handshakes get it at once, open connections
//! keep theirs, and the 5 s file check and SIGHUP reload the same files. Until a first
//! certificate is issued the engine serves its self-signed one. A crash between the two
//! renames leaves a key that is not the chain's: the next start finds no usable pair and
//! orders again.
//!
//! When (`acme_plan.rs`): at start, at the renewal moment, at least every 12 hours; failures
//! are retried with a doubling wait, counted in `petrel_acme_orders_total{result}` and logged
//! without secrets. The expiry gauge follows the pair in use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use crate::tls::ServerTls;
use crate::tls_cert::Validity;
use plan::Current;

#[path = "acme_client.rs"]
pub mod client;
#[path = "acme_http01.rs"]
pub mod http01;
#[path = "acme_order.rs"]
pub mod order;
#[path = "acme_plan.rs"]
pub mod plan;

/// One whole order (account, validation, issuance), at most.
pub const ACME_ORDER_TIMEOUT_SECS: u64 = 600;
/// File names under `acme.state_dir`.
pub const ACME_CERT_FILE: &str = "cert.pem";
pub const ACME_KEY_FILE: &str = "key.pem";

/// Orders, by `result`: `issued` or `failed` (both registered at 0 by `metrics.rs`).
pub const METRIC_ORDERS: &str = "petrel_acme_orders_total";

/// Why an ACME step failed. Never carries a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    #[error("acme.http01_listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The ACME thread or its runtime could not be started.
    #[error("cannot start the ACME thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("acme.ca_file {path}: no certificate in the file")]
    CaFileEmpty { path: PathBuf },
    #[error("acme.ca_file {path}: not a usable root: {source}")]
    CaFileCert {
        path: PathBuf,
        source: rustls::Error,
    },
    /// rustls refused the client's protocol versions (a build without them).
    #[error("ACME client TLS: {0}")]
    ClientTls(#[source] rustls::Error),
    /// The account file is not owner-only, too large or unreadable.
    #[error("ACME account {path}: {source}")]
    AccountFile {
        path: PathBuf,
        source: petrel_seal::secret_file::SecretError,
    },
    #[error("ACME account {path}: {source}")]
    AccountJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The CA answered with a problem, or could not be reached.
    #[error("ACME server: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("the CA offers no HTTP-01 challenge for {name}")]
    NoHttp01 { name: String },
    #[error("the authorization for {name} is {status}")]
    Authorization { name: String, status: String },
    #[error("the CA sent more authorizations than the {names} names ordered")]
    TooManyAuthorizations { names: usize },
    #[error("the order is {status} after validation")]
    OrderStatus { status: String },
    #[error("certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    /// The issued pair was refused (unparsable, key not the leaf's), or a file (the pair, the
    /// account) could not be written; the error names the file.
    #[error("{0}")]
    Files(#[from] crate::tls_cert::TlsError),
    #[error("the order took longer than {secs} s")]
    Timeout { secs: u64 },
    #[error("the issued certificate is due for renewal already (valid until {not_after_unix})")]
    DueAtOnce { not_after_unix: i64 },
}

/// What `[acme]` asks for, with the engine's hostname and data directory applied
/// (`AcmeSection::settings`; this module does not read the configuration itself, so the
/// configuration's error type can name this one's).
#[derive(Debug, Clone)]
pub struct Settings {
    pub directory_url: String,
    pub contact: Option<String>,
    /// At least one, at most `ACME_DOMAINS_MAX`, lower case.
    pub names: Vec<String>,
    pub http01_listen: SocketAddr,
    pub ca_file: Option<PathBuf>,
    pub renew_before_days: u32,
    pub state_dir: PathBuf,
}

/// Starts ACME: binds the HTTP-01 responder (a taken port or a bad `acme.ca_file` stops the
/// start) and runs the renewal loop until `shutdown` closes. Returns the responder's address.
pub fn start(
    settings: Settings,
    tls: Arc<ServerTls>,
    shutdown: async_channel::Receiver<()>,
) -> Result<SocketAddr, AcmeError> {
    let addr = settings.http01_listen;
    let bind_err = |source| AcmeError::Bind { addr, source };
    let listener = http01::bind(addr).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    let http = client::AcmeHttp::new(settings.ca_file.as_deref())?;
    let state_dir = settings.state_dir;
    create_private_dir(&state_dir)?;
    let account_file = state_dir.join(account_file_name(&settings.directory_url));
    let runner = Runner {
        http,
        directory_url: settings.directory_url,
        contact: settings.contact,
        names: settings.names,
        renew_before_days: settings.renew_before_days,
        account_file,
        cert: state_dir.join(ACME_CERT_FILE),
        key: state_dir.join(ACME_KEY_FILE),
        tls,
        challenges: Arc::new(http01::Challenges::default()),
        account: None,
        failures: 0,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AcmeError::Thread)?;
    std::thread::Builder::new()
        .name("petrel-acme".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let challenges = Arc::clone(&runner.challenges);
                        tokio::spawn(http01::serve(l, challenges, shutdown.clone()));
                    }
                    Err(e) => tracing::error!(error = %e, "ACME HTTP-01 responder not started"),
                }
                runner.run(shutdown).await;
            });
        })
        .map_err(AcmeError::Thread)?;
    tracing::info!(http01 = %bound, "ACME on: the SMTP certificate is ordered and renewed");
    Ok(bound)
}

/// The account file's name: one per directory URL.
pub fn account_file_name(directory_url: &str) -> String {
    let hash = sha2::Sha256::digest(directory_url.as_bytes());
    format!("account-{}.json", hex::encode(&hash[..8]))
}

fn create_private_dir(dir: &Path) -> Result<(), AcmeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AcmeError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// The renewal loop's state.
struct Runner {
    http: client::AcmeHttp,
    directory_url: String,
    contact: Option<String>,
    names: Vec<String>,
    renew_before_days: u32,
    account_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    tls: Arc<ServerTls>,
    challenges: Arc<http01::Challenges>,
    /// Restored or created at the first order, then kept.
    account: Option<instant_acme::Account>,
    /// Failed orders in a row.
    failures: u32,
}

impl Runner {
    async fn run(mut self, shutdown: async_channel::Receiver<()>) {
        loop {
            let wait_secs = self.step().await;
            tracing::debug!(wait_secs, "ACME: next look at the certificate");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait_secs)) => {}
                _ = shutdown.recv() => return,
            }
        }
    }

    /// One look: orders when due; returns the seconds until the next look.
    async fn step(&mut self) -> u64 {
        let current = self.current();
        let now = now_unix();
        if !plan::due(&current, now, self.renew_before_days) {
            return plan::wait_secs(&current, now, self.renew_before_days);
        }
        tracing::info!(names = ?self.names, current = ?current, "ACME: ordering a certificate");
        let limit = Duration::from_secs(ACME_ORDER_TIMEOUT_SECS);
        let outcome = match tokio::time::timeout(limit, self.renew()).await {
            Ok(r) => r,
            Err(_) => Err(AcmeError::Timeout {
                secs: ACME_ORDER_TIMEOUT_SECS,
            }),
        };
        self.challenges.clear();
        match outcome {
            Ok(v) => {
                self.failures = 0;
                metrics::counter!(METRIC_ORDERS, "result" => "issued").increment(1);
                tracing::info!(
                    path = %self.cert.display(),
                    not_after = v.not_after_unix,
                    "ACME: certificate issued and in use for new connections"
                );
                plan::wait_secs(&Current::Covers(v), now_unix(), self.renew_before_days)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let retry_secs = plan::retry_secs(self.failures);
                metrics::counter!(METRIC_ORDERS, "result" => "failed").increment(1);
                tracing::warn!(
                    error = %e,
                    failures = self.failures,
                    retry_secs,
                    "ACME: order failed; the certificate in use stays"
                );
                retry_secs
            }
        }
    }

    /// The pair on disk, as the plan sees it.
    fn current(&self) -> Current {
        let provider = crate::tls::provider();
        match crate::tls_cert::load_pair(&self.cert, &self.key, &provider) {
            Err(_) => Current::Missing,
            Ok(pair) => match pair.key.cert.first() {
                Some(leaf) if covers(leaf, &self.names) => Current::Covers(pair.validity),
                _ => Current::OtherNames(pair.validity),
            },
        }
    }

    async fn renew(&mut self) -> Result<Validity, AcmeError> {
        let account = match &self.account {
            Some(a) => a.clone(),
            None => {
                let a = order::account(
                    &self.http,
                    &self.directory_url,
                    self.contact.as_deref(),
                    &self.account_file,
                )
                .await?;
                self.account = Some(a.clone());
                a
            }
        };
        let issued = order::order(&account, &self.names, &self.challenges).await?;
        let v = self
            .tls
            .install(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())?;
        if plan::due(&Current::Covers(v), now_unix(), self.renew_before_days) {
            return Err(AcmeError::DueAtOnce {
                not_after_unix: v.not_after_unix,
            });
        }
        Ok(v)
    }
}

/// Whether the leaf is valid for every name.
fn covers(leaf: &rustls::pki_types::CertificateDer<'_>, names: &[String]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    names.iter().all(|n| {
        rustls::pki_types::ServerName::try_from(n.as_str())
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

fn now_unix() -> i64 {
    i64::try_from(crate::clock::now_ms() / 1_000).unwrap_or(i64::MAX)
}
