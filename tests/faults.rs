//! Duplicates under faults (issue 15), end to end: a real `petrel engine` relays to the project's
//! smart sink playing the fault mix (30 % `451` at end of data, 5 % `554`, 5 % of
//! connections dropped in the middle of DATA); `petrel load inject` sends the messages. Every
//! message ends delivered or refused, and the sink, which tells messages apart by their load id,
//! saw at most 1 % of the delivered ones twice. Before hosts that drop got one transaction per
//! write (`engine/delivery/src/shard/pipelining.rs`), this measured 20 %.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use petrel_loadtest::{start_sink, SinkConfig};

/// Messages injected: enough that the writes lost before a host's pause are a small share.
const MESSAGES: u64 = 4_000;
/// The bound: duplicates at most 1 % of unique deliveries.
const DUPLICATES_PERCENT_MAX: f64 = 1.0;
/// The longest the test waits for every message to be delivered or refused.
const RESOLVE_MAX: Duration = Duration::from_secs(180);

#[test]
fn the_fault_mix_ends_delivered_or_refused_with_at_most_one_percent_duplicates() {
    let sink = start_sink(SinkConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        data_tempfail: 0.3,
        data_permfail: 0.05,
        drop_in_data: 0.05,
        ..SinkConfig::default()
    })
    .expect("start the sink");
    let dir = tempfile::tempdir().unwrap();
    let relay_to = sink.addr().to_string();
    let engine = Engine::start_with(
        dir.path(),
        &[
            "--shards",
            "2",
            "--trust-network",
            "127.0.0.0/8",
            "--relay-to",
            &relay_to,
        ],
        Some("[delivery]\nretry_initial_ms = 200\nretry_max_ms = 1000\n"),
    );
    let injected = Command::new(petrel_bin())
        .args(["load", "inject", "--target"])
        .arg(engine.smtp.to_string())
        .args(["--messages", &MESSAGES.to_string(), "--connections", "10"])
        .args(["--size", "1024", "--mail-from", ""])
        .output()
        .expect("run petrel load inject");
    assert!(injected.status.success(), "{injected:?}");

    let started = Instant::now();
    loop {
        let s = sink.stats();
        if s.unique_ids + s.messages_permfailed >= MESSAGES {
            break;
        }
        assert!(
            started.elapsed() < RESOLVE_MAX,
            "not resolved in {RESOLVE_MAX:?}: {}",
            s.human()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A retry already on its way would still count.
    std::thread::sleep(Duration::from_secs(2));
    let s = sink.stats();
    assert!(
        s.drops_in_data > 0 && s.messages_tempfailed > 0,
        "{}",
        s.human()
    );
    let percent = 100.0 * s.duplicates as f64 / s.unique_ids as f64;
    eprintln!(
        "{} unique, {} duplicates ({percent:.2} %), {} refused",
        s.unique_ids, s.duplicates, s.messages_permfailed
    );
    assert!(
        percent <= DUPLICATES_PERCENT_MAX,
        "{} duplicates over {} unique: {percent:.2} %",
        s.duplicates,
        s.unique_ids
    );
    assert!(engine.stop());
}
