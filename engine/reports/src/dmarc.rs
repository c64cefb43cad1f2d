//! DMARC aggregate reports (RFC 7489 §7.2 and appendix C): the XML that receivers send to a
//! domain's `rua` address, usually gzip- or zip-compressed, attached to a mail.
//!
//! The XML is read with quick-xml's pull reader rather than serde, so that each bound is applied
//! while reading: element depth ([`XML_DEPTH_MAX`]), value size ([`VALUE_BYTES_MAX`]), records
//! ([`DMARC_RECORDS_MAX`]) and auth results per record ([`DMARC_AUTH_RESULTS_MAX`]). quick-xml
//! does not expand DTD entities, so there is no entity-expansion ("billion laughs") or external
//! entity attack; only the five predefined entities and character references are resolved.
//! Elements are matched by local name, so a namespace prefix or `xmlns` on `<feedback>` (the
//! RFC 7489bis draft's) changes nothing, and unknown elements are ignored.

use std::net::IpAddr;

use mail_parser::{Message, MessagePart, MimeHeaders};
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::limits::{DMARC_AUTH_RESULTS_MAX, DMARC_RECORDS_MAX, VALUE_BYTES_MAX, XML_DEPTH_MAX};
use crate::mail::{self, MailError};
use crate::unpack::{self, UnpackError};

/// An aggregate report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AggregateReport {
    /// The reporting organisation (`google.com`, `Outlook.com`, ...).
    pub org_name: String,
    pub email: Option<String>,
    /// Unique per reporter: with `org_name`, the key that makes storing a report idempotent.
    pub report_id: String,
    /// The reported interval, in seconds since the Unix epoch (UTC).
    pub date_begin: u64,
    pub date_end: u64,
    pub policy: PolicyPublished,
    pub records: Vec<Record>,
}

/// The DMARC record the reporter saw for the domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyPublished {
    pub domain: String,
    /// `r` (relaxed) or `s` (strict), as published.
    pub adkim: Option<String>,
    pub aspf: Option<String>,
    /// `none`, `quarantine` or `reject`, as published.
    pub p: Option<String>,
    pub sp: Option<String>,
    pub pct: Option<u8>,
}

/// What the receiver did with the messages (RFC 7489 `DispositionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    None,
    Quarantine,
    Reject,
}

/// A DMARC-aligned result (`DMARCResultType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlignedResult {
    Pass,
    Fail,
}

/// One row: messages from one source IP with one set of results.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub source_ip: IpAddr,
    /// Messages this row stands for.
    pub count: u64,
    pub disposition: Disposition,
    /// DKIM and SPF after alignment (`policy_evaluated`); absent in a few reporters' rows.
    pub dkim: Option<AlignedResult>,
    pub spf: Option<AlignedResult>,
    /// The RFC 5322 From domain.
    pub header_from: String,
    pub envelope_from: Option<String>,
    /// The raw DKIM results (`auth_results/dkim`), at most [`DMARC_AUTH_RESULTS_MAX`].
    pub dkim_results: Vec<AuthResult>,
    /// The raw SPF results (`auth_results/spf`), at most [`DMARC_AUTH_RESULTS_MAX`].
    pub spf_results: Vec<AuthResult>,
}

/// One `auth_results` entry, as the reporter wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuthResult {
    pub domain: String,
    /// The DKIM selector, or the SPF scope (`mfrom`, `helo`).
    pub selector_or_scope: Option<String>,
    /// `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`, `permerror`, ...
    pub result: String,
}

impl Record {
    /// Whether these messages passed DMARC: DKIM or SPF passed and aligned (RFC 7489 §6.6.2).
    pub fn dmarc_pass(&self) -> bool {
        self.dkim == Some(AlignedResult::Pass) || self.spf == Some(AlignedResult::Pass)
    }
}

/// Messages from one source IP with one disposition, split by the DMARC verdict: a row of
/// `GET /v1/domains/{id}/dmarc` ("who sends as this domain, and does it pass").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SourceSummary {
    pub source_ip: IpAddr,
    pub disposition: Disposition,
    /// Messages that passed DMARC (saturating sum of record counts).
    pub pass: u64,
    /// Messages that failed DMARC.
    pub fail: u64,
}

/// Sums records (of one report or many) by source IP and disposition, in that order.
pub fn summarise<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<SourceSummary> {
    let mut rows: std::collections::BTreeMap<(IpAddr, Disposition), (u64, u64)> =
        std::collections::BTreeMap::new();
    for r in records {
        let (pass, fail) = rows.entry((r.source_ip, r.disposition)).or_default();
        if r.dmarc_pass() {
            *pass = pass.saturating_add(r.count);
        } else {
            *fail = fail.saturating_add(r.count);
        }
    }
    rows.into_iter()
        .map(|((source_ip, disposition), (pass, fail))| SourceSummary {
            source_ip,
            disposition,
            pass,
            fail,
        })
        .collect()
}

/// Why a DMARC report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DmarcError {
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("no gzip, zip or XML attachment in the mail")]
    NoReport,
    #[error("XML is not well-formed: {0}")]
    Xml(String),
    #[error("XML nested more than {max} deep")]
    TooDeep { max: usize },
    #[error("more than {max} records")]
    TooManyRecords { max: usize },
    #[error("the required element {0} is missing, empty or too long")]
    MissingField(&'static str),
    #[error("the element {field} has an invalid value")]
    BadValue { field: &'static str },
    #[error("the root element is not <feedback>")]
    NotAFeedback,
}

/// Finds the report attached to a mail (or forming its body), unpacks and parses it.
pub fn parse_aggregate_mail(raw: &[u8]) -> Result<AggregateReport, DmarcError> {
    let message = mail::parse_mail(raw)?;
    let attachment = report_attachment(&message).ok_or(DmarcError::NoReport)?;
    parse_aggregate_attachment(attachment)
}

/// The first part that may hold a report and whose bytes look like gzip, zip or XML.
pub(crate) fn report_attachment<'a>(message: &'a Message<'_>) -> Option<&'a [u8]> {
    message
        .parts
        .iter()
        .filter(|p| may_hold_report(p))
        .filter_map(mail::part_bytes)
        .find(|bytes| unpack::sniff(bytes).is_some())
}

/// Content types reporters use for the report (RFC 7489 §7.2.1.1 names gzip and zip; reporters
/// also send XML and octet-stream), or a report file name. Text and HTML bodies never count,
/// so a newsletter's `<p>` is not taken for XML.
fn may_hold_report(part: &MessagePart<'_>) -> bool {
    const TYPES: [(&str, &str); 8] = [
        ("application", "gzip"),
        ("application", "x-gzip"),
        ("application", "zip"),
        ("application", "x-zip-compressed"),
        ("application", "x-zip"),
        ("application", "octet-stream"),
        ("application", "xml"),
        ("text", "xml"),
    ];
    let by_type = TYPES.iter().any(|(t, s)| mail::is_type(part, t, s));
    let by_name = part.attachment_name().is_some_and(|n| {
        let n = n.to_ascii_lowercase();
        n.ends_with(".xml") || n.ends_with(".gz") || n.ends_with(".zip")
    });
    by_type || by_name
}

/// Unpacks an attachment (gzip, zip or XML) and parses the report.
pub fn parse_aggregate_attachment(bytes: &[u8]) -> Result<AggregateReport, DmarcError> {
    let xml = unpack::unpack(bytes)?;
    parse_aggregate_xml(&xml)
}

/// Parses the report XML.
pub fn parse_aggregate_xml(xml: &[u8]) -> Result<AggregateReport, DmarcError> {
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut state = ParseState::default();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| DmarcError::Xml(e.to_string()))?;
        match event {
            Event::Start(e) => state.open(&String::from_utf8_lossy(e.local_name().as_ref()))?,
            Event::Empty(e) => {
                state.open(&String::from_utf8_lossy(e.local_name().as_ref()))?;
                state.close()?;
            }
            Event::End(_) => state.close()?,
            Event::Text(t) => {
                let text = t.decode().map_err(|e| DmarcError::Xml(e.to_string()))?;
                state.text(&text);
            }
            Event::CData(t) => state.text(&String::from_utf8_lossy(&t)),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c),
                    _ => predefined_entity(&r.decode().unwrap_or_default()),
                };
                if let Some(c) = resolved {
                    state.text(c.encode_utf8(&mut [0; 4]));
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    state.finish()
}

fn predefined_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// A record as it is read: every field optional until `</record>` checks them.
#[derive(Default)]
struct RecordDraft {
    source_ip: Option<String>,
    count: Option<String>,
    disposition: Option<String>,
    dkim: Option<String>,
    spf: Option<String>,
    header_from: Option<String>,
    envelope_from: Option<String>,
    dkim_results: Vec<AuthResult>,
    spf_results: Vec<AuthResult>,
}

#[derive(Default)]
struct ParseState {
    /// Element local names from the root, joined by `/`; at most `XML_DEPTH_MAX` deep.
    path: String,
    depth: usize,
    /// Text of the current element; `None` once it passed `VALUE_BYTES_MAX` (then ignored).
    text: Option<String>,
    saw_root: bool,
    org_name: Option<String>,
    email: Option<String>,
    report_id: Option<String>,
    begin: Option<String>,
    end: Option<String>,
    policy: PolicyPublished,
    policy_domain: Option<String>,
    pct: Option<String>,
    record: Option<RecordDraft>,
    records: Vec<Record>,
}

impl ParseState {
    fn open(&mut self, name: &str) -> Result<(), DmarcError> {
        if self.depth == XML_DEPTH_MAX {
            return Err(DmarcError::TooDeep { max: XML_DEPTH_MAX });
        }
        if self.depth == 0 {
            if name != "feedback" || self.saw_root {
                return Err(DmarcError::NotAFeedback);
            }
            self.saw_root = true;
        }
        self.depth += 1;
        if !self.path.is_empty() {
            self.path.push('/');
        }
        self.path.push_str(name);
        self.text = Some(String::new());
        match self.path.as_str() {
            "feedback/record" => {
                if self.records.len() == DMARC_RECORDS_MAX {
                    return Err(DmarcError::TooManyRecords {
                        max: DMARC_RECORDS_MAX,
                    });
                }
                self.record = Some(RecordDraft::default());
            }
            "feedback/record/auth_results/dkim" | "feedback/record/auth_results/spf" => {
                let dkim = self.path.ends_with("dkim");
                if let Some(r) = self.record.as_mut() {
                    let list = if dkim {
                        &mut r.dkim_results
                    } else {
                        &mut r.spf_results
                    };
                    if list.len() < DMARC_AUTH_RESULTS_MAX {
                        list.push(AuthResult::default());
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn text(&mut self, s: &str) {
        if let Some(t) = self.text.as_mut() {
            if t.len() + s.len() > VALUE_BYTES_MAX {
                self.text = None;
            } else {
                t.push_str(s);
            }
        }
    }

    fn close(&mut self) -> Result<(), DmarcError> {
        let value = self
            .text
            .take()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if self.path == "feedback/record" {
            if let Some(draft) = self.record.take() {
                self.records.push(finish_record(draft)?);
            }
        } else if let Some(value) = value {
            self.assign(value);
        }
        match self.path.rfind('/') {
            Some(i) => self.path.truncate(i),
            None => self.path.clear(),
        }
        self.depth = self.depth.saturating_sub(1);
        Ok(())
    }

    /// Stores a leaf element's value by its path.
    fn assign(&mut self, v: String) {
        let path = self.path.as_str();
        if let Some(rest) = path.strip_prefix("feedback/record/") {
            if let Some(r) = self.record.as_mut() {
                assign_record(r, rest, v);
            }
            return;
        }
        let slot = match path {
            "feedback/report_metadata/org_name" => &mut self.org_name,
            "feedback/report_metadata/email" => &mut self.email,
            "feedback/report_metadata/report_id" => &mut self.report_id,
            "feedback/report_metadata/date_range/begin" => &mut self.begin,
            "feedback/report_metadata/date_range/end" => &mut self.end,
            "feedback/policy_published/domain" => &mut self.policy_domain,
            "feedback/policy_published/adkim" => &mut self.policy.adkim,
            "feedback/policy_published/aspf" => &mut self.policy.aspf,
            "feedback/policy_published/p" => &mut self.policy.p,
            "feedback/policy_published/sp" => &mut self.policy.sp,
            "feedback/policy_published/pct" => &mut self.pct,
            _ => return,
        };
        slot.get_or_insert(v);
    }

    fn finish(self) -> Result<AggregateReport, DmarcError> {
        if !self.saw_root {
            return Err(DmarcError::NotAFeedback);
        }
        let number = |v: Option<String>, field| -> Result<u64, DmarcError> {
            v.ok_or(DmarcError::MissingField(field))?
                .parse()
                .map_err(|_| DmarcError::BadValue { field })
        };
        let policy = PolicyPublished {
            domain: self
                .policy_domain
                .ok_or(DmarcError::MissingField("policy_published/domain"))?,
            pct: match self.pct {
                Some(p) => Some(
                    p.parse()
                        .map_err(|_| DmarcError::BadValue { field: "pct" })?,
                ),
                None => None,
            },
            ..self.policy
        };
        Ok(AggregateReport {
            org_name: self.org_name.ok_or(DmarcError::MissingField("org_name"))?,
            email: self.email,
            report_id: self
                .report_id
                .ok_or(DmarcError::MissingField("report_id"))?,
            date_begin: number(self.begin, "date_range/begin")?,
            date_end: number(self.end, "date_range/end")?,
            policy,
            records: self.records,
        })
    }
}

fn assign_record(r: &mut RecordDraft, rest: &str, v: String) {
    let slot = match rest {
        "row/source_ip" => &mut r.source_ip,
        "row/count" => &mut r.count,
        "row/policy_evaluated/disposition" => &mut r.disposition,
        "row/policy_evaluated/dkim" => &mut r.dkim,
        "row/policy_evaluated/spf" => &mut r.spf,
        "identifiers/header_from" => &mut r.header_from,
        "identifiers/envelope_from" => &mut r.envelope_from,
        _ => {
            assign_auth_result(r, rest, v);
            return;
        }
    };
    slot.get_or_insert(v);
}

fn assign_auth_result(r: &mut RecordDraft, rest: &str, v: String) {
    let (list, field) = match rest.strip_prefix("auth_results/dkim/") {
        Some(field) => (&mut r.dkim_results, field),
        None => match rest.strip_prefix("auth_results/spf/") {
            Some(field) => (&mut r.spf_results, field),
            None => return,
        },
    };
    let Some(entry) = list.last_mut() else {
        return;
    };
    match field {
        "domain" => entry.domain = v,
        "selector" | "scope" => entry.selector_or_scope = Some(v),
        "result" => entry.result = v.to_ascii_lowercase(),
        _ => {}
    }
}

fn finish_record(d: RecordDraft) -> Result<Record, DmarcError> {
    let source_ip = d
        .source_ip
        .ok_or(DmarcError::MissingField("row/source_ip"))?
        .parse()
        .map_err(|_| DmarcError::BadValue { field: "source_ip" })?;
    let count = d
        .count
        .ok_or(DmarcError::MissingField("row/count"))?
        .parse()
        .map_err(|_| DmarcError::BadValue { field: "count" })?;
    let disposition = match d
        .disposition
        .ok_or(DmarcError::MissingField("policy_evaluated/disposition"))?
        .to_ascii_lowercase()
        .as_str()
    {
        "none" => Disposition::None,
        "quarantine" => Disposition::Quarantine,
        "reject" => Disposition::Reject,
        _ => {
            return Err(DmarcError::BadValue {
                field: "disposition",
            })
        }
    };
    let aligned = |v: Option<String>, field| match v.map(|s| s.to_ascii_lowercase()).as_deref() {
        None => Ok(None),
        Some("pass") => Ok(Some(AlignedResult::Pass)),
        Some("fail") => Ok(Some(AlignedResult::Fail)),
        Some(_) => Err(DmarcError::BadValue { field }),
    };
    Ok(Record {
        source_ip,
        count,
        disposition,
        dkim: aligned(d.dkim, "policy_evaluated/dkim")?,
        spf: aligned(d.spf, "policy_evaluated/spf")?,
        header_from: d
            .header_from
            .ok_or(DmarcError::MissingField("identifiers/header_from"))?,
        envelope_from: d.envelope_from,
        dkim_results: d.dkim_results,
        spf_results: d.spf_results,
    })
}

#[cfg(test)]
#[path = "dmarc_tests.rs"]
mod tests;
