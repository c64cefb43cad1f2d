//! Every sink fault mode, observed from the injector's counts (real sockets on loopback).

use std::time::{Duration, Instant};

use petrel_loadtest::{inject, start_sink, DomainFault, InjectConfig, OverLimit, SinkConfig};

fn sink(cfg: SinkConfig) -> petrel_loadtest::SinkHandle {
    start_sink(SinkConfig { threads: 1, ..cfg }).expect("sink starts")
}

fn injector(target: std::net::SocketAddr, messages: u64) -> InjectConfig {
    InjectConfig {
        target,
        messages,
        connections: 4,
        threads: 1,
        duration_ms_max: 30_000,
        io_timeout_ms: 5_000,
        ..InjectConfig::default()
    }
}

#[test]
fn clean_run_every_message_arrives_once() {
    let s = sink(SinkConfig::default());
    let r = inject(injector(s.addr(), 300)).unwrap();
    assert_eq!(r.counts.messages_attempted, 300);
    assert_eq!(r.counts.messages_2xx, 300, "{r:?}");
    assert!(s.wait_for(300, Duration::from_secs(5)));
    let st = s.stop();
    assert_eq!(
        (st.unique_ids, st.duplicates, st.messages_without_id),
        (300, 0, 0)
    );
    assert_eq!(st.arrival_latency_us.count, 300);
    assert_eq!(r.counts.pipelining_offered, r.counts.connections_opened);
    // Unpaced: every message but each connection's first went out with the end of data before it.
    assert_eq!(
        r.counts.envelopes_merged,
        r.counts.messages_attempted - r.counts.connections_opened,
        "{r:?}"
    );
}

#[test]
fn rcpt_tempfail_rate_shows_as_4xx() {
    let s = sink(SinkConfig {
        rcpt_tempfail: vec![DomainFault {
            domain: "example.test".into(),
            probability: 0.3,
        }],
        ..SinkConfig::default()
    });
    let r = inject(injector(s.addr(), 400)).unwrap();
    let st = s.stop();
    let c = &r.counts;
    assert_eq!(c.messages_attempted, 400);
    assert_eq!(c.messages_4xx + c.messages_2xx, 400, "{c:?}");
    assert!(
        (70..=170).contains(&c.messages_4xx),
        "4xx={} for p=0.3 of 400",
        c.messages_4xx
    );
    assert_eq!(c.rcpts_4xx, st.rcpts_tempfailed);
    assert_eq!(c.messages_2xx, st.messages_accepted);
}

#[test]
fn rcpt_fault_applies_only_to_its_domain() {
    let s = sink(SinkConfig {
        rcpt_permfail: vec![DomainFault {
            domain: "other.test".into(),
            probability: 1.0,
        }],
        ..SinkConfig::default()
    });
    let r = inject(injector(s.addr(), 50)).unwrap();
    assert_eq!(r.counts.messages_2xx, 50);
    let mut cfg = injector(s.addr(), 50);
    cfg.domains = vec![("sub.other.test".into(), 1.0)];
    let r = inject(cfg).unwrap();
    assert_eq!(r.counts.messages_5xx, 50, "{:?}", r.counts);
    assert_eq!(r.counts.rcpts_5xx, 50);
}

#[test]
fn data_permfail_and_tempfail_show_as_5xx_and_4xx() {
    let s = sink(SinkConfig {
        data_permfail: 0.25,
        data_tempfail: 0.25,
        ..SinkConfig::default()
    });
    let r = inject(injector(s.addr(), 400)).unwrap();
    let st = s.stop();
    let c = &r.counts;
    assert_eq!(
        c.messages_2xx + c.messages_4xx + c.messages_5xx,
        400,
        "{c:?}"
    );
    assert!((50..=150).contains(&c.messages_5xx), "{c:?}");
    assert!((50..=150).contains(&c.messages_4xx), "{c:?}");
    assert_eq!(c.messages_5xx, st.messages_permfailed);
    assert_eq!(c.messages_4xx, st.messages_tempfailed);
    assert_eq!(st.unique_ids, c.messages_2xx);
}

#[test]
fn drops_in_data_show_as_errors_and_the_run_continues() {
    let s = sink(SinkConfig {
        drop_in_data: 0.2,
        ..SinkConfig::default()
    });
    let r = inject(injector(s.addr(), 300)).unwrap();
    let st = s.stop();
    let c = &r.counts;
    assert_eq!(c.messages_attempted, 300);
    assert_eq!(c.messages_2xx + c.messages_error, 300, "{c:?}");
    assert!(c.messages_error >= 20, "{c:?}");
    assert_eq!(c.messages_error, st.drops_in_data);
    assert!(
        c.connections_opened > c.messages_error,
        "a drop forces a new connection"
    );
    assert_eq!(st.unique_ids, c.messages_2xx);
}

#[test]
fn reply_delays_show_in_latency() {
    let s = sink(SinkConfig {
        data_reply_delay_ms: 40,
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 20);
    cfg.connections = 2;
    let r = inject(cfg).unwrap();
    assert_eq!(r.counts.messages_2xx, 20);
    assert!(
        r.latency_us.data.p50_us >= 40_000,
        "{:?}",
        r.latency_us.data
    );
    let s = sink(SinkConfig {
        reply_delay_ms: 30,
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 4);
    cfg.pipelining = false;
    let r = inject(cfg).unwrap();
    assert_eq!(r.counts.messages_2xx, 4);
    assert!(
        r.latency_us.mail.p50_us >= 30_000,
        "{:?}",
        r.latency_us.mail
    );
    assert!(r.latency_us.connect.count == r.counts.connections_opened);
}

#[test]
fn starttls_offered_is_used_and_withheld_fails_required_tls() {
    let s = sink(SinkConfig {
        starttls: true,
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 40);
    cfg.starttls = true;
    cfg.messages_per_connection = 10;
    let r = inject(cfg).unwrap();
    let st = s.stop();
    assert_eq!(r.counts.messages_2xx, 40, "{:?}", r.counts);
    assert_eq!(r.counts.tls_sessions, r.counts.connections_opened);
    assert_eq!(st.tls_sessions, r.counts.tls_sessions);
    assert_eq!(st.unique_ids, 40);

    let s = sink(SinkConfig {
        starttls: false,
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 10);
    cfg.starttls = true;
    let r = inject(cfg).unwrap();
    assert_eq!(r.counts.messages_error, 10);
    assert_eq!(r.counts.starttls_missing, 10);
    assert_eq!(r.counts.starttls_offered, 0);
    assert_eq!(s.stop().messages_accepted, 0);
}

#[test]
fn pipelining_withheld_falls_back_to_lockstep() {
    let s = sink(SinkConfig {
        pipelining: false,
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 60);
    cfg.rcpts_per_message = 3;
    let r = inject(cfg).unwrap();
    assert_eq!(r.counts.messages_2xx, 60, "{:?}", r.counts);
    assert_eq!(r.counts.rcpts_2xx, 180);
    assert_eq!(r.counts.pipelining_offered, 0);
    assert_eq!(r.counts.envelopes_merged, 0);
}

#[test]
fn auth_plain_checked() {
    let s = sink(SinkConfig {
        auth_users: vec![("u".into(), "p".into())],
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 10);
    cfg.auth = Some(("u".into(), "p".into()));
    assert_eq!(inject(cfg.clone()).unwrap().counts.messages_2xx, 10);
    cfg.auth = Some(("u".into(), "wrong".into()));
    let r = inject(cfg).unwrap();
    assert_eq!(r.counts.messages_5xx, 10);
    assert_eq!(r.counts.auth_failures, 10);
}

#[test]
fn concurrency_limit_reply_421() {
    let s = sink(SinkConfig {
        connections_max: 2,
        over_limit: OverLimit::Reply421,
        data_reply_delay_ms: 5,
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 200);
    cfg.connections = 10;
    cfg.messages_per_connection = 1;
    let r = inject(cfg).unwrap();
    let st = s.stop();
    assert!(st.connections_max_seen <= 2, "{st:?}");
    assert!(r.counts.greetings_rejected > 0, "{:?}", r.counts);
    assert_eq!(r.counts.greetings_rejected, st.connections_refused);
    assert_eq!(r.counts.messages_4xx, r.counts.greetings_rejected);
    assert_eq!(r.counts.messages_2xx + r.counts.messages_4xx, 200);
}

#[test]
fn concurrency_limit_stop_accepting() {
    let s = sink(SinkConfig {
        connections_max: 3,
        over_limit: OverLimit::StopAccepting,
        data_reply_delay_ms: 2,
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 100);
    cfg.connections = 10;
    cfg.messages_per_connection = 1;
    let r = inject(cfg).unwrap();
    let st = s.stop();
    assert_eq!(r.counts.messages_2xx, 100, "{:?}", r.counts);
    assert!(st.connections_max_seen <= 3, "{st:?}");
    assert_eq!(st.connections_refused, 0);
}

#[test]
fn duplicates_are_detected() {
    let s = sink(SinkConfig::default());
    let mut cfg = injector(s.addr(), 50);
    cfg.run_id = Some(0xabc);
    inject(cfg.clone()).unwrap();
    inject(cfg).unwrap();
    let st = s.stop();
    assert_eq!(
        (st.messages_accepted, st.unique_ids, st.duplicates),
        (100, 50, 50)
    );
}

#[test]
fn stored_messages_are_retrievable() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkConfig {
        store_dir: Some(dir.path().into()),
        keep_messages_max: 5,
        ..SinkConfig::default()
    });
    let mut cfg = injector(s.addr(), 8);
    cfg.sizes = vec![(2000, 1.0)];
    cfg.rcpts_per_message = 2;
    let r = inject(cfg).unwrap();
    assert_eq!(r.counts.messages_2xx, 8);
    let got = s.received();
    assert_eq!(got.len(), 5);
    for m in &got {
        assert_eq!(m.rcpts.len(), 2);
        assert_eq!(m.mail_from, "load@petrel-load.test");
        assert!(m.load_id.is_some());
        assert!(
            m.data.ends_with(b"\r\n") && (1900..2200).contains(&m.data.len()),
            "{}",
            m.data.len()
        );
    }
    drop(s);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 8);
}

#[test]
fn stats_file_is_rewritten_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    let s = sink(SinkConfig {
        stats_file: Some(path.clone()),
        ..SinkConfig::default()
    });
    inject(injector(s.addr(), 30)).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let v: Option<serde_json::Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if v.as_ref().and_then(|v| v["unique_ids"].as_u64()) == Some(30) {
            break;
        }
        assert!(Instant::now() < end, "stats file never showed 30: {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn non_loopback_refused_by_default() {
    let cfg = InjectConfig {
        target: "192.0.2.1:25".parse().unwrap(),
        ..InjectConfig::default()
    };
    assert!(inject(cfg).is_err());
    assert!(start_sink(SinkConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..SinkConfig::default()
    })
    .is_err());
}
