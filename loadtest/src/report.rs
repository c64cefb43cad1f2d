//! Latency histograms, summaries and process CPU time, shared by the injector and the sink.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram records, in microseconds (one hour); larger values saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A new latency histogram in microseconds (3 significant figures).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

/// Percentiles of one latency distribution, all in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarises a histogram (all zero when it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// One human line: `name  n=.. p50=.. p90=.. p99=.. p99.9=.. max=..`.
    pub fn human(&self, name: &str) -> String {
        format!(
            "  {name:<14} n={:<8} p50={} p90={} p99={} p99.9={} max={}",
            self.count,
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us)
        )
    }
}

/// Formats microseconds as `850µs`, `12.3ms` or `1.20s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// CPU time (user + system) this process has used so far, in seconds, from `/proc/self/stat`.
/// Returns 0.0 where `/proc` is unavailable.
pub fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After ')', index 0 is field 3 (state); utime is field 14 -> index 11, stime index 12.
    // USER_HZ is 100 on Linux for this ABI.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Wall-clock now in microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50_us));
        assert!((989..=991).contains(&s.p99_us));
        assert_eq!(s.max_us, 1000);
        assert_eq!(LatencySummary::from_histogram(&new_histogram()).count, 0);
    }

    #[test]
    fn cpu_time_is_readable() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1 && process_cpu_s() >= 0.0);
    }
}
