//! The verdict logic on fixed DNS answers (no resolver, no store).

use super::*;

fn checks(dkim: RecordState, spf: RecordState, dmarc: RecordState) -> Vec<RecordCheck> {
    [("dkim", dkim), ("spf", spf), ("dmarc", dmarc)]
        .into_iter()
        .map(|(p, s)| RecordCheck {
            purpose: p.into(),
            name: format!("{p}.a.test"),
            state: s,
        })
        .collect()
}

fn fail(check: &str, detail: &str) -> Verdict {
    Verdict::Fail {
        check: check.into(),
        detail: detail.into(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

use RecordState::{Error, Found, Mismatch, Missing};

#[test]
fn the_first_failing_check_in_order_names_the_verdict() {
    assert_eq!(verdict(&checks(Found, Found, Found)), Verdict::Pass);
    assert_eq!(
        verdict(&checks(Found, Found, Missing)),
        fail("dmarc", "missing")
    );
    assert_eq!(
        verdict(&checks(Mismatch, Missing, Missing)),
        fail("dkim", "mismatch")
    );
    assert_eq!(
        verdict(&checks(Found, Mismatch, Found)),
        fail("spf", "mismatch")
    );
    // A definite failure outweighs an errored lookup; an error alone decides nothing.
    assert_eq!(
        verdict(&checks(Error, Found, Missing)),
        fail("dmarc", "missing")
    );
    assert_eq!(verdict(&checks(Found, Error, Found)), Verdict::Unknown);
    // A check not reported at all is missing.
    assert_eq!(
        verdict(&checks(Found, Found, Found)[..2]),
        fail("dmarc", "missing")
    );
}

#[test]
fn spf_needs_the_include_or_every_engine_address() {
    let inc = "spf.petrel.test";
    let none: [IpAddr; 0] = [];
    assert_eq!(judge_spf(&[], inc, &none), Missing);
    assert_eq!(
        judge_spf(&strings(&["site-verification=1"]), inc, &none),
        Missing
    );
    assert_eq!(
        judge_spf(
            &strings(&["v=spf1 include:spf.petrel.test ~all"]),
            inc,
            &none
        ),
        Found
    );
    assert_eq!(
        judge_spf(
            &strings(&["V=SPF1 +include:SPF.petrel.test -all"]),
            inc,
            &none
        ),
        Found
    );
    // A fail qualifier does not authorise.
    assert_eq!(
        judge_spf(
            &strings(&["v=spf1 -include:spf.petrel.test ~all"]),
            inc,
            &none
        ),
        Mismatch
    );
    assert_eq!(
        judge_spf(&strings(&["v=spf1 include:other.test -all"]), inc, &none),
        Mismatch
    );
    // Two SPF records are a permerror: nothing is authorised.
    assert_eq!(
        judge_spf(
            &strings(&["v=spf1 include:spf.petrel.test ~all", "v=spf1 -all"]),
            inc,
            &none
        ),
        Mismatch
    );
    let engines: Vec<IpAddr> = vec![
        "192.0.2.10".parse().unwrap(),
        "2001:db8::25".parse().unwrap(),
    ];
    assert_eq!(
        judge_spf(
            &strings(&["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/64 -all"]),
            inc,
            &engines
        ),
        Found
    );
    assert_eq!(
        judge_spf(
            &strings(&["v=spf1 ip4:192.0.2.10 ip6:2001:db8::25 -all"]),
            inc,
            &engines
        ),
        Found
    );
    // One engine address left out: not authorised.
    assert_eq!(
        judge_spf(&strings(&["v=spf1 ip4:192.0.2.0/24 -all"]), inc, &engines),
        Mismatch
    );
    assert_eq!(
        judge_spf(
            &strings(&["v=spf1 ip4:192.0.2.0/24 ?ip6:2001:db8::/64 -all"]),
            inc,
            &engines
        ),
        Mismatch
    );
}

#[test]
fn dmarc_needs_exactly_one_record() {
    assert_eq!(judge_dmarc(&[]), Missing);
    assert_eq!(judge_dmarc(&strings(&["v=spf1 -all"])), Missing);
    assert_eq!(judge_dmarc(&strings(&["v=DMARC1; p=none"])), Found);
    assert_eq!(judge_dmarc(&strings(&["v = dmarc1 ;p=reject"])), Found);
    assert_eq!(judge_dmarc(&strings(&["p=none; v=DMARC1"])), Missing);
    assert_eq!(
        judge_dmarc(&strings(&["v=DMARC1; p=none", "v=DMARC1; p=reject"])),
        Mismatch
    );
}

fn domain() -> Domain {
    Domain {
        id: "dom_1".into(),
        tenant_id: "t1".into(),
        name: "a.test".into(),
        verified: true,
        verified_loopback: false,
        verified_unix_ms: Some(1),
        messages_per_second_max: None,
        last_check_json: None,
        created_unix_ms: 1,
    }
}

#[test]
fn only_a_new_verdict_is_a_change_and_errors_keep_the_old_one() {
    let d = domain();
    let pass = next_row(&d, None, &checks(Found, Found, Found), 10);
    assert!(
        !verdict_changed(None, &pass),
        "a first pass blocks nothing new"
    );
    let failed = next_row(&d, Some(&pass), &checks(Found, Found, Missing), 20);
    assert!(verdict_changed(Some(&pass), &failed));
    assert_eq!(failed.failing_check.as_deref(), Some("dmarc"));
    assert_eq!(failed.changed_unix_ms, 20);
    let again = next_row(&d, Some(&failed), &checks(Found, Found, Missing), 30);
    assert!(!verdict_changed(Some(&failed), &again));
    assert_eq!((again.checked_unix_ms, again.changed_unix_ms), (30, 20));
    // The resolver fails: still blocked, no change.
    let flaky = next_row(&d, Some(&again), &checks(Found, Found, Error), 40);
    assert_eq!(flaky.failing_check.as_deref(), Some("dmarc"));
    assert!(!verdict_changed(Some(&again), &flaky));
    // Another failing check is another verdict (engines name it in the reply).
    let spf = next_row(&d, Some(&flaky), &checks(Found, Mismatch, Missing), 50);
    assert!(verdict_changed(Some(&flaky), &spf));
    let restored = next_row(&d, Some(&spf), &checks(Found, Found, Found), 60);
    assert!(verdict_changed(Some(&spf), &restored));
    assert!(restored.failing_check.is_none() && restored.failure_detail.is_none());
    let view = DomainAuthView::of(&restored);
    assert!(view.passing);
    assert_eq!(view.checks.len(), 3);
}
