//! `X-Petrel-Tag` and `X-Petrel-Metadata`: the tenant's own labels for a message, read at DATA
//! time and removed before signing and delivery (pure: bytes in, values and byte ranges out).
//!
//! # What a tenant may send
//!
//! - **Tags**: up to [`TAGS_MAX`] `X-Petrel-Tag` headers, one tag each. A tag is the unfolded
//!   field value with surrounding white space trimmed: non-empty, at most [`TAG_BYTES_MAX`] bytes,
//!   UTF-8 without control characters (C0 including tab, DEL, C1). Inner spaces are kept; tags are kept in
//!   header order, duplicates included (they are what the client sent). This is Mailgun's `o:tag`
//!   / SendGrid's categories, with the same small cap, so a tag stays a label, not a payload.
//! - **Metadata**: at most one `X-Petrel-Metadata` header holding a JSON object of at most
//!   [`METADATA_BYTES_MAX`] bytes (unfolded, trimmed). Keys are non-empty strings; values are
//!   strings, numbers or booleans (no null, arrays or nested objects), like Mailgun's
//!   user-variables and SendGrid's `custom_args`: flat values that a webhook consumer can index.
//!   The validated text is kept as sent (key order and number spelling preserved); a key given
//!   twice keeps JSON's usual "last one wins" when read, and is not refused.
//!
//! Field names match case-insensitively and folded fields (continuation lines starting with a
//! space or tab) are unfolded as RFC 5322 §2.2.3 says: the CRLF goes, the white space stays.
//! Other `X-Petrel-*` fields are not ours to define and pass through untouched.
//!
//! Anything else is refused with a [`PetrelHeaderError`] whose `Display` is the precise reason;
//! the engine answers `550 5.6.0 <reason>` (see `CheckError::reply`). Peer-supplied text that
//! appears in a reason is escaped (`{:?}`) and shortened, so it cannot break the reply line.
//!
//! [`parse_petrel_headers`] never panics on any input (a proptest feeds it arbitrary bytes).

use std::ops::Range;

/// Most `X-Petrel-Tag` headers one message may carry.
pub const TAGS_MAX: usize = 5;
/// Longest tag, in bytes of the trimmed, unfolded value.
pub const TAG_BYTES_MAX: usize = 128;
/// Longest `X-Petrel-Metadata` value, in bytes of the trimmed, unfolded JSON text.
pub const METADATA_BYTES_MAX: usize = 1024;
/// Longest peer-supplied text (a metadata key) quoted in a refusal, in chars.
const QUOTED_CHARS_MAX: usize = 64;

/// The field name of a tag.
pub const TAG_FIELD: &str = "X-Petrel-Tag";
/// The field name of the metadata.
pub const METADATA_FIELD: &str = "X-Petrel-Metadata";
/// What every Petrel field name starts with (the fast pre-check looks for this).
pub const PETREL_FIELD_PREFIX: &str = "X-Petrel-";

/// What the X-Petrel headers of a message said, and where they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PetrelHeaders {
    /// Tags in header order; at most [`TAGS_MAX`], each at most [`TAG_BYTES_MAX`] bytes.
    pub tags: Vec<String>,
    /// The metadata JSON object as sent (unfolded, trimmed); at most [`METADATA_BYTES_MAX`] bytes.
    pub metadata: Option<String>,
    /// Byte ranges of whole fields (name to final CRLF, continuation lines included) to cut
    /// from the message. Sorted, disjoint, inside the header section.
    pub remove: Vec<Range<usize>>,
}

/// Why the X-Petrel headers of a message were refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PetrelHeaderError {
    /// More tag headers than allowed.
    #[error("more than {max} X-Petrel-Tag headers")]
    TooManyTags { max: usize },
    /// A tag header with nothing but white space.
    #[error("X-Petrel-Tag {number} is empty")]
    TagEmpty { number: usize },
    /// A tag longer than allowed.
    #[error("X-Petrel-Tag {number} is {len_bytes} bytes, more than {max_bytes}")]
    TagTooLong {
        number: usize,
        len_bytes: usize,
        max_bytes: usize,
    },
    /// A tag that is not UTF-8 or holds a control character.
    #[error("X-Petrel-Tag {number} is not UTF-8 text without control characters")]
    TagNotText { number: usize },
    /// More than one metadata header.
    #[error("more than one X-Petrel-Metadata header")]
    DuplicateMetadata,
    /// Metadata longer than allowed.
    #[error("X-Petrel-Metadata is {len_bytes} bytes, more than {max_bytes}")]
    MetadataTooLarge { len_bytes: usize, max_bytes: usize },
    /// Metadata that is not valid JSON (serde_json's reason, with line and column).
    #[error("X-Petrel-Metadata is not valid JSON: {reason}")]
    MetadataNotJson { reason: String },
    /// Metadata that is JSON but not an object.
    #[error("X-Petrel-Metadata must be a JSON object")]
    MetadataNotObject,
    /// A metadata key that is the empty string.
    #[error("X-Petrel-Metadata has an empty key")]
    MetadataKeyEmpty,
    /// A metadata value that is null, an array or an object.
    #[error("X-Petrel-Metadata value of {key} must be a string, number or boolean")]
    MetadataValueNotScalar {
        /// The key, escaped and shortened for the reply line.
        key: String,
    },
}

/// True when some field name of `fields` (as [`crate::parse_headers`] returns them) starts
/// with `X-Petrel-`: the cheap test that keeps the common case (no such field) copy-free.
pub fn has_petrel_field(fields: &[(&str, &[u8])]) -> bool {
    fields
        .iter()
        .any(|(name, _)| is_petrel_name(name.as_bytes()))
}

fn is_petrel_name(name: &[u8]) -> bool {
    let prefix = PETREL_FIELD_PREFIX.as_bytes();
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Reads the X-Petrel headers of the header section of `data` (up to the first empty line or
/// the end of the data). Lines end at LF (a CR before it belongs to the line end); the caller
/// has usually validated the section already with [`crate::parse_headers`].
pub fn parse_petrel_headers(data: &[u8]) -> Result<PetrelHeaders, PetrelHeaderError> {
    let mut out = PetrelHeaders::default();
    for field in Fields::new(data) {
        let name = field.name;
        let is_tag = name.eq_ignore_ascii_case(TAG_FIELD.as_bytes());
        if !is_tag && !name.eq_ignore_ascii_case(METADATA_FIELD.as_bytes()) {
            continue;
        }
        let value = unfold(&data[field.value.clone()]);
        let value = value.trim_ascii();
        if is_tag {
            if out.tags.len() == TAGS_MAX {
                return Err(PetrelHeaderError::TooManyTags { max: TAGS_MAX });
            }
            out.tags.push(check_tag(value, out.tags.len() + 1)?);
        } else {
            if out.metadata.is_some() {
                return Err(PetrelHeaderError::DuplicateMetadata);
            }
            out.metadata = Some(check_metadata(value)?);
        }
        out.remove.push(field.whole);
    }
    Ok(out)
}

/// Appends `data` to `out` without the byte ranges in `remove` (sorted, disjoint).
pub fn copy_without(data: &[u8], remove: &[Range<usize>], out: &mut Vec<u8>) {
    let mut pos = 0;
    for r in remove {
        let (start, end) = (r.start.min(data.len()), r.end.min(data.len()));
        if start >= pos {
            out.extend_from_slice(&data[pos..start]);
        }
        pos = pos.max(end);
    }
    out.extend_from_slice(&data[pos..]);
}

fn check_tag(value: &[u8], number: usize) -> Result<String, PetrelHeaderError> {
    if value.is_empty() {
        return Err(PetrelHeaderError::TagEmpty { number });
    }
    if value.len() > TAG_BYTES_MAX {
        return Err(PetrelHeaderError::TagTooLong {
            number,
            len_bytes: value.len(),
            max_bytes: TAG_BYTES_MAX,
        });
    }
    match std::str::from_utf8(value) {
        Ok(s) if !s.chars().any(char::is_control) => Ok(s.to_string()),
        _ => Err(PetrelHeaderError::TagNotText { number }),
    }
}

fn check_metadata(value: &[u8]) -> Result<String, PetrelHeaderError> {
    if value.len() > METADATA_BYTES_MAX {
        return Err(PetrelHeaderError::MetadataTooLarge {
            len_bytes: value.len(),
            max_bytes: METADATA_BYTES_MAX,
        });
    }
    let text = std::str::from_utf8(value).map_err(|_| PetrelHeaderError::MetadataNotJson {
        reason: "not UTF-8".into(),
    })?;
    let parsed: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PetrelHeaderError::MetadataNotJson {
            reason: e.to_string(),
        })?;
    let serde_json::Value::Object(map) = parsed else {
        return Err(PetrelHeaderError::MetadataNotObject);
    };
    for (key, value) in &map {
        if key.is_empty() {
            return Err(PetrelHeaderError::MetadataKeyEmpty);
        }
        if value.is_null() || value.is_array() || value.is_object() {
            return Err(PetrelHeaderError::MetadataValueNotScalar { key: quoted(key) });
        }
    }
    Ok(text.to_string())
}

/// `key` escaped (`{:?}`: quotes, no raw control characters) and shortened.
fn quoted(key: &str) -> String {
    let short: String = key.chars().take(QUOTED_CHARS_MAX).collect();
    if short.len() < key.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

/// The value with every line break removed (a CRLF or a lone LF; the white space after stays).
fn unfold(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect()
}

/// One header field's byte ranges.
struct Field<'a> {
    name: &'a [u8],
    /// After the colon up to (not including) the final line break.
    value: Range<usize>,
    /// From the name to just after the final line break.
    whole: Range<usize>,
}

/// The fields of a header section, continuation lines joined to their field. A line without a
/// colon is skipped (the strict checks refuse those before this runs).
struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Fields { data, pos: 0 }
    }

    /// (end of the line's content, start of the next line) for the line at `pos`.
    fn line_end(&self, pos: usize) -> (usize, usize) {
        let rest = &self.data[pos..];
        match memchr::memchr(b'\n', rest) {
            Some(lf) => {
                let content = if lf > 0 && rest[lf - 1] == b'\r' {
                    lf - 1
                } else {
                    lf
                };
                (pos + content, pos + lf + 1)
            }
            None => (self.data.len(), self.data.len()),
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        loop {
            let start = self.pos;
            if start >= self.data.len() {
                return None;
            }
            let (mut content_end, mut next) = self.line_end(start);
            if content_end == start {
                // The empty line: the header section is over.
                self.pos = self.data.len();
                return None;
            }
            while next < self.data.len() && matches!(self.data[next], b' ' | b'\t') {
                (content_end, next) = self.line_end(next);
            }
            self.pos = next;
            let first_line = &self.data[start..content_end];
            let Some(colon) = memchr::memchr(b':', first_line) else {
                continue;
            };
            return Some(Field {
                name: &first_line[..colon],
                value: start + colon + 1..content_end,
                whole: start..next,
            });
        }
    }
}

#[cfg(test)]
#[path = "petrel_headers_tests.rs"]
mod tests;
