//! Inbound MTA-STS (RFC 8461) for the domains whose mail Petrel receives (issue 18).
//!
//! The engines' intake (MX on 25) receives mail for the VERP bounce domain and for tenant
//! domains that point their MX at it. Senders that speak MTA-STS then need, for each such
//! domain, a policy at `https://mta-sts.<domain>/.well-known/mta-sts.txt` naming the intake's
//! MX hosts, and a `_mta-sts.<domain>` TXT record whose `id` changes whenever the policy does.
//! The control plane serves that file (`GET /.well-known/mta-sts.txt`, the domain taken from
//! the `Host` header) and shows, per domain, the records to publish
//! ([`InboundMtaSts::records_for`]).
//!
//! A policy is served for the bounce domain, and for a verified tenant domain only when its
//! MX records all name intake hosts ([`mx_covered`]): a policy naming hosts that do not
//! receive a domain's mail would make MTA-STS senders defer it. The MX lookup's verdict is
//! cached ([`MxVerdicts`], `MX_VERDICT_TTL_MS`, at most `MX_VERDICTS_MAX` names), so
//! requests for a host name do not each cost a DNS query.
//!
//! Everything here is pure but the cache's clock, which the caller passes in.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::dns::DnsRecord;

/// The RFC's bounds on `max_age` (§3.2: at most 31557600 seconds, a year). Below a day a
/// policy protects little, since senders refetch it as often.
pub const MAX_AGE_SECS_MIN: u64 = 86_400;
pub const MAX_AGE_SECS_MAX: u64 = 31_557_600;
/// Default `max_age`: a week, what the large receivers publish.
pub const MAX_AGE_SECS_DEFAULT: u64 = 604_800;
/// MX host names a policy lists at most (the intake's hosts; more is a configuration error).
pub const POLICY_MX_MAX: usize = 16;
/// The length of a policy `id` (§3.1: 1 to 32 alphanumeric characters); hex of the policy's
/// SHA-256, so it changes exactly when the policy text does.
pub const POLICY_ID_LEN: usize = 32;
/// How long an MX verdict is kept.
pub const MX_VERDICT_TTL_MS: u64 = 300_000;
/// Names whose MX verdict is kept; when full, the oldest verdicts are dropped.
pub const MX_VERDICTS_MAX: usize = 4_096;
/// The longest `Host` header taken (a domain name is at most 253 characters, plus the
/// `mta-sts.` label and a port).
pub const HOST_HEADER_MAX_BYTES: usize = 300;
/// The label a policy host starts with (§3.3).
pub const POLICY_HOST_LABEL: &str = "mta-sts.";

/// The policy mode served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Enforce,
    Testing,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
        }
    }
}

/// Why the inbound MTA-STS settings were refused at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error(
        "--mta-sts-max-age-secs must be within {MAX_AGE_SECS_MIN}..={MAX_AGE_SECS_MAX}, not {0}"
    )]
    MaxAge(u64),
    #[error("at most {POLICY_MX_MAX} --intake-mx hosts, not {0}")]
    TooManyMx(usize),
    #[error("--intake-mx {0:?} is not a host name (a '*.' wildcard may start it)")]
    BadMx(String),
    #[error("--tls-rpt-rua {0:?} must be a mailto: or https: URI")]
    BadRua(String),
}

/// The inbound MTA-STS settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMtaSts {
    /// The intake's MX host names (lowercase, no trailing dot), as the policy lists them.
    pub mx: Vec<String>,
    pub mode: Mode,
    pub max_age_secs: u64,
    /// Where TLS-RPT reports about the intake go (`_smtp._tls` record shown); None: no record.
    pub tls_rpt_rua: Option<String>,
    /// The policy file, built once.
    policy: String,
    id: String,
}

impl InboundMtaSts {
    /// `mx` empty: inbound MTA-STS is off (`Ok(None)`).
    pub fn new(
        mx: &[String],
        mode: Mode,
        max_age_secs: u64,
        tls_rpt_rua: Option<&str>,
    ) -> Result<Option<InboundMtaSts>, SettingsError> {
        if mx.is_empty() {
            return Ok(None);
        }
        if mx.len() > POLICY_MX_MAX {
            return Err(SettingsError::TooManyMx(mx.len()));
        }
        if !(MAX_AGE_SECS_MIN..=MAX_AGE_SECS_MAX).contains(&max_age_secs) {
            return Err(SettingsError::MaxAge(max_age_secs));
        }
        let mut hosts = Vec::with_capacity(mx.len());
        for m in mx {
            let host = m.trim().trim_end_matches('.').to_ascii_lowercase();
            if !is_mx_pattern(&host) {
                return Err(SettingsError::BadMx(m.clone()));
            }
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        let rua = match tls_rpt_rua.map(str::trim).filter(|r| !r.is_empty()) {
            None => None,
            Some(r) if is_rua(r) => Some(r.to_string()),
            Some(r) => return Err(SettingsError::BadRua(r.to_string())),
        };
        let policy = policy_text(mode, &hosts, max_age_secs);
        let id = policy_id(&policy);
        Ok(Some(InboundMtaSts {
            mx: hosts,
            mode,
            max_age_secs,
            tls_rpt_rua: rua,
            policy,
            id,
        }))
    }

    /// The policy file (§3.2), CRLF line ends.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// The policy's `id`, for the `_mta-sts` record.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What to publish so that `domain` receives through the intake under this policy:
    /// the MX records, `_mta-sts`, the policy host (`mta-sts.<domain>`, pointed at the host
    /// serving this control plane's `/.well-known/mta-sts.txt` over HTTPS, `policy_host`, or
    /// a placeholder when no public URL is set) and, when a report address is set,
    /// `_smtp._tls`.
    pub fn records_for(&self, domain: &str, policy_host: Option<&str>) -> Vec<DnsRecord> {
        let mut out: Vec<DnsRecord> = self
            .mx
            .iter()
            .filter(|m| !m.starts_with("*."))
            .enumerate()
            .map(|(i, m)| DnsRecord {
                purpose: "mx".into(),
                rtype: "MX".into(),
                name: domain.to_string(),
                value: format!("{} {m}.", (i + 1) * 10),
                required: true,
            })
            .collect();
        out.push(DnsRecord {
            purpose: "mta_sts".into(),
            rtype: "TXT".into(),
            name: format!("_mta-sts.{domain}"),
            value: format!("v=STSv1; id={}", self.id),
            required: true,
        });
        out.push(DnsRecord {
            purpose: "mta_sts_host".into(),
            rtype: "CNAME".into(),
            name: format!("{POLICY_HOST_LABEL}{domain}"),
            value: format!(
                "{}.",
                policy_host.unwrap_or("<the control plane's public host>")
            ),
            required: true,
        });
        if let Some(rua) = &self.tls_rpt_rua {
            out.push(DnsRecord {
                purpose: "tls_rpt".into(),
                rtype: "TXT".into(),
                name: format!("_smtp._tls.{domain}"),
                value: format!("v=TLSRPTv1; rua={rua}"),
                required: false,
            });
        }
        out
    }
}

/// The policy file of RFC 8461 §3.2.
pub fn policy_text(mode: Mode, mx: &[String], max_age_secs: u64) -> String {
    let mut s = format!("version: STSv1\r\nmode: {}\r\n", mode.as_str());
    for m in mx {
        s.push_str("mx: ");
        s.push_str(m);
        s.push_str("\r\n");
    }
    s.push_str(&format!("max_age: {max_age_secs}\r\n"));
    s
}

/// An `id` that changes exactly when the policy text does.
pub fn policy_id(policy: &str) -> String {
    let mut id = hex::encode(Sha256::digest(policy.as_bytes()));
    id.truncate(POLICY_ID_LEN);
    id
}

fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// A host name of two labels or more, or `*.` and one (§4.1's wildcard form).
fn is_mx_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    name.len() <= 253 && name.contains('.') && name.split('.').all(is_label)
}

fn is_rua(r: &str) -> bool {
    let rest = r
        .strip_prefix("mailto:")
        .or_else(|| r.strip_prefix("https://"));
    rest.is_some_and(|s| !s.is_empty() && !s.contains([' ', ';', ',']))
}

/// Why a request's `Host` names no policy domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error("no Host header")]
    Missing,
    #[error("the Host header is not a host name")]
    Malformed,
    #[error("the host does not start with mta-sts.")]
    NotPolicyHost,
}

/// The policy domain a `Host` header value names: `mta-sts.<domain>[:port]` → `<domain>`,
/// lowercase, without a trailing dot.
pub fn policy_domain_of_host(host: Option<&str>) -> Result<String, HostError> {
    let host = host.ok_or(HostError::Missing)?;
    if host.len() > HOST_HEADER_MAX_BYTES {
        return Err(HostError::Malformed);
    }
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => n,
        Some(_) => return Err(HostError::Malformed),
        None => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = name
        .strip_prefix(POLICY_HOST_LABEL)
        .ok_or(HostError::NotPolicyHost)?;
    if !is_mx_pattern(domain) || domain.starts_with("*.") {
        return Err(HostError::Malformed);
    }
    Ok(domain.to_string())
}

/// True when every MX host found (at least one) is one the policy names: an intake host
/// exactly, or under a `*.` pattern by one label (§4.1).
pub fn mx_covered(found: &[String], policy_mx: &[String]) -> bool {
    !found.is_empty()
        && found.iter().all(|host| {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            policy_mx.iter().any(|p| match p.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                None => *p == host,
            })
        })
}

/// MX verdicts per domain name, each for `MX_VERDICT_TTL_MS`.
#[derive(Debug, Default)]
pub struct MxVerdicts {
    inner: Mutex<HashMap<String, (bool, u64)>>,
}

impl MxVerdicts {
    /// The verdict on `domain` at `now_ms`, when a fresh one is kept.
    pub fn get(&self, domain: &str, now_ms: u64) -> Option<bool> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(domain)
            .filter(|(_, at)| now_ms.saturating_sub(*at) < MX_VERDICT_TTL_MS)
            .map(|(v, _)| *v)
    }

    pub fn put(&self, domain: &str, covered: bool, now_ms: u64) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MX_VERDICTS_MAX && !map.contains_key(domain) {
            map.retain(|_, (_, at)| now_ms.saturating_sub(*at) < MX_VERDICT_TTL_MS);
            if map.len() >= MX_VERDICTS_MAX {
                // Still full of fresh verdicts: drop the oldest half.
                let mut ages: Vec<u64> = map.values().map(|(_, at)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                map.retain(|_, (_, at)| *at > cut);
            }
        }
        map.insert(domain.to_string(), (covered, now_ms));
    }
}

#[cfg(test)]
#[path = "mta_sts_tests.rs"]
mod tests;
