//! What the sender asked of DSNs for a queued message (RFC 3461): RET and ENVID for the
//! message, NOTIFY and ORCPT per recipient, as the SMTP session parsed them
//! (`petrel_smtp::dsn_params`).
//!
//! Nearly no message carries any, so a queued message does not hold them: the shard keeps
//! them in a side table by message id, only for the messages that have some (see
//! `shard::State::dsn`), and the common path pays one emptiness check.
//!
//! Without NOTIFY a recipient gets what it got before the extension: a failure DSN, no delay
//! and no success report. The parameters are relayed (xtext-encoded again) to a next hop that
//! offers DSN, which then reports; to one that does not, a SUCCESS request is answered by our
//! own `relayed` DSN (RFC 3461 §5.2.2).

use petrel_smtp::dsn_params::xtext_encode;
pub use petrel_smtp::{Notify, Orcpt, RcptDsn, Ret};

/// The DSN parameters of one message. Invariant: not all empty (a message without any has
/// none at all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageDsn {
    pub ret: Option<Ret>,
    /// ENVID, decoded.
    pub envid: Option<Box<str>>,
    /// By envelope index; empty when no recipient gave NOTIFY or ORCPT.
    pub recipients: Box<[RcptDsn]>,
}

/// Which kind of report a NOTIFY condition is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Success,
    Failure,
    Delay,
}

impl MessageDsn {
    /// Nothing was given.
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none() && self.recipients.is_empty()
    }

    /// The parameters of the recipient at envelope index `index`, if it gave any.
    pub fn rcpt(&self, index: u32) -> Option<&RcptDsn> {
        self.recipients.get(index as usize)
    }

    /// The recipient's ORCPT as `addr-type;address`, for `Original-Recipient`.
    pub fn original_recipient(&self, index: u32) -> Option<String> {
        let o = self.rcpt(index)?.orcpt.as_ref()?;
        Some(format!("{};{}", o.addr_type, o.address))
    }

    /// The MAIL parameters to relay (`RET=... ENVID=...`), "" when none.
    pub fn mail_params(&self) -> String {
        let mut out = String::new();
        if let Some(ret) = self.ret {
            out.push_str(match ret {
                Ret::Full => "RET=FULL",
                Ret::Hdrs => "RET=HDRS",
            });
        }
        if let Some(envid) = &self.envid {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("ENVID=");
            out.push_str(&xtext_encode(envid));
        }
        out
    }

    /// The RCPT parameters to relay for one recipient (`NOTIFY=... ORCPT=...`), "" when none.
    pub fn rcpt_params(&self, index: u32) -> String {
        let Some(r) = self.rcpt(index) else {
            return String::new();
        };
        let mut out = String::new();
        if let Some(n) = r.notify {
            out.push_str("NOTIFY=");
            out.push_str(&n.wire());
        }
        if let Some(o) = &r.orcpt {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("ORCPT=");
            out.push_str(&o.addr_type);
            out.push(';');
            out.push_str(&xtext_encode(&o.address));
        }
        out
    }
}

/// Whether the sender wants a report of `condition` for recipient `index` of a message with
/// these parameters (`None`: none given): NOTIFY decides when given; without it, failures only.
pub fn wants(dsn: Option<&MessageDsn>, index: u32, condition: Condition) -> bool {
    match dsn.and_then(|d| d.rcpt(index)).and_then(|r| r.notify) {
        None => condition == Condition::Failure,
        Some(n) => match condition {
            Condition::Success => n.success,
            Condition::Failure => n.failure,
            Condition::Delay => n.delay,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> MessageDsn {
        MessageDsn {
            ret: Some(Ret::Hdrs),
            envid: Some("QQ+314 x".into()),
            recipients: vec![
                RcptDsn::default(),
                RcptDsn {
                    notify: Some(Notify {
                        success: true,
                        failure: false,
                        delay: true,
                    }),
                    orcpt: Some(Orcpt {
                        addr_type: "rfc822".into(),
                        address: "Bob+x@dest.example".into(),
                    }),
                },
                RcptDsn {
                    notify: Some(Notify::NEVER),
                    orcpt: None,
                },
            ]
            .into(),
        }
    }

    #[test]
    fn notify_decides_and_its_absence_means_failures_only() {
        let m = message();
        let all = [Condition::Success, Condition::Failure, Condition::Delay];
        let asked = |i| all.map(|c| wants(Some(&m), i, c));
        assert_eq!(asked(0), [false, true, false], "no NOTIFY: as before");
        assert_eq!(asked(1), [true, false, true]);
        assert_eq!(asked(2), [false, false, false], "NEVER");
        assert_eq!(asked(7), [false, true, false], "index past the list");
        assert!(wants(None, 0, Condition::Failure) && !wants(None, 0, Condition::Delay));
    }

    #[test]
    fn relayed_parameters_are_xtext_encoded() {
        let m = message();
        assert_eq!(m.mail_params(), "RET=HDRS ENVID=QQ+2B314+20x");
        assert_eq!(m.rcpt_params(0), "");
        assert_eq!(
            m.rcpt_params(1),
            "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+2Bx@dest.example"
        );
        assert_eq!(m.rcpt_params(2), "NOTIFY=NEVER");
        assert_eq!(
            m.original_recipient(1).as_deref(),
            Some("rfc822;Bob+x@dest.example")
        );
        assert_eq!(MessageDsn::default().mail_params(), "");
    }
}
