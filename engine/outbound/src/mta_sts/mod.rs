//! MTA-STS for outbound mail (RFC 8461): which policy a recipient domain publishes, so delivery
//! can insist on TLS with a valid certificate to an MX host the policy names.
//!
//! - [`policy`]: the pure core. The `_mta-sts` TXT record, the policy file and MX matching,
//!   parsed from bytes with no I/O; fed by tests, a fuzzer or the network alike.
//! - `fetch`: one HTTPS GET of the policy (web PKI, no redirects, bounded size and time).
//! - `cache` and `store`: policies by domain with their `id`, fetch time and expiry, and the
//!   same on disk (one JSON file in the data directory, written atomically) so a restart does
//!   not forget them.
//! - [`MtaSts`]: the service. Like [`crate::Resolver`], a cheap, runtime-agnostic handle to one
//!   thread running tokio, with its own hickory resolver (same name servers as the route
//!   resolver) and the HTTPS client; shards ask it through a bounded channel and await a
//!   oneshot, so glommio executors can call it. Concurrent requests for one domain share one
//!   discovery. The thread also refreshes policies before they expire and writes the cache
//!   file at most once per [`MTA_STS_CACHE_FLUSH_INTERVAL_MS`].
//!
//! This module decides nothing about delivery: it answers "which policy applies to this
//! domain now". Applying it (MX filtering, certificate checks, deferring) is the caller's.

mod cache;
mod dns;
mod fetch;
pub mod policy;
mod service;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::channel::oneshot;

pub use cache::{
    CachedPolicy, MTA_STS_CACHE_ENTRIES_MAX, MTA_STS_FETCH_RETRY_SECS,
    MTA_STS_REFRESH_INTERVAL_SECS,
};
pub use dns::RecordError;
pub use fetch::{
    policy_host, FetchError, Fetcher, StsFetchFailure, MTA_STS_ADDRS_TRIED_MAX,
    MTA_STS_CONNECT_TIMEOUT_MS, MTA_STS_EXTRA_ROOTS_MAX, MTA_STS_FETCH_TIMEOUT_MS,
    MTA_STS_USER_AGENT, MTA_STS_WELL_KNOWN_PATH,
};
pub use policy::{
    Mode, MxPattern, Policy, PolicyError, StsRecord, MTA_STS_MAX_AGE_SECS_MAX,
    MTA_STS_MX_PATTERNS_MAX, MTA_STS_POLICY_BYTES_MAX,
};
pub use service::{
    MTA_STS_CACHE_FLUSH_INTERVAL_MS, MTA_STS_LOOKUPS_IN_FLIGHT_MAX, MTA_STS_REFRESH_BATCH_MAX,
    MTA_STS_REQUEST_QUEUE_MAX,
};
pub use store::{StoreError, MTA_STS_CACHE_FILE, MTA_STS_CACHE_FILE_BYTES_MAX};

use service::{Request, Service};

/// Default of [`MtaStsConfig::dns_cache_entries`].
pub const MTA_STS_DNS_CACHE_ENTRIES_DEFAULT: usize = 4096;
/// Default of [`MtaStsConfig::refresh_tick_ms`]: an hourly pass finds the policies due.
pub const MTA_STS_REFRESH_TICK_MS_DEFAULT: u64 = 3_600_000;
/// The port policies are served on (RFC 8461 §3.3: HTTPS).
pub const MTA_STS_HTTPS_PORT: u16 = 443;

/// How the MTA-STS service finds and keeps policies.
#[derive(Debug, Clone)]
pub struct MtaStsConfig {
    /// DNS servers to ask; empty: the system's /etc/resolv.conf (as [`crate::ResolverConfig`]).
    pub nameservers: Vec<SocketAddr>,
    /// Timeout of one DNS query, in milliseconds.
    pub query_timeout_ms: u64,
    /// Records kept in hickory's cache (TXT and addresses, by their TTL); 0 disables it.
    pub dns_cache_entries: usize,
    /// Port of the policy hosts: [`MTA_STS_HTTPS_PORT`], or a loopback port in tests.
    pub https_port: u16,
    /// Bound on one whole policy fetch, in milliseconds (at least 1).
    pub fetch_timeout_ms: u64,
    /// PEM certificates trusted besides the web PKI roots (private CAs, tests).
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// The engine's data directory, where [`MTA_STS_CACHE_FILE`] is kept; `None`: memory only.
    pub data_dir: Option<PathBuf>,
    /// Domains whose policy is cached: 1..=[`MTA_STS_CACHE_ENTRIES_MAX`].
    pub cache_entries_max: usize,
    /// Period of the proactive refresh pass, in milliseconds; 0: only [`MtaSts::refresh_due`].
    pub refresh_tick_ms: u64,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            nameservers: Vec::new(),
            query_timeout_ms: 5000,
            dns_cache_entries: MTA_STS_DNS_CACHE_ENTRIES_DEFAULT,
            https_port: MTA_STS_HTTPS_PORT,
            fetch_timeout_ms: MTA_STS_FETCH_TIMEOUT_MS,
            extra_root_certs_pem: Vec::new(),
            data_dir: None,
            cache_entries_max: MTA_STS_CACHE_ENTRIES_MAX,
            refresh_tick_ms: MTA_STS_REFRESH_TICK_MS_DEFAULT,
        }
    }
}

impl MtaStsConfig {
    /// This configuration asking the route resolver's name servers, with its query timeout.
    pub fn with_resolver(mut self, resolver: &crate::ResolverConfig) -> MtaStsConfig {
        self.nameservers = resolver.nameservers.clone();
        self.query_timeout_ms = resolver.query_timeout_ms;
        self
    }
}

/// Why the MTA-STS service could not start or save its cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MtaStsError {
    /// The thread, its runtime, its resolver or its TLS configuration could not be set up.
    #[error("MTA-STS setup failed: {reason}")]
    Setup { reason: String },
    /// The TLS configuration of the fetcher was refused.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The cache file could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service thread is gone.
    #[error("MTA-STS thread stopped")]
    Stopped,
}

/// Wall-clock time in Unix seconds: policies expire in real time, across restarts.
pub trait WallClock: Send + Sync + 'static {
    fn now_unix_secs(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_unix_secs(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Handle to the MTA-STS thread; clone it freely. The thread stops, after saving the cache,
/// when the last handle is dropped.
#[derive(Clone)]
pub struct MtaSts {
    requests: async_channel::Sender<Request>,
    /// The thread's cache, for synchronous peeks.
    cache: Arc<Mutex<cache::PolicyCache>>,
    clock: Arc<dyn WallClock>,
}

impl std::fmt::Debug for MtaSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtaSts").finish_non_exhaustive()
    }
}

impl MtaSts {
    /// Starts the service on the system clock.
    pub fn start(cfg: MtaStsConfig) -> Result<MtaSts, MtaStsError> {
        MtaSts::start_with_clock(cfg, Arc::new(SystemWallClock))
    }

    /// Starts the service: creates the data directory if needed, loads the cache file (an
    /// unreadable file is logged and ignored: the policies are fetched again), then the thread.
    pub fn start_with_clock(
        cfg: MtaStsConfig,
        clock: Arc<dyn WallClock>,
    ) -> Result<MtaSts, MtaStsError> {
        let setup = |reason: String| MtaStsError::Setup { reason };
        let mut policies = cache::PolicyCache::new(cfg.cache_entries_max);
        if let Some(dir) = &cfg.data_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| setup(format!("data directory {}: {e}", dir.display())))?;
        }
        let path = cfg.data_dir.as_deref().map(store::cache_path);
        if let Some(path) = &path {
            if let Err(e) = store::load(path, &mut policies, clock.now_unix_secs()) {
                tracing::warn!(error = %e, "MTA-STS cache file ignored");
            }
        }
        let cache = Arc::new(Mutex::new(policies));
        let fetcher = Fetcher::new(
            &cfg.extra_root_certs_pem,
            cfg.https_port,
            cfg.fetch_timeout_ms,
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup(format!("tokio runtime: {e}")))?;
        let dns = {
            let _inside = runtime.enter();
            dns::StsDns::new(&cfg)?
        };
        let service = Arc::new(Service {
            dns,
            fetcher,
            cache: cache.clone(),
            clock: clock.clone(),
            path,
            writer: tokio::sync::Mutex::new(()),
            refresh_tick_ms: cfg.refresh_tick_ms,
        });
        let (tx, rx) = async_channel::bounded(MTA_STS_REQUEST_QUEUE_MAX);
        std::thread::Builder::new()
            .name("petrel-mta-sts".into())
            .spawn(move || runtime.block_on(service.serve(rx)))
            .map_err(|e| setup(format!("spawn MTA-STS thread: {e}")))?;
        Ok(MtaSts {
            requests: tx,
            cache,
            clock,
        })
    }

    /// The policy that applies to mail for `domain` now (RFC 8461 §3–§5), or `None` when the
    /// domain has no usable policy (deliver as without MTA-STS). A policy in mode `none` is
    /// returned as such. Runtime-agnostic: works inside glommio.
    pub async fn policy_for(&self, domain: &str) -> Option<Arc<Policy>> {
        let domain = normalise(domain)?;
        let (reply, answer) = oneshot::channel();
        let request = Request::Policy { domain, reply };
        self.requests.send(request).await.ok()?;
        answer.await.ok().flatten()
    }

    /// The cached, unexpired policy of `domain`, without DNS or waiting (for reports and
    /// metrics; delivery should use [`MtaSts::policy_for`], which notices a changed `id`).
    pub fn cached_policy(&self, domain: &str) -> Option<CachedPolicy> {
        let domain = normalise(domain)?;
        lock(&self.cache).get(&domain, self.clock.now_unix_secs())
    }

    /// Why `domain`'s policy could not be fetched lately (until the fetch is retried), for
    /// TLS-RPT; `None` when no recent fetch failed.
    pub fn fetch_failure(&self, domain: &str) -> Option<StsFetchFailure> {
        let domain = normalise(domain)?;
        lock(&self.cache).recent_failure(&domain, self.clock.now_unix_secs())
    }

    /// How many domains have a cached policy (expired ones included until noticed).
    pub fn cached_count(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Domains whose cached policy is due for a proactive refresh, soonest expiry first.
    pub fn due_for_refresh(&self) -> Vec<String> {
        lock(&self.cache).due_for_refresh(self.clock.now_unix_secs(), MTA_STS_REFRESH_BATCH_MAX)
    }

    /// Runs a refresh pass now (the thread also runs one every `refresh_tick_ms`). Returns how
    /// many policies were fetched anew.
    pub async fn refresh_due(&self) -> Result<usize, MtaStsError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Refresh { reply })
            .await
            .map_err(|_| MtaStsError::Stopped)?;
        answer.await.map_err(|_| MtaStsError::Stopped)
    }

    /// Writes the cache file now if it changed (the thread does so within
    /// [`MTA_STS_CACHE_FLUSH_INTERVAL_MS`] anyway; call this before shutting down).
    pub async fn flush(&self) -> Result<(), MtaStsError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Flush { reply })
            .await
            .map_err(|_| MtaStsError::Stopped)?;
        answer.await.map_err(|_| MtaStsError::Stopped)?
    }
}

/// Lowercase without the trailing dot, if `domain` is a host name (domain literals and
/// garbage have no policy).
pub(crate) fn normalise(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    policy::MxPattern::parse(&d)
        .filter(|p| !p.wildcard)
        .map(|p| p.suffix)
}

/// Every critical section is a few map operations, so a poisoned lock still holds a valid map.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
