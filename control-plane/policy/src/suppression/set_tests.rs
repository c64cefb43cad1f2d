use super::*;
use crate::suppression::normalize_address;

fn keyer() -> SuppressionKeyer {
    SuppressionKeyer::new(*b"0123456789abcdef")
}

fn add(seq: u64, scope: &str, address: &str, reason: SuppressionReason) -> SuppressionChange {
    SuppressionChange {
        seq,
        scope: scope.into(),
        address: address.into(),
        op: ChangeOp::Add(reason),
    }
}

fn remove(seq: u64, scope: &str, address: &str) -> SuppressionChange {
    SuppressionChange {
        seq,
        scope: scope.into(),
        address: address.into(),
        op: ChangeOp::Remove,
    }
}

#[test]
fn keys_fold_case_like_the_stored_form() {
    let k = keyer();
    for raw in [
        "John.Doe@Example.COM",
        " Élodie@Exämple.de ",
        "ΟΔΟΣ@X.gr",
        &format!(
            "{}@{}.{}.{}.com",
            "A".repeat(64),
            "B".repeat(60),
            "C".repeat(60),
            "D".repeat(60)
        ),
    ] {
        let stored = normalize_address(raw).expect("valid");
        assert_eq!(k.key("ten_a", raw), k.key("ten_a", &stored), "{raw}");
        assert_eq!(k.key("ten_a", raw) & REASON_MASK, 0);
    }
    assert_ne!(k.key("ten_a", "x@y.z"), k.key("ten_b", "x@y.z"));
    assert_ne!(k.key("ten_a", "x@y.z"), k.key(OPERATOR_SCOPE, "x@y.z"));
    assert_ne!(
        k.key("ten_a", "x@y.z"),
        SuppressionKeyer::new([7; 16]).key("ten_a", "x@y.z"),
        "keyed"
    );
    assert_eq!(
        format!("{k:?}"),
        "SuppressionKeyer(..)",
        "the key is not printed"
    );
}

#[test]
fn a_built_set_answers_per_scope_and_the_operator_list() {
    let mut b = SuppressionSetBuilder::new(keyer(), 42, 4);
    b.push("ten_a", "bounced@x.com", SuppressionReason::HardBounce);
    b.push("ten_a", "bounced@x.com", SuppressionReason::Manual);
    b.push(
        OPERATOR_SCOPE,
        "everyone@x.com",
        SuppressionReason::Complaint,
    );
    let set = b.finish();
    assert_eq!(
        (set.version(), set.len()),
        (42, 2),
        "a duplicate is one entry"
    );
    assert_eq!(
        set.check("ten_a", "Bounced@X.com"),
        Some(SuppressionHit {
            reason: SuppressionReason::HardBounce,
            operator_wide: false
        })
    );
    assert_eq!(set.check("ten_b", "bounced@x.com"), None, "another tenant");
    assert_eq!(
        set.check("ten_b", "everyone@x.com"),
        Some(SuppressionHit {
            reason: SuppressionReason::Complaint,
            operator_wide: true
        })
    );
    assert_eq!(set.check("ten_a", "other@x.com"), None);
    assert!(set
        .check("ten_a", "bounced@x.com")
        .is_some_and(|h| h.reply_text().contains("hard bounce")));
}

#[test]
fn deltas_add_change_and_remove_without_a_rebuild() {
    let mut b = SuppressionSetBuilder::new(keyer(), 10, 0);
    b.push("t", "base@x.com", SuppressionReason::HardBounce);
    b.push("t", "gone@x.com", SuppressionReason::Manual);
    let mut set = b.finish();
    let published = set.clone();
    let applied = set.apply(&[
        add(9, "t", "stale@x.com", SuppressionReason::Manual), // at or below the version
        add(11, "t", "new@x.com", SuppressionReason::Unsubscribe),
        add(12, "t", "base@x.com", SuppressionReason::Complaint), // re-reasoned
        remove(13, "t", "gone@x.com"),
        remove(14, "t", "never@x.com"), // absent: nothing to remove
        add(16, "t", "again@x.com", SuppressionReason::Manual),
        remove(17, "t", "again@x.com"),
    ]);
    assert_eq!(applied, 6);
    assert_eq!(set.version(), 17);
    assert_eq!(set.get("t", "stale@x.com"), None);
    assert_eq!(
        set.get("t", "new@x.com"),
        Some(SuppressionReason::Unsubscribe)
    );
    assert_eq!(
        set.get("t", "base@x.com"),
        Some(SuppressionReason::Complaint)
    );
    assert_eq!(set.get("t", "gone@x.com"), None);
    assert_eq!(set.get("t", "again@x.com"), None);
    assert_eq!(set.len(), 2);
    // The published clone still answers as before (copy-on-write overlay).
    assert_eq!(
        published.get("t", "gone@x.com"),
        Some(SuppressionReason::Manual)
    );
    assert_eq!(published.len(), 2);
    // A re-sent delta changes nothing.
    assert_eq!(
        set.apply(&[add(17, "t", "again@x.com", SuppressionReason::Manual)]),
        0
    );
    assert_eq!(set.get("t", "again@x.com"), None);
    // Re-adding a removed base entry with its old reason brings it back.
    set.apply(&[add(18, "t", "gone@x.com", SuppressionReason::Manual)]);
    assert_eq!(set.get("t", "gone@x.com"), Some(SuppressionReason::Manual));
    assert_eq!(set.len(), 3);
}

#[test]
fn the_overlay_merges_past_its_bound_and_answers_stay_the_same() {
    let mut set = SuppressionSet::new(keyer());
    let n = OVERLAY_ENTRIES_MIN * 3;
    let mut seq = 0;
    let changes: Vec<SuppressionChange> = (0..n)
        .map(|i| {
            seq += 1;
            add(
                seq,
                "t",
                &format!("u{i}@x.com"),
                SuppressionReason::HardBounce,
            )
        })
        .collect();
    for chunk in changes.chunks(1_000) {
        set.apply(chunk);
        assert!(
            set.overlay.len() <= OVERLAY_ENTRIES_MIN,
            "merged when past its bound"
        );
    }
    assert_eq!(set.len(), n);
    assert!(
        set.base.entries.len() > OVERLAY_ENTRIES_MIN,
        "merged into the base"
    );
    // Remove every third, re-reason every fifth, across further merges.
    let mut more = Vec::new();
    for i in 0..n {
        if i % 3 == 0 {
            seq += 1;
            more.push(remove(seq, "t", &format!("u{i}@x.com")));
        } else if i % 5 == 0 {
            seq += 1;
            more.push(add(
                seq,
                "t",
                &format!("u{i}@x.com"),
                SuppressionReason::Complaint,
            ));
        }
    }
    for chunk in more.chunks(700) {
        set.apply(chunk);
    }
    set.merge();
    let mut expected = 0;
    for i in 0..n {
        let want = match (i % 3, i % 5) {
            (0, _) => None,
            (_, 0) => Some(SuppressionReason::Complaint),
            _ => Some(SuppressionReason::HardBounce),
        };
        expected += usize::from(want.is_some());
        assert_eq!(set.get("t", &format!("u{i}@x.com")), want, "u{i}");
    }
    assert_eq!(set.len(), expected);
    assert_eq!(set.base.entries.len(), expected);
    assert!(
        set.base.entries.windows(2).all(|w| w[0] < w[1]),
        "sorted, unique"
    );
}

#[test]
fn no_false_positive_among_a_million_misses_at_a_hundred_thousand_entries() {
    // Expected false positives: 1e6 * 1e5 / 2^62 = 2e-8; any hit here is a bug.
    let mut b = SuppressionSetBuilder::new(keyer(), 1, 100_000);
    for i in 0..100_000 {
        b.push("t", &format!("in{i}@x.com"), SuppressionReason::Manual);
    }
    let set = b.finish();
    for i in 0..100_000 {
        assert!(set.get("t", &format!("in{i}@x.com")).is_some());
    }
    let hits = (0..1_000_000)
        .filter(|i| set.check("t", &format!("out{i}@x.com")).is_some())
        .count();
    assert_eq!(hits, 0);
    let per_entry = set.memory_bytes() as f64 / set.len() as f64;
    assert!(per_entry <= 8.5, "{per_entry} bytes per entry");
}

#[test]
fn directory_buckets_hold_their_entries() {
    for n in [0usize, 1, 7, 8, 9, 1_000, 65_537] {
        let mut b = SuppressionSetBuilder::new(keyer(), 0, n);
        for i in 0..n {
            b.push("t", &format!("a{i}@b.c"), SuppressionReason::Manual);
        }
        let set = b.finish();
        let base = &set.base;
        assert_eq!(base.dir.len(), (1 << base.bits) + 1);
        assert_eq!(*base.dir.last().expect("end") as usize, base.entries.len());
        if n >= BASE_ENTRIES_PER_BUCKET_TARGET {
            let avg = n as f64 / (base.dir.len() - 1) as f64;
            let target = BASE_ENTRIES_PER_BUCKET_TARGET as f64;
            assert!((target..2.0 * target).contains(&avg), "{n}: {avg}");
        }
        for i in 0..n {
            assert!(set.get("t", &format!("A{i}@B.C")).is_some());
        }
    }
}

/// Memory at the scale. `cargo test -p petrel-policy --release -- --ignored
/// ten_million` (the example `suppression_set` prints RSS and lookup times too).
#[test]
#[ignore]
fn ten_million_entries_fit_in_nine_bytes_each() {
    let n = 10_000_000;
    let mut b = SuppressionSetBuilder::new(keyer(), 1, n);
    for i in 0..n {
        b.push(
            &format!("ten_{}", i % 1_000),
            &format!("user{i}@example.com"),
            SuppressionReason::HardBounce,
        );
    }
    let set = b.finish();
    assert_eq!(set.len(), n);
    let per_entry = set.memory_bytes() as f64 / n as f64;
    assert!(per_entry <= 8.5, "{per_entry} bytes per entry");
}
