//! The DSN parameters (RFC 3461) between the three shapes they take: the SMTP session's
//! ([`petrel_smtp::Transaction`]), the spool's record ([`petrel_spool::DsnParams`]) and
//! delivery's queue ([`petrel_delivery::MessageDsn`]).
//!
//! A message without any stays without any at every step: no allocation, no record bytes,
//! no queue entry (the relay's common path, issue 18).

use petrel_delivery::MessageDsn;
use petrel_smtp::{Notify, Orcpt, RcptDsn, Ret, Transaction};
use petrel_spool::{DsnParams, DsnRet, RecipientDsn, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_SUCCESS};

/// What the spool stores of a transaction's DSN parameters (empty when none were given).
pub fn for_spool(tx: &Transaction) -> DsnParams {
    let ret = tx.params.ret.map(|r| match r {
        Ret::Full => DsnRet::Full,
        Ret::Hdrs => DsnRet::Hdrs,
    });
    DsnParams {
        ret,
        envid: tx.params.envid.clone(),
        recipients: tx.rcpt_dsn.iter().map(recipient_for_spool).collect(),
    }
}

fn recipient_for_spool(r: &RcptDsn) -> RecipientDsn {
    let notify = r.notify.map(|n| {
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        bit(n.success, NOTIFY_SUCCESS) | bit(n.failure, NOTIFY_FAILURE) | bit(n.delay, NOTIFY_DELAY)
    });
    RecipientDsn {
        notify,
        orcpt: r
            .orcpt
            .as_ref()
            .map(|o| format!("{};{}", o.addr_type, o.address)),
    }
}

/// What delivery keeps of a spooled message's DSN parameters; None when there are none.
pub fn for_delivery(d: DsnParams) -> Option<Box<MessageDsn>> {
    if d.is_empty() {
        return None;
    }
    let ret = d.ret.map(|r| match r {
        DsnRet::Full => Ret::Full,
        DsnRet::Hdrs => Ret::Hdrs,
    });
    Some(Box::new(MessageDsn {
        ret,
        envid: d.envid.map(String::into_boxed_str),
        recipients: d
            .recipients
            .into_iter()
            .map(recipient_for_delivery)
            .collect(),
    }))
}

fn recipient_for_delivery(r: RecipientDsn) -> RcptDsn {
    RcptDsn {
        notify: r.notify.map(|n| Notify {
            success: n & NOTIFY_SUCCESS != 0,
            failure: n & NOTIFY_FAILURE != 0,
            delay: n & NOTIFY_DELAY != 0,
        }),
        orcpt: r.orcpt.and_then(|o| {
            let (addr_type, address) = o.split_once(';')?;
            Some(Orcpt {
                addr_type: addr_type.to_string(),
                address: address.to_string(),
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transaction(rcpt_dsn: Vec<RcptDsn>, ret: Option<Ret>, envid: Option<&str>) -> Transaction {
        Transaction {
            helo: "c".into(),
            mail_from: "a@b.c".into(),
            params: petrel_smtp::MailParams {
                ret,
                envid: envid.map(str::to_string),
                ..petrel_smtp::MailParams::default()
            },
            recipients: vec!["x@d.e".into(), "y@d.e".into()],
            rcpt_dsn,
            data: Vec::new(),
            authenticated_as: None,
            tls: false,
        }
    }

    #[test]
    fn no_parameters_stay_none_at_every_step() {
        let d = for_spool(&transaction(Vec::new(), None, None));
        assert!(d.is_empty());
        assert!(for_delivery(d).is_none());
    }

    #[test]
    fn parameters_survive_spool_and_queue_shapes() {
        let given = vec![
            RcptDsn::default(),
            RcptDsn {
                notify: Some(Notify {
                    success: true,
                    failure: false,
                    delay: true,
                }),
                orcpt: Some(Orcpt {
                    addr_type: "rfc822".into(),
                    address: "Y;odd@d.e".into(),
                }),
            },
        ];
        let d = for_spool(&transaction(given.clone(), Some(Ret::Hdrs), Some("E1")));
        assert_eq!(d.recipients[1].notify, Some(NOTIFY_SUCCESS | NOTIFY_DELAY));
        assert_eq!(d.recipients[0].notify, None);
        let q = for_delivery(d).expect("some");
        assert_eq!(q.ret, Some(Ret::Hdrs));
        assert_eq!(q.envid.as_deref(), Some("E1"));
        assert_eq!(&q.recipients[..], &given[..]);
        let never = RcptDsn {
            notify: Some(Notify::NEVER),
            orcpt: None,
        };
        let d = for_spool(&transaction(vec![never.clone()], None, None));
        assert_eq!(d.recipients[0].notify, Some(0));
        assert_eq!(for_delivery(d).expect("some").recipients[0], never);
    }
}
