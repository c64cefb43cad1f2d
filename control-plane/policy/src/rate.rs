//! Per-tenant and per-sending-domain message rates: a token bucket per second and a counter
//! per UTC day. Pure (time passed in), shared by all shards of one engine.
//!
//! Limits are per engine: a cluster of N engines admits up to N times the configured rate; the
//! control plane divides limits by the engine count when it wants a cluster-wide figure.
//! The state survives snapshot changes (a new snapshot does not refill every bucket); keys that
//! leave the snapshot are pruned, so the map is bounded by the snapshot's own bounds.
//!
//! Buckets count milli-tokens: a rate of R messages/s refills R milli-tokens per millisecond up
//! to a burst of one second (R * 1000), and a message takes 1000. All integer arithmetic.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::error::PolicyDenial;

/// Lock stripes: shards contend only when they hit the same stripe.
pub const RATE_STRIPES: usize = 16;
/// Milliseconds in a UTC day (the per-day counters reset at 00:00 UTC).
pub const DAY_MS: u64 = 86_400_000;
/// Milli-tokens one message costs.
const MESSAGE_COST_MILLI: u64 = 1000;

/// What a bucket is counting for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Tenant(String),
    Domain(String),
}

impl RateKey {
    /// How a refusal names the key: `tenant <id>` or `domain <name>`.
    pub(crate) fn scope(&self) -> String {
        match self {
            RateKey::Tenant(t) => format!("tenant {t}"),
            RateKey::Domain(d) => format!("domain {d}"),
        }
    }
}

/// The limits that apply to one key for one check; None: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    pub messages_per_second_max: Option<u32>,
    pub messages_per_day_max: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// 0 <= tokens_milli <= rate * 1000 (as of `refilled_unix_ms`).
    tokens_milli: u64,
    refilled_unix_ms: u64,
    /// `now / DAY_MS` of the day `day_count` counts.
    day: u64,
    day_count: u64,
}

impl Bucket {
    fn new(now_unix_ms: u64, limits: RateLimits) -> Bucket {
        Bucket {
            tokens_milli: burst_milli(limits),
            refilled_unix_ms: now_unix_ms,
            day: now_unix_ms / DAY_MS,
            day_count: 0,
        }
    }

    /// Bring the bucket to `now` (time going backwards refills nothing).
    fn refill(&mut self, now_unix_ms: u64, limits: RateLimits) {
        let elapsed_ms = now_unix_ms.saturating_sub(self.refilled_unix_ms);
        let rate = u64::from(limits.messages_per_second_max.unwrap_or(0));
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(elapsed_ms.saturating_mul(rate))
            .min(burst_milli(limits));
        self.refilled_unix_ms = self.refilled_unix_ms.max(now_unix_ms);
        let day = now_unix_ms / DAY_MS;
        if day > self.day {
            self.day = day;
            self.day_count = 0;
        }
    }

    fn admits(&self, key: &RateKey, limits: RateLimits) -> Result<(), PolicyDenial> {
        if limits.messages_per_second_max.is_some() && self.tokens_milli < MESSAGE_COST_MILLI {
            return Err(PolicyDenial::RateLimited { scope: key.scope() });
        }
        if let Some(max) = limits.messages_per_day_max {
            if self.day_count >= max {
                return Err(PolicyDenial::DailyQuota { scope: key.scope() });
            }
        }
        Ok(())
    }

    fn take(&mut self, limits: RateLimits) {
        if limits.messages_per_second_max.is_some() {
            self.tokens_milli = self.tokens_milli.saturating_sub(MESSAGE_COST_MILLI);
        }
        self.day_count = self.day_count.saturating_add(1);
    }
}

fn burst_milli(limits: RateLimits) -> u64 {
    u64::from(limits.messages_per_second_max.unwrap_or(0)).saturating_mul(MESSAGE_COST_MILLI)
}

/// The shared rate state of one engine.
#[derive(Debug)]
pub struct RateLimiter {
    /// Each key lives in stripe `hash(key) % RATE_STRIPES`; at most one entry per tenant and
    /// sending domain of the current snapshot (see `retain`).
    stripes: Vec<Mutex<HashMap<RateKey, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new()
    }
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter {
            stripes: (0..RATE_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: Default::default(),
        }
    }

    /// Admit one message against every `(key, limits)` given, or none: when any check fails,
    /// no bucket is charged. Keys with no limit at all are skipped (no state kept).
    pub fn check_and_take(
        &self,
        checks: &[(RateKey, RateLimits)],
        now_unix_ms: u64,
    ) -> Result<(), PolicyDenial> {
        let checks: Vec<&(RateKey, RateLimits)> = checks
            .iter()
            .filter(|(_, l)| *l != RateLimits::default())
            .collect();
        // Lock the stripes involved in index order (no deadlock between shards).
        let mut stripe_ids: Vec<usize> = checks.iter().map(|(k, _)| self.stripe(k)).collect();
        stripe_ids.sort_unstable();
        stripe_ids.dedup();
        let mut guards: Vec<(usize, std::sync::MutexGuard<'_, HashMap<RateKey, Bucket>>)> =
            Vec::with_capacity(stripe_ids.len());
        for id in stripe_ids {
            // A poisoned stripe only means another thread panicked mid-update of plain counters.
            let guard = self.stripes[id]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            guards.push((id, guard));
        }
        for (key, limits) in &checks {
            let id = self.stripe(key);
            let Some((_, map)) = guards.iter_mut().find(|(g, _)| *g == id) else {
                continue; // unreachable: every stripe of `checks` was locked above
            };
            let bucket = map
                .entry(key.clone())
                .or_insert_with(|| Bucket::new(now_unix_ms, *limits));
            bucket.refill(now_unix_ms, *limits);
            bucket.admits(key, *limits)?;
        }
        for (key, limits) in &checks {
            let id = self.stripe(key);
            if let Some((_, map)) = guards.iter_mut().find(|(g, _)| *g == id) {
                if let Some(bucket) = map.get_mut(key) {
                    bucket.take(*limits);
                }
            }
        }
        Ok(())
    }

    /// Forget keys that are no longer in the snapshot.
    pub fn retain(&self, tenants: &HashSet<&str>, domains: &HashSet<&str>) {
        for stripe in &self.stripes {
            let mut map = stripe
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.retain(|k, _| match k {
                RateKey::Tenant(t) => tenants.contains(t.as_str()),
                RateKey::Domain(d) => domains.contains(d.as_str()),
            });
        }
    }

    /// Number of keys holding state (for tests and metrics).
    pub fn len(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn stripe(&self, key: &RateKey) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(key) % RATE_STRIPES as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_second(n: u32) -> RateLimits {
        RateLimits {
            messages_per_second_max: Some(n),
            messages_per_day_max: None,
        }
    }

    #[test]
    fn token_bucket_bursts_then_refills() {
        let r = RateLimiter::new();
        let k = [(RateKey::Tenant("t".into()), per_second(5))];
        let t0 = 1_000_000;
        for _ in 0..5 {
            r.check_and_take(&k, t0).unwrap();
        }
        assert!(matches!(
            r.check_and_take(&k, t0),
            Err(PolicyDenial::RateLimited { .. })
        ));
        // 5/s refills one message per 200 ms.
        assert!(r.check_and_take(&k, t0 + 199).is_err());
        r.check_and_take(&k, t0 + 200).unwrap();
        assert!(r.check_and_take(&k, t0 + 200).is_err());
        // A long pause refills to the burst only.
        for _ in 0..5 {
            r.check_and_take(&k, t0 + 60_000).unwrap();
        }
        assert!(r.check_and_take(&k, t0 + 60_000).is_err());
    }

    #[test]
    fn daily_counter_resets_at_utc_midnight() {
        let r = RateLimiter::new();
        let k = [(
            RateKey::Tenant("t".into()),
            RateLimits {
                messages_per_second_max: None,
                messages_per_day_max: Some(3),
            },
        )];
        let day = 20_000 * DAY_MS;
        for i in 0..3 {
            r.check_and_take(&k, day + i).unwrap();
        }
        let err = r.check_and_take(&k, day + DAY_MS - 1).unwrap_err();
        assert!(matches!(err, PolicyDenial::DailyQuota { .. }));
        assert_eq!(err.reply().0, 451);
        r.check_and_take(&k, day + DAY_MS).unwrap();
    }

    #[test]
    fn a_denial_charges_nothing() {
        let r = RateLimiter::new();
        let tenant = (RateKey::Tenant("t".into()), per_second(10));
        let domain = (RateKey::Domain("d.example".into()), per_second(1));
        let now = 5_000;
        r.check_and_take(&[tenant.clone(), domain.clone()], now)
            .unwrap();
        for _ in 0..20 {
            assert!(r
                .check_and_take(&[tenant.clone(), domain.clone()], now)
                .is_err());
        }
        // The tenant still has its 9 remaining tokens.
        for _ in 0..9 {
            r.check_and_take(std::slice::from_ref(&tenant), now)
                .unwrap();
        }
        assert!(r
            .check_and_take(std::slice::from_ref(&tenant), now)
            .is_err());
    }

    #[test]
    fn unlimited_keeps_no_state_and_retain_prunes() {
        let r = RateLimiter::new();
        r.check_and_take(
            &[(RateKey::Tenant("free".into()), RateLimits::default())],
            0,
        )
        .unwrap();
        assert!(r.is_empty());
        r.check_and_take(&[(RateKey::Tenant("a".into()), per_second(1))], 0)
            .unwrap();
        r.check_and_take(&[(RateKey::Domain("b.example".into()), per_second(1))], 0)
            .unwrap();
        assert_eq!(r.len(), 2);
        r.retain(&HashSet::from(["a"]), &HashSet::new());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn concurrent_shards_never_overdraw() {
        let r = std::sync::Arc::new(RateLimiter::new());
        let admitted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (r, admitted) = (r.clone(), admitted.clone());
                std::thread::spawn(move || {
                    let k = [
                        (RateKey::Tenant("t".into()), per_second(100)),
                        (RateKey::Domain("d.example".into()), per_second(50)),
                    ];
                    for _ in 0..1000 {
                        if r.check_and_take(&k, 42).is_ok() {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 50);
    }
}
