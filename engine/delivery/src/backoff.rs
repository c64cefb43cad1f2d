//! Retry schedule: exponential backoff with jitter, and the maximum age of a message.
//!
//! Defaults follow Postfix: the first retry after 5 minutes (`minimal_backoff_time` 300 s), the
//! delay doubling after each failed attempt up to 4000 s (`maximal_backoff_time`, about 67
//! minutes), and a message given up after 5 days (`maximal_queue_lifetime`), at which point the
//! recipient is Expired and a DSN is sent. Jitter (±10 % by default) spreads the retries of
//! recipients that failed together, so a destination coming back is not hit by one burst.

use rand::Rng;

use crate::error::DeliveryError;

/// When to retry a deferred recipient and when to give up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delay after the first failed attempt, in ms (default 300_000 = 5 min).
    pub first_retry_delay_ms: u64,
    /// Cap of the delay, in ms (default 4_000_000 = 4000 s).
    pub retry_delay_ms_max: u64,
    /// Factor applied per further failed attempt (default 2); at least 1.
    pub multiplier: u32,
    /// Jitter, in percent of the delay, applied up or down (default 10; at most 100).
    pub jitter_percent: u32,
    /// Age (since arrival) past which a deferred recipient expires, in ms (default 5 days).
    pub age_max_ms: u64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            first_retry_delay_ms: 300_000,
            retry_delay_ms_max: 4_000_000,
            multiplier: 2,
            jitter_percent: 10,
            age_max_ms: 5 * 24 * 3600 * 1000,
        }
    }
}

/// What to do with a recipient after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this time (unix ms).
    RetryAt(u64),
    /// The message is too old: the recipient is Expired (and a DSN is due).
    Expire,
}

impl RetrySchedule {
    /// Checks the ranges [`RetrySchedule::delay_ms`] relies on.
    pub fn validate(&self) -> Result<(), DeliveryError> {
        if self.multiplier == 0 {
            return Err(DeliveryError::Config("retry multiplier must be at least 1"));
        }
        if self.jitter_percent > 100 {
            return Err(DeliveryError::Config(
                "retry jitter_percent must be at most 100",
            ));
        }
        if self.first_retry_delay_ms > self.retry_delay_ms_max {
            return Err(DeliveryError::Config(
                "first_retry_delay_ms must not exceed retry_delay_ms_max",
            ));
        }
        Ok(())
    }

    /// The delay before the next attempt, without jitter, after `failed_attempts` (>= 1)
    /// failed attempts: `first * multiplier^(failed_attempts - 1)`, capped.
    pub fn base_delay_ms(&self, failed_attempts: u32) -> u64 {
        let mut delay = self.first_retry_delay_ms;
        let steps = failed_attempts.saturating_sub(1);
        for _ in 0..steps {
            delay = delay.saturating_mul(u64::from(self.multiplier));
            if delay >= self.retry_delay_ms_max {
                return self.retry_delay_ms_max;
            }
        }
        delay.min(self.retry_delay_ms_max)
    }

    /// The delay with jitter applied, within `base ± jitter_percent %`, at least 1 ms.
    pub fn delay_ms<R: Rng>(&self, failed_attempts: u32, rng: &mut R) -> u64 {
        let base = self.base_delay_ms(failed_attempts);
        let spread = base.saturating_mul(u64::from(self.jitter_percent.min(100))) / 100;
        if spread == 0 {
            return base.max(1);
        }
        let offset = rng.gen_range(0..=spread.saturating_mul(2));
        (base - spread).saturating_add(offset).max(1)
    }

    /// After a temporary failure at `now_unix_ms` of a message received at `received_unix_ms`,
    /// `failed_attempts` failures so far (including this one): retry or expire.
    pub fn decide<R: Rng>(
        &self,
        received_unix_ms: u64,
        now_unix_ms: u64,
        failed_attempts: u32,
        rng: &mut R,
    ) -> RetryDecision {
        if now_unix_ms.saturating_sub(received_unix_ms) >= self.age_max_ms {
            return RetryDecision::Expire;
        }
        RetryDecision::RetryAt(now_unix_ms.saturating_add(self.delay_ms(failed_attempts, rng)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn defaults_are_postfix_like() {
        let s = RetrySchedule::default();
        assert!(s.validate().is_ok());
        assert_eq!(s.base_delay_ms(1), 300_000);
        assert_eq!(s.base_delay_ms(2), 600_000);
        assert_eq!(s.base_delay_ms(3), 1_200_000);
        assert_eq!(s.base_delay_ms(4), 2_400_000);
        assert_eq!(s.base_delay_ms(5), 4_000_000);
        assert_eq!(s.base_delay_ms(u32::MAX), 4_000_000);
        assert_eq!(s.age_max_ms, 432_000_000);
    }

    #[test]
    fn jitter_stays_within_bounds_and_is_seeded() {
        let s = RetrySchedule::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for attempt in 1..=20 {
            let base = s.base_delay_ms(attempt);
            for _ in 0..100 {
                let d = s.delay_ms(attempt, &mut rng);
                assert!(
                    d >= base - base / 10 && d <= base + base / 10,
                    "{d} vs {base}"
                );
                seen.insert(d);
            }
        }
        assert!(seen.len() > 100, "jitter must vary the delays");
        let a: Vec<u64> = {
            let mut r = StdRng::seed_from_u64(42);
            (1..10).map(|n| s.delay_ms(n, &mut r)).collect()
        };
        let b: Vec<u64> = {
            let mut r = StdRng::seed_from_u64(42);
            (1..10).map(|n| s.delay_ms(n, &mut r)).collect()
        };
        assert_eq!(a, b, "same seed, same schedule");
    }

    #[test]
    fn expires_past_max_age() {
        let s = RetrySchedule {
            jitter_percent: 0,
            ..RetrySchedule::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let received = 1_000_000;
        assert_eq!(
            s.decide(received, received + 10, 1, &mut rng),
            RetryDecision::RetryAt(received + 10 + 300_000)
        );
        assert_eq!(
            s.decide(received, received + s.age_max_ms, 9, &mut rng),
            RetryDecision::Expire
        );
    }

    #[test]
    fn rejects_bad_config() {
        let bad = RetrySchedule {
            multiplier: 0,
            ..RetrySchedule::default()
        };
        assert!(bad.validate().is_err());
        let bad = RetrySchedule {
            first_retry_delay_ms: 10,
            retry_delay_ms_max: 5,
            ..RetrySchedule::default()
        };
        assert!(bad.validate().is_err());
    }
}
