//! Unit tests of the intake's decisions, over real keys and the report corpus of petrel-reports.

use super::*;
use petrel_reports::{VerpKey, VerpKeys};

const DOMAIN: &str = "bounce.petrel.test";
const TENANT: &str = "ten_00000000000000aa";

fn keys() -> VerpKeys {
    VerpKeys::new(VerpKey::new(1, &[9; 32]).unwrap(), vec![]).unwrap()
}

fn token(index: u16) -> TokenData {
    TokenData {
        tenant_id: TENANT.into(),
        message_id: 0x0100_0000_0000_002a,
        recipient: RecipientRef::Index(index),
    }
}

fn stamp() -> Stamp<'static> {
    Stamp {
        engine_id: "engine-1",
        now_ms: 1_764_918_000_000,
    }
}

fn classifier() -> petrel_bounce::BounceClassifier {
    petrel_bounce::BounceClassifier::shipped()
}

fn parse(raw: &[u8]) -> Report {
    petrel_reports::parse_report(raw, &classifier()).unwrap()
}

fn no_owner(_: &str) -> Option<String> {
    None
}

/// What `raw` becomes when it comes to one of the mailboxes (no token in the envelope).
fn to_mailbox(raw: &[u8], keys: &VerpKeys) -> Outcome {
    report_events(&parse(raw), None, Some(keys), &no_owner, &stamp()).unwrap()
}

#[test]
fn rcpt_takes_our_tokens_and_mailboxes_and_refuses_the_rest_with_the_reason() {
    let keys = keys();
    let mailboxes = vec!["dmarc@reports.petrel.test".to_string()];
    let setup = IntakeSetup {
        keys: Some(&keys),
        bounce_domain: DOMAIN,
        mailboxes: &mailboxes,
    };
    let rp = keys.return_path(&token(0), DOMAIN).unwrap();
    assert_eq!(
        check_recipient(&setup, &rp),
        Ok(IntakeRecipient::ReturnPath(token(0)))
    );
    assert_eq!(
        check_recipient(&setup, "<DMARC@reports.petrel.test>"),
        Ok(IntakeRecipient::Mailbox)
    );
    // One character inside the tag changed (the last one only holds padding bits): a
    // forgery, 5.7.1.
    let (local, domain) = rp.split_once('@').unwrap();
    let at = local.len() - 4;
    let swapped = if local.as_bytes()[at] == b'a' {
        'b'
    } else {
        'a'
    };
    let forged = format!("{}{swapped}{}@{domain}", &local[..at], &local[at + 1..]);
    let refused = check_recipient(&setup, &forged).unwrap_err();
    assert_eq!((refused.code, refused.enhanced), (550, Some((5, 7, 1))));
    assert!(refused.text.contains("token"), "{}", refused.text);
    let foreign = check_recipient(&setup, "someone@elsewhere.test").unwrap_err();
    assert_eq!((foreign.code, foreign.enhanced), (550, Some((5, 1, 1))));
    assert!(
        foreign.text.contains("not an intake domain"),
        "{}",
        foreign.text
    );
    let unknown = check_recipient(&setup, &format!("postmaster@{DOMAIN}")).unwrap_err();
    assert_eq!(unknown.enhanced, Some((5, 1, 1)));

    // Without a pushed bounce domain only the mailboxes are taken.
    let off = IntakeSetup {
        keys: None,
        bounce_domain: "",
        mailboxes: &mailboxes,
    };
    assert!(check_recipient(&off, &rp).is_err());
    assert_eq!(
        check_recipient(&off, "dmarc@reports.petrel.test"),
        Ok(IntakeRecipient::Mailbox)
    );
}

#[test]
fn an_async_dsn_to_a_return_path_is_a_hard_async_bounce_of_that_recipient() {
    let raw = include_bytes!("../../reports/testdata/bounces/rfc3464_postfix_user_unknown.eml");
    let report = parse(raw);
    let out = report_events(&report, Some(&token(3)), None, &no_owner, &stamp()).unwrap();
    assert_eq!(out.result, "bounce");
    let [e] = out.events.as_slice() else {
        panic!("one event: {:?}", out.events)
    };
    e.validate().unwrap();
    assert_eq!(e.kind, EventType::Bounced);
    assert!(e.is_async);
    assert_eq!(e.tenant_id.as_deref(), Some(TENANT));
    assert_eq!(e.message_id.as_deref(), Some("010000000000002a"));
    assert_eq!(e.recipient.as_deref(), Some("jane.doe@receiver.example"));
    let bounce = e.bounce.as_ref().unwrap();
    assert_eq!(
        (bounce.class, bounce.category.as_str()),
        (BounceClass::Hard, "invalid_recipient")
    );
    let reply = e.reply.as_ref().unwrap();
    assert_eq!(
        (reply.code, reply.enhanced_code.as_deref()),
        (550, Some("5.1.1"))
    );
    let details = e.details.as_ref().unwrap();
    assert_eq!(details["format"], "rfc3464");
    // The same report again is the same event (a retried 250 is one event upstream).
    let again = report_events(&report, Some(&token(3)), None, &no_owner, &stamp()).unwrap();
    assert_eq!(again.events[0].id, e.id);
    // Another recipient of the message is another event.
    let other = report_events(&report, Some(&token(4)), None, &no_owner, &stamp()).unwrap();
    assert_ne!(other.events[0].id, e.id);
}

#[test]
fn a_bounce_naming_several_failed_recipients_for_one_token_is_refused() {
    let raw = include_bytes!("../../reports/testdata/bounces/rfc3464_three_recipients.eml");
    let refusal =
        report_events(&parse(raw), Some(&token(0)), None, &no_owner, &stamp()).unwrap_err();
    assert_eq!(refusal, IntakeRefusal::SeveralRecipients { count: 2 });
    let reply = refusal.reply();
    assert_eq!((reply.code, reply.enhanced), (550, Some((5, 6, 0))));
}

#[test]
fn a_delay_notice_is_no_bounce_and_a_tokenless_report_goes_up_by_its_message_id() {
    let delayed = include_bytes!("../../reports/testdata/bounces/rfc3464_postfix_delayed.eml");
    let out = report_events(&parse(delayed), Some(&token(0)), None, &no_owner, &stamp()).unwrap();
    assert!(out.events.is_empty());
    assert_eq!(out.result, "ignored");
    // To a mailbox, with no return path of ours in the original: the control plane finds the
    // message by its Message-ID, so the event has no tenant yet.
    let raw = include_bytes!("../../reports/testdata/bounces/rfc3464_postfix_user_unknown.eml");
    let keys = keys();
    let out = to_mailbox(raw, &keys);
    assert_eq!(out.result, "bounce");
    let [e] = out.events.as_slice() else {
        panic!("one event: {:?}", out.events)
    };
    e.validate().unwrap();
    assert_eq!(e.tenant_id, None);
    assert_eq!(e.message_id, None);
    assert!(e.rfc822_message_id.is_some(), "{e:?}");
    assert_eq!(e.recipient.as_deref(), Some("jane.doe@receiver.example"));
    assert!(e.details.as_ref().unwrap().get("rcpt_index").is_none());
    // The same report again is the same event.
    let again = to_mailbox(raw, &keys);
    assert_eq!(again.events[0].id, e.id);
}

#[test]
fn a_report_with_neither_token_nor_message_id_is_accepted_unattributed() {
    let keys = keys();
    let raw = arf("someone@elsewhere.test", "reader@example.org")
        .replace("Message-ID: <m1@shop.test>\r\n", "");
    let out = to_mailbox(raw.as_bytes(), &keys);
    assert!(out.events.is_empty());
    assert_eq!(out.result, "unattributed");
}

#[test]
fn an_index_tokens_event_carries_the_index_and_goes_up_without_a_redacted_recipient() {
    let raw = include_bytes!("../../reports/testdata/bounces/rfc3464_postfix_user_unknown.eml");
    let out = report_events(&parse(raw), Some(&token(3)), None, &no_owner, &stamp()).unwrap();
    assert_eq!(out.events[0].details.as_ref().unwrap()["rcpt_index"], 3);
    // A complaint whose provider redacted the recipient: still an event of the tenant's
    // message, the control plane names the recipient.
    let keys = keys();
    let rp = keys.return_path(&token(5), DOMAIN).unwrap();
    let raw = arf(&rp, "redacted")
        .replace("Original-Rcpt-To: <redacted>\r\n", "")
        .replace("To: redacted\r\n", "");
    let out = to_mailbox(raw.as_bytes(), &keys);
    assert_eq!(out.result, "complaint");
    let e = &out.events[0];
    e.validate().unwrap();
    assert_eq!(e.tenant_id.as_deref(), Some(TENANT));
    assert_eq!(e.recipient, None);
    assert_eq!(e.details.as_ref().unwrap()["rcpt_index"], 5);
}

/// An ARF report to a feedback-loop mailbox whose original carries `return_path`.
fn arf(return_path: &str, rcpt: &str) -> String {
    format!(
        "From: fbl@provider.test\r\nTo: fbl@reports.petrel.test\r\nSubject: complaint\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; \
         boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\
         --b1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
         User-Agent: ProviderFBL/2.0\r\nVersion: 1\r\nOriginal-Rcpt-To: <{rcpt}>\r\n\r\n\
         --b1\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{return_path}>\r\n\
         From: News <news@shop.test>\r\nTo: {rcpt}\r\nMessage-ID: <m1@shop.test>\r\n\
         Subject: offers\r\n\r\nBody.\r\n--b1--\r\n"
    )
}

#[test]
fn a_complaint_is_traced_by_the_originals_return_path_to_its_tenant_message_and_recipient() {
    let keys = keys();
    let rp = keys.return_path(&token(5), DOMAIN).unwrap();
    let raw = arf(&rp, "Reader@Example.org");
    let out = to_mailbox(raw.as_bytes(), &keys);
    assert_eq!(out.result, "complaint");
    let e = &out.events[0];
    e.validate().unwrap();
    assert_eq!(e.kind.as_str(), "complained");
    assert_eq!(e.tenant_id.as_deref(), Some(TENANT));
    assert_eq!(e.recipient.as_deref(), Some("reader@example.org"));
    assert_eq!(e.rfc822_message_id.as_deref(), Some("m1@shop.test"));
    assert_eq!(e.from_domain.as_deref(), Some("shop.test"));
    let d = e.details.as_ref().unwrap();
    assert_eq!(
        (&d["feedback_type"], &d["user_agent"], &d["source"]),
        (&json!("abuse"), &json!("ProviderFBL/2.0"), &json!("arf"))
    );
    // A return path signed by a key we do not hold leads nowhere.
    let stranger = VerpKeys::new(VerpKey::new(1, &[3; 32]).unwrap(), vec![]).unwrap();
    let forged = stranger.return_path(&token(5), DOMAIN).unwrap();
    let raw = arf(&forged, "reader@example.org");
    let out = to_mailbox(raw.as_bytes(), &keys);
    // ... but the original's Message-ID still may: the event goes up without a tenant.
    assert_eq!(out.result, "complaint");
    assert_eq!(out.events[0].tenant_id, None);
    assert_eq!(
        out.events[0].rfc822_message_id.as_deref(),
        Some("m1@shop.test")
    );
}

#[test]
fn a_malformed_feedback_report_is_refused_with_the_parsers_reason() {
    let raw = include_bytes!("../../reports/testdata/arf/malformed_missing_type.eml");
    let err = petrel_reports::parse_report(raw, &classifier()).unwrap_err();
    let reply = IntakeRefusal::from(err).reply();
    assert_eq!((reply.code, reply.enhanced), (550, Some((5, 6, 0))));
    assert!(reply.text.contains("feedback report"), "{}", reply.text);
}

#[test]
fn a_dmarc_aggregate_report_becomes_rows_of_its_domains_tenant() {
    let raw = include_bytes!("../../reports/testdata/dmarc/yahoo_gzip.eml");
    let report = parse(raw);
    let Report::DmarcAggregate(agg) = &report else {
        panic!("not a DMARC report")
    };
    let owner = |d: &str| (d == "shop.example").then(|| TENANT.to_string());
    let out = report_events(&report, None, None, &owner, &stamp()).unwrap();
    assert_eq!(out.result, "dmarc");
    assert!(!out.events.is_empty());
    let total: u64 = out
        .events
        .iter()
        .map(|e| e.details.as_ref().unwrap()["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, agg.records.iter().map(|r| r.count).sum::<u64>());
    for e in &out.events {
        e.validate().unwrap();
        assert_eq!(e.kind.as_str(), "dmarc_report");
        assert_eq!(e.tenant_id.as_deref(), Some(TENANT));
        assert_eq!(e.from_domain.as_deref(), Some("shop.example"));
        let d = e.details.as_ref().unwrap();
        assert_eq!(d["report_id"], json!(agg.report_id));
        assert!(d["dmarc"] == "pass" || d["dmarc"] == "fail");
        assert!(d["source_ip"].as_str().unwrap().parse::<IpAddr>().is_ok());
    }
    let ids: std::collections::HashSet<_> = out.events.iter().map(|e| &e.id).collect();
    assert_eq!(ids.len(), out.events.len(), "one id per row");
    // A domain nobody here owns: accepted, recorded nowhere.
    let out = report_events(&report, None, None, &no_owner, &stamp()).unwrap();
    assert_eq!(out.result, "unattributed");
}

#[test]
fn a_mailto_unsubscribe_names_the_subscriber() {
    let out = unsubscribes(&[token(2)], "Reader@Example.org", &stamp());
    let e = &out.events[0];
    e.validate().unwrap();
    assert_eq!(e.kind.as_str(), "unsubscribed");
    assert_eq!(e.recipient.as_deref(), Some("reader@example.org"));
    assert_eq!(e.details.as_ref().unwrap()["method"], "mailto");
    let short = TokenData {
        recipient: RecipientRef::Address("a@b.io".into()),
        ..token(0)
    };
    let out = unsubscribes(&[short], "", &stamp());
    assert_eq!(out.events[0].recipient.as_deref(), Some("a@b.io"));
    // A null sender: the control plane names the subscriber from the index.
    let out = unsubscribes(&[token(2)], "", &stamp());
    assert_eq!(out.events[0].recipient, None);
    assert_eq!(out.events[0].details.as_ref().unwrap()["rcpt_index"], 2);
}

#[test]
fn a_dsn_reply_keeps_the_remotes_code_or_derives_one_from_the_status() {
    let r = dsn_reply(Some((5, 1, 1)), Some("550 5.1.1 no such user"));
    assert_eq!((r.code, r.enhanced_code.as_deref()), (550, Some("5.1.1")));
    let r = dsn_reply(Some((4, 2, 2)), Some("mailbox full"));
    assert_eq!((r.code, r.text.as_str()), (450, "mailbox full"));
    let r = dsn_reply(None, Some("5501 odd"));
    assert_eq!(r.code, 550);
}
