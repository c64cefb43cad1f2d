//! Return-path intake: the pure core (bytes in, typed results out; no I/O, no clock).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod verp;

pub use verp::{DecodedAddress, Purpose, RecipientRef, TokenData, VerpError, VerpKey, VerpKeys};
