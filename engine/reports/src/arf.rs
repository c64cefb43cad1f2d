//! Complaints: RFC 5965 Abuse Reporting Format feedback reports, as mailbox providers' feedback
//! loops send them (Yahoo, AOL, Microsoft JMRP, Comcast, ...).
//!
//! A report is `multipart/report; report-type=feedback-report` with a human-readable part, a
//! `message/feedback-report` part of fields, and the original message (whole, as
//! `message/rfc822`, or its headers, as `text/rfc822-headers`). The complaint is tied back to a
//! message by the original's headers: the VERP Return-Path when the provider kept it
//! ([`OriginalMessage::verp`]), else the Message-ID.
//!
//! Providers differ in what they fill in, so only what RFC 5965 §3.1 requires is required
//! (Feedback-Type, User-Agent, Version); a report without them, without the feedback part, or
//! with a version other than 1 is refused with a typed error. Microsoft's JMRP writes
//! `Version: 0.1` and is accepted too.

use std::net::IpAddr;

use mail_parser::Message;

use crate::fields::{self, Field, FieldError};
use crate::limits::{ORIGINAL_TO_MAX, VALUE_BYTES_MAX};
use crate::mail::{self, MailError, OriginalMessage};

/// Versions accepted: RFC 5965's `1`, the same written `1.0`, and Microsoft JMRP's `0.1`.
const ACCEPTED_VERSIONS: [&str; 3] = ["1", "1.0", "0.1"];

/// RFC 5965 §7.3 (and RFC 6591's auth-failure): what the user or the provider reported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackType {
    /// Unsolicited mail (the "this is spam" button): the common case.
    Abuse,
    AuthFailure,
    Fraud,
    NotSpam,
    Other,
    Virus,
    /// A type not registered; kept as written (lowercased) for the operator.
    Unregistered(String),
}

impl FeedbackType {
    fn parse(value: &str) -> FeedbackType {
        let v = value.trim().to_ascii_lowercase();
        match v.as_str() {
            "abuse" => FeedbackType::Abuse,
            "auth-failure" => FeedbackType::AuthFailure,
            "fraud" => FeedbackType::Fraud,
            "not-spam" => FeedbackType::NotSpam,
            "other" => FeedbackType::Other,
            "virus" => FeedbackType::Virus,
            _ => FeedbackType::Unregistered(v),
        }
    }

    /// Whether the report is a complaint about the mail (everything but `not-spam`).
    pub fn is_complaint(&self) -> bool {
        !matches!(self, FeedbackType::NotSpam)
    }
}

/// A parsed feedback report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FeedbackReport {
    pub feedback_type: FeedbackType,
    pub user_agent: String,
    /// `1` (RFC 5965), `1.0`, or `0.1` (Microsoft JMRP).
    pub version: String,
    /// The original's envelope sender (a VERP return path when Petrel sent it).
    pub original_mail_from: Option<String>,
    /// The original's envelope recipients, when the provider does not redact them.
    pub original_rcpt_to: Vec<String>,
    /// As written by the provider (RFC 5322 date-time), not interpreted.
    pub arrival_date: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub reported_domain: Vec<String>,
    /// The original message's headers, when included.
    pub original: Option<OriginalMessage>,
}

impl FeedbackReport {
    /// Who complained: the first envelope recipient, else the original's first To address.
    /// Providers that redact both give `None`; the VERP token's recipient then decides.
    pub fn complainant(&self) -> Option<&str> {
        self.original_rcpt_to
            .first()
            .or_else(|| self.original.as_ref()?.to.first())
            .map(String::as_str)
    }

    /// The VERP return path of the original, from Original-Mail-From or the Return-Path header.
    pub fn return_path(&self) -> Option<&str> {
        self.original_mail_from
            .as_deref()
            .or_else(|| self.original.as_ref()?.return_path.as_deref())
    }
}

/// Why a mail was not read as a feedback report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArfError {
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("feedback-report part: {0}")]
    Fields(#[from] FieldError),
    #[error("not a multipart/report with report-type=feedback-report")]
    NotAFeedbackReport,
    #[error("no message/feedback-report part")]
    NoFeedbackPart,
    #[error("the required field {0} is missing")]
    MissingField(&'static str),
    #[error("feedback report version {0:?} is not supported")]
    UnsupportedVersion(String),
}

/// Parses an ARF feedback report.
pub fn parse_arf(raw: &[u8]) -> Result<FeedbackReport, ArfError> {
    let message = mail::parse_mail(raw)?;
    feedback_from_message(&message)
}

/// [`parse_arf`] on a mail already parsed and bounded.
pub(crate) fn feedback_from_message(message: &Message<'_>) -> Result<FeedbackReport, ArfError> {
    if mail::report_type(message).as_deref() != Some("feedback-report") {
        return Err(ArfError::NotAFeedbackReport);
    }
    let part = message
        .parts
        .iter()
        .find(|p| mail::is_type(p, "message", "feedback-report"))
        .ok_or(ArfError::NoFeedbackPart)?;
    let text = mail::part_bytes(part).ok_or(ArfError::NoFeedbackPart)?;
    let blocks = fields::parse_blocks(&String::from_utf8_lossy(text))?;
    let fields: Vec<Field> = blocks.into_iter().flatten().collect();
    let required = |name: &'static str, label: &'static str| {
        fields::get(&fields, name)
            .filter(|v| !v.is_empty())
            .ok_or(ArfError::MissingField(label))
    };
    let feedback_type = FeedbackType::parse(required("feedback-type", "Feedback-Type")?);
    let user_agent = required("user-agent", "User-Agent")?.to_string();
    let version = required("version", "Version")?.to_string();
    if !ACCEPTED_VERSIONS.contains(&version.as_str()) {
        return Err(ArfError::UnsupportedVersion(version));
    }
    Ok(FeedbackReport {
        feedback_type,
        user_agent,
        version,
        original_mail_from: one(&fields, "original-mail-from"),
        original_rcpt_to: all(&fields, "original-rcpt-to"),
        arrival_date: one(&fields, "arrival-date").or_else(|| one(&fields, "received-date")),
        source_ip: fields::get(&fields, "source-ip").and_then(|v| v.trim().parse().ok()),
        reported_domain: all(&fields, "reported-domain"),
        original: mail::original_message(message),
    })
}

/// The first value of a field, angle brackets removed, if non-empty and bounded.
fn one(fields: &[Field], name: &str) -> Option<String> {
    let v = mail::strip_angles(fields::get(fields, name)?.to_string());
    (!v.is_empty() && v.len() <= VALUE_BYTES_MAX).then_some(v)
}

/// Every value of a repeatable field (at most [`ORIGINAL_TO_MAX`]).
fn all(fields: &[Field], name: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|f| f.name == name)
        .map(|f| mail::strip_angles(f.value.clone()))
        .filter(|v| !v.is_empty() && v.len() <= VALUE_BYTES_MAX)
        .take(ORIGINAL_TO_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(feedback: &str) -> String {
        format!(
            "From: fbl@isp.example\r\nTo: fbl@bounce.example\r\nSubject: FW\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\
             --b\r\nContent-Type: message/feedback-report\r\n\r\n{feedback}\r\n\
             --b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <m@x>\r\nTo: u@isp.example\r\n\r\n\
             --b--\r\n"
        )
    }

    #[test]
    fn required_fields_and_versions() {
        let ok = report("Feedback-Type: abuse\r\nUser-Agent: t/1\r\nVersion: 1\r\n");
        let r = parse_arf(ok.as_bytes()).unwrap();
        assert_eq!(r.feedback_type, FeedbackType::Abuse);
        assert_eq!(r.complainant(), Some("u@isp.example"));
        assert_eq!(r.original.unwrap().message_id.as_deref(), Some("m@x"));
        let missing = report("User-Agent: t/1\r\nVersion: 1\r\n");
        assert_eq!(
            parse_arf(missing.as_bytes()).unwrap_err(),
            ArfError::MissingField("Feedback-Type")
        );
        let v2 = report("Feedback-Type: abuse\r\nUser-Agent: t/1\r\nVersion: 2\r\n");
        assert_eq!(
            parse_arf(v2.as_bytes()).unwrap_err(),
            ArfError::UnsupportedVersion("2".into())
        );
        let odd = report("Feedback-Type: Opt-Out\r\nUser-Agent: t\r\nVersion: 0.1\r\n");
        let r = parse_arf(odd.as_bytes()).unwrap();
        assert_eq!(
            r.feedback_type,
            FeedbackType::Unregistered("opt-out".into())
        );
        assert!(FeedbackType::Abuse.is_complaint() && !FeedbackType::NotSpam.is_complaint());
    }

    #[test]
    fn not_a_report() {
        assert_eq!(
            parse_arf(b"Subject: hi\r\n\r\nbody\r\n").unwrap_err(),
            ArfError::NotAFeedbackReport
        );
        let no_part =
            "Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n\
                       --b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n";
        assert_eq!(
            parse_arf(no_part.as_bytes()).unwrap_err(),
            ArfError::NoFeedbackPart
        );
    }
}
