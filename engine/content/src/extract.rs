//! From raw message bytes to what the rules read: the HTML scan, the plain text, the subject
//! and the From domain. MIME goes through `mail-parser` over a bounded window
//! ([`MESSAGE_BYTES_SCANNED_MAX`]) after a line count that bounds the parser's allocations;
//! a window the count refuses, or the parser gives up on, is tokenized raw as HTML instead, so
//! a malformed mail is scored, not waved through.

use mail_parser::{HeaderName, MessageParser, MimeHeaders, PartType};

use crate::domain::cut;
use crate::html::Scan;
use crate::limits::{
    BOUNDARY_LINES_MAX, DISPLAY_NAME_BYTES_MAX, HEADER_LINES_MAX, HTML_BYTES_SCANNED_MAX,
    MESSAGE_BYTES_SCANNED_MAX, PARTS_MAX, TEXT_BYTES_SCANNED_MAX,
};

/// The parser of what the rules read: the MIME headers (needed for the parts), From and
/// Subject; every other header is skipped, not parsed (addresses of To and Cc, Message-IDs,
/// dates, Received chains cost more than the rules on a short message).
static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .header_address(HeaderName::From)
        .header_text(HeaderName::Subject)
        .default_header_ignore()
});

/// What the rules read from one message.
#[derive(Debug, Default)]
pub struct Content {
    pub scan: Scan,
    /// Plain-text parts and the subject, lowercase, at most [`TEXT_BYTES_SCANNED_MAX`] bytes.
    pub text: String,
    /// The From address's domain, lowercase, when the header has one.
    pub from_domain: Option<String>,
    /// The From address's display name, at most [`DISPLAY_NAME_BYTES_MAX`] bytes.
    pub display_name: Option<String>,
    /// The MIME parser was not used (window refused by the line count, or unparsable).
    pub raw: bool,
}

/// Reads `message` (bounded; never panics).
pub fn extract(message: &[u8]) -> Content {
    let window = &message[..message.len().min(MESSAGE_BYTES_SCANNED_MAX)];
    let mut content = Content::default();
    let parsed = lines_within_bounds(window)
        .then(|| PARSER.parse(window))
        .flatten();
    let Some(msg) = parsed else {
        content.raw = true;
        let html = String::from_utf8_lossy(&window[..window.len().min(HTML_BYTES_SCANNED_MAX)]);
        content.scan.add_html(&html);
        return content;
    };
    let from = msg.from().and_then(|a| a.first());
    content.display_name = from
        .and_then(|a| a.name())
        .map(|n| cut(n, DISPLAY_NAME_BYTES_MAX).to_string());
    content.from_domain = from
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.trim().trim_end_matches('>').to_ascii_lowercase());
    if let Some(subject) = msg.subject() {
        push_text(&mut content.text, subject);
    }
    let mut html_left = HTML_BYTES_SCANNED_MAX;
    for part in msg.parts.iter().take(PARTS_MAX) {
        if part.is_content_type("text", "calendar") {
            continue;
        }
        match &part.body {
            PartType::Html(html) if html_left > 0 => {
                let html = cut(html, html_left);
                html_left -= html.len();
                content.scan.add_html(html);
            }
            PartType::Text(text) => push_text(&mut content.text, text),
            _ => {}
        }
    }
    content
}

/// Appends lowercase text up to [`TEXT_BYTES_SCANNED_MAX`].
fn push_text(out: &mut String, text: &str) {
    let room = TEXT_BYTES_SCANNED_MAX.saturating_sub(out.len());
    if room == 0 {
        return;
    }
    out.push_str(&cut(text, room).to_lowercase());
    out.push('\n');
}

/// Whether the window has few enough header-like and boundary-like lines for `mail-parser`'s
/// allocations to stay small (one pass, no allocation).
fn lines_within_bounds(window: &[u8]) -> bool {
    let (mut headers, mut boundaries) = (0usize, 0usize);
    let mut start = 0;
    // Line starts found with memchr (SIMD), not byte by byte.
    let ends = memchr::memchr_iter(b'\n', window).chain(std::iter::once(window.len()));
    for end in ends {
        let line = &window[start..end];
        start = end + 1;
        if line.starts_with(b"--") {
            boundaries += 1;
        } else if is_field_start(line) {
            headers += 1;
        }
        if headers > HEADER_LINES_MAX || boundaries > BOUNDARY_LINES_MAX {
            return false;
        }
    }
    true
}

/// `name:` at the start of a line, the name printable ASCII without spaces.
fn is_field_start(line: &[u8]) -> bool {
    // The colon is found with memchr (SIMD: a base64 line has none, and costs a few vector
    // compares), then the name before it is checked.
    let head = &line[..line.len().min(80)];
    let Some(colon) = memchr::memchr(b':', head) else {
        return false;
    };
    colon > 0 && head[..colon].iter().all(|&b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_alternative() {
        let m = b"From: \"Shop\" <news@Shop.Example>\r\nSubject: Your Order\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
Plain Words https://shop.example/x\r\n--b1\r\nContent-Type: text/html\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"https://shop.example/o\">Order</a>\r\n--b1--\r\n";
        let c = extract(m);
        assert!(!c.raw);
        assert_eq!(c.from_domain.as_deref(), Some("shop.example"));
        assert!(c.text.contains("your order") && c.text.contains("plain words"));
        assert_eq!(c.scan.links.len(), 1);
        assert_eq!(c.scan.links[0].href, "https://shop.example/o");
    }

    #[test]
    fn too_many_header_lines_are_scanned_raw() {
        let mut m = b"a:b\n".repeat(HEADER_LINES_MAX + 1);
        m.extend_from_slice(b"\n<a href=\"http://192.0.2.1/\">x</a>");
        let c = extract(&m);
        assert!(c.raw);
        assert_eq!(c.scan.links.len(), 1);
    }
}
