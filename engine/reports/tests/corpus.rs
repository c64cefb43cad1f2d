//! The sample corpus in `testdata/`: every file has its expected result here, and a file
//! without one fails `every_sample_has_an_expectation`.
//!
//! The samples are written after public examples (RFC 3464, 5965, 6591 and 7489, and the
//! shapes Postfix, Exim, qmail, Exchange/Office 365, Gmail, Yahoo, AOL, Microsoft JMRP and
//! Comcast send). Their VERP return paths were made with [`corpus_keys`], so the tests also
//! check that a token survives a trip through a remote MTA's report.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use petrel_bounce::BounceClassifier;
use petrel_reports::limits::MAIL_BYTES_MAX;
use petrel_reports::*;

/// The key the corpus's VERP addresses were made with.
fn corpus_keys() -> VerpKeys {
    VerpKeys::new(
        VerpKey::new(1, b"petrel-corpus-test-key-0001").unwrap(),
        vec![],
    )
    .unwrap()
}

/// The token of most samples: tenant `ten_00000000000000aa`, message 0x0100000000000042, recipient 0.
fn verp_42() -> TokenData {
    TokenData {
        tenant_id: "ten_00000000000000aa".into(),
        message_id: 0x0100_0000_0000_0042,
        recipient: RecipientRef::Index(0),
    }
}

fn read(dir: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(dir)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A recipient's expected result: address, action, status, "category/class".
type Rcpt = (
    &'static str,
    Action,
    Option<&'static str>,
    Option<&'static str>,
);

struct BounceCase {
    file: &'static str,
    format: BounceFormat,
    /// The original's Message-ID, when the bounce includes the original's headers.
    message_id: Option<&'static str>,
    /// Whether the original's Return-Path is the corpus's `verp_42` token.
    verp_42: bool,
    recipients: &'static [Rcpt],
}

use Action::{Delayed, Delivered, Failed};
use BounceFormat::{Exchange, Exim, Gmail, Postfix, Qmail, Rfc3464};

#[rustfmt::skip]
const BOUNCES: &[BounceCase] = &[
    BounceCase { file: "rfc3464_postfix_user_unknown.eml", format: Rfc3464, message_id: Some("offer-42@shop.example"), verp_42: true,
        recipients: &[("jane.doe@receiver.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "rfc3464_rfc_example_two_recipients.eml", format: Rfc3464, message_id: None, verp_42: false,
        recipients: &[("louisl@larry.slip.umd.edu", Failed, Some("4.0.0"), Some("transient/soft")),
                      ("pongo@zoo.example", Delayed, Some("4.2.2"), Some("mailbox_full/soft"))] },
    BounceCase { file: "rfc3464_gmail_dsn.eml", format: Rfc3464, message_id: Some("offer-43@shop.example"), verp_42: false,
        recipients: &[("no.such.user@gmail.com", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "rfc3464_exchange_online.eml", format: Rfc3464, message_id: Some("offer-44@shop.example"), verp_42: true,
        recipients: &[("someone@contoso.example", Failed, Some("5.1.10"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "rfc3464_mailbox_full.eml", format: Rfc3464, message_id: Some("m-full@shop.example"), verp_42: true,
        recipients: &[("full@mailbox.example", Failed, Some("5.2.2"), Some("mailbox_full/hard"))] },
    BounceCase { file: "rfc3464_spamhaus_block.eml", format: Rfc3464, message_id: Some("m-block@shop.example"), verp_42: true,
        recipients: &[("user@isp.example", Failed, Some("5.7.1"), Some("spam_block/hard"))] },
    BounceCase { file: "rfc3464_gmail_dmarc_reject.eml", format: Rfc3464, message_id: Some("m-dmarc@shop.example"), verp_42: true,
        recipients: &[("friend@gmail.com", Failed, Some("5.7.26"), Some("auth_failure/hard"))] },
    BounceCase { file: "rfc3464_postfix_delayed.eml", format: Rfc3464, message_id: Some("m-delay@shop.example"), verp_42: true,
        recipients: &[("slow@far.example", Delayed, Some("4.4.1"), Some("transient/soft"))] },
    BounceCase { file: "rfc3464_postfix_bad_domain.eml", format: Rfc3464, message_id: Some("m-nxdomain@shop.example"), verp_42: true,
        recipients: &[("someone@no-such-domain.example", Failed, Some("5.4.4"), Some("routing_error/hard"))] },
    BounceCase { file: "rfc3464_status_only.eml", format: Rfc3464, message_id: None, verp_42: false,
        recipients: &[("gone@corp.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "rfc3464_global_utf8.eml", format: Rfc3464, message_id: None, verp_42: false,
        recipients: &[("josé@international.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "rfc3464_three_recipients.eml", format: Rfc3464, message_id: Some("m-three@shop.example"), verp_42: true,
        recipients: &[("a@bigcorp.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard")),
                      ("b@bigcorp.example", Failed, Some("5.2.1"), Some("inactive_mailbox/hard")),
                      ("c@bigcorp.example", Delivered, Some("2.0.0"), None)] },
    BounceCase { file: "rfc3464_yahoo_rate_limited.eml", format: Rfc3464, message_id: Some("m-tss04@shop.example"), verp_42: true,
        recipients: &[("someone@yahoo.com", Failed, Some("4.7.0"), Some("rate_limited/soft"))] },
    BounceCase { file: "rfc3464_message_too_large.eml", format: Rfc3464, message_id: Some("m-large@shop.example"), verp_42: true,
        recipients: &[("tiny@small.example", Failed, Some("5.3.4"), Some("message_too_large/hard"))] },
    BounceCase { file: "qmail_user_unknown.eml", format: Qmail, message_id: Some("q-1@shop.example"), verp_42: true,
        recipients: &[("nobody@oldhost.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "qmail_no_host.eml", format: Qmail, message_id: Some("q-2@shop.example"), verp_42: true,
        recipients: &[("someone@nohost.invalid", Failed, Some("5.1.2"), Some("bad_domain/hard"))] },
    BounceCase { file: "qmail_two_recipients.eml", format: Qmail, message_id: Some("q-3@shop.example"), verp_42: false,
        recipients: &[("first@listhost.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard")),
                      ("second@listhost.example", Failed, Some("5.2.2"), Some("mailbox_full/hard"))] },
    BounceCase { file: "exim_user_unknown.eml", format: Exim, message_id: Some("x-1@shop.example"), verp_42: true,
        recipients: &[("missing@eximhost.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "exim_delayed.eml", format: Exim, message_id: None, verp_42: false,
        recipients: &[("later@slowhost.example", Delayed, Some("4.3.0"), Some("transient/soft"))] },
    BounceCase { file: "exim_unrouteable.eml", format: Exim, message_id: Some("x-2@shop.example"), verp_42: false,
        recipients: &[("someone@gone-domain.example", Failed, None, Some("invalid_recipient/hard"))] },
    BounceCase { file: "postfix_text_only.eml", format: Postfix, message_id: Some("p-1@shop.example"), verp_42: true,
        recipients: &[("olduser@legacy.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "exchange_text_ndr.eml", format: Exchange, message_id: Some("e-1@shop.example"), verp_42: true,
        recipients: &[("left.company@corp.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "exchange_2003_ndr.eml", format: Exchange, message_id: None, verp_42: false,
        recipients: &[("bob@old-exchange.example", Failed, Some("5.1.1"), Some("invalid_recipient/hard"))] },
    BounceCase { file: "gmail_text_address_not_found.eml", format: Gmail, message_id: None, verp_42: false,
        recipients: &[("typo.user@gmial.example", Failed, None, Some("bad_domain/hard"))] },
    BounceCase { file: "gmail_text_failed_permanently.eml", format: Gmail, message_id: Some("g-1@shop.example"), verp_42: false,
        recipients: &[("closed@far-isp.example", Failed, Some("5.2.1"), Some("inactive_mailbox/hard"))] },
];

fn status_text(s: Option<(u8, u16, u16)>) -> Option<String> {
    s.map(|(a, b, c)| format!("{a}.{b}.{c}"))
}

#[test]
fn bounces_parse_to_their_expected_results() {
    let classifier = BounceClassifier::shipped();
    let keys = corpus_keys();
    for case in BOUNCES {
        let dsn = parse_dsn(&read("bounces", case.file), &classifier)
            .unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let f = case.file;
        assert_eq!(dsn.format, case.format, "{f}");
        let original = dsn.original.as_ref();
        assert_eq!(
            original.and_then(|o| o.message_id.as_deref()),
            case.message_id,
            "{f}"
        );
        let verp = original.and_then(|o| o.verp(&keys));
        assert_eq!(verp.map(|v| v.data) == Some(verp_42()), case.verp_42, "{f}");
        let got: Vec<(String, Action, Option<String>, Option<String>)> = dsn
            .recipients
            .iter()
            .map(|r| {
                (
                    r.final_recipient.clone().unwrap_or_default(),
                    r.action,
                    status_text(r.status),
                    r.classification
                        .map(|c| format!("{}/{}", c.category, c.class)),
                )
            })
            .collect();
        let want: Vec<(String, Action, Option<String>, Option<String>)> = case
            .recipients
            .iter()
            .map(|(a, act, s, c)| {
                (
                    a.to_string(),
                    *act,
                    s.map(String::from),
                    c.map(String::from),
                )
            })
            .collect();
        assert_eq!(got, want, "{f}");
    }
}

#[test]
fn rfc3464_fields_are_kept() {
    let classifier = BounceClassifier::shipped();
    let dsn = parse_dsn(
        &read("bounces", "rfc3464_postfix_user_unknown.eml"),
        &classifier,
    )
    .unwrap();
    assert_eq!(dsn.reporting_mta.as_deref(), Some("mx1.receiver.example"));
    assert_eq!(
        dsn.original_envelope_id.as_deref(),
        Some("0100000000000042")
    );
    let r = &dsn.recipients[0];
    assert_eq!(
        r.original_recipient.as_deref(),
        Some("jane.doe@receiver.example")
    );
    assert_eq!(r.remote_mta.as_deref(), Some("mailstore.receiver.example"));
    assert_eq!(
        r.diagnostic_code.as_deref(),
        Some("550 5.1.1 <jane.doe@receiver.example>: Recipient address rejected: User unknown in virtual mailbox table")
    );
    let o = dsn.original.unwrap();
    assert_eq!(o.to, vec!["jane.doe@receiver.example"]);
    assert_eq!(o.subject.as_deref(), Some("Your December offers"));
    // The Gmail DSN bounced a different message and recipient (index 1 of message 0x43).
    let gmail = parse_dsn(&read("bounces", "rfc3464_gmail_dsn.eml"), &classifier).unwrap();
    let token = gmail.original.unwrap().verp(&corpus_keys()).unwrap();
    assert_eq!(token.data.message_id, 0x0100_0000_0000_0043);
    assert_eq!(token.data.recipient, RecipientRef::Index(1));
}

struct ArfCase {
    file: &'static str,
    expected: Result<ArfExpected, ArfError>,
}

struct ArfExpected {
    feedback_type: FeedbackType,
    user_agent: &'static str,
    complainant: Option<&'static str>,
    source_ip: Option<&'static str>,
    message_id: Option<&'static str>,
    verp_42: bool,
}

#[rustfmt::skip]
fn arf_cases() -> Vec<ArfCase> {
    let ok = |feedback_type, user_agent, complainant, source_ip, message_id, verp_42| {
        Ok(ArfExpected { feedback_type, user_agent, complainant, source_ip, message_id, verp_42 })
    };
    use FeedbackType::{Abuse, AuthFailure};
    vec![
        ArfCase { file: "rfc5965_example.eml", expected: ok(Abuse, "SomeGenerator/1.0", Some("user@example.com"), Some("192.0.2.1"), Some("8787KJKJ3K4J3K4J3K4J3.mail@example.net"), false) },
        ArfCase { file: "yahoo_fbl.eml", expected: ok(Abuse, "Yahoo!-Mail-Feedback/2.0", Some("complainer@yahoo.com"), Some("192.0.2.10"), Some("offer-42@shop.example"), true) },
        ArfCase { file: "aol_fbl.eml", expected: ok(Abuse, "AOL SComp", Some("redacted@aol.example"), Some("192.0.2.11"), Some("offer-45@shop.example"), true) },
        ArfCase { file: "microsoft_jmrp.eml", expected: ok(Abuse, "Hotmail FBL", None, None, Some("offer-46@shop.example"), true) },
        ArfCase { file: "comcast_fbl_ipv6.eml", expected: ok(Abuse, "Comcast FBL/1.0", Some("subscriber@comcast.example"), Some("2001:db8::25"), Some("offer-47@shop.example"), true) },
        ArfCase { file: "rfc6591_auth_failure.eml", expected: ok(AuthFailure, "SomeGenerator/1.0", Some("recipient@example.com"), Some("192.0.2.1"), Some("abc123@example.net"), false) },
        ArfCase { file: "malformed_missing_type.eml", expected: Err(ArfError::MissingField("Feedback-Type")) },
        ArfCase { file: "malformed_no_feedback_part.eml", expected: Err(ArfError::NoFeedbackPart) },
    ]
}

#[test]
fn feedback_reports_parse_to_their_expected_results() {
    let keys = corpus_keys();
    for case in arf_cases() {
        let f = case.file;
        let got = parse_arf(&read("arf", f));
        let want = match case.expected {
            Err(e) => {
                assert_eq!(got.unwrap_err(), e, "{f}");
                continue;
            }
            Ok(want) => want,
        };
        let r = got.unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(r.feedback_type, want.feedback_type, "{f}");
        assert_eq!(r.user_agent, want.user_agent, "{f}");
        assert_eq!(r.complainant(), want.complainant, "{f}");
        assert_eq!(
            r.source_ip.map(|ip| ip.to_string()).as_deref(),
            want.source_ip,
            "{f}"
        );
        let original = r
            .original
            .as_ref()
            .expect("every sample includes the original");
        assert_eq!(original.message_id.as_deref(), want.message_id, "{f}");
        let verp = r.return_path().and_then(|rp| keys.decode_address(rp).ok());
        assert_eq!(verp.map(|v| v.data) == Some(verp_42()), want.verp_42, "{f}");
    }
    let comcast = parse_arf(&read("arf", "comcast_fbl_ipv6.eml")).unwrap();
    assert_eq!(
        comcast.reported_domain,
        vec!["shop.example", "petrel.example"]
    );
    assert_eq!(
        comcast.arrival_date.as_deref(),
        Some("Sat, 5 Dec 2026 07:00:00 +0000")
    );
}

/// (source IP, count, disposition, dkim, spf) of one record.
type Row = (
    &'static str,
    u64,
    Disposition,
    Option<AlignedResult>,
    Option<AlignedResult>,
);

struct DmarcCase {
    mail: &'static str,
    xml: &'static str,
    org: &'static str,
    report_id: &'static str,
    rows: &'static [Row],
}

use AlignedResult::{Fail as F, Pass as P};
#[rustfmt::skip]
const DMARCS: &[DmarcCase] = &[
    DmarcCase { mail: "google_zip.eml", xml: "google.xml", org: "google.com", report_id: "15734928374652831234",
        rows: &[("192.0.2.10", 1842, Disposition::None, Some(P), Some(P)), ("198.51.100.77", 3, Disposition::None, Some(F), Some(F))] },
    DmarcCase { mail: "microsoft_gzip.eml", xml: "outlook.xml", org: "Enterprise Outlook", report_id: "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
        rows: &[("2001:db8::25", 57, Disposition::None, Some(P), Some(P)), ("203.0.113.200", 9, Disposition::Quarantine, Some(F), Some(F))] },
    DmarcCase { mail: "yahoo_gzip.eml", xml: "yahoo.xml", org: "Yahoo", report_id: "1764979199.887766",
        rows: &[("192.0.2.11", 640, Disposition::None, Some(P), Some(F))] },
    DmarcCase { mail: "plain_xml.eml", xml: "rfc7489_example.xml", org: "receiver.example", report_id: "rcv-2026-12-05-0001",
        rows: &[("203.0.113.66", 2, Disposition::Reject, Some(F), Some(F))] },
];

#[test]
fn dmarc_reports_parse_to_their_expected_results() {
    for case in DMARCS {
        let m = case.mail;
        let r = parse_aggregate_mail(&read("dmarc", m)).unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(
            (r.org_name.as_str(), r.report_id.as_str()),
            (case.org, case.report_id),
            "{m}"
        );
        assert_eq!(r.policy.domain, "shop.example", "{m}");
        assert_eq!(r.date_begin, 1_764_892_800, "{m}");
        assert!(
            (86_399..=86_400).contains(&(r.date_end - r.date_begin)),
            "{m}"
        );
        let rows: Vec<Row> = r
            .records
            .iter()
            .zip(case.rows)
            .map(|(rec, want)| (want.0, rec.count, rec.disposition, rec.dkim, rec.spf))
            .collect();
        assert_eq!(rows, case.rows, "{m}");
        let ips: Vec<String> = r.records.iter().map(|x| x.source_ip.to_string()).collect();
        let want_ips: Vec<&str> = case.rows.iter().map(|x| x.0).collect();
        assert_eq!(ips, want_ips, "{m}");
        // The attachment is the XML file, packed.
        assert_eq!(
            parse_aggregate_xml(&read("dmarc", case.xml)).unwrap(),
            r,
            "{m}"
        );
    }
    let outlook = parse_aggregate_xml(&read("dmarc", "outlook.xml")).unwrap();
    assert_eq!(
        outlook.records[0].envelope_from.as_deref(),
        Some("bounce.shop.example")
    );
    assert_eq!(
        outlook.records[0].spf_results[0]
            .selector_or_scope
            .as_deref(),
        Some("mfrom")
    );
    assert_eq!(outlook.policy.adkim.as_deref(), Some("s"));
}

#[test]
fn other_mail_is_not_taken_for_a_report() {
    let classifier = BounceClassifier::shipped();
    for f in ["auto_reply.eml", "newsletter.eml"] {
        let raw = read("not_reports", f);
        assert_eq!(
            parse_dsn(&raw, &classifier).unwrap_err(),
            DsnError::NotABounce,
            "{f}"
        );
        assert_eq!(
            parse_arf(&raw).unwrap_err(),
            ArfError::NotAFeedbackReport,
            "{f}"
        );
        assert_eq!(
            parse_aggregate_mail(&raw).unwrap_err(),
            DmarcError::NoReport,
            "{f}"
        );
    }
    // Each kind of report is refused by the other parsers.
    let dsn = read("bounces", "rfc3464_postfix_user_unknown.eml");
    assert_eq!(parse_arf(&dsn).unwrap_err(), ArfError::NotAFeedbackReport);
    assert_eq!(
        parse_aggregate_mail(&dsn).unwrap_err(),
        DmarcError::NoReport
    );
    let arf = read("arf", "yahoo_fbl.eml");
    assert_eq!(
        parse_dsn(&arf, &classifier).unwrap_err(),
        DsnError::NotABounce
    );
}

fn mail_with_attachment(ctype: &str, name: &str, data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "From: r@x.example\r\nTo: dmarc@bounce.petrel.example\r\nSubject: Report\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"z\"\r\n\r\n--z\r\nContent-Type: {ctype}; name=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--z--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

#[test]
fn bombs_in_a_mail_are_refused() {
    // 16 MiB of zeros: over the 10 MiB cap, and about 1000:1 compressed.
    let zeros = vec![0u8; 16 * 1024 * 1024];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&zeros).unwrap();
    let gz = gz.finish().unwrap();
    let mail = mail_with_attachment("application/gzip", "bomb.xml.gz", &gz);
    assert_eq!(
        parse_aggregate_mail(&mail).unwrap_err(),
        DmarcError::Unpack(UnpackError::RatioTooHigh {
            max: limits::DMARC_COMPRESSION_RATIO_MAX
        })
    );
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("bomb.xml", options).unwrap();
    zip.write_all(&zeros).unwrap();
    let zip = zip.finish().unwrap().into_inner();
    let mail = mail_with_attachment("application/zip", "bomb.zip", &zip);
    assert_eq!(
        parse_aggregate_mail(&mail).unwrap_err(),
        DmarcError::Unpack(UnpackError::DecompressedTooLarge {
            max: limits::DMARC_XML_BYTES_MAX
        })
    );
}

#[test]
fn a_ten_megabyte_report_is_refused_by_every_parser() {
    let mut raw = read("bounces", "rfc3464_postfix_user_unknown.eml");
    raw.resize(10 * 1000 * 1000, b'x');
    let too_large = MailError::TooLarge {
        bytes: raw.len(),
        max: MAIL_BYTES_MAX,
    };
    let classifier = BounceClassifier::shipped();
    assert_eq!(
        parse_dsn(&raw, &classifier).unwrap_err(),
        DsnError::Mail(too_large.clone())
    );
    assert_eq!(
        parse_arf(&raw).unwrap_err(),
        ArfError::Mail(too_large.clone())
    );
    assert_eq!(
        parse_aggregate_mail(&raw).unwrap_err(),
        DmarcError::Mail(too_large)
    );
}

#[test]
fn every_sample_has_an_expectation() {
    let listed: BTreeSet<String> = BOUNCES
        .iter()
        .map(|c| format!("bounces/{}", c.file))
        .chain(arf_cases().iter().map(|c| format!("arf/{}", c.file)))
        .chain(
            DMARCS
                .iter()
                .flat_map(|c| [format!("dmarc/{}", c.mail), format!("dmarc/{}", c.xml)]),
        )
        .chain([
            "not_reports/auto_reply.eml".into(),
            "not_reports/newsletter.eml".into(),
        ])
        .collect();
    let mut on_disk = BTreeSet::new();
    for dir in ["bounces", "arf", "dmarc", "not_reports"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(dir);
        for entry in std::fs::read_dir(path).unwrap() {
            on_disk.insert(format!(
                "{dir}/{}",
                entry.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    assert_eq!(listed, on_disk);
    assert!(BOUNCES.len() >= 20 && arf_cases().len() >= 5 && DMARCS.len() >= 4);
}

#[test]
fn parse_report_routes_each_sample_to_its_kind() {
    let classifier = BounceClassifier::shipped();
    for case in BOUNCES {
        let r = parse_report(&read("bounces", case.file), &classifier);
        assert!(matches!(r, Ok(Report::Bounce(_))), "{}: {r:?}", case.file);
    }
    for case in arf_cases() {
        let r = parse_report(&read("arf", case.file), &classifier);
        match case.expected {
            Ok(_) => assert!(
                matches!(r, Ok(Report::Complaint(_))),
                "{}: {r:?}",
                case.file
            ),
            Err(e) => assert_eq!(r.unwrap_err(), ReportError::Complaint(e), "{}", case.file),
        }
    }
    for case in DMARCS {
        let r = parse_report(&read("dmarc", case.mail), &classifier);
        assert!(
            matches!(r, Ok(Report::DmarcAggregate(_))),
            "{}: {r:?}",
            case.mail
        );
    }
    for f in ["auto_reply.eml", "newsletter.eml"] {
        let r = parse_report(&read("not_reports", f), &classifier);
        assert_eq!(r.unwrap_err(), ReportError::NotAReport, "{f}");
    }
    let mut big = read("dmarc", "google_zip.eml");
    big.resize(MAIL_BYTES_MAX + 1, b' ');
    assert!(matches!(
        parse_report(&big, &classifier),
        Err(ReportError::Mail(MailError::TooLarge { .. }))
    ));
}
