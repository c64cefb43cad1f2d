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
//! message/rfc822 part with a base64 or quoted-printable transfer encoding (RFC 2046 §5.2.1
//! forbids it), and the children of a multipart/digest (message/rfc822 by default, so they may
//! be encoded too). Reports never use either, so both are refused here rather than bounded.

use crate::limits::{BOUNDARY_LINES_MAX, HEADER_LINES_MAX};
use crate::mail::MailError;

/// The bytes of a Content-Type or Content-Transfer-Encoding value kept for the check (their
/// meaningful start is a few bytes; the rest is parameters).
const VALUE_PREFIX_BYTES_MAX: usize = 64;

/// The field being read: which one, and the start of its value with whitespace removed.
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
        for &b in bytes {
            if self.value.len() == VALUE_PREFIX_BYTES_MAX {
                return;
            }
            if !b.is_ascii_whitespace() {
                self.value.push(b.to_ascii_lowercase());
            }
        }
    }
}

/// What the current run of header lines has said.
#[derive(Default)]
struct Block {
    message_type: bool,
    encoded: bool,
}

impl Block {
    /// Takes in a completed field.
    fn note(&mut self, field: &Field) -> Result<(), MailError> {
        match field.kind {
            Kind::ContentType => {
                if field.value.starts_with(b"multipart/digest") {
                    return Err(MailError::Unsupported("multipart/digest"));
                }
                self.message_type |= field.value.starts_with(b"message/");
            }
            Kind::TransferEncoding => {
                self.encoded |= field.value.starts_with(b"base64")
                    || field.value.starts_with(b"quoted-printable");
            }
            Kind::Other => {}
        }
        Ok(())
    }

    fn check(&self) -> Result<(), MailError> {
        if self.message_type && self.encoded {
            return Err(MailError::Unsupported(
                "a message/* part with a transfer encoding",
            ));
        }
        Ok(())
    }
}

/// Scans the raw mail (see the module docs).
pub(crate) fn prescan(raw: &[u8]) -> Result<(), MailError> {
    let mut header_lines = 0usize;
    let mut boundary_lines = 0usize;
    let mut block = Block::default();
    let mut field: Option<Field> = None;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"--") {
            boundary_lines += 1;
            if boundary_lines > BOUNDARY_LINES_MAX {
                return Err(MailError::TooManyLines {
                    kind: "boundary",
                    max: BOUNDARY_LINES_MAX,
                });
            }
        }
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some(f) = field.as_mut() {
                f.append(line);
            }
            continue;
        }
        if let Some(done) = field.take() {
            block.note(&done)?;
        }
        match field_name(line) {
            Some(colon) => {
                header_lines += 1;
                if header_lines > HEADER_LINES_MAX {
                    return Err(MailError::TooManyLines {
                        kind: "header",
                        max: HEADER_LINES_MAX,
                    });
                }
                let mut f = Field::new(&line[..colon]);
                f.append(&line[colon + 1..]);
                field = Some(f);
            }
            None => {
                // A blank line, a boundary or body text ends the run of header lines.
                block.check()?;
                block = Block::default();
            }
        }
    }
    if let Some(done) = field.take() {
        block.note(&done)?;
    }
    block.check()
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

    #[test]
    fn refuses_content_hidden_from_the_scan() {
        let encoded = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: BASE64\r\n\r\nU3ViamVjdDogeA==\r\n";
        assert!(matches!(prescan(encoded), Err(MailError::Unsupported(_))));
        let folded = b"Content-Transfer-Encoding: quoted-printable\r\nContent-Type:\r\n message/global\r\n\r\nx\r\n";
        assert!(matches!(prescan(folded), Err(MailError::Unsupported(_))));
        let digest =
            b"Content-Type: multipart/\r\n Digest; boundary=d\r\n\r\n--d\r\n\r\nx\r\n--d--\r\n";
        assert_eq!(
            prescan(digest),
            Err(MailError::Unsupported("multipart/digest"))
        );
        // A file named after a digest is not one.
        let named = b"Content-Type: text/plain; name=\"digest.txt\"\r\n\r\nx\r\n";
        assert_eq!(prescan(named), Ok(()));
        // The two fields in different parts are not one encoded message.
        let apart = b"Content-Type: message/rfc822\r\n\r\nSubject: x\r\nContent-Transfer-Encoding: base64\r\n\r\nbody\r\n";
        assert_eq!(prescan(apart), Ok(()));
    }
}
