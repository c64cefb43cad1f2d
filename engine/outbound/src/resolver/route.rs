//! The routing rules (MX, implicit MX, null MX, preference order) and the route cache, above a
//! narrow [`Dns`] trait and a [`Clock`], so they can be tested with canned answers and pinned time.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use rand::seq::SliceRandom;

use super::cache::RouteCache;
use super::{Answer, ResolveError, ResolverConfig, Route, RouteHost};

/// MX hosts considered per domain; the rest (highest preference values) are ignored.
pub const MX_HOSTS_MAX: usize = 16;
/// Addresses kept per host.
pub const ADDRS_PER_HOST_MAX: usize = 16;
/// Negative TTL used when an answer carries none (no SOA), before the configured cap.
pub const NEGATIVE_TTL_DEFAULT_SECS: u64 = 60;

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    /// Lower is preferred.
    pub preference: u16,
    /// Exchange host, lowercase, without the trailing dot; `""` is the root (a null MX).
    pub exchange: String,
}

/// An MX answer; empty `records` means the name exists but has no MX (NODATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxAnswer {
    pub records: Vec<MxRecord>,
    /// Smallest record TTL; for NODATA the negative TTL from the SOA, `None` when unknown.
    pub ttl_secs: Option<u32>,
}

/// An address answer (A and AAAA together); empty `addrs` means NODATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAnswer {
    pub addrs: Vec<IpAddr>,
    /// Smallest record TTL; for NODATA the negative TTL, `None` when unknown.
    pub ttl_secs: Option<u32>,
}

/// A failed DNS query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN, with the negative TTL when the answer carried an SOA.
    NxDomain { negative_ttl_secs: Option<u32> },
    /// SERVFAIL, REFUSED, timeout, network error: worth retrying later.
    Temporary(String),
}

/// The DNS queries routing needs. Names are lowercase without the trailing dot.
pub trait Dns: Send + Sync {
    fn mx(&self, domain: &str) -> impl Future<Output = Result<MxAnswer, DnsError>> + Send;
    fn ip(&self, host: &str) -> impl Future<Output = Result<IpAnswer, DnsError>> + Send;
}

/// Monotonic time in milliseconds, behind a trait so tests can pin it.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The real clock: milliseconds since the clock was created.
#[derive(Debug)]
pub struct SystemClock {
    base: std::time::Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            base: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Routing rules plus cache. Shared by the DNS thread's tasks.
pub struct RouteLogic<D, C> {
    dns: D,
    clock: C,
    cache: Mutex<RouteCache>,
    smtp_port: u16,
    negative_ttl_secs_max: u64,
}

/// A computed answer and how long it may be cached (`None`: do not cache).
type Computed = (Answer, Option<u64>);

impl<D: Dns, C: Clock> RouteLogic<D, C> {
    pub fn new(dns: D, clock: C, cfg: &ResolverConfig) -> Self {
        RouteLogic {
            dns,
            clock,
            cache: Mutex::new(RouteCache::new(cfg.cache_entries_max)),
            smtp_port: cfg.smtp_port,
            negative_ttl_secs_max: cfg.negative_ttl_secs_max,
        }
    }

    /// The route for a normalised domain, from the cache when fresh.
    pub async fn route(&self, domain: &str) -> Answer {
        let now_ms = self.clock.now_ms();
        if let Some(hit) = self.lock_cache().get(domain, now_ms) {
            metrics::counter!("petrel_outbound_route_cache_hits_total").increment(1);
            return hit;
        }
        metrics::counter!("petrel_outbound_route_cache_misses_total").increment(1);
        let (answer, ttl_secs) = self.compute(domain).await;
        if let Err(e) = &answer {
            metrics::counter!("petrel_outbound_route_failures_total", "kind" => e.kind())
                .increment(1);
        }
        if let Some(ttl_secs) = ttl_secs.filter(|t| *t > 0) {
            let expires_ms = self
                .clock
                .now_ms()
                .saturating_add(ttl_secs.saturating_mul(1000));
            self.lock_cache()
                .insert(domain, answer.clone(), expires_ms, self.clock.now_ms());
        }
        answer
    }

    /// The cached route of a normalised domain, if fresh, without a lookup (and without
    /// counting a hit or a miss).
    pub fn peek(&self, domain: &str) -> Option<Arc<Route>> {
        let now_ms = self.clock.now_ms();
        self.lock_cache().get(domain, now_ms)?.ok()
    }

    /// Number of cached domains (fresh or not yet swept).
    pub fn cached_entries(&self) -> usize {
        self.lock_cache().len()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, RouteCache> {
        // A panic while holding the lock cannot leave the map inconsistent (each operation is
        // one HashMap call), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn negative_ttl(&self, ttl: Option<u32>) -> Option<u64> {
        let ttl = ttl.map_or(NEGATIVE_TTL_DEFAULT_SECS, u64::from);
        Some(ttl.min(self.negative_ttl_secs_max))
    }

    async fn compute(&self, domain: &str) -> Computed {
        let temporary = |reason: String| ResolveError::Temporary {
            domain: domain.to_string(),
            reason,
        };
        match self.dns.mx(domain).await {
            Err(DnsError::NxDomain { negative_ttl_secs }) => (
                Err(ResolveError::NoSuchDomain {
                    domain: domain.to_string(),
                }),
                self.negative_ttl(negative_ttl_secs),
            ),
            Err(DnsError::Temporary(reason)) => (Err(temporary(reason)), None),
            Ok(answer) if answer.records.is_empty() => self.implicit_mx(domain).await,
            Ok(answer) => self.via_mx(domain, answer).await,
        }
    }

    /// RFC 5321 §5.1: no MX, so the domain itself is the mail exchanger.
    async fn implicit_mx(&self, domain: &str) -> Computed {
        match self.dns.ip(domain).await {
            Ok(a) if !a.addrs.is_empty() => {
                let host = self.host(domain, a.addrs);
                (
                    Ok(Arc::new(Route { hosts: vec![host] })),
                    a.ttl_secs.map(u64::from),
                )
            }
            Ok(a) => (
                Err(ResolveError::NoAddresses {
                    domain: domain.to_string(),
                }),
                self.negative_ttl(a.ttl_secs),
            ),
            Err(DnsError::NxDomain { negative_ttl_secs }) => (
                Err(ResolveError::NoSuchDomain {
                    domain: domain.to_string(),
                }),
                self.negative_ttl(negative_ttl_secs),
            ),
            Err(DnsError::Temporary(reason)) => (
                Err(ResolveError::Temporary {
                    domain: domain.to_string(),
                    reason,
                }),
                None,
            ),
        }
    }

    async fn via_mx(&self, domain: &str, answer: MxAnswer) -> Computed {
        let mx_ttl = answer.ttl_secs.map(u64::from);
        let mut records = answer.records;
        // RFC 7505 §3: a null MX is the only MX record; "." among others is simply ignored.
        if records.len() == 1 && records[0].exchange.is_empty() {
            let err = ResolveError::NullMx {
                domain: domain.to_string(),
            };
            return (Err(err), mx_ttl.or(Some(NEGATIVE_TTL_DEFAULT_SECS)));
        }
        records.retain(|r| !r.exchange.is_empty());
        order_by_preference(&mut records);
        records.truncate(MX_HOSTS_MAX);

        let lookups = records.iter().map(|r| self.dns.ip(&r.exchange));
        let answers = futures::future::join_all(lookups).await;
        let mut hosts = Vec::with_capacity(records.len());
        let mut ttl_secs = mx_ttl;
        let mut temporary = None;
        for (record, answer) in records.iter().zip(answers) {
            match answer {
                Ok(a) if !a.addrs.is_empty() => {
                    ttl_secs = min_ttl(ttl_secs, a.ttl_secs.map(u64::from));
                    hosts.push(self.host(&record.exchange, a.addrs));
                }
                Ok(_) | Err(DnsError::NxDomain { .. }) => {}
                Err(DnsError::Temporary(reason)) => temporary = Some(reason),
            }
        }
        match (hosts.is_empty(), temporary) {
            (false, None) => (Ok(Arc::new(Route { hosts })), ttl_secs),
            // Some hosts failed temporarily: use the others, but look again soon.
            (false, Some(_)) => {
                let ttl = min_ttl(ttl_secs, Some(self.negative_ttl_secs_max));
                (Ok(Arc::new(Route { hosts })), ttl)
            }
            (true, Some(reason)) => (
                Err(ResolveError::Temporary {
                    domain: domain.to_string(),
                    reason,
                }),
                None,
            ),
            (true, None) => (
                Err(ResolveError::NoAddresses {
                    domain: domain.to_string(),
                }),
                self.negative_ttl(None),
            ),
        }
    }

    fn host(&self, name: &str, mut addrs: Vec<IpAddr>) -> RouteHost {
        addrs.truncate(ADDRS_PER_HOST_MAX);
        RouteHost {
            name: name.to_string(),
            addrs: addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, self.smtp_port))
                .collect(),
        }
    }
}

/// Sorts by preference, shuffling hosts of equal preference (RFC 5321 §5.1).
fn order_by_preference(records: &mut [MxRecord]) {
    records.shuffle(&mut rand::thread_rng());
    // A stable sort keeps the shuffled order among equal preferences.
    records.sort_by_key(|r| r.preference);
}

fn min_ttl(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// Canned DNS answers; counts queries so caching is observable.
    #[derive(Default)]
    struct FakeDns {
        mx: Mutex<HashMap<String, Result<MxAnswer, DnsError>>>,
        ip: Mutex<HashMap<String, Result<IpAnswer, DnsError>>>,
        queries: AtomicUsize,
    }

    impl FakeDns {
        fn set_mx(&self, name: &str, records: &[(u16, &str)], ttl: u32) {
            let records = records
                .iter()
                .map(|(p, e)| MxRecord {
                    preference: *p,
                    exchange: e.to_string(),
                })
                .collect();
            let answer = Ok(MxAnswer {
                records,
                ttl_secs: Some(ttl),
            });
            self.mx.lock().unwrap().insert(name.into(), answer);
        }
        fn set_mx_err(&self, name: &str, e: DnsError) {
            self.mx.lock().unwrap().insert(name.into(), Err(e));
        }
        fn set_ip(&self, name: &str, ips: &[&str], ttl: u32) {
            let addrs = ips.iter().map(|i| i.parse().unwrap()).collect();
            let answer = Ok(IpAnswer {
                addrs,
                ttl_secs: Some(ttl),
            });
            self.ip.lock().unwrap().insert(name.into(), answer);
        }
        fn set_ip_err(&self, name: &str, e: DnsError) {
            self.ip.lock().unwrap().insert(name.into(), Err(e));
        }
    }

    impl Dns for FakeDns {
        async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            let answers = self.mx.lock().unwrap();
            answers
                .get(domain)
                .cloned()
                .unwrap_or(Err(DnsError::NxDomain {
                    negative_ttl_secs: Some(30),
                }))
        }
        async fn ip(&self, host: &str) -> Result<IpAnswer, DnsError> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            let answers = self.ip.lock().unwrap();
            answers.get(host).cloned().unwrap_or(Ok(IpAnswer {
                addrs: vec![],
                ttl_secs: Some(30),
            }))
        }
    }

    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);
    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }
    impl FakeClock {
        fn advance_secs(&self, s: u64) {
            self.0.fetch_add(s * 1000, Ordering::SeqCst);
        }
    }

    fn logic(entries: usize) -> (Arc<RouteLogic<FakeDns, FakeClock>>, FakeClock) {
        let clock = FakeClock::default();
        let cfg = ResolverConfig {
            smtp_port: 2525,
            cache_entries_max: entries,
            negative_ttl_secs_max: 100,
            ..ResolverConfig::default()
        };
        let l = Arc::new(RouteLogic::new(FakeDns::default(), clock.clone(), &cfg));
        (l, clock)
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    fn queries(l: &RouteLogic<FakeDns, FakeClock>) -> usize {
        l.dns.queries.load(Ordering::SeqCst)
    }

    #[test]
    fn mx_order_ports_and_positive_ttl() {
        let (l, clock) = logic(10);
        l.dns
            .set_mx("a.test", &[(20, "mx2.a.test"), (10, "mx1.a.test")], 300);
        l.dns
            .set_ip("mx1.a.test", &["192.0.2.1", "2001:db8::1"], 60);
        l.dns.set_ip("mx2.a.test", &["192.0.2.2"], 600);
        let route = run(l.route("a.test")).unwrap();
        let names: Vec<_> = route.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["mx1.a.test", "mx2.a.test"]);
        assert_eq!(route.hosts[0].addrs[0], "192.0.2.1:2525".parse().unwrap());
        assert_eq!(
            route.hosts[0].addrs[1],
            "[2001:db8::1]:2525".parse().unwrap()
        );
        assert_eq!(queries(&l), 3);

        // Cached for the smallest TTL (60 s), then asked again.
        clock.advance_secs(59);
        assert_eq!(run(l.route("a.test")).unwrap(), route);
        assert_eq!(queries(&l), 3);
        clock.advance_secs(1);
        l.dns.set_ip("mx1.a.test", &["192.0.2.9"], 60);
        let fresh = run(l.route("a.test")).unwrap();
        assert_eq!(queries(&l), 6);
        assert_eq!(
            fresh.hosts[0].addrs,
            vec!["192.0.2.9:2525".parse().unwrap()]
        );
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let (l, clock) = logic(10);
        let hosts: Vec<String> = (0..6).map(|i| format!("mx{i}.b.test")).collect();
        let records: Vec<(u16, &str)> = hosts.iter().map(|h| (10, h.as_str())).collect();
        l.dns.set_mx("b.test", &records, 1);
        for h in &hosts {
            l.dns.set_ip(h, &["192.0.2.1"], 1);
        }
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..40 {
            clock.advance_secs(2);
            let route = run(l.route("b.test")).unwrap();
            assert_eq!(route.hosts.len(), 6);
            firsts.insert(route.hosts[0].name.clone());
        }
        assert!(firsts.len() > 1, "ties were never shuffled");
    }

    #[test]
    fn null_mx_nxdomain_implicit_mx_and_negative_ttl_cap() {
        let (l, clock) = logic(10);
        l.dns.set_mx("null.test", &[(0, "")], 3600);
        let e = run(l.route("null.test")).unwrap_err();
        assert!(matches!(e, ResolveError::NullMx { .. }) && e.is_permanent());
        assert_eq!(e.enhanced(), (5, 1, 10));

        l.dns.set_mx_err(
            "gone.test",
            DnsError::NxDomain {
                negative_ttl_secs: Some(10_000),
            },
        );
        let e = run(l.route("gone.test")).unwrap_err();
        assert_eq!(e.enhanced(), (5, 1, 2));

        l.dns.set_mx("implicit.test", &[], 60);
        l.dns.set_ip("implicit.test", &["192.0.2.7"], 60);
        let r = run(l.route("implicit.test")).unwrap();
        assert_eq!(r.hosts[0].name, "implicit.test");

        // Negative answer cached for at most negative_ttl_secs_max (100 s), not 10 000 s.
        let before = queries(&l);
        l.dns.set_mx("gone.test", &[], 60);
        l.dns.set_ip("gone.test", &["192.0.2.8"], 60);
        clock.advance_secs(99);
        assert!(run(l.route("gone.test")).is_err());
        assert_eq!(queries(&l), before);
        clock.advance_secs(1);
        assert!(run(l.route("gone.test")).is_ok());
    }

    #[test]
    fn temporary_failures_are_not_cached_and_partial_hosts_are_used() {
        let (l, _clock) = logic(10);
        l.dns
            .set_mx_err("flaky.test", DnsError::Temporary("SERVFAIL".into()));
        let e = run(l.route("flaky.test")).unwrap_err();
        assert!(!e.is_permanent());
        l.dns.set_mx("flaky.test", &[(10, "mx.flaky.test")], 60);
        l.dns.set_ip("mx.flaky.test", &["192.0.2.3"], 60);
        assert!(run(l.route("flaky.test")).is_ok());

        l.dns.set_mx(
            "two.test",
            &[(10, "bad.two.test"), (20, "good.two.test")],
            60,
        );
        l.dns
            .set_ip_err("bad.two.test", DnsError::Temporary("timeout".into()));
        l.dns.set_ip("good.two.test", &["192.0.2.4"], 60);
        let r = run(l.route("two.test")).unwrap();
        assert_eq!(r.hosts.len(), 1);
        assert_eq!(r.hosts[0].name, "good.two.test");

        l.dns.set_mx("none.test", &[(10, "nohost.none.test")], 60);
        let e = run(l.route("none.test")).unwrap_err();
        assert!(matches!(e, ResolveError::NoAddresses { .. }));
    }

    #[test]
    fn cache_is_bounded() {
        let (l, _clock) = logic(8);
        for i in 0..50 {
            let d = format!("d{i}.test");
            l.dns.set_mx(&d, &[], 60);
            l.dns.set_ip(&d, &["192.0.2.1"], 600);
            run(l.route(&d)).unwrap();
            assert!(l.cached_entries() <= 8);
        }
    }
}
