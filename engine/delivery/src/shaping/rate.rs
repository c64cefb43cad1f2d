//! Engine-wide messages per minute and per hour per site, shared by all shards.
//!
//! The GCRA of [`crate::limits`] with the period generalised: one `AtomicU64` per period holds
//! the theoretical arrival time (TAT) of the next message, moved forward by one emission interval
//! (period / rate) per message with a compare-and-swap; a message may go when the TAT minus the
//! burst tolerance is not in the future. The burst is [`RATE_BURST_PERMILLE`] of the period's
//! count (at least 1), so any window of one period sees at most the rate plus that burst, and
//! no shard ever waits on a lock.
//!
//! A site with both rates takes from the minute first, then the hour; when the hour refuses, the
//! minute's token is given back (its TAT moved back by the interval it took), so a refused
//! message never spends either budget.
//!
//! Time is an [`Instant`] the caller passes (tests pin it); the registry measures it from its
//! own epoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Sites tracked at most; past it, sites with no rate state in force and held by no one are
/// forgotten, and if none is, new sites share one overflow entry (stricter, never looser).
pub const RATE_SITES_MAX: usize = 100_000;

/// The burst, in thousandths of the period's count (at least one message): 5 % absorbs the
/// shards' scheduling jitter while any one period stays within 5 % of the rate, as
/// [`crate::limits::RATE_BURST_MS`] does for per-second rates.
pub const RATE_BURST_PERMILLE: u64 = 50;

const MINUTE_NS: u64 = 60_000_000_000;
const HOUR_NS: u64 = 60 * MINUTE_NS;

/// One site's two cells.
#[derive(Debug, Default)]
pub struct SiteRate {
    /// GCRA TAT of the per-minute rate, ns since the registry's epoch.
    minute_tat_ns: AtomicU64,
    /// GCRA TAT of the per-hour rate, ns since the registry's epoch.
    hour_tat_ns: AtomicU64,
}

/// Per-site rate limits, engine-wide (one per engine, `Send + Sync`).
#[derive(Debug)]
pub struct SiteRates {
    sites: RwLock<HashMap<String, Arc<SiteRate>>>,
    /// Shared by sites admitted past `sites_max`.
    overflow: Arc<SiteRate>,
    /// Bound of `sites`.
    sites_max: usize,
    /// Origin of the TATs.
    epoch: Instant,
}

impl Default for SiteRates {
    fn default() -> Self {
        SiteRates::new(RATE_SITES_MAX)
    }
}

impl SiteRates {
    /// A registry of at most `sites_max` sites.
    pub fn new(sites_max: usize) -> SiteRates {
        SiteRates {
            sites: RwLock::new(HashMap::new()),
            overflow: Arc::new(SiteRate::default()),
            sites_max: sites_max.max(1),
            epoch: Instant::now(),
        }
    }

    /// The registry's time origin (tests build their instants from it).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// One message for the site `key` at rates `per_minute` and `per_hour` (`None`: no limit).
    /// `Ok`: send now; `Err(wait)`: not before `wait` has passed.
    pub fn try_take(
        &self,
        key: &str,
        per_minute: Option<u32>,
        per_hour: Option<u32>,
        now: Instant,
    ) -> Result<(), Duration> {
        if per_minute.is_none() && per_hour.is_none() {
            return Ok(());
        }
        let now_ns = self.ns(now);
        self.site(key, now_ns)
            .try_take_at(per_minute, per_hour, now_ns)
    }

    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The cells of `key`, created when needed.
    fn site(&self, key: &str, now_ns: u64) -> Arc<SiteRate> {
        if let Ok(map) = self.sites.read() {
            if let Some(s) = map.get(key) {
                return s.clone();
            }
        }
        let Ok(mut map) = self.sites.write() else {
            return self.overflow.clone(); // poisoned: a panic elsewhere; stay strict
        };
        if let Some(s) = map.get(key) {
            return s.clone();
        }
        if map.len() >= self.sites_max {
            // A site whose TATs are behind now has no state worth keeping: it starts afresh.
            map.retain(|_, s| Arc::strong_count(s) > 1 || s.in_force(now_ns));
            if map.len() >= self.sites_max {
                return self.overflow.clone();
            }
        }
        let s = Arc::new(SiteRate::default());
        map.insert(key.to_string(), s.clone());
        s
    }

    /// Sites tracked (for tests and gauges).
    pub fn sites(&self) -> usize {
        self.sites.read().map_or(0, |m| m.len())
    }
}

impl SiteRate {
    fn in_force(&self, now_ns: u64) -> bool {
        self.minute_tat_ns.load(Ordering::Acquire) > now_ns
            || self.hour_tat_ns.load(Ordering::Acquire) > now_ns
    }

    /// Both rates at `now_ns` (pure in time).
    pub fn try_take_at(
        &self,
        per_minute: Option<u32>,
        per_hour: Option<u32>,
        now_ns: u64,
    ) -> Result<(), Duration> {
        let minute = per_minute.map(|n| Gcra::new(MINUTE_NS, n));
        let hour = per_hour.map(|n| Gcra::new(HOUR_NS, n));
        if let Some(g) = &minute {
            g.take(&self.minute_tat_ns, now_ns)?;
        }
        if let Some(g) = &hour {
            if let Err(wait) = g.take(&self.hour_tat_ns, now_ns) {
                if let Some(m) = &minute {
                    m.give_back(&self.minute_tat_ns);
                }
                return Err(wait);
            }
        }
        Ok(())
    }
}

/// One rate: emission interval and burst tolerance, in ns.
struct Gcra {
    interval_ns: u64,
    tolerance_ns: u64,
}

impl Gcra {
    fn new(period_ns: u64, count: u32) -> Gcra {
        let count = u64::from(count.max(1));
        let interval_ns = (period_ns / count).max(1);
        let burst = (count * RATE_BURST_PERMILLE / 1_000).max(1);
        Gcra {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst - 1),
        }
    }

    fn take(&self, tat_ns: &AtomicU64, now_ns: u64) -> Result<(), Duration> {
        let mut tat = tat_ns.load(Ordering::Acquire);
        loop {
            let start = tat.max(now_ns);
            if start > now_ns.saturating_add(self.tolerance_ns) {
                return Err(Duration::from_nanos(start - now_ns - self.tolerance_ns));
            }
            let next = start.saturating_add(self.interval_ns);
            match tat_ns.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Returns one token taken by [`Gcra::take`]: the TAT moves back by one interval. Takers in
    /// between moved it forward from our `next`, so this frees exactly the one slot we held.
    fn give_back(&self, tat_ns: &AtomicU64) {
        let _ = tat_ns.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            Some(t.saturating_sub(self.interval_ns))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn per_minute_allows_the_burst_then_spaces_messages() {
        let rates = SiteRates::new(16);
        let t0 = rates.epoch() + Duration::from_secs(3600);
        // 600 a minute: one every 100 ms, a burst of 30.
        for _ in 0..30 {
            assert!(rates.try_take("s", Some(600), None, t0).is_ok());
        }
        let wait = rates
            .try_take("s", Some(600), None, t0)
            .expect_err("burst used up");
        assert_eq!(wait, Duration::from_millis(100));
        assert!(rates.try_take("s", Some(600), None, t0 + wait).is_ok());
        assert!(rates.try_take("s", Some(600), None, t0 + wait).is_err());
        // Another site is not affected.
        assert!(rates.try_take("other", Some(600), None, t0).is_ok());
    }

    #[test]
    fn a_small_rate_has_a_burst_of_one() {
        let rates = SiteRates::new(16);
        let t0 = rates.epoch() + Duration::from_secs(10);
        assert!(rates.try_take("s", Some(2), None, t0).is_ok());
        let wait = rates
            .try_take("s", Some(2), None, t0)
            .expect_err("one a 30 s");
        assert_eq!(wait, Duration::from_secs(30));
        assert!(rates
            .try_take("s", Some(2), None, t0 + Duration::from_secs(30))
            .is_ok());
    }

    #[test]
    fn the_hour_bounds_a_busy_minute_and_a_refusal_spends_nothing() {
        let rates = SiteRates::new(16);
        let t0 = rates.epoch() + Duration::from_secs(7200);
        // 60 an hour (burst 3) under 1,000 a minute: the hour refuses the 4th.
        for _ in 0..3 {
            assert!(rates.try_take("s", Some(1_000), Some(60), t0).is_ok());
        }
        let wait = rates
            .try_take("s", Some(1_000), Some(60), t0)
            .expect_err("hour");
        assert_eq!(wait, Duration::from_secs(60));
        // The minute's budget was given back: 50 (its burst) minus the 3 sent remain now.
        let mut minute_only = 0;
        while rates.try_take("s", Some(1_000), None, t0).is_ok() && minute_only < 1_000 {
            minute_only += 1;
        }
        assert_eq!(minute_only, 47);
    }

    #[test]
    fn no_rate_takes_nothing_and_tracks_nothing() {
        let rates = SiteRates::new(16);
        for _ in 0..1_000 {
            assert!(rates.try_take("s", None, None, Instant::now()).is_ok());
        }
        assert_eq!(rates.sites(), 0);
    }

    #[test]
    fn the_registry_is_bounded_and_forgets_idle_sites() {
        let rates = SiteRates::new(2);
        let t0 = rates.epoch() + Duration::from_secs(60);
        assert!(rates.try_take("a", Some(1), None, t0).is_ok());
        assert!(rates.try_take("b", Some(1), None, t0).is_ok());
        // Both hold state now: a third site shares the overflow entry.
        assert!(rates.try_take("c", Some(1), None, t0).is_ok());
        assert!(
            rates.try_take("d", Some(1), None, t0).is_err(),
            "overflow is shared"
        );
        assert_eq!(rates.sites(), 2);
        // A minute later a and b are idle: a new site gets an entry of its own.
        let later = t0 + Duration::from_secs(61);
        assert!(rates.try_take("e", Some(1), None, later).is_ok());
        assert!(rates.try_take("f", Some(1), None, later).is_ok());
        assert_eq!(rates.sites(), 2);
    }

    #[test]
    fn at_one_instant_all_threads_together_get_exactly_the_burst() {
        let rates = Arc::new(SiteRates::new(16));
        let now = rates.epoch() + Duration::from_secs(3600);
        let sent = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (rates, sent) = (rates.clone(), sent.clone());
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        if rates
                            .try_take("big", Some(6_000), Some(100_000), now)
                            .is_ok()
                        {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread panicked");
        }
        // The minute's burst is 300, the hour's 5,000: the minute decides, exactly.
        assert_eq!(sent.load(Ordering::Relaxed), 300);
    }

    #[test]
    fn across_threads_the_rate_never_exceeds_its_bound() {
        let rates = Arc::new(SiteRates::new(16));
        let per_minute = 60_000u32; // 1 a ms, burst 3,000
        let sent = Arc::new(AtomicU32::new(0));
        let window = Duration::from_millis(300);
        let start = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (rates, sent) = (rates.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut tries = 0u32;
                    while start.elapsed() < window && tries < 10_000_000 {
                        tries += 1;
                        if rates
                            .try_take("s", Some(per_minute), None, Instant::now())
                            .is_ok()
                        {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread panicked");
        }
        let elapsed_ms = start.elapsed().as_millis() as f64;
        let got = f64::from(sent.load(Ordering::Relaxed));
        // GCRA: at most burst + elapsed / interval (+1 for the first slot).
        let bound = 3_000.0 + elapsed_ms + 1.0;
        assert!(got <= bound, "sent {got}, bound {bound}");
    }
}
