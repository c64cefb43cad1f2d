//! One entry point for a mail that arrived at the intake: which kind of report it is, parsed.
//!
//! The envelope recipient says most of it (a `b-` return path gets bounces and, from feedback
//! loops registered with that address, complaints; the `rua` address gets DMARC reports; a `u-`
//! address is an unsubscribe, see [`crate::unsubscribe`]), but providers send to whatever they
//! have, so the mail itself decides here: the `report-type` of a multipart/report first, then a
//! DMARC attachment, then the shapes of text bounces.

use petrel_bounce::BounceClassifier;

use crate::arf::{self, ArfError, FeedbackReport};
use crate::dmarc::{self, AggregateReport, DmarcError};
use crate::dsn::{self, Dsn, DsnError};
use crate::mail::{self, MailError};
use crate::verp::{Purpose, TokenData, VerpError, VerpKeys, BOUNCE_PREFIX, UNSUBSCRIBE_PREFIX};

/// A parsed report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// An asynchronous bounce (RFC 3464 or a known text shape): `bounced` events, `async: true`.
    Bounce(Dsn),
    /// A feedback-loop report (RFC 5965): `complained` events.
    Complaint(FeedbackReport),
    /// A DMARC aggregate report (RFC 7489 `rua`): stored for `/v1/domains/{id}/dmarc`.
    DmarcAggregate(AggregateReport),
}

/// Why a mail was not taken as a report. The nested error says what was wrong with a mail that
/// claimed to be one kind of report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("bounce: {0}")]
    Bounce(DsnError),
    #[error("feedback report: {0}")]
    Complaint(ArfError),
    #[error("DMARC report: {0}")]
    Dmarc(DmarcError),
    #[error("not a bounce, feedback report or DMARC report")]
    NotAReport,
}

/// Parses a mail received at the intake as whichever report it is.
pub fn parse_report(raw: &[u8], classifier: &BounceClassifier) -> Result<Report, ReportError> {
    let message = mail::parse_mail(raw)?;
    match mail::report_type(&message).as_deref() {
        Some("delivery-status") | Some("global-delivery-status") => {
            return dsn::dsn_from_message(&message, classifier)
                .map(Report::Bounce)
                .map_err(ReportError::Bounce);
        }
        Some("feedback-report") => {
            return arf::feedback_from_message(&message)
                .map(Report::Complaint)
                .map_err(ReportError::Complaint);
        }
        _ => {}
    }
    if let Some(attachment) = dmarc::report_attachment(&message) {
        return dmarc::parse_aggregate_attachment(attachment)
            .map(Report::DmarcAggregate)
            .map_err(ReportError::Dmarc);
    }
    match dsn::dsn_from_message(&message, classifier) {
        Ok(dsn) => Ok(Report::Bounce(dsn)),
        Err(DsnError::NotABounce) => Err(ReportError::NotAReport),
        Err(e) => Err(ReportError::Bounce(e)),
    }
}

/// What an envelope recipient at the intake is, decided at RCPT before any body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeRecipient {
    /// A VERP return path: bounces and complaints about this message and recipient.
    ReturnPath(TokenData),
    /// A `mailto:` List-Unsubscribe address: the mail is an unsubscribe.
    Unsubscribe(TokenData),
    /// One of the intake's own mailboxes (the DMARC `rua` address, a feedback-loop address):
    /// the mail is a report of any kind ([`parse_report`]).
    Mailbox,
}

/// Why a recipient is refused at RCPT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecipientError {
    #[error("the domain is not an intake domain")]
    NotOurDomain,
    #[error("no such mailbox at the intake")]
    UnknownMailbox,
    /// A `b-`/`u-` address whose token is forged, altered, truncated or signed by an unknown key.
    #[error("token refused: {0}")]
    Token(VerpError),
}

/// Classifies an envelope recipient: one of `mailboxes` (any domain), or a token address on one
/// of the bounce `domains`. Comparisons ignore ASCII case.
pub fn classify_recipient(
    keys: &VerpKeys,
    domains: &[&str],
    mailboxes: &[&str],
    rcpt: &str,
) -> Result<IntakeRecipient, RecipientError> {
    let address = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
    if mailboxes.iter().any(|m| m.eq_ignore_ascii_case(address)) {
        return Ok(IntakeRecipient::Mailbox);
    }
    let (local, domain) = address
        .rsplit_once('@')
        .ok_or(RecipientError::UnknownMailbox)?;
    if !domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
        return Err(RecipientError::NotOurDomain);
    }
    let is_token = [BOUNCE_PREFIX, UNSUBSCRIBE_PREFIX].iter().any(|p| {
        local
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    });
    if !is_token {
        return Err(RecipientError::UnknownMailbox);
    }
    let decoded = keys
        .decode_address(address)
        .map_err(RecipientError::Token)?;
    Ok(match decoded.purpose {
        Purpose::Unsubscribe => IntakeRecipient::Unsubscribe(decoded.data),
        Purpose::Bounce | Purpose::OneClick => IntakeRecipient::ReturnPath(decoded.data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verp::{RecipientRef, VerpKey};

    #[test]
    fn recipients_at_rcpt() {
        let keys = VerpKeys::new(VerpKey::new(1, &[5; 32]).unwrap(), vec![]).unwrap();
        let data = TokenData {
            tenant_id: "ten_00000000000000aa".into(),
            message_id: 1,
            recipient: RecipientRef::Index(2),
        };
        let b = keys.return_path(&data, "bounce.example").unwrap();
        let u = keys.unsubscribe_address(&data, "bounce.example").unwrap();
        let domains = ["Bounce.Example"];
        let mailboxes = ["dmarc@reports.example", "fbl@bounce.example"];
        let classify = |rcpt: &str| classify_recipient(&keys, &domains, &mailboxes, rcpt);
        assert_eq!(classify(&b), Ok(IntakeRecipient::ReturnPath(data.clone())));
        assert_eq!(
            classify(&format!("<{}>", u.to_uppercase())),
            Ok(IntakeRecipient::Unsubscribe(data.clone()))
        );
        assert_eq!(
            classify("DMARC@reports.example"),
            Ok(IntakeRecipient::Mailbox)
        );
        assert_eq!(classify("fbl@bounce.example"), Ok(IntakeRecipient::Mailbox));
        assert_eq!(
            classify("postmaster@bounce.example"),
            Err(RecipientError::UnknownMailbox)
        );
        assert_eq!(
            classify("someone@elsewhere.example"),
            Err(RecipientError::NotOurDomain)
        );
        assert_eq!(classify("no-at-sign"), Err(RecipientError::UnknownMailbox));
        let on_other_domain = b.replace("bounce.example", "elsewhere.example");
        assert_eq!(
            classify(&on_other_domain),
            Err(RecipientError::NotOurDomain)
        );
        let forged = format!("b-{}@bounce.example", "a".repeat(52));
        assert!(matches!(classify(&forged), Err(RecipientError::Token(_))));
    }
}
