//! Applying attempt outcomes: per-recipient state, spool updates, events, DSNs, removal.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use petrel_bounce::{BounceClassifier, Classification};
use petrel_outbound::{ClientError, RcptOutcome, Reply, ResolveError, TransactionOutcome};

use super::message::{AttributionAt, RcptSlot};
use super::{
    domain_of, now_unix_ms, Inner, QueuedAttribution, QueuedMessage, QueuedRcpt, RcptState,
    RcptUpdate, SpoolAccess,
};
use crate::attribution::{Attribution, EventAttribution};
use crate::backoff::RetryDecision;
use crate::classify::{self, LocalFailure};
use crate::dsn::{self, Action, DsnInput, DsnRecipient};
use crate::dsn_params::{self, Condition, MessageDsn};
use crate::events::{Event, Outcome};
use crate::queue::Entry;

/// The result of an attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RcptResult {
    Delivered {
        text: String,
    },
    /// Try again later (4xx, network, TLS, DNS failure).
    Transient {
        status: Option<(u8, u16, u16)>,
        text: String,
        bounce: Classification,
    },
    /// Give up (5xx, permanent DNS answer, administrator).
    Permanent {
        status: (u8, u16, u16),
        text: String,
        bounce: Classification,
    },
}

impl RcptResult {
    fn text(&self) -> &str {
        match self {
            RcptResult::Delivered { text }
            | RcptResult::Transient { text, .. }
            | RcptResult::Permanent { text, .. } => text,
        }
    }

    /// The bounce classification of a deferral or bounce (none for a delivery).
    fn bounce(&self) -> Option<Classification> {
        match self {
            RcptResult::Delivered { .. } => None,
            RcptResult::Transient { bounce, .. } | RcptResult::Permanent { bounce, .. } => {
                Some(*bounce)
            }
        }
    }

    /// From a remote reply, classified by its parsed parts.
    pub fn from_reply(r: &Reply, classifier: &BounceClassifier) -> RcptResult {
        let text = r.to_string();
        if r.is_positive() {
            return RcptResult::Delivered { text };
        }
        let bounce = classify::classify_reply(classifier, r);
        if r.is_permanent() {
            RcptResult::Permanent {
                status: r.enhanced.unwrap_or((5, 0, 0)),
                text,
                bounce,
            }
        } else {
            RcptResult::Transient {
                status: r.enhanced,
                text,
                bounce,
            }
        }
    }

    /// A deferral for a failure of our own, with no reply.
    pub fn local(text: String, failure: LocalFailure) -> RcptResult {
        RcptResult::Transient {
            status: None,
            text,
            bounce: failure.classification(),
        }
    }

    /// A deferral for a failed connection or dialogue (client errors are never final).
    pub fn client_error(e: &ClientError, classifier: &BounceClassifier) -> RcptResult {
        RcptResult::Transient {
            status: None,
            text: e.to_string(),
            bounce: classify::classify_client_error(classifier, e),
        }
    }

    /// A bounce or deferral for a destination that could not be resolved.
    pub fn resolve_error(e: &ResolveError) -> RcptResult {
        let text = e.to_string();
        let bounce = classify::local_failure_of_resolve(e).classification();
        if e.is_permanent() {
            RcptResult::Permanent {
                status: e.enhanced(),
                text,
                bounce,
            }
        } else {
            RcptResult::Transient {
                status: Some(e.enhanced()),
                text,
                bounce,
            }
        }
    }

    /// A bounce by the administrator.
    pub fn administrator() -> RcptResult {
        RcptResult::Permanent {
            status: (5, 0, 0),
            text: "bounced by the administrator".into(),
            bounce: classify::ADMINISTRATOR_BOUNCE,
        }
    }

    /// A deleted tenant's recipient, dropped without a DSN.
    pub fn tenant_deleted() -> RcptResult {
        RcptResult::Permanent {
            status: (5, 0, 0),
            text: "dropped: the tenant was deleted".into(),
            bounce: classify::ADMINISTRATOR_BOUNCE,
        }
    }

    /// The result for recipient `i` of a transaction.
    pub fn classify(
        outcome: &TransactionOutcome,
        i: usize,
        classifier: &BounceClassifier,
    ) -> RcptResult {
        if let Some(r) = &outcome.mail_rejected {
            return RcptResult::from_reply(r, classifier);
        }
        match (outcome.rcpts.get(i), &outcome.data) {
            (Some(RcptOutcome::Rejected(r)), _) => RcptResult::from_reply(r, classifier),
            (Some(RcptOutcome::Accepted), Some(data)) => RcptResult::from_reply(data, classifier),
            (Some(RcptOutcome::Accepted), None) => {
                RcptResult::local("no reply to DATA".into(), LocalFailure::Protocol)
            }
            (None, _) => {
                RcptResult::local("no reply for this recipient".into(), LocalFailure::Protocol)
            }
        }
    }
}

/// Where an attempt went, for events and DSNs.
#[derive(Debug, Clone, Default)]
pub(super) struct Attempt {
    pub host: Option<String>,
    pub addr: Option<SocketAddr>,
    pub tls: Option<String>,
    /// The texts are remote replies (true) or our own reasons (false).
    pub remote: bool,
    /// Failures send no DSN (a deleted tenant's mail, dropped as its owner asked).
    pub no_dsn: bool,
    /// The next hop offered DSN and was given the sender's parameters: it reports success
    /// from now on, not us (RFC 3461 §5.2.1).
    pub next_hop_dsn: bool,
}

/// Applies one result to every entry (grouped by message), e.g. a failed connection.
pub(super) async fn fail_entries<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    mut entries: Vec<Entry>,
    attempt: &Attempt,
    result: RcptResult,
) {
    entries.sort_by_key(|e| (e.message_id, e.rcpt_index));
    for group in entries.chunk_by(|a, b| a.message_id == b.message_id) {
        let results = vec![result.clone(); group.len()];
        apply(inner, group[0].message_id, group, &results, attempt, None).await;
    }
}

/// Applies `results[i]` to `entries[i]` (all of message `message_id`): state, retry schedule,
/// spool update, events, DSN, and removal when the message is finished. `body` is the message
/// when the caller has it (for the DSN's headers); otherwise it is read if a DSN is due.
pub(super) async fn apply<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    message_id: u64,
    entries: &[Entry],
    results: &[RcptResult],
    attempt: &Attempt,
    body: Option<&[u8]>,
) {
    // The events need the attribution: a message waiting for a retry let go of it (unless
    // this attempt's `prepare` read it back with the body).
    if inner.events.is_enabled() {
        load_attribution(inner, message_id).await;
    }
    let now = now_unix_ms();
    let mut updates = Vec::with_capacity(entries.len());
    let mut reports = Vec::new();
    let mut events = Vec::with_capacity(entries.len());
    let (mail_from, received_unix_ms, is_dsn, finished, dsn) = {
        let mut guard = inner.state.borrow_mut();
        let st = &mut *guard;
        let Some(msg) = st.messages.get_mut(message_id) else {
            return; // already final (bounced by the administrator meanwhile)
        };
        let received = msg.received_unix_ms;
        let (source, tenant) = (msg.source, msg.tenant);
        // One reference for the loop (the slots borrow `msg` mutably); each event adds one.
        let attribution = st.attributions.get(message_id).cloned();
        let dsn = if st.dsn.is_empty() {
            None
        } else {
            st.dsn.get(&message_id).cloned()
        };
        let wants = |index, condition| dsn_params::wants(dsn.as_deref(), index, condition);
        let sender: String = if inner.events.is_enabled() {
            st.senders.get(msg.sender).to_string()
        } else {
            String::new()
        };
        let mut newly_final = 0u32;
        let mut deferred = false;
        for (e, r) in entries.iter().zip(results) {
            let Some(slot) = msg.slot_mut(e.rcpt_index) else {
                continue;
            };
            if slot.state != RcptState::Pending {
                continue;
            }
            let attempts = slot.attempted();
            let report = |action, status, text: &str, expired| DsnRecipient {
                address: slot.address.to_string(),
                action,
                original_recipient: dsn
                    .as_ref()
                    .and_then(|d| d.original_recipient(e.rcpt_index)),
                status,
                remote_mta: attempt.host.clone(),
                diagnostic: text.to_string(),
                expired,
            };
            let (state, next, outcome) = match r {
                RcptResult::Delivered { text } => {
                    if !attempt.next_hop_dsn && wants(e.rcpt_index, Condition::Success) {
                        reports.push(report(Action::Relayed, (2, 0, 0), text.as_str(), false));
                    }
                    (RcptState::Delivered, 0, Outcome::Delivered)
                }
                RcptResult::Transient { status, text, .. } => {
                    let decision = {
                        let mut rng = inner.rng.borrow_mut();
                        inner.cfg.retry.decide(received, now, attempts, &mut *rng)
                    };
                    match decision {
                        RetryDecision::RetryAt(t) => {
                            deferred = true;
                            let d =
                                st.queues
                                    .queue_id_at(&domain_of(&slot.address), tenant, source);
                            st.queues.schedule(
                                d,
                                Entry {
                                    due_unix_ms: t,
                                    ..*e
                                },
                            );
                            // Once, at the first deferral (the attempts are journaled, so a
                            // restart does not send it again).
                            if attempts == DELAY_DSN_AT_ATTEMPT
                                && wants(e.rcpt_index, Condition::Delay)
                            {
                                let status = status.unwrap_or((4, 0, 0));
                                reports.push(report(Action::Delayed, status, text.as_str(), false));
                            }
                            (RcptState::Pending, t, Outcome::Deferred)
                        }
                        RetryDecision::Expire => {
                            if wants(e.rcpt_index, Condition::Failure) {
                                let status = status.unwrap_or((4, 4, 7));
                                reports.push(report(Action::Failed, status, text.as_str(), true));
                            }
                            (RcptState::Expired, 0, Outcome::Expired)
                        }
                    }
                }
                RcptResult::Permanent { status, text, .. } => {
                    if wants(e.rcpt_index, Condition::Failure) {
                        reports.push(report(Action::Failed, *status, text.as_str(), false));
                    }
                    (RcptState::Bounced, 0, Outcome::Bounced)
                }
            };
            slot.state = state;
            if state != RcptState::Pending {
                newly_final += 1;
            }
            count(outcome);
            updates.push(RcptUpdate {
                index: e.rcpt_index,
                state,
                attempts,
                next_attempt_unix_ms: next,
                last_reply: Some(r.text().to_string()),
            });
            events.push(event(
                inner.shard,
                now,
                (message_id, &sender, &attribution),
                slot,
                attempt,
                r,
                outcome,
            ));
        }
        msg.settle(newly_final);
        st.pending_total = st.pending_total.saturating_sub(u64::from(newly_final));
        let finished = msg.pending() == 0;
        // Waiting for a later attempt now: the attribution goes back to the spool record.
        if deferred && !finished && msg.attribution == AttributionAt::Held {
            msg.attribution = AttributionAt::Spool;
            st.attributions.remove(message_id);
        }
        let info = (
            st.senders.get(msg.sender).to_string(),
            received,
            msg.is_dsn,
            finished,
            dsn,
        );
        if finished {
            if info.4.is_some() {
                st.dsn.remove(&message_id);
            }
            st.forget(message_id);
        }
        info
    };
    // A finished message needs no update record: its removal implies it. Either is applied
    // once the events are durable (see `Inner::record_events`).
    let op = if finished {
        Some(SpoolOp::Remove {
            message_id,
            updates,
            received_unix_ms,
        })
    } else if !updates.is_empty() {
        Some(SpoolOp::Update {
            message_id,
            updates,
        })
    } else {
        None
    };
    inner.record_events(events, op).await;
    if !reports.is_empty() && !attempt.no_dsn && dsn::should_send(&mail_from, is_dsn) {
        let original = Original {
            message_id,
            mail_from: &mail_from,
            received_unix_ms,
            dsn: dsn.as_deref(),
        };
        send_dsn(inner, &original, &reports, body).await;
    }
}

/// Reads a message's attribution back from its spool record into the held ones when it let go
/// of it (see `super::message`). A failed read leaves it where it is: the events go without
/// it, and the next one tries again.
pub(super) async fn load_attribution<S: SpoolAccess + 'static>(inner: &Rc<Inner<S>>, id: u64) {
    let at = inner.state.borrow().messages.get(id).map(|m| m.attribution);
    if at != Some(AttributionAt::Spool) {
        return;
    }
    match inner.spool.read_attribution(id).await {
        Ok(a) => inner.state.borrow_mut().hold_attribution(id, a),
        Err(e) => {
            tracing::warn!(message_id = %format!("{id:016x}"), error = %e, "reading the attribution back failed");
            metrics::counter!("petrel_delivery_spool_errors_total", "op" => "read_attribution")
                .increment(1);
        }
    }
}

/// What the spool must learn of an outcome, applied after its events are durable.
pub(super) enum SpoolOp {
    Update {
        message_id: u64,
        updates: Vec<RcptUpdate>,
    },
    /// The message's last recipient is final.
    Remove {
        message_id: u64,
        updates: Vec<RcptUpdate>,
        received_unix_ms: u64,
    },
}

impl SpoolOp {
    pub(super) async fn apply<S: SpoolAccess + 'static>(self, inner: &Inner<S>) {
        match self {
            SpoolOp::Update {
                message_id,
                updates,
            } => {
                if let Err(e) = inner.spool.update(message_id, &updates).await {
                    tracing::warn!(message_id = %format!("{message_id:016x}"), error = %e, "spool update failed");
                    metrics::counter!("petrel_delivery_spool_errors_total", "op" => "update")
                        .increment(1);
                }
            }
            SpoolOp::Remove {
                message_id,
                updates,
                received_unix_ms,
            } => {
                if let Err(e) = inner.spool.remove(message_id, &updates).await {
                    tracing::warn!(message_id = %format!("{message_id:016x}"), error = %e, "spool remove failed");
                    metrics::counter!("petrel_delivery_spool_errors_total", "op" => "remove")
                        .increment(1);
                }
                let secs = now_unix_ms().saturating_sub(received_unix_ms) as f64 / 1000.0;
                metrics::histogram!("petrel_delivery_end_to_end_seconds").record(secs);
            }
        }
    }
}

/// The delivery attempt whose deferral sends the delay DSN a recipient's NOTIFY=DELAY asks
/// for: the first. A threshold of queue time would need a "warned" mark in the spool; the
/// attempt count is journaled already, and a sender who asked to hear of delays hears at once.
pub(super) const DELAY_DSN_AT_ATTEMPT: u32 = 1;

/// The message a DSN reports on.
#[derive(Clone, Copy)]
struct Original<'a> {
    message_id: u64,
    mail_from: &'a str,
    received_unix_ms: u64,
    dsn: Option<&'a MessageDsn>,
}

fn count(outcome: Outcome) {
    let name = match outcome {
        Outcome::Delivered => "petrel_delivery_delivered_total",
        Outcome::Deferred => "petrel_delivery_deferred_total",
        Outcome::Bounced => "petrel_delivery_bounced_total",
        Outcome::Expired => "petrel_delivery_expired_total",
        Outcome::Accepted | Outcome::Rejected | Outcome::Suppressed => return,
    };
    metrics::counter!(name).increment(1);
}

fn event(
    shard: u8,
    now: u64,
    (message_id, sender, attribution): (u64, &str, &Option<Arc<Attribution>>),
    slot: &RcptSlot,
    attempt: &Attempt,
    r: &RcptResult,
    outcome: Outcome,
) -> Event {
    let text = r.text().to_string();
    let (reply, reason) = if attempt.remote {
        (Some(text), None)
    } else {
        (None, Some(text))
    };
    Event {
        timestamp_unix_ms: now,
        message_id: Some(format!("{message_id:016x}")),
        session_id: None,
        rcpt_index: slot.index,
        sender: sender.to_string(),
        recipient: slot.address.to_string(),
        domain: domain_of(&slot.address).into_owned(),
        host: attempt.host.clone(),
        address: attempt.addr.map(|a| a.to_string()),
        tls: attempt.tls.clone(),
        reply,
        outcome,
        reason,
        bounce: r.bounce(),
        attempt: u32::from(slot.attempts),
        shard,
        details: None,
        attribution: EventAttribution(attribution.clone()),
    }
}

/// Builds, stores and enqueues the DSN reporting `reports`, sent with the null sender.
async fn send_dsn<S: SpoolAccess + 'static>(
    inner: &Rc<Inner<S>>,
    original: &Original<'_>,
    reports: &[DsnRecipient],
    body: Option<&[u8]>,
) {
    let Original {
        message_id,
        mail_from,
        received_unix_ms,
        dsn,
    } = *original;
    let read;
    let original_body: &[u8] = match body {
        Some(b) => b,
        None => {
            read = inner.spool.read_body(message_id).await.unwrap_or_default();
            &read
        }
    };
    let now = now_unix_ms();
    let queue_id = format!("{message_id:016x}");
    let report = dsn::build(&DsnInput {
        reporting_mta: &inner.cfg.helo_name,
        original_sender: mail_from,
        queue_id: &queue_id,
        envid: dsn.and_then(|d| d.envid.as_deref()),
        return_full: dsn.is_some_and(|d| d.ret == Some(dsn_params::Ret::Full)),
        arrival_unix_secs: i64::try_from(received_unix_ms / 1000).unwrap_or(0),
        now_unix_secs: i64::try_from(now / 1000).unwrap_or(0),
        recipients: reports,
        original_message: original_body,
    });
    match inner.spool.store_dsn("", mail_from, &report).await {
        Ok(id) => inner.enqueue(QueuedMessage {
            id,
            mail_from: String::new(),
            received_unix_ms: now,
            is_dsn: true,
            recipients: vec![QueuedRcpt {
                index: 0,
                address: mail_from.to_string(),
                attempts: 0,
                next_attempt_unix_ms: 0,
            }],
            attribution: QueuedAttribution::None,
            dsn: None,
        }),
        Err(e) => tracing::warn!(message_id = %queue_id, error = %e, "storing the DSN failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, e: (u8, u16, u16)) -> Reply {
        Reply::new(code, e, "text")
    }

    #[test]
    fn classifies_replies_per_recipient() {
        let c = BounceClassifier::shipped();
        let outcome = TransactionOutcome {
            rcpts: vec![
                RcptOutcome::Accepted,
                RcptOutcome::Rejected(reply(450, (4, 2, 0))),
                RcptOutcome::Rejected(reply(550, (5, 1, 1))),
            ],
            data: Some(reply(250, (2, 0, 0))),
            mail_rejected: None,
        };
        assert!(matches!(
            RcptResult::classify(&outcome, 0, &c),
            RcptResult::Delivered { .. }
        ));
        assert!(matches!(
            RcptResult::classify(&outcome, 1, &c),
            RcptResult::Transient { .. }
        ));
        assert_eq!(
            RcptResult::classify(&outcome, 2, &c),
            RcptResult::Permanent {
                status: (5, 1, 1),
                text: "550 5.1.1 text".into(),
                bounce: Classification {
                    category: petrel_bounce::Category::InvalidRecipient,
                    class: petrel_bounce::BounceClass::Hard,
                },
            }
        );
        assert!(matches!(
            RcptResult::classify(&outcome, 3, &c),
            RcptResult::Transient { .. }
        ));
        let rejected = TransactionOutcome {
            rcpts: vec![RcptOutcome::Accepted],
            data: None,
            mail_rejected: Some(reply(552, (5, 3, 4))),
        };
        assert!(matches!(
            RcptResult::classify(&rejected, 0, &c),
            RcptResult::Permanent {
                status: (5, 3, 4),
                ..
            }
        ));
        let data_failed = TransactionOutcome {
            rcpts: vec![RcptOutcome::Accepted],
            data: Some(reply(451, (4, 3, 0))),
            mail_rejected: None,
        };
        assert!(matches!(
            RcptResult::classify(&data_failed, 0, &c),
            RcptResult::Transient { .. }
        ));
    }
}
