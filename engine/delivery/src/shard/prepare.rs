//! A delivery write's transactions, before they go out: each batch's live recipients, sender
//! and body read from the spool, and its envelope senders (the client's, or one VERP return
//! path per recipient, which splits the batch into one transaction per recipient: see
//! `crate::return_path`), and the DSN parameters to relay when the sender gave any
//! (`crate::dsn_params`).

use std::rc::Rc;

use super::message::AttributionAt;
use super::outcome::{fail_entries, Attempt, RcptResult};
use super::{Inner, RcptState, SpoolAccess};
use crate::classify::LocalFailure;
use crate::dsn_params::MessageDsn;
use crate::queue::{DomainId, Entry};
use crate::return_path::{envelopes, Envelopes};

/// One message ready to go: its pending entries, sender, recipients and body.
pub(super) struct Prepared {
    pub domain: DomainId,
    pub batch: Vec<Entry>,
    pub from: String,
    pub rcpts: Vec<String>,
    /// Shared by the per-recipient transactions of a VERP'd message.
    pub body: Rc<Vec<u8>>,
    /// The DSN parameters in wire form; None when the sender gave none.
    pub dsn: Option<WireDsn>,
}

/// A transaction's DSN parameters as they go on the wire (to a next hop that offers DSN).
pub(super) struct WireDsn {
    /// After MAIL FROM's path; may be "".
    pub mail: String,
    /// After each RCPT TO's path, index for index with `Prepared::rcpts`; "" for none.
    pub rcpts: Vec<String>,
}

impl WireDsn {
    fn new(dsn: &MessageDsn, batch: &[Entry]) -> WireDsn {
        WireDsn {
            mail: dsn.mail_params(),
            rcpts: batch
                .iter()
                .map(|e| dsn.rcpt_params(e.rcpt_index))
                .collect(),
        }
    }

    pub fn outgoing(&self) -> petrel_outbound::OutgoingDsn<'_> {
        petrel_outbound::OutgoingDsn {
            mail: &self.mail,
            rcpts: &self.rcpts,
        }
    }
}

/// The envelope and body of each batch (a batch is the recipients of one message); a batch
/// with nothing pending is dropped, one whose body cannot be read is deferred.
pub(super) async fn prepare<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    batches: Vec<(DomainId, Vec<Entry>)>,
) -> Vec<Prepared> {
    let mut out = Vec::with_capacity(batches.len());
    for (domain, batch) in batches {
        let Some(Envelope {
            batch,
            from,
            rcpts,
            tenant,
            read_back,
        }) = envelope(inner, batch)
        else {
            continue; // every recipient went final meanwhile (administrator bounce)
        };
        let message_id = batch[0].message_id;
        let dsn = {
            let st = inner.state.borrow();
            if st.dsn.is_empty() {
                None
            } else {
                st.dsn.get(&message_id).cloned()
            }
        };
        let verp = {
            let pairs: Vec<(u32, &str)> = batch
                .iter()
                .zip(&rcpts)
                .map(|(e, r)| (e.rcpt_index, r.as_str()))
                .collect();
            envelopes(
                inner.cfg.return_path.as_deref(),
                &from,
                tenant.as_deref(),
                message_id,
                &pairs,
            )
        };
        // A message that let go of its attribution while it waited gets it back with its body,
        // in the same read: this attempt's events carry it.
        let read = if read_back {
            match inner.spool.read_body_attributed(message_id).await {
                Ok((body, attribution)) => {
                    inner
                        .state
                        .borrow_mut()
                        .hold_attribution(message_id, attribution);
                    Ok(body)
                }
                Err(e) => Err(e),
            }
        } else {
            inner.spool.read_body(message_id).await
        };
        match read {
            Ok(body) => match verp {
                Envelopes::Shared => out.push(Prepared {
                    domain,
                    dsn: dsn.as_ref().map(|d| WireDsn::new(d, &batch)),
                    batch,
                    from,
                    rcpts,
                    body: Rc::new(body),
                }),
                Envelopes::PerRecipient(froms) => {
                    // One transaction per recipient: each VERP return path names one. No DSN
                    // parameters go with it: the next hop's DSNs would go to the VERP address,
                    // where a success or delay report reaches nobody and NOTIFY=NEVER would
                    // silence the failures the return path is for; Petrel answers NOTIFY itself.
                    let body = Rc::new(body);
                    for ((entry, rcpt), from) in batch.into_iter().zip(rcpts).zip(froms) {
                        let batch = vec![entry];
                        out.push(Prepared {
                            domain,
                            dsn: None,
                            batch,
                            from,
                            rcpts: vec![rcpt],
                            body: Rc::clone(&body),
                        });
                    }
                }
            },
            Err(e) => {
                let text = format!("spool read failed: {e}");
                let result = RcptResult::local(text, LocalFailure::Io);
                fail_entries(inner, batch, &Attempt::default(), result).await;
            }
        }
    }
    out
}

/// The batch entries whose recipients are still pending, with the sender, their addresses, the
/// message's tenant, and whether its attribution is to be read back with the body.
struct Envelope {
    batch: Vec<Entry>,
    from: String,
    rcpts: Vec<String>,
    tenant: Option<String>,
    read_back: bool,
}

/// The [`Envelope`] of a batch; `None` when no recipient of it is pending.
fn envelope<S: SpoolAccess>(inner: &Inner<S>, batch: Vec<Entry>) -> Option<Envelope> {
    let st = inner.state.borrow();
    let msg = st.messages.get(batch.first()?.message_id)?;
    let mut live = Vec::with_capacity(batch.len());
    let mut rcpts = Vec::with_capacity(batch.len());
    for e in batch {
        if let Some(slot) = msg
            .slot(e.rcpt_index)
            .filter(|s| s.state == RcptState::Pending)
        {
            rcpts.push(slot.address.to_string());
            live.push(e);
        }
    }
    if live.is_empty() {
        return None;
    }
    let tenant = st.queues.tenant_name(msg.tenant);
    Some(Envelope {
        batch: live,
        from: st.senders.get(msg.sender).to_string(),
        rcpts,
        tenant: (!tenant.is_empty()).then(|| tenant.to_string()),
        read_back: msg.attribution == AttributionAt::Spool && inner.events.is_enabled(),
    })
}
