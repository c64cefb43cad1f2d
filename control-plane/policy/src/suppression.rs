//! Suppression lists: the addresses a tenant (or the whole platform) must not send to, shared by
//! the control plane (which stores them in SQL and serves `/v1/suppressions`) and the engines
//! (which refuse them at RCPT with a compact in-memory set, [`SuppressionSet`]).
//!
//! Both sides use the same [`normalize_address`], so the address the control plane stores and
//! the one an engine looks up at RCPT meet in one form, and the same [`SuppressionChange`], the
//! delta the control plane's change log (`suppression_changes`) hands out and an engine applies.
//!
//! # Address normalization
//!
//! RFC 5321 says the local part is case-sensitive and only the domain is not. We lower-case the
//! *whole* address anyway, as the big ESPs do (SES, SendGrid, Postmark and Mailgun all suppress
//! case-insensitively): no mailbox provider of note delivers `John@` and `john@` to different
//! people, while senders do write one address in many spellings, and a list that missed
//! `John@x` after `john@x` hard-bounced or complained would hurt exactly the reputation it is
//! there to protect. The cost, two real mailboxes that differ only in case both suppressed, is
//! one we accept. Nothing else is folded: `+tags` and dots are distinct mailboxes at most
//! providers (Gmail's dot rule is Gmail's alone). Lower-casing is per character
//! (`char::to_lowercase`, Unicode's simple context-free mapping), never `str::to_lowercase`,
//! whose final-sigma rule depends on context and would make the engine's on-the-fly key differ.
//!
//! # Scopes
//!
//! An entry belongs to one tenant (its id is the scope) or to the operator-wide list, the scope
//! [`OPERATOR_SCOPE`] (`*`, which no tenant id can be). An engine refuses a recipient when
//! either the sending tenant's list or the operator-wide list holds it.

pub mod persist;
mod set;

pub use set::{
    SuppressionHit, SuppressionKeyer, SuppressionSet, SuppressionSetBuilder,
    BASE_ENTRIES_PER_BUCKET_TARGET, OVERLAY_ENTRIES_MIN, OVERLAY_MERGE_FRACTION_DENOMINATOR,
    SET_ENTRIES_MAX,
};

use serde::{Deserialize, Serialize};

/// The scope of the operator-wide list (tenant ids are `[a-z0-9_]` tokens, never `*`).
pub const OPERATOR_SCOPE: &str = "*";
/// Longest scope (a tenant id), in bytes (`event::EVENT_ID_FIELD_MAX_BYTES`).
pub const SCOPE_MAX_BYTES: usize = crate::event::EVENT_ID_FIELD_MAX_BYTES;
/// Longest normalized address, in bytes: RFC 5321's 256-byte path less its angle brackets.
pub const ADDRESS_MAX_BYTES: usize = 254;
/// Longest local part, in bytes (RFC 5321 section 4.5.3.1.1).
pub const LOCAL_PART_MAX_BYTES: usize = 64;
/// Longest domain, in bytes (RFC 5321 section 4.5.3.1.2).
pub const DOMAIN_MAX_BYTES: usize = 255;

/// Why an address is suppressed. Four values on purpose: the engine's set keeps the reason in
/// the two low bits of each 64-bit entry (see [`SuppressionSet`]); a fifth reason needs a bit
/// taken from the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// A hard bounce whose category says the address is bad (unknown user, bad domain).
    HardBounce,
    /// The recipient reported the mail as spam (an ARF feedback report).
    Complaint,
    /// The recipient unsubscribed (List-Unsubscribe, one-click or mailto).
    Unsubscribe,
    /// Added by the tenant or operator through the API.
    Manual,
}

impl SuppressionReason {
    /// Every reason, in code order.
    pub const ALL: [SuppressionReason; 4] = [
        SuppressionReason::HardBounce,
        SuppressionReason::Complaint,
        SuppressionReason::Unsubscribe,
        SuppressionReason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "hard_bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Unsubscribe => "unsubscribe",
            SuppressionReason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<SuppressionReason> {
        SuppressionReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The two-bit code the engine's set stores.
    pub(crate) fn code(self) -> u64 {
        match self {
            SuppressionReason::HardBounce => 0,
            SuppressionReason::Complaint => 1,
            SuppressionReason::Unsubscribe => 2,
            SuppressionReason::Manual => 3,
        }
    }

    pub(crate) fn from_code(code: u64) -> SuppressionReason {
        match code & 3 {
            0 => SuppressionReason::HardBounce,
            1 => SuppressionReason::Complaint,
            2 => SuppressionReason::Unsubscribe,
            _ => SuppressionReason::Manual,
        }
    }
}

/// What one change did to one (scope, address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// Added, or re-added with this (possibly new) reason.
    Add(SuppressionReason),
    /// Deleted through the API, or expired.
    Remove,
}

/// One entry of the control plane's change log: engines apply these in `seq` order
/// ([`SuppressionSet::apply`]) to follow the list without receiving it whole again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionChange {
    /// The change log's sequence number: strictly increasing, so "everything after version v"
    /// is well defined. Gaps are allowed.
    pub seq: u64,
    /// A tenant id, or [`OPERATOR_SCOPE`].
    pub scope: String,
    /// Normalized ([`normalize_address`]).
    pub address: String,
    pub op: ChangeOp,
}

/// Why an address cannot be suppressed (it could never be a recipient either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    #[error("empty address")]
    Empty,
    #[error("address longer than {ADDRESS_MAX_BYTES} bytes ({0})")]
    TooLong(usize),
    #[error("no '@' in the address")]
    NoAt,
    #[error("empty or over-long local part (1 to {LOCAL_PART_MAX_BYTES} bytes)")]
    LocalPart,
    #[error("not a domain name after '@'")]
    Domain,
    #[error("character {0:?} not allowed in an address")]
    BadChar(char),
}

/// The stored form of `raw`: trimmed of surrounding whitespace and lower-cased (see the module
/// doc), after checking it is `local@domain` within RFC 5321's sizes. Quoted local parts and
/// address literals (`[192.0.2.1]`) are refused: real lists do not hold them.
pub fn normalize_address(raw: &str) -> Result<String, AddressError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(AddressError::Empty);
    }
    if trimmed.len() > ADDRESS_MAX_BYTES * 2 {
        // Refused before the work of lower-casing (which may grow a string a little).
        return Err(AddressError::TooLong(trimmed.len()));
    }
    let lower: String = trimmed.chars().flat_map(char::to_lowercase).collect();
    if lower.len() > ADDRESS_MAX_BYTES {
        return Err(AddressError::TooLong(lower.len()));
    }
    if let Some(c) = lower.chars().find(|c| forbidden(*c)) {
        return Err(AddressError::BadChar(c));
    }
    let (local, domain) = lower.rsplit_once('@').ok_or(AddressError::NoAt)?;
    if local.is_empty() || local.len() > LOCAL_PART_MAX_BYTES || local.contains('@') {
        return Err(AddressError::LocalPart);
    }
    if !is_domain(domain) {
        return Err(AddressError::Domain);
    }
    Ok(lower)
}

/// The domain of a normalized address (after its last `@`).
pub fn address_domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Characters no plain `local@domain` address holds: controls, white space, and the
/// delimiters of paths, lists and quoted strings.
fn forbidden(c: char) -> bool {
    c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | '"' | ',' | ';' | '\\')
}

/// Labels of letters, digits, `-` and `_` (or non-ASCII letters of an IDN's U-label), none
/// empty, at most 63 bytes each.
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= DOMAIN_MAX_BYTES
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// Whether `scope` is a well-formed scope: [`OPERATOR_SCOPE`] or a tenant id (1 to
/// [`SCOPE_MAX_BYTES`] of `[A-Za-z0-9_-]`).
pub fn is_scope(scope: &str) -> bool {
    scope == OPERATOR_SCOPE
        || (!scope.is_empty()
            && scope.len() <= SCOPE_MAX_BYTES
            && scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_lower_cased_whole() {
        assert_eq!(
            normalize_address("  John.Doe+Tag@Example.COM ").as_deref(),
            Ok("john.doe+tag@example.com")
        );
        assert_eq!(
            normalize_address("ÉLODIE@exämple.de").as_deref(),
            Ok("élodie@exämple.de")
        );
        // Per character: a final capital sigma becomes σ, not the context form ς.
        assert_eq!(normalize_address("ΟΔΟΣ@x.gr").as_deref(), Ok("οδοσ@x.gr"));
        assert_eq!(address_domain("a@b@c.d"), "c.d");
    }

    #[test]
    fn malformed_addresses_are_refused() {
        assert_eq!(normalize_address(""), Err(AddressError::Empty));
        assert_eq!(normalize_address("   "), Err(AddressError::Empty));
        assert_eq!(normalize_address("nobody"), Err(AddressError::NoAt));
        assert_eq!(normalize_address("@x.com"), Err(AddressError::LocalPart));
        assert_eq!(normalize_address("a@b@x.com"), Err(AddressError::LocalPart));
        assert_eq!(normalize_address("a@"), Err(AddressError::Domain));
        assert_eq!(normalize_address("a@x..com"), Err(AddressError::Domain));
        assert_eq!(normalize_address("a@-x.com"), Err(AddressError::Domain));
        assert_eq!(
            normalize_address("a@[192.0.2.1]"),
            Err(AddressError::Domain)
        );
        assert_eq!(
            normalize_address("a b@x.com"),
            Err(AddressError::BadChar(' '))
        );
        assert_eq!(
            normalize_address("<a@x.com>"),
            Err(AddressError::BadChar('<'))
        );
        let long_local = format!("{}@x.com", "a".repeat(LOCAL_PART_MAX_BYTES + 1));
        assert_eq!(normalize_address(&long_local), Err(AddressError::LocalPart));
        let long = format!("a@{}.com", "b".repeat(300));
        assert!(matches!(
            normalize_address(&long),
            Err(AddressError::TooLong(_))
        ));
    }

    #[test]
    fn reasons_round_trip_through_names_and_codes() {
        for r in SuppressionReason::ALL {
            assert_eq!(SuppressionReason::parse(r.as_str()), Some(r));
            assert_eq!(SuppressionReason::from_code(r.code()), r);
            let json = serde_json::to_string(&r).expect("json");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        assert_eq!(SuppressionReason::parse("bounce"), None);
    }

    #[test]
    fn scopes_are_tenant_ids_or_the_operator_list() {
        assert!(is_scope(OPERATOR_SCOPE));
        assert!(is_scope("ten_0123abcd"));
        assert!(!is_scope(""));
        assert!(!is_scope("a*"));
        assert!(!is_scope(&"a".repeat(SCOPE_MAX_BYTES + 1)));
    }
}
