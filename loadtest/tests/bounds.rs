//! Bounds: a run that would go on forever stops on its duration, its message count or its
//! per-wait timeout.

use std::time::{Duration, Instant};

use petrel_loadtest::{inject, start_sink, InjectConfig, SinkConfig};

#[test]
fn duration_stops_an_endless_run() {
    let s = start_sink(SinkConfig {
        threads: 1,
        ..SinkConfig::default()
    })
    .unwrap();
    let cfg = InjectConfig {
        target: s.addr(),
        messages: u64::MAX,
        connections: 2,
        threads: 1,
        duration_ms_max: 400,
        ..InjectConfig::default()
    };
    let t = Instant::now();
    let r = inject(cfg).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(r.stopped_by, "duration");
    assert!(r.counts.messages_2xx > 0);
    assert_eq!(r.counts.messages_attempted, r.counts.messages_2xx);
}

#[test]
fn message_count_is_exact() {
    let s = start_sink(SinkConfig {
        threads: 1,
        ..SinkConfig::default()
    })
    .unwrap();
    let cfg = InjectConfig {
        target: s.addr(),
        messages: 37,
        connections: 5,
        threads: 2,
        ..InjectConfig::default()
    };
    let r = inject(cfg).unwrap();
    assert_eq!(r.stopped_by, "messages");
    assert_eq!(
        (r.counts.messages_attempted, r.counts.messages_2xx),
        (37, 37)
    );
    assert!(s.wait_for(37, Duration::from_secs(5)));
    assert!(!s.wait_for(38, Duration::from_millis(100)));
}

#[test]
fn a_silent_server_times_out() {
    // A listener that accepts (kernel backlog) but never greets.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = InjectConfig {
        target: silent.local_addr().unwrap(),
        messages: 1_000_000,
        connections: 2,
        threads: 1,
        duration_ms_max: 300,
        io_timeout_ms: 200,
        ..InjectConfig::default()
    };
    let t = Instant::now();
    let r = inject(cfg).unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(r.counts.timeouts >= 2, "{:?}", r.counts);
    assert_eq!(r.counts.messages_2xx, 0);
}

#[test]
fn target_rate_is_respected() {
    let s = start_sink(SinkConfig {
        threads: 1,
        ..SinkConfig::default()
    })
    .unwrap();
    let cfg = InjectConfig {
        target: s.addr(),
        messages: 50,
        connections: 4,
        threads: 1,
        rate_per_s: Some(100.0),
        ..InjectConfig::default()
    };
    let r = inject(cfg).unwrap();
    assert_eq!(r.counts.messages_2xx, 50);
    // 50 messages at 100/s: the last is due at 0.49 s.
    assert!(r.elapsed_s >= 0.45 && r.elapsed_s < 3.0, "{}", r.elapsed_s);
    // On schedule, each next message is not due yet when the end of data goes out: two round
    // trips per message (a stall of over 10 ms may let a few merge).
    assert!(r.counts.envelopes_merged <= 5, "{:?}", r.counts);
}
