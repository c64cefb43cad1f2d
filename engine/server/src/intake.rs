//! The return-path intake's decisions (issue 14): which recipients it takes at RCPT, and which
//! events a received report becomes. Pure: the session driver (`intake_session.rs`) feeds it the
//! envelope and the parsed report and writes what it returns to the event backlog.
//!
//! # What comes in, what goes out
//!
//! | recipient | mail | events |
//! |---|---|---|
//! | `b-<token>@<bounce domain>` | a DSN or text bounce | `bounced` with `async: true`, per failed recipient |
//! | `b-<token>@<bounce domain>` | an ARF report (feedback loops registered with the return path) | `complained` |
//! | `u-<token>@<bounce domain>` | anything (RFC 2369: the body is ignored) | `unsubscribed`, `details.method = "mailto"` |
//! | one of `[intake] mailboxes` | a DMARC aggregate report | `dmarc_report`, one per row |
//! | one of `[intake] mailboxes` | a DSN or an ARF report whose original carries our return path | as above |
//!
//! # Which recipient an event names
//!
//! The control plane suppresses by address, but a return path has room for 64 bytes of local
//! part: a token with the compact tenant id and a recipient *index* takes 54, so the recipient's
//! address fits only when it is at most 7 bytes (`RecipientRef::Address`, authoritative: it is
//! signed). The engine cannot look an index up: an asynchronous bounce arrives after the
//! remote's 250, when the spool has already forgotten the message. So an index token's event
//! carries the index (`details.rcpt_index`) and the address the report names, if any (the
//! DSN's failed recipient, `Final-Recipient` else `Original-Recipient`; the ARF report's
//! `Original-Rcpt-To`, else the original's `To`; the unsubscribe mail's envelope sender), and
//! the control plane names the recipient the message was sent to, from the message's
//! `accepted` event (`control-plane/server/src/store/events/attribute.rs`). A report cannot
//! make the control plane suppress another address than the token's recipient; the reported
//! address is used only when the `accepted` event is gone (past the tenant's retention). A
//! VERP'd message goes out one recipient per transaction ([`petrel_delivery::return_path`]),
//! so a bounce naming several failed recipients for one index token is refused (`550 5.6.0`).
//!
//! A report with no token of ours but an original with a Message-ID (a feedback loop that
//! strips the return path, a bounce to one of the mailboxes) goes up without a tenant, with
//! the Message-ID and the reported address; the control plane finds the tenant, the message
//! and the recipient among the `accepted` events with that Message-ID (one per failed
//! recipient of a DSN). A report that leads to no message of ours (neither a token nor a
//! Message-ID) is accepted and counted (`petrel_intake_reports_total{result="unattributed"}`),
//! not refused: a feedback loop that gets 5xx replies may stop sending.

use std::net::IpAddr;

use petrel_policy::event::{Bounce, BounceClass, Event, EventType, Reply as EventReply};
use petrel_reports::{
    dmarc, AggregateReport, Dsn, FeedbackReport, IntakeRecipient, RecipientError, RecipientRef,
    Report, TokenData, VerpError, VerpKeys,
};
use petrel_smtp::Reply;
use serde_json::{json, Map, Value};

/// Events one report may produce. A DSN has at most `petrel_reports::limits::DSN_RECIPIENTS_MAX`
/// recipients; a DMARC report can have 50 000 records, which are summed into rows first (rows
/// are far fewer: one per source IP, disposition and result); past this the report is refused
/// rather than half recorded.
pub const EVENTS_PER_REPORT_MAX: usize = 10_000;
/// Recipients of one intake transaction (a report goes to one address; a few allow forwards).
pub const INTAKE_RECIPIENTS_MAX: usize = 10;
/// The engine id of the event ids' subject for DMARC rows (they have no Petrel message).
const DMARC_SUBJECT_PREFIX: &str = "dmarc:";
/// The prefix of the event ids' subject for a report found by the original's Message-ID.
const RFC822_SUBJECT_PREFIX: &str = "rfc822:";

/// What the session knows of the engine's return-path setup at a given moment.
pub struct IntakeSetup<'a> {
    /// `None` while the control plane has pushed no bounce domain (token addresses refused).
    pub keys: Option<&'a VerpKeys>,
    pub bounce_domain: &'a str,
    pub mailboxes: &'a [String],
}

/// RCPT at the intake: the recipient's kind, or the refusal with its reason.
pub fn check_recipient(setup: &IntakeSetup<'_>, rcpt: &str) -> Result<IntakeRecipient, Reply> {
    let mailboxes: Vec<&str> = setup.mailboxes.iter().map(String::as_str).collect();
    let result = match setup.keys {
        Some(keys) => {
            petrel_reports::classify_recipient(keys, &[setup.bounce_domain], &mailboxes, rcpt)
        }
        None => {
            let address = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
            if mailboxes.iter().any(|m| m.eq_ignore_ascii_case(address)) {
                Ok(IntakeRecipient::Mailbox)
            } else {
                Err(RecipientError::NotOurDomain)
            }
        }
    };
    result.map_err(|e| match &e {
        RecipientError::Token(VerpError::BadTag | VerpError::UnknownKey { .. }) => {
            Reply::new(550, (5, 7, 1), format!("Recipient refused: {e}"))
        }
        _ => Reply::new(550, (5, 1, 1), format!("Recipient refused: {e}")),
    })
}

/// Why a received mail is refused after DATA (`550 5.6.0 <reason>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntakeRefusal {
    #[error("{0}")]
    Report(#[from] petrel_reports::ReportError),
    #[error("a bounce to a VERP return path names {count} failed recipients; one expected")]
    SeveralRecipients { count: usize },
    #[error("a DMARC report of {rows} rows (at most {max})")]
    TooManyRows { rows: usize, max: usize },
}

impl IntakeRefusal {
    pub fn reply(&self) -> Reply {
        Reply::new(550, (5, 6, 0), format!("Report refused: {self}"))
    }
}

/// What a transaction became: events, and a label for the metrics.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<Event>,
    /// `bounce`, `complaint`, `unsubscribe`, `dmarc`, `unattributed`, `ignored`.
    pub result: &'static str,
}

/// Event-building context: who we are and when it is.
pub struct Stamp<'a> {
    pub engine_id: &'a str,
    pub now_ms: i64,
}

/// The events of an unsubscribe mail (`u-` recipients; the mail itself is not read). An index
/// token names the subscriber by the envelope sender when there is one; the control plane
/// replaces it with the address the message went to (module docs).
pub fn unsubscribes(tokens: &[TokenData], mail_from: &str, stamp: &Stamp<'_>) -> Outcome {
    let mut events = Vec::with_capacity(tokens.len());
    for t in tokens {
        let recipient = match &t.recipient {
            RecipientRef::Address(a) => Some(a.clone()),
            RecipientRef::Index(_) if !mail_from.is_empty() => Some(mail_from.to_ascii_lowercase()),
            RecipientRef::Index(_) => None,
        };
        let kind = EventType::Other("unsubscribed".into());
        let mut e = base_event(stamp, kind, Source::Token(t), recipient.as_deref());
        add_details(&mut e, json!({ "method": "mailto" }));
        events.push(e);
    }
    Outcome {
        events,
        result: "unsubscribe",
    }
}

/// The events of a parsed report. `token` is the return path the mail was sent to, if any;
/// `owner` finds the tenant of a sending domain (DMARC reports).
pub fn report_events(
    report: &Report,
    token: Option<&TokenData>,
    keys: Option<&VerpKeys>,
    owner: &dyn Fn(&str) -> Option<String>,
    stamp: &Stamp<'_>,
) -> Result<Outcome, IntakeRefusal> {
    let from_original = |o: Option<&petrel_reports::OriginalMessage>| {
        let keys = keys?;
        o?.verp(keys)
            .filter(|d| d.purpose == petrel_reports::Purpose::Bounce)
            .map(|d| d.data)
    };
    let message_id = |o: Option<&petrel_reports::OriginalMessage>| {
        o?.message_id.clone().filter(|m| {
            !m.is_empty() && m.len() <= petrel_policy::event::RFC822_MESSAGE_ID_MAX_BYTES
        })
    };
    match report {
        Report::Bounce(dsn) => {
            let found = token
                .cloned()
                .or_else(|| from_original(dsn.original.as_ref()));
            match (found, message_id(dsn.original.as_ref())) {
                (Some(t), _) => bounces(dsn, Source::Token(&t), stamp),
                (None, Some(m)) => bounces(dsn, Source::MessageId(&m), stamp),
                (None, None) => Ok(unattributed()),
            }
        }
        Report::Complaint(fr) => {
            let from_return_path = || {
                let keys = keys?;
                keys.decode_address(fr.return_path()?)
                    .ok()
                    .filter(|d| d.purpose == petrel_reports::Purpose::Bounce)
                    .map(|d| d.data)
            };
            let found = token
                .cloned()
                .or_else(from_return_path)
                .or_else(|| from_original(fr.original.as_ref()));
            match (found, message_id(fr.original.as_ref())) {
                (Some(t), _) => Ok(complaint(fr, Source::Token(&t), stamp)),
                (None, Some(m)) => Ok(complaint(fr, Source::MessageId(&m), stamp)),
                (None, None) => Ok(unattributed()),
            }
        }
        Report::DmarcAggregate(r) => dmarc_rows(r, owner, stamp),
    }
}

fn unattributed() -> Outcome {
    Outcome {
        events: Vec::new(),
        result: "unattributed",
    }
}

/// What leads a report to the message it is about.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// A verified VERP token (the envelope recipient, or the original's return path).
    Token(&'a TokenData),
    /// No token: the original's Message-ID, which the control plane looks up among the
    /// `accepted` events (the event goes up without a tenant).
    MessageId(&'a str),
}

fn bounces(dsn: &Dsn, source: Source<'_>, stamp: &Stamp<'_>) -> Result<Outcome, IntakeRefusal> {
    // Only failures are bounces; a delay notice (action delayed) is the remote still trying.
    let failed: Vec<_> = dsn
        .recipients
        .iter()
        .filter(|r| r.action == petrel_reports::Action::Failed)
        .collect();
    if failed.is_empty() {
        return Ok(Outcome {
            events: Vec::new(),
            result: "ignored",
        });
    }
    let failed = match source {
        // A token is about one recipient: an index token's report must name at most one, an
        // address token's names its own.
        Source::Token(t) => {
            if failed.len() > 1 && matches!(t.recipient, RecipientRef::Index(_)) {
                return Err(IntakeRefusal::SeveralRecipients {
                    count: failed.len(),
                });
            }
            &failed[..1]
        }
        // By Message-ID each failed recipient is its own event, each checked upstream
        // against the message's recipients.
        Source::MessageId(_) => &failed[..],
    };
    let mut events = Vec::with_capacity(failed.len());
    for r in failed {
        let reported = r
            .final_recipient
            .as_deref()
            .or(r.original_recipient.as_deref())
            .map(str::to_ascii_lowercase);
        let recipient = match source {
            Source::Token(TokenData {
                recipient: RecipientRef::Address(a),
                ..
            }) => Some(a.clone()),
            _ => reported,
        };
        let mut e = base_event(stamp, EventType::Bounced, source, recipient.as_deref());
        e.is_async = true;
        let (class, category) = match r.classification.as_ref() {
            Some(c) => (
                match c.class {
                    petrel_bounce::BounceClass::Hard => BounceClass::Hard,
                    petrel_bounce::BounceClass::Soft => BounceClass::Soft,
                },
                c.category.as_str().to_string(),
            ),
            None => (BounceClass::Hard, "other".to_string()),
        };
        e.bounce = Some(Bounce { class, category });
        e.reply = Some(dsn_reply(r.status, r.diagnostic_code.as_deref()));
        e.rfc822_message_id = dsn.original.as_ref().and_then(|o| o.message_id.clone());
        e.from_domain = original_from_domain(dsn.original.as_ref());
        let format = serde_json::to_value(dsn.format).unwrap_or(Value::Null);
        add_details(
            &mut e,
            json!({
                "reporting_mta": dsn.reporting_mta,
                "format": format,
            }),
        );
        events.push(e);
    }
    Ok(Outcome {
        events,
        result: "bounce",
    })
}

/// The DSN's reply as an event reply: the Diagnostic-Code's SMTP reply when it has one, else
/// the status (5.x.x as 550, 4.x.x as 450) with the diagnostic as text.
fn dsn_reply(status: Option<(u8, u16, u16)>, diagnostic: Option<&str>) -> EventReply {
    let enhanced = status.map(|(c, s, d)| format!("{c}.{s}.{d}"));
    let text = diagnostic.unwrap_or("").trim();
    let coded = text
        .get(..3)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (400..=599).contains(c))
        .filter(|_| {
            text.len() == 3
                || text
                    .as_bytes()
                    .get(3)
                    .is_some_and(|b| *b == b' ' || *b == b'-')
        });
    let code = coded.unwrap_or(match status {
        Some((4, _, _)) => 450,
        _ => 550,
    });
    EventReply {
        code,
        enhanced_code: enhanced,
        text: clip(text, petrel_policy::event::REPLY_TEXT_MAX_BYTES).to_string(),
    }
}

fn complaint(fr: &FeedbackReport, source: Source<'_>, stamp: &Stamp<'_>) -> Outcome {
    if !fr.feedback_type.is_complaint() {
        return Outcome {
            events: Vec::new(),
            result: "ignored",
        };
    }
    // Providers often redact the complainant: an index token or the Message-ID still leads
    // the control plane to the recipient.
    let recipient: Option<String> = match source {
        Source::Token(TokenData {
            recipient: RecipientRef::Address(a),
            ..
        }) => Some(a.clone()),
        _ => fr.complainant().map(|a| a.to_ascii_lowercase()),
    };
    let kind = EventType::Other("complained".into());
    let mut e = base_event(stamp, kind, source, recipient.as_deref());
    e.rfc822_message_id = fr.original.as_ref().and_then(|o| o.message_id.clone());
    e.from_domain = original_from_domain(fr.original.as_ref());
    let feedback_type = serde_json::to_value(&fr.feedback_type).unwrap_or(Value::Null);
    add_details(
        &mut e,
        json!({
            "feedback_type": feedback_type,
            "user_agent": clip(&fr.user_agent, 256),
            "source": "arf",
        }),
    );
    Outcome {
        events: vec![e],
        result: "complaint",
    }
}

/// One event per row: records summed by source IP, disposition and aligned DKIM/SPF results
/// (the `dmarc::summarise` grouping, split by the results so a row says why it passed).
fn dmarc_rows(
    r: &AggregateReport,
    owner: &dyn Fn(&str) -> Option<String>,
    stamp: &Stamp<'_>,
) -> Result<Outcome, IntakeRefusal> {
    let domain = r.policy.domain.to_ascii_lowercase();
    let Some(tenant_id) = owner(&domain) else {
        return Ok(unattributed());
    };
    type Key = (IpAddr, dmarc::Disposition, String, String);
    let mut rows: std::collections::BTreeMap<Key, (u64, bool)> = Default::default();
    let result = |a: Option<dmarc::AlignedResult>| match a {
        Some(a) => serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        None => "none".to_string(),
    };
    for rec in &r.records {
        let key = (
            rec.source_ip,
            rec.disposition,
            result(rec.dkim),
            result(rec.spf),
        );
        let row = rows.entry(key).or_insert((0, rec.dmarc_pass()));
        row.0 = row.0.saturating_add(rec.count);
    }
    if rows.len() > EVENTS_PER_REPORT_MAX {
        return Err(IntakeRefusal::TooManyRows {
            rows: rows.len(),
            max: EVENTS_PER_REPORT_MAX,
        });
    }
    let subject = format!("{DMARC_SUBJECT_PREFIX}{}:{}", r.org_name, r.report_id);
    let mut events = Vec::with_capacity(rows.len());
    for (i, ((ip, disposition, dkim, spf), (count, pass))) in rows.into_iter().enumerate() {
        let kind = EventType::Other("dmarc_report".into());
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let id = Event::stable_id(stamp.engine_id, &subject, index, 0, &kind);
        let disposition = serde_json::to_value(disposition).unwrap_or(Value::Null);
        events.push(Event {
            tenant_id: Some(tenant_id.clone()),
            from_domain: Some(clip(&domain, petrel_policy::event::DOMAIN_MAX_BYTES).into()),
            details: Some(object(json!({
                "report_id": clip(&r.report_id, 256),
                "org_name": clip(&r.org_name, 256),
                "begin": r.date_begin,
                "end": r.date_end,
                "source_ip": ip.to_string(),
                "count": count,
                "disposition": disposition,
                "dkim": dkim,
                "spf": spf,
                "dmarc": if pass { "pass" } else { "fail" },
            }))),
            ..Event::bare(id, kind, stamp.now_ms)
        });
    }
    Ok(Outcome {
        events,
        result: "dmarc",
    })
}

/// An event about one recipient of a message named by a token or a Message-ID. Its id is
/// stable over the message, the recipient and the type, so a report sent twice (a lost 250, a
/// provider's duplicate) is one event at the control plane. An index token's index goes up in
/// `details` ([`petrel_policy::event::DETAIL_RCPT_INDEX`]) for the control plane's lookup.
fn base_event(
    stamp: &Stamp<'_>,
    kind: EventType,
    source: Source<'_>,
    recipient: Option<&str>,
) -> Event {
    let (subject, index, tenant_id, message_id, rcpt_index) = match source {
        Source::Token(t) => {
            let subject = format!("{:016x}", t.message_id);
            let (index, rcpt_index) = match &t.recipient {
                RecipientRef::Index(i) => (u32::from(*i), Some(*i)),
                // An address token has no index: a hash of the address keeps the id per
                // recipient.
                RecipientRef::Address(a) => (address_index(a), None),
            };
            (
                subject.clone(),
                index,
                Some(t.tenant_id.clone()),
                Some(subject),
                rcpt_index,
            )
        }
        Source::MessageId(m) => (
            format!("{RFC822_SUBJECT_PREFIX}{m}"),
            address_index(recipient.unwrap_or("")),
            None,
            None,
            None,
        ),
    };
    let id = Event::stable_id(stamp.engine_id, &subject, index, 0, &kind);
    let mut e = Event {
        tenant_id,
        message_id,
        recipient: recipient.map(|r| clip(r, petrel_policy::event::ADDRESS_MAX_BYTES).to_string()),
        ..Event::bare(id, kind, stamp.now_ms)
    };
    if let Some(i) = rcpt_index {
        add_details(
            &mut e,
            json!({ petrel_policy::event::DETAIL_RCPT_INDEX: i }),
        );
    }
    e
}

/// Adds the members of the object `v` to the event's `details`.
fn add_details(e: &mut Event, v: Value) {
    e.details.get_or_insert_with(Map::new).extend(object(v));
}

fn address_index(address: &str) -> u32 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(address.to_ascii_lowercase().as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn original_from_domain(o: Option<&petrel_reports::OriginalMessage>) -> Option<String> {
    let from = o?.from.as_deref()?;
    let domain = from
        .rsplit_once('@')?
        .1
        .trim_end_matches('>')
        .to_ascii_lowercase();
    (!domain.is_empty() && domain.len() <= petrel_policy::event::DOMAIN_MAX_BYTES).then_some(domain)
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
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

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
