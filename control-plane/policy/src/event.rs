//! Delivery events: what happened to each recipient of each message, sent by every engine to
//! the control plane (the `Events` frame of [`crate::wire`]) and served by its `/v1/events`.
//!
//! One [`Event`] per outcome. The JSON field names are the public contract (the API answers the
//! same objects): `id`, `type`, `timestamp_ms`, `tenant_id`, `message_id`, `rfc822_message_id`,
//! `sender`, `from_domain`, `recipient`, `tags`, `metadata`, `attempt`, `remote`, `reply`,
//! `bounce`. Unknown fields are ignored when reading, so a newer engine may add fields.
//!
//! The type set is open ([`EventType::Other`]): an older control plane stores and serves an
//! event of a type it does not know (the next issue adds `suppressed`, `complained`,
//! `unsubscribed`), it only leaves it out of the aggregates.
//!
//! **Stable ids.** Delivery is at-least-once: an engine that crashes after sending a batch and
//! before its acknowledgement sends it again, possibly rebuilt from its disk backlog. The
//! control plane drops events whose `id` it already stored, so the id must be a pure function
//! of what the event describes, never of when it was built: use [`Event::stable_id`] with the
//! engine id, the engine-local message id, the recipient's index in the message's envelope, the
//! delivery attempt (0 for `accepted` and `rejected`) and the type. For an SMTP rejection there
//! is no message id: pass the session id and the transaction's index in the session.
//!
//! Every size is bounded by a named limit; [`Event::validate`] checks them all and says which
//! field broke which limit ([`EventError`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest event id, in bytes ([`Event::stable_id`] makes 35).
pub const EVENT_ID_MAX_BYTES: usize = 128;
/// Longest event type name, in bytes (a lower-case token).
pub const EVENT_TYPE_MAX_BYTES: usize = 32;
/// Longest tenant id or Petrel message id, in bytes.
pub const EVENT_ID_FIELD_MAX_BYTES: usize = 128;
/// Longest `Message-ID` header value kept, in bytes (RFC 5322 line limit).
pub const RFC822_MESSAGE_ID_MAX_BYTES: usize = 998;
/// Longest sender or recipient address, in bytes (RFC 5321 path limit).
pub const ADDRESS_MAX_BYTES: usize = 256;
/// Longest domain or MX host name, in bytes.
pub const DOMAIN_MAX_BYTES: usize = 255;
/// Tags per event.
pub const TAGS_MAX: usize = 5;
/// Longest tag, in bytes.
pub const TAG_MAX_BYTES: usize = 128;
/// Largest `metadata` object, in bytes of its compact JSON.
pub const METADATA_MAX_BYTES: usize = 1024;
/// Longest remote address, TLS version or cipher name, in bytes.
pub const REMOTE_FIELD_MAX_BYTES: usize = 128;
/// Longest enhanced status code text (`5.1.1`), in bytes.
pub const ENHANCED_CODE_MAX_BYTES: usize = 16;
/// Longest reply text kept, in bytes (engines truncate multi-line replies to this).
pub const REPLY_TEXT_MAX_BYTES: usize = 1024;
/// Longest bounce category name, in bytes (the classifier's names are short tokens).
pub const BOUNCE_CATEGORY_MAX_BYTES: usize = 32;
/// Largest `details` object, in bytes of its compact JSON.
pub const DETAILS_MAX_BYTES: usize = 4096;
/// `details` key of a report event (a bounce, complaint or unsubscribe received at the
/// return-path intake) whose VERP token names the recipient by its index in the message's
/// envelope: the control plane reads the address the message was sent to from the message's
/// `accepted` event (issue 14).
pub const DETAIL_RCPT_INDEX: &str = "rcpt_index";
/// `details` key the control plane sets on a report event at ingest: how its tenant, message
/// and recipient were found (`token`, `message_id`, `reported`, `unresolved`).
pub const DETAIL_ATTRIBUTION: &str = "attribution";
/// `details` key the control plane sets when the address a report named differs from the
/// recipient its token or Message-ID leads to (the event names the latter).
pub const DETAIL_REPORTED_RECIPIENT: &str = "reported_recipient";
/// Events in one `Events` frame.
pub const EVENTS_PER_BATCH_MAX: usize = 1_000;
/// Largest JSON array of one `Events` frame, in bytes.
pub const EVENTS_BATCH_MAX_BYTES: usize = 4 << 20;

/// What happened. Serialized as its lower-case name; any other well-formed name is kept as
/// [`EventType::Other`] (the set is open).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// The engine took responsibility for the recipient (250 after DATA).
    Accepted,
    /// Refused at SMTP (the reason is in `reply`).
    Rejected,
    /// The destination accepted it.
    Delivered,
    /// A temporary failure; the engine retries (`bounce` says why).
    Deferred,
    /// A permanent failure, or a temporary one classified as final (`bounce` says why).
    Bounced,
    /// Still undelivered when its time in the queue ran out.
    Expired,
    /// A type this build does not know; its name passed [`is_token`].
    Other(String),
}

impl EventType {
    /// The six types this build knows.
    pub const KNOWN: [EventType; 6] = [
        EventType::Accepted,
        EventType::Rejected,
        EventType::Delivered,
        EventType::Deferred,
        EventType::Bounced,
        EventType::Expired,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            EventType::Accepted => "accepted",
            EventType::Rejected => "rejected",
            EventType::Delivered => "delivered",
            EventType::Deferred => "deferred",
            EventType::Bounced => "bounced",
            EventType::Expired => "expired",
            EventType::Other(s) => s,
        }
    }

    /// The type named `s`: a known one, or `Other` (not checked here; see [`Event::validate`]).
    pub fn parse(s: &str) -> EventType {
        EventType::KNOWN
            .into_iter()
            .find(|t| t.as_str() == s)
            .unwrap_or_else(|| EventType::Other(s.to_string()))
    }

    /// True for the types that must carry a `bounce` object.
    pub fn needs_bounce(&self) -> bool {
        matches!(self, EventType::Deferred | EventType::Bounced)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EventType, D::Error> {
        let s = String::deserialize(d)?;
        Ok(EventType::parse(&s))
    }
}

/// A short lower-case token: 1..=`max` bytes of `a-z`, `0-9`, `_`, `-`, `.`.
pub fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
        })
}

/// Event types an engine sends for the control plane's audit log, not its event table:
/// failed SMTP AUTHs of one address in one window, and a queue admin call (`details` carries
/// what happened).
pub const SMTP_AUTH_FAILED: &str = "smtp_auth_failed";
pub const QUEUE_ADMIN: &str = "queue_admin";
/// The event type an engine sends its TLS-RPT session counts under (RFC 8460; `details.rows`,
/// see `petrel_delivery::tls_rpt`): the control plane sums them into its TLS-RPT table, not
/// its event table.
pub const TLS_RPT_COUNTS: &str = "tls_rpt";
/// The failure types of RFC 8460 §4.3, as a TLS-RPT row names them (the engine's
/// `petrel_delivery::tls_rpt::FailureType`; the control plane refuses other names).
pub const TLS_RPT_FAILURE_TYPES: [&str; 11] = [
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

/// `hard`: do not retry this address; `soft`: it may work later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BounceClass {
    Hard,
    Soft,
}

impl BounceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::Hard => "hard",
            BounceClass::Soft => "soft",
        }
    }
}

/// The classifier's verdict on a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bounce {
    pub class: BounceClass,
    /// One of the classifier crate's category names (a token; the set is the classifier's).
    pub category: String,
}

/// The server the engine talked to. Every field is optional: a DNS failure has no host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Remote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
    /// IP address (with port when not 25), as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `TLSv1.3`, `TLSv1.2`; absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// The IANA cipher suite name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cipher: Option<String>,
}

/// The SMTP reply that decided the outcome (ours for `accepted`/`rejected`, the remote's
/// otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reply {
    /// 200..=599.
    pub code: u16,
    /// `5.1.1`; absent when the server sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced_code: Option<String>,
    /// The reply text, lines joined by a space, at most [`REPLY_TEXT_MAX_BYTES`].
    pub text: String,
}

/// One outcome for one recipient (or one refused SMTP transaction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique and stable across re-sends: see [`Event::stable_id`].
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened, Unix milliseconds (engine clock).
    pub timestamp_ms: i64,
    /// The sending tenant; absent when unknown (a rejection before AUTH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Petrel's message id; absent for a rejection before the message existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The `Message-ID` header, without angle brackets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc822_message_id: Option<String>,
    /// The envelope sender (MAIL FROM); empty for the null sender.
    #[serde(default)]
    pub sender: String,
    /// The `From:` header's domain, lower case (what stats group by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_domain: Option<String>,
    /// The envelope recipient; absent for a rejection before RCPT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// At most [`TAGS_MAX`] tags of at most [`TAG_MAX_BYTES`] each.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The sender's own data (at most [`METADATA_MAX_BYTES`] of JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Delivery attempt, from 1; 0 for `accepted` and `rejected`.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Remote>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// Required for `bounced` and `deferred`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce: Option<Bounce>,
    /// Set on a `bounced` event that came back later as a bounce message (a DSN at the
    /// return-path intake), not as the remote's reply during the SMTP transaction.
    #[serde(rename = "async", default, skip_serializing_if = "std::ops::Not::not")]
    pub is_async: bool,
    /// What Petrel adds about the event beyond the fields above, as a small JSON object (at
    /// most [`DETAILS_MAX_BYTES`]): a complaint's feedback type, a DMARC report row, the
    /// failing checks of a refused sending domain, a reputation warning's rates. Unlike
    /// `metadata` (the sender's own data), Petrel fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why an event (or a batch) was refused. Carries the field and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    #[error("event {id:?}: {field} is {len} bytes (max {max})")]
    TooLong {
        id: String,
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("event {id:?}: {field} must not be empty")]
    Empty { id: String, field: &'static str },
    #[error("event {id:?}: {field} is not a lower-case token: {value:?}")]
    NotAToken {
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("event {id:?}: {count} tags (max {max})")]
    TooManyTags {
        id: String,
        count: usize,
        max: usize,
    },
    #[error("event {id:?}: reply code {code} outside 200..=599")]
    BadReplyCode { id: String, code: u16 },
    #[error("event {id:?}: timestamp_ms {timestamp_ms} is negative")]
    BadTimestamp { id: String, timestamp_ms: i64 },
    #[error("event {id:?}: type {kind} needs a bounce object")]
    MissingBounce { id: String, kind: String },
    #[error("batch of {count} events (max {max})")]
    BatchTooLarge { count: usize, max: usize },
    #[error("batch of {len} bytes (max {max})")]
    BatchTooManyBytes { len: usize, max: usize },
    #[error("batch has event id {id:?} twice")]
    DuplicateId { id: String },
}

/// Hex digits of an event id taken from its subject (a 64-bit message or session id).
pub const EVENT_ID_PREFIX_HEX_DIGITS: usize = 16;

impl Event {
    /// An event with its id, type and time, and nothing else: fill in the rest with struct
    /// update syntax (`Event { tenant_id, ..Event::bare(id, kind, now) }`).
    pub fn bare(id: String, kind: EventType, timestamp_ms: i64) -> Event {
        Event {
            id,
            kind,
            timestamp_ms,
            tenant_id: None,
            message_id: None,
            rfc822_message_id: None,
            sender: String::new(),
            from_domain: None,
            recipient: None,
            tags: Vec::new(),
            metadata: None,
            attempt: 0,
            remote: None,
            reply: None,
            bounce: None,
            is_async: false,
            details: None,
        }
    }

    /// The id the engine gives an event: `ev_`, then the subject when it is 16 hex digits (a
    /// spool message id or a session id) or else 16 hex digits of the hash, then 16 hex digits
    /// of SHA-256 over the length-prefixed parts. The same outcome always gets the same id (a
    /// re-sent event is recognised) and distinct outcomes never share one. Leading with the
    /// message id (shard, then a sequence that only grows) makes ids sort roughly in spool
    /// order, so the store's unique index on them grows at a few places instead of at random
    /// ones (at random, every event of an ingest commit dirtied its own index page).
    /// `subject` is the engine-local message id (or, for an SMTP rejection, the session id),
    /// `index` the recipient's index in the envelope (or the transaction's index in the
    /// session), `attempt` 0 for `accepted`/`rejected`.
    pub fn stable_id(
        engine_id: &str,
        subject: &str,
        index: u32,
        attempt: u32,
        kind: &EventType,
    ) -> String {
        let mut h = Sha256::new();
        for part in [
            engine_id.as_bytes(),
            subject.as_bytes(),
            kind.as_str().as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(index.to_be_bytes());
        h.update(attempt.to_be_bytes());
        let digest = h.finalize();
        let ordered = subject.len() == EVENT_ID_PREFIX_HEX_DIGITS
            && subject.bytes().all(|b| b.is_ascii_hexdigit());
        if ordered {
            format!(
                "ev_{}{}",
                subject.to_ascii_lowercase(),
                hex::encode(&digest[..8])
            )
        } else {
            format!("ev_{}", hex::encode(&digest[..16]))
        }
    }

    /// Checks every bound and rule: sizes, tokens, a `bounce` where the type needs one.
    pub fn validate(&self) -> Result<(), EventError> {
        let id = || self.id.chars().take(EVENT_ID_MAX_BYTES).collect::<String>();
        let len = |field: &'static str, v: &str, max: usize| {
            if v.len() > max {
                Err(EventError::TooLong {
                    id: id(),
                    field,
                    len: v.len(),
                    max,
                })
            } else {
                Ok(())
            }
        };
        let opt =
            |field, v: &Option<String>, max| v.as_deref().map_or(Ok(()), |v| len(field, v, max));
        if self.id.is_empty() {
            return Err(EventError::Empty {
                id: id(),
                field: "id",
            });
        }
        len("id", &self.id, EVENT_ID_MAX_BYTES)?;
        if !is_token(self.kind.as_str(), EVENT_TYPE_MAX_BYTES) {
            return Err(EventError::NotAToken {
                id: id(),
                field: "type",
                value: self
                    .kind
                    .as_str()
                    .chars()
                    .take(EVENT_TYPE_MAX_BYTES)
                    .collect(),
            });
        }
        if self.timestamp_ms < 0 {
            return Err(EventError::BadTimestamp {
                id: id(),
                timestamp_ms: self.timestamp_ms,
            });
        }
        opt("tenant_id", &self.tenant_id, EVENT_ID_FIELD_MAX_BYTES)?;
        opt("message_id", &self.message_id, EVENT_ID_FIELD_MAX_BYTES)?;
        opt(
            "rfc822_message_id",
            &self.rfc822_message_id,
            RFC822_MESSAGE_ID_MAX_BYTES,
        )?;
        len("sender", &self.sender, ADDRESS_MAX_BYTES)?;
        opt("from_domain", &self.from_domain, DOMAIN_MAX_BYTES)?;
        opt("recipient", &self.recipient, ADDRESS_MAX_BYTES)?;
        if self.tags.len() > TAGS_MAX {
            return Err(EventError::TooManyTags {
                id: id(),
                count: self.tags.len(),
                max: TAGS_MAX,
            });
        }
        for tag in &self.tags {
            if tag.is_empty() {
                return Err(EventError::Empty {
                    id: id(),
                    field: "tags",
                });
            }
            len("tags", tag, TAG_MAX_BYTES)?;
        }
        if let Some(m) = &self.metadata {
            let bytes = serde_json::Value::Object(m.clone()).to_string().len();
            if bytes > METADATA_MAX_BYTES {
                return Err(EventError::TooLong {
                    id: id(),
                    field: "metadata",
                    len: bytes,
                    max: METADATA_MAX_BYTES,
                });
            }
        }
        if let Some(d) = &self.details {
            let bytes = serde_json::Value::Object(d.clone()).to_string().len();
            if bytes > DETAILS_MAX_BYTES {
                return Err(EventError::TooLong {
                    id: id(),
                    field: "details",
                    len: bytes,
                    max: DETAILS_MAX_BYTES,
                });
            }
        }
        if let Some(r) = &self.remote {
            opt("remote.mx_host", &r.mx_host, DOMAIN_MAX_BYTES)?;
            opt("remote.address", &r.address, REMOTE_FIELD_MAX_BYTES)?;
            opt("remote.tls_version", &r.tls_version, REMOTE_FIELD_MAX_BYTES)?;
            opt("remote.tls_cipher", &r.tls_cipher, REMOTE_FIELD_MAX_BYTES)?;
        }
        if let Some(r) = &self.reply {
            if !(200..=599).contains(&r.code) {
                return Err(EventError::BadReplyCode {
                    id: id(),
                    code: r.code,
                });
            }
            opt(
                "reply.enhanced_code",
                &r.enhanced_code,
                ENHANCED_CODE_MAX_BYTES,
            )?;
            len("reply.text", &r.text, REPLY_TEXT_MAX_BYTES)?;
        }
        match &self.bounce {
            Some(b) if !is_token(&b.category, BOUNCE_CATEGORY_MAX_BYTES) => {
                Err(EventError::NotAToken {
                    id: id(),
                    field: "bounce.category",
                    value: b.category.chars().take(BOUNCE_CATEGORY_MAX_BYTES).collect(),
                })
            }
            None if self.kind.needs_bounce() => Err(EventError::MissingBounce {
                id: id(),
                kind: self.kind.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// Checks a whole batch: its count, every event, and that no id appears twice.
pub fn validate_batch(events: &[Event]) -> Result<(), EventError> {
    if events.len() > EVENTS_PER_BATCH_MAX {
        return Err(EventError::BatchTooLarge {
            count: events.len(),
            max: EVENTS_PER_BATCH_MAX,
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for e in events {
        e.validate()?;
        if !seen.insert(e.id.as_str()) {
            return Err(EventError::DuplicateId { id: e.id.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(kind: EventType) -> Event {
        Event {
            id: Event::stable_id("engine-1", "m1", 0, 1, &kind),
            bounce: kind.needs_bounce().then(|| Bounce {
                class: BounceClass::Hard,
                category: "bad_mailbox".into(),
            }),
            kind,
            timestamp_ms: 1_700_000_000_000,
            tenant_id: Some("ten_1".into()),
            message_id: Some("m1".into()),
            rfc822_message_id: Some("abc@example.test".into()),
            sender: "a@example.test".into(),
            from_domain: Some("example.test".into()),
            recipient: Some("b@dest.test".into()),
            tags: vec!["welcome".into()],
            metadata: Some(serde_json::Map::from_iter([("user".into(), 7.into())])),
            attempt: 1,
            remote: Some(Remote {
                mx_host: Some("mx.dest.test".into()),
                address: Some("192.0.2.1".into()),
                tls_version: Some("TLSv1.3".into()),
                tls_cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
            }),
            reply: Some(Reply {
                code: 550,
                enhanced_code: Some("5.1.1".into()),
                text: "no such user".into(),
            }),
            is_async: false,
            details: None,
        }
    }

    #[test]
    fn async_and_details_appear_only_when_set() {
        let mut e = sample(EventType::Bounced);
        let v = serde_json::to_value(&e).unwrap();
        assert!(v.get("async").is_none() && v.get("details").is_none());
        e.is_async = true;
        let mut d = serde_json::Map::new();
        d.insert("feedback_type".into(), "abuse".into());
        e.details = Some(d);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["async"], true);
        assert_eq!(v["details"]["feedback_type"], "abuse");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        let mut big = serde_json::Map::new();
        big.insert("x".into(), "y".repeat(DETAILS_MAX_BYTES).into());
        e.details = Some(big);
        assert!(matches!(
            e.validate(),
            Err(EventError::TooLong {
                field: "details",
                ..
            })
        ));
    }

    #[test]
    fn json_names_are_the_contract() {
        let e = sample(EventType::Bounced);
        let v = serde_json::to_value(&e).unwrap();
        for k in [
            "id",
            "type",
            "timestamp_ms",
            "tenant_id",
            "message_id",
            "rfc822_message_id",
            "sender",
            "from_domain",
            "recipient",
            "tags",
            "metadata",
            "attempt",
            "remote",
            "reply",
            "bounce",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["type"], "bounced");
        assert_eq!(v["bounce"]["class"], "hard");
        assert_eq!(v["remote"]["tls_cipher"], "TLS13_AES_128_GCM_SHA256");
        assert_eq!(v["reply"]["enhanced_code"], "5.1.1");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_types_are_kept_and_unknown_fields_ignored() {
        let e: Event = serde_json::from_str(
            r#"{"id":"x","type":"complained","timestamp_ms":5,"future_field":1}"#,
        )
        .unwrap();
        assert_eq!(e.kind, EventType::Other("complained".into()));
        e.validate().unwrap();
        assert_eq!(serde_json::to_value(&e).unwrap()["type"], "complained");
        for t in EventType::KNOWN {
            assert_eq!(EventType::parse(t.as_str()), t);
        }
    }

    #[test]
    fn stable_ids_depend_on_every_part_only() {
        let k = EventType::Delivered;
        let a = Event::stable_id("e", "m", 1, 2, &k);
        assert_eq!(a, Event::stable_id("e", "m", 1, 2, &k));
        assert_eq!(a.len(), 35);
        assert!(a.len() <= EVENT_ID_MAX_BYTES);
        for other in [
            Event::stable_id("e2", "m", 1, 2, &k),
            Event::stable_id("e", "m2", 1, 2, &k),
            Event::stable_id("e", "m", 2, 2, &k),
            Event::stable_id("e", "m", 1, 3, &k),
            Event::stable_id("e", "m", 1, 2, &EventType::Bounced),
            // Length prefixes: moving a byte between parts changes the id.
            Event::stable_id("em", "", 1, 2, &k),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn stable_ids_of_a_message_lead_with_its_id_and_sort_in_spool_order() {
        let k = EventType::Delivered;
        let m1 = "01000000000000ff";
        let m2 = "0100000000000100";
        let a = Event::stable_id("e", m1, 0, 1, &k);
        assert!(a.starts_with(&format!("ev_{m1}")), "{a}");
        assert_eq!(a.len(), 35);
        assert!(a < Event::stable_id("e", m2, 0, 1, &k));
        // Still distinct per engine, recipient, attempt and type under the same prefix.
        let same_prefix = [
            Event::stable_id("e2", m1, 0, 1, &k),
            Event::stable_id("e", m1, 1, 1, &k),
            Event::stable_id("e", m1, 0, 2, &k),
            Event::stable_id("e", m1, 0, 1, &EventType::Accepted),
        ];
        for other in same_prefix {
            assert!(other.starts_with(&format!("ev_{m1}")));
            assert_ne!(a, other);
        }
        // A subject that is not 16 hex digits is hashed whole.
        assert!(!Event::stable_id("e", "not-a-message-id", 0, 1, &k).contains("not"));
    }

    #[test]
    fn every_bound_is_enforced() {
        for t in EventType::KNOWN {
            sample(t).validate().unwrap();
        }
        let mut e = sample(EventType::Delivered);
        e.tags = vec!["t".into(); TAGS_MAX + 1];
        assert!(matches!(
            e.validate(),
            Err(EventError::TooManyTags { count: 6, .. })
        ));
        let mut e = sample(EventType::Delivered);
        e.tags = vec!["x".repeat(TAG_MAX_BYTES + 1)];
        assert!(matches!(
            e.validate(),
            Err(EventError::TooLong { field: "tags", .. })
        ));
        let mut e = sample(EventType::Delivered);
        e.metadata = Some(serde_json::Map::from_iter([(
            "k".into(),
            "v".repeat(METADATA_MAX_BYTES).into(),
        )]));
        assert!(matches!(
            e.validate(),
            Err(EventError::TooLong {
                field: "metadata",
                ..
            })
        ));
        let mut e = sample(EventType::Delivered);
        e.recipient = Some("r".repeat(ADDRESS_MAX_BYTES + 1));
        assert!(matches!(
            e.validate(),
            Err(EventError::TooLong {
                field: "recipient",
                ..
            })
        ));
        let mut e = sample(EventType::Bounced);
        e.bounce = None;
        assert!(matches!(
            e.validate(),
            Err(EventError::MissingBounce { .. })
        ));
        let mut e = sample(EventType::Bounced);
        e.bounce = Some(Bounce {
            class: BounceClass::Soft,
            category: "Not A Token".into(),
        });
        assert!(matches!(e.validate(), Err(EventError::NotAToken { .. })));
        let mut e = sample(EventType::Delivered);
        e.kind = EventType::Other("Bad Type".into());
        assert!(matches!(
            e.validate(),
            Err(EventError::NotAToken { field: "type", .. })
        ));
        let mut e = sample(EventType::Delivered);
        e.id = String::new();
        assert!(matches!(
            e.validate(),
            Err(EventError::Empty { field: "id", .. })
        ));
        let mut e = sample(EventType::Delivered);
        e.reply = Some(Reply {
            code: 99,
            enhanced_code: None,
            text: String::new(),
        });
        assert!(matches!(
            e.validate(),
            Err(EventError::BadReplyCode { code: 99, .. })
        ));
        let mut e = sample(EventType::Delivered);
        e.timestamp_ms = -1;
        assert!(matches!(e.validate(), Err(EventError::BadTimestamp { .. })));

        let e = sample(EventType::Delivered);
        assert!(matches!(
            validate_batch(&[e.clone(), e.clone()]),
            Err(EventError::DuplicateId { .. })
        ));
        let many = vec![e; EVENTS_PER_BATCH_MAX + 1];
        assert!(matches!(
            validate_batch(&many),
            Err(EventError::BatchTooLarge { .. })
        ));
    }
}
