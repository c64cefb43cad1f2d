//! The policy cache: by domain, the last policy fetched, its `id`, when it was fetched, when it
//! expires (`max_age` after the fetch, RFC 8461 §3.2) and when to refresh it.
//!
//! Pure: time comes in as Unix seconds, so a test can pin every instant. Persistence lives in
//! [`super::store`]; this module only marks itself dirty when something worth saving changed.
//!
//! Refresh (RFC 8461 §3.3, "MTAs SHOULD proactively refresh cached policies before they
//! expire; a suggested refresh frequency is once per day"): an entry is due at
//! `fetched_at + min(MTA_STS_REFRESH_INTERVAL_SECS, max_age / 2)`, so a year-long policy is
//! refreshed daily and a one-hour policy after half an hour. A failed attempt (no TXT record,
//! fetch failure) pushes the next attempt back by [`MTA_STS_FETCH_RETRY_SECS`] and keeps the
//! cached policy until it expires.

use std::collections::HashMap;
use std::sync::Arc;

use super::fetch::StsFetchFailure;
use super::policy::{Policy, MTA_STS_MAX_AGE_SECS_MAX};

/// Default and upper bound of the cached domains (`MtaStsConfig::cache_entries_max`).
pub const MTA_STS_CACHE_ENTRIES_MAX: usize = 100_000;
/// Longest interval between proactive refreshes (RFC 8461 §3.3 suggests once per day).
pub const MTA_STS_REFRESH_INTERVAL_SECS: u64 = 86_400;
/// After a failed fetch for one policy `id`, wait this long before fetching it again (RFC 8461
/// §3.3: "limit further attempts to a period of five minutes or longer per version ID").
pub const MTA_STS_FETCH_RETRY_SECS: u64 = 300;
/// When the cache is full after dropping expired entries, the entries closest to expiry are
/// evicted until it is at most this percentage full, so the O(n) sweep runs rarely.
const EVICT_TO_PERCENT: usize = 90;

/// One cached policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPolicy {
    pub policy: Arc<Policy>,
    /// The TXT record `id` the policy was fetched under.
    pub id: String,
    /// Unix seconds of the fetch.
    pub fetched_at: u64,
    /// Unix seconds after which the policy must not be used: `fetched_at + max_age`, with
    /// `max_age` capped at [`MTA_STS_MAX_AGE_SECS_MAX`].
    pub expires_at: u64,
    /// Unix seconds from which a proactive refresh is due; `fetched_at <= refresh_at`.
    pub refresh_at: u64,
}

impl CachedPolicy {
    /// A policy fetched at `now` under `id`.
    pub fn new(id: String, policy: Arc<Policy>, now: u64) -> CachedPolicy {
        let max_age = u64::from(policy.max_age_secs.min(MTA_STS_MAX_AGE_SECS_MAX));
        CachedPolicy {
            refresh_at: now + MTA_STS_REFRESH_INTERVAL_SECS.min(max_age / 2),
            expires_at: now + max_age,
            fetched_at: now,
            policy,
            id,
        }
    }

    /// Usable at `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.expires_at
    }
}

/// A failed fetch: the `id` it was for and when another attempt is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    id: String,
    retry_at: u64,
    /// Why, for TLS-RPT (`None` for failures that say nothing of the policy host).
    kind: Option<StsFetchFailure>,
}

/// Domain -> policy, at most `entries_max` entries (and as many remembered failures).
#[derive(Debug)]
pub struct PolicyCache {
    /// Lowercase domain without trailing dot -> policy. Invariant: `len() <= entries_max`.
    map: HashMap<String, CachedPolicy>,
    /// Recent fetch failures by domain, not persisted. Invariant: `len() <= entries_max`.
    failures: HashMap<String, Failure>,
    /// 1..=[`MTA_STS_CACHE_ENTRIES_MAX`].
    entries_max: usize,
    /// Whether `map` changed since the last [`PolicyCache::take_dirty`].
    dirty: bool,
}

impl PolicyCache {
    /// An empty cache; `entries_max` is clamped to 1..=[`MTA_STS_CACHE_ENTRIES_MAX`].
    pub fn new(entries_max: usize) -> PolicyCache {
        PolicyCache {
            map: HashMap::new(),
            failures: HashMap::new(),
            entries_max: entries_max.clamp(1, MTA_STS_CACHE_ENTRIES_MAX),
            dirty: false,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The fresh policy of `domain`; an expired one is dropped (RFC 8461 §5: only a
    /// non-expired policy applies).
    pub fn get(&mut self, domain: &str, now: u64) -> Option<CachedPolicy> {
        let entry = self.map.get(domain)?;
        if entry.is_fresh(now) {
            return Some(entry.clone());
        }
        self.map.remove(domain);
        self.dirty = true;
        None
    }

    /// Stores a policy just fetched under `id` and forgets any failure for the domain. A
    /// policy with `max_age` 0 is not kept (it is already expired).
    pub fn insert(&mut self, domain: &str, id: &str, policy: Arc<Policy>, now: u64) {
        self.failures.remove(domain);
        self.put(domain, CachedPolicy::new(id.to_string(), policy, now), now);
    }

    /// Stores an entry as it is (loading from disk); expired entries are skipped.
    pub fn restore(&mut self, domain: &str, entry: CachedPolicy, now: u64) {
        self.put(domain, entry, now);
    }

    fn put(&mut self, domain: &str, entry: CachedPolicy, now: u64) {
        if !entry.is_fresh(now) {
            if self.map.remove(domain).is_some() {
                self.dirty = true;
            }
            return;
        }
        if self.map.len() >= self.entries_max && !self.map.contains_key(domain) {
            self.make_room(now);
        }
        self.map.insert(domain.to_string(), entry);
        self.dirty = true;
    }

    /// Records a failed fetch of `id`: no new attempt for [`MTA_STS_FETCH_RETRY_SECS`], and a
    /// cached policy's next refresh is pushed back as long.
    pub fn note_failure(
        &mut self,
        domain: &str,
        id: &str,
        now: u64,
        kind: Option<StsFetchFailure>,
    ) {
        let retry_at = now + MTA_STS_FETCH_RETRY_SECS;
        if let Some(entry) = self.map.get_mut(domain) {
            entry.refresh_at = entry.refresh_at.max(retry_at);
        }
        if self.failures.len() >= self.entries_max && !self.failures.contains_key(domain) {
            self.failures.retain(|_, f| now < f.retry_at);
            if self.failures.len() >= self.entries_max {
                return; // every failure is recent: not remembering one more only costs a fetch
            }
        }
        let failure = Failure {
            id: id.to_string(),
            retry_at,
            kind,
        };
        self.failures.insert(domain.to_string(), failure);
    }

    /// Pushes a cached policy's next refresh back after a refresh found no usable TXT record.
    pub fn postpone_refresh(&mut self, domain: &str, now: u64) {
        if let Some(entry) = self.map.get_mut(domain) {
            entry.refresh_at = entry.refresh_at.max(now + MTA_STS_FETCH_RETRY_SECS);
        }
    }

    /// Whether fetching `id` for `domain` failed less than [`MTA_STS_FETCH_RETRY_SECS`] ago.
    /// Why the last fetch for `domain` failed, while that failure is recent (until its retry;
    /// TLS-RPT reports sessions made meanwhile without the policy under it).
    pub fn recent_failure(&self, domain: &str, now: u64) -> Option<StsFetchFailure> {
        self.failures
            .get(domain)
            .filter(|f| now < f.retry_at)
            .and_then(|f| f.kind)
    }

    pub fn fetch_recently_failed(&self, domain: &str, id: &str, now: u64) -> bool {
        self.failures
            .get(domain)
            .is_some_and(|f| f.id == id && now < f.retry_at)
    }

    /// Up to `limit` domains whose fresh policy is due for a proactive refresh, soonest expiry
    /// first.
    pub fn due_for_refresh(&self, now: u64, limit: usize) -> Vec<String> {
        let mut due: Vec<(&String, u64)> = self
            .map
            .iter()
            .filter(|(_, e)| e.is_fresh(now) && now >= e.refresh_at)
            .map(|(d, e)| (d, e.expires_at))
            .collect();
        due.sort_by_key(|(_, expires)| *expires);
        due.into_iter()
            .take(limit)
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Every entry, for saving.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &CachedPolicy)> {
        self.map.iter()
    }

    /// True once after each change to the stored policies.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the cache changed (a write failed: try again).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn make_room(&mut self, now: u64) {
        self.map.retain(|_, e| e.is_fresh(now));
        let target = (self.entries_max * EVICT_TO_PERCENT / 100).min(self.entries_max - 1);
        if self.map.len() > target {
            let mut by_expiry: Vec<(u64, String)> = self
                .map
                .iter()
                .map(|(d, e)| (e.expires_at, d.clone()))
                .collect();
            by_expiry.sort_unstable();
            let excess = self.map.len() - target;
            for (_, domain) in by_expiry.into_iter().take(excess) {
                self.map.remove(&domain);
            }
        }
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_age_secs: u32) -> Arc<Policy> {
        let text =
            format!("version: STSv1\nmode: enforce\nmx: mx.a.test\nmax_age: {max_age_secs}\n");
        Arc::new(Policy::parse(text.as_bytes()).unwrap())
    }

    #[test]
    fn expiry_and_refresh_times() {
        let mut c = PolicyCache::new(10);
        c.insert("a.test", "id1", policy(3600), 1000);
        let e = c.get("a.test", 1000).unwrap();
        assert_eq!(
            (e.fetched_at, e.refresh_at, e.expires_at),
            (1000, 2800, 4600)
        );
        assert!(c.due_for_refresh(2799, 10).is_empty());
        assert_eq!(c.due_for_refresh(2800, 10), ["a.test"]);
        assert!(c.get("a.test", 4599).is_some());
        assert!(c.get("a.test", 4600).is_none(), "expired at max_age");
        assert_eq!(c.len(), 0, "an expired entry is dropped");
        // A year-long policy refreshes daily.
        c.insert("b.test", "id", policy(MTA_STS_MAX_AGE_SECS_MAX), 0);
        assert_eq!(
            c.get("b.test", 0).unwrap().refresh_at,
            MTA_STS_REFRESH_INTERVAL_SECS
        );
    }

    #[test]
    fn max_age_zero_is_not_kept() {
        let mut c = PolicyCache::new(10);
        c.insert("a.test", "id1", policy(0), 1000);
        assert!(c.get("a.test", 1000).is_none());
    }

    #[test]
    fn failures_rate_limit_per_id_and_postpone_refresh() {
        let mut c = PolicyCache::new(10);
        c.insert("a.test", "id1", policy(3600), 0);
        c.note_failure("a.test", "id2", 2000, Some(StsFetchFailure::Invalid));
        assert_eq!(
            c.recent_failure("a.test", 2000),
            Some(StsFetchFailure::Invalid)
        );
        assert_eq!(
            c.recent_failure("a.test", 2000 + MTA_STS_FETCH_RETRY_SECS),
            None
        );
        assert!(c.fetch_recently_failed("a.test", "id2", 2000 + MTA_STS_FETCH_RETRY_SECS - 1));
        assert!(!c.fetch_recently_failed("a.test", "id2", 2000 + MTA_STS_FETCH_RETRY_SECS));
        assert!(
            !c.fetch_recently_failed("a.test", "id3", 2000),
            "another id is fetched"
        );
        assert_eq!(c.get("a.test", 2000).unwrap().refresh_at, 2300);
        c.insert("a.test", "id2", policy(3600), 2400);
        assert!(
            !c.fetch_recently_failed("a.test", "id2", 2400),
            "a success clears it"
        );
    }

    #[test]
    fn bounded_evicting_soonest_expiry() {
        let mut c = PolicyCache::new(10);
        for i in 0..10u32 {
            c.insert(&format!("d{i}.test"), "id", policy(1000 + i), 0);
        }
        assert_eq!(c.len(), 10);
        c.insert("new.test", "id", policy(5000), 0);
        assert!(c.len() <= 10);
        assert!(c.get("new.test", 0).is_some());
        assert!(c.get("d9.test", 0).is_some(), "the longest-lived survive");
        assert!(
            c.get("d0.test", 0).is_none(),
            "the soonest to expire go first"
        );
        // Expired entries go before live ones.
        let mut c = PolicyCache::new(2);
        c.insert("old.test", "id", policy(10), 0);
        c.insert("live.test", "id", policy(1000), 0);
        c.insert("next.test", "id", policy(1000), 20);
        assert!(c.get("live.test", 20).is_some());
        assert!(c.get("next.test", 20).is_some());
    }

    #[test]
    fn dirty_tracks_changes() {
        let mut c = PolicyCache::new(10);
        assert!(!c.take_dirty());
        c.insert("a.test", "id", policy(10), 0);
        assert!(c.take_dirty());
        assert!(!c.take_dirty());
        let _ = c.get("a.test", 5);
        assert!(!c.take_dirty(), "a read changes nothing");
        let _ = c.get("a.test", 10);
        assert!(c.take_dirty(), "dropping an expired entry does");
    }
}
