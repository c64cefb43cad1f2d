//! Asynchronous bounces: RFC 3464 delivery status notifications and the plain-text bounces that
//! older or unusual MTAs still send, classified with `petrel-bounce`.
//!
//! The order of the decision:
//! 1. A `multipart/report; report-type=delivery-status` mail with a `message/delivery-status`
//!    (or `message/global-delivery-status`) part is read field by field ([`BounceFormat::Rfc3464`]).
//! 2. Otherwise the first text part is matched against the shapes of the well-known text bounces
//!    ([`crate::bounce_text`]): qmail, Exim, Postfix, Microsoft Exchange/Outlook, Gmail.
//!
//! Either way the original message's headers, when the bounce includes them (a
//! `text/rfc822-headers` or `message/rfc822` part, or the copy after a text bounce's marker
//! line), come back as [`OriginalMessage`] so the caller can match the VERP return path or the
//! Message-ID. The envelope recipient of the bounce (the `b-` address) usually says more; this
//! is the fallback when a provider bounces to the header From or strips the envelope.

use mail_parser::{Message, PartType};
use petrel_bounce::{BounceClass, BounceClassifier, Classification, Reply};

use crate::bounce_text;
use crate::fields::{self, FieldError};
use crate::limits::{BOUNCE_TEXT_BYTES_MAX, DSN_RECIPIENTS_MAX, VALUE_BYTES_MAX};
use crate::mail::{self, MailError, OriginalMessage};

/// Where a bounce's facts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceFormat {
    /// An RFC 3464 message/delivery-status part.
    Rfc3464,
    Qmail,
    Exim,
    /// Postfix's text explanation (a DSN part, when present, wins).
    Postfix,
    /// Microsoft Exchange, Office 365 and Outlook.com text NDRs.
    Exchange,
    /// Gmail's "Delivery Status Notification" text.
    Gmail,
}

/// RFC 3464 §2.3.3: what the reporting MTA did with the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        let word = s.split_whitespace().next()?.to_ascii_lowercase();
        Some(match word.as_str() {
            "failed" => Action::Failed,
            "delayed" => Action::Delayed,
            "delivered" => Action::Delivered,
            "relayed" => Action::Relayed,
            "expanded" => Action::Expanded,
            _ => return None,
        })
    }

    /// Whether the action reports a failure (final or not): only those are bounces.
    pub fn is_failure(self) -> bool {
        matches!(self, Action::Failed | Action::Delayed)
    }
}

/// One recipient a bounce reports on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BouncedRecipient {
    /// The recipient address the reporting MTA tried (Final-Recipient, type prefix removed).
    pub final_recipient: Option<String>,
    /// The address as the sender gave it (Original-Recipient), when reported.
    pub original_recipient: Option<String>,
    pub action: Action,
    /// The RFC 3463 status (class, subject, detail), from Status or the reply.
    pub status: Option<(u8, u16, u16)>,
    /// The remote reply (Diagnostic-Code without its `smtp;` type), or a text bounce's reply.
    pub diagnostic_code: Option<String>,
    /// The MTA that gave the reply (Remote-MTA without its `dns;` type).
    pub remote_mta: Option<String>,
    /// Category and class from `petrel-bounce`; `None` for delivered, relayed and expanded.
    pub classification: Option<Classification>,
}

/// A parsed bounce.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dsn {
    pub format: BounceFormat,
    /// The Reporting-MTA (RFC 3464) without its type.
    pub reporting_mta: Option<String>,
    /// The Original-Envelope-Id (RFC 3461 ENVID) the sender gave at MAIL FROM, returned by the
    /// reporting MTA: a correlation key that survives when the original's headers are not
    /// included.
    pub original_envelope_id: Option<String>,
    /// At least one; at most [`DSN_RECIPIENTS_MAX`].
    pub recipients: Vec<BouncedRecipient>,
    /// The original message's headers, when the bounce includes them.
    pub original: Option<OriginalMessage>,
}

/// Why a mail was not read as a bounce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DsnError {
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("delivery-status part: {0}")]
    Fields(#[from] FieldError),
    #[error("neither a delivery status notification nor a known bounce text")]
    NotABounce,
    #[error("a delivery-status part without any recipient block")]
    NoRecipients,
    #[error("more than {max} recipients")]
    TooManyRecipients { max: usize },
}

/// Parses a bounce mail and classifies each recipient's failure.
pub fn parse_dsn(raw: &[u8], classifier: &BounceClassifier) -> Result<Dsn, DsnError> {
    let message = mail::parse_mail(raw)?;
    dsn_from_message(&message, classifier)
}

/// [`parse_dsn`] on a mail already parsed and bounded.
pub(crate) fn dsn_from_message(
    message: &Message<'_>,
    classifier: &BounceClassifier,
) -> Result<Dsn, DsnError> {
    if let Some(status) = delivery_status_part(message) {
        return parse_rfc3464(message, &status, classifier);
    }
    parse_text_bounce(message, classifier)
}

/// The delivery-status part's text, when the mail is an RFC 3464 report.
fn delivery_status_part(m: &Message<'_>) -> Option<String> {
    mail::report_type(m).filter(|t| t == "delivery-status" || t == "global-delivery-status")?;
    let part = m.parts.iter().find(|p| {
        mail::is_type(p, "message", "delivery-status")
            || mail::is_type(p, "message", "global-delivery-status")
    })?;
    let bytes = mail::part_bytes(part)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

fn parse_rfc3464(
    m: &Message<'_>,
    status_text: &str,
    classifier: &BounceClassifier,
) -> Result<Dsn, DsnError> {
    let blocks = fields::parse_blocks(status_text)?;
    let mut per_message = None;
    let mut recipients = Vec::new();
    for block in &blocks {
        let is_recipient = fields::get(block, "final-recipient").is_some()
            || fields::get(block, "original-recipient").is_some();
        if !is_recipient {
            per_message.get_or_insert(block);
            continue;
        }
        if recipients.len() == DSN_RECIPIENTS_MAX {
            return Err(DsnError::TooManyRecipients {
                max: DSN_RECIPIENTS_MAX,
            });
        }
        recipients.push(recipient_from_block(block, classifier));
    }
    if recipients.is_empty() {
        return Err(DsnError::NoRecipients);
    }
    let per_message_field = |name| {
        per_message
            .and_then(|b| fields::get(b, name))
            .map(strip_type)
            .and_then(bounded)
    };
    Ok(Dsn {
        format: BounceFormat::Rfc3464,
        reporting_mta: per_message_field("reporting-mta"),
        // xtext, no address type: kept as written.
        original_envelope_id: per_message
            .and_then(|b| fields::get(b, "original-envelope-id"))
            .map(|v| v.to_string())
            .and_then(bounded),
        recipients,
        original: mail::original_message(m),
    })
}

fn recipient_from_block(
    block: &[fields::Field],
    classifier: &BounceClassifier,
) -> BouncedRecipient {
    let address = |name| {
        fields::get(block, name)
            .map(fields::typed_address)
            .and_then(bounded)
    };
    let status = fields::get(block, "status").and_then(parse_status);
    let diagnostic_code = fields::get(block, "diagnostic-code")
        .map(strip_type)
        .and_then(bounded);
    let action = fields::get(block, "action")
        .and_then(Action::parse)
        .unwrap_or(match status {
            Some((4, _, _)) => Action::Delayed,
            Some((2, _, _)) => Action::Delivered,
            _ => Action::Failed,
        });
    let classification = action
        .is_failure()
        .then(|| classify(classifier, action, status, diagnostic_code.as_deref()));
    BouncedRecipient {
        final_recipient: address("final-recipient"),
        original_recipient: address("original-recipient"),
        action,
        status,
        diagnostic_code,
        remote_mta: fields::get(block, "remote-mta")
            .map(strip_type)
            .and_then(bounded),
        classification,
    }
}

fn parse_text_bounce(m: &Message<'_>, classifier: &BounceClassifier) -> Result<Dsn, DsnError> {
    let text = m
        .parts
        .iter()
        .find_map(|p| match &p.body {
            PartType::Text(t) if !mail::is_type(p, "text", "rfc822-headers") => Some(t),
            _ => None,
        })
        .ok_or(DsnError::NotABounce)?;
    let text = clip(text, BOUNCE_TEXT_BYTES_MAX);
    let subject = m.parts[0]
        .headers
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case("subject"))
        .and_then(|h| h.value().as_text())
        .unwrap_or("");
    let found = bounce_text::parse(subject, text).ok_or(DsnError::NotABounce)?;
    if found.recipients.len() > DSN_RECIPIENTS_MAX {
        return Err(DsnError::TooManyRecipients {
            max: DSN_RECIPIENTS_MAX,
        });
    }
    let action = if found.delayed {
        Action::Delayed
    } else {
        Action::Failed
    };
    let recipients = found
        .recipients
        .into_iter()
        .map(|r| {
            let reply = r.reply.and_then(bounded);
            let status = reply.as_deref().and_then(status_in_text);
            BouncedRecipient {
                classification: Some(classify(classifier, action, status, reply.as_deref())),
                final_recipient: bounded(r.address),
                original_recipient: None,
                action,
                status,
                diagnostic_code: reply,
                remote_mta: None,
            }
        })
        .collect();
    let original = mail::original_message(m).or_else(|| {
        found
            .original_offset
            .and_then(|at| text.get(at..))
            .and_then(|rest| OriginalMessage::from_header_text(rest.trim_start().as_bytes()))
    });
    Ok(Dsn {
        format: found.format,
        reporting_mta: None,
        original_envelope_id: None,
        recipients,
        original,
    })
}

/// Classifies one recipient's failure. The reply in the diagnostic decides when it parses as a
/// reply; otherwise the status and the text stand in for one (a 4.x.x or a delay is a 450, the
/// rest a 550), so the classifier's enhanced-code and text rules still apply.
fn classify(
    classifier: &BounceClassifier,
    action: Action,
    status: Option<(u8, u16, u16)>,
    diagnostic: Option<&str>,
) -> Classification {
    let text = diagnostic.unwrap_or("");
    let reply = match Reply::parse(text) {
        Some(mut r) if r.code >= 400 => {
            if r.enhanced.is_none() {
                r.enhanced = status;
            }
            r
        }
        _ => {
            let soft = matches!(status, Some((4, _, _)))
                || (status.is_none() && action == Action::Delayed);
            let code = if soft { 450 } else { 550 };
            Reply::new(code, status, text)
        }
    };
    let mut c = classifier.classify_reply(&reply);
    if action == Action::Delayed {
        // A delay notice is never final, whatever the quoted reply said.
        c.class = BounceClass::Soft;
    }
    c
}

/// `5.1.1` (optionally followed by text) → (5, 1, 1).
pub(crate) fn parse_status(s: &str) -> Option<(u8, u16, u16)> {
    let word = s.split_whitespace().next()?;
    let mut parts = word.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
        return None;
    }
    Some((class, subject, detail))
}

/// The enhanced status inside a reply text (`550 5.1.1 ...`, `... (#5.1.2)`).
fn status_in_text(reply: &str) -> Option<(u8, u16, u16)> {
    if let Some(r) = Reply::parse(reply) {
        if r.enhanced.is_some() {
            return r.enhanced;
        }
    }
    reply
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '#' | ',' | ';'))
        .find_map(parse_status)
}

/// `smtp; 550 ...` → `550 ...`, `dns; mx.example` → `mx.example`: drops a leading type word.
fn strip_type(value: &str) -> String {
    match value.split_once(';') {
        Some((kind, rest)) if !kind.trim().is_empty() && !kind.trim().contains(' ') => {
            rest.trim().to_string()
        }
        _ => value.trim().to_string(),
    }
}

/// Keeps a value only when it is non-empty and within [`VALUE_BYTES_MAX`].
fn bounded(s: String) -> Option<String> {
    (!s.is_empty() && s.len() <= VALUE_BYTES_MAX).then_some(s)
}

/// The first `max` bytes of `s`, cut at a character boundary.
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
mod tests {
    use super::*;

    #[test]
    fn status_and_type_helpers() {
        assert_eq!(parse_status("5.1.1"), Some((5, 1, 1)));
        assert_eq!(parse_status("4.7.0 (delayed)"), Some((4, 7, 0)));
        assert_eq!(parse_status("6.1.1"), None);
        assert_eq!(parse_status("5.1"), None);
        assert_eq!(strip_type("smtp; 550 5.1.1 no"), "550 5.1.1 no");
        assert_eq!(strip_type("dns;mx.example"), "mx.example");
        assert_eq!(
            strip_type("550 no such user; sorry"),
            "550 no such user; sorry"
        );
        assert_eq!(
            status_in_text("Sorry, no host named x. (#5.1.2)"),
            Some((5, 1, 2))
        );
        assert_eq!(clip("héllo", 2), "h");
    }

    fn dsn_with(recipients: usize) -> String {
        let mut m = String::from(
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n",
        );
        for i in 0..recipients {
            m.push_str(&format!(
                "\r\nFinal-Recipient: rfc822; u{i}@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            ));
        }
        m.push_str("\r\n--b--\r\n");
        m
    }

    #[test]
    fn recipient_count_is_bounded() {
        let c = BounceClassifier::shipped();
        let full = parse_dsn(dsn_with(DSN_RECIPIENTS_MAX).as_bytes(), &c).unwrap();
        assert_eq!(full.recipients.len(), DSN_RECIPIENTS_MAX);
        assert_eq!(
            parse_dsn(dsn_with(DSN_RECIPIENTS_MAX + 1).as_bytes(), &c).unwrap_err(),
            DsnError::TooManyRecipients {
                max: DSN_RECIPIENTS_MAX
            }
        );
        assert_eq!(
            parse_dsn(dsn_with(0).as_bytes(), &c).unwrap_err(),
            DsnError::NoRecipients
        );
    }

    #[test]
    fn delayed_is_soft_and_failed_follows_the_reply() {
        let c = BounceClassifier::shipped();
        let hard = classify(
            &c,
            Action::Failed,
            Some((5, 1, 1)),
            Some("550 5.1.1 unknown user"),
        );
        assert_eq!(hard.class, BounceClass::Hard);
        let soft = classify(&c, Action::Delayed, None, Some("550 5.1.1 unknown user"));
        assert_eq!(soft.class, BounceClass::Soft);
        let from_status = classify(&c, Action::Failed, Some((5, 1, 1)), None);
        assert_eq!(
            from_status.category,
            petrel_bounce::Category::InvalidRecipient
        );
    }
}
