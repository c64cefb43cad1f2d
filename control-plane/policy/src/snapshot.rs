//! The policy snapshot: everything an engine needs to decide on AUTH, MAIL, rates and DKIM,
//! as one versioned value that the control plane builds and pushes whole.
//!
//! Byte format (what [`encode`] writes and [`decode`] accepts):
//!
//! ```text
//! magic "PTRLSNP5" (8) | crc32c(payload) u32 LE | payload length u32 LE | payload (rkyv 0.8)
//! ```
//!
//! Older formats still decode, so an engine upgraded in place starts on the snapshot it kept
//! and follows a control plane not yet upgraded: format 4 (`PTRLSNP4`, before
//! `Tenant::egress_pool` and `Tenant::delivery_weight`; `v4.rs`) and format 3 (`PTRLSNP3`,
//! before `Tenant::arc_seal` too; `v3.rs`).
//!
//! The checksum catches corruption that rkyv's structural validation (bytecheck) cannot see
//! (a flipped bit inside a string); bytecheck catches malformed archives; [`PolicySnapshot::validate`]
//! catches semantic errors. TLS protects the bytes on the wire; the checksum protects them on disk.

use std::collections::HashSet;

use crate::error::PolicyError;

/// Magic prefix of an encoded snapshot; the trailing digit is the format version.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"PTRLSNP5";
/// Bytes before the rkyv payload: magic, checksum, payload length.
pub const SNAPSHOT_HEADER_BYTES: usize = 16;
/// Largest encoded snapshot accepted (fits in one link frame with room to spare).
pub const SNAPSHOT_SIZE_MAX_BYTES: usize = 60 << 20;
/// Bounds on the lists a snapshot may hold (validated on both sides).
pub const TENANTS_MAX: usize = 100_000;
pub const DOMAINS_MAX: usize = 1_000_000;
pub const CREDENTIALS_MAX: usize = 1_000_000;
pub const DESTINATION_LIMITS_MAX: usize = 100_000;
/// Per sending domain; old keys are retired, then removed.
pub const DKIM_KEYS_PER_DOMAIN_MAX: usize = 16;
/// Per credential.
pub const IP_ALLOWLIST_ENTRIES_MAX: usize = 1_000;
pub const ALLOWED_SENDER_DOMAINS_MAX: usize = 1_000;
pub const SCOPES_MAX: usize = 64;
/// Deleted tenants a snapshot lists: the newest this many (the control plane's store decides
/// which, so one version has one content).
pub const DELETED_TENANTS_MAX: usize = 100_000;
/// Longest name, id, username or selector, in bytes.
pub const NAME_LENGTH_MAX_BYTES: usize = 255;

/// One full, versioned policy. Versions only move forward on an engine.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PolicySnapshot {
    /// Monotonic; 0 is the empty policy an engine starts with before any push.
    pub version: u64,
    /// When the control plane built it (Unix ms).
    pub generated_unix_ms: u64,
    pub tenants: Vec<Tenant>,
    pub domains: Vec<SendingDomain>,
    pub credentials: Vec<Credential>,
    pub destination_limits: Vec<DestinationLimit>,
    pub defaults: DefaultLimits,
    /// VERP return paths, unsubscribe addresses and one-click links (issue 14).
    #[serde(default)]
    pub return_path: ReturnPath,
    /// Tenants deleted lately (issue 16): each engine drops or bounces their queued mail, then
    /// destroys their data keys. None of them is in `tenants`.
    #[serde(default)]
    pub deleted_tenants: Vec<DeletedTenant>,
    /// Provider shaping limits the operator pushed (`PUT /v1/shaping/providers/{name}`), laid
    /// over each engine's shaping files; by provider name, each named once, at most
    /// [`SHAPING_PROVIDERS_MAX`]. Empty: the files alone. Added in format 5 (issue 15).
    #[serde(default)]
    pub shaping: Vec<ShapingLimits>,
}

/// A deleted tenant, and what becomes of its queued mail.
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
pub struct DeletedTenant {
    pub id: String,
    /// True: queued mail is bounced to its senders (DSNs); false: dropped silently.
    pub bounce_queued: bool,
    /// When it was deleted (Unix ms).
    pub deleted_unix_ms: u64,
}

/// A customer of the ESP.
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
pub struct Tenant {
    /// Unique, non-empty, at most `NAME_LENGTH_MAX_BYTES`.
    pub id: String,
    pub name: String,
    /// Suspended tenants cannot send (550 5.7.1) nor authenticate.
    pub suspended: bool,
    /// None: `DefaultLimits::tenant_messages_per_second_max`.
    pub messages_per_second_max: Option<u32>,
    /// None: `DefaultLimits::tenant_messages_per_day_max`.
    pub messages_per_day_max: Option<u64>,
    /// Accept MAIL FROM an unverified sending domain of this tenant (development, trials).
    pub allow_unverified_domains: bool,
    /// Guardrails (issue 14): the new-tenant cap while it applies; None: no cap.
    #[serde(default)]
    pub new_tenant_cap: Option<NewTenantCap>,
    /// Guardrails: why the control plane disabled this tenant's sending (`550 5.7.1 sending
    /// disabled: <reason>` at MAIL); None: enabled. At most `GUARD_NOTE_MAX_BYTES`.
    #[serde(default)]
    pub sending_disabled: Option<String>,
    /// Guardrails: a rate near its threshold (`bounce rate 8.5% nears 10%`), appended to the
    /// 250 after DATA; None: none.
    #[serde(default)]
    pub reputation_warning: Option<String>,
    /// Add `List-Unsubscribe` (RFC 2369) and `List-Unsubscribe-Post` (RFC 8058) to this
    /// tenant's one-recipient messages before DKIM signing (issue 14). Off unless the tenant
    /// asks: a transactional sender does not want an unsubscribe link on a password reset.
    #[serde(default)]
    pub list_unsubscribe: bool,
    /// The tenant forwards mail it received elsewhere: the engine verifies the DKIM signatures
    /// and ARC chain a message arrived with and adds an ARC set (RFC 8617) signed with the
    /// sending domain's DKIM key (issue 18). Added in format 4.
    #[serde(default)]
    pub arc_seal: bool,
    /// The egress pool (a named set of source addresses, the engine's `[[delivery.pools]]`)
    /// the tenant's mail leaves from; None: the engine's default. A name of
    /// [`is_egress_pool_name`]; an engine that has no such pool uses its default. Added in
    /// format 5 (issue 15).
    #[serde(default)]
    pub egress_pool: Option<String>,
    /// The tenant's share of a site's deliveries when tenants contend for it, relative to the
    /// others' (`DELIVERY_WEIGHT_MIN..=DELIVERY_WEIGHT_MAX`, `DELIVERY_WEIGHT_DEFAULT` 1: all
    /// alike). Added in format 5 (issue 15).
    #[serde(default = "tenant_delivery::default_delivery_weight")]
    pub delivery_weight: u32,
}

/// A domain a tenant sends from (the MAIL FROM / From: domain), with its DKIM keys.
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
pub struct SendingDomain {
    pub tenant_id: String,
    /// Lower-case ASCII (A-labels for IDNs), no trailing dot; unique in the snapshot.
    pub name: String,
    /// DNS ownership proven (TXT/DKIM check done by the control plane).
    pub verified: bool,
    /// None: `DefaultLimits::domain_messages_per_second_max`.
    pub messages_per_second_max: Option<u32>,
    /// At most `DKIM_KEYS_PER_DOMAIN_MAX`; the newest active non-retired key signs.
    pub dkim_keys: Vec<DkimKey>,
    /// Guardrails (issue 14): why sending from this domain is disabled (`550 5.7.1 sending
    /// disabled: <reason>` at MAIL and DATA); None: enabled.
    #[serde(default)]
    pub sending_disabled: Option<String>,
    /// Guardrails: this domain's rate near its threshold, appended to the 250 after DATA.
    #[serde(default)]
    pub reputation_warning: Option<String>,
    /// Some: the domain failed its last DNS authentication check and its mail is refused
    /// (issue 14, see [`AuthFailure`]).
    #[serde(default)]
    pub auth_failure: Option<AuthFailure>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum DkimAlgorithm {
    Ed25519,
    Rsa2048,
}

/// A DKIM private key. The public half is published at `<selector>._domainkey.<domain>`.
#[derive(
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct DkimKey {
    /// DNS label(s): `[a-z0-9-]` separated by dots, non-empty.
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// PKCS#8 v1/v2 DER (see `keys::generate`).
    pub private_key_pkcs8_der: Vec<u8>,
    /// Not used for signing before this instant (Unix ms): lets DNS propagate first.
    pub active_from_unix_ms: u64,
    /// Retired keys never sign; they stay listed while DNS still publishes them.
    pub retired: bool,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey")
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("private_key_pkcs8_der", &"<redacted>")
            .field("active_from_unix_ms", &self.active_from_unix_ms)
            .field("retired", &self.retired)
            .finish()
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum CredentialKind {
    /// SMTP AUTH (PLAIN/LOGIN) with `username` + password.
    Smtp,
    /// HTTP API key (`prefix` identifies it; the control plane checks it, engines ignore it).
    Api,
}

/// The scope a credential needs to submit mail over SMTP AUTH (issue 16: checked, not only
/// listed).
pub const SEND_SCOPE: &str = "send";

/// A secret a tenant uses to submit mail. Only the argon2id hash travels.
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
pub struct Credential {
    /// Stable id from the control plane (for logs and audit).
    pub id: String,
    pub tenant_id: String,
    pub kind: CredentialKind,
    /// SMTP username; unique among SMTP credentials; empty for API keys.
    pub username: String,
    /// First 8 characters of the secret, shown to people to tell keys apart.
    pub prefix: String,
    /// argon2id PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`).
    pub argon2_phc: String,
    pub scopes: Vec<String>,
    /// MAIL FROM domains this credential may use; empty: any sending domain of its tenant.
    pub allowed_sender_domains: Vec<String>,
    /// CIDRs or bare addresses the client must connect from; empty: any address.
    pub ip_allowlist: Vec<String>,
    /// Revoked credentials fail at once, cached or not.
    pub revoked: bool,
}

/// Per destination domain limits, used by delivery.
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
pub struct DestinationLimit {
    /// Recipient domain, lower case; unique.
    pub domain: String,
    /// None: `DefaultLimits::destination_connections_max`.
    pub connections_max: Option<u32>,
    /// None: `DefaultLimits::destination_messages_per_second_max`.
    pub messages_per_second_max: Option<u32>,
    /// Deliver only over TLS with a valid certificate.
    pub tls_required: bool,
}

/// Limits that apply when a tenant, domain or destination has none of its own. None: unlimited.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefaultLimits {
    pub tenant_messages_per_second_max: Option<u32>,
    pub tenant_messages_per_day_max: Option<u64>,
    pub domain_messages_per_second_max: Option<u32>,
    pub destination_connections_max: Option<u32>,
    pub destination_messages_per_second_max: Option<u32>,
}

/// Serialize a snapshot into the checksummed byte format. Validates it first, so a control
/// plane can never push what an engine would refuse.
pub fn encode(s: &PolicySnapshot) -> Result<Vec<u8>, PolicyError> {
    s.validate()?;
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(s)
        .map_err(|e| PolicyError::invalid(format!("rkyv serialization: {e}")))?;
    let size_bytes = SNAPSHOT_HEADER_BYTES + payload.len();
    if size_bytes > SNAPSHOT_SIZE_MAX_BYTES {
        return Err(PolicyError::TooLarge {
            size_bytes,
            max_bytes: SNAPSHOT_SIZE_MAX_BYTES,
        });
    }
    let payload_len = u32::try_from(payload.len()).map_err(|_| PolicyError::TooLarge {
        size_bytes,
        max_bytes: SNAPSHOT_SIZE_MAX_BYTES,
    })?;
    let mut out = Vec::with_capacity(size_bytes);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Check magic, length and checksum, validate the archive (bytecheck), deserialize, then
/// check the snapshot's rules. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<PolicySnapshot, PolicyError> {
    if bytes.len() > SNAPSHOT_SIZE_MAX_BYTES {
        return Err(PolicyError::TooLarge {
            size_bytes: bytes.len(),
            max_bytes: SNAPSHOT_SIZE_MAX_BYTES,
        });
    }
    let (header, payload) = bytes
        .split_at_checked(SNAPSHOT_HEADER_BYTES)
        .ok_or_else(|| PolicyError::corrupt("shorter than the header"))?;
    let magic = &header[0..8];
    if magic != SNAPSHOT_MAGIC && magic != v4::MAGIC && magic != v3::MAGIC {
        return Err(PolicyError::corrupt("bad magic"));
    }
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if usize::try_from(len).ok() != Some(payload.len()) {
        return Err(PolicyError::corrupt(format!(
            "payload length {} does not match header {len}",
            payload.len()
        )));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(PolicyError::corrupt("checksum mismatch"));
    }
    // rkyv needs the archive aligned; the payload sits at an arbitrary address, so copy it.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let snapshot = if magic == v3::MAGIC {
        v3::from_bytes(&aligned)?
    } else if magic == v4::MAGIC {
        v4::from_bytes(&aligned)?
    } else {
        rkyv::from_bytes::<PolicySnapshot, rkyv::rancor::Error>(&aligned)
            .map_err(|e| PolicyError::corrupt(format!("archive validation: {e}")))?
    };
    snapshot.validate()?;
    Ok(snapshot)
}

impl PolicySnapshot {
    /// The rules every snapshot obeys: bounded lists, unique keys, references that resolve,
    /// parseable CIDRs, well-formed names. (Keys and hashes are parsed when compiled.)
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_count("tenants", self.tenants.len(), TENANTS_MAX)?;
        check_count("domains", self.domains.len(), DOMAINS_MAX)?;
        check_count("credentials", self.credentials.len(), CREDENTIALS_MAX)?;
        check_count(
            "destination limits",
            self.destination_limits.len(),
            DESTINATION_LIMITS_MAX,
        )?;
        let mut tenant_ids = HashSet::with_capacity(self.tenants.len());
        for t in &self.tenants {
            check_name("tenant id", &t.id)?;
            if let Some(cap) = &t.new_tenant_cap {
                cap.validate(&t.id)?;
            }
            guard::check_note("disable reason", &t.id, t.sending_disabled.as_deref())?;
            guard::check_note("warning", &t.id, t.reputation_warning.as_deref())?;
            tenant_delivery::check(&t.id, t.egress_pool.as_deref(), t.delivery_weight)?;
            if !tenant_ids.insert(t.id.as_str()) {
                return Err(PolicyError::invalid(format!("duplicate tenant {}", t.id)));
            }
        }
        let mut domain_names = HashSet::with_capacity(self.domains.len());
        for d in &self.domains {
            check_domain(&d.name)?;
            if !tenant_ids.contains(d.tenant_id.as_str()) {
                return Err(PolicyError::invalid(format!(
                    "domain {} names unknown tenant {}",
                    d.name, d.tenant_id
                )));
            }
            if !domain_names.insert(d.name.as_str()) {
                return Err(PolicyError::invalid(format!("duplicate domain {}", d.name)));
            }
            check_count("dkim keys", d.dkim_keys.len(), DKIM_KEYS_PER_DOMAIN_MAX)?;
            guard::check_note("disable reason", &d.name, d.sending_disabled.as_deref())?;
            guard::check_note("warning", &d.name, d.reputation_warning.as_deref())?;
            if let Some(f) = &d.auth_failure {
                f.validate(&d.name)?;
            }
            for k in &d.dkim_keys {
                check_selector(&k.selector)?;
                if k.private_key_pkcs8_der.is_empty() {
                    return Err(PolicyError::invalid(format!(
                        "empty dkim key {} for {}",
                        k.selector, d.name
                    )));
                }
            }
        }
        let mut usernames = HashSet::with_capacity(self.credentials.len());
        for c in &self.credentials {
            validate_credential(c, &tenant_ids, &mut usernames)?;
        }
        self.return_path.validate()?;
        check_count(
            "deleted tenants",
            self.deleted_tenants.len(),
            DELETED_TENANTS_MAX,
        )?;
        for d in &self.deleted_tenants {
            check_name("deleted tenant id", &d.id)?;
            if tenant_ids.contains(d.id.as_str()) {
                return Err(PolicyError::invalid(format!(
                    "tenant {} is listed and deleted",
                    d.id
                )));
            }
        }
        shaping::check(&self.shaping)?;
        let mut destinations = HashSet::with_capacity(self.destination_limits.len());
        for l in &self.destination_limits {
            check_domain(&l.domain)?;
            if !destinations.insert(l.domain.as_str()) {
                return Err(PolicyError::invalid(format!(
                    "duplicate destination limit {}",
                    l.domain
                )));
            }
        }
        Ok(())
    }
}

fn validate_credential<'a>(
    c: &'a Credential,
    tenant_ids: &HashSet<&str>,
    usernames: &mut HashSet<&'a str>,
) -> Result<(), PolicyError> {
    check_name("credential id", &c.id)?;
    if !tenant_ids.contains(c.tenant_id.as_str()) {
        return Err(PolicyError::invalid(format!(
            "credential {} names unknown tenant {}",
            c.id, c.tenant_id
        )));
    }
    if c.kind == CredentialKind::Smtp {
        check_name("username", &c.username)?;
        if !usernames.insert(c.username.as_str()) {
            return Err(PolicyError::invalid(format!(
                "duplicate SMTP username {}",
                c.username
            )));
        }
    }
    check_count("scopes", c.scopes.len(), SCOPES_MAX)?;
    check_count(
        "allowed sender domains",
        c.allowed_sender_domains.len(),
        ALLOWED_SENDER_DOMAINS_MAX,
    )?;
    for d in &c.allowed_sender_domains {
        check_domain(d)?;
    }
    check_count(
        "ip allowlist entries",
        c.ip_allowlist.len(),
        IP_ALLOWLIST_ENTRIES_MAX,
    )?;
    for cidr in &c.ip_allowlist {
        parse_cidr(cidr)?;
    }
    Ok(())
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, PolicyError> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| PolicyError::invalid(format!("bad CIDR or address {s:?}")))
}

#[path = "snapshot/v3.rs"]
mod v3;
#[path = "snapshot/v4.rs"]
mod v4;

#[path = "snapshot/tenant_delivery.rs"]
mod tenant_delivery;
pub use tenant_delivery::{
    is_egress_pool_name, DELIVERY_WEIGHT_DEFAULT, DELIVERY_WEIGHT_MAX, DELIVERY_WEIGHT_MIN,
    EGRESS_POOL_NAME_MAX_BYTES,
};

#[path = "snapshot/shaping.rs"]
mod shaping;
pub use shaping::{
    is_shaping_provider_name, ShapingLimits, SHAPING_CONNECTIONS_MAX,
    SHAPING_MESSAGES_PER_CONNECTION_MAX, SHAPING_MESSAGES_PER_HOUR_MAX,
    SHAPING_MESSAGES_PER_MINUTE_MAX, SHAPING_PROVIDERS_MAX, SHAPING_PROVIDER_NAME_MAX_BYTES,
    SHAPING_RECIPIENTS_PER_TRANSACTION_MAX,
};

#[path = "snapshot/guard.rs"]
mod guard;
pub use guard::{
    NewTenantCap, GUARD_NOTE_MAX_BYTES, NEW_TENANT_CAP_MESSAGES_MAX, NEW_TENANT_CAP_WINDOW_MS_MAX,
};

#[path = "snapshot/domain_auth.rs"]
mod domain_auth;
pub use domain_auth::{AuthFailure, AUTH_CHECKS, AUTH_FAILURE_DETAIL_MAX_BYTES};
#[path = "snapshot/return_path.rs"]
mod return_path;
pub use return_path::{
    ReturnPath, TokenKey, TOKEN_KEYS_MAX, TOKEN_KEY_BYTES_MIN, URL_BASE_MAX_BYTES,
};

fn check_count(what: &str, n: usize, max: usize) -> Result<(), PolicyError> {
    if n > max {
        return Err(PolicyError::invalid(format!("{n} {what} (max {max})")));
    }
    Ok(())
}

fn check_name(what: &str, s: &str) -> Result<(), PolicyError> {
    if s.is_empty() || s.len() > NAME_LENGTH_MAX_BYTES || s.chars().any(char::is_control) {
        return Err(PolicyError::invalid(format!("bad {what} {s:?}")));
    }
    Ok(())
}

fn check_domain(s: &str) -> Result<(), PolicyError> {
    let ok = !s.is_empty()
        && s.len() <= NAME_LENGTH_MAX_BYTES
        && !s.starts_with('.')
        && !s.ends_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        return Err(PolicyError::invalid(format!(
            "bad domain {s:?} (lower-case ASCII, no trailing dot)"
        )));
    }
    Ok(())
}

fn check_selector(s: &str) -> Result<(), PolicyError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(PolicyError::invalid(format!("bad dkim selector {s:?}")));
    }
    Ok(())
}

#[cfg(test)]
#[path = "snapshot/tests.rs"]
pub(crate) mod tests;
