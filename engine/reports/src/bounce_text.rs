//! Plain-text bounces: the shapes of qmail, Exim, Postfix, Microsoft and Gmail explanations.
//!
//! Each shape is a marker that names the MTA (a sentence it always writes) and the way it lists
//! a failed recipient. In the text between one mention of a recipient and the next, the reply
//! is the paragraph from the first SMTP reply code (`550 5.1.1 ...`); failing that, the
//! paragraph holding an enhanced status (qmail's `(#5.1.2)`); failing that, the whole text
//! (Exim's "Unrouteable address"). A recipient mentioned twice (Exchange's summary, then its
//! diagnostics) keeps the stronger of its replies. The text ends at the MTA's "copy of the
//! message" marker, whose offset is kept so the caller can read the original's headers.
//!
//! The classifier then reads the reply like any other: the patterns of `petrel-bounce` apply
//! to the text, so a bounce without a code is still classified by its words.
//!
//! Every regular expression runs over text bounded by [`crate::limits::BOUNCE_TEXT_BYTES_MAX`];
//! the `regex` crate matches in linear time, so no input makes this slow.

use std::sync::LazyLock;

use regex::Regex;

use crate::dsn::BounceFormat;
use crate::limits::{DSN_RECIPIENTS_MAX, FIELD_BYTES_MAX};

/// What a text bounce says.
#[derive(Debug)]
pub(crate) struct TextBounce {
    pub format: BounceFormat,
    pub recipients: Vec<TextRecipient>,
    /// The explanation says delivery is only delayed (a warning, not a failure).
    pub delayed: bool,
    /// Byte offset in the text where the copy of the original begins (after the marker line).
    pub original_offset: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct TextRecipient {
    pub address: String,
    pub reply: Option<String>,
}

/// A format: the marker that identifies it and how it lists recipients.
struct Shape {
    format: BounceFormat,
    marker: Regex,
    recipient: Regex,
}

/// Compiles a constant pattern; the patterns are tested, so a failure is a bug here.
fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid constant pattern")
}

/// A bare address, possibly in angle brackets, alone on its line (Exim, Exchange, old Gmail).
const ADDRESS_LINE: &str =
    r"(?m)^[ \t]*<?([^\s<>@'\x22():;,]+@[^\s<>'\x22():;,]+?)>?[ \t]*:?[ \t]*$";

static SHAPES: LazyLock<Vec<Shape>> = LazyLock::new(|| {
    vec![
        Shape {
            format: BounceFormat::Qmail,
            marker: re(r"(?i)qmail-send program|I'm afraid I wasn't able to deliver your message"),
            recipient: re(r"(?m)^<([^\s<>@]+@[^\s<>]+)>:[ \t]*$"),
        },
        Shape {
            format: BounceFormat::Exim,
            marker: re(r"(?i)This message was created automatically by mail delivery software"),
            recipient: re(ADDRESS_LINE),
        },
        Shape {
            format: BounceFormat::Postfix,
            marker: re(r"(?i)This is the (?:mail system|Postfix program) at host"),
            recipient: re(r"(?m)^<([^\s<>@]+@[^\s<>]+)>:"),
        },
        Shape {
            format: BounceFormat::Exchange,
            marker: re(
                r"(?i)Delivery has failed to these recipients|Diagnostic information for administrators|Your message to \S+ couldn't be delivered|did not reach some or all of the intended recipients",
            ),
            // A bare address line (2007 and later), the 365 headline, or Exchange 2003's
            // "user@domain on <date>" line.
            recipient: re(
                r"(?mi)^[ \t]*<?([^\s<>@'\x22():;,]+@[^\s<>'\x22():;,]+?)>?[ \t]*$|Your message to ([^\s<>@]+@[^\s<>]+?) couldn't be delivered|^[ \t]+([^\s<>@]+@[^\s<>]+) on [0-9]",
            ),
        },
        Shape {
            format: BounceFormat::Gmail,
            marker: re(
                r"(?i)Delivery to the following recipients? failed|wasn't delivered to \S+@\S+ because|Message not delivered|Delivery incomplete",
            ),
            recipient: re(
                r"(?mi)wasn't delivered to ([^\s<>@]+@[^\s<>]+?) because|^[ \t]*<?([^\s<>@'\x22():;,]+@[^\s<>'\x22():;,]+?)>?[ \t]*$",
            ),
        },
    ]
});

/// The first SMTP reply code in a block: a 4xx/5xx number followed by a space, a dash or the
/// end of a line (Postfix wraps after the code).
static REPLY: LazyLock<Regex> = LazyLock::new(|| re(r"\b[45][0-9]{2}(?:[ \t-]|\r?\n)"));
/// An enhanced status on its own (`#5.1.2`, `5.7.1`).
static ENHANCED: LazyLock<Regex> = LazyLock::new(|| re(r"#?\b[45]\.[0-9]{1,3}\.[0-9]{1,3}\b"));
/// The line after which the original message is copied.
static ORIGINAL_MARKER: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?mi)^[ \t]*-*[ \t]*(?:Below this line is a copy of the message|This is a copy of the message|Original message headers:|-+ ?Original message ?-+|Message headers follow).*$",
    )
});
/// Words that make a text a delay warning rather than a failure.
static DELAYED: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)has not yet been delivered|delivery (?:has been|is) delayed|will (?:continue|keep) trying|Delivery incomplete|temporary (?:error|failure|problem)",
    )
});
static PERMANENT: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?i)permanent(?:ly)? (?:error|failure|fatal)|failed permanently|I've given up")
});

/// Parses a text bounce: `None` when no shape's marker is in the text or no recipient is found.
pub(crate) fn parse(subject: &str, text: &str) -> Option<TextBounce> {
    let (explanation_end, original_offset) = match ORIGINAL_MARKER.find(text) {
        Some(m) => (m.start(), Some(m.end())),
        None => (text.len(), None),
    };
    let explanation = &text[..explanation_end];
    let shape = SHAPES
        .iter()
        .find(|s| s.marker.is_match(explanation) || s.marker.is_match(subject))?;
    let recipients = recipients(shape, explanation);
    if recipients.is_empty() {
        return None;
    }
    let delayed = (DELAYED.is_match(explanation) || DELAYED.is_match(subject))
        && !PERMANENT.is_match(explanation);
    Some(TextBounce {
        format: shape.format,
        recipients,
        delayed,
        original_offset,
    })
}

/// The recipients in order of first mention. Each keeps the strongest reply found after any of
/// its mentions (Exchange names a recipient twice: in the summary, then with the reply).
fn recipients(shape: &Shape, text: &str) -> Vec<TextRecipient> {
    let mentions: Vec<(usize, usize, &str)> = shape
        .recipient
        .captures_iter(text)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let addr = c.iter().skip(1).flatten().next()?;
            Some((whole.start(), whole.end(), addr.as_str()))
        })
        .take(DSN_RECIPIENTS_MAX + 1)
        .collect();
    let mut out: Vec<(TextRecipient, Strength)> = Vec::new();
    for (i, &(_, end, address)) in mentions.iter().enumerate() {
        let block_end = mentions.get(i + 1).map_or(text.len(), |m| m.0);
        let found = text.get(end..block_end).and_then(reply_in);
        let address = address.trim_end_matches('.').to_string();
        let strength = found.as_ref().map_or(Strength::None, |f| f.1);
        let reply = found.map(|f| f.0);
        match out
            .iter_mut()
            .find(|(r, _)| r.address.eq_ignore_ascii_case(&address))
        {
            Some((known, known_strength)) => {
                if strength > *known_strength {
                    known.reply = reply;
                    *known_strength = strength;
                }
            }
            None => out.push((TextRecipient { address, reply }, strength)),
        }
    }
    out.into_iter().map(|(r, _)| r).collect()
}

/// How much a reply found in a text says, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strength {
    None,
    /// Only the MTA's words (Exim's "Unrouteable address").
    Text,
    /// An enhanced status without a reply code (qmail's "(#5.1.2)").
    Status,
    /// An SMTP reply code.
    Code,
}

/// The reply in a block: from the first reply code to the end of its paragraph; else the
/// paragraph holding an enhanced status; else the whole block. Whitespace is collapsed and the
/// result is at most [`FIELD_BYTES_MAX`] bytes.
fn reply_in(block: &str) -> Option<(String, Strength)> {
    let (rest, strength) = if let Some(m) = REPLY.find(block) {
        (&block[m.start()..], Strength::Code)
    } else if let Some(m) = ENHANCED.find(block) {
        let start = block[..m.start()].rfind("\n\n").map_or(0, |i| i + 2);
        (block[start..].trim_start(), Strength::Status)
    } else {
        (block.trim_start(), Strength::Text)
    };
    let end = if strength == Strength::Text {
        rest.len()
    } else {
        rest.find("\n\n")
            .or_else(|| rest.find("\r\n\r\n"))
            .unwrap_or(rest.len())
    };
    let mut reply = String::new();
    for word in rest[..end].split_whitespace() {
        if reply.len() + word.len() + 1 > FIELD_BYTES_MAX {
            break;
        }
        if !reply.is_empty() {
            reply.push(' ');
        }
        reply.push_str(word);
    }
    let reply = reply.trim_end_matches(['\'', '>', '"']).trim().to_string();
    Some((reply, strength)).filter(|r| !r.0.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_compile_and_pick_their_format() {
        assert_eq!(SHAPES.len(), 5);
        let t = "Hi. This is the qmail-send program at mx.example.\n\n<a@b.example>:\n\
                 Remote host said: 550 5.1.1 no such user\n\n--- Below this line is a copy of the message.\n\nSubject: x\n\n";
        let b = parse("failure notice", t).unwrap();
        assert_eq!(b.format, BounceFormat::Qmail);
        assert_eq!(b.recipients[0].address, "a@b.example");
        assert_eq!(
            b.recipients[0].reply.as_deref(),
            Some("550 5.1.1 no such user")
        );
        assert!(!b.delayed);
        assert!(t[b.original_offset.unwrap()..].contains("Subject: x"));
    }

    #[test]
    fn no_marker_no_bounce() {
        assert!(parse("Hello", "Hi,\n<a@b.example>:\n550 no\n").is_none());
        assert!(parse(
            "Undelivered",
            "This is the mail system at host x.\n\nno recipients here\n"
        )
        .is_none());
    }

    #[test]
    fn enhanced_status_without_reply_code() {
        let t = "This is the qmail-send program at x.\n\n<a@nohost.example>:\n\
                 Sorry, I couldn't find any host named nohost.example. (#5.1.2)\n";
        let b = parse("", t).unwrap();
        let reply = b.recipients[0].reply.as_deref().unwrap();
        assert!(
            reply.starts_with("Sorry") && reply.ends_with("(#5.1.2)"),
            "{reply}"
        );
    }
}
