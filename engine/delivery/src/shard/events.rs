//! A shard's events: gathered per scheduler round and handed to the writer as one batch;
//! `accepted` events of newly queued messages; and, with a durable backlog, the spool updates
//! and removals of outcomes held until their events are synced (`outcome::SpoolOp`).

use std::rc::Rc;

use super::outcome;
use super::{domain_of, Inner, QueuedMessage, SpoolAccess};
use crate::events::Event;

/// A shard hands its buffered events to the writer at once when this many have gathered;
/// otherwise at the end of the scheduler round.
pub const EVENTS_BATCH_MAX: usize = 1_024;

impl<S: SpoolAccess + 'static> Inner<S> {
    /// Queues events for the writer: one batch per scheduler round, or at once when
    /// `EVENTS_BATCH_MAX` have gathered (waiting, never dropping, while the writer is behind).
    /// `op` is this outcome's spool update or removal: with a durable backlog it is applied
    /// once the events are synced, otherwise at once.
    pub(super) async fn record_events(
        self: &Rc<Self>,
        events: Vec<Event>,
        op: Option<outcome::SpoolOp>,
    ) {
        if !self.events.is_durable() {
            if let Some(op) = op {
                op.apply(self).await;
            }
            if events.is_empty() || !self.events.is_enabled() {
                return;
            }
        } else if let Some(op) = op {
            self.spool_ops_buf.borrow_mut().push(op);
        }
        let full = {
            let mut buf = self.events_buf.borrow_mut();
            buf.extend(events);
            buf.len() >= EVENTS_BATCH_MAX
        };
        if full {
            self.flush_events().await;
        } else {
            self.arm_flush();
        }
    }

    /// `accepted` events for a newly queued (or recovered) message's pending recipients. A
    /// recovered message's are sent again: same ids, so the control plane keeps one of each.
    pub(super) fn record_accepted(self: &Rc<Self>, msg: &QueuedMessage) {
        if !self.events.wants_accepted() || msg.is_dsn || msg.recipients.is_empty() {
            return;
        }
        if self.state.borrow().messages.contains_key(msg.id) {
            return;
        }
        let id = format!("{:016x}", msg.id);
        let reply = format!("250 2.0.0 Ok: queued as {id}");
        let mut buf = self.events_buf.borrow_mut();
        for r in &msg.recipients {
            buf.push(Event {
                timestamp_unix_ms: msg.received_unix_ms,
                message_id: Some(id.clone()),
                session_id: None,
                rcpt_index: r.index,
                sender: msg.mail_from.clone(),
                recipient: r.address.clone(),
                domain: domain_of(&r.address).into_owned(),
                host: None,
                address: None,
                tls: None,
                reply: Some(reply.clone()),
                outcome: crate::events::Outcome::Accepted,
                reason: None,
                bounce: None,
                attempt: 0,
                shard: self.shard,
                details: None,
                attribution: crate::attribution::EventAttribution(
                    msg.attribution.for_events().cloned(),
                ),
            });
        }
        drop(buf);
        self.arm_flush();
    }

    /// Flushes the buffered events at the end of this scheduler round (one task per round).
    fn arm_flush(self: &Rc<Self>) {
        if !self.events_flush_armed.replace(true) {
            let inner = Rc::clone(self);
            glommio::spawn_local(async move {
                inner.events_flush_armed.set(false);
                inner.flush_events().await;
            })
            .detach();
        }
    }

    pub(super) async fn flush_events(self: &Rc<Self>) {
        let batch = std::mem::take(&mut *self.events_buf.borrow_mut());
        let ops = std::mem::take(&mut *self.spool_ops_buf.borrow_mut());
        let durable = match self.events.emit_durable(batch).await {
            Ok(d) => d,
            Err(_) => {
                // Shutting down: the outcomes stay in the spool and are tried again later.
                tracing::warn!("events writer closed; delivery events not recorded");
                return;
            }
        };
        if ops.is_empty() {
            return;
        }
        self.spool_ops_waiting.set(self.spool_ops_waiting.get() + 1);
        let inner = Rc::clone(self);
        glommio::spawn_local(async move {
            if durable.wait().await {
                for op in ops {
                    op.apply(&inner).await;
                }
            }
            inner
                .spool_ops_waiting
                .set(inner.spool_ops_waiting.get().saturating_sub(1));
        })
        .detach();
    }
}
