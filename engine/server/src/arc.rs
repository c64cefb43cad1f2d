//! ARC sealing for forwarding tenants (RFC 8617, issue 18).
//!
//! A tenant that relays mail it received elsewhere (a forwarding service, a mailing list) turns
//! on `arc_seal`. Its messages then break the original author's DMARC alignment at the next
//! receiver (the envelope is the forwarder's, and a changed message may break the author's
//! DKIM signature); an ARC set tells that receiver what Petrel saw when the message arrived,
//! under a signature it can check.
//!
//! The work is split by what it needs:
//! - deciding (this file, pure): whether a message is a forwarding tenant's, which of the
//!   tenant's sending domains seals it (the From domain when it is the tenant's, else the
//!   envelope sender's: a forwarder rewrites the return path to its own domain), and what the
//!   next instance is ([`plan`]);
//! - verifying the DKIM signatures, the ARC chain and DMARC as received, which needs DNS, and
//!   sealing, which needs the verification's borrowed results: both on the ARC thread
//!   (`arc_service.rs`), a tokio runtime of its own, so a shard never waits on DNS and the
//!   slow-path thread never runs RSA for a forwarded message.
//!
//! Order (RFC 8617 §5.1: the ARC set is the last thing added, over the message as it leaves):
//! Received, List-Unsubscribe, the DKIM-Signature of the From domain when Petrel signs it, then
//! the ARC set on top, its ARC-Message-Signature covering that DKIM-Signature. The verification
//! reads the message before Petrel's own DKIM-Signature, so `ARC-Authentication-Results` says
//! what arrived, not what Petrel added.
//!
//! SPF is not checked: the message was received elsewhere, from an address Petrel never saw, so
//! the results carry `dkim=`, `arc=` and `dmarc=` (from DKIM alignment alone) and no `spf=`.
//!
//! A message is never held back for its ARC set: whatever stops a seal (no key, a chain that
//! already failed, 50 instances, a verification past its time, a full queue) sends it unsealed,
//! counted in `petrel_arc_seal_skipped_total{reason}`.

use mail_auth::arc::ChainValidation;
use mail_auth::DkimResult;
use petrel_policy::dkim::{join_dangling_semicolon, DANGLING_FOLD};
use petrel_policy::CompiledPolicy;

/// ARC instances a chain may hold (RFC 8617 §4.2.1): a message carrying this many is sent on
/// without another set.
pub const ARC_INSTANCES_MAX: usize = 50;
/// DKIM signatures of one message that are verified (the rest are ignored): each costs a DNS
/// lookup and a public-key operation, and a message may carry any number.
pub const DKIM_SIGNATURES_VERIFIED_MAX: usize = 8;
/// Headers the ARC-Message-Signature covers besides DKIM's signing list
/// (`petrel_policy::dkim::SIGNED_HEADERS`, present ones plus the absent ones so none can be
/// added later): the DKIM-Signature headers the message carries.
pub const AMS_ALSO_SIGNED: &[&str] = &["DKIM-Signature"];

/// Every header the ARC-Message-Signature covers, `extra` last.
pub fn ams_signed_headers<'a>(extra: &'a [&'a str]) -> impl Iterator<Item = &'a str> + 'a {
    petrel_policy::dkim::SIGNED_HEADERS
        .iter()
        .chain(AMS_ALSO_SIGNED)
        .chain(extra)
        .copied()
}

/// The `cv` label values of `petrel_arc_seals_total`.
pub const CV_LABELS: [&str; 3] = ["none", "pass", "fail"];
/// The `reason` label values of `petrel_arc_seal_skipped_total`.
pub const SKIP_REASONS: [&str; 8] = [
    "no_key",
    "chain_failed",
    "chain_too_long",
    "chain_unreadable",
    "unparseable",
    "timeout",
    "unavailable",
    "seal_error",
];

/// The chain validation a new seal states (`cv=`, RFC 8617 §4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cv {
    /// The first set of a chain.
    None,
    /// The chain so far validated.
    Pass,
    /// It did not: the set is added and the chain ends with it (RFC 8617 §5.1.2).
    Fail,
}

impl Cv {
    pub fn label(self) -> &'static str {
        match self {
            Cv::None => "none",
            Cv::Pass => "pass",
            Cv::Fail => "fail",
        }
    }
}

/// Why a forwarding tenant's message goes out without an ARC set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Skip {
    /// No domain of the tenant has an active RSA DKIM key for this message.
    #[error("no sending domain of the tenant has an active RSA DKIM key")]
    NoKey,
    /// The newest seal says `cv=fail`: the chain is over (RFC 8617 §5.1, step 1).
    #[error("the ARC chain already failed")]
    ChainFailed,
    /// `ARC_INSTANCES_MAX` sets already.
    #[error("the ARC chain has the most sets allowed (50)")]
    ChainTooLong,
    /// ARC headers that do not form numbered sets: the next instance has no number.
    #[error("the ARC headers do not form a chain")]
    ChainUnreadable,
    /// Not a message mail-auth can parse.
    #[error("the message cannot be parsed")]
    Unparseable,
    /// The verification or the queue took longer than allowed.
    #[error("the verification took too long")]
    Timeout,
    /// The ARC thread is not running.
    #[error("the ARC service is not running")]
    Unavailable,
    /// mail-auth refused to seal (a key error).
    #[error("sealing failed")]
    SealError,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::NoKey => "no_key",
            Skip::ChainFailed => "chain_failed",
            Skip::ChainTooLong => "chain_too_long",
            Skip::ChainUnreadable => "chain_unreadable",
            Skip::Unparseable => "unparseable",
            Skip::Timeout => "timeout",
            Skip::Unavailable => "unavailable",
            Skip::SealError => "seal_error",
        }
    }
}

/// What the message arrived with, as far as the next instance depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainState {
    /// The most ARC headers of one kind (seal, message signature, results) the message has.
    pub headers_max: usize,
    /// The sets mail-auth's verification grouped (0 when it could not group them).
    pub sets: usize,
    /// The newest set's seal says `cv=fail`.
    pub last_failed: bool,
    /// The chain validated (`arc=pass`).
    pub validated: bool,
}

/// The next set's instance and `cv`, or why there is none. A chain whose sets could not be
/// grouped cannot be continued: mail-auth would number the new set 1.
pub fn plan(chain: ChainState) -> Result<(usize, Cv), Skip> {
    if chain.headers_max >= ARC_INSTANCES_MAX {
        return Err(Skip::ChainTooLong);
    }
    if chain.sets != chain.headers_max {
        return Err(Skip::ChainUnreadable);
    }
    if chain.last_failed {
        return Err(Skip::ChainFailed);
    }
    let cv = match (chain.sets, chain.validated) {
        (0, _) => Cv::None,
        (_, true) => Cv::Pass,
        (_, false) => Cv::Fail,
    };
    Ok((chain.sets + 1, cv))
}

/// The chain state of a parsed message and its verification.
pub fn chain_state(
    message: &mail_auth::AuthenticatedMessage<'_>,
    verified: &mail_auth::ArcOutput<'_>,
) -> ChainState {
    let headers_max = message
        .ams_headers
        .len()
        .max(message.as_headers.len())
        .max(message.aar_headers.len());
    let sets = verified.sets();
    ChainState {
        headers_max,
        sets: if message.has_arc_errors {
            0
        } else {
            sets.len()
        },
        last_failed: sets
            .last()
            .is_some_and(|s| s.seal.header.cv == ChainValidation::Fail),
        validated: matches!(verified.result(), DkimResult::Pass),
    }
}

/// The tenant a message is attributed to, when it forwards (`arc_seal`).
pub fn forwarding_tenant<'p>(policy: &'p CompiledPolicy, tenant: Option<&str>) -> Option<&'p str> {
    policy
        .tenant(tenant?)
        .filter(|t| t.arc_seal)
        .map(|t| t.id.as_str())
}

/// The forwarding tenant's sending domain that seals: the From domain's when the tenant owns
/// it, else the envelope sender's (the forwarder's rewritten return path); only a domain with an
/// RSA DKIM key active at `now_unix_ms` (ARC is `rsa-sha256` only, RFC 8617 §4.1.3). None: no
/// domain of the tenant can seal this message.
pub fn seal_domain<'p>(
    policy: &'p CompiledPolicy,
    tenant: &str,
    from_domain: Option<&str>,
    mail_from_domain: Option<&str>,
    now_unix_ms: u64,
) -> Option<&'p str> {
    let can_seal = |name: &str| {
        policy
            .signer_for(name)
            .is_some_and(|s| s.arc_signing_key(now_unix_ms).is_some())
    };
    [from_domain, mail_from_domain]
        .into_iter()
        .flatten()
        .filter_map(|d| policy.find_domain(&d.to_ascii_lowercase()))
        .find(|d| d.tenant_id == tenant && can_seal(&d.name))
        .map(|d| d.name.as_str())
}

/// Whether the From-domain check (`domain_auth::check_from`) is waived: a forwarding tenant
/// relays other people's mail, so its From domain is foreign; what speaks for the tenant is its
/// envelope sender, a domain of its own (MAIL already checked it against the credential).
/// Never for a From domain some tenant of this platform sends for: forwarding is no way to
/// write another tenant's From (receivers' DMARC protects the world's domains; our own
/// tenants' domains are ours to protect, and a trusted network would even sign for them).
pub fn waives_from_check(
    policy: &CompiledPolicy,
    identity_tenant: Option<Option<&str>>,
    from_domain: Option<&str>,
    mail_from_domain: Option<&str>,
) -> bool {
    let Some(tenant) = forwarding_tenant(policy, identity_tenant.flatten()) else {
        return false;
    };
    let owned = |d: &str| {
        policy
            .find_domain(&d.to_ascii_lowercase())
            .is_some_and(|s| s.tenant_id == tenant)
    };
    let foreign = |d: &str| policy.find_domain(&d.to_ascii_lowercase()).is_none();
    from_domain.is_some_and(foreign) && mail_from_domain.is_some_and(owned)
}

/// The ARC set as it goes out, or None when it must be made again.
///
/// mail-auth folds a tag list every 76 columns, also right after the last byte of `b=`, giving
/// `b=...\r\n\t;`. RFC 6376 §3.7 drops the whitespace around `b=`'s value when verifying, and
/// mail-auth signs so; dkimpy (and others) strip only folds followed by base64 and hash `b= ;`,
/// so such a signature fails for them. In the ARC-Seal the `;` is joined back onto its line
/// (only later seals cover this header, from the text as sent). The ARC-Message-Signature is
/// covered by this set's own seal as written, so it cannot be changed: None asks for a seal
/// with another header list (`arc_service::AMS_EXTRA_HEADERS`), which moves the folds.
/// `headers`: mail-auth's ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results.
pub fn tidy_set(headers: &[u8]) -> Option<Vec<u8>> {
    const AMS: &[u8] = b"\r\nARC-Message-Signature:";
    let ams_at = find(headers, AMS)? + 2;
    let (seal, rest) = headers.split_at(ams_at);
    let aar_at = find(rest, b"\r\nARC-Authentication-Results:")? + 2;
    if find(&rest[..aar_at], DANGLING_FOLD).is_some() {
        return None;
    }
    let mut out = Vec::with_capacity(headers.len());
    out.extend_from_slice(seal);
    join_dangling_semicolon(&mut out);
    out.extend_from_slice(rest);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The domain of an envelope address (`local@domain`); None for the null sender.
pub fn address_domain(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests;
