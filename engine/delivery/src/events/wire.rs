//! Delivery events in the control plane's format (`petrel_policy::Event`), written to the
//! durable backlog in wire batches.
//!
//! Each event gets its stable id (`petrel_policy::Event::stable_id` over the engine id, the
//! message id — or, for a refusal, the session id —, the recipient's index, the attempt and the
//! type), so the same outcome re-sent after a crash is recognised by the control plane. Every
//! field is clipped to its bound in `petrel_policy::event` here, so a batch is never refused
//! for its size. Events are serialized straight from the engine's [`Event`] (the metadata is
//! already validated JSON text: it is copied, not parsed).
//!
//! A batch is at most `EVENTS_PER_BATCH_MAX` events and `EVENTS_BATCH_MAX_BYTES` of JSON; the
//! writer closes one when the next event would pass either, and at every commit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use petrel_policy::event::{
    EventType, ADDRESS_MAX_BYTES, DETAILS_MAX_BYTES, DOMAIN_MAX_BYTES, ENHANCED_CODE_MAX_BYTES,
    EVENTS_BATCH_MAX_BYTES, EVENTS_PER_BATCH_MAX, EVENT_ID_FIELD_MAX_BYTES, METADATA_MAX_BYTES,
    REMOTE_FIELD_MAX_BYTES, REPLY_TEXT_MAX_BYTES, RFC822_MESSAGE_ID_MAX_BYTES, TAGS_MAX,
    TAG_MAX_BYTES,
};
use petrel_policy::Outbox;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::{Event, Outcome};
use crate::attribution::Attribution;

/// How long the writer waits before trying a failed backlog write or sync again, ms. It keeps
/// trying: the outcomes waiting on it are not forgotten by the spool meanwhile.
pub const BACKLOG_RETRY_DELAY_MS: u64 = 1_000;

/// Events refused at SMTP are dropped (and counted) while the backlog is full: the refusals it
/// causes must not fill it further.
pub const EVENTS_DROPPED_TOTAL: &str = "petrel_events_dropped_total";
/// Bytes of the event backlog on disk (gauge).
pub const EVENTS_BACKLOG_BYTES: &str = "petrel_events_backlog_bytes";
/// Events written to the backlog.
pub const EVENTS_BACKLOGGED_TOTAL: &str = "petrel_events_backlogged_total";
/// Failed backlog writes or syncs (each retried).
pub const EVENTS_BACKLOG_ERRORS_TOTAL: &str = "petrel_events_backlog_errors_total";

/// The writer thread's side of the backlog: the batch being built.
pub(super) struct WireWriter {
    outbox: Option<Arc<Outbox>>,
    engine_id: String,
    /// `[` + events separated by `,` (closed by `]` when written).
    buf: Vec<u8>,
    count: usize,
    ids: HashSet<String>,
    scratch: Vec<u8>,
}

impl WireWriter {
    pub(super) fn new(outbox: Option<Arc<Outbox>>, engine_id: String) -> WireWriter {
        WireWriter {
            outbox,
            engine_id,
            buf: Vec::with_capacity(64 << 10),
            count: 0,
            ids: HashSet::new(),
            scratch: Vec::with_capacity(1024),
        }
    }

    /// Adds one event to the batch being built (closing it first when it is full).
    pub(super) fn push(&mut self, event: &Event) {
        let Some(outbox) = &self.outbox else { return };
        let refusal = matches!(event.outcome, Outcome::Rejected | Outcome::Suppressed);
        if refusal && outbox.is_full() {
            metrics::counter!(EVENTS_DROPPED_TOTAL, "reason" => "backlog_full").increment(1);
            return;
        }
        let id = event_id(&self.engine_id, event);
        if self.ids.contains(&id) {
            return; // the same outcome twice in one batch (e.g. recovery racing acceptance)
        }
        self.scratch.clear();
        let wire = WireEvent { id: &id, e: event };
        if serde_json::to_writer(&mut self.scratch, &wire).is_err() {
            return; // plain strings and numbers: cannot fail
        }
        if self.count == EVENTS_PER_BATCH_MAX
            || self.buf.len() + self.scratch.len() + 2 > EVENTS_BATCH_MAX_BYTES
        {
            self.close_batch();
        }
        self.ids.insert(id);
        self.buf.push(if self.count == 0 { b'[' } else { b',' });
        self.buf.extend_from_slice(&self.scratch);
        self.count += 1;
    }

    /// Writes the open batch and makes everything written durable.
    pub(super) fn commit(&mut self) {
        let Some(outbox) = self.outbox.clone() else {
            return;
        };
        self.close_batch();
        retry("sync", || outbox.sync());
        metrics::gauge!(EVENTS_BACKLOG_BYTES).set(outbox.bytes() as f64);
    }

    fn close_batch(&mut self) {
        let Some(outbox) = self.outbox.clone() else {
            return;
        };
        if self.count == 0 {
            return;
        }
        self.buf.push(b']');
        let count = u32::try_from(self.count).unwrap_or(u32::MAX);
        retry("append", || outbox.append(&self.buf, count).map(|_| ()));
        metrics::counter!(EVENTS_BACKLOGGED_TOTAL).increment(self.count as u64);
        self.buf.clear();
        self.count = 0;
        self.ids.clear();
    }
}

/// Runs `op` until it succeeds, logging each failure. A backlog that cannot be written holds
/// the outcomes waiting on it (and, once full, new mail): nothing is dropped.
fn retry(what: &str, mut op: impl FnMut() -> Result<(), petrel_policy::OutboxError>) {
    loop {
        match op() {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, op = what, "event backlog write failed; retrying");
                metrics::counter!(EVENTS_BACKLOG_ERRORS_TOTAL).increment(1);
                std::thread::sleep(Duration::from_millis(BACKLOG_RETRY_DELAY_MS));
            }
        }
    }
}

/// The event type of a recipient refused because it is suppressed.
pub const SUPPRESSED_EVENT: &str = "suppressed";

fn event_type(o: Outcome) -> EventType {
    match o {
        Outcome::Accepted => EventType::Accepted,
        Outcome::Rejected => EventType::Rejected,
        Outcome::Delivered => EventType::Delivered,
        Outcome::Deferred => EventType::Deferred,
        Outcome::Bounced => EventType::Bounced,
        Outcome::Expired => EventType::Expired,
        Outcome::Suppressed => EventType::Other(SUPPRESSED_EVENT.to_string()),
    }
}

/// The event's stable id (see the module docs).
pub fn event_id(engine_id: &str, e: &Event) -> String {
    let subject = e
        .message_id
        .as_deref()
        .or(e.session_id.as_deref())
        .unwrap_or("");
    petrel_policy::Event::stable_id(
        engine_id,
        subject,
        e.rcpt_index,
        e.attempt,
        &event_type(e.outcome),
    )
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn some_clipped(s: Option<&str>, max: usize) -> Option<&str> {
    s.filter(|s| !s.is_empty()).map(|s| clip(s, max))
}

/// An SMTP reply line as `{code, enhanced_code, text}`; `None` when it has no valid code.
fn parse_reply(line: &str) -> Option<(u16, Option<&str>, &str)> {
    let code: u16 = line.get(..3)?.parse().ok()?;
    if !(200..=599).contains(&code) {
        return None;
    }
    let rest = line.get(3..).unwrap_or("").trim_start_matches(['-', ' ']);
    let (first, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let is_enhanced = {
        let parts: Vec<&str> = first.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if is_enhanced {
        Some((code, Some(first), tail))
    } else {
        Some((code, None, rest))
    }
}

/// Whether `details` serialise within `DETAILS_MAX_BYTES` (the control plane refuses a larger
/// event, and with it its batch, so an oversized object is left out instead).
fn details_fit(details: &serde_json::Map<String, serde_json::Value>) -> bool {
    serde_json::to_vec(details).is_ok_and(|v| v.len() <= DETAILS_MAX_BYTES)
}

/// One event as the control plane reads it (`petrel_policy::Event`'s field names).
struct WireEvent<'a> {
    id: &'a str,
    e: &'a Event,
}

struct WireRemote<'a>(&'a Event);

impl Serialize for WireRemote<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut m = s.serialize_map(None)?;
        if let Some(h) = some_clipped(e.host.as_deref(), DOMAIN_MAX_BYTES) {
            m.serialize_entry("mx_host", h)?;
        }
        if let Some(a) = some_clipped(e.address.as_deref(), REMOTE_FIELD_MAX_BYTES) {
            m.serialize_entry("address", a)?;
        }
        if let Some(tls) = e.tls.as_deref() {
            let (version, cipher) = tls.split_once(' ').unwrap_or((tls, ""));
            if let Some(v) = some_clipped(Some(version), REMOTE_FIELD_MAX_BYTES) {
                m.serialize_entry("tls_version", v)?;
            }
            if let Some(c) = some_clipped(Some(cipher), REMOTE_FIELD_MAX_BYTES) {
                m.serialize_entry("tls_cipher", c)?;
            }
        }
        m.end()
    }
}

struct WireReply<'a> {
    code: u16,
    enhanced: Option<&'a str>,
    text: &'a str,
}

impl Serialize for WireReply<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("code", &self.code)?;
        if let Some(x) = self.enhanced {
            m.serialize_entry("enhanced_code", clip(x, ENHANCED_CODE_MAX_BYTES))?;
        }
        m.serialize_entry("text", clip(self.text, REPLY_TEXT_MAX_BYTES))?;
        m.end()
    }
}

impl<'a> WireEvent<'a> {
    /// The remote's reply, or ours for a local failure (451 while it may still work, 550 once
    /// final, with the reason as text).
    fn reply(&self) -> Option<WireReply<'a>> {
        let e = self.e;
        if let Some((code, enhanced, text)) = e.reply.as_deref().and_then(parse_reply) {
            return Some(WireReply {
                code,
                enhanced,
                text,
            });
        }
        let text = e.reason.as_deref().or(e.reply.as_deref())?;
        let code = match e.outcome {
            Outcome::Bounced | Outcome::Expired | Outcome::Rejected | Outcome::Suppressed => 550,
            _ => 451,
        };
        Some(WireReply {
            code,
            enhanced: None,
            text,
        })
    }
}

impl Serialize for WireEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.e;
        let a = e.attribution.0.as_deref();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", self.id)?;
        m.serialize_entry("type", e.outcome.as_str())?;
        m.serialize_entry(
            "timestamp_ms",
            &i64::try_from(e.timestamp_unix_ms).unwrap_or(i64::MAX),
        )?;
        let tenant = a.and_then(Attribution::tenant_id);
        if let Some(t) = some_clipped(tenant, EVENT_ID_FIELD_MAX_BYTES) {
            m.serialize_entry("tenant_id", t)?;
        }
        if let Some(id) = some_clipped(e.message_id.as_deref(), EVENT_ID_FIELD_MAX_BYTES) {
            m.serialize_entry("message_id", id)?;
        }
        let mid = a.and_then(Attribution::rfc822_message_id);
        if let Some(mid) = some_clipped(mid, RFC822_MESSAGE_ID_MAX_BYTES) {
            m.serialize_entry("rfc822_message_id", mid)?;
        }
        m.serialize_entry("sender", clip(&e.sender, ADDRESS_MAX_BYTES))?;
        let from = a.and_then(Attribution::from_domain);
        if let Some(d) = some_clipped(from, DOMAIN_MAX_BYTES) {
            m.serialize_entry("from_domain", d)?;
        }
        if let Some(r) = some_clipped(Some(&e.recipient), ADDRESS_MAX_BYTES) {
            m.serialize_entry("recipient", r)?;
        }
        let tags: Vec<&str> = a
            .map(|a| {
                a.tags()
                    .filter(|t| !t.is_empty())
                    .take(TAGS_MAX)
                    .map(|t| clip(t, TAG_MAX_BYTES))
                    .collect()
            })
            .unwrap_or_default();
        m.serialize_entry("tags", &tags)?;
        let metadata = a
            .and_then(Attribution::metadata)
            .filter(|t| t.len() <= METADATA_MAX_BYTES && t.trim_start().starts_with('{'))
            .and_then(|t| serde_json::from_str::<&serde_json::value::RawValue>(t).ok());
        if let Some(raw) = metadata {
            m.serialize_entry("metadata", raw)?;
        }
        m.serialize_entry("attempt", &e.attempt)?;
        if e.host.is_some() || e.address.is_some() || e.tls.is_some() {
            m.serialize_entry("remote", &WireRemote(e))?;
        }
        if let Some(r) = self.reply() {
            m.serialize_entry("reply", &r)?;
        }
        if let Some(d) = e.details.as_ref().filter(|d| details_fit(d)) {
            m.serialize_entry("details", d)?;
        }
        let needs_bounce = matches!(e.outcome, Outcome::Deferred | Outcome::Bounced);
        match &e.bounce {
            Some(b) => m.serialize_entry("bounce", b)?,
            None if needs_bounce => m.serialize_entry(
                "bounce",
                &petrel_bounce::Classification {
                    category: petrel_bounce::Category::Other,
                    class: if e.outcome == Outcome::Bounced {
                        petrel_bounce::BounceClass::Hard
                    } else {
                        petrel_bounce::BounceClass::Soft
                    },
                },
            )?,
            None => {}
        }
        m.end()
    }
}

#[cfg(test)]
mod tests;
