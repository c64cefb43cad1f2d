//! Cluster-wide quotas (issue 19): tenant rates and daily quotas, sending-domain rates and the
//! new-tenant cap, counted once for every engine of a fleet instead of once per engine.
//!
//! The counters live in Redis (the engine's `quota_redis` driver runs one Lua script per
//! request, atomically). This module is the engine-side half, pure of any I/O: each engine holds
//! *leases*, small batches of grants it reserved in Redis, and admits a message by taking one
//! grant from every lease that applies, without a round trip. When a lease runs low it asks for
//! the next batch ahead of need; when one is empty the session waits for it (bounded by the
//! driver's timeout). A grant is reserved before it is used, so the fleet never admits more than
//! the limit; what it can lose is the grants an engine holds and never uses (at most one batch
//! per engine and key, which is why a batch is a small share of the limit: `DAY_BATCH_DIVISOR`,
//! `RATE_BATCH_DIVISOR`).
//!
//! If Redis cannot be reached, the driver switches the quotas to *fallback*: each engine counts
//! in its own memory against its share of each limit, the limit divided by the live engines the
//! control plane reports (at least 1 message for a positive limit), until a probe finds Redis
//! again. In fallback a fleet of N engines admits at most the limit in total when the load is
//! spread evenly, and less when it is not; the daily counts of the fallback start from zero.
//!
//! Without Redis configured nothing here is used: an engine counts locally (`crate::rate`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::PolicyDenial;
use crate::new_tenant::{cap_denial, NewTenantWindows};
use crate::rate::{RateKey, RateLimiter, RateLimits, DAY_MS};
use crate::snapshot::NewTenantCap;

/// Lock stripes: shards contend only when their keys share a stripe.
pub const QUOTA_STRIPES: usize = 16;
/// Capacity of the channel of grant requests from the shards to the driver.
pub const GRANT_REQUESTS_MAX: usize = 4_096;
/// A per-second grant is good for this long after it was granted, so grants an engine did not
/// use cannot add up to a burst later.
pub const RATE_GRANT_TTL_MS: u64 = 1_000;
/// A new-tenant grant is good for this long (the cap's window is hours; its grants are few).
pub const NEW_TENANT_GRANT_TTL_MS: u64 = 10_000;
/// After Redis granted nothing, refuse from the lease for at most this long before asking again
/// (a raised limit takes effect within it).
pub const EXHAUSTED_RECHECK_MS: u64 = 1_000;
/// A request unanswered for this long is sent again (the driver answers or fails every
/// request well within it; this only covers a request lost to a full channel).
pub const REQUEST_STALE_MS: u64 = 2_000;
/// The largest batch of grants one request asks for.
pub const GRANT_BATCH_MAX: u64 = 512;
/// Daily quotas: a batch is at most the limit divided by this and by the live engines, so the
/// grants stranded on engines that stop sending are at most 1/200 of the limit.
pub const DAY_BATCH_DIVISOR: u64 = 200;
/// Rates: a batch is the engine's share of this fraction of a second (50 ms).
pub const RATE_BATCH_DIVISOR: u64 = 20;

/// Which counter a lease draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Messages per second (a token bucket in Redis).
    Second,
    /// Messages per UTC day (a counter per day in Redis).
    Day,
    /// The new-tenant cap: messages per rolling window (a sorted set in Redis).
    NewTenant,
}

/// One counter of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuotaKey {
    pub scope: RateKey,
    pub window: Window,
}

/// The limit a check applies; its variant names the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PerSecond(u32),
    PerDay(u64),
    NewTenant(NewTenantCap),
}

impl Limit {
    fn window(&self) -> Window {
        match self {
            Limit::PerSecond(_) => Window::Second,
            Limit::PerDay(_) => Window::Day,
            Limit::NewTenant(_) => Window::NewTenant,
        }
    }
}

/// A batch of grants the driver is asked to reserve in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    pub key: QuotaKey,
    pub limit: Limit,
    /// 1..=`GRANT_BATCH_MAX`.
    pub want: u64,
    /// The UTC day (`now / DAY_MS`) a `PerDay` request counts against.
    pub day: u64,
}

/// Redis's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// 0..=want.
    pub granted: u64,
    /// When nothing was granted: how long until the counter has room again, ms (0: unknown).
    pub retry_in_ms: u64,
}

/// The verdict of [`ClusterQuotas::admit`].
#[derive(Debug)]
pub enum Admit {
    Yes,
    No(PolicyDenial),
    /// A lease is empty and its next batch was asked for: wait on the listener (the driver
    /// wakes it when grants arrive or Redis fails), then ask again.
    Wait(event_listener::EventListener),
}

#[derive(Debug, Default)]
struct Lease {
    /// Grants held, usable until `valid_until_ms`.
    balance: u64,
    valid_until_ms: u64,
    /// Redis granted nothing: refuse until then, with `retry_in_ms` in the refusal.
    exhausted_until_ms: u64,
    retry_in_ms: u64,
    /// When the request in flight was sent; None: none in flight.
    pending_since_ms: Option<u64>,
}

impl Lease {
    fn usable(&self, now_ms: u64) -> u64 {
        if now_ms < self.valid_until_ms {
            self.balance
        } else {
            0
        }
    }

    fn pending(&self, now_ms: u64) -> bool {
        self.pending_since_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < REQUEST_STALE_MS)
    }
}

type Leases = HashMap<QuotaKey, Lease>;

/// The engine's leases on the fleet's counters, shared by its shards and its Redis driver.
#[derive(Debug)]
pub struct ClusterQuotas {
    stripes: Vec<Mutex<Leases>>,
    hasher: std::collections::hash_map::RandomState,
    requests: tokio::sync::mpsc::Sender<GrantRequest>,
    /// Woken when grants arrive or the mode changes.
    granted: event_listener::Event,
    fallback: AtomicBool,
    /// Live engines of the fleet as the control plane last reported, at least 1.
    engines_live: AtomicU32,
    /// The fallback's own counters (shares of the limits).
    local_rates: RateLimiter,
    local_new_tenants: NewTenantWindows,
    /// Admissions that had to wait for a batch (a metric).
    waits: AtomicU64,
}

impl ClusterQuotas {
    /// The quotas and the receiving end of their requests (for the driver).
    pub fn new() -> (ClusterQuotas, tokio::sync::mpsc::Receiver<GrantRequest>) {
        let (tx, rx) = tokio::sync::mpsc::channel(GRANT_REQUESTS_MAX);
        let quotas = ClusterQuotas {
            stripes: (0..QUOTA_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: Default::default(),
            requests: tx,
            granted: event_listener::Event::new(),
            fallback: AtomicBool::new(false),
            engines_live: AtomicU32::new(1),
            local_rates: RateLimiter::new(),
            local_new_tenants: NewTenantWindows::new(),
            waits: AtomicU64::new(0),
        };
        (quotas, rx)
    }

    /// Admits one message against every check, or none: no lease is charged unless all of them
    /// have a grant.
    pub fn admit(&self, checks: &[(RateKey, Limit)], now_ms: u64) -> Admit {
        if self.in_fallback() {
            return self.admit_locally(checks, now_ms);
        }
        let keys: Vec<QuotaKey> = checks
            .iter()
            .map(|(scope, limit)| QuotaKey {
                scope: scope.clone(),
                window: limit.window(),
            })
            .collect();
        let mut stripe_ids: Vec<usize> = keys.iter().map(|k| self.stripe(k)).collect();
        stripe_ids.sort_unstable();
        stripe_ids.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Leases>)> = stripe_ids
            .into_iter()
            .map(|id| (id, lock(&self.stripes[id])))
            .collect();
        let mut empty = false;
        for (key, (scope, limit)) in keys.iter().zip(checks) {
            let lease = lease_of(&mut guards, self.stripe(key), key);
            if lease.usable(now_ms) > 0 {
                continue;
            }
            if now_ms < lease.exhausted_until_ms {
                return Admit::No(denial(scope, limit, lease.retry_in_ms, now_ms));
            }
            if !lease.pending(now_ms) {
                if !self.request(key, limit, now_ms) {
                    return Admit::No(busy());
                }
                lease.pending_since_ms = Some(now_ms);
            }
            empty = true;
        }
        if empty {
            self.waits.fetch_add(1, Ordering::Relaxed);
            // Listening before the stripes are released: a deposit takes a stripe first, so
            // its wake-up cannot pass between this check and the wait.
            return Admit::Wait(self.granted.listen());
        }
        for (key, (_, limit)) in keys.iter().zip(checks) {
            let lease = lease_of(&mut guards, self.stripe(key), key);
            lease.balance -= 1;
            // Ask for the next batch ahead of need.
            if lease.balance <= self.batch(limit) / 2
                && !lease.pending(now_ms)
                && self.request(key, limit, now_ms)
            {
                lease.pending_since_ms = Some(now_ms);
            }
        }
        Admit::Yes
    }

    /// Redis answered `req` at `now_ms`.
    pub fn deposit(&self, req: &GrantRequest, grant: Grant, now_ms: u64) {
        {
            let mut map = lock(&self.stripes[self.stripe(&req.key)]);
            let lease = map.entry(req.key.clone()).or_default();
            lease.pending_since_ms = None;
            if grant.granted > 0 {
                lease.balance = lease.usable(now_ms) + grant.granted;
                lease.valid_until_ms = match req.limit {
                    Limit::PerSecond(_) => now_ms + RATE_GRANT_TTL_MS,
                    Limit::PerDay(_) => (req.day + 1) * DAY_MS,
                    Limit::NewTenant(_) => now_ms + NEW_TENANT_GRANT_TTL_MS,
                };
                lease.exhausted_until_ms = 0;
            } else {
                lease.retry_in_ms = grant.retry_in_ms;
                let recheck = match grant.retry_in_ms {
                    0 => EXHAUSTED_RECHECK_MS,
                    ms => ms.min(EXHAUSTED_RECHECK_MS),
                };
                lease.exhausted_until_ms = now_ms + recheck;
            }
        }
        self.granted.notify(usize::MAX);
    }

    /// Redis could not be reached: count locally (fallback) until [`ClusterQuotas::recover`].
    /// Returns true when this changed the mode.
    pub fn fail(&self) -> bool {
        let changed = !self.fallback.swap(true, Ordering::SeqCst);
        for stripe in &self.stripes {
            for lease in lock(stripe).values_mut() {
                lease.pending_since_ms = None;
            }
        }
        self.granted.notify(usize::MAX);
        changed
    }

    /// Redis answers again: back to the fleet's counters. Returns true when this changed the mode.
    pub fn recover(&self) -> bool {
        let changed = self.fallback.swap(false, Ordering::SeqCst);
        self.granted.notify(usize::MAX);
        changed
    }

    pub fn in_fallback(&self) -> bool {
        self.fallback.load(Ordering::SeqCst)
    }

    /// The live engines the control plane reports (0 is taken as 1).
    pub fn set_engines_live(&self, n: u32) {
        self.engines_live.store(n.max(1), Ordering::Relaxed);
    }

    pub fn engines_live(&self) -> u32 {
        self.engines_live.load(Ordering::Relaxed).max(1)
    }

    /// Admissions that waited for a batch, since start.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Forgets the leases and fallback counters of tenants and domains no longer in the snapshot.
    pub fn retain(&self, tenants: &HashSet<&str>, domains: &HashSet<&str>) {
        for stripe in &self.stripes {
            lock(stripe).retain(|k, _| match &k.scope {
                RateKey::Tenant(t) => tenants.contains(t.as_str()),
                RateKey::Domain(d) => domains.contains(d.as_str()),
            });
        }
        self.local_rates.retain(tenants, domains);
        self.local_new_tenants.retain(tenants);
    }

    /// The batch one request asks for under `limit`.
    pub fn batch(&self, limit: &Limit) -> u64 {
        let engines = u64::from(self.engines_live());
        let share = match limit {
            Limit::PerSecond(r) => u64::from(*r) / (RATE_BATCH_DIVISOR * engines),
            Limit::PerDay(d) => d / (DAY_BATCH_DIVISOR * engines),
            Limit::NewTenant(_) => 1,
        };
        share.clamp(1, GRANT_BATCH_MAX)
    }

    fn request(&self, key: &QuotaKey, limit: &Limit, now_ms: u64) -> bool {
        let req = GrantRequest {
            key: key.clone(),
            limit: *limit,
            want: self.batch(limit),
            day: now_ms / DAY_MS,
        };
        self.requests.try_send(req).is_ok()
    }

    /// Fallback: this engine's share of every limit, counted in its memory.
    fn admit_locally(&self, checks: &[(RateKey, Limit)], now_ms: u64) -> Admit {
        let engines = self.engines_live();
        let mut rate_checks: Vec<(RateKey, RateLimits)> = Vec::with_capacity(checks.len());
        let mut cap: Option<(&str, NewTenantCap)> = None;
        for (scope, limit) in checks {
            match limit {
                Limit::NewTenant(c) => {
                    if let RateKey::Tenant(t) = scope {
                        let mut share = *c;
                        share.messages_max = share_of(u64::from(c.messages_max), engines) as u32;
                        cap = Some((t.as_str(), share));
                    }
                }
                Limit::PerSecond(r) => {
                    let share = share_of(u64::from(*r), engines) as u32;
                    limits_of(&mut rate_checks, scope).messages_per_second_max = Some(share);
                }
                Limit::PerDay(d) => {
                    limits_of(&mut rate_checks, scope).messages_per_day_max =
                        Some(share_of(*d, engines));
                }
            }
        }
        let admission = match &cap {
            Some((tenant, cap)) => match self.local_new_tenants.check(tenant, cap, now_ms) {
                Ok(a) => Some(a),
                Err(d) => return Admit::No(d),
            },
            None => None,
        };
        if let Err(d) = self.local_rates.check_and_take(&rate_checks, now_ms) {
            return Admit::No(d);
        }
        if let Some(a) = admission {
            a.take();
        }
        Admit::Yes
    }

    fn stripe(&self, key: &QuotaKey) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(key) % QUOTA_STRIPES as u64) as usize
    }
}

/// `limit / engines`, at least 1 for a positive limit.
fn share_of(limit: u64, engines: u32) -> u64 {
    if limit == 0 {
        0
    } else {
        (limit / u64::from(engines.max(1))).max(1)
    }
}

fn limits_of<'a>(
    checks: &'a mut Vec<(RateKey, RateLimits)>,
    scope: &RateKey,
) -> &'a mut RateLimits {
    let i = match checks.iter().position(|(k, _)| k == scope) {
        Some(i) => i,
        None => {
            checks.push((scope.clone(), RateLimits::default()));
            checks.len() - 1
        }
    };
    &mut checks[i].1
}

fn lease_of<'a>(
    guards: &'a mut [(usize, MutexGuard<'_, Leases>)],
    stripe: usize,
    key: &QuotaKey,
) -> &'a mut Lease {
    let i = guards
        .iter()
        .position(|(id, _)| *id == stripe)
        .expect("invariant: every stripe of the checks was locked");
    guards[i].1.entry(key.clone()).or_default()
}

fn denial(scope: &RateKey, limit: &Limit, retry_in_ms: u64, now_ms: u64) -> PolicyDenial {
    match limit {
        Limit::PerSecond(_) => PolicyDenial::RateLimited {
            scope: scope.scope(),
        },
        Limit::PerDay(_) => PolicyDenial::DailyQuota {
            scope: scope.scope(),
        },
        Limit::NewTenant(cap) => {
            let tenant = match scope {
                RateKey::Tenant(t) | RateKey::Domain(t) => t.as_str(),
            };
            cap_denial(tenant, cap, now_ms.saturating_add(retry_in_ms), now_ms)
        }
    }
}

/// The request channel is full: the driver is far behind.
fn busy() -> PolicyDenial {
    PolicyDenial::RateLimited {
        scope: "the cluster quota service (busy)".to_owned(),
    }
}

fn lock(m: &Mutex<Leases>) -> MutexGuard<'_, Leases> {
    // A poisoned stripe only means another thread panicked mid-update of plain counters.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;
