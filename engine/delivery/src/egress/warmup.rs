//! Warm-up: how many messages a new address may send on a given UTC day.
//!
//! Mailbox providers judge a new address by its first weeks: a cold IP that sends a full day's
//! volume at once looks like a compromised host and is throttled or filtered. ESPs therefore
//! ramp a new address's daily volume. The schedules they publish grow by a roughly constant
//! factor per day (SparkPost's and most ESP guides: 200, 500, 1,000, 2,000, 5,000, 10,000,
//! 20,000, 40,000, ...; the usual advice is "start with a few hundred and double"), not by a
//! constant amount: the early days are the ones a provider watches, and a linear ramp from a
//! few hundred to a million would jump by tens of thousands on its second day. So the ramp
//! here is **geometric**: day 1 (the start date) allows `first_day_max`, day `days` allows
//! `full_day_max`, and each day between multiplies by the same factor
//! `(full_day_max / first_day_max)^(1 / (days - 1))`. Without `full_day_max` the ramp doubles
//! each day ([`WARMUP_UNBOUNDED_GROWTH`]) and the address is unlimited from day `days` on.
//!
//! Days are UTC calendar days ([`Day`]): the cap of a day holds from 00:00 to 24:00 UTC, as the
//! daily counters roll over at UTC midnight. Before its start date an address sends nothing:
//! an operator can configure an address ahead of the day its warm-up begins.

use std::fmt;

/// The longest warm-up, in days.
pub const WARMUP_DAYS_MAX: u32 = 365;
/// The daily growth of a ramp without `full_day_max`: doubling, as ESP guides advise.
pub const WARMUP_UNBOUNDED_GROWTH: f64 = 2.0;
/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// A UTC calendar day: days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub u32);

impl Day {
    /// The UTC day of a Unix time in milliseconds.
    pub fn from_unix_ms(unix_ms: u64) -> Day {
        Day(u32::try_from(unix_ms / DAY_MS).unwrap_or(u32::MAX))
    }

    /// Today, by the system clock.
    pub fn today() -> Day {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Day::from_unix_ms(ms)
    }

    /// `YYYY-MM-DD` (UTC); `None` for anything else, or a date before 1970.
    pub fn parse(text: &str) -> Option<Day> {
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |s: &str| -> Option<i64> {
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse().ok())
                .flatten()
        };
        let (y, m, d) = (num(&text[..4])?, num(&text[5..7])?, num(&text[8..])?);
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return None;
        }
        u32::try_from(days_from_civil(y, m, d)).ok().map(Day)
    }

    /// The day after this one.
    pub fn next(self) -> Day {
        Day(self.0.saturating_add(1))
    }
}

impl fmt::Display for Day {
    /// `YYYY-MM-DD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(i64::from(self.0));
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's civil-to-days: days since 1970-01-01 of (year, month 1..=12, day).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A warm-up schedule (see the module docs). Built by [`crate::egress::Egress::build`], which
/// checks `1 <= days <= WARMUP_DAYS_MAX`, `first_day_max >= 1` and
/// `full_day_max >= first_day_max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Warmup {
    /// Day 1 of the ramp.
    pub start: Day,
    /// Days of the ramp; from day `days` on the address sends its full volume.
    pub days: u32,
    /// Messages on day 1.
    pub first_day_max: u64,
    /// Messages per day from day `days` on; `None`: unlimited once the ramp is over.
    pub full_day_max: Option<u64>,
}

impl Warmup {
    /// The most messages the address may send on `today`; `None`: no cap.
    pub fn daily_cap(&self, today: Day) -> Option<u64> {
        if today < self.start {
            return Some(0);
        }
        // Day 1 is the start date.
        let day = u64::from(today.0 - self.start.0) + 1;
        if day >= u64::from(self.days) {
            return self.full_day_max;
        }
        let first = self.first_day_max as f64;
        let growth = match self.full_day_max {
            Some(full) => (full as f64 / first).powf(1.0 / f64::from(self.days - 1)),
            None => WARMUP_UNBOUNDED_GROWTH,
        };
        let cap = (first * growth.powf((day - 1) as f64)).round();
        // An f64 past u64::MAX saturates in the cast; a ramp never goes below its first day.
        let cap = (cap as u64).max(self.first_day_max);
        Some(match self.full_day_max {
            Some(full) => cap.min(full),
            None => cap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> Day {
        Day::parse(s).unwrap()
    }

    #[test]
    fn dates_parse_and_print_in_utc() {
        assert_eq!(day("1970-01-01"), Day(0));
        assert_eq!(day("2026-12-06"), Day(20_793));
        assert_eq!(day("2024-02-29").to_string(), "2024-02-29");
        assert_eq!(
            day("2000-03-01").0 - day("2000-02-28").0,
            2,
            "2000 is a leap year"
        );
        for bad in [
            "2026-13-01",
            "2026-02-29",
            "2026-1-01",
            "26-12-06",
            "2026/12/06",
            "2026-12-6x",
            "+026-12-06",
            "1969-12-31",
            "",
        ] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
        // 2026-12-06T23:59:59.999Z and the next millisecond.
        let midnight = u64::from(day("2026-12-07").0) * DAY_MS;
        assert_eq!(Day::from_unix_ms(midnight - 1), day("2026-12-06"));
        assert_eq!(Day::from_unix_ms(midnight), day("2026-12-07"));
        assert_eq!(day("2026-12-31").next(), day("2027-01-01"));
    }

    /// The worked example of docs/egress.md.
    #[test]
    fn a_bounded_ramp_is_geometric_from_first_to_full() {
        let w = Warmup {
            start: day("2026-12-01"),
            days: 10,
            first_day_max: 500,
            full_day_max: Some(100_000),
        };
        let caps: Vec<u64> = (0..12)
            .map(|i| w.daily_cap(Day(w.start.0 + i)).unwrap())
            .collect();
        assert_eq!(
            caps,
            [
                500, 901, 1_623, 2_924, 5_268, 9_491, 17_100, 30_808, 55_505, 100_000, 100_000,
                100_000
            ]
        );
        // Each day grows by the same factor, 200^(1/9) ≈ 1.80.
        for pair in caps[..10].windows(2) {
            let ratio = pair[1] as f64 / pair[0] as f64;
            assert!((1.79..1.81).contains(&ratio), "{pair:?}");
        }
        assert_eq!(w.daily_cap(day("2026-11-30")), Some(0), "not started yet");
        assert_eq!(w.daily_cap(day("2030-01-01")), Some(100_000));
    }

    #[test]
    fn an_unbounded_ramp_doubles_then_lifts_the_cap() {
        let w = Warmup {
            start: day("2026-12-01"),
            days: 5,
            first_day_max: 1_000,
            full_day_max: None,
        };
        assert_eq!(w.daily_cap(day("2026-12-01")), Some(1_000));
        assert_eq!(w.daily_cap(day("2026-12-02")), Some(2_000));
        assert_eq!(w.daily_cap(day("2026-12-04")), Some(8_000));
        assert_eq!(w.daily_cap(day("2026-12-05")), None, "day 5 of 5: no cap");
        assert_eq!(w.daily_cap(day("2027-06-01")), None);
    }

    #[test]
    fn one_day_and_flat_ramps() {
        let one = Warmup {
            start: day("2026-12-01"),
            days: 1,
            first_day_max: 50,
            full_day_max: Some(80),
        };
        assert_eq!(
            one.daily_cap(day("2026-12-01")),
            Some(80),
            "day 1 is the last"
        );
        let flat = Warmup {
            start: day("2026-12-01"),
            days: 30,
            first_day_max: 700,
            full_day_max: Some(700),
        };
        for i in 0..40 {
            assert_eq!(flat.daily_cap(Day(flat.start.0 + i)), Some(700));
        }
        let huge = Warmup {
            start: day("2026-01-01"),
            days: WARMUP_DAYS_MAX,
            first_day_max: u64::MAX / 2,
            full_day_max: None,
        };
        assert_eq!(
            huge.daily_cap(day("2026-03-01")),
            Some(u64::MAX),
            "saturates"
        );
    }
}
