use proptest::prelude::*;

use super::*;

/// The policy of RFC 8461 §3.2's example.
const RFC_POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n\
                          mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

fn policy(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text.as_bytes())
}

#[test]
fn rfc_txt_example() {
    let r = StsRecord::from_txt(&["v=STSv1; id=20160831085700Z;"]).unwrap();
    assert_eq!(r.id, "20160831085700Z");
    // No final `;`, tabs around delimiters, an extension.
    let r = StsRecord::parse(b"v=STSv1\t;\tid=abc ; ext-1.x=v:1").unwrap();
    assert_eq!(r.id, "abc");
}

#[test]
fn txt_selection_discards_others_and_needs_exactly_one() {
    let spf = "v=spf1 -all";
    let r = StsRecord::from_txt(&[spf, "v=STSv1; id=a1"]).unwrap();
    assert_eq!(r.id, "a1");
    assert_eq!(StsRecord::from_txt(&[spf]), Err(PolicyError::NoRecord));
    assert_eq!(StsRecord::from_txt::<&str>(&[]), Err(PolicyError::NoRecord));
    assert_eq!(
        StsRecord::from_txt(&["v=STSv1; id=a1", "v=STSv1; id=b2"]),
        Err(PolicyError::MultipleRecords { count: 2 })
    );
    // `v=STSv10` is another version, not ours.
    assert_eq!(
        StsRecord::from_txt(&["v=STSv10; id=a1"]),
        Err(PolicyError::NoRecord)
    );
}

#[test]
fn txt_grammar_violations() {
    for bad in [
        "v=STSv1;",                                      // no id
        "v=STSv1; id=",                                  // empty id
        "v=STSv1; id=abc-def",                           // not alphanumeric
        "v=STSv1; id=123456789012345678901234567890123", // 33 characters
        "v=STSv1; id=a; ext",                            // field without `=`
        "v=STSv1; id=a; ext=",                           // empty extension value
        "v=STSv1; id=a; _x=1",                           // name starts with `_`
        "V=STSv1; id=a",                                 // case-sensitive version
        "v=STSv1; id=a;; id=b",                          // empty field in the middle
    ] {
        assert!(StsRecord::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    let long = format!("v=STSv1; id=a; x={}", "y".repeat(MTA_STS_TXT_BYTES_MAX));
    assert!(StsRecord::parse(long.as_bytes()).is_err());
    assert!(StsRecord::parse(b"v=STSv1; id=a\xff").is_err());
    let id32 = "a".repeat(32);
    assert_eq!(
        StsRecord::parse(format!("v=STSv1; id={id32}").as_bytes())
            .unwrap()
            .id,
        id32
    );
}

#[test]
fn txt_duplicate_id_keeps_the_first() {
    let r = StsRecord::parse(b"v=STSv1; id=first; id=second").unwrap();
    assert_eq!(r.id, "first");
}

#[test]
fn rfc_policy_example_crlf_and_lf() {
    let p = policy(RFC_POLICY).unwrap();
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.max_age_secs, 604_800);
    let mx: Vec<String> = p.mx.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        mx,
        ["mail.example.com", "*.example.net", "backupmx.example.com"]
    );
    assert_eq!(policy(&RFC_POLICY.replace("\r\n", "\n")).unwrap(), p);
    // No final line break.
    assert_eq!(policy(RFC_POLICY.trim_end()).unwrap(), p);
}

#[test]
fn rfc_mx_matching_examples() {
    let p = policy(RFC_POLICY).unwrap();
    assert!(p.matches_mx("mail.example.com"));
    assert!(p.matches_mx("MAIL.Example.COM."));
    assert!(p.matches_mx("mx1.example.net"));
    assert!(p.matches_mx("backupmx.example.com"));
    // §4.1: the wildcard stands for exactly one label.
    assert!(!p.matches_mx("example.net"));
    assert!(!p.matches_mx("foo.bar.example.net"));
    assert!(!p.matches_mx(".example.net"));
    assert!(!p.matches_mx("mail.example.com.evil.test"));
    assert!(!p.matches_mx("xmail.example.com"));
    assert!(!p.matches_mx(""));
}

#[test]
fn modes_and_none_without_mx() {
    let testing = policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 0\n").unwrap();
    assert_eq!(testing.mode, Mode::Testing);
    assert!(!testing.is_enforced());
    assert_eq!(testing.max_age_secs, 0);
    let none = policy("version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
    assert_eq!(none.mode, Mode::None);
    assert!(none.mx.is_empty());
    assert_eq!(
        policy("version: STSv1\nmode: enforce\nmax_age: 86400\n"),
        Err(PolicyError::Missing { field: "mx" })
    );
    assert_eq!(
        policy("version: STSv1\nmode: Enforce\nmx: a.test\nmax_age: 1\n"),
        Err(PolicyError::Mode)
    );
}

#[test]
fn required_fields_and_version() {
    assert_eq!(
        policy("mode: enforce\nmx: a.test\nmax_age: 1\n"),
        Err(PolicyError::Missing { field: "version" })
    );
    assert_eq!(
        policy("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n"),
        Err(PolicyError::Version)
    );
    assert_eq!(
        policy("version: STSv1\nmx: a.test\nmax_age: 1\n"),
        Err(PolicyError::Missing { field: "mode" })
    );
    assert_eq!(
        policy("version: STSv1\nmode: enforce\nmx: a.test\n"),
        Err(PolicyError::Missing { field: "max_age" })
    );
}

#[test]
fn bad_max_age() {
    for bad in [
        "-1",
        "",
        "1e3",
        "31557601",
        "99999999999",
        "4294967296",
        " 1 2",
        "0x10",
    ] {
        let text = format!("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: {bad}\n");
        assert_eq!(policy(&text), Err(PolicyError::MaxAge), "{bad:?}");
    }
    let max =
        format!("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: {MTA_STS_MAX_AGE_SECS_MAX}\n");
    assert_eq!(policy(&max).unwrap().max_age_secs, MTA_STS_MAX_AGE_SECS_MAX);
}

#[test]
fn duplicate_fields_keep_the_first_and_mx_accumulates() {
    let p = policy(
        "version: STSv1\nmode: testing\nmode: enforce\nmx: a.test\nmx: b.test\nmx: A.test\n\
         max_age: 60\nmax_age: 99999999999\nversion: STSv9\n",
    )
    .unwrap();
    assert_eq!(p.mode, Mode::Testing);
    assert_eq!(p.max_age_secs, 60);
    assert_eq!(p.mx.len(), 2, "a repeated pattern is kept once");
}

#[test]
fn unknown_keys_blank_lines_and_whitespace() {
    let p = policy(
        "\nversion:STSv1\n  mode: \tenforce  \r\nx-ext_1.2: anything at all: really\r\n\r\n\
         mx: mx.a.test.\nmax_age: 10\n\n",
    )
    .unwrap();
    assert_eq!(p.mx[0].suffix, "mx.a.test");
    assert_eq!(p.max_age_secs, 10);
}

#[test]
fn syntax_errors() {
    assert_eq!(
        policy("version: STSv1\nmode enforce\nmx: a.test\nmax_age: 1\n"),
        Err(PolicyError::Syntax { line: 2 })
    );
    assert_eq!(
        policy("version: STSv1\n: x\n"),
        Err(PolicyError::Syntax { line: 2 })
    );
    assert_eq!(
        policy("\u{feff}version: STSv1\n"),
        Err(PolicyError::Syntax { line: 1 })
    );
    assert_eq!(
        Policy::parse(b"version: STSv1\xff\n"),
        Err(PolicyError::NotUtf8)
    );
    for bad in [
        "*",
        "*.",
        "a..b",
        "-a.test",
        "a-.test",
        "a_b.test",
        "*.*.a.test",
        "a.*.test",
        "a test",
    ] {
        let text = format!("version: STSv1\nmode: enforce\nmx: {bad}\nmax_age: 1\n");
        assert_eq!(
            policy(&text),
            Err(PolicyError::MxPattern { line: 3 }),
            "{bad:?}"
        );
    }
}

#[test]
fn hostile_sizes() {
    // An overlong extension line inside the size bound is ignored...
    let long = format!(
        "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\nx: {}\n",
        "z".repeat(MTA_STS_POLICY_BYTES_MAX - 100)
    );
    assert!(policy(&long).is_ok());
    // ...but the body as a whole is bounded.
    let huge = format!("{RFC_POLICY}x: {}\n", "z".repeat(MTA_STS_POLICY_BYTES_MAX));
    assert!(matches!(policy(&huge), Err(PolicyError::TooLarge { .. })));
    // An mx host longer than a domain name, or with an overlong label.
    let host = format!("{}.test", "a.".repeat(130));
    let text = format!("version: STSv1\nmode: enforce\nmx: {host}\nmax_age: 1\n");
    assert!(matches!(policy(&text), Err(PolicyError::MxPattern { .. })));
    let label = format!("{}.test", "a".repeat(LABEL_BYTES_MAX + 1));
    let text = format!("version: STSv1\nmode: enforce\nmx: {label}\nmax_age: 1\n");
    assert!(matches!(policy(&text), Err(PolicyError::MxPattern { .. })));
    // Too many patterns.
    let mut many = String::from("version: STSv1\nmode: enforce\nmax_age: 1\n");
    for i in 0..=MTA_STS_MX_PATTERNS_MAX {
        many.push_str(&format!("mx: mx{i}.test\n"));
    }
    assert_eq!(policy(&many), Err(PolicyError::TooManyMx));
}

#[test]
fn canonical_text_round_trips() {
    let p = policy(RFC_POLICY).unwrap();
    assert_eq!(policy(&p.to_text()).unwrap(), p);
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
}

fn host() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
}

proptest! {
    /// Arbitrary bytes never panic either parser.
    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Policy::parse(&bytes);
        let _ = StsRecord::parse(&bytes);
        let _ = StsRecord::from_txt(&[bytes.clone(), bytes]);
    }

    /// Line-shaped noise around the fields never panics and a parsed policy keeps its bounds.
    #[test]
    fn policy_like_noise_keeps_invariants(
        lines in prop::collection::vec("(version|mode|mx|max_age|x)?:? ?[ -~]{0,40}", 0..40),
        crlf in any::<bool>(),
    ) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        if let Ok(p) = Policy::parse(text.as_bytes()) {
            prop_assert!(p.max_age_secs <= MTA_STS_MAX_AGE_SECS_MAX);
            prop_assert!(p.mx.len() <= MTA_STS_MX_PATTERNS_MAX);
            prop_assert!(p.mode == Mode::None || !p.mx.is_empty());
            prop_assert_eq!(Policy::parse(p.to_text().as_bytes()), Ok(p));
        }
    }

    /// An exact pattern matches only its host (any case, trailing dot); a wildcard matches
    /// exactly one extra label.
    #[test]
    fn matching_follows_the_rfc(suffix in host(), first in label(), extra in label(), upper in any::<bool>()) {
        let exact = policy(&format!("version: STSv1\nmode: enforce\nmx: {suffix}\nmax_age: 1\n")).unwrap();
        let shown = if upper { suffix.to_ascii_uppercase() } else { suffix.clone() };
        let dotted = format!("{shown}.");
        let deeper = format!("{first}.{suffix}");
        let one_more = format!("{first}.{shown}");
        let two_more = format!("{extra}.{first}.{suffix}");
        prop_assert!(exact.matches_mx(&shown));
        prop_assert!(exact.matches_mx(&dotted));
        prop_assert!(!exact.matches_mx(&deeper));
        let wild = policy(&format!("version: STSv1\nmode: enforce\nmx: *.{suffix}\nmax_age: 1\n")).unwrap();
        prop_assert!(wild.matches_mx(&one_more));
        prop_assert!(!wild.matches_mx(&suffix));
        prop_assert!(!wild.matches_mx(&two_more));
    }
}
