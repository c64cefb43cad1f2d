//! Report attribution at ingest (issue 14): which tenant, message and recipient a bounce,
//! complaint or unsubscribe received at an engine's return-path intake is about.
//!
//! The intake knows what the report says and what its VERP token proves (tenant, message and
//! the recipient's *index* in the envelope: an address rarely fits the token), but not the
//! address the message went to: the spool forgot the message at the remote's 250. The control
//! plane has it, in the message's `accepted` event. So, in the ingest transaction, before the
//! batch is stored:
//!
//! - an index token's event (`details.rcpt_index`) gets the recipient of the `accepted` event
//!   of that tenant, message and index. Its id is the engine's stable id
//!   (`Event::stable_id(engine, message, index, 0, accepted)`), so the lookup is one primary
//!   key read per known engine, whichever engine accepted the message;
//! - an event without a tenant but with the original's Message-ID gets the tenant, message and
//!   recipient of the `accepted` events with that Message-ID (index `events_rfc822_accepted`,
//!   migration 9): the one whose recipient the report names, else the only one. Several
//!   tenants behind one Message-ID leave it unresolved: a Message-ID is not a secret.
//!
//! The found event also gives what the report lacks (sending domain, sender, tags and
//! metadata, so a webhook for a complaint carries the tenant's own tags). `details.attribution`
//! says how it went: `token` (found by the token), `message_id`, `reported` (the token's
//! message is gone, past the tenant's retention: the event keeps the address the report named)
//! or `unresolved`. When the report named another address than the one found,
//! `details.reported_recipient` keeps it and the event names the recipient found: a reader who
//! got one message cannot suppress somebody else's address by forging a report about it.
//!
//! Only report events pay: a batch without any costs a scan of its types.

use std::borrow::Cow;

use petrel_policy::event::{
    DETAILS_MAX_BYTES, DETAIL_ATTRIBUTION, DETAIL_RCPT_INDEX, DETAIL_REPORTED_RECIPIENT,
};
use petrel_policy::{Event, EventType};
use serde_json::Value;
use sqlx::{AnyConnection, Row};

use super::{decode, COMPLAINED};
use crate::store::StoreResult;

/// `accepted` events read for one Message-ID: one per recipient of the message (a Message-ID
/// shared by more messages than this is not a key worth following).
pub const MESSAGE_ID_ROWS_MAX: i64 = 1_000;
/// Engines whose `accepted` id one index lookup tries (one statement); past this the rest are
/// tried in further statements.
pub const ENGINES_PER_LOOKUP_MAX: usize = 256;
/// The `accepted` events of a Message-ID (its partial index `events_rfc822_accepted`).
pub const MESSAGE_ID_SQL: &str = "SELECT * FROM events WHERE rfc822_message_id = $1 \
     AND type = 'accepted' ORDER BY seq LIMIT $2";
/// The `unsubscribed` event type.
const UNSUBSCRIBED: &str = "unsubscribed";

/// How an event's tenant, message and recipient were found ([`DETAIL_ATTRIBUTION`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    Token,
    MessageId,
    Reported,
    Unresolved,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Token => "token",
            Attribution::MessageId => "message_id",
            Attribution::Reported => "reported",
            Attribution::Unresolved => "unresolved",
        }
    }
}

/// A report event from an engine's intake: an asynchronous bounce, a complaint, an unsubscribe
/// by mail.
pub fn is_report(e: &Event) -> bool {
    match &e.kind {
        EventType::Bounced => e.is_async,
        EventType::Other(k) if k == COMPLAINED => true,
        EventType::Other(k) if k == UNSUBSCRIBED => e
            .details
            .as_ref()
            .and_then(|d| d.get("method"))
            .is_some_and(|m| m == "mailto"),
        _ => false,
    }
}

/// The batch with its report events attributed (the others borrowed as they are).
pub async fn attribute<'e>(
    conn: &mut AnyConnection,
    events: &[&'e Event],
) -> StoreResult<Vec<Cow<'e, Event>>> {
    let mut out: Vec<Cow<'e, Event>> = events.iter().map(|e| Cow::Borrowed(*e)).collect();
    if !events.iter().any(|e| is_report(e)) {
        return Ok(out);
    }
    let engines: Vec<String> = sqlx::query("SELECT id FROM engines ORDER BY id")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    for slot in out.iter_mut() {
        let e: &Event = slot.as_ref();
        if !is_report(e) {
            continue;
        }
        let (found, how) = match (&e.tenant_id, &e.message_id, rcpt_index(e)) {
            (Some(tenant), Some(message), Some(index)) => {
                match by_index(conn, &engines, tenant, message, index).await? {
                    Some(f) => (Some(f), Attribution::Token),
                    None => (None, Attribution::Reported),
                }
            }
            // An address token: signed, nothing to look up.
            (Some(_), _, _) => (None, Attribution::Token),
            (None, _, _) => match e.rfc822_message_id.as_deref() {
                Some(m) => match by_message_id(conn, m, e.recipient.as_deref()).await? {
                    Some(f) => (Some(f), Attribution::MessageId),
                    None => (None, Attribution::Unresolved),
                },
                None => (None, Attribution::Unresolved),
            },
        };
        *slot = Cow::Owned(apply(e, found.as_ref(), how));
    }
    Ok(out)
}

fn rcpt_index(e: &Event) -> Option<u32> {
    let v = e.details.as_ref()?.get(DETAIL_RCPT_INDEX)?.as_u64()?;
    u32::try_from(v).ok()
}

/// The `accepted` event of `tenant`'s message `message` for recipient `index`, from any of
/// `engines`.
async fn by_index(
    conn: &mut AnyConnection,
    engines: &[String],
    tenant: &str,
    message: &str,
    index: u32,
) -> StoreResult<Option<Event>> {
    let mut found = Vec::new();
    for chunk in engines.chunks(ENGINES_PER_LOOKUP_MAX) {
        let ids: Vec<String> = chunk
            .iter()
            .map(|engine| Event::stable_id(engine, message, index, 0, &EventType::Accepted))
            .collect();
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT * FROM events WHERE id IN ({}) AND type = 'accepted'",
            marks.join(",")
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let e = decode(&r)?.event;
            if e.tenant_id.as_deref() == Some(tenant) && e.recipient.is_some() {
                found.push(e);
            }
        }
    }
    // Two engines' messages with the same spool id and index: the token cannot say which.
    Ok(match found.len() {
        1 => found.pop(),
        _ => None,
    })
}

/// The `accepted` event of the message with Message-ID `message_id`: the one whose recipient
/// is `reported`, else the only one; `None` when the Message-ID is unknown, belongs to several
/// tenants, or leads to several recipients none of which is the reported one.
async fn by_message_id(
    conn: &mut AnyConnection,
    message_id: &str,
    reported: Option<&str>,
) -> StoreResult<Option<Event>> {
    let rows = sqlx::query(MESSAGE_ID_SQL)
        .bind(message_id.to_string())
        .bind(MESSAGE_ID_ROWS_MAX + 1)
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() as i64 > MESSAGE_ID_ROWS_MAX {
        return Ok(None);
    }
    let mut accepted: Vec<Event> = Vec::with_capacity(rows.len());
    for r in &rows {
        let e = decode(r)?.event;
        if e.tenant_id.is_some() && e.recipient.is_some() {
            accepted.push(e);
        }
    }
    let Some(first) = accepted.first() else {
        return Ok(None);
    };
    if accepted.iter().any(|e| e.tenant_id != first.tenant_id) {
        return Ok(None);
    }
    if let Some(reported) = reported {
        if let Some(i) = accepted.iter().position(|e| same_address(e, reported)) {
            return Ok(Some(accepted.swap_remove(i)));
        }
    }
    let one_recipient = accepted.iter().all(|e| e.recipient == first.recipient);
    Ok(one_recipient.then(|| accepted.swap_remove(0)))
}

fn same_address(e: &Event, address: &str) -> bool {
    e.recipient
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case(address))
}

/// The report event `e` with what `found` (its message's `accepted` event) says.
pub fn apply(e: &Event, found: Option<&Event>, how: Attribution) -> Event {
    let mut out = e.clone();
    let details = out.details.get_or_insert_with(Default::default);
    details.insert(DETAIL_ATTRIBUTION.into(), how.as_str().into());
    let Some(f) = found else {
        return out;
    };
    let reported = out.recipient.take();
    if let (Some(r), Some(found)) = (&reported, &f.recipient) {
        if !r.eq_ignore_ascii_case(found) {
            details.insert(DETAIL_REPORTED_RECIPIENT.into(), Value::from(r.as_str()));
            let size = serde_json::to_vec(&details).map_or(usize::MAX, |v| v.len());
            if size > DETAILS_MAX_BYTES {
                details.remove(DETAIL_REPORTED_RECIPIENT);
            }
        }
    }
    out.recipient = f.recipient.clone();
    out.tenant_id = f.tenant_id.clone();
    out.message_id = f.message_id.clone();
    if out.rfc822_message_id.is_none() {
        out.rfc822_message_id = f.rfc822_message_id.clone();
    }
    // The message's own sending domain and sender, not the (forgeable) original's.
    out.from_domain = f.from_domain.clone();
    out.sender = f.sender.clone();
    out.tags = f.tags.clone();
    out.metadata = f.metadata.clone();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted() -> Event {
        Event {
            id: Event::stable_id("engine-a", "0100000000000001", 2, 0, &EventType::Accepted),
            kind: EventType::Accepted,
            timestamp_ms: 1,
            tenant_id: Some("ten_a".into()),
            message_id: Some("0100000000000001".into()),
            rfc822_message_id: Some("m1@shop.test".into()),
            sender: "news@shop.test".into(),
            from_domain: Some("shop.test".into()),
            recipient: Some("reader@example.org".into()),
            tags: vec!["weekly".into()],
            metadata: None,
            attempt: 0,
            remote: None,
            reply: None,
            bounce: None,
            is_async: false,
            details: None,
        }
    }

    fn complaint(recipient: Option<&str>) -> Event {
        let mut e = accepted();
        e.id = "ev_c".into();
        e.kind = EventType::Other(COMPLAINED.into());
        e.recipient = recipient.map(String::from);
        e.tags.clear();
        e.from_domain = Some("forged.test".into());
        e.details = Some(serde_json::Map::from_iter([(
            DETAIL_RCPT_INDEX.to_string(),
            Value::from(2),
        )]));
        e
    }

    #[test]
    fn reports_are_async_bounces_complaints_and_unsubscribes_by_mail() {
        assert!(is_report(&complaint(None)));
        let mut b = accepted();
        b.kind = EventType::Bounced;
        assert!(!is_report(&b), "a bounce during the transaction");
        b.is_async = true;
        assert!(is_report(&b));
        let mut u = accepted();
        u.kind = EventType::Other(UNSUBSCRIBED.into());
        assert!(
            !is_report(&u),
            "a one-click unsubscribe is the control plane's own"
        );
        u.details = Some(serde_json::Map::from_iter([(
            "method".to_string(),
            Value::from("mailto"),
        )]));
        assert!(is_report(&u));
        assert!(!is_report(&accepted()));
    }

    #[test]
    fn the_found_recipient_wins_over_the_reported_one_which_is_kept_in_details() {
        let out = apply(
            &complaint(Some("victim@example.org")),
            Some(&accepted()),
            Attribution::Token,
        );
        assert_eq!(out.recipient.as_deref(), Some("reader@example.org"));
        let d = out.details.as_ref().unwrap();
        assert_eq!(d[DETAIL_ATTRIBUTION], "token");
        assert_eq!(d[DETAIL_REPORTED_RECIPIENT], "victim@example.org");
        assert_eq!(out.from_domain.as_deref(), Some("shop.test"));
        assert_eq!(out.tags, ["weekly"]);
        assert_eq!(out.id, "ev_c", "the report's own id");
        out.validate().unwrap();
        // Same address, other case: nothing to keep.
        let out = apply(
            &complaint(Some("Reader@Example.org")),
            Some(&accepted()),
            Attribution::Token,
        );
        assert!(out
            .details
            .unwrap()
            .get(DETAIL_REPORTED_RECIPIENT)
            .is_none());
        // Nothing found: the reported address stays, and the details say so.
        let out = apply(
            &complaint(Some("reader@example.org")),
            None,
            Attribution::Reported,
        );
        assert_eq!(out.recipient.as_deref(), Some("reader@example.org"));
        assert_eq!(out.details.unwrap()[DETAIL_ATTRIBUTION], "reported");
    }
}
