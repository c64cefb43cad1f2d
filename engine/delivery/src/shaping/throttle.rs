//! One site's automatic response in force: what the throttle rules decided, until it expires.
//!
//! Pure state, no clock: every call takes `now_unix_ms`. Nothing needs clearing; an action simply
//! stops counting once its time has passed, and expired entries are forgotten when room is
//! needed ([`SiteThrottle::forget_expired`] does it on demand).
//!
//! Overlapping actions: a longer action extends one in force and a shorter one never shortens
//! it. Two narrowings with different caps are both kept (up to [`THROTTLE_NARROWS_MAX`]), and the
//! tightest cap in force applies, so a short tight one and a long loose one each last as long as
//! they said.

use super::{ThrottleAction, ThrottleKind, ThrottleScope};

/// Tenants with a suspension of their own at one site, at most. Past it, expired entries are
/// forgotten first; if none has expired, the one that ends soonest is forgotten (that tenant's
/// next throttling reply suspends it again).
pub const THROTTLE_TENANTS_MAX: usize = 256;

/// Distinct narrowing caps in force at one site, at most. Past it (rules of many caps all firing
/// within one duration) the new one is merged into the tightest, which then lasts until the
/// later of the two ends: stricter, never looser.
pub const THROTTLE_NARROWS_MAX: usize = 8;

/// The automatic response of one site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteThrottle {
    /// The whole site is suspended until this time (unix ms); 0: never was.
    site_until_ms: u64,
    /// (tenant, suspended until unix ms); `None` is mail without a tenant. At most
    /// [`THROTTLE_TENANTS_MAX`] entries, each tenant once.
    tenants: Vec<(Option<Box<str>>, u64)>,
    /// (connections cap, until unix ms); at most [`THROTTLE_NARROWS_MAX`], each cap once.
    narrows: Vec<(u32, u64)>,
}

impl SiteThrottle {
    /// Records `action`, taken on a reply to `tenant`'s mail (`None`: mail without a tenant).
    pub fn apply(&mut self, action: &ThrottleAction, tenant: Option<&str>, now_unix_ms: u64) {
        let until = now_unix_ms.saturating_add(action.duration_ms);
        match (action.kind, action.scope) {
            (ThrottleKind::Suspend, ThrottleScope::Site) => {
                self.site_until_ms = self.site_until_ms.max(until);
            }
            (ThrottleKind::Suspend, ThrottleScope::Tenant) => {
                self.suspend_tenant(tenant, until, now_unix_ms);
            }
            // The file refuses a tenant-scoped narrowing; a site's connections are shared.
            (ThrottleKind::Narrow { connections_max }, _) => {
                self.narrow(connections_max.max(1), until, now_unix_ms);
            }
        }
    }

    /// Until when (unix ms) `tenant`'s mail at this site waits, if it does now: the later of the
    /// site's and the tenant's own suspension.
    pub fn suspended_until(&self, tenant: Option<&str>, now_unix_ms: u64) -> Option<u64> {
        let own = self
            .tenants
            .iter()
            .find(|(t, _)| t.as_deref() == tenant)
            .map_or(0, |(_, until)| *until);
        let until = self.site_until_ms.max(own);
        (until > now_unix_ms).then_some(until)
    }

    /// Until when (unix ms) the whole site waits, if it does now (a site-scope suspension).
    pub fn site_suspended_until(&self, now_unix_ms: u64) -> Option<u64> {
        (self.site_until_ms > now_unix_ms).then_some(self.site_until_ms)
    }

    /// The site's connection cap in force now, if any (the tightest narrowing not yet expired).
    /// The caller takes the lower of it and the site's `connections_max`.
    pub fn connections_cap(&self, now_unix_ms: u64) -> Option<u32> {
        self.narrows
            .iter()
            .filter(|(_, until)| *until > now_unix_ms)
            .map(|(cap, _)| *cap)
            .min()
    }

    /// When nothing is in force any more (the caller may drop this state).
    pub fn is_idle(&self, now_unix_ms: u64) -> bool {
        self.site_until_ms <= now_unix_ms
            && self.tenants.iter().all(|(_, until)| *until <= now_unix_ms)
            && self.narrows.iter().all(|(_, until)| *until <= now_unix_ms)
    }

    /// Forgets every entry that has expired.
    pub fn forget_expired(&mut self, now_unix_ms: u64) {
        self.tenants.retain(|(_, until)| *until > now_unix_ms);
        self.narrows.retain(|(_, until)| *until > now_unix_ms);
    }

    /// Tenants with a suspension entry (expired ones included until forgotten).
    pub fn tenant_entries(&self) -> usize {
        self.tenants.len()
    }

    fn suspend_tenant(&mut self, tenant: Option<&str>, until: u64, now_unix_ms: u64) {
        if let Some((_, u)) = self
            .tenants
            .iter_mut()
            .find(|(t, _)| t.as_deref() == tenant)
        {
            *u = (*u).max(until);
            return;
        }
        if self.tenants.len() >= THROTTLE_TENANTS_MAX {
            self.tenants.retain(|(_, u)| *u > now_unix_ms);
        }
        if self.tenants.len() >= THROTTLE_TENANTS_MAX {
            if let Some(i) = (0..self.tenants.len()).min_by_key(|i| self.tenants[*i].1) {
                self.tenants.swap_remove(i);
            }
        }
        self.tenants.push((tenant.map(Into::into), until));
    }

    fn narrow(&mut self, cap: u32, until: u64, now_unix_ms: u64) {
        if let Some((_, u)) = self.narrows.iter_mut().find(|(c, _)| *c == cap) {
            *u = (*u).max(until);
            return;
        }
        if self.narrows.len() >= THROTTLE_NARROWS_MAX {
            self.narrows.retain(|(_, u)| *u > now_unix_ms);
        }
        if self.narrows.len() >= THROTTLE_NARROWS_MAX {
            if let Some(tightest) = self.narrows.iter_mut().min_by_key(|(c, _)| *c) {
                tightest.0 = tightest.0.min(cap);
                tightest.1 = tightest.1.max(until);
            }
            return;
        }
        self.narrows.push((cap, until));
    }
}

#[cfg(test)]
mod tests {
    use super::super::RuleId;
    use super::*;

    const MIN: u64 = 60_000;
    const T0: u64 = 1_765_000_000_000;

    fn action(kind: ThrottleKind, scope: ThrottleScope, minutes: u64) -> ThrottleAction {
        ThrottleAction {
            kind,
            duration_ms: minutes * MIN,
            scope,
            rule: RuleId(0),
        }
    }

    fn suspend(minutes: u64) -> ThrottleAction {
        action(ThrottleKind::Suspend, ThrottleScope::Site, minutes)
    }

    fn suspend_tenant(minutes: u64) -> ThrottleAction {
        action(ThrottleKind::Suspend, ThrottleScope::Tenant, minutes)
    }

    fn narrow(cap: u32, minutes: u64) -> ThrottleAction {
        action(
            ThrottleKind::Narrow {
                connections_max: cap,
            },
            ThrottleScope::Site,
            minutes,
        )
    }

    #[test]
    fn a_site_suspension_holds_every_tenant_then_expires() {
        let mut s = SiteThrottle::default();
        assert_eq!(s.suspended_until(None, T0), None);
        s.apply(&suspend(30), Some("t1"), T0);
        let end = T0 + 30 * MIN;
        assert_eq!(s.suspended_until(Some("t1"), T0), Some(end));
        assert_eq!(s.suspended_until(Some("t2"), T0 + 29 * MIN), Some(end));
        assert_eq!(s.suspended_until(None, T0), Some(end));
        assert_eq!(s.suspended_until(Some("t1"), end), None, "over at its end");
        assert!(s.is_idle(end));
        assert!(!s.is_idle(end - 1));
    }

    #[test]
    fn a_longer_action_extends_and_a_shorter_one_never_shortens() {
        let mut s = SiteThrottle::default();
        s.apply(&suspend(60), None, T0);
        s.apply(&suspend(10), None, T0 + 5 * MIN);
        assert_eq!(s.suspended_until(None, T0), Some(T0 + 60 * MIN));
        s.apply(&suspend(60), None, T0 + 30 * MIN);
        assert_eq!(s.suspended_until(None, T0), Some(T0 + 90 * MIN));

        s.apply(&suspend_tenant(120), Some("a"), T0);
        s.apply(&suspend_tenant(5), Some("a"), T0 + MIN);
        assert_eq!(s.suspended_until(Some("a"), T0), Some(T0 + 120 * MIN));
    }

    #[test]
    fn a_tenant_suspension_holds_only_that_tenant() {
        let mut s = SiteThrottle::default();
        s.apply(&suspend_tenant(30), Some("acme"), T0);
        assert_eq!(
            s.suspended_until(Some("acme"), T0 + MIN),
            Some(T0 + 30 * MIN)
        );
        assert_eq!(s.suspended_until(Some("other"), T0 + MIN), None);
        assert_eq!(s.suspended_until(None, T0 + MIN), None);
        // Mail without a tenant is a tenant of its own.
        s.apply(&suspend_tenant(10), None, T0);
        assert_eq!(s.suspended_until(None, T0), Some(T0 + 10 * MIN));
        assert_eq!(s.suspended_until(Some("other"), T0), None);
        // A site suspension on top covers everyone; the tenant's longer one still holds after.
        s.apply(&suspend(5), Some("x"), T0);
        assert_eq!(s.suspended_until(Some("other"), T0), Some(T0 + 5 * MIN));
        assert_eq!(
            s.suspended_until(Some("acme"), T0 + 6 * MIN),
            Some(T0 + 30 * MIN)
        );
        assert_eq!(s.connections_cap(T0), None, "a suspension is not a cap");
    }

    #[test]
    fn the_tightest_narrowing_in_force_applies_each_for_its_own_time() {
        let mut s = SiteThrottle::default();
        s.apply(&narrow(2, 60), None, T0);
        s.apply(&narrow(1, 10), None, T0);
        assert_eq!(s.connections_cap(T0), Some(1));
        assert_eq!(s.connections_cap(T0 + 10 * MIN - 1), Some(1));
        assert_eq!(
            s.connections_cap(T0 + 10 * MIN),
            Some(2),
            "the loose one outlasts"
        );
        assert_eq!(s.connections_cap(T0 + 60 * MIN), None);
        // Same cap again: extends, never shortens.
        s.apply(&narrow(2, 60), None, T0 + 30 * MIN);
        s.apply(&narrow(2, 1), None, T0 + 31 * MIN);
        assert_eq!(s.connections_cap(T0 + 89 * MIN), Some(2));
        assert_eq!(
            s.suspended_until(None, T0),
            None,
            "a narrowing is not a suspension"
        );
    }

    #[test]
    fn narrowings_are_bounded_and_merge_into_the_tightest() {
        let mut s = SiteThrottle::default();
        for cap in 1..=THROTTLE_NARROWS_MAX as u32 {
            s.apply(&narrow(cap + 1, 10), None, T0);
        }
        s.apply(&narrow(100, 120), None, T0 + MIN);
        assert_eq!(s.narrows.len(), THROTTLE_NARROWS_MAX);
        // Merged into cap 2, which now lasts 121 minutes: stricter, never looser.
        assert_eq!(s.connections_cap(T0 + 100 * MIN), Some(2));
        // Once the others expired, a new cap takes a place of its own.
        s.apply(&narrow(50, 10), None, T0 + 20 * MIN);
        assert!(s.narrows.len() <= THROTTLE_NARROWS_MAX);
        assert_eq!(s.connections_cap(T0 + 25 * MIN), Some(2));
    }

    #[test]
    fn tenant_entries_are_bounded_forgetting_expired_ones_first() {
        let mut s = SiteThrottle::default();
        // One long suspension, then a full table of short ones.
        s.apply(&suspend_tenant(600), Some("long"), T0);
        for i in 1..THROTTLE_TENANTS_MAX {
            s.apply(&suspend_tenant(10), Some(&format!("t{i}")), T0);
        }
        assert_eq!(s.tenant_entries(), THROTTLE_TENANTS_MAX);
        // After the short ones expired, a new tenant makes room by forgetting them.
        s.apply(&suspend_tenant(10), Some("new"), T0 + 20 * MIN);
        assert_eq!(s.tenant_entries(), 2);
        assert!(s.suspended_until(Some("long"), T0 + 20 * MIN).is_some());
        assert!(s.suspended_until(Some("new"), T0 + 20 * MIN).is_some());

        // Full and nothing expired: the one ending soonest goes, the long one stays.
        let mut s = SiteThrottle::default();
        s.apply(&suspend_tenant(600), Some("long"), T0);
        for i in 1..THROTTLE_TENANTS_MAX {
            s.apply(&suspend_tenant(10 + i as u64), Some(&format!("t{i}")), T0);
        }
        s.apply(&suspend_tenant(30), Some("late"), T0 + MIN);
        assert_eq!(s.tenant_entries(), THROTTLE_TENANTS_MAX);
        assert_eq!(
            s.suspended_until(Some("t1"), T0),
            None,
            "ended soonest: forgotten"
        );
        assert!(s.suspended_until(Some("long"), T0 + MIN).is_some());
        assert!(s.suspended_until(Some("late"), T0 + MIN).is_some());
    }

    #[test]
    fn forget_expired_drops_only_what_is_over() {
        let mut s = SiteThrottle::default();
        s.apply(&suspend_tenant(10), Some("a"), T0);
        s.apply(&suspend_tenant(30), Some("b"), T0);
        s.apply(&narrow(1, 10), None, T0);
        s.forget_expired(T0 + 15 * MIN);
        assert_eq!(s.tenant_entries(), 1);
        assert_eq!(s.connections_cap(T0 + 15 * MIN), None);
        assert!(!s.is_idle(T0 + 15 * MIN));
        assert!(s.is_idle(T0 + 30 * MIN));
    }
}
