//! DANE for SMTP (RFC 7672, RFC 6698): TLSA records, validated by DNSSEC, pin the certificate
//! an MX host must present, so TLS to it is authenticated without the web PKI and cannot be
//! stripped by an attacker on the path.
//!
//! - [`Tlsa`] and [`TlsaLookup`]: the records of `_25._tcp.<mx host>` and how DNSSEC judged
//!   the answer (secure, insecure, bogus, validated absence, or a failed lookup).
//! - [`decide`]: the pure decision for one MX host from its [`TlsaLookup`]: authenticate with
//!   the records, encrypt without authentication (every record unusable), refuse the host
//!   (bogus or failed lookup), or leave the host to the session's own TLS policy (no secure
//!   records: MTA-STS or the configured policy decide, RFC 8461 §2).
//! - `verify`: the rustls [`rustls::client::danger::ServerCertVerifier`] that accepts a chain
//!   only when it matches a usable record (DANE-EE(3) or DANE-TA(2), RFC 7672 §3.1).
//! - `lookup`: the validating hickory resolver on the route resolver's DNS thread
//!   ([`crate::Resolver::tlsa`]), with a configurable trust anchor.
//!
//! What this module does not do (RFC 7672 §2.2): it does not require the MX RRset itself to be
//! secure (the route resolver does not validate), and it follows no CNAME of the MX host (the
//! TLSA base domain is the MX host name). It does require the host's address records to be
//! secure before it looks for TLSA records (§2.2.2), so an unsigned host never has its mail
//! held up by a broken `_25._tcp` answer.

mod lookup;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;

pub(crate) use lookup::{serve as serve_lookups, DaneDns, TlsaRequest};
pub use verify::{DaneVerifier, DANE_TA_CHAIN_MAX};

/// Lookups counted by result: `secure`, `insecure`, `bogus`, `none` (validated absence) and
/// `failed` (a lookup that did not complete in a signed zone).
pub const DANE_LOOKUPS_TOTAL: &str = "petrel_dane_lookups_total";
/// TLS handshakes under DANE by result: `success`, or the TLS-RPT failure type
/// (`tlsa-invalid`, `dane-required`).
pub const DANE_VERIFICATIONS_TOTAL: &str = "petrel_dane_verifications_total";
/// Default of [`DaneConfig::cache_entries`]: hickory's cache of validated answers.
pub const DANE_DNS_CACHE_ENTRIES_DEFAULT: usize = 4096;
/// TLSA records kept from one answer; an RRset larger than this is treated as bogus.
pub const TLSA_RECORDS_MAX: usize = 32;
/// Longest TLSA certificate association data kept (a full certificate with matching type 0).
pub const TLSA_DATA_BYTES_MAX: usize = 16 * 1024;
/// Requests queued for the DNS thread's TLSA lookups before callers wait for room.
pub const DANE_REQUEST_QUEUE_MAX: usize = 4096;
/// TLSA lookups the DNS thread runs at once.
pub const DANE_LOOKUPS_IN_FLIGHT_MAX: usize = 256;

/// How DANE lookups are made; set in [`crate::ResolverConfig::dane`] to turn DANE on.
#[derive(Debug, Clone, Default)]
pub struct DaneConfig {
    /// A file of DNSKEY records (zone-file syntax) trusted as DNSSEC anchors; `None`: the IANA
    /// root keys hickory ships. A test points it at its own zone's key.
    pub trust_anchor_file: Option<PathBuf>,
    /// Answers kept in the validating resolver's cache (by their TTL); 0: the default.
    pub cache_entries: usize,
}

/// RFC 6698 §2.1.1 certificate usages that SMTP may use (RFC 7672 §3.1: PKIX-TA(0) and
/// PKIX-EE(1) are unusable for SMTP).
pub const USAGE_DANE_TA: u8 = 2;
/// DANE-EE: the server's own certificate or key, names and dates ignored.
pub const USAGE_DANE_EE: u8 = 3;
/// Selector: the whole certificate.
pub const SELECTOR_CERT: u8 = 0;
/// Selector: the SubjectPublicKeyInfo.
pub const SELECTOR_SPKI: u8 = 1;
/// Matching type: the selected bytes themselves.
pub const MATCHING_FULL: u8 = 0;
/// Matching type: SHA-256 of the selected bytes.
pub const MATCHING_SHA256: u8 = 1;
/// Matching type: SHA-512 of the selected bytes.
pub const MATCHING_SHA512: u8 = 2;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    /// Certificate association data: the selected bytes, or their digest.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether an SMTP client may use this record (RFC 7672 §3.1 and RFC 6698 §2.1): usage 2
    /// or 3, selector 0 or 1, matching 0, 1 or 2 with data of the digest's length.
    pub fn is_usable(&self) -> bool {
        let usage = matches!(self.usage, USAGE_DANE_TA | USAGE_DANE_EE);
        let selector = matches!(self.selector, SELECTOR_CERT | SELECTOR_SPKI);
        let data = match self.matching {
            MATCHING_FULL => !self.data.is_empty(),
            MATCHING_SHA256 => self.data.len() == 32,
            MATCHING_SHA512 => self.data.len() == 64,
            _ => false,
        };
        usage && selector && data
    }
}

/// What DNSSEC made of the TLSA lookup for one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaLookup {
    /// Validated records (usable or not).
    Secure(Arc<[Tlsa]>),
    /// The host's address records or its TLSA answer are provably unsigned: DANE does not
    /// apply (RFC 7672 §2.2.2).
    Insecure,
    /// Validated absence (NXDOMAIN or NODATA in a signed zone): DANE does not apply.
    NoRecords,
    /// Validation failed: a forged or broken answer.
    Bogus { reason: String },
    /// The lookup did not complete (SERVFAIL, timeout) for a host whose addresses are secure.
    Failed { reason: String },
}

impl TlsaLookup {
    /// The `result` label of [`DANE_LOOKUPS_TOTAL`].
    pub fn label(&self) -> &'static str {
        match self {
            TlsaLookup::Secure(_) => "secure",
            TlsaLookup::Insecure => "insecure",
            TlsaLookup::NoRecords => "none",
            TlsaLookup::Bogus { .. } => "bogus",
            TlsaLookup::Failed { .. } => "failed",
        }
    }
}

/// Why DANE kept mail from a host, in TLS-RPT terms (RFC 8460 §4.3, policy type `tlsa`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaneFailure {
    /// The certificate matched none of the TLSA records (`tlsa-invalid`).
    TlsaInvalid,
    /// The TLSA answer failed validation, or the lookup failed (`dnssec-invalid`).
    DnssecInvalid,
    /// The host did not offer STARTTLS, or the handshake failed, under DANE (`dane-required`).
    DaneRequired,
}

impl DaneFailure {
    /// The RFC 8460 `result-type`.
    pub fn result_type(self) -> &'static str {
        match self {
            DaneFailure::TlsaInvalid => "tlsa-invalid",
            DaneFailure::DnssecInvalid => "dnssec-invalid",
            DaneFailure::DaneRequired => "dane-required",
        }
    }
}

/// How to connect to one MX host, once its TLSA answer is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneDecision {
    /// No secure TLSA records: the session's TLS policy applies (MTA-STS, else configured).
    NotApplicable,
    /// Usable records: TLS is required and the certificate must match one of them. Wins over
    /// MTA-STS and the configured policy (RFC 8461 §2, RFC 7672 §2.2).
    Authenticate(Arc<[Tlsa]>),
    /// Secure records, none usable: TLS is required, without authentication (RFC 7672 §2.2,
    /// Postfix's `encrypt`), unless the session already demands verified TLS.
    EncryptOnly,
    /// The host must not be tried: its TLSA answer is bogus or could not be had.
    Refuse(DaneFailure),
}

/// The decision for one host from its TLSA lookup (pure; see [`DaneDecision`]).
pub fn decide(lookup: &TlsaLookup) -> DaneDecision {
    match lookup {
        TlsaLookup::Secure(records) => {
            let usable: Vec<Tlsa> = records.iter().filter(|r| r.is_usable()).cloned().collect();
            if usable.is_empty() {
                DaneDecision::EncryptOnly
            } else {
                DaneDecision::Authenticate(usable.into())
            }
        }
        TlsaLookup::Insecure | TlsaLookup::NoRecords => DaneDecision::NotApplicable,
        TlsaLookup::Bogus { .. } | TlsaLookup::Failed { .. } => {
            DaneDecision::Refuse(DaneFailure::DnssecInvalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(usage: u8, selector: u8, matching: u8, len: usize) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: vec![7; len],
        }
    }

    #[test]
    fn usable_records_are_dane_ta_or_ee_with_known_selector_and_matching() {
        assert!(rec(3, 1, 1, 32).is_usable());
        assert!(rec(3, 0, 2, 64).is_usable());
        assert!(rec(2, 0, 0, 300).is_usable());
        // PKIX-TA and PKIX-EE are unusable for SMTP (RFC 7672 §3.1.3).
        assert!(!rec(0, 1, 1, 32).is_usable());
        assert!(!rec(1, 1, 1, 32).is_usable());
        assert!(!rec(3, 2, 1, 32).is_usable(), "unknown selector");
        assert!(!rec(3, 1, 3, 32).is_usable(), "unknown matching type");
        assert!(
            !rec(3, 1, 1, 31).is_usable(),
            "a SHA-256 digest is 32 bytes"
        );
        assert!(
            !rec(3, 1, 2, 32).is_usable(),
            "a SHA-512 digest is 64 bytes"
        );
        assert!(!rec(3, 1, 0, 0).is_usable(), "empty full data");
    }

    #[test]
    fn decisions_by_lookup() {
        let usable: Arc<[Tlsa]> = vec![rec(1, 1, 1, 32), rec(3, 1, 1, 32)].into();
        assert_eq!(
            decide(&TlsaLookup::Secure(usable)),
            DaneDecision::Authenticate(vec![rec(3, 1, 1, 32)].into()),
            "only the usable records are kept"
        );
        let unusable: Arc<[Tlsa]> = vec![rec(1, 1, 1, 32), rec(3, 9, 1, 32)].into();
        assert_eq!(
            decide(&TlsaLookup::Secure(unusable)),
            DaneDecision::EncryptOnly
        );
        assert_eq!(decide(&TlsaLookup::Insecure), DaneDecision::NotApplicable);
        assert_eq!(decide(&TlsaLookup::NoRecords), DaneDecision::NotApplicable);
        for refused in [
            TlsaLookup::Bogus { reason: "x".into() },
            TlsaLookup::Failed { reason: "x".into() },
        ] {
            assert_eq!(
                decide(&refused),
                DaneDecision::Refuse(DaneFailure::DnssecInvalid)
            );
        }
    }

    #[test]
    fn tls_rpt_result_types() {
        assert_eq!(DaneFailure::TlsaInvalid.result_type(), "tlsa-invalid");
        assert_eq!(DaneFailure::DnssecInvalid.result_type(), "dnssec-invalid");
        assert_eq!(DaneFailure::DaneRequired.result_type(), "dane-required");
    }
}
