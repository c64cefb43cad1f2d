//! When to order a certificate, and when to look again: pure decisions on the certificate in
//! use, the clock and the failures so far.
//!
//! A certificate is renewed once fewer than `acme.renew_before_days` remain, or a third of its
//! lifetime for certificates shorter than three times that (Let's Encrypt's 6-day
//! certificates renew after 4 days, its 90-day ones with 30 left). The engine looks again at
//! that moment, and at least every [`ACME_CHECK_INTERVAL_SECS`] (a clock change, a certificate
//! replaced by hand). A failed order is tried again after [`ACME_RETRY_INITIAL_SECS`], doubling
//! up to [`ACME_RETRY_MAX_SECS`]: a CA's limits on failed validations (Let's Encrypt: 5 per
//! hour per name) are never met by retries alone.

use crate::tls_cert::Validity;

/// The longest wait between two looks at the certificate.
pub const ACME_CHECK_INTERVAL_SECS: u64 = 12 * 3_600;
/// The wait after a first failed order.
pub const ACME_RETRY_INITIAL_SECS: u64 = 60;
/// The longest wait after failed orders.
pub const ACME_RETRY_MAX_SECS: u64 = 6 * 3_600;
const SECS_PER_DAY: i64 = 86_400;

/// The certificate ACME keeps, as found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Current {
    /// None yet, or one that does not load.
    Missing,
    /// One that does not name every configured domain (the list changed).
    OtherNames(Validity),
    Covers(Validity),
}

/// How long before `notAfter` a certificate is renewed: `renew_before_days`, or a third of its
/// lifetime when that is shorter.
pub fn renew_before_secs(v: &Validity, renew_before_days: u32) -> i64 {
    let lifetime = v.not_after_unix.saturating_sub(v.not_before_unix).max(0);
    (i64::from(renew_before_days) * SECS_PER_DAY).min(lifetime / 3)
}

/// The Unix second from which `v` is renewed.
pub fn renew_at(v: &Validity, renew_before_days: u32) -> i64 {
    if v.not_after_unix <= v.not_before_unix {
        return i64::MIN; // Nonsense dates: replace it now.
    }
    v.not_after_unix
        .saturating_sub(renew_before_secs(v, renew_before_days))
}

/// Whether an order is due now.
pub fn due(current: &Current, now_unix: i64, renew_before_days: u32) -> bool {
    match current {
        Current::Missing | Current::OtherNames(_) => true,
        Current::Covers(v) => now_unix >= renew_at(v, renew_before_days),
    }
}

/// Seconds until the next look when no order is due: until the renewal moment, at most
/// [`ACME_CHECK_INTERVAL_SECS`], at least one.
pub fn wait_secs(current: &Current, now_unix: i64, renew_before_days: u32) -> u64 {
    match current {
        Current::Covers(v) => {
            let left = renew_at(v, renew_before_days).saturating_sub(now_unix);
            u64::try_from(left)
                .unwrap_or(0)
                .clamp(1, ACME_CHECK_INTERVAL_SECS)
        }
        Current::Missing | Current::OtherNames(_) => 1,
    }
}

/// The wait after `failures` failed orders in a row (1 or more).
pub fn retry_secs(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(32);
    ACME_RETRY_INITIAL_SECS
        .saturating_mul(1u64 << doublings)
        .min(ACME_RETRY_MAX_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = SECS_PER_DAY;

    fn v(not_before: i64, days: i64) -> Validity {
        Validity {
            not_before_unix: not_before,
            not_after_unix: not_before + days * DAY,
        }
    }

    #[test]
    fn ninety_day_certificate_renews_with_thirty_days_left() {
        let c = v(0, 90);
        assert_eq!(renew_at(&c, 30), 60 * DAY);
        assert!(!due(&Current::Covers(c), 60 * DAY - 1, 30));
        assert!(due(&Current::Covers(c), 60 * DAY, 30));
        assert_eq!(
            wait_secs(&Current::Covers(c), 0, 30),
            ACME_CHECK_INTERVAL_SECS
        );
        assert_eq!(wait_secs(&Current::Covers(c), 60 * DAY - 5, 30), 5);
    }

    #[test]
    fn short_certificate_renews_after_two_thirds() {
        let c = v(1_000, 6);
        assert_eq!(renew_before_secs(&c, 30), 2 * DAY);
        assert!(!due(&Current::Covers(c), 1_000 + 4 * DAY - 1, 30));
        assert!(due(&Current::Covers(c), 1_000 + 4 * DAY, 30));
        // A 30-second test certificate: renewed after 20 s.
        let t = Validity {
            not_before_unix: 100,
            not_after_unix: 130,
        };
        assert_eq!(renew_at(&t, 30), 120);
        assert_eq!(wait_secs(&Current::Covers(t), 100, 30), 20);
    }

    #[test]
    fn missing_or_renamed_is_due_at_once() {
        assert!(due(&Current::Missing, 0, 30));
        assert!(due(&Current::OtherNames(v(0, 90)), 0, 30));
        assert_eq!(wait_secs(&Current::Missing, 0, 30), 1);
    }

    #[test]
    fn expired_or_odd_validity_is_due() {
        let backwards = Validity {
            not_before_unix: 10,
            not_after_unix: 5,
        };
        assert!(due(&Current::Covers(backwards), 0, 30));
        assert!(due(&Current::Covers(v(0, 90)), 91 * DAY, 30));
    }

    #[test]
    fn retries_double_up_to_the_bound() {
        assert_eq!(retry_secs(1), 60);
        assert_eq!(retry_secs(2), 120);
        assert_eq!(retry_secs(5), 960);
        assert_eq!(retry_secs(20), ACME_RETRY_MAX_SECS);
        assert_eq!(retry_secs(u32::MAX), ACME_RETRY_MAX_SECS);
    }
}
