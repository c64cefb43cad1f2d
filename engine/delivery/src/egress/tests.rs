use std::collections::HashMap;
use std::sync::Arc;

use super::*;

fn day(s: &str) -> Day {
    Day::parse(s).unwrap()
}

fn src(name: &str, addr: &str) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        local_addr: Some(addr.parse().unwrap()),
        ehlo_name: Some(format!("{name}.mta.example")),
        warmup: None,
    }
}

fn member(source: &str, weight: u32) -> MemberSpec {
    MemberSpec {
        source: source.into(),
        weight,
    }
}

fn two_sources(wa: u32, wb: u32) -> EgressSpec {
    EgressSpec {
        sources: vec![src("a", "127.0.0.2"), src("b", "127.0.0.3")],
        pools: vec![PoolSpec {
            name: "main".into(),
            sources: vec![member("a", wa), member("b", wb)],
        }],
        default_pool: Some("main".into()),
    }
}

/// Counts given by the test: source index → sent today.
struct Fixed(HashMap<usize, u64>);

impl DailyCounts for Fixed {
    fn sent_today(&self, source: SourceId, _today: Day) -> u64 {
        self.0.get(&source.index()).copied().unwrap_or(0)
    }
}

fn tally(egress: &Egress, picks: &[Option<SourceId>]) -> Vec<usize> {
    let mut out = vec![0; egress.sources().len()];
    for p in picks.iter().flatten() {
        out[p.index()] += 1;
    }
    out
}

#[test]
fn no_pools_is_one_implicit_source_that_binds_nothing() {
    let e = Egress::build(&EgressSpec::default()).unwrap();
    assert_eq!(e.sources().len(), 1);
    let s = &e.sources()[0];
    assert_eq!((s.local_addr, s.ehlo_name.as_deref()), (None, None));
    assert_eq!(s.ehlo("mx.petrel.test"), "mx.petrel.test");
    let pool = e.pool_for(None);
    assert_eq!(pool, e.default_pool());
    let counts = Fixed(HashMap::new());
    let today = day("2026-12-06");
    for _ in 0..5 {
        assert_eq!(e.choose(pool, &counts, today), Some(SourceId(0)));
    }
    assert_eq!(
        format!("{:?}", Egress::default().pools()),
        format!("{:?}", e.pools())
    );
}

#[test]
fn weights_three_to_one_give_exactly_three_to_one_and_interleave() {
    let e = Egress::build(&two_sources(3, 1)).unwrap();
    let counts = Fixed(HashMap::new());
    let today = day("2026-12-06");
    let pool = e.default_pool();
    let picks: Vec<Option<SourceId>> = (0..400).map(|_| e.choose(pool, &counts, today)).collect();
    assert_eq!(tally(&e, &picks), [300, 100]);
    // Smooth: b comes once in every 4 picks, never two a-bursts of more than 3.
    for window in picks.chunks(4) {
        assert_eq!(tally(&e, window), [3, 1], "{window:?}");
    }
    assert_eq!(e.source(picks[0].unwrap()).name, "a");
}

#[test]
fn a_capped_member_is_skipped_and_all_capped_is_none() {
    let mut spec = two_sources(1, 1);
    spec.sources[1].warmup = Some(WarmupSpec {
        start_date: "2026-12-01".into(),
        days: 10,
        first_day_max: 100,
        full_day_max: Some(1_000),
    });
    let e = Egress::build(&spec).unwrap();
    let today = day("2026-12-01");
    let pool = e.default_pool();
    let b_capped = Fixed(HashMap::from([(1, 100)]));
    for _ in 0..10 {
        assert_eq!(e.choose(pool, &b_capped, today).map(|s| s.index()), Some(0));
    }
    // The next day b's cap is higher: it is chosen again.
    let tomorrow = today.next();
    let picks: Vec<_> = (0..10)
        .map(|_| e.choose(pool, &b_capped, tomorrow))
        .collect();
    assert_eq!(tally(&e, &picks), [5, 5]);

    spec.sources[0].warmup = spec.sources[1].warmup.clone();
    let e = Egress::build(&spec).unwrap();
    let both = Fixed(HashMap::from([(0, 100), (1, 250)]));
    assert_eq!(e.choose(e.default_pool(), &both, today), None);
}

#[test]
fn the_real_counters_hold_a_warmup_cap_exactly() {
    let mut spec = two_sources(1, 1);
    spec.sources[1].warmup = Some(WarmupSpec {
        start_date: "2026-12-06".into(),
        days: 5,
        first_day_max: 10,
        full_day_max: None,
    });
    let e = Egress::build(&spec).unwrap();
    let today = day("2026-12-06");
    let pool = e.default_pool();
    let mut picks = Vec::new();
    for _ in 0..100 {
        let s = e.choose(pool, e.counters(), today).unwrap();
        e.record_sent(s, today);
        picks.push(Some(s));
    }
    assert_eq!(tally(&e, &picks), [90, 10]);
    assert_eq!(e.counters().sent_today(SourceId(1), today), 10);
    // At UTC midnight the count starts again, under the next day's (doubled) cap.
    let tomorrow = today.next();
    assert_eq!(e.counters().sent_today(SourceId(1), tomorrow), 0);
    let mut b = 0;
    for _ in 0..100 {
        let s = e.choose(pool, e.counters(), tomorrow).unwrap();
        e.record_sent(s, tomorrow);
        b += usize::from(s.index() == 1);
    }
    assert_eq!(b, 20);
}

#[test]
fn counters_are_shared_across_threads() {
    let e = Arc::new(Egress::build(&two_sources(1, 1)).unwrap());
    let today = day("2026-12-06");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                for _ in 0..1_000 {
                    e.record_sent(SourceId(0), today);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(e.counters().sent_today(SourceId(0), today), 4_000);
}

#[test]
fn unknown_or_missing_tenant_pools_use_the_default() {
    let mut spec = two_sources(1, 1);
    spec.pools.push(PoolSpec {
        name: "bulk".into(),
        sources: vec![member("b", 1)],
    });
    let e = Egress::build(&spec).unwrap();
    let main = e.default_pool();
    assert_eq!(e.pool(main).name, "main");
    let bulk = e.pool_for(Some("bulk"));
    assert_eq!(e.pool(bulk).name, "bulk");
    assert_eq!(e.pool_for(None), main);
    assert_eq!(e.pool_for(Some("no-such-pool")), main);
    let counts = Fixed(HashMap::new());
    let today = day("2026-12-06");
    for _ in 0..4 {
        let s = e.choose(bulk, &counts, today).unwrap();
        assert_eq!(e.source(s).name, "b");
    }
}

#[test]
fn source_family_and_ehlo() {
    let e = Egress::build(&two_sources(1, 1)).unwrap();
    let a = e.source(SourceId(0));
    assert_eq!(a.ehlo("fallback.example"), "a.mta.example");
    assert!(a.can_reach("192.0.2.1".parse().unwrap()));
    assert!(!a.can_reach("2001:db8::1".parse().unwrap()));
    let implicit = Egress::implicit();
    assert!(implicit.sources()[0].can_reach("2001:db8::1".parse().unwrap()));
}

#[test]
fn bad_configurations_are_refused_with_the_key() {
    let check = |spec: EgressSpec, needle: &str| {
        let e = Egress::build(&spec).unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    };
    let mut s = two_sources(1, 1);
    s.pools[0].sources.push(member("zz", 1));
    check(s, "unknown source \"zz\"");
    check(two_sources(0, 1), "weight 0");
    check(two_sources(1, EGRESS_WEIGHT_MAX + 1), "must be 1 to 10000");
    let mut s = two_sources(1, 1);
    s.sources[1].name = "a".into();
    check(s, "\"a\" is configured twice");
    let mut s = two_sources(1, 1);
    s.pools.push(s.pools[0].clone());
    check(s, "delivery.pools.name: \"main\" is configured twice");
    let mut s = two_sources(1, 1);
    s.pools[0].sources.push(member("a", 2));
    check(s, "listed twice");
    let mut s = two_sources(1, 1);
    s.default_pool = None;
    check(s, "delivery.default_pool: required");
    let mut s = two_sources(1, 1);
    s.default_pool = Some("nope".into());
    check(s, "unknown pool \"nope\"");
    let mut s = two_sources(1, 1);
    s.pools[0].sources.pop();
    check(s, "\"b\": in no pool");
    let mut s = two_sources(1, 1);
    s.pools[0].sources.clear();
    check(s, "no sources");
    let mut s = two_sources(1, 1);
    s.sources[0].name = "has space".into();
    check(s, "is not a name");
    let mut s = two_sources(1, 1);
    s.sources[0].local_addr = Some("0.0.0.0".parse().unwrap());
    check(s, "cannot be bound");
    let mut s = two_sources(1, 1);
    s.sources[0].ehlo_name = Some("bad name\r\n".into());
    check(s, "is not a host name");
    let warm = |start: &str, days, first, full| WarmupSpec {
        start_date: start.into(),
        days,
        first_day_max: first,
        full_day_max: full,
    };
    for (w, needle) in [
        (warm("2026-02-30", 5, 1, None), "is not YYYY-MM-DD"),
        (warm("2026-02-01", 0, 1, None), "days must be 1 to 365"),
        (warm("2026-02-01", 366, 1, None), "days must be 1 to 365"),
        (warm("2026-02-01", 5, 0, None), "first_day_max"),
        (warm("2026-02-01", 5, 10, Some(9)), "full_day_max"),
    ] {
        let mut s = two_sources(1, 1);
        s.sources[0].warmup = Some(w);
        check(s, needle);
    }
    let s = EgressSpec {
        default_pool: Some("main".into()),
        ..EgressSpec::default()
    };
    check(s, "no [[delivery.pools]]");
    let s = EgressSpec {
        sources: vec![src("lonely", "127.0.0.2")],
        ..EgressSpec::default()
    };
    check(s, "\"lonely\": in no pool");
    let s = EgressSpec {
        sources: (0..=EGRESS_SOURCES_MAX)
            .map(|i| src(&format!("s{i}"), "127.0.0.2"))
            .collect(),
        ..two_sources(1, 1)
    };
    check(s, "at most 256 sources");
}

#[test]
fn counts_survive_a_save_and_load_by_source_name() {
    let dir = tempfile::tempdir().unwrap();
    let e = Egress::build(&two_sources(1, 1)).unwrap();
    let today = day("2026-12-06");
    for _ in 0..7 {
        e.record_sent(SourceId(1), today);
    }
    e.record_sent(SourceId(0), day("2026-12-05"));
    counters::save(&e, dir.path()).unwrap();
    assert!(!dir.path().join("egress-counts.json.tmp").exists());

    // The same sources in another order, and one more.
    let mut spec = two_sources(1, 1);
    spec.sources.reverse();
    spec.sources.push(src("c", "127.0.0.4"));
    spec.pools[0].sources.push(member("c", 1));
    let again = Egress::build(&spec).unwrap();
    assert_eq!(counters::load(&again, dir.path()).unwrap(), 2);
    let b = again.source_id("b").unwrap();
    let a = again.source_id("a").unwrap();
    assert_eq!(again.counters().sent_today(b, today), 7);
    assert_eq!(
        again.counters().sent_today(a, today),
        0,
        "yesterday's count"
    );
    assert_eq!(again.counters().sent_today(a, day("2026-12-05")), 1);

    // No file: nothing; a bad file: a typed error and nothing set.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(counters::load(&again, empty.path()).unwrap(), 0);
    std::fs::write(
        empty.path().join(counters::EGRESS_COUNTS_FILE),
        br#"{"version":1,"sources":[{"source":"a","day":"2026-13-01","sent":1}]}"#,
    )
    .unwrap();
    let fresh = Egress::build(&two_sources(1, 1)).unwrap();
    let err = counters::load(&fresh, empty.path()).unwrap_err();
    assert!(matches!(err, EgressError::CountsFile { .. }), "{err}");
    assert_eq!(fresh.counters().generation(), 0);
}

#[test]
fn the_saver_writes_on_change_and_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Egress::build(&two_sources(1, 1)).unwrap());
    let file = dir.path().join(counters::EGRESS_COUNTS_FILE);
    let mut saver = CountsSaver::start(Arc::clone(&e), dir.path().to_path_buf(), 60_000).unwrap();
    assert!(!file.exists(), "nothing to save yet");
    let today = day("2026-12-06");
    e.record_sent(SourceId(0), today);
    e.record_sent(SourceId(0), today);
    saver.stop();
    let again = Egress::build(&two_sources(1, 1)).unwrap();
    counters::load(&again, dir.path()).unwrap();
    assert_eq!(again.counters().sent_today(SourceId(0), today), 2);
}
