//! Every size and count the checker reads, named, with its reason. Past a bound the checker
//! stops reading (it scores what it has seen); it never allocates in proportion to more.

/// Bytes of the message handed to the MIME parser. `mail-parser` allocates per header field
/// (about 120 bytes) and per part (about 160 bytes), so the window bounds that, and a phishing
/// mail is small: the 24 samples in `testdata/phish` are all under 8 KiB. Content past the
/// window is not scored (a mail padded ahead of its HTML part escapes the check; it stays
/// subject to every other rule of the platform).
pub const MESSAGE_BYTES_SCANNED_MAX: usize = 256 * 1024;

/// Lines of the window that could start a header field (`name:`), at most, before the window
/// is scanned raw instead of MIME-parsed: with this, the parser's header entries stay under
/// half a megabyte.
pub const HEADER_LINES_MAX: usize = 4096;

/// Lines of the window that could be a MIME boundary (`--...`), at most, before the window is
/// scanned raw instead of MIME-parsed (each can open a part of about 160 bytes).
pub const BOUNDARY_LINES_MAX: usize = 512;

/// MIME parts looked at (text/html and text/plain leaves), at most.
pub const PARTS_MAX: usize = 32;

/// Bytes of HTML, over all parts, handed to the tokenizer. Marketing mail rarely passes
/// 100 KiB of HTML; the links that matter are near the top.
pub const HTML_BYTES_SCANNED_MAX: usize = 192 * 1024;

/// Bytes of plain text, over all parts, searched for URLs and wording.
pub const TEXT_BYTES_SCANNED_MAX: usize = 64 * 1024;

/// Bytes of visible HTML text kept for the wording rule.
pub const VISIBLE_TEXT_BYTES_MAX: usize = 64 * 1024;

/// Links (`<a href>`, `<area href>`, URLs in text) scored per message, at most.
pub const LINKS_MAX: usize = 256;

/// Bytes of one link's visible text kept (a text that shows a domain is short).
pub const LINK_TEXT_BYTES_MAX: usize = 256;

/// Bytes of one href (or form action) looked at; a longer one is cut there before parsing.
pub const HREF_BYTES_MAX: usize = 2048;

/// Forms scored per message, at most.
pub const FORMS_MAX: usize = 16;

/// Distinct hosts checked against the brand list per message, at most (each check costs about
/// a microsecond: a skeleton and an edit distance per brand).
pub const HOSTS_CHECKED_MAX: usize = 64;

/// Rule hits recorded per message, at most (each rule scores once, whatever its hit count).
pub const HITS_MAX: usize = 16;

/// Bytes of a hit's detail (the domain or URL that fired it), at most.
pub const HIT_DETAIL_BYTES_MAX: usize = 128;

/// Bytes of the From display name kept (for the brand-claim rule).
pub const DISPLAY_NAME_BYTES_MAX: usize = 256;
