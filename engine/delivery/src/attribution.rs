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

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// What many messages share: tenant, credential and From domain. The engine interns these
/// (one allocation per distinct triple, see `crate::memory::SharedInterner`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AttributionKey {
    pub tenant_id: Option<Box<str>>,
    /// The control-plane credential that authenticated, if any.
    pub credential_id: Option<Box<str>>,
    /// The From address's domain, lowercased.
    pub from_domain: Option<Box<str>>,
}

impl AttributionKey {
    pub fn is_empty(&self) -> bool {
        self.tenant_id.is_none() && self.credential_id.is_none() && self.from_domain.is_none()
    }

    /// Heap bytes: the struct behind its `Arc` and its strings.
    pub fn heap_bytes(&self) -> usize {
        let opt = |s: &Option<Box<str>>| s.as_deref().map_or(0, crate::memory::str_heap_bytes);
        crate::memory::rc_alloc_bytes(std::mem::size_of::<AttributionKey>())
            + opt(&self.tenant_id)
            + opt(&self.credential_id)
            + opt(&self.from_domain)
    }
}

/// No Message-ID or no metadata, in [`Attribution`]'s packed lengths.
const ABSENT: u16 = u16::MAX;

/// The attribution of one message (see the module docs): 24 bytes, plus one allocation of its
/// own parts (Message-ID, tags, metadata) packed with their lengths, and a share of its
/// [`AttributionKey`]. A queued message holds one for as long as it is queued, so every byte
/// here is multiplied by the queue's depth (issue 17).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    key: Option<Arc<AttributionKey>>,
    /// `[message-id len: u16][metadata len: u16][tag count: u8][tag len: u16]...` (lengths
    /// little-endian, [`ABSENT`] for none), then the Message-ID, the metadata and the tags'
    /// bytes. Empty when all three are.
    own: Box<[u8]>,
}
const _: () = assert!(std::mem::size_of::<Attribution>() == 24);

/// The parts of an attribution, owned (tests, rejections and other places that build one
/// outside the engine's interned path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributionParts {
    pub tenant_id: Option<String>,
    pub credential_id: Option<String>,
    pub from_domain: Option<String>,
    pub rfc822_message_id: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Option<String>,
}

impl From<AttributionParts> for Attribution {
    fn from(p: AttributionParts) -> Attribution {
        let key = AttributionKey {
            tenant_id: p.tenant_id.map(String::into_boxed_str),
            credential_id: p.credential_id.map(String::into_boxed_str),
            from_domain: p.from_domain.map(String::into_boxed_str),
        };
        let key = (!key.is_empty()).then(|| Arc::new(key));
        Attribution::new(
            key,
            p.rfc822_message_id.as_deref(),
            &p.tags,
            p.metadata.as_deref(),
        )
    }
}

/// The longest a packed part may be (the parts are bounded far below it before they get here;
/// anything longer is cut at a character boundary).
const PART_MAX_BYTES: usize = (u16::MAX - 1) as usize;

fn cut(s: &str) -> &str {
    if s.len() <= PART_MAX_BYTES {
        return s;
    }
    let mut end = PART_MAX_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Attribution {
    /// Packs the message's own parts next to its shared key. At most 255 tags are kept.
    pub fn new<T: AsRef<str>>(
        key: Option<Arc<AttributionKey>>,
        rfc822_message_id: Option<&str>,
        tags: &[T],
        metadata: Option<&str>,
    ) -> Attribution {
        let mid = rfc822_message_id.map(cut);
        let meta = metadata.map(cut);
        let tags: Vec<&str> = tags.iter().take(255).map(|t| cut(t.as_ref())).collect();
        if mid.is_none() && meta.is_none() && tags.is_empty() {
            return Attribution {
                key,
                own: Box::default(),
            };
        }
        let len16 = |s: Option<&str>| s.map_or(ABSENT, |s| s.len() as u16);
        let body: usize = mid.map_or(0, str::len)
            + meta.map_or(0, str::len)
            + tags.iter().map(|t| t.len()).sum::<usize>();
        let mut own = Vec::with_capacity(5 + 2 * tags.len() + body);
        own.extend_from_slice(&len16(mid).to_le_bytes());
        own.extend_from_slice(&len16(meta).to_le_bytes());
        own.push(tags.len() as u8);
        for t in &tags {
            own.extend_from_slice(&(t.len() as u16).to_le_bytes());
        }
        own.extend_from_slice(mid.unwrap_or_default().as_bytes());
        own.extend_from_slice(meta.unwrap_or_default().as_bytes());
        for t in &tags {
            own.extend_from_slice(t.as_bytes());
        }
        Attribution {
            key,
            own: own.into_boxed_slice(),
        }
    }

    /// The shared part, if any.
    pub fn key(&self) -> Option<&Arc<AttributionKey>> {
        self.key.as_ref()
    }

    pub fn tenant_id(&self) -> Option<&str> {
        self.key.as_deref()?.tenant_id.as_deref()
    }

    pub fn credential_id(&self) -> Option<&str> {
        self.key.as_deref()?.credential_id.as_deref()
    }

    pub fn from_domain(&self) -> Option<&str> {
        self.key.as_deref()?.from_domain.as_deref()
    }

    /// The packed header: Message-ID length, metadata length, tag lengths.
    fn layout(&self) -> Option<(u16, u16, &[u8])> {
        let o = &self.own;
        if o.len() < 5 {
            return None;
        }
        let mid = u16::from_le_bytes([o[0], o[1]]);
        let meta = u16::from_le_bytes([o[2], o[3]]);
        let n = usize::from(o[4]);
        Some((mid, meta, o.get(5..5 + 2 * n)?))
    }

    /// The bytes of part `skip..skip+len` after the header, as text.
    fn part(&self, start: usize, len: usize) -> &str {
        self.own
            .get(start..start + len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    fn header_len(&self) -> usize {
        self.layout().map_or(0, |(_, _, t)| 5 + t.len())
    }

    /// The RFC 5322 Message-ID without angle brackets.
    pub fn rfc822_message_id(&self) -> Option<&str> {
        let (mid, _, _) = self.layout()?;
        (mid != ABSENT).then(|| self.part(self.header_len(), usize::from(mid)))
    }

    /// The `X-Petrel-Metadata` JSON object as validated text.
    pub fn metadata(&self) -> Option<&str> {
        let (mid, meta, _) = self.layout()?;
        let start = self.header_len() + if mid == ABSENT { 0 } else { usize::from(mid) };
        (meta != ABSENT).then(|| self.part(start, usize::from(meta)))
    }

    /// `X-Petrel-Tag` values, in header order.
    pub fn tags(&self) -> impl Iterator<Item = &str> + '_ {
        let (mid, meta, lens) = self.layout().unwrap_or((ABSENT, ABSENT, &[]));
        let mut at = self.header_len()
            + if mid == ABSENT { 0 } else { usize::from(mid) }
            + if meta == ABSENT { 0 } else { usize::from(meta) };
        lens.chunks_exact(2).map(move |l| {
            let len = usize::from(u16::from_le_bytes([l[0], l[1]]));
            let t = self.part(at, len);
            at += len;
            t
        })
    }

    /// Heap bytes this message's attribution owns: the `Arc`'s allocation and its packed
    /// parts (the key is shared, counted once by whoever interns it).
    pub fn own_heap_bytes(&self) -> usize {
        crate::memory::rc_alloc_bytes(std::mem::size_of::<Attribution>())
            + crate::memory::alloc_bytes(self.own.len())
    }
}

impl Serialize for Attribution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Attribution", 6)?;
        st.serialize_field("tenant_id", &self.tenant_id())?;
        st.serialize_field("credential_id", &self.credential_id())?;
        st.serialize_field("from_domain", &self.from_domain())?;
        st.serialize_field("rfc822_message_id", &self.rfc822_message_id())?;
        st.serialize_field("tags", &self.tags().collect::<Vec<_>>())?;
        st.serialize_field("metadata", &RawJson(self.metadata()))?;
        st.end()
    }
}

/// An event's view of its message's attribution: flattened into the event's JSON object, the
/// same fields whether or not the message has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventAttribution(pub Option<Arc<Attribution>>);

impl Serialize for EventAttribution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_deref() {
            Some(a) => a.serialize(s),
            // Every field present, null or empty (nothing allocated).
            None => Attribution::default().serialize(s),
        }
    }
}

/// Writes validated JSON text as JSON (an object, not a string). Text that somehow is not JSON
/// is written as a string rather than breaking the events line.
struct RawJson<'a>(Option<&'a str>);

impl Serialize for RawJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_none(),
            Some(text) => match serde_json::from_str::<&serde_json::value::RawValue>(text) {
                Ok(raw) => raw.serialize(s),
                Err(_) => s.serialize_str(text),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts(a: &Attribution) -> AttributionParts {
        AttributionParts {
            tenant_id: a.tenant_id().map(String::from),
            credential_id: a.credential_id().map(String::from),
            from_domain: a.from_domain().map(String::from),
            rfc822_message_id: a.rfc822_message_id().map(String::from),
            tags: a.tags().map(String::from).collect(),
            metadata: a.metadata().map(String::from),
        }
    }

    #[test]
    fn serialises_metadata_as_json_and_none_as_nulls() {
        let a = Attribution::from(AttributionParts {
            tenant_id: Some("t1".into()),
            tags: vec!["welcome".into()],
            metadata: Some("{\"user\":\"42\",\"n\":7}".into()),
            ..AttributionParts::default()
        });
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
        let bad = Attribution::from(AttributionParts {
            metadata: Some("not json".into()),
            ..AttributionParts::default()
        });
        let v = serde_json::to_value(&bad).expect("json");
        assert_eq!(v["metadata"], "not json");
    }

    #[test]
    fn a_typical_message_costs_under_a_hundred_bytes_of_its_own() {
        let a = Attribution::from(AttributionParts {
            tenant_id: Some("ten_0123456789abcdef".into()),
            from_domain: Some("news.example.com".into()),
            rfc822_message_id: Some("20261205.1a2b3c4d5e6f@news.example.com".into()),
            ..AttributionParts::default()
        });
        assert!(a.own_heap_bytes() <= 96, "{}", a.own_heap_bytes());
    }

    proptest! {
        #[test]
        fn packed_parts_read_back_as_given(
            tenant in proptest::option::of("[a-z0-9_]{0,40}"),
            credential in proptest::option::of("[a-z0-9_]{0,40}"),
            from in proptest::option::of("[a-z.]{0,60}"),
            mid in proptest::option::of("\\PC{0,200}"),
            tags in proptest::collection::vec("\\PC{0,128}", 0..6),
            meta in proptest::option::of("\\PC{0,300}"),
        ) {
            let given = AttributionParts {
                tenant_id: tenant,
                credential_id: credential,
                from_domain: from,
                rfc822_message_id: mid,
                tags,
                metadata: meta,
            };
            let a = Attribution::from(given.clone());
            prop_assert_eq!(parts(&a), given);
        }
    }
}
