use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn the_policy_file_is_the_rfc_format_and_its_id_follows_it() {
    let p = InboundMtaSts::new(
        &s(&[
            "MX1.Petrel.Example.",
            "mx2.petrel.example",
            "mx1.petrel.example",
        ]),
        Mode::Enforce,
        MAX_AGE_SECS_DEFAULT,
        None,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        p.policy(),
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.petrel.example\r\n\
         mx: mx2.petrel.example\r\nmax_age: 604800\r\n"
    );
    assert_eq!(p.id().len(), POLICY_ID_LEN);
    assert!(p.id().bytes().all(|b| b.is_ascii_alphanumeric()));
    let testing = InboundMtaSts::new(&p.mx, Mode::Testing, MAX_AGE_SECS_DEFAULT, None)
        .unwrap()
        .unwrap();
    assert_ne!(testing.id(), p.id(), "another policy, another id");
    let same = InboundMtaSts::new(&p.mx, Mode::Enforce, MAX_AGE_SECS_DEFAULT, None)
        .unwrap()
        .unwrap();
    assert_eq!(
        same.id(),
        p.id(),
        "the same policy keeps its id across restarts"
    );
}

#[test]
fn settings_are_bounded() {
    assert_eq!(InboundMtaSts::new(&[], Mode::Enforce, 1, None), Ok(None));
    let mx = s(&["mx.petrel.example"]);
    assert_eq!(
        InboundMtaSts::new(&mx, Mode::Enforce, 60, None),
        Err(SettingsError::MaxAge(60))
    );
    assert_eq!(
        InboundMtaSts::new(&mx, Mode::Enforce, MAX_AGE_SECS_MAX + 1, None),
        Err(SettingsError::MaxAge(MAX_AGE_SECS_MAX + 1))
    );
    for bad in [
        "localhost",
        "mx..example",
        "-mx.example",
        "mx example.net",
        "*.*.x.net",
    ] {
        assert!(
            matches!(
                InboundMtaSts::new(&s(&[bad]), Mode::Enforce, MAX_AGE_SECS_DEFAULT, None),
                Err(SettingsError::BadMx(_))
            ),
            "{bad}"
        );
    }
    let many: Vec<String> = (0..=POLICY_MX_MAX)
        .map(|i| format!("mx{i}.x.net"))
        .collect();
    assert_eq!(
        InboundMtaSts::new(&many, Mode::Enforce, MAX_AGE_SECS_DEFAULT, None),
        Err(SettingsError::TooManyMx(POLICY_MX_MAX + 1))
    );
    for bad in [
        "tls@x.net",
        "http://x.net/r",
        "mailto:",
        "mailto:a@x.net; b",
    ] {
        assert_eq!(
            InboundMtaSts::new(&mx, Mode::Enforce, MAX_AGE_SECS_DEFAULT, Some(bad)),
            Err(SettingsError::BadRua(bad.to_string())),
        );
    }
    let wild = InboundMtaSts::new(&s(&["*.mx.petrel.example"]), Mode::Testing, 86_400, None);
    assert!(wild.unwrap().is_some());
}

#[test]
fn the_records_to_publish() {
    let p = InboundMtaSts::new(
        &s(&["mx1.petrel.example", "*.pool.petrel.example"]),
        Mode::Enforce,
        MAX_AGE_SECS_DEFAULT,
        Some("mailto:tlsrpt@petrel.example"),
    )
    .unwrap()
    .unwrap();
    let r = p.records_for("shop.test", Some("cp.petrel.example"));
    let view: Vec<(&str, &str, &str, String)> = r
        .iter()
        .map(|d| {
            (
                d.purpose.as_str(),
                d.rtype.as_str(),
                d.name.as_str(),
                d.value.clone(),
            )
        })
        .collect();
    assert_eq!(
        view,
        vec![
            (
                "mx",
                "MX",
                "shop.test",
                "10 mx1.petrel.example.".to_string()
            ),
            (
                "mta_sts",
                "TXT",
                "_mta-sts.shop.test",
                format!("v=STSv1; id={}", p.id())
            ),
            (
                "mta_sts_host",
                "CNAME",
                "mta-sts.shop.test",
                "cp.petrel.example.".to_string()
            ),
            (
                "tls_rpt",
                "TXT",
                "_smtp._tls.shop.test",
                "v=TLSRPTv1; rua=mailto:tlsrpt@petrel.example".to_string()
            ),
        ]
    );
    let no_rua = InboundMtaSts::new(&p.mx, Mode::Enforce, MAX_AGE_SECS_DEFAULT, None)
        .unwrap()
        .unwrap();
    assert!(!no_rua
        .records_for("shop.test", None)
        .iter()
        .any(|d| d.purpose == "tls_rpt"));
}

#[test]
fn the_host_header_names_the_policy_domain() {
    assert_eq!(
        policy_domain_of_host(Some("MTA-STS.Shop.Test.")),
        Ok("shop.test".to_string())
    );
    assert_eq!(
        policy_domain_of_host(Some("mta-sts.shop.test:8443")),
        Ok("shop.test".to_string())
    );
    assert_eq!(policy_domain_of_host(None), Err(HostError::Missing));
    assert_eq!(
        policy_domain_of_host(Some("www.shop.test")),
        Err(HostError::NotPolicyHost)
    );
    assert_eq!(
        policy_domain_of_host(Some("mta-sts.")),
        Err(HostError::NotPolicyHost)
    );
    for bad in ["mta-sts.shop.test:x", "mta-sts.sh op.test", "mta-sts.test"] {
        assert_eq!(
            policy_domain_of_host(Some(bad)),
            Err(HostError::Malformed),
            "{bad}"
        );
    }
    let long = format!("mta-sts.{}.test", "a".repeat(HOST_HEADER_MAX_BYTES));
    assert_eq!(
        policy_domain_of_host(Some(&long)),
        Err(HostError::Malformed)
    );
}

#[test]
fn mx_coverage_is_exact_or_one_wildcard_label() {
    let policy = s(&["mx1.petrel.example", "*.pool.petrel.example"]);
    assert!(mx_covered(&s(&["MX1.petrel.example."]), &policy));
    assert!(mx_covered(
        &s(&["a.pool.petrel.example", "mx1.petrel.example"]),
        &policy
    ));
    assert!(!mx_covered(&s(&["a.b.pool.petrel.example"]), &policy));
    assert!(!mx_covered(&s(&["pool.petrel.example"]), &policy));
    assert!(!mx_covered(
        &s(&["mx1.petrel.example", "mx.other.example"]),
        &policy
    ));
    assert!(!mx_covered(&[], &policy), "no MX: not ours");
}

#[test]
fn mx_verdicts_expire_and_stay_bounded() {
    let c = MxVerdicts::default();
    c.put("a.test", true, 1_000);
    assert_eq!(c.get("a.test", 1_000 + MX_VERDICT_TTL_MS - 1), Some(true));
    assert_eq!(c.get("a.test", 1_000 + MX_VERDICT_TTL_MS), None);
    for i in 0..(MX_VERDICTS_MAX as u64 + 10) {
        c.put(&format!("d{i}.test"), false, 2_000 + i);
    }
    let len = c.inner.lock().unwrap().len();
    assert!(len <= MX_VERDICTS_MAX, "{len}");
    let last = format!("d{}.test", MX_VERDICTS_MAX + 9);
    assert_eq!(c.get(&last, 3_000), Some(false));
}
