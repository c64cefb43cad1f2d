//! The new-tenant cap (issue 14): at most N messages per rolling window (10 per 24 hours by
//! default) while a tenant is new. Pure (time passed in), shared by all shards of one engine.
//!
//! Why not the per-day counter of [`crate::rate`]: it resets at 00:00 UTC, so a tenant could
//! send a full day's cap just before midnight and another just after, twice the cap within
//! minutes. The cap is small and only new tenants have one, so the window is exact: each
//! capped tenant keeps the admission times of its last `messages_max` messages (at most
//! `NEW_TENANT_CAP_MESSAGES_MAX` × 8 bytes), and a message is admitted when fewer than
//! `messages_max` of them are younger than the window. The refusal can then say when the next
//! slot opens (the oldest admission plus the window).
//!
//! Like the rate limits, the cap is per engine; a tenant sending through N engines could send
//! N times the cap, unless the control plane divides it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::error::PolicyDenial;
use crate::snapshot::NewTenantCap;

/// Lock stripes: shards contend only when their tenants share a stripe.
pub const NEW_TENANT_STRIPES: usize = 16;

/// One stripe: tenant id -> admission times (Unix ms, oldest first).
type Windows = HashMap<String, VecDeque<u64>>;

/// Admission times (Unix ms, oldest first) of each capped tenant's recent messages.
#[derive(Debug)]
pub struct NewTenantWindows {
    /// At most one entry per tenant of the current snapshot (see [`NewTenantWindows::retain`]);
    /// each deque holds at most its cap's `messages_max` times.
    stripes: Vec<Mutex<Windows>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for NewTenantWindows {
    fn default() -> Self {
        NewTenantWindows::new()
    }
}

/// A checked admission, holding the tenant's stripe: [`Admission::take`] records the message
/// (after every other check passed), dropping it records nothing.
pub struct Admission<'a> {
    guard: Option<(MutexGuard<'a, Windows>, &'a str)>,
    now_unix_ms: u64,
}

impl Admission<'_> {
    /// An admission that records nothing (no cap applies).
    pub fn free() -> Admission<'static> {
        Admission {
            guard: None,
            now_unix_ms: 0,
        }
    }

    /// Records the admitted message in the tenant's window.
    pub fn take(self) {
        if let Some((mut map, tenant)) = self.guard {
            map.entry(tenant.to_owned())
                .or_default()
                .push_back(self.now_unix_ms);
        }
    }
}

impl NewTenantWindows {
    pub fn new() -> NewTenantWindows {
        NewTenantWindows {
            stripes: (0..NEW_TENANT_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: Default::default(),
        }
    }

    /// Checks one message of `tenant` under `cap` at `now_unix_ms`. On success the returned
    /// [`Admission`] keeps the tenant's stripe locked until it is taken or dropped, so two
    /// shards cannot both take the last slot. A cap that no longer applies admits freely.
    pub fn check<'a>(
        &'a self,
        tenant: &'a str,
        cap: &NewTenantCap,
        now_unix_ms: u64,
    ) -> Result<Admission<'a>, PolicyDenial> {
        if !cap.applies(now_unix_ms) {
            return Ok(Admission::free());
        }
        let mut map = self.stripe(tenant);
        let max = usize::try_from(cap.messages_max).unwrap_or(usize::MAX);
        if let Some(times) = map.get_mut(tenant) {
            let window_start = now_unix_ms.saturating_sub(cap.window_ms);
            while times.front().is_some_and(|&t| t <= window_start) {
                times.pop_front();
            }
            // A lowered cap: keep only the newest `max` (the others cannot matter any more).
            while times.len() > max {
                times.pop_front();
            }
            if times.len() >= max {
                let next_ms = times
                    .front()
                    .map_or(now_unix_ms, |&t| t.saturating_add(cap.window_ms));
                return Err(cap_denial(tenant, cap, next_ms, now_unix_ms));
            }
        }
        Ok(Admission {
            guard: Some((map, tenant)),
            now_unix_ms,
        })
    }

    /// Forgets tenants that have no cap in the current snapshot.
    pub fn retain(&self, capped: &HashSet<&str>) {
        for stripe in &self.stripes {
            lock(stripe).retain(|t, _| capped.contains(t.as_str()));
        }
    }

    /// Tenants holding state (tests, metrics).
    pub fn len(&self) -> usize {
        self.stripes.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn stripe(&self, tenant: &str) -> MutexGuard<'_, Windows> {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(tenant) % NEW_TENANT_STRIPES as u64) as usize;
        lock(&self.stripes[i])
    }
}

/// The refusal of a spent cap whose next slot opens at `next_ms` (also the cluster quotas').
pub(crate) fn cap_denial(
    tenant: &str,
    cap: &NewTenantCap,
    next_ms: u64,
    now_unix_ms: u64,
) -> PolicyDenial {
    PolicyDenial::NewTenantCap {
        tenant: tenant.to_owned(),
        messages_max: cap.messages_max,
        window_hours: cap.window_ms.div_ceil(HOUR_MS),
        next_in_minutes: next_ms.saturating_sub(now_unix_ms).div_ceil(MINUTE_MS),
        cap_ends_in_hours: cap
            .until_unix_ms
            .saturating_sub(now_unix_ms)
            .div_ceil(HOUR_MS),
    }
}

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// A poisoned stripe only means another thread panicked while pushing a timestamp.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn cap(max: u32, until: u64) -> NewTenantCap {
        NewTenantCap {
            messages_max: max,
            window_ms: DAY,
            until_unix_ms: until,
        }
    }

    #[test]
    fn the_eleventh_message_in_24_hours_is_refused_and_told_when_to_retry() {
        let w = NewTenantWindows::new();
        let c = cap(10, 100 * DAY);
        let t0 = 10 * DAY;
        for i in 0..10 {
            w.check("t", &c, t0 + i * 60_000).unwrap().take();
        }
        let err = w.check("t", &c, t0 + 3_600_000).err().unwrap();
        let (code, enhanced, text) = err.reply();
        assert_eq!((code, enhanced), (451, (4, 7, 1)));
        assert!(text.contains("10 messages per 24 hours"), "{text}");
        // The first slot opens 24 h after the first message: 23 h from now.
        assert!(text.contains("next in 1380 min"), "{text}");
        // Still refused a millisecond before the first admission leaves the window.
        assert!(w.check("t", &c, t0 + DAY - 1).is_err());
        // Then exactly one slot.
        w.check("t", &c, t0 + DAY).unwrap().take();
        assert!(w.check("t", &c, t0 + DAY).is_err());
    }

    #[test]
    fn midnight_does_not_reset_the_window() {
        let w = NewTenantWindows::new();
        let c = cap(3, u64::MAX);
        let midnight = 20_000 * DAY;
        for i in 0..3 {
            w.check("t", &c, midnight - 10 + i).unwrap().take();
        }
        assert!(w.check("t", &c, midnight + 5).is_err());
    }

    #[test]
    fn a_dropped_admission_charges_nothing_and_an_ended_cap_admits() {
        let w = NewTenantWindows::new();
        let c = cap(1, 5 * DAY);
        drop(w.check("t", &c, DAY).unwrap());
        w.check("t", &c, DAY).unwrap().take();
        assert!(w.check("t", &c, DAY).is_err());
        // The probation ends: no more cap, even with a full window.
        for _ in 0..5 {
            w.check("t", &c, 5 * DAY).unwrap().take();
        }
        w.retain(&HashSet::new());
        assert!(w.is_empty());
    }

    #[test]
    fn concurrent_shards_never_overdraw() {
        let w = std::sync::Arc::new(NewTenantWindows::new());
        let admitted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (w, admitted) = (w.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        if let Ok(a) = w.check("t", &cap(10, u64::MAX), 7) {
                            a.take();
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 10);
    }
}
