//! Who a queued message belongs to and the tenant's labels for it, as delivery events report it.
//!
//! The engine builds one [`Attribution`] per accepted (or recovered) message and hands it over
//! in [`crate::QueuedMessage`] behind an `Arc`: every recipient's state and every event of the
//! message share that one allocation, so an event costs a reference count, not a copy, and no
//! event ever needs the body or the spool again. Messages without any attribution carry `None`
//! (no allocation).
//!
//! The parts are bounded before they get here (tags 5 × 128 bytes, metadata 1 KiB, Message-ID
//! 998 bytes: see `petrel_smtp::petrel_headers`), so the memory a queued message holds stays
//! bounded by the recipients it has.
//!
//! DSNs that Petrel generates carry no attribution: they are Petrel's report to the original
//! sender, not the tenant's traffic. The original's `bounced`/`expired` events carry the full
//! attribution, which is what a webhook consumer matches on.

use std::sync::Arc;

use serde::{Serialize, Serializer};

/// The attribution of one message (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    pub tenant_id: Option<String>,
    /// The control-plane credential that authenticated, if any.
    pub credential_id: Option<String>,
    /// The From address's domain, lowercased.
    pub from_domain: Option<String>,
    /// The RFC 5322 Message-ID without angle brackets.
    pub rfc822_message_id: Option<String>,
    /// `X-Petrel-Tag` values, in header order.
    pub tags: Vec<String>,
    /// The `X-Petrel-Metadata` JSON object as validated text; written into events as JSON.
    #[serde(serialize_with = "raw_json")]
    pub metadata: Option<String>,
}

/// What events say when a message has no attribution: every field present, null or empty.
static NONE: Attribution = Attribution {
    tenant_id: None,
    credential_id: None,
    from_domain: None,
    rfc822_message_id: None,
    tags: Vec::new(),
    metadata: None,
};

/// An event's view of its message's attribution: flattened into the event's JSON object, the
/// same fields whether or not the message has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventAttribution(pub Option<Arc<Attribution>>);

impl Serialize for EventAttribution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_deref().unwrap_or(&NONE).serialize(s)
    }
}

/// Writes validated JSON text as JSON (an object, not a string). Text that somehow is not JSON
/// is written as a string rather than breaking the events line.
fn raw_json<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        None => s.serialize_none(),
        Some(text) => match serde_json::from_str::<&serde_json::value::RawValue>(text) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_str(text),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_metadata_as_json_and_none_as_nulls() {
        let a = Attribution {
            tenant_id: Some("t1".into()),
            tags: vec!["welcome".into()],
            metadata: Some("{\"user\":\"42\",\"n\":7}".into()),
            ..Attribution::default()
        };
        let v = serde_json::to_value(EventAttribution(Some(Arc::new(a)))).expect("json");
        assert_eq!(v["tenant_id"], "t1");
        assert_eq!(v["metadata"]["user"], "42");
        assert_eq!(v["metadata"]["n"], 7);
        assert_eq!(v["tags"][0], "welcome");
        assert!(v["credential_id"].is_null());
        let none = serde_json::to_string(&EventAttribution(None)).expect("json");
        assert_eq!(
            none,
            "{\"tenant_id\":null,\"credential_id\":null,\"from_domain\":null,\
             \"rfc822_message_id\":null,\"tags\":[],\"metadata\":null}"
        );
        let bad = Attribution {
            metadata: Some("not json".into()),
            ..Attribution::default()
        };
        let v = serde_json::to_value(&bad).expect("json");
        assert_eq!(v["metadata"], "not json");
    }
}
