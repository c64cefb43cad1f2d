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
