//! The crate's one error enum, plus the two answers the SMTP side turns into replies
//! ([`AuthError`], [`PolicyDenial`]), which are outcomes of a check rather than failures.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The snapshot bytes are not a snapshot: bad magic, bad checksum, truncated, or they fail
    /// rkyv's structural validation. Permanent for these bytes.
    #[error("corrupt policy snapshot: {reason}")]
    Corrupt { reason: String },
    /// The snapshot decodes but breaks a rule (unknown tenant, duplicate username, bad CIDR...).
    #[error("invalid policy snapshot: {reason}")]
    Invalid { reason: String },
    /// Versions only move forward: the offered snapshot is older than the applied one.
    #[error("stale policy snapshot: version {offered} is older than applied version {current}")]
    Stale { current: u64, offered: u64 },
    /// A snapshot is larger than `SNAPSHOT_SIZE_MAX_BYTES`.
    #[error("policy snapshot too large: {size_bytes} bytes (max {max_bytes})")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    /// A DKIM key could not be generated or loaded.
    #[error("dkim key error: {reason}")]
    Key { reason: String },
    /// Signing failed (e.g. no header of the signed list present).
    #[error("dkim signing failed: {reason}")]
    Sign { reason: String },
    /// Writing or reading `<dir>/snapshot.rkyv` failed. Transient (disk).
    #[error("policy persistence at {path}: {source}")]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Sealing the snapshot file, or making the data keys it names, failed (issue 16).
    #[error("sealing at rest: {0}")]
    Seal(#[from] petrel_seal::SealError),
    /// A link frame broke the protocol (unknown kind, bad payload, too large). Drop the connection.
    #[error("link protocol error: {reason}")]
    Protocol { reason: String },
    /// The link's socket failed. Transient: reconnect.
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration or handshake failed.
    #[error("link tls: {reason}")]
    Tls { reason: String },
    /// The control plane refused us (an Error frame).
    #[error("control plane refused the link: {message}")]
    Refused { message: String },
    /// An audit checkpoint was not kept (bad signature, older seq, malformed).
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

impl PolicyError {
    /// True when retrying later may succeed (network, disk); false for bad input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PolicyError::Persist { .. }
                | PolicyError::Io(_)
                | PolicyError::Tls { .. }
                | PolicyError::Seal(_)
        )
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(reason: impl Into<String>) -> PolicyError {
        PolicyError::Corrupt {
            reason: reason.into(),
        }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> PolicyError {
        PolicyError::Protocol {
            reason: reason.into(),
        }
    }
}

/// Why SMTP AUTH failed. Every variant is answered `535 5.7.8` by the session (no detail leaks
/// to the client); the variants exist for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("unknown username")]
    UnknownUser,
    #[error("wrong password")]
    WrongPassword,
    #[error("credential revoked")]
    Revoked,
    #[error("tenant suspended")]
    TenantSuspended,
    #[error("client address not in the credential's allowlist")]
    AddressNotAllowed,
    #[error("credential cannot be used for SMTP")]
    NotSmtp,
    #[error("credential lacks the send scope")]
    NoSendScope,
    #[error("stored password hash is unusable")]
    BadHash,
}

impl AuthError {
    /// The SMTP reply: (code, enhanced status, text). One place maps AUTH failures to replies.
    pub fn reply(&self) -> (u16, (u8, u16, u16), &'static str) {
        (535, (5, 7, 8), "Authentication credentials invalid")
    }
}

/// A policy check refused a sender or a message. Maps to an SMTP reply via [`PolicyDenial::reply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyDenial {
    /// The tenant is suspended: `550 5.7.1`.
    #[error("tenant {tenant} is suspended")]
    TenantSuspended { tenant: String },
    /// The MAIL FROM domain is not a sending domain of the tenant, or not in the credential's list.
    #[error("sender domain {domain} not allowed")]
    SenderNotAllowed { domain: String },
    /// The sending domain is not verified and the tenant does not allow unverified domains.
    #[error("sender domain {domain} is not verified")]
    DomainUnverified { domain: String },
    /// The credential used at AUTH was revoked (or removed) since: `550 5.7.1`.
    #[error("credential revoked")]
    CredentialRevoked,
    /// A per-second rate limit is exhausted: `451 4.7.1`, try again shortly.
    #[error("rate limit reached for {scope} (messages per second)")]
    RateLimited { scope: String },
    /// A per-day quota is exhausted: `451 4.7.1`.
    #[error("daily quota reached for {scope}")]
    DailyQuota { scope: String },
    /// The control plane's guardrails disabled the tenant's or the sending domain's sending
    /// (bounce or complaint rate past its threshold): `550 5.7.1 sending disabled: <reason>`.
    /// Permanent until an operator re-enables it.
    #[error("sending disabled: {reason}")]
    SendingDisabled { reason: String },
    /// A new tenant's cap is spent for now: `451 4.7.1`. Transient on purpose: the cap is a
    /// rate, the message may go once a slot opens (as SES answers a spent sending quota with
    /// `454 Throttling failure`), and a client that queues and retries loses no mail.
    #[error(
        "new tenant {tenant} may send {messages_max} messages per {window_hours} hours \
         (for {cap_ends_in_hours} more hours, unless an operator lifts it); next in \
         {next_in_minutes} min"
    )]
    NewTenantCap {
        tenant: String,
        messages_max: u32,
        window_hours: u64,
        next_in_minutes: u64,
        cap_ends_in_hours: u64,
    },
}

impl PolicyDenial {
    /// Which block a refusal's reply text reports, if it is one of the sends the guardrails or
    /// an operator stopped: `sending_disabled`, `new_tenant_cap` or `suspended` (for the audit
    /// log's `send.blocked` rows). The inverse of [`PolicyDenial::reply`]'s texts.
    pub fn blocked_kind(reply_text: &str) -> Option<&'static str> {
        if reply_text.starts_with("sending disabled: ") {
            Some("sending_disabled")
        } else if reply_text.starts_with("new tenant ") && reply_text.contains(" may send ") {
            Some("new_tenant_cap")
        } else if reply_text.starts_with("tenant ") && reply_text.ends_with(" is suspended") {
            Some("suspended")
        } else {
            None
        }
    }

    /// The SMTP reply: (code, enhanced status, text without CRLF).
    pub fn reply(&self) -> (u16, (u8, u16, u16), String) {
        match self {
            PolicyDenial::RateLimited { .. }
            | PolicyDenial::DailyQuota { .. }
            | PolicyDenial::NewTenantCap { .. } => {
                (451, (4, 7, 1), format!("{self}, try again later"))
            }
            PolicyDenial::TenantSuspended { .. }
            | PolicyDenial::SenderNotAllowed { .. }
            | PolicyDenial::DomainUnverified { .. }
            | PolicyDenial::CredentialRevoked
            | PolicyDenial::SendingDisabled { .. } => (550, (5, 7, 1), self.to_string()),
        }
    }

    /// True for `4xx` denials (the client should retry later).
    pub fn is_transient(&self) -> bool {
        self.reply().0 < 500
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_kinds_read_back_from_the_reply_texts() {
        let cases = [
            (
                PolicyDenial::SendingDisabled {
                    reason: "bounce rate 12% over 10%".into(),
                },
                Some("sending_disabled"),
            ),
            (
                PolicyDenial::NewTenantCap {
                    tenant: "t".into(),
                    messages_max: 10,
                    window_hours: 24,
                    next_in_minutes: 5,
                    cap_ends_in_hours: 100,
                },
                Some("new_tenant_cap"),
            ),
            (
                PolicyDenial::TenantSuspended { tenant: "t".into() },
                Some("suspended"),
            ),
            (PolicyDenial::CredentialRevoked, None),
            (
                PolicyDenial::RateLimited {
                    scope: "tenant".into(),
                },
                None,
            ),
        ];
        for (d, want) in cases {
            assert_eq!(PolicyDenial::blocked_kind(&d.reply().2), want, "{d}");
        }
    }
}
