//! A sending domain's DNS authentication verdict, as the control plane last checked it.
//!
//! The control plane re-checks every verified domain's DKIM, SPF and DMARC records on a
//! schedule and on demand; a failing domain carries an [`AuthFailure`] in the snapshot, and the
//! engine refuses its mail at end of data (`550 5.7.26 <check> check failed for <domain>`).
//! Only a change of verdict reaches the snapshot, so the policy version does not move with
//! every check.

use crate::error::PolicyError;

/// Longest failure detail, in bytes (it ends up in an SMTP reply line and an event).
pub const AUTH_FAILURE_DETAIL_MAX_BYTES: usize = 200;

/// The checks a domain must pass, as named in replies, events and the API.
pub const AUTH_CHECKS: [&str; 4] = ["dkim", "spf", "dmarc", "from_domain"];

/// Why a sending domain is blocked.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct AuthFailure {
    /// The first failing check: `dkim`, `spf` or `dmarc`.
    pub check: String,
    /// What the check found (`missing`, `mismatch`), short printable ASCII.
    pub detail: String,
    /// When the control plane saw it fail (Unix ms).
    pub checked_unix_ms: u64,
}

impl AuthFailure {
    /// A known check and a bounded, printable detail (it is echoed in SMTP replies).
    pub fn validate(&self, domain: &str) -> Result<(), PolicyError> {
        if !AUTH_CHECKS.contains(&self.check.as_str()) {
            return Err(PolicyError::invalid(format!(
                "domain {domain}: unknown auth check {:?}",
                self.check
            )));
        }
        let printable = self.detail.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !printable || self.detail.len() > AUTH_FAILURE_DETAIL_MAX_BYTES {
            return Err(PolicyError::invalid(format!(
                "domain {domain}: auth failure detail must be printable ASCII of at most \
                 {AUTH_FAILURE_DETAIL_MAX_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_bounded_and_named() {
        let ok = AuthFailure {
            check: "dmarc".into(),
            detail: "missing".into(),
            checked_unix_ms: 1,
        };
        assert!(ok.validate("a.test").is_ok());
        let unknown = AuthFailure {
            check: "dns".into(),
            ..ok.clone()
        };
        assert!(unknown.validate("a.test").is_err());
        let control = AuthFailure {
            detail: "a\r\nb".into(),
            ..ok.clone()
        };
        assert!(control.validate("a.test").is_err());
        let long = AuthFailure {
            detail: "x".repeat(AUTH_FAILURE_DETAIL_MAX_BYTES + 1),
            ..ok
        };
        assert!(long.validate("a.test").is_err());
    }
}
