//! The engine's suppression set at the scale: loads N entries (default 10 million,
//! 1,000 tenants), then prints the process RSS, bytes per entry, the build time, lookup times
//! (hits, misses, and the RCPT check of a miss, which looks in two lists), one delta's apply
//! time and one overlay merge's time.
//!
//!   cargo run --release -p petrel-policy --example suppression_set [-- ENTRIES]
//!
//! Measure on an idle machine: the numbers are wall-clock.

use std::hint::black_box;
use std::time::Instant;

use petrel_policy::suppression::{
    ChangeOp, SuppressionChange, SuppressionKeyer, SuppressionReason, SuppressionSetBuilder,
    OVERLAY_MERGE_FRACTION_DENOMINATOR,
};

/// Lookups timed per kind.
const LOOKUPS: usize = 2_000_000;
/// Tenants the entries are spread over.
const TENANTS: usize = 1_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn address(i: usize) -> String {
    format!("user{i}@mbox{}.example", i % 5_000)
}

fn tenant(i: usize) -> String {
    format!("ten_{:016x}", i % TENANTS)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let before = rss_mib();
    let t = Instant::now();
    let mut b = SuppressionSetBuilder::new(SuppressionKeyer::random(), 1, n);
    for i in 0..n {
        b.push(&tenant(i), &address(i), SuppressionReason::HardBounce);
    }
    let mut set = b.finish();
    let build = t.elapsed();
    let after = rss_mib();
    println!(
        "entries {n}: built in {:.2} s; RSS {before:.1} -> {after:.1} MiB ({:.2} bytes/entry); \
         set reports {:.2} bytes/entry",
        build.as_secs_f64(),
        (after - before) * 1_048_576.0 / n as f64,
        set.memory_bytes() as f64 / n as f64
    );
    // Probe keys built first, so the loop times the lookup alone (hashing included).
    let step = (n / LOOKUPS).max(1);
    let hits: Vec<(String, String)> = (0..LOOKUPS)
        .map(|k| {
            let i = (k * step * 7919) % n;
            (tenant(i), address(i))
        })
        .collect();
    let misses: Vec<(String, String)> = (0..LOOKUPS)
        .map(|k| (tenant(k), format!("other{k}@mbox{}.example", k % 5_000)))
        .collect();
    let time = |name: &str, probes: &[(String, String)], rcpt: bool| {
        let t = Instant::now();
        let mut found = 0usize;
        for (ten, addr) in probes {
            let hit = if rcpt {
                set.check(ten, addr).is_some()
            } else {
                set.get(ten, addr).is_some()
            };
            found += usize::from(black_box(hit));
        }
        let ns = t.elapsed().as_nanos() as f64 / probes.len() as f64;
        println!(
            "{name}: {ns:.0} ns/lookup ({found} of {} found)",
            probes.len()
        );
    };
    time("get, hit", &hits, false);
    time("get, miss", &misses, false);
    time("check (tenant + operator list), miss", &misses, true);
    let delta: Vec<SuppressionChange> = (0..1_000)
        .map(|k| SuppressionChange {
            seq: 2 + k as u64,
            scope: tenant(k),
            address: if k % 2 == 0 {
                address(k)
            } else {
                format!("new{k}@x.example")
            },
            op: if k % 2 == 0 {
                ChangeOp::Remove
            } else {
                ChangeOp::Add(SuppressionReason::Complaint)
            },
        })
        .collect();
    let t = Instant::now();
    set.apply(&delta);
    println!(
        "apply a delta of 1000 changes: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    // Enough further adds to pass the merge bound: the last apply includes the merge.
    let bound = n / OVERLAY_MERGE_FRACTION_DENOMINATOR;
    let mut seq = 10_000;
    let mut total = std::time::Duration::ZERO;
    let mut slowest = std::time::Duration::ZERO;
    while seq < 10_000 + bound + 2_000 {
        let chunk: Vec<SuppressionChange> = (0..1_000)
            .map(|k| {
                seq += 1;
                SuppressionChange {
                    seq: seq as u64,
                    scope: tenant(k),
                    address: format!("more{seq}@x.example"),
                    op: ChangeOp::Add(SuppressionReason::Unsubscribe),
                }
            })
            .collect();
        let t = Instant::now();
        set.apply(&chunk);
        let e = t.elapsed();
        total += e;
        slowest = slowest.max(e);
    }
    println!(
        "{} further adds in deltas of 1000: {:.1} ms in all; slowest delta (the merge) {:.1} ms; \
         RSS now {:.1} MiB (the probe strings included), {} entries",
        seq - 10_000,
        total.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3,
        rss_mib(),
        set.len()
    );
}
