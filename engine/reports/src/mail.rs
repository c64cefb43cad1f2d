//! The shared front of every report parser: bound the mail, parse it with `mail-parser`, check
//! the MIME structure against the limits, and read the original message's headers.

use mail_parser::{HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use crate::limits::{
    HEADERS_PER_PART_MAX, HEADER_BYTES_MAX, MAIL_BYTES_MAX, NESTING_DEPTH_MAX, ORIGINAL_TO_MAX,
    PARTS_MAX, VALUE_BYTES_MAX,
};
use crate::prescan::prescan;
use crate::verp::{DecodedAddress, VerpKeys};

/// Why a report mail was refused before its content was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    #[error("mail of {bytes} bytes is over the {max} accepted")]
    TooLarge { bytes: usize, max: usize },
    #[error("not a mail message (no header section)")]
    NotAMessage,
    #[error("more than {max} MIME parts")]
    TooManyParts { max: usize },
    #[error("messages nested more than {max} deep")]
    TooDeep { max: usize },
    #[error("a part has more than {max} header fields")]
    TooManyHeaders { max: usize },
    #[error("a header field of {bytes} bytes is over the {max} accepted")]
    HeaderTooLarge { bytes: usize, max: usize },
    #[error("more than {max} {kind} lines")]
    TooManyLines { kind: &'static str, max: usize },
    #[error("encoded message parts of more than {max} bytes")]
    EncodedMessageTooLarge { max: usize },
}

/// What a report says about the message it is about: the headers that lead back to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OriginalMessage {
    /// The Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// The Return-Path address (a VERP return path when Petrel sent it).
    pub return_path: Option<String>,
    /// The first From address.
    pub from: Option<String>,
    /// The To addresses (at most [`ORIGINAL_TO_MAX`]).
    pub to: Vec<String>,
    pub subject: Option<String>,
}

impl OriginalMessage {
    /// The original's VERP return path, decoded and verified, if it has one.
    pub fn verp(&self, keys: &VerpKeys) -> Option<DecodedAddress> {
        keys.decode_address(self.return_path.as_deref()?).ok()
    }

    /// Reads the fields from a parsed header section.
    pub(crate) fn from_message(m: &Message<'_>) -> OriginalMessage {
        let Some(root) = m.parts.first() else {
            return OriginalMessage::default();
        };
        let header = |name: &str| {
            root.headers
                .iter()
                .find(|h| h.name().eq_ignore_ascii_case(name))
        };
        let to = header("To")
            .map(|h| addresses(h.value()))
            .unwrap_or_default();
        OriginalMessage {
            message_id: header("Message-ID")
                .and_then(|h| text(h.value()))
                .map(strip_angles),
            return_path: header("Return-Path")
                .and_then(|h| addresses(h.value()).into_iter().next()),
            from: header("From").and_then(|h| addresses(h.value()).into_iter().next()),
            to,
            subject: header("Subject").and_then(|h| text(h.value())),
        }
        .bounded()
    }

    /// Parses a text/rfc822-headers body (or any header section followed by anything).
    /// The header section may have been decoded from base64, out of the prescan's sight, so it
    /// is bounded here: only the text up to the first blank line, at most
    /// [`HEADERS_PER_PART_MAX`] field lines, else `None`.
    pub(crate) fn from_header_text(text: &[u8]) -> Option<OriginalMessage> {
        let mut field_lines = 0usize;
        let mut end = text.len();
        let mut at = 0usize;
        for line in text.split(|&b| b == b'\n') {
            let content = line.strip_suffix(b"\r").unwrap_or(line);
            if content.is_empty() {
                end = at;
                break;
            }
            if !content.starts_with(b" ") && !content.starts_with(b"\t") {
                field_lines += 1;
                if field_lines > HEADERS_PER_PART_MAX {
                    return None;
                }
            }
            at += line.len() + 1;
        }
        let m = MessageParser::default().parse_headers(&text[..end.min(text.len())])?;
        Some(OriginalMessage::from_message(&m))
    }

    fn bounded(mut self) -> OriginalMessage {
        let keep = |v: Option<String>| v.filter(|s| !s.is_empty() && s.len() <= VALUE_BYTES_MAX);
        self.message_id = keep(self.message_id);
        self.return_path = keep(self.return_path);
        self.from = keep(self.from);
        self.subject = keep(self.subject);
        self.to
            .retain(|a| !a.is_empty() && a.len() <= VALUE_BYTES_MAX);
        self.to.truncate(ORIGINAL_TO_MAX);
        self
    }
}

/// A parsed mail that drops its nested messages one by one.
///
/// `mail-parser`'s `Message` holds nested messages inline (`PartType::Message`), so the compiler's
/// drop recurses once per level: a 5 MiB mail of `Content-Type: message/rfc822` lines nests
/// 170 000 deep and overflowed the stack when dropped (measured, release build). This wrapper
/// moves each nested message out onto a heap stack before it is dropped.
pub(crate) struct ParsedMail<'x>(Message<'x>);

impl std::fmt::Debug for ParsedMail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the derived form: that would recurse through nested messages.
        f.debug_struct("ParsedMail")
            .field("parts", &self.0.parts.len())
            .finish_non_exhaustive()
    }
}

impl<'x> std::ops::Deref for ParsedMail<'x> {
    type Target = Message<'x>;

    fn deref(&self) -> &Message<'x> {
        &self.0
    }
}

impl Drop for ParsedMail<'_> {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        take_nested(&mut self.0, &mut pending);
        while let Some(mut m) = pending.pop() {
            take_nested(&mut m, &mut pending);
        }
    }
}

/// Moves the messages nested directly in `m` to `out`, leaving empty multiparts in their place.
fn take_nested<'x>(m: &mut Message<'x>, out: &mut Vec<Message<'x>>) {
    for part in &mut m.parts {
        if matches!(part.body, PartType::Message(_)) {
            if let PartType::Message(nested) = std::mem::take(&mut part.body) {
                out.push(nested);
            }
        }
    }
}

/// Bounds and parses a report mail.
pub(crate) fn parse_mail(raw: &[u8]) -> Result<ParsedMail<'_>, MailError> {
    if raw.len() > MAIL_BYTES_MAX {
        return Err(MailError::TooLarge {
            bytes: raw.len(),
            max: MAIL_BYTES_MAX,
        });
    }
    prescan(raw)?;
    let message = ParsedMail(
        MessageParser::default()
            .parse(raw)
            .ok_or(MailError::NotAMessage)?,
    );
    if message.parts.is_empty() {
        return Err(MailError::NotAMessage);
    }
    check_structure(&message)?;
    Ok(message)
}

/// Walks every part of the message and of nested messages (without recursion, so a deeply
/// nested input cannot exhaust the stack) and checks counts, depth and header sizes.
fn check_structure(message: &Message<'_>) -> Result<(), MailError> {
    let mut parts_total = 0usize;
    let mut stack: Vec<(&Message<'_>, usize)> = vec![(message, 0)];
    while let Some((m, depth)) = stack.pop() {
        if depth > NESTING_DEPTH_MAX {
            return Err(MailError::TooDeep {
                max: NESTING_DEPTH_MAX,
            });
        }
        parts_total += m.parts.len();
        if parts_total > PARTS_MAX {
            return Err(MailError::TooManyParts { max: PARTS_MAX });
        }
        for part in &m.parts {
            check_headers(part)?;
            if let PartType::Message(nested) = &part.body {
                stack.push((nested, depth + 1));
            }
        }
    }
    Ok(())
}

fn check_headers(part: &MessagePart<'_>) -> Result<(), MailError> {
    if part.headers.len() > HEADERS_PER_PART_MAX {
        return Err(MailError::TooManyHeaders {
            max: HEADERS_PER_PART_MAX,
        });
    }
    for h in &part.headers {
        let bytes = (h.offset_end() as usize).saturating_sub(h.offset_field() as usize);
        if bytes > HEADER_BYTES_MAX {
            return Err(MailError::HeaderTooLarge {
                bytes,
                max: HEADER_BYTES_MAX,
            });
        }
    }
    Ok(())
}

/// The root part's Content-Type `report-type` parameter, lowercased, when the mail is a
/// multipart/report.
pub(crate) fn report_type(m: &Message<'_>) -> Option<String> {
    let ct = m.parts.first()?.content_type()?;
    if !ct.ctype().eq_ignore_ascii_case("multipart")
        || !ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        return None;
    }
    Some(ct.attribute("report-type")?.trim().to_ascii_lowercase())
}

/// Whether a part's Content-Type is `ctype/subtype` (case-insensitive).
pub(crate) fn is_type(part: &MessagePart<'_>, ctype: &str, subtype: &str) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ctype)
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
    })
}

/// The decoded bytes of a leaf part (text or binary), `None` for multiparts and messages.
pub(crate) fn part_bytes<'a>(part: &'a MessagePart<'_>) -> Option<&'a [u8]> {
    match &part.body {
        PartType::Text(t) | PartType::Html(t) => Some(t.as_bytes()),
        PartType::Binary(b) | PartType::InlineBinary(b) => Some(b),
        PartType::Message(_) | PartType::Multipart(_) => None,
    }
}

/// The original message a report includes: a message/rfc822 (or message/global) part, or a
/// text/rfc822-headers (or message/global-headers) part. The first one wins.
pub(crate) fn original_message(m: &Message<'_>) -> Option<OriginalMessage> {
    for part in m.parts.iter().skip(1) {
        if let PartType::Message(nested) = &part.body {
            return Some(OriginalMessage::from_message(nested));
        }
        let headers_only =
            is_type(part, "text", "rfc822-headers") || is_type(part, "message", "global-headers");
        let whole_but_unparsed = is_type(part, "message", "rfc822");
        if headers_only || whole_but_unparsed {
            if let Some(original) = part_bytes(part).and_then(OriginalMessage::from_header_text) {
                return Some(original);
            }
        }
    }
    None
}

fn text(v: &HeaderValue<'_>) -> Option<String> {
    match v {
        HeaderValue::Text(t) => Some(t.trim().to_string()),
        HeaderValue::TextList(l) => l.first().map(|t| t.trim().to_string()),
        _ => None,
    }
}

fn addresses(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Address(a) => a
            .iter()
            .filter_map(|a| a.address())
            .take(ORIGINAL_TO_MAX)
            .map(|s| s.trim().to_string())
            .collect(),
        HeaderValue::Text(t) => vec![strip_angles(t.trim().to_string())],
        HeaderValue::TextList(l) => l.iter().map(|t| strip_angles(t.to_string())).collect(),
        _ => Vec::new(),
    }
}

/// `<x>` → `x`; anything else unchanged.
pub(crate) fn strip_angles(s: String) -> String {
    let t = s.trim();
    match t.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
        Some(inner) => inner.trim().to_string(),
        None if t.len() == s.len() => s,
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_oversized_and_non_mail_input() {
        let big = vec![b'a'; MAIL_BYTES_MAX + 1];
        assert_eq!(
            parse_mail(&big).unwrap_err(),
            MailError::TooLarge {
                bytes: MAIL_BYTES_MAX + 1,
                max: MAIL_BYTES_MAX
            }
        );
        assert_eq!(parse_mail(b"").unwrap_err(), MailError::NotAMessage);
    }

    #[test]
    fn refuses_too_many_parts_and_headers() {
        let mut m = String::from("Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n");
        for _ in 0..PARTS_MAX + 1 {
            m.push_str("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n");
        }
        m.push_str("--b--\r\n");
        assert_eq!(
            parse_mail(m.as_bytes()).unwrap_err(),
            MailError::TooManyParts { max: PARTS_MAX }
        );
        let mut m = String::new();
        for i in 0..HEADERS_PER_PART_MAX + 1 {
            m.push_str(&format!("X-H{i}: v\r\n"));
        }
        m.push_str("\r\nbody\r\n");
        assert_eq!(
            parse_mail(m.as_bytes()).unwrap_err(),
            MailError::TooManyHeaders {
                max: HEADERS_PER_PART_MAX
            }
        );
        let m = format!("Subject: {}\r\n\r\nbody\r\n", "s".repeat(HEADER_BYTES_MAX));
        assert!(matches!(
            parse_mail(m.as_bytes()).unwrap_err(),
            MailError::HeaderTooLarge { .. }
        ));
    }

    #[test]
    fn refuses_deep_nesting() {
        let mut m = String::from("Subject: inner\r\n\r\nbody\r\n");
        for _ in 0..NESTING_DEPTH_MAX + 2 {
            m = format!("Content-Type: message/rfc822\r\n\r\n{m}");
        }
        assert_eq!(
            parse_mail(m.as_bytes()).unwrap_err(),
            MailError::TooDeep {
                max: NESTING_DEPTH_MAX
            }
        );
    }

    #[test]
    fn prescan_refuses_before_the_parser_allocates() {
        let mut headers = b"Subject: x\r\n".to_vec();
        while headers.len() < MAIL_BYTES_MAX - 8 {
            headers.extend_from_slice(b"a:b\n");
        }
        assert!(matches!(
            parse_mail(&headers).unwrap_err(),
            MailError::TooManyLines { kind: "header", .. }
        ));
    }

    #[test]
    fn a_deeply_nested_message_is_dropped_without_recursion() {
        // Built without the prescan, which would refuse it: this is the drop's own guarantee.
        let nested = "Content-Type: message/rfc822\n\n".repeat(100_000) + "Subject: x\n\nbody\n";
        let parsed = ParsedMail(MessageParser::default().parse(nested.as_bytes()).unwrap());
        assert_eq!(
            check_structure(&parsed).unwrap_err(),
            MailError::TooDeep {
                max: NESTING_DEPTH_MAX
            }
        );
        drop(parsed);
    }

    #[test]
    fn original_headers_are_bounded() {
        let many = "X-A: b\r\n".repeat(HEADERS_PER_PART_MAX + 1) + "\r\n";
        assert_eq!(OriginalMessage::from_header_text(many.as_bytes()), None);
        let body_after = "Message-ID: <a@b>\r\n\r\n".to_string() + &"X: y\r\n".repeat(10_000);
        let o = OriginalMessage::from_header_text(body_after.as_bytes()).unwrap();
        assert_eq!(o.message_id.as_deref(), Some("a@b"));
    }

    #[test]
    fn reads_original_headers() {
        let o = OriginalMessage::from_header_text(
            b"Return-Path: <b-abc@bounce.example>\r\nMessage-ID: <m1@example.com>\r\n\
              From: Shop <news@shop.example>\r\nTo: a@x.example, B <b@y.example>\r\n\
              Subject: Hello\r\n\r\n",
        )
        .unwrap();
        assert_eq!(o.message_id.as_deref(), Some("m1@example.com"));
        assert_eq!(o.return_path.as_deref(), Some("b-abc@bounce.example"));
        assert_eq!(o.from.as_deref(), Some("news@shop.example"));
        assert_eq!(o.to, vec!["a@x.example", "b@y.example"]);
        assert_eq!(o.subject.as_deref(), Some("Hello"));
        let long = format!("Message-ID: <{}@x>\r\n\r\n", "i".repeat(VALUE_BYTES_MAX));
        let o = OriginalMessage::from_header_text(long.as_bytes()).unwrap();
        assert_eq!(o.message_id, None, "an over-long id is dropped, not cut");
    }
}
