use super::*;
use petrel_policy::{DkimAlgorithm, DkimKey, PolicySnapshot, SendingDomain, Tenant};

fn tenant(id: &str, arc_seal: bool) -> Tenant {
    Tenant {
        id: id.into(),
        name: id.into(),
        suspended: false,
        messages_per_second_max: None,
        messages_per_day_max: None,
        allow_unverified_domains: false,
        new_tenant_cap: None,
        sending_disabled: None,
        reputation_warning: None,
        list_unsubscribe: false,
        arc_seal,
        egress_pool: None,
        delivery_weight: 1,
    }
}

/// A domain with keys of `algorithms`, active from `NOW_MS`.
fn domain(tenant_id: &str, name: &str, algorithms: &[DkimAlgorithm]) -> SendingDomain {
    let dkim_keys = algorithms
        .iter()
        .enumerate()
        .map(|(i, &algorithm)| DkimKey {
            selector: format!("s{i}"),
            algorithm,
            private_key_pkcs8_der: petrel_policy::keys::generate(algorithm)
                .expect("key")
                .private_key_pkcs8_der,
            active_from_unix_ms: NOW_MS,
            retired: false,
        })
        .collect();
    SendingDomain {
        tenant_id: tenant_id.into(),
        name: name.into(),
        verified: true,
        messages_per_second_max: None,
        dkim_keys,
        sending_disabled: None,
        reputation_warning: None,
        auth_failure: None,
    }
}

const NOW_MS: u64 = 1_000_000;
const RSA: DkimAlgorithm = DkimAlgorithm::Rsa2048;
const ED25519: DkimAlgorithm = DkimAlgorithm::Ed25519;

/// `fwd` forwards: fwd.test has an Ed25519 and an RSA key, edonly.test an Ed25519 key only,
/// nokey.test none; `plain` does not forward.
fn policy() -> CompiledPolicy {
    let snap = PolicySnapshot {
        version: 1,
        tenants: vec![tenant("fwd", true), tenant("plain", false)],
        domains: vec![
            domain("fwd", "fwd.test", &[ED25519, RSA]),
            domain("fwd", "edonly.test", &[ED25519]),
            domain("fwd", "nokey.test", &[]),
            domain("plain", "plain.test", &[RSA]),
        ],
        ..PolicySnapshot::default()
    };
    CompiledPolicy::compile(snap).expect("valid policy")
}

fn chain(headers_max: usize, sets: usize, last_failed: bool, validated: bool) -> ChainState {
    ChainState {
        headers_max,
        sets,
        last_failed,
        validated,
    }
}

#[test]
fn the_first_set_is_instance_1_with_cv_none() {
    assert_eq!(plan(chain(0, 0, false, false)), Ok((1, Cv::None)));
}

#[test]
fn a_validated_chain_continues_with_pass_and_a_broken_one_ends_with_fail() {
    assert_eq!(plan(chain(1, 1, false, true)), Ok((2, Cv::Pass)));
    // RFC 8617 §5.1.2: the sealer still adds its set, saying the chain failed.
    assert_eq!(plan(chain(3, 3, false, false)), Ok((4, Cv::Fail)));
}

#[test]
fn a_failed_chain_a_full_one_and_an_unreadable_one_get_no_set() {
    // The newest seal already says cv=fail: nothing may follow it (RFC 8617 §5.1, step 1).
    assert_eq!(plan(chain(2, 2, true, false)), Err(Skip::ChainFailed));
    assert_eq!(
        plan(chain(ARC_INSTANCES_MAX, ARC_INSTANCES_MAX, false, true)),
        Err(Skip::ChainTooLong)
    );
    assert_eq!(
        plan(chain(
            ARC_INSTANCES_MAX - 1,
            ARC_INSTANCES_MAX - 1,
            false,
            true
        )),
        Ok((ARC_INSTANCES_MAX, Cv::Pass))
    );
    // ARC headers mail-auth could not group into sets: the next instance has no number.
    assert_eq!(plan(chain(2, 0, false, false)), Err(Skip::ChainUnreadable));
}

#[test]
fn only_a_tenant_with_arc_seal_forwards() {
    let p = policy();
    assert_eq!(forwarding_tenant(&p, Some("fwd")), Some("fwd"));
    assert_eq!(forwarding_tenant(&p, Some("plain")), None);
    assert_eq!(forwarding_tenant(&p, Some("unknown")), None);
    assert_eq!(forwarding_tenant(&p, None), None);
}

#[test]
fn the_seal_uses_the_tenants_from_domain_else_its_envelope_domain() {
    let p = policy();
    // Its own From domain (a subdomain counts as its registered domain).
    assert_eq!(
        seal_domain(&p, "fwd", Some("news.fwd.test"), Some("x.test"), NOW_MS),
        Some("fwd.test")
    );
    // A foreign From: the envelope sender's domain (the forwarder's return path).
    assert_eq!(
        seal_domain(&p, "fwd", Some("origin.test"), Some("FWD.test"), NOW_MS),
        Some("fwd.test")
    );
    // Before its keys are active: no seal.
    assert_eq!(
        seal_domain(&p, "fwd", Some("origin.test"), Some("fwd.test"), NOW_MS - 1),
        None
    );
    // ARC is rsa-sha256 only: a domain with an Ed25519 key alone, or no key, cannot seal; the
    // envelope's domain is tried when the From domain cannot.
    for d in ["edonly.test", "nokey.test"] {
        assert_eq!(
            seal_domain(&p, "fwd", Some("origin.test"), Some(d), NOW_MS),
            None
        );
        assert_eq!(
            seal_domain(&p, "fwd", Some(d), Some("fwd.test"), NOW_MS),
            Some("fwd.test")
        );
    }
    // Another tenant's domain: no seal.
    assert_eq!(
        seal_domain(&p, "fwd", Some("plain.test"), Some("plain.test"), NOW_MS),
        None
    );
    assert_eq!(seal_domain(&p, "fwd", None, None, NOW_MS), None);
}

#[test]
fn a_forwarding_tenant_relays_a_foreign_from_only_under_its_own_envelope_domain() {
    let p = policy();
    let fwd = Some(Some("fwd"));
    assert!(waives_from_check(
        &p,
        fwd,
        Some("origin.test"),
        Some("fwd.test")
    ));
    // Its own From domain needs no waiver: the ordinary check applies.
    assert!(!waives_from_check(
        &p,
        fwd,
        Some("fwd.test"),
        Some("fwd.test")
    ));
    // An envelope domain that is not its own, or none.
    assert!(!waives_from_check(
        &p,
        fwd,
        Some("origin.test"),
        Some("plain.test")
    ));
    assert!(!waives_from_check(&p, fwd, Some("origin.test"), None));
    // Another tenant's From domain is never waived: forwarding cannot write it.
    assert!(!waives_from_check(
        &p,
        fwd,
        Some("plain.test"),
        Some("fwd.test")
    ));
    // A tenant that does not forward, a config-file user, a trusted network.
    let plain = Some(Some("plain"));
    assert!(!waives_from_check(
        &p,
        plain,
        Some("origin.test"),
        Some("plain.test")
    ));
    assert!(!waives_from_check(
        &p,
        Some(None),
        Some("origin.test"),
        Some("fwd.test")
    ));
    assert!(!waives_from_check(
        &p,
        None,
        Some("origin.test"),
        Some("fwd.test")
    ));
}

#[test]
fn envelope_domains() {
    assert_eq!(address_domain("srs@fwd.test"), Some("fwd.test"));
    assert_eq!(address_domain(""), None);
    assert_eq!(address_domain("user@"), None);
}

#[test]
fn every_cv_and_skip_has_its_metric_label() {
    for cv in [Cv::None, Cv::Pass, Cv::Fail] {
        assert!(CV_LABELS.contains(&cv.label()));
    }
    for skip in [
        Skip::NoKey,
        Skip::ChainFailed,
        Skip::ChainTooLong,
        Skip::ChainUnreadable,
        Skip::Unparseable,
        Skip::Timeout,
        Skip::Unavailable,
        Skip::SealError,
    ] {
        assert!(SKIP_REASONS.contains(&skip.reason()));
    }
}

#[test]
fn a_seal_ending_on_a_fold_is_joined_and_a_message_signature_so_is_made_again() {
    let aar = "ARC-Authentication-Results: i=1; h;\r\n\tdkim=pass\r\n";
    let ams = "ARC-Message-Signature: i=1; b=xyz==;\r\n";
    let seal = "ARC-Seal: i=1; cv=none;\r\n\tb=abc\r\n\tdef==\r\n\t;\r\n";
    let set = format!("{seal}{ams}{aar}");
    let tidy = tidy_set(set.as_bytes()).expect("kept");
    assert_eq!(
        String::from_utf8(tidy).unwrap(),
        format!("ARC-Seal: i=1; cv=none;\r\n\tb=abc\r\n\tdef==;\r\n{ams}{aar}")
    );
    // Nothing to join: unchanged.
    let clean = format!("ARC-Seal: i=1; b=abc==;\r\n{ams}{aar}");
    assert_eq!(tidy_set(clean.as_bytes()).unwrap(), clean.as_bytes());
    // The message signature ends on a fold: its seal covers it as written, so seal again.
    let dangling =
        format!("ARC-Seal: i=1; b=abc==;\r\nARC-Message-Signature: i=1; b=xyz==\r\n\t;\r\n{aar}");
    assert_eq!(tidy_set(dangling.as_bytes()), None);
    // Not an ARC set: nothing to send.
    assert_eq!(tidy_set(b"X: y\r\n"), None);
}
