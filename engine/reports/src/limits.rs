//! Every bound of the intake, in one place. A report is untrusted input from anyone who can reach
//! the MX listener, so each size, count and depth is capped before or while it is read, and an
//! input over a cap is refused with a typed error (never truncated silently, never a panic).

/// The largest report mail accepted, in bytes. Real DSNs, ARF reports and DMARC aggregate mails
/// are a few KiB to a few hundred KiB (a DMARC report is compressed); 5 MiB leaves room for a
/// bounce that quotes a large original, and refuses the 10 MB report of issue 14's test. The
/// intake's SMTP DATA limit should be this too, so the refusal comes at DATA.
pub const MAIL_BYTES_MAX: usize = 5 * 1024 * 1024;
/// MIME parts in a report mail, counting the parts of nested messages. A DSN has 3 or 4, an ARF
/// report 3, a DMARC mail 1 or 2; 64 allows a bounce that quotes a rich original.
pub const PARTS_MAX: usize = 64;
/// Lines anywhere in a mail that could start a header field (`name:`), counted before MIME
/// parsing (see `prescan.rs`: the parser allocates 120 bytes per field before the per-part
/// limits can be checked, so this caps that at 1 MiB). Delivery-status fields and body text
/// with `Key: value` lines count too: a DSN for [`DSN_RECIPIENTS_MAX`] recipients has about
/// 6 000 such lines.
pub const HEADER_LINES_MAX: usize = PARTS_MAX * HEADERS_PER_PART_MAX / 2;
/// Lines anywhere in a mail that start with `--` (MIME boundaries, and quoted separators or SQL
/// comments in a returned original), counted before MIME parsing.
pub const BOUNDARY_LINES_MAX: usize = 1024;
/// Bytes of encoded message/* parts (and encoded digest children) in a mail: content that
/// mail-parser decodes and parses again, out of the line scan's sight (see `prescan.rs`).
pub const ENCODED_MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Nesting of message/rfc822 inside each other (a bounce of a bounce of a forward).
pub const NESTING_DEPTH_MAX: usize = 4;
/// Header fields in one part. The original's Received chain is the long one (50 hops is a loop).
pub const HEADERS_PER_PART_MAX: usize = 256;
/// Bytes of one header field (name, value and folding).
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

/// Field blocks in a message/delivery-status or message/feedback-report body (one per-message
/// block plus one per recipient, and one more so that too many recipients is reported as such).
pub const FIELD_BLOCKS_MAX: usize = 2 + DSN_RECIPIENTS_MAX;
/// Fields in one block (RFC 3464 defines 14; extensions add a few).
pub const FIELDS_PER_BLOCK_MAX: usize = 64;
/// Bytes of one field, folding included (a Diagnostic-Code quotes a multi-line reply).
pub const FIELD_BYTES_MAX: usize = 4 * 1024;
/// Recipients in one DSN (RFC 5321 requires a server accept 100 per transaction).
pub const DSN_RECIPIENTS_MAX: usize = 1000;
/// Bytes of a value kept from a report (an address, a Message-ID, a reply text): RFC 5322's
/// line limit. Longer values are dropped, not cut, so a cut one never matches a wrong message.
pub const VALUE_BYTES_MAX: usize = 998;
/// Addresses kept from one original To header.
pub const ORIGINAL_TO_MAX: usize = 100;
/// Bytes of a text part scanned for a non-standard bounce (the explanation is at the top).
pub const BOUNCE_TEXT_BYTES_MAX: usize = 64 * 1024;

/// The largest compressed DMARC attachment, in bytes (bounded by the mail anyway).
pub const DMARC_COMPRESSED_BYTES_MAX: usize = MAIL_BYTES_MAX;
/// The largest DMARC XML after decompression, in bytes. Google's and Microsoft's daily reports
/// for a busy domain are well under 1 MiB; 10 MiB is the brief's cap.
pub const DMARC_XML_BYTES_MAX: usize = 10 * 1024 * 1024;
/// The largest decompressed/compressed ratio accepted. DMARC XML compresses 10–30x; a zip or
/// gzip bomb is 1000x and more, and is stopped once its output passes this ratio.
pub const DMARC_COMPRESSION_RATIO_MAX: usize = 100;
/// Output any input may produce regardless of the ratio, in bytes: a tiny but legitimate report
/// (a few hundred compressed bytes) has a high ratio on its first KiB.
pub const DMARC_RATIO_FLOOR_BYTES: usize = 256 * 1024;
/// Entries in a zip attachment (a report zip holds one XML file).
pub const ZIP_ENTRIES_MAX: usize = 4;
/// Records in one DMARC aggregate report (one per source IP and result combination). A minimal
/// record is about 200 bytes of XML, so [`DMARC_XML_BYTES_MAX`] holds at most some 50 000.
pub const DMARC_RECORDS_MAX: usize = 50_000;
/// Nesting of XML elements accepted (the RFC 7489 schema is 5 deep).
pub const XML_DEPTH_MAX: usize = 16;
/// auth_results entries of each kind (dkim, spf) kept per record. Reporters write one to three;
/// each kept entry costs about 100 bytes, so an XML of empty `<dkim/>` elements amplifies at
/// most 2 x 8 x 100 bytes per record.
pub const DMARC_AUTH_RESULTS_MAX: usize = 8;
