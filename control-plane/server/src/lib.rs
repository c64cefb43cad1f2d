//! The control plane: tenants, sending domains and their DKIM keys, credentials, limits, the
//! audit log, the snapshot push to engines, and the delivery events engines send back.
//!
//! It owns the SQL store (sqlx over SQLite by default, PostgreSQL when several nodes share one
//! database; one code path through the `Any` driver, see [`store`]), the admin API (axum, JSON
//! under `/v1`, see [`api`]), and the push listener (TLS, [`push`]) that streams
//! `petrel_policy::PolicySnapshot`s to engines. Engines never read the database: what they know
//! is exactly the last snapshot they acknowledged, so the control plane can be down without
//! stopping mail.
//!
//! Trade-offs. Every mutation bumps one version row first, which serialises writers (fine for
//! an admin API; it is what makes the audit hash chain and the snapshot version exact). Each
//! snapshot is the full policy, not a diff: simple and self-healing, at the cost of bytes per
//! change (thousands of tenants fit in a few MB). Tenancy is enforced in SQL: every tenant-data
//! query names the caller's tenant, so another tenant's id is indistinguishable from a missing
//! one (404). Secrets are argon2id hashes; a verified key is cached under a keyed hash only.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod accept;
pub mod api;
pub mod api_tls;
pub mod audit;
pub mod audit_anchor;
pub mod audit_signals;
pub mod auth;
pub mod auth_failures;
pub mod backup;
mod bootstrap;
mod cli;
pub mod client_addr;
pub mod credential_expiry;
pub mod dns;
pub mod domain_auth;
pub mod erasure;
mod error;
pub mod events;
pub mod export;
pub mod guardrails;
pub mod mta_sts;
pub mod push;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod suppressions;
pub mod tls_rpt;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use auth::{HashCost, Permission, Role, PERMISSIONS};
pub use bootstrap::{bootstrap_dev, DevBootstrap};
pub use cli::{database_url_with_password, run, ControlCommand, ServeArgs};
pub use error::{ApiError, ControlError};

/// Default period a rotated-out DKIM key stays listed: 7 days.
pub const DKIM_ROTATION_GRACE_SECS_DEFAULT: u64 = 7 * 24 * 3600;
/// The SPF domain tenants include unless configured otherwise.
pub const SPF_INCLUDE_DEFAULT: &str = "_spf.petrel.invalid";
/// How often each node re-reads the stored version (changes made by other nodes).
pub const VERSION_POLL_MS_DEFAULT: u64 = 1_000;

/// What the `petrel` binary configures.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The control plane's own directory (`<data>/control`): `petrel.db`, push TLS files.
    pub data_dir: PathBuf,
    /// None: SQLite at `<data_dir>/petrel.db`. Else `sqlite:...` or `postgres://...`.
    pub database_url: Option<String>,
    /// Admin API (default 127.0.0.1:8080).
    pub api_listen: SocketAddr,
    /// Engine push (default 127.0.0.1:8081).
    pub push_listen: SocketAddr,
    /// Shared secret engines present in `Hello`. Must not be empty.
    pub push_token: String,
    /// Nameservers for domain verification and webhook targets; empty: the system's.
    pub dns_nameservers: Vec<SocketAddr>,
    /// Let webhooks reach loopback addresses, also over plain http (development only: `petrel
    /// up` sets it; `petrel control serve` needs `--webhooks-allow-loopback`). Private and other
    /// special addresses stay refused.
    pub webhooks_allow_loopback: bool,
    /// Extra CA certificates (PEM) webhook receivers may chain to, besides the web PKI roots.
    pub webhooks_ca_file: Option<PathBuf>,
}

/// Knobs with good defaults, kept out of [`ControlConfig`] so its literal stays short.
#[derive(Clone)]
pub struct ServeOptions {
    /// Seconds per window of failed API authentications aggregated into one audit row per
    /// address (`auth_failures.rs`).
    pub auth_failure_audit_window_secs: u64,
    /// Refuse engines without an identity of their own (the shared push token admits none).
    pub require_engine_identity: bool,
    /// The Ed25519 key signing audit checkpoints (`audit_anchor.rs`); None: the credential
    /// `petrel-audit-key`, else `<data_dir>/keys/audit-ed25519.key`, made at first start.
    pub audit_key_file: Option<PathBuf>,
    /// Where signed checkpoints are appended; None: `<data_dir>/audit-checkpoints.jsonl`.
    pub audit_checkpoint_file: Option<PathBuf>,
    /// Seconds between scheduled checkpoints.
    pub audit_checkpoint_interval_secs: u64,
    /// The key-encryption key file sealing the secret columns (issue 16); None: the systemd
    /// credential `petrel-kek`, else `<data_dir>/keys/kek`, made at first start. Every node
    /// sharing a database must use the same key.
    pub key_file: Option<PathBuf>,
    /// Days after which an owner's new secret values go under a new data key
    /// (1..=`DATA_KEY_ROTATE_AFTER_DAYS_MAX`; `store/sealed.rs`).
    pub data_key_rotate_after_days: u32,
    /// PEM files for the push listener; None: self-signed under `data_dir`.
    pub push_tls_cert: Option<PathBuf>,
    pub push_tls_key: Option<PathBuf>,
    /// PEM files for the admin API; None: plain HTTP, which only a loopback `api_listen` gets
    /// unless `api_allow_plaintext` is set.
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    /// Serve the admin API without TLS on a non-loopback address (a TLS proxy in front of it).
    pub api_allow_plaintext: bool,
    /// The proxies in front of the admin API whose `X-Forwarded-For` names the client
    /// (`client_addr.rs`); empty: the TCP peer is the client.
    pub api_trusted_proxies: Vec<ipnet::IpNet>,
    pub spf_include: String,
    /// `Settings::spf_addresses`: the engines' outbound addresses an SPF record may list
    /// instead of the include.
    pub spf_addresses: Vec<std::net::IpAddr>,
    /// Period of the scheduled DNS re-check of sending domains ([`domain_auth::check_task`]).
    pub domain_check_interval_secs: u64,
    pub dkim_rotation_grace_secs: u64,
    /// argon2id cost for new secrets.
    pub hash_cost: HashCost,
    pub version_poll_ms: u64,
    /// `Settings::return_path_domain`: the bounce domain of VERP return paths; empty: off.
    pub return_path_domain: String,
    /// `Settings::public_url`: where one-click unsubscribe links point; empty: none.
    pub public_url: String,
    /// The clock; None: the system clock. Tests pin or move it (webhook retries, secret
    /// overlap).
    pub clock: Option<Arc<dyn Clock>>,
    /// Abuse guardrails: the new-tenant cap, thresholds, window, minimum volume.
    pub guardrails: guardrails::GuardSettings,
    /// The retention windows tenants may choose (`--retention-bounds`).
    pub retention: retention::RetentionBounds,
    /// Inbound MTA-STS (`--intake-mx`, `--mta-sts-*`); None: off.
    pub mta_sts: Option<mta_sts::InboundMtaSts>,
    /// Outbound TLS-RPT reports (`--tls-rpt-*`); None: not sent.
    pub tls_rpt: Option<tls_rpt::TlsRptSettings>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("push_tls_cert", &self.push_tls_cert)
            .field("api_tls_cert", &self.api_tls_cert)
            .field("api_allow_plaintext", &self.api_allow_plaintext)
            .field("spf_include", &self.spf_include)
            .field("dkim_rotation_grace_secs", &self.dkim_rotation_grace_secs)
            .field("hash_cost", &self.hash_cost)
            .field("version_poll_ms", &self.version_poll_ms)
            .field("clock", &self.clock.as_ref().map(|_| "<clock>"))
            .finish_non_exhaustive()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            push_tls_cert: None,
            push_tls_key: None,
            api_tls_cert: None,
            api_tls_key: None,
            api_allow_plaintext: false,
            api_trusted_proxies: Vec::new(),
            spf_include: SPF_INCLUDE_DEFAULT.to_string(),
            spf_addresses: Vec::new(),
            domain_check_interval_secs: domain_auth::DOMAIN_CHECK_INTERVAL_SECS_DEFAULT,
            dkim_rotation_grace_secs: DKIM_ROTATION_GRACE_SECS_DEFAULT,
            hash_cost: HashCost::default(),
            version_poll_ms: VERSION_POLL_MS_DEFAULT,
            return_path_domain: String::new(),
            public_url: String::new(),
            clock: None,
            guardrails: guardrails::GuardSettings::default(),
            retention: retention::RetentionBounds::default(),
            mta_sts: None,
            tls_rpt: None,
            key_file: None,
            data_key_rotate_after_days: store::sealed::DATA_KEY_ROTATE_AFTER_DAYS_DEFAULT,
            audit_key_file: None,
            audit_checkpoint_file: None,
            require_engine_identity: false,
            auth_failure_audit_window_secs: auth_failures::AUTH_FAILURE_AUDIT_WINDOW_SECS_DEFAULT,
            audit_checkpoint_interval_secs: audit_anchor::CHECKPOINT_INTERVAL_SECS_DEFAULT,
        }
    }
}

/// What [`serve`] reports once it listens.
#[derive(Clone)]
pub struct ServeInfo {
    pub api_addr: SocketAddr,
    /// `https` when the admin API speaks TLS, else `http`.
    pub api_scheme: &'static str,
    pub push_addr: SocketAddr,
    /// The push listener's certificate (PEM), for engines to trust.
    pub push_cert_pem: String,
    /// The operator's owner key, when this start created it (shown once).
    pub bootstrap_key: Option<String>,
    /// The running service, for [`bootstrap_dev`].
    pub app: api::App,
}

impl std::fmt::Debug for ServeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeInfo")
            .field("api_addr", &self.api_addr)
            .field("push_addr", &self.push_addr)
            .field(
                "bootstrap_key",
                &self.bootstrap_key.as_ref().map(|_| "<secret>"),
            )
            .finish()
    }
}

/// Wall-clock time, behind a trait so tests can pin it.
pub trait Clock: Send + Sync {
    fn now_unix_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        now_unix_ms()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs the control plane with default options until a listener fails.
pub async fn serve(
    cfg: ControlConfig,
    ready: Option<tokio::sync::oneshot::Sender<ServeInfo>>,
) -> Result<(), ControlError> {
    serve_with(cfg, ServeOptions::default(), ready).await
}

/// Opens the store, creates the operator's owner key at first start, binds both listeners,
/// reports [`ServeInfo`], then serves until a listener fails. The new owner key is printed to
/// stdout when there is no `ready` channel; otherwise it is in `ServeInfo::bootstrap_key` only.
pub async fn serve_with(
    cfg: ControlConfig,
    opts: ServeOptions,
    ready: Option<tokio::sync::oneshot::Sender<ServeInfo>>,
) -> Result<(), ControlError> {
    if cfg.push_token.trim().is_empty() {
        return Err(ControlError::Config("push_token must not be empty".into()));
    }
    let api_tls = match (&opts.api_tls_cert, &opts.api_tls_key) {
        (Some(cert), Some(key)) => Some(push::tls_acceptor(cert, key)?.0),
        (None, None) => None,
        _ => {
            return Err(ControlError::Config(
                "api TLS needs both a certificate and a key".into(),
            ))
        }
    };
    if api_tls.is_none() && !api_tls::plaintext_allowed(cfg.api_listen, opts.api_allow_plaintext) {
        return Err(ControlError::Config(format!(
            "api_listen {}: the admin API carries bearer keys, so off loopback it needs TLS \
             (--api-tls-cert and --api-tls-key) or --api-allow-plaintext behind a TLS proxy",
            cfg.api_listen
        )));
    }
    let clock: Arc<dyn Clock> = opts.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
    let rotation =
        store::sealed::Rotation::every_days(clock.clone(), opts.data_key_rotate_after_days)?;
    let db = store::Db::open_rotating(
        &cfg.data_dir,
        cfg.database_url.as_deref(),
        opts.key_file.as_deref(),
        rotation,
    )
    .await?;
    let bootstrap_key = bootstrap::ensure_operator(&db, opts.hash_cost, clock.as_ref()).await?;
    if let (Some(key), None) = (&bootstrap_key, &ready) {
        // With a `ready` channel the caller receives the key and prints it (once).
        println!("petrel control: operator owner API key (shown once, keep it): {key}");
    }
    if db.dialect == store::Dialect::Sqlite {
        store::webhooks::release_all(&mut *db.conn().await?).await?;
    }
    export::recover(&db, clock.now_unix_ms()).await?;
    {
        let mut tx = db.begin_write().await?;
        store::token_keys::ensure(&mut tx, db.sealer(), clock.now_unix_ms()).await?;
        tx.commit().await?;
    }
    let suppression_version = store::suppressions::current_version(&mut *db.conn().await?).await?;
    let version = db.policy_version().await?;
    let (version_tx, _) = tokio::sync::watch::channel(version);
    let dns = dns::DnsChecker::new(&cfg.dns_nameservers)?;
    let webhooks = webhooks::Webhooks::new(
        dns.clone(),
        cfg.webhooks_allow_loopback,
        cfg.webhooks_ca_file.as_deref(),
    )?;
    let (audit_key, generate) =
        audit_anchor::key_path(&cfg.data_dir, opts.audit_key_file.as_deref());
    let anchor = Arc::new(audit_anchor::Anchor::new(
        audit_anchor::load_key(&audit_key, generate)?,
        opts.audit_checkpoint_file
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join(audit_anchor::CHECKPOINT_FILE)),
    ));
    // Engines get the last checkpoint made before this start until the timer makes one.
    let last_checkpoint = match audit_anchor::latest_checkpoint(anchor.file()) {
        Ok(cp) => cp.and_then(|cp| cp.to_wire()),
        Err(e) => {
            tracing::warn!(error = %e, "reading the last audit checkpoint failed");
            None
        }
    };
    let app = api::App(Arc::new(api::AppState {
        db,
        clock,
        throttle: auth::api_throttle(),
        one_click_throttle: api::unsubscribe::one_click_throttle(),
        verify_cache: auth::VerifyCache::default(),
        dns,
        settings: api::Settings {
            spf_include: opts.spf_include.clone(),
            spf_addresses: opts.spf_addresses.clone(),
            dkim_rotation_grace_ms: i64::try_from(
                opts.dkim_rotation_grace_secs.saturating_mul(1000),
            )
            .unwrap_or(i64::MAX),
            hash_cost: opts.hash_cost,
            return_path_domain: opts
                .return_path_domain
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            public_url: opts.public_url.trim_end_matches('/').to_string(),
            guardrails: opts.guardrails,
            retention: opts.retention,
            api_trusted_proxies: opts.api_trusted_proxies.clone(),
            mta_sts: opts.mta_sts.clone().map(Arc::new),
            tls_rpt: opts.tls_rpt.clone().map(Arc::new),
        },
        mx_verdicts: Default::default(),
        version_tx,
        webhooks,
        suppressions: suppressions::SuppressionWatch::new(suppression_version),
        guard: guardrails::Guard::new(),
        anchor,
        checkpoints: tokio::sync::watch::channel(last_checkpoint).0,
        engine_identities: tokio::sync::watch::channel(0).0,
        auth_failures: Default::default(),
        erasure_wake: tokio::sync::Notify::new(),
        aggregates: Default::default(),
    }));
    let api_listener = bind(cfg.api_listen).await?;
    let push_listener = bind(cfg.push_listen).await?;
    let api_addr = local_addr(&api_listener, cfg.api_listen)?;
    let push_addr = local_addr(&push_listener, cfg.push_listen)?;
    let tls = push::load_or_create_tls(
        &cfg.data_dir,
        opts.push_tls_cert.as_deref(),
        opts.push_tls_key.as_deref(),
        push_addr,
    )?;
    tracing::info!(%api_addr, %push_addr, "control plane listening");
    if let Some(tx) = ready {
        let _ = tx.send(ServeInfo {
            api_addr,
            api_scheme: if api_tls.is_some() { "https" } else { "http" },
            push_addr,
            push_cert_pem: tls.cert_pem.clone(),
            bootstrap_key,
            app: app.clone(),
        });
    }
    let router = api::router(app.clone()).map_err(|e| ControlError::Config(e.to_string()))?;
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let http = async move {
        match api_tls {
            Some(acceptor) => {
                let listener =
                    api_tls::TlsListener::new(api_listener, acceptor).map_err(|source| {
                        ControlError::Listen {
                            addr: api_addr,
                            source,
                        }
                    })?;
                // `tap_io` only so axum hands the peer address to ConnectInfo<SocketAddr>.
                use axum::serve::ListenerExt;
                axum::serve(listener.tap_io(|_| {}), service).await
            }
            None => axum::serve(api_listener, service).await,
        }
        .map_err(|source| ControlError::Listen {
            addr: api_addr,
            source,
        })
    };
    let token: Arc<str> = Arc::from(cfg.push_token.as_str());
    let auth = push::PushAuth {
        shared_token: token,
        require_identity: opts.require_engine_identity,
    };
    let pushing = push::serve_push(push_listener, tls.acceptor, app.clone(), auth);
    let listener = match (&cfg.database_url, app.db.dialect) {
        (Some(url), store::Dialect::Postgres) => {
            Some(tokio::spawn(push::listen_version(app.clone(), url.clone())))
        }
        _ => None,
    };
    let purger = tokio::spawn(events::purge_task(app.clone()));
    let export_purger = tokio::spawn(export::purge_task(app.clone()));
    let suppression_purger = tokio::spawn(suppressions::purge_task(app.clone()));
    let suppression_watch = tokio::spawn(suppressions::watch_task(app.clone()));
    let dispatcher = tokio::spawn(webhooks::dispatch::run(app.clone()));
    let guard = tokio::spawn(guardrails::run(app.clone()));
    let expiry = tokio::spawn(credential_expiry::task(app.clone()));
    let eraser = tokio::spawn(erasure::task(app.clone()));
    let retainer = tokio::spawn(retention::task(app.clone()));
    let auth_failure_log = tokio::spawn(auth_failures::task(
        app.clone(),
        opts.auth_failure_audit_window_secs,
    ));
    let anchoring = tokio::spawn(audit_anchor::task(
        app.clone(),
        opts.audit_checkpoint_interval_secs,
    ));
    let domain_checker = tokio::spawn(domain_auth::check_task(
        app.clone(),
        std::time::Duration::from_secs(opts.domain_check_interval_secs.max(1)),
    ));
    let tls_reports = tokio::spawn(tls_rpt::task(app.clone()));
    let poller = tokio::spawn(push::poll_version(app, opts.version_poll_ms));
    let result = tokio::try_join!(http, pushing).map(|_| ());
    poller.abort();
    purger.abort();
    export_purger.abort();
    suppression_purger.abort();
    suppression_watch.abort();
    dispatcher.abort();
    guard.abort();
    expiry.abort();
    eraser.abort();
    retainer.abort();
    anchoring.abort();
    auth_failure_log.abort();
    domain_checker.abort();
    tls_reports.abort();
    if let Some(l) = listener {
        l.abort();
    }
    result
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ControlError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ControlError::Listen { addr, source })
}

fn local_addr(l: &tokio::net::TcpListener, addr: SocketAddr) -> Result<SocketAddr, ControlError> {
    l.local_addr()
        .map_err(|source| ControlError::Listen { addr, source })
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Compile-time check: the entry points can be spawned on a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(cfg: ControlConfig, db: store::Db, c: &'static dyn Clock) {
        fn is_send<T: Send>(_: T) {}
        is_send(store::Db::open(std::path::Path::new("x"), None));
        is_send(bootstrap::ensure_operator(&db, HashCost::default(), c));
        is_send(serve_with(cfg, ServeOptions::default(), None));
    }

    #[test]
    fn permission_table_is_cumulative() {
        use Permission as P;
        assert!(auth::role_allows(Role::Viewer, P::DomainsRead));
        assert!(!auth::role_allows(Role::Viewer, P::DomainsWrite));
        assert!(auth::role_allows(Role::Developer, P::CredentialsWrite));
        assert!(!auth::role_allows(Role::Developer, P::AuditRead));
        assert!(auth::role_allows(Role::Admin, P::AuditRead));
        assert!(!auth::role_allows(Role::Admin, P::TenantsManage));
        assert!(auth::role_allows(Role::Owner, P::TenantsManage));
        assert!(auth::role_allows(Role::Owner, P::DomainsRead));
    }
}
