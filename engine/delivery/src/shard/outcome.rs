//! Applying attempt outcomes: per-recipient state, spool updates, events, DSNs, removal.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use petrel_bounce::{BounceClassifier, Classification};
use petrel_outbound::{ClientError, RcptOutcome, Reply, ResolveError, TransactionOutcome};

use super::{
    domain_of, now_unix_ms, Inner, QueuedMessage, QueuedRcpt, RcptState, RcptUpdate, SpoolAccess,
};
use crate::attribution::{Attribution, EventAttribution};
use crate::backoff::RetryDecision;
use crate::classify::{self, LocalFailure};
use crate::dsn::{self, Action, DsnInput, DsnRecipient};
use crate::dsn_params::{self, Condition, MessageDsn};
use crate::events::{Event, Outcome};
use crate::queue::Entry;

/// One recipient of a queued message. Invariant: at most 32 bytes (the address is on the heap).
#[derive(Debug)]
pub(super) struct RcptSlot {
    /// Index in the envelope.
    pub index: u32,
    /// Attempts made so far.
    pub attempts: u32,
    pub address: Box<str>,
    pub state: RcptState,
}
const _: () = assert!(std::mem::size_of::<RcptSlot>() <= 32);

impl RcptSlot {
    pub fn new(index: u32, address: String, attempts: u32) -> RcptSlot {
        RcptSlot {
            index,
            attempts,
            address: address.into_boxed_str(),
            state: RcptState::Pending,
        }
    }
}

/// A message's recipient slots: the common single recipient inline, more on the heap. 32
/// bytes either way (the one-slot variant's state field gives the enum its tag).
#[derive(Debug)]
pub(super) enum Rcpts {
    One(RcptSlot),
    /// Sorted by `index`.
    Many(Box<[RcptSlot]>),
}
const _: () = assert!(std::mem::size_of::<Rcpts>() <= 32);

impl Rcpts {
    fn new(mut rcpts: Vec<RcptSlot>) -> Rcpts {
        if rcpts.len() == 1 {
            if let Some(one) = rcpts.pop() {
                return Rcpts::One(one);
            }
        }
        rcpts.sort_by_key(|r| r.index);
        Rcpts::Many(rcpts.into())
    }

    pub fn as_slice(&self) -> &[RcptSlot] {
        match self {
            Rcpts::One(r) => std::slice::from_ref(r),
            Rcpts::Many(rs) => rs,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [RcptSlot] {
        match self {
            Rcpts::One(r) => std::slice::from_mut(r),
            Rcpts::Many(rs) => rs,
        }
    }

    /// Heap bytes beyond the inline 32: the slot array of several, every address.
    pub fn heap_bytes(&self) -> usize {
        let slots = match self {
            Rcpts::One(_) => 0,
            Rcpts::Many(rs) => rs.len() * std::mem::size_of::<RcptSlot>(),
        };
        slots
            + self
                .as_slice()
                .iter()
                .map(|r| crate::memory::str_heap_bytes(&r.address))
                .sum::<usize>()
    }
}

/// A message with pending recipients. Invariant: at most 72 bytes plus its recipients'
/// addresses (and their slots when more than one), its share of the interned sender and of the
/// attribution (bounded, shared with its events); `pending` counts the slots still `Pending`.
#[derive(Debug)]
pub(super) struct MessageState {
    /// Interned: the messages of one sender share it (`crate::memory::Interner`).
    pub mail_from: Rc<str>,
    pub received_unix_ms: u64,
    pub rcpts: Rcpts,
    pub pending: u32,
    pub is_dsn: bool,
    /// The egress source it leaves from (its queues' lane; `crate::queue`).
    pub source: u16,
    /// Shared by every event of the message (see `crate::attribution`).
    pub attribution: Option<Arc<Attribution>>,
}
const _: () = assert!(std::mem::size_of::<MessageState>() <= 72);

impl MessageState {
    pub fn new(
        mail_from: Rc<str>,
        received_unix_ms: u64,
        is_dsn: bool,
        rcpts: Vec<RcptSlot>,
        attribution: Option<Arc<Attribution>>,
        source: u16,
    ) -> Self {
        MessageState {
            source,
            mail_from,
            received_unix_ms,
            pending: u32::try_from(rcpts.len()).unwrap_or(u32::MAX),
            rcpts: Rcpts::new(rcpts),
            is_dsn,
            attribution,
        }
    }

    /// Heap bytes this message owns beyond its table entry (the sender is the interner's):
    /// its recipients', its attribution's.
    pub fn heap_bytes(&self) -> (usize, usize) {
        (
            self.rcpts.heap_bytes(),
            self.attribution
                .as_deref()
                .map_or(0, Attribution::own_heap_bytes),
        )
    }

    pub fn slot(&self, index: u32) -> Option<&RcptSlot> {
        let rcpts = self.rcpts.as_slice();
        let i = rcpts.binary_search_by_key(&index, |r| r.index).ok()?;
        rcpts.get(i)
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut RcptSlot> {
        let rcpts = self.rcpts.as_mut_slice();
        let i = rcpts.binary_search_by_key(&index, |r| r.index).ok()?;
        rcpts.get_mut(i)
    }
}

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
        let source = msg.source;
        // One reference for the loop (the slots borrow `msg` mutably); each event adds one.
        let attribution = msg.attribution.clone();
        let dsn = if st.dsn.is_empty() {
            None
        } else {
            st.dsn.get(&message_id).cloned()
        };
        let wants = |index, condition| dsn_params::wants(dsn.as_deref(), index, condition);
        let sender: String = if inner.events.is_enabled() {
            msg.mail_from.to_string()
        } else {
            String::new()
        };
        let mut newly_final = 0u32;
        for (e, r) in entries.iter().zip(results) {
            let Some(slot) = msg.slot_mut(e.rcpt_index) else {
                continue;
            };
            if slot.state != RcptState::Pending {
                continue;
            }
            slot.attempts = slot.attempts.saturating_add(1);
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
                        inner
                            .cfg
                            .retry
                            .decide(received, now, slot.attempts, &mut *rng)
                    };
                    match decision {
                        RetryDecision::RetryAt(t) => {
                            let tenant = attribution.as_deref().and_then(|a| a.tenant_id());
                            let d = st.queues.queue_id(
                                &domain_of(&slot.address),
                                tenant.unwrap_or(""),
                                source,
                            );
                            st.queues.schedule(
                                d,
                                Entry {
                                    due_unix_ms: t,
                                    ..*e
                                },
                            );
                            // Once, at the first deferral (the attempts are journaled, so a
                            // restart does not send it again).
                            if slot.attempts == DELAY_DSN_AT_ATTEMPT
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
                attempts: slot.attempts,
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
        msg.pending = msg.pending.saturating_sub(newly_final);
        st.pending_total = st.pending_total.saturating_sub(u64::from(newly_final));
        let finished = msg.pending == 0;
        let info = (
            msg.mail_from.to_string(),
            received,
            msg.is_dsn,
            finished,
            dsn,
        );
        if finished {
            if info.4.is_some() {
                st.dsn.remove(&message_id);
            }
            if let Some(done) = st.messages.remove(message_id) {
                let (r, a) = done.heap_bytes();
                let held = &mut st.messages_heap_bytes;
                *held = (held.0.saturating_sub(r), held.1.saturating_sub(a));
                st.senders.release(done.mail_from);
            }
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
        attempt: slot.attempts,
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
            attribution: None,
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
