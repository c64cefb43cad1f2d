//! The envelope sender of a delivery attempt: the client's, or a per-recipient VERP return path.
//!
//! A tenant's outgoing mail can carry a VERP return path (`b-<token>@<bounce domain>`, issue
//! 14) so that a bounce or a feedback-loop report that comes back later names the tenant, the
//! message and the recipient, signed. Delivery does not know how such an address is made (the
//! token format and the keys are `petrel-reports` and the pushed policy, which the engine
//! wires in): it asks a [`ReturnPathSource`] per recipient, at every attempt, so a key rotation
//! or a bounce domain turned off applies from the next attempt without a restart.
//!
//! A VERP return path names one recipient, so a VERP'd message's recipients go out in separate
//! transactions ([`envelopes`]); they still share the connection and, when the peer offers
//! PIPELINING and CHUNKING, one write. The null sender (`<>`, DSNs) is never rewritten: a
//! bounce of a bounce must not exist (RFC 5321 §4.5.5).

/// What a [`ReturnPathSource`] is asked about: one recipient of one tenant's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnPathRequest<'a> {
    /// The message's tenant (`Attribution::tenant_id`).
    pub tenant_id: &'a str,
    /// The spool's message id (shard in the top 8 bits).
    pub message_id: u64,
    /// The recipient's index in the message's envelope.
    pub rcpt_index: u32,
    /// The recipient's address.
    pub recipient: &'a str,
}

/// Makes the VERP return path of one recipient, or `None` to keep the client's sender (no
/// bounce domain configured, no key, an index or tenant id a token cannot carry).
pub trait ReturnPathSource: std::fmt::Debug + Send + Sync {
    fn return_path(&self, request: &ReturnPathRequest<'_>) -> Option<String>;
}

/// The MAIL FROM of a batch's transactions: `Shared` (one transaction, the client's sender for
/// every recipient) or `PerRecipient` (one transaction per recipient, each with its own VERP
/// return path, in the batch's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelopes {
    Shared,
    PerRecipient(Vec<String>),
}

/// Decides the envelope senders of one message's batch (pure). `tenant_id` is the message's
/// (`Attribution::tenant_id`), `rcpts` are the batch's `(index, address)` pairs. VERP applies
/// only with a source, a tenant and a non-null sender, and only when the source gives an
/// address for every recipient of the batch (a batch is never half rewritten: its recipients
/// would otherwise bounce to two different places).
pub fn envelopes(
    source: Option<&dyn ReturnPathSource>,
    mail_from: &str,
    tenant_id: Option<&str>,
    message_id: u64,
    rcpts: &[(u32, &str)],
) -> Envelopes {
    let (Some(source), Some(tenant_id)) = (source, tenant_id) else {
        return Envelopes::Shared;
    };
    if mail_from.is_empty() || tenant_id.is_empty() {
        return Envelopes::Shared;
    }
    let mut out = Vec::with_capacity(rcpts.len());
    for &(rcpt_index, recipient) in rcpts {
        let request = ReturnPathRequest {
            tenant_id,
            message_id,
            rcpt_index,
            recipient,
        };
        match source.return_path(&request) {
            Some(address) => out.push(address),
            None => return Envelopes::Shared,
        }
    }
    Envelopes::PerRecipient(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::Attribution;
    use std::sync::Arc;

    /// A source that writes what it was asked (a real one signs a token; the engine's is tested
    /// with the real keys in `petrel-engine`).
    #[derive(Debug)]
    struct Echo {
        refuse_index: Option<u32>,
    }

    impl ReturnPathSource for Echo {
        fn return_path(&self, r: &ReturnPathRequest<'_>) -> Option<String> {
            if self.refuse_index == Some(r.rcpt_index) {
                return None;
            }
            Some(format!(
                "b-{}-{:x}-{}@bounce.test",
                r.tenant_id, r.message_id, r.rcpt_index
            ))
        }
    }

    fn tenant(id: Option<&str>) -> Arc<Attribution> {
        Arc::new(Attribution::from(crate::attribution::AttributionParts {
            tenant_id: id.map(String::from),
            ..Default::default()
        }))
    }

    #[test]
    fn a_tenants_message_gets_one_return_path_per_recipient() {
        let echo = Echo { refuse_index: None };
        let a = tenant(Some("ten_1"));
        let rcpts = [(0, "x@d.test"), (3, "y@d.test")];
        assert_eq!(
            envelopes(Some(&echo), "s@t.test", a.tenant_id(), 0x2a, &rcpts),
            Envelopes::PerRecipient(vec![
                "b-ten_1-2a-0@bounce.test".into(),
                "b-ten_1-2a-3@bounce.test".into()
            ])
        );
    }

    #[test]
    fn null_sender_untenanted_or_unconfigured_mail_keeps_its_sender() {
        let echo = Echo { refuse_index: None };
        let a = tenant(Some("ten_1"));
        let rcpts = [(0, "x@d.test")];
        assert_eq!(
            envelopes(Some(&echo), "", a.tenant_id(), 1, &rcpts),
            Envelopes::Shared,
            "a DSN is never VERP'd"
        );
        assert_eq!(
            envelopes(Some(&echo), "s@t.test", None, 1, &rcpts),
            Envelopes::Shared
        );
        assert_eq!(
            envelopes(Some(&echo), "s@t.test", tenant(None).tenant_id(), 1, &rcpts),
            Envelopes::Shared
        );
        assert_eq!(
            envelopes(None, "s@t.test", a.tenant_id(), 1, &rcpts),
            Envelopes::Shared
        );
    }

    #[test]
    fn a_batch_is_never_half_rewritten() {
        let echo = Echo {
            refuse_index: Some(1),
        };
        let a = tenant(Some("ten_1"));
        let rcpts = [(0, "x@d.test"), (1, "y@d.test")];
        assert_eq!(
            envelopes(Some(&echo), "s@t.test", a.tenant_id(), 1, &rcpts),
            Envelopes::Shared
        );
    }
}
