//! MX resolution: static routes, then MX (RFC 5321 §5.1, RFC 7505) with a TTL-respecting cache.
//!
//! The [`Resolver`] handle is cheap to clone and `Send + Sync`; it forwards requests to one DNS
//! thread (tokio + hickory) through a bounded channel and awaits the answer on a oneshot, so its
//! future runs on any executor (glommio shards included). When the last handle is dropped, the
//! request channel closes and the DNS thread exits.

mod cache;
pub(crate) mod hickory;
pub use hickory::resolver_builder;
mod route;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

pub use route::{
    Clock, Dns, DnsError, IpAnswer, MxAnswer, MxRecord, RouteLogic, SystemClock,
    ADDRS_PER_HOST_MAX, MX_HOSTS_MAX, NEGATIVE_TTL_DEFAULT_SECS,
};

use crate::OutboundError;

/// Requests queued for the DNS thread before `route()` callers wait for room (backpressure).
pub const REQUEST_QUEUE_MAX: usize = 4096;
/// Route computations the DNS thread runs at once; further requests wait in the queue.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// Longest domain name (RFC 1035 §2.3.4: 255 octets on the wire, 253 as text).
pub const DOMAIN_MAX_BYTES: usize = 253;

/// How the resolver finds next hops.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// DNS servers to ask (UDP, then TCP on truncation); empty: the system's /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Routes that bypass DNS; a route for the exact domain wins over a catch-all (`domain: None`).
    pub static_routes: Vec<StaticRoute>,
    /// Port applied to every address found through DNS (25 in production).
    pub smtp_port: u16,
    /// Timeout of one DNS query, in milliseconds (default 5000).
    pub query_timeout_ms: u64,
    /// Domains kept in the route cache (default 100_000); must be at least 1.
    pub cache_entries_max: usize,
    /// Upper bound on how long a negative answer (NXDOMAIN, no address) is cached, in seconds
    /// (default 300).
    pub negative_ttl_secs_max: u64,
    /// DANE (RFC 7672): with `Some`, [`Resolver::tlsa`] looks up validated TLSA records on the
    /// DNS thread (`crate::dane`); `None` (the default): no DNSSEC, no DANE.
    pub dane: Option<crate::dane::DaneConfig>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            static_routes: Vec::new(),
            smtp_port: 25,
            query_timeout_ms: 5000,
            cache_entries_max: 100_000,
            negative_ttl_secs_max: 300,
            dane: None,
        }
    }
}

/// A next hop fixed by configuration (a smart host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// The recipient domain this applies to (case-insensitive); `None`: every domain.
    pub domain: Option<String>,
    /// Where to deliver.
    pub target: SocketAddr,
    /// The name the smart host's certificate must carry when TLS is verified (an enforced
    /// MTA-STS policy applied to it, `require`); `None`: its address.
    pub tls_name: Option<String>,
}

/// Where to deliver mail for one domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Hosts in the order to try them: MX preference ascending, ties shuffled. Never empty.
    pub hosts: Vec<RouteHost>,
}

/// One next-hop host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteHost {
    /// The MX name (lowercase, no trailing dot), used for TLS verification; for static routes,
    /// their `tls_name`, else the target address as text.
    pub name: String,
    /// Its addresses with the SMTP port applied; never empty.
    pub addrs: Vec<SocketAddr>,
}

/// Why a domain has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("{domain} does not accept mail (null MX)")]
    NullMx { domain: String },
    /// The domain does not exist (NXDOMAIN).
    #[error("{domain}: no such domain")]
    NoSuchDomain { domain: String },
    /// Neither the MX hosts nor the domain itself (implicit MX) have an address.
    #[error("{domain}: no address for any mail exchanger")]
    NoAddresses { domain: String },
    /// DNS failed (SERVFAIL, timeout, resolver unavailable): try again later.
    #[error("{domain}: temporary DNS failure: {reason}")]
    Temporary { domain: String, reason: String },
}

impl ResolveError {
    /// True when retrying cannot help: bounce the recipients.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ResolveError::Temporary { .. })
    }

    /// The RFC 3463 enhanced status code to report.
    pub fn enhanced(&self) -> (u8, u16, u16) {
        match self {
            ResolveError::NullMx { .. } => (5, 1, 10),
            ResolveError::NoSuchDomain { .. } => (5, 1, 2),
            ResolveError::NoAddresses { .. } => (5, 4, 4),
            ResolveError::Temporary { .. } => (4, 4, 3),
        }
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ResolveError::NullMx { .. } => "null_mx",
            ResolveError::NoSuchDomain { .. } => "no_such_domain",
            ResolveError::NoAddresses { .. } => "no_addresses",
            ResolveError::Temporary { .. } => "temporary",
        }
    }

    /// The domain this error is about.
    pub fn domain(&self) -> &str {
        match self {
            ResolveError::NullMx { domain }
            | ResolveError::NoSuchDomain { domain }
            | ResolveError::NoAddresses { domain }
            | ResolveError::Temporary { domain, .. } => domain,
        }
    }
}

type Answer = Result<Arc<Route>, ResolveError>;

/// One request to the DNS thread.
struct Request {
    /// Normalised domain (lowercase, no trailing dot).
    domain: String,
    reply: futures::channel::oneshot::Sender<Answer>,
}

/// Handle to the DNS thread; clone it freely.
#[derive(Clone)]
pub struct Resolver {
    requests: async_channel::Sender<Request>,
    statics: Arc<StaticRoutes>,
    /// The DNS thread's route logic, for synchronous peeks at its cache.
    logic: Arc<RouteLogic<hickory::HickoryDns, SystemClock>>,
    /// Port for domain literals (`[192.0.2.1]`), as for DNS answers.
    smtp_port: u16,
    /// TLSA lookups on the DNS thread; `None` when DANE is off.
    tlsa_requests: Option<async_channel::Sender<crate::dane::TlsaRequest>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// Starts the DNS thread. Fails if the DNS configuration cannot be read or the thread or
    /// its runtime cannot be created.
    pub fn start(cfg: ResolverConfig) -> Result<Resolver, OutboundError> {
        if cfg.cache_entries_max == 0 {
            return Err(OutboundError::ResolverSetup(
                "cache_entries_max must be at least 1".into(),
            ));
        }
        let statics = Arc::new(StaticRoutes::new(&cfg.static_routes));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OutboundError::ResolverSetup(format!("tokio runtime: {e}")))?;
        let dns = {
            let _inside = runtime.enter();
            hickory::HickoryDns::new(&cfg)?
        };
        let dane = match &cfg.dane {
            Some(dane) => {
                let _inside = runtime.enter();
                let dns = crate::dane::DaneDns::new(dane, &cfg.nameservers, cfg.query_timeout_ms)?;
                let (tx, rx) = async_channel::bounded(crate::dane::DANE_REQUEST_QUEUE_MAX);
                Some((Arc::new(dns), tx, rx))
            }
            None => None,
        };
        let logic = Arc::new(RouteLogic::new(dns, SystemClock::new(), &cfg));
        let (tx, rx) = async_channel::bounded(REQUEST_QUEUE_MAX);
        let served = Arc::clone(&logic);
        let (tlsa_requests, tlsa_served) = match dane {
            Some((dns, tx, rx)) => (Some(tx), Some((dns, rx))),
            None => (None, None),
        };
        std::thread::Builder::new()
            .name("petrel-dns".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Some((dns, rx)) = tlsa_served {
                        tokio::spawn(crate::dane::serve_lookups(dns, rx));
                    }
                    serve(served, rx).await
                })
            })
            .map_err(|e| OutboundError::ResolverSetup(format!("spawn DNS thread: {e}")))?;
        Ok(Resolver {
            requests: tx,
            statics,
            logic,
            smtp_port: cfg.smtp_port,
            tlsa_requests,
        })
    }

    /// The configured static route (smart host) for `domain`, without waiting: `None` when the
    /// domain goes by DNS.
    pub fn static_route(&self, domain: &str) -> Option<Arc<Route>> {
        self.statics.lookup(&normalise(domain))
    }

    /// The route of `domain` when it is known without waiting: a static route, a domain
    /// literal, or a fresh answer in the DNS cache. `None` means "ask [`Resolver::route`]".
    pub fn known_route(&self, domain: &str) -> Option<Arc<Route>> {
        let domain = normalise(domain);
        if let Some(route) = self.statics.lookup(&domain) {
            return Some(route);
        }
        if let Some(answer) = literal_route(&domain, self.smtp_port) {
            return answer.ok();
        }
        self.logic.peek(&domain)
    }

    /// Whether DANE is on ([`ResolverConfig::dane`]).
    pub fn dane_enabled(&self) -> bool {
        self.tlsa_requests.is_some()
    }

    /// The DNSSEC-validated TLSA answer for MX host `host` (`_25._tcp.<host>`, RFC 7672 §2.2),
    /// or [`TlsaLookup::Insecure`](crate::dane::TlsaLookup::Insecure) when DANE is off or
    /// `host` is no host name. Runtime-agnostic: works inside glommio.
    pub async fn tlsa(&self, host: &str) -> crate::dane::TlsaLookup {
        use crate::dane::TlsaLookup;
        let host = normalise(host);
        let Some(requests) = &self.tlsa_requests else {
            return TlsaLookup::Insecure;
        };
        if host.is_empty() || host.len() > DOMAIN_MAX_BYTES || host.parse::<IpAddr>().is_ok() {
            return TlsaLookup::Insecure;
        }
        let (reply, answer) = futures::channel::oneshot::channel();
        let stopped = || TlsaLookup::Failed {
            reason: "resolver thread stopped".into(),
        };
        let request = crate::dane::TlsaRequest { host, reply };
        if requests.send(request).await.is_err() {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }

    /// Where to deliver mail for `domain` (case-insensitive, trailing dot optional; a domain
    /// literal such as `[192.0.2.1]` routes to itself). Runtime-agnostic: works inside glommio.
    pub async fn route(&self, domain: &str) -> Result<Arc<Route>, ResolveError> {
        let domain = normalise(domain);
        if let Some(route) = self.statics.lookup(&domain) {
            return Ok(route);
        }
        if let Some(route) = literal_route(&domain, self.smtp_port) {
            return route;
        }
        if domain.is_empty() || domain.len() > DOMAIN_MAX_BYTES {
            return Err(ResolveError::NoSuchDomain { domain });
        }
        let (reply, answer) = futures::channel::oneshot::channel();
        let request = Request {
            domain: domain.clone(),
            reply,
        };
        let stopped = || ResolveError::Temporary {
            domain: domain.clone(),
            reason: "resolver thread stopped".into(),
        };
        self.requests.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Callers waiting for a lookup already under way, by domain, each holding its in-flight permit.
type Followers = HashMap<String, Vec<(Responder, tokio::sync::OwnedSemaphorePermit)>>;
type Responder = futures::channel::oneshot::Sender<Answer>;

/// The DNS thread's loop: one task per domain being resolved; concurrent requests for the same
/// domain (every shard asking for the same big provider at start-up) wait for that one task.
/// At most `REQUESTS_IN_FLIGHT_MAX` requests, leaders and followers together, are held at once.
async fn serve<D: Dns + 'static, C: Clock + 'static>(
    logic: Arc<RouteLogic<D, C>>,
    requests: async_channel::Receiver<Request>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    let followers: Arc<Mutex<Followers>> = Arc::default();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return; // the semaphore is never closed; stop if it somehow is
        };
        let Ok(request) = requests.recv().await else {
            return; // every Resolver handle is gone
        };
        {
            let mut waiting = lock(&followers);
            if let Some(list) = waiting.get_mut(&request.domain) {
                list.push((request.reply, permit));
                continue;
            }
            waiting.insert(request.domain.clone(), Vec::new());
        }
        let (logic, followers) = (logic.clone(), followers.clone());
        tokio::spawn(async move {
            // Should the lookup panic, the guard still clears the followers' entry: they get a
            // cancelled oneshot (a Temporary error) and later requests start a fresh lookup.
            let mut guard = LeaderGuard {
                domain: Some(request.domain.clone()),
                followers: followers.clone(),
            };
            let answer = logic.route(&request.domain).await;
            guard.domain = None; // removed here, so a newer leader's entry is left alone
            let waiting = lock(&followers).remove(&request.domain).unwrap_or_default();
            for (reply, _permit) in waiting {
                let _ = reply.send(answer.clone());
            }
            // The caller may have given up; nothing to do then.
            let _ = request.reply.send(answer);
            drop(permit);
        });
    }
}

/// Removes a domain's followers entry when its leader task ends, however it ends.
struct LeaderGuard {
    /// `None` once the leader removed the entry itself.
    domain: Option<String>,
    followers: Arc<Mutex<Followers>>,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if let Some(domain) = self.domain.take() {
            lock(&self.followers).remove(&domain);
        }
    }
}

/// Every critical section is one map operation, so a poisoned lock still holds a valid map.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lowercase, without the trailing root dot.
pub(crate) fn normalise(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A domain literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) routes to itself on `port`.
/// Returns `None` for ordinary domains.
fn literal_route(domain: &str, port: u16) -> Option<Answer> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let text = inner.strip_prefix("ipv6:").unwrap_or(inner);
    Some(match text.parse::<IpAddr>() {
        Ok(ip) => Ok(Arc::new(Route {
            hosts: vec![RouteHost {
                name: ip.to_string(),
                addrs: vec![SocketAddr::new(ip, port)],
            }],
        })),
        Err(_) => Err(ResolveError::NoSuchDomain {
            domain: domain.to_string(),
        }),
    })
}

/// Static routes, prebuilt so a hit costs one map lookup and an `Arc` clone.
#[derive(Debug, Default)]
struct StaticRoutes {
    by_domain: HashMap<String, Arc<Route>>,
    catch_all: Option<Arc<Route>>,
}

impl StaticRoutes {
    fn new(routes: &[StaticRoute]) -> StaticRoutes {
        let mut out = StaticRoutes::default();
        for r in routes {
            let route = Arc::new(Route {
                hosts: vec![RouteHost {
                    name: r
                        .tls_name
                        .as_deref()
                        .map_or_else(|| r.target.ip().to_string(), normalise),
                    addrs: vec![r.target],
                }],
            });
            match &r.domain {
                Some(d) => {
                    out.by_domain.entry(normalise(d)).or_insert(route);
                }
                None => {
                    out.catch_all.get_or_insert(route);
                }
            }
        }
        out
    }

    fn lookup(&self, domain: &str) -> Option<Arc<Route>> {
        self.by_domain
            .get(domain)
            .or(self.catch_all.as_ref())
            .cloned()
    }
}
