//! The sender's DSN parameters (RFC 3461) on a real shard, against scripted sinks: NOTIFY
//! decides which DSNs Petrel writes (failure, delay once at the first deferral, `relayed` for
//! SUCCESS when the next hop does not offer DSN, none for NEVER), ENVID and ORCPT appear in
//! them, RET decides what is returned; and a next hop that offers DSN is given the parameters
//! on MAIL and RCPT, and then reports success itself.

use std::time::Duration;

use petrel_delivery::dsn_params::{MessageDsn, Notify, Orcpt, RcptDsn, Ret};
use petrel_delivery::{DeliveryConfig, DomainLimits, RetrySchedule, TlsPolicy};
use petrel_testkit::shard::{routes, run_shard, ShardSetup};
use petrel_testkit::smtp_server::{Script, SmtpServer};

/// The bound on every wait of the scenarios.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
const BODY: &[u8] = b"From: alice@src.example\r\nSubject: dsn test\r\n\r\nThe body line.\r\n";

fn config() -> DeliveryConfig {
    DeliveryConfig {
        helo_name: "petrel.test".into(),
        retry: RetrySchedule {
            first_retry_delay_ms: 200,
            retry_delay_ms_max: 400,
            multiplier: 2,
            jitter_percent: 10,
            age_max_ms: 600_000,
        },
        default_limits: DomainLimits {
            tls: TlsPolicy::Disabled,
            ..DomainLimits::default()
        },
        idle_timeout_ms: 200,
        tick_ms_max: 50,
        ..DeliveryConfig::default()
    }
}

fn notify(success: bool, failure: bool, delay: bool) -> Option<Notify> {
    Some(Notify {
        success,
        failure,
        delay,
    })
}

fn orcpt(address: &str) -> Option<Orcpt> {
    Some(Orcpt {
        addr_type: "rfc822".into(),
        address: address.into(),
    })
}

fn rcpt(notify: Option<Notify>, orcpt: Option<Orcpt>) -> RcptDsn {
    RcptDsn { notify, orcpt }
}

#[test]
fn notify_ret_envid_and_orcpt_shape_the_dsns_petrel_writes() {
    // Neither sink offers DSN: the DSNs go to `other` (src.example's route).
    let dest = SmtpServer::start(Script::by_local_part());
    let other = SmtpServer::start(Script::by_local_part());
    let setup = ShardSetup::new(config(), routes(dest.addr, other.addr));
    let ((done, delayed), spool) = run_shard(setup, |h| async move {
        let mut one = h.spool().store(
            "alice@src.example",
            &[
                "ok@dest.example",
                "perm-a@dest.example",
                "perm-never@dest.example",
            ],
            BODY,
        );
        one.dsn = Some(Box::new(MessageDsn {
            ret: Some(Ret::Hdrs),
            envid: Some("QQ+314159".into()),
            recipients: vec![
                rcpt(notify(true, false, false), orcpt("OK+orig@dest.example")),
                rcpt(notify(false, true, false), orcpt("A+orig@dest.example")),
                rcpt(Some(Notify::NEVER), None),
            ]
            .into(),
        }));
        let one_id = one.id;
        h.shard().enqueue(one);
        // RET=FULL without NOTIFY: a failure DSN, as always, with the whole message.
        let mut full = h
            .spool()
            .store("bob@src.example", &["perm-b@dest.example"], BODY);
        full.dsn = Some(Box::new(MessageDsn {
            ret: Some(Ret::Full),
            ..MessageDsn::default()
        }));
        let full_id = full.id;
        h.shard().enqueue(full);
        // NOTIFY=DELAY: one delay DSN at the first deferral, however many follow; the same
        // deferrals without NOTIFY give none.
        let mut later = h.spool().store(
            "carol@src.example",
            &["defer-d@dest.example", "defer-n@dest.example"],
            BODY,
        );
        later.dsn = Some(Box::new(MessageDsn {
            recipients: vec![rcpt(notify(false, false, true), None)].into(),
            ..MessageDsn::default()
        }));
        let later_id = later.id;
        h.shard().enqueue(later);
        let done = h
            .await_spool(TEST_DEADLINE, |s| {
                let removed = s.removed();
                removed.contains(&one_id) && removed.contains(&full_id)
            })
            .await;
        let delayed = h
            .await_spool(TEST_DEADLINE, |s| {
                [0, 1].iter().all(|&i| {
                    s.outcome(later_id, i)
                        .is_some_and(|(_, attempts)| attempts >= 3)
                })
            })
            .await;
        (done, delayed)
    });
    assert!(done && delayed, "every outcome in time");
    let dsns = spool.dsn_texts();
    assert_eq!(dsns.len(), 3, "{dsns:#?}");
    let to = |who: &str| -> Vec<&String> {
        dsns.iter()
            .filter(|d| d.contains(&format!("To: <{who}>")))
            .collect()
    };

    let alice = to("alice@src.example");
    assert_eq!(alice.len(), 1, "one DSN for the first transaction");
    let a = alice[0];
    assert!(a.contains("Subject: Undelivered Mail Returned to Sender"));
    assert!(a.contains("Original-Envelope-Id: QQ+314159\r\n"));
    assert!(a.contains(
        "Original-Recipient: rfc822; A+orig@dest.example\r\n\
         Final-Recipient: rfc822; perm-a@dest.example\r\nAction: failed\r\nStatus: 5.1.1"
    ));
    // The sink does not offer DSN: NOTIFY=SUCCESS gets our `relayed` (RFC 3461 §5.2.2).
    assert!(a.contains(
        "Original-Recipient: rfc822; OK+orig@dest.example\r\n\
         Final-Recipient: rfc822; ok@dest.example\r\nAction: relayed\r\nStatus: 2.0.0"
    ));
    assert!(!a.contains("perm-never@"), "NOTIFY=NEVER: not reported");
    assert!(a.contains("Content-Type: text/rfc822-headers"));
    assert!(!a.contains("The body line."), "RET=HDRS: the headers only");

    let bob = to("bob@src.example");
    assert_eq!(bob.len(), 1);
    assert!(bob[0].contains("Content-Type: message/rfc822"));
    assert!(
        bob[0].contains("The body line."),
        "RET=FULL: the whole message"
    );
    assert!(!bob[0].contains("Original-Envelope-Id"));
    assert!(!bob[0].contains("Original-Recipient"), "no ORCPT, no field");

    let carol = to("carol@src.example");
    assert_eq!(
        carol.len(),
        1,
        "a delay DSN once, for the recipient that asked"
    );
    assert!(carol[0].contains("Subject: Delayed Mail (still being retried)"));
    assert!(carol[0].contains(
        "Final-Recipient: rfc822; defer-d@dest.example\r\nAction: delayed\r\nStatus: 4.2.0"
    ));
    assert!(!carol[0].contains("defer-n@"));
    // The DSNs themselves went out with the null sender.
    assert!(other.received().iter().all(|t| t.mail_from.is_empty()));
}

#[test]
fn a_next_hop_offering_dsn_gets_the_parameters_and_reports_success_itself() {
    let dest = SmtpServer::start(Script {
        dsn: true,
        pipelining: true,
        chunking: true,
        ..Script::by_local_part()
    });
    let other = SmtpServer::start(Script::by_local_part());
    let setup = ShardSetup::new(config(), routes(dest.addr, other.addr));
    let (done, spool) = run_shard(setup, |h| async move {
        let mut msg = h.spool().store(
            "alice@src.example",
            &["ok@dest.example", "plain@dest.example", "x@dest.example"],
            BODY,
        );
        msg.dsn = Some(Box::new(MessageDsn {
            ret: Some(Ret::Hdrs),
            envid: Some("env id=1+".into()),
            recipients: vec![
                rcpt(notify(true, true, false), orcpt("Ok+1@dest.example")),
                RcptDsn::default(),
                rcpt(Some(Notify::NEVER), None),
            ]
            .into(),
        }));
        let id = msg.id;
        h.shard().enqueue(msg);
        let plain = h.enqueue("bob@src.example", &["p2@dest.example"]);
        h.await_spool(TEST_DEADLINE, |s| {
            s.removed().contains(&id) && s.removed().contains(&plain)
        })
        .await
    });
    assert!(done, "delivered in time");
    assert!(spool.dsn_texts().is_empty(), "the next hop reports, not us");
    let txns = dest.received();
    let with = txns
        .iter()
        .find(|t| t.mail_from == "alice@src.example")
        .expect("delivered");
    assert_eq!(with.mail_params, "RET=HDRS ENVID=env+20id+3D1+2B");
    assert_eq!(
        with.rcpt_params,
        [
            "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Ok+2B1@dest.example",
            "",
            "NOTIFY=NEVER"
        ]
    );
    let without = txns
        .iter()
        .find(|t| t.mail_from == "bob@src.example")
        .expect("delivered");
    assert_eq!(without.mail_params, "", "no parameters given, none sent");
    assert_eq!(without.rcpt_params, [""]);
}

#[test]
fn a_next_hop_without_dsn_is_not_sent_the_parameters() {
    let dest = SmtpServer::start(Script::by_local_part_chunking());
    let other = SmtpServer::start(Script::by_local_part());
    let setup = ShardSetup::new(config(), routes(dest.addr, other.addr));
    let (done, _spool) = run_shard(setup, |h| async move {
        let mut msg = h
            .spool()
            .store("alice@src.example", &["ok@dest.example"], BODY);
        msg.dsn = Some(Box::new(MessageDsn {
            ret: Some(Ret::Full),
            envid: Some("E".into()),
            recipients: vec![rcpt(notify(false, true, false), orcpt("o@dest.example"))].into(),
        }));
        let id = msg.id;
        h.shard().enqueue(msg);
        h.await_spool(TEST_DEADLINE, |s| s.removed().contains(&id))
            .await
    });
    assert!(done);
    let t = &dest.received()[0];
    assert_eq!(
        (t.mail_params.as_str(), t.rcpt_params[0].as_str()),
        ("", "")
    );
}
