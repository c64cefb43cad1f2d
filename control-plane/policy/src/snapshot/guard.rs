//! The abuse guardrails' part of the snapshot (issue 14): a new tenant's sending cap, and the
//! reputation state the control plane computed (sending disabled, or a warning near a
//! threshold) that engines enforce at MAIL and DATA.
//!
//! The control plane decides (it sees every engine's events); engines only read these fields.
//! A cap carries its own end (`until_unix_ms`), so it stops applying on time without a push.

use crate::error::PolicyError;

/// Largest new-tenant cap an engine accepts, messages per window. The engine keeps one
/// timestamp (8 bytes) per message admitted in a capped tenant's window, so this bounds that
/// memory at 80 KiB per capped tenant.
pub const NEW_TENANT_CAP_MESSAGES_MAX: u32 = 10_000;
/// Longest window of a new-tenant cap, ms (31 days).
pub const NEW_TENANT_CAP_WINDOW_MS_MAX: u64 = 31 * 86_400_000;
/// Longest `sending_disabled` reason or `reputation_warning` text, in bytes (they end up in a
/// 512-byte SMTP reply line).
pub const GUARD_NOTE_MAX_BYTES: usize = 200;

/// A new tenant's cap: at most `messages_max` messages per rolling `window_ms` until
/// `until_unix_ms` (its probation's end, unless an operator lifted it earlier: then the
/// snapshot carries no cap at all).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct NewTenantCap {
    /// 1..=[`NEW_TENANT_CAP_MESSAGES_MAX`].
    pub messages_max: u32,
    /// 1..=[`NEW_TENANT_CAP_WINDOW_MS_MAX`] (24 h by default).
    pub window_ms: u64,
    /// The cap applies while `now < until_unix_ms`.
    pub until_unix_ms: u64,
}

impl NewTenantCap {
    /// True while the cap applies.
    pub fn applies(&self, now_unix_ms: u64) -> bool {
        now_unix_ms < self.until_unix_ms
    }

    pub(crate) fn validate(&self, tenant: &str) -> Result<(), PolicyError> {
        let ok = (1..=NEW_TENANT_CAP_MESSAGES_MAX).contains(&self.messages_max)
            && (1..=NEW_TENANT_CAP_WINDOW_MS_MAX).contains(&self.window_ms);
        if ok {
            Ok(())
        } else {
            Err(PolicyError::invalid(format!(
                "tenant {tenant}: new-tenant cap {} messages per {} ms out of range",
                self.messages_max, self.window_ms
            )))
        }
    }
}

/// A reason or warning text: non-empty, at most [`GUARD_NOTE_MAX_BYTES`], no control
/// characters (it is written into an SMTP reply).
pub(crate) fn check_note(what: &str, owner: &str, note: Option<&str>) -> Result<(), PolicyError> {
    match note {
        Some(n)
            if n.is_empty()
                || n.len() > GUARD_NOTE_MAX_BYTES
                || n.chars().any(char::is_control) =>
        {
            Err(PolicyError::invalid(format!("{owner}: bad {what} {n:?}")))
        }
        _ => Ok(()),
    }
}
