//! The file, the merge, the overlay and provider matching. Real replies are `replies_tests.rs`.

use super::*;

fn operator(text: &str) -> Result<Shaping, ShapingError> {
    Shaping::parse_operator("ops-shaping.toml", text)
}

fn google(s: &Shaping) -> Option<ProviderId> {
    s.provider_for(&[
        "gmail-smtp-in.l.google.com",
        "alt1.gmail-smtp-in.l.google.com.",
    ])
}

#[test]
fn shared_state_crosses_shards() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Shaping>();
    send_sync::<SiteRates>();
    send_sync::<SiteThrottle>();
}

#[test]
fn shipped_file_parses() {
    let file = file::parse(SHIPPED_SHAPING_NAME, SHIPPED_SHAPING).expect("shipped file");
    assert!(file.providers.len() >= 10, "{}", file.providers.len());
    let s = Shaping::shipped();
    assert!(s.rule_count() >= 20, "{}", s.rule_count());
    // Names are unique: they are metric labels.
    let mut names: Vec<&str> = (0..s.rule_count())
        .map(|i| s.rule_name(RuleId(i as u16)))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), s.rule_count());
    assert_eq!(
        s.limits(None),
        BUILT_IN_LIMITS,
        "the shipped default states the built-ins"
    );
}

#[test]
fn shipped_providers_match_their_real_mx_hosts() {
    let s = Shaping::shipped();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "gmail-smtp-in.l.google.com",
                "alt4.gmail-smtp-in.l.google.com",
            ],
            "google",
        ),
        (
            &["ASPMX.L.GOOGLE.COM.", "alt1.aspmx.l.google.com."],
            "google",
        ),
        (&["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"], "yahoo"),
        (&["outlook-com.olc.protection.outlook.com"], "outlook"),
        (&["example-com.mail.protection.outlook.com"], "office365"),
        (&["example-com.s-v1.mx.microsoft"], "office365-dane"),
        (&["mx01.mail.icloud.com", "mx02.mail.icloud.com"], "apple"),
        (&["mx1h1.comcast.net", "mx2c1.comcast.net"], "comcast"),
        (
            &[
                "eu-smtp-inbound-1.mimecast.com",
                "eu-smtp-inbound-2.mimecast.com",
            ],
            "mimecast",
        ),
        (&["smtp-in.orange.fr"], "orange"),
        (&["mx00.gmx.net", "mx01.emig.gmx.net"], "gmx-webde"),
        (&["mx1.mail.yahoo.co.jp"], "yahoo-japan"),
        (&["mx1.qq.com"], "qq"),
        (&["163mx01.mxmail.netease.com"], "netease"),
    ];
    for (hosts, want) in cases {
        let got = s.provider_for(hosts);
        assert_eq!(s.name(got), *want, "{hosts:?}");
    }
    let l = s.limits(google(&s));
    assert_eq!((l.connections_max, l.messages_per_connection_max), (5, 50));
    assert_eq!(
        l.recipients_per_transaction_max, 100,
        "from the default section"
    );
    let jp = s.limits(s.provider_named("yahoo-japan"));
    assert_eq!(jp.messages_per_minute_max, Some(600));
}

#[test]
fn a_provider_matches_only_when_every_mx_host_does() {
    let s = Shaping::shipped();
    // A vanity domain mixing Google with its own backup MX is not Google.
    assert_eq!(
        s.provider_for(&["aspmx.l.google.com", "backup.example.net"]),
        None
    );
    assert_eq!(s.provider_for(&[]), None, "a smart host has no MX hosts");
    assert_eq!(
        s.provider_for(&["google.com"]),
        None,
        "`*.` is below the name only"
    );
    assert_eq!(s.provider_for(&["mx.example.net"]), None);
    assert_eq!(s.name(None), "default");
    assert_eq!(
        s.limits(None),
        s.limits(s.provider_for(&["mx.example.net"]))
    );
}

#[test]
fn operator_file_replaces_set_fields_and_adds_providers_matched_first() {
    let s = operator(
        r#"
[default]
connections_max = 20
messages_per_hour_max = 5000

[provider.google]
connections_max = 12

[provider.workspace-eu]
mx = ["aspmx.l.google.com", "*.aspmx.l.google.com"]
connections_max = 3

[provider.acme]
mx = ["*.mx.acme.example"]
messages_per_minute_max = 0
"#,
    )
    .expect("valid");
    let g = google(&s);
    assert_eq!(s.name(g), "google");
    let l = s.limits(g);
    assert_eq!(l.connections_max, 12, "the operator's value");
    assert_eq!(
        l.messages_per_connection_max, 50,
        "the shipped value it did not set"
    );
    assert_eq!(
        l.messages_per_hour_max,
        Some(5_000),
        "the operator's default below it"
    );
    assert_eq!(s.limits(None).connections_max, 20);
    // The operator's new provider is tried before the shipped one whose pattern also matches.
    let ws = s.provider_for(&["aspmx.l.google.com", "alt1.aspmx.l.google.com"]);
    assert_eq!(s.name(ws), "workspace-eu");
    assert_eq!(s.limits(ws).connections_max, 3);
    // A rate of 0 lifts the default's.
    let acme = s.provider_for(&["MX1.mx.acme.example."]);
    assert_eq!(s.name(acme), "acme");
    assert_eq!(s.limits(acme).messages_per_minute_max, None);
    assert_eq!(s.limits(acme).messages_per_hour_max, Some(5_000));
}

#[test]
fn operator_mx_replaces_the_shipped_patterns() {
    let s = operator("[provider.yahoo]\nmx = [\"*.yahoo-mx.example\"]\n").expect("valid");
    assert_eq!(s.provider_for(&["mta5.am0.yahoodns.net"]), None);
    assert_eq!(s.name(s.provider_for(&["a.yahoo-mx.example"])), "yahoo");
}

#[test]
fn operator_rules_come_before_the_shipped_ones() {
    let s = operator(
        r#"
[[throttle]]
name = "ops-try-later"
code = 421
regex = 'try again later'
action = "suspend"
duration_secs = 60

[[provider.yahoo.throttle]]
name = "ops-yahoo-tss04"
regex = '\[TSS04\]'
action = "narrow"
connections_max = 1
duration_secs = 120
"#,
    )
    .expect("valid");
    let yahoo = s.provider_named("yahoo");
    let text = "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume";
    let a = s.throttle(yahoo, 421, Some("4.7.0"), text).expect("a rule");
    assert_eq!(s.rule_name(a.rule), "ops-yahoo-tss04");
    assert_eq!(a.kind, ThrottleKind::Narrow { connections_max: 1 });
    // At another site the operator's global rule wins over the shipped narrowing.
    let a = s
        .throttle(
            None,
            421,
            Some("4.7.0"),
            "Try again later, closing connection.",
        )
        .expect("a rule");
    assert_eq!(s.rule_name(a.rule), "ops-try-later");
    assert_eq!((a.kind, a.duration_ms), (ThrottleKind::Suspend, 60_000));
    // Its code condition holds for its rule too: a 451 is not its business, nor any shipped one's.
    assert_eq!(s.throttle(None, 451, None, "try again later"), None);
}

#[test]
fn conditions_all_hold_and_a_provider_rule_stays_with_its_provider() {
    let s = Shaping::shipped();
    let google = google(&s);
    let text = "Gmail has detected an unusual rate of unsolicited mail originating from your DKIM domain [example.com 15].";
    let a = s
        .throttle(google, 421, Some("4.7.28"), text)
        .expect("gmail rule");
    assert_eq!(s.rule_name(a.rule), "gmail-domain-rate-limited");
    assert_eq!(a.scope, ThrottleScope::Tenant);
    // The same text with another enhanced code, or without one, is not that rule.
    assert_eq!(s.throttle(google, 421, Some("4.7.0"), text), None);
    assert_eq!(s.throttle(google, 421, None, text), None);
    // Nor at a site that is not Google.
    assert_eq!(s.throttle(None, 421, Some("4.7.28"), text), None);
    // A code condition is exact.
    assert_eq!(s.throttle(None, 450, None, "please try again later"), None);
}

#[test]
fn only_the_first_bytes_of_a_long_reply_are_searched() {
    let s = Shaping::shipped();
    let far = format!("{} too many connections", "x".repeat(REPLY_TEXT_BYTES_MAX));
    assert_eq!(s.throttle(None, 421, None, &far), None);
    let near = format!(
        "too many connections {}",
        "x".repeat(3 * REPLY_TEXT_BYTES_MAX)
    );
    assert!(s.throttle(None, 421, None, &near).is_some());
}

#[test]
fn an_overlay_lays_limits_over_the_files_and_never_stacks() {
    let base = operator("[provider.google]\nmessages_per_connection_max = 40\n").expect("valid");
    let mut o = ShapingOverlay::default();
    o.set(
        "google",
        PartialLimits {
            connections_max: Some(9),
            ..PartialLimits::default()
        },
    );
    o.set(
        "default",
        PartialLimits {
            messages_per_minute_max: Some(1_200),
            connections_max: Some(0),
            ..PartialLimits::default()
        },
    );
    o.set(
        "no-such-provider",
        PartialLimits {
            connections_max: Some(1),
            ..PartialLimits::default()
        },
    );
    let s = base.with_overlay(&o);
    let g = google(&s);
    let l = s.limits(g);
    assert_eq!(l.connections_max, 9, "the overlay's");
    assert_eq!(l.messages_per_connection_max, 40, "the operator file's");
    assert_eq!(
        l.messages_per_minute_max,
        Some(1_200),
        "through the default"
    );
    assert_eq!(
        s.limits(None).connections_max,
        1,
        "a count of 0 is taken as 1"
    );
    assert_eq!(s.rule_count(), base.rule_count());
    assert_eq!(google(&s), google(&base), "ids stay valid");

    // A second overlay replaces the first whole, from the files' values.
    let mut o2 = ShapingOverlay::default();
    o2.set(
        "yahoo",
        PartialLimits {
            connections_max: Some(3),
            ..PartialLimits::default()
        },
    );
    let s2 = s.with_overlay(&o2);
    assert_eq!(s2.limits(g).connections_max, 5, "back to the shipped value");
    assert_eq!(s2.limits(g).messages_per_minute_max, None);
    assert_eq!(s2.limits(s2.provider_named("yahoo")).connections_max, 3);
    // An empty overlay gives the files' limits back.
    let s3 = s.with_overlay(&ShapingOverlay::default());
    assert_eq!(s3.limits(g), base.limits(g));
}

#[test]
fn an_overlay_reads_as_json_by_provider_name() {
    let o: ShapingOverlay = serde_json::from_str(
        r#"{"google": {"connections_max": 7}, "default": {"messages_per_hour_max": 100}}"#,
    )
    .expect("json");
    let s = Shaping::shipped().with_overlay(&o);
    let g = google(&s);
    assert_eq!(s.limits(g).connections_max, 7);
    assert_eq!(s.limits(g).messages_per_hour_max, Some(100));
    assert!(
        serde_json::from_str::<ShapingOverlay>(r#"{"google": {"conections_max": 7}}"#).is_err()
    );
}

#[test]
fn a_snapshots_overlay_is_laid_over_once_per_policy_version() {
    use petrel_policy::snapshot::ShapingLimits;
    use std::sync::Arc;
    let entry = |provider: &str, connections_max| ShapingLimits {
        provider: provider.into(),
        connections_max,
        messages_per_connection_max: None,
        messages_per_minute_max: Some(0),
        messages_per_hour_max: None,
        recipients_per_transaction_max: None,
    };
    let pushed = [entry("google", Some(3)), entry("no-such-provider", Some(1))];
    let o = ShapingOverlay::from_snapshot(&pushed);
    assert_eq!(o.providers.len(), 2);
    assert_eq!(o.providers["google"].connections_max, Some(3));

    let file = Arc::new(Shaping::shipped());
    let g = google(&file);
    let cache = ShapingCache::default();
    assert_eq!(cache.version(), None);
    let mut builds = 0;
    let mut get = |version, list: &[ShapingLimits]| {
        cache.get(version, &file, || {
            builds += 1;
            ShapingOverlay::from_snapshot(list)
        })
    };
    // Nothing pushed: the file's own `Shaping`, not a copy.
    let none = get(1, &[]);
    assert!(Arc::ptr_eq(&none, &file));
    let v2 = get(2, &pushed);
    assert_eq!(v2.limits(g).connections_max, 3, "the pushed limit");
    assert_eq!(
        v2.providers().count(),
        file.providers().count(),
        "no provider added"
    );
    let again = get(2, &pushed);
    assert!(Arc::ptr_eq(&v2, &again), "the same version is not rebuilt");
    let v3 = get(3, &[entry("google", Some(8))]);
    assert_eq!(
        v3.limits(g).connections_max,
        8,
        "a new version replaces it whole"
    );
    assert_eq!(builds, 3);
    assert_eq!(cache.version(), Some(3));
    // A rate of 0 lifts the files' rate; an unset limit keeps the files' value.
    assert_eq!(v3.limits(g).messages_per_minute_max, None);
    assert_eq!(
        v3.limits(g).messages_per_connection_max,
        file.limits(g).messages_per_connection_max
    );
}

fn err(text: &str) -> String {
    operator(text).expect_err("refused").to_string()
}

#[test]
fn bad_files_are_typed_errors_naming_the_line_and_key() {
    let e = operator("[provider.google]\nconections_max = 3\n").expect_err("typo");
    assert!(matches!(e, ShapingError::Parse { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("ops-shaping.toml") && text.contains("line 2"),
        "{text}"
    );
    assert!(text.contains("conections_max"), "{text}");

    let text = err("[default]\nconnections_max = 0\n");
    assert!(
        text.contains("default.connections_max") && text.contains("at least 1"),
        "{text}"
    );

    let text = err("\n\n[provider.acme]\nconnections_max = 3\n");
    assert!(
        text.contains("provider.acme.mx") && text.contains("line 3"),
        "{text}"
    );

    let text = err("[provider.acme]\nmx = [\"*.acme.example\", \"bad host\"]\n");
    assert!(
        text.contains("provider.acme.mx") && text.contains("bad host"),
        "{text}"
    );

    let text = err("[provider.acme]\nmx = []\n");
    assert!(text.contains("at least one pattern"), "{text}");

    let rule = |body: &str| format!("[default]\n\n[[throttle]]\n{body}\n");
    let text = err(&rule(
        "regex = 'x('\naction = \"suspend\"\nduration_secs = 60",
    ));
    assert!(
        text.contains("line 3") && text.contains("throttle[0].regex") && text.contains("bad regex"),
        "{text}"
    );
    let text = err(&rule("action = \"suspend\"\nduration_secs = 60"));
    assert!(
        text.contains("needs `code`, `enhanced` or `regex`"),
        "{text}"
    );
    let text = err(&rule("code = 421\naction = \"narrow\"\nduration_secs = 60"));
    assert!(text.contains("throttle[0].connections_max"), "{text}");
    let text = err(&rule(
        "code = 421\naction = \"narrow\"\nconnections_max = 0\nduration_secs = 60",
    ));
    assert!(text.contains("0 is `suspend`"), "{text}");
    let text = err(&rule("code = 421\naction = \"suspend\"\nduration_secs = 0"));
    assert!(text.contains("throttle[0].duration_secs"), "{text}");
    let text = err(&rule(
        "code = 421\naction = \"suspend\"\nduration_secs = 999999999",
    ));
    assert!(text.contains("duration_secs"), "{text}");
    let text = err(&rule("code = 42\naction = \"suspend\"\nduration_secs = 60"));
    assert!(text.contains("throttle[0].code"), "{text}");
    let text = err(&rule(
        "enhanced = \"4.7.x\"\naction = \"suspend\"\nduration_secs = 60",
    ));
    assert!(text.contains("throttle[0].enhanced"), "{text}");
    let text = err(&rule("code = 421\naction = \"pause\"\nduration_secs = 60"));
    assert!(text.contains("pause") && text.contains("line 5"), "{text}");
    let text = err(&rule(
        "code = 421\naction = \"narrow\"\nconnections_max = 1\nscope = \"tenant\"\nduration_secs = 60",
    ));
    assert!(text.contains("throttle[0].scope"), "{text}");
    let text = err(&rule(
        "code = 421\naction = \"suspend\"\nconnections_max = 2\nduration_secs = 60",
    ));
    assert!(text.contains("only `narrow`"), "{text}");

    let text = err(&format!(
        "[provider.acme]\nmx = [\"*.a.example\"]\n[[provider.acme.throttle]]\nregex = '{}'\naction = \"suspend\"\nduration_secs = 60\n",
        "a".repeat(REGEX_LEN_BYTES_MAX + 1)
    ));
    assert!(
        text.contains("provider.acme.throttle[0].regex") && text.contains("line 3"),
        "{text}"
    );

    let text = err("[provider.default]\nmx = [\"*.a.example\"]\n");
    assert!(text.contains("provider.default"), "{text}");
    let text = err("[provider.\"a b\"]\nmx = [\"*.a.example\"]\n");
    assert!(text.contains("a name is"), "{text}");
}

#[test]
fn files_over_their_bounds_are_refused() {
    let mut many = String::new();
    for i in 0..=THROTTLE_RULES_MAX {
        many.push_str(&format!(
            "[[throttle]]\ncode = 421\naction = \"suspend\"\nduration_secs = {}\n",
            i + 1
        ));
    }
    assert!(matches!(
        operator(&many),
        Err(ShapingError::TooMany {
            what: "throttle rules",
            ..
        })
    ));

    let mut providers = String::new();
    for i in 0..=PROVIDERS_MAX {
        providers.push_str(&format!("[provider.p{i}]\nmx = [\"*.p{i}.example\"]\n"));
    }
    assert!(matches!(
        operator(&providers),
        Err(ShapingError::TooMany {
            what: "providers",
            ..
        })
    ));

    let big = format!("# {}\n", "x".repeat(SHAPING_FILE_BYTES_MAX as usize));
    assert!(matches!(
        operator(&big),
        Err(ShapingError::FileTooLarge { .. })
    ));

    // A regex whose compiled form is over the size bound.
    let huge =
        "[[throttle]]\nregex = '(\\w{1000}){1000}'\naction = \"suspend\"\nduration_secs = 60\n";
    assert!(matches!(operator(huge), Err(ShapingError::BadRegex { .. })));
}

#[test]
fn load_reads_the_operator_file_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shaping.toml");
    std::fs::write(&path, "[provider.google]\nconnections_max = 2\n").expect("write");
    let s = Shaping::load(Some(&path)).expect("loads");
    assert_eq!(s.limits(google(&s)).connections_max, 2);
    let shipped = Shaping::load(None).expect("shipped");
    assert_eq!(shipped.limits(google(&shipped)).connections_max, 5);
    let e = Shaping::load(Some(&dir.path().join("missing.toml"))).expect_err("missing");
    assert!(
        matches!(e, ShapingError::Read { .. }) && e.to_string().contains("missing.toml"),
        "{e}"
    );
}

/// The operator file `docs/shaping.md` shows is one the engine accepts, and does what it says.
#[test]
fn the_documented_operator_file_loads() {
    let doc = include_str!("../../../../docs/shaping.md");
    let block = doc
        .split("```toml")
        .map(|b| b.split("```").next().unwrap_or(""))
        .find(|b| b.contains("[provider.acme-relay]"))
        .expect("the example in docs/shaping.md");
    let s = operator(block).expect("the documented example loads");
    let g = google(&s);
    assert_eq!(s.limits(g).connections_max, 10);
    assert_eq!(s.limits(g).messages_per_connection_max, 50);
    assert_eq!(s.limits(g).messages_per_hour_max, Some(20_000));
    let text =
        "Your email has been rate limited because SPF authentication didn't pass for this message.";
    let a = s
        .throttle(g, 421, Some("4.7.27"), text)
        .expect("the opt-in rule");
    assert_eq!(
        (s.rule_name(a.rule), a.scope),
        ("gmail-unauthenticated", ThrottleScope::Tenant)
    );
    assert_eq!(
        s.throttle(
            Shaping::shipped().provider_for(&["aspmx.l.google.com"]),
            421,
            Some("4.7.27"),
            text
        ),
        None
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any reply, however long or strange, gets an answer and never a panic.
        #[test]
        fn any_reply_is_answered(code in 200u16..600, enhanced in "[0-9.]{0,9}", text in "\\PC{0,300}") {
            let s = Shaping::shipped();
            for provider in s.providers() {
                let _ = s.throttle(Some(provider), code, Some(&enhanced), &text);
            }
            let _ = s.throttle(None, code, None, &text);
        }

        /// Case and a trailing dot never change which provider a site is.
        #[test]
        fn matching_ignores_case_and_a_trailing_dot(label in "[a-z0-9-]{1,20}", upper in any::<bool>(), dot in any::<bool>()) {
            let s = Shaping::shipped();
            let plain = format!("{label}.l.google.com");
            let mut host = if upper { plain.to_ascii_uppercase() } else { plain.clone() };
            if dot {
                host.push('.');
            }
            prop_assert_eq!(s.provider_for(&[&host]), s.provider_for(&[&plain]));
            prop_assert_eq!(s.name(s.provider_for(&[&host])), "google");
        }
    }
}
