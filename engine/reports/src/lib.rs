//! Return-path intake, the pure core: signed VERP and unsubscribe tokens, and the parsers for
//! what comes back to them. Bytes in, typed results out: no I/O, no clock, no glommio or tokio,
//! so the engine's MX listener and the control plane can both call it, and a test or a fuzzer
//! can feed it anything.
//!
//! # Map
//!
//! | module | owns |
//! |---|---|
//! | [`verp`] | the token format: `b-<token>@` return paths, `u-<token>@` unsubscribe addresses, one-click `/u/{token}` tokens; HMAC-SHA256 tags, key rotation |
//! | [`unsubscribe`] | an unsubscribe by mail or one-click: the token decides, the body is ignored |
//! | [`intake`] | [`classify_recipient`] at RCPT (token, mailbox, or refused); [`parse_report`] after DATA: which report a received mail is, parsed |
//! | [`dsn`] | RFC 3464 delivery status notifications, classified with `petrel-bounce` |
//! | `bounce_text` | the shapes of plain-text bounces (qmail, Exim, Postfix, Exchange, Gmail) |
//! | [`arf`] | RFC 5965 feedback reports (complaints), RFC 6591 auth-failure reports |
//! | [`dmarc`] | RFC 7489 aggregate report XML |
//! | [`unpack`] | gzip/zip/XML attachments, bounded against decompression bombs |
//! | `mail` | the shared front: bound the mail, parse it with `mail-parser`, check its structure, read the original's headers |
//! | `prescan` | a line scan before MIME parsing, so the parser's own allocations are bounded |
//! | `fields` | the `Name: value` blocks of delivery-status and feedback-report parts |
//! | [`limits`] | every size, count and depth bound, named, with its reason |
//!
//! # What the intake does with it
//!
//! At RCPT, [`classify_recipient`] (over [`VerpKeys::decode_address`]) refuses a forged or
//! unknown token, or an unknown mailbox, before any body is read. After DATA, [`parse_report`] (or the parser for the expected kind) turns the mail into
//! a [`Dsn`] (per recipient: action, status, diagnostic, category and class), a
//! [`FeedbackReport`] or an [`AggregateReport`]. Each carries the original message's headers
//! when the reporter included them ([`OriginalMessage`]): [`OriginalMessage::verp`] finds the
//! token there when the envelope did not carry it, and the Message-ID is the fallback.
//!
//! # Invariants
//!
//! - No input panics (the robustness test feeds truncated and mutated samples to every parser).
//! - Every size is bounded before or while it is read ([`limits`]); an input over a bound is
//!   refused with a typed error, never truncated silently. A decompression bomb costs at most
//!   [`limits::DMARC_XML_BYTES_MAX`] bytes of memory.
//! - A token is accepted only with a valid tag for its purpose under a key the decoder holds.
//!
//! # Example
//!
//! ```
//! use petrel_reports::{Purpose, RecipientRef, TokenData, VerpKey, VerpKeys};
//!
//! let keys = VerpKeys::new(VerpKey::new(1, b"a deployment secret of 32 bytes!")?, vec![])?;
//! let data = TokenData {
//!     tenant_id: "ten_0a1b2c3d4e5f6789".into(),
//!     message_id: 0x0100_0000_0000_002a,
//!     recipient: RecipientRef::Index(0),
//! };
//! let return_path = keys.return_path(&data, "bounce.example.net")?;
//! assert!(return_path.starts_with("b-") && return_path.len() < 64 + 20);
//!
//! // At the intake, any case:
//! let decoded = keys.decode_address(&return_path.to_uppercase())?;
//! assert_eq!((decoded.purpose, decoded.data), (Purpose::Bounce, data));
//! # Ok::<(), petrel_reports::VerpError>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod arf;
mod bounce_text;
pub mod dmarc;
pub mod dsn;
mod fields;
pub mod intake;
pub mod limits;
mod mail;
mod prescan;
pub mod unpack;
pub mod unsubscribe;
pub mod verp;

pub use arf::{parse_arf, ArfError, FeedbackReport, FeedbackType};
pub use dmarc::{
    parse_aggregate_attachment, parse_aggregate_mail, parse_aggregate_xml, summarise,
    AggregateReport, AlignedResult, AuthResult, Disposition, DmarcError, PolicyPublished, Record,
    SourceSummary,
};
pub use dsn::{parse_dsn, Action, BounceFormat, BouncedRecipient, Dsn, DsnError};
pub use fields::FieldError;
pub use intake::{
    classify_recipient, parse_report, IntakeRecipient, RecipientError, Report, ReportError,
};
pub use mail::{MailError, OriginalMessage};
pub use unpack::{Packing, UnpackError};
pub use unsubscribe::{UnsubscribeError, UnsubscribeRequest};
pub use verp::{DecodedAddress, Purpose, RecipientRef, TokenData, VerpError, VerpKey, VerpKeys};
