//! Message checks: RFC 5322 header section parsing, the Received trace header (RFC 5321 §4.4),
//! and Message-ID / Date for submissions. Time is passed in; dates are computed without a date
//! crate (civil-from-days, proleptic Gregorian, UTC).

use crate::petrel_headers::{self, PetrelHeaderError};
use crate::types::{push_u64, Reply, HEADER_SECTION_MAX_BYTES_DEFAULT};
use std::net::{IpAddr, SocketAddr};

/// Longest RFC 5322 Message-ID kept for attribution, in bytes (without the angle brackets):
/// the line length limit of RFC 5322 §2.1.1. A longer one is not recorded (the message is still
/// accepted: the id is only a label for events).
pub const RFC822_MESSAGE_ID_BYTES_MAX: usize = 998;

/// What the Received header and the submission fix-ups need to know.
#[derive(Clone, Copy, Debug)]
pub struct TraceInfo<'a> {
    /// Our hostname ("by").
    pub hostname: &'a str,
    /// The client's EHLO/HELO argument ("from").
    pub helo: &'a str,
    /// The client's address, written as an address literal (no reverse DNS).
    pub peer: SocketAddr,
    /// TLS version and cipher, e.g. "TLSv1.3 TLS_AES_128_GCM_SHA256"; None for plaintext.
    pub tls: Option<&'a str>,
    /// The AUTH identity (not written; only turns ESMTP into ESMTPA).
    pub authenticated_as: Option<&'a str>,
    /// The spool's id for the message ("id", and the Message-ID's left part).
    pub queue_id: &'a str,
    /// "for <recipient>" when the message has exactly one.
    pub recipient: Option<&'a str>,
    /// Seconds since the Unix epoch, UTC.
    pub now_unix_secs: i64,
    /// A submission (authenticated client): Message-ID and Date are added when missing.
    pub submission: bool,
}

/// Why a message failed the checks. Every variant maps to one SMTP reply via [`CheckError::reply`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckError {
    /// A header line whose field name is empty or holds characters outside printable ASCII.
    #[error("malformed header field name at byte {offset}")]
    FieldName { offset: usize },
    /// A header line with no colon, before the empty line that ends the header section.
    #[error("header line without a colon at byte {offset}")]
    MissingColon { offset: usize },
    /// A folded continuation line with no field before it.
    #[error("continuation line without a header field at byte {offset}")]
    OrphanContinuation { offset: usize },
    /// A CR or LF that is not part of a CRLF pair in the header section.
    #[error("bare CR or LF in the header section at byte {offset}")]
    BareLineEnding { offset: usize },
    /// The header section is larger than allowed.
    #[error("header section larger than {max_bytes} bytes")]
    HeaderSectionTooLarge { max_bytes: usize },
    /// A malformed `X-Petrel-Tag` or `X-Petrel-Metadata` header.
    #[error(transparent)]
    PetrelHeader(#[from] PetrelHeaderError),
}

impl CheckError {
    /// The SMTP reply for this refusal (permanent: the same message will fail again).
    pub fn reply(&self) -> Reply {
        match self {
            CheckError::HeaderSectionTooLarge { .. } => {
                Reply::new(552, (5, 3, 4), format!("Message rejected: {self}"))
            }
            // 550 like a policy refusal: the message is well formed, its labels are not.
            CheckError::PetrelHeader(e) => Reply::new(550, (5, 6, 0), e.to_string()),
            _ => Reply::new(554, (5, 6, 0), format!("Message rejected: {self}")),
        }
    }
}

/// Parses the header section with the default size bound ([`HEADER_SECTION_MAX_BYTES_DEFAULT`]).
pub fn parse_headers(data: &[u8]) -> Result<Vec<(&str, &[u8])>, CheckError> {
    parse_headers_bounded(data, HEADER_SECTION_MAX_BYTES_DEFAULT)
}

/// Parses the header section: fields as (name, value) where the value is everything after the
/// colon up to (not including) the field's final CRLF, folding CRLFs kept. The section ends at
/// the first empty line, or at the end of the data (a message that is headers only).
pub fn parse_headers_bounded(
    data: &[u8],
    header_section_max_bytes: usize,
) -> Result<Vec<(&str, &[u8])>, CheckError> {
    let mut fields: Vec<(&str, &[u8])> = Vec::with_capacity(16);
    let mut pos = 0;
    // (name, value start) of the field being read; its value ends where the next field starts.
    let mut current: Option<(&str, usize)> = None;
    while pos < data.len() {
        let rest = &data[pos..];
        let line_len = match memchr::memchr(b'\n', rest) {
            Some(lf) if lf > 0 && rest[lf - 1] == b'\r' => lf - 1,
            Some(lf) => return Err(CheckError::BareLineEnding { offset: pos + lf }),
            None => rest.len(),
        };
        let line = &rest[..line_len];
        if let Some(cr) = memchr::memchr(b'\r', line) {
            return Err(CheckError::BareLineEnding { offset: pos + cr });
        }
        let next = (pos + line_len + 2).min(data.len());
        if line.is_empty() {
            break;
        }
        if pos.saturating_add(line_len).saturating_add(2) > header_section_max_bytes {
            let max_bytes = header_section_max_bytes;
            return Err(CheckError::HeaderSectionTooLarge { max_bytes });
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if current.is_none() {
                return Err(CheckError::OrphanContinuation { offset: pos });
            }
        } else {
            if let Some((name, start)) = current.take() {
                fields.push((name, &data[start..pos - 2]));
            }
            let colon =
                memchr::memchr(b':', line).ok_or(CheckError::MissingColon { offset: pos })?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
                return Err(CheckError::FieldName { offset: pos });
            }
            let name =
                std::str::from_utf8(name).map_err(|_| CheckError::FieldName { offset: pos })?;
            current = Some((name, pos + colon + 1));
        }
        pos = next;
    }
    if let Some((name, start)) = current {
        // The last field ends before the CRLF that precedes the empty line (or the data's end).
        let end = if pos >= 2 && data[..pos].ends_with(b"\r\n") {
            pos - 2
        } else {
            pos
        };
        fields.push((name, &data[start..end.max(start)]));
    }
    Ok(fields)
}

/// A message that passed the checks, ready to sign and spool, and what they learnt about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The final message: trace headers prepended, X-Petrel headers removed.
    pub message: Vec<u8>,
    /// `X-Petrel-Tag` values, in header order.
    pub tags: Vec<String>,
    /// The `X-Petrel-Metadata` JSON object as sent.
    pub metadata: Option<String>,
    /// The Message-ID without its angle brackets: the message's own, or the one added for a
    /// submission. None when absent (relay) or unusable (over [`RFC822_MESSAGE_ID_BYTES_MAX`],
    /// not UTF-8 text).
    pub rfc822_message_id: Option<String>,
    /// The domain of the first From address, lowercased.
    pub from_domain: Option<String>,
}

/// Parses the header section, rejects malformed headers (typed error -> Reply via
/// `CheckError::reply()`), returns the final message: Received prepended; for submissions
/// (`submission == true`) Message-ID and Date added when missing; X-Petrel headers removed.
pub fn prepare_message(data: &[u8], trace: &TraceInfo) -> Result<Vec<u8>, CheckError> {
    prepare_message_bounded(data, trace, HEADER_SECTION_MAX_BYTES_DEFAULT)
}

/// [`prepare_message`] with the header section bound from [`crate::Limits`].
pub fn prepare_message_bounded(
    data: &[u8],
    trace: &TraceInfo,
    header_section_max_bytes: usize,
) -> Result<Vec<u8>, CheckError> {
    prepare(data, trace, header_section_max_bytes).map(|p| p.message)
}

/// [`prepare_message_bounded`], also returning the attribution the headers carry. The message
/// is copied once, as before: the X-Petrel fields are left out during that copy, and only a
/// message that has a field named `X-Petrel-*` is scanned for them at all.
pub fn prepare(
    data: &[u8],
    trace: &TraceInfo,
    header_section_max_bytes: usize,
) -> Result<Prepared, CheckError> {
    let fields = parse_headers_bounded(data, header_section_max_bytes)?;
    let petrel = if petrel_headers::has_petrel_field(&fields) {
        petrel_headers::parse_petrel_headers(data)?
    } else {
        petrel_headers::PetrelHeaders::default()
    };
    let (mut message_id, mut has_date) = (None, false);
    let mut from_domain = None;
    for (name, value) in &fields {
        if name.eq_ignore_ascii_case("Message-ID") && message_id.is_none() {
            message_id = Some(clean_message_id(value));
        } else if name.eq_ignore_ascii_case("From") && from_domain.is_none() {
            from_domain = Some(address_domain(value));
        }
        has_date |= name.eq_ignore_ascii_case("Date");
    }
    let mut out = Vec::with_capacity(data.len() + 512);
    write_received(&mut out, trace);
    if trace.submission && message_id.is_none() {
        let mut id = Vec::with_capacity(64);
        push_clean(&mut id, trace.queue_id);
        id.push(b'.');
        push_i64(&mut id, trace.now_unix_secs);
        id.push(b'@');
        push_clean(&mut id, trace.hostname);
        out.extend_from_slice(b"Message-ID: <");
        out.extend_from_slice(&id);
        out.extend_from_slice(b">\r\n");
        // push_clean keeps printable ASCII only, so this is UTF-8.
        message_id = Some(String::from_utf8(id).ok());
    }
    if trace.submission && !has_date {
        out.extend_from_slice(b"Date: ");
        write_rfc5322_date(&mut out, trace.now_unix_secs);
        out.extend_from_slice(b"\r\n");
    }
    petrel_headers::copy_without(data, &petrel.remove, &mut out);
    Ok(Prepared {
        message: out,
        tags: petrel.tags,
        metadata: petrel.metadata,
        rfc822_message_id: message_id.flatten(),
        from_domain: from_domain.flatten(),
    })
}

/// A Message-ID field value unfolded, trimmed and without its angle brackets; None when it is
/// empty, too long or not text.
fn clean_message_id(value: &[u8]) -> Option<String> {
    // Folded Message-IDs are rare: copy only when there is a line break to take out.
    let unfolded: std::borrow::Cow<[u8]> = if memchr::memchr(b'\n', value).is_some() {
        value
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect::<Vec<u8>>()
            .into()
    } else {
        value.into()
    };
    let v = unfolded.trim_ascii();
    let v = match (v.first(), v.last()) {
        (Some(b'<'), Some(b'>')) if v.len() >= 2 => v[1..v.len() - 1].trim_ascii(),
        _ => v,
    };
    if v.is_empty() || v.len() > RFC822_MESSAGE_ID_BYTES_MAX {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    (!s.chars().any(char::is_control)).then(|| s.to_string())
}

/// The domain of the first address in a From value (the last `<...>` if any, else the whole
/// value), lowercased. None when there is no `@` or the domain is empty.
pub fn address_domain(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.trim(),
    };
    let domain = addr.rsplit_once('@')?.1.trim();
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// "Received: from helo ([ip]) by host (Petrel) with ESMTPSA id Q (tls) for <rcpt>; date".
fn write_received(out: &mut Vec<u8>, trace: &TraceInfo) {
    out.extend_from_slice(b"Received: from ");
    push_clean(out, trace.helo);
    out.extend_from_slice(b" (");
    write_address_literal(out, trace.peer.ip());
    out.extend_from_slice(b")\r\n\tby ");
    push_clean(out, trace.hostname);
    out.extend_from_slice(b" (Petrel) with ESMTP");
    if trace.tls.is_some() {
        out.push(b'S');
    }
    if trace.authenticated_as.is_some() {
        out.push(b'A');
    }
    out.extend_from_slice(b" id ");
    push_clean(out, trace.queue_id);
    if let Some(tls) = trace.tls {
        out.extend_from_slice(b"\r\n\t(");
        out.extend(
            tls.bytes()
                .filter(|&b| (b' '..=b'~').contains(&b) && b != b'(' && b != b')'),
        );
        out.push(b')');
    }
    if let Some(recipient) = trace.recipient {
        out.extend_from_slice(b"\r\n\tfor <");
        push_clean(out, recipient);
        out.push(b'>');
    }
    out.extend_from_slice(b";\r\n\t");
    write_rfc5322_date(out, trace.now_unix_secs);
    out.extend_from_slice(b"\r\n");
}

fn write_address_literal(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = match ip.to_canonical() {
        IpAddr::V4(v4) => write!(out, "[{v4}]"),
        IpAddr::V6(v6) => write!(out, "[IPv6:{v6}]"),
    };
}

/// Copies text that came from a peer or config into a header: no controls, no spaces.
fn push_clean(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().filter(|&b| b > b' ' && b != 0x7f));
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// RFC 5322 date-time in UTC: "Mon, 23 Nov 2026 15:58:39 +0000".
pub(crate) fn write_rfc5322_date(out: &mut Vec<u8>, unix_secs: i64) {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // rem_euclid(7) is in 0..7 and 1970-01-01 was a Thursday.
    out.extend_from_slice(WEEKDAYS[days.rem_euclid(7) as usize].as_bytes());
    out.extend_from_slice(b", ");
    push_u64(out, u64::from(day));
    out.push(b' ');
    out.extend_from_slice(MONTHS[(month - 1) as usize].as_bytes());
    out.push(b' ');
    push_i64(out, year);
    out.push(b' ');
    for (i, part) in [secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60]
        .iter()
        .enumerate()
    {
        if i > 0 {
            out.push(b':');
        }
        out.push(b'0' + (part / 10) as u8);
        out.push(b'0' + (part % 10) as u8);
    }
    out.extend_from_slice(b" +0000");
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31). Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // 1..=31
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // 1..=12
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
