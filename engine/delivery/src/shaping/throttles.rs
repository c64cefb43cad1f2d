//! The throttle state in force for every site of the engine ([`Throttles`]): one
//! [`SiteThrottle`] per site key (a shaped site's provider and source, else the site's own key),
//! shared by all shards, so a receiver's "slow down" holds the engine back, not one shard, and
//! outlives the shard's site that heard it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use super::throttle::SiteThrottle;
use super::ThrottleAction;

/// Site keys with throttle state at most; past it, keys with nothing in force are forgotten
/// first, then the new action is not recorded (the next matching reply records it again).
pub const THROTTLED_SITES_MAX: usize = 10_000;

/// Every site's throttle state, engine-wide (`Send + Sync`).
#[derive(Debug, Default)]
pub struct Throttles {
    sites: Mutex<HashMap<String, SiteThrottle>>,
    /// Set once anything was ever recorded: until then every look is one atomic load.
    any: AtomicBool,
}

impl Throttles {
    /// Records `action`, taken on a reply at site `key` to `tenant`'s mail.
    pub fn apply(&self, key: &str, action: &ThrottleAction, tenant: Option<&str>, now_ms: u64) {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        if !sites.contains_key(key) && sites.len() >= THROTTLED_SITES_MAX {
            sites.retain(|_, t| !t.is_idle(now_ms));
            if sites.len() >= THROTTLED_SITES_MAX {
                return;
            }
        }
        let t = sites.entry(key.to_string()).or_default();
        t.forget_expired(now_ms);
        t.apply(action, tenant, now_ms);
        self.any.store(true, Ordering::Release);
    }

    fn with<T>(&self, key: &str, f: impl FnOnce(&SiteThrottle) -> Option<T>) -> Option<T> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        sites.get(key).and_then(f)
    }

    /// Until when `tenant`'s mail at site `key` waits, if it does now.
    pub fn suspended_until(&self, key: &str, tenant: Option<&str>, now_ms: u64) -> Option<u64> {
        self.with(key, |t| t.suspended_until(tenant, now_ms))
    }

    /// Until when the whole site `key` waits, if it does now.
    pub fn site_suspended_until(&self, key: &str, now_ms: u64) -> Option<u64> {
        self.with(key, |t| t.site_suspended_until(now_ms))
    }

    /// The site's narrowed connection cap in force now, if any.
    pub fn connections_cap(&self, key: &str, now_ms: u64) -> Option<u32> {
        self.with(key, |t| t.connections_cap(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::{Shaping, ThrottleKind};

    #[test]
    fn a_site_keys_state_is_shared_and_expires() {
        let shaping = Shaping::parse_operator(
            "t.toml",
            "[[throttle]]\nname = \"s\"\ncode = 421\naction = \"suspend\"\nduration_secs = 10\n",
        )
        .unwrap();
        let action = shaping.throttle(None, 421, None, "busy").unwrap();
        assert_eq!(action.kind, ThrottleKind::Suspend);
        let t = Throttles::default();
        assert_eq!(t.site_suspended_until("k", 0), None, "nothing recorded");
        t.apply("k", &action, None, 1_000);
        assert_eq!(t.site_suspended_until("k", 2_000), Some(11_000));
        assert_eq!(t.suspended_until("k", Some("any"), 2_000), Some(11_000));
        assert_eq!(t.site_suspended_until("other", 2_000), None);
        assert_eq!(t.site_suspended_until("k", 11_000), None, "expired");
    }
}
