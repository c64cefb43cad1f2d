use super::*;

const HOUR: i64 = 3_600_000;
const NOW: i64 = 20_000 * 24 * HOUR + 30 * 60_000; // half past midnight, a fixed fake clock

fn th() -> Thresholds {
    Thresholds {
        window_ms: 24 * HOUR,
        min_volume: 100,
        bounce_rate_max_ppm: 100_000,
        complaint_rate_max_ppm: 3_000,
        warning_percent: 80,
    }
}

fn row(
    tenant: &str,
    from: &str,
    hours_ago: i64,
    sent: i64,
    hard: i64,
    complained: i64,
) -> BucketRow {
    BucketRow {
        tenant_id: tenant.into(),
        from_domain: from.into(),
        bucket_start_ms: bucket_start(NOW - hours_ago * HOUR),
        sent,
        bounced_hard: hard,
        complained,
    }
}

fn domains() -> Vec<(String, String)> {
    vec![
        ("t".into(), "a.example".into()),
        ("t".into(), "b.example".into()),
    ]
}

fn state(scope: &str, metric: Metric, level: Level) -> StateRow {
    StateRow {
        tenant_id: "t".into(),
        scope_domain: scope.into(),
        metric: metric.as_str().into(),
        level: level.as_str().into(),
        note: "x".into(),
        rate_ppm: 0,
        volume: 0,
        changed_unix_ms: 0,
    }
}

fn only(changes: &[Change]) -> &Change {
    assert_eq!(changes.len(), 1, "{changes:#?}");
    &changes[0]
}

#[test]
fn a_domain_past_the_bounce_threshold_is_disabled_alone() {
    // a.example: 15 % hard bounces over 200; b.example clean over 1,000.
    let rows = [
        row("t", "a.example", 2, 100, 15, 0),
        row("t", "mail.a.example", 1, 100, 15, 0),
        row("t", "b.example", 1, 1_000, 10, 0),
    ];
    let changes = evaluate(&th(), NOW, &rows, &domains(), &[], &[]);
    let c = only(&changes);
    assert_eq!(
        (c.scope_domain.as_str(), c.metric, c.to),
        ("a.example", Metric::BounceRate, Level::Disabled)
    );
    assert_eq!((c.rate_ppm, c.volume), (150_000, 200));
    assert_eq!(
        c.note,
        "bounce rate of a.example 15.0% over 10.0% in 24 h (200 sent)"
    );
}

#[test]
fn the_tenant_is_disabled_when_its_enabled_mail_passes() {
    // Both domains at 8 % (warned each), but mail without a sending domain bounces a lot.
    let rows = [
        row("t", "a.example", 1, 100, 8, 0),
        row("t", "b.example", 1, 100, 8, 0),
        row("t", "", 1, 100, 40, 0),
    ];
    let changes = evaluate(&th(), NOW, &rows, &domains(), &[], &[]);
    let tenant: Vec<&Change> = changes
        .iter()
        .filter(|c| c.scope_domain.is_empty())
        .collect();
    assert_eq!(tenant.len(), 1, "{changes:#?}");
    assert_eq!(tenant[0].to, Level::Disabled);
    assert_eq!(tenant[0].rate_ppm, 186_666); // 56 of 300
    assert_eq!(
        tenant[0].note,
        "bounce rate 18.7% over 10.0% in 24 h (300 sent)"
    );
    let warned = changes.iter().filter(|c| c.to == Level::Warned).count();
    assert_eq!(warned, 2, "both domains near the threshold: {changes:#?}");
}

#[test]
fn complaints_warn_at_80_percent_of_their_threshold_once() {
    let rows = [row("t", "b.example", 3, 10_000, 0, 25)]; // 0.25 %
    let changes = evaluate(&th(), NOW, &rows, &domains(), &[], &[]);
    assert_eq!(changes.len(), 2, "the domain and the tenant: {changes:#?}");
    assert!(changes
        .iter()
        .all(|c| c.to == Level::Warned && c.metric == Metric::ComplaintRate));
    assert_eq!(
        changes[0].note,
        "complaint rate of b.example 0.25% nears 0.30%"
    );
    // Already warned: nothing new (one event per crossing, not per check).
    let states = [
        state("b.example", Metric::ComplaintRate, Level::Warned),
        state("", Metric::ComplaintRate, Level::Warned),
    ];
    assert!(evaluate(&th(), NOW, &rows, &domains(), &states, &[]).is_empty());
    // Just under the warning level: still warned (hysteresis); well under: cleared.
    let rows = [row("t", "b.example", 3, 10_000, 0, 23)];
    assert!(evaluate(&th(), NOW, &rows, &domains(), &states, &[]).is_empty());
    let rows = [row("t", "b.example", 3, 10_000, 0, 10)];
    let changes = evaluate(&th(), NOW, &rows, &domains(), &states, &[]);
    assert_eq!(changes.len(), 2);
    assert!(changes
        .iter()
        .all(|c| c.to == Level::Ok && c.from == Level::Warned));
}

#[test]
fn below_the_minimum_volume_nothing_happens() {
    let rows = [row("t", "a.example", 1, 99, 99, 99)];
    assert!(evaluate(&th(), NOW, &rows, &domains(), &[], &[]).is_empty());
}

#[test]
fn the_window_slides_with_the_clock() {
    let rows = [
        row("t", "a.example", 25, 1_000, 500, 0),
        row("t", "a.example", 1, 1_000, 0, 0),
    ];
    // 25 hours ago is outside a 24 h window that starts at the bucket of now - 24 h.
    assert!(evaluate(&th(), NOW, &rows, &domains(), &[], &[]).is_empty());
    // An hour earlier, the same rows disable it.
    let earlier = evaluate(&th(), NOW - 2 * HOUR, &rows, &domains(), &[], &[]);
    assert!(
        earlier.iter().any(|c| c.to == Level::Disabled),
        "{earlier:#?}"
    );
}

#[test]
fn disabled_is_sticky_and_a_re_enable_baseline_forgives_the_past() {
    let rows = [row("t", "a.example", 0, 200, 30, 0)];
    let states = [state("a.example", Metric::BounceRate, Level::Disabled)];
    // No mail at all since: still disabled, nothing changes (only an operator re-enables).
    assert!(evaluate(&th(), NOW, &[], &domains(), &states, &[]).is_empty());
    assert!(evaluate(&th(), NOW, &rows, &domains(), &states, &[]).is_empty());
    // Re-enabled in this very bucket after those 200: they no longer count.
    let baseline = BaselineRow {
        tenant_id: "t".into(),
        scope_domain: "a.example".into(),
        bucket_start_ms: bucket_start(NOW),
        sent: 200,
        bounced_hard: 30,
        complained: 0,
        set_unix_ms: NOW,
    };
    let after = [row("t", "a.example", 0, 320, 36, 0)]; // 120 more, 6 bounced: 5 %
    assert!(evaluate(
        &th(),
        NOW,
        &after,
        &domains(),
        &[],
        std::slice::from_ref(&baseline)
    )
    .is_empty());
    // An older bucket before the baseline does not count either.
    let older = [
        row("t", "a.example", 3, 500, 400, 0),
        row("t", "a.example", 0, 320, 36, 0),
    ];
    assert!(evaluate(
        &th(),
        NOW,
        &older,
        &domains(),
        &[],
        std::slice::from_ref(&baseline)
    )
    .is_empty());
}

#[test]
fn rates_are_exact_integers() {
    let c = Counts {
        sent: 3,
        bounced_hard: 1,
        complained: 0,
    };
    assert_eq!(c.rate_ppm(Metric::BounceRate), 333_333);
    assert_eq!(Counts::default().rate_ppm(Metric::BounceRate), 0);
    let big = Counts {
        sent: i64::MAX,
        bounced_hard: i64::MAX,
        complained: 0,
    };
    assert_eq!(big.rate_ppm(Metric::BounceRate), PPM);
    // Exactly at the threshold is not past it.
    let rows = [row("t", "a.example", 1, 1_000, 100, 0)];
    let c = evaluate(&th(), NOW, &rows, &domains(), &[], &[]);
    assert!(c.iter().all(|c| c.to == Level::Warned), "{c:#?}");
    assert_eq!(percent(85_000), "8.5%");
    assert_eq!(percent(2_500), "0.25%");
}
