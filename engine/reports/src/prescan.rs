//! A line scan of the raw mail before `mail-parser` sees it, so the parser's own allocations are
//! bounded too.
//!
//! `mail-parser` builds a 120-byte header entry per header field and a 160-byte part per MIME
//! part, and only afterwards can the structure be checked against [`crate::limits`]. Measured on
//! a 5 MiB mail of `a:b` lines (release build): 166 MB resident before the check refused it; of
//! `--b` boundaries: 188 MB. So the raw mail is scanned first, which costs one pass and no
//! allocation, and refused when it has more lines that could start a header field than
//! [`HEADER_LINES_MAX`] or more lines that could be a boundary than [`BOUNDARY_LINES_MAX`].
//!
//! Content hidden from this scan is content `mail-parser` decodes and parses again: a
//! message/* part with a base64 or quoted-printable transfer encoding (RFC 2046 §5.2.1 forbids
//! it, some MTAs do it anyway), and an encoded child of a multipart/digest (message/rfc822 by
//! default). The scan measures the bodies of such parts and refuses a mail whose total is over
//! [`ENCODED_MESSAGE_BYTES_MAX`]: 256 KiB of base64 decodes to 192 KiB, which at worst is 49 000
//! header fields (6 MB of parser entries), while a returned original's headers fit easily.

use crate::limits::{BOUNDARY_LINES_MAX, ENCODED_MESSAGE_BYTES_MAX, HEADER_LINES_MAX};
use crate::mail::MailError;

/// The bytes of a Content-Type or Content-Transfer-Encoding value kept for the check: enough
/// for the type and a `boundary` parameter (at most 70 characters, RFC 2046 §5.1.1) after
/// others.
const VALUE_BYTES_KEPT_MAX: usize = 512;
/// Boundaries remembered, so that an encoded part ends only at one of them.
const BOUNDARIES_MAX: usize = crate::limits::PARTS_MAX;

/// The field being read: which one, and the start of its value (unfolded).
struct Field {
    kind: Kind,
    value: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ContentType,
    TransferEncoding,
    Other,
}

impl Field {
    fn new(name: &[u8]) -> Field {
        let name = name.trim_ascii();
        let kind = if name.eq_ignore_ascii_case(b"content-type") {
            Kind::ContentType
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            Kind::TransferEncoding
        } else {
            Kind::Other
        };
        Field {
            kind,
            value: Vec::new(),
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.kind == Kind::Other {
            return;
        }
        let room = VALUE_BYTES_KEPT_MAX - self.value.len();
        self.value
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The value's start, without whitespace, lowercased (for comparing the type).
    fn squeezed(&self) -> Vec<u8> {
        self.value
            .iter()
            .filter(|b| !b.is_ascii_whitespace())
            .map(u8::to_ascii_lowercase)
            .collect()
    }

    /// The `boundary` parameter of a Content-Type, quoted or not, as written.
    fn boundary(&self) -> Option<&[u8]> {
        let v = &self.value;
        let key = b"boundary=";
        let at = v
            .windows(key.len())
            .position(|w| w.eq_ignore_ascii_case(key))?;
        let rest = &v[at + key.len()..];
        let b = match rest.strip_prefix(b"\"") {
            Some(quoted) => &quoted[..quoted.iter().position(|&c| c == b'"')?],
            None => {
                let end = rest
                    .iter()
                    .position(|&c| c == b';' || c.is_ascii_whitespace())
                    .unwrap_or(rest.len());
                &rest[..end]
            }
        };
        (!b.is_empty()).then_some(b)
    }
}

/// What the current run of header lines has said.
#[derive(Default)]
struct Block {
    has_content_type: bool,
    message_type: bool,
    digest: bool,
    encoded: bool,
}

impl Block {
    /// Takes in a completed field.
    fn note(&mut self, field: &Field) {
        let value = field.squeezed();
        match field.kind {
            Kind::ContentType => {
                self.has_content_type = true;
                self.digest |= value.starts_with(b"multipart/digest");
                self.message_type |= value.starts_with(b"message/");
            }
            Kind::TransferEncoding => {
                self.encoded |=
                    value.starts_with(b"base64") || value.starts_with(b"quoted-printable");
            }
            Kind::Other => {}
        }
    }
}

/// The scan's state between lines.
#[derive(Default)]
struct Scanner {
    header_lines: usize,
    boundary_lines: usize,
    block: Block,
    field: Option<Field>,
    /// A multipart/digest was declared: its children without a Content-Type are messages.
    digest_seen: bool,
    /// The boundaries declared so far (at most `BOUNDARIES_MAX`).
    boundaries: Vec<Vec<u8>>,
    /// Inside the body of a part that mail-parser will decode and parse again.
    in_encoded_message: bool,
    encoded_message_bytes: usize,
}

impl Scanner {
    fn line(&mut self, line: &[u8]) -> Result<(), MailError> {
        if line.starts_with(b"--") {
            // Inside an encoded part, only a declared boundary ends it (a quoted-printable
            // message may hold "--" lines of its own).
            if self.in_encoded_message && !self.is_boundary(&line[2..]) {
                return self.count_encoded(line);
            }
            self.in_encoded_message = false;
            self.boundary_lines += 1;
            if self.boundary_lines > BOUNDARY_LINES_MAX {
                return Err(MailError::TooManyLines {
                    kind: "boundary",
                    max: BOUNDARY_LINES_MAX,
                });
            }
        } else if self.in_encoded_message {
            return self.count_encoded(line);
        }
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some(f) = self.field.as_mut() {
                f.append(line);
            }
            return Ok(());
        }
        if let Some(done) = self.field.take() {
            self.block.note(&done);
            if done.kind == Kind::ContentType && self.boundaries.len() < BOUNDARIES_MAX {
                if let Some(b) = done.boundary() {
                    self.boundaries.push(b.to_vec());
                }
            }
        }
        match field_name(line) {
            Some(colon) => {
                self.header_lines += 1;
                if self.header_lines > HEADER_LINES_MAX {
                    return Err(MailError::TooManyLines {
                        kind: "header",
                        max: HEADER_LINES_MAX,
                    });
                }
                let mut f = Field::new(&line[..colon]);
                f.append(&line[colon + 1..]);
                self.field = Some(f);
            }
            // A blank line, a boundary or body text ends the run of header lines.
            None => self.end_block(line.is_empty()),
        }
        Ok(())
    }

    /// Whether `--<after_dashes>` is a delimiter line of a declared boundary: the boundary,
    /// then nothing, `--` (the close) or whitespace (RFC 2046 §5.1.1).
    fn is_boundary(&self, after_dashes: &[u8]) -> bool {
        self.boundaries.iter().any(|b| {
            after_dashes.strip_prefix(b.as_slice()).is_some_and(|rest| {
                let rest = rest.strip_prefix(b"--").unwrap_or(rest);
                rest.iter().all(u8::is_ascii_whitespace)
            })
        })
    }

    fn count_encoded(&mut self, line: &[u8]) -> Result<(), MailError> {
        self.encoded_message_bytes += line.len() + 1;
        if self.encoded_message_bytes > ENCODED_MESSAGE_BYTES_MAX {
            return Err(MailError::EncodedMessageTooLarge {
                max: ENCODED_MESSAGE_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// Closes a run of header lines; after a blank line, a body follows.
    fn end_block(&mut self, body_follows: bool) {
        let block = std::mem::take(&mut self.block);
        self.digest_seen |= block.digest;
        let digest_child = self.digest_seen && !block.has_content_type;
        if body_follows && block.encoded && (block.message_type || digest_child) {
            self.in_encoded_message = true;
        }
    }
}

/// Scans the raw mail (see the module docs).
pub(crate) fn prescan(raw: &[u8]) -> Result<(), MailError> {
    let mut scanner = Scanner::default();
    for line in raw.split(|&b| b == b'\n') {
        scanner.line(line.strip_suffix(b"\r").unwrap_or(line))?;
    }
    Ok(())
}

/// The index of the colon when the line starts with a field name (RFC 5322 `ftext`, and the
/// obsolete space before the colon).
fn field_name(line: &[u8]) -> Option<usize> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    let ok = !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b));
    ok.then_some(colon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_reports_pass() {
        let dsn = b"Content-Type: multipart/report; report-type=delivery-status;\r\n\
                    \tboundary=\"b\"\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n\
                    Final-Recipient: rfc822; a@b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\
                    Content-Transfer-Encoding: 7bit\r\n\r\nSubject: x\r\n\r\nbody\r\n--b--\r\n";
        assert_eq!(prescan(dsn), Ok(()));
        let attachment =
            b"Content-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\nH4sI\r\n";
        assert_eq!(prescan(attachment), Ok(()));
    }

    #[test]
    fn counts_lines_before_parsing() {
        let headers = "a:b\n".repeat(HEADER_LINES_MAX + 1);
        assert_eq!(
            prescan(headers.as_bytes()),
            Err(MailError::TooManyLines {
                kind: "header",
                max: HEADER_LINES_MAX
            })
        );
        let dashes = "--b\n".repeat(BOUNDARY_LINES_MAX + 1);
        assert!(matches!(
            prescan(dashes.as_bytes()),
            Err(MailError::TooManyLines {
                kind: "boundary",
                ..
            })
        ));
    }

    fn encoded_part(ctype: &str, body_bytes: usize) -> String {
        let line = "U3ViamVjdDogeA0KDQpib2R5DQpTdWJqZWN0OiB4DQoNCmJvZHkNClN1YmplY3Q6IHgN\r\n";
        let body = line.repeat(body_bytes / line.len() + 1);
        format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n{ctype}\
             Content-Transfer-Encoding: base64\r\n\r\n{body}--b--\r\n"
        )
    }

    #[test]
    fn bounds_content_hidden_from_the_scan() {
        let too_large = Err(MailError::EncodedMessageTooLarge {
            max: ENCODED_MESSAGE_BYTES_MAX,
        });
        let small = encoded_part("Content-Type: message/rfc822\r\n", 4096);
        assert_eq!(prescan(small.as_bytes()), Ok(()));
        let big = encoded_part(
            "Content-Type: message/rfc822\r\n",
            2 * ENCODED_MESSAGE_BYTES_MAX,
        );
        assert_eq!(prescan(big.as_bytes()), too_large);
        let folded = encoded_part(
            "Content-Type:\r\n Message/Global\r\n",
            2 * ENCODED_MESSAGE_BYTES_MAX,
        );
        assert_eq!(prescan(folded.as_bytes()), too_large);
        // A digest's child without a Content-Type is a message too.
        let digest_child = encoded_part("", 2 * ENCODED_MESSAGE_BYTES_MAX).replacen(
            "multipart/mixed",
            "multipart/\r\n digest",
            1,
        );
        assert_eq!(prescan(digest_child.as_bytes()), too_large);
        // An encoded attachment of another type is not parsed again, so not counted.
        let attachment = encoded_part(
            "Content-Type: application/gzip\r\n",
            2 * ENCODED_MESSAGE_BYTES_MAX,
        );
        assert_eq!(prescan(attachment.as_bytes()), Ok(()));
        // A "--" line that is not a declared boundary does not end an encoded part.
        let dashes = encoded_part(
            "Content-Type: message/rfc822\r\n",
            2 * ENCODED_MESSAGE_BYTES_MAX,
        )
        .replacen(
            "base64\r\n\r\n",
            "quoted-printable\r\n\r\n-- \r\n--bx\r\n",
            1,
        );
        assert_eq!(prescan(dashes.as_bytes()), too_large);
        let quoted = small.replace("boundary=b", "boundary=\"b\"; charset=x");
        assert_eq!(prescan(quoted.as_bytes()), Ok(()));
        // A nested message's own encoding applies to its body, not to the message part.
        let apart = b"Content-Type: message/rfc822\r\n\r\nSubject: x\r\nContent-Transfer-Encoding: base64\r\n\r\nbody\r\n";
        assert_eq!(prescan(apart), Ok(()));
    }
}
