//! The DSN extension (RFC 3461) as dialogues: parameters accepted, carried into the
//! transaction, and malformed or repeated ones answered with `501 5.5.4` and the reason.

use super::*;
use crate::dsn_params::{Notify, Orcpt, RcptDsn, Ret};

#[test]
fn dsn_parameters_reach_the_transaction() {
    let h = dialogue(&[
        ("EHLO c", "250"),
        ("MAIL FROM:<a@b.c> RET=HDRS ENVID=QQ+2B314159", "250 2.1.0"),
        ("RCPT TO:<plain@e.f>", "250 2.1.5"),
        (
            "RCPT TO:<d@e.f> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;D+2Bx@e.f",
            "250 2.1.5",
        ),
        ("RCPT TO:<reject@e.f> NOTIFY=NEVER", "550 5.7.1"),
        ("RCPT TO:<n@e.f> NOTIFY=never", "250 2.1.5"),
        ("DATA", "354"),
        ("Subject: x\r\n\r\nbody\r\n.", "250 2.0.0"),
    ]);
    let txn = &h.messages[0];
    assert_eq!(txn.params.ret, Some(Ret::Hdrs));
    assert_eq!(txn.params.envid.as_deref(), Some("QQ+314159"));
    assert_eq!(txn.recipients, ["plain@e.f", "d@e.f", "n@e.f"]);
    assert_eq!(
        txn.rcpt_dsn,
        [
            RcptDsn::default(),
            RcptDsn {
                notify: Some(Notify {
                    success: true,
                    failure: true,
                    delay: false
                }),
                orcpt: Some(Orcpt {
                    addr_type: "rfc822".into(),
                    address: "D+x@e.f".into()
                }),
            },
            RcptDsn {
                notify: Some(Notify::NEVER),
                orcpt: None
            },
        ]
    );
}

#[test]
fn parameters_on_the_first_recipient_only_stay_aligned() {
    let h = dialogue(&[
        ("EHLO c", "250"),
        ("MAIL FROM:<a@b.c>", "250"),
        ("RCPT TO:<d@e.f> NOTIFY=FAILURE", "250 2.1.5"),
        ("RCPT TO:<g@e.f>", "250 2.1.5"),
        ("DATA", "354"),
        ("\r\nbody\r\n.", "250 2.0.0"),
    ]);
    let failure = Notify {
        failure: true,
        ..Notify::NEVER
    };
    assert_eq!(
        h.messages[0].rcpt_dsn,
        [
            RcptDsn {
                notify: Some(failure),
                orcpt: None
            },
            RcptDsn::default()
        ]
    );
}

#[test]
fn without_dsn_parameters_nothing_is_allocated() {
    let h = dialogue(&[
        ("EHLO c", "250"),
        ("MAIL FROM:<a@b.c>", "250"),
        ("RCPT TO:<d@e.f>", "250"),
        ("DATA", "354"),
        ("\r\nbody\r\n.", "250 2.0.0"),
    ]);
    let txn = &h.messages[0];
    assert!(txn.rcpt_dsn.is_empty() && txn.rcpt_dsn.capacity() == 0);
    assert_eq!((txn.params.ret, txn.params.envid.as_deref()), (None, None));
}

#[test]
fn malformed_or_repeated_dsn_parameters_get_501_with_the_reason() {
    let h = dialogue(&[
        ("EHLO c", "250"),
        ("MAIL FROM:<a@b.c> RET=ALL", "501 5.5.4 Error: RET must be"),
        (
            "MAIL FROM:<a@b.c> RET=FULL RET=FULL",
            "501 5.5.4 Error: RET given twice",
        ),
        (
            "MAIL FROM:<a@b.c> ENVID=a+0D+0Ab",
            "501 5.5.4 Error: ENVID must be",
        ),
        (
            "MAIL FROM:<a@b.c> ENVID=a ENVID=b",
            "501 5.5.4 Error: ENVID given twice",
        ),
        ("MAIL FROM:<a@b.c>", "250"),
        (
            "RCPT TO:<d@e.f> NOTIFY=NEVER,SUCCESS",
            "501 5.5.4 Error: NOTIFY must be",
        ),
        (
            "RCPT TO:<d@e.f> NOTIFY=DELAY NOTIFY=DELAY",
            "501 5.5.4 Error: NOTIFY given twice",
        ),
        (
            "RCPT TO:<d@e.f> ORCPT=d@e.f",
            "501 5.5.4 Error: ORCPT must be",
        ),
        (
            "RCPT TO:<d@e.f> ORCPT=rfc822;a ORCPT=rfc822;b",
            "501 5.5.4 Error: ORCPT given twice",
        ),
    ]);
    assert!(h.messages.is_empty());
    let long = format!("MAIL FROM:<a@b.c> ENVID={}", "x".repeat(101));
    dialogue(&[("EHLO c", "250"), (&long, "501 5.5.4 Error: ENVID must be")]);
}
