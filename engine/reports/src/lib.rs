//! Return-path intake: the pure core (bytes in, typed results out; no I/O, no clock).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod arf;
mod bounce_text;
pub mod dmarc;
pub mod dsn;
mod fields;
pub mod limits;
mod mail;
pub mod unpack;
pub mod unsubscribe;
pub mod verp;

pub use arf::{parse_arf, ArfError, FeedbackReport, FeedbackType};
pub use dmarc::{
    parse_aggregate_attachment, parse_aggregate_mail, parse_aggregate_xml, AggregateReport,
    AlignedResult, AuthResult, Disposition, DmarcError, PolicyPublished, Record,
};
pub use dsn::{parse_dsn, Action, BounceFormat, BouncedRecipient, Dsn, DsnError};
pub use fields::FieldError;
pub use mail::{MailError, OriginalMessage};
pub use unpack::{Packing, UnpackError};
pub use unsubscribe::{UnsubscribeError, UnsubscribeRequest};
pub use verp::{DecodedAddress, Purpose, RecipientRef, TokenData, VerpError, VerpKey, VerpKeys};
