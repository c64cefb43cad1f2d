//! `rejected` events: every refusal of a session's MAIL, RCPT or message, with the reply the
//! client got, as the control plane's event stream reports them; and `suppressed` events, the
//! recipients refused because a suppression list holds them.
//!
//! One [`Rejections`] per SMTP session. It gives each refusal an index in the session; with the
//! session's random id that makes the event's stable id. The events of one command are handed
//! to the events writer after the command was answered, without waiting for their sync (a
//! refusal leaves nothing in the spool to retry, so an event in flight when the engine crashes
//! can be lost; it says so in ARCHITECTURE.md). While the backlog is full the writer drops them
//! (`petrel_events_dropped_total`): the refusals it causes must not fill it further.

use std::sync::Arc;

use petrel_delivery::attribution::{Attribution, AttributionParts, EventAttribution};
use petrel_delivery::events::{Event, Outcome};
use petrel_delivery::EventSink;
use petrel_smtp::Reply;

use crate::auth::Identity;
use crate::clock::now_ms;

/// One session's refusals.
pub struct Rejections {
    sink: EventSink,
    shard: u8,
    /// Random per session, 16 hex digits.
    session_id: String,
    /// Refusals so far in the session (the next event's index).
    count: u32,
    /// The accepted MAIL FROM of the open transaction.
    mail_from: Option<String>,
    /// The tenant's attribution once the session authenticated.
    attribution: Option<Arc<Attribution>>,
    pending: Vec<Event>,
}

impl Rejections {
    pub fn new(sink: EventSink, shard: usize) -> Rejections {
        Rejections {
            sink,
            shard: u8::try_from(shard).unwrap_or(u8::MAX),
            session_id: format!("{:016x}", rand::random::<u64>()),
            count: 0,
            mail_from: None,
            attribution: None,
            pending: Vec::new(),
        }
    }

    /// The session authenticated (or failed to: `None`).
    pub fn identity(&mut self, identity: Option<&Identity>) {
        self.attribution = identity.and_then(|i| {
            i.policy.as_ref().map(|p| {
                Arc::new(Attribution::from(AttributionParts {
                    tenant_id: Some(p.tenant_id.clone()),
                    credential_id: Some(p.credential_id.clone()),
                    ..AttributionParts::default()
                }))
            })
        });
    }

    /// A MAIL was accepted (`Some`) or the transaction ended. The buffer is reused, so a
    /// session's messages do not allocate for it.
    pub fn mail_from(&mut self, from: Option<&str>) {
        match (from, &mut self.mail_from) {
            (Some(f), Some(buf)) => {
                buf.clear();
                buf.push_str(f);
            }
            (Some(f), slot) => *slot = Some(f.to_string()),
            (None, Some(buf)) => buf.clear(),
            (None, None) => {}
        }
    }

    /// Notes a refusal of `recipient` ("" for MAIL) with `sender` (the open transaction's when
    /// `None`).
    pub fn refused(&mut self, sender: Option<&str>, recipient: &str, reply: &Reply) {
        let attribution = self.attribution.clone();
        self.note(
            Outcome::Rejected,
            sender,
            recipient,
            reply,
            attribution,
            None,
        );
    }

    /// [`Rejections::refused`] with the event's `details` (a refused sending domain's check).
    pub fn refused_with(
        &mut self,
        sender: Option<&str>,
        recipient: &str,
        reply: &Reply,
        details: Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        let attribution = self.attribution.clone();
        self.note(
            Outcome::Rejected,
            sender,
            recipient,
            reply,
            attribution,
            details,
        );
    }

    /// Notes a recipient refused because `tenant`'s (or the operator's) suppression list holds
    /// it: a `suppressed` event of that tenant (known from the AUTH or, on a trusted network,
    /// from the MAIL FROM domain).
    pub fn suppressed(&mut self, recipient: &str, reply: &Reply, tenant: Option<&str>) {
        let attribution = match (&self.attribution, tenant) {
            (Some(a), _) => Some(Arc::clone(a)),
            (None, Some(t)) => Some(Arc::new(Attribution::from(AttributionParts {
                tenant_id: Some(t.to_string()),
                ..AttributionParts::default()
            }))),
            (None, None) => None,
        };
        self.note(
            Outcome::Suppressed,
            None,
            recipient,
            reply,
            attribution,
            None,
        );
    }

    fn note(
        &mut self,
        outcome: Outcome,
        sender: Option<&str>,
        recipient: &str,
        reply: &Reply,
        attribution: Option<Arc<Attribution>>,
        details: Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        if !self.sink.is_enabled() {
            return;
        }
        let sender = sender
            .or(self.mail_from.as_deref())
            .unwrap_or("")
            .to_string(); // "" after the transaction ended
        let domain = recipient
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        self.pending.push(Event {
            timestamp_unix_ms: now_ms(),
            message_id: None,
            session_id: Some(self.session_id.clone()),
            rcpt_index: self.count,
            sender,
            recipient: recipient.to_string(),
            domain,
            host: None,
            address: None,
            tls: None,
            reply: Some(reply.to_string().trim_end().to_string()),
            outcome,
            reason: None,
            bounce: None,
            attempt: 0,
            shard: self.shard,
            details,
            attribution: EventAttribution(attribution),
        });
        self.count = self.count.saturating_add(1);
    }

    /// Hands the noted refusals to the events writer.
    pub async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        if self.sink.emit_batch(batch).await.is_err() {
            tracing::debug!("events writer closed; rejection events not recorded");
        }
    }
}
