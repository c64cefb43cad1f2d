//! The field syntax of machine-readable report parts: message/delivery-status (RFC 3464 §2.1)
//! and message/feedback-report (RFC 5965 §3.1) are blocks of RFC 5322-style `Name: value`
//! fields, folded with leading whitespace, blocks separated by blank lines.
//!
//! This is not MIME (mail-parser did that and handed over the part's body); it is the few lines
//! of grammar inside one part, read with a bound on every count and size.

use crate::limits::{FIELDS_PER_BLOCK_MAX, FIELD_BLOCKS_MAX, FIELD_BYTES_MAX};

/// Why a field section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    #[error("more than {max} field blocks")]
    TooManyBlocks { max: usize },
    #[error("more than {max} fields in a block")]
    TooManyFields { max: usize },
    #[error("a field of more than {max} bytes")]
    FieldTooLarge { max: usize },
}

/// One field: the name lowercased, the value unfolded and trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    pub value: String,
}

/// A block of fields, in order.
pub(crate) type Block = Vec<Field>;

/// The value of the first field named `name` (lowercase) in a block.
pub(crate) fn get<'a>(block: &'a [Field], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
}

/// Parses field blocks. Lines that are neither a field nor a continuation are skipped (reports
/// in the wild carry stray text); the caller decides which fields are required.
pub(crate) fn parse_blocks(text: &str) -> Result<Vec<Block>, FieldError> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut current: Block = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !current.is_empty() {
                push_block(&mut blocks, std::mem::take(&mut current))?;
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = current.last_mut() {
                if last.value.len() + line.len() + 1 > FIELD_BYTES_MAX {
                    return Err(FieldError::FieldTooLarge {
                        max: FIELD_BYTES_MAX,
                    });
                }
                last.value.push(' ');
                last.value.push_str(line.trim());
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            continue;
        }
        if line.len() > FIELD_BYTES_MAX {
            return Err(FieldError::FieldTooLarge {
                max: FIELD_BYTES_MAX,
            });
        }
        if current.len() == FIELDS_PER_BLOCK_MAX {
            return Err(FieldError::TooManyFields {
                max: FIELDS_PER_BLOCK_MAX,
            });
        }
        current.push(Field {
            name: name.to_ascii_lowercase(),
            value: value.trim().to_string(),
        });
    }
    if !current.is_empty() {
        push_block(&mut blocks, current)?;
    }
    Ok(blocks)
}

fn push_block(blocks: &mut Vec<Block>, block: Block) -> Result<(), FieldError> {
    if blocks.len() == FIELD_BLOCKS_MAX {
        return Err(FieldError::TooManyBlocks {
            max: FIELD_BLOCKS_MAX,
        });
    }
    blocks.push(block);
    Ok(())
}

/// `rfc822; user@example.com` → `user@example.com` (the address-type prefix and angle brackets
/// removed). Values of another type (`x400; ...`) are returned whole.
pub(crate) fn typed_address(value: &str) -> String {
    let v = match value.split_once(';') {
        Some((kind, rest)) if kind.trim().eq_ignore_ascii_case("rfc822") => rest,
        Some((kind, rest)) if kind.trim().eq_ignore_ascii_case("utf-8") => rest,
        _ => value,
    };
    v.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fields_and_folding() {
        let text = "Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@b\r\n\
                    Diagnostic-Code: smtp; 550 5.1.1 user\r\n  unknown\r\nstray line\r\n\r\n\r\n";
        let blocks = parse_blocks(text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(get(&blocks[0], "reporting-mta"), Some("dns; mx.example"));
        assert_eq!(
            get(&blocks[1], "diagnostic-code"),
            Some("smtp; 550 5.1.1 user unknown")
        );
        assert_eq!(
            typed_address(get(&blocks[1], "final-recipient").unwrap()),
            "a@b"
        );
        assert_eq!(typed_address("rfc822;<A@B>"), "A@B");
        assert_eq!(typed_address("x400; c=us"), "x400; c=us");
    }

    #[test]
    fn bounds() {
        let many: String = (0..=FIELDS_PER_BLOCK_MAX)
            .map(|i| format!("F{i}: v\n"))
            .collect();
        assert_eq!(
            parse_blocks(&many).unwrap_err(),
            FieldError::TooManyFields {
                max: FIELDS_PER_BLOCK_MAX
            }
        );
        let blocks = "A: b\n\n".repeat(FIELD_BLOCKS_MAX + 1);
        assert_eq!(
            parse_blocks(&blocks).unwrap_err(),
            FieldError::TooManyBlocks {
                max: FIELD_BLOCKS_MAX
            }
        );
        let long = format!("A: {}\n", "x".repeat(FIELD_BYTES_MAX));
        assert!(parse_blocks(&long).is_err());
        let folded = format!("A: x\n{}", " y\n".repeat(FIELD_BYTES_MAX));
        assert!(parse_blocks(&folded).is_err());
    }
}
